//! A wheel's METADATA read with HTTP range requests, as uv does when an
//! index serves no PEP 658 metadata: the zip's tail (end of central
//! directory), the central directory, then only the METADATA member — a few
//! tens of KiB instead of the whole wheel (torch: 5 GB for a resolve).
//!
//! The zip crate does the parsing; this is only a `Read + Seek` over the
//! remote file that fetches the blocks it is asked for and keeps them.

use std::io::{self, Read, Seek, SeekFrom};

use kiln_store::http::Http;

/// The first request: the last 64 KiB, which hold the end-of-central-directory
/// record and, for most wheels, the whole central directory.
const TAIL: u64 = 64 << 10;
/// Smallest block fetched on a miss.
const BLOCK: u64 = 64 << 10;
/// Past this many bytes or requests the remote read gives up (a pathological
/// archive) and the caller downloads the wheel instead.
const MAX_BYTES: u64 = 16 << 20;
const MAX_REQUESTS: usize = 32;

/// A remote file read by ranges; blocks are kept once fetched.
pub(crate) struct RangeReader<'a> {
    http: &'a Http,
    url: &'a str,
    len: u64,
    pos: u64,
    /// `(offset, bytes)`, not overlapping.
    blocks: Vec<(u64, Vec<u8>)>,
    fetched: u64,
    requests: usize,
}

impl<'a> RangeReader<'a> {
    /// Fetch the tail; `Ok(None)` when the server does not serve ranges.
    pub(crate) fn open(http: &'a Http, url: &'a str) -> kiln_core::Result<Option<Self>> {
        let Some(tail) = http.get_range(url, &format!("bytes=-{TAIL}"))? else {
            return Ok(None);
        };
        let mut r = RangeReader {
            http,
            url,
            len: tail.total,
            pos: 0,
            blocks: Vec::new(),
            fetched: tail.bytes.len() as u64,
            requests: 1,
        };
        if tail.start + tail.bytes.len() as u64 != tail.total {
            // Not the tail that was asked for.
            return Ok(None);
        }
        r.blocks.push((tail.start, tail.bytes));
        Ok(Some(r))
    }

    /// Bytes received so far (all requests).
    #[cfg(test)]
    pub(crate) fn fetched(&self) -> u64 {
        self.fetched
    }

    fn block_at(&self, pos: u64) -> Option<&(u64, Vec<u8>)> {
        self.blocks
            .iter()
            .find(|(o, b)| *o <= pos && pos < o + b.len() as u64)
    }

    /// Fetch `[pos, pos + want)` (widened to a block, stopped at the next kept block).
    fn fetch(&mut self, pos: u64, want: u64) -> io::Result<()> {
        let next_kept = self
            .blocks
            .iter()
            .map(|(o, _)| *o)
            .filter(|o| *o > pos)
            .min()
            .unwrap_or(self.len);
        let end = (pos + want.max(BLOCK)).min(next_kept).min(self.len);
        if self.requests >= MAX_REQUESTS || self.fetched + (end - pos) > MAX_BYTES {
            return Err(io::Error::other("too many range requests for one member"));
        }
        self.requests += 1;
        let reply = self
            .http
            .get_range(self.url, &format!("bytes={pos}-{}", end - 1))
            .map_err(|e| io::Error::other(e.to_string()))?
            .ok_or_else(|| io::Error::other("the server stopped serving ranges"))?;
        if reply.start != pos || reply.bytes.is_empty() || reply.total != self.len {
            return Err(io::Error::other("the server answered another range"));
        }
        self.fetched += reply.bytes.len() as u64;
        let keep = (next_kept - pos) as usize;
        let mut bytes = reply.bytes;
        bytes.truncate(keep);
        self.blocks.push((pos, bytes));
        Ok(())
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.block_at(self.pos).is_none() {
            self.fetch(self.pos, buf.len() as u64)?;
        }
        let (o, b) = self
            .block_at(self.pos)
            .ok_or_else(|| io::Error::other("range not fetched"))?;
        let from = (self.pos - o) as usize;
        let n = buf.len().min(b.len() - from);
        buf[..n].copy_from_slice(&b[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangeReader<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

/// METADATA of the wheel at `url` read by ranges; `None` when the server
/// does not serve ranges or the remote read fails in any way (the caller
/// then downloads the wheel, whose errors are the ones worth reporting).
pub(crate) fn metadata(http: &Http, url: &str, wheel: &str) -> Option<Vec<u8>> {
    let reader = RangeReader::open(http, url).ok()??;
    let mut ar = zip::ZipArchive::new(reader).ok()?;
    super::wheel::metadata_member(&mut ar, wheel).ok()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Serve `body` at any path on loopback, with `Range` support or not;
    /// the body bytes sent are added to the counter.
    fn serve(body: Arc<Vec<u8>>, ranges: bool) -> (String, Arc<AtomicU64>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let (body, sent) = (body.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut range = None;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            range = Some(v.trim().to_string());
                        }
                    }
                    let len = body.len();
                    let span = range.filter(|_| ranges).and_then(|r| {
                        let (a, b) = r.split_once('-')?;
                        Some(if a.is_empty() {
                            (len - b.parse::<usize>().ok()?.min(len), len - 1)
                        } else {
                            let a: usize = a.parse().ok()?;
                            (a, b.parse::<usize>().map_or(len - 1, |b| b.min(len - 1)))
                        })
                    });
                    let (head, part) = match span {
                        Some((a, b)) => (
                            format!("HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", b + 1 - a),
                            &body[a..=b],
                        ),
                        None => (
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
                            &body[..],
                        ),
                    };
                    // Counted before the client can have it; taken back if not sent.
                    sent.fetch_add(part.len() as u64, Ordering::SeqCst);
                    if s.write_all(head.as_bytes())
                        .and_then(|()| s.write_all(part))
                        .is_err()
                    {
                        sent.fetch_sub(part.len() as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (format!("http://{addr}/big-1.0-py3-none-any.whl"), sent)
    }

    /// A wheel whose METADATA comes first, then `size` incompressible bytes (stored).
    fn big_wheel(size: usize) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(false);
        z.start_file(
            "big-1.0.dist-info/METADATA",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        z.write_all(b"Metadata-Version: 2.1\nName: big\nVersion: 1.0\nRequires-Dist: six\n")
            .unwrap();
        z.start_file("big/blob.bin", stored).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut blob = Vec::with_capacity(size);
        while blob.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blob.extend_from_slice(&x.to_le_bytes());
        }
        z.write_all(&blob).unwrap();
        z.finish().unwrap().into_inner()
    }

    #[test]
    fn metadata_by_ranges_reads_a_few_blocks_not_the_wheel() {
        let wheel = Arc::new(big_wheel(8 << 20));
        let (url, sent) = serve(wheel.clone(), true);
        let http = Http::new().unwrap();
        let reader = RangeReader::open(&http, &url).unwrap().unwrap();
        assert_eq!(reader.len, wheel.len() as u64);
        let mut ar = zip::ZipArchive::new(reader).unwrap();
        let m = crate::wheel::metadata_member(&mut ar, "big-1.0-py3-none-any.whl").unwrap();
        assert!(String::from_utf8(m).unwrap().contains("Requires-Dist: six"));
        let reader = ar.into_inner();
        // The tail, then the block at the start holding METADATA.
        assert_eq!((reader.requests, reader.fetched()), (2, TAIL + BLOCK));
        assert_eq!(http.transfers().bytes(), reader.fetched());
        let bytes = sent.load(Ordering::SeqCst);
        assert!(bytes <= TAIL + BLOCK, "{bytes} bytes sent");

        // A server without ranges: None, and the caller downloads instead.
        let (url, _) = serve(wheel, false);
        assert!(RangeReader::open(&http, &url).unwrap().is_none());
        assert!(metadata(&http, &url, "big-1.0-py3-none-any.whl").is_none());
    }

    #[test]
    fn a_small_wheel_is_read_from_the_tail_alone() {
        let wheel = Arc::new(big_wheel(1000));
        let (url, sent) = serve(wheel.clone(), true);
        let http = Http::new().unwrap();
        let mut reader = RangeReader::open(&http, &url).unwrap().unwrap();
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(&all, wheel.as_ref());
        assert_eq!(reader.fetched(), wheel.len() as u64);
        assert_eq!(sent.load(Ordering::SeqCst), wheel.len() as u64);
        let m = metadata(&http, &url, "big-1.0-py3-none-any.whl").unwrap();
        assert!(m.starts_with(b"Metadata-Version: 2.1\nName: big\n"));
    }
}
