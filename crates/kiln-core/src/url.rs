//! URLs that may carry credentials (`user:password@`, a conda channel's
//! `/t/<token>/` path segment, `?token=…`): one [`redact`] for every message,
//! report and cache file, and the pair [`strip_credentials`] /
//! [`with_credentials`] so that kiln.lock records artifact URLs without them
//! and a locked build puts them back from the spec's own sources.
//!
//! A conda token is the segment after the first `t` segment of an `http(s)`
//! URL's path (`https://host/t/<TOKEN>/channel/linux-64/repodata.json`, or
//! after a path prefix: `https://host/conda/t/<TOKEN>/channel/`). The path
//! alone cannot tell a token from a channel named `t`; the segment after a
//! `t` is not taken for a token when it is empty (`https://host/t/`), when it
//! is a conda subdir (`https://host/t/noarch/…`, a channel named `t`) or when
//! the `t` is a Debian pool directory (`…/pool/main/t/tzdata/…`).

use std::ops::Range;

/// What a secret becomes in messages.
const MASK: &str = "***";

/// Text fit for messages: in every URL in `text`, `user:password@` (e.g.
/// from a `${TOKEN}` in a requirements file or an index URL with
/// credentials) becomes `***@`, a conda token `/t/<token>/` becomes
/// `/t/***/` and a secret-looking query value (`?token=…`, a signed URL's
/// `Signature=…`) becomes `***`. Text without `://` is taken as one URL
/// (only its query can be redacted).
pub fn redact(text: &str) -> String {
    if !text.contains("://") {
        return redact_url(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(i) = text[pos..].find("://") {
        let sep = pos + i;
        // The scheme: ASCII letters, digits, `+`, `-`, `.`, starting with a letter.
        let mut start = sep;
        while start > pos && is_scheme_byte(bytes[start - 1]) {
            start -= 1;
        }
        while start < sep && !bytes[start].is_ascii_alphabetic() {
            start += 1;
        }
        let body = sep + 3;
        if start == sep {
            out.push_str(&text[pos..body]);
            pos = body;
            continue;
        }
        // The URL ends at whitespace or a quote, less trailing punctuation
        // (`fetching https://host/x: not found`).
        let mut end = text[body..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(text.len(), |j| body + j);
        while end > body
            && (matches!(bytes[end - 1], b'.' | b',' | b':' | b';' | b'!')
                || (bytes[end - 1] == b')' && !text[start..end].contains('(')))
        {
            end -= 1;
        }
        out.push_str(&text[pos..start]);
        out.push_str(&redact_url(&text[start..end]));
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// `%XX` escapes decoded (a `file://` URL's path); bytes that are not
/// UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_scheme_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

/// [`redact`] for one URL.
fn redact_url(url: &str) -> String {
    let mut out = match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{MASK}@{rest}"),
        None => url.to_string(),
    };
    if let Some(t) = token_span(&out) {
        out.replace_range(t.token, MASK);
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
            Some((k, v)) if secret_key(k) && !v.is_empty() => format!("{k}={MASK}"),
            // A URL as a query value (`?next=https://u:p@…`).
            Some((k, v)) if v.contains("://") => format!("{k}={}", redact(v)),
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

/// The URL without its `user:password@` and without a conda token's
/// `/t/<token>` pair (nothing else changes), for files that must stay valid
/// URLs, such as kiln.lock: `https://u:p@host/t/TOKEN/chan/x.conda` →
/// `https://host/chan/x.conda`.
pub fn strip_credentials(url: &str) -> String {
    let mut bare = without_userinfo(url);
    if let Some(t) = token_span(&bare) {
        bare.replace_range(t.pair, "");
    }
    bare
}

/// `url` with the credentials [`strip_credentials`] takes off, put back
/// from the first of `sources` that has them:
///
/// - `user:password@` from a source on the same scheme, host and port (when
///   `url` has none of its own);
/// - a conda token `/t/<token>` from a source whose URL without it is a
///   prefix of `url` (a channel and its packages), at the same place (when
///   `url` cannot be read as carrying a token there already).
///
/// `with_credentials(&strip_credentials(u), &[u])` is `u`.
pub fn with_credentials(url: &str, sources: &[String]) -> String {
    let own_userinfo = split_userinfo(url).map(|(_, u, _)| u.to_string());
    let mut bare = without_userinfo(url);
    for s in sources {
        let s = without_userinfo(s);
        let Some(t) = token_span(&s) else {
            continue;
        };
        if has_prefix(&bare, &s[..t.pair.end]) {
            break; // Already has this token.
        }
        let mut public = s.clone();
        public.replace_range(t.pair.clone(), "");
        public.truncate(public.find(['?', '#']).unwrap_or(public.len()));
        if !has_prefix(&bare, &public) {
            continue;
        }
        // A token of its own where the source has one (an older lock):
        // leave it.
        if let Some(own) = token_span(&bare) {
            if own.pair.start == t.pair.start {
                let mut without = bare.clone();
                without.replace_range(own.pair, "");
                if has_prefix(&without, &public) {
                    break;
                }
            }
        }
        bare.insert_str(t.pair.start, &s[t.pair]);
        break;
    }
    let Some((scheme, rest)) = bare.split_once("://") else {
        return bare;
    };
    if let Some(u) = own_userinfo {
        return format!("{scheme}://{u}@{rest}");
    }
    let host = |r: &str| r[..r.find(['/', '?', '#']).unwrap_or(r.len())].to_string();
    for s in sources {
        if let Some((s_scheme, user, s_rest)) = split_userinfo(s) {
            if s_scheme == scheme && host(s_rest) == host(rest) {
                return format!("{scheme}://{user}@{rest}");
            }
        }
    }
    bare
}

/// `(scheme, userinfo, rest after '@')` of a URL with credentials.
fn split_userinfo(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..host_end].rfind('@')?;
    Some((scheme, &rest[..at], &rest[at + 1..]))
}

fn without_userinfo(url: &str) -> String {
    match split_userinfo(url) {
        Some((scheme, _, rest)) => format!("{scheme}://{rest}"),
        None => url.to_string(),
    }
}

/// Does `s` start with `prefix` followed by a path boundary?
fn has_prefix(s: &str, prefix: &str) -> bool {
    s.starts_with(prefix)
        && (prefix.ends_with('/')
            || s.len() == prefix.len()
            || matches!(s.as_bytes()[prefix.len()], b'/' | b'?' | b'#'))
}

/// Where a conda token sits in a URL (byte ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TokenSpan {
    /// `/t/<token>`: what [`strip_credentials`] removes.
    pair: Range<usize>,
    /// `<token>`: what [`redact`] masks.
    token: Range<usize>,
}

/// The conda token of an `http(s)` URL, if it has one (see the module docs).
fn token_span(url: &str) -> Option<TokenSpan> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("https") && !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path_end = rest[host_end..]
        .find(['?', '#'])
        .map_or(rest.len(), |j| host_end + j);
    let path_start = scheme.len() + 3 + host_end;
    // (offset in `url`, segment); the first is the empty one before the leading '/'.
    let mut segments = Vec::new();
    let mut offset = path_start;
    for s in rest[host_end..path_end].split('/') {
        segments.push((offset, s));
        offset += s.len() + 1;
    }
    (1..segments.len().saturating_sub(1)).find_map(|i| {
        let (t_at, t) = segments[i];
        let (token_at, token) = segments[i + 1];
        let debian_pool = i >= 2 && segments[i - 2].1 == "pool";
        (t == "t" && !token.is_empty() && !is_conda_subdir(token) && !debian_pool).then(|| {
            TokenSpan {
                pair: t_at - 1..token_at + token.len(),
                token: token_at..token_at + token.len(),
            }
        })
    })
}

/// `noarch`, `linux-64`, `osx-arm64`, …: a directory of a channel named `t`,
/// not a token.
fn is_conda_subdir(segment: &str) -> bool {
    segment == "noarch"
        || segment.split_once('-').is_some_and(|(os, arch)| {
            !arch.is_empty()
                && matches!(
                    os,
                    "linux"
                        | "osx"
                        | "win"
                        | "freebsd"
                        | "ios"
                        | "iossimulator"
                        | "android"
                        | "emscripten"
                        | "wasi"
                        | "zos"
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "SECRETTOKEN";

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
        // A URL with credentials of its own keeps them.
        assert_eq!(
            with_credentials("https://me:x@files.invalid:8443/a.whl", &sources),
            "https://me:x@files.invalid:8443/a.whl"
        );
        assert_eq!(strip_credentials("file:///x@y"), "file:///x@y");
    }

    #[test]
    fn conda_tokens_are_masked_wherever_they_sit() {
        for (url, shown) in [
            // Right after the host.
            (
                "https://h.invalid/t/SECRETTOKEN/chan/linux-64/repodata.json",
                "https://h.invalid/t/***/chan/linux-64/repodata.json",
            ),
            // After a channel alias's own path.
            (
                "https://h.invalid/mirror/conda/t/SECRETTOKEN/chan/noarch/x-1-0.conda",
                "https://h.invalid/mirror/conda/t/***/chan/noarch/x-1-0.conda",
            ),
            // Last segment, with and without a trailing slash.
            ("https://h.invalid/t/SECRETTOKEN", "https://h.invalid/t/***"),
            (
                "https://h.invalid/t/SECRETTOKEN/",
                "https://h.invalid/t/***/",
            ),
            // Port, query and fragment.
            (
                "http://h.invalid:8080/t/SECRETTOKEN?x=1#frag",
                "http://h.invalid:8080/t/***?x=1#frag",
            ),
            // With a password too.
            (
                "https://u:pw@h.invalid/t/SECRETTOKEN/chan/",
                "https://***@h.invalid/t/***/chan/",
            ),
            // Percent-encoded and JWT-shaped tokens are one segment each.
            (
                "https://h.invalid/t/SECRET%2FTOKEN%3D%3D/chan/",
                "https://h.invalid/t/***/chan/",
            ),
            (
                "https://h.invalid/t/eyJh.SECRETTOKEN.c2ln/chan/",
                "https://h.invalid/t/***/chan/",
            ),
            // A channel named `t` behind a token: only the token goes.
            (
                "https://h.invalid/t/SECRETTOKEN/t/linux-64/repodata.json",
                "https://h.invalid/t/***/t/linux-64/repodata.json",
            ),
            // Only the first `t` pair is a token.
            (
                "https://h.invalid/t/SECRETTOKEN/t/label/repodata.json",
                "https://h.invalid/t/***/t/label/repodata.json",
            ),
            // Upper-case scheme.
            (
                "HTTPS://h.invalid/t/SECRETTOKEN/c",
                "HTTPS://h.invalid/t/***/c",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
            assert!(!redact(url).contains(SECRET), "{url}");
            assert!(!strip_credentials(url).contains(SECRET), "{url}");
        }
    }

    #[test]
    fn what_is_not_a_token_stays() {
        for url in [
            // `/t/` as the last segment, or nothing after it.
            "https://h.invalid/t/",
            "https://h.invalid/t",
            "https://h.invalid/chan/t/",
            "https://h.invalid/t//x",
            // A channel literally named `t`.
            "https://h.invalid/t/linux-64/repodata.json",
            "https://h.invalid/t/noarch/x-1-0.tar.bz2",
            "https://h.invalid/conda/t/osx-arm64/",
            // A segment that only contains a `t`.
            "https://h.invalid/tt/x/",
            "https://h.invalid/a/t.json",
            // A Debian pool directory.
            "https://h.invalid/debian/pool/main/t/tzdata/tzdata_2024a-1_all.deb",
            // Not http(s): a local directory named `t`.
            "file:///home/t/channel/linux-64/repodata.json",
            // `/t/` in the query or fragment is not the path.
            "https://h.invalid/x?next=/t/abc/#/t/def/",
            // Not URLs.
            "numpy >=1.26,<2",
            "/t/abc/d",
        ] {
            assert_eq!(redact(url), url);
            assert_eq!(strip_credentials(url), url);
            assert_eq!(with_credentials(url, &[]), url);
        }
    }

    #[test]
    fn every_url_in_a_message_is_redacted() {
        let m = "[conda] fetching https://h.invalid/t/SECRETTOKEN/chan/noarch/repodata.json: \
                 not found (HTTP 404); tried `https://u:pw@m.invalid/t/SECRETTOKEN` and \
                 (https://m.invalid/p?access_token=SECRETTOKEN).";
        assert_eq!(
            redact(m),
            "[conda] fetching https://h.invalid/t/***/chan/noarch/repodata.json: \
             not found (HTTP 404); tried `https://***@m.invalid/t/***` and \
             (https://m.invalid/p?access_token=***)."
        );
        // Multibyte text around and scheme-like text without a scheme.
        assert_eq!(
            redact("é→https://h.invalid/t/SECRETTOKEN/c ü ://x"),
            "é→https://h.invalid/t/***/c ü ://x"
        );
        // A URL in a query value.
        assert_eq!(
            redact("https://h.invalid/login?next=https://u:pw@i.invalid/t/SECRETTOKEN/"),
            "https://h.invalid/login?next=https://***@i.invalid/t/***/"
        );
        // Text without a scheme keeps the old query redaction.
        assert_eq!(redact("x.whl?sig=abc#f"), "x.whl?sig=***#f");
    }

    #[test]
    fn tokens_come_off_and_back_on() {
        for url in [
            "https://h.invalid/t/SECRETTOKEN/chan/linux-64/x-1-0.conda",
            "https://h.invalid/mirror/t/SECRETTOKEN/chan/noarch/x-1-0.tar.bz2",
            "https://h.invalid/t/SECRETTOKEN",
            "https://h.invalid/t/SECRETTOKEN/",
            "https://h.invalid/t/SECRETTOKEN?x=1",
            "https://u:pw@h.invalid:8443/t/SECRET%2FTOKEN/chan/",
            "https://h.invalid/t/SECRETTOKEN/t/linux-64/repodata.json",
            "https://h.invalid/t/SECRETTOKEN/t/label/dev/noarch/x.conda",
        ] {
            let bare = strip_credentials(url);
            assert!(!bare.contains(SECRET) && !bare.contains("pw"), "{bare}");
            assert_eq!(with_credentials(&bare, &[url.to_string()]), url);
        }
        assert_eq!(
            strip_credentials("https://h.invalid/t/SECRETTOKEN/chan/linux-64/x.conda"),
            "https://h.invalid/chan/linux-64/x.conda"
        );
        assert_eq!(
            strip_credentials("https://u:p@h.invalid/pre/t/SECRETTOKEN/chan/"),
            "https://h.invalid/pre/chan/"
        );
        assert_eq!(
            strip_credentials("https://h.invalid/t/SECRETTOKEN"),
            "https://h.invalid"
        );
        // A channel named `t` behind a token: stripping twice changes nothing more.
        let once = strip_credentials("https://h.invalid/t/SECRETTOKEN/t/linux-64/repodata.json");
        assert_eq!(once, "https://h.invalid/t/linux-64/repodata.json");
        assert_eq!(strip_credentials(&once), once);
    }

    #[test]
    fn tokens_come_back_from_the_channel_they_belong_to() {
        let sources = vec![
            "https://h.invalid/t/AAA/one/".to_string(),
            "https://u:pw@k.invalid/t/BBB/two".to_string(),
            "https://alias.invalid/conda/t/CCC/".to_string(),
        ];
        let back = |u: &str| with_credentials(u, &sources);
        // A package under a channel gets that channel's token.
        assert_eq!(
            back("https://h.invalid/one/linux-64/x.conda"),
            "https://h.invalid/t/AAA/one/linux-64/x.conda"
        );
        assert_eq!(
            back("https://k.invalid/two/noarch/y.conda"),
            "https://u:pw@k.invalid/t/BBB/two/noarch/y.conda"
        );
        // Under a token-carrying alias: every channel below it.
        assert_eq!(
            back("https://alias.invalid/conda/forge/noarch/z.conda"),
            "https://alias.invalid/conda/t/CCC/forge/noarch/z.conda"
        );
        // Elsewhere: no token (path boundary, other path, other host, scheme, port).
        for u in [
            "https://h.invalid/oneself/linux-64/x.conda",
            "https://h.invalid/three/linux-64/x.conda",
            "https://g.invalid/one/linux-64/x.conda",
            "http://h.invalid/one/linux-64/x.conda",
            "https://h.invalid:8443/one/linux-64/x.conda",
            "https://alias.invalid/other/forge/z.conda",
        ] {
            assert_eq!(back(u), u);
        }
        // A URL that has the token, or a token of its own, keeps it.
        for u in [
            "https://h.invalid/t/AAA/one/linux-64/x.conda",
            "https://alias.invalid/conda/t/OLD/forge/noarch/z.conda",
        ] {
            assert_eq!(back(u), u);
        }
        // Userinfo comes from any source on the same host, the token only
        // from one whose channel the URL is under.
        assert_eq!(
            back("https://k.invalid/three/x.conda"),
            "https://u:pw@k.invalid/three/x.conda"
        );
    }
}
