//! A blob read while it is still being written into the cache.
//!
//! A base's layers were read once their blobs were whole: on a loopback
//! registry the first 0.2 s of a build only fetched, and behind a slow link
//! the four blobs arriving side by side all ended together, so reading them
//! (0.5 s of inflating) came after the last byte. A [`Growing`] is shown the
//! bytes a [`BlobWriter`](crate::cache::BlobWriter) has put in its
//! temporary file, and a [`GrowingReader`] reads them from there as they
//! come (the file, not a pipe: the download never waits for its reader).
//!
//! What is read so is trusted only once the blob is whole and verified:
//! the reader's bytes are the one attempt's that was verified, since a
//! second attempt (a retry) leaves the reader [`abandoned`](Growing::abandoned)
//! and its owner reads the verified blob again.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// See the module docs.
#[derive(Debug, Default)]
pub struct Growing {
    state: Mutex<Grow>,
    more: Condvar,
}

#[derive(Debug, Default)]
struct Grow {
    file: Option<Arc<File>>,
    /// Bytes of `file` written and flushed.
    len: u64,
    end: End,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum End {
    #[default]
    Growing,
    /// Verified and in the cache: `len` is all there is.
    Whole,
    /// Failed, or begun a second time: what was read is not to be used.
    Abandoned,
}

impl Growing {
    pub fn new() -> Arc<Growing> {
        Arc::new(Growing::default())
    }

    /// Whether the blob failed or was fetched more than once: what its
    /// readers gave must be read again from the cache.
    pub fn abandoned(&self) -> bool {
        self.lock().end == End::Abandoned
    }

    /// A reader of the blob's bytes from its first, waiting for them.
    pub fn reader(self: &Arc<Self>) -> GrowingReader {
        GrowingReader {
            growing: self.clone(),
            at: 0,
        }
    }

    /// A writer starts on `file` (a second start abandons the blob).
    pub(crate) fn begin(&self, file: File) {
        let mut s = self.lock();
        match (&s.file, s.end) {
            (None, End::Growing) => s.file = Some(Arc::new(file)),
            _ => s.end = End::Abandoned,
        }
        drop(s);
        self.more.notify_all();
    }

    /// The first `len` bytes are in the file.
    pub(crate) fn grew(&self, len: u64) {
        let mut s = self.lock();
        if s.end == End::Growing {
            s.len = len;
        }
        drop(s);
        self.more.notify_all();
    }

    /// The writer is done: verified and kept (`whole`), or not. (Also for
    /// whoever started a fetch: a fetch that failed before its writer
    /// began leaves no reader waiting. Only the first end counts.)
    pub fn ended(&self, whole: bool) {
        let mut s = self.lock();
        if s.end == End::Growing {
            s.end = if whole { End::Whole } else { End::Abandoned };
        }
        drop(s);
        self.more.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Grow> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See [`Growing::reader`]. Fails once the blob is abandoned.
pub struct GrowingReader {
    growing: Arc<Growing>,
    at: u64,
}

impl Read for GrowingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let g = &self.growing;
        let mut s = g.lock();
        let (file, ready) = loop {
            match (s.end, &s.file) {
                (End::Abandoned, _) => {
                    return Err(io::Error::other(
                        "the blob was fetched again while it was read",
                    ))
                }
                (_, Some(f)) if s.len > self.at => break (f.clone(), s.len - self.at),
                (End::Whole, Some(_)) => return Ok(0),
                (End::Whole, None) => return Err(io::Error::other("a blob ended unwritten")),
                _ => s = g.more.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        };
        drop(s);
        let want = buf.len().min(usize::try_from(ready).unwrap_or(usize::MAX));
        let n = file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a blob being written is shorter than its writer said",
            ));
        }
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::cache::Cache;
    use kiln_core::digest::Digest;

    /// A reader started before the writer reads every byte as it is
    /// written, and its end once the blob is verified; a failed blob, or
    /// one begun twice, fails its reader.
    #[test]
    fn a_reader_follows_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let digest = Digest::of(&data);
        let g = Growing::new();
        let reader = {
            let mut r = g.reader();
            std::thread::spawn(move || {
                let mut back = Vec::new();
                r.read_to_end(&mut back).map(|_| back)
            })
        };
        let mut w = cache.writer().unwrap().showing(g.clone()).unwrap();
        for chunk in data.chunks(70_000) {
            w.write_all(chunk).unwrap();
        }
        w.commit(Some(&digest)).unwrap();
        assert!(reader.join().unwrap().unwrap() == data);
        assert!(!g.abandoned());

        // The wrong bytes: the writer's commit fails, and so does the reader.
        let bad = Growing::new();
        let mut w = cache.writer().unwrap().showing(bad.clone()).unwrap();
        w.write_all(b"not it").unwrap();
        assert!(w.commit(Some(&Digest::of(b"other"))).is_err());
        assert!(bad.abandoned() && bad.reader().read(&mut [0; 8]).is_err());

        // Dropped unfinished, or begun twice (a retry): abandoned.
        let dropped = Growing::new();
        drop(cache.writer().unwrap().showing(dropped.clone()).unwrap());
        assert!(dropped.abandoned());
        let twice = Growing::new();
        let first = cache.writer().unwrap().showing(twice.clone()).unwrap();
        let second = cache.writer().unwrap().showing(twice.clone()).unwrap();
        second.commit(None).unwrap();
        drop(first);
        assert!(twice.abandoned());
    }
}
