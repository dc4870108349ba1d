//! Image references, parsed without a regex.
//!
//! oci-spec parses a reference with one large regex whose tag part is a
//! Unicode word class repeated 128 times: compiling it takes ~25 ms, a
//! sixth of a no-op rebuild + push. The references kiln meets name their
//! registry (`host[:port]/repo[:tag][@digest]`) or are Docker Hub short
//! names (`team/app:tag`, an `[image] name` written to a layout), and
//! those shapes are checked here by hand against the same grammar;
//! anything else (Docker Hub's legacy alias, a Unicode tag, a malformed
//! string) goes to oci-spec, whose answer or error stands. The unit tests
//! compare the two on every shape.

/// The registry a reference with no domain names (Docker Hub), as
/// oci-spec writes it.
pub const DOCKER_HUB: &str = "docker.io";

use oci_spec::distribution::{ParseError, Reference};

/// `s` as oci-spec's `Reference::from_str` reads it.
pub fn parse(s: &str) -> Result<Reference, ParseError> {
    fast(s).map_or_else(|| s.parse(), Ok)
}

/// The common shape, or `None` for oci-spec to decide.
fn fast(s: &str) -> Option<Reference> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    // A first component that is no domain is Docker Hub's repository
    // (under `library/` when it is the only one).
    // (A domain written out is checked, and Docker Hub's left to oci-spec.)
    let library;
    let (domain, rest) = match name_tag.split_once('/') {
        Some((d, _)) if !(d.contains('.') || d.contains(':') || d == "localhost") => {
            (DOCKER_HUB, name_tag)
        }
        Some((d, rest)) if !is_hub(d) && is_domain(d) => (d, rest),
        Some(_) => return None,
        None => {
            library = format!("library/{name_tag}");
            (DOCKER_HUB, library.as_str())
        }
    };
    // A tag follows the last `:` after the last `/`.
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (rest, None),
    };
    if repository.len() > 255 || !repository.split('/').all(is_path_component) {
        return None;
    }
    if !tag.is_none_or(is_tag) || !digest.is_none_or(is_digest) {
        return None;
    }
    let (registry, repository) = (domain.to_string(), repository.to_string());
    Some(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// Docker Hub's domain or its legacy alias, which oci-spec normalizes
/// (and this module leaves to it). Told by oci-spec itself, which maps the
/// one to the other when resolving a registry.
fn is_hub(domain: &str) -> bool {
    let resolve = |d: &str| {
        Reference::with_tag(d.into(), "r".into(), "t".into())
            .resolve_registry()
            .to_string()
    };
    resolve(domain) != domain
        || domain
            .strip_prefix("index.")
            .is_some_and(|short| resolve(short) == domain)
}

/// `label(.label)*(:port)?`, a label alphanumeric with inner dashes.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any run of dashes.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run between two alphanumerics.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (ASCII; a Unicode tag goes to oci-spec).
fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !t.is_empty()
        && t.len() <= 128
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `sha256:` and 64 hex digits, or sha384/sha512 with 96/128.
fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shape: whenever the fast path answers, it answers as oci-spec.
    #[test]
    fn agrees_with_oci_spec() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let cases = [
            "registry.example.com/app".to_string(),
            "registry.example.com/team/app:1.2.3".into(),
            "127.0.0.1:5000/bench/app:t".into(),
            "localhost/app".into(),
            "localhost:5000/a/b/c:latest".into(),
            format!("registry.example.com/app@{d}"),
            format!("registry.example.com/app:v1@{d}"),
            format!("registry.example.com:443/app:v1@{d}"),
            "registry.example.com/a_b/c__d/e-f/g---h/i.j:T_a.g-1".into(),
            "busybox".into(),
            "team/app:1".into(),
            "bench/pip-scale".into(),
            format!("a/b/c:t@{d}"),
            "test.com:5000".into(),
            "localhost:5000".into(),
            // Left to oci-spec (Docker Hub written out, odd shapes, errors).
            "docker.io/app".into(),
            "index.docker.io/team/app".into(),
            "Team/app".into(),
            "team/app:".into(),
            format!("{}/b", "a".repeat(254)),
            "registry.example.com/App".into(),
            "registry.example.com/app:".into(),
            "registry.example.com/app:-x".into(),
            "registry.example.com/-app".into(),
            "registry.example.com/a..b".into(),
            "registry.example.com/a/".into(),
            "-bad.example.com/app".into(),
            "registry.example.com:x/app".into(),
            "registry.example.com/app@sha256:abc".into(),
            format!("registry.example.com/app@md5:{}", "a".repeat(32)),
            format!("registry.example.com/app:{}", "t".repeat(129)),
            format!("registry.example.com/{}", "a".repeat(256)),
            "registry.example.com/app:tåg".into(),
            "".into(),
        ];
        for c in &cases {
            let ours = parse(c);
            let theirs: Result<Reference, ParseError> = c.parse();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.whole(), b.whole(), "{c}");
                    assert_eq!(
                        (a.registry(), a.repository(), a.tag(), a.digest()),
                        (b.registry(), b.repository(), b.tag(), b.digest()),
                        "{c}"
                    );
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{c}"),
                _ => panic!("{c}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
        // The common shapes never reach the regex.
        for c in &cases[..15] {
            assert!(fast(c).is_some(), "{c}");
        }
    }
}
