//! Parallel, deterministic compression with the diff_id computed on the way.
//!
//! The uncompressed stream is cut into fixed-size chunks; each chunk is
//! compressed on its own (a gzip member or a zstd frame) on a dedicated
//! thread pool, and the results are written in order. Concatenated gzip
//! members and zstd frames are one valid stream for every reader, and since
//! chunk boundaries depend only on the input, the bytes do not depend on the
//! thread count. This is what pigz does, without the shared dictionary, at a
//! small cost in ratio (<1% with 1 MiB chunks).
//!
//! A file whose bytes are already deflated elsewhere (a big wheel member)
//! goes into a gzip stream as that deflate stream in a member of its own;
//! its plain bytes are only hashed for the diff_id.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use sha2::{Digest as _, Sha256};

use kiln_core::digest::Digest;

use super::inflating;
use super::spool::{each_block, Deflated, SpoolSlice};
use super::tarball::RecordSink;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip { level: u32 },
    Zstd { level: i32 },
}

/// gzip's default level. 1, as go-containerregistry (ko, crane, kaniko)
/// defaults to: on a 110-wheel PyData freeze it builds the layers 1.7×
/// faster than level 6 for 8% more bytes (245 vs 227 MB); `gzip:6` (or
/// zstd, smaller and faster still) is one flag away.
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

impl Compression {
    /// What `--compression` defaults to: gzip, which every client reads.
    pub const DEFAULT: Compression = Compression::Gzip {
        level: DEFAULT_GZIP_LEVEL,
    };

    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd { .. } => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Parse `gzip`, `zstd`, optionally with `:LEVEL`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => (
                n,
                Some(
                    l.parse::<i32>()
                        .map_err(|_| format!("invalid compression level in `{s}`"))?,
                ),
            ),
            None => (s, None),
        };
        match name {
            "gzip" => {
                let level = level.unwrap_or(DEFAULT_GZIP_LEVEL as i32);
                if !(1..=9).contains(&level) {
                    return Err(format!("gzip level must be 1..=9, got {level}"));
                }
                Ok(Compression::Gzip {
                    level: level as u32,
                })
            }
            "zstd" => {
                let level = level.unwrap_or(3);
                if !(1..=19).contains(&level) {
                    return Err(format!("zstd level must be 1..=19, got {level}"));
                }
                Ok(Compression::Zstd { level })
            }
            _ => Err(format!(
                "unknown compression `{s}`: expected gzip or zstd (optionally :LEVEL)"
            )),
        }
    }

    fn compress(&self, chunk: &[u8]) -> io::Result<Vec<u8>> {
        match *self {
            Compression::Gzip { level } => {
                // libdeflate: whole-buffer deflate, about twice zlib's speed
                // at the same level and ratio, and a chunk is a whole buffer.
                // Its gzip header has mtime 0 and no file name: deterministic.
                // Level 0 writes stored blocks.
                let level = if stored(chunk) { 0 } else { level };
                let lvl = libdeflater::CompressionLvl::new(level as i32)
                    .map_err(|_| io::Error::other(format!("gzip level {level}")))?;
                let mut enc = libdeflater::Compressor::new(lvl);
                let mut out = vec![0; enc.gzip_compress_bound(chunk.len())];
                let n = enc
                    .gzip_compress(chunk, &mut out)
                    .map_err(|e| io::Error::other(format!("gzip: {e}")))?;
                out.truncate(n);
                Ok(out)
            }
            Compression::Zstd { level } => zstd::bulk::compress(chunk, level),
        }
    }
}

/// Chunk size: a property of the output format, never of the machine.
const CHUNK: usize = 1 << 20;

/// Whether a gzip chunk goes out stored rather than compressed: its bytes
/// look random (in each of four 16 KiB samples, the count of every byte
/// value as even as random data's: chi-square under twice its mean) and
/// 64 KiB of its middle do not shrink by 1% at level 1 (deflate finds
/// repeats within 32 KiB, which byte counts do not see). Such a chunk
/// (already-compressed files: archives, images, packed data) cost
/// libdeflate's fastest level about five times storing it, to gain
/// nothing. Integers and libdeflate only, so the decision and the bytes
/// are the same on every host.
fn stored(chunk: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    const TRIAL: usize = 64 << 10;
    if chunk.len() < TRIAL {
        return false;
    }
    let step = (chunk.len() - SAMPLE) / 3;
    let even = (0..4).all(|i| {
        let mut counts = [0u32; 256];
        for &b in &chunk[i * step..i * step + SAMPLE] {
            counts[b as usize] += 1;
        }
        // Each value is expected SAMPLE / 256 = 64 times; random bytes
        // give a chi-square near 255 (its degrees of freedom).
        let expected = (SAMPLE / 256) as i64;
        let spread: i64 = counts
            .iter()
            .map(|&c| (i64::from(c) - expected).pow(2))
            .sum();
        spread < 2 * 255 * expected
    });
    if !even {
        return false;
    }
    let mid = (chunk.len() - TRIAL) / 2;
    // Level 1 (libdeflater's `fastest()` is its level 0, which stores).
    let Ok(one) = libdeflater::CompressionLvl::new(1) else {
        return false;
    };
    let mut trial = libdeflater::Compressor::new(one);
    let mut out = vec![0; trial.deflate_compress_bound(TRIAL)];
    match trial.deflate_compress(&chunk[mid..mid + TRIAL], &mut out) {
        Ok(n) => n * 100 >= TRIAL * 99,
        Err(_) => false,
    }
}

/// The pool compression jobs run on. Separate from rayon's global pool so a
/// layer being built on a global worker can wait for its chunks without
/// starving them.
pub(crate) fn pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("kiln-compress-{i}"))
            .build()
            .expect("cannot start compression threads")
    })
}

/// What a finished stream produced.
#[derive(Debug, Clone)]
pub(crate) struct Summary {
    /// sha256 of the uncompressed bytes (the layer's diff_id), unless the
    /// encoder was made [`ParallelEncoder::unhashed`].
    pub(crate) diff_id: Option<Digest>,
    /// Where each [`ParallelEncoder::cut`] fell in the compressed output.
    pub(crate) cuts: Vec<Cut>,
}

/// The compressed bytes between one cut (or the start) and the next.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// What is waiting to be written out, in order.
enum Pending {
    Chunk(mpsc::Receiver<io::Result<Vec<u8>>>),
    Cut,
    /// A file's bytes as a gzip member around their deflate stream.
    Deflated(Arc<Deflated>, u64),
}

/// A `Write` that compresses into `out` and hashes the uncompressed input.
pub(crate) struct ParallelEncoder<W: Write> {
    out: W,
    compression: Compression,
    /// None: the plain bytes are not hashed (see [`Self::unhashed`]).
    diff: Option<Sha256>,
    raw_len: u64,
    buf: Vec<u8>,
    inflight: VecDeque<Pending>,
    max_inflight: usize,
    /// Compressed bytes written, and where the last cut fell.
    out_len: u64,
    since_cut: u64,
    cuts: Vec<Cut>,
}

impl<W: Write> ParallelEncoder<W> {
    pub(crate) fn new(out: W, compression: Compression) -> Self {
        let mut enc = Self::unhashed(out, compression);
        enc.diff = Some(Sha256::new());
        enc
    }

    /// An encoder that does not hash what it compresses: for a part built
    /// ahead of its layer, whose own diff_id nothing reads (the layer's
    /// covers its bytes again, in order). A member passed in deflated is
    /// then not read at all: the layer's reading checks it.
    pub(crate) fn unhashed(out: W, compression: Compression) -> Self {
        ParallelEncoder {
            out,
            compression,
            diff: None,
            raw_len: 0,
            buf: Vec::with_capacity(CHUNK),
            inflight: VecDeque::new(),
            max_inflight: pool().current_num_threads() * 2 + 1,
            out_len: 0,
            since_cut: 0,
            cuts: Vec::new(),
        }
    }

    fn dispatch(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        let c = self.compression;
        pool().spawn(move || {
            let _ = tx.send(c.compress(&chunk));
        });
        self.inflight.push_back(Pending::Chunk(rx));
        while self.inflight.len() >= self.max_inflight {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        match self.inflight.pop_front() {
            Some(Pending::Chunk(rx)) => {
                let data = rx
                    .recv()
                    .map_err(|_| io::Error::other("compression worker stopped"))??;
                self.put_out(&data)?;
            }
            Some(Pending::Cut) => {
                let start = std::mem::replace(&mut self.since_cut, self.out_len);
                self.cuts.push(Cut {
                    offset: start,
                    len: self.out_len - start,
                });
            }
            Some(Pending::Deflated(d, size)) => {
                // gzip's member header with no mtime, flags or name, XFL 0
                // and OS "unknown" (RFC 1952), the stream, then its CRC-32
                // and length mod 2^32: a reader inflates it like any member.
                self.put_out(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
                d.copy_to(|bytes| self.put_out(bytes))?;
                let mut trailer = [0u8; 8];
                trailer[..4].copy_from_slice(&d.crc32().to_le_bytes());
                trailer[4..].copy_from_slice(&(size as u32).to_le_bytes());
                self.put_out(&trailer)?;
            }
            None => {}
        }
        Ok(())
    }

    fn put_out(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.out_len += data.len() as u64;
        Ok(())
    }

    /// End a part here: what was written since the last cut is compressed
    /// on its own (its last chunk may be short), so the part's compressed
    /// bytes depend on the part alone and can be spliced into another
    /// stream. [`Summary::cuts`] says where each part's bytes fell.
    pub(crate) fn cut(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.dispatch(chunk)?;
        }
        self.inflight.push_back(Pending::Cut);
        Ok(())
    }

    /// Hash `data` as part of the uncompressed stream without compressing
    /// it: its compressed form comes from [`Self::splice`].
    pub(crate) fn hash_only(&mut self, data: &[u8]) {
        if let Some(diff) = &mut self.diff {
            diff.update(data);
        }
        self.raw_len += data.len() as u64;
    }

    /// Write already-compressed bytes (a part cut from an earlier stream)
    /// after everything before them; only at a cut. Returns the bytes copied.
    pub(crate) fn splice(&mut self, part: impl io::Read) -> io::Result<u64> {
        debug_assert!(self.buf.is_empty(), "splice between cuts");
        while !self.inflight.is_empty() {
            self.drain_one()?;
        }
        each_block(part, |b| self.put_out(b))
    }

    /// Write `s`'s bytes as a gzip member around their deflate stream `d`
    /// (gzip only): the bytes before go out as a chunk of their own, the
    /// plain bytes are read for the diff_id only, and no byte of them is
    /// compressed again. Which members go in this way depends on the
    /// entries alone, so the stream's bytes still do.
    fn put_deflated_member(
        &mut self,
        s: &SpoolSlice,
        d: Arc<Deflated>,
        ahead: Option<inflating::Read>,
    ) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.dispatch(chunk)?;
        }
        // Reading the bytes for the diff_id checks a packed member, and
        // says whether its stream can go in as it is. An unhashed part
        // takes the stream unread: the layer that copies the part reads
        // the bytes for its own diff_id (see `layer::build_parted`).
        if self.diff.is_some() {
            let whole = inflating::each_block(s, ahead, |b| {
                self.hash_only(b);
                Ok(())
            })?;
            if whole == Some(false) {
                // The archive counts bytes after the stream's end as the
                // member's: its bytes are compressed as any other's (read
                // again: a member is rarely so).
                return s.for_each_block(|b| self.buffer(b)).map(drop);
            }
        } else {
            self.raw_len += s.len();
        }
        self.inflight.push_back(Pending::Deflated(d, s.len()));
        while self.inflight.len() >= self.max_inflight {
            self.drain_one()?;
        }
        Ok(())
    }

    /// Flush everything and return the sink with the diff_id.
    pub(crate) fn finish(mut self) -> io::Result<(W, Summary)> {
        // An empty stream still needs one member/frame to be a valid file.
        if !self.buf.is_empty() || self.raw_len == 0 {
            let chunk = std::mem::take(&mut self.buf);
            self.dispatch(chunk)?;
        }
        while !self.inflight.is_empty() {
            self.drain_one()?;
        }
        self.out.flush()?;
        Ok((
            self.out,
            Summary {
                diff_id: self.diff.map(Digest::from_hasher),
                cuts: self.cuts,
            },
        ))
    }
}

impl<W: Write> RecordSink for ParallelEncoder<W> {
    fn takes_deflated(&self) -> bool {
        matches!(self.compression, Compression::Gzip { .. })
    }

    fn put_deflated(&mut self, s: &SpoolSlice, ahead: Option<inflating::Read>) -> io::Result<()> {
        match s.shared_deflated() {
            Some(d) => self.put_deflated_member(s, d, ahead),
            None => Err(io::Error::other("a file with no deflated form")),
        }
    }

    fn reads_members(&self) -> bool {
        self.diff.is_some() || !self.takes_deflated()
    }
}

impl<W: Write> Write for ParallelEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash_only(data);
        self.buffer(data)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> ParallelEncoder<W> {
    /// Compress `data` after what came before, in chunks of [`CHUNK`]
    /// (hashed for the diff_id by the caller).
    fn buffer(&mut self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK {
                let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
                self.dispatch(chunk)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(c: Compression) {
        let data: Vec<u8> = (0..(3 * CHUNK + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let mut enc = ParallelEncoder::new(Vec::new(), c);
        enc.write_all(&data).unwrap();
        let (out, sum) = enc.finish().unwrap();
        assert_eq!(sum.diff_id, Some(Digest::of(&data)));
        let mut back = Vec::new();
        match c {
            Compression::Gzip { .. } => {
                flate2::read::MultiGzDecoder::new(&out[..])
                    .read_to_end(&mut back)
                    .unwrap();
            }
            Compression::Zstd { .. } => {
                zstd::stream::read::Decoder::new(&out[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap();
            }
        }
        assert_eq!(back, data);
        // Same input, same bytes.
        let mut enc2 = ParallelEncoder::new(Vec::new(), c);
        enc2.write_all(&data).unwrap();
        assert_eq!(enc2.finish().unwrap().0, out);
    }

    #[test]
    fn gzip_roundtrip_and_deterministic() {
        roundtrip(Compression::Gzip { level: 6 });
    }

    /// Bytes from a fixed xorshift: random to every test, the same each run.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn random_chunks_are_stored_and_others_compressed() {
        let random = noise(CHUNK, 7);
        assert!(stored(&random));
        // Stored: the input and a few bytes of framing, still one gzip
        // member that reads back, the same bytes every time.
        let out = Compression::DEFAULT.compress(&random).unwrap();
        assert!(out.len() > random.len() && out.len() < random.len() + 200);
        assert_eq!(out, Compression::DEFAULT.compress(&random).unwrap());
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, random);
        // Text, skewed binary, and random bytes repeated within deflate's
        // window (even counts, yet compressible) are compressed.
        let text: Vec<u8> = b"def f(x):\n    return x + 1\n"
            .iter()
            .copied()
            .cycle()
            .take(CHUNK)
            .collect();
        assert!(!stored(&text));
        let skewed: Vec<u8> = noise(CHUNK, 9).iter().map(|b| b & 0x3f).collect();
        assert!(!stored(&skewed));
        let repeated: Vec<u8> = noise(8 << 10, 11)
            .iter()
            .copied()
            .cycle()
            .take(CHUNK)
            .collect();
        assert!(!stored(&repeated));
        assert!(Compression::DEFAULT.compress(&repeated).unwrap().len() < CHUNK / 10);
        // A short chunk is never stored (a layer's last, or a part's).
        assert!(!stored(&random[..32 << 10]));
    }

    #[test]
    fn zstd_roundtrip_and_deterministic() {
        roundtrip(Compression::Zstd { level: 3 });
    }

    #[test]
    fn parse_levels() {
        assert_eq!(
            Compression::parse("gzip").unwrap(),
            Compression::Gzip { level: 1 }
        );
        assert_eq!(Compression::parse("gzip").unwrap(), Compression::DEFAULT);
        assert_eq!(
            Compression::parse("gzip:6").unwrap(),
            Compression::Gzip { level: 6 }
        );
        assert_eq!(
            Compression::parse("zstd:9").unwrap(),
            Compression::Zstd { level: 9 }
        );
        assert!(Compression::parse("xz").is_err());
        assert!(Compression::parse("gzip:0").is_err());
    }
}
