//! Where a finished image goes: an OCI layout directory, a docker-archive
//! file, or a registry. Local outputs are written to a staging path beside
//! the target and renamed into place only when complete.

pub mod archive;
pub mod layout;
pub mod push;
pub mod pushed;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

use kiln_core::error::{IoContext, Result};

/// The umask when `/proc/self/status` does not say (before Linux 4.7, or
/// without /proc).
const DEFAULT_UMASK: u32 = 0o022;

/// The process's umask, read once from the `Umask:` line of
/// `/proc/self/status`: the umask(2) call would have to set it to read
/// it, which races with every thread creating files meanwhile.
pub(crate) fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_umask(&s))
            .unwrap_or(DEFAULT_UMASK)
    })
}

/// The `Umask:` line of a `/proc/PID/status` (octal, e.g. `Umask:\t0022`).
fn parse_umask(status: &str) -> Option<u32> {
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))?
        .trim();
    u32::from_str_radix(value, 8).ok().map(|m| m & 0o777)
}

/// The mode of an output file: `0o666` less the umask, as the user's tools
/// would create it (0644 under the usual 022).
pub(crate) fn file_mode() -> u32 {
    0o666 & !umask()
}

/// The mode of an output directory: `0o777` less the umask.
pub(crate) fn dir_mode() -> u32 {
    0o777 & !umask()
}

/// Give an output file or directory kiln created (temp files and staging
/// directories start private) the mode the umask says.
pub(crate) fn set_output_mode(path: &Path) -> Result<()> {
    let mode = if path.is_dir() {
        dir_mode()
    } else {
        file_mode()
    };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .io_context(|| format!("setting the mode of {}", path.display()))
}

/// Put a blob file at `dst`: hard link from the cache when possible (the
/// cache's file, mode and all), else a copy with an output file's mode.
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        return Ok(());
    }
    if fs::hard_link(src, dst).is_ok() {
        return Ok(());
    }
    fs::copy(src, dst)
        .map(|_| ())
        .io_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    set_output_mode(dst)
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
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn the_umask_comes_from_proc_status() {
        let status = "Name:\tkiln\nUmask:\t0027\nState:\tR (running)\n";
        assert_eq!(super::parse_umask(status), Some(0o027));
        assert_eq!(super::parse_umask("Umask:\t0002\n"), Some(0o002));
        assert_eq!(super::parse_umask("Umask:   0077"), Some(0o077));
        // Kernels before 4.7 have no such line; garbage is no umask either.
        assert_eq!(super::parse_umask("Name:\tkiln\nState:\tR\n"), None);
        assert_eq!(super::parse_umask("Umask:\t0x12\n"), None);
        assert_eq!(super::parse_umask("Umask:\t9\n"), None);
        // This process: the line is there on Linux, and agrees with umask(2)'s
        // default for test runners (no other umask in this process).
        let umask = super::umask();
        assert_eq!(umask & !0o777, 0);
        assert_eq!(super::file_mode(), 0o666 & !umask);
        assert_eq!(super::dir_mode(), 0o777 & !umask);
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(m) = super::parse_umask(&status) {
                assert_eq!(m, umask);
            }
        }
    }

    /// One single-platform image with real blobs (no layers) in `cache`.
    fn small_image(cache: &Cache) -> Assembled {
        let config_bytes =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = cache.put(config_bytes).unwrap();
        let manifest_bytes = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{config}","size":{}}},"layers":[]}}"#,
            config_bytes.len()
        );
        let manifest = cache.put(manifest_bytes.as_bytes()).unwrap();
        Assembled {
            images: vec![PlatformManifest {
                platform: Platform::linux("amd64"),
                config: Desc::new(OCI_CONFIG, config, config_bytes.len() as u64),
                layers: vec![],
                manifest: Desc::new(OCI_MANIFEST, manifest, manifest_bytes.len() as u64),
            }],
            index: None,
        }
    }

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn outputs_get_the_umask_modes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let blobs = Blobs::new(&cache, None);
        let image = small_image(&cache);
        let (file, folder) = (super::file_mode(), super::dir_mode());

        let archive = dir.path().join("out/img.tar");
        super::archive::write(&archive, &image, &["app:1".into()], &[], 0, &blobs).unwrap();
        assert_eq!(mode(&archive), file, "docker-archive");
        assert_eq!(mode(&archive), 0o666 & !super::umask());

        let layout = dir.path().join("out/layout");
        let sboms = vec![("linux-amd64.spdx.json".to_string(), b"{}".to_vec())];
        super::layout::write(&layout, &image, &["1".into()], &blobs, &sboms).unwrap();
        assert_eq!(mode(&layout), folder, "layout directory");
        for d in ["blobs", "blobs/sha256", "sbom"] {
            assert_eq!(mode(&layout.join(d)), folder, "{d}");
        }
        for f in ["index.json", "oci-layout", "sbom/linux-amd64.spdx.json"] {
            assert_eq!(mode(&layout.join(f)), file, "{f}");
        }

        // A blob copied rather than linked (the cache on another
        // filesystem) gets an output file's mode too, whatever the source's.
        let other_fs = tempfile::tempdir_in("/dev/shm").ok().filter(|o| {
            use std::os::unix::fs::MetadataExt;
            let dev = |p: &std::path::Path| std::fs::metadata(p).unwrap().dev();
            dev(o.path()) != dev(dir.path())
        });
        if let Some(other) = other_fs {
            let src = other.path().join("blob");
            std::fs::write(&src, b"blob").unwrap();
            std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
            let dst = dir.path().join("copied-blob");
            super::link_or_copy(&src, &dst).unwrap();
            assert_eq!(std::fs::read(&dst).unwrap(), b"blob");
            assert_eq!(mode(&dst), file, "copied blob");
        }
    }
}
