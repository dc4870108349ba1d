//! Layer builder: entries → deterministic tar → gzip|zstd, with the blob
//! digest, the diff_id and the sizes computed in the same streaming pass,
//! written straight into the content-addressed cache.

pub mod compress;
pub mod tarball;
pub mod tree;

use std::io::{self, Read};

use serde::Serialize;

pub use compress::Compression;
use compress::ParallelEncoder;
pub use tree::{Entry, EntryKind, Tree};

use crate::cache::Cache;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};

/// Entries for one layer, with the line it gets in the image history.
pub type LayerGroup = (String, Vec<Entry>);

/// A layer blob in the cache.
#[derive(Clone, Debug, Serialize)]
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
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(|e| {
                Error::input(format!("starting zstd for a {media_type} layer: {e}"))
            })?)
        } else if media_type.ends_with(".tar") {
            Box::new(blob)
        } else {
            return Err(Error::input(format!(
                "unsupported layer media type {media_type}"
            )));
        },
    )
}

/// Write `entries` as one layer into the cache. `mtime` applies to every entry.
pub fn build_layer(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    let enc = ParallelEncoder::new(cache.writer()?, compression);
    let enc = tarball::write_tar(entries, mtime, enc).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::NotFound {
            Error::input(format!("reading layer input: {e}"))
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
    enc: ParallelEncoder<crate::cache::BlobWriter>,
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
