//! `POST /api/v1/webhooks/github` and `POST /api/v1/webhooks/gitlab`: a
//! push to a Git repository queues a rebuild of every spec whose `git.url`
//! is that repository (and whose `git.ref`, when given, is the pushed
//! branch or tag; without one, the repository's default branch).
//!
//! The secret is `KILN_WEBHOOK_SECRET` (unset: the routes answer 404).
//! GitHub signs the raw body: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`;
//! GitLab sends the secret itself in `X-Gitlab-Token`. Both are checked in
//! constant time; a bad or missing one is a 401 and queues nothing. Events
//! other than pushes (GitHub's `ping`, …) are answered `{"queued": []}`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::{ApiError, AppState};
use crate::spec_input::SpecInput;
use crate::store::Store;

/// The environment variable holding the webhook secret.
pub const SECRET_ENV: &str = "KILN_WEBHOOK_SECRET";

fn secret() -> Result<String, ApiError> {
    std::env::var(SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("webhooks are off: {SECRET_ENV} is not set"),
            )
        })
}

fn unauthorized(what: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, what.to_string())
}

/// GitHub's `X-Hub-Signature-256` (`sha256=<hex>`) of `body` under `secret`.
pub fn verify_github(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(sig) = header
        .map(str::trim)
        .and_then(|h| h.strip_prefix("sha256="))
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&sig).is_ok()
}

/// GitLab's `X-Gitlab-Token`: the secret itself. Hashed first, so the
/// comparison takes the same time whatever the lengths.
pub fn verify_gitlab(secret: &str, header: Option<&str>) -> bool {
    let Some(token) = header else {
        return false;
    };
    let a: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    a.ct_eq(&b).into()
}

/// A repository URL reduced to `host/path`: no scheme, user, port, query,
/// trailing `/` or `.git`; the host in lowercase. `https://H/o/r.git`,
/// `ssh://git@H:22/o/r`, `git@H:o/r.git` and `git://H/o/r` are all `h/o/r`.
/// `None`: not a repository URL.
pub fn normalize_repo_url(url: &str) -> Option<String> {
    let url = url.trim();
    let (host, path) = match url.split_once("://") {
        Some((scheme, rest)) => {
            if scheme.is_empty()
                || !scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+')
            {
                return None;
            }
            let rest = rest.split(['?', '#']).next().unwrap_or("");
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            // No port (an SSH and an HTTPS URL of one repository differ there).
            let host = match host.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
                _ => host,
            };
            (host, path)
        }
        // scp-like: [user@]host:path
        None => {
            let (left, path) = url.split_once(':')?;
            if path.starts_with("//") {
                return None;
            }
            let host = left.rsplit_once('@').map_or(left, |(_, h)| h);
            (host, path)
        }
    };
    let mut path = path.trim_matches('/');
    if let Some(p) = path.strip_suffix(".git") {
        path = p.trim_end_matches('/');
    }
    let host = host.trim().to_ascii_lowercase();
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    if !host_ok || path.is_empty() || path.contains(char::is_whitespace) {
        return None;
    }
    Some(format!("{host}/{path}"))
}

/// What a push event says.
#[derive(Debug, Default, PartialEq)]
pub struct Push {
    /// Every URL the payload names the repository by.
    pub urls: Vec<String>,
    /// `refs/heads/BRANCH` or `refs/tags/TAG`.
    pub git_ref: String,
    pub default_branch: Option<String>,
    /// The new commit.
    pub after: Option<String>,
    /// The branch or tag was deleted: nothing to build.
    pub deleted: bool,
}

fn strings(v: &Value, pointers: &[&str]) -> Vec<String> {
    pointers
        .iter()
        .filter_map(|p| v.pointer(p).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn string(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// All zeros: GitHub's and GitLab's "no commit" (a deleted ref).
fn zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// A GitHub `push` event's payload.
pub fn github_push(v: &Value) -> Push {
    let after = string(v, "/after");
    Push {
        urls: strings(
            v,
            &[
                "/repository/clone_url",
                "/repository/html_url",
                "/repository/ssh_url",
                "/repository/git_url",
                "/repository/url",
            ],
        ),
        git_ref: string(v, "/ref").unwrap_or_default(),
        default_branch: string(v, "/repository/default_branch")
            .or_else(|| string(v, "/repository/master_branch")),
        deleted: v.get("deleted").and_then(Value::as_bool).unwrap_or(false)
            || after.as_deref().is_some_and(zero_sha),
        after,
    }
}

/// A GitLab `Push Hook` or `Tag Push Hook` payload.
pub fn gitlab_push(v: &Value) -> Push {
    let after = string(v, "/after");
    Push {
        urls: strings(
            v,
            &[
                "/project/git_http_url",
                "/project/git_ssh_url",
                "/project/web_url",
                "/repository/git_http_url",
                "/repository/git_ssh_url",
                "/repository/homepage",
            ],
        ),
        git_ref: string(v, "/ref").unwrap_or_default(),
        default_branch: string(v, "/project/default_branch"),
        deleted: after.as_deref().is_some_and(zero_sha),
        after,
    }
}

/// Does a spec's `git.ref` (or, without one, the default branch) name the
/// pushed ref? Without either, every push matches.
pub fn ref_matches(spec_ref: Option<&str>, pushed: &str, default_branch: Option<&str>) -> bool {
    let named = |r: &str| {
        let r = r.trim();
        pushed == r
            || pushed.strip_prefix("refs/heads/") == Some(r)
            || pushed.strip_prefix("refs/tags/") == Some(r)
    };
    match (spec_ref, default_branch) {
        (Some(r), _) => named(r),
        (None, Some(b)) => pushed.strip_prefix("refs/heads/") == Some(b),
        (None, None) => true,
    }
}

/// Does a spec's Git source match the push?
pub fn spec_matches(spec: &SpecInput, push: &Push) -> bool {
    let Some(git) = &spec.git else {
        return false;
    };
    let Some(want) = normalize_repo_url(&git.url) else {
        return false;
    };
    push.urls
        .iter()
        .filter_map(|u| normalize_repo_url(u))
        .any(|u| u == want)
        && ref_matches(
            git.git_ref.as_deref(),
            &push.git_ref,
            push.default_branch.as_deref(),
        )
}

/// Queue a rebuild of every spec the push matches.
async fn queue(store: &Store, push: &Push, source: &str) -> Result<Vec<Value>, ApiError> {
    let mut queued = Vec::new();
    if push.deleted || push.git_ref.is_empty() {
        return Ok(queued);
    }
    let commit = push
        .after
        .as_deref()
        .map(|a| format!(" ({})", &a[..a.len().min(12)]))
        .unwrap_or_default();
    let repo = push.urls.first().map(String::as_str).unwrap_or("?");
    for (name, input) in store.latest_inputs().await? {
        let Ok(spec) = serde_json::from_str::<SpecInput>(&input) else {
            continue;
        };
        if !spec_matches(&spec, push) {
            continue;
        }
        let why = kiln_core::url::redact(&format!(
            "queued by a {source} push to {} of {repo}{commit}",
            push.git_ref
        ));
        if let Some(job) = store.rebuild(&name, &why).await? {
            queued.push(json!({"spec": name, "job": job}));
        }
    }
    Ok(queued)
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid webhook JSON: {e}"),
        )
    })
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /api/v1/webhooks/github`.
pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let secret = secret()?;
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if !verify_github(
        secret.as_bytes(),
        &body,
        header(&headers, "x-hub-signature-256"),
    ) {
        return Err(unauthorized(
            "X-Hub-Signature-256 is missing or does not match the body",
        ));
    }
    let event = header(&headers, "x-github-event").unwrap_or("");
    if event != "push" {
        return Ok(Json(json!({"queued": [], "ignored": event})));
    }
    let push = github_push(&body_json(&body)?);
    Ok(Json(
        json!({"queued": queue(&state.store, &push, "GitHub").await?}),
    ))
}

/// `POST /api/v1/webhooks/gitlab`.
pub async fn gitlab(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let secret = secret()?;
    if !verify_gitlab(&secret, header(&headers, "x-gitlab-token")) {
        return Err(unauthorized(
            "X-Gitlab-Token is missing or is not the webhook secret",
        ));
    }
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let event = header(&headers, "x-gitlab-event").unwrap_or("");
    if event != "Push Hook" && event != "Tag Push Hook" {
        return Ok(Json(json!({"queued": [], "ignored": event})));
    }
    let push = gitlab_push(&body_json(&body)?);
    Ok(Json(
        json!({"queued": queue(&state.store, &push, "GitLab").await?}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn github_signatures() {
        // GitHub's documented example: secret "It's a Secret to Everybody",
        // payload "Hello, World!".
        let known = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_github(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some(known)
        ));
        assert!(!verify_github(
            b"It's a Secret to Everybody",
            b"Hello, World?",
            Some(known)
        ));
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign("s3cret", body);
        assert!(verify_github(b"s3cret", body, Some(&good)));
        assert!(!verify_github(b"other", body, Some(&good)));
        assert!(!verify_github(b"s3cret", b"{}", Some(&good)));
        assert!(!verify_github(b"s3cret", body, None));
        assert!(!verify_github(b"s3cret", body, Some("")));
        assert!(!verify_github(b"s3cret", body, Some("sha256=zz")));
        assert!(!verify_github(
            b"s3cret",
            body,
            Some(&good[..good.len() - 2])
        ));
        let sha1 = good.replace("sha256=", "sha1=");
        assert!(!verify_github(b"s3cret", body, Some(&sha1)));
    }

    #[test]
    fn gitlab_tokens() {
        assert!(verify_gitlab("s3cret", Some("s3cret")));
        assert!(!verify_gitlab("s3cret", Some("s3cre")));
        assert!(!verify_gitlab("s3cret", Some("")));
        assert!(!verify_gitlab("s3cret", None));
    }

    #[test]
    fn repository_urls() {
        let want = Some("git.invalid/team/app".to_string());
        for u in [
            "https://git.invalid/team/app",
            "https://git.invalid/team/app.git",
            "https://git.invalid/team/app/",
            "HTTPS://Git.Invalid/team/app.git",
            "http://git.invalid:8080/team/app",
            "https://user:token@git.invalid/team/app.git",
            "ssh://git@git.invalid/team/app.git",
            "ssh://git@git.invalid:2222/team/app",
            "git@git.invalid:team/app.git",
            "git@GIT.invalid:/team/app",
            "git://git.invalid/team/app.git",
            "https://git.invalid/team/app?x=1#y",
            "  https://git.invalid/team/app.git  ",
        ] {
            assert_eq!(normalize_repo_url(u), want, "{u}");
        }
        // The path's case is kept; other repositories differ.
        assert_ne!(
            normalize_repo_url("https://git.invalid/Team/App"),
            want,
            "path case"
        );
        for other in [
            "https://git.invalid/team/app2",
            "https://git.invalid/team/app/sub",
            "https://other.invalid/team/app",
        ] {
            assert_ne!(normalize_repo_url(other), want, "{other}");
        }
        for bad in [
            "",
            "app",
            "https://",
            "https://git.invalid",
            "https:///x",
            "a b:c",
        ] {
            assert_eq!(normalize_repo_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn refs() {
        assert!(ref_matches(Some("main"), "refs/heads/main", None));
        assert!(ref_matches(
            Some("refs/heads/main"),
            "refs/heads/main",
            None
        ));
        assert!(ref_matches(Some("v1"), "refs/tags/v1", None));
        assert!(!ref_matches(Some("main"), "refs/heads/dev", Some("main")));
        assert!(ref_matches(None, "refs/heads/main", Some("main")));
        assert!(!ref_matches(None, "refs/heads/dev", Some("main")));
        assert!(!ref_matches(None, "refs/tags/v1", Some("main")));
        assert!(ref_matches(None, "refs/heads/dev", None));
    }

    fn spec(url: &str, git_ref: Option<&str>) -> SpecInput {
        let mut git = json!({ "url": url });
        if let Some(r) = git_ref {
            git["ref"] = json!(r);
        }
        serde_json::from_value(json!({"name": "a", "git": git})).unwrap()
    }

    #[test]
    fn payloads() {
        let gh = json!({
            "ref": "refs/heads/main", "after": "0123456789abcdef0123",
            "repository": {
                "clone_url": "https://git.invalid/team/app.git",
                "html_url": "https://git.invalid/team/app",
                "ssh_url": "git@git.invalid:team/app.git",
                "default_branch": "main"
            }
        });
        let p = github_push(&gh);
        assert_eq!(p.urls.len(), 3);
        assert_eq!(p.default_branch.as_deref(), Some("main"));
        assert!(!p.deleted);
        assert!(spec_matches(&spec("git@git.invalid:team/app", None), &p));
        assert!(spec_matches(
            &spec("https://GIT.invalid/team/app/", Some("main")),
            &p
        ));
        assert!(!spec_matches(
            &spec("https://git.invalid/team/app", Some("dev")),
            &p
        ));
        assert!(!spec_matches(
            &spec("https://git.invalid/team/other", None),
            &p
        ));
        let no_git: SpecInput = serde_json::from_value(json!({"name": "a"})).unwrap();
        assert!(!spec_matches(&no_git, &p));

        let mut deleted = gh.clone();
        deleted["deleted"] = json!(true);
        assert!(github_push(&deleted).deleted);

        let gl = json!({
            "object_kind": "push", "ref": "refs/heads/dev",
            "after": "0000000000000000000000000000000000000000",
            "project": {
                "git_http_url": "http://gitlab.invalid/group/sub/app.git",
                "git_ssh_url": "git@gitlab.invalid:group/sub/app.git",
                "web_url": "http://gitlab.invalid/group/sub/app",
                "default_branch": "main"
            }
        });
        let p = gitlab_push(&gl);
        assert!(p.deleted);
        assert_eq!(p.urls.len(), 3);
        assert!(spec_matches(
            &spec("ssh://git@gitlab.invalid/group/sub/app.git", Some("dev")),
            &p
        ));
    }
}
