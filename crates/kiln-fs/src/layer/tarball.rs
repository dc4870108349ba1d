//! Deterministic tar writing: ustar headers with a fixed mtime, numeric
//! owners only (no user names), PAX records only where ustar cannot hold a
//! path. The same entries always give the same bytes.

use std::fs::File;
use std::io::{self, Read, Write};

use super::inflating::{self, Ahead};
use super::spool::SpoolSlice;
use super::tree::{Entry, EntryKind};

/// Where tar records go: a plain writer, or a gzip compressor that takes a
/// file's bytes already deflated elsewhere (a wheel member) as they are.
pub(crate) trait RecordSink: Write {
    /// Whether [`RecordSink::put_deflated`] may be called.
    fn takes_deflated(&self) -> bool {
        false
    }

    /// Write `s`'s bytes as their deflated form (only when
    /// [`RecordSink::takes_deflated`] and `s` has one); `ahead`: its bytes,
    /// when they were inflated ahead.
    fn put_deflated(&mut self, _s: &SpoolSlice, _ahead: Option<inflating::Read>) -> io::Result<()> {
        Err(io::Error::other("this writer takes no deflated bytes"))
    }

    /// Whether it reads the bytes of the deflated members it is given (a
    /// gzip writer that takes them as they are and hashes nothing does
    /// not): they are then inflated ahead of it.
    fn reads_members(&self) -> bool {
        true
    }

    /// Whether the bytes these records stand for were compressed before,
    /// taking each deflate stream offered as it is: a packed member whose
    /// stream turns out not to be whole when read is then a
    /// [`StreamNotWhole`] error.
    fn stands_for_streams(&self) -> bool {
        false
    }
}

/// A part's compressed bytes (built ahead, unread) took a member's deflate
/// stream that reading shows is not whole: they are not that member's.
#[derive(Debug)]
pub(crate) struct StreamNotWhole(pub(crate) String);

impl std::fmt::Display for StreamNotWhole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: its deflate stream does not end where its archive says",
            self.0
        )
    }
}

impl std::error::Error for StreamNotWhole {}

impl StreamNotWhole {
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|e| e.is::<StreamNotWhole>())
    }
}

impl RecordSink for Vec<u8> {}

/// Write `entries` (already sorted) as a complete tar stream, trailer included.
pub(crate) fn write_tar<W: RecordSink>(entries: &[Entry], mtime: u64, out: W) -> io::Result<W> {
    let mut ahead = Ahead::new(entries, out.reads_members());
    let mut b = tar::Builder::new(out);
    for (i, e) in entries.iter().enumerate() {
        append(&mut b, e, mtime, ahead.take(i))?;
    }
    b.into_inner()
}

/// Write `entries` as tar records with no end-of-archive trailer: one part
/// of a stream [`write_tar`] would write whole (records are self-contained,
/// so parts written one after the other, then the trailer, are the same
/// bytes as all the entries at once).
pub(crate) fn write_records<W: RecordSink>(entries: &[Entry], mtime: u64, out: W) -> io::Result<W> {
    let mut ahead = Ahead::new(entries, out.reads_members());
    let mut b = tar::Builder::new(Muffled { inner: Some(out) });
    for (i, e) in entries.iter().enumerate() {
        append(&mut b, e, mtime, ahead.take(i))?;
    }
    // The builder writes its trailer when it finishes; it goes nowhere.
    let out = b.get_mut().inner.take();
    b.into_inner()?;
    out.ok_or_else(|| io::Error::other("tar writer lost its output"))
}

/// The end-of-archive marker [`write_tar`] ends with.
pub(crate) const TRAILER: [u8; 1024] = [0; 1024];

/// A writer that swallows everything once its output is taken.
struct Muffled<W> {
    inner: Option<W>,
}

impl<W: RecordSink> RecordSink for Muffled<W> {
    fn takes_deflated(&self) -> bool {
        self.inner.as_ref().is_some_and(|w| w.takes_deflated())
    }

    fn put_deflated(&mut self, s: &SpoolSlice, ahead: Option<inflating::Read>) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.put_deflated(s, ahead),
            None => Ok(()),
        }
    }

    fn reads_members(&self) -> bool {
        self.inner.as_ref().is_some_and(|w| w.reads_members())
    }

    fn stands_for_streams(&self) -> bool {
        self.inner.as_ref().is_some_and(|w| w.stands_for_streams())
    }
}

impl<W: Write> Write for Muffled<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Some(w) => w.write(data),
            None => Ok(data.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Append `e`; `ahead`: its bytes, when they were inflated ahead.
fn append<W: RecordSink>(
    b: &mut tar::Builder<W>,
    e: &Entry,
    mtime: u64,
    ahead: Option<inflating::Read>,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mtime(mtime);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mode(e.mode);
    let mut pax: Vec<(&str, &[u8])> = Vec::new();
    let name = match e.kind {
        EntryKind::Dir => format!("{}/", e.path),
        _ => e.path.clone(),
    };
    if h.set_path(&name).is_err() {
        pax.push(("path", name.as_bytes()));
        set_truncated_name(&mut h, &name);
    }
    match &e.kind {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        EntryKind::Symlink { target } => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            if h.set_link_name(target).is_err() {
                pax.push(("linkpath", target.as_bytes()));
            }
        }
        EntryKind::File { size, .. } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*size);
        }
        EntryKind::Data(d) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(d.len() as u64);
        }
        EntryKind::Spooled(s) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(s.len());
        }
    }
    if !pax.is_empty() {
        b.append_pax_extensions(pax.iter().copied())?;
    }
    h.set_cksum();
    match &e.kind {
        EntryKind::File { src, size } => {
            let f = File::open(src)?;
            // Read exactly the size recorded in the header; a file that
            // changed size while we read it would corrupt the stream.
            let mut r = SizeChecked {
                inner: f.take(*size),
                left: *size,
                path: src,
            };
            b.append(&h, &mut r)
        }
        EntryKind::Data(d) => b.append(&h, d.as_slice()),
        EntryKind::Spooled(s) => {
            // What `append` writes: the header, the bytes (in their deflated
            // form where the sink takes it), the padding. Read here in
            // blocks of up to 1 MiB, where `append` would copy through 8 KiB.
            let w = b.get_mut();
            w.write_all(h.as_bytes())?;
            if s.deflated().is_some() && w.takes_deflated() {
                w.put_deflated(s, ahead)?;
            } else {
                // (A spool shorter than the slice is an error of its reader.)
                let whole = inflating::each_block(s, ahead, |bytes| w.write_all(bytes))?;
                if s.deflated().is_some() && w.stands_for_streams() && whole == Some(false) {
                    return Err(io::Error::other(StreamNotWhole(e.path.clone())));
                }
            }
            let pad = (512 - s.len() % 512) % 512;
            w.write_all(&[0; 512][..pad as usize])
        }

        _ => b.append(&h, io::empty()),
    }
}

/// The ustar name field when the real path lives in a PAX record: the
/// path's tail, so old readers still see something meaningful.
fn set_truncated_name(h: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let tail = &bytes[bytes.len().saturating_sub(99)..];
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..tail.len()].copy_from_slice(tail);
}

struct SizeChecked<'a, R> {
    inner: R,
    left: u64,
    path: &'a std::path::Path,
}

impl<R: Read> Read for SizeChecked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was being read", self.path.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
