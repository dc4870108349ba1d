//! `kiln build CONTEXT` and `--dockerfile PATH|URL` with Git URLs: each
//! Git source is fetched into the cache (see `kiln-git`) and replaced by
//! its local tree, so the rest of the frontend only ever sees local paths.
//!
//! - a directory URL as CONTEXT (`URL#REF:DIR`, a forge `tree` URL) is the
//!   context; its `Dockerfile` is the Dockerfile unless `--dockerfile` names
//!   another one (a relative path: inside that context, as docker does);
//! - a file URL (a forge `blob` URL) as CONTEXT is the Dockerfile, its
//!   directory the context;
//! - a Git URL as `--dockerfile` names the Dockerfile (docker's
//!   `URL#REF:PATH` or a `blob` URL); its directory is the context unless
//!   CONTEXT is given.

use std::path::{Path, PathBuf};

use kiln_core::error::Result;
use kiln_core::Error;
use kiln_git::{Checkout, FetchOptions, GitSource, PathKind, Pin};
use kiln_spec::lock::GitPin;
use kiln_store::Cache;
use serde::Serialize;

/// The Dockerfile and context to build, once every Git source is local.
#[derive(Debug)]
pub struct GitInputs {
    pub dockerfile: PathBuf,
    pub context: Option<PathBuf>,
    /// What was fetched (for `--json` and messages).
    pub fetched: Vec<Fetched>,
}

/// One fetched Git source: its URL (credentials masked) and commit.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub url: String,
    pub commit: String,
    pub path: String,
}

impl Fetched {
    /// What kiln.lock records of it.
    pub fn pin(&self) -> GitPin {
        GitPin {
            url: self.url.clone(),
            commit: self.commit.clone(),
            path: self.path.clone(),
        }
    }

    pub fn of(src: &GitSource, c: &Checkout) -> Fetched {
        Fetched {
            url: src.display(),
            commit: c.commit.clone(),
            path: c.path.clone(),
        }
    }
}

/// Fetch the Git sources among `dockerfile` and `context` (the CLI's
/// arguments). `None` when neither is a Git URL (nothing to do).
/// What kiln.lock says of Git sources: their commits, and whether a source
/// without one is an error (`--locked`: the lock's path, for the message).
#[derive(Default)]
pub struct GitPins<'a> {
    pub pins: &'a [GitPin],
    pub required: Option<&'a Path>,
}

impl GitPins<'_> {
    /// The fetch options for `src`: its locked commit, if any.
    pub fn options(&self, src: &GitSource, offline: bool) -> Result<FetchOptions> {
        let url = src.display();
        let pin = self.pins.iter().find(|p| p.url == url).map(|p| Pin {
            commit: p.commit.clone(),
            path: p.path.clone(),
        });
        if let (None, Some(lock)) = (&pin, self.required) {
            return Err(Error::input(format!(
                "{url}: {} records no commit for this Git source; run `kiln lock` with the \
                 same arguments first",
                lock.display()
            )));
        }
        Ok(FetchOptions { offline, pin })
    }
}

pub fn git_inputs(
    dockerfile: Option<&Path>,
    context: Option<&Path>,
    cache_root: &Path,
    offline: bool,
    pins: &GitPins,
) -> Result<Option<GitInputs>> {
    let as_git = |p: Option<&Path>| {
        p.and_then(Path::to_str)
            .filter(|s| GitSource::looks_like_git(s))
            .map(String::from)
    };
    let (df_url, ctx_url) = (as_git(dockerfile), as_git(context));
    if df_url.is_none() && ctx_url.is_none() {
        return Ok(None);
    }
    let cache = &Cache::open(cache_root)?;
    let mut fetched = Vec::new();
    let mut ctx = context.map(Path::to_path_buf);
    let mut ctx_dockerfile = None;
    if let Some(url) = &ctx_url {
        let src = GitSource::parse(url)?;
        let c = kiln_git::fetch(&src, cache, &pins.options(&src, offline)?)?;
        fetched.push(Fetched::of(&src, &c));
        match src.kind {
            PathKind::Dir => ctx = Some(c.dir.clone()),
            PathKind::File => {
                ctx = Some(parent(&c.dir));
                ctx_dockerfile = Some(c.dir.clone());
            }
        }
    }
    let dockerfile = match (&df_url, dockerfile, ctx_dockerfile) {
        (Some(url), _, _) => {
            let mut src = GitSource::parse(url)?;
            // `--dockerfile URL#REF:PATH` names a file.
            src.kind = PathKind::File;
            let c = kiln_git::fetch(&src, cache, &pins.options(&src, offline)?)?;
            fetched.push(Fetched::of(&src, &c));
            if ctx.is_none() {
                ctx = Some(parent(&c.dir));
            }
            c.dir
        }
        (None, Some(path), _) if ctx_url.is_some() && path.is_relative() => {
            // Relative to the fetched context, never out of it.
            let root = ctx.clone().unwrap_or_default();
            inside(&root, path)?
        }
        (None, Some(path), _) => path.to_path_buf(),
        (None, None, Some(file)) => file,
        (None, None, None) => {
            let root = ctx.clone().unwrap_or_default();
            let df = root.join(crate::DEFAULT_NAME);
            if !df.is_file() {
                return Err(Error::input(format!(
                    "{}: the Git context has no Dockerfile; name one with --dockerfile PATH \
                     (relative to the context) or give a URL to the Dockerfile itself",
                    kiln_core::url::redact(ctx_url.as_deref().unwrap_or_default())
                )));
            }
            df
        }
    };
    Ok(Some(GitInputs {
        dockerfile,
        context: ctx,
        fetched,
    }))
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `root/rel`, refused when it leaves `root` (through `..` or symlinks).
fn inside(root: &Path, rel: &Path) -> Result<PathBuf> {
    let p = root.join(rel);
    let ok = match (p.canonicalize(), root.canonicalize()) {
        (Ok(real), Ok(real_root)) => real.starts_with(real_root) && real.is_file(),
        _ => false,
    };
    if !ok {
        return Err(Error::input(format!(
            "--dockerfile {}: no such file in the Git context",
            rel.display()
        )));
    }
    Ok(p)
}
