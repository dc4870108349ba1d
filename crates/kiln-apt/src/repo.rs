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
use crate::{AptError, IndexProblem, KeyringProblem};
use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_store::cache::{Cache, CacheBucket};
use kiln_store::http::Http;

/// A binary package available from a repository (or installed in the base).
#[derive(Clone, Debug)]
pub struct Package {
    pub(crate) name: String,
    pub(crate) version: Version,
    pub(crate) arch: String,
    pub(crate) multi_arch: String,
    pub(crate) essential: bool,
    pub(crate) priority: String,
    /// Depends and Pre-Depends, each group a list of alternatives.
    pub(crate) depends: Vec<Vec<Dep>>,
    pub(crate) provides: Vec<Dep>,
    /// Conflicts and Breaks.
    pub(crate) conflicts: Vec<Dep>,
    /// Where to download it (empty for installed packages).
    pub(crate) url: String,
    pub(crate) sha256: Option<Digest>,
    pub(crate) size: u64,
    pub(crate) suite: String,
    pub(crate) installed: bool,
}

/// The architecture `arch` counts as on a `native` system: `all` (or none) is native.
pub(crate) fn effective_arch<'a>(arch: &'a str, native: &'a str) -> &'a str {
    if arch == "all" || arch.is_empty() {
        native
    } else {
        arch
    }
}

impl Package {
    /// dpkg's name for the package's files in `info/`: `name:arch` for
    /// `Multi-Arch: same` packages (database format 1), else `name`.
    pub(crate) fn info_name(&self) -> String {
        if self.multi_arch == "same" {
            format!("{}:{}", self.name, self.arch)
        } else {
            self.name.clone()
        }
    }

    pub(crate) fn from_paragraph(
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
pub(crate) fn load_keyring(bytes: &[u8], what: &str) -> Result<Vec<SignedPublicKey>> {
    let bad = |problem| AptError::BadKeyring {
        keyring: what.to_string(),
        problem,
    };
    let (keys, _) = PublicOrSecret::from_reader_many(bytes)
        .map_err(|e| bad(KeyringProblem::NotOpenPgp(e.to_string())))?;
    let mut out = Vec::new();
    for k in keys {
        match k {
            Ok(PublicOrSecret::Public(k)) => out.push(k),
            Ok(PublicOrSecret::Secret(k)) => out.push(k.to_public_key()),
            Err(e) => return Err(bad(KeyringProblem::UnreadableKey(e.to_string())).into()),
        }
    }
    if out.is_empty() {
        return Err(bad(KeyringProblem::NoKeys).into());
    }
    Ok(out)
}

/// Check a cleartext-signed InRelease; returns the signed text.
fn verify_inrelease(text: &str, keys: &[SignedPublicKey], what: &str) -> Result<String> {
    let (msg, _) = CleartextSignedMessage::from_string(text).map_err(|e| AptError::NotSigned {
        repo: what.to_string(),
        detail: e.to_string(),
    })?;
    let ok = keys
        .iter()
        .any(|k| msg.verify(k).is_ok() || k.public_subkeys.iter().any(|sk| msg.verify(sk).is_ok()));
    if !ok {
        return Err(AptError::BadSignature {
            repo: what.to_string(),
        }
        .into());
    }
    Ok(msg.signed_text().replace("\r\n", "\n"))
}

/// The files a Release lists under SHA256: path → (digest, size).
fn release_hashes(release: &str) -> BTreeMap<String, (Digest, u64)> {
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
pub(crate) fn load_source(
    src: &Source,
    keyring: &[SignedPublicKey],
    archs: &[String],
    http: &Http,
    cache: &Cache,
) -> Result<Vec<Package>> {
    let base = format!("{}/dists/{}", src.uri, src.suite);
    let what = format!("{} {}", src.uri, src.suite);
    let bad = |problem| AptError::BadIndex {
        repo: what.clone(),
        problem,
    };
    let as_text =
        |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad(IndexProblem::ReleaseNotUtf8));
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
            .ok_or_else(|| AptError::NoIndex {
                repo: what.clone(),
                component: comp.clone(),
                arch: arch.clone(),
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
                    let pkg = Package::from_paragraph(&p, &src.uri, &src.suite, false).map_err(
                        |detail| IndexProblem::MalformedEntry {
                            index: name.clone(),
                            detail,
                        },
                    )?;
                    if pkg.sha256.is_some() && (ai == 0 || pkg.arch == *arch) {
                        pkgs.push(pkg);
                    }
                }
                Ok(pkgs)
            })
            .collect::<std::result::Result<_, IndexProblem>>()
            .map_err(|problem| {
                cache.forget_derived(CacheBucket::AptIndexes, &digest);
                bad(problem)
            })?;
        out.extend(chunks.into_iter().flatten());
    }
    Ok(out)
}

/// The text of the verified index blob `digest` (fetched as `name`),
/// decompressed once and then remembered: xz-decoding a whole suite's
/// Packages is most of the solve step of a warm build.
fn index_text(cache: &Cache, digest: &Digest, name: &str, what: &str) -> Result<String> {
    let bad = |problem| AptError::BadIndex {
        repo: what.to_string(),
        problem,
    };
    let bytes = match Codec::of(name) {
        None => cache.read(digest)?,
        Some(codec) => cache.derived(CacheBucket::AptIndexes, digest, || {
            let raw = cache.read(digest)?;
            let mut text = Vec::with_capacity(raw.len() * 6);
            codec
                .reader(&raw[..])?
                .read_to_end(&mut text)
                .map_err(|e| {
                    bad(IndexProblem::Corrupt {
                        index: name.to_string(),
                        detail: e.to_string(),
                    })
                })?;
            Ok(text)
        })?,
    };
    String::from_utf8(bytes).map_err(|_| {
        cache.forget_derived(CacheBucket::AptIndexes, digest);
        bad(IndexProblem::NotUtf8 {
            index: name.to_string(),
        })
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgp::composed::{ArmorOptions, KeyType, SecretKeyParamsBuilder, SignedSecretKey};
    use pgp::types::Password;
    use rand::SeedableRng;

    fn key(seed: u64) -> SignedSecretKey {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        SecretKeyParamsBuilder::default()
            .key_type(KeyType::Ed25519Legacy)
            .can_certify(true)
            .can_sign(true)
            .primary_user_id(format!("kiln test {seed}"))
            .build()
            .unwrap()
            .generate(&mut rng)
            .unwrap()
    }

    fn cause(e: &kiln_core::Error) -> &AptError {
        e.downcast_ref::<AptError>().expect("an apt error")
    }

    #[test]
    fn inrelease_verifies_only_against_its_signer() {
        let signer = key(1);
        let other = key(2);
        let text = "Origin: Kiln\nSuite: test\n";
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let signed =
            CleartextSignedMessage::sign(&mut rng, text, &signer.primary_key, &Password::empty())
                .unwrap();
        let armored = signed.to_armored_string(ArmorOptions::default()).unwrap();

        let keys = [signer.to_public_key()];
        assert_eq!(verify_inrelease(&armored, &keys, "r s").unwrap(), text);

        let e =
            verify_inrelease(&armored, &[other.to_public_key()], "http://m bookworm").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::BadSignature { repo } if repo == "http://m bookworm"),
            "{e:?}"
        );
        assert!(e.to_string().ends_with(
            "signature does not verify against the keyring; refusing to use this repository"
        ));

        let e = verify_inrelease(text, &keys, "r s").unwrap_err();
        assert!(
            matches!(cause(&e), AptError::NotSigned { repo, .. } if repo == "r s"),
            "{e:?}"
        );
    }

    #[test]
    fn keyrings_must_hold_keys() {
        let e = load_keyring(b"not a key", "k.gpg").unwrap_err();
        assert!(
            matches!(
                cause(&e),
                AptError::BadKeyring { keyring, problem: KeyringProblem::NotOpenPgp(_) | KeyringProblem::NoKeys }
                    if keyring == "k.gpg"
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("keyring k.gpg"), "{e}");
        let armored = key(4)
            .to_public_key()
            .to_armored_string(ArmorOptions::default())
            .unwrap();
        assert_eq!(load_keyring(armored.as_bytes(), "k.asc").unwrap().len(), 1);
    }

    #[test]
    fn indexes_that_do_not_read_are_refused_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"not xz").unwrap();
        let e = index_text(&cache, &d, "main/binary-amd64/Packages.xz", "r s").unwrap_err();
        assert!(
            matches!(
                cause(&e),
                AptError::BadIndex { repo, problem: IndexProblem::Corrupt { index, .. } }
                    if repo == "r s" && index == "main/binary-amd64/Packages.xz"
            ),
            "{e:?}"
        );
        let d = cache.put(b"\xff\xfe").unwrap();
        let e = index_text(&cache, &d, "main/binary-amd64/Packages", "r s").unwrap_err();
        assert!(
            matches!(
                cause(&e),
                AptError::BadIndex {
                    problem: IndexProblem::NotUtf8 { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "r s: index main/binary-amd64/Packages is not UTF-8"
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    /// A Release's checksum lists never panic on mangled input.
    #[test]
    fn release_survives_mutants() {
        let seeds: &[&[u8]] = &[
            b"Origin: Debian\nSuite: stable\nAcquire-By-Hash: yes\nSHA256:\n 6d5ab4e5f6d10a0c5a5b4b7bb1b4d1d6c4d1b0e0f0a0b0c0d0e0f0a0b0c0d0e0f 1234 main/binary-amd64/Packages.xz\n 00 5 main/binary-amd64/Packages\n",
        ];
        for m in kiln_core::mutate::mutants(seeds, 4000) {
            let _ = super::release_hashes(&String::from_utf8_lossy(&m));
        }
    }
}
