//! The image a build starts from: `scratch`, a registry image, an OCI layout
//! or a docker-archive. Loading reads manifests and configs only; layer
//! bytes of registry and layout bases stay where they are until an output
//! needs them (see `blobs`).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path};

use oci_client::Reference;
use serde_json::Value;

use crate::blobs::{Blobs, Origin};
use crate::manifest::{self, Desc, Document};
use crate::registry::Registry;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_core::platform::Platform;
use kiln_fs::layer::{self, Compression};
use kiln_spec::source::ImageSource;

/// A base image, one entry per platform being built.
#[derive(Debug)]
pub struct BaseImage {
    /// For the `org.opencontainers.image.base.name` label; None for scratch.
    pub name: Option<String>,
    /// Registry reference, when the base comes from a registry (enables cross-repo mounts).
    pub reference: Option<Reference>,
    /// Digest of what the reference points at (an index or a manifest).
    pub top_digest: Option<Digest>,
    /// Media type of what the reference points at.
    pub top_media_type: String,
    pub images: Vec<PlatformImage>,
}

#[derive(Debug, Clone)]
pub struct PlatformImage {
    pub platform: Platform,
    /// Digest of this platform's manifest (None for scratch and docker-archive).
    pub manifest_digest: Option<Digest>,
    /// The image config as JSON, kept whole so fields kiln does not know survive.
    pub config: Value,
    pub layers: Vec<Desc>,
    pub diff_ids: Vec<Digest>,
}

impl BaseImage {
    pub fn is_scratch(&self) -> bool {
        self.name.is_none()
    }
}

/// Load `src` for the requested platforms (empty: the base's own platform,
/// or the host's for scratch and multi-platform indexes).
pub fn load(
    src: &ImageSource,
    platforms: &[Platform],
    blobs: &mut Blobs,
    registry: Option<&Registry>,
    compression: Compression,
) -> Result<BaseImage> {
    match src {
        ImageSource::Scratch => {
            let platforms = if platforms.is_empty() {
                vec![Platform::host()]
            } else {
                platforms.to_vec()
            };
            Ok(BaseImage {
                name: None,
                reference: None,
                top_digest: None,
                top_media_type: String::new(),
                images: platforms
                    .into_iter()
                    .map(|platform| PlatformImage {
                        platform,
                        manifest_digest: None,
                        config: Value::Object(Default::default()),
                        layers: vec![],
                        diff_ids: vec![],
                    })
                    .collect(),
            })
        }
        ImageSource::Registry(r) => {
            let cache = blobs.cache;
            // Manifests are kept in the cache, so a base pinned by digest
            // (kiln.lock) loads with no registry at all (`--offline`).
            let pull = |r: &Reference| -> Result<(Vec<u8>, Digest)> {
                if let Some(want) = r.digest() {
                    let d: Digest = want.parse()?;
                    if let Some(p) = cache.verified(&d)? {
                        let b =
                            std::fs::read(&p).io_context(|| format!("reading {}", p.display()))?;
                        return Ok((b, d));
                    }
                }
                let reg = registry.ok_or_else(|| {
                    Error::network(format!(
                        "offline: the manifest of {} is not in the cache",
                        r.whole()
                    ))
                })?;
                let (b, d) = reg.pull_manifest(r)?;
                cache.put(&b)?;
                Ok((b, d))
            };
            let (bytes, digest) = pull(r)?;
            let what = r.whole();
            let images = resolve(
                &bytes,
                digest.clone(),
                platforms,
                &what,
                &mut |d: &Desc| {
                    let child = Reference::with_digest(
                        r.registry().into(),
                        r.repository().into(),
                        d.digest.to_string(),
                    );
                    let (b, got) = pull(&child)?;
                    if got != d.digest {
                        return Err(Error::network(format!(
                            "{what}: manifest {} arrived with digest {got}",
                            d.digest
                        )));
                    }
                    Ok(b)
                },
                &mut |d: &Desc| {
                    if cache.verified(&d.digest)?.is_none() {
                        let reg = registry.ok_or_else(|| {
                            Error::network(format!(
                                "offline: blob {} of {what} is not in the cache",
                                d.digest
                            ))
                        })?;
                        reg.fetch_blob(r, &d.digest, d.size, cache)?;
                    }
                    cache.read(&d.digest)
                },
            )?;
            for img in &images {
                for l in &img.layers {
                    blobs.add_origin(&l.digest, l.size, Origin::Registry(r.clone()));
                }
            }
            Ok(BaseImage {
                name: Some(r.whole()),
                reference: Some(r.clone()),
                top_digest: Some(digest),
                top_media_type: manifest::media_type_of(&bytes),
                images,
            })
        }
        ImageSource::Layout { dir, tag } => load_layout(dir, tag.as_deref(), platforms, blobs, src),
        ImageSource::DockerArchive { path } => {
            load_docker_archive(path, platforms, blobs, compression, src)
        }
    }
}

/// Follow an index (or take a manifest) down to one image per platform.
fn resolve(
    top: &[u8],
    top_digest: Digest,
    platforms: &[Platform],
    what: &str,
    fetch_manifest: &mut dyn FnMut(&Desc) -> Result<Vec<u8>>,
    fetch_blob: &mut dyn FnMut(&Desc) -> Result<Vec<u8>>,
) -> Result<Vec<PlatformImage>> {
    match manifest::parse(top, what)? {
        Document::Index(entries) => {
            let wanted = if platforms.is_empty() {
                vec![Platform::host()]
            } else {
                platforms.to_vec()
            };
            let mut out = Vec::new();
            for p in &wanted {
                let entry = manifest::select_platform(&entries, p).ok_or_else(|| {
                    Error::input(format!(
                        "{what} has no image for platform {p} (it has: {})",
                        manifest::platforms_of(&entries)
                    ))
                })?;
                let bytes = fetch_manifest(entry)?;
                if Digest::of(&bytes) != entry.digest {
                    return Err(Error::input(format!(
                        "{what}: manifest {} does not match its digest",
                        entry.digest
                    )));
                }
                let mut img = single(&bytes, entry.digest.clone(), what, fetch_blob)?;
                img.platform = p.clone();
                out.push(img);
            }
            Ok(out)
        }
        Document::Manifest { .. } => {
            let img = single(top, top_digest, what, fetch_blob)?;
            if let Some(p) = platforms.iter().find(|p| {
                !p.matches(
                    &img.platform.os,
                    &img.platform.arch,
                    img.platform.variant.as_deref(),
                )
            }) {
                return Err(Error::input(format!(
                    "{what} is a single-platform image for {}, but {p} was requested",
                    img.platform
                )));
            }
            if platforms.len() > 1 {
                return Err(Error::input(format!(
                    "{what} is a single-platform image; it cannot be the base of {} platforms",
                    platforms.len()
                )));
            }
            Ok(vec![img])
        }
    }
}

fn single(
    bytes: &[u8],
    digest: Digest,
    what: &str,
    fetch_blob: &mut dyn FnMut(&Desc) -> Result<Vec<u8>>,
) -> Result<PlatformImage> {
    let Document::Manifest { config, layers } = manifest::parse(bytes, what)? else {
        return Err(Error::input(format!(
            "{what}: an index inside an index is not supported"
        )));
    };
    let config_bytes = fetch_blob(&config)?;
    let (config, platform, diff_ids) = parse_config(&config_bytes, what)?;
    if diff_ids.len() != layers.len() {
        return Err(Error::input(format!(
            "{what}: config lists {} diff_ids but the manifest has {} layers",
            diff_ids.len(),
            layers.len()
        )));
    }
    Ok(PlatformImage {
        platform,
        manifest_digest: Some(digest),
        config,
        layers,
        diff_ids,
    })
}

/// Parse an image config (validated with oci-spec, kept as JSON).
pub fn parse_config(bytes: &[u8], what: &str) -> Result<(Value, Platform, Vec<Digest>)> {
    let typed: oci_spec::image::ImageConfiguration = serde_json::from_slice(bytes)
        .map_err(|e| Error::input(format!("{what}: invalid image config: {e}")))?;
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::input(format!("{what}: invalid image config: {e}")))?;
    let platform = Platform {
        os: typed.os().to_string(),
        arch: typed.architecture().to_string(),
        variant: typed.variant().clone(),
    };
    let diff_ids = typed
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse())
        .collect::<Result<Vec<Digest>>>()
        .map_err(|e| e.context(format!("{what}: config rootfs")))?;
    Ok((value, platform, diff_ids))
}

fn load_layout(
    dir: &Path,
    tag: Option<&str>,
    platforms: &[Platform],
    blobs: &mut Blobs,
    src: &ImageSource,
) -> Result<BaseImage> {
    let what = src.to_string();
    let index_path = dir.join("index.json");
    let index = std::fs::read(&index_path).map_err(|e| {
        Error::input(format!(
            "{what}: not an OCI layout (cannot read {}: {e})",
            index_path.display()
        ))
    })?;
    let Document::Index(entries) = manifest::parse(&index, &format!("{}", index_path.display()))?
    else {
        return Err(Error::input(format!(
            "{what}: index.json is not an image index"
        )));
    };
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| {
                e.annotations
                    .get("org.opencontainers.image.ref.name")
                    .map(String::as_str)
                    == Some(t)
            })
            .ok_or_else(|| {
                Error::input(format!(
                    "{what}: no image tagged `{t}` in {}",
                    index_path.display()
                ))
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(Error::input(format!(
                "{what}: the layout holds {} images; name one as oci:DIR:TAG",
                entries.len()
            )))
        }
    };
    let read_blob = |d: &Desc| -> Result<Vec<u8>> {
        let p = dir.join("blobs/sha256").join(d.digest.hex());
        let b = std::fs::read(&p)
            .map_err(|e| Error::input(format!("{what}: missing blob {}: {e}", d.digest)))?;
        if Digest::of(&b) != d.digest {
            return Err(Error::input(format!(
                "{what}: blob {} does not match its digest",
                d.digest
            )));
        }
        Ok(b)
    };
    let top = read_blob(entry)?;
    let mut fetch_manifest = |d: &Desc| read_blob(d);
    let mut fetch_blob = |d: &Desc| read_blob(d);
    let images = resolve(
        &top,
        entry.digest.clone(),
        platforms,
        &what,
        &mut fetch_manifest,
        &mut fetch_blob,
    )?;
    for img in &images {
        for l in &img.layers {
            blobs.add_origin(&l.digest, l.size, Origin::Layout(dir.to_path_buf()));
        }
    }
    Ok(BaseImage {
        name: Some(what.clone()),
        reference: None,
        top_digest: Some(entry.digest.clone()),
        top_media_type: entry.media_type.clone(),
        images,
    })
}

#[derive(serde::Deserialize)]
struct ArchiveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A member path of a docker-archive must stay inside the archive.
fn safe_member(p: &str, what: &str) -> Result<String> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(Error::input(format!(
            "{what}: refusing unsafe member path `{p}` in manifest.json"
        )));
    }
    Ok(p.trim_start_matches("./").to_string())
}

fn member_name(e: &tar::Entry<impl Read>) -> Option<String> {
    let p = e.path().ok()?;
    Some(p.to_string_lossy().trim_start_matches("./").to_string())
}

fn load_docker_archive(
    path: &Path,
    platforms: &[Platform],
    blobs: &mut Blobs,
    compression: Compression,
    src: &ImageSource,
) -> Result<BaseImage> {
    let what = src.to_string();
    let open = || File::open(path).map_err(|e| Error::input(format!("{what}: cannot open: {e}")));
    // Pass 1: manifest.json and configs (small).
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    {
        let mut ar = tar::Archive::new(BufReader::new(open()?));
        for e in ar
            .entries()
            .map_err(|e| Error::input(format!("{what}: not a tar archive: {e}")))?
        {
            let mut e = e.map_err(|e| Error::input(format!("{what}: corrupt archive: {e}")))?;
            let Some(name) = member_name(&e) else {
                continue;
            };
            if name == "manifest.json"
                || (name.ends_with(".json") && e.size() < (8 << 20))
                || name.starts_with("blobs/") && e.size() < (1 << 20)
            {
                let mut b = Vec::new();
                e.read_to_end(&mut b)
                    .map_err(|e| Error::input(format!("{what}: corrupt archive: {e}")))?;
                small.insert(name, b);
            }
        }
    }
    let manifest = small
        .get("manifest.json")
        .ok_or_else(|| Error::input(format!("{what}: no manifest.json: not a docker-archive")))?;
    let entries: Vec<ArchiveEntry> = serde_json::from_slice(manifest)
        .map_err(|e| Error::input(format!("{what}: invalid manifest.json: {e}")))?;
    let entry = match entries.as_slice() {
        [one] => one,
        [] => {
            return Err(Error::input(format!(
                "{what}: manifest.json lists no image"
            )))
        }
        _ => {
            return Err(Error::input(format!(
                "{what}: holds {} images; kiln reads archives with one",
                entries.len()
            )))
        }
    };
    let config_name = safe_member(&entry.config, &what)?;
    let config_bytes = small.get(&config_name).ok_or_else(|| {
        Error::input(format!(
            "{what}: config {config_name} missing from the archive"
        ))
    })?;
    let (config, platform, diff_ids) = parse_config(config_bytes, &what)?;
    // An archive has no manifest; like `docker images`, identify it by its config digest.
    let image_id = Digest::of(config_bytes);
    if let Some(p) = platforms
        .iter()
        .find(|p| !p.matches(&platform.os, &platform.arch, platform.variant.as_deref()))
    {
        return Err(Error::input(format!(
            "{what} is an image for {platform}, but {p} was requested"
        )));
    }
    let names: Vec<String> = entry
        .layers
        .iter()
        .map(|l| safe_member(l, &what))
        .collect::<Result<_>>()?;
    if names.len() != diff_ids.len() {
        return Err(Error::input(format!(
            "{what}: {} layers but {} diff_ids",
            names.len(),
            diff_ids.len()
        )));
    }
    // Pass 2: each layer, compressed into the cache (already-compressed ones kept as they are).
    let mut done: BTreeMap<String, Desc> = BTreeMap::new();
    let mut ar = tar::Archive::new(BufReader::new(open()?));
    for e in ar
        .entries()
        .map_err(|e| Error::input(format!("{what}: corrupt archive: {e}")))?
    {
        let e = e.map_err(|e| Error::input(format!("{what}: corrupt archive: {e}")))?;
        let Some(name) = member_name(&e) else {
            continue;
        };
        if !names.contains(&name) || done.contains_key(&name) {
            continue;
        }
        let idx = names.iter().position(|n| n == &name).expect("listed");
        let desc = import_archive_layer(e, &diff_ids[idx], compression, blobs, &what)?;
        done.insert(name, desc);
    }
    let layers = names
        .iter()
        .map(|n| {
            done.get(n)
                .cloned()
                .ok_or_else(|| Error::input(format!("{what}: layer {n} missing from the archive")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(BaseImage {
        name: Some(what),
        reference: None,
        top_digest: Some(image_id.clone()),
        top_media_type: "application/vnd.docker.container.image.v1+json".into(),
        images: vec![PlatformImage {
            platform,
            manifest_digest: Some(image_id),
            config,
            layers,
            diff_ids,
        }],
    })
}

fn import_archive_layer(
    mut e: impl Read,
    diff_id: &Digest,
    compression: Compression,
    blobs: &Blobs,
    what: &str,
) -> Result<Desc> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let k = e
            .read(&mut head[n..])
            .io_context(|| format!("{what}: reading layer"))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let mut reader = (&head[..n]).chain(e);
    let gz = n >= 2 && head[..2] == [0x1f, 0x8b];
    let zst = n >= 4 && head == [0x28, 0xb5, 0x2f, 0xfd];
    if gz || zst {
        let mut w = blobs.cache.writer()?;
        std::io::copy(&mut reader, &mut w).io_context(|| format!("{what}: reading layer"))?;
        let (digest, size) = w.commit(None)?;
        let mt = if gz {
            Compression::Gzip { level: 6 }
        } else {
            Compression::Zstd { level: 3 }
        }
        .media_type();
        // Verify the diff_id of what we keep.
        let f = blobs.open(&digest)?;
        let (actual, _) =
            kiln_core::digest::digest_reader(layer::decompressed(mt, BufReader::new(f))?)
                .map_err(|e| Error::input(format!("{what}: corrupt compressed layer: {e}")))?;
        if &actual != diff_id {
            return Err(Error::input(format!(
                "{what}: layer content {actual} does not match diff_id {diff_id}"
            )));
        }
        Ok(Desc::new(mt, digest, size))
    } else {
        let blob = layer::compress_tar(reader, compression, blobs.cache)?;
        if &blob.diff_id != diff_id {
            return Err(Error::input(format!(
                "{what}: layer content {} does not match diff_id {diff_id}",
                blob.diff_id
            )));
        }
        Ok(Desc::new(&blob.media_type, blob.digest, blob.size))
    }
}
