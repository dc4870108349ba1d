//! URLs that may carry credentials (`user:password@`, `?token=…`): one
//! [`redact`] for every message, report and cache file, and the pair
//! [`strip_credentials`] / [`with_credentials`] so that kiln.lock records
//! artifact URLs without them and a locked build puts them back from the
//! spec's own sources.

/// A URL fit for messages: `user:password@` (e.g. from a `${TOKEN}` in a
/// requirements file or an index URL with credentials) becomes `***@`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            out = format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    // Query values that carry a secret (`?token=…`, signed URLs' `Signature=…`).
    let Some((base, query)) = out.split_once('?') else {
        return out;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let secret_key = |k: &str| {
        let k = k.to_ascii_lowercase();
        [
            "token",
            "secret",
            "password",
            "passwd",
            "signature",
            "sig",
            "key",
            "auth",
            "credential",
        ]
        .iter()
        .any(|s| k.contains(s))
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, v)) if secret_key(k) && !v.is_empty() => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    let mut r = format!("{base}?{}", params.join("&"));
    if let Some(f) = fragment {
        r.push('#');
        r.push_str(f);
    }
    r
}

/// The URL without its `user:password@` (nothing else changes), for files
/// that must stay valid URLs, such as kiln.lock.
pub fn strip_credentials(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_string(),
    }
}

/// `url` with the credentials of the first of `sources` on the same scheme,
/// host and port (when `url` has none of its own).
pub fn with_credentials(url: &str, sources: &[String]) -> String {
    if split_userinfo(url).is_some() {
        return url.to_string();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host = |r: &str| r[..r.find(['/', '?', '#']).unwrap_or(r.len())].to_string();
    for s in sources {
        if let Some((s_scheme, user, s_rest)) = split_userinfo(s) {
            if s_scheme == scheme && host(s_rest) == host(rest) {
                return format!("{scheme}://{user}@{rest}");
            }
        }
    }
    url.to_string()
}

/// `(scheme, userinfo, rest after '@')` of a URL with credentials.
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_off_and_back_on() {
        let with = "https://u:p%40ss@idx.invalid:8443/simple/x/";
        assert_eq!(redact(with), "https://***@idx.invalid:8443/simple/x/");
        let bare = strip_credentials("https://u:p@files.invalid:8443/a/b.whl");
        assert_eq!(bare, "https://files.invalid:8443/a/b.whl");
        let sources = vec![
            "https://other.invalid/simple".to_string(),
            "https://u:p@files.invalid:8443/simple".to_string(),
        ];
        assert_eq!(
            with_credentials(&bare, &sources),
            "https://u:p@files.invalid:8443/a/b.whl"
        );
        assert_eq!(
            with_credentials("https://files.invalid/a.whl", &sources),
            "https://files.invalid/a.whl"
        );
        assert_eq!(strip_credentials("file:///x@y"), "file:///x@y");
    }
}
