//! `kiln init`: write a commented kiln.toml from flags (`--base`, `--apt`,
//! `--pip`, `--conda`, `--name`) or from files a project already has
//! (requirements.txt, environment.yml, one-package-per-line lists such as
//! apt.txt). The text is checked with kiln-spec before it is written, so
//! what `init` writes always parses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use kiln_core::{Classify, ErrorKind, Result};
use kiln_spec::spec::Spec;

/// Files `init` picks up from the directory when neither `--from` nor a
/// package flag is given.
const KNOWN_FILES: &[&str] = &[
    "requirements.txt",
    "environment.yml",
    "environment.yaml",
    "apt.txt",
    "packages.txt",
    "pip.txt",
    "conda.txt",
];

#[derive(Debug, Default)]
pub struct InitOptions {
    /// Where kiln.toml is written (relative paths in it are relative to it).
    pub dir: PathBuf,
    pub name: Option<String>,
    pub base: Option<String>,
    pub apt: Vec<String>,
    pub pip: Vec<String>,
    pub conda: Vec<String>,
    /// `FILE` or `KIND=FILE` (KIND: apt, pip, conda, requirements, environment).
    pub from: Vec<String>,
    /// Replace an existing kiln.toml.
    pub force: bool,
}

#[derive(Debug, Serialize)]
pub struct InitReport {
    pub path: String,
    /// Files the spec names, each with what it became (`[pip] requirements`).
    pub from: Vec<String>,
    /// Sections written (`image`, `apt`, `pip`, `conda`).
    pub sections: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{} already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("--from {file}: {reason}")]
    BadFrom { file: String, reason: String },
    #[error("--from {file}: {} is outside {}; kiln.toml names files inside its directory, so copy it there", resolved.display(), dir.display())]
    Outside {
        file: String,
        resolved: PathBuf,
        dir: PathBuf,
    },
    /// What init wrote does not parse (a flag value kiln.toml refuses).
    #[error("the kiln.toml these flags give is not valid: {0}")]
    Invalid(String),
}

impl Classify for InitError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<InitError> for kiln_core::Error {
    fn from(e: InitError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// What a file becomes in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `[apt] packages-file`
    AptList,
    /// `[pip] packages-file`
    PipList,
    /// `[conda] packages-file`
    CondaList,
    /// `[pip] requirements`
    Requirements,
    /// `[conda] environment`
    Environment,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::AptList => "[apt] packages-file",
            Kind::PipList => "[pip] packages-file",
            Kind::CondaList => "[conda] packages-file",
            Kind::Requirements => "[pip] requirements",
            Kind::Environment => "[conda] environment",
        }
    }

    fn from_prefix(p: &str) -> Option<Kind> {
        Some(match p {
            "apt" => Kind::AptList,
            "pip" => Kind::PipList,
            "conda" => Kind::CondaList,
            "requirements" => Kind::Requirements,
            "environment" => Kind::Environment,
            _ => return None,
        })
    }

    /// By name: requirements*.txt, environment.y(a)ml, then lists named
    /// for their ecosystem; any other plain list is an apt list.
    fn guess(path: &Path) -> Kind {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.starts_with("requirements") || name.ends_with(".in") {
            Kind::Requirements
        } else if name.ends_with(".yml") || name.ends_with(".yaml") {
            Kind::Environment
        } else if name.contains("conda") {
            Kind::CondaList
        } else if name.contains("pip") || name.contains("python") {
            Kind::PipList
        } else {
            Kind::AptList
        }
    }
}

/// Write `DIR/kiln.toml`.
pub fn init(opts: &InitOptions) -> Result<InitReport> {
    let path = opts.dir.join("kiln.toml");
    if path.exists() && !opts.force {
        return Err(InitError::Exists { path }.into());
    }
    let mut files: Vec<(String, Kind)> = Vec::new();
    for f in &opts.from {
        files.push(from_arg(&opts.dir, f)?);
    }
    let flags = !opts.apt.is_empty() || !opts.pip.is_empty() || !opts.conda.is_empty();
    if opts.from.is_empty() && !flags {
        for name in KNOWN_FILES {
            let p = opts.dir.join(name);
            if p.is_file() {
                files.push((name.to_string(), Kind::guess(&p)));
            }
        }
    }
    let text = render(opts, &files);
    Spec::parse(&text, &path).map_err(|e| InitError::Invalid(e.to_string()))?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| kiln_core::Error::Io {
        context: format!("creating {}", opts.dir.display()),
        source,
    })?;
    std::fs::write(&path, &text).map_err(|source| kiln_core::Error::Io {
        context: format!("writing {}", path.display()),
        source,
    })?;
    let mut sections = vec!["image".to_string()];
    for s in ["apt", "pip", "conda"] {
        if text.contains(&format!("\n[{s}]\n")) {
            sections.push(s.to_string());
        }
    }
    Ok(InitReport {
        path: path.display().to_string(),
        from: files
            .iter()
            .map(|(f, k)| format!("{f} -> {}", k.describe()))
            .collect(),
        sections,
    })
}

/// `FILE` or `KIND=FILE`, as a path relative to `dir` (it must lie inside).
fn from_arg(dir: &Path, arg: &str) -> Result<(String, Kind)> {
    let (kind, file) = match arg.split_once('=') {
        Some((k, f)) if !k.contains('/') => {
            let kind = Kind::from_prefix(k).ok_or_else(|| InitError::BadFrom {
                file: arg.to_string(),
                reason: format!(
                    "unknown kind `{k}` (one of apt, pip, conda, requirements, environment)"
                ),
            })?;
            (Some(kind), f)
        }
        _ => (None, arg),
    };
    let bad = |reason: String| InitError::BadFrom {
        file: file.to_string(),
        reason,
    };
    let given = Path::new(file);
    // Relative to the current directory, as on any command line.
    let resolved = std::fs::canonicalize(given).map_err(|e| bad(e.to_string()))?;
    if !resolved.is_file() {
        return Err(bad("not a file".into()).into());
    }
    let base = std::fs::canonicalize(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
    let rel = resolved
        .strip_prefix(&base)
        .map_err(|_| InitError::Outside {
            file: file.to_string(),
            resolved: resolved.clone(),
            dir: base.clone(),
        })?
        .to_string_lossy()
        .into_owned();
    let kind = kind.unwrap_or_else(|| Kind::guess(&resolved));
    Ok((rel, kind))
}

/// A TOML basic string (JSON's escapes are TOML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn list(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", q.join(", "))
}

fn render(opts: &InitOptions, files: &[(String, Kind)]) -> String {
    let of = |k: Kind| -> Vec<String> {
        files
            .iter()
            .filter(|(_, fk)| *fk == k)
            .map(|(f, _)| f.clone())
            .collect()
    };
    let apt_lists = of(Kind::AptList);
    let pip_lists = of(Kind::PipList);
    let conda_lists = of(Kind::CondaList);
    let requirements = of(Kind::Requirements);
    let environments = of(Kind::Environment);
    let want_apt = !opts.apt.is_empty() || !apt_lists.is_empty();
    let want_conda = !opts.conda.is_empty() || !conda_lists.is_empty() || !environments.is_empty();
    let want_pip = !opts.pip.is_empty() || !pip_lists.is_empty() || !requirements.is_empty();
    let base = opts.base.clone().unwrap_or_else(|| "scratch".to_string());

    let mut t = String::new();
    t.push_str(
        "# kiln.toml: what `kiln build` assembles, read top to bottom.\n\
         # `kiln lock` pins every package in kiln.lock; `kiln build` builds the image\n\
         # (default output: an OCI layout in ./kiln-out). Written by `kiln init`.\n\n",
    );
    t.push_str("# The image: where it is pushed (`kiln build --push`), its tags, and what it starts from.\n[image]\n");
    match &opts.name {
        Some(n) => {
            let _ = writeln!(t, "name = {}", quote(n));
        }
        None => t.push_str("# name = \"registry.example.com/team/app\"   # needed for --push\n"),
    }
    t.push_str("tags = [\"latest\"]\n");
    let _ = writeln!(
        t,
        "base = {}   # \"scratch\", a registry image, \"oci:DIR[:TAG]\" or \"docker-archive:FILE\"",
        quote(&base)
    );
    t.push_str("# platforms = [\"linux/amd64\", \"linux/arm64\"]   # default: the base's, else the host's\n");

    if want_apt {
        t.push_str(
            "\n# Debian packages, resolved and unpacked natively (no apt-get runs in the image);\n\
             # sources come from the base image's apt configuration.\n[apt]\n",
        );
        let _ = writeln!(t, "packages = {}", list(&opts.apt));
        if let Some(f) = apt_lists.first() {
            let _ = writeln!(
                t,
                "packages-file = {}   # one package per line (`name`, `name=version`), # comments",
                quote(f)
            );
        }
        for extra in apt_lists.iter().skip(1) {
            let _ = writeln!(
                t,
                "# also found: {} (one packages-file per section: merge it into the first)",
                quote(extra)
            );
        }
        if base == "scratch" {
            t.push_str(
                "# On a scratch base, bootstrap a minimal Debian first (sources from the host):\n\
                 bootstrap = \"minbase\"\n",
            );
        }
    }

    if want_conda {
        t.push_str(
            "\n# conda packages, solved and linked into `prefix` (python comes from here too).\n[conda]\n",
        );
        if environments.is_empty() {
            t.push_str(
                "channels = [\"conda-forge\"]   # names, URLs or local directories, first wins\n",
            );
        }
        let _ = writeln!(
            t,
            "packages = {}   # MatchSpecs: \"python=3.12\", \"numpy>=1.26\"",
            list(&opts.conda)
        );
        if let Some(f) = conda_lists.first() {
            let _ = writeln!(
                t,
                "packages-file = {}   # one MatchSpec per line, # comments",
                quote(f)
            );
        }
        if let Some(e) = environments.first() {
            let _ = writeln!(
                t,
                "environment = {}   # its channels, dependencies and pip: list are added",
                quote(e)
            );
        }
        for extra in environments
            .iter()
            .skip(1)
            .chain(conda_lists.iter().skip(1))
        {
            let _ = writeln!(
                t,
                "# also found: {} (one per section: merge it)",
                quote(extra)
            );
        }
        t.push_str("# prefix = \"/opt/conda\"\n");
    }

    if want_pip {
        t.push_str(
            "\n# Python packages from the package index (wheels only), installed for the\n\
             # image's interpreter.\n[pip]\n",
        );
        let _ = writeln!(
            t,
            "packages = {}   # PEP 508: \"requests>=2.31\"",
            list(&opts.pip)
        );
        if let Some(f) = pip_lists.first() {
            let _ = writeln!(
                t,
                "packages-file = {}   # one requirement per line, # comments",
                quote(f)
            );
        }
        for extra in pip_lists.iter().skip(1) {
            let _ = writeln!(
                t,
                "# also found: {} (one packages-file per section: merge it)",
                quote(extra)
            );
        }
        if !requirements.is_empty() {
            let _ = writeln!(
                t,
                "requirements = {}   # pip-format requirements files",
                list(&requirements)
            );
        }
        if want_conda {
            t.push_str("target = \"/opt/conda\"   # into the conda environment's Python\n");
        } else {
            t.push_str("target = \"system\"   # or a venv path such as \"/opt/venv\"\n");
            if base == "scratch" && !opts.apt.iter().any(|p| p.starts_with("python3")) {
                t.push_str(
                    "# pip needs a Python in the image: set `base` to an image with python3,\n\
                     # or add it with [apt] packages = [\"python3\"] or [conda] packages = [\"python\"].\n",
                );
            }
        }
    }

    t.push_str(
        "\n# Local files copied in, one layer each (sources inside this directory):\n\
         # [[files]]\n# src = \"app\"\n# dst = \"/app\"\n\n\
         # The container's configuration:\n\
         [config]\n\
         # entrypoint = [\"/app/run\"]\n\
         # cmd = []\n\
         # env = { LANG = \"C.UTF-8\" }\n\
         # workdir = \"/app\"\n\
         # user = \"1000:1000\"\n",
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_give_a_spec_that_parses_and_says_what_each_section_does() {
        let dir = tempfile::tempdir().unwrap();
        let o = InitOptions {
            name: Some("registry.example.com/team/app".into()),
            base: Some("oci:base:v1".into()),
            apt: vec!["python3".into(), "ca-certificates".into()],
            pip: vec!["requests>=2.31".into()],
            ..opts(dir.path())
        };
        let r = init(&o).unwrap();
        assert_eq!(r.sections, ["image", "apt", "pip"]);
        let spec = Spec::load(&dir.path().join("kiln.toml")).unwrap();
        assert_eq!(spec.image.base, "oci:base:v1");
        assert_eq!(
            spec.apt.as_ref().unwrap().packages,
            ["python3", "ca-certificates"]
        );
        assert!(spec.apt.as_ref().unwrap().bootstrap.is_none());
        assert_eq!(spec.pip.as_ref().unwrap().packages, ["requests>=2.31"]);
        assert_eq!(spec.pip.as_ref().unwrap().target, "system");
        assert!(spec.text.contains("# Debian packages"), "{}", spec.text);
        assert!(spec.text.contains("# Python packages"), "{}", spec.text);

        // Never overwritten without --force; nothing changes.
        let before = std::fs::read_to_string(dir.path().join("kiln.toml")).unwrap();
        let e = init(&opts(dir.path())).unwrap_err();
        assert!(matches!(
            e.downcast_ref::<InitError>(),
            Some(InitError::Exists { .. })
        ));
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("kiln.toml")).unwrap(),
            before
        );
        init(&InitOptions {
            force: true,
            conda: vec!["python=3.12".into()],
            ..opts(dir.path())
        })
        .unwrap();
        let spec = Spec::load(&dir.path().join("kiln.toml")).unwrap();
        assert_eq!(spec.conda.unwrap().channels, ["conda-forge"]);
    }

    #[test]
    fn existing_files_become_sections() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("requirements.txt"), "numpy\n").unwrap();
        std::fs::write(
            d.join("environment.yml"),
            "channels: [conda-forge]\ndependencies: [python=3.12]\n",
        )
        .unwrap();
        std::fs::write(d.join("apt.txt"), "curl\n").unwrap();
        let r = init(&opts(d)).unwrap();
        assert_eq!(r.sections, ["image", "apt", "pip", "conda"]);
        let mut spec = Spec::load(&d.join("kiln.toml")).unwrap();
        spec.read_package_files(kiln_spec::SourceScope::Context)
            .unwrap();
        let apt = spec.apt.as_ref().unwrap();
        assert_eq!(apt.packages_file.as_deref(), Some("apt.txt"));
        assert_eq!(apt.listed[0].text, "curl");
        assert_eq!(apt.bootstrap, Some(kiln_spec::sections::Bootstrap::Minbase));
        let pip = spec.pip.as_ref().unwrap();
        assert_eq!(pip.requirements, ["requirements.txt"]);
        assert_eq!(pip.target, "/opt/conda");
        let conda = spec.conda.as_ref().unwrap();
        assert_eq!(conda.environment.as_deref(), Some("environment.yml"));
        assert!(conda.channels.is_empty());
        // The lock's inputs can be computed (every named file is there).
        kiln_spec::lock::inputs(&spec).unwrap();
    }

    #[test]
    fn from_files_are_named_by_kind_and_must_be_inside() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("proj");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("admin-list"), "htop\n").unwrap();
        std::fs::write(d.join("py.list"), "six\n").unwrap();
        std::fs::write(dir.path().join("outside.txt"), "x\n").unwrap();
        let arg = |p: &Path| p.display().to_string();
        init(&InitOptions {
            from: vec![
                arg(&d.join("admin-list")),
                format!("pip={}", arg(&d.join("py.list"))),
            ],
            ..opts(&d)
        })
        .unwrap();
        let spec = Spec::load(&d.join("kiln.toml")).unwrap();
        assert_eq!(
            spec.apt.unwrap().packages_file.as_deref(),
            Some("admin-list")
        );
        assert_eq!(spec.pip.unwrap().packages_file.as_deref(), Some("py.list"));

        let e = init(&InitOptions {
            from: vec![arg(&dir.path().join("outside.txt"))],
            force: true,
            ..opts(&d)
        })
        .unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<InitError>(),
                Some(InitError::Outside { .. })
            ),
            "{e:?}"
        );
        let e = init(&InitOptions {
            from: vec!["gem=x".into()],
            force: true,
            ..opts(&d)
        })
        .unwrap_err();
        assert!(e.to_string().contains("unknown kind `gem`"), "{e}");
        // A flag value kiln.toml refuses: nothing written.
        let before = std::fs::read_to_string(d.join("kiln.toml")).unwrap();
        let e = init(&InitOptions {
            name: Some("Not A Name".into()),
            force: true,
            ..opts(&d)
        })
        .unwrap_err();
        assert!(
            matches!(e.downcast_ref::<InitError>(), Some(InitError::Invalid(_))),
            "{e:?}"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("kiln.toml")).unwrap(),
            before
        );
    }
}
