//! Repository client: `InRelease` fetched and its OpenPGP signature checked
//! against the source's keyring (rpgp), then `Packages.xz|gz` for each
//! component and architecture, checked against the sha256 that the signed
//! Release lists. Indexes are cached by that sha256, so an unchanged index is
//! never downloaded twice. Everything fails closed.

use std::collections::BTreeMap;
use std::io::Read;

use pgp::composed::{CleartextSignedMessage, PublicOrSecret, SignedPublicKey};

use rayon::prelude::*;

use super::control::{paragraph_chunks, parse_deps, parse_paragraphs, Dep, Paragraph, Version};
use super::deb::Codec;
use super::sources::Source;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, Result};
use kiln_store::cache::{Cache, CacheBucket};
use kiln_store::http::Http;

/// A binary package available from a repository (or installed in the base).
#[derive(Clone, Debug)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub arch: String,
    pub multi_arch: String,
    pub essential: bool,
    pub priority: String,
    /// Depends and Pre-Depends, each group a list of alternatives.
    pub depends: Vec<Vec<Dep>>,
    pub provides: Vec<Dep>,
    /// Conflicts and Breaks.
    pub conflicts: Vec<Dep>,
    /// Where to download it (empty for installed packages).
    pub url: String,
    pub sha256: Option<Digest>,
    pub size: u64,
    pub suite: String,
    pub installed: bool,
}

/// The architecture `arch` counts as on a `native` system: `all` (or none) is native.
pub fn effective_arch<'a>(arch: &'a str, native: &'a str) -> &'a str {
    if arch == "all" || arch.is_empty() {
        native
    } else {
        arch
    }
}

impl Package {
    /// dpkg's name for the package's files in `info/`: `name:arch` for
    /// `Multi-Arch: same` packages (database format 1), else `name`.
    pub fn info_name(&self) -> String {
        if self.multi_arch == "same" {
            format!("{}:{}", self.name, self.arch)
        } else {
            self.name.clone()
        }
    }

    pub fn from_paragraph(
        p: &Paragraph,
        base_uri: &str,
        suite: &str,
        installed: bool,
    ) -> std::result::Result<Package, String> {
        let name = p.get("Package").ok_or("missing Package")?.to_string();
        let version =
            Version::parse(p.get("Version").ok_or("missing Version")?).ok_or("bad Version")?;
        let deps = |f: &str| -> std::result::Result<Vec<Vec<Dep>>, String> {
            p.get(f)
                .map(parse_deps)
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let mut depends = deps("Pre-Depends")?;
        depends.extend(deps("Depends")?);
        let flat = |f: &str| -> std::result::Result<Vec<Dep>, String> {
            Ok(deps(f)?.into_iter().flatten().collect())
        };
        let mut conflicts = flat("Conflicts")?;
        conflicts.extend(flat("Breaks")?);
        Ok(Package {
            version,
            arch: p.get("Architecture").unwrap_or("all").to_string(),
            multi_arch: p.get("Multi-Arch").unwrap_or("no").to_string(),
            essential: p.get("Essential") == Some("yes"),
            priority: p.get("Priority").unwrap_or("optional").to_string(),
            depends,
            provides: flat("Provides")?,
            conflicts,
            url: p
                .get("Filename")
                .map(|f| format!("{base_uri}/{f}"))
                .unwrap_or_default(),
            sha256: p
                .get("SHA256")
                .and_then(|s| format!("sha256:{s}").parse().ok()),
            size: p.get("Size").and_then(|s| s.parse().ok()).unwrap_or(0),
            suite: suite.to_string(),
            installed,
            name,
        })
    }
}

/// A package for unit tests: `depends` in control-field syntax.
#[cfg(test)]
pub(crate) fn test_package(
    name: &str,
    version: &str,
    arch: &str,
    multi_arch: &str,
    depends: &str,
) -> Package {
    Package {
        name: name.into(),
        version: Version::parse(version).expect("test version"),
        arch: arch.into(),
        multi_arch: multi_arch.into(),
        essential: false,
        priority: "optional".into(),
        depends: if depends.is_empty() {
            Vec::new()
        } else {
            parse_deps(depends).expect("test depends")
        },
        provides: Vec::new(),
        conflicts: Vec::new(),
        url: String::new(),
        sha256: None,
        size: 0,
        suite: "stable".into(),
        installed: false,
    }
}

/// Load the public keys of a keyring (binary or armored, one or many keys).
pub fn load_keyring(bytes: &[u8], what: &str) -> Result<Vec<SignedPublicKey>> {
    let (keys, _) = PublicOrSecret::from_reader_many(bytes)
        .map_err(|e| Error::input(format!("keyring {what}: not an OpenPGP keyring: {e}")))?;
    let mut out = Vec::new();
    for k in keys {
        match k {
            Ok(PublicOrSecret::Public(k)) => out.push(k),
            Ok(PublicOrSecret::Secret(k)) => out.push(k.to_public_key()),
            Err(e) => return Err(Error::input(format!("keyring {what}: unreadable key: {e}"))),
        }
    }
    if out.is_empty() {
        return Err(Error::input(format!("keyring {what} holds no keys")));
    }
    Ok(out)
}

/// Check a cleartext-signed InRelease; returns the signed text.
pub fn verify_inrelease(text: &str, keys: &[SignedPublicKey], what: &str) -> Result<String> {
    let (msg, _) = CleartextSignedMessage::from_string(text)
        .map_err(|e| Error::input(format!("{what}: not a signed InRelease file: {e}")))?;
    let ok = keys
        .iter()
        .any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|sk| msg.verify(sk).is_ok()));
    if !ok {
        return Err(Error::input(format!(
            "{what}: the OpenPGP signature does not verify against the keyring; refusing to use this repository"
        )));
    }
    Ok(msg.signed_text().replace("\r\n", "\n"))
}

/// The files a Release lists under SHA256: path → (digest, size).
pub fn release_hashes(release: &str) -> BTreeMap<String, (Digest, u64)> {
    let mut out = BTreeMap::new();
    for p in parse_paragraphs(release) {
        if let Some(list) = p.get("SHA256") {
            for line in list.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let [hash, size, path] = w[..] {
                    if let (Ok(d), Ok(n)) = (
                        format!("sha256:{hash}").parse::<Digest>(),
                        size.parse::<u64>(),
                    ) {
                        out.insert(path.to_string(), (d, n));
                    }
                }
            }
        }
    }
    out
}

/// Fetch, verify and parse every index of one source for `archs` (the
/// native one first). `Architecture: all` packages are taken from the
/// native index only, since every index lists them.
pub fn load_source(
    src: &Source,
    keyring: &[SignedPublicKey],
    archs: &[String],
    http: &Http,
    cache: &Cache,
) -> Result<Vec<Package>> {
    let base = format!("{}/dists/{}", src.uri, src.suite);
    let what = format!("{} {}", src.uri, src.suite);
    let as_text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::input(format!("{what}: InRelease is not UTF-8")))
    };
    let check = |b: &[u8]| verify_inrelease(&as_text(b)?, keyring, &what).map(|_| ());
    let inrelease = http.get_cached(&format!("{base}/InRelease"), None, cache, &check)?;
    let release = verify_inrelease(&as_text(&inrelease.bytes)?, keyring, &what)?;
    let hashes = release_hashes(&release);
    let fields = parse_paragraphs(&release)
        .into_iter()
        .next()
        .unwrap_or_default();
    let by_hash = fields.get("Acquire-By-Hash") == Some("yes");
    let components: Vec<String> = if src.components.is_empty() {
        fields
            .get("Components")
            .map(|c| c.split_whitespace().map(String::from).collect())
            .unwrap_or_else(|| vec!["main".into()])
    } else {
        src.components.clone()
    };
    let mut out = Vec::new();
    for (comp, (ai, arch)) in components
        .iter()
        .flat_map(|c| archs.iter().enumerate().map(move |a| (c, a)))
    {
        let stem = format!("{comp}/binary-{arch}/Packages");
        let (name, (digest, _)) = ["xz", "gz", ""]
            .iter()
            .map(|ext| {
                if ext.is_empty() {
                    stem.clone()
                } else {
                    format!("{stem}.{ext}")
                }
            })
            .find_map(|n| hashes.get(&n).map(|h| (n.clone(), h.clone())))
            .ok_or_else(|| {
                Error::input(format!("{what}: Release lists no index for {comp}/{arch}"))
            })?;
        // With Acquire-By-Hash the index is fetched by its digest, so a
        // mirror caught mid-update cannot hand out a newer file than the
        // Release we verified (apt does the same); the plain name is the fallback.
        let url = format!("{base}/{name}");
        let fetched = match by_hash.then(|| {
            let dir = name.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            format!("{base}/{dir}/by-hash/SHA256/{}", digest.hex())
        }) {
            Some(hashed) => http
                .download(&hashed, Some(&digest), cache)
                .or_else(|_| http.download(&url, Some(&digest), cache)),
            None => http.download(&url, Some(&digest), cache),
        };
        fetched.map_err(|e| {
            e.context(format!(
                "{what}: index {name} (checked against the signed Release)"
            ))
        })?;
        let text = index_text(cache, &digest, &name, &what)?;
        // Paragraphs are independent: parse the index in chunks, in
        // parallel, keeping the index's order.
        let chunks: Vec<Vec<Package>> = paragraph_chunks(&text, 64)
            .par_iter()
            .map(|chunk| {
                let mut pkgs = Vec::new();
                for p in parse_paragraphs(chunk) {
                    let pkg = Package::from_paragraph(&p, &src.uri, &src.suite, false)
                        .map_err(|e| format!("{what}: malformed entry in {name}: {e}"))?;
                    if pkg.sha256.is_some() && (ai == 0 || pkg.arch == *arch) {
                        pkgs.push(pkg);
                    }
                }
                Ok(pkgs)
            })
            .collect::<std::result::Result<_, String>>()
            .map_err(|e| {
                cache.forget_derived(CacheBucket::AptIndexes, &digest);
                Error::input(e)
            })?;
        out.extend(chunks.into_iter().flatten());
    }
    Ok(out)
}

/// The text of the verified index blob `digest` (fetched as `name`),
/// decompressed once and then remembered: xz-decoding a whole suite's
/// Packages is most of the solve step of a warm build.
fn index_text(cache: &Cache, digest: &Digest, name: &str, what: &str) -> Result<String> {
    let bytes = match Codec::of(name) {
        None => cache.read(digest)?,
        Some(codec) => cache.derived(CacheBucket::AptIndexes, digest, || {
            let raw = cache.read(digest)?;
            let mut text = Vec::with_capacity(raw.len() * 6);
            codec
                .reader(&raw[..])?
                .read_to_end(&mut text)
                .map_err(|e| Error::input(format!("{what}: corrupt index {name}: {e}")))?;
            Ok(text)
        })?,
    };
    String::from_utf8(bytes).map_err(|_| {
        cache.forget_derived(CacheBucket::AptIndexes, digest);
        Error::input(format!("{what}: index {name} is not UTF-8"))
    })
}
