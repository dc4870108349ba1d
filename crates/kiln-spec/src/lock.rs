//! `kiln.lock`: every resolved input pinned, next to the spec.
//!
//! TOML, sorted, one table per pinned artifact, so a change reads as a
//! small diff. The lock records the spec inputs it was made from as
//! flattened `key = value` lines (plus the sha256 of files those inputs
//! name): a spec that no longer matches is shown as a line diff, and their
//! hash decides whether a build may use the pins.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{SpecError, Unreadable};
use crate::spec::Spec;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};

pub(crate) const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Lock {
    pub version: u32,
    /// sha256 over `inputs`.
    pub inputs_hash: Digest,
    /// The spec inputs the pins were resolved from.
    pub inputs: Vec<String>,
    /// When the pins were resolved (RFC 3339 UTC): the image's default
    /// `created`, so a locked build is reproducible and its date meaningful.
    /// Kept by `kiln lock` while the pins stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<String>,
    /// Git sources the build read (a Dockerfile's context or the
    /// Dockerfile itself), at the commit they resolved to: a later build
    /// fetches these commits, not the refs again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git: Vec<GitPin>,
    /// Registry images `[[files]] from` names by tag (a Dockerfile's
    /// `COPY --from=IMAGE`), at the digest the tag had: a later build reads
    /// that digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImagePin>,
    #[serde(default, rename = "platform")]
    pub platforms: Vec<LockedPlatform>,
    /// A multi-stage Dockerfile's earlier stages that the target builds on,
    /// each with its own pins, in build order.
    #[serde(default, rename = "stage", skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageLock>,
}

/// The lock of one Dockerfile stage inside its target's lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StageLock {
    /// The stage's name (`FROM … AS NAME`), else its index.
    pub name: String,
    pub lock: Lock,
}

/// A registry image named by tag, at its digest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImagePin {
    /// As the spec writes it.
    pub reference: String,
    /// The digest of its index or manifest.
    pub digest: Digest,
}

/// A Git source at its resolved commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GitPin {
    /// The URL as written (credentials masked), ref and path included.
    pub url: String,
    /// The full commit id.
    pub commit: String,
    /// The directory or file inside the repository (`/`-separated; empty:
    /// the root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LockedPlatform {
    pub platform: String,
    /// Manifest digest of this platform's base image (absent for scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Digest>,
    /// Digest of the base's top document (index or manifest) when it came from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_top: Option<Digest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apt: Vec<AptPin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conda: Vec<CondaPin>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pip: Vec<PipPin>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AptPin {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub url: String,
    #[serde(with = "kiln_core::digest::bare_hex")]
    pub sha256: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipPin {
    /// `pip` for `[pip]`, `environment` for an environment.yml `pip:` list.
    pub section: String,
    pub name: String,
    pub version: String,
    pub filename: String,
    pub url: String,
    #[serde(with = "kiln_core::digest::bare_hex")]
    pub sha256: Digest,
    pub size: u64,
    #[serde(default)]
    pub requested: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_url: Option<String>,
    /// A wheel kiln built: the source it was built from (`url`, `sha256`
    /// and `filename` above are the built wheel's, `url` being the
    /// source's as a wheel built here has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdist: Option<SdistPin>,
}

/// The source of a built wheel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SdistPin {
    /// The sdist's URL (no credentials), or a source directory's `file:` URL.
    pub url: String,
    /// The sdist's sha256 (hex); none for a directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CondaPin {
    pub name: String,
    pub version: String,
    pub build: String,
    pub channel: String,
    pub subdir: String,
    pub filename: String,
    pub url: String,
    #[serde(with = "kiln_core::digest::bare_hex")]
    pub sha256: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// As the channel's repodata gave them (it may patch what the archive says).
    #[serde(default)]
    pub depends: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constrains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<String>,
}

/// `kiln.lock` beside the spec.
pub fn path_for(spec: &Path) -> PathBuf {
    spec.with_file_name("kiln.lock")
}

/// The lock of a Dockerfile (or environment-file) build: `NAME.kiln.lock`
/// beside a local file `NAME` (so a kiln.toml in the same directory keeps
/// its own kiln.lock), in the current directory for one fetched from Git.
pub fn path_for_source(file: &Path, fetched: bool) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    let lock = format!("{name}.kiln.lock");
    match file.parent() {
        Some(dir) if !fetched && !dir.as_os_str().is_empty() => dir.join(lock),
        _ => PathBuf::from(lock),
    }
}

impl Lock {
    pub fn new(inputs: Vec<String>, platforms: Vec<LockedPlatform>) -> Lock {
        let mut platforms = platforms;
        for p in &mut platforms {
            p.apt.sort();
            p.pip.sort();
            p.conda.sort();
        }
        Lock {
            version: LOCK_VERSION,
            inputs_hash: inputs_hash(&inputs),
            inputs,
            resolved_at: None,
            git: Vec::new(),
            images: Vec::new(),
            platforms,
            stages: Vec::new(),
        }
    }

    /// [`Lock::resolved_at`] in seconds since the epoch.
    pub fn resolved_epoch(&self) -> Option<u64> {
        self.resolved_at
            .as_deref()
            .and_then(kiln_core::time::parse_rfc3339)
    }

    /// Read a lock; `None` when the file does not exist.
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SpecError::Unreadable {
                    what: Unreadable::Lock,
                    path: path.to_path_buf(),
                    source,
                }
                .into())
            }
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| SpecError::LockParse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        if lock.version != LOCK_VERSION {
            return Err(SpecError::LockVersion {
                path: path.to_path_buf(),
                version: lock.version,
            }
            .into());
        }
        if lock.resolved_at.is_some() && lock.resolved_epoch().is_none() {
            return Err(SpecError::LockParse {
                path: path.to_path_buf(),
                message: format!(
                    "resolved-at = {:?} is not an RFC 3339 date after 1970",
                    lock.resolved_at.as_deref().unwrap_or_default()
                ),
            }
            .into());
        }
        if lock.inputs_hash != inputs_hash(&lock.inputs) {
            return Err(SpecError::LockHash {
                path: path.to_path_buf(),
            }
            .into());
        }
        Ok(Some(lock))
    }

    /// Write atomically (temp file + rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self)
            .map_err(|e| Error::internal(format!("serialising the lock: {e}")))?;
        let text = format!("# kiln.lock: made by `kiln lock`; do not edit by hand.\n{body}");
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // `--lockfile locks/app.lock` may name a directory not made yet.
        std::fs::create_dir_all(dir).io_context(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .io_context(|| format!("creating a file in {}", dir.display()))?;
        std::io::Write::write_all(&mut tmp, text.as_bytes())
            .io_context(|| format!("writing {}", path.display()))?;
        // A lock is a project file, not a secret (the temp file starts 0600).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .io_context(|| format!("writing {}", path.display()))?;
        tmp.persist(path).map_err(|e| Error::Io {
            context: format!("writing {}", path.display()),
            source: e.error,
        })?;
        Ok(())
    }

    pub fn platform(&self, platform: &str) -> Option<&LockedPlatform> {
        self.platforms.iter().find(|p| p.platform == platform)
    }

    /// Every artifact digest the lock names (base manifests excluded),
    /// its stages' included.
    pub fn artifact_digests(&self) -> Vec<(Digest, String)> {
        let mut out: Vec<(Digest, String)> = self
            .stages
            .iter()
            .flat_map(|s| s.lock.artifact_digests())
            .collect();
        for p in &self.platforms {
            for a in &p.apt {
                out.push((a.sha256.clone(), a.url.clone()));
            }
            for w in &p.pip {
                out.push((w.sha256.clone(), w.url.clone()));
            }
            for c in &p.conda {
                out.push((c.sha256.clone(), c.url.clone()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// What can be downloaded of [`Lock::artifact_digests`]: a wheel kiln
    /// built has no URL of its own, so its sdist (when it has a sha256) stands in.
    pub fn downloadable_digests(&self) -> Vec<(Digest, String)> {
        let built: std::collections::HashMap<&Digest, &SdistPin> = self
            .platforms
            .iter()
            .flat_map(|p| &p.pip)
            .filter_map(|w| w.sdist.as_ref().map(|s| (&w.sha256, s)))
            .collect();
        let mut out: Vec<(Digest, String)> = self
            .artifact_digests()
            .into_iter()
            .filter_map(|(d, url)| match built.get(&d) {
                None => Some((d, url)),
                Some(s) => {
                    let hex = s.sha256.as_ref()?;
                    Some((Digest::from_hex(hex).ok()?, s.url.clone()))
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn inputs_hash(inputs: &[String]) -> Digest {
    Digest::of(inputs.join("\n").as_bytes())
}

/// The spec inputs that decide resolution, as sorted `key = value` lines:
/// `[image] base/platforms`, `[apt]`, `[pip]`, `[conda]`, and the sha256 of
/// files they name (requirements files, environment.yml, packages-files).
pub fn inputs(spec: &Spec) -> Result<Vec<String>> {
    let doc: toml::Value = toml::from_str(&spec.text).map_err(|e| SpecError::Parse {
        path: spec.path.clone(),
        message: e.to_string(),
    })?;
    let mut lines = BTreeSet::new();
    if let Some(image) = doc.get("image") {
        for key in ["base", "platforms"] {
            if let Some(v) = image.get(key) {
                flatten(&format!("image.{key}"), v, &mut lines);
            }
        }
    }
    if image_base_missing(&doc) {
        lines.insert("image.base = \"scratch\"".to_string());
    }
    for section in ["apt", "pip", "conda"] {
        if let Some(v) = doc.get(section) {
            flatten(section, v, &mut lines);
        }
    }
    let dir = spec.dir();
    let mut files: Vec<String> = Vec::new();
    if let Some(p) = &spec.pip {
        files.extend(p.requirements.iter().cloned());
    }
    if let Some(c) = &spec.conda {
        files.extend(c.environment.iter().cloned());
    }
    // packages-files: confined when read for the build
    // ([`Spec::read_package_files`]); here only hashed.
    files.extend(spec.apt.iter().filter_map(|a| a.packages_file.clone()));
    files.extend(spec.pip.iter().filter_map(|p| p.packages_file.clone()));
    files.extend(spec.conda.iter().filter_map(|c| c.packages_file.clone()));
    for f in files {
        let bytes = std::fs::read(dir.join(&f)).map_err(|source| SpecError::Unreadable {
            what: Unreadable::SpecInput {
                spec: spec.path.clone(),
            },
            path: PathBuf::from(&f),
            source,
        })?;
        lines.insert(format!("file {f} = {}", Digest::of(&bytes)));
    }
    // A Dockerfile stage's scratch layout is named `stage:NAME` here, as in
    // the image: the lock must not depend on where the layout was made.
    let lines = lines.into_iter().map(|mut l| {
        for (reference, name) in &spec.input_names {
            l = l.replace(reference.as_str(), name);
        }
        l
    });
    Ok(lines.collect::<BTreeSet<_>>().into_iter().collect())
}

fn image_base_missing(doc: &toml::Value) -> bool {
    doc.get("image").and_then(|i| i.get("base")).is_none()
}

fn flatten(key: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        toml::Value::Array(items) if items.iter().all(|i| !i.is_table()) => {
            for i in items {
                out.insert(format!("{key}[] = {}", shown(i)));
            }
        }
        toml::Value::Array(items) => {
            for (n, i) in items.iter().enumerate() {
                flatten(&format!("{key}[{n}]"), i, out);
            }
        }
        other => {
            out.insert(format!("{key} = {}", shown(other)));
        }
    }
}

/// A spec value as the lock records it: URLs without their credentials
/// (a password is not a resolution input, and kiln.lock is a shared file).
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => toml::Value::String(kiln_core::url::redact(s)).to_string(),
        other => other.to_string(),
    }
}

/// A readable diff of lock inputs vs the spec's: `-` only in the lock, `+` only in the spec.
pub fn diff(locked: &[String], current: &[String]) -> String {
    let a: BTreeSet<&String> = locked.iter().collect();
    let b: BTreeSet<&String> = current.iter().collect();
    let mut out = String::new();
    for l in a.difference(&b) {
        out.push_str(&format!("  - {l}\n"));
    }
    for l in b.difference(&a) {
        out.push_str(&format!("  + {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_diff() {
        let lock = Lock::new(
            vec!["pip.packages[] = \"numpy\"".into()],
            vec![LockedPlatform {
                platform: "linux/amd64".into(),
                pip: vec![PipPin {
                    section: "pip".into(),
                    name: "numpy".into(),
                    version: "2.0.0".into(),
                    filename: "numpy-2.0.0-cp311-cp311-manylinux_2_17_x86_64.whl".into(),
                    url: "https://example.invalid/numpy.whl".into(),
                    sha256: Digest::from_hex(&"ab".repeat(32)).unwrap(),
                    size: 10,
                    requested: true,
                    direct_url: None,
                    sdist: None,
                }],
                ..Default::default()
            }],
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.lock");
        lock.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("[[platform.pip]]"), "{text}");
        assert_eq!(Lock::read(&p).unwrap().unwrap(), lock);
        let d = diff(&lock.inputs, &["pip.packages[] = \"scipy\"".to_string()]);
        assert_eq!(
            d,
            "  - pip.packages[] = \"numpy\"\n  + pip.packages[] = \"scipy\"\n"
        );
        // A hand-edited inputs list is caught.
        std::fs::write(&p, text.replacen("numpy", "scipy", 1)).unwrap();
        let e = Lock::read(&p).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::LockHash { path }) if *path == p
        ));
    }

    #[test]
    fn built_wheels_fetch_their_sdist_and_old_pins_read() {
        let pin = |name: &str, sha: &str, sdist: Option<SdistPin>| PipPin {
            section: "pip".into(),
            name: name.into(),
            version: "1.0".into(),
            filename: format!("{name}-1.0-py3-none-any.whl"),
            url: format!("https://example.invalid/{name}-1.0.tar.gz"),
            sha256: Digest::from_hex(&sha.repeat(32)).unwrap(),
            size: 1,
            requested: true,
            direct_url: None,
            sdist,
        };
        let built = SdistPin {
            url: "https://example.invalid/b-1.0.tar.gz".into(),
            sha256: Some("cd".repeat(32)),
        };
        let lock = Lock::new(
            vec![],
            vec![LockedPlatform {
                platform: "linux/amd64".into(),
                pip: vec![
                    pin("a", "ab", None),
                    pin("b", "ef", Some(built)),
                    pin(
                        "c",
                        "12",
                        Some(SdistPin {
                            url: "file:///src/c".into(),
                            sha256: None,
                        }),
                    ),
                ],
                ..Default::default()
            }],
        );
        let all = lock.artifact_digests();
        assert_eq!(all.len(), 3);
        let fetch = lock.downloadable_digests();
        assert_eq!(
            fetch,
            vec![
                (
                    Digest::from_hex(&"ab".repeat(32)).unwrap(),
                    "https://example.invalid/a-1.0.tar.gz".to_string()
                ),
                (
                    Digest::from_hex(&"cd".repeat(32)).unwrap(),
                    "https://example.invalid/b-1.0.tar.gz".to_string()
                ),
            ]
        );
        // A pin written before sdists were built has no `sdist`.
        let old: PipPin = toml::from_str(&format!(
            "section = \"pip\"\nname = \"a\"\nversion = \"1\"\nfilename = \"a-1-py3-none-any.whl\"\nurl = \"u\"\nsha256 = \"{}\"\nsize = 1\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert!(old.sdist.is_none());
    }

    #[test]
    fn bad_locks_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.lock");
        assert!(Lock::read(&p).unwrap().is_none());
        std::fs::write(&p, "version = 1\nbogus = true\n").unwrap();
        let e = Lock::read(&p).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<SpecError>(),
                Some(SpecError::LockParse { .. })
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("not a valid kiln.lock"), "{e}");
        let lock = Lock::new(vec![], vec![]);
        lock.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("version = 1", "version = 7")).unwrap();
        let e = Lock::read(&p).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<SpecError>(),
            Some(SpecError::LockVersion { version: 7, .. })
        ));
        assert!(
            e.to_string()
                .contains("lock version 7 is not supported (expected 1)"),
            "{e}"
        );
        assert_eq!(e.kind(), kiln_core::ErrorKind::Input);
    }

    #[test]
    fn resolved_at_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kiln.lock");
        let mut lock = Lock::new(vec![], vec![]);
        lock.resolved_at = Some("2023-11-14T22:13:20Z".into());
        lock.write(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("resolved-at = \"2023-11-14T22:13:20Z\""),
            "{text}"
        );
        let back = Lock::read(&p).unwrap().unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.resolved_epoch(), Some(1_700_000_000));
        std::fs::write(&p, text.replace("2023-11-14T22:13:20Z", "last tuesday")).unwrap();
        let e = Lock::read(&p).unwrap_err();
        assert!(e.to_string().contains("resolved-at"), "{e}");
        assert_eq!(e.kind(), kiln_core::ErrorKind::Input);
    }

    #[test]
    fn unreadable_spec_inputs_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, "[pip]\nrequirements = [\"req.txt\"]\n").unwrap();
        let spec = Spec::load(&path).unwrap();
        let e = inputs(&spec).unwrap_err();
        match e.downcast_ref::<SpecError>() {
            Some(SpecError::Unreadable {
                what: Unreadable::SpecInput { spec: s },
                path: f,
                ..
            }) => {
                assert_eq!(*s, path);
                assert_eq!(*f, PathBuf::from("req.txt"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("kiln.toml: req.txt: "), "{e}");
    }
}
