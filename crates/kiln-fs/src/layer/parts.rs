//! Where the compressed bytes of a layer part built before are: a slice of
//! a blob in the cache (the layer it was built in), by the hash of the
//! part's inputs, or, for a part built ahead of its layer by this process,
//! pieces of one scratch file the layer copies them from.
//!
//! The blob is named by its digest, so the slice is trusted as far as the
//! blob is: [`Cache::verified`] hashes it once and then knows it by its
//! stamp (a blob this build wrote is known already). Anything else is a
//! miss, and the part is compressed again.
//!
//! Parts built ahead are kept in the process, not the cache: each was a
//! blob and a memo of its own (two files made and renamed, and the bytes
//! hashed) that the layer copied and remembered again a moment later; on a
//! 110-wheel freeze that was 4% of a cold build's CPU, most of it ext4
//! making files. A part the layer never asks for goes with the process.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Serialize};

use super::compress::Cut;
use super::spool::{Spool, SpoolSlice};
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

/// A part's compressed bytes: in a blob checked a moment ago and held
/// open since (a later change to the path does not reach it), or built
/// ahead by this process.
pub(super) enum Found {
    Blob { file: File, offset: u64, len: u64 },
    Ahead(Arc<AheadPart>),
}

impl Found {
    pub(super) fn len(&self) -> u64 {
        match self {
            Found::Blob { len, .. } => *len,
            Found::Ahead(a) => a.len,
        }
    }

    pub(super) fn into_reader(self) -> io::Result<Box<dyn Read>> {
        Ok(match self {
            Found::Blob {
                mut file,
                offset,
                len,
            } => {
                file.seek(SeekFrom::Start(offset))?;
                Box::new(file.take(len))
            }
            Found::Ahead(a) => Box::new(AheadReader {
                part: a,
                piece: 0,
                done: 0,
            }),
        })
    }
}

/// A part built ahead: pieces of the process's scratch spool, in order.
pub(super) struct AheadPart {
    pieces: Vec<SpoolSlice>,
    len: u64,
}

/// Reads an [`AheadPart`]'s pieces one after the other: the piece it is
/// in, and how much of it is read.
struct AheadReader {
    part: Arc<AheadPart>,
    piece: usize,
    done: u64,
}

impl Read for AheadReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while let Some(piece) = self.part.pieces.get(self.piece) {
            // (0 only at the piece's end.)
            let n = piece.read_at(buf, self.done)?;
            if n > 0 {
                self.done += n as u64;
                return Ok(n);
            }
            (self.piece, self.done) = (self.piece + 1, 0);
        }
        Ok(0)
    }
}

/// Where a part built ahead is written: each write a piece of the spool.
pub(super) struct AheadWriter {
    spool: Arc<Spool>,
    pieces: Vec<SpoolSlice>,
    len: u64,
}

impl io::Write for AheadWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pieces.push(self.spool.put(data)?);
        self.len += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The parts built ahead in this process, by cache: one scratch spool per
/// cache, dropped (and its space freed) once its last part is copied.
static AHEAD: LazyLock<Mutex<HashMap<PathBuf, Scratch>>> = LazyLock::new(Default::default);

struct Scratch {
    spool: Arc<Spool>,
    parts: HashMap<Digest, Arc<AheadPart>>,
}

fn ahead<T>(f: impl FnOnce(&mut HashMap<PathBuf, Scratch>) -> T) -> T {
    f(&mut AHEAD.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A writer for a part to build ahead in `cache` (buffered: the encoder
/// writes gzip headers and trailers of a few bytes each).
pub(super) fn ahead_writer(cache: &Cache) -> io::Result<io::BufWriter<AheadWriter>> {
    let spool = ahead(|all| -> io::Result<Arc<Spool>> {
        if let Some(s) = all.get(cache.root()) {
            return Ok(s.spool.clone());
        }
        let spool = Spool::new_in(&cache.bucket(CacheBucket::Tmp))?;
        all.insert(
            cache.root().to_path_buf(),
            Scratch {
                spool: spool.clone(),
                parts: HashMap::new(),
            },
        );
        Ok(spool)
    })?;
    Ok(io::BufWriter::with_capacity(
        256 << 10,
        AheadWriter {
            spool,
            pieces: Vec::new(),
            len: 0,
        },
    ))
}

/// Keep what `w` wrote as the part built ahead from the inputs hashed to `key`.
pub(super) fn keep_ahead(cache: &Cache, key: &Digest, w: AheadWriter) {
    let part = Arc::new(AheadPart {
        pieces: w.pieces,
        len: w.len,
    });
    // (Its scratch may have been dropped meanwhile, its other parts all
    // copied: kept again, with the spool this part is in.)
    ahead(|all| {
        let scratch = all
            .entry(cache.root().to_path_buf())
            .or_insert_with(|| Scratch {
                spool: w.spool,
                parts: HashMap::new(),
            });
        scratch.parts.insert(key.clone(), part);
    });
}

/// The part built ahead in `cache` from the inputs hashed to `key`, now
/// copied into its layer (whose memo says where it is): no longer kept.
pub(super) fn forget_ahead(cache: &Cache, key: &Digest) {
    ahead(|all| {
        let Some(s) = all.get_mut(cache.root()) else {
            return;
        };
        s.parts.remove(key);
        if s.parts.is_empty() {
            all.remove(cache.root());
        }
    });
}

fn memo_path(cache: &Cache, key: &Digest) -> PathBuf {
    cache.entry(CacheBucket::LayerParts, format!("{}.json", key.hex()))
}

/// The part built before from the inputs hashed to `key`, if its bytes are
/// still there and whole: built ahead by this process, or in the cache.
pub(super) fn find(cache: &Cache, key: &Digest) -> Option<Found> {
    let built = ahead(|all| all.get(cache.root())?.parts.get(key).cloned());
    if let Some(part) = built {
        return Some(Found::Ahead(part));
    }
    let memo: Memo = serde_json::from_slice(&std::fs::read(memo_path(cache, key)).ok()?).ok()?;
    let file = File::open(cache.verified(&memo.blob).ok()??).ok()?;
    let size = file.metadata().ok()?.len();
    (memo.offset.checked_add(memo.len)? <= size).then_some(Found::Blob {
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
