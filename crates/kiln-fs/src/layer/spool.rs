//! Unpacked package files kept on disk instead of in memory.
//!
//! Installing wheels and `.deb`s unpacks every file of every package; held
//! in memory, the peak RSS of a build grows with the package set. A
//! [`Spool`] is one unnamed file in the cache's `tmp` bucket (`O_TMPFILE`:
//! it has no name, so nothing is left behind when the last entry that
//! refers to it is dropped or the process dies) that unpacking appends
//! to; an entry holds a [`SpoolSlice`] of it and the bytes are read back
//! only when the layer tar is written or something asks for them.
//!
//! Appends reserve their range with one atomic add and write with
//! `pwrite`, reads use `pread`: parallel unpackers and layer writers share
//! a spool without a lock or a shared file position.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::packed::{Packed, PackedReader};

/// Raise this process's soft limit on open files to the hard limit, once:
/// a build keeps each wheel (its members are read packed) and each spool
/// of unpacked files open until its layers are written, and a few hundred
/// wheels pass the usual soft limit of 1024 (Go programs raise it at
/// start for the same kind of reason).
pub fn raise_open_file_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        // `None` is unlimited; the soft limit is never above the hard one.
        if limit.current != limit.maximum {
            limit.current = limit.maximum;
            // Best effort: at the old limit a very large stage fails with
            // "too many open files", which names the cause.
            let _ = setrlimit(Resource::Nofile, limit);
        }
    });
}

/// An append-only scratch file of file contents (see the module docs).
pub struct Spool {
    file: File,
    end: AtomicU64,
    /// Set when a read of it failed: whatever took the bytes as missing
    /// must not end up in an image, so layer writing refuses the spool.
    failed: AtomicBool,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("len", &self.end.load(Ordering::Relaxed))
            .finish()
    }
}

/// Bytes copied per `pwrite` when a member is streamed in.
const CHUNK: usize = 256 << 10;

impl Spool {
    /// A new spool: an unnamed file in `dir`.
    pub fn new_in(dir: &Path) -> io::Result<Arc<Spool>> {
        Ok(Arc::new(Spool {
            file: tempfile::tempfile_in(dir)?,
            end: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        }))
    }

    /// A spool appending to `file` (empty): a named temporary file that
    /// is kept once filled (a wheel's unpacked members, kept in the cache).
    pub fn over(file: File) -> Arc<Spool> {
        Arc::new(Spool {
            file,
            end: AtomicU64::new(0),
            failed: AtomicBool::new(false),
        })
    }

    /// An existing file as a read-only spool whose slices are layer files
    /// (a cached blob of concatenated outputs): opened now, so a later
    /// removal of the path does not affect it.
    pub fn open(path: &Path) -> io::Result<Arc<Spool>> {
        Spool::open_file(File::open(path)?)
    }

    /// [`Spool::open`] of a file already open.
    pub fn open_file(file: File) -> io::Result<Arc<Spool>> {
        let len = file.metadata()?.len();
        Ok(Arc::new(Spool {
            file,
            end: AtomicU64::new(len),
            failed: AtomicBool::new(false),
        }))
    }

    /// Bytes already in the spool, `len` from `offset`.
    pub fn slice_at(self: &Arc<Self>, offset: u64, len: u64) -> io::Result<SpoolSlice> {
        match offset.checked_add(len) {
            Some(end) if end <= self.end.load(Ordering::Relaxed) => Ok(self.slice(offset, len)),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{len} bytes at {offset} lie past the end of the spool"),
            )),
        }
    }

    /// Append `bytes`.
    pub fn put(self: &Arc<Self>, bytes: &[u8]) -> io::Result<SpoolSlice> {
        let len = bytes.len() as u64;
        let offset = self.end.fetch_add(len, Ordering::Relaxed);
        self.file.write_all_at(bytes, offset)?;
        Ok(self.slice(offset, len))
    }

    /// Append exactly `len` bytes read from `r`, without holding them all
    /// (a `.deb` member as it is decompressed). Fewer bytes is an
    /// `UnexpectedEof` error; the bytes after `len` are not read.
    pub fn put_reader(self: &Arc<Self>, r: impl Read, len: u64) -> io::Result<SpoolSlice> {
        let offset = self.end.fetch_add(len, Ordering::Relaxed);
        let mut r = r.take(len);
        let mut buf = vec![0u8; (len as usize).clamp(1, CHUNK)];
        let mut at = 0u64;
        while at < len {
            let n = match r.read(&mut buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{at} of {len} bytes"),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.file.write_all_at(&buf[..n], offset + at)?;
            at += n as u64;
        }
        Ok(self.slice(offset, len))
    }

    fn slice(self: &Arc<Self>, offset: u64, len: u64) -> SpoolSlice {
        SpoolSlice {
            place: Place::Spool {
                spool: self.clone(),
                offset,
            },
            len,
            known: None,
            deflated: None,
        }
    }

    /// As if a read had failed: every later read is refused.
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    fn check(&self) -> io::Result<()> {
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "a spool file of unpacked package files could not be read back earlier in this build",
            ));
        }
        Ok(())
    }
}

/// One file's bytes: in a [`Spool`], or [`Packed`] in an archive.
#[derive(Clone, Debug)]
pub struct SpoolSlice {
    place: Place,
    len: u64,
    /// A name no other bytes have (a wheel member's place in its verified
    /// wheel, see [`SpoolSlice::known_as`]): a layer's memo key uses it
    /// instead of reading and hashing the bytes again.
    known: Option<Arc<str>>,
    /// The same bytes, deflated, elsewhere (see [`Deflated`]).
    deflated: Option<Arc<Deflated>>,
}

#[derive(Clone, Debug)]
enum Place {
    Spool { spool: Arc<Spool>, offset: u64 },
    Packed(Arc<Packed>),
}

/// A slice's bytes as a raw deflate stream in another file: a wheel
/// member as the wheel holds it. A gzip layer takes the stream as it is,
/// wrapped in a gzip member of its own, instead of compressing the bytes
/// again (the wheel's builder already did, usually harder than gzip
/// level 1), when it inflates to exactly those bytes with nothing after
/// it: checked as the layer reads the bytes for its diff_id, from the
/// slice's [`Packed`] member (or, for a spooled slice, by whoever attached
/// the stream).
#[derive(Debug)]
pub struct Deflated {
    file: Arc<File>,
    offset: u64,
    len: u64,
    crc32: u32,
    /// Names the stream in layer memo keys: the same bytes deflated
    /// otherwise are other layer bytes.
    id: Arc<str>,
}

impl Deflated {
    /// The `len` bytes at `offset` of `file`, a deflate stream of bytes
    /// whose CRC-32 is `crc32`, named `id` (unique to these stream bytes:
    /// the wheel's digest and the offset, say).
    pub fn new(file: Arc<File>, offset: u64, len: u64, crc32: u32, id: String) -> Deflated {
        Deflated {
            file,
            offset,
            len,
            crc32,
            id: id.into(),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn crc32(&self) -> u32 {
        self.crc32
    }

    /// Where the stream starts in its file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Copy the stream into `out`, `pread` by `pread` (threads share the file),
    /// through a buffer no larger than the stream (most are a few KiB: a
    /// 256 KiB one zeroed for each was 1% of a cold freeze's CPU).
    pub(crate) fn copy_to(&self, out: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let range = FileRange::new(&self.file, self.offset, self.len);
        match each_block_of(range, self.len.clamp(1, 256 << 10) as usize, out) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a wheel in the cache is shorter than when it was unpacked",
            )),
            r => r.map(drop),
        }
    }
}

/// Hand `r`'s bytes to `f` block by block; returns how many there were.
pub(crate) fn each_block(
    r: impl io::Read,
    f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    each_block_of(r, 256 << 10, f)
}

/// [`each_block`] in blocks of `size` bytes.
pub(crate) fn each_block_of(
    mut r: impl io::Read,
    size: usize,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<u64> {
    let mut block = vec![0u8; size];
    let mut total = 0;
    loop {
        let n = match r.read(&mut block) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        f(&block[..n])?;
        total += n as u64;
    }
}

/// `len` bytes of a file from `offset`, read by `pread`: threads share
/// the file without a shared position. A file that ends before the range
/// does is an `UnexpectedEof` error, not a short read.
pub struct FileRange<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl<'a> FileRange<'a> {
    pub fn new(file: &'a File, offset: u64, len: u64) -> Self {
        FileRange {
            file,
            at: offset,
            end: offset + len,
        }
    }
}

impl Read for FileRange<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.end - self.at) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.at += n as u64;
        Ok(n)
    }
}

impl SpoolSlice {
    /// The bytes of an archive's member, read from the archive when they
    /// are wanted (see [`Packed`]).
    pub fn packed(p: Packed) -> SpoolSlice {
        SpoolSlice {
            len: p.size(),
            place: Place::Packed(Arc::new(p)),
            known: None,
            deflated: None,
        }
    }

    /// Whether the bytes are read from an archive (and checked) each time.
    pub fn is_packed(&self) -> bool {
        matches!(self.place, Place::Packed(_))
    }

    /// These bytes, also held deflated as `d` (see [`Deflated`]).
    pub fn deflated_as(mut self, d: Deflated) -> SpoolSlice {
        self.deflated = Some(Arc::new(d));
        self
    }

    /// The deflated form given by [`SpoolSlice::deflated_as`], if any.
    pub fn deflated(&self) -> Option<&Deflated> {
        self.deflated.as_deref()
    }

    /// Its packed member, when that is deflated and inflated whole (what
    /// is worth inflating ahead of the writer, see `layer::inflating`).
    pub(crate) fn inflated_whole(&self) -> Option<Arc<Packed>> {
        match &self.place {
            Place::Packed(p) if p.inflated_whole() => Some(p.clone()),
            _ => None,
        }
    }

    pub(crate) fn shared_deflated(&self) -> Option<Arc<Deflated>> {
        self.deflated.clone()
    }

    /// These bytes, known by `name` (see [`SpoolSlice::known_name`]): a
    /// name no other bytes have, such as their hash or their place in a
    /// verified, content-addressed package. A layer built from other bytes
    /// under the same name would be taken from the cache.
    pub fn known_as(mut self, name: impl Into<Arc<str>>) -> SpoolSlice {
        self.known = Some(name.into());
        self
    }

    /// The name given by [`SpoolSlice::known_as`], if any.
    pub fn known_name(&self) -> Option<&str> {
        self.known.as_deref()
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where these bytes start in their spool's file (`None` when packed).
    pub fn spool_offset(&self) -> Option<u64> {
        match &self.place {
            Place::Spool { offset, .. } => Some(*offset),
            Place::Packed(_) => None,
        }
    }

    /// A reader of exactly these bytes (a failed spool refuses to be read;
    /// a packed member's last read fails when it is damaged).
    pub fn reader(&self) -> io::Result<SliceReader<'_>> {
        Ok(SliceReader(match &self.place {
            Place::Spool { spool, .. } => {
                spool.check()?;
                Reading::Spool { slice: self, at: 0 }
            }
            Place::Packed(p) => Reading::Packed(p.reader()?),
        }))
    }

    /// Hand the bytes to `f` block by block, without a reader's copy;
    /// for a packed member, returns whether its deflate stream ended
    /// where its archive says (see [`Deflated`]).
    pub(crate) fn for_each_block(
        &self,
        f: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<Option<bool>> {
        match &self.place {
            Place::Packed(p) => p.for_each_block(f).map(Some),
            Place::Spool { .. } => {
                let block = self.len.clamp(1, 1 << 20) as usize;
                each_block_of(self.reader()?, block, f).map(|_| None)
            }
        }
    }

    /// All the bytes, read now.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let (spool, offset) = match &self.place {
            Place::Spool { spool, offset } => (spool, *offset),
            Place::Packed(p) => return p.read_all().map(|(bytes, _)| bytes),
        };
        let mut out = vec![0u8; self.len as usize];
        spool.check()?;
        spool
            .file
            .read_exact_at(&mut out, offset)
            .inspect_err(|_| spool.failed.store(true, Ordering::Relaxed))?;
        Ok(out)
    }
}

/// See [`SpoolSlice::reader`].
pub struct SliceReader<'a>(Reading<'a>);

enum Reading<'a> {
    Spool { slice: &'a SpoolSlice, at: u64 },
    Packed(PackedReader<'a>),
}

impl SliceReader<'_> {
    /// Once every byte is read, for a packed member: whether its deflate
    /// stream ended exactly where its archive says (see [`Deflated`]).
    pub fn whole_stream(&self) -> Option<bool> {
        match &self.0 {
            Reading::Spool { .. } => None,
            Reading::Packed(r) => r.whole_stream(),
        }
    }
}

impl Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Reading::Spool { slice, at } => {
                let n = slice.read_at(buf, *at)?;
                *at += n as u64;
                Ok(n)
            }
            Reading::Packed(r) => r.read(buf),
        }
    }
}

impl SpoolSlice {
    /// Read from `at` bytes into a spooled slice (0 only at its end). A
    /// packed member is read in order, through [`SpoolSlice::reader`].
    pub(crate) fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<usize> {
        let (s, offset) = match &self.place {
            Place::Spool { spool, offset } => (spool, *offset),
            Place::Packed(_) => return Err(io::Error::other("a packed member is read in order")),
        };
        let left = self.len.saturating_sub(at);
        let want = (buf.len() as u64).min(left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = s
            .file
            .read_at(&mut buf[..want], offset + at)
            .inspect_err(|_| s.failed.store(true, Ordering::Relaxed))?;
        if n == 0 {
            s.failed.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a spool file of unpacked package files is shorter than written",
            ));
        }
        Ok(n)
    }
}

/// A regular file's bytes: held in memory (small or generated files, ones
/// kiln reads itself) or in a spool.
#[derive(Clone, Debug)]
pub enum Content {
    Held(Arc<Vec<u8>>),
    Spooled(SpoolSlice),
}

impl Content {
    pub fn len(&self) -> u64 {
        match self {
            Content::Held(b) => b.len() as u64,
            Content::Spooled(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes: borrowed when held, read from the spool otherwise.
    pub fn bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        match self {
            Content::Held(b) => Ok(Cow::Borrowed(b.as_slice())),
            Content::Spooled(s) => s.read_all().map(Cow::Owned),
        }
    }

    /// The layer entry kind for these bytes.
    pub fn kind(&self) -> super::EntryKind {
        match self {
            Content::Held(b) => super::EntryKind::Data(b.clone()),
            Content::Spooled(s) => super::EntryKind::Spooled(s.clone()),
        }
    }
}

/// The bytes of an archive member whose header says it holds `claimed`
/// bytes, read into memory (the held counterpart of
/// [`Spool::put_reader`]). The claim is not trusted for the reservation:
/// at most 1 MiB is reserved up front, so a hostile header saying a
/// terabyte is a read error at the archive's end, not an abort.
pub fn read_claimed(mut r: impl Read, claimed: u64) -> io::Result<Vec<u8>> {
    let mut b = Vec::with_capacity(claimed.min(1 << 20) as usize);
    r.read_to_end(&mut b)?;
    Ok(b)
}

impl From<Vec<u8>> for Content {
    fn from(b: Vec<u8>) -> Content {
        Content::Held(Arc::new(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{tarball, Entry, EntryKind};

    fn entries(mut kind: impl FnMut(&[u8]) -> EntryKind) -> Vec<Entry> {
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        let long = format!("usr/lib/{}/mod.py", "d".repeat(120));
        [
            ("etc/empty", &b""[..]),
            ("usr/bin/tool", &b"#!/bin/sh\necho hi\n"[..]),
            ("usr/lib/big.so", &big[..]),
            (long.as_str(), &b"x = 1\n"[..]),
        ]
        .iter()
        .map(|(p, d)| Entry {
            path: p.to_string(),
            kind: kind(d),
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
        .collect()
    }

    #[test]
    fn spooled_entries_write_the_same_tar_and_key_as_data() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new_in(dir.path()).unwrap();
        // Something before, so offsets are not 0; streamed and whole puts.
        spool.put(b"unrelated").unwrap();
        let held = entries(|d| EntryKind::Data(Arc::new(d.to_vec())));
        let mut n = 0;
        let spooled = entries(|d| {
            n += 1;
            let s = if n % 2 == 0 {
                spool.put(d).unwrap()
            } else {
                spool.put_reader(d, d.len() as u64).unwrap()
            };
            Content::Spooled(s).kind()
        });
        assert!(matches!(spooled[2].kind, EntryKind::Spooled(_)));
        let tar = |es: &[Entry]| tarball::write_tar(es, 7, Vec::new()).unwrap();
        assert_eq!(tar(&held), tar(&spooled));
        let gz = crate::layer::Compression::Gzip { level: 1 };
        assert_eq!(
            crate::layer::input_key(&held, &[], 7, gz).unwrap(),
            crate::layer::input_key(&spooled, &[], 7, gz).unwrap()
        );
        for (h, s) in held.iter().zip(&spooled) {
            assert_eq!(h.kind.file_len(), s.kind.file_len());
            assert_eq!(
                h.kind.file_bytes().unwrap().unwrap(),
                s.kind.file_bytes().unwrap().unwrap()
            );
        }
        // The spool has no name: nothing is left in the directory, during
        // or after.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        drop((spooled, spool));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn short_input_and_failed_reads_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new_in(dir.path()).unwrap();
        let e = spool.put_reader(&b"abc"[..], 5).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let ok = spool.put(b"fine").unwrap();
        assert_eq!(ok.read_all().unwrap(), b"fine");
        // A slice past the end (as if the file were cut short): the read
        // fails, and from then on the spool refuses every read, so bytes
        // taken as missing cannot end up in a layer.
        let cut = SpoolSlice {
            place: Place::Spool {
                spool: spool.clone(),
                offset: 1 << 20,
            },
            len: 3,
            known: None,
            deflated: None,
        };
        assert!(cut.read_all().is_err());
        assert!(ok.read_all().is_err());
        let entry = Entry {
            path: "f".into(),
            kind: EntryKind::Spooled(ok),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert!(tarball::write_tar(&[entry], 0, Vec::new()).is_err());
    }
}
