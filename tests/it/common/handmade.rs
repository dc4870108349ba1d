//! Hand-made images: tarballs, gzip, and OCI layouts written without kiln, as bases and fixtures.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{json, Value};

use super::{
    digest_of, read_json, Workspace, MT_CONFIG, MT_INDEX, MT_LAYER_GZIP, MT_MANIFEST, REF_NAME,
};

/// What a hand-made layer contains.
#[derive(Clone, Copy)]
pub enum Item<'a> {
    Dir(&'a str, u32),
    /// A directory with an owner: path, mode, uid, gid.
    OwnedDir(&'a str, u32, u64, u64),
    File(&'a str, &'a [u8], u32),
}

/// An uncompressed tarball (mtime 0, root-owned) of ITEMS in the given order.
pub fn make_tar(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for it in items {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match it {
            Item::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::OwnedDir(p, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Item::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// What [`write_oci_layout`] wrote.
#[derive(Debug, Clone)]
pub struct HandmadeImage {
    pub manifest_digest: String,
    pub config_digest: String,
    /// Digests of the gzip layer blobs, in order.
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let d = digest_of(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
    d
}

/// Write the blobs of one linux image for ARCH whose layers are the given
/// uncompressed tarballs (stored gzip), with `Env=[PATH=…, BASE_ENV=from-base]`,
/// `Cmd=["/bin/sh"]` and a label; returns it and its manifest descriptor.
pub fn write_image_blobs(dir: &Path, arch: &str, layer_tars: &[Vec<u8>]) -> (HandmadeImage, Value) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut layers = Vec::new();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for t in layer_tars {
        let gz = gzip(t);
        let d = write_blob(dir, &gz);
        layers.push(json!({"mediaType": MT_LAYER_GZIP, "digest": d, "size": gz.len()}));
        layer_digests.push(d);
        diff_ids.push(digest_of(t));
    }
    let config = json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "BASE_ENV=from-base"],
            "Cmd": ["/bin/sh"],
            "Labels": {"com.example.base": "handmade"}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layer_tars.iter().map(|_| json!({"created": "1970-01-01T00:00:00Z", "created_by": "kiln tests"})).collect::<Vec<_>>()
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(dir, &config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(dir, &manifest_bytes);
    let desc = json!({
        "mediaType": MT_MANIFEST,
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "platform": {"architecture": arch, "os": "linux"}
    });
    (
        HandmadeImage {
            manifest_digest,
            config_digest,
            layer_digests,
            diff_ids,
        },
        desc,
    )
}

/// Point TAG in DIR/index.json at DESC (replacing an older TAG).
pub fn tag_in_layout(dir: &Path, tag: &str, desc: &Value) {
    let index_path = dir.join("index.json");
    let mut index = if index_path.exists() {
        read_json(&index_path)
    } else {
        json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []})
    };
    let mut desc = desc.clone();
    desc["annotations"] = json!({REF_NAME: tag});
    let list = index["manifests"].as_array_mut().unwrap();
    list.retain(|d| d["annotations"][REF_NAME] != tag);
    list.push(desc);
    fs::write(&index_path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

/// Write (or add a tag to) an OCI image layout at DIR holding one image (see
/// [`write_image_blobs`]).
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    arch: &str,
    layer_tars: &[Vec<u8>],
) -> HandmadeImage {
    let (img, desc) = write_image_blobs(dir, arch, layer_tars);
    tag_in_layout(dir, tag, &desc);
    img
}

/// Write a multi-platform image (an image index, tagged TAG) with one image
/// per (arch, layers). Returns the index digest and the images.
pub fn write_oci_index_layout(
    dir: &Path,
    tag: &str,
    images: &[(&str, Vec<Vec<u8>>)],
) -> (String, Vec<HandmadeImage>) {
    let mut descs = Vec::new();
    let mut imgs = Vec::new();
    for (arch, layers) in images {
        let (img, desc) = write_image_blobs(dir, arch, layers);
        descs.push(desc);
        imgs.push(img);
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descs});
    let bytes = serde_json::to_vec(&index).unwrap();
    let digest = write_blob(dir, &bytes);
    tag_in_layout(
        dir,
        tag,
        &json!({"mediaType": MT_INDEX, "digest": digest, "size": bytes.len()}),
    );
    (digest, imgs)
}

/// The two layers of the whiteout base: layer 1 has /a/keep, /a/gone, /d/old;
/// layer 2 deletes /a/gone (whiteout), makes /d opaque and adds /d/new.
pub fn whiteout_base_layers() -> Vec<Vec<u8>> {
    vec![
        make_tar(&[
            Item::Dir("a/", 0o755),
            Item::File("a/gone", b"gone\n", 0o644),
            Item::File("a/keep", b"keep\n", 0o644),
            Item::Dir("d/", 0o755),
            Item::File("d/old", b"old\n", 0o644),
        ]),
        make_tar(&[
            Item::Dir("a/", 0o755),
            Item::File("a/.wh.gone", b"", 0o644),
            Item::Dir("d/", 0o755),
            Item::File("d/.wh..wh..opq", b"", 0o644),
            Item::File("d/new", b"new\n", 0o644),
        ]),
    ]
}

/// A base with a Debian-like CPython 3.11 (what `[pip]` reads), as a layout
/// tagged `v1` in WS/py.
pub fn python_base(ws: &Workspace) {
    python_base_with(ws, &[], &[]);
}

/// [`python_base`] with `first` in its layer right after `usr/bin/`
/// (before the interpreter) and `last` after everything.
pub fn python_base_with(ws: &Workspace, first: &[Item], last: &[Item]) {
    let mut items = vec![Item::Dir("usr/", 0o755), Item::Dir("usr/bin/", 0o755)];
    items.extend_from_slice(first);
    items.extend([
        Item::File("usr/bin/python3.11", b"\x7fELF", 0o755),
        Item::Dir("usr/lib/", 0o755),
        Item::Dir("usr/lib/python3.11/", 0o755),
        Item::File("usr/lib/python3.11/os.py", b"", 0o644),
        Item::Dir("var/lib/dpkg/", 0o755),
        Item::File(
            "var/lib/dpkg/status",
            b"Package: libc6\nStatus: install ok installed\nVersion: 2.36-9\n",
            0o644,
        ),
    ]);
    items.extend_from_slice(last);
    write_oci_layout(&ws.join("py"), "v1", "amd64", &[make_tar(&items)]);
}
