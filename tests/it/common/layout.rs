//! Reading OCI image layouts: media types, [`Layout`], layer decompression and tar entries.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{digest_of, read_json, s};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Read access to an OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    #[track_caller]
    pub fn open(dir: impl AsRef<Path>) -> Layout {
        let dir = dir.as_ref().to_path_buf();
        let marker = read_json(&dir.join("oci-layout"));
        assert_eq!(
            marker["imageLayoutVersion"],
            "1.0.0",
            "oci-layout of {}",
            dir.display()
        );
        Layout { dir }
    }

    pub fn index(&self) -> Value {
        read_json(&self.dir.join("index.json"))
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest with algorithm");
        self.dir.join("blobs").join(alg).join(hex)
    }

    /// Blob bytes; asserts the content matches the digest.
    #[track_caller]
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let p = self.blob_path(digest);
        let b = fs::read(&p).unwrap_or_else(|e| panic!("blob {digest} missing from layout: {e}"));
        assert_eq!(
            digest_of(&b),
            digest,
            "blob {} content does not match its name",
            p.display()
        );
        b
    }

    #[track_caller]
    pub fn json_blob(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).expect("JSON blob")
    }

    /// The ref.name annotations in index.json, sorted.
    pub fn tags(&self) -> Vec<String> {
        let mut t: Vec<String> = self.index()["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["annotations"][REF_NAME].as_str().map(str::to_string))
            .collect();
        t.sort();
        t
    }

    /// The one index.json descriptor annotated with ref.name = TAG.
    #[track_caller]
    pub fn descriptor(&self, tag: &str) -> Value {
        let idx = self.index();
        let found: Vec<&Value> = idx["manifests"]
            .as_array()
            .expect("index.json manifests")
            .iter()
            .filter(|d| d["annotations"][REF_NAME] == tag)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "exactly one descriptor for tag {tag:?} in {idx:#}"
        );
        found[0].clone()
    }

    /// (digest, manifest) of the single-platform image tagged TAG.
    #[track_caller]
    pub fn manifest(&self, tag: &str) -> (String, Value) {
        let d = self.descriptor(tag);
        assert_eq!(
            d["mediaType"], MT_MANIFEST,
            "tag {tag} should name an image manifest"
        );
        let digest = s(&d, "digest").to_string();
        let m = self.json_blob(&digest);
        assert_eq!(
            d["size"].as_u64().unwrap(),
            self.blob(&digest).len() as u64,
            "descriptor size"
        );
        (digest, m)
    }

    /// Image config of the single-platform image tagged TAG.
    #[track_caller]
    pub fn config(&self, tag: &str) -> Value {
        let (_, m) = self.manifest(tag);
        self.json_blob(s(&m["config"], "digest"))
    }

    /// All layers of the single-platform image tagged TAG, in order:
    /// (descriptor, decoded tar entries).
    #[track_caller]
    pub fn layers(&self, tag: &str) -> Vec<(Value, Vec<TarEntry>)> {
        let (_, m) = self.manifest(tag);
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                let blob = self.blob(s(l, "digest"));
                assert_eq!(l["size"].as_u64().unwrap(), blob.len() as u64, "layer size");
                (
                    l.clone(),
                    tar_entries(&decompress(&blob, s(l, "mediaType"))),
                )
            })
            .collect()
    }
}

/// Undo a layer's compression according to its media type.
#[track_caller]
pub fn decompress(blob: &[u8], media_type: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        assert_eq!(&blob[..2], &[0x1f, 0x8b], "gzip layer lacks gzip magic");
        flate2::read::MultiGzDecoder::new(blob)
            .read_to_end(&mut out)
            .expect("gunzip layer");
    } else if media_type.ends_with("+zstd") {
        assert_eq!(
            &blob[..4],
            &[0x28, 0xb5, 0x2f, 0xfd],
            "zstd layer lacks zstd magic"
        );
        out = zstd::stream::decode_all(blob).expect("unzstd layer");
    } else if media_type.ends_with(".tar") || media_type.ends_with("rootfs.diff.tar") {
        out = blob.to_vec();
    } else {
        panic!("unexpected layer media type {media_type}");
    }
    out
}

/// One entry of a layer tarball as a reader sees it.
#[derive(Debug, Clone)]
pub struct TarEntry {
    /// Path as stored (long names and PAX paths resolved).
    pub path: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub uname: String,
    pub gname: String,
    pub link: Option<String>,
    pub pax: BTreeMap<String, String>,
    pub content: Vec<u8>,
}

impl TarEntry {
    /// Path without leading `./` or `/` and without trailing `/`.
    pub fn clean_path(&self) -> String {
        let p = self.path.trim_start_matches("./").trim_start_matches('/');
        p.trim_end_matches('/').to_string()
    }
}

#[track_caller]
pub fn tar_entries(tar_bytes: &[u8]) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().expect("read tar") {
        let mut e = e.expect("tar entry");
        let h = e.header().clone();
        let path = e.path().expect("entry path").to_string_lossy().into_owned();
        let link = e
            .link_name()
            .expect("link name")
            .map(|l| l.to_string_lossy().into_owned());
        let mut pax = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().expect("pax") {
            for x in exts {
                let x = x.expect("pax record");
                pax.insert(
                    x.key().unwrap_or("?").to_string(),
                    x.value().unwrap_or("?").to_string(),
                );
            }
        }
        let mut content = Vec::new();
        e.read_to_end(&mut content).expect("entry content");
        out.push(TarEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().expect("mode"),
            uid: h.uid().expect("uid"),
            gid: h.gid().expect("gid"),
            mtime: h.mtime().expect("mtime"),
            uname: h.username().ok().flatten().unwrap_or("").to_string(),
            gname: h.groupname().ok().flatten().unwrap_or("").to_string(),
            link,
            pax,
            content,
        });
    }
    out
}

/// Find an entry by clean path.
#[track_caller]
pub fn entry<'a>(entries: &'a [TarEntry], clean_path: &str) -> &'a TarEntry {
    entries
        .iter()
        .find(|e| e.clean_path() == clean_path)
        .unwrap_or_else(|| {
            let all: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
            panic!("no entry {clean_path:?} in layer; entries: {all:?}")
        })
}

/// Kiln's canonical entry order: every parent directory entry comes before its
/// children, and the direct children of each directory appear in byte order of
/// their names. (Both a full-path byte sort and a sorted depth-first walk satisfy
/// this.)
#[track_caller]
pub fn assert_sorted(entries: &[TarEntry]) {
    let paths: Vec<String> = entries.iter().map(|e| e.clean_path()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_child: BTreeMap<String, String> = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        assert!(
            seen.insert(p.clone(), i).is_none(),
            "duplicate entry {p:?} in {paths:?}"
        );
        let (parent, name) = match p.rsplit_once('/') {
            Some((a, b)) => (a.to_string(), b.to_string()),
            None => (String::new(), p.clone()),
        };
        // A parent that has its own entry must come first.
        if !parent.is_empty() {
            if let Some(j) = paths.iter().position(|q| *q == parent) {
                assert!(
                    j < i,
                    "directory {parent:?} comes after its child {p:?}: {paths:?}"
                );
            }
        }
        if let Some(prev) = last_child.get(&parent) {
            assert!(
                prev.as_bytes() < name.as_bytes(),
                "entries of {parent:?} not sorted: {prev:?} before {name:?} in {paths:?}"
            );
        }
        last_child.insert(parent, name);
    }
}
