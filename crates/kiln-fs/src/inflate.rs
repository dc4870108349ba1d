//! Whole-buffer inflating with libdeflate that also says where a stream
//! ended, and gzip streams of many members read a member at a time with it.
//!
//! A wheel member whose deflate stream goes into a gzip layer as it is must
//! end exactly where the zip says (see [`Deflated`](crate::layer::Deflated));
//! the safe `libdeflater` wrapper does not return how much input a stream
//! took, so those members went through zlib-rs, 1.6–1.7× slower than
//! libdeflate here (the 64 KiB–4 MiB members of a 110-wheel PyData freeze:
//! 272 MB in 0.59 s against 0.36 s). This calls libdeflate's `_ex` entry
//! points through `libdeflate-sys`, the bindings `libdeflater` is built on.
//!
//! [`Gunzip`] uses the same call for layers kiln wrote (a gzip member per
//! MiB, see `layer::compress`): a base built by kiln is read member by
//! member with libdeflate, anything else as a stream with flate2.

use std::io::{self, Read};
use std::ptr::NonNull;

use libdeflate_sys as sys;

/// One libdeflate decompressor (per thread: it is not shared).
pub struct Inflater(NonNull<sys::libdeflate_decompressor>);

// The decompressor is plain memory owned by this value; libdeflate keeps no
// thread-local state, so moving it to another thread is sound (libdeflater's
// `Decompressor` is `Send` for the same reason).
unsafe impl Send for Inflater {}

impl Inflater {
    /// `None` only when libdeflate cannot allocate its state.
    pub fn new() -> Option<Inflater> {
        // SAFETY: no arguments; the result is checked for NULL.
        NonNull::new(unsafe { sys::libdeflate_alloc_decompressor() }).map(Inflater)
    }

    /// Inflate the raw deflate stream at the start of `raw` into `out`,
    /// which it must fill exactly. Returns how many bytes of `raw` the
    /// stream took (to the byte after its last block), or what is wrong.
    pub fn inflate(&mut self, raw: &[u8], out: &mut [u8]) -> Result<usize, String> {
        match self.call(sys::libdeflate_deflate_decompress_ex, raw, out) {
            (sys::libdeflate_result_LIBDEFLATE_SUCCESS, took, gave) if gave == out.len() => {
                Ok(took)
            }
            (sys::libdeflate_result_LIBDEFLATE_SUCCESS, _, gave) => {
                Err(format!("{gave} bytes, {} declared", out.len()))
            }
            (sys::libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE, ..) => {
                Err(format!("more bytes than the {} declared", out.len()))
            }
            _ => Err("invalid deflate data".into()),
        }
    }

    /// Inflate the gzip member at the start of `raw` into `out` (its
    /// CRC-32 and size checked by libdeflate).
    pub fn gzip_member(&mut self, raw: &[u8], out: &mut [u8]) -> Member {
        match self.call(sys::libdeflate_gzip_decompress_ex, raw, out) {
            (sys::libdeflate_result_LIBDEFLATE_SUCCESS, took, gave) => {
                Member::Inflated { took, gave }
            }
            (sys::libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE, ..) => Member::NoRoom,
            _ => Member::Bad,
        }
    }

    /// One of libdeflate's `_ex` calls (raw deflate or gzip) from `raw`
    /// into `out`: its result, the input it took and the output it gave.
    fn call(
        &mut self,
        f: ExCall,
        raw: &[u8],
        out: &mut [u8],
    ) -> (sys::libdeflate_result, usize, usize) {
        let (mut took, mut gave) = (0usize, 0usize);
        // SAFETY: `f` is one of libdeflate's `_ex` decompressors, given the
        // decompressor this value owns; the pointers and lengths come from
        // live slices that this call borrows; libdeflate writes at most
        // `out.len()` bytes to `out` and one usize to each of the counters.
        let ret = unsafe {
            f(
                self.0.as_ptr(),
                raw.as_ptr().cast(),
                raw.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut took,
                &mut gave,
            )
        };
        (ret, took, gave)
    }
}

/// The shape of libdeflate's `*_decompress_ex` calls.
type ExCall = unsafe extern "C" fn(
    *mut sys::libdeflate_decompressor,
    *const std::ffi::c_void,
    usize,
    *mut std::ffi::c_void,
    usize,
    *mut usize,
    *mut usize,
) -> sys::libdeflate_result;

/// What [`Inflater::gzip_member`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Member {
    /// One whole member: the bytes of input it took, of output it gave.
    Inflated { took: usize, gave: usize },
    /// Its output is larger than the room given.
    NoRoom,
    /// Not a whole, valid member (cut short by the end of the input, or bad).
    Bad,
}

/// Compressed bytes looked at a time, and the largest member inflated
/// whole: kiln's members hold 1 MiB each (one holding a wheel's big file
/// as it was deflated may be larger, and is read as a stream).
const WINDOW: usize = 2 << 20;

/// A gzip stream read a member at a time with libdeflate while its members
/// fit [`WINDOW`], then (from the first member that does not, or anything
/// libdeflate refuses) as a stream with flate2's multi-member decoder,
/// which reads what is left exactly as it would have read it all.
pub struct Gunzip<R: Read> {
    state: State<R>,
}

enum State<R: Read> {
    Members(Box<Members<R>>),
    Stream(Box<flate2::read::MultiGzDecoder<io::Chain<io::Cursor<Vec<u8>>, R>>>),
    /// Only while changing from one to the other.
    Changing,
}

struct Members<R> {
    inner: R,
    inflater: Inflater,
    input: Vec<u8>,
    /// The window's bytes not yet inflated.
    start: usize,
    end: usize,
    eof: bool,
    out: Vec<u8>,
    at: usize,
    len: usize,
    members: u64,
}

impl<R: Read> Gunzip<R> {
    pub fn new(inner: R) -> Gunzip<R> {
        let state = match Inflater::new() {
            Some(inflater) => State::Members(Box::new(Members {
                inner,
                inflater,
                input: vec![0; WINDOW],
                start: 0,
                end: 0,
                eof: false,
                out: vec![0; WINDOW],
                at: 0,
                len: 0,
                members: 0,
            })),
            None => State::Stream(Box::new(flate2::read::MultiGzDecoder::new(
                io::Cursor::new(Vec::new()).chain(inner),
            ))),
        };
        Gunzip { state }
    }

    /// From here on, read as a stream (the window's unread bytes first).
    fn read_as_stream(&mut self) {
        if let State::Members(m) = std::mem::replace(&mut self.state, State::Changing) {
            let rest = m.input[m.start..m.end].to_vec();
            self.state = State::Stream(Box::new(flate2::read::MultiGzDecoder::new(
                io::Cursor::new(rest).chain(m.inner),
            )));
        }
    }
}

impl<R: Read> Members<R> {
    /// Fill the window from the source, the unread bytes moved to its start.
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while self.end < self.input.len() && !self.eof {
            match self.inner.read(&mut self.input[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Gunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let m = match &mut self.state {
                State::Stream(s) => return s.read(buf),
                State::Members(m) => m,
                State::Changing => return Err(io::Error::other("a gzip reader failed before")),
            };
            if m.at < m.len {
                let n = buf.len().min(m.len - m.at);
                buf[..n].copy_from_slice(&m.out[m.at..m.at + n]);
                m.at += n;
                return Ok(n);
            }
            // Refilled once half of it is read: moving what is left to the
            // front after every member would copy the input several times.
            if m.end - m.start < WINDOW / 2 && !m.eof {
                m.fill()?;
            }
            if m.start == m.end && m.eof && m.members > 0 {
                return Ok(0);
            }
            let (start, end) = (m.start, m.end);
            match m.inflater.gzip_member(&m.input[start..end], &mut m.out) {
                Member::Inflated { took, gave } => {
                    m.start += took;
                    (m.at, m.len) = (0, gave);
                    m.members += 1;
                }
                // Perhaps cut short by the window's end: once more, whole.
                Member::Bad if m.start > 0 && !m.eof => m.fill()?,
                Member::NoRoom | Member::Bad => self.read_as_stream(),
            }
        }
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor, freed once.
        unsafe { sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
        let mut out = vec![0; c.deflate_compress_bound(data.len())];
        let n = c.deflate_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap());
        let mut out = vec![0; c.gzip_compress_bound(data.len())];
        let n = c.gzip_compress(data, &mut out).unwrap();
        out.truncate(n);
        out
    }

    /// What flate2 alone makes of `stream`: the bytes, or that it failed.
    fn flate2_reads(stream: &[u8]) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(stream)
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(drop)
    }

    fn gunzip_reads(stream: &[u8]) -> Result<Vec<u8>, ()> {
        let mut out = Vec::new();
        // Small reads, as a tar parser makes them.
        let mut r = Gunzip::new(stream);
        let mut buf = [0u8; 7000];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => return Err(()),
            }
        }
    }

    /// Members that fit the window (kiln's), one that does not (a foreign
    /// layer's single member), the two mixed, and streams that are cut,
    /// empty or followed by junk: the same bytes, or the same failure, as
    /// flate2 reading it all.
    #[test]
    fn gunzip_reads_what_flate2_reads() {
        let data: Vec<u8> = (0..(5u32 << 20) + 777)
            .map(|i| ((i * 7 % 251) ^ (i >> 12)) as u8)
            .collect();
        let kiln: Vec<u8> = data.chunks(1 << 20).flat_map(gzip).collect();
        let whole = gzip(&data);
        let mixed = [gzip(&data[..1000]), whole.clone(), gzip(&data[..300_000])].concat();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("kiln", kiln.clone()),
            ("whole", whole.clone()),
            ("mixed", mixed),
            ("cut", kiln[..kiln.len() - 100].to_vec()),
            ("cut in a header", kiln[..5].to_vec()),
            ("empty", Vec::new()),
            ("junk after", [kiln.clone(), b"junk".to_vec()].concat()),
            ("zeros after", [kiln.clone(), vec![0; 600]].concat()),
            ("empty member", [gzip(b""), kiln.clone()].concat()),
        ];
        for (what, stream) in cases {
            let want = flate2_reads(&stream);
            assert_eq!(gunzip_reads(&stream), want, "{what}");
            if what == "kiln" || what == "whole" {
                assert_eq!(want.as_deref(), Ok(&data[..]), "{what}");
            }
        }
        // A member cut by the window's end is read whole once it is
        // refilled, not given up to the stream (incompressible bytes: the
        // second member starts 0.9 MiB in and takes 1.2 MiB more).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..(21u32 << 20) / 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (a, b) = noise.split_at(943_718);
        let straddling = [gzip(a), gzip(b)].concat();
        let mut r = Gunzip::new(&straddling[..]);
        let mut back = Vec::new();
        r.read_to_end(&mut back).unwrap();
        assert_eq!(back, noise);
        assert!(
            matches!(r.state, State::Members(_)),
            "fell back to a stream"
        );
        // A damaged member is an error either way.
        let mut bad = kiln.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x55;
        assert!(gunzip_reads(&bad).is_err());
    }

    #[test]
    fn says_where_the_stream_ends_and_what_is_wrong() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let raw = deflate(&data);
        let mut inf = Inflater::new().unwrap();
        let mut out = vec![0; data.len()];
        assert_eq!(inf.inflate(&raw, &mut out), Ok(raw.len()));
        assert_eq!(out, data);
        // Bytes after the stream are not taken: the caller sees them.
        let mut junk = raw.clone();
        junk.extend_from_slice(b"trailing");
        assert_eq!(inf.inflate(&junk, &mut out), Ok(raw.len()));
        // A size other than the stream's is an error either way.
        let mut short = vec![0; data.len() - 1];
        assert!(inf
            .inflate(&raw, &mut short)
            .unwrap_err()
            .contains("more bytes"));
        let mut long = vec![0; data.len() + 1];
        assert!(inf
            .inflate(&raw, &mut long)
            .unwrap_err()
            .contains("bytes, "));
        assert_eq!(
            inf.inflate(&raw[..raw.len() / 2], &mut out),
            Err("invalid deflate data".into())
        );
    }
}
