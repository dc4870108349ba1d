//! Push to a registry: every blob is checked with HEAD first and skipped
//! when present, mounted from the base's repository when it lives on the same
//! registry, uploaded otherwise; manifests go last, so a tag never points
//! at an incomplete image.

use oci_client::Reference;
use serde::Serialize;

use crate::blobs::{Blobs, Origin};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::Assembled;
use crate::manifest::Desc;
use crate::progress::Progress;
use crate::registry::Registry;

#[derive(Debug, Default, Serialize)]
pub struct PushReport {
    pub reference: String,
    pub digest: String,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    pub bytes_uploaded: u64,
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
    format!("{repo}:{tag}")
        .parse()
        .map_err(|e| Error::input(format!("invalid push reference {repo}:{tag}: {e}")))
}

fn digest_ref(r: &Reference, d: &Digest) -> Reference {
    Reference::with_digest(r.registry().into(), r.repository().into(), d.to_string())
}
