//! `kiln build --requirements FILE|URL` and `--environment FILE|URL`: an
//! image from a Python environment file alone — a requirements.txt (pip's
//! format) or an environment.yml (conda's) — local, or in Git (any URL
//! kiln-git reads, the address of a forge's file page included), installed
//! on `--base`. The spec is made here and stands beside the file (never
//! written), so `-r` includes and `--find-links` directories next to it
//! work as they would for a spec there.

use std::path::{Path, PathBuf};

use kiln_core::error::{Error, Result};
use kiln_git::{GitSource, PathKind};
use kiln_store::Cache;

/// The spec made for the file.
pub struct EnvBuild {
    pub spec_path: PathBuf,
    pub spec_text: String,
    /// The Git source (URL with credentials masked, commit), when fetched.
    pub fetched: Option<kiln_dockerfile::GitFetched>,
}

/// Which file, and how the image is named.
pub struct EnvRequest<'a> {
    /// `--requirements` (pip) or `--environment` (conda): the file or URL.
    pub requirements: Option<&'a str>,
    pub environment: Option<&'a str>,
    /// `--base`; a requirements.txt needs one with Python.
    pub base: Option<&'a str>,
    /// `--name REGISTRY/REPO` (for `--push` and docker-archive names).
    pub name: Option<&'a str>,
}

/// `pins`: the commits kiln.lock recorded for Git sources.
pub fn env_spec(
    req: &EnvRequest,
    cache_root: &Path,
    offline: bool,
    pins: &kiln_dockerfile::GitPins,
) -> Result<EnvBuild> {
    let (source, pip) = match (req.requirements, req.environment) {
        (Some(r), None) => (r, true),
        (None, Some(e)) => (e, false),
        _ => return Err(Error::input("give one of --requirements and --environment")),
    };
    let (file, fetched) = if GitSource::looks_like_git(source) {
        let mut src = GitSource::parse(source)?;
        src.kind = PathKind::File;
        let cache = Cache::open(cache_root)?;
        let c = kiln_git::fetch(&src, &cache, &pins.options(&src, offline)?)?;
        (
            c.dir.clone(),
            Some(kiln_dockerfile::GitFetched::of(&src, &c)),
        )
    } else {
        (PathBuf::from(source), None)
    };
    if !file.is_file() {
        return Err(Error::input(format!(
            "{}: no such file (a requirements.txt or environment.yml)",
            file.display()
        )));
    }
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base =
        match (req.base, pip) {
            (Some(b), _) => b.to_string(),
            (None, false) => "scratch".to_string(),
            (None, true) => return Err(Error::input(
                "--requirements needs --base IMAGE: an image with the Python the packages are for",
            )),
        };
    let mut doc = toml::Table::new();
    let mut image = toml::Table::new();
    image.insert("base".into(), base.into());
    if let Some(n) = req.name {
        image.insert("name".into(), n.into());
    }
    doc.insert("image".into(), image.into());
    let mut section = toml::Table::new();
    if pip {
        section.insert(
            "requirements".into(),
            toml::Value::Array(vec![name.clone().into()]),
        );
        doc.insert("pip".into(), section.into());
    } else {
        section.insert("environment".into(), name.clone().into());
        doc.insert("conda".into(), section.into());
    }
    let spec_text = toml::to_string(&doc).map_err(|e| Error::input(e.to_string()))?;
    Ok(EnvBuild {
        spec_path: dir.join("kiln-env.toml"),
        spec_text,
        fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_requirements_file_needs_a_base_and_stands_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("requirements.txt");
        std::fs::write(&f, "six\n").unwrap();
        let req = EnvRequest {
            requirements: Some(f.to_str().unwrap()),
            environment: None,
            base: None,
            name: None,
        };
        let e = env_spec(&req, dir.path(), true, &Default::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("--base"), "{e}");
        let b = env_spec(
            &EnvRequest {
                base: Some("oci:py:v1"),
                name: Some("registry.example.com/t/env"),
                ..req
            },
            dir.path(),
            true,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(b.spec_path, dir.path().join("kiln-env.toml"));
        assert!(
            b.spec_text
                .contains("requirements = [\"requirements.txt\"]"),
            "{}",
            b.spec_text
        );
        assert!(b
            .spec_text
            .contains("name = \"registry.example.com/t/env\""));
        kiln_spec::Spec::parse(&b.spec_text, &b.spec_path).unwrap();
    }
}
