//! OCI images: manifests and indexes, the registry client, where each blob
//! lives, loading a base (registry, OCI layout, docker-archive), assembling
//! config/manifest/index, and writing outputs (layout, docker-archive, push).

pub mod base;
pub mod blobs;
mod error;
pub mod image;
pub mod inspect;
pub mod inventory;
pub mod manifest;
pub mod output;
pub mod rebase;
pub mod registry;
pub mod sign;

pub use error::{DocumentKind, ImageError, RegistryError, SignError};
