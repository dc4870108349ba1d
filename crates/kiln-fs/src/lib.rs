//! Filesystems as kiln sees them: a layer's entries and their deterministic
//! tar + parallel compression ([`layer`]), the merged read-only view of a
//! base image ([`rootfs`]) and the facts read from it ([`probe`]).

mod error;
pub mod layer;
pub mod probe;
pub mod rootfs;

pub use error::FsError;
pub use rootfs::{Node, Rootfs};
