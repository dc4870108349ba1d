//! Image assembly: the base's config merged with `[config]`, rootfs and
//! history extended with kiln's layers, then the manifest and (for several
//! platforms) the index — all serialised as canonical JSON so identical
//! inputs give identical digests.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::base::{BaseImage, PlatformImage};
use crate::manifest::{canonical_json, Desc, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::layer::LayerBlob;
use kiln_spec::spec::ConfigSection;
use kiln_store::cache::Cache;

const ANN_CREATED: &str = "org.opencontainers.image.created";
const ANN_BASE_NAME: &str = "org.opencontainers.image.base.name";
const ANN_BASE_DIGEST: &str = "org.opencontainers.image.base.digest";

/// What a process in an image starts with, read from its config's
/// `config` object: `Env` as pairs, `User` and `WorkingDir` (empty strings
/// count as unset).
#[derive(Debug, Clone, Default)]
pub struct ProcessDefaults {
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

impl ProcessDefaults {
    /// From an image config's `config` object.
    pub fn of(config: &Value) -> ProcessDefaults {
        let env = config["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str()?.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let text = |k: &str| {
            config[k]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        ProcessDefaults {
            env,
            user: text("User"),
            workdir: text("WorkingDir"),
        }
    }
}

/// A layer kiln added, with the line it gets in the image history.
#[derive(Clone, Debug)]
pub struct NewLayer {
    pub blob: LayerBlob,
    pub created_by: String,
}

/// One platform's finished image.
#[derive(Clone, Debug)]
pub struct PlatformManifest {
    pub platform: Platform,
    pub config: Desc,
    pub layers: Vec<Desc>,
    pub manifest: Desc,
}

/// The whole result: one manifest, or several under an index.
#[derive(Clone, Debug)]
pub struct Assembled {
    pub images: Vec<PlatformManifest>,
    /// The index, when more than one platform was built.
    pub index: Option<Desc>,
}

impl Assembled {
    /// The descriptor a tag points at.
    pub fn top(&self) -> &Desc {
        self.index.as_ref().unwrap_or(&self.images[0].manifest)
    }
}

/// Inputs shared by every platform.
pub struct AssemblyInputs<'a> {
    pub base: &'a BaseImage,
    /// kiln's layers for each platform, in the order of `base.images`.
    pub layers: &'a [Vec<NewLayer>],
    pub config: &'a ConfigSection,
    pub annotations: &'a BTreeMap<String, String>,
    pub epoch: u64,
}

pub fn assemble(inputs: &AssemblyInputs, cache: &Cache) -> Result<Assembled> {
    let created = kiln_core::time::rfc3339(inputs.epoch);
    let mut images = Vec::new();
    for (base, layers) in inputs.base.images.iter().zip(inputs.layers) {
        images.push(assemble_one(inputs, base, layers, &created, cache)?);
    }
    let index = if images.len() > 1 {
        let manifests: Vec<Value> = images.iter().map(|i| i.manifest.to_json()).collect();
        let mut ann = base_annotations(inputs, None, &created);
        ann.extend(inputs.annotations.clone());
        let idx = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
            "annotations": ann,
        });
        let bytes = canonical_json(&idx);
        let digest = cache.put(&bytes)?;
        Some(Desc::new(OCI_INDEX, digest, bytes.len() as u64))
    } else {
        None
    };
    Ok(Assembled { images, index })
}

fn base_annotations(
    inputs: &AssemblyInputs,
    base: Option<&PlatformImage>,
    created: &str,
) -> BTreeMap<String, String> {
    let mut ann = BTreeMap::new();
    ann.insert(ANN_CREATED.to_string(), created.to_string());
    if let Some(name) = &inputs.base.name {
        ann.insert(ANN_BASE_NAME.to_string(), name.clone());
        if let Some(d) = base.and_then(|b| b.manifest_digest.as_ref()) {
            ann.insert(ANN_BASE_DIGEST.to_string(), d.to_string());
        }
    }
    ann
}

fn assemble_one(
    inputs: &AssemblyInputs,
    base: &PlatformImage,
    new_layers: &[NewLayer],
    created: &str,
    cache: &Cache,
) -> Result<PlatformManifest> {
    let std_ann = base_annotations(inputs, Some(base), created);
    let config = merge_config(base, new_layers, inputs, created, &std_ann);
    let config_bytes = canonical_json(&config);
    let config_digest = cache.put(&config_bytes)?;
    let config_desc = Desc::new(OCI_CONFIG, config_digest, config_bytes.len() as u64);

    let mut layers = base.layers.clone();
    layers.extend(
        new_layers
            .iter()
            .map(|l| Desc::new(&l.blob.media_type, l.blob.digest.clone(), l.blob.size)),
    );
    let mut ann = std_ann;
    ann.extend(inputs.annotations.clone());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": layers.iter().map(Desc::to_json).collect::<Vec<_>>(),
        "annotations": ann,
    });
    let bytes = canonical_json(&manifest);
    let digest = cache.put(&bytes)?;
    let mut mdesc = Desc::new(OCI_MANIFEST, digest, bytes.len() as u64);
    mdesc.platform = Some(base.platform.clone());
    Ok(PlatformManifest {
        platform: base.platform.clone(),
        config: config_desc,
        layers,
        manifest: mdesc,
    })
}

/// Docker/OCI semantics: a new entrypoint resets an inherited cmd; env
/// entries replace same-named ones in place; maps merge with the spec winning.
fn merge_config(
    base: &PlatformImage,
    new_layers: &[NewLayer],
    inputs: &AssemblyInputs,
    created: &str,
    std_labels: &BTreeMap<String, String>,
) -> Value {
    let spec = inputs.config;
    let mut root = match &base.config {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    root.insert("created".into(), created.into());
    root.insert("architecture".into(), base.platform.arch.clone().into());
    root.insert("os".into(), base.platform.os.clone().into());
    match &base.platform.variant {
        Some(v) => {
            root.insert("variant".into(), v.clone().into());
        }
        None => {
            root.remove("variant");
        }
    }
    let mut cfg = match root.remove("config") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };

    // Env: keep order, replace by name, append new names (sorted, from the BTreeMap).
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if env.is_empty() && spec.env.keys().all(|k| k != "PATH") && base.config.get("config").is_none()
    {
        // A scratch image still gets the conventional PATH, like every runtime assumes.
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for (k, v) in &spec.env {
        let entry = format!("{k}={v}");
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(k.as_str()))
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
    cfg.insert("Env".into(), json!(env));
    if let Some(ep) = &spec.entrypoint {
        cfg.insert("Entrypoint".into(), json!(ep));
        if spec.cmd.is_none() {
            cfg.remove("Cmd");
        }
    }
    if let Some(cmd) = &spec.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    if let Some(w) = &spec.workdir {
        cfg.insert("WorkingDir".into(), w.0.clone().into());
    }
    if let Some(u) = &spec.user {
        cfg.insert("User".into(), u.0.clone().into());
    }
    if let Some(s) = &spec.stop_signal {
        cfg.insert("StopSignal".into(), s.clone().into());
    }
    if let Some(h) = &spec.healthcheck {
        // Docker's field names; durations in nanoseconds, as it stores them.
        let mut hc = serde_json::Map::new();
        hc.insert("Test".into(), json!(h.test));
        for (name, d) in [
            ("Interval", h.interval),
            ("Timeout", h.timeout),
            ("StartPeriod", h.start_period),
            ("StartInterval", h.start_interval),
        ] {
            if let Some(d) = d {
                hc.insert(name.into(), json!(d.nanos));
            }
        }
        if let Some(r) = h.retries {
            hc.insert("Retries".into(), json!(r));
        }
        cfg.insert("Healthcheck".into(), Value::Object(hc));
    }
    let mut labels = object(cfg.remove("Labels"));
    for (k, v) in std_labels.iter().chain(spec.labels.iter()) {
        labels.insert(k.clone(), v.clone().into());
    }
    cfg.insert("Labels".into(), Value::Object(labels));
    let mut ports = object(cfg.remove("ExposedPorts"));
    for p in &spec.exposed_ports {
        ports.insert(p.0.clone(), json!({}));
    }
    if !ports.is_empty() {
        cfg.insert("ExposedPorts".into(), Value::Object(ports));
    }
    let mut vols = object(cfg.remove("Volumes"));
    for v in &spec.volumes {
        vols.insert(v.0.clone(), json!({}));
    }
    if !vols.is_empty() {
        cfg.insert("Volumes".into(), Value::Object(vols));
    }
    root.insert("config".into(), Value::Object(cfg));

    let mut diff_ids: Vec<String> = base.diff_ids.iter().map(Digest::to_string).collect();
    diff_ids.extend(new_layers.iter().map(|l| l.blob.diff_id.to_string()));
    root.insert(
        "rootfs".into(),
        json!({"type": "layers", "diff_ids": diff_ids}),
    );

    let mut history = match root.remove("history") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    for l in new_layers {
        history.push(json!({"created": created, "created_by": l.created_by, "comment": "kiln"}));
    }
    root.insert("history".into(), Value::Array(history));
    Value::Object(root)
}

fn object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}
