//! What an image holds, for `kiln diff` and `kiln why`: its packages and
//! their DEPENDS_ON relationships, read from the image's SPDX SBOM (an OCI
//! layout's sidecar or a referrer) or, for images without one, from its
//! filesystem (dpkg status, `*.dist-info`, `conda-meta`, as the SBOM scan
//! reads them, turned into the same document); plus its layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use kiln_core::digest::Digest;
use kiln_core::platform::Platform;
use kiln_oci::blobs::Blobs;
use kiln_oci::inspect;
use kiln_sbom as sbom;
use kiln_spec::source::ImageSource;
use kiln_store::cache::Cache;

use crate::{BuildError, Result};

/// One package of an image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pkg {
    /// `deb`, `pypi` or `conda`.
    pub ecosystem: String,
    pub name: String,
    pub version: String,
}

/// An image's packages, their dependencies and its blobs.
#[derive(Debug)]
pub struct ImageContents {
    pub reference: String,
    /// Where the packages were read: `sidecar PATH`, `referrer DIGEST` or
    /// `image filesystem`.
    pub packages_from: String,
    /// By SPDXID.
    pub packages: BTreeMap<String, Pkg>,
    /// SPDXIDs the image DEPENDS_ON (what was asked for).
    pub requested: BTreeSet<String>,
    /// SPDXIDs the base image CONTAINS.
    pub from_base: BTreeSet<String>,
    /// DEPENDS_ON edges between packages, by SPDXID.
    pub depends: BTreeMap<String, BTreeSet<String>>,
    /// The layers (digest, compressed size), in order.
    pub layers: Vec<(Digest, u64)>,
    /// The config blob, when known (not for docker-archives).
    pub config: Option<(Digest, u64)>,
}

/// Load `reference` (oci:DIR[:TAG], docker-archive:FILE, REGISTRY/REPO:TAG).
pub fn load(
    reference: &str,
    platform: Option<Platform>,
    insecure: &[String],
    cache: &Cache,
) -> Result<ImageContents> {
    let src = ImageSource::parse(reference, Path::new("."))?;
    if matches!(src, ImageSource::Scratch) {
        return Err(BuildError::InspectScratch.into());
    }
    let registry = inspect::registry_for(&src, insecure)?;
    let mut blobs = Blobs::new(cache, registry.as_ref());
    let img = inspect::open(&src, platform, &mut blobs, registry.as_ref())?;
    let one = &img.images[0];
    let found = inspect::find_sbom(
        &src,
        &img,
        registry.as_ref(),
        cache,
        sbom::MEDIA_TYPE,
        &sbom::file_name(&one.platform),
    )?;
    let (doc, packages_from) = match found {
        Some(f) => (f.bytes, f.from),
        None => {
            let fs = kiln_oci::inventory::load(one, &blobs, &sbom::keep_path)?;
            let digest = match &one.manifest_digest {
                Some(d) => d.clone(),
                None => Digest::of(&serde_json::to_vec(&one.config).unwrap_or_default()),
            };
            let doc = sbom::document(
                &sbom::Subject {
                    repository: None,
                    tag: None,
                    platform: &one.platform,
                    manifest_digest: &digest,
                },
                None,
                &sbom::scan(&fs),
                &sbom::Known::default(),
                0,
            )?;
            (doc, "image filesystem".to_string())
        }
    };
    let mut out = parse_spdx(&doc).map_err(|e| {
        kiln_core::Error::input(format!("{reference}: SBOM ({packages_from}): {e}"))
    })?;
    out.reference = src.to_string();
    out.packages_from = packages_from;
    out.layers = one
        .layers
        .iter()
        .map(|l| (l.digest.clone(), l.size))
        .collect();
    out.config = inspect::config_blob(&src, &img, cache);
    Ok(out)
}

/// Packages (those with a deb, pypi or conda purl) and relationships of an
/// SPDX 2.3 JSON document.
pub fn parse_spdx(bytes: &[u8]) -> std::result::Result<ImageContents, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let mut packages = BTreeMap::new();
    for p in v["packages"].as_array().into_iter().flatten() {
        let Some(id) = p["SPDXID"].as_str() else {
            continue;
        };
        let purl = p["externalRefs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["referenceType"] == "purl")
            .and_then(|r| r["referenceLocator"].as_str());
        let Some(ty) = purl
            .and_then(|u| u.strip_prefix("pkg:"))
            .and_then(|u| u.split('/').next())
        else {
            continue;
        };
        if !matches!(ty, "deb" | "pypi" | "conda") {
            continue;
        }
        packages.insert(
            id.to_string(),
            Pkg {
                ecosystem: ty.to_string(),
                name: p["name"].as_str().unwrap_or_default().to_string(),
                version: p["versionInfo"].as_str().unwrap_or_default().to_string(),
            },
        );
    }
    let images: BTreeSet<String> = v["relationships"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["relationshipType"] == "DESCRIBES")
        .filter_map(|r| r["relatedSpdxElement"].as_str().map(String::from))
        .collect();
    let mut requested = BTreeSet::new();
    let mut from_base = BTreeSet::new();
    let mut depends: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in v["relationships"].as_array().into_iter().flatten() {
        let (Some(a), Some(ty), Some(b)) = (
            r["spdxElementId"].as_str(),
            r["relationshipType"].as_str(),
            r["relatedSpdxElement"].as_str(),
        ) else {
            continue;
        };
        if !packages.contains_key(b) {
            continue;
        }
        match ty {
            "DEPENDS_ON" if images.contains(a) => {
                requested.insert(b.to_string());
            }
            "DEPENDS_ON" if packages.contains_key(a) => {
                depends.entry(a.into()).or_default().insert(b.into());
            }
            "CONTAINS" if !images.contains(a) && !packages.contains_key(a) => {
                from_base.insert(b.to_string());
            }
            _ => {}
        }
    }
    Ok(ImageContents {
        reference: String::new(),
        packages_from: String::new(),
        packages,
        requested,
        from_base,
        depends,
        layers: Vec::new(),
        config: None,
    })
}
