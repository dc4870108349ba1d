//! kiln: a daemonless, native OCI image assembler.
//!
//! The flow reads top to bottom: [`spec`] → [`base`] (what we build on) →
//! [`layer`] (deterministic tar + parallel compression into the [`cache`]) →
//! [`image`] (config, manifest, index) → [`output`] (OCI layout,
//! docker-archive, registry push). [`build`] wires the stages together.

pub mod apt;
pub mod base;
pub mod blobs;
pub mod build;
pub mod cache;
pub mod cache_transfer;
pub mod conda;
pub mod digest;
pub mod error;
pub mod http;
pub mod image;
pub mod inspect;
pub mod inventory;
pub mod layer;
pub mod lock;
pub mod manifest;
pub mod memo;
pub mod output;
pub mod pip;
pub mod platform;
pub mod progress;
pub mod registry;
pub mod sbom;
pub mod source;
pub mod spec;
pub mod stages;

pub use error::{Error, Result};
