//! Layer builder: entries → deterministic tar → gzip|zstd, with the blob
//! digest, the diff_id and the sizes computed in the same streaming pass,
//! written straight into the content-addressed cache.

pub mod archive;
mod compress;
pub mod spool;
mod tarball;
pub mod tree;

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

pub use compress::Compression;
use compress::ParallelEncoder;
pub use spool::{read_claimed, Content, Spool, SpoolSlice};
pub use tree::{Entry, EntryKind, Tree};

use crate::error::FsError;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_store::cache::{Cache, CacheBucket};

/// Entries for one layer, with the line it gets in the image history.
pub type LayerGroup = (String, Vec<Entry>);

/// A layer blob in the cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerBlob {
    pub digest: Digest,
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    pub media_type: String,
}

/// The uncompressed tar stream of a layer blob, by its media type.
pub fn decompressed<'a>(media_type: &str, blob: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Box::new(flate2::read::MultiGzDecoder::new(blob))
        } else if media_type.ends_with("+zstd") {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(|source| {
                FsError::Decompress {
                    media_type: media_type.to_string(),
                    source,
                }
            })?)
        } else if media_type.ends_with(".tar") {
            Box::new(blob)
        } else {
            return Err(FsError::UnsupportedMediaType {
                media_type: media_type.to_string(),
            }
            .into());
        },
    )
}

/// Write `entries` as one layer into the cache. `mtime` applies to every entry.
///
/// Memoised: the same entries (paths, metadata and content), mtime and
/// compression give the same blob, so a layer already built is found by
/// hashing its inputs, which costs a fraction of tar + compress.
pub fn build_layer(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    build_layer_reporting(entries, mtime, compression, cache).map(|(b, _)| b)
}

/// [`build_layer`], saying whether the layer was taken from the cache
/// (`true`) or compressed now (for a build's summary).
pub fn build_layer_reporting(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<(LayerBlob, bool)> {
    let key = input_key(entries, mtime, compression)?;
    let memo = cache.entry(CacheBucket::Layers, format!("{}.json", key.hex()));
    if let Some(hit) = read_memo(&memo, cache) {
        return Ok((hit, true));
    }
    let blob = build_layer_fresh(entries, mtime, compression, cache)?;
    write_memo(&memo, &blob);
    Ok((blob, false))
}

/// The layer built before from the same inputs, if the cache still has it
/// (what `kiln build --dry-run` reports as reused).
pub fn cached_layer(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<Option<LayerBlob>> {
    let key = input_key(entries, mtime, compression)?;
    let memo = cache.entry(CacheBucket::Layers, format!("{}.json", key.hex()));
    Ok(read_memo(&memo, cache))
}

/// sha256 over everything that decides a layer's bytes.
fn input_key(entries: &[Entry], mtime: u64, compression: Compression) -> Result<Digest> {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    // The format number changes whenever the same inputs would give other
    // bytes or the key is made differently (2: gzip chunks by libdeflate;
    // 3: known hashes of spooled files), so old memos are not reused.
    h.update(format!(
        "kiln-layer/3 {} {compression:?} {mtime}\n",
        env!("CARGO_PKG_VERSION")
    ));
    for e in entries {
        h.update(format!("{}\0{:o}\0{}\0{}\0", e.path, e.mode, e.uid, e.gid));
        match &e.kind {
            EntryKind::Dir => h.update(b"d\0"),
            EntryKind::Symlink { target } => h.update(format!("l{target}\0")),
            EntryKind::Data(d) => {
                h.update(format!("f{}\0", d.len()));
                h.update(d.as_slice());
            }
            // A file whose hash is known: its length and that hash (a warm
            // pip stage's 600 MB of wheel members are not hashed again).
            EntryKind::Spooled(s) => match s.known_hash() {
                Some(known) => h.update(format!("k{}\0{known}\0", s.len())),
                None => {
                    h.update(format!("f{}\0", s.len()));
                    let input = |source| FsError::LayerInput { path: None, source };
                    io::copy(&mut s.reader().map_err(input)?, &mut h).map_err(input)?;
                }
            },
            EntryKind::File { src, size } => {
                h.update(format!("f{size}\0"));
                let input = |source| FsError::LayerInput {
                    path: Some(src.clone()),
                    source,
                };
                let mut f = std::fs::File::open(src).map_err(input)?;
                io::copy(&mut f, &mut h).map_err(input)?;
            }
        }
    }
    Ok(Digest::from_hasher(h))
}

fn read_memo(path: &std::path::Path, cache: &Cache) -> Option<LayerBlob> {
    let m: LayerBlob = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    // The blob itself must still be there and intact (gc, disk damage).
    cache.verified(&m.digest).ok()??;
    Some(m)
}

/// Best effort: a memo that cannot be written only costs a rebuild later.
fn write_memo(path: &std::path::Path, b: &LayerBlob) {
    if let Ok(json) = serde_json::to_vec(b) {
        kiln_store::cache::write_atomic(path, &json);
    }
}

/// Write `entries` as one layer, always tarring and compressing (no memo).
pub fn build_layer_fresh(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    let enc = ParallelEncoder::new(cache.writer()?, compression);
    let enc = tarball::write_tar(entries, mtime, enc).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::NotFound {
            FsError::LayerInput {
                path: None,
                source: e,
            }
            .into()
        } else {
            Error::Io {
                context: "writing layer".into(),
                source: e,
            }
        }
    })?;
    finish(enc, compression)
}

/// Compress an existing uncompressed tar stream (e.g. a docker-archive layer).
pub fn compress_tar(
    mut tar: impl Read,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    let mut enc = ParallelEncoder::new(cache.writer()?, compression);
    io::copy(&mut tar, &mut enc).io_context(|| "compressing layer".into())?;
    finish(enc, compression)
}

fn finish(
    enc: ParallelEncoder<kiln_store::cache::BlobWriter>,
    compression: Compression,
) -> Result<LayerBlob> {
    let (w, summary) = enc.finish().io_context(|| "compressing layer".into())?;
    let (digest, size) = w.commit(None)?;
    Ok(LayerBlob {
        digest,
        diff_id: summary.diff_id,
        size,
        media_type: compression.media_type().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unknown_media_types_are_refused() {
        let Err(e) = decompressed("application/vnd.oci.image.layer.v1.tar+lz4", &b""[..]) else {
            panic!("an lz4 layer was accepted");
        };
        assert!(matches!(
            e.downcast_ref::<FsError>(),
            Some(FsError::UnsupportedMediaType { media_type }) if media_type.ends_with("+lz4")
        ));
        assert_eq!(e.exit_code(), 2);
        assert!(decompressed("application/vnd.oci.image.layer.v1.tar", &b""[..]).is_ok());
    }

    #[test]
    fn a_layer_says_whether_the_cache_had_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let entries = vec![Entry::data("etc/motd", b"hi\n".to_vec(), 0o644)];
        let gz = Compression::Gzip { level: 1 };
        assert!(cached_layer(&entries, 0, gz, &cache).unwrap().is_none());
        let (first, reused) = build_layer_reporting(&entries, 0, gz, &cache).unwrap();
        assert!(!reused);
        let (again, reused) = build_layer_reporting(&entries, 0, gz, &cache).unwrap();
        assert!(reused);
        assert_eq!(again.digest, first.digest);
        let hit = cached_layer(&entries, 0, gz, &cache).unwrap().unwrap();
        assert_eq!(hit.digest, first.digest);
        // Another mtime is another layer.
        assert!(cached_layer(&entries, 1, gz, &cache).unwrap().is_none());
    }

    /// A spooled file with a known hash enters the memo key as that hash:
    /// the key is the same whatever spool holds the bytes, changes with
    /// the hash, and is made without reading the bytes back.
    #[test]
    fn a_known_hash_stands_for_the_spooled_bytes_in_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |s: SpoolSlice| {
            vec![Entry {
                path: "usr/lib/m.py".into(),
                kind: EntryKind::Spooled(s),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }]
        };
        let key = |e: &[Entry]| input_key(e, 0, Compression::Gzip { level: 1 }).unwrap();
        let (a, b) = (
            Spool::new_in(dir.path()).unwrap(),
            Spool::new_in(dir.path()).unwrap(),
        );
        b.put(b"padding first").unwrap();
        let known = |s: &Arc<Spool>| s.put(b"print(1)\n").unwrap().known_as("sha256=AAA");
        assert_eq!(key(&file(known(&a))), key(&file(known(&b))));
        let other = a.put(b"print(1)\n").unwrap().known_as("sha256=BBB");
        assert_ne!(key(&file(known(&a))), key(&file(other)));
        let plain = key(&file(a.put(b"print(1)\n").unwrap()));
        assert_ne!(plain, key(&file(known(&a))));
        // Hashing the bytes needs them; a known hash does not.
        let cut = b.put(b"gone").unwrap();
        b.fail_for_test();
        assert!(input_key(&file(cut.clone()), 0, Compression::Zstd { level: 3 }).is_err());
        assert!(input_key(
            &file(cut.known_as("sha256=CCC")),
            0,
            Compression::Zstd { level: 3 }
        )
        .is_ok());
    }

    #[test]
    fn a_vanished_input_is_a_layer_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let entries = vec![Entry {
            path: "gone".into(),
            kind: EntryKind::File {
                src: dir.path().join("gone"),
                size: 3,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }];
        let gz = Compression::Gzip { level: 1 };
        let e = build_layer_fresh(&entries, 0, gz, &cache).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<FsError>(),
                Some(FsError::LayerInput { path: None, .. })
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("reading layer input: "), "{e}");
        // The memoised path hashes the inputs first and names the file.
        let e = build_layer(&entries, 0, gz, &cache).unwrap_err();
        match e.downcast_ref::<FsError>() {
            Some(FsError::LayerInput { path: Some(p), .. }) => {
                assert_eq!(*p, dir.path().join("gone"))
            }
            other => panic!("{other:?}"),
        }
    }
}
