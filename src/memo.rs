//! A locked platform's package stages, remembered: with kiln.lock in use,
//! the layers the stages make are a function of the pins, the base
//! manifest, the spec's inputs, the epoch, the compression and kiln's
//! version. A rebuild with all of those unchanged takes the layers (verified
//! in the cache), the reports and the files the SBOM reads from here instead
//! of unpacking every package again.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stages::PipReport;
use kiln_apt::AptReport;
use kiln_conda::CondaReport;
use kiln_core::digest::Digest;
use kiln_fs::layer::LayerBlob;
use kiln_fs::rootfs::{DirMeta, Node, Rootfs};
use kiln_oci::image::NewLayer;
use kiln_spec::lock::{Lock, LockedPlatform};
use kiln_store::cache::{Cache, CacheBucket};

/// The `artifactType` of a stage record pushed beside an image (an OCI
/// referrer of its platform manifest): a memo, found by `--cache-from`.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.kiln.stages.v1+json";

#[derive(Serialize, Deserialize)]
pub(crate) struct PlatformMemo {
    /// Its key: a record found in a registry is used only for this key.
    #[serde(default)]
    key: String,
    layers: Vec<MemoLayer>,
    pub(crate) apt: Option<AptReport>,
    pub(crate) conda: Option<CondaReport>,
    pub(crate) pip: Vec<PipReport>,
    /// purls of the base's packages (for the SBOM).
    pub(crate) base_purls: std::collections::BTreeSet<String>,
    /// Contents the filesystem view kept (package databases, dist-info
    /// metadata, conda-meta) after the stages.
    #[serde(with = "base64_contents")]
    kept: Vec<(String, Vec<u8>)>,
    /// Directories whose mode or owner is not root's 0755: a `[[files]]`
    /// layer's parent directories keep them.
    #[serde(default)]
    dirs: Vec<(String, DirMeta)>,
    /// In a pushed stage record: the layers of the `[[run]]` steps the
    /// build ran or remembered over these stages, by their keys, so that
    /// `--cache-from` takes them too (a local memo has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    runs: Vec<RunRecord>,
}

/// A `[[run]]` step's layer by the key it is remembered under.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    pub(crate) key: Digest,
    pub(crate) layer: kiln_fs::layer::LayerBlob,
}

#[derive(Serialize, Deserialize)]
struct MemoLayer {
    digest: Digest,
    diff_id: Digest,
    size: u64,
    media_type: String,
    created_by: String,
}

/// The memo's key for one platform of a build with these pins: the pins,
/// the spec's inputs and the base, and what else the stages' output
/// depends on (the epoch, the compression, the SBOM's view, maintainer
/// scripts, and for another architecture's bytecode the host's Python).
pub(crate) fn key(
    lock: &Lock,
    platform: &LockedPlatform,
    img: &kiln_oci::base::PlatformImage,
    opts: &crate::build::BuildOptions,
    spec: &kiln_spec::spec::Spec,
) -> Digest {
    let pins = serde_json::to_string(platform).unwrap_or_default();
    let (epoch, compression, sbom) = (opts.epoch, opts.compression, opts.sbom);
    let run_scripts = opts.run_scripts && spec.apt.is_some();
    let compile = spec.pip.as_ref().is_some_and(|p| p.compile);
    Digest::of(
        format!(
            "kiln-stages/5 {} layers/{} {} {:?} {epoch} {compression:?} sbom={sbom} scripts={run_scripts}\n{}{pins}",
            env!("CARGO_PKG_VERSION"),
            kiln_fs::layer::ENCODING,
            lock.inputs_hash,
            img.manifest_digest.as_ref().map(|d| d.to_string()),
            crate::bytecode::host_compilers(&img.platform, compile),
        )
        .as_bytes(),
    )
}

/// An unlocked build's pins for one platform, kept with what they were
/// resolved from: a later build of the same spec inputs on the same base
/// takes them as a lock's, and with them the stages' memo ([`key`]), when
/// every resolution still holds: `[apt]`'s signed indexes the same,
/// `[pip]`'s requirements, options, sources, pages and find-links
/// listings the same (on the image apt made, itself the same then);
/// `[conda]`'s repodata the same (on the image apt made, itself the same),
/// and its environment.yml's `pip:` list's resolution as `[pip]`'s.
/// Taken wherever a lock's pins would take the memo: with maintainer
/// scripts run (the key says so, as a lock's does), and before `[[run]]`
/// steps (remembered over the stages' layers on their own, see
/// `run_steps::groups`).
#[derive(Serialize, Deserialize)]
pub(crate) struct KeptPins {
    format: u32,
    pub(crate) pins: LockedPlatform,
    #[serde(default)]
    pub(crate) apt: Option<kiln_apt::KeptIndexes>,
    #[serde(default)]
    pub(crate) conda: Option<kiln_conda::KeptRepodata>,
    /// An environment.yml's `pip:` list's.
    #[serde(default)]
    pub(crate) environment_pip: Option<kiln_pip::KeptResolution>,
    #[serde(default)]
    pub(crate) pip: Option<kiln_pip::KeptResolution>,
}

/// Bumped when what the pins depend on, or this layout, changes (2: an
/// environment.yml's `pip:` list kept).
const KEPT_PINS_FORMAT: u32 = 2;

/// Where the pins of `inputs_hash` on the base `base_manifest` for
/// `platform` are kept.
fn kept_pins_path(
    cache: &Cache,
    inputs_hash: &Digest,
    base_manifest: Option<&Digest>,
    platform: &kiln_core::platform::Platform,
) -> PathBuf {
    let key = Digest::of(
        format!(
            "kiln-kept-pins/{KEPT_PINS_FORMAT} {} {inputs_hash} {:?} {platform}",
            env!("CARGO_PKG_VERSION"),
            base_manifest.map(|d| d.to_string()),
        )
        .as_bytes(),
    );
    cache.entry(CacheBucket::KeptPins, format!("{}.json", key.hex()))
}

impl KeptPins {
    /// Pins with no resolution kept yet (the caller sets those it has).
    pub(crate) fn new(pins: LockedPlatform) -> KeptPins {
        KeptPins {
            format: KEPT_PINS_FORMAT,
            pins,
            apt: None,
            conda: None,
            environment_pip: None,
            pip: None,
        }
    }

    pub(crate) fn read(
        cache: &Cache,
        inputs_hash: &Digest,
        base_manifest: Option<&Digest>,
        platform: &kiln_core::platform::Platform,
    ) -> Option<KeptPins> {
        let path = kept_pins_path(cache, inputs_hash, base_manifest, platform);
        let kept: KeptPins = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        (kept.format == KEPT_PINS_FORMAT).then_some(kept)
    }

    /// Best effort, as the stage memo.
    pub(crate) fn write(
        &self,
        cache: &Cache,
        inputs_hash: &Digest,
        base_manifest: Option<&Digest>,
        platform: &kiln_core::platform::Platform,
    ) {
        if let Ok(json) = serde_json::to_vec(self) {
            let path = kept_pins_path(cache, inputs_hash, base_manifest, platform);
            kiln_store::cache::write_atomic(&path, &json);
        }
    }
}

fn path(cache: &Cache, key: &Digest) -> PathBuf {
    cache.entry(CacheBucket::Stages, format!("{}.json", key.hex()))
}

impl PlatformMemo {
    pub(crate) fn new(
        key: &Digest,
        layers: &[NewLayer],
        apt: Option<&AptReport>,
        conda: Option<&CondaReport>,
        pip: &[PipReport],
        base_purls: &std::collections::BTreeSet<String>,
        fs: &Rootfs,
    ) -> serde_json::Result<Self> {
        // The reports are copied through JSON (they are not Clone).
        Ok(PlatformMemo {
            key: key.to_string(),
            layers: layers
                .iter()
                .map(|l| MemoLayer {
                    digest: l.blob.digest.clone(),
                    diff_id: l.blob.diff_id.clone(),
                    size: l.blob.size,
                    media_type: l.blob.media_type.clone(),
                    created_by: l.created_by.clone(),
                })
                .collect(),
            apt: apt
                .map(|a| serde_json::from_value(serde_json::to_value(a)?))
                .transpose()?,
            conda: conda
                .map(|c| serde_json::from_value(serde_json::to_value(c)?))
                .transpose()?,
            pip: serde_json::from_value(serde_json::to_value(pip)?)?,
            base_purls: base_purls.clone(),
            kept: kept_files(fs),
            dirs: distinct_dirs(fs),
            runs: Vec::new(),
        })
    }

    /// A remembered result whose layers are all still in the cache.
    pub(crate) fn read(cache: &Cache, key: &Digest) -> Option<PlatformMemo> {
        let m: PlatformMemo =
            serde_json::from_slice(&std::fs::read(path(cache, key)).ok()?).ok()?;
        for l in &m.layers {
            cache.verified(&l.digest).ok()??;
        }
        Some(m)
    }

    /// The memo's file, for pushing it beside the image.
    pub(crate) fn read_bytes(cache: &Cache, key: &Digest) -> Option<Vec<u8>> {
        std::fs::read(path(cache, key)).ok()
    }

    /// The stage record to push for `key`: the memo, with the layers of the
    /// `[[run]]` steps over it.
    pub(crate) fn record(cache: &Cache, key: &Digest, runs: &[RunRecord]) -> Option<Vec<u8>> {
        let bytes = Self::read_bytes(cache, key)?;
        if runs.is_empty() {
            return Some(bytes);
        }
        let mut m: PlatformMemo = serde_json::from_slice(&bytes).ok()?;
        m.runs = runs.to_vec();
        serde_json::to_vec(&m).ok()
    }

    /// `--cache-from`: the stage record for `key` pushed beside one of
    /// `refs` (its platform manifest's referrer), with its layers pulled
    /// into the cache. A miss is not an error: the stages run as usual;
    /// what went wrong is said on stderr.
    pub(crate) fn from_registry(
        cache: &Cache,
        refs: &[String],
        insecure: &[String],
        platform: &kiln_core::platform::Platform,
        key: &Digest,
    ) -> Option<PlatformMemo> {
        for r in refs {
            match Self::from_one(cache, r, insecure, platform, key) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => eprintln!("warning: --cache-from {r}: {e} (not used)"),
            }
        }
        None
    }

    fn from_one(
        cache: &Cache,
        r: &str,
        insecure: &[String],
        platform: &kiln_core::platform::Platform,
        key: &Digest,
    ) -> kiln_core::error::Result<Option<PlatformMemo>> {
        use kiln_oci::{blobs::Blobs, inspect, registry::Registry};
        use kiln_spec::source::ImageSource;
        let src = ImageSource::parse(r, &std::path::PathBuf::from("."))?;
        let ImageSource::Registry(reference) = &src else {
            return Err(kiln_core::Error::input("not a registry reference"));
        };
        let registry = Registry::new(insecure, &[reference])?;
        let mut blobs = Blobs::new(cache, Some(&registry));
        let img = inspect::open(&src, Some(platform.clone()), &mut blobs, Some(&registry))?;
        let Some(found) = inspect::find_sbom(&src, &img, Some(&registry), cache, MEDIA_TYPE, "")?
        else {
            return Ok(None);
        };
        let m: PlatformMemo = serde_json::from_slice(&found.bytes)
            .map_err(|e| kiln_core::Error::input(format!("its stage record is unreadable: {e}")))?;
        if m.key != key.to_string() {
            return Ok(None);
        }
        for l in &m.layers {
            if cache.verified(&l.digest)?.is_none() {
                registry.fetch_blob(reference, &l.digest, l.size, cache)?;
            }
        }
        // The commands' layers, remembered as if run here (best effort: a
        // command whose layer cannot be had runs).
        for r in &m.runs {
            let have = match cache.verified(&r.layer.digest)? {
                Some(_) => true,
                None => registry
                    .fetch_blob(reference, &r.layer.digest, r.layer.size, cache)
                    .is_ok(),
            };
            if have {
                kiln_fs::layer::remember(cache, &r.key, &r.layer);
            }
        }
        m.write(cache, key);
        Ok(Some(m))
    }

    /// Best effort: a memo that cannot be written only costs a rebuild.
    pub(crate) fn write(&self, cache: &Cache, key: &Digest) {
        if let Ok(json) = serde_json::to_vec(self) {
            kiln_store::cache::write_atomic(&path(cache, key), &json);
        }
    }

    pub(crate) fn layers(&self) -> Vec<NewLayer> {
        self.layers
            .iter()
            .map(|l| NewLayer {
                blob: LayerBlob {
                    digest: l.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size: l.size,
                    media_type: l.media_type.clone(),
                },
                created_by: l.created_by.clone(),
            })
            .collect()
    }

    /// The filesystem view the SBOM reads: the kept files.
    pub(crate) fn fs(&self) -> Rootfs {
        view_of(&self.kept, &self.dirs)
    }
}

/// The whole filesystem view of a base (every path's node, the kept
/// contents, the directories' modes), as [`Rootfs::from_layers`] made it
/// with the build's usual `keep`, remembered by the base's manifest: a
/// warm build does not decompress the base's layers again to learn what
/// it holds. Kept as a derived entry (zstd with its checksum: a damaged
/// one is no view); the JSON names the manifest, so `kiln cache gc` drops
/// it with the base.
#[derive(Serialize, Deserialize)]
struct BaseView<F> {
    manifest: Digest,
    fs: F,
}

/// The key the view of the base `manifest` is kept under.
fn view_key(manifest: &Digest) -> Digest {
    Digest::of(format!("kiln-base-view/4 {} {manifest}", env!("CARGO_PKG_VERSION")).as_bytes())
}

/// The remembered view of the base whose manifest is `manifest`.
pub(crate) fn read_view(cache: &Cache, manifest: &Digest) -> Option<Rootfs> {
    let json = cache.read_derived(CacheBucket::Stages, &view_key(manifest))?;
    let v: BaseView<Rootfs> = serde_json::from_slice(&json).ok()?;
    (&v.manifest == manifest).then_some(v.fs)
}

fn view_of(kept: &[(String, Vec<u8>)], dirs: &[(String, DirMeta)]) -> Rootfs {
    let mut fs = Rootfs::default();
    for (p, m) in dirs {
        fs.insert_dir(p, *m);
    }
    for (p, c) in kept {
        // Their directories, so a path resolves as in the tree it came from.
        for (i, _) in p.match_indices('/').skip(1) {
            if fs.node(&p[..i]).is_none() {
                fs.insert(&p[..i], Node::Dir);
            }
        }
        fs.insert_file(p, c);
    }
    fs
}

/// Best effort, as the stage memo.
pub(crate) fn write_view(cache: &Cache, manifest: &Digest, fs: &Rootfs) {
    let v = BaseView {
        manifest: manifest.clone(),
        fs,
    };
    if let Ok(json) = serde_json::to_vec(&v) {
        cache.keep_derived(CacheBucket::Stages, &view_key(manifest), &json);
    }
}

/// The directories of a view that are not root's 0755.
fn distinct_dirs(fs: &Rootfs) -> Vec<(String, DirMeta)> {
    fs.distinct_dirs().map(|(p, m)| (p.clone(), m)).collect()
}

/// The files whose contents a filesystem view kept.
fn kept_files(fs: &Rootfs) -> Vec<(String, Vec<u8>)> {
    fs.paths()
        .filter_map(|(p, n)| match n {
            Node::File {
                content: Some(c), ..
            } => Some((p.clone(), c.clone())),
            _ => None,
        })
        .collect()
}

/// Kept contents as base64 strings: a warm build reads a few MB of package
/// databases back, and JSON arrays of byte numbers parse several times
/// slower than one string each.
mod base64_contents {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Files = Vec<(String, Vec<u8>)>;
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    pub(super) fn serialize<S: Serializer>(files: &Files, s: S) -> Result<S::Ok, S::Error> {
        let encoded: Vec<(&str, String)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), B64.encode(c)))
            .collect();
        encoded.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Files, D::Error> {
        let encoded = Vec::<(String, String)>::deserialize(d)?;
        encoded
            .into_iter()
            .map(|(p, c)| Ok((p, B64.decode(c).map_err(serde::de::Error::custom)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_view_comes_back_with_its_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let manifest = Digest::of(b"a manifest");
        let mut fs = Rootfs::default();
        let status = b"Package: hello\nStatus: install ok installed\n\xff\x00".to_vec();
        for d in ["/var", "/var/lib", "/var/lib/dpkg", "/usr", "/usr/bin"] {
            fs.insert(d, Node::Dir);
        }
        fs.insert_file("/var/lib/dpkg/status", &status);
        let home = DirMeta {
            mode: 0o2775,
            uid: 1000,
            gid: 100,
        };
        fs.insert_dir("/home/nb", home);
        fs.insert_dir("/usr", DirMeta::IMPLIED);
        fs.insert("/usr/bin/python3", Node::Symlink("python3.11".into()));
        fs.insert(
            "/usr/bin/python3.11",
            Node::File {
                size: 6_000_000,
                mode: 0o755,
                content: None,
            },
        );
        write_view(&cache, &manifest, &fs);
        let path = cache.entry(
            CacheBucket::Stages,
            format!("{}.zst", view_key(&manifest).hex()),
        );
        let json = zstd::stream::decode_all(&std::fs::read(&path).unwrap()[..]).unwrap();
        let json = String::from_utf8(json).unwrap();
        assert!(!json.contains("[80,97"), "contents are strings: {json}");
        let back = read_view(&cache, &manifest).unwrap();
        assert_eq!(back.read("/var/lib/dpkg/status"), Some(&status[..]));
        assert_eq!(back.dir_meta("/home/nb"), Some(home));
        assert_eq!(back.dir_meta("/usr"), fs.dir_meta("/usr"));
        // Every node, the ones without kept contents too.
        assert_eq!(
            back.paths().collect::<Vec<_>>(),
            fs.paths().collect::<Vec<_>>()
        );
        assert!(read_view(&cache, &Digest::of(b"another")).is_none());
        // A damaged view is no view.
        let mut z = std::fs::read(&path).unwrap();
        let n = z.len();
        z[n - 2] ^= 1;
        std::fs::write(&path, z).unwrap();
        assert!(read_view(&cache, &manifest).is_none());
    }
}
