//! Where the compressed bytes of a layer part built before are: a slice of
//! a blob in the cache (the layer it was built in, or a blob of its own
//! when it was built ahead), by the hash of the part's inputs.
//!
//! A memo is trusted only as far as the slice still hashes to what it
//! held when it was written; anything else is a miss, and the part is
//! compressed again.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::compress::Cut;
use kiln_core::digest::Digest;
use kiln_store::cache::{Cache, CacheBucket};

#[derive(Serialize, Deserialize)]
struct Memo {
    /// The blob the part's bytes are in (gc drops the memo with it).
    blob: Digest,
    offset: u64,
    len: u64,
    sha256: Digest,
}

/// A part's compressed bytes, checked a moment ago.
pub(super) struct Found {
    path: PathBuf,
    offset: u64,
    len: u64,
    pub(super) sha256: Digest,
}

impl Found {
    pub(super) fn reader(&self) -> io::Result<impl Read> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        Ok(f.take(self.len))
    }
}

fn memo_path(cache: &Cache, key: &Digest) -> PathBuf {
    cache.entry(CacheBucket::LayerParts, format!("{}.json", key.hex()))
}

/// The part built before from the inputs hashed to `key`, if its bytes are
/// still there and whole.
pub(super) fn find(cache: &Cache, key: &Digest) -> Option<Found> {
    let memo: Memo = serde_json::from_slice(&std::fs::read(memo_path(cache, key)).ok()?).ok()?;
    let found = Found {
        path: cache.blob_path(&memo.blob),
        offset: memo.offset,
        len: memo.len,
        sha256: memo.sha256,
    };
    let mut h = Sha256::new();
    let copied = io::copy(&mut found.reader().ok()?, &mut h).ok()?;
    (copied == found.len && Digest::from_hasher(h) == found.sha256).then_some(found)
}

/// Best effort: a memo that cannot be written only costs compressing the
/// part again later.
pub(super) fn remember(cache: &Cache, key: &Digest, blob: &Digest, cut: &Cut) {
    let memo = Memo {
        blob: blob.clone(),
        offset: cut.offset,
        len: cut.len,
        sha256: cut.sha256.clone(),
    };
    if let Ok(json) = serde_json::to_vec(&memo) {
        kiln_store::cache::write_atomic(&memo_path(cache, key), &json);
    }
}
