//! What a base image already holds, read from its layers without running
//! anything: the merged filesystem view ([`rootfs`]), from which the
//! resolvers read the package databases they care about.

pub mod rootfs;

pub use rootfs::{Node, Rootfs};
