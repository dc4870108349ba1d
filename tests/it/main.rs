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
mod buildah_parity;
mod bytecode;
mod cache;
mod cache_from;
mod cache_transfer;
mod cert_hash;
mod ci_templates;
mod cli;
mod conda;
mod debian_realism;
mod diff_why;
mod dockerfile;
mod errors;
mod examples;
mod faults;
mod git;
mod harness;
mod hostile;
mod inspect;
mod lock;
mod multi_stage;
mod offline_network;
mod pip_hermetic;
mod pip_image;
mod pip_network;
mod pip_sdist;
mod push;
mod rebase;
mod run_steps;
mod sbom;
mod service;
mod service_ui;
mod sign;
mod static_binary;
mod summary;
mod workspace;
