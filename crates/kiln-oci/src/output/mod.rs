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

#[cfg(test)]
mod tests {
    use kiln_core::{Digest, Platform};
    use kiln_store::cache::Cache;

    use crate::blobs::Blobs;
    use crate::image::{Assembled, PlatformManifest};
    use crate::manifest::{Desc, OCI_CONFIG, OCI_MANIFEST};
    use crate::ImageError;

    #[test]
    fn outputs_refuse_what_they_cannot_hold() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let blobs = Blobs::new(&cache, None);
        let one = |arch: &str| PlatformManifest {
            platform: Platform::linux(arch),
            config: Desc::new(OCI_CONFIG, Digest::of(arch.as_bytes()), 2),
            layers: vec![],
            manifest: Desc::new(OCI_MANIFEST, Digest::of(arch.as_bytes()), 2),
        };
        let image = Assembled {
            images: vec![one("amd64"), one("arm64")],
            index: None,
        };
        let out = cache_dir.path().join("out.tar");
        let err = super::archive::write(&out, &image, &[], &[], 0, &blobs).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::ArchivePlatforms { count: 2, .. })
        ));
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            format!("docker-archive:{} holds one platform, but 2 were built; use an oci: output for several", out.display())
        );
        assert!(!out.exists());

        let file = cache_dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = super::layout::check_target(&file).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::NotLayoutTarget { dir }) if dir == &file
        ));
        assert!(err
            .to_string()
            .ends_with("exists and is not an OCI layout; refusing to overwrite it"));

        let err = super::push::tag_ref("registry.example/Bad Repo", "1").unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::InvalidPushReference { tag, .. }) if tag == "1"
        ));
        assert!(err
            .to_string()
            .starts_with("invalid push reference registry.example/Bad Repo:1: "));
        assert_eq!(err.exit_code(), 2);
    }
}
