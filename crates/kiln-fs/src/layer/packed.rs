//! A file's bytes read from the archive that packs them, each time they are
//! wanted, and checked then.
//!
//! A wheel is a zip in the cache, content-addressed and verified when it
//! came; its members need not be unpacked anywhere before a layer is
//! written. Unpacking them into a kept file first (as kiln did) wrote a
//! cold 110-wheel freeze's 590 MB once more and read it back: a seventh of
//! the build's CPU, in the kernel, for a copy that only saved inflating
//! again when a layer is rebuilt. A [`Packed`] member is inflated (or, when
//! stored, copied) straight from the wheel into the layer writer; its size
//! and CRC-32 are checked as it is read, so a damaged member fails the
//! layer that reads it, naming it, and never goes in.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::spool::FileRange;
use crate::inflate::Inflater;

/// Members this large (inflated, or deflated) or smaller are inflated
/// whole with libdeflate; larger ones as a stream, so a big shared library
/// is never whole in memory.
const WHOLE_UP_TO: u64 = 4 << 20;

/// One member of an archive on disk: where its data is, how it is stored
/// and what it must come to.
#[derive(Debug)]
pub struct Packed {
    file: Arc<File>,
    offset: u64,
    raw_len: u64,
    size: u64,
    crc32: u32,
    deflated: bool,
    /// Names the member in errors (the archive and the member's path).
    what: Arc<str>,
}

impl Packed {
    /// The member whose data is the `raw_len` bytes at `offset` of `file`,
    /// a raw deflate stream when `deflated` (stored otherwise), that must
    /// come to `size` bytes with CRC-32 `crc32`. `what` names it in errors.
    pub fn new(
        file: Arc<File>,
        offset: u64,
        raw_len: u64,
        size: u64,
        crc32: u32,
        deflated: bool,
        what: impl Into<Arc<str>>,
    ) -> Packed {
        Packed {
            file,
            offset,
            raw_len,
            size,
            crc32,
            deflated,
            what: what.into(),
        }
    }

    /// The bytes it comes to.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The member is not what its archive declares: `detail` says how.
    fn bad(&self, detail: impl std::fmt::Display) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            Damaged {
                what: self.what.clone(),
                detail: detail.to_string(),
            },
        )
    }

    /// A read of the member failed: a damaged deflate stream is
    /// [`Packed::bad`]; anything else (the file) keeps its kind, the
    /// member named.
    fn failed(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => self.bad(e),
            kind => io::Error::new(kind, format!("{}: {e}", self.what)),
        }
    }

    /// Whether it is read as a stream rather than whole.
    fn streamed(&self) -> bool {
        self.size > WHOLE_UP_TO || self.raw_len > WHOLE_UP_TO
    }

    /// Whether it is deflated and inflated whole, in one call.
    pub(crate) fn inflated_whole(&self) -> bool {
        self.deflated && !self.streamed()
    }

    fn raw(&self) -> FileRange<'_> {
        FileRange::new(&self.file, self.offset, self.raw_len)
    }

    /// All its bytes, checked, and whether its deflate stream ends exactly
    /// where the archive says (see [`super::SliceReader::whole_stream`]).
    /// A member that is not what the archive declares is an `InvalidData`
    /// error holding [`Damaged`].
    pub fn read_all(&self) -> io::Result<(Vec<u8>, bool)> {
        if self.streamed() {
            let mut r = self.reader()?;
            let mut out = Vec::with_capacity(self.size.min(1 << 30) as usize);
            r.read_to_end(&mut out)?;
            let whole = r.whole_stream().unwrap_or(true);
            return Ok((out, whole));
        }
        let mut raw = vec![0u8; self.raw_len as usize];
        self.file
            .read_exact_at(&mut raw, self.offset)
            .map_err(|e| self.failed(e))?;
        let (out, whole) = if self.deflated {
            let mut out = vec![0u8; self.size as usize];
            let took = with_inflater(|d| d.inflate(&raw, &mut out)).map_err(|e| self.bad(e))?;
            (out, took == raw.len())
        } else if raw.len() as u64 == self.size {
            (raw, true)
        } else {
            return Err(self.bad(format!("{} bytes, {} declared", raw.len(), self.size)));
        };
        if libdeflater::crc32(&out) != self.crc32 {
            return Err(self.bad("CRC-32 mismatch"));
        }
        Ok((out, whole))
    }

    /// Hand its bytes to `f` (whole when small, else block by block),
    /// checked; returns whether its deflate stream ended where the archive
    /// says. (No reader between: a small member is not copied again.)
    pub(crate) fn for_each_block(
        &self,
        mut f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<bool> {
        if self.streamed() {
            let mut r = self.reader()?;
            super::spool::each_block_of(&mut r, 1 << 20, f)?;
            return Ok(r.whole_stream().unwrap_or(true));
        }
        let (bytes, whole) = self.read_all()?;
        f(&bytes).map(|()| whole)
    }

    /// A reader of its bytes, checked as they go (the last read fails when
    /// they are not what the archive declares).
    pub(crate) fn reader(&self) -> io::Result<PackedReader<'_>> {
        if !self.streamed() {
            let (bytes, whole) = self.read_all()?;
            return Ok(PackedReader::Held {
                bytes,
                at: 0,
                whole,
            });
        }
        let source = if self.deflated {
            Source::Inflating(flate2::bufread::DeflateDecoder::new(
                BufReader::with_capacity(256 << 10, self.raw()),
            ))
        } else {
            Source::Copying(self.raw())
        };
        Ok(PackedReader::Streaming(Box::new(Streaming {
            packed: self,
            source,
            crc: libdeflater::Crc::new(),
            out: 0,
            whole: None,
        })))
    }
}

/// What is wrong with a damaged member (see [`Packed::read_all`]): its
/// name, and how it differs from what its archive declares.
#[derive(Debug)]
pub struct Damaged {
    what: Arc<str>,
    detail: String,
}

impl Damaged {
    /// How the member that failed `e` differs from what its archive
    /// declares, when `e` is that.
    pub fn detail_of(e: &io::Error) -> Option<&str> {
        let d = e.get_ref()?.downcast_ref::<Damaged>()?;
        Some(&d.detail)
    }
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

impl std::error::Error for Damaged {}

thread_local! {
    static INFLATER: RefCell<Option<Inflater>> = const { RefCell::new(None) };
}

/// `f` with this thread's libdeflate decompressor (made on first use).
fn with_inflater<T>(f: impl FnOnce(&mut Inflater) -> Result<T, String>) -> Result<T, String> {
    INFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Inflater::new();
        }
        match slot.as_mut() {
            Some(d) => f(d),
            None => Err("no memory for a decompressor".into()),
        }
    })
}

/// See [`Packed::reader`].
pub(crate) enum PackedReader<'a> {
    Held {
        bytes: Vec<u8>,
        at: usize,
        whole: bool,
    },
    Streaming(Box<Streaming<'a>>),
}

impl PackedReader<'_> {
    /// Once every byte is read: whether the member's deflate stream ended
    /// exactly where the archive says it does (a stream taken into a gzip
    /// layer as it is must; see [`Deflated`](super::Deflated)). `None`
    /// before the end.
    pub(crate) fn whole_stream(&self) -> Option<bool> {
        match self {
            PackedReader::Held { bytes, at, whole } => (*at == bytes.len()).then_some(*whole),
            PackedReader::Streaming(s) => s.whole,
        }
    }
}

impl Read for PackedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PackedReader::Held { bytes, at, .. } => {
                let n = buf.len().min(bytes.len() - *at);
                buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                *at += n;
                Ok(n)
            }
            PackedReader::Streaming(s) => s.read(buf),
        }
    }
}

pub(crate) struct Streaming<'a> {
    packed: &'a Packed,
    source: Source<'a>,
    crc: libdeflater::Crc,
    out: u64,
    /// Set once the bytes are read and checked.
    whole: Option<bool>,
}

enum Source<'a> {
    Inflating(flate2::bufread::DeflateDecoder<BufReader<FileRange<'a>>>),
    Copying(FileRange<'a>),
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Inflating(r) => r.read(buf),
            Source::Copying(r) => r.read(buf),
        }
    }
}

impl Streaming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = self.packed;
        if self.whole.is_some() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(p.size - self.out) as usize;
        let n = match want {
            0 => 0,
            _ => match self
                .source
                .read(&mut buf[..want])
                .map_err(|e| p.failed(e))?
            {
                0 => return Err(p.bad(format!("{} bytes, {} declared", self.out, p.size))),
                n => n,
            },
        };
        self.crc.update(&buf[..n]);
        self.out += n as u64;
        if self.out == p.size {
            self.finish()?;
        }
        Ok(n)
    }

    /// Every declared byte is read: nothing may follow, and the CRC-32
    /// must hold.
    fn finish(&mut self) -> io::Result<()> {
        let p = self.packed;
        let mut more = [0u8; 1];
        if self.source.read(&mut more).map_err(|e| p.failed(e))? != 0 {
            return Err(p.bad(format!("more bytes than the {} declared", p.size)));
        }
        if self.crc.sum() != p.crc32 {
            return Err(p.bad("CRC-32 mismatch"));
        }
        self.whole = Some(match &self.source {
            Source::Inflating(d) => d.total_in() == p.raw_len,
            Source::Copying(_) => true,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// An archive of `raw` after some junk, and the member in it.
    fn member(raw: &[u8], size: u64, crc: u32, deflated: bool) -> (tempfile::TempDir, Packed) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.zip");
        let mut bytes = b"junk before".to_vec();
        bytes.extend_from_slice(raw);
        bytes.extend_from_slice(b"junk after");
        std::fs::write(&path, bytes).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let p = Packed::new(
            file,
            11,
            raw.len() as u64,
            size,
            crc,
            deflated,
            "a.whl: `m`",
        );
        (dir, p)
    }

    /// What [`Packed::for_each_block`] hands over, and whether it was whole.
    fn blocks(p: &Packed) -> io::Result<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let whole = p.for_each_block(|b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok((out, whole))
    }

    fn read_streamed(p: &Packed) -> io::Result<(Vec<u8>, Option<bool>)> {
        let mut r = p.reader()?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok((out, r.whole_stream()))
    }

    #[test]
    fn members_read_whole_and_streamed_alike() {
        // Small (inflated whole) and large (streamed), deflated and stored.
        for len in [0usize, 1000, (WHOLE_UP_TO as usize) + 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let crc = libdeflater::crc32(&data);
            for deflated in [true, false] {
                let raw = if deflated {
                    deflate(&data)
                } else {
                    data.clone()
                };
                let (_d, p) = member(&raw, len as u64, crc, deflated);
                assert_eq!(p.read_all().unwrap(), (data.clone(), true), "{len}");
                assert!(blocks(&p).unwrap() == (data.clone(), true), "{len}");
                let (out, whole) = read_streamed(&p).unwrap();
                assert!(out == data, "{len} {deflated}");
                assert_eq!(whole, Some(true));
            }
        }
    }

    #[test]
    fn damaged_members_fail_their_read_naming_them() {
        for len in [5000usize, (WHOLE_UP_TO as usize) + 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 13) as u8).collect();
            let crc = libdeflater::crc32(&data);
            let raw = deflate(&data);
            let fails = |p: &Packed, what: &str| {
                let e = p.read_all().unwrap_err().to_string();
                assert!(e.starts_with("a.whl: `m`: ") && e.contains(what), "{e}");
                let e = read_streamed(p).unwrap_err().to_string();
                assert!(e.starts_with("a.whl: `m`: ") && e.contains(what), "{e}");
                let e = blocks(p).unwrap_err().to_string();
                assert!(e.starts_with("a.whl: `m`: ") && e.contains(what), "{e}");
            };
            let (_d, p) = member(&raw, len as u64, crc ^ 1, true);
            fails(&p, "CRC-32 mismatch");
            let (_d, p) = member(&raw, len as u64 + 1, crc, true);
            fails(&p, "declared");
            let (_d, p) = member(&raw, len as u64 - 1, crc, true);
            fails(&p, "declared");
            let (_d, p) = member(&raw[..raw.len() / 2], len as u64, crc, true);
            assert!(p.read_all().is_err() && read_streamed(&p).is_err());
            // Stored, one byte changed after the CRC-32 was taken.
            let mut changed = data.clone();
            changed[len / 2] ^= 1;
            let (_d, p) = member(&changed, len as u64, crc, false);
            fails(&p, "CRC-32 mismatch");
        }
    }

    /// A stream with bytes after its end that the archive counts as the
    /// member's: read alike, but not whole (it cannot go into a gzip layer
    /// as it is).
    #[test]
    fn a_stream_followed_by_junk_is_read_but_not_whole() {
        for len in [5000usize, (WHOLE_UP_TO as usize) + 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 13) as u8).collect();
            let mut raw = deflate(&data);
            raw.extend_from_slice(b"trailing");
            let (_d, p) = member(&raw, len as u64, libdeflater::crc32(&data), true);
            assert_eq!(p.read_all().unwrap(), (data.clone(), false));
            assert!(blocks(&p).unwrap() == (data.clone(), false));
            let (out, whole) = read_streamed(&p).unwrap();
            assert!(out == data);
            assert_eq!(whole, Some(false));
        }
    }
}
