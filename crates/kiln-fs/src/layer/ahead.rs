//! A reader whose bytes are made on a thread of its own: a layer's
//! decompression runs beside whoever reads it (hashing it for its diff_id,
//! parsing its tar, writing its files), instead of taking turns with them
//! on one core. A few chunks are read ahead, no more: memory stays flat.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver};

/// Bytes read ahead a time, and how many such chunks may wait.
const CHUNK: usize = 256 << 10;
const WAITING: usize = 4;

pub struct ReadAhead {
    rx: Option<Receiver<io::Result<Vec<u8>>>>,
    /// Without a thread (one could not start): the reader itself.
    inline: Option<Box<dyn Read + Send>>,
    buf: Vec<u8>,
    at: usize,
    /// An error was returned: every later read fails too.
    failed: bool,
}

impl ReadAhead {
    /// Read `inner` on a thread of its own. The thread ends at the end of
    /// `inner`, on its first error, or when this reader is dropped.
    pub fn new(inner: impl Read + Send + 'static) -> ReadAhead {
        let inner: Box<dyn Read + Send> = Box::new(inner);
        let (tx, rx) = sync_channel(WAITING);
        // The reader goes to the thread once it runs, so that it is still
        // here to be read inline if the thread cannot start.
        let (hand, handed) = sync_channel::<Box<dyn Read + Send>>(1);
        let started = std::thread::Builder::new()
            .name("kiln-read-ahead".into())
            .spawn(move || {
                let Ok(mut inner) = handed.recv() else { return };
                loop {
                    let mut buf = vec![0u8; CHUNK];
                    let sent = match read_some(&mut inner, &mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            buf.truncate(n);
                            tx.send(Ok(buf))
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        let mut ahead = ReadAhead {
            rx: None,
            inline: None,
            buf: Vec::new(),
            at: 0,
            failed: false,
        };
        match started {
            Ok(_) => match hand.send(inner) {
                Ok(()) => ahead.rx = Some(rx),
                Err(back) => ahead.inline = Some(back.0),
            },
            Err(_) => ahead.inline = Some(inner),
        }
        ahead
    }
}

/// Fill `buf` as far as `r` gives, retrying interrupted reads; 0 at the end.
fn read_some(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return if filled > 0 { Ok(filled) } else { Err(e) },
        }
    }
    Ok(filled)
}

impl Read for ReadAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier read of this layer failed"));
        }
        if let Some(r) = &mut self.inline {
            return r.read(out);
        }
        if self.at == self.buf.len() {
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(buf)) => {
                    self.buf = buf;
                    self.at = 0;
                }
                Ok(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
                // The thread ended after the last chunk.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_the_same_bytes_in_any_read_size() {
        let data: Vec<u8> = (0..(3 * CHUNK + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for step in [1usize, 7, 4096, CHUNK, 5 * CHUNK] {
            let mut r = ReadAhead::new(io::Cursor::new(data.clone()));
            let mut back = Vec::new();
            let mut buf = vec![0u8; step];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            assert_eq!(back, data, "step {step}");
        }
    }

    /// Gives its bytes, then fails.
    struct Breaks(usize);
    impl Read for Breaks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "corrupt deflate stream",
                ));
            }
            let n = out.len().min(self.0);
            out[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_error_is_not_an_end() {
        let mut r = ReadAhead::new(Breaks(CHUNK + 10));
        let mut back = Vec::new();
        let e = r.read_to_end(&mut back).unwrap_err();
        assert!(e.to_string().contains("corrupt deflate"), "{e}");
        assert_eq!(back.len(), CHUNK + 10);
        // Reading on does not turn the failure into an end of file.
        assert!(r.read(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn dropping_it_early_ends_the_thread() {
        let mut r = ReadAhead::new(io::repeat(1).take(100 * CHUNK as u64));
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        drop(r);
    }
}
