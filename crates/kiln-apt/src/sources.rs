//! apt sources: the `[apt] sources` of the spec, the base image's own
//! `/etc/apt/sources.list{,.d/*.list,.d/*.sources}`, or (for a bootstrap
//! from scratch) the host's, in one-line or deb822 form.

use std::path::{Path, PathBuf};

use super::control::parse_paragraphs;
use crate::AptError;
use kiln_core::error::Result;
use kiln_fs::rootfs::Rootfs;

/// One repository: URI + suite + components, and the keyring that signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) uri: String,
    pub(crate) suite: String,
    pub(crate) components: Vec<String>,
    /// `Signed-By`: a keyring path (on the host, or inside the base image when `in_image`).
    pub(crate) signed_by: Option<String>,
    pub(crate) in_image: bool,
}

/// Parse `deb [opts] URI SUITE COMP...` lines (deb-src and comments skipped).
pub(crate) fn parse_one_line(text: &str) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("deb-src") {
            continue;
        }
        let bad = |problem: &str| AptError::BadSourceLine {
            line: line.to_string(),
            problem: problem.to_string(),
        };
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            return Err(bad("expected `deb [options] URI SUITE [COMPONENT...]`").into());
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let (opts, after) = opts.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = after.trim();
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() < 2 {
            return Err(bad("missing suite").into());
        }
        out.push(Source {
            uri: words[0].trim_end_matches('/').to_string(),
            suite: words[1].to_string(),
            components: words[2..].iter().map(|s| s.to_string()).collect(),
            signed_by,
            in_image: false,
        });
    }
    Ok(out)
}

/// Parse a deb822 `.sources` file (each paragraph can name several URIs and suites).
fn parse_deb822(text: &str) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for p in parse_paragraphs(text) {
        if p.get("Enabled")
            .is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        if !p
            .get("Types")
            .unwrap_or("deb")
            .split_whitespace()
            .any(|t| t == "deb")
        {
            continue;
        }
        let uris = p
            .get("URIs")
            .ok_or(AptError::Deb822Missing { field: "URIs" })?;
        let suites = p
            .get("Suites")
            .ok_or(AptError::Deb822Missing { field: "Suites" })?;
        let comps: Vec<String> = p
            .get("Components")
            .unwrap_or("")
            .split_whitespace()
            .map(String::from)
            .collect();
        // Signed-By may hold an inline key block; only paths are supported.
        let signed_by = p
            .get("Signed-By")
            .map(str::trim)
            .filter(|s| !s.contains('\n'))
            .map(String::from);
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push(Source {
                    uri: uri.trim_end_matches('/').to_string(),
                    suite: suite.to_string(),
                    components: comps.clone(),
                    signed_by: signed_by.clone(),
                    in_image: false,
                });
            }
        }
    }
    Ok(out)
}

/// The sources configured inside the base image.
pub(crate) fn from_rootfs(fs: &Rootfs) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    if let Some(b) = fs.read("/etc/apt/sources.list") {
        out.extend(parse_one_line(&String::from_utf8_lossy(b))?);
    }
    for name in fs.list("/etc/apt/sources.list.d") {
        let path = format!("/etc/apt/sources.list.d/{name}");
        let Some(b) = fs.read(&path) else { continue };
        let text = String::from_utf8_lossy(b);
        if name.ends_with(".list") {
            out.extend(parse_one_line(&text)?);
        } else if name.ends_with(".sources") {
            out.extend(parse_deb822(&text)?);
        }
    }
    for s in &mut out {
        s.in_image = true;
    }
    Ok(out)
}

/// The host's sources (`/etc/apt`), used to find a mirror for a bootstrap from scratch.
pub(crate) fn from_host(root: &Path) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    let list = root.join("etc/apt/sources.list");
    if let Ok(t) = std::fs::read_to_string(&list) {
        out.extend(parse_one_line(&t)?);
    }
    let dir = root.join("etc/apt/sources.list.d");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.sort();
    for p in names {
        let Ok(t) = std::fs::read_to_string(&p) else {
            continue;
        };
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_one_line(&t)?),
            Some("sources") => out.extend(parse_deb822(&t)?),
            _ => {}
        }
    }
    Ok(out)
}

/// A bootstrap's source as the image's own apt will read it: the URI
/// without credentials, and the keyring kiln checked it with.
#[derive(Clone, Debug)]
pub(crate) struct ImageSource {
    pub(crate) uri: String,
    pub(crate) suite: String,
    pub(crate) components: Vec<String>,
    /// The keyring's path as the source, the spec or the default named it.
    pub(crate) keyring: String,
    /// Its bytes, copied into the image when no package there ships it.
    pub(crate) keyring_bytes: std::sync::Arc<Vec<u8>>,
}

impl ImageSource {
    pub(crate) fn new(src: &Source, keyring: String, bytes: Vec<u8>) -> ImageSource {
        ImageSource {
            uri: kiln_core::url::strip_credentials(&src.uri),
            suite: src.suite.clone(),
            components: src.components.clone(),
            keyring,
            keyring_bytes: std::sync::Arc::new(bytes),
        }
    }
}

/// deb822 `debian.sources` text: one paragraph per URI, components and
/// keyring (in the order first seen), its suites together, as Debian's
/// own images write it. `signed_by(i)` is the keyring path inside the
/// image for source `i`.
pub(crate) fn deb822(sources: &[ImageSource], signed_by: &dyn Fn(usize) -> String) -> String {
    let mut paragraphs: Vec<(String, Vec<String>, Vec<String>, String)> = Vec::new();
    for (i, s) in sources.iter().enumerate() {
        let key = signed_by(i);
        match paragraphs
            .iter_mut()
            .find(|(u, _, c, k)| *u == s.uri && *c == s.components && *k == key)
        {
            Some((_, suites, _, _)) => {
                if !suites.contains(&s.suite) {
                    suites.push(s.suite.clone());
                }
            }
            None => paragraphs.push((
                s.uri.clone(),
                vec![s.suite.clone()],
                s.components.clone(),
                key,
            )),
        }
    }
    let mut out = String::new();
    for (uri, suites, comps, key) in paragraphs {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!(
            "Types: deb\nURIs: {uri}\nSuites: {}\nComponents: {}\nSigned-By: {key}\n",
            suites.join(" "),
            comps.join(" ")
        ));
    }
    out
}

/// `sources` with each suite's component named once (by its first entry):
/// an image that lists its mirror in `sources.list` and again in a
/// `.sources` file would otherwise fetch and read the same indexes twice
/// (a 12 MB `Packages.gz` for Debian's main), where apt reads each index
/// target once. An entry left with no component goes; one that names
/// none (it takes the Release's list) stays as it is.
pub(crate) fn distinct(sources: Vec<Source>) -> Vec<Source> {
    let mut seen = std::collections::HashSet::new();
    sources
        .into_iter()
        .filter_map(|mut s| {
            if s.components.is_empty() {
                return Some(s);
            }
            let (uri, suite) = (s.uri.clone(), s.suite.clone());
            s.components
                .retain(|c| seen.insert((uri.clone(), suite.clone(), c.clone())));
            (!s.components.is_empty()).then_some(s)
        })
        .collect()
}

/// Does the image keep its apt data here? (The loader keeps these files' contents.)
pub(crate) fn keep_path(path: &str) -> bool {
    path == "/etc/apt/sources.list"
        || path.starts_with("/etc/apt/sources.list.d/")
        || path.starts_with("/etc/apt/trusted.gpg")
        || path.starts_with("/usr/share/keyrings/")
        || path.starts_with("/etc/apt/keyrings/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_listed_twice_is_read_once() {
        let mut all = parse_one_line(
            "deb http://m.example/debian bookworm main contrib\ndeb http://m.example/debian bookworm-updates main\n",
        )
        .unwrap();
        all.extend(
            parse_deb822("Types: deb\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main non-free\nSigned-By: /k.gpg\n\nTypes: deb\nURIs: http://other.example/debian\nSuites: bookworm\nComponents: main\n").unwrap(),
        );
        all.push(Source {
            components: vec![],
            ..all[0].clone()
        });
        let d = distinct(all.clone());
        let named: Vec<(&str, &str, Vec<&str>)> = d
            .iter()
            .map(|s| {
                (
                    s.uri.as_str(),
                    s.suite.as_str(),
                    s.components.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                (
                    "http://m.example/debian",
                    "bookworm",
                    vec!["main", "contrib"]
                ),
                ("http://m.example/debian", "bookworm-updates", vec!["main"]),
                // What the first entries did not name, with this entry's key.
                ("http://m.example/debian", "bookworm", vec!["non-free"]),
                (
                    "http://m.example/debian",
                    "bookworm-updates",
                    vec!["non-free"]
                ),
                ("http://other.example/debian", "bookworm", vec!["main"]),
                // No components: the Release's, kept as it is.
                ("http://m.example/debian", "bookworm", vec![]),
            ]
        );
        assert_eq!(d[2].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(d[0].signed_by, None);
        // Nothing twice: as it was.
        let once = distinct(d.clone());
        assert_eq!(once, d);
    }

    #[test]
    fn one_line_and_deb822() {
        let s = parse_one_line("# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main contrib\ndeb-src http://x y\n").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://m.example/debian");
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(s[0].components, vec!["main", "contrib"]);
        let s = parse_deb822("Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].suite, "bookworm-updates");
    }

    #[test]
    fn image_sources_are_deb822_without_credentials() {
        let src = |uri: &str, suite: &str| Source {
            uri: uri.into(),
            suite: suite.into(),
            components: vec!["main".into()],
            signed_by: None,
            in_image: false,
        };
        let all = [
            ImageSource::new(
                &src("https://u:s3cret@m.example.invalid/debian", "bookworm"),
                "/k.gpg".into(),
                vec![1],
            ),
            ImageSource::new(
                &src(
                    "https://u:s3cret@m.example.invalid/debian",
                    "bookworm-updates",
                ),
                "/k.gpg".into(),
                vec![1],
            ),
            ImageSource::new(
                &src(
                    "http://s.example.invalid/debian-security",
                    "bookworm-security",
                ),
                "/k.gpg".into(),
                vec![1],
            ),
        ];
        let text = deb822(&all, &|_| "/usr/share/keyrings/k.gpg".into());
        assert_eq!(
            text,
            "Types: deb\nURIs: https://m.example.invalid/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
             Types: deb\nURIs: http://s.example.invalid/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n"
        );
        // apt (and kiln) read it back as the same sources.
        let back = parse_deb822(&text).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].suite, "bookworm-updates");
        assert!(!text.contains("s3cret"));
    }

    #[test]
    fn bad_sources_name_the_line_or_the_field() {
        let e = parse_one_line("nonsense").unwrap_err();
        assert!(
            matches!(e.downcast_ref::<AptError>(), Some(AptError::BadSourceLine { line, .. }) if line == "nonsense"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "apt source line `nonsense`: expected `deb [options] URI SUITE [COMPONENT...]`"
        );
        for (text, problem) in [
            ("deb [signed-by=/k http://x bookworm", "unclosed `[`"),
            ("deb http://x", "missing suite"),
        ] {
            let e = parse_one_line(text).unwrap_err();
            assert!(
                matches!(e.downcast_ref::<AptError>(), Some(AptError::BadSourceLine { problem: p, .. }) if p == problem),
                "{e:?}"
            );
        }
        let e = parse_deb822("Types: deb\nSuites: bookworm\n").unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<AptError>(),
                Some(AptError::Deb822Missing { field: "URIs" })
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "deb822 source without URIs");
    }
}

#[cfg(test)]
mod mutation_tests {
    /// One-line sources never panic on mangled input.
    #[test]
    fn one_line_sources_survive_mutants() {
        let seeds: &[&[u8]] = &[
            b"deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.invalid/debian bookworm main contrib\ndeb-src http://x/ y/\n",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let _ = super::parse_one_line(&String::from_utf8_lossy(&m));
        }
    }
}
