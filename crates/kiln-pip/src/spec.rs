//! Inputs: requirement strings, pip-format requirements files, and where indexes come from.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use uv_pep508::{Requirement, VerbatimUrl};

use kiln_core::error::Result;

use crate::error::{quote, Owner};
use crate::PipError;

use super::tags::WheelName;

/// One requirement with where it came from and the hashes it allows (hex sha256).
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub(crate) req: Requirement<VerbatimUrl>,
    pub(crate) hashes: Vec<String>,
    pub(crate) origin: String,
    /// Whether messages may quote it (see [`crate::error::quote`]).
    pub(crate) owner: Owner,
}

/// Everything the spec, requirements files, environment and pip config say.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inputs {
    pub(crate) requirements: Vec<Req>,
    pub(crate) constraints: Vec<Req>,
    /// Primary index (None: not configured anywhere yet).
    pub(crate) index: Option<String>,
    pub(crate) extra_index: Vec<String>,
    /// Directories (as `file://` URLs) or URLs of HTML pages listing wheels.
    pub(crate) find_links: Vec<String>,
    pub(crate) no_index: bool,
    pub(crate) prerelease: bool,
    /// Where `--require-hashes` was first written (see [`check_hash_mode`]).
    pub(crate) require_hashes: Option<String>,
    /// `--no-binary`: built from the sdist.
    pub(crate) no_binary: super::sdist::NoBinary,
}

/// Parse one requirement as written in `[pip] packages` or a requirements
/// line; `owner` says whether errors may quote it.
pub(crate) fn parse_requirement(
    text: &str,
    base: &Path,
    origin: &str,
    owner: Owner,
) -> Result<Req> {
    // The parser's message repeats the whole input under it: only the message.
    let invalid = |requirement: &str, e: uv_pep508::Pep508Error<VerbatimUrl>, wheel_path| {
        PipError::InvalidRequirement {
            origin: origin.to_string(),
            requirement: quote(requirement, owner),
            detail: quote(&e.message.to_string(), owner),
            wheel_path,
        }
    };
    let mut hashes = Vec::new();
    let mut parts = Vec::new();
    for tok in text.split_whitespace() {
        if let Some(h) = tok.strip_prefix("--hash=") {
            let hex = h
                .strip_prefix("sha256:")
                .ok_or_else(|| PipError::UnsupportedHash {
                    origin: origin.to_string(),
                    token: quote(tok, owner),
                })?;
            hashes.push(hex.to_ascii_lowercase());
        } else {
            parts.push(tok);
        }
    }
    let line = parts.join(" ");
    // `-e PATH` written where a requirement goes (`[pip] packages`).
    if let Some(target) = line
        .strip_prefix("-e ")
        .or_else(|| line.strip_prefix("--editable "))
        .or_else(|| line.strip_prefix("--editable="))
    {
        return Err(PipError::Editable {
            origin: origin.to_string(),
            target: quote(target.trim(), owner),
        }
        .into());
    }
    if let Some(e) = source_form(&line, base, origin, owner) {
        return Err(e.into());
    }
    // A bare wheel path or URL: `./wheels/foo-1.0-py3-none-any.whl`, `https://…/foo.whl`.
    let is_url = line.contains("://");
    if !line.contains(" @ ") && !line.contains(';') && line.ends_with(".whl") {
        let file = line.rsplit('/').next().unwrap_or(&line);
        let w = WheelName::parse(file).map_err(|_| match quote(file, owner) {
            Some(filename) => PipError::InvalidWheelName { filename },
            None => PipError::InvalidRequirement {
                origin: origin.to_string(),
                requirement: None,
                detail: None,
                wheel_path: true,
            },
        })?;
        let url = if is_url {
            line.clone()
        } else {
            file_url(&std::path::absolute(base.join(&line)).unwrap_or_else(|_| base.join(&line)))
        };
        if let Some(p) = kiln_store::http::file_url_path(&url).filter(|p| !p.exists()) {
            return Err(PipError::MissingLocalPath {
                origin: origin.to_string(),
                name: super::normalize(&w.name),
                path: quote(&p.to_string_lossy(), owner),
                version: Some(w.version),
            }
            .into());
        }
        let text = format!("{} @ {url}", w.name);
        let req = Requirement::from_str(&text).map_err(|e| invalid(&line, e, true))?;
        return Ok(Req {
            req,
            hashes,
            origin: origin.to_string(),
            owner,
        });
    }
    // `name @ ./relative.whl` → absolute file URL.
    let line = match line.split_once(" @ ") {
        Some((name, loc)) if !loc.contains("://") => {
            let (loc, marker) = match loc.split_once(';') {
                Some((l, m)) => (l.trim(), format!(" ;{m}")),
                None => (loc.trim(), String::new()),
            };
            format!(
                "{name} @ {}{marker}",
                file_url(&std::path::absolute(base.join(loc)).unwrap_or_else(|_| base.join(loc)))
            )
        }
        _ => line,
    };
    let req = Requirement::from_str(&line).map_err(|e| invalid(&line, e, false))?;
    Ok(Req {
        req,
        hashes,
        origin: origin.to_string(),
        owner,
    })
}

pub(crate) fn file_url(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::from("file://");
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' | b'+' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A find-links or index location: URLs stay, paths become `file://` URLs relative to `base`.
pub(crate) fn location(s: &str, base: &Path) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        let p = base.join(s);
        let p = p.canonicalize().unwrap_or(p);
        file_url(&p)
    }
}

/// Read a pip requirements file into `inputs`; `constraint` puts
/// requirements in the constraint list. `depth` 0 is a file the spec names
/// (its lines may be quoted in errors); deeper ones are included by another
/// (`-r`, `-c`) and only named.
pub(crate) fn read_requirements_file(
    path: &Path,
    inputs: &mut Inputs,
    constraint: bool,
    depth: usize,
) -> Result<()> {
    if depth > 20 {
        return Err(PipError::RequirementsTooDeep {
            path: path.to_path_buf(),
        }
        .into());
    }
    let bytes = std::fs::read(path).map_err(|e| PipError::RequirementsFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let text = requirements_text(path, &bytes)?;
    if is_conda_environment(path, text) {
        return Err(PipError::CondaEnvironment {
            path: path.to_path_buf(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
        .into());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    read_requirements_text(
        text,
        &path.display().to_string(),
        dir,
        inputs,
        constraint,
        depth,
    )
}

/// An environment.yml: a YAML name, or a first line that is one of its
/// keys (never a requirement: a name cannot hold `:`).
fn is_conda_environment(path: &Path, text: &str) -> bool {
    let yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"));
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    yaml || first.is_some_and(|l| {
        ["name:", "channels:", "dependencies:", "prefix:"]
            .iter()
            .any(|k| l.starts_with(k))
    })
}

/// A requirements file's bytes as text: UTF-8 (a leading byte order mark
/// dropped, as pip does) without NUL bytes. Anything else is an error naming
/// the file and the line of the first bad byte, never the bytes.
fn requirements_text<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let not_text = |at: usize, problem| PipError::RequirementsNotText {
        path: path.to_path_buf(),
        line: bytes[..at].iter().filter(|b| **b == b'\n').count() + 1,
        problem,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| not_text(e.valid_up_to(), "is not valid UTF-8"))?;
    if let Some(at) = bytes.iter().position(|b| *b == 0) {
        return Err(not_text(at, "has a NUL byte (a binary file?)").into());
    }
    Ok(text)
}

/// Requirement lines (pip's requirements-file syntax) from `origin`, with
/// relative paths resolved against `dir`; `depth` as for
/// [`read_requirements_file`] (0: the spec's own text, quoted in errors).
pub(crate) fn read_requirements_text(
    text: &str,
    origin: &str,
    dir: &Path,
    inputs: &mut Inputs,
    constraint: bool,
    depth: usize,
) -> Result<()> {
    let owner = if depth == 0 {
        Owner::Spec
    } else {
        Owner::Included
    };
    let text = &expand_env(text, &|k| std::env::var(k).ok());
    // Join continuation lines, drop comments.
    let mut logical: Vec<(usize, String)> = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        if cur.is_empty() {
            start = i + 1;
        }
        let line = match raw.find(" #").or(if raw.trim_start().starts_with('#') {
            Some(0)
        } else {
            None
        }) {
            Some(idx) => &raw[..idx],
            None => raw,
        };
        if let Some(stripped) = line.strip_suffix('\\') {
            cur.push_str(stripped);
            cur.push(' ');
            continue;
        }
        cur.push_str(line);
        if !cur.trim().is_empty() {
            logical.push((start, cur.trim().to_string()));
        }
        cur.clear();
    }
    if !cur.trim().is_empty() {
        logical.push((start, cur.trim().to_string()));
    }
    for (lineno, line) in logical {
        let origin = format!("{origin}:{lineno}");
        let (opt, arg) = split_option(&line);
        match opt {
            Some("-r" | "--requirement") => {
                read_requirements_file(&dir.join(arg), inputs, constraint, depth + 1)?
            }
            Some("-c" | "--constraint") => {
                read_requirements_file(&dir.join(arg), inputs, true, depth + 1)?
            }
            Some("-i" | "--index-url") => inputs.index = Some(location(arg, dir)),
            Some("--extra-index-url") => inputs.extra_index.push(location(arg, dir)),
            Some("-f" | "--find-links") => inputs.find_links.push(location(arg, dir)),
            Some("--no-index") => inputs.no_index = true,
            Some("--pre") => inputs.prerelease = true,
            Some("-e" | "--editable") => {
                return Err(PipError::Editable {
                    origin,
                    target: quote(arg, owner),
                }
                .into())
            }
            Some("--require-hashes") => {
                inputs.require_hashes.get_or_insert(origin);
            }
            Some("--no-binary") => inputs.no_binary.add(arg, &origin),
            Some("--trusted-host" | "--prefer-binary" | "--only-binary" | "--use-feature") => {}
            Some(other) => {
                return Err(PipError::UnsupportedOption {
                    origin,
                    option: quote(other, owner),
                    no_binary: other == "--no-binary",
                }
                .into())
            }
            None => {
                let r = parse_requirement(&line, dir, &origin, owner)?;
                if is_pkg_resources_placeholder(&r) {
                    eprintln!(
                        "warning: {origin}: skipping `pkg-resources==0.0.0` (Ubuntu's venv \
                         writes it into freezes; pip freeze leaves it out)"
                    );
                    continue;
                }
                if constraint {
                    inputs.constraints.push(r);
                } else {
                    inputs.requirements.push(r);
                }
            }
        }
    }
    Ok(())
}

/// Whether pip's hash-checking mode is on: `--require-hashes`, or a
/// `--hash` on any requirement.
pub(crate) fn hash_mode(inputs: &Inputs) -> bool {
    inputs.require_hashes.is_some() || inputs.requirements.iter().any(|r| !r.hashes.is_empty())
}

/// pip's hash-checking mode, over every requirement of the section (not
/// the constraints): on as soon as one requirement has a `--hash` or a file
/// says `--require-hashes`; then each requirement needs a hash (a URL's
/// `#sha256=` counts) and, unless it is a URL or path, an `==`/`===` pin.
/// Every line that falls short is named.
pub(crate) fn check_hash_mode(inputs: &Inputs) -> Result<()> {
    let direct_hash = |r: &Req| match &r.req.version_or_url {
        Some(uv_pep508::VersionOrUrl::Url(u)) => u.raw().to_string().contains("#sha256="),
        _ => false,
    };
    let why = match &inputs.require_hashes {
        Some(at) => format!("`--require-hashes` at {at}"),
        None => match inputs.requirements.iter().find(|r| !r.hashes.is_empty()) {
            Some(r) => format!("{} has a `--hash`", r.origin),
            None => return Ok(()),
        },
    };
    let mut unhashed = Vec::new();
    let mut unpinned = Vec::new();
    for r in &inputs.requirements {
        if r.hashes.is_empty() && !direct_hash(r) {
            unhashed.push(r.origin.clone());
        }
        let pinned = matches!(&r.req.version_or_url, Some(uv_pep508::VersionOrUrl::Url(_)))
            || crate::pinned_version(&r.req).is_some();
        if !pinned {
            unpinned.push(r.origin.clone());
        }
    }
    if unhashed.is_empty() && unpinned.is_empty() {
        return Ok(());
    }
    Err(PipError::HashMode {
        why,
        unhashed,
        unpinned,
    }
    .into())
}

/// Requirement forms only a source build satisfies (VCS URLs, local project
/// directories, sdists by path or URL) and `file:` paths that do not exist,
/// as errors that say what to do; `None` for anything else.
fn source_form(line: &str, base: &Path, origin: &str, owner: Owner) -> Option<PipError> {
    let head = line.split(';').next().unwrap_or(line).trim();
    // `name @ location` (PEP 508), or a bare location.
    let (name, loc) = match head.split_once('@') {
        Some((n, l))
            if !n.trim().is_empty()
                && n.trim()
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.[], ".contains(c)) =>
        {
            let n = n.trim();
            let n = n.split('[').next().unwrap_or(n).trim();
            (Some(super::normalize(n)), l.trim())
        }
        _ => (None, head),
    };
    let text = quote(line, owner);
    let shown = |fallback: &str| quote(loc, owner).unwrap_or_else(|| fallback.to_string());
    let pin_hint = |version: Option<String>| match (&name, version) {
        (Some(n), Some(v)) => format!("`{n}=={v}`"),
        (Some(n), None) => format!("`{n}==VERSION`"),
        (None, _) => "the project by name and version".to_string(),
    };
    // `name @ git+URL`: fetched and built (see `sdist`).
    if name.is_some() && loc.starts_with("git+") {
        return None;
    }
    if ["git+", "hg+", "svn+", "bzr+"]
        .iter()
        .any(|p| loc.starts_with(p))
    {
        // `…@v2.31.0#egg=requests`: the name and, when the ref is a version, the pin.
        let egg = loc
            .split_once("#egg=")
            .map(|(_, e)| super::normalize(e.split('&').next().unwrap_or(e)));
        let name = name.clone().or(egg);
        let reference = loc
            .split('#')
            .next()
            .and_then(|u| u.rsplit_once('@'))
            .map(|(_, r)| r.trim_start_matches('v'))
            .filter(|r| !r.contains('/') && uv_pep440::Version::from_str(r).is_ok());
        let pin = match (&name, reference) {
            (Some(n), Some(v)) => format!("`{n}=={v}`"),
            (Some(n), None) => format!("`{n}==VERSION`"),
            (None, _) => "the project by name and version".to_string(),
        };
        return Some(PipError::NeedsSourceBuild {
            origin: origin.to_string(),
            text,
            what: "is a VCS requirement",
            hint: format!(
                "kiln builds `git+` URLs given a name (`NAME @ git+URL@REF`), not other VCSs or unnamed ones; \
                 require a released version instead ({pin}), or build a wheel \
                 (`pip wheel --no-deps '{}' -w wheelhouse/`) and add the directory to `find-links`",
                shown("URL")
            ),
        });
    }
    if loc.ends_with(".whl") {
        // Wheels by path or URL: read by the caller (a missing file is named there).
        let local = match kiln_store::http::file_url_path(loc) {
            Some(p) => Some(p),
            None if !loc.contains("://") => Some(base.join(loc)),
            None => None,
        };
        if let (Some(n), Some(p)) = (&name, local) {
            if !p.exists() {
                let file = p.file_name().map(|f| f.to_string_lossy().into_owned());
                return Some(PipError::MissingLocalPath {
                    origin: origin.to_string(),
                    name: n.clone(),
                    path: quote(&p.to_string_lossy(), owner),
                    version: file
                        .and_then(|f| WheelName::parse(&f).ok())
                        .map(|w| w.version),
                });
            }
        }
        return None;
    }
    let remote = loc.contains("://") && !loc.starts_with("file:");
    if remote {
        // `name @ https://…/x.tar.gz` is NotAWheel (named with its URL); a bare one:
        return name.is_none().then(|| PipError::NeedsSourceBuild {
            origin: origin.to_string(),
            text,
            what: "is a source archive URL",
            hint: format!(
                "kiln builds it when named: `NAME @ {}`; or require a released version, or build a wheel \
                 (`pip wheel --no-deps '{}' -w wheelhouse/`) and add the directory to `find-links`",
                shown("URL"),
                shown("URL")
            ),
        });
    }
    let path = match kiln_store::http::file_url_path(loc) {
        Some(p) => p,
        None => base.join(loc),
    };
    // As pip tells a path from a name: a leading `.` or `/` (or a `file:`
    // URL), or a `/` inside and something there or an archive's name.
    let archive = [".tar.gz", ".tgz", ".zip", ".tar.bz2", ".tar.xz"]
        .iter()
        .any(|x| loc.ends_with(x));
    let is_path = loc.starts_with("file:")
        || loc.starts_with('.')
        || loc.starts_with('/')
        || loc.starts_with('~')
        || (loc.contains('/') && (archive || path.exists()));
    if !is_path {
        return None;
    }
    let file_name = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let archive_version = super::index::file_version(&file_name);
    if !path.exists() {
        return Some(match &name {
            Some(n) => PipError::MissingLocalPath {
                origin: origin.to_string(),
                name: n.clone(),
                path: quote(&path.to_string_lossy(), owner),
                version: archive_version,
            },
            None => PipError::NeedsSourceBuild {
                origin: origin.to_string(),
                text,
                what: "is a local path that does not exist",
                hint: "require the project by name and version (`name==VERSION`)".to_string(),
            },
        });
    }
    let (what, version) = if path.is_dir() {
        ("is a local project directory", None)
    } else {
        ("is a source archive (an sdist)", archive_version)
    };
    // `name @ ./proj`, `name @ file:…/x.tar.gz`: built (see `sdist`).
    if name.is_some() && (path.is_dir() || super::sdist::is_sdist(&file_name)) {
        return None;
    }
    Some(PipError::NeedsSourceBuild {
        origin: origin.to_string(),
        text,
        what,
        hint: format!(
            "kiln builds it when named: `NAME @ {}`; or build a wheel (`pip wheel --no-deps {} -w wheelhouse/`), \
             add the directory to `find-links` and require {}",
            shown("PATH"),
            shown("PATH"),
            pin_hint(version)
        ),
    })
}

/// `pkg-resources==0.0.0`: not a project, a placeholder for the Debian-patched
/// `pkg_resources` that Ubuntu's `python3 -m venv` lists in `pip freeze`.
fn is_pkg_resources_placeholder(r: &Req) -> bool {
    r.req.name.as_ref() == "pkg-resources" && r.req.version_or_url.as_ref().is_some_and(|v| {
        matches!(v, uv_pep508::VersionOrUrl::VersionSpecifier(s) if s.to_string() == "==0.0.0")
    })
}

/// `--opt value`, `--opt=value`, `-rfile`; None for a requirement line.
fn split_option(line: &str) -> (Option<&str>, &str) {
    if !line.starts_with('-') {
        return (None, line);
    }
    if let Some((o, v)) = line.split_once('=') {
        if o.starts_with("--") && !o.contains(' ') {
            return (Some(o), v.trim());
        }
    }
    if let Some((o, v)) = line.split_once(char::is_whitespace) {
        return (Some(o), v.trim());
    }
    for short in ["-r", "-c", "-i", "-f", "-e"] {
        if let Some(v) = line.strip_prefix(short) {
            if !v.is_empty() && !line.starts_with("--") {
                return (Some(short), v);
            }
        }
    }
    (Some(line), "")
}

/// Index settings from pip's configuration files and `PIP_*` variables (pip's precedence:
/// files in order, later wins; environment over files).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PipConfig {
    pub(crate) index: Option<String>,
    pub(crate) extra_index: Vec<String>,
    pub(crate) find_links: Vec<String>,
    pub(crate) no_index: bool,
}

impl PipConfig {
    /// Read the real environment and files.
    pub(crate) fn from_host() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let xdg = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from);
        Self::load(&|k| std::env::var(k).ok(), home.as_deref(), xdg.as_deref())
    }

    pub(crate) fn load(
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
        xdg_config: Option<&Path>,
    ) -> Self {
        let mut files: Vec<PathBuf> = Vec::new();
        match env("PIP_CONFIG_FILE") {
            Some(f) if f == "/dev/null" || f == "os.devnull" => {}
            Some(f) => files.push(PathBuf::from(f)),
            None => {
                files.push("/etc/xdg/pip/pip.conf".into());
                files.push("/etc/pip.conf".into());
                if let Some(h) = home {
                    files.push(h.join(".pip/pip.conf"));
                }
                match (xdg_config, home) {
                    (Some(x), _) => files.push(x.join("pip/pip.conf")),
                    (None, Some(h)) => files.push(h.join(".config/pip/pip.conf")),
                    _ => {}
                }
            }
        }
        let mut c = PipConfig::default();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                let base = f.parent().unwrap_or(Path::new("/")).to_path_buf();
                c.apply_ini(&text, &base);
            }
        }
        let split = |v: String| -> Vec<String> { v.split_whitespace().map(String::from).collect() };
        if let Some(v) = env("PIP_INDEX_URL") {
            c.index = Some(v.trim().to_string());
        }
        if let Some(v) = env("PIP_EXTRA_INDEX_URL") {
            c.extra_index = split(v);
        }
        if let Some(v) = env("PIP_FIND_LINKS") {
            c.find_links = split(v)
                .into_iter()
                .map(|s| location(&s, Path::new("/")))
                .collect();
        }
        if let Some(v) = env("PIP_NO_INDEX") {
            c.no_index = matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on");
        }
        c
    }

    /// `[global]` then `[install]` keys of one pip.conf.
    fn apply_ini(&mut self, text: &str, base: &Path) {
        let mut section = String::new();
        let mut values: Vec<(String, String, String)> = Vec::new();
        let mut last: Option<usize> = None;
        for raw in text.lines() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if t.starts_with('[') && t.ends_with(']') {
                section = t[1..t.len() - 1].trim().to_ascii_lowercase();
                last = None;
                continue;
            }
            if raw.starts_with([' ', '\t']) {
                if let Some(i) = last {
                    values[i].2.push(' ');
                    values[i].2.push_str(t);
                }
                continue;
            }
            if let Some((k, v)) = t.split_once(['=', ':']) {
                let k = k.trim().to_ascii_lowercase().replace('_', "-");
                values.push((section.clone(), k, v.trim().to_string()));
                last = Some(values.len() - 1);
            }
        }
        for want in ["global", "install"] {
            for (s, k, v) in values.iter().filter(|(s, _, _)| s == want) {
                let _ = s;
                let list = || v.split_whitespace().map(String::from).collect::<Vec<_>>();
                match k.as_str() {
                    "index-url" | "index" => self.index = Some(v.clone()),
                    "extra-index-url" => self.extra_index = list(),
                    "find-links" => {
                        self.find_links = list().iter().map(|s| location(s, base)).collect()
                    }
                    "no-index" => {
                        self.no_index =
                            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
                    }
                    _ => {}
                }
            }
        }
    }
}

/// pip's `${NAME}` expansion in requirements files: NAME is upper-case
/// letters, digits and `_`; an unset variable is left as written.
fn expand_env(text: &str, get: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(after.len());
        match (after[name_len..].starts_with('}'), name_len > 0) {
            (true, true) => match get(&after[..name_len]) {
                Some(v) => {
                    out.push_str(&v);
                    rest = &after[name_len + 1..];
                }
                None => {
                    out.push_str(&rest[at..at + 2 + name_len + 1]);
                    rest = &after[name_len + 1..];
                }
            },
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::QUOTED_CHARS;

    #[test]
    fn env_expansion_like_pip() {
        let get = |k: &str| (k == "TOKEN").then(|| "s3cret".to_string());
        assert_eq!(
            expand_env(
                "--index-url https://u:${TOKEN}@host/simple ${UNSET} ${lower} $NOPE ${",
                &get
            ),
            "--index-url https://u:s3cret@host/simple ${UNSET} ${lower} $NOPE ${"
        );
    }

    #[test]
    fn environment_files_are_not_requirements() {
        let p = Path::new("/x/env.txt");
        assert!(is_conda_environment(p, "# made by conda\nname: ds-env\n"));
        assert!(is_conda_environment(Path::new("/x/environment.yml"), "x"));
        assert!(!is_conda_environment(p, "numpy==1.26\nname-thing\n"));
    }

    #[test]
    fn requirements_file_format() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.txt"), "idna<4\n").unwrap();
        std::fs::write(
            dir.path().join("base.txt"),
            "six==1.16.0 \\\n    --hash=sha256:AB12\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("req.txt"),
            "# comment\n--index-url http://127.0.0.1:9/simple\n--extra-index-url=http://127.0.0.1:9/extra\n-f ./wheels\n-r base.txt\n-c c.txt\nrequests[socks]>=2 ; python_version >= '3.8'  # trailing\n./wheels/foo_bar-1.0-py3-none-any.whl\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("wheels")).unwrap();
        std::fs::write(dir.path().join("wheels/foo_bar-1.0-py3-none-any.whl"), b"").unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&dir.path().join("req.txt"), &mut inputs, false, 0).unwrap();
        assert_eq!(inputs.index.as_deref(), Some("http://127.0.0.1:9/simple"));
        assert_eq!(inputs.extra_index, vec!["http://127.0.0.1:9/extra"]);
        assert!(inputs.find_links[0].starts_with("file://"));
        let names: Vec<String> = inputs
            .requirements
            .iter()
            .map(|r| r.req.name.to_string())
            .collect();
        assert_eq!(names, vec!["six", "requests", "foo-bar"]);
        assert_eq!(inputs.requirements[0].hashes, vec!["ab12"]);
        assert_eq!(inputs.constraints[0].req.name.as_str(), "idna");
        assert!(inputs.requirements[2].req.version_or_url.is_some());
    }

    /// How reading `text` as a requirements file fails: the typed cause and
    /// the message with the file's directory left out.
    fn read_err(text: &str) -> (kiln_core::Error, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req.txt");
        std::fs::write(&path, text).unwrap();
        let mut inputs = Inputs::default();
        let err = read_requirements_file(&path, &mut inputs, false, 0)
            .and_then(|()| check_hash_mode(&inputs))
            .unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input, "{err}");
        assert!(err.downcast_ref::<PipError>().is_some(), "untyped: {err:?}");
        let m = err
            .to_string()
            .replace(&path.display().to_string(), "req.txt");
        (err, m)
    }

    #[test]
    fn one_hash_puts_every_requirement_in_hash_checking_mode() {
        let (err, m) = read_err(
            "six==1.16.0 --hash=sha256:ab12\nidna==3.7\nrequests>=2 --hash=sha256:cd34\nurllib3==2.2.1\n",
        );
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::HashMode { unhashed, unpinned, .. })
                if unhashed.len() == 2 && unhashed[0].ends_with("req.txt:2") && unhashed[1].ends_with("req.txt:4")
                    && unpinned.len() == 1 && unpinned[0].ends_with("req.txt:3")),
            "{err:?}"
        );
        assert!(
            m.starts_with("[pip] hash-checking mode is on (req.txt:1 has a `--hash`), and like pip kiln then needs every requirement pinned with `==` and given a `--hash`:\n  - req.txt:2: no `--hash`\n  - req.txt:4: no `--hash`\n  - req.txt:3: not pinned with `==`\n  add the hashes"),
            "{m}"
        );
        let (_, m) = read_err("--require-hashes\nidna==3.7\n");
        assert!(
            m.starts_with("[pip] hash-checking mode is on (`--require-hashes` at req.txt:1)")
                && m.contains("\n  - req.txt:2: no `--hash`\n"),
            "{m}"
        );
        // A hash in an included file turns it on for the including one too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("hashed.txt"),
            "six==1.16.0 --hash=sha256:ab12\n",
        )
        .unwrap();
        let path = dir.path().join("req.txt");
        std::fs::write(&path, "-r hashed.txt\nidna==3.7\n").unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&path, &mut inputs, false, 0).unwrap();
        let m = check_hash_mode(&inputs).unwrap_err().to_string();
        assert!(
            m.contains("hashed.txt:1 has a `--hash`") && m.contains("req.txt:2: no `--hash`"),
            "{m}"
        );

        // All hashed and pinned (a URL's #sha256= counts), or none: fine.
        for text in [
            "six==1.16.0 --hash=sha256:ab12\nidna==3.7 --hash=sha256:cd34\nw @ https://h.invalid/w-1.0-py3-none-any.whl#sha256=ef56\n",
            "six\nidna>=3\n",
        ] {
            let path = dir.path().join("ok.txt");
            std::fs::write(&path, text).unwrap();
            let mut inputs = Inputs::default();
            read_requirements_file(&path, &mut inputs, false, 0).unwrap();
            check_hash_mode(&inputs).unwrap();
            assert!(inputs.requirements.len() >= 2);
        }
    }

    #[test]
    fn source_forms_name_the_line_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("proj")).unwrap();
        std::fs::write(dir.path().join("demo-1.2.tar.gz"), b"").unwrap();
        let err = |text: &str| {
            let path = dir.path().join("req.txt");
            std::fs::write(&path, text).unwrap();
            let e = read_requirements_file(&path, &mut Inputs::default(), false, 0).unwrap_err();
            assert_eq!(e.kind(), kiln_core::ErrorKind::Input, "{e}");
            (
                e.to_string()
                    .replace(&format!("{}/", dir.path().display()), ""),
                e,
            )
        };
        let (m, e) = err("six\nnumpy @ file:///croot/numpy_and_numpy_base_1708638617955/work\n");
        assert!(
            matches!(e.downcast_ref::<PipError>(), Some(PipError::MissingLocalPath { name, version: None, .. }) if name == "numpy"),
            "{e:?}"
        );
        assert!(
            m.starts_with(
                "req.txt:2: `/croot/numpy_and_numpy_base_1708638617955/work` does not exist here"
            ) && m.contains("replace the line by `numpy==VERSION`"),
            "{m}"
        );
        let (m, _) =
            err("Pillow @ file:///croot/dist/pillow-10.2.0-cp311-cp311-linux_x86_64.whl\n");
        assert!(m.contains("replace the line by `pillow==10.2.0`"), "{m}");
        let (m, _) = err("./gone/demo-1.0-py3-none-any.whl\n");
        assert!(
            m.starts_with("req.txt:1: `") && m.contains("replace the line by `demo==1.0`"),
            "{m}"
        );

        let (m, e) = err("git+https://github.invalid/psf/requests@v2.31.0#egg=requests\n");
        assert!(
            matches!(
                e.downcast_ref::<PipError>(),
                Some(PipError::NeedsSourceBuild {
                    what: "is a VCS requirement",
                    ..
                })
            ),
            "{e:?}"
        );
        assert!(
            m.starts_with("req.txt:1: `git+https://github.invalid/psf/requests@v2.31.0#egg=requests` is a VCS requirement: kiln builds `git+` URLs given a name (`NAME @ git+URL@REF`), not other VCSs or unnamed ones; require a released version instead (`requests==2.31.0`)"),
            "{m}"
        );
        let (m, _) = err("requests @ hg+https://hg.invalid/psf/requests@main\n");
        assert!(m.contains("(`requests==VERSION`)"), "{m}");
        // Named, a `git+` URL is fetched and built.
        let r = parse_requirement(
            "requests @ git+https://github.invalid/psf/requests@main",
            dir.path(),
            "x",
            Owner::Spec,
        )
        .unwrap();
        assert!(matches!(
            &r.req.version_or_url,
            Some(uv_pep508::VersionOrUrl::Url(_))
        ));
        let (m, _) = err("./proj\n");
        assert!(
            m.starts_with("req.txt:1: `./proj` is a local project directory: kiln builds it when named: `NAME @ ./proj`; or build a wheel (`pip wheel --no-deps ./proj -w wheelhouse/`)"),
            "{m}"
        );
        let (m, _) = err(".\n");
        assert!(m.contains("is a local project directory"), "{m}");
        let (m, _) = err("./demo-1.2.tar.gz\n");
        assert!(
            m.contains("is a source archive (an sdist)")
                && m.contains("require the project by name"),
            "{m}"
        );
        // Named, a local sdist or directory is built.
        let r =
            parse_requirement("demo @ ./demo-1.2.tar.gz", dir.path(), "x", Owner::Spec).unwrap();
        assert!(
            matches!(&r.req.version_or_url, Some(uv_pep508::VersionOrUrl::Url(u)) if u.raw().to_string().ends_with("/demo-1.2.tar.gz")),
            "{r:?}"
        );
        let (m, _) = err("https://h.invalid/demo-1.2.tar.gz\n");
        assert!(m.contains("is a source archive URL"), "{m}");
        let (m, _) = err("-e .\n");
        assert!(
            m.starts_with("req.txt:1: `-e .`: an image has no editable installs")
                && m.contains("without `-e`"),
            "{m}"
        );
        let e = parse_requirement("-e .", dir.path(), "[pip] packages", Owner::Spec).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("[pip] packages: `-e .`: an image has no editable installs"),
            "{e}"
        );
        // `--no-binary` asks for builds from sdists.
        let path = dir.path().join("req.txt");
        std::fs::write(&path, "--no-binary :all:\n").unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&path, &mut inputs, false, 0).unwrap();
        assert!(inputs.no_binary.applies("anything"));
    }

    #[test]
    fn the_pkg_resources_placeholder_of_ubuntu_freezes_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freeze.txt");
        std::fs::write(
            &path,
            "six==1.16.0\npkg-resources==0.0.0\npkg_resources==0.0.0\n",
        )
        .unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&path, &mut inputs, false, 0).unwrap();
        let names: Vec<String> = inputs
            .requirements
            .iter()
            .map(|r| r.req.name.to_string())
            .collect();
        assert_eq!(names, ["six"]);
        // Any other version is a requirement like any other.
        std::fs::write(&path, "pkg-resources==1.0\n").unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&path, &mut inputs, false, 0).unwrap();
        assert_eq!(inputs.requirements.len(), 1);
    }

    #[test]
    fn requirements_errors_name_origin_and_line() {
        let (err, m) = read_err("six\nfoo >>> 1\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::InvalidRequirement { origin, requirement, wheel_path: false, .. }
                if origin.ends_with("req.txt:2") && requirement.as_deref() == Some("foo >>> 1")),
            "{err:?}"
        );
        assert!(
            m.starts_with("req.txt:2: invalid requirement `foo >>> 1`: "),
            "{m}"
        );

        let (err, m) = read_err("\nsix --hash=md5:abc\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::UnsupportedHash { origin, token } if origin.ends_with(":2") && token.as_deref() == Some("--hash=md5:abc")),
            "{err:?}"
        );
        assert_eq!(
            m,
            "req.txt:2: `--hash=md5:abc`: only sha256 hashes are supported"
        );

        let (err, m) = read_err("-e ./src\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::Editable { origin, target } if origin.ends_with(":1") && target.as_deref() == Some("./src"))
        );
        assert!(
            m.starts_with("req.txt:1: `-e ./src`: an image has no editable installs (they point into a source tree, which is not in the image); require the project without `-e`"),
            "{m}"
        );
        assert!(m.contains("(`name @ ./src` builds a wheel of it"), "{m}");

        let (err, m) = read_err("-r missing.txt\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::RequirementsFile { path, .. } if path.ends_with("missing.txt")),
            "{err:?}"
        );
        assert!(m.starts_with("[pip] requirements file "), "{m}");

        let (err, m) = read_err("-r req.txt\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::RequirementsTooDeep { path } if path.ends_with("req.txt")),
            "{err:?}"
        );
        assert!(
            m.ends_with(": requirements files include each other too deeply (a cycle?)"),
            "{m}"
        );

        // A bare wheel path that does not name a wheel.
        let err = parse_requirement(
            "./wheels/not-a-wheel.whl",
            Path::new("/"),
            "[pip] packages",
            Owner::Spec,
        )
        .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::InvalidWheelName { filename }) if filename == "not-a-wheel.whl"
        ));
    }

    /// `lines` written to `req.txt` (named by the spec), read: the error.
    fn read_bytes_err(bytes: &[u8]) -> (kiln_core::Error, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req.txt");
        std::fs::write(&path, bytes).unwrap();
        let err = read_requirements_file(&path, &mut Inputs::default(), false, 0).unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input, "{err}");
        let m = err
            .to_string()
            .replace(&path.display().to_string(), "req.txt");
        (err, m)
    }

    #[test]
    fn long_bad_lines_are_quoted_cut() {
        let line = format!("foo >>> {}", "x".repeat(5000 - 8));
        assert_eq!(line.chars().count(), 5000);
        let (err, m) = read_err(&format!("six\n\n{line}\n"));
        match err.downcast_ref::<PipError>() {
            Some(PipError::InvalidRequirement {
                origin,
                requirement: Some(r),
                detail: Some(d),
                ..
            }) => {
                assert!(origin.ends_with("req.txt:3"), "{origin}");
                assert_eq!(r, &format!("{}…", &line[..QUOTED_CHARS]));
                assert!(d.chars().count() <= QUOTED_CHARS + 1, "{d}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            m.starts_with("req.txt:3: invalid requirement `foo >>> xxx"),
            "{m}"
        );
        // Quoted once, cut: nowhere near the whole line.
        assert!(!m.contains(&"x".repeat(QUOTED_CHARS)), "{m}");
        assert!(m.len() < 600, "{} chars: {m}", m.len());

        // Other pieces of a line are cut the same way.
        let (err, _) = read_err(&format!("six --hash=md5:{}\n", "a".repeat(5000)));
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::UnsupportedHash { token: Some(t), .. })
                if t.chars().count() == QUOTED_CHARS + 1 && t.ends_with('…')),
            "{err:?}"
        );
        let (err, _) = read_err(&format!("-x{}\n", "o".repeat(5000)));
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::UnsupportedOption { option: Some(o), .. })
                if o.chars().count() == QUOTED_CHARS + 1),
            "{err:?}"
        );
        let (err, m) = read_err(&format!("./w/{}.whl\n", "n".repeat(5000)));
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::InvalidWheelName { filename })
                if filename.chars().count() == QUOTED_CHARS + 1),
            "{err:?}"
        );
        assert!(m.len() < 300, "{m}");
    }

    #[test]
    fn multibyte_lines_are_cut_between_characters() {
        for pad in 190..=205 {
            for wide in ["é", "€", "𝄞", "語"] {
                let line = format!("{}{} >>> 1", "a".repeat(pad), wide.repeat(40));
                let (err, _) = read_err(&format!("{line}\n"));
                match err.downcast_ref::<PipError>() {
                    Some(PipError::InvalidRequirement {
                        requirement: Some(r),
                        ..
                    }) => {
                        assert!(r.ends_with('…'), "{r}");
                        assert_eq!(r.chars().count(), QUOTED_CHARS + 1);
                        assert!(line.starts_with(r.trim_end_matches('…')));
                    }
                    other => panic!("{pad} {wide}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn not_text_is_named_with_its_line_not_shown() {
        let (err, m) = read_bytes_err(b"six\nidna\nsecret\xff\xfe tail\n");
        assert!(
            matches!(
                err.downcast_ref::<PipError>(),
                Some(PipError::RequirementsNotText { line: 3, .. })
            ),
            "{err:?}"
        );
        assert_eq!(
            m,
            "[pip] requirements file req.txt:3: is not valid UTF-8; requirements files are UTF-8 text"
        );
        // A binary file, valid UTF-8 or not.
        let (err, m) = read_bytes_err(b"six\n\x7fELF\x02\x01\x01\x00\x00secret\n");
        assert!(
            matches!(
                err.downcast_ref::<PipError>(),
                Some(PipError::RequirementsNotText { line: 2, .. })
            ),
            "{err:?}"
        );
        assert!(
            m.starts_with("[pip] requirements file req.txt:2: has a NUL byte"),
            "{m}"
        );
        assert!(!m.contains("secret") && !m.contains("ELF"), "{m}");
        let (err, _) = read_bytes_err(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
        assert!(
            matches!(
                err.downcast_ref::<PipError>(),
                Some(PipError::RequirementsNotText { line: 1, .. })
            ),
            "{err:?}"
        );
        // A byte order mark is not an error.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("req.txt");
        std::fs::write(&path, b"\xEF\xBB\xBFsix==1.16.0\n").unwrap();
        let mut inputs = Inputs::default();
        read_requirements_file(&path, &mut inputs, false, 0).unwrap();
        assert_eq!(inputs.requirements[0].req.name.as_str(), "six");
    }

    #[test]
    fn included_files_are_named_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("req.txt");
        let other = dir.path().join("other.txt");
        std::fs::write(&named, "six\n-r other.txt\n").unwrap();
        let read = |included: &str| {
            std::fs::write(&other, included).unwrap();
            let err = read_requirements_file(&named, &mut Inputs::default(), false, 0).unwrap_err();
            let m = err
                .to_string()
                .replace(&other.display().to_string(), "other.txt");
            assert!(!m.contains("SECRET"), "{m}");
            (err, m)
        };
        let (err, m) = read("idna\nroot:SECRET:0:0:root:/root:/bin/sh\n");
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::InvalidRequirement { origin, requirement: None, detail: None, .. })
                if origin.ends_with("other.txt:2")),
            "{err:?}"
        );
        assert_eq!(
            m,
            "other.txt:2: invalid requirement (not quoted: the file is included by another requirements file, not named in the spec)"
        );
        let (_, m) = read("-SECRET\n");
        assert!(
            m.starts_with("other.txt:1: unsupported option in a requirements file; remove it"),
            "{m}"
        );
        let (_, m) = read("six --hash=SECRET\n");
        assert_eq!(m, "other.txt:1: only sha256 hashes are supported");
        let (_, m) = read("./SECRET.whl\n");
        assert!(
            m.starts_with("other.txt:1: invalid wheel path or URL (not quoted"),
            "{m}"
        );
        let (_, m) = read("pkg @ https://h.invalid/SECRET.whl ; bad marker ==\n");
        assert!(m.starts_with("other.txt:1: invalid"), "{m}");
        // The file the spec names is quoted.
        std::fs::write(&other, "idna\n").unwrap();
        std::fs::write(&named, "-r other.txt\nbad SECRET >>>\n").unwrap();
        let err = read_requirements_file(&named, &mut Inputs::default(), false, 0).unwrap_err();
        assert!(err.to_string().contains("`bad SECRET >>>`"), "{err}");
    }

    #[test]
    fn pip_conf_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("pip.conf");
        std::fs::write(
            &conf,
            "[global]\nindex-url = http://127.0.0.1:1/a\nextra-index-url =\n    http://127.0.0.1:1/b\n    http://127.0.0.1:1/c\n[install]\nfind-links = wh\n",
        )
        .unwrap();
        let confs = conf.to_string_lossy().into_owned();
        let env = move |k: &str| (k == "PIP_CONFIG_FILE").then(|| confs.clone());
        let c = PipConfig::load(&env, None, None);
        assert_eq!(c.index.as_deref(), Some("http://127.0.0.1:1/a"));
        assert_eq!(c.extra_index.len(), 2);
        assert!(c.find_links[0].ends_with("/wh"));
        let env2 = |k: &str| match k {
            "PIP_CONFIG_FILE" => Some("/dev/null".to_string()),
            "PIP_INDEX_URL" => Some("http://127.0.0.1:2/x".to_string()),
            _ => None,
        };
        assert_eq!(
            PipConfig::load(&env2, None, None).index.as_deref(),
            Some("http://127.0.0.1:2/x")
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    /// Requirement lines and files never panic on mangled input.
    #[test]
    fn requirements_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"requests[socks]>=2.31 ; python_version < '3.12' --hash=sha256:0123\n-c constraints.txt\n--index-url https://u:${TOKEN}@idx.invalid/simple\nnumpy==1.26.4 \\\n  --hash=sha256:abcd\n# comment\n",
            b"pkg @ https://host.invalid/pkg-1.0-py3-none-any.whl#sha256=00",
        ];
        let dir = std::path::Path::new("/nonexistent-kiln-dir");
        for m in kiln_core::mutate::mutants(seeds, 2500) {
            let text = String::from_utf8_lossy(&m);
            for line in text.lines() {
                let _ = super::parse_requirement(line, dir, "fuzz", super::Owner::Spec);
            }
        }
    }
}
