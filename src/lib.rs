//! kiln: a daemonless, native OCI image assembler.
//!
//! This crate is the top of the flow: [`build`] plans a build from the spec
//! (every check a user can fail before any network or output), runs the
//! package [`stages`] per platform (reusing locked ones through [`memo`]),
//! assembles the image and writes the outputs. The work lives in the
//! `kiln-*` crates below it (see the README's architecture section).

pub mod build;
pub mod cache_transfer;
pub mod memo;
pub mod stages;

pub use kiln_core::{Error, ErrorKind, Result};
