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

use crate::blobs::{open_layout_blob, read_document, Blobs, DocumentReadError, Origin};
use crate::error::{DocumentKind, ImageError, RegistryError};
use crate::manifest::{self, Desc, Document};
use crate::registry::Registry;
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
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
    /// The image of `platform`, one the base was loaded for.
    ///
    /// # Panics
    /// When the base has no such platform: callers ask only for the
    /// platforms the base was loaded for.
    pub fn image_for(&self, platform: &kiln_core::platform::Platform) -> &PlatformImage {
        self.images
            .iter()
            .find(|i| &i.platform == platform)
            .expect("a platform the base was loaded for")
    }

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
                let reg = registry.ok_or_else(|| RegistryError::OfflineManifest {
                    reference: r.whole(),
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
                    // `pull` checks a digest reference's bytes against it.
                    Ok(pull(&child)?.0)
                },
                &mut |d: &Desc| {
                    if cache.verified(&d.digest)?.is_none() {
                        let reg = registry.ok_or_else(|| RegistryError::OfflineBlob {
                            digest: d.digest.clone(),
                            image: what.clone(),
                            hint: true,
                        })?;
                        reg.fetch_blob(r, &d.digest, d.size, cache)?;
                    }
                    cache.read(&d.digest)
                },
            )?;
            for img in &images {
                for (l, diff_id) in img.layers.iter().zip(&img.diff_ids) {
                    blobs.add_layer(l, diff_id, Origin::Registry(r.clone()), &what);
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
                    ImageError::PlatformMissing {
                        what: what.to_string(),
                        requested: p.clone(),
                        available: manifest::platforms_of(&entries),
                    }
                })?;
                manifest::check_size(entry.size, what, "manifest")?;
                let bytes = fetch_manifest(entry)?;
                if Digest::of(&bytes) != entry.digest {
                    return Err(ImageError::DigestMismatch {
                        what: what.to_string(),
                        item: "manifest",
                        digest: entry.digest.clone(),
                    }
                    .into());
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
                return Err(ImageError::PlatformMismatch {
                    what: what.to_string(),
                    has: img.platform,
                    requested: p.clone(),
                    single: true,
                }
                .into());
            }
            if platforms.len() > 1 {
                return Err(ImageError::SinglePlatform {
                    what: what.to_string(),
                    requested: platforms.len(),
                }
                .into());
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
        return Err(ImageError::NestedIndex {
            what: what.to_string(),
        }
        .into());
    };
    manifest::check_size(config.size, what, "config")?;
    let config_bytes = fetch_blob(&config)?;
    let (config, platform, diff_ids) = parse_config(&config_bytes, what)?;
    if diff_ids.len() != layers.len() {
        return Err(ImageError::LayerCount {
            what: what.to_string(),
            layers: layers.len(),
            diff_ids: diff_ids.len(),
            in_archive: false,
        }
        .into());
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
fn parse_config(bytes: &[u8], what: &str) -> Result<(Value, Platform, Vec<Digest>)> {
    manifest::check_size(bytes.len() as u64, what, "config")?;
    let invalid = |source| ImageError::Unparsable {
        what: what.to_string(),
        document: DocumentKind::Config,
        source,
    };
    let typed: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(bytes).map_err(invalid)?;
    let value: Value = serde_json::from_slice(bytes).map_err(invalid)?;
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
    // The spec's marker: a directory without it is not a layout (whatever
    // else it holds).
    let read = |p: &Path, item: &str| -> Result<Vec<u8>> {
        read_document(p, &what, item).map_err(|e| match e {
            DocumentReadError::Io(source) => ImageError::NotALayout {
                what: what.clone(),
                index: p.to_path_buf(),
                source,
            }
            .into(),
            DocumentReadError::Refused(e) => e,
        })
    };
    let marker = dir.join("oci-layout");
    let version = read(&marker, "oci-layout").map(|b| {
        serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v["imageLayoutVersion"].as_str().map(String::from))
    })?;
    if version.as_deref() != Some("1.0.0") {
        return Err(ImageError::LayoutVersion {
            what,
            version: version.unwrap_or_default(),
        }
        .into());
    }
    let index_path = dir.join("index.json");
    let index = read(&index_path, "index.json")?;
    let Document::Index(entries) = manifest::parse(&index, &format!("{}", index_path.display()))?
    else {
        return Err(ImageError::LayoutNotIndexed { what }.into());
    };
    let tag_of = |e: &Desc| {
        e.annotations
            .get("org.opencontainers.image.ref.name")
            .cloned()
    };
    let tags = || entries.iter().filter_map(tag_of).collect::<Vec<_>>();
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| tag_of(e).as_deref() == Some(t))
            .ok_or_else(|| ImageError::TagNotFound {
                what: what.clone(),
                tag: t.to_string(),
                index: index_path.clone(),
                tags: tags(),
            })?,
        None if entries.len() == 1 => &entries[0],
        None => {
            return Err(ImageError::AmbiguousLayout {
                what,
                count: entries.len(),
                tags: tags(),
            }
            .into())
        }
    };
    // Manifests and configs: regular files of their declared size (bounded),
    // whose bytes match their digest.
    let read_blob = |d: &Desc| -> Result<Vec<u8>> {
        manifest::check_size(d.size, &what, &format!("blob {}", d.digest))?;
        let (p, f) = open_layout_blob(dir, &d.digest, d.size, &what)?;
        let mut b = Vec::with_capacity(d.size as usize);
        f.take(d.size)
            .read_to_end(&mut b)
            .io_context(|| format!("reading {}", p.display()))?;
        if Digest::of(&b) != d.digest {
            return Err(ImageError::DigestMismatch {
                what: what.clone(),
                item: "blob",
                digest: d.digest.clone(),
            }
            .into());
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
        for (l, diff_id) in img.layers.iter().zip(&img.diff_ids) {
            blobs.add_layer(l, diff_id, Origin::Layout(dir.to_path_buf()), &what);
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
        return Err(ImageError::UnsafeMember {
            what: what.to_string(),
            path: p.to_string(),
        }
        .into());
    }
    Ok(p.trim_start_matches("./").to_string())
}

fn member_name(e: &tar::Entry<impl Read>) -> Option<String> {
    let p = e.path().ok()?;
    Some(p.to_string_lossy().trim_start_matches("./").to_string())
}

/// What a tar member that is not a regular file is, for messages.
fn irregular_kind(t: tar::EntryType) -> Option<&'static str> {
    use tar::EntryType as T;
    match t {
        T::Regular | T::Continuous => None,
        T::Symlink => Some("a symlink"),
        T::Link => Some("a hard link"),
        T::Directory => Some("a directory"),
        T::Fifo => Some("a FIFO"),
        T::Char | T::Block => Some("a device"),
        _ => Some("a special member"),
    }
}

fn load_docker_archive(
    path: &Path,
    platforms: &[Platform],
    blobs: &mut Blobs,
    compression: Compression,
    src: &ImageSource,
) -> Result<BaseImage> {
    let what = src.to_string();
    let unreadable = |problem| {
        let what = &what;
        move |source| ImageError::UnreadableArchive {
            what: what.clone(),
            problem,
            source,
        }
    };
    let open = || -> Result<File> { Ok(File::open(path).map_err(unreadable("cannot open"))?) };
    // Pass 1: manifest.json and configs (small).
    let mut small: HashMap<String, Vec<u8>> = HashMap::new();
    // Members that are links, devices or directories: never read as a
    // document or a layer (a symlink's target is not the archive's).
    let mut irregular: HashMap<String, &'static str> = HashMap::new();
    {
        let mut ar = tar::Archive::new(BufReader::new(open()?));
        for e in ar.entries().map_err(unreadable("not a tar archive"))? {
            let mut e = e.map_err(unreadable("corrupt archive"))?;
            let Some(name) = member_name(&e) else {
                continue;
            };
            if let Some(kind) = irregular_kind(e.header().entry_type()) {
                irregular.insert(name, kind);
                continue;
            }
            if name == "manifest.json"
                || (name.ends_with(".json") && e.size() < (8 << 20))
                || name.starts_with("blobs/") && e.size() < (1 << 20)
            {
                let mut b = Vec::new();
                e.read_to_end(&mut b)
                    .map_err(unreadable("corrupt archive"))?;
                small.insert(name, b);
            }
        }
    }
    let refuse = |name: &str| -> Result<()> {
        match irregular.get(name) {
            Some(kind) => Err(ImageError::NotRegular {
                what: what.clone(),
                item: format!("member {name}"),
                kind,
            }
            .into()),
            None => Ok(()),
        }
    };
    refuse("manifest.json")?;
    let manifest = small
        .get("manifest.json")
        .ok_or_else(|| ImageError::NotDockerArchive { what: what.clone() })?;
    let entries: Vec<ArchiveEntry> =
        serde_json::from_slice(manifest).map_err(|source| ImageError::Unparsable {
            what: what.clone(),
            document: DocumentKind::ArchiveManifest,
            source,
        })?;
    let [entry] = entries.as_slice() else {
        return Err(ImageError::ArchiveImageCount {
            what,
            count: entries.len(),
        }
        .into());
    };
    let config_name = safe_member(&entry.config, &what)?;
    refuse(&config_name)?;
    let config_bytes = small
        .get(&config_name)
        .ok_or_else(|| ImageError::MissingMember {
            what: what.clone(),
            item: "config",
            name: config_name.clone(),
        })?;
    let (config, platform, diff_ids) = parse_config(config_bytes, &what)?;
    // An archive has no manifest; like `docker images`, identify it by its config digest.
    let image_id = Digest::of(config_bytes);
    if let Some(p) = platforms
        .iter()
        .find(|p| !p.matches(&platform.os, &platform.arch, platform.variant.as_deref()))
    {
        return Err(ImageError::PlatformMismatch {
            what,
            has: platform,
            requested: p.clone(),
            single: false,
        }
        .into());
    }
    let names: Vec<String> = entry
        .layers
        .iter()
        .map(|l| safe_member(l, &what))
        .collect::<Result<_>>()?;
    for n in &names {
        refuse(n)?;
    }
    if names.len() != diff_ids.len() {
        return Err(ImageError::LayerCount {
            what,
            layers: names.len(),
            diff_ids: diff_ids.len(),
            in_archive: true,
        }
        .into());
    }
    // Pass 2: each layer, compressed into the cache (already-compressed ones kept as they are).
    let mut done: BTreeMap<String, Desc> = BTreeMap::new();
    let mut ar = tar::Archive::new(BufReader::new(open()?));
    for e in ar.entries().map_err(unreadable("corrupt archive"))? {
        let e = e.map_err(unreadable("corrupt archive"))?;
        let Some(name) = member_name(&e) else {
            continue;
        };
        if !names.contains(&name)
            || done.contains_key(&name)
            || irregular_kind(e.header().entry_type()).is_some()
        {
            continue;
        }
        let idx = names.iter().position(|n| n == &name).expect("listed");
        let desc = import_archive_layer(e, &diff_ids[idx], compression, blobs, &what)?;
        done.insert(name, desc);
    }
    let layers = names
        .iter()
        .map(|n| {
            done.get(n).cloned().ok_or_else(|| {
                ImageError::MissingMember {
                    what: what.clone(),
                    item: "layer",
                    name: n.clone(),
                }
                .into()
            })
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
            Compression::DEFAULT
        } else {
            Compression::Zstd { level: 3 }
        }
        .media_type();
        // Verify the diff_id of what we keep.
        let f = blobs.open(&digest)?;
        let (actual, _) =
            kiln_core::digest::digest_reader(layer::decompressed(mt, BufReader::new(f))?).map_err(
                |source| ImageError::UnreadableArchive {
                    what: what.to_string(),
                    problem: "corrupt compressed layer",
                    source,
                },
            )?;
        if &actual != diff_id {
            return Err(ImageError::DiffIdMismatch {
                what: what.to_string(),
                actual,
                diff_id: diff_id.clone(),
            }
            .into());
        }
        Ok(Desc::new(mt, digest, size))
    } else {
        let blob = layer::compress_tar(reader, compression, blobs.cache)?;
        if &blob.diff_id != diff_id {
            return Err(ImageError::DiffIdMismatch {
                what: what.to_string(),
                actual: blob.diff_id,
                diff_id: diff_id.clone(),
            }
            .into());
        }
        Ok(Desc::new(&blob.media_type, blob.digest, blob.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Error;
    use kiln_store::cache::Cache;

    fn entry(tag: &str, byte: u8) -> serde_json::Value {
        serde_json::json!({
            "mediaType": manifest::OCI_MANIFEST,
            "digest": Digest::of(&[byte]).to_string(),
            "size": 1,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        })
    }

    fn layout_with_two_images() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [entry("a", 1), entry("b", 2)],
        });
        std::fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        dir
    }

    fn load_source(src: &ImageSource) -> Result<BaseImage> {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let mut blobs = Blobs::new(&cache, None);
        load(src, &[], &mut blobs, None, Compression::DEFAULT)
    }

    #[test]
    fn layout_tags_that_do_not_exist_list_the_ones_that_do() {
        let dir = layout_with_two_images();
        let src = ImageSource::Layout {
            dir: dir.path().to_path_buf(),
            tag: Some("c".into()),
        };
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::TagNotFound { tag, tags, .. }) if tag == "c" && tags == &["a", "b"]
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("no image tagged `c` in"));

        let src = ImageSource::Layout {
            dir: dir.path().to_path_buf(),
            tag: None,
        };
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::AmbiguousLayout { count: 2, tags, .. }) if tags == &["a", "b"]
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .ends_with(": the layout holds 2 images; name one as oci:DIR:TAG"));

        // Tag `a` exists, but its manifest blob does not.
        let src = ImageSource::Layout {
            dir: dir.path().to_path_buf(),
            tag: Some("a".into()),
        };
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::MissingBlob { digest, .. }) if digest == &Digest::of(&[1])
            ),
            "{err:?}"
        );

        let src = ImageSource::Layout {
            dir: dir.path().join("nope"),
            tag: None,
        };
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::NotALayout { .. })
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .contains(": not an OCI layout (cannot read "));
    }

    #[test]
    fn a_platform_the_base_lacks_is_named_with_those_it_has() {
        let mut amd = entry("x", 1);
        amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
        amd["annotations"] = serde_json::json!({});
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [amd]});
        let bytes = serde_json::to_vec(&index).unwrap();
        let err = resolve(
            &bytes,
            Digest::of(&bytes),
            &[Platform::linux("arm64")],
            "example.org/base:1",
            &mut |_| unreachable!(),
            &mut |_| unreachable!(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::PlatformMissing { requested, available, .. })
                    if requested == &Platform::linux("arm64") && available == "linux/amd64"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "example.org/base:1 has no image for platform linux/arm64 (it has: linux/amd64)"
        );
        assert_eq!(err.exit_code(), 2);
    }

    fn archive(members: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
        f
    }

    fn load_archive(f: &tempfile::NamedTempFile) -> Error {
        let src = ImageSource::DockerArchive {
            path: f.path().to_path_buf(),
        };
        let err = load_source(&src).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err
    }

    #[test]
    fn archives_kiln_cannot_read_say_why() {
        let err = load_archive(&archive(&[("a.json", b"{}")]));
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::NotDockerArchive { .. })
        ));
        assert!(err
            .to_string()
            .ends_with(": no manifest.json: not a docker-archive"));

        let two = br#"[{"Config":"a.json","Layers":[]},{"Config":"b.json","Layers":[]}]"#;
        let err = load_archive(&archive(&[("manifest.json", two)]));
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::ArchiveImageCount { count: 2, .. })
        ));
        assert!(err
            .to_string()
            .ends_with(": holds 2 images; kiln reads archives with one"));
        let err = load_archive(&archive(&[("manifest.json", b"[]")]));
        assert!(err.to_string().ends_with(": manifest.json lists no image"));

        let hostile = br#"[{"Config":"../../etc/passwd","Layers":[]}]"#;
        let err = load_archive(&archive(&[("manifest.json", hostile)]));
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::UnsafeMember { path, .. }) if path == "../../etc/passwd"
            ),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .ends_with(": refusing unsafe member path `../../etc/passwd` in manifest.json"));
        assert!(safe_member("/abs", "x").is_err());
        assert_eq!(safe_member("./a/b.tar", "x").unwrap(), "a/b.tar");

        let missing = br#"[{"Config":"c.json","Layers":[]}]"#;
        let err = load_archive(&archive(&[("manifest.json", missing)]));
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::MissingMember { item: "config", name, .. }) if name == "c.json"
        ));
    }

    #[test]
    fn links_and_fifos_are_never_read_as_documents() {
        // A docker-archive whose manifest.json is a symlink to a host file.
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "manifest.json", "/etc/passwd")
            .unwrap();
        b.finish().unwrap();
        let err = load_archive(&f);
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::NotRegular { kind: "a symlink", item, .. }) if item == "member manifest.json"
            ),
            "{err:?}"
        );

        // A layout whose index.json is a FIFO: refused at once (reading it would block).
        let dir = layout_with_two_images();
        let index = dir.path().join("index.json");
        std::fs::remove_file(&index).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &index,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let src = ImageSource::Layout {
            dir: dir.path().to_path_buf(),
            tag: None,
        };
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::NotRegular { kind: "a FIFO", .. })
            ),
            "{err:?}"
        );

        // An index.json larger than any index kiln reads.
        std::fs::remove_file(&index).unwrap();
        let big = std::fs::File::create(&index).unwrap();
        big.set_len(manifest::MAX_DOCUMENT + 1).unwrap();
        let err = load_source(&src).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::TooLarge { size, .. }) if *size == manifest::MAX_DOCUMENT + 1
            ),
            "{err:?}"
        );
    }
}
