//! One parser for every way people write a Git source: docker's context
//! syntax (`URL#REF:SUBDIR`), plain clone URLs, `file://` and local paths,
//! and the URLs a GitHub-like or GitLab-like forge shows in the address bar
//! (`…/tree/REF/DIR`, `…/blob/REF/FILE`, `…/-/tree/REF/DIR`).

use crate::GitError;

/// What the path inside the repository names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// A directory: a build context (docker's `#REF:DIR`, a forge `tree` URL).
    Dir,
    /// A file: a Dockerfile, a requirements.txt, an environment.yml (a forge `blob` URL).
    File,
}

/// Where the revision comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revision {
    /// The remote's default branch (its `HEAD`).
    Default,
    /// A branch, a tag, a full ref name (`refs/…`) or a full commit id.
    Named(String),
    /// A forge URL's `REF/PATH…` (after `tree/` or `blob/`): a ref may hold
    /// slashes (`feature/x`), so the split is taken from the remote's refs
    /// (the longest ref name that prefixes it) when fetching.
    RefAndPath(String),
}

/// A parsed Git source. `repo` may carry credentials (`user:token@`): it is
/// only ever shown through [`GitSource::display_url`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSource {
    /// What to fetch from: an `http(s)://` URL, or a local repository path
    /// (`file://` URLs become paths).
    pub repo: String,
    pub revision: Revision,
    /// The directory or file inside the repository, `/`-separated, without
    /// leading or trailing `/` (empty: the root). With
    /// [`Revision::RefAndPath`] it is empty until the split is known.
    pub path: String,
    pub kind: PathKind,
}

impl GitSource {
    /// Parse any of the accepted forms (see the crate docs). Local paths
    /// must name an existing directory only at fetch time.
    pub fn parse(input: &str) -> Result<GitSource, GitError> {
        let bad = |reason: &str| GitError::BadUrl {
            url: kiln_core::url::redact(input),
            reason: reason.to_string(),
        };
        let input = input.trim();
        if input.is_empty() {
            return Err(bad("empty"));
        }
        // docker's `URL#REF:SUBDIR`.
        let (base, fragment) = match input.split_once('#') {
            Some((b, f)) => (b, Some(f)),
            None => (input, None),
        };
        let (repo, forge) = if let Some(rest) = base.strip_prefix("file://") {
            // `file:///abs/path` (an empty host) or `file://localhost/abs/path`.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path (file:///path/to/repo)",
                ));
            }
            (kiln_core::url::percent_decode(path), None)
        } else if let Some((scheme, _)) = base.split_once("://") {
            if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
                return Err(bad(
                    "only https://, http://, file:// URLs and local paths are supported",
                ));
            }
            parse_http(base, fragment.is_some()).map_err(&bad)?
        } else {
            (base.to_string(), None)
        };
        if repo.is_empty() {
            return Err(bad("no repository"));
        }
        let (revision, path, kind) = match (fragment, forge) {
            (Some(f), _) => {
                let (r, p) = f.split_once(':').unwrap_or((f, ""));
                let revision = if r.is_empty() {
                    Revision::Default
                } else {
                    Revision::Named(r.to_string())
                };
                (revision, clean_path(p).map_err(&bad)?, PathKind::Dir)
            }
            (None, Some((kind, rest))) => {
                let rest = clean_path(&rest).map_err(&bad)?;
                if rest.is_empty() {
                    return Err(bad("a tree/ or blob/ URL needs a ref after it"));
                }
                (Revision::RefAndPath(rest), String::new(), kind)
            }
            (None, None) => (Revision::Default, String::new(), PathKind::Dir),
        };
        Ok(GitSource {
            repo,
            revision,
            path,
            kind,
        })
    }

    /// Whether a build context or `--dockerfile` argument is meant as a Git
    /// source rather than a local file or directory: an `http(s)://` or
    /// `file://` URL, or a local path with a `#REF` fragment or ending in
    /// `.git`.
    pub fn looks_like_git(arg: &str) -> bool {
        let lower = arg.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return true;
        }
        if lower.starts_with("file://") {
            return true;
        }
        let base = arg.split('#').next().unwrap_or(arg);
        arg.contains('#') || base.trim_end_matches('/').ends_with(".git")
    }

    /// Whether `repo` is a local path (or was a `file://` URL).
    pub fn is_local(&self) -> bool {
        !self.repo.contains("://")
    }

    /// The repository URL fit for messages and kiln.lock (credentials masked).
    pub fn display_url(&self) -> String {
        kiln_core::url::redact(&self.repo)
    }

    /// The source as one string in docker's syntax, credentials masked:
    /// `URL#REF:PATH` (what kiln.lock records next to the commit).
    pub fn display(&self) -> String {
        let mut s = self.display_url();
        let rev = match &self.revision {
            Revision::Default => String::new(),
            Revision::Named(r) => r.clone(),
            Revision::RefAndPath(rp) => rp.clone(),
        };
        if !rev.is_empty() || !self.path.is_empty() {
            s.push('#');
            s.push_str(&rev);
            if !self.path.is_empty() {
                s.push(':');
                s.push_str(&self.path);
            }
        }
        s
    }
}

type Forge = Option<(PathKind, String)>;

/// An `http(s)://` URL: the repository URL, and for a forge page URL the
/// kind and the `REF/PATH…` after `tree/` or `blob/`.
fn parse_http(url: &str, has_fragment: bool) -> Result<(String, Forge), &'static str> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.ends_with('@') {
        return Err("no host");
    }
    // A page URL may carry `?ref_type=heads` or `?plain=1`: not part of the repository.
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        return Err("no repository path");
    }
    let join = |segs: &[&str]| format!("{scheme}://{authority}/{}", segs.join("/"));
    if has_fragment {
        return Ok((join(&segments), None));
    }
    let kind_of = |s: &str| match s {
        "tree" => Some(PathKind::Dir),
        "blob" => Some(PathKind::File),
        _ => None,
    };
    // GitLab-like: `group/sub/repo/-/tree/REF/DIR` (groups nest; `-` marks the split).
    if let Some(dash) = segments.iter().position(|s| *s == "-") {
        let kind = segments
            .get(dash + 1)
            .and_then(|s| kind_of(s))
            .ok_or("after /-/ only tree/REF/… or blob/REF/… is understood")?;
        if dash == 0 {
            return Err("no repository before /-/");
        }
        let rest = segments[dash + 2..].join("/");
        return Ok((join(&segments[..dash]), Some((kind, rest))));
    }
    // GitHub-like: `org/repo/tree/REF/DIR`, `org/repo/blob/REF/FILE`.
    if segments.len() >= 3 {
        if let Some(kind) = kind_of(segments[2]) {
            let rest = segments[3..].join("/");
            return Ok((join(&segments[..2]), Some((kind, rest))));
        }
    }
    Ok((join(&segments), None))
}

/// A path inside the repository: `/`-separated, no `..`, no leading `/`.
fn clean_path(p: &str) -> Result<String, &'static str> {
    let mut out = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => return Err("a path inside the repository may not contain `..`"),
            s => out.push(s),
        }
    }
    Ok(out.join("/"))
}

/// Split a forge URL's `REF/PATH…` with the remote's ref names (short
/// names: `main`, `feature/x`, `v1.0`): the longest name equal to the whole
/// or followed by `/` wins; else a leading full commit id. `None`: no ref fits.
pub(crate) fn split_ref_and_path<'a>(
    ref_and_path: &'a str,
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(String, String)> {
    let mut best: Option<&str> = None;
    for name in names {
        let fits = ref_and_path == name
            || (ref_and_path.starts_with(name)
                && ref_and_path.as_bytes().get(name.len()) == Some(&b'/'));
        if fits && best.is_none_or(|b| name.len() > b.len()) {
            best = Some(name);
        }
    }
    let (first, _) = ref_and_path.split_once('/').unwrap_or((ref_and_path, ""));
    let name = match best {
        Some(b) => b,
        None if is_commit_id(first) => first,
        None => return None,
    };
    let path = ref_and_path[name.len()..].trim_start_matches('/');
    Some((name.to_string(), path.to_string()))
}

/// A full hexadecimal SHA-1 commit id.
pub(crate) fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GitSource {
        GitSource::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_context_syntax() {
        let s = p("https://git.example.com/org/repo.git#main:docker/app");
        assert_eq!(s.repo, "https://git.example.com/org/repo.git");
        assert_eq!(s.revision, Revision::Named("main".into()));
        assert_eq!(s.path, "docker/app");
        assert_eq!(s.kind, PathKind::Dir);

        let s = p("https://git.example.com/org/repo.git#v1.2");
        assert_eq!(s.revision, Revision::Named("v1.2".into()));
        assert_eq!(s.path, "");

        let s = p("https://git.example.com/org/repo.git#:sub/");
        assert_eq!(s.revision, Revision::Default);
        assert_eq!(s.path, "sub");

        // A fragment wins over forge-looking path segments.
        let s = p("https://git.example.com/org/repo/tree/x#dev");
        assert_eq!(s.repo, "https://git.example.com/org/repo/tree/x");
        assert_eq!(s.revision, Revision::Named("dev".into()));
    }

    #[test]
    fn plain_urls() {
        for url in [
            "https://git.example.com/org/repo",
            "https://git.example.com/org/repo.git",
            "http://127.0.0.1:8080/org/repo.git",
        ] {
            let s = p(url);
            assert_eq!(s.repo, url);
            assert_eq!(s.revision, Revision::Default);
            assert_eq!(s.path, "");
            assert!(!s.is_local());
        }
        assert_eq!(
            p("https://git.example.com/org/repo/").repo,
            "https://git.example.com/org/repo"
        );
    }

    #[test]
    fn file_urls_and_local_paths() {
        let s = p("file:///srv/git/repo#v1:dir/sub");
        assert_eq!(s.repo, "/srv/git/repo");
        assert!(s.is_local());
        assert_eq!(s.revision, Revision::Named("v1".into()));
        assert_eq!(s.path, "dir/sub");
        assert_eq!(p("file:///srv/my%20repo").repo, "/srv/my repo");
        assert_eq!(p("file://localhost/srv/r").repo, "/srv/r");
        let s = p("/srv/git/repo.git#main");
        assert_eq!(s.repo, "/srv/git/repo.git");
        assert_eq!(s.revision, Revision::Named("main".into()));
        assert!(GitSource::parse("file://relative/path").is_err());
    }

    #[test]
    fn github_like_page_urls() {
        let s = p("https://git.example.com/org/repo/tree/main/docker/app");
        assert_eq!(s.repo, "https://git.example.com/org/repo");
        assert_eq!(s.revision, Revision::RefAndPath("main/docker/app".into()));
        assert_eq!(s.kind, PathKind::Dir);

        let s = p("https://git.example.com/org/repo/blob/v2/env/requirements.txt");
        assert_eq!(s.repo, "https://git.example.com/org/repo");
        assert_eq!(
            s.revision,
            Revision::RefAndPath("v2/env/requirements.txt".into())
        );
        assert_eq!(s.kind, PathKind::File);

        let s = p("https://git.example.com/org/repo/tree/main");
        assert_eq!(s.revision, Revision::RefAndPath("main".into()));
        assert!(GitSource::parse("https://git.example.com/org/repo/tree/").is_err());
    }

    #[test]
    fn gitlab_like_page_urls() {
        let s = p("https://gitlab.example.com/group/sub/repo/-/tree/main/dir?ref_type=heads");
        assert_eq!(s.repo, "https://gitlab.example.com/group/sub/repo");
        assert_eq!(s.revision, Revision::RefAndPath("main/dir".into()));
        assert_eq!(s.kind, PathKind::Dir);

        let s = p("https://gitlab.example.com/group/repo/-/blob/feature/x/environment.yml");
        assert_eq!(s.repo, "https://gitlab.example.com/group/repo");
        assert_eq!(
            s.revision,
            Revision::RefAndPath("feature/x/environment.yml".into())
        );
        assert_eq!(s.kind, PathKind::File);
        assert!(GitSource::parse("https://gitlab.example.com/-/tree/main").is_err());
        assert!(GitSource::parse("https://gitlab.example.com/g/r/-/issues/1").is_err());
    }

    #[test]
    fn bad_urls_are_input_errors_without_credentials() {
        for bad in ["", "ssh://git.example.com/r", "https://", "https://host"] {
            assert!(GitSource::parse(bad).is_err(), "{bad}");
        }
        let e = GitSource::parse("ftp://user:secret@git.example.com/r").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("***"), "{e}");
        assert!(GitSource::parse("https://git.example.com/r#main:../x").is_err());
    }

    #[test]
    fn credentials_stay_in_repo_but_not_in_display() {
        let s = p("https://user:tok@git.example.com/org/repo.git#main:dir");
        assert_eq!(s.repo, "https://user:tok@git.example.com/org/repo.git");
        assert_eq!(
            s.display(),
            "https://***@git.example.com/org/repo.git#main:dir"
        );
    }

    #[test]
    fn ref_and_path_split_by_longest_ref() {
        let names = ["main", "feature", "feature/x", "v1.0"];
        let split = |s| split_ref_and_path(s, names.iter().copied());
        assert_eq!(
            split("feature/x/docs/a"),
            Some(("feature/x".into(), "docs/a".into()))
        );
        assert_eq!(split("feature/y"), Some(("feature".into(), "y".into())));
        assert_eq!(split("main"), Some(("main".into(), String::new())));
        assert_eq!(split("mainline/x"), None);
        let id = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            split(&format!("{id}/dir")),
            Some((id.to_string(), "dir".into()))
        );
    }

    #[test]
    fn what_looks_like_git() {
        assert!(GitSource::looks_like_git(
            "https://git.example.com/org/repo"
        ));
        assert!(GitSource::looks_like_git("file:///srv/repo"));
        assert!(GitSource::looks_like_git("../repo.git"));
        assert!(GitSource::looks_like_git("./repo#main"));
        assert!(!GitSource::looks_like_git("."));
        assert!(!GitSource::looks_like_git("./app"));
    }
}
