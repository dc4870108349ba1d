//! `kiln inspect REF`: what an image holds, from its manifest and config;
//! [`inspect_detailed`] also streams each layer through its decompressor
//! (sizes) and lists the manifests that refer to the image (SBOMs,
//! signatures). [`open`] and [`find_sbom`] serve `kiln diff` and `kiln why`.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};

use oci_client::Reference;
use serde::Serialize;
use serde_json::Value;

use crate::base::{self, BaseImage, PlatformImage};
use crate::blobs::{open_layout_blob, Blobs};
use crate::error::{ImageError, RegistryError};
use crate::manifest::{self, Desc, Document, MAX_DOCUMENT};
use crate::registry::Registry;
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_core::platform::Platform;
use kiln_fs::layer::Compression;
use kiln_spec::source::ImageSource;
use kiln_store::cache::Cache;

#[derive(Debug, Serialize)]
pub struct LayerInfo {
    pub digest: String,
    /// The blob's (compressed) size.
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    /// The tar stream's size (only with [`inspect_detailed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
    /// How `uncompressed_size` was found: `decompressed` (the blob, local or
    /// fetched, streamed through its decompressor; images record no diff sizes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_from: Option<&'static str>,
    /// What made the layer: its history entry.
    pub created_by: Option<String>,
    pub created: Option<String>,
    pub comment: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One entry of the config's history.
#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
    /// Index into `layers` of the layer it made (None for empty layers).
    pub layer: Option<usize>,
}

/// A manifest whose `subject` is the image (an SBOM, a signature...).
#[derive(Debug, Serialize)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `layout index.json` or `registry referrers` (the API, or the
    /// `sha256-<hex>` tag where the registry has none).
    pub found_in: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub reference: String,
    /// Digest of what the reference points at (index or manifest), when known.
    pub digest: Option<String>,
    /// Media type of what the reference points at.
    pub media_type: String,
    /// Digest of the selected platform's manifest.
    pub manifest_digest: Option<String>,
    pub platform: String,
    pub architecture: String,
    pub os: String,
    pub created: Option<String>,
    pub layers: Vec<LayerInfo>,
    /// Sum of the layers' compressed sizes.
    pub total_size: u64,
    /// Sum of their uncompressed sizes (only with [`inspect_detailed`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_uncompressed_size: Option<u64>,
    pub config: Value,
    pub labels: Value,
    /// The platform manifest's annotations.
    pub annotations: BTreeMap<String, String>,
    pub history: Vec<HistoryEntry>,
    pub history_len: usize,
    /// Only with [`inspect_detailed`].
    pub referrers: Vec<Referrer>,
    /// Where the image's SPDX SBOM is (layout sidecar or referrer), if any.
    pub sbom: Option<String>,
}

/// A registry client when `src` is a registry reference.
pub fn registry_for(src: &ImageSource, insecure: &[String]) -> Result<Option<Registry>> {
    match src {
        ImageSource::Registry(r) => Ok(Some(Registry::new(insecure, &[r])?)),
        _ => Ok(None),
    }
}

/// Load an image's manifests and config for one platform (default: the
/// host's). A registry tag that does not exist is reported with the tags
/// the repository has.
pub fn open(
    src: &ImageSource,
    platform: Option<Platform>,
    blobs: &mut Blobs,
    registry: Option<&Registry>,
) -> Result<BaseImage> {
    let platforms: Vec<Platform> = platform.into_iter().collect();
    let loaded = base::load(src, &platforms, blobs, registry, Compression::DEFAULT);
    match (loaded, src, registry) {
        (Err(e), ImageSource::Registry(r), Some(reg))
            if r.digest().is_none()
                && matches!(
                    e.downcast_ref::<RegistryError>(),
                    Some(RegistryError::NotFound { .. })
                ) =>
        {
            // A repository that does not exist either: the original error.
            match reg.list_tags(r) {
                Ok(tags) => Err(ImageError::RegistryTagNotFound {
                    reference: r.whole(),
                    repository: format!("{}/{}", r.registry(), r.repository()),
                    // Not the referrers tag schema's `sha256-<hex>` indexes.
                    tags: tags
                        .into_iter()
                        .filter(|t| {
                            !t.strip_prefix("sha256-").is_some_and(|h| {
                                h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())
                            })
                        })
                        .collect(),
                }
                .into()),
                Err(_) => Err(e),
            }
        }
        (loaded, ..) => loaded,
    }
}

/// Manifest and config only (no layer bytes, no referrers).
pub fn inspect(
    src: &ImageSource,
    platform: Option<Platform>,
    insecure: &[String],
    cache: &Cache,
) -> Result<InspectReport> {
    let registry = registry_for(src, insecure)?;
    let mut blobs = Blobs::new(cache, registry.as_ref());
    let img = open(src, platform, &mut blobs, registry.as_ref())?;
    Ok(summary(src, &img, cache))
}

/// [`inspect`] plus uncompressed layer sizes (layers not local are
/// fetched), referrers and where the SBOM is.
pub fn inspect_detailed(
    src: &ImageSource,
    platform: Option<Platform>,
    insecure: &[String],
    cache: &Cache,
    sbom_media_type: &str,
    sbom_sidecar: &dyn Fn(&Platform) -> String,
) -> Result<InspectReport> {
    let registry = registry_for(src, insecure)?;
    let mut blobs = Blobs::new(cache, registry.as_ref());
    let img = open(src, platform, &mut blobs, registry.as_ref())?;
    let mut report = summary(src, &img, cache);
    let mut total = 0;
    for (info, l) in report.layers.iter_mut().zip(&img.images[0].layers) {
        let n = uncompressed_size(&blobs, l)?;
        info.uncompressed_size = Some(n);
        info.uncompressed_from = Some("decompressed");
        total += n;
    }
    report.total_uncompressed_size = Some(total);
    report.referrers = referrers(src, &img, registry.as_ref())?;
    let sidecar = sbom_sidecar(&img.images[0].platform);
    report.sbom = find_sbom(
        src,
        &img,
        registry.as_ref(),
        cache,
        sbom_media_type,
        &sidecar,
    )?
    .map(|f| f.from);
    Ok(report)
}

fn summary(src: &ImageSource, img: &BaseImage, cache: &Cache) -> InspectReport {
    let one = &img.images[0];
    let config = one.config.get("config").cloned().unwrap_or(Value::Null);
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let mut history = Vec::new();
    let mut next_layer = 0;
    for h in one
        .config
        .get("history")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let empty_layer = h.get("empty_layer").and_then(Value::as_bool) == Some(true);
        let layer = (!empty_layer && next_layer < one.layers.len()).then(|| {
            next_layer += 1;
            next_layer - 1
        });
        history.push(HistoryEntry {
            created: s(h, "created"),
            created_by: s(h, "created_by"),
            comment: s(h, "comment"),
            empty_layer,
            layer,
        });
    }
    let layers: Vec<LayerInfo> = one
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let h = history.iter().find(|h| h.layer == Some(i));
            LayerInfo {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
                diff_id: one
                    .diff_ids
                    .get(i)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                uncompressed_size: None,
                uncompressed_from: None,
                created_by: h.and_then(|h| h.created_by.clone()),
                created: h.and_then(|h| h.created.clone()),
                comment: h.and_then(|h| h.comment.clone()),
                annotations: l.annotations.clone(),
            }
        })
        .collect();
    InspectReport {
        reference: src.to_string(),
        digest: img
            .top_digest
            .as_ref()
            .or(one.manifest_digest.as_ref())
            .map(|d| d.to_string()),
        media_type: img.top_media_type.clone(),
        manifest_digest: one.manifest_digest.as_ref().map(|d| d.to_string()),
        platform: one.platform.to_string(),
        architecture: one.platform.arch.clone(),
        os: one.platform.os.clone(),
        created: s(&one.config, "created"),
        total_size: layers.iter().map(|l| l.size).sum(),
        total_uncompressed_size: None,
        layers,
        labels: config.get("Labels").cloned().unwrap_or(Value::Null),
        config,
        annotations: manifest_annotations(src, one, cache),
        history_len: history.len(),
        history,
        referrers: Vec::new(),
        sbom: None,
    }
}

/// The platform manifest (its bytes are in the layout, or in the cache once
/// pulled; docker-archives have none).
fn manifest_value(src: &ImageSource, one: &PlatformImage, cache: &Cache) -> Option<Value> {
    let d = one.manifest_digest.as_ref()?;
    let bytes = match src {
        ImageSource::Layout { dir, .. } => read_layout_document(dir, d, MAX_DOCUMENT).ok(),
        _ => cache.read(d).ok(),
    };
    serde_json::from_slice::<Value>(&bytes?).ok()
}

fn manifest_annotations(
    src: &ImageSource,
    one: &PlatformImage,
    cache: &Cache,
) -> BTreeMap<String, String> {
    manifest_value(src, one, cache)
        .and_then(|v| serde_json::from_value(v.get("annotations")?.clone()).ok())
        .unwrap_or_default()
}

/// The config blob's digest and size, from the platform manifest (None for
/// docker-archives, whose config kiln does not keep as bytes).
pub fn config_blob(src: &ImageSource, img: &BaseImage, cache: &Cache) -> Option<(Digest, u64)> {
    let v = manifest_value(src, &img.images[0], cache)?;
    let d = v.pointer("/config/digest")?.as_str()?.parse().ok()?;
    Some((d, v.pointer("/config/size")?.as_u64()?))
}

/// Bytes of a small layout blob (a manifest), checked against its digest.
fn read_layout_document(dir: &std::path::Path, d: &Digest, max: u64) -> Result<Vec<u8>> {
    let path = dir.join("blobs/sha256").join(d.hex());
    let len = std::fs::metadata(&path)
        .io_context(|| format!("reading {}", path.display()))?
        .len();
    manifest::check_size(len.min(max + 1), &dir.display().to_string(), "manifest")?;
    let (p, f) = open_layout_blob(dir, d, len, &dir.display().to_string())?;
    let mut b = Vec::new();
    f.take(len)
        .read_to_end(&mut b)
        .io_context(|| format!("reading {}", p.display()))?;
    if Digest::of(&b) != *d {
        return Err(ImageError::DigestMismatch {
            what: dir.display().to_string(),
            item: "blob",
            digest: d.clone(),
        }
        .into());
    }
    Ok(b)
}

fn uncompressed_size(blobs: &Blobs, l: &Desc) -> Result<u64> {
    let f = BufReader::with_capacity(1 << 20, blobs.open(&l.digest)?);
    let mut r = kiln_fs::layer::decompressed(&l.media_type, f)
        .map_err(|e| e.context(format!("layer {}", l.digest)))?;
    std::io::copy(&mut r, &mut std::io::sink())
        .io_context(|| format!("decompressing layer {}", l.digest))
}

/// The manifests that name the image's platform manifest (or the index the
/// reference points at) as their `subject`.
pub fn referrers(
    src: &ImageSource,
    img: &BaseImage,
    registry: Option<&Registry>,
) -> Result<Vec<Referrer>> {
    let one = &img.images[0];
    let subjects: Vec<&Digest> = one
        .manifest_digest
        .iter()
        .chain(img.top_digest.iter())
        .collect();
    let mut out = Vec::new();
    match (src, registry) {
        (ImageSource::Layout { dir, .. }, _) => {
            let index = std::fs::read(dir.join("index.json"))
                .io_context(|| format!("reading {}/index.json", dir.display()))?;
            let Ok(Document::Index(entries)) = manifest::parse(&index, "index.json") else {
                return Ok(out);
            };
            for e in entries {
                if subjects.contains(&&e.digest) || e.size > MAX_DOCUMENT {
                    continue;
                }
                let Ok(bytes) = read_layout_document(dir, &e.digest, MAX_DOCUMENT) else {
                    continue;
                };
                let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let names_subject = v
                    .pointer("/subject/digest")
                    .and_then(Value::as_str)
                    .is_some_and(|d| subjects.iter().any(|s| s.to_string() == d));
                if names_subject {
                    out.push(Referrer {
                        digest: e.digest.to_string(),
                        media_type: e.media_type.clone(),
                        artifact_type: v
                            .get("artifactType")
                            .and_then(Value::as_str)
                            .map(String::from),
                        size: e.size,
                        annotations: serde_json::from_value(
                            v.get("annotations").cloned().unwrap_or(Value::Null),
                        )
                        .unwrap_or_default(),
                        found_in: "layout index.json",
                    });
                }
            }
        }
        (ImageSource::Registry(r), Some(reg)) => {
            for s in subjects {
                let subject = digest_ref(r, s);
                for e in reg.referrer_entries(&subject)? {
                    if out.iter().any(|o: &Referrer| o.digest == e.digest) {
                        continue;
                    }
                    out.push(Referrer {
                        digest: e.digest,
                        media_type: e.media_type,
                        artifact_type: e.artifact_type,
                        size: e.size.max(0) as u64,
                        annotations: e.annotations.unwrap_or_default(),
                        found_in: "registry referrers",
                    });
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

fn digest_ref(r: &Reference, d: &Digest) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), d.to_string())
}

/// An SBOM document found for an image.
#[derive(Debug)]
pub struct FoundSbom {
    pub bytes: Vec<u8>,
    /// Where it was: `sidecar DIR/sbom/FILE` or `referrer sha256:...`.
    pub from: String,
}

/// The image's SBOM of `media_type`: an OCI layout's sidecar `sbom/<sidecar>`
/// when it describes this manifest (kiln's documents carry the manifest
/// digest as the image package's version), else the first layer of a
/// referrer with that `artifactType`.
pub fn find_sbom(
    src: &ImageSource,
    img: &BaseImage,
    registry: Option<&Registry>,
    cache: &Cache,
    media_type: &str,
    sidecar: &str,
) -> Result<Option<FoundSbom>> {
    let one = &img.images[0];
    if let (ImageSource::Layout { dir, .. }, Some(md)) = (src, &one.manifest_digest) {
        let path = dir.join(crate::output::layout::SBOM_DIR).join(sidecar);
        if let Ok(bytes) = std::fs::read(&path) {
            let describes = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("packages").and_then(Value::as_array).cloned())
                .is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p["versionInfo"].as_str() == Some(&md.to_string()))
                });
            if describes {
                return Ok(Some(FoundSbom {
                    bytes,
                    from: format!("sidecar {}", path.display()),
                }));
            }
        }
    }
    for r in referrers(src, img, registry)? {
        if r.artifact_type.as_deref() != Some(media_type) {
            continue;
        }
        let d: Digest = r.digest.parse()?;
        let manifest = match (src, registry) {
            (ImageSource::Layout { dir, .. }, _) => read_layout_document(dir, &d, MAX_DOCUMENT)?,
            (ImageSource::Registry(rf), Some(reg)) => reg.pull_manifest(&digest_ref(rf, &d))?.0,
            _ => continue,
        };
        let v: Value = serde_json::from_slice(&manifest).unwrap_or(Value::Null);
        let Some(layer) = v
            .get("layers")
            .and_then(Value::as_array)
            .and_then(|ls| ls.iter().find(|l| l["mediaType"] == media_type))
        else {
            continue;
        };
        let (Some(ld), Some(size)) = (layer["digest"].as_str(), layer["size"].as_u64()) else {
            continue;
        };
        manifest::check_size(size, &src.to_string(), "SBOM")?;
        let ld: Digest = ld.parse()?;
        let bytes = match (src, registry) {
            (ImageSource::Layout { dir, .. }, _) => read_layout_document(dir, &ld, MAX_DOCUMENT)?,
            (ImageSource::Registry(rf), Some(reg)) => {
                if cache.verified(&ld)?.is_none() {
                    reg.fetch_blob(rf, &ld, size, cache)?;
                }
                cache.read(&ld)?
            }
            _ => continue,
        };
        return Ok(Some(FoundSbom {
            bytes,
            from: format!("referrer {}", r.digest),
        }));
    }
    Ok(None)
}

/// The report for a terminal.
pub fn render(r: &InspectReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(s, "{:<12}{v}", format!("{k}:"));
    };
    line("reference", &r.reference);
    if let Some(d) = &r.digest {
        line("digest", d);
    }
    if let Some(d) = r
        .manifest_digest
        .as_ref()
        .filter(|d| r.digest.as_ref() != Some(*d))
    {
        line("manifest", d);
    }
    line("platform", &r.platform);
    if let Some(c) = &r.created {
        line("created", c);
    }
    let total = match r.total_uncompressed_size {
        Some(u) => format!(
            "{} compressed, {} uncompressed (layers decompressed)",
            r.total_size, u
        ),
        None => format!("{} compressed", r.total_size),
    };
    line("size", &total);
    line("layers", &r.layers.len());
    for l in &r.layers {
        let unc = l
            .uncompressed_size
            .map_or_else(String::new, |u| format!(" -> {u:>12}"));
        let mut t = format!("  {} {:>12}{unc}  {}", l.digest, l.size, l.media_type);
        if let Some(c) = &l.created_by {
            t.push_str(&format!("\n      created by: {c}"));
        }
        for (k, v) in &l.annotations {
            t.push_str(&format!("\n      {k}={v}"));
        }
        let _ = writeln!(s, "{t}");
    }
    let _ = writeln!(s, "history:    {} entries", r.history.len());
    for h in &r.history {
        let what = match h.layer {
            Some(i) => format!("layer {}", i + 1),
            None => "no layer".into(),
        };
        let mut t = format!(
            "  [{what}] {}",
            h.created_by.as_deref().unwrap_or("(no created_by)")
        );
        if let Some(c) = &h.created {
            t.push_str(&format!("  ({c})"));
        }
        if let Some(c) = &h.comment {
            t.push_str(&format!("  # {c}"));
        }
        let _ = writeln!(s, "{t}");
    }
    if let Some(labels) = r.labels.as_object().filter(|m| !m.is_empty()) {
        // A workspace image's breadcrumb trail (`<prefix>.trail`), with the
        // version each science image of it recorded.
        for (k, v) in labels.iter().filter(|(k, _)| k.ends_with(".trail")) {
            let prefix = k.trim_end_matches(".trail");
            let _ = writeln!(s, "trail: {}", v.as_str().unwrap_or_default());
            for step in v.as_str().unwrap_or_default().split(" > ") {
                let key = format!("{prefix}.science.{step}.version");
                if let Some(version) = labels.get(&key).and_then(|v| v.as_str()) {
                    let _ = writeln!(s, "  {step} {version}");
                }
            }
        }
        let _ = writeln!(s, "labels:");
        for (k, v) in labels {
            let _ = writeln!(s, "  {k}={}", v.as_str().unwrap_or(&v.to_string()));
        }
    }
    if !r.annotations.is_empty() {
        let _ = writeln!(s, "annotations:");
        for (k, v) in &r.annotations {
            let _ = writeln!(s, "  {k}={v}");
        }
    }
    let _ = writeln!(s, "referrers:  {}", r.referrers.len());
    for f in &r.referrers {
        let _ = writeln!(
            s,
            "  {} {} ({})",
            f.digest,
            f.artifact_type.as_deref().unwrap_or(&f.media_type),
            f.found_in
        );
    }
    let _ = writeln!(
        s,
        "sbom:       {}",
        r.sbom.as_deref().unwrap_or("none found")
    );
    let _ = writeln!(
        s,
        "config:     {}",
        serde_json::to_string_pretty(&r.config).unwrap_or_default()
    );
    s
}
