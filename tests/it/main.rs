//! kiln's integration tests: one binary, one module per area. They drive
//! the real `kiln` binary and real tools (a registry on loopback, skopeo,
//! umoci, oci-image-tool, dpkg, podman where present); `common` holds the
//! shared harness.

mod common;
mod conda_channel;

mod apt_debian;
mod apt_hermetic;
mod build_base;
mod build_scratch;
mod cache;
mod cache_transfer;
mod cert_hash;
mod conda;
mod dockerfile;
mod errors;
mod examples;
mod faults;
mod harness;
mod hostile;
mod inspect;
mod lock;
mod offline_network;
mod pip_hermetic;
mod pip_image;
mod pip_network;
mod push;
mod sbom;
mod service;
mod service_ui;
mod workspace;
