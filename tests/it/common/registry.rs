//! The loopback docker-registry, registry credentials, free ports and plain HTTP probes.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{require_tool, tool, unique_dir, CommandExt};

/// A `docker-registry serve` process on a random 127.0.0.1 port, storing into
/// a scratch directory and logging into a file. Stopped when dropped, and also
/// when the test process exits (a shell wrapper watches a pipe from us).
pub struct Registry {
    pub port: u16,
    pub log_path: PathBuf,
    child: Child,
    lifeline: Option<ChildStdin>,
}

static MARKERS: AtomicUsize = AtomicUsize::new(0);

impl Registry {
    /// The registry shared by every test of this test binary (plain HTTP, no auth).
    pub fn shared() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(|| Registry::start(None))
    }

    /// A registry shared by this test binary that requires basic auth
    /// (htpasswd, bcrypt) for [`AUTH_USER`] / [`AUTH_PASSWORD`].
    pub fn shared_auth() -> &'static Registry {
        static SHARED: OnceLock<Registry> = OnceLock::new();
        SHARED.get_or_init(|| Registry::start(Some((AUTH_USER, AUTH_PASSWORD))))
    }

    /// Start a registry; with `auth`, htpasswd authentication for that user.
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        require_tool("docker-registry");
        let dir = unique_dir("registry");
        let auth_yaml = match auth {
            None => String::new(),
            Some((user, pass)) => {
                let out = tool("htpasswd").args(["-Bbn", user, pass]).run_ok();
                let file = dir.join("htpasswd");
                fs::write(&file, out.stdout.trim()).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
        };
        let mut last_log = String::new();
        for attempt in 0..20 {
            let port = free_port();
            let cfg = dir.join(format!("config-{attempt}.yml"));
            let log_path = dir.join(format!("registry-{attempt}.log"));
            fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                    dir.join("data").display()
                ),
            )
            .unwrap();
            // The wrapper kills the registry as soon as our end of its stdin
            // closes: on drop, or when this process exits for any reason.
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(concat!(
                    // Background jobs of a non-interactive shell get /dev/null as
                    // stdin, so keep the pipe on fd 3 for the watcher.
                    "exec 3<&0; ",
                    r#"docker-registry serve "$1" >"$2" 2>&1 3<&- & pid=$!; "#,
                    "(cat <&3 >/dev/null; kill $pid 2>/dev/null) & ",
                    "exec 3<&-; wait $pid"
                ))
                .arg("sh")
                .arg(&cfg)
                .arg(&log_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start docker-registry");
            let lifeline = child.stdin.take();
            let start = Instant::now();
            loop {
                if let Some(st) = child.try_wait().unwrap() {
                    last_log = fs::read_to_string(&log_path).unwrap_or_default();
                    if last_log.contains("address already in use") {
                        break; // port collision: try another port
                    }
                    panic!("docker-registry exited ({st}) during start:\n{last_log}");
                }
                if matches!(http_status(port, "/v2/"), Some(200) | Some(401)) {
                    return Registry {
                        port,
                        log_path,
                        child,
                        lifeline,
                    };
                }
                if start.elapsed() > Duration::from_secs(60) {
                    drop(lifeline);
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer GET /v2/ on port {port}:\n{}",
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not start docker-registry on a free port:\n{last_log}");
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/REPO`
    pub fn repo(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// `docker://127.0.0.1:PORT/REPO:TAG` for skopeo.
    pub fn docker_ref(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{repo}:{tag}", self.host())
    }

    /// The registry's log, complete up to now: sends a marker request and
    /// waits until its access-log line is written.
    pub fn log(&self) -> String {
        let marker = format!(
            "kiln-test-marker-{}",
            MARKERS.fetch_add(1, Ordering::SeqCst)
        );
        let _ = http_status(self.port, &format!("/v2/?{marker}"));
        let start = Instant::now();
        loop {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains(&marker) || start.elapsed() > Duration::from_secs(10) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Access-log lines of blob upload starts (`POST /v2/REPO/blobs/uploads/…`),
    /// including cross-repository mount attempts (`?mount=…&from=…`).
    pub fn upload_posts(&self, repo: &str) -> Vec<String> {
        let needle = format!("\"POST /v2/{repo}/blobs/uploads/");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// Access-log lines of every request about REPO (`/v2/REPO/…`).
    pub fn repo_requests(&self, repo: &str) -> Vec<String> {
        let needle = format!(" /v2/{repo}/");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("HTTP/1.1\""))
            .map(str::to_string)
            .collect()
    }

    /// Upload starts that are not mount attempts.
    pub fn plain_upload_posts(&self, repo: &str) -> Vec<String> {
        self.upload_posts(repo)
            .into_iter()
            .filter(|l| !l.contains("mount="))
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.child.wait();
    }
}

pub const AUTH_USER: &str = "kiln-tester";
pub const AUTH_PASSWORD: &str = "s3cret-Pa55word-9f8e7d";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A 127.0.0.1 port with nothing listening (for "unreachable" cases).
pub fn closed_port() -> u16 {
    free_port()
}

/// Status code of a plain HTTP GET on 127.0.0.1:PORT, or None if unreachable.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Standard base64 (with padding), for docker config.json `auth` fields.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A DOCKER_CONFIG directory whose config.json holds USER:PASS for HOST.
pub fn docker_config_dir(host: &str, user: &str, pass: &str) -> PathBuf {
    let dir = unique_dir("docker-config");
    let auth = base64(format!("{user}:{pass}").as_bytes());
    fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    dir
}
