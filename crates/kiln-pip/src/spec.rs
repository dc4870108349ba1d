//! Inputs: requirement strings, pip-format requirements files, and where indexes come from.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use uv_pep508::{Requirement, VerbatimUrl};

use kiln_core::error::Result;

use crate::PipError;

use super::tags::WheelName;

/// One requirement with where it came from and the hashes it allows (hex sha256).
#[derive(Clone, Debug)]
pub(crate) struct Req {
    pub(crate) req: Requirement<VerbatimUrl>,
    pub(crate) hashes: Vec<String>,
    pub(crate) origin: String,
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
}

/// Parse one requirement as written in `[pip] packages` or a requirements line.
pub(crate) fn parse_requirement(text: &str, base: &Path, origin: &str) -> Result<Req> {
    let mut hashes = Vec::new();
    let mut parts = Vec::new();
    for tok in text.split_whitespace() {
        if let Some(h) = tok.strip_prefix("--hash=") {
            let hex = h
                .strip_prefix("sha256:")
                .ok_or_else(|| PipError::UnsupportedHash {
                    origin: origin.to_string(),
                    token: tok.to_string(),
                })?;
            hashes.push(hex.to_ascii_lowercase());
        } else {
            parts.push(tok);
        }
    }
    let line = parts.join(" ");
    // A bare wheel path or URL: `./wheels/foo-1.0-py3-none-any.whl`, `https://…/foo.whl`.
    let is_url = line.contains("://");
    if !line.contains(" @ ") && !line.contains(';') && line.ends_with(".whl") {
        let file = line.rsplit('/').next().unwrap_or(&line);
        let w = WheelName::parse(file)?;
        let url = if is_url {
            line.clone()
        } else {
            file_url(&base.join(&line))
        };
        let text = format!("{} @ {url}", w.name);
        let req = Requirement::from_str(&text).map_err(|e| PipError::InvalidRequirement {
            origin: origin.to_string(),
            requirement: line.clone(),
            detail: e.to_string(),
            wheel_path: true,
        })?;
        return Ok(Req {
            req,
            hashes,
            origin: origin.to_string(),
        });
    }
    // `name @ ./relative.whl` → absolute file URL.
    let line = match line.split_once(" @ ") {
        Some((name, loc)) if !loc.contains("://") => {
            let (loc, marker) = match loc.split_once(';') {
                Some((l, m)) => (l.trim(), format!(" ;{m}")),
                None => (loc.trim(), String::new()),
            };
            format!("{name} @ {}{marker}", file_url(&base.join(loc)))
        }
        _ => line,
    };
    let req = Requirement::from_str(&line).map_err(|e| PipError::InvalidRequirement {
        origin: origin.to_string(),
        requirement: line.clone(),
        detail: e.to_string(),
        wheel_path: false,
    })?;
    Ok(Req {
        req,
        hashes,
        origin: origin.to_string(),
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

/// Read a pip requirements file into `inputs`; `constraint` puts requirements in the constraint list.
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
    let text = std::fs::read_to_string(path).map_err(|e| PipError::RequirementsFile {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    read_requirements_text(
        &text,
        &path.display().to_string(),
        dir,
        inputs,
        constraint,
        depth,
    )
}

/// Requirement lines (pip's requirements-file syntax) from `origin`, with
/// relative paths resolved against `dir`.
pub(crate) fn read_requirements_text(
    text: &str,
    origin: &str,
    dir: &Path,
    inputs: &mut Inputs,
    constraint: bool,
    depth: usize,
) -> Result<()> {
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
            Some("-e" | "--editable") => return Err(PipError::Editable { origin }.into()),
            Some(
                "--trusted-host" | "--prefer-binary" | "--only-binary" | "--require-hashes"
                | "--use-feature",
            ) => {}
            Some(other) => {
                return Err(PipError::UnsupportedOption {
                    origin,
                    option: other.to_string(),
                }
                .into())
            }
            None => {
                let r = parse_requirement(&line, dir, &origin)?;
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
        let err = read_requirements_file(&path, &mut Inputs::default(), false, 0).unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input, "{err}");
        assert!(err.downcast_ref::<PipError>().is_some(), "untyped: {err:?}");
        let m = err
            .to_string()
            .replace(&path.display().to_string(), "req.txt");
        (err, m)
    }

    #[test]
    fn requirements_errors_name_origin_and_line() {
        let (err, m) = read_err("six\nfoo >>> 1\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::InvalidRequirement { origin, requirement, wheel_path: false, .. }
                if origin.ends_with("req.txt:2") && requirement == "foo >>> 1"),
            "{err:?}"
        );
        assert!(
            m.starts_with("req.txt:2: invalid requirement `foo >>> 1`: "),
            "{m}"
        );

        let (err, m) = read_err("\nsix --hash=md5:abc\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::UnsupportedHash { origin, token } if origin.ends_with(":2") && token == "--hash=md5:abc"),
            "{err:?}"
        );
        assert_eq!(
            m,
            "req.txt:2: `--hash=md5:abc`: only sha256 hashes are supported"
        );

        let (err, m) = read_err("-e ./src\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::Editable { origin } if origin.ends_with(":1"))
        );
        assert_eq!(
            m,
            "req.txt:1: editable requirements (`-e`) need a source build; kiln installs wheels only"
        );

        let (err, m) = read_err("--no-binary :all:\n");
        assert!(
            matches!(err.downcast_ref::<PipError>().unwrap(), PipError::UnsupportedOption { option, .. } if option == "--no-binary")
        );
        assert_eq!(
            m,
            "req.txt:1: unsupported option `--no-binary` in a requirements file"
        );

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
        let err = parse_requirement("./wheels/not-a-wheel.whl", Path::new("/"), "[pip] packages")
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::InvalidWheelName { filename }) if filename == "not-a-wheel.whl"
        ));
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
                let _ = super::parse_requirement(line, dir, "fuzz");
            }
        }
    }
}
