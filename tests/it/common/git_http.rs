//! Git over smart HTTP on loopback: [`GitServer`] runs Debian's
//! `git http-backend` as a CGI program for each request (the way a forge's
//! web server does), and [`git`] runs the git CLI to make repositories.
//!
//! Repositories live under the server's root as `PATH.git` (bare) with a
//! symlink `PATH` beside, so both `http://HOST/org/repo.git` and the forge
//! form `http://HOST/org/repo` (what `…/tree/REF/DIR` URLs name) work.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{require_tool, CommandExt, Run};

/// Basic credentials a [`GitServer::start_private`] server requires:
/// `kiln` / `s3cret`.
pub const GIT_USER: &str = "kiln";
pub const GIT_PASSWORD: &str = "s3cret";
/// base64 of `kiln:s3cret`.
const GIT_BASIC: &str = "a2lsbjpzM2NyZXQ=";

/// `git ARGS` in DIR with a fixed identity and dates and no user or system
/// configuration (so the same commands make the same commit ids).
pub fn git(dir: &Path, args: &[&str]) -> Run {
    require_tool("git");
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "kiln tests")
        .env("GIT_AUTHOR_EMAIL", "tests@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "kiln tests")
        .env("GIT_COMMITTER_EMAIL", "tests@kiln.invalid")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .args(args);
    c.run_ok()
}

/// `git http-backend` behind a tiny HTTP/1.1 server on 127.0.0.1 (one
/// connection per request). Stops accepting when dropped.
pub struct GitServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// The request bodies of the POSTs so far (what clients asked for).
    pub posts: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl GitServer {
    /// Serve the repositories under ROOT to anyone.
    pub fn start(root: &Path) -> GitServer {
        Self::start_with(root, false)
    }

    /// Serve ROOT only to requests with [`GIT_USER`]/[`GIT_PASSWORD`]
    /// (401 with a Basic challenge otherwise).
    pub fn start_private(root: &Path) -> GitServer {
        Self::start_with(root, true)
    }

    fn start_with(root: &Path, private: bool) -> GitServer {
        require_tool("git");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let root = root.to_path_buf();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let posts2 = posts.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = conn else { continue };
                let root = root.clone();
                let posts = posts2.clone();
                std::thread::spawn(move || serve(c, &root, private, &posts));
            }
        });
        GitServer { port, stop, posts }
    }

    /// `http://127.0.0.1:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Make ROOT/PATH.git a bare clone of WORK, with the symlink ROOT/PATH.
pub fn publish_repo(work: &Path, root: &Path, path: &str) -> PathBuf {
    let bare = root.join(format!("{path}.git"));
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        root,
        &[
            "clone",
            "--quiet",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    let name = Path::new(path).file_name().unwrap().to_str().unwrap();
    std::os::unix::fs::symlink(format!("{name}.git"), root.join(path)).unwrap();
    bare
}

fn serve(c: TcpStream, root: &Path, private: bool, posts: &Mutex<Vec<Vec<u8>>>) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(c.try_clone().expect("clone stream"));
    let mut c = c;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut words = request_line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));

    if private && header("authorization").as_deref() != Some(&format!("Basic {GIT_BASIC}")) {
        let _ = write!(
            c,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = c.shutdown(Shutdown::Write);
        return;
    }

    // The request body: by length, or chunked (a streamed POST).
    let mut body = Vec::new();
    if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            if reader.read_line(&mut size).unwrap_or(0) == 0 {
                return;
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            if reader.read_exact(&mut chunk).is_err() {
                return;
            }
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = header("content-length").and_then(|n| n.parse::<usize>().ok()) {
        body.resize(n, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
    }

    if method == "POST" {
        posts.lock().unwrap().push(body.clone());
    }
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(p) = header("git-protocol") {
        cgi.env("HTTP_GIT_PROTOCOL", p);
    }
    if let Some(e) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", e);
    }
    if private {
        cgi.env("REMOTE_USER", GIT_USER);
    }
    let Ok(mut child) = cgi.spawn() else {
        let _ = write!(
            c,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let mut out = Vec::new();
    let _ = child.stdout.take().unwrap().read_to_end(&mut out);
    let _ = writer.join();
    let _ = child.wait();

    // CGI output: headers (with an optional `Status:`), a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        let _ = write!(
            c,
            "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    };
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => {
                response.push_str(line.trim_end());
                response.push_str("\r\n");
            }
            None => {}
        }
    }
    let body = &out[end + sep..];
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = c.write_all(body);
    let _ = c.flush();
    let _ = c.shutdown(Shutdown::Write);
}
