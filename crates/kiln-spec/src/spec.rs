//! `kiln.toml`: what to build. Parsed strictly: an unknown key or a bad
//! value is an error that names the file, line, column and key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::error::{SpecError, Unreadable};
use kiln_core::error::{Error, Result};
use kiln_core::platform::Platform;

/// A parsed, validated spec plus where it was read from.
#[derive(Debug)]
pub struct Spec {
    /// The spec file; relative paths in it are relative to its directory.
    pub path: PathBuf,
    pub image: ImageSection,
    pub files: Vec<FileEntry>,
    pub config: ConfigSection,
    pub apt: Option<crate::sections::AptSection>,
    pub pip: Option<crate::sections::PipSection>,
    pub conda: Option<crate::sections::CondaSection>,
    /// `[release]`: how a workspace member is released (kiln-workspace);
    /// the builder ignores it.
    pub release: Option<crate::sections::ReleaseSection>,
    /// The text it was parsed from (kiln.lock's inputs are read from it;
    /// a translated Dockerfile's spec exists only as text).
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default)]
    image: ImageSection,
    #[serde(default)]
    files: Vec<FileEntry>,
    #[serde(default)]
    config: ConfigSection,
    apt: Option<crate::sections::AptSection>,
    pip: Option<crate::sections::PipSection>,
    conda: Option<crate::sections::CondaSection>,
    release: Option<crate::sections::ReleaseSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// Repository to push to (`registry/repo`), without tag.
    pub name: Option<Repository>,
    #[serde(default = "default_tags")]
    pub tags: Vec<Tag>,
    #[serde(default = "default_base")]
    pub base: String,
    #[serde(default)]
    pub(crate) platforms: Vec<Parsed<Platform>>,
    /// Extra manifest annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            name: None,
            tags: default_tags(),
            base: default_base(),
            platforms: Vec::new(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_tags() -> Vec<Tag> {
    vec![Tag("latest".into())]
}

fn default_base() -> String {
    "scratch".into()
}

/// One `[[files]]` entry: a local file or directory copied in as one layer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub src: String,
    pub dst: AbsPath,
    pub mode: Option<Mode>,
    pub owner: Option<Owner>,
    /// `mode` may set setuid/setgid bits (refused otherwise).
    #[serde(default, rename = "allow-setid")]
    pub allow_setid: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSection {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub workdir: Option<AbsPath>,
    pub user: Option<User>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub exposed_ports: Vec<Port>,
    #[serde(default)]
    pub volumes: Vec<AbsPath>,
    pub stop_signal: Option<String>,
}

impl Spec {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Unreadable {
            what: Unreadable::Spec,
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: SpecFile = toml::from_str(text).map_err(|e| located_error(path, text, &e))?;
        let spec = Spec {
            path: path.to_path_buf(),
            image: file.image,
            files: file.files,
            config: file.config,
            apt: file.apt,
            pip: file.pip,
            conda: file.conda,
            release: file.release,
            text: text.to_string(),
        };
        for k in spec.config.env.keys() {
            if k.is_empty() || k.contains('=') {
                return Err(SpecError::InvalidValue {
                    path: path.to_path_buf(),
                    key: "[config] env".into(),
                    message: format!("invalid variable name `{k}`"),
                }
                .into());
            }
        }
        Ok(spec)
    }

    /// Directory that relative paths in the spec are resolved against.
    pub fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn platforms(&self) -> Vec<Platform> {
        self.image.platforms.iter().map(|p| p.0.clone()).collect()
    }
}

/// `file:line:col: key: message`, with the offending line quoted.
fn located_error(path: &Path, text: &str, e: &toml::de::Error) -> SpecError {
    let message = e.message().trim_end().to_string();
    let Some(span) = e.span() else {
        return SpecError::Parse {
            path: path.to_path_buf(),
            message,
        };
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    let line_text = text[line_start..].lines().next().unwrap_or("");
    // Name the key when the error points at a value (`key = value`).
    let key = line_text
        .split_once('=')
        .filter(|(k, _)| line_start + k.len() <= span.start)
        .map(|(k, _)| k.trim().to_string());
    SpecError::Located {
        path: path.to_path_buf(),
        line,
        column: col,
        key,
        message,
        line_text: line_text.to_string(),
    }
}

/// Deserialize through `FromStr`, so a bad value's error carries its span.
macro_rules! from_str_deserialize {
    ($t:ty) => {
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Any `FromStr` type, deserialized with a located error.
#[derive(Debug, Clone)]
pub(crate) struct Parsed<T>(pub(crate) T);

impl<'de, T: FromStr<Err = Error>> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

/// An absolute path inside the image, normalised (no `.`/`..`, no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub String);

impl FromStr for AbsPath {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!(
                "`{s}` must be an absolute path in the image (start with /)"
            ));
        }
        let mut parts = Vec::new();
        for part in s.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(format!("`{s}` must not contain `..`")),
                p if p.contains('\0') => return Err("path contains a NUL byte".into()),
                p => parts.push(p),
            }
        }
        Ok(AbsPath(format!("/{}", parts.join("/"))))
    }
}
from_str_deserialize!(AbsPath);

impl AbsPath {
    /// Path relative to `/`, as stored in tar entries (empty for the root).
    pub fn relative(&self) -> &str {
        self.0.trim_start_matches('/')
    }
}

/// Permission bits, written as an octal string (`"0644"`, `"755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 && !digits.is_empty() => Ok(Mode(m)),
            _ => Err(format!(
                "invalid mode `{s}`: expected octal permission bits such as \"0644\" or \"0755\""
            )),
        }
    }
}
from_str_deserialize!(Mode);

/// Numeric `uid:gid` (names would need the image's /etc/passwd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl FromStr for Owner {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let err = || {
            format!(
                "invalid owner `{s}`: expected numeric UID:GID such as \"1000:1000\" (each at most 4294967295)"
            )
        };
        let (u, g) = s.split_once(':').ok_or_else(err)?;
        // Ids are 32-bit in tar headers' readers and in the kernel.
        let id = |v: &str| v.parse::<u32>().map(u64::from).map_err(|_| err());
        Ok(Owner {
            uid: id(u)?,
            gid: id(g)?,
        })
    }
}
from_str_deserialize!(Owner);

/// `user`, `user:group`, `uid` or `uid:gid` — anything the runtime accepts, but not empty or spaced.
#[derive(Debug, Clone)]
pub struct User(pub String);

impl FromStr for User {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.is_empty() || s.chars().any(char::is_whitespace) || s.matches(':').count() > 1 {
            return Err(format!(
                "invalid user `{s}`: expected USER[:GROUP] or UID[:GID]"
            ));
        }
        Ok(User(s.into()))
    }
}
from_str_deserialize!(User);

/// `8080`, `8080/tcp`, `53/udp` — normalised to `PORT/PROTO`.
#[derive(Debug, Clone)]
pub struct Port(pub String);

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (num, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let ok_num = num.parse::<u16>().map(|n| n > 0).unwrap_or(false);
        if !ok_num || !["tcp", "udp", "sctp"].contains(&proto) {
            return Err(format!(
                "invalid port `{s}`: expected PORT[/tcp|udp|sctp] with 1 <= PORT <= 65535"
            ));
        }
        Ok(Port(format!("{num}/{proto}")))
    }
}
from_str_deserialize!(Port);

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag(pub String);

impl FromStr for Tag {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if ok {
            Ok(Tag(s.into()))
        } else {
            Err(format!(
                "invalid tag `{s}`: tags are up to 128 of [A-Za-z0-9_.-], not starting with . or -"
            ))
        }
    }
}
from_str_deserialize!(Tag);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `registry/repository` (no tag or digest: those come from `tags`).
#[derive(Debug, Clone)]
pub struct Repository(pub String);

impl FromStr for Repository {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let r: oci_spec::distribution::Reference = s
            .parse()
            .map_err(|e| format!("invalid image name `{s}`: {e}"))?;
        let last = s.rsplit('/').next().unwrap_or(s);
        if last.contains(':') || s.contains('@') {
            return Err(format!(
                "image name `{s}` must not carry a tag or digest: put tags in `tags`"
            ));
        }
        Ok(Repository(format!("{}/{}", r.registry(), r.repository())))
    }
}
from_str_deserialize!(Repository);

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Spec> {
        Spec::parse(t, Path::new("kiln.toml"))
    }

    #[test]
    fn minimal_and_full() {
        let s = parse("[image]\n").unwrap();
        assert_eq!(s.image.base, "scratch");
        assert_eq!(s.image.tags[0].0, "latest");
        let s = parse(
            r#"
[image]
name = "127.0.0.1:5000/demo/app"
tags = ["1.0"]
platforms = ["linux/amd64", "linux/arm64"]
[[files]]
src = "app"
dst = "/app/"
mode = "0755"
owner = "1000:1000"
[config]
env = { A = "1" }
exposed_ports = ["8080", "53/udp"]
workdir = "/app"
"#,
        )
        .unwrap();
        assert_eq!(s.image.name.as_ref().unwrap().0, "127.0.0.1:5000/demo/app");
        assert_eq!(s.files[0].dst.0, "/app");
        assert_eq!(s.files[0].mode, Some(Mode(0o755)));
        assert_eq!(s.config.exposed_ports[0].0, "8080/tcp");
        assert_eq!(s.platforms().len(), 2);
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("[image]\nnmae = \"x\"\n").unwrap_err().to_string();
        assert!(e.starts_with("kiln.toml:2:1:"), "{e}");
        assert!(e.contains("unknown field `nmae`"), "{e}");
        let e = parse("[image]\n[[files]]\nsrc = \"a\"\ndst = \"rel\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kiln.toml:4:7: dst:"), "{e}");
        let e = parse("[image]\n[[files]]\nsrc = \"a\"\ndst = \"/a\"\nmode = \"999\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kiln.toml:5:") && e.contains("mode:") && e.contains("invalid mode"),
            "{e}"
        );
        let e = parse("[image]\nplatforms = [\"linux/amd65\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("platforms:") && e.contains("amd65"), "{e}");
        let e = parse("[image]\ntags = [\"-bad\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid tag"), "{e}");
        assert!(parse("[image]\nname = \"a/b:1\"\n").is_err());
        assert!(parse("[image]\n[config]\nexposed_ports = [\"0\"]\n").is_err());
    }

    fn spec_error(e: &Error) -> &SpecError {
        e.downcast_ref::<SpecError>()
            .unwrap_or_else(|| panic!("not a SpecError: {e:?}"))
    }

    #[test]
    fn located_errors_carry_line_column_and_key() {
        let e = parse("[image]\n[[files]]\nsrc = \"a\"\ndst = \"rel\"\n").unwrap_err();
        assert_eq!(e.kind(), kiln_core::ErrorKind::Input);
        match spec_error(&e) {
            SpecError::Located {
                line,
                column,
                key,
                line_text,
                message,
                ..
            } => {
                assert_eq!((*line, *column), (4, 7));
                assert_eq!(key.as_deref(), Some("dst"));
                assert_eq!(line_text, "dst = \"rel\"");
                assert!(message.contains("absolute path"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // An unknown key is not a value: no key is named.
        let e = parse("[image]\nnmae = \"x\"\n").unwrap_err();
        assert!(matches!(
            spec_error(&e),
            SpecError::Located {
                line: 2,
                column: 1,
                key: None,
                ..
            }
        ));
    }

    #[test]
    fn bad_env_names_are_invalid_values() {
        let e = parse("[config]\nenv = { \"A=B\" = \"1\" }\n").unwrap_err();
        assert!(
            matches!(spec_error(&e), SpecError::InvalidValue { key, .. } if key == "[config] env"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "kiln.toml: [config] env: invalid variable name `A=B`"
        );
    }

    #[test]
    fn a_missing_spec_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        let e = Spec::load(&path).unwrap_err();
        assert!(matches!(
            spec_error(&e),
            SpecError::Unreadable { what: crate::Unreadable::Spec, path: p, .. } if *p == path
        ));
        assert!(e.to_string().starts_with("cannot read spec "), "{e}");
    }
}

#[cfg(test)]
mod mutation_tests {
    /// kiln.toml never panics on mangled input (and errors stay located).
    #[test]
    fn specs_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"[image]\nname = \"r.invalid/a/b\"\ntags = [\"1.0\"]\nbase = \"oci:base:v1\"\nplatforms = [\"linux/arm64/v8\"]\n\n[[files]]\nsrc = \"a\"\ndst = \"/a\"\nmode = \"0644\"\nowner = \"1:1\"\n\n[config]\nenv = { A = \"1\" }\nexposed_ports = [\"80/tcp\"]\n\n[apt]\npackages = [\"curl\"]\n[pip]\npackages = [\"numpy\"]\n[conda]\nchannels = [\"conda-forge\"]\n",
        ];
        let path = std::path::Path::new("/nonexistent/kiln.toml");
        for m in kiln_core::mutate::mutants(seeds, 3000) {
            let _ = super::Spec::parse(&String::from_utf8_lossy(&m), path);
        }
    }
}
