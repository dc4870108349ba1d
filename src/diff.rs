//! `kiln diff A B`: what changed between two images — packages per
//! ecosystem, layers by digest, and what a push of B sends to a registry
//! that already holds A.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::packages::ImageContents;

#[derive(Debug, Default, Serialize)]
pub struct EcosystemDiff {
    /// `name version` of packages only in B.
    pub added: Vec<String>,
    /// `name version` of packages only in A.
    pub removed: Vec<String>,
    pub changed: Vec<Changed>,
}

#[derive(Debug, Serialize)]
pub struct Changed {
    pub name: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize)]
pub struct LayerRef {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    /// Where each side's packages were read.
    pub a_packages_from: String,
    pub b_packages_from: String,
    /// Per ecosystem (`deb`, `pypi`, `conda`), only those with differences.
    pub packages: BTreeMap<String, EcosystemDiff>,
    /// Layers in both (by digest).
    pub layers_shared: Vec<LayerRef>,
    /// Layers of A that B does not have.
    pub layers_removed: Vec<LayerRef>,
    /// Layers of B that A does not have.
    pub layers_added: Vec<LayerRef>,
    /// What pushing B sends where A is already present: B's blobs (layers
    /// and config) that A does not have. Manifests are not counted.
    pub push_layer_bytes: u64,
    /// None when a side's config blob is not known (docker-archive).
    pub push_config_bytes: Option<u64>,
    pub push_bytes: u64,
}

/// Compare A with B.
pub fn diff(a: &ImageContents, b: &ImageContents) -> DiffReport {
    let versions = |c: &ImageContents| {
        let mut m: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for p in c.packages.values() {
            m.entry((p.ecosystem.clone(), p.name.clone()))
                .or_default()
                .insert(p.version.clone());
        }
        m
    };
    let (va, vb) = (versions(a), versions(b));
    let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
    let mut packages: BTreeMap<String, EcosystemDiff> = BTreeMap::new();
    let keys: BTreeSet<&(String, String)> = va.keys().chain(vb.keys()).collect();
    for key @ (eco, name) in keys {
        let e = || EcosystemDiff::default();
        match (va.get(key), vb.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                packages
                    .entry(eco.clone())
                    .or_insert_with(e)
                    .changed
                    .push(Changed {
                        name: name.clone(),
                        from: join(x),
                        to: join(y),
                    })
            }
            (None, Some(y)) => packages
                .entry(eco.clone())
                .or_insert_with(e)
                .added
                .extend(y.iter().map(|v| format!("{name} {v}"))),
            (Some(x), None) => packages
                .entry(eco.clone())
                .or_insert_with(e)
                .removed
                .extend(x.iter().map(|v| format!("{name} {v}"))),
            (None, None) => {}
        }
    }
    let a_blobs: BTreeSet<_> = a
        .layers
        .iter()
        .map(|(d, _)| d)
        .chain(a.config.iter().map(|(d, _)| d))
        .collect();
    let b_layers: BTreeSet<_> = b.layers.iter().map(|(d, _)| d).collect();
    let r = |(d, s): &(kiln_core::digest::Digest, u64)| LayerRef {
        digest: d.to_string(),
        size: *s,
    };
    let mut seen = BTreeSet::new();
    let mut layers_shared = Vec::new();
    let mut layers_added = Vec::new();
    for l in &b.layers {
        if !seen.insert(&l.0) {
            continue;
        }
        if a_blobs.contains(&l.0) {
            layers_shared.push(r(l));
        } else {
            layers_added.push(r(l));
        }
    }
    let mut gone = BTreeSet::new();
    let layers_removed: Vec<LayerRef> = a
        .layers
        .iter()
        .filter(|l| !b_layers.contains(&l.0) && gone.insert(&l.0))
        .map(r)
        .collect();
    let push_layer_bytes = layers_added.iter().map(|l| l.size).sum();
    let push_config_bytes = match (&a.config, &b.config) {
        (Some(_), Some((d, s))) => Some(if a_blobs.contains(d) { 0 } else { *s }),
        _ => None,
    };
    DiffReport {
        a: a.reference.clone(),
        b: b.reference.clone(),
        a_packages_from: a.packages_from.clone(),
        b_packages_from: b.packages_from.clone(),
        packages,
        layers_shared,
        layers_removed,
        layers_added,
        push_layer_bytes,
        push_bytes: push_layer_bytes + push_config_bytes.unwrap_or(0),
        push_config_bytes,
    }
}

/// The report for a terminal.
pub fn render(r: &DiffReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "A: {} (packages from {})", r.a, r.a_packages_from);
    let _ = writeln!(s, "B: {} (packages from {})", r.b, r.b_packages_from);
    if r.packages.is_empty() {
        let _ = writeln!(s, "packages: no differences");
    }
    for (eco, d) in &r.packages {
        let _ = writeln!(
            s,
            "{eco}: {} added, {} removed, {} changed",
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        );
        for p in &d.added {
            let _ = writeln!(s, "  + {p}");
        }
        for p in &d.removed {
            let _ = writeln!(s, "  - {p}");
        }
        for c in &d.changed {
            let _ = writeln!(s, "  ~ {} {} -> {}", c.name, c.from, c.to);
        }
    }
    let _ = writeln!(
        s,
        "layers: {} shared, {} only in A, {} only in B",
        r.layers_shared.len(),
        r.layers_removed.len(),
        r.layers_added.len()
    );
    for l in &r.layers_removed {
        let _ = writeln!(s, "  - {} {:>12}", l.digest, l.size);
    }
    for l in &r.layers_added {
        let _ = writeln!(s, "  + {} {:>12}", l.digest, l.size);
    }
    let _ = match r.push_config_bytes {
        Some(c) => writeln!(
            s,
            "push of B where A is present: {} bytes ({} in layers, {} config)",
            r.push_bytes, r.push_layer_bytes, c
        ),
        None => writeln!(
            s,
            "push of B where A is present: {} bytes in layers (config not known)",
            r.push_layer_bytes
        ),
    };
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Pkg;
    use kiln_core::digest::Digest;

    fn contents(
        pkgs: &[(&str, &str, &str)],
        layers: &[(&[u8], u64)],
        config: &[u8],
    ) -> ImageContents {
        ImageContents {
            reference: "x".into(),
            packages_from: "test".into(),
            packages: pkgs
                .iter()
                .enumerate()
                .map(|(i, (e, n, v))| {
                    (
                        format!("id{i}"),
                        Pkg {
                            ecosystem: e.to_string(),
                            name: n.to_string(),
                            version: v.to_string(),
                        },
                    )
                })
                .collect(),
            requested: Default::default(),
            from_base: Default::default(),
            depends: Default::default(),
            layers: layers.iter().map(|(b, s)| (Digest::of(b), *s)).collect(),
            config: Some((Digest::of(config), config.len() as u64)),
        }
    }

    #[test]
    fn packages_layers_and_push_bytes() {
        let a = contents(
            &[
                ("deb", "libc6", "2.36"),
                ("pypi", "six", "1.16"),
                ("pypi", "old", "1"),
            ],
            &[(b"base", 100), (b"pip-a", 30)],
            b"ca",
        );
        let b = contents(
            &[
                ("deb", "libc6", "2.36"),
                ("pypi", "six", "1.17"),
                ("pypi", "new", "2"),
            ],
            &[(b"base", 100), (b"pip-b", 40)],
            b"config-b",
        );
        let r = diff(&a, &b);
        assert_eq!(r.packages.keys().collect::<Vec<_>>(), ["pypi"]);
        let p = &r.packages["pypi"];
        assert_eq!(p.added, ["new 2"]);
        assert_eq!(p.removed, ["old 1"]);
        assert_eq!(p.changed.len(), 1);
        assert_eq!(
            (p.changed[0].from.as_str(), p.changed[0].to.as_str()),
            ("1.16", "1.17")
        );
        assert_eq!(r.layers_shared.len(), 1);
        assert_eq!(r.layers_added.len(), 1);
        assert_eq!(r.layers_removed.len(), 1);
        assert_eq!(r.push_layer_bytes, 40);
        assert_eq!(r.push_config_bytes, Some(8));
        assert_eq!(r.push_bytes, 48);
        let text = render(&r);
        assert!(text.contains("  ~ six 1.16 -> 1.17"), "{text}");
        // An image against itself: nothing to send.
        let same = diff(&b, &b);
        assert!(same.packages.is_empty());
        assert_eq!(same.push_bytes, 0);
    }
}
