//! `kiln why IMAGE PKG`: the shortest chains of DEPENDS_ON relationships
//! (from the image's SBOM) that lead from what was asked for — or, when
//! nothing asked for it, from a package nothing depends on (the base's
//! own roots) — to PKG.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use serde::Serialize;

use crate::packages::ImageContents;

/// At most this many chains are listed.
const MAX_CHAINS: usize = 10;

#[derive(Debug, Serialize)]
pub struct Link {
    pub ecosystem: String,
    pub name: String,
    pub version: String,
    /// Asked for by the spec (or by whoever installed it).
    pub requested: bool,
    /// In the base image already.
    pub from_base: bool,
}

#[derive(Debug, Serialize)]
pub struct WhyReport {
    pub image: String,
    pub package: String,
    pub packages_from: String,
    /// Each chain starts at a requested package (or a root of the base)
    /// and ends at the package asked about.
    pub chains: Vec<Vec<Link>>,
    /// True when no requested package leads to it.
    pub from_roots: bool,
}

/// Errors of `kiln why` (bad input: the package is not in the image).
#[derive(Debug, thiserror::Error)]
pub enum WhyError {
    #[error("{image}: no package `{package}` in the image (packages read from {from}){}", close(.similar))]
    NotInImage {
        image: String,
        package: String,
        from: String,
        similar: Vec<String>,
    },
}

fn close(similar: &[String]) -> String {
    if similar.is_empty() {
        String::new()
    } else {
        format!("; similar names: {}", similar.join(", "))
    }
}

impl kiln_core::error::Classify for WhyError {
    fn kind(&self) -> kiln_core::ErrorKind {
        kiln_core::ErrorKind::Input
    }
}

impl From<WhyError> for kiln_core::Error {
    fn from(e: WhyError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// `package` is a name (`libblas3`, `numpy`), optionally `ECOSYSTEM:NAME`.
pub fn why(c: &ImageContents, package: &str) -> Result<WhyReport, WhyError> {
    let (eco, name) = match package.split_once(':') {
        Some((e, n)) if matches!(e, "deb" | "pypi" | "conda") => (Some(e), n),
        _ => (None, package),
    };
    let norm = kiln_fs::probe::normalize(name);
    let targets: BTreeSet<&String> = c
        .packages
        .iter()
        .filter(|(_, p)| eco.is_none_or(|e| p.ecosystem == e))
        .filter(|(_, p)| {
            p.name == name || (p.ecosystem == "pypi" && kiln_fs::probe::normalize(&p.name) == norm)
        })
        .map(|(id, _)| id)
        .collect();
    if targets.is_empty() {
        let mut similar: Vec<String> = c
            .packages
            .values()
            .filter(|p| p.name.contains(name) || name.contains(p.name.as_str()))
            .map(|p| p.name.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(8)
            .collect();
        similar.sort();
        return Err(WhyError::NotInImage {
            image: c.reference.clone(),
            package: package.to_string(),
            from: c.packages_from.clone(),
            similar,
        });
    }
    // Breadth-first from the targets along reversed edges: each package's
    // distance to the nearest target.
    let mut dependents: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (a, bs) in &c.depends {
        for b in bs {
            dependents.entry(b).or_default().push(a);
        }
    }
    let mut dist: BTreeMap<&String, usize> = targets.iter().map(|t| (*t, 0)).collect();
    let mut queue: VecDeque<&String> = targets.iter().copied().collect();
    while let Some(n) = queue.pop_front() {
        let d = dist[n];
        for &up in dependents.get(n).into_iter().flatten() {
            if !dist.contains_key(up) {
                dist.insert(up, d + 1);
                queue.push_back(up);
            }
        }
    }
    // Start from the nearest requested packages; failing that, from the
    // nearest packages nothing depends on.
    let requested: Vec<&String> = dist
        .keys()
        .copied()
        .filter(|n| c.requested.contains(*n))
        .collect();
    let from_roots = requested.is_empty();
    let starts = if from_roots {
        nearest(
            &dist,
            dist.keys()
                .copied()
                .filter(|n| !dependents.contains_key(*n))
                .collect(),
        )
    } else {
        nearest(&dist, requested)
    };
    let mut chains: Vec<Vec<&String>> = Vec::new();
    for s in starts {
        walk(c, &dist, vec![s], &mut chains);
        if chains.len() >= MAX_CHAINS {
            break;
        }
    }
    chains.truncate(MAX_CHAINS);
    let link = |id: &String| {
        let p = &c.packages[id];
        Link {
            ecosystem: p.ecosystem.clone(),
            name: p.name.clone(),
            version: p.version.clone(),
            requested: c.requested.contains(id),
            from_base: c.from_base.contains(id),
        }
    };
    Ok(WhyReport {
        image: c.reference.clone(),
        package: package.to_string(),
        packages_from: c.packages_from.clone(),
        chains: chains
            .into_iter()
            .map(|ch| ch.into_iter().map(link).collect())
            .collect(),
        from_roots,
    })
}

/// The members of `pool` nearest a target.
fn nearest<'a>(dist: &BTreeMap<&'a String, usize>, pool: Vec<&'a String>) -> Vec<&'a String> {
    let best = pool.iter().map(|n| dist[*n]).min();
    pool.into_iter()
        .filter(|n| Some(dist[*n]) == best)
        .collect()
}

/// Extend `path` one step nearer a target at a time (every shortest way).
fn walk<'a>(
    c: &'a ImageContents,
    dist: &BTreeMap<&'a String, usize>,
    path: Vec<&'a String>,
    out: &mut Vec<Vec<&'a String>>,
) {
    if out.len() >= MAX_CHAINS {
        return;
    }
    let last = *path.last().expect("non-empty");
    let d = dist[last];
    if d == 0 {
        out.push(path);
        return;
    }
    for next in c.depends.get(last).into_iter().flatten() {
        if dist.get(next) == Some(&(d - 1)) {
            let mut p = path.clone();
            p.push(next);
            walk(c, dist, p, out);
        }
    }
}

/// One chain per line: `python3-numpy (requested) → libblas3`.
pub fn render(r: &WhyReport) -> String {
    let mut s = String::new();
    if r.from_roots {
        let _ = writeln!(
            s,
            "nothing requested leads to {}; from the packages nothing depends on:",
            r.package
        );
    }
    for ch in &r.chains {
        let parts: Vec<String> = ch
            .iter()
            .map(|l| {
                let mut t = format!("{} {}", l.name, l.version);
                if l.requested {
                    t.push_str(" (requested)");
                } else if l.from_base && std::ptr::eq(l, &ch[0]) {
                    t.push_str(" (base image)");
                }
                t
            })
            .collect();
        let _ = writeln!(s, "{}", parts.join(" → "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::parse_spdx;

    const DOC: &str = r#"{
      "packages": [
        {"SPDXID": "SPDXRef-Image", "name": "img", "versionInfo": "sha256:x"},
        {"SPDXID": "A", "name": "python3-numpy", "versionInfo": "1",
         "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:deb/debian/python3-numpy@1"}]},
        {"SPDXID": "B", "name": "libblas3", "versionInfo": "3",
         "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:deb/debian/libblas3@3"}]},
        {"SPDXID": "C", "name": "libc6", "versionInfo": "2",
         "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:deb/debian/libc6@2"}]},
        {"SPDXID": "D", "name": "base-files", "versionInfo": "12",
         "externalRefs": [{"referenceType": "purl", "referenceLocator": "pkg:deb/debian/base-files@12"}]}
      ],
      "relationships": [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": "SPDXRef-Image"},
        {"spdxElementId": "SPDXRef-Image", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "A"},
        {"spdxElementId": "A", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "B"},
        {"spdxElementId": "A", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "C"},
        {"spdxElementId": "B", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "C"},
        {"spdxElementId": "D", "relationshipType": "DEPENDS_ON", "relatedSpdxElement": "C"}
      ]
    }"#;

    fn names(r: &WhyReport) -> Vec<Vec<&str>> {
        r.chains
            .iter()
            .map(|c| c.iter().map(|l| l.name.as_str()).collect())
            .collect()
    }

    #[test]
    fn shortest_chain_from_what_was_requested() {
        let c = parse_spdx(DOC.as_bytes()).unwrap();
        let r = why(&c, "libblas3").unwrap();
        assert_eq!(names(&r), [["python3-numpy", "libblas3"]]);
        assert!(render(&r).contains("python3-numpy 1 (requested) → libblas3 3"));
        // The direct edge beats the one through libblas3.
        let r = why(&c, "libc6").unwrap();
        assert_eq!(names(&r), [["python3-numpy", "libc6"]]);
        assert!(!r.from_roots);
        let r = why(&c, "deb:python3-numpy").unwrap();
        assert_eq!(names(&r), [["python3-numpy"]]);
    }

    #[test]
    fn from_roots_when_nothing_requested_leads_there() {
        let c = parse_spdx(DOC.as_bytes()).unwrap();
        let r = why(&c, "base-files").unwrap();
        assert!(r.from_roots);
        assert_eq!(names(&r), [["base-files"]]);
        let e = why(&c, "libblas").unwrap_err().to_string();
        assert!(e.contains("similar names: libblas3"), "{e}");
    }
}
