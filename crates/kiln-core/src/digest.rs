//! sha256 digests and writers that hash what passes through them.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A `sha256:<hex>` content digest. kiln only produces and accepts sha256.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    pub fn from_hasher(h: Sha256) -> Self {
        Digest {
            hex: hex::encode(h.finalize()),
        }
    }

    /// The 64 hex characters, without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Strict parse: the value ends up in file paths, so anything but
    /// `sha256:` + 64 lowercase hex digits is refused.
    fn from_str(s: &str) -> Result<Self> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            Error::input(format!(
                "unsupported digest `{s}` (only sha256 is supported)"
            ))
        })?;
        if !Digest::is_valid_hex(hex) {
            return Err(Error::input(format!("malformed digest `{s}`")));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl Digest {
    /// Whether `hex` is a digest's hex part: 64 lowercase hex digits (a
    /// check without building one, for the ~60k of a Debian suite's index).
    pub fn is_valid_hex(hex: &str) -> bool {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    }

    /// From the 64 hex digits alone (kiln.lock's `sha256 = "…"`).
    pub fn from_hex(hex: &str) -> Result<Self> {
        format!("sha256:{hex}").parse()
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde for a digest written as its bare hex digits, as kiln.lock's pins
/// hold them (`#[serde(with = "kiln_core::digest::bare_hex")]`).
pub mod bare_hex {
    use super::Digest;
    use serde::Deserialize;

    pub fn serialize<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(d.hex())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let hex = String::deserialize(d)?;
        Digest::from_hex(&hex).map_err(serde::de::Error::custom)
    }
}

/// Passes writes through to `inner` while computing their sha256 and length.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through while computing their sha256, which it puts in
/// the slot [`HashingReader::at_end`] gives once the inner reader reports
/// its end: a stream read for its contents is hashed in the same pass
/// (a layer's diff_id while its tar is read), and one left unfinished
/// leaves the slot empty.
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Sha256>,
    end: std::sync::Arc<std::sync::OnceLock<Digest>>,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            end: Default::default(),
        }
    }

    /// [`HashingReader::new`], putting the digest in `end`: a slot its
    /// reader made before the stream could be opened.
    pub fn reporting_to(inner: R, end: std::sync::Arc<std::sync::OnceLock<Digest>>) -> Self {
        HashingReader {
            inner,
            hasher: Some(Sha256::new()),
            end,
        }
    }

    /// Where the digest of the whole stream appears once it was read to its end.
    pub fn at_end(&self) -> std::sync::Arc<std::sync::OnceLock<Digest>> {
        self.end.clone()
    }
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            if let Some(h) = &mut self.hasher {
                h.update(&buf[..n]);
            }
        } else if !buf.is_empty() {
            if let Some(h) = self.hasher.take() {
                let _ = self.end.set(Digest::from_hasher(h));
            }
        }
        Ok(n)
    }
}

/// Hash everything a reader yields.
pub fn digest_reader(mut r: impl io::Read) -> io::Result<(Digest, u64)> {
    let mut w = HashingWriter::new(io::sink());
    io::copy(&mut r, &mut w)?;
    let (_, d, n) = w.finish();
    Ok((d, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!("sha256:../../etc".parse::<Digest>().is_err());
        assert!("md5:abc".parse::<Digest>().is_err());
        assert!(format!("sha256:{}", "A".repeat(64))
            .parse::<Digest>()
            .is_err());
    }

    #[test]
    fn round_trips_through_serde() {
        let d = Digest::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:nothex\"").is_err());

        #[derive(serde::Serialize, serde::Deserialize)]
        struct Pin {
            #[serde(with = "bare_hex")]
            sha256: Digest,
        }
        let json = serde_json::to_string(&Pin { sha256: d.clone() }).unwrap();
        assert_eq!(json, format!("{{\"sha256\":\"{}\"}}", d.hex()));
        assert_eq!(serde_json::from_str::<Pin>(&json).unwrap().sha256, d);
        assert!(serde_json::from_str::<Pin>("{\"sha256\":\"../etc\"}").is_err());
    }

    /// The slot fills only once the stream is read to its end, with the
    /// digest of all of it; an empty buffer is not taken for the end.
    #[test]
    fn a_hashing_reader_gives_the_digest_at_the_end() {
        use std::io::Read;
        let data = vec![5u8; 100_000];
        let mut r = HashingReader::new(&data[..]);
        let end = r.at_end();
        let mut buf = [0u8; 40_000];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(r.read(&mut []).unwrap(), 0);
        assert!(end.get().is_none());
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert_eq!(end.get(), Some(&Digest::of(&data)));
    }
}
