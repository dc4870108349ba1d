//! Reading manifests and indexes (OCI and Docker v2 shapes) with oci-spec,
//! and writing our own in canonical JSON.

use std::collections::BTreeMap;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::Value;

use crate::error::{DocumentKind, ImageError};
use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_core::platform::Platform;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// The largest index, manifest or image config kiln reads (registries must
/// take manifests of 4 MiB; configs with a long history run larger). Checked
/// before parsing, and before reading where the size is known first.
pub(crate) const MAX_DOCUMENT: u64 = 8 << 20;

/// A content descriptor, in kiln's own terms.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

impl Desc {
    pub(crate) fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Desc {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("mediaType".into(), self.media_type.clone().into());
        m.insert("digest".into(), self.digest.to_string().into());
        m.insert("size".into(), self.size.into());
        if let Some(p) = &self.platform {
            let mut pm = serde_json::Map::new();
            pm.insert("architecture".into(), p.arch.clone().into());
            pm.insert("os".into(), p.os.clone().into());
            if let Some(v) = &p.variant {
                pm.insert("variant".into(), v.clone().into());
            }
            m.insert("platform".into(), Value::Object(pm));
        }
        if !self.annotations.is_empty() {
            m.insert(
                "annotations".into(),
                serde_json::to_value(&self.annotations).expect("map"),
            );
        }
        Value::Object(m)
    }
}

/// What a manifest-or-index document turned out to be.
pub enum Document {
    Index(Vec<Desc>),
    Manifest { config: Desc, layers: Vec<Desc> },
}

/// Docker media types map to their OCI equivalents (same bytes).
fn normalize_layer_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip".into()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.oci.image.layer.v1.tar".into()
        }
        other => other.to_string(),
    }
}

fn digest_of(d: &oci_spec::image::Digest) -> Result<Digest> {
    d.to_string().parse()
}

fn convert(d: &oci_spec::image::Descriptor) -> Result<Desc> {
    Ok(Desc {
        media_type: d.media_type().to_string(),
        digest: digest_of(d.digest())?,
        size: d.size(),
        platform: d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            arch: p.architecture().to_string(),
            variant: p.variant().clone(),
        }),
        annotations: d
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    })
}

/// Refuse a document (or a descriptor of one) larger than [`MAX_DOCUMENT`].
pub(crate) fn check_size(size: u64, what: &str, item: &str) -> Result<()> {
    if size > MAX_DOCUMENT {
        return Err(ImageError::TooLarge {
            what: what.to_string(),
            item: item.to_string(),
            size,
            max: MAX_DOCUMENT,
        }
        .into());
    }
    Ok(())
}

/// Parse bytes that are either an image index / manifest list or an image manifest.
pub fn parse(bytes: &[u8], what: &str) -> Result<Document> {
    check_size(bytes.len() as u64, what, "manifest")?;
    let unparsable = |document| {
        move |source| ImageError::Unparsable {
            what: what.to_string(),
            document,
            source,
        }
    };
    let v: Value = serde_json::from_slice(bytes).map_err(unparsable(DocumentKind::Json))?;
    if v.get("manifests").is_some() {
        let idx: ImageIndex = serde_json::from_value(v).map_err(unparsable(DocumentKind::Index))?;
        let entries = idx.manifests().iter().map(convert).collect::<Result<_>>()?;
        Ok(Document::Index(entries))
    } else if v.get("layers").is_some() {
        let m: ImageManifest =
            serde_json::from_value(v).map_err(unparsable(DocumentKind::Manifest))?;
        let config = convert(m.config())?;
        let layers = m
            .layers()
            .iter()
            .map(|l| {
                let mut d = convert(l)?;
                d.media_type = normalize_layer_type(&d.media_type);
                Ok(d)
            })
            .collect::<Result<_>>()?;
        Ok(Document::Manifest { config, layers })
    } else {
        Err(ImageError::NotManifestOrIndex {
            what: what.to_string(),
        }
        .into())
    }
}

/// The media type a manifest or index declares (or implies, for old ones without the field).
pub(crate) fn media_type_of(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    match v.get("mediaType").and_then(Value::as_str) {
        Some(mt) => mt.to_string(),
        None if v.get("manifests").is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    }
}

/// JSON with object keys sorted at every level and no whitespace: the same
/// value always serialises to the same bytes, whatever map type produced it.
pub(crate) fn canonical_json(v: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).expect("serialising a JSON value cannot fail")
}

/// Pick the entries of an index matching `platform`.
pub(crate) fn select_platform<'a>(entries: &'a [Desc], platform: &Platform) -> Option<&'a Desc> {
    entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| platform.matches(&p.os, &p.arch, p.variant.as_deref()))
    })
}

/// `os/arch[/variant]` list of an index, for error messages.
pub(crate) fn platforms_of(entries: &[Desc]) -> String {
    let mut v: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref().map(|p| p.to_string()))
        .collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_that_do_not_parse_say_which_they_are() {
        let err = parse(b"{not json", "oci:x").err().unwrap();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::Unparsable {
                document: DocumentKind::Json,
                ..
            })
        ));
        assert!(err.to_string().starts_with("oci:x: not valid JSON: "));
        assert_eq!(err.exit_code(), 2);

        let err = parse(br#"{"schemaVersion":2,"manifests":{}}"#, "oci:x")
            .err()
            .unwrap();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::Unparsable {
                document: DocumentKind::Index,
                ..
            })
        ));
        assert!(err.to_string().starts_with("oci:x: invalid image index: "));

        let err = parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, "old:1")
            .err()
            .unwrap();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::NotManifestOrIndex { what }) if what == "old:1"
        ));
        assert_eq!(
            err.to_string(),
            "old:1: neither an image manifest nor an index (schema 1 manifests are not supported)"
        );
    }
}

#[cfg(test)]
mod mutation_tests {
    /// OCI/Docker manifests and indexes never panic on mangled input.
    #[test]
    fn documents_survive_mutants() {
        let seeds: &[&[u8]] = &[
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#,
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#,
        ];
        for m in kiln_core::mutate::mutants(seeds, 3000) {
            let _ = super::parse(&m, "fuzz");
        }
    }
}
