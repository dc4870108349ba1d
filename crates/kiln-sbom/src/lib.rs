//! SBOM: one SPDX 2.3 JSON document per built image platform.
//!
//! The packages are read from the finished image's filesystem view (the
//! base's files with every stage's layer entries laid on top, see `build`):
//! dpkg's `status` (and distroless `status.d/`), Python `*.dist-info` /
//! `*.egg-info` in any `site-packages` or `dist-packages` (system and venvs),
//! and conda's `conda-meta/*.json`. The sha256 of what kiln installed itself
//! (`.deb`s, wheels) comes from the stage plans ([`Known`]); conda records
//! its own. Licenses: PEP 639 `License-Expression`, else `License`, conda's
//! `license`; SPDX expressions over well-known identifiers are kept as they
//! are, anything else becomes a `LicenseRef-` with the original text.
//!
//! Nothing is random: `created` is SOURCE_DATE_EPOCH, the namespace is
//! derived from the image manifest digest, packages are sorted and their
//! SPDXIDs derived from name, version and architecture. One image always
//! gets the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use kiln_core::digest::Digest;
use kiln_core::error::{Classify, ErrorKind, Result};
use kiln_core::platform::Platform;
use kiln_fs::probe::parse_paragraphs;
use kiln_fs::probe::{list, read};
use kiln_fs::rootfs::{Node, Rootfs};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What writing an SBOM can fail with. Travels up as
/// [`kiln_core::Error::Typed`]; find it again with
/// `err.downcast_ref::<SbomError>()`.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// The document could not be serialised to JSON (a bug).
    #[error("serialising the SBOM: {0}")]
    Serialize(#[source] serde_json::Error),
}

impl Classify for SbomError {
    fn kind(&self) -> ErrorKind {
        match self {
            SbomError::Serialize(_) => ErrorKind::Internal,
        }
    }
}

impl From<SbomError> for kiln_core::Error {
    fn from(e: SbomError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// Media type of the document, as layer and `artifactType` of its referrer.
pub const MEDIA_TYPE: &str = "application/spdx+json";

/// Paths whose contents the scan reads (OR'd into the build's keep filter).
pub fn keep_path(path: &str) -> bool {
    is_conda_meta(path)
        || path == "/var/lib/dpkg/status"
        || path.starts_with("/var/lib/dpkg/status.d/")
        || path.ends_with(".dist-info/METADATA")
        // Kept (empty) so a build reused from its memo sees it too.
        || path.ends_with(".dist-info/REQUESTED")
        || path.ends_with(".egg-info/PKG-INFO")
        || (path.ends_with(".egg-info") && path.contains("-packages/"))
        || matches!(path, "/etc/os-release" | "/usr/lib/os-release")
}

fn is_conda_meta(path: &str) -> bool {
    path.rsplit_once('/').is_some_and(|(dir, name)| {
        (dir == "/conda-meta" || dir.ends_with("/conda-meta")) && name.ends_with(".json")
    })
}

/// `linux-amd64.spdx.json`, `linux-arm-v7.spdx.json`: the file name of a platform's SBOM.
pub fn file_name(p: &Platform) -> String {
    let mut s = format!("{}-{}", p.os, p.arch);
    if let Some(v) = &p.variant {
        s.push('-');
        s.push_str(v);
    }
    format!("{}.spdx.json", sanitize(&s))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Ecosystem {
    Conda,
    Deb,
    Pypi,
}

impl Ecosystem {
    fn as_str(self) -> &'static str {
        match self {
            Ecosystem::Conda => "conda",
            Ecosystem::Deb => "deb",
            Ecosystem::Pypi => "pypi",
        }
    }
}

/// One installed package found in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub(crate) ecosystem: Ecosystem,
    pub(crate) name: String,
    pub(crate) version: String,
    /// Debian architecture or conda subdir.
    pub(crate) arch: Option<String>,
    pub(crate) purl: String,
    /// As declared by the package (free text or an SPDX expression).
    pub(crate) license: Option<String>,
    /// Hex sha256 of the package file, when recorded in the image (conda).
    pub(crate) sha256: Option<String>,
    /// Debian source package, when it differs from the binary package's name.
    pub(crate) source: Option<String>,
    /// Where the package's record lives in the image.
    pub(crate) locations: BTreeSet<String>,
    /// What it depends on, as its record says: groups of alternative names
    /// (Debian `a | b`; one name per group for Python and conda). Resolved
    /// against the image's packages into DEPENDS_ON relationships.
    pub(crate) depends: Vec<Vec<String>>,
    /// Virtual names it provides (Debian `Provides`).
    pub(crate) provides: Vec<String>,
    /// Asked for by whoever installed it (a wheel's `REQUESTED`, conda's
    /// `requested_spec`; apt packages through [`Known::add_requested`]).
    pub(crate) requested: bool,
    /// Where its dependencies are looked for first: the site-packages
    /// directory or conda prefix it lives in (empty for debs).
    pub(crate) scope: String,
}

impl Package {
    /// `deb`, `pypi` or `conda`.
    pub fn ecosystem(&self) -> &'static str {
        self.ecosystem.as_str()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn purl(&self) -> &str {
        &self.purl
    }
}

/// Every package the image's package databases list, sorted, one per purl.
pub fn scan(fs: &Rootfs) -> Vec<Package> {
    let mut found: BTreeMap<String, Package> = BTreeMap::new();
    let mut add = |p: Package| match found.get_mut(&p.purl) {
        Some(old) => {
            old.locations.extend(p.locations);
            if old.license.is_none() {
                old.license = p.license;
            }
            if old.sha256.is_none() {
                old.sha256 = p.sha256;
            }
            old.depends.extend(p.depends);
            old.provides.extend(p.provides);
            old.requested |= p.requested;
        }
        None => {
            found.insert(p.purl.clone(), p);
        }
    };
    for p in debs(fs) {
        add(p);
    }
    for (path, node) in fs.paths() {
        if let Some(p) = python_dist(fs, path, node) {
            add(p);
        } else if is_conda_meta(path) {
            if let Some(p) = read(fs, path).and_then(|b| conda(path, b)) {
                add(p);
            }
        }
    }
    let mut v: Vec<Package> = found.into_values().collect();
    v.sort_by(|a, b| {
        (a.ecosystem, &a.name, &a.version, &a.purl).cmp(&(
            b.ecosystem,
            &b.name,
            &b.version,
            &b.purl,
        ))
    });
    v
}

/// The purls of `packages` (what a base had, to tell it from what kiln added).
pub fn purls(packages: &[Package]) -> BTreeSet<String> {
    packages.iter().map(|p| p.purl.clone()).collect()
}

// ---------------------------------------------------------------------------
// Package databases
// ---------------------------------------------------------------------------

/// `ID` of os-release (the purl namespace of deb packages), `debian` when absent.
fn distro_id(fs: &Rootfs) -> String {
    for p in ["/etc/os-release", "/usr/lib/os-release"] {
        let Some(text) = read(fs, p).map(String::from_utf8_lossy) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("ID=") {
                let v = v.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
                if !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                {
                    return v;
                }
            }
        }
    }
    "debian".into()
}

fn debs(fs: &Rootfs) -> Vec<Package> {
    let mut files: Vec<String> = Vec::new();
    if read(fs, "/var/lib/dpkg/status").is_some() {
        files.push("/var/lib/dpkg/status".into());
    }
    for name in list(fs, "/var/lib/dpkg/status.d") {
        files.push(format!("/var/lib/dpkg/status.d/{name}"));
    }
    let distro = distro_id(fs);
    let mut out = Vec::new();
    for file in files {
        let Some(bytes) = read(fs, &file) else {
            continue;
        };
        for p in parse_paragraphs(&String::from_utf8_lossy(bytes)) {
            if !p
                .get("Status")
                .unwrap_or("install ok installed")
                .ends_with(" installed")
            {
                continue;
            }
            let (Some(name), Some(version)) = (p.get("Package"), p.get("Version")) else {
                continue;
            };
            let (name, version) = (name.trim(), version.trim());
            if name.is_empty() || version.is_empty() {
                continue;
            }
            let arch = p
                .get("Architecture")
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty());
            let source = p
                .get("Source")
                .and_then(|s| s.split_whitespace().next())
                .filter(|s| *s != name)
                .map(str::to_string);
            let mut q = Vec::new();
            if let Some(a) = &arch {
                q.push(("arch", a.clone()));
            }
            let mut depends = Vec::new();
            for field in ["Pre-Depends", "Depends"] {
                for group in p.get(field).unwrap_or("").split(',') {
                    let alts: Vec<String> = group.split('|').filter_map(deb_name).collect();
                    if !alts.is_empty() {
                        depends.push(alts);
                    }
                }
            }
            let provides = p
                .get("Provides")
                .unwrap_or("")
                .split(',')
                .filter_map(deb_name)
                .collect();
            out.push(Package {
                depends,
                provides,
                requested: false,
                scope: String::new(),
                ecosystem: Ecosystem::Deb,
                name: name.to_string(),
                version: version.to_string(),
                purl: purl("deb", Some(&distro), name, version, q),
                arch,
                license: None,
                sha256: None,
                source,
                locations: BTreeSet::from([file.clone()]),
            });
        }
    }
    out
}

/// The package name of one Debian relation (`libc6 (>= 2.34)`, `python3:any`).
fn deb_name(rel: &str) -> Option<String> {
    let n = rel
        .split_whitespace()
        .next()?
        .split(['(', '[', '<'])
        .next()?;
    let n = n.split(':').next()?.trim();
    (!n.is_empty()).then(|| n.to_string())
}

/// A `*.dist-info/METADATA`, `*.egg-info/PKG-INFO` or `*.egg-info` file
/// directly in a `site-packages` or `dist-packages` directory.
fn python_dist(fs: &Rootfs, path: &str, node: &Node) -> Option<Package> {
    let (dir, entry) = path.rsplit_once('/')?;
    let (site, record, stem) = if entry == "METADATA" || entry == "PKG-INFO" {
        let (site, d) = dir.rsplit_once('/')?;
        let stem = if entry == "METADATA" {
            d.strip_suffix(".dist-info")?
        } else {
            d.strip_suffix(".egg-info")?
        };
        (site, dir, stem)
    } else if let (Some(stem), Node::File { .. }) = (entry.strip_suffix(".egg-info"), node) {
        (dir, path, stem)
    } else {
        return None;
    };
    let last = site.rsplit('/').next()?;
    if last != "site-packages" && last != "dist-packages" {
        return None;
    }
    let fields = read(fs, path).map(metadata_fields).unwrap_or_default();
    let field = |k: &str| {
        fields
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (name, version) = match (field("name"), field("version")) {
        (Some(n), Some(v)) => (n, v),
        _ => {
            // `name-version` (egg-info may add `-pyX.Y`).
            let mut it = stem.splitn(3, '-');
            match (it.next(), it.next()) {
                (Some(n), Some(v)) if !n.is_empty() && !v.is_empty() => {
                    (n.to_string(), v.to_string())
                }
                _ => return None,
            }
        }
    };
    let license = field("license-expression")
        .or_else(|| field("license").filter(|l| !l.eq_ignore_ascii_case("UNKNOWN")));
    let norm = kiln_fs::probe::normalize(&name);
    // Requirements of extras are not installed by asking for the package.
    let depends = read(fs, path)
        .map(|b| kiln_fs::probe::header_fields(b, false))
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| {
            k == "requires-dist" && !v.split_once(';').is_some_and(|(_, m)| m.contains("extra"))
        })
        .filter_map(|(_, v)| {
            let n: String = v
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .collect();
            (!n.is_empty()).then(|| vec![kiln_fs::probe::normalize(&n)])
        })
        .collect();
    Some(Package {
        depends,
        provides: Vec::new(),
        requested: entry == "METADATA"
            && kiln_fs::probe::exists(fs, &format!("{record}/REQUESTED")),
        scope: site.to_string(),
        ecosystem: Ecosystem::Pypi,
        purl: purl("pypi", None, &norm, &version, vec![]),
        name: norm,
        version,
        arch: None,
        license,
        sha256: None,
        source: None,
        locations: BTreeSet::from([record.to_string()]),
    })
}

/// Header fields of core metadata (lowercased names; first occurrence wins;
/// continuation lines joined with newlines).
fn metadata_fields(bytes: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (k, v) in kiln_fs::probe::header_fields(bytes, true) {
        out.entry(k).or_insert(v);
    }
    out
}

fn conda(path: &str, bytes: &[u8]) -> Option<Package> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
    };
    let (name, version) = (s("name")?, s("version")?);
    let subdir = s("subdir");
    let channel = s("channel").and_then(|c| conda_channel(&c, subdir.as_deref()));
    let ty = s("fn").and_then(|f| {
        if f.ends_with(".conda") {
            Some("conda".to_string())
        } else if f.ends_with(".tar.bz2") {
            Some("tar.bz2".to_string())
        } else {
            None
        }
    });
    let mut q = Vec::new();
    for (k, val) in [
        ("build", s("build")),
        ("channel", channel),
        ("subdir", subdir.clone()),
        ("type", ty),
    ] {
        if let Some(val) = val {
            q.push((k, val));
        }
    }
    let sha256 = s("sha256")
        .map(|h| h.to_ascii_lowercase())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let depends = v
        .get("depends")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str()?.split_whitespace().next())
        .filter(|n| !n.starts_with("__"))
        .map(|n| vec![n.to_string()])
        .collect();
    let requested = s("requested_spec").is_some()
        || v.get("requested_specs")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    let scope = path
        .rsplit_once('/')
        .and_then(|(d, _)| d.strip_suffix("conda-meta"))
        .unwrap_or("")
        .to_string();
    Some(Package {
        depends,
        provides: Vec::new(),
        requested,
        scope,
        ecosystem: Ecosystem::Conda,
        purl: purl("conda", None, &name, &version, q),
        name,
        version,
        arch: subdir,
        license: s("license"),
        sha256,
        source: None,
        locations: BTreeSet::from([path.to_string()]),
    })
}

/// A channel as recorded (`conda-forge`, or a URL, possibly ending in the
/// subdir) reduced to its name: the URL path without the subdir.
fn conda_channel(c: &str, subdir: Option<&str>) -> Option<String> {
    let c = c.trim().trim_end_matches('/');
    let name = match c.split_once("://") {
        Some((_, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            if segs
                .last()
                .is_some_and(|l| Some(*l) == subdir || *l == "noarch")
            {
                segs.pop();
            }
            if segs.is_empty() {
                host.to_string()
            } else {
                segs.join("/")
            }
        }
        None => c.to_string(),
    };
    (!name.is_empty()).then_some(name)
}

// ---------------------------------------------------------------------------
// purls, SPDX ids
// ---------------------------------------------------------------------------

/// Percent-encode everything but unreserved characters and `keep`.
fn pct(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `pkg:TYPE[/NAMESPACE]/NAME@VERSION[?k=v&…]`, qualifiers sorted by key.
fn purl(
    ty: &str,
    namespace: Option<&str>,
    name: &str,
    version: &str,
    mut qualifiers: Vec<(&str, String)>,
) -> String {
    let mut s = format!("pkg:{ty}/");
    if let Some(ns) = namespace {
        s.push_str(&pct(ns, b""));
        s.push('/');
    }
    s.push_str(&pct(name, b""));
    s.push('@');
    s.push_str(&pct(version, b":"));
    qualifiers.retain(|(_, v)| !v.is_empty());
    qualifiers.sort();
    for (i, (k, v)) in qualifiers.iter().enumerate() {
        s.push(if i == 0 { '?' } else { '&' });
        s.push_str(k);
        s.push('=');
        s.push_str(&pct(v, b":/"));
    }
    s
}

/// `pkg:oci/NAME@DIGEST?arch=…&repository_url=…&tag=…` for an image in a registry.
fn oci_purl(repository: &str, digest: &Digest, arch: &str, tag: Option<&str>) -> String {
    let name = repository
        .rsplit('/')
        .next()
        .unwrap_or(repository)
        .to_ascii_lowercase();
    let mut q = vec![
        ("arch", arch.to_string()),
        ("repository_url", repository.to_string()),
    ];
    if let Some(t) = tag {
        q.push(("tag", t.to_string()));
    }
    purl("oci", None, &name, &digest.to_string(), q)
}

/// Only `[A-Za-z0-9.-]`, the characters an SPDXID may hold.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `SPDXRef-<sanitised>`, made unique with `-2`, `-3`… in the order asked.
fn unique_id(base: &str, taken: &mut BTreeSet<String>) -> String {
    let first = format!("SPDXRef-{}", sanitize(base));
    let mut id = first.clone();
    let mut n = 2;
    while !taken.insert(id.clone()) {
        id = format!("{first}-{n}");
        n += 1;
    }
    id
}

// ---------------------------------------------------------------------------
// Checksums kiln knows
// ---------------------------------------------------------------------------

/// sha256 of package files kiln itself installed, from the stage plans.
#[derive(Default, Debug, Clone)]
pub struct Known {
    map: BTreeMap<(Ecosystem, String, String, String), String>,
    /// Names the spec asked for, per ecosystem (`deb`, `pypi`, `conda`).
    requested: BTreeSet<(&'static str, String)>,
}

impl Known {
    /// A `.deb` the apt stage installed.
    pub fn add_deb(&mut self, name: &str, version: &str, arch: &str, sha256: &Digest) {
        self.map.insert(
            (Ecosystem::Deb, name.into(), version.into(), arch.into()),
            sha256.hex().to_string(),
        );
    }

    /// A package the spec names (`deb`, `pypi` or `conda`): the image
    /// DEPENDS_ON it, where chains of dependencies start.
    pub fn add_requested(&mut self, ecosystem: &str, name: &str) {
        let (eco, name) = match ecosystem {
            "deb" => ("deb", name.to_string()),
            "pypi" => ("pypi", kiln_fs::probe::normalize(name)),
            _ => ("conda", name.to_string()),
        };
        self.requested.insert((eco, name));
    }

    fn is_requested(&self, p: &Package) -> bool {
        p.requested
            || self
                .requested
                .contains(&(p.ecosystem.as_str(), p.name.clone()))
    }

    /// A wheel the pip stage installed.
    pub fn add_wheel(&mut self, name: &str, version: &str, sha256: &Digest) {
        self.map.insert(
            (
                Ecosystem::Pypi,
                kiln_fs::probe::normalize(name),
                version.to_ascii_lowercase(),
                String::new(),
            ),
            sha256.hex().to_string(),
        );
    }

    fn get(&self, p: &Package) -> Option<&String> {
        let key = match p.ecosystem {
            Ecosystem::Deb => (
                Ecosystem::Deb,
                p.name.clone(),
                p.version.clone(),
                p.arch.clone().unwrap_or_default(),
            ),
            Ecosystem::Pypi => (
                Ecosystem::Pypi,
                p.name.clone(),
                p.version.to_ascii_lowercase(),
                String::new(),
            ),
            Ecosystem::Conda => return None,
        };
        self.map.get(&key)
    }
}

// ---------------------------------------------------------------------------
// Licenses
// ---------------------------------------------------------------------------

/// Common identifiers of the SPDX license list (deprecated ones included:
/// package metadata still uses them). An expression using anything else is
/// recorded as a `LicenseRef-` with its text.
#[rustfmt::skip]
const LICENSE_IDS: &[&str] = &[
    "0BSD", "AFL-2.1", "AFL-3.0", "AGPL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later",
    "Apache-1.0", "Apache-1.1", "Apache-2.0", "APSL-2.0", "Artistic-1.0",
    "Artistic-1.0-Perl", "Artistic-2.0", "Beerware", "blessing", "BSD-1-Clause",
    "BSD-2-Clause", "BSD-2-Clause-Patent", "BSD-3-Clause", "BSD-3-Clause-Clear",
    "BSD-3-Clause-LBNL", "BSD-4-Clause", "BSD-Source-Code", "BSL-1.0", "bzip2-1.0.6",
    "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC0-1.0", "CDDL-1.0",
    "CDDL-1.1", "CECILL-2.1", "CNRI-Python", "curl", "ECL-2.0", "EPL-1.0", "EPL-2.0",
    "EUPL-1.1", "EUPL-1.2", "FSFAP", "FSFUL", "FSFULLR", "FTL", "GFDL-1.2-only",
    "GFDL-1.2-or-later", "GFDL-1.3-only", "GFDL-1.3-or-later", "GPL-1.0-only",
    "GPL-1.0-or-later", "GPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0",
    "GPL-3.0-only", "GPL-3.0-or-later", "HPND", "ICU", "IJG", "Imlib2", "Info-ZIP",
    "IPL-1.0", "ISC", "LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1", "LGPL-2.1-only",
    "LGPL-2.1-or-later", "LGPL-3.0", "LGPL-3.0-only", "LGPL-3.0-or-later", "Libpng",
    "libpng-2.0", "libtiff", "LPPL-1.3c", "MirOS", "MIT", "MIT-0", "MIT-CMU",
    "MIT-Modern-Variant", "MPL-1.1", "MPL-2.0", "MS-PL", "MulanPSL-2.0", "NCSA",
    "OFL-1.1", "OLDAP-2.8", "OpenSSL", "PHP-3.01", "PostgreSQL", "PSF-2.0", "Python-2.0",
    "Python-2.0.1", "Qhull", "Ruby", "SGI-B-2.0", "Sleepycat", "SSPL-1.0", "TCL",
    "Unicode-3.0", "Unicode-DFS-2015", "Unicode-DFS-2016", "Unlicense", "UPL-1.0", "Vim",
    "W3C", "WTFPL", "X11", "XFree86-1.1", "Zlib", "zlib-acknowledgement", "ZPL-2.0",
    "ZPL-2.1",
];

/// License exceptions (the right-hand side of `WITH`).
#[rustfmt::skip]
const EXCEPTION_IDS: &[&str] = &[
    "Autoconf-exception-2.0", "Autoconf-exception-3.0", "Bison-exception-2.2",
    "Classpath-exception-2.0", "Font-exception-2.0", "GCC-exception-2.0",
    "GCC-exception-3.1", "Linux-syscall-note", "LLVM-exception", "Qt-LGPL-exception-1.1",
    "WxWindows-exception-3.1",
];

fn canonical_id(token: &str, table: &[&'static str]) -> Option<&'static str> {
    table
        .iter()
        .copied()
        .find(|i| i.eq_ignore_ascii_case(token))
}

/// `text` as an SPDX expression over known identifiers, canonically spelled;
/// None when it is anything else.
fn spdx_expression(text: &str) -> Option<String> {
    let spaced = text.replace('(', " ( ").replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    if tokens.is_empty() {
        return None;
    }
    // A tiny recogniser: operand (op operand)*, with parentheses and WITH.
    let mut out: Vec<String> = Vec::new();
    let mut depth = 0usize;
    let mut want_operand = true;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        if want_operand {
            if t == "(" {
                depth += 1;
                out.push("(".into());
            } else {
                let (id, plus) = match t.strip_suffix('+') {
                    Some(s) => (s, "+"),
                    None => (t, ""),
                };
                out.push(format!("{}{plus}", canonical_id(id, LICENSE_IDS)?));
                if tokens
                    .get(i + 1)
                    .is_some_and(|n| n.eq_ignore_ascii_case("WITH"))
                {
                    let exc = canonical_id(tokens.get(i + 2)?, EXCEPTION_IDS)?;
                    out.push("WITH".into());
                    out.push(exc.into());
                    i += 2;
                }
                want_operand = false;
            }
        } else if t == ")" {
            depth = depth.checked_sub(1)?;
            out.push(")".into());
        } else if t.eq_ignore_ascii_case("AND") || t.eq_ignore_ascii_case("OR") {
            out.push(t.to_ascii_uppercase());
            want_operand = true;
        } else {
            return None;
        }
        i += 1;
    }
    if want_operand || depth != 0 {
        return None;
    }
    let mut s = String::new();
    for t in out {
        if !(s.is_empty() || s.ends_with('(') || t == ")") {
            s.push(' ');
        }
        s.push_str(&t);
    }
    Some(s)
}

/// Declared licenses of a document, with the non-SPDX texts they refer to.
#[derive(Default)]
struct Licenses {
    /// LicenseRef id → original text.
    refs: BTreeMap<String, String>,
}

impl Licenses {
    fn declared(&mut self, text: Option<&str>) -> String {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return "NOASSERTION".into();
        };
        if let Some(e) = spdx_expression(text) {
            return e;
        }
        let slug = {
            let mut s = String::new();
            for c in sanitize(text).chars() {
                if !(c == '-' && (s.is_empty() || s.ends_with('-'))) {
                    s.push(c);
                }
            }
            s.trim_end_matches('-').to_string()
        };
        let mut id = format!("LicenseRef-{slug}");
        if slug.is_empty()
            || text.len() > 64
            || text.contains('\n')
            || self.refs.get(&id).is_some_and(|t| t != text)
        {
            let prefix: String = slug.chars().take(32).collect();
            let prefix = prefix.trim_end_matches('-');
            let hash = hex::encode(Sha256::digest(text.as_bytes()));
            id = if prefix.is_empty() {
                format!("LicenseRef-{}", &hash[..12])
            } else {
                format!("LicenseRef-{prefix}-{}", &hash[..12])
            };
        }
        self.refs.insert(id.clone(), text.to_string());
        id
    }
}

// ---------------------------------------------------------------------------
// The document
// ---------------------------------------------------------------------------

/// The image the document describes.
pub struct Subject<'a> {
    /// `[image] name` (a repository, without tag), when the spec has one.
    pub repository: Option<&'a str>,
    pub tag: Option<&'a str>,
    pub platform: &'a Platform,
    pub manifest_digest: &'a Digest,
}

/// The base image it was built on.
pub struct BaseImage<'a> {
    /// As the spec names it (`registry/repo:tag`, `oci:DIR:TAG`, ...).
    pub name: &'a str,
    /// `registry/repository` of a registry base (the purl's `repository_url`).
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// This platform's manifest in the base (None for docker-archive bases).
    pub manifest_digest: Option<&'a Digest>,
    /// purls of the packages the base already had.
    pub purls: &'a BTreeSet<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicense {
    license_id: String,
    extracted_text: String,
    name: String,
}

const NOASSERTION: &str = "NOASSERTION";

fn purl_ref(purl: String) -> Vec<ExternalRef> {
    vec![ExternalRef {
        reference_category: "PACKAGE-MANAGER",
        reference_type: "purl",
        reference_locator: purl,
    }]
}

fn sha256(hex: impl Into<String>) -> Vec<Checksum> {
    vec![Checksum {
        algorithm: "SHA256",
        checksum_value: hex.into(),
    }]
}

fn rel(a: &str, ty: &'static str, b: &str) -> Relationship {
    Relationship {
        spdx_element_id: a.into(),
        relationship_type: ty,
        related_spdx_element: b.into(),
    }
}

/// The SPDX 2.3 JSON document (pretty-printed, newline-terminated) for one image.
pub fn document(
    subject: &Subject,
    base: Option<&BaseImage>,
    packages: &[Package],
    known: &Known,
    epoch: u64,
) -> Result<Vec<u8>> {
    const IMAGE_ID: &str = "SPDXRef-Image";
    const BASE_ID: &str = "SPDXRef-BaseImage";
    let mut taken: BTreeSet<String> = ["SPDXRef-DOCUMENT", IMAGE_ID, BASE_ID]
        .map(String::from)
        .into();
    let digest = subject.manifest_digest;
    let image_name = subject.repository.unwrap_or("image").to_string();
    let mut spdx_packages = vec![SpdxPackage {
        spdx_id: IMAGE_ID.into(),
        name: image_name.clone(),
        version_info: Some(digest.to_string()),
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: sha256(digest.hex()),
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION.into(),
        copyright_text: NOASSERTION,
        source_info: None,
        primary_package_purpose: Some("CONTAINER"),
        external_refs: subject
            .repository
            .map(|r| purl_ref(oci_purl(r, digest, &subject.platform.arch, subject.tag)))
            .unwrap_or_default(),
    }];
    let mut relationships = vec![rel("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    if let Some(b) = base {
        spdx_packages.push(SpdxPackage {
            spdx_id: BASE_ID.into(),
            name: b.name.to_string(),
            version_info: b.manifest_digest.map(|d| d.to_string()),
            download_location: NOASSERTION,
            files_analyzed: false,
            checksums: b
                .manifest_digest
                .map(|d| sha256(d.hex()))
                .unwrap_or_default(),
            license_concluded: NOASSERTION,
            license_declared: NOASSERTION.into(),
            copyright_text: NOASSERTION,
            source_info: None,
            primary_package_purpose: Some("CONTAINER"),
            external_refs: match (&b.repository, b.manifest_digest) {
                (Some(r), Some(d)) => {
                    purl_ref(oci_purl(r, d, &subject.platform.arch, b.tag.as_deref()))
                }
                _ => vec![],
            },
        });
        relationships.push(rel(IMAGE_ID, "DESCENDANT_OF", BASE_ID));
    }
    let mut licenses = Licenses::default();
    let mut contains = Vec::new();
    let mut from_base = Vec::new();
    let mut ids: Vec<String> = Vec::with_capacity(packages.len());
    for p in packages {
        let mut id_base = format!("Package-{}-{}-{}", p.ecosystem.as_str(), p.name, p.version);
        if let Some(a) = &p.arch {
            id_base.push('-');
            id_base.push_str(a);
        }
        let id = unique_id(&id_base, &mut taken);
        ids.push(id.clone());
        let checksum = known.get(p).cloned().or_else(|| p.sha256.clone());
        let mut info: Vec<String> = Vec::new();
        if !p.locations.is_empty() {
            let locs: Vec<&str> = p.locations.iter().map(String::as_str).collect();
            info.push(format!("recorded in {}", locs.join(", ")));
        }
        if let Some(s) = &p.source {
            info.push(format!("built from source package {s}"));
        }
        spdx_packages.push(SpdxPackage {
            spdx_id: id.clone(),
            name: p.name.clone(),
            version_info: Some(p.version.clone()),
            download_location: NOASSERTION,
            files_analyzed: false,
            checksums: checksum.map(sha256).unwrap_or_default(),
            license_concluded: NOASSERTION,
            license_declared: licenses.declared(p.license.as_deref()),
            copyright_text: NOASSERTION,
            source_info: (!info.is_empty()).then(|| info.join("; ")),
            primary_package_purpose: None,
            external_refs: purl_ref(p.purl.clone()),
        });
        contains.push(rel(IMAGE_ID, "CONTAINS", &id));
        if base.is_some_and(|b| b.purls.contains(&p.purl)) {
            from_base.push(rel(BASE_ID, "CONTAINS", &id));
        }
    }
    relationships.extend(contains);
    relationships.extend(from_base);
    relationships.extend(dependencies(IMAGE_ID, packages, &ids, known));
    let doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: format!("{image_name} {}", subject.platform),
        document_namespace: format!(
            "https://spdx.org/spdxdocs/kiln/{}/{}-{}",
            sanitize(&image_name),
            sanitize(&subject.platform.to_string()),
            digest.hex()
        ),
        creation_info: CreationInfo {
            created: kiln_core::time::rfc3339(epoch),
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages: spdx_packages,
        relationships,
        has_extracted_licensing_infos: licenses
            .refs
            .into_iter()
            .map(|(id, text)| ExtractedLicense {
                name: id.trim_start_matches("LicenseRef-").to_string(),
                license_id: id,
                extracted_text: text,
            })
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&doc).map_err(SbomError::Serialize)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// DEPENDS_ON relationships: the image on what was requested, then each
/// package on what its record's dependencies resolve to among the image's
/// packages (Debian: the first alternative installed, by name or through a
/// package that provides it; Python and conda: the same site-packages or
/// prefix first). Dependencies that are not installed are left out. In
/// package order, each edge once.
fn dependencies(
    image_id: &str,
    packages: &[Package],
    ids: &[String],
    known: &Known,
) -> Vec<Relationship> {
    let mut by_name: BTreeMap<(Ecosystem, &str), Vec<usize>> = BTreeMap::new();
    let mut providers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        by_name.entry((p.ecosystem, &p.name)).or_default().push(i);
        if p.ecosystem == Ecosystem::Deb {
            for v in &p.provides {
                providers.entry(v).or_default().push(i);
            }
        }
    }
    let mut out = Vec::new();
    for (i, p) in packages.iter().enumerate() {
        if known.is_requested(p) {
            out.push(rel(image_id, "DEPENDS_ON", &ids[i]));
        }
    }
    for (i, p) in packages.iter().enumerate() {
        let mut targets: BTreeSet<usize> = BTreeSet::new();
        for group in &p.depends {
            for alt in group {
                let mut found: Vec<usize> = by_name
                    .get(&(p.ecosystem, alt.as_str()))
                    .cloned()
                    .unwrap_or_default();
                if found.is_empty() && p.ecosystem == Ecosystem::Deb {
                    found = providers.get(alt.as_str()).cloned().unwrap_or_default();
                }
                if p.ecosystem == Ecosystem::Deb
                    && found.len() > 1
                    && p.arch.as_deref() != Some("all")
                {
                    // Multi-Arch: the same architecture (or `all`) first.
                    let same: Vec<usize> = found
                        .iter()
                        .copied()
                        .filter(|&j| {
                            matches!(packages[j].arch.as_deref(), Some("all"))
                                || packages[j].arch == p.arch
                        })
                        .collect();
                    if !same.is_empty() {
                        found = same;
                    }
                }
                if p.ecosystem != Ecosystem::Deb && found.len() > 1 {
                    let near: Vec<usize> = found
                        .iter()
                        .copied()
                        .filter(|&j| packages[j].scope == p.scope)
                        .collect();
                    if !near.is_empty() {
                        found = near;
                    }
                }
                if !found.is_empty() {
                    targets.extend(found.into_iter().filter(|&j| j != i));
                    break;
                }
            }
        }
        for j in targets {
            out.push(rel(&ids[i], "DEPENDS_ON", &ids[j]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialisation_failures_are_internal_and_typed() {
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let e: kiln_core::Error = SbomError::Serialize(json).into();
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(matches!(
            e.downcast_ref::<SbomError>(),
            Some(SbomError::Serialize(_))
        ));
        assert!(e.to_string().starts_with("serialising the SBOM: "), "{e}");
    }

    fn image_fs() -> Rootfs {
        let mut fs = Rootfs::default();
        fs.insert_file("/etc/os-release", b"PRETTY_NAME=\"Debian\"\nID=debian\n");
        fs.insert_file(
            "/var/lib/dpkg/status",
            b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc (2.36-9)\nVersion: 2.36-9+deb12u4\n\n\
Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1.0\n\n\
Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n\n\
Package: bsdutils\nStatus: install ok installed\nArchitecture: amd64\nSource: util-linux\nVersion: 1:2.38.1-5+b1\n",
        );
        fs.insert_file(
            "/var/lib/dpkg/status.d/base",
            b"Package: base-files\nArchitecture: amd64\nVersion: 12.4\n",
        );
        fs.insert_file(
            "/usr/lib/python3/dist-packages/six-1.16.0.egg-info",
            b"Metadata-Version: 1.2\nName: six\nVersion: 1.16.0\nLicense: MIT\n",
        );
        fs.insert_file(
            "/usr/local/lib/python3.11/dist-packages/Demo_Pkg-2.0.dist-info/METADATA",
            b"Metadata-Version: 2.4\nName: Demo_Pkg\nVersion: 2.0\nLicense-Expression: mit or (apache-2.0 WITH llvm-exception)\n\nBody text\n",
        );
        fs.insert_file(
            "/opt/venv/lib/python3.11/site-packages/odd-0.1.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: odd\nVersion: 0.1\nLicense: Copyright (c) Someone\n        All rights reserved.\n",
        );
        fs.insert_file(
            "/opt/venv/lib/python3.11/site-packages/unknown-3.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: unknown\nVersion: 3\nLicense: UNKNOWN\n",
        );
        // Not in a site directory: ignored.
        fs.insert_file(
            "/srv/app/x-1.0.dist-info/METADATA",
            b"Name: x\nVersion: 1.0\n",
        );
        fs.insert_file(
            "/opt/conda/conda-meta/zlib-1.3-h1.json",
            format!(
                r#"{{"name":"zlib","version":"1.3","build":"h1","channel":"https://channels.example.invalid/conda-forge/linux-64","subdir":"linux-64","sha256":"{}","license":"Zlib","fn":"zlib-1.3-h1.conda"}}"#,
                "ab".repeat(32)
            )
            .as_bytes(),
        );
        fs.insert_file("/opt/conda/conda-meta/history", b"not json");
        fs
    }

    fn find<'a>(pkgs: &'a [Package], name: &str) -> &'a Package {
        pkgs.iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not found in {pkgs:#?}"))
    }

    #[test]
    fn keeps_what_it_reads() {
        assert!(keep_path("/opt/conda/conda-meta/zlib-1.3-h1.json"));
        assert!(keep_path("/conda-meta/a.json"));
        assert!(!keep_path("/opt/conda/conda-meta/history"));
        assert!(!keep_path("/opt/conda/lib/x.json"));
        assert!(keep_path("/var/lib/dpkg/status"));
        assert!(keep_path(
            "/opt/venv/lib/python3.11/site-packages/a-1.dist-info/METADATA"
        ));
    }

    #[test]
    fn scans_every_database() {
        let pkgs = scan(&image_fs());
        let names: Vec<(&str, &str)> = pkgs
            .iter()
            .map(|p| (p.ecosystem.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("conda", "zlib"),
                ("deb", "base-files"),
                ("deb", "bsdutils"),
                ("deb", "libc6"),
                ("deb", "tzdata"),
                ("pypi", "demo-pkg"),
                ("pypi", "odd"),
                ("pypi", "six"),
                ("pypi", "unknown"),
            ]
        );
        let libc = find(&pkgs, "libc6");
        assert_eq!(
            libc.purl,
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64"
        );
        assert_eq!(libc.source.as_deref(), Some("glibc"));
        assert_eq!(
            find(&pkgs, "bsdutils").purl,
            "pkg:deb/debian/bsdutils@1:2.38.1-5%2Bb1?arch=amd64"
        );
        assert_eq!(
            find(&pkgs, "base-files").locations,
            BTreeSet::from(["/var/lib/dpkg/status.d/base".to_string()])
        );
        assert_eq!(find(&pkgs, "demo-pkg").purl, "pkg:pypi/demo-pkg@2.0");
        assert_eq!(find(&pkgs, "six").license.as_deref(), Some("MIT"));
        assert_eq!(find(&pkgs, "unknown").license, None);
        assert_eq!(
            find(&pkgs, "odd").license.as_deref(),
            Some("Copyright (c) Someone\nAll rights reserved.")
        );
        let z = find(&pkgs, "zlib");
        assert_eq!(
            z.purl,
            "pkg:conda/zlib@1.3?build=h1&channel=conda-forge&subdir=linux-64&type=conda"
        );
        assert_eq!(z.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    }

    #[test]
    fn whiteouts_in_kiln_layers_remove_packages() {
        let mut fs = image_fs();
        let wh = kiln_fs::layer::Entry {
            path: "usr/lib/python3/dist-packages/.wh.six-1.16.0.egg-info".into(),
            kind: kiln_fs::layer::EntryKind::Data(std::sync::Arc::new(Vec::new())),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        fs.apply_entries(&[wh], &keep_path);
        assert!(scan(&fs).iter().all(|p| p.name != "six"));
    }

    #[test]
    fn distro_namespace_from_os_release() {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/lib/os-release", b"NAME=\"Ubuntu\"\nID=ubuntu\n");
        fs.insert_file(
            "/var/lib/dpkg/status",
            b"Package: a\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n",
        );
        assert_eq!(scan(&fs)[0].purl, "pkg:deb/ubuntu/a@1?arch=arm64");
    }

    #[test]
    fn license_expressions() {
        assert_eq!(spdx_expression("mit").as_deref(), Some("MIT"));
        assert_eq!(
            spdx_expression("(mit or apache-2.0) and bsd-3-clause").as_deref(),
            Some("(MIT OR Apache-2.0) AND BSD-3-Clause")
        );
        assert_eq!(
            spdx_expression("GPL-2.0-or-later WITH Classpath-exception-2.0").as_deref(),
            Some("GPL-2.0-or-later WITH Classpath-exception-2.0")
        );
        assert_eq!(spdx_expression("GPL-2.0+").as_deref(), Some("GPL-2.0+"));
        for bad in [
            "BSD",
            "MIT License",
            "MIT OR",
            "(MIT",
            "MIT)",
            "MIT WITH MIT",
            "LicenseRef-x",
            "",
        ] {
            assert_eq!(spdx_expression(bad), None, "{bad}");
        }
        let mut l = Licenses::default();
        assert_eq!(l.declared(None), "NOASSERTION");
        assert_eq!(l.declared(Some("  ")), "NOASSERTION");
        assert_eq!(l.declared(Some("Apache-2.0")), "Apache-2.0");
        assert_eq!(l.declared(Some("BSD")), "LicenseRef-BSD");
        assert_eq!(l.declared(Some("MIT License")), "LicenseRef-MIT-License");
        let long = "Copyright (c) Someone\nAll rights reserved.";
        let id = l.declared(Some(long));
        assert!(id.starts_with("LicenseRef-Copyright-c-Someone"), "{id}");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
        assert_eq!(l.refs.get(&id).map(String::as_str), Some(long));
        assert_eq!(l.refs.len(), 3);
    }

    #[test]
    fn purls_and_ids() {
        assert_eq!(
            purl("pypi", None, "a", "1.0+local", vec![]),
            "pkg:pypi/a@1.0%2Blocal"
        );
        assert_eq!(
            purl(
                "x",
                None,
                "a",
                "1",
                vec![("z", "1".into()), ("a", "".into()), ("b", "c d".into())]
            ),
            "pkg:x/a@1?b=c%20d&z=1"
        );
        let d = Digest::of(b"m");
        assert_eq!(
            oci_purl("127.0.0.1:5000/team/App", &d, "arm64", Some("v1")),
            format!("pkg:oci/app@{d}?arch=arm64&repository_url=127.0.0.1:5000/team/App&tag=v1")
        );
        let mut taken = BTreeSet::new();
        assert_eq!(
            unique_id("Package-deb-g++_1:2", &mut taken),
            "SPDXRef-Package-deb-g---1-2"
        );
        assert_eq!(
            unique_id("Package-deb-g+-_1:2", &mut taken),
            "SPDXRef-Package-deb-g---1-2-2"
        );
        assert_eq!(
            file_name(&Platform {
                os: "linux".into(),
                arch: "arm".into(),
                variant: Some("v7".into())
            }),
            "linux-arm-v7.spdx.json"
        );
    }

    fn doc(known: &Known, base_purls: &BTreeSet<String>) -> Value {
        let fs = image_fs();
        let pkgs = scan(&fs);
        let digest = Digest::of(b"manifest");
        let base_digest = Digest::of(b"base");
        let platform = Platform::linux("amd64");
        let bytes = document(
            &Subject {
                repository: Some("registry.example.invalid/team/app"),
                tag: Some("1.0"),
                platform: &platform,
                manifest_digest: &digest,
            },
            Some(&BaseImage {
                name: "registry.example.invalid/base:12",
                repository: Some("registry.example.invalid/base".into()),
                tag: Some("12".into()),
                manifest_digest: Some(&base_digest),
                purls: base_purls,
            }),
            &pkgs,
            known,
            1_700_000_000,
        )
        .unwrap();
        assert!(bytes.ends_with(b"}\n"));
        serde_json::from_slice(&bytes).unwrap()
    }

    /// DEPENDS_ON from each record's dependencies: Debian alternatives and
    /// Provides, Multi-Arch, Requires-Dist without extras, conda depends;
    /// the image on what was requested.
    #[test]
    fn dependency_edges() {
        let mut fs = Rootfs::default();
        fs.insert_file(
            "/var/lib/dpkg/status",
            b"Package: python3-numpy\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:1.24\n\
Depends: libblas3 | libblas.so.3, liblapack3 | liblapack.so.3, libc6 (>= 2.34), python3:any, missing-pkg\n\n\
Package: libopenblas0\nStatus: install ok installed\nArchitecture: amd64\nVersion: 0.3\nProvides: libblas.so.3, liblapack.so.3\nPre-Depends: libc6\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: arm64\nVersion: 2.36\n\n\
Package: python3\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.11\n",
        );
        let site = "/usr/lib/python3/dist-packages";
        fs.insert_file(
            &format!("{site}/app-1.0.dist-info/METADATA"),
            b"Name: app\nVersion: 1.0\nRequires-Dist: Mid_Pkg (>=1)\nRequires-Dist: docs; extra == 'docs'\n",
        );
        fs.insert_file(&format!("{site}/app-1.0.dist-info/REQUESTED"), b"");
        fs.insert_file(
            &format!("{site}/mid_pkg-1.0.dist-info/METADATA"),
            b"Name: mid-pkg\nVersion: 1.0\n",
        );
        fs.insert_file(
            &format!("{site}/docs-1.0.dist-info/METADATA"),
            b"Name: docs\nVersion: 1.0\n",
        );
        fs.insert_file(
            "/opt/conda/conda-meta/numpy-2-h.json",
            br#"{"name":"numpy","version":"2","depends":["python >=3.9","__glibc >=2.17","libzlib"],"requested_spec":"numpy"}"#,
        );
        fs.insert_file(
            "/opt/conda/conda-meta/python-3.12-h.json",
            br#"{"name":"python","version":"3.12","depends":[]}"#,
        );
        let pkgs = scan(&fs);
        let mut known = Known::default();
        known.add_requested("deb", "python3-numpy");
        let digest = Digest::of(b"m");
        let platform = Platform::linux("amd64");
        let bytes = document(
            &Subject {
                repository: None,
                tag: None,
                platform: &platform,
                manifest_digest: &digest,
            },
            None,
            &pkgs,
            &known,
            0,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        let name = |id: &str| -> String {
            if id == "SPDXRef-Image" {
                return "IMAGE".into();
            }
            let p = v["packages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["SPDXID"] == id)
                .unwrap();
            let arch = if id.ends_with("-arm64") { ":arm64" } else { "" };
            format!("{}{arch}", p["name"].as_str().unwrap())
        };
        let edges: Vec<String> = v["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "DEPENDS_ON")
            .map(|r| {
                format!(
                    "{} -> {}",
                    name(r["spdxElementId"].as_str().unwrap()),
                    name(r["relatedSpdxElement"].as_str().unwrap())
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                "IMAGE -> numpy",
                "IMAGE -> python3-numpy",
                "IMAGE -> app",
                "numpy -> python",
                "libopenblas0 -> libc6",
                "python3-numpy -> libc6",
                "python3-numpy -> libopenblas0",
                "python3-numpy -> python3",
                "app -> mid-pkg",
            ]
        );
        // Same bytes again.
        assert_eq!(
            bytes,
            document(
                &Subject {
                    repository: None,
                    tag: None,
                    platform: &platform,
                    manifest_digest: &digest,
                },
                None,
                &scan(&fs),
                &known,
                0,
            )
            .unwrap()
        );
    }

    #[test]
    fn document_is_complete_and_deterministic() {
        let mut known = Known::default();
        let deb = Digest::of(b"tzdata.deb");
        let whl = Digest::of(b"demo.whl");
        known.add_deb("tzdata", "2024a-0+deb12u1", "all", &deb);
        known.add_wheel("Demo_Pkg", "2.0", &whl);
        let base: BTreeSet<String> =
            ["pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64".into()].into();
        let v = doc(&known, &base);
        assert_eq!(v["spdxVersion"], "SPDX-2.3");
        assert_eq!(v["dataLicense"], "CC0-1.0");
        assert_eq!(v["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let digest = Digest::of(b"manifest");
        assert!(v["documentNamespace"]
            .as_str()
            .unwrap()
            .ends_with(digest.hex()));
        let pkgs = v["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 2 + 9);
        let by_name = |n: &str| pkgs.iter().find(|p| p["name"] == n).unwrap().clone();
        let image = by_name("registry.example.invalid/team/app");
        assert_eq!(image["SPDXID"], "SPDXRef-Image");
        assert_eq!(image["checksums"][0]["checksumValue"], digest.hex());
        assert_eq!(
            image["externalRefs"][0]["referenceLocator"],
            format!(
                "pkg:oci/app@{digest}?arch=amd64&repository_url=registry.example.invalid/team/app&tag=1.0"
            )
        );
        let tz = by_name("tzdata");
        assert_eq!(tz["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(tz["checksums"][0]["checksumValue"], deb.hex());
        assert_eq!(
            tz["SPDXID"],
            "SPDXRef-Package-deb-tzdata-2024a-0-deb12u1-all"
        );
        let demo = by_name("demo-pkg");
        assert_eq!(demo["checksums"][0]["checksumValue"], whl.hex());
        assert_eq!(
            demo["licenseDeclared"],
            "MIT OR (Apache-2.0 WITH LLVM-exception)"
        );
        assert!(by_name("libc6").get("checksums").is_none());
        assert_eq!(by_name("libc6")["licenseDeclared"], "NOASSERTION");
        assert_eq!(
            by_name("zlib")["checksums"][0]["checksumValue"],
            "ab".repeat(32)
        );
        let odd = by_name("odd")["licenseDeclared"]
            .as_str()
            .unwrap()
            .to_string();
        let extracted = v["hasExtractedLicensingInfos"].as_array().unwrap();
        assert!(extracted.iter().any(|e| e["licenseId"] == odd.as_str()));

        let rels: Vec<(String, String, String)> = v["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["spdxElementId"].as_str().unwrap().into(),
                    r["relationshipType"].as_str().unwrap().into(),
                    r["relatedSpdxElement"].as_str().unwrap().into(),
                )
            })
            .collect();
        let has = |a: &str, t: &str, b: &str| rels.contains(&(a.into(), t.into(), b.into()));
        assert!(has("SPDXRef-DOCUMENT", "DESCRIBES", "SPDXRef-Image"));
        assert!(has("SPDXRef-Image", "DESCENDANT_OF", "SPDXRef-BaseImage"));
        let libc_id = by_name("libc6")["SPDXID"].as_str().unwrap().to_string();
        assert!(has("SPDXRef-BaseImage", "CONTAINS", &libc_id));
        assert!(!has(
            "SPDXRef-BaseImage",
            "CONTAINS",
            tz["SPDXID"].as_str().unwrap()
        ));
        for p in pkgs.iter().skip(2) {
            assert!(has(
                "SPDXRef-Image",
                "CONTAINS",
                p["SPDXID"].as_str().unwrap()
            ));
        }
        // Same inputs, same bytes.
        assert_eq!(doc(&known, &base), v);
        let ids: BTreeSet<&str> = pkgs.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), pkgs.len(), "SPDXIDs are unique");
    }
}
