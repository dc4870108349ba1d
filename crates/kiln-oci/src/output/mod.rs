//! Where a finished image goes: an OCI layout directory, a docker-archive
//! file, or a registry. Local outputs are written to a staging path beside
//! the target and renamed into place only when complete.

pub mod archive;
pub mod layout;
pub mod push;

use std::fs;
use std::path::Path;

use kiln_core::error::{IoContext, Result};

/// Put a blob file at `dst`: hard link from the cache when possible, else copy.
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    if fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs::copy(src, dst)
        .map(|_| ())
        .io_context(|| format!("copying {} to {}", src.display(), dst.display()))
}

/// The directory a staging path is created in (the target's parent).
pub(crate) fn parent_dir(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
