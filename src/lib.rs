//! kiln: a daemonless, native OCI image assembler.
//!
//! This crate is the top of the flow: [`build`] plans a build from the spec
//! (every check a user can fail before any network or output), runs the
//! package stages per platform (reusing locked ones through their memo),
//! assembles the image and writes the outputs; [`cache_transfer`] moves what
//! a lock needs between caches. Their own failures are [`BuildError`]s. The
//! work lives in the `kiln-*` crates below it (see the README's
//! architecture section).

pub mod build;
mod bytecode;
pub mod cache_transfer;
pub mod diff;
pub mod dockerfile_build;
pub mod env_source;
mod error;
pub mod init;
mod locales;
mod memo;
pub mod packages;
pub mod rebase;
mod run_steps;
mod sdist_build;
mod stages;
mod stamp;
pub mod summary;
pub mod why;
pub mod workspace_build;

pub use error::{BuildError, Refusal};
pub use kiln_core::{Error, ErrorKind, Result};
