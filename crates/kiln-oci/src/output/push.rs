//! Push to a registry: every blob is checked with HEAD first and skipped
//! when present, mounted from the base's repository when it lives on the same
//! registry, uploaded otherwise; manifests go last, so a tag never points
//! at an incomplete image. SBOMs follow as OCI 1.1 referrers ([`push_sboms`]).

use oci_client::Reference;
use serde::Serialize;
use serde_json::{json, Value};

use crate::blobs::{Blobs, Origin};
use crate::image::Assembled;
use crate::manifest::{canonical_json, Desc, OCI_INDEX, OCI_MANIFEST};
use crate::registry::Registry;
use crate::ImageError;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, Result};
use kiln_core::progress::Progress;

/// The config of an artifact manifest: `{}` (OCI 1.1's empty descriptor).
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const ANN_CREATED: &str = "org.opencontainers.image.created";
const ANN_TITLE: &str = "org.opencontainers.image.title";

#[derive(Debug, Default, Serialize)]
pub struct PushReport {
    pub reference: String,
    pub digest: String,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
    /// SBOM referrer manifests pushed (one per platform manifest).
    pub referrers: usize,
    /// Their blobs (SBOMs, the empty config) uploaded; not in `blobs_uploaded`.
    pub referrer_blobs_uploaded: usize,
    pub referrer_bytes_uploaded: u64,
    /// Referrers tag schema indexes (`sha256-<hex>`) written, for registries
    /// without the referrers API.
    pub referrer_tags_updated: usize,
}

/// An SBOM in the cache, for one platform's manifest.
pub struct SbomBlob {
    /// The document's media type (the referrer's `artifactType`).
    pub media_type: &'static str,
    pub digest: Digest,
    pub size: u64,
    /// `linux-amd64.spdx.json`: the blob's title annotation.
    pub file_name: String,
}

pub fn push(
    registry: &Registry,
    repo: &str,
    tags: &[String],
    image: &Assembled,
    blobs: &Blobs,
    progress: &Progress,
) -> Result<PushReport> {
    let first = tag_ref(repo, &tags[0])?;
    let mut report = PushReport {
        reference: first.whole(),
        digest: image.top().digest.to_string(),
        ..Default::default()
    };

    let mut todo: Vec<&Desc> = Vec::new();
    for img in &image.images {
        for d in img.layers.iter().chain(std::iter::once(&img.config)) {
            if !todo.iter().any(|t| t.digest == d.digest) {
                todo.push(d);
            }
        }
    }
    let bar = progress.bar(todo.len() as u64, "pushing blobs");
    for d in todo {
        push_blob(registry, &first, d, blobs, &mut report)?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let read = |d: &Digest| -> Result<Vec<u8>> { blobs.cache.read(d) };
    if image.index.is_some() {
        for img in &image.images {
            let r = digest_ref(&first, &img.manifest.digest);
            registry.push_manifest(&r, &read(&img.manifest.digest)?, &img.manifest.media_type)?;
        }
    }
    let top = image.top();
    let top_bytes = read(&top.digest)?;
    for tag in tags {
        registry.push_manifest(&tag_ref(repo, tag)?, &top_bytes, &top.media_type)?;
    }
    Ok(report)
}

/// Attach each platform's SBOM to its manifest as an OCI 1.1 referrer: an
/// artifact manifest (`artifactType` = SPDX JSON, empty config, the SBOM as
/// its layer, `subject` = the platform manifest), pushed by digest. Where the
/// registry's referrers API does not list it (registries without the API),
/// the referrers tag schema's index `sha256-<hex of subject>` gets it added.
/// `target` is any reference in the pushed repository; `sboms` go with
/// `image.images`, in order. Returns the referrer digests.
pub fn push_sboms(
    registry: &Registry,
    target: &Reference,
    image: &Assembled,
    sboms: &[SbomBlob],
    created: &str,
    blobs: &Blobs,
    report: &mut PushReport,
) -> Result<Vec<Digest>> {
    let empty = blobs.cache.put(b"{}")?;
    let mut out = Vec::new();
    for (img, sbom) in image.images.iter().zip(sboms) {
        for (digest, size) in [(&empty, 2), (&sbom.digest, sbom.size)] {
            if !registry.blob_exists(target, digest)? {
                registry.push_blob(target, &blobs.path(digest)?, digest, size)?;
                report.referrer_blobs_uploaded += 1;
                report.referrer_bytes_uploaded += size;
            }
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": sbom.media_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": 2},
            "layers": [{
                "mediaType": sbom.media_type,
                "digest": sbom.digest.to_string(),
                "size": sbom.size,
                "annotations": {ANN_TITLE: sbom.file_name},
            }],
            "subject": {
                "mediaType": img.manifest.media_type,
                "digest": img.manifest.digest.to_string(),
                "size": img.manifest.size,
            },
            "annotations": {ANN_CREATED: created},
        });
        let bytes = canonical_json(&manifest);
        let digest = Digest::of(&bytes);
        registry.push_manifest(&digest_ref(target, &digest), &bytes, OCI_MANIFEST)?;
        report.referrers += 1;

        let subject = digest_ref(target, &img.manifest.digest);
        // A registry that cannot answer counts as one without the API.
        let listed = registry
            .referrers(&subject, sbom.media_type)
            .map(|l| l.contains(&digest.to_string()))
            .unwrap_or(false);
        if !listed {
            let entry = json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest.to_string(),
                "size": bytes.len(),
                "artifactType": sbom.media_type,
                "annotations": {ANN_CREATED: created},
            });
            if add_to_referrers_tag(registry, target, &img.manifest.digest, entry)? {
                report.referrer_tags_updated += 1;
            }
        }
        out.push(digest);
    }
    Ok(out)
}

/// The referrers tag schema: the index tagged `sha256-<hex>` lists the
/// referrers of that digest. Adds `entry` unless its digest is there already;
/// `true` when the tag was (re)written.
fn add_to_referrers_tag(
    registry: &Registry,
    repo: &Reference,
    subject: &Digest,
    entry: Value,
) -> Result<bool> {
    let r = Reference::with_tag(
        repo.registry().into(),
        repo.repository().into(),
        format!("sha256-{}", subject.hex()),
    );
    let mut index = match registry.pull_manifest_opt(&r)? {
        Some((bytes, _)) => {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if !v.get("manifests").is_some_and(Value::is_array) {
                return Err(ImageError::ReferrersTagNotIndex {
                    reference: r.whole(),
                }
                .into());
            }
            v
        }
        None => json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
    };
    let Some(list) = index.get_mut("manifests").and_then(Value::as_array_mut) else {
        return Err(Error::internal("referrers index without manifests"));
    };
    if list.iter().any(|m| m.get("digest") == entry.get("digest")) {
        return Ok(false);
    }
    list.push(entry);
    if let Some(obj) = index.as_object_mut() {
        obj.entry("mediaType").or_insert_with(|| OCI_INDEX.into());
    }
    registry.push_manifest(&r, &canonical_json(&index), OCI_INDEX)?;
    Ok(true)
}

fn push_blob(
    registry: &Registry,
    target: &Reference,
    d: &Desc,
    blobs: &Blobs,
    report: &mut PushReport,
) -> Result<()> {
    if registry.blob_exists(target, &d.digest)? {
        report.blobs_skipped += 1;
        return Ok(());
    }
    if let Some(Origin::Registry(src)) = blobs.origin(&d.digest) {
        if src.registry() == target.registry()
            && src.repository() != target.repository()
            && registry.mount_blob(target, src, &d.digest)?
        {
            report.blobs_mounted += 1;
            return Ok(());
        }
    }
    let path = blobs.path(&d.digest)?;
    registry.push_blob(target, &path, &d.digest, d.size)?;
    report.blobs_uploaded += 1;
    report.bytes_uploaded += d.size;
    Ok(())
}

pub fn tag_ref(repo: &str, tag: &str) -> Result<Reference> {
    format!("{repo}:{tag}").parse().map_err(|source| {
        ImageError::InvalidPushReference {
            repo: repo.to_string(),
            tag: tag.to_string(),
            source,
        }
        .into()
    })
}

fn digest_ref(r: &Reference, d: &Digest) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), d.to_string())
}
