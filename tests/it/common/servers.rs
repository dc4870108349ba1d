//! Loopback HTTP servers: [`FakeServer`] (one fixed status), [`FileServer`] (a directory).

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sha256_hex;

/// A loopback HTTP server answering every request with `status` (e.g.
/// "500 Internal Server Error") and an empty body. Stops when dropped.
pub struct FakeServer {
    pub port: u16,
    _accepting: Accepting,
}

impl FakeServer {
    pub fn start(status: &'static str) -> FakeServer {
        let accepting = Accepting::start(move |mut c| {
            let _ = read_head(&mut c, Duration::from_secs(5));
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        });
        FakeServer {
            port: accepting.port,
            _accepting: accepting,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Serves the files under a directory over HTTP/1.1 on 127.0.0.1 (GET only,
/// a directory's `index.html` for a path ending in `/`, 404 for anything
/// else). Stops when dropped.
pub struct FileServer {
    pub port: u16,
    _accepting: Accepting,
    /// `304 Not Modified` answers so far (the server sends `ETag`s and
    /// honours `If-None-Match`).
    pub not_modified: Arc<AtomicUsize>,
    /// The paths answered with a body so far, in order.
    pub sent: Arc<std::sync::Mutex<Vec<String>>>,
}

impl FileServer {
    pub fn start(root: &Path) -> FileServer {
        let not_modified = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, log) = (not_modified.clone(), sent.clone());
        let root = root.to_path_buf();
        let accepting = Accepting::start(move |c| serve_one(c, &root, &counter, &log));
        FileServer {
            port: accepting.port,
            _accepting: accepting,
            not_modified,
            sent,
        }
    }
}

/// A fresh 127.0.0.1 port whose connections are each handled on a thread of
/// their own; accepting stops when this is dropped.
struct Accepting {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Accepting {
    fn start(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> Accepting {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = Arc::new(handle);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let handle = handle.clone();
                std::thread::spawn(move || handle(c));
            }
        });
        Accepting { port, stop }
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A request read up to the end of its head (within TIMEOUT per read); None
/// when the peer closed or a read failed first.
fn read_head(c: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let _ = c.set_read_timeout(Some(timeout));
    let mut req = Vec::new();
    let mut buf = [0u8; 8192];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    Some(req)
}

fn serve_one(
    mut c: TcpStream,
    root: &Path,
    not_modified: &AtomicUsize,
    sent: &std::sync::Mutex<Vec<String>>,
) {
    let Some(req) = read_head(&mut c, Duration::from_secs(10)) else {
        return;
    };
    let head = String::from_utf8_lossy(&req).into_owned();
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let body = if method == "GET" && !path.split('/').any(|s| s == "..") {
        // A directory's `index.html` (a simple index's project page).
        let mut file = root.join(path.trim_start_matches('/'));
        if path.ends_with('/') {
            file = file.join("index.html");
        }
        fs::read(&file).ok().filter(|_| file.is_file())
    } else {
        None
    };
    let etag = body.as_ref().map(|b| format!("\"{}\"", sha256_hex(b)));
    let conditional = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("if-none-match")
            .then(|| v.trim().to_string())
    });
    let _ = match body {
        Some(_) if conditional.is_some() && conditional == etag => {
            not_modified.fetch_add(1, Ordering::SeqCst);
            write!(
                c,
                "HTTP/1.1 304 Not Modified\r\nETag: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                etag.unwrap_or_default()
            )
        }
        Some(b) => {
            sent.lock().unwrap().push(path.to_string());
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nETag: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                etag.unwrap_or_default(),
                b.len()
            );
            c.write_all(&b)
        }
        None => write!(
            c,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
    let _ = c.flush();
    let _ = c.shutdown(Shutdown::Write);
}
