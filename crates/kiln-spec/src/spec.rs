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
    /// `[[run]]`: commands run in the assembled tree (a sandbox), each
    /// adding what it changed as a layer.
    pub run: Vec<RunStep>,
    /// `[release]`: how a workspace member is released (kiln-workspace);
    /// the builder ignores it.
    pub release: Option<crate::sections::ReleaseSection>,
    /// The text it was parsed from (kiln.lock's inputs are read from it;
    /// a translated Dockerfile's spec exists only as text).
    pub text: String,
    /// Where its lock is, when not kiln.lock beside it (`--lockfile`, a
    /// Dockerfile's `NAME.kiln.lock`): see [`Spec::lock_path`].
    pub lock_file: Option<PathBuf>,
    /// Image references shown by another name in the lock's inputs:
    /// (reference, name), as a Dockerfile stage's scratch layout is
    /// `stage:NAME`.
    pub input_names: Vec<(String, String)>,
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
    #[serde(default)]
    run: Vec<RunStep>,
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
    /// A Dockerfile (relative to the spec's directory) that describes the
    /// image instead of this spec's sections; `name`, `tags` and
    /// `annotations` here still apply.
    pub dockerfile: Option<String>,
    /// The Dockerfile's build context (relative to the spec's directory)
    /// [default: the spec's directory].
    pub context: Option<String>,
    /// The Dockerfile's `ARG` values (`--build-arg`).
    #[serde(default, rename = "build-args")]
    pub build_args: BTreeMap<String, String>,
    /// `/etc/localtime` and `/etc/timezone` [default: `Etc/UTC` for a
    /// bootstrapped image; a base image keeps its own].
    pub timezone: Option<Timezone>,
}

impl Default for ImageSection {
    fn default() -> Self {
        ImageSection {
            name: None,
            tags: default_tags(),
            base: default_base(),
            platforms: Vec::new(),
            annotations: BTreeMap::new(),
            dockerfile: None,
            context: None,
            build_args: BTreeMap::new(),
            timezone: None,
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
    /// Copy from this image (any base reference: `oci:DIR[:TAG]`,
    /// `docker-archive:FILE`, `REGISTRY/REPO:TAG`) instead of the context;
    /// `src` is then an absolute path inside it (docker's `COPY --from`).
    #[serde(default)]
    pub from: Option<String>,
    /// A file or directory in the context (or, with `from`, in that image).
    #[serde(default)]
    pub src: String,
    pub dst: AbsPath,
    /// The file's text itself instead of `src` (a Dockerfile's
    /// `COPY <<EOF /path` here-document).
    #[serde(default)]
    pub content: Option<String>,
    /// `src` is a tar archive (plain, gzip, xz, bzip2 or zstd) whose members
    /// go under `dst` (docker's `ADD` of a local archive).
    #[serde(default)]
    pub extract: bool,
    /// A remote file (http, https) instead of `src`, downloaded through the
    /// HTTP cache (docker's `ADD URL`); mode 0600 unless `mode`.
    #[serde(default)]
    pub url: Option<String>,
    /// The `url`'s expected sha256 (hex), checked before it is used
    /// (docker's `ADD --checksum=sha256:…`).
    #[serde(default)]
    pub sha256: Option<String>,
    pub mode: Option<Mode>,
    pub owner: Option<Owner>,
    /// `mode` may set setuid/setgid bits (refused otherwise).
    #[serde(default, rename = "allow-setid")]
    pub allow_setid: bool,
    /// With `from`: `dst` is a directory, and a file (or symlink) `src`
    /// goes into it under its own name (docker's `COPY --from=x /f /dir/`);
    /// a directory's contents go under `dst` either way.
    #[serde(default)]
    pub into: bool,
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
    /// Docker's `Healthcheck` (runtimes that know it run it; OCI has no field).
    pub healthcheck: Option<Healthcheck>,
}

/// `[config.healthcheck]`: docker's HEALTHCHECK.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Healthcheck {
    /// `["CMD", prog, args…]`, `["CMD-SHELL", "command"]`, or `["NONE"]`
    /// (turns off the base image's).
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<u32>,
}

/// A duration as Go and docker write it: `30s`, `1m30s`, `500ms`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration {
    pub nanos: u64,
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}` is not a duration (e.g. 30s, 1m30s, 500ms)");
        let mut nanos: u64 = 0;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        if rest == "0" {
            return Ok(Duration { nanos: 0 });
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(bad)?;
            let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let scale: f64 = match &rest[..unit_len] {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                "s" => 1e9,
                "m" => 60e9,
                "h" => 3600e9,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            nanos = nanos.checked_add((number * scale) as u64).ok_or_else(bad)?;
        }
        Ok(Duration { nanos })
    }
}

/// The network a `[[run]]` command sees (docker's `--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The host's (docker's default), with its resolv.conf and hosts.
    #[default]
    Host,
    /// Only a loopback device of its own.
    None,
}

impl Network {
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Host => "host",
            Network::None => "none",
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "host" | "default" => Ok(Network::Host),
            "none" => Ok(Network::None),
            other => Err(format!(
                "unknown network mode `{other}`: expected host or none"
            )),
        }
    }
}

/// A command as docker writes it: a string runs through the shell, a list
/// is the program and its arguments (exec form).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum RunCommand {
    Shell(String),
    Exec(Vec<String>),
}

/// One `[[run]]` entry: a command run in the tree assembled so far (base,
/// package stages, the `[[files]]` before it), in an unprivileged sandbox;
/// what it changes becomes one layer. Only for the host's architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunStep {
    pub command: RunCommand,
    /// The shell a string command runs in [default: /bin/sh -c].
    pub shell: Option<Vec<String>>,
    /// Variables on top of the base image's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Name or id, optionally `:group` [default: the base image's user, else root].
    pub user: Option<String>,
    /// Where it starts (made when missing) [default: the base's, else /].
    pub workdir: Option<AbsPath>,
    /// [default: `kiln build --network`, else host]
    pub network: Option<Network>,
    /// Runs after this many `[[files]]` entries [default: after all].
    pub after_files: Option<usize>,
    /// What messages call it (a Dockerfile's `line 7: RUN …`).
    pub label: Option<String>,
}

impl RunStep {
    /// The program and its arguments.
    pub fn argv(&self) -> Vec<String> {
        match &self.command {
            RunCommand::Exec(v) => v.clone(),
            RunCommand::Shell(s) => {
                let mut v = self
                    .shell
                    .clone()
                    .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
                v.push(s.clone());
                v
            }
        }
    }

    /// `[[run]] N` or its label, for messages.
    pub fn describe(&self, index: usize) -> String {
        match &self.label {
            Some(l) => l.clone(),
            None => format!("[[run]] {}", index + 1),
        }
    }

    fn check(&self, _index: usize, files: usize) -> std::result::Result<(), String> {
        match &self.command {
            RunCommand::Shell(s) if s.trim().is_empty() => return Err("empty command".into()),
            RunCommand::Exec(v) if v.first().is_none_or(|p| p.is_empty()) => {
                return Err("empty command".into())
            }
            _ => {}
        }
        if matches!(&self.shell, Some(sh) if sh.is_empty()) {
            return Err("shell must name a program".into());
        }
        if let Some(n) = self.after_files {
            if n > files {
                return Err(format!(
                    "after-files = {n}, but the spec has {files} [[files]] entries"
                ));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') {
                return Err(format!("invalid variable name `{k}`"));
            }
        }
        Ok(())
    }
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

    /// The lock this spec's builds read and `kiln lock` writes.
    pub fn lock_path(&self) -> PathBuf {
        self.lock_file
            .clone()
            .unwrap_or_else(|| crate::lock::path_for(&self.path))
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file: SpecFile = toml::from_str(text).map_err(|e| located_error(path, text, &e))?;
        let mut spec = Spec {
            path: path.to_path_buf(),
            image: file.image,
            files: file.files,
            config: file.config,
            apt: file.apt,
            pip: file.pip,
            conda: file.conda,
            run: file.run,
            release: file.release,
            text: text.to_string(),
            lock_file: None,
            input_names: Vec::new(),
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
        if let Some(df) = &spec.image.dockerfile {
            let relative =
                |p: &str| !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| c != "..");
            let inside = relative(df) && spec.image.context.as_deref().is_none_or(relative);
            let mut content = Vec::new();
            for (present, what) in [
                (!spec.files.is_empty(), "[[files]]"),
                (!spec.run.is_empty(), "[[run]]"),
                (spec.apt.is_some(), "[apt]"),
                (spec.pip.is_some(), "[pip]"),
                (spec.conda.is_some(), "[conda]"),
                (spec.image.base != default_base(), "[image] base"),
            ] {
                if present {
                    content.push(what);
                }
            }
            let message = if !inside {
                Some(format!(
                    "`{df}` (and `context`) must be relative paths inside the spec's directory"
                ))
            } else if !content.is_empty() {
                Some(format!(
                    "the image comes from the Dockerfile `{df}`; {} cannot be given with it",
                    content.join(", ")
                ))
            } else {
                None
            };
            if let Some(message) = message {
                return Err(SpecError::InvalidValue {
                    path: path.to_path_buf(),
                    key: "[image] dockerfile".into(),
                    message,
                }
                .into());
            }
        } else if !spec.image.build_args.is_empty() || spec.image.context.is_some() {
            return Err(SpecError::InvalidValue {
                path: path.to_path_buf(),
                key: "[image] build-args".into(),
                message: "build-args and context need [image] dockerfile".into(),
            }
            .into());
        }
        if let Some(h) = &spec.config.healthcheck {
            let ok = match h.test.first().map(String::as_str) {
                Some("NONE") => h.test.len() == 1,
                Some("CMD") | Some("CMD-SHELL") => h.test.len() > 1,
                _ => false,
            };
            if !ok {
                return Err(SpecError::InvalidValue {
                    path: path.to_path_buf(),
                    key: "[config.healthcheck] test".into(),
                    message: format!(
                        "{:?}: expected [\"CMD\", program, args…], [\"CMD-SHELL\", command] or [\"NONE\"]",
                        h.test
                    ),
                }
                .into());
            }
        }
        for (i, f) in spec.files.iter().enumerate() {
            let checked = match &f.from {
                _ if f.url.is_some() || f.sha256.is_some() => check_file_url(f),
                _ if f.content.is_some()
                    && (!f.src.is_empty() || f.from.is_some() || f.extract) =>
                {
                    Err(
                        "`content` is the file's text: it goes without `src`, `from` and `extract`"
                            .to_string(),
                    )
                }
                _ if f.content.is_none() && f.src.is_empty() => {
                    Err("an entry needs `src` (or `content`)".to_string())
                }
                Some(_) if f.extract => Err(
                    "`extract` applies to archives in the context, not `from` an image".to_string(),
                ),
                Some(from) => check_file_from(from, &f.src),
                None if f.into => Err("`into` applies to entries with `from`".to_string()),
                None => Ok(()),
            };
            checked.map_err(|message| SpecError::InvalidValue {
                path: path.to_path_buf(),
                key: format!("[[files]] {} src", i + 1),
                message,
            })?;
        }
        if let Some(apt) = &spec.apt {
            check_locales(apt).map_err(|(key, message)| SpecError::InvalidValue {
                path: path.to_path_buf(),
                key: format!("[apt] {key}"),
                message,
            })?;
            // The image's LANG: its config env, unless `[config] env` says.
            if let Some(lang) = &apt.lang {
                if !spec.config.env.contains_key("LANG") {
                    spec.config.env.insert("LANG".into(), lang.clone());
                }
            }
        }
        for (i, step) in spec.run.iter().enumerate() {
            step.check(i, spec.files.len())
                .map_err(|message| SpecError::InvalidValue {
                    path: path.to_path_buf(),
                    key: format!("[[run]] {}", i + 1),
                    message,
                })?;
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

    /// Read the `packages-file` of `[apt]`, `[pip]` and `[conda]` into
    /// their `listed` lines. In [`SourceScope::Context`] a file must lie
    /// inside the spec's directory, like `[[files]]` sources.
    pub fn read_package_files(&mut self, scope: SourceScope) -> Result<()> {
        let dir = self.dir();
        let spec = self.path.clone();
        let read = |file: &Option<String>, listed: &mut Vec<crate::sections::Listed>| {
            if let Some(f) = file {
                let text = read_package_file(&spec, &dir, f, scope)?;
                *listed = crate::sections::package_lines(&text, f);
            }
            Ok::<(), Error>(())
        };
        if let Some(a) = &mut self.apt {
            read(&a.packages_file, &mut a.listed)?;
        }
        if let Some(p) = &mut self.pip {
            read(&p.packages_file, &mut p.listed)?;
        }
        if let Some(c) = &mut self.conda {
            read(&c.packages_file, &mut c.listed)?;
        }
        Ok(())
    }
}

/// `[apt] locales` are locale.gen lines (`NAME [CHARSET]`) and `lang` one
/// of them (or a C locale). Names are checked for their characters only:
/// which ones exist is known once the image's `locales` package is in.
fn check_locales(
    apt: &crate::sections::AptSection,
) -> std::result::Result<(), (&'static str, String)> {
    let word = |w: &str| {
        !w.is_empty()
            && w.len() <= 64
            && !w.starts_with(['.', '-', '@'])
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
    };
    for l in &apt.locales {
        let words: Vec<&str> = l.split_whitespace().collect();
        if words.is_empty() || words.len() > 2 || !words.iter().all(|w| word(w)) {
            return Err((
                "locales",
                format!("`{l}` is not a locale: expected NAME or NAME CHARSET (\"en_US.UTF-8\", \"de_DE ISO-8859-1\")"),
            ));
        }
    }
    if let Some(lang) = &apt.lang {
        let named = apt
            .locales
            .iter()
            .any(|l| l.split_whitespace().next() == Some(lang.as_str()));
        if !named && !matches!(lang.as_str(), "C" | "C.UTF-8" | "C.utf8" | "POSIX") {
            return Err((
                "lang",
                format!("`{lang}` is not among [apt] locales; add it there (or use C.UTF-8)"),
            ));
        }
    }
    Ok(())
}

/// A `[[files]]` entry with `from`: the image is named and `src` is an
/// absolute path inside it (no `..`: it could not leave the image anyway,
/// but it reads as if it could).
fn check_file_from(from: &str, src: &str) -> std::result::Result<(), String> {
    if from.trim().is_empty() || from.trim() == "scratch" {
        return Err(format!(
            "from = {from:?}: name an image (oci:DIR[:TAG], docker-archive:FILE or REGISTRY/REPO:TAG)"
        ));
    }
    if !src.starts_with('/') {
        return Err(format!(
            "`{src}`: with `from`, src is an absolute path inside the image"
        ));
    }
    if src.split('/').any(|p| p == "..") {
        return Err(format!(
            "`{src}`: `..` is not allowed in a path inside an image"
        ));
    }
    Ok(())
}

/// Where files the spec names may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceScope {
    /// Inside the spec's directory (the build context): a source whose
    /// path, once every symlink on the way is resolved, leaves it is an
    /// error. Symlinks inside a copied directory are copied as symlinks,
    /// never followed.
    Context,
    /// Anywhere on the host (`--allow-outside-context`, for CLI users; a
    /// build service never offers it).
    Host,
}

/// A packages-file's text, confined to `dir` in [`SourceScope::Context`].
pub(crate) fn read_package_file(
    spec: &Path,
    dir: &Path,
    file: &str,
    scope: SourceScope,
) -> Result<String> {
    let path = dir.join(file);
    let unreadable = |source| SpecError::Unreadable {
        what: Unreadable::SpecInput {
            spec: spec.to_path_buf(),
        },
        path: PathBuf::from(file),
        source,
    };
    if scope == SourceScope::Context {
        let context = std::fs::canonicalize(dir).map_err(unreadable)?;
        let resolved = std::fs::canonicalize(&path).map_err(unreadable)?;
        if !resolved.starts_with(&context) {
            return Err(SpecError::OutsideContext {
                file: file.to_string(),
                resolved,
                context,
            }
            .into());
        }
    }
    let bytes = std::fs::read(&path).map_err(unreadable)?;
    String::from_utf8(bytes).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        SpecError::NotText {
            file: format!("{file}:{line}"),
        }
        .into()
    })
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

/// A `[[files]] url` entry: an http(s) URL, nothing else as its source,
/// and a well-formed checksum.
fn check_file_url(f: &FileEntry) -> std::result::Result<(), String> {
    let Some(url) = &f.url else {
        return Err("`sha256` is the checksum of a `url`".into());
    };
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "url `{}`: only http and https URLs are downloaded",
            kiln_core::url::redact(url)
        ));
    }
    if !f.src.is_empty() || f.from.is_some() || f.content.is_some() || f.extract || f.into {
        return Err(
            "`url` is the source: it goes without `src`, `from`, `content`, `extract` and `into`"
                .into(),
        );
    }
    if let Some(h) = &f.sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 `{h}` is not 64 hex digits"));
        }
    }
    Ok(())
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

/// A tz database name (`Europe/Berlin`, `Etc/GMT+5`, `UTC`): the path of
/// a zone under /usr/share/zoneinfo, so no `..`, nothing absolute, only the
/// characters zone names use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timezone(pub String);

impl FromStr for Timezone {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && !p.starts_with('-')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
        };
        if s.len() > 100 || !s.split('/').all(part) {
            return Err(format!(
                "invalid timezone `{s}`: expected a tz database name such as \"Europe/Berlin\" or \"UTC\""
            ));
        }
        Ok(Timezone(s.into()))
    }
}
from_str_deserialize!(Timezone);

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
        let r = crate::reference::parse(s).map_err(|e| format!("invalid image name `{s}`: {e}"))?;
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
from_str_deserialize!(Duration);

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
    fn files_from_an_image_take_an_absolute_path_inside_it() {
        let s = parse(
            "[image]\n[[files]]\nfrom = \"oci:stage:build\"\nsrc = \"/out/app\"\ndst = \"/app\"\n[[files]]\nsrc = \"ctx\"\ndst = \"/ctx\"\n",
        )
        .unwrap();
        assert_eq!(s.files[0].from.as_deref(), Some("oci:stage:build"));
        assert_eq!(s.files[0].src, "/out/app");
        assert_eq!(s.files[1].from, None);
        assert!(!s.files[0].into);
        let e = parse("[image]\n[[files]]\nsrc = \"a\"\ndst = \"/a\"\ninto = true\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("`into` applies to entries with `from`"),
            "{e}"
        );
        for (from, src, needle) in [
            ("oci:stage", "out/app", "absolute path inside the image"),
            ("oci:stage", "/out/../etc", "`..` is not allowed"),
            ("", "/out", "name an image"),
            ("scratch", "/out", "name an image"),
        ] {
            let e = parse(&format!(
                "[image]\n[[files]]\nfrom = {from:?}\nsrc = {src:?}\ndst = \"/x\"\n"
            ))
            .unwrap_err();
            let m = e.to_string();
            assert_eq!(e.exit_code(), 2, "{m}");
            assert!(m.contains("[[files]] 1 src") && m.contains(needle), "{m}");
        }
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
    fn timezones_and_locales_are_checked() {
        let s = parse("[image]\ntimezone = \"America/Argentina/Buenos_Aires\"\n").unwrap();
        assert_eq!(
            s.image.timezone.unwrap().0,
            "America/Argentina/Buenos_Aires"
        );
        assert_eq!(
            parse("[image]\ntimezone = \"Etc/GMT+5\"\n")
                .unwrap()
                .image
                .timezone
                .unwrap()
                .0,
            "Etc/GMT+5"
        );
        for bad in [
            "../../etc/passwd",
            "/Europe/Berlin",
            "Europe//Berlin",
            "Europe/Ber lin",
            "",
        ] {
            let e = parse(&format!("[image]\ntimezone = {bad:?}\n")).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains("invalid timezone"), "{e}");
        }
        let s = parse(
            "[apt]\nlocales = [\"en_US.UTF-8\", \"de_DE.UTF-8 UTF-8\", \"sr_RS@latin UTF-8\"]\nlang = \"en_US.UTF-8\"\n",
        )
        .unwrap();
        assert_eq!(s.apt.as_ref().unwrap().locales.len(), 3);
        assert_eq!(s.config.env["LANG"], "en_US.UTF-8");
        // `[config] env` has the last word on LANG.
        let s = parse("[apt]\nlocales = [\"de_DE.UTF-8\"]\nlang = \"de_DE.UTF-8\"\n[config]\nenv = { LANG = \"C.UTF-8\" }\n").unwrap();
        assert_eq!(s.config.env["LANG"], "C.UTF-8");
        for (text, key) in [
            (
                "[apt]\nlocales = [\"en_US.UTF-8; rm -rf /\"]\n",
                "[apt] locales",
            ),
            ("[apt]\nlocales = [\"../x\"]\n", "[apt] locales"),
            (
                "[apt]\nlocales = [\"en_US.UTF-8\"]\nlang = \"fr_FR.UTF-8\"\n",
                "[apt] lang",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(
                matches!(spec_error(&e), SpecError::InvalidValue { key: k, .. } if k == key),
                "{e:?}"
            );
            assert_eq!(e.exit_code(), 2);
        }
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
mod packages_file_tests {
    use super::*;
    use crate::sections::Listed;

    fn listed(text: &str, origin: &str) -> Listed {
        Listed {
            text: text.into(),
            origin: origin.into(),
        }
    }

    #[test]
    fn lines_skip_comments_and_blanks_and_keep_url_fragments() {
        let got = crate::sections::package_lines(
            "# tools\ncurl\n\n  build-essential   # for C\nwheel @ https://h.invalid/w.whl#sha256=ab\n#x\n",
            "apt.txt",
        );
        assert_eq!(
            got,
            [
                listed("curl", "apt.txt:2"),
                listed("build-essential", "apt.txt:4"),
                listed("wheel @ https://h.invalid/w.whl#sha256=ab", "apt.txt:5"),
            ]
        );
    }

    #[test]
    fn files_join_packages_and_are_confined_to_the_spec_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        std::fs::write(ctx.join("apt.txt"), "curl\n# c\nwget\n").unwrap();
        std::fs::write(ctx.join("pip.txt"), "numpy==2.0\n").unwrap();
        std::fs::write(ctx.join("conda.txt"), "python=3.12\n").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "secret\n").unwrap();
        let path = ctx.join("kiln.toml");
        std::fs::write(
            &path,
            "[apt]\npackages = [\"bash\"]\npackages-file = \"apt.txt\"\n\
             [pip]\npackages-file = \"pip.txt\"\n[conda]\npackages-file = \"conda.txt\"\n",
        )
        .unwrap();
        let mut spec = Spec::load(&path).unwrap();
        spec.read_package_files(SourceScope::Context).unwrap();
        let apt: Vec<(String, String)> = spec
            .apt
            .as_ref()
            .unwrap()
            .requests()
            .into_iter()
            .map(|(t, o)| (t.to_string(), o))
            .collect();
        assert_eq!(
            apt,
            [
                ("bash".to_string(), "[apt] packages".to_string()),
                ("curl".to_string(), "apt.txt:1".to_string()),
                ("wget".to_string(), "apt.txt:3".to_string()),
            ]
        );
        assert_eq!(spec.pip.as_ref().unwrap().requests()[0].0, "numpy==2.0");
        assert_eq!(spec.conda.as_ref().unwrap().requests()[0].1, "conda.txt:1");

        // The lock's inputs follow the file's content.
        let before = crate::lock::inputs(&spec).unwrap();
        assert!(
            before.iter().any(|l| l.starts_with("file apt.txt = ")),
            "{before:?}"
        );
        std::fs::write(ctx.join("apt.txt"), "curl\nwgett\n").unwrap();
        assert_ne!(crate::lock::inputs(&spec).unwrap(), before);

        // Outside the spec's directory: refused, unless the scope is the host.
        std::fs::write(&path, "[apt]\npackages-file = \"../outside.txt\"\n").unwrap();
        let mut spec = Spec::load(&path).unwrap();
        let e = spec.read_package_files(SourceScope::Context).unwrap_err();
        assert!(
            matches!(e.downcast_ref::<SpecError>(), Some(SpecError::OutsideContext { file, .. }) if file == "../outside.txt"),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--allow-outside-context"), "{e}");
        spec.read_package_files(SourceScope::Host).unwrap();
        assert_eq!(spec.apt.as_ref().unwrap().listed[0].text, "secret");

        // A missing file names the spec and the file.
        std::fs::write(&path, "[pip]\npackages-file = \"nope.txt\"\n").unwrap();
        let mut spec = Spec::load(&path).unwrap();
        let e = spec.read_package_files(SourceScope::Context).unwrap_err();
        assert!(e.to_string().contains("kiln.toml: nope.txt: "), "{e}");

        // Not text: the line of the first bad byte.
        std::fs::write(ctx.join("bin.txt"), b"ok\n\xff\n").unwrap();
        std::fs::write(&path, "[conda]\npackages-file = \"bin.txt\"\n").unwrap();
        let mut spec = Spec::load(&path).unwrap();
        let e = spec.read_package_files(SourceScope::Context).unwrap_err();
        assert!(e.to_string().contains("bin.txt:2: not UTF-8"), "{e}");
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

    #[test]
    fn durations_read_as_docker_writes_them() {
        let d = |s: &str| s.parse::<super::Duration>().map(|d| d.nanos);
        assert_eq!(d("30s"), Ok(30_000_000_000));
        assert_eq!(d("1m30s"), Ok(90_000_000_000));
        assert_eq!(d("500ms"), Ok(500_000_000));
        assert_eq!(d("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(d("0"), Ok(0));
        for bad in ["", "30", "s", "3x", "-1s"] {
            assert!(d(bad).is_err(), "{bad}");
        }
    }
}
