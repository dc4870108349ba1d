//! Where the compressed bytes of a layer part built before are: a slice of
//! a blob in the cache (the layer it was built in, or a blob of its own
//! when it was built ahead), by the hash of the part's inputs.
//!
//! The blob is named by its digest, so the slice is trusted as far as the
//! blob is: [`Cache::verified`] hashes it once and then knows it by its
//! stamp (a blob this build wrote is known already). Anything else is a
//! miss, and the part is compressed again.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::compress::Cut;
use kiln_core::digest::Digest;
use kiln_store::cache::{Cache, CacheBucket};

/// (Memos written before this held the slice's sha256 too; it is ignored.)
#[derive(Serialize, Deserialize)]
struct Memo {
    /// The blob the part's bytes are in (gc drops the memo with it).
    blob: Digest,
    offset: u64,
    len: u64,
}

/// A part's compressed bytes, in a blob checked a moment ago and held
/// open since (a later change to the path does not reach it).
pub(super) struct Found {
    file: File,
    offset: u64,
    len: u64,
}

impl Found {
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn into_reader(mut self) -> io::Result<impl Read> {
        self.file.seek(SeekFrom::Start(self.offset))?;
        Ok(self.file.take(self.len))
    }
}

fn memo_path(cache: &Cache, key: &Digest) -> PathBuf {
    cache.entry(CacheBucket::LayerParts, format!("{}.json", key.hex()))
}

/// The part built before from the inputs hashed to `key`, if its bytes are
/// still there and whole.
pub(super) fn find(cache: &Cache, key: &Digest) -> Option<Found> {
    let memo: Memo = serde_json::from_slice(&std::fs::read(memo_path(cache, key)).ok()?).ok()?;
    let file = File::open(cache.verified(&memo.blob).ok()??).ok()?;
    let size = file.metadata().ok()?.len();
    (memo.offset.checked_add(memo.len)? <= size).then_some(Found {
        file,
        offset: memo.offset,
        len: memo.len,
    })
}

/// Best effort: a memo that cannot be written only costs compressing the
/// part again later.
pub(super) fn remember(cache: &Cache, key: &Digest, blob: &Digest, cut: &Cut) {
    let memo = Memo {
        blob: blob.clone(),
        offset: cut.offset,
        len: cut.len,
    };
    if let Ok(json) = serde_json::to_vec(&memo) {
        kiln_store::cache::write_atomic(&memo_path(cache, key), &json);
    }
}
