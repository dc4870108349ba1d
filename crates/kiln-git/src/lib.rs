//! Git sources: a Git URL as a build context (a directory) or as a file
//! (a Dockerfile, a requirements.txt, an environment.yml).
//!
//! ```text
//! https://host/org/repo.git#REF:SUBDIR        docker's context syntax (REF, SUBDIR optional)
//! https://host/org/repo[.git]                 the default branch, the root
//! file:///path/repo#REF:DIR, /path/repo#REF   a local repository
//! https://host/org/repo/tree/REF/DIR          a forge page: a directory
//! https://host/org/repo/blob/REF/FILE         a forge page: a file
//! https://host/group/sub/repo/-/tree/REF/DIR  GitLab-style (groups nest), also -/blob/
//! ```
//!
//! [`fetch`] resolves the ref on the remote (one `ls-refs`), fetches that
//! one commit shallow (depth 1) with gitoxide over the same reqwest/rustls
//! stack as every other download (system trust store and `SSL_CERT_FILE`/
//! `SSL_CERT_DIR`, `HTTPS_PROXY`/`NO_PROXY`), and writes its tree into the
//! cache by commit id (`git-trees-v1/<commit>`, atomically: a killed fetch
//! leaves only a temporary that the next run removes). A commit already in
//! the cache needs no network. Local repositories are read in place (no
//! `git` binary needed). Credentials: `KILN_GIT_USERNAME` +
//! `KILN_GIT_PASSWORD`, or `KILN_GIT_TOKEN`, else git's credential helpers
//! (never a terminal prompt); never shown: every URL in messages is redacted.

mod error;
mod source;
mod tree;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gix::bstr::ByteSlice;
use kiln_core::error::with_causes;
use kiln_core::url::redact;
use kiln_store::{temp_prefix, Cache, CacheBucket};

pub use error::GitError;
pub use source::{GitSource, PathKind, Revision};

use source::{is_commit_id, split_ref_and_path};

/// How to fetch.
#[derive(Clone, Debug, Default)]
pub struct FetchOptions {
    /// `--offline`: only what the cache holds (a commit id or a pin).
    pub offline: bool,
    /// The commit (and the resolved path) kiln.lock recorded: fetched
    /// instead of resolving the ref again, and no network when cached.
    pub pin: Option<Pin>,
}

/// A resolved source, as kiln.lock records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The full commit id.
    pub commit: String,
    /// The path inside the repository (`/`-separated, empty: the root).
    pub path: String,
}

/// A fetched source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    /// The full commit id.
    pub commit: String,
    /// The commit's tree in the cache (read-only by convention: shared by builds).
    pub root: PathBuf,
    /// The source's directory or file inside `root`.
    pub dir: PathBuf,
    /// That directory or file relative to `root` (`/`-separated, empty: the root).
    pub path: String,
}

impl Checkout {
    /// What kiln.lock keeps to fetch this exact tree again.
    pub fn pin(&self) -> Pin {
        Pin {
            commit: self.commit.clone(),
            path: self.path.clone(),
        }
    }
}

/// Fetch `src` (see the crate docs) into `cache` and return where its tree is.
pub fn fetch(src: &GitSource, cache: &Cache, opts: &FetchOptions) -> Result<Checkout, GitError> {
    let bucket = cache.bucket(CacheBucket::GitTrees);
    std::fs::create_dir_all(&bucket).map_err(error::io(&bucket))?;
    let cached = |commit: &str| bucket.join(commit).is_dir().then(|| bucket.join(commit));

    if let Some(pin) = &opts.pin {
        if !is_commit_id(&pin.commit) {
            return Err(GitError::BadUrl {
                url: src.display_url(),
                reason: format!("the locked commit `{}` is not a full commit id", pin.commit),
            });
        }
        if let Some(root) = cached(&pin.commit) {
            return finish(src, &pin.commit, root, &pin.path);
        }
    }
    if let Revision::Named(r) = &src.revision {
        if is_commit_id(r) && opts.pin.is_none() {
            if let Some(root) = cached(&r.to_ascii_lowercase()) {
                return finish(src, &r.to_ascii_lowercase(), root, &src.path);
            }
        }
    }
    // A local repository is read in place: no network to avoid.
    if opts.offline && !src.is_local() {
        let reference = match (&opts.pin, &src.revision) {
            (Some(p), _) => p.commit.clone(),
            (None, Revision::Named(r)) => r.clone(),
            (None, Revision::RefAndPath(r)) => r.clone(),
            (None, Revision::Default) => "HEAD".into(),
        };
        return Err(GitError::Offline {
            url: src.display_url(),
            reference,
        });
    }

    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(".tmp"))
        .tempdir_in(&bucket)
        .map_err(error::io(&bucket))?;
    let (commit, path, written) = if src.is_local() {
        fetch_local(src, opts, tmp.path(), &cached)?
    } else {
        fetch_remote(src, opts, tmp.path(), &cached)?
    };
    let root = bucket.join(&commit);
    if let Some(tree) = written {
        // Another build may have put the same commit in place meanwhile: keep theirs.
        if let Err(e) = std::fs::rename(&tree, &root) {
            if !root.is_dir() {
                return Err(error::io(&root)(e));
            }
        }
    }
    drop(tmp);
    finish(src, &commit, root, &path)
}

/// A commit's tree and the resolved path: check the path and its kind.
fn finish(src: &GitSource, commit: &str, root: PathBuf, path: &str) -> Result<Checkout, GitError> {
    let missing = || GitError::PathMissing {
        url: src.display_url(),
        commit: commit.to_string(),
        path: path.to_string(),
    };
    let dir = if path.is_empty() {
        root.clone()
    } else {
        root.join(path)
    };
    // Through symlinks in the tree, but never out of it.
    let real = dir.canonicalize().map_err(|_| missing())?;
    let real_root = root.canonicalize().map_err(error::io(&root))?;
    if !real.starts_with(&real_root) {
        return Err(missing());
    }
    let (want_dir, expected) = match src.kind {
        PathKind::Dir => (true, "directory"),
        PathKind::File => (false, "file"),
    };
    if real.is_dir() != want_dir {
        return Err(GitError::WrongKind {
            url: src.display_url(),
            commit: commit.to_string(),
            path: if path.is_empty() {
                "/".into()
            } else {
                path.to_string()
            },
            expected,
        });
    }
    Ok(Checkout {
        commit: commit.to_string(),
        root,
        dir,
        path: path.to_string(),
    })
}

/// One ref as listed by the remote or read locally: full name and the commit it peels to.
struct ListedRef {
    name: String,
    commit: String,
}

/// Which ref to fetch and the path inside the repository.
struct Resolved {
    /// The full ref name to fetch, or a commit id.
    fetch: String,
    commit: Option<String>,
    path: String,
}

/// Resolve the source's revision against the listed refs.
fn resolve(src: &GitSource, refs: &[ListedRef], pin: Option<&Pin>) -> Result<Resolved, GitError> {
    let unknown = |reference: &str| GitError::UnknownRef {
        url: src.display_url(),
        reference: reference.to_string(),
    };
    if let Some(pin) = pin {
        return Ok(Resolved {
            fetch: pin.commit.clone(),
            commit: Some(pin.commit.clone()),
            path: pin.path.clone(),
        });
    }
    let (name, path) = match &src.revision {
        Revision::Default => ("HEAD".to_string(), src.path.clone()),
        Revision::Named(r) => (r.clone(), src.path.clone()),
        Revision::RefAndPath(rp) => {
            let short: Vec<&str> = refs
                .iter()
                .filter_map(|r| {
                    r.name
                        .strip_prefix("refs/heads/")
                        .or_else(|| r.name.strip_prefix("refs/tags/"))
                })
                .collect();
            let (name, path) = split_ref_and_path(rp, short)
                .ok_or_else(|| unknown(rp.split('/').next().unwrap_or(rp)))?;
            (name, path)
        }
    };
    if is_commit_id(&name) {
        let id = name.to_ascii_lowercase();
        return Ok(Resolved {
            fetch: id.clone(),
            commit: Some(id),
            path,
        });
    }
    let candidates = if name == "HEAD" || name.starts_with("refs/") {
        vec![name.clone()]
    } else {
        vec![format!("refs/heads/{name}"), format!("refs/tags/{name}")]
    };
    for c in &candidates {
        if let Some(r) = refs.iter().find(|r| &r.name == c) {
            return Ok(Resolved {
                fetch: r.name.clone(),
                commit: Some(r.commit.clone()),
                path,
            });
        }
    }
    Err(unknown(&name))
}

type CachedFn<'a> = dyn Fn(&str) -> Option<PathBuf> + 'a;

/// A local repository (a path or `file://`): read in place.
fn fetch_local(
    src: &GitSource,
    opts: &FetchOptions,
    tmp: &Path,
    cached: &CachedFn<'_>,
) -> Result<(String, String, Option<PathBuf>), GitError> {
    let url = src.display_url();
    let repo = gix::open(&src.repo).map_err(|e| GitError::NotARepository {
        url: url.clone(),
        message: redact(&e.to_string()),
    })?;
    let mut refs = Vec::new();
    if let Ok(head) = repo.head_id() {
        refs.push(ListedRef {
            name: "HEAD".into(),
            commit: head.to_string(),
        });
    }
    let platform = repo.references().map_err(|e| bad_repo(&url, e))?;
    for r in platform.all().map_err(|e| bad_repo(&url, e))? {
        let Ok(mut r) = r else { continue };
        let name = r.name().as_bstr().to_string();
        if let Ok(id) = r.peel_to_id() {
            refs.push(ListedRef {
                name,
                commit: id.to_string(),
            });
        }
    }
    let resolved = resolve(src, &refs, opts.pin.as_ref())?;
    let commit = peel_commit(&repo, &resolved.fetch).ok_or_else(|| GitError::UnknownRef {
        url: url.clone(),
        reference: resolved.fetch.clone(),
    })?;
    if cached(&commit).is_some() {
        return Ok((commit, resolved.path, None));
    }
    let out = tmp.join("tree");
    tree::write_commit(&repo, &commit, &out).map_err(|message| GitError::BadTree {
        url,
        commit: commit.clone(),
        message,
    })?;
    Ok((commit, resolved.path, Some(out)))
}

/// The commit a ref name or id names in `repo`, peeling tags.
fn peel_commit(repo: &gix::Repository, spec: &str) -> Option<String> {
    let id = if is_commit_id(spec) {
        gix::ObjectId::from_hex(spec.as_bytes()).ok()?
    } else {
        repo.find_reference(spec).ok()?.peel_to_id().ok()?.detach()
    };
    let commit = repo.find_object(id).ok()?.peel_to_commit().ok()?;
    Some(commit.id.to_string())
}

fn bad_repo(url: &str, e: impl std::fmt::Display) -> GitError {
    GitError::NotARepository {
        url: url.to_string(),
        message: redact(&e.to_string()),
    }
}

/// A remote over http(s): list refs, then fetch the one commit shallow.
fn fetch_remote(
    src: &GitSource,
    opts: &FetchOptions,
    tmp: &Path,
    cached: &CachedFn<'_>,
) -> Result<(String, String, Option<PathBuf>), GitError> {
    let url = src.display_url();
    let repo = gix::init_bare(tmp.join("repo")).map_err(|e| GitError::Io {
        path: tmp.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let auth = Auth::default();

    let by_id = matches!(&src.revision, Revision::Named(r) if is_commit_id(r));
    let resolved = if opts.pin.is_some() || by_id {
        // A commit id needs no ref listing.
        resolve(src, &[], opts.pin.as_ref())?
    } else {
        let refs = list_refs(&repo, src, &auth)?;
        resolve(src, &refs, None)?
    };
    let commit = resolved.commit.clone().unwrap_or_default();
    if cached(&commit).is_some() {
        return Ok((commit, resolved.path, None));
    }

    let spec = if is_commit_id(&resolved.fetch) {
        resolved.fetch.clone()
    } else {
        format!("+{}:refs/kiln/fetched", resolved.fetch)
    };
    let net = |e: gix::Error| auth.error(&url, &e);
    let remote = repo
        .remote_at(src.repo.as_str())
        .map_err(|e| bad_url(src, e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([spec.as_str()], gix::remote::Direction::Fetch)
        .map_err(|e| bad_url(src, e))?;
    // gix makes its reqwest client on connect: the TLS provider first.
    kiln_store::http::tls();
    let conn = remote.connect(gix::remote::Direction::Fetch).map_err(net)?;
    let conn = auth.attach(conn, &repo, src)?;
    let interrupt = AtomicBool::new(false);
    conn.prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(net)?
        .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(
            std::num::NonZeroU32::MIN,
        ))
        .receive(gix::progress::Discard, &interrupt)
        .map_err(net)?;
    let repo = gix::open(tmp.join("repo")).map_err(|e| bad_repo(&url, e))?;
    let found = repo
        .find_object(gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| bad_repo(&url, e))?)
        .ok()
        .and_then(|o| o.peel_to_commit().ok())
        .map(|c| c.id.to_string());
    if found.as_deref() != Some(commit.as_str()) {
        return Err(GitError::UnknownRef {
            url,
            reference: resolved.fetch,
        });
    }
    let out = tmp.join("tree");
    tree::write_commit(&repo, &commit, &out).map_err(|message| GitError::BadTree {
        url,
        commit: commit.clone(),
        message,
    })?;
    Ok((commit, resolved.path, Some(out)))
}

fn bad_url(src: &GitSource, e: impl std::fmt::Display) -> GitError {
    GitError::BadUrl {
        url: src.display_url(),
        reason: redact(&e.to_string()),
    }
}

/// The remote's branches, tags and HEAD (one `ls-refs`), peeled to commits.
fn list_refs(
    repo: &gix::Repository,
    src: &GitSource,
    auth: &Auth,
) -> Result<Vec<ListedRef>, GitError> {
    let url = src.display_url();
    let net = |e: gix::Error| auth.error(&url, &e);
    let remote = repo
        .remote_at(src.repo.as_str())
        .map_err(|e| bad_url(src, e))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs(
            [
                "HEAD",
                "refs/heads/*:refs/kiln/heads/*",
                "refs/tags/*:refs/kiln/tags/*",
            ],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| bad_url(src, e))?;
    // gix makes its reqwest client on connect: the TLS provider first.
    kiln_store::http::tls();
    let conn = remote.connect(gix::remote::Direction::Fetch).map_err(net)?;
    let conn = auth.attach(conn, repo, src)?;
    let (map, _) = conn
        .ref_map(gix::progress::Discard, Default::default())
        .map_err(net)?;
    Ok(map
        .remote_refs
        .iter()
        .filter_map(|r| {
            let (name, target, peeled) = r.unpack();
            let id = peeled.or(target)?;
            Some(ListedRef {
                name: name.to_str_lossy().into_owned(),
                commit: id.to_string(),
            })
        })
        .collect())
}

/// Credentials for one fetch, and whether the remote asked for them (so a
/// failure after that is an authentication failure, exit code 4).
#[derive(Clone, Default)]
struct Auth {
    asked: Arc<AtomicBool>,
}

impl Auth {
    /// `KILN_GIT_USERNAME` + `KILN_GIT_PASSWORD`, or `KILN_GIT_TOKEN` (any
    /// username; forges take the token as the password).
    fn from_env() -> Option<(String, String)> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(password) = get("KILN_GIT_PASSWORD") {
            return Some((
                get("KILN_GIT_USERNAME").unwrap_or_else(|| "git".into()),
                password,
            ));
        }
        let token = get("KILN_GIT_TOKEN")?;
        Some((
            get("KILN_GIT_USERNAME").unwrap_or_else(|| "x-access-token".into()),
            token,
        ))
    }

    fn attach<'a, 'repo, T: gix::protocol::transport::client::blocking_io::Transport>(
        &self,
        conn: gix::remote::Connection<'a, 'static, 'repo, T>,
        repo: &gix::Repository,
        src: &GitSource,
    ) -> Result<gix::remote::Connection<'a, 'static, 'repo, T>, GitError> {
        let asked = self.asked.clone();
        let env = Self::from_env();
        let gix_url =
            gix::url::parse(src.repo.as_bytes().as_bstr()).map_err(|e| bad_url(src, e))?;
        // git's credential helpers, never a prompt on the terminal.
        let (mut cascade, _, mut prompt) = repo
            .config_snapshot()
            .credential_helpers(gix_url)
            .map_err(|e| bad_url(src, e))?;
        prompt.mode = gix::prompt::Mode::Disable;
        let conn = conn.with_credentials(move |action| {
            use gix::credentials::helper::Action;
            if let Action::Get(_) = &action {
                asked.store(true, Ordering::Relaxed);
            }
            match (&env, action) {
                (Some((username, password)), Action::Get(ctx)) => {
                    Ok(Some(gix::credentials::protocol::Outcome {
                        credentials: gix::sec::identity::Credentials::UsernamePassword {
                            username: username.clone(),
                            password: password.clone(),
                            oauth_refresh_token: None,
                        },
                        next: ctx.into(),
                    }))
                }
                (Some(_), _) => Ok(None),
                (None, action) => cascade.invoke(action, prompt.clone()),
            }
        });
        // The same client set-up as every other download (kiln-store's
        // `Http`): reqwest's defaults give the platform verifier (system
        // store, SSL_CERT_FILE/SSL_CERT_DIR) and the proxy variables.
        let backend = gix::protocol::transport::client::blocking_io::http::reqwest::Options {
            configure_client: Some(Box::new(|b| {
                Ok(b.user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION"))))
            })),
            configure_request: None,
        };
        let http = gix::protocol::transport::client::blocking_io::http::Options {
            backend: Some(Arc::new(std::sync::Mutex::new(backend))),
            ..Default::default()
        };
        Ok(conn.with_transport_options(Box::new(http)))
    }

    /// A failed transfer: an authentication failure if the remote asked for credentials.
    fn error(&self, url: &str, e: &gix::Error) -> GitError {
        let mut message = redact(&with_causes(e));
        if self.asked.load(Ordering::Relaxed) || refused_credentials(e) {
            // gix sends no credentials in clear text: say so plainly.
            if url.starts_with("http://") {
                message = "the server asks for credentials, and kiln sends them only over https"
                    .to_string();
            }
            GitError::Auth {
                url: url.to_string(),
                message,
            }
        } else {
            GitError::Network {
                url: url.to_string(),
                message,
            }
        }
    }
}

/// gix refused to send credentials (from the URL or a helper), e.g. over
/// plain http.
fn refused_credentials(e: &gix::Error) -> bool {
    use gix::protocol::transport::client::Error as TransportError;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(TransportError::AuthenticationRefused(_)) = c.downcast_ref::<TransportError>() {
            return true;
        }
        cur = c.source();
    }
    // The chain may not expose the transport's type: its message then.
    with_causes(e).contains("refuses to use the given credentials")
}
