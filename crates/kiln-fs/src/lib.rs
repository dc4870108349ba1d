//! Filesystems as kiln sees them: a layer's entries and their deterministic
//! tar + parallel compression ([`layer`]), with the inflating of wheel
//! members and gzip layers ([`inflate`]), the merged read-only view of a
//! base image ([`rootfs`]), the facts read from it ([`probe`]), and
//! commands run in an assembled tree without privileges ([`sandbox`]).

mod error;
pub mod inflate;
pub mod layer;
pub mod probe;
pub mod rootfs;
pub mod sandbox;

pub use error::FsError;
pub use rootfs::{DirMeta, Node, Rootfs};
