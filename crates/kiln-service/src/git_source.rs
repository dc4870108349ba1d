//! `"type": "python-env"` and `"type": "dockerfile"`: specs whose content
//! lives in Git. `source` is any Git URL kiln-git reads, including the one
//! a browser shows on a GitHub- or GitLab-like file or folder page:
//!
//! - *python-env*: a requirements.txt (or any other name: pip's format) or
//!   an environment.yml/.yaml (conda's), installed on `base` or, when none
//!   is given, the server's `KILN_SERVE_PYTHON_BASE`;
//! - *dockerfile*: a folder holding a `Dockerfile` (the build context), or a
//!   Dockerfile's own URL (its folder is the context).
//!
//! The stored kiln.toml names the file inside `src/`; each job fetches the
//! source (the ref resolves to a commit then, recorded in the job's log),
//! copies the file's folder to `JOBDIR/src` and builds as any other spec.
//! Every job fetches afresh: a branch may have moved (no reuse by content).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use kiln_git::{GitSource, PathKind, Revision};

use crate::spec_input::{ConfigInput, Packages, Rendered, SpecInput};
use crate::ServiceError;

pub const TYPE_PYTHON_ENV: &str = "python-env";
pub const TYPE_DOCKERFILE: &str = "dockerfile";

/// Where the job copies the source's folder, beside its kiln.toml.
const SRC: &str = "src";

/// The environment variable naming python-env's default base.
pub const PYTHON_BASE_ENV: &str = "KILN_SERVE_PYTHON_BASE";

/// The file or folder a source URL names, as far as the URL says: the
/// last path segment (`None` for a repository's root).
fn last_segment(src: &GitSource) -> Option<String> {
    let path = match &src.revision {
        Revision::RefAndPath(rp) if src.path.is_empty() => rp.as_str(),
        _ => src.path.as_str(),
    };
    path.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn parse(input: &SpecInput) -> Result<GitSource, String> {
    let kind = input.kind();
    let url = input
        .source
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("`\"type\": \"{kind}\"` needs `source`: a Git URL"))?;
    let src = GitSource::parse(url).map_err(|e| format!("source: {e}"))?;
    if src.is_local() {
        return Err(format!(
            "source `{}`: only http(s) Git URLs are allowed here (no local files)",
            src.display_url()
        ));
    }
    Ok(src)
}

/// True when `name` is a conda environment file.
fn is_environment(name: &str) -> bool {
    name.ends_with(".yml") || name.ends_with(".yaml")
}

/// Validate a python-env or dockerfile spec and render its kiln.toml.
pub fn render(input: &SpecInput) -> Result<Rendered, String> {
    let kind = input.kind();
    let src = parse(input)?;
    let mut extra = Vec::new();
    if input.packages != Packages::default() {
        extra.push("packages");
    }
    if !input.channels.is_empty() {
        extra.push("channels");
    }
    if input.image.is_some() {
        extra.push("image");
    }
    let mut doc = toml::Table::new();
    let mut image = toml::Table::new();
    if kind == TYPE_PYTHON_ENV {
        let file = last_segment(&src)
            .filter(|_| src.kind == PathKind::File || !matches!(src.revision, Revision::RefAndPath(_)))
            .ok_or_else(|| {
                format!(
                    "source `{}` names no file: give the URL of a requirements.txt or environment.yml",
                    src.display_url()
                )
            })?;
        let base = match input.base.trim() {
            "scratch" | "" => std::env::var(PYTHON_BASE_ENV)
                .ok()
                .filter(|b| !b.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "a python-env spec needs a base with Python: give `base`, or set {PYTHON_BASE_ENV} on the server"
                    )
                })?,
            b => b.to_string(),
        };
        image.insert("base".into(), base.into());
        let path = format!("{SRC}/{file}");
        let mut section = toml::Table::new();
        if is_environment(&file) {
            section.insert("environment".into(), path.into());
            doc.insert("conda".into(), section.into());
        } else {
            section.insert("requirements".into(), toml::Value::Array(vec![path.into()]));
            doc.insert("pip".into(), section.into());
        }
    } else {
        if input.base.trim() != "scratch" {
            extra.push("base (the Dockerfile's FROM is the base)");
        }
        if input.config != ConfigInput::default() {
            extra.push("config (the Dockerfile sets it)");
        }
        let dockerfile = match src.kind {
            PathKind::File => last_segment(&src).unwrap_or_else(|| "Dockerfile".into()),
            PathKind::Dir => "Dockerfile".into(),
        };
        image.insert("dockerfile".into(), format!("{SRC}/{dockerfile}").into());
        image.insert("context".into(), SRC.into());
    }
    if !extra.is_empty() {
        return Err(format!(
            "a `{kind}` spec takes its content from `source`: {} cannot be given with it",
            extra.join(", ")
        ));
    }
    doc.insert("image".into(), image.into());
    if kind == TYPE_PYTHON_ENV {
        if let Some(config) = crate::spec_input::config_table(&input.config) {
            doc.insert("config".into(), config);
        }
    }
    let content = toml::to_string(&doc).expect("a TOML table serialises");
    kiln_spec::Spec::parse(&content, Path::new("kiln.toml")).map_err(|e| e.to_string())?;
    let mut hash = Sha256::new();
    hash.update(content.as_bytes());
    hash.update(b"\0");
    hash.update(input.source.as_deref().unwrap_or("").trim().as_bytes());
    Ok(Rendered {
        input: serde_json::to_string(input).expect("spec input serialises"),
        toml: content,
        content_hash: hex::encode(hash.finalize()),
        no_reuse: true,
    })
}

/// Fetch the job's source and copy the folder of what it names to
/// `job_dir/src`. Returns the line the job's log gets (URL and commit).
pub async fn prepare(
    input: &SpecInput,
    cache_dir: Option<PathBuf>,
    job_dir: &Path,
) -> Result<String, ServiceError> {
    let src = parse(input).map_err(ServiceError::Input)?;
    let dest = job_dir.join(SRC);
    let shown = src.display_url();
    tokio::task::spawn_blocking(move || -> Result<String, ServiceError> {
        let root = cache_dir.unwrap_or_else(kiln_store::Cache::default_root);
        let cache = kiln_store::Cache::open(root)
            .map_err(|e| ServiceError::Input(format!("opening the cache: {e}")))?;
        let checkout = kiln_git::fetch(&src, &cache, &kiln_git::FetchOptions::default())
            .map_err(|e| ServiceError::Input(e.to_string()))?;
        let folder = if checkout.dir.is_file() {
            checkout
                .dir
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| checkout.root.clone())
        } else {
            checkout.dir.clone()
        };
        copy_tree(&folder, &dest)
            .map_err(|e| ServiceError::io(format!("copying {} to the job", shown), e))?;
        Ok(format!(
            "source {shown} at commit {} ({})",
            checkout.commit,
            if checkout.path.is_empty() {
                "/".to_string()
            } else {
                checkout.path.clone()
            }
        ))
    })
    .await
    .map_err(|e| ServiceError::Input(format!("fetching the source: {e}")))?
}

/// Copy files, directories and symlinks (as links) from `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ty = entry.file_type()?;
        if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(kind: &str, source: &str) -> SpecInput {
        SpecInput {
            name: Some("x".into()),
            kind: Some(kind.into()),
            source: Some(source.into()),
            base: "registry.example.com/py:3.11".into(),
            ..SpecInput::default()
        }
    }

    #[test]
    fn python_env_from_a_forge_file_page() {
        let r = render(&input(
            TYPE_PYTHON_ENV,
            "https://git.example.com/org/repo/blob/main/envs/requirements.txt",
        ))
        .unwrap();
        assert!(
            r.toml.contains("requirements = [\"src/requirements.txt\"]"),
            "{}",
            r.toml
        );
        assert!(
            r.toml.contains("base = \"registry.example.com/py:3.11\""),
            "{}",
            r.toml
        );
        assert!(r.no_reuse);
        let r = render(&input(
            TYPE_PYTHON_ENV,
            "https://git.example.com/group/sub/repo/-/blob/v1/environment.yml",
        ))
        .unwrap();
        assert!(
            r.toml.contains("environment = \"src/environment.yml\""),
            "{}",
            r.toml
        );
    }

    #[test]
    fn dockerfile_from_a_folder_or_a_file() {
        let r = render(&SpecInput {
            base: "scratch".into(),
            ..input(
                TYPE_DOCKERFILE,
                "https://git.example.com/org/repo/tree/main/images/app",
            )
        })
        .unwrap();
        assert!(
            r.toml.contains("dockerfile = \"src/Dockerfile\""),
            "{}",
            r.toml
        );
        assert!(r.toml.contains("context = \"src\""), "{}", r.toml);
        let r = render(&SpecInput {
            base: "scratch".into(),
            ..input(
                TYPE_DOCKERFILE,
                "https://git.example.com/org/repo/blob/main/Dockerfile.gpu",
            )
        })
        .unwrap();
        assert!(
            r.toml.contains("dockerfile = \"src/Dockerfile.gpu\""),
            "{}",
            r.toml
        );
    }

    #[test]
    fn bad_sources_are_clear() {
        let e = render(&SpecInput {
            source: None,
            ..input(TYPE_PYTHON_ENV, "")
        })
        .unwrap_err();
        assert!(e.contains("needs `source`"), "{e}");
        let e = render(&input(TYPE_PYTHON_ENV, "/srv/repo#main:requirements.txt")).unwrap_err();
        assert!(e.contains("no local files"), "{e}");
        let e = render(&input(TYPE_DOCKERFILE, "https://git.example.com/org/repo")).unwrap_err();
        assert!(
            e.contains("base (the Dockerfile's FROM is the base)"),
            "{e}"
        );
        let e = render(&SpecInput {
            packages: Packages {
                pip: vec!["numpy".into()],
                ..Packages::default()
            },
            ..input(
                TYPE_PYTHON_ENV,
                "https://git.example.com/org/repo/blob/main/requirements.txt",
            )
        })
        .unwrap_err();
        assert!(e.contains("packages cannot be given"), "{e}");
    }
}
