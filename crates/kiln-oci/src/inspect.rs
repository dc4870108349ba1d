//! `kiln inspect REF`: what an image holds, from its manifest and config
//! (layer bytes are not downloaded).

use serde::Serialize;
use serde_json::Value;

use crate::base;
use crate::blobs::Blobs;
use crate::registry::Registry;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::layer::Compression;
use kiln_spec::source::ImageSource;
use kiln_store::cache::Cache;

#[derive(Debug, Serialize)]
pub struct LayerInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
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
    pub config: Value,
    pub labels: Value,
    pub history_len: usize,
}

pub fn inspect(
    src: &ImageSource,
    platform: Option<Platform>,
    insecure: &[String],
    cache: &Cache,
) -> Result<InspectReport> {
    let refs: Vec<&oci_client::Reference> = match src {
        ImageSource::Registry(r) => vec![r],
        _ => vec![],
    };
    let registry = if refs.is_empty() {
        None
    } else {
        Some(Registry::new(insecure, &refs)?)
    };
    let mut blobs = Blobs::new(cache, registry.as_ref());
    let platforms: Vec<Platform> = platform.into_iter().collect();
    let img = base::load(
        src,
        &platforms,
        &mut blobs,
        registry.as_ref(),
        Compression::Gzip { level: 6 },
    )?;
    let one = &img.images[0];
    let config = one.config.get("config").cloned().unwrap_or(Value::Null);
    Ok(InspectReport {
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
        created: one
            .config
            .get("created")
            .and_then(Value::as_str)
            .map(String::from),
        layers: one
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
            })
            .collect(),
        labels: config.get("Labels").cloned().unwrap_or(Value::Null),
        config,
        history_len: one
            .config
            .get("history")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
    })
}
