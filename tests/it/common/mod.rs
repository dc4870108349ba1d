//! Shared helpers for kiln's integration tests.
//!
//! Everything here drives real tools (`docker-registry`, `skopeo`, `umoci`,
//! `oci-image-tool`, `chroot`) over loopback only. A missing tool is a test
//! FAILURE with a message saying which Debian package provides it; `make test`
//! installs them.
//!
//! Scratch space lives under `$CARGO_TARGET_TMPDIR/kiln-it/<pid>/` (or
//! `$KILN_TEST_SCRATCH/kiln-it/<pid>/`). A
//! [`Workspace`] is removed when its test passes and kept (path printed) when it
//! fails; leftovers of finished test processes are removed by the next run.
//!
//! What lives where (all re-exported here, so `use crate::common::*;` is
//! enough):
//! - `workspace`: scratch directories, unique names, [`Workspace`], listing
//!   and copying trees;
//! - `run`: the `kiln` binary under test, [`Run`], [`CommandExt`],
//!   [`expect_failure`];
//! - `tools`: [`require_tool`], skopeo, oci-image-tool, umoci, chroot;
//! - `rootfs`: checks on unpacked root filesystems, a busybox rootfs;
//! - `json`: digests, typed JSON access, RFC 3339 timestamps;
//! - `layout`: reading OCI layouts ([`Layout`]), media types, layer tarballs;
//! - `handmade`: writing tarballs and OCI layouts without kiln;
//! - `registry`: the loopback docker-registry ([`Registry`]), credentials,
//!   ports, [`http_status`];
//! - `servers`: [`FakeServer`] and [`FileServer`] on loopback;
//! - `git_http`: [`GitServer`] (`git http-backend` on loopback), [`git`];
//! - `gnupg`: signing keys made for the run, `InRelease` signed with them;
//! - `builds`: `kiln build --json` and checks on its output, small specs;
//! - `fixtures`: Debian base images bootstrapped once per run, a warm cache;
//! - `spdx`: pyspdxtools validation;
//! - `webdriver`: headless chromium over WebDriver ([`Browser`]).

mod builds;
mod ci_schemas;
mod fixtures;
mod git_http;
mod gnupg;
mod handmade;
mod json;
mod layout;
mod registry;
mod rootfs;
mod run;
mod servers;
mod spdx;
mod tools;
mod webdriver;
mod wheels;
mod workspace;

pub use builds::*;
pub use ci_schemas::*;
pub use fixtures::*;
pub use git_http::*;
pub use gnupg::*;
pub use handmade::*;
pub use json::*;
pub use layout::*;
pub use registry::*;
pub use rootfs::*;
pub use run::*;
pub use servers::*;
pub use spdx::*;
pub use tools::*;
pub use webdriver::*;
pub use wheels::*;
pub use workspace::*;
