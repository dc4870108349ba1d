//! `kiln rebase`: put an image on a re-pinned base without rebuilding it.
//!
//! Only for images that say which base they sit on: kiln writes
//! `org.opencontainers.image.base.name` and `.base.digest` on every
//! manifest it makes on a base. The image's first layers must be exactly
//! that base's (digests and diff_ids); they are swapped for the new base's,
//! the image's own layers are kept as they are, the config's diff_ids and
//! history follow, and the annotations name the new base. Nothing is
//! unpacked or rebuilt: what the image's layers did on the old base is
//! taken to hold on the new one (as `crane rebase`/`docker rebase` do),
//! which is why an image that records no base is refused.

use serde_json::{json, Value};

use crate::base::{self, PlatformImage};
use crate::blobs::Blobs;
use crate::error::ImageError;
use crate::image::{Assembled, PlatformManifest};
use crate::manifest::{canonical_json, Desc, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use crate::registry::Registry;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, Result};
use kiln_fs::layer::Compression;
use kiln_spec::source::ImageSource;

const ANN_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANN_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// A rebased image, assembled in the cache and ready to push.
#[derive(Debug)]
pub struct Rebased {
    pub image: Assembled,
    /// Per platform: the old base (`name@digest`).
    pub old_bases: Vec<String>,
    pub new_base: String,
    /// The image's own layers kept, per platform.
    pub kept_layers: Vec<usize>,
}

fn refuse(image: &ImageSource, why: String) -> Error {
    ImageError::NotRebasable {
        image: image.to_string(),
        why,
    }
    .into()
}

/// Rebase `image` (a registry image kiln built) onto `new_base`.
pub fn rebase(
    image: &ImageSource,
    new_base: &ImageSource,
    blobs: &mut Blobs,
    registry: &Registry,
) -> Result<Rebased> {
    let ImageSource::Registry(image_ref) = image else {
        return Err(refuse(image, "only registry images are rebased".into()));
    };
    let gz = Compression::DEFAULT;
    let loaded = base::load(image, &[], blobs, Some(registry), gz)?;
    let mut images = Vec::new();
    let mut old_bases = Vec::new();
    let mut kept_layers = Vec::new();
    let mut replaced: Vec<(Digest, Desc)> = Vec::new();
    for pi in &loaded.images {
        let md = pi
            .manifest_digest
            .clone()
            .ok_or_else(|| refuse(image, "its manifest digest is unknown".into()))?;
        let at = oci_client::Reference::with_digest(
            image_ref.registry().into(),
            image_ref.repository().into(),
            md.to_string(),
        );
        let (raw, _) = registry.pull_manifest(&at)?;
        let manifest: Value = serde_json::from_slice(&raw)
            .map_err(|e| refuse(image, format!("its manifest is not JSON: {e}")))?;
        let ann = |k: &str| manifest.pointer(&format!("/annotations/{}", k.replace('/', "~1")));
        let (Some(name), Some(digest)) = (
            ann(ANN_BASE_NAME).and_then(Value::as_str),
            ann(ANN_BASE_DIGEST).and_then(Value::as_str),
        ) else {
            return Err(refuse(
                image,
                format!(
                    "it records no base ({ANN_BASE_NAME} and {ANN_BASE_DIGEST}): \
                     only images built on a known base can be rebased; rebuild it"
                ),
            ));
        };
        let name_ref = kiln_spec::reference::parse(name)
            .map_err(|e| refuse(image, format!("its base name `{name}`: {e}")))?;
        let old_src = ImageSource::Registry(oci_client::Reference::with_digest(
            name_ref.registry().into(),
            name_ref.repository().into(),
            digest.to_string(),
        ));
        let old = base::load(
            &old_src,
            std::slice::from_ref(&pi.platform),
            blobs,
            Some(registry),
            gz,
        )?;
        let old_pi = &old.images[0];
        let n = old_pi.layers.len();
        let sits_on = pi.layers.len() >= n
            && pi.layers[..n]
                .iter()
                .zip(&old_pi.layers)
                .all(|(a, b)| a.digest == b.digest)
            && pi.diff_ids.get(..n) == Some(&old_pi.diff_ids[..]);
        if !sits_on {
            return Err(refuse(
                image,
                format!("its first layers are not those of its recorded base {old_src}"),
            ));
        }
        let new = base::load(
            new_base,
            std::slice::from_ref(&pi.platform),
            blobs,
            Some(registry),
            gz,
        )?;
        let new_pi = &new.images[0];
        let new_name = new.name.clone().unwrap_or_else(|| new_base.to_string());
        let pm = rebased_one(pi, old_pi, new_pi, &manifest, &new_name, blobs)?;
        replaced.push((md, pm.manifest.clone()));
        old_bases.push(old_src.to_string());
        kept_layers.push(pi.layers.len() - n);
        images.push(pm);
    }
    let index = match loaded.top_media_type.as_str() {
        OCI_INDEX | "application/vnd.docker.distribution.manifest.list.v2+json" => {
            let top = loaded
                .top_digest
                .as_ref()
                .ok_or_else(|| refuse(image, "its index digest is unknown".into()))?;
            let at = oci_client::Reference::with_digest(
                image_ref.registry().into(),
                image_ref.repository().into(),
                top.to_string(),
            );
            let (raw, _) = registry.pull_manifest(&at)?;
            let mut idx: Value = serde_json::from_slice(&raw)
                .map_err(|e| refuse(image, format!("its index is not JSON: {e}")))?;
            if let Some(list) = idx.get_mut("manifests").and_then(Value::as_array_mut) {
                for m in list.iter_mut() {
                    let d = m.get("digest").and_then(Value::as_str).unwrap_or_default();
                    if let Some((_, new)) = replaced.iter().find(|(old, _)| old.to_string() == d) {
                        m["digest"] = json!(new.digest.to_string());
                        m["size"] = json!(new.size);
                    }
                }
            }
            idx["mediaType"] = json!(OCI_INDEX);
            let bytes = canonical_json(&idx);
            let digest = blobs.cache.put(&bytes)?;
            Some(Desc::new(OCI_INDEX, digest, bytes.len() as u64))
        }
        _ => None,
    };
    Ok(Rebased {
        image: Assembled { images, index },
        old_bases,
        new_base: new_base.to_string(),
        kept_layers,
    })
}

/// One platform: the new base's layers, then the image's own.
fn rebased_one(
    pi: &PlatformImage,
    old: &PlatformImage,
    new: &PlatformImage,
    manifest: &Value,
    new_name: &str,
    blobs: &Blobs,
) -> Result<PlatformManifest> {
    let n = old.layers.len();
    let mut config = pi.config.clone();
    let mut diff_ids: Vec<String> = new.diff_ids.iter().map(Digest::to_string).collect();
    diff_ids.extend(pi.diff_ids[n..].iter().map(Digest::to_string));
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    // History: the new base's entries, then the image's own (those after
    // the old base's).
    let hist = |v: &Value| -> Vec<Value> {
        v.get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let old_len = hist(&old.config).len();
    let mut history = hist(&new.config);
    history.extend(hist(&pi.config).into_iter().skip(old_len));
    config["history"] = json!(history);
    let config_bytes = canonical_json(&config);
    let config_desc = Desc::new(
        OCI_CONFIG,
        blobs.cache.put(&config_bytes)?,
        config_bytes.len() as u64,
    );
    let mut layers = new.layers.clone();
    layers.extend(pi.layers[n..].iter().cloned());
    let mut m = manifest.clone();
    m["mediaType"] = json!(OCI_MANIFEST);
    m["config"] = config_desc.to_json();
    m["layers"] = json!(layers.iter().map(Desc::to_json).collect::<Vec<_>>());
    m["annotations"][ANN_BASE_NAME] = json!(new_name);
    match &new.manifest_digest {
        Some(d) => m["annotations"][ANN_BASE_DIGEST] = json!(d.to_string()),
        None => {
            if let Some(a) = m["annotations"].as_object_mut() {
                a.remove(ANN_BASE_DIGEST);
            }
        }
    }
    let bytes = canonical_json(&m);
    let digest = blobs.cache.put(&bytes)?;
    let mut mdesc = Desc::new(OCI_MANIFEST, digest, bytes.len() as u64);
    mdesc.platform = Some(pi.platform.clone());
    Ok(PlatformManifest {
        platform: pi.platform.clone(),
        config: config_desc,
        layers,
        manifest: mdesc,
    })
}
