//! The HTTP client for package indexes and repositories (apt, pip, conda).
//!
//! Blocking reqwest over rustls with the platform verifier: trusts the system
//! store and `SSL_CERT_FILE`/`SSL_CERT_DIR`; honours `HTTPS_PROXY`/`NO_PROXY`.
//! `file://` URLs read local mirrors. Transient failures are retried with
//! backoff. Downloads into the cache are verified before they become visible.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{write_atomic, Cache, CacheBucket};
use crate::StoreError;
use kiln_core::digest::Digest;
use kiln_core::error::{ErrorKind, IoContext, Result};
use kiln_core::progress::Transfers;

const ATTEMPTS: u32 = 4;
/// Transfers at once on each pool (the network's, the guess's) unless
/// `KILN_CONCURRENT_DOWNLOADS` says otherwise.
const DEFAULT_CONCURRENCY: usize = 8;

/// Run `f` (typically a `par_iter` of downloads) on the pool for network
/// transfers. They wait on the network, not the CPU, so this pool is wider
/// than rayon's one thread per core: with two cores, two transfers at a time
/// left most of a cold build's bandwidth unused.
pub fn on_network_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    run_on(&POOL, "kiln-net", f)
}

/// [`on_network_pool`] for downloads made on a guess, before anything
/// needs them (pip's wheels fetched while the base is read). A pool of
/// their own: queued on the network pool, a 110-wheel guess held its
/// threads until most of its wheels were in, and the resolver's page and
/// metadata lookups (read from the cache by then) waited behind them for
/// 0.3 s. A download wanted for real joins the guessed one under way
/// ([`Flight`]), so the two pools never fetch one file twice.
pub fn on_guess_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    run_on(&POOL, "kiln-guess", f)
}

fn run_on<R: Send>(
    pool: &std::sync::OnceLock<Option<rayon::ThreadPool>>,
    name: &'static str,
    f: impl FnOnce() -> R + Send,
) -> R {
    let pool = pool.get_or_init(|| {
        let n = std::env::var("KILN_CONCURRENT_DOWNLOADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_CONCURRENCY);
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(move |i| format!("{name}-{i}"))
            .build()
            .ok()
    });
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// A download of one digest under way in this process: a second
/// [`Flight::take`] of it waits until the first is dropped (its blob is
/// then in the cache, or it failed and the waiter tries itself).
struct Flight(Digest);

static FLIGHTS: std::sync::Mutex<std::collections::BTreeSet<Digest>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());
static LANDED: std::sync::Condvar = std::sync::Condvar::new();

impl Flight {
    fn take(d: &Digest) -> Flight {
        let mut up = FLIGHTS.lock().unwrap_or_else(|e| e.into_inner());
        while up.contains(d) {
            up = LANDED.wait(up).unwrap_or_else(|e| e.into_inner());
        }
        up.insert(d.clone());
        Flight(d.clone())
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        FLIGHTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
        LANDED.notify_all();
    }
}

#[derive(Clone)]
pub struct Http {
    /// `--offline`: only `file://` and the cache; any network URL is an error.
    offline: bool,
    /// What came over the network (packages and index pages), shared by clones.
    transfers: Arc<Transfers>,
    /// `kiln build --dry-run`: [`Http::download_artifact`] fetches nothing
    /// the cache lacks (a package that is only to be installed).
    defer: bool,
}

/// Makes ring rustls's process-wide crypto provider. reqwest is built
/// without a provider of its own and panics if a client is made before one
/// is installed, so everything that makes one (here, the registry client,
/// Git fetches) calls this first; a second call does nothing.
pub fn tls() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only if a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The process's one HTTP client (a clone shares its connections), made
/// by the first network request of any [`Http`] (or the registry's check,
/// [`check_client`]): a build that needs no network (a scratch image in an
/// empty root, `--offline`) needs no CA certificates. Building a client
/// loads and parses them: when each `Http`, and each of the threads that
/// raced to its first request, built its own, a cold freeze build loaded
/// them 18 times (now 3: this client and oci-client's two) and opened new
/// connections to the hosts the pages came from to fetch the wheels. A
/// failure is not kept: the next request tries again.
fn shared_client() -> Result<reqwest::blocking::Client> {
    static CLIENT: std::sync::Mutex<Option<reqwest::blocking::Client>> =
        std::sync::Mutex::new(None);
    let mut shared = CLIENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = &*shared {
        return Ok(c.clone());
    }
    tls();
    let c = reqwest::blocking::Client::builder()
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(20))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(StoreError::Client)?;
    *shared = Some(c.clone());
    Ok(c)
}

/// Fails (with what to do) when no HTTP client can be built here, which
/// happens on a system without CA certificates. oci-client would panic
/// there (it falls back to reqwest's default client), so registry access
/// checks first.
pub fn check_client() -> Result<()> {
    // The process's own client, whose first request would build it anyway:
    // the same certificates, loaded once.
    shared_client().map(drop)
}

/// A fetched document with the headers callers care about.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    /// Final URL after redirects (relative links resolve against it).
    pub url: String,
    /// The body's digest, when [`Http::get_cached`] had it already.
    pub digest: Option<Digest>,
}

impl Http {
    pub fn new() -> Result<Self> {
        Ok(Http {
            offline: false,
            transfers: Transfers::hidden("downloading"),
            defer: false,
        })
    }

    /// Count (and show) this client's transfers on `transfers`.
    pub fn with_transfers(mut self, transfers: Arc<Transfers>) -> Self {
        self.transfers = transfers;
        self
    }

    /// What this client (and its clones) fetched over the network.
    pub fn transfers(&self) -> &Arc<Transfers> {
        &self.transfers
    }

    /// A client that never touches the network (`kiln build --offline`).
    pub fn offline() -> Result<Self> {
        let mut h = Self::new()?;
        h.offline = true;
        Ok(h)
    }

    /// GET a URL (or read a `file://` path) into memory.
    pub fn get(&self, url: &str, accept: Option<&str>) -> Result<Fetched> {
        if let Some(path) = file_url_path(url) {
            let bytes = std::fs::read(&path).map_err(|e| local_file(url, e))?;
            return Ok(Fetched {
                bytes,
                content_type: None,
                url: url.to_string(),
                digest: None,
            });
        }
        self.retrying(
            url,
            |resp| {
                let content_type = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                let final_url = resp.url().to_string();
                let bytes = resp.bytes().map_err(|e| net_error(url, e))?.to_vec();
                self.transfers.add(bytes.len() as u64);
                Ok(Fetched {
                    bytes,
                    content_type,
                    url: final_url,
                    digest: None,
                })
            },
            accept,
            &[],
        )
    }

    /// GET with an HTTP cache: the last response is kept (in
    /// `<cache>/http/`) with its `ETag`/`Last-Modified`, and revalidated with a
    /// conditional request; a `304` costs no body. Offline, the kept copy is
    /// used as is. A body is kept only once `check` accepts it (a signature,
    /// a parse), so nothing unverified enters the cache.
    pub fn get_cached(
        &self,
        url: &str,
        accept: Option<&str>,
        cache: &Cache,
        check: &dyn Fn(&[u8]) -> Result<()>,
    ) -> Result<Fetched> {
        if file_url_path(url).is_some() {
            let f = self.get(url, accept)?;
            check(&f.bytes)?;
            return Ok(f);
        }
        // Kept without credentials in clear: named by a digest of the whole
        // URL (two URLs that differ only in a token are two entries),
        // recorded by the redacted one, final URL stored stripped.
        let public = redact(url);
        // One file per response: its metadata as a line of JSON, then the
        // body (two files cost twice the creating, which a cold build of a
        // 110-wheel freeze does 110 times).
        let kept_path = cache.entry(
            CacheBucket::Http,
            format!("{}.kept", Digest::of(url.as_bytes()).hex()),
        );
        let sources = [url.to_string()];
        let final_url = |stored: &str| kiln_core::url::with_credentials(stored, &sources);
        let kept: Option<(KeptResponse, Vec<u8>)> =
            std::fs::read(&kept_path).ok().and_then(|mut b| {
                let line = b.iter().position(|&c| c == b'\n')?;
                let body = b.split_off(line + 1);
                let k = serde_json::from_slice::<KeptResponse>(&b[..line]).ok()?;
                (k.url == public && Digest::of(&body).to_string() == k.body).then_some((k, body))
            });
        if self.offline {
            if let Some((k, body)) = kept {
                return Ok(Fetched {
                    bytes: body,
                    digest: k.body.parse().ok(),
                    content_type: k.content_type,
                    url: final_url(&k.final_url),
                });
            }
        }
        // Index pages and listings are text: gzip -6 makes the largest JSON
        // page of a data-science build (1.9 MB) a quarter of its size.
        // (Only here: a download is taken as the server sends it, so a
        // `.gz` served with `Content-Encoding: gzip` is never decoded into
        // other bytes than its digest's.)
        let mut conditional = vec![(reqwest::header::ACCEPT_ENCODING, "gzip".to_string())];
        if let Some((k, _)) = &kept {
            if let Some(e) = &k.etag {
                conditional.push((reqwest::header::IF_NONE_MATCH, e.clone()));
            }
            if let Some(m) = &k.last_modified {
                conditional.push((reqwest::header::IF_MODIFIED_SINCE, m.clone()));
            }
        }
        let header = |resp: &reqwest::blocking::Response, h: reqwest::header::HeaderName| {
            resp.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let fresh = self.retrying(
            url,
            |resp| {
                if resp.status().as_u16() == 304 {
                    return Ok(None);
                }
                let k = KeptResponse {
                    url: public.clone(),
                    final_url: kiln_core::url::strip_credentials(resp.url().as_str()),
                    etag: header(&resp, reqwest::header::ETAG),
                    last_modified: header(&resp, reqwest::header::LAST_MODIFIED),
                    content_type: header(&resp, reqwest::header::CONTENT_TYPE),
                    body: String::new(),
                };
                let encoding = header(&resp, reqwest::header::CONTENT_ENCODING);
                let bytes = resp.bytes().map_err(|e| net_error(url, e))?.to_vec();
                self.transfers.add(bytes.len() as u64);
                let bytes = decoded(bytes, encoding.as_deref(), MAX_DECODED).map_err(|source| {
                    StoreError::Transfer {
                        url: redact(url),
                        source,
                    }
                })?;
                Ok(Some((k, bytes)))
            },
            accept,
            &conditional,
        )?;
        let (k, bytes) = match (fresh, kept) {
            (Some((mut k, bytes)), _) => {
                check(&bytes)?;
                // Best effort: a response that cannot be kept is fetched again next time.
                k.body = Digest::of(&bytes).to_string();
                if let Ok(mut kept) = serde_json::to_vec(&k) {
                    kept.push(b'\n');
                    kept.extend_from_slice(&bytes);
                    write_atomic(&kept_path, &kept);
                }
                (k, bytes)
            }
            (None, Some(kept)) => kept,
            (None, None) => return Err(StoreError::Unsolicited304 { url: redact(url) }.into()),
        };
        Ok(Fetched {
            bytes,
            digest: k.body.parse().ok(),
            content_type: k.content_type,
            url: final_url(&k.final_url),
        })
    }

    /// GET part of a file with an HTTP `Range` header (`range` is its
    /// value, e.g. `bytes=-65536` for the last 64 KiB or `bytes=0-99`), for
    /// reading a member of a large archive without downloading it all.
    ///
    /// `Ok(None)` when the server does not serve ranges (any answer but
    /// `206` with a `Content-Range` size): the body is not read, the caller
    /// downloads the whole file instead. Not cached; counted as a transfer.
    pub fn get_range(&self, url: &str, range: &str) -> Result<Option<RangeReply>> {
        if file_url_path(url).is_some() {
            return Ok(None);
        }
        self.retrying(
            url,
            |resp| {
                if resp.status().as_u16() != 206 {
                    return Ok(None);
                }
                // `bytes START-END/TOTAL`
                let parsed = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| {
                        let (span, total) = v.strip_prefix("bytes ")?.split_once('/')?;
                        let start = span.split_once('-')?.0.trim().parse().ok()?;
                        Some((start, total.trim().parse().ok()?))
                    });
                let Some((start, total)) = parsed else {
                    return Ok(None);
                };
                let bytes = resp.bytes().map_err(|e| net_error(url, e))?.to_vec();
                self.transfers.add(bytes.len() as u64);
                Ok(Some(RangeReply {
                    start,
                    total,
                    bytes,
                }))
            },
            None,
            &[(reqwest::header::RANGE, range.to_string())],
        )
    }

    /// A client whose [`Http::download_artifact`] downloads nothing (for a
    /// plan that only resolves).
    pub fn deferring(mut self) -> Self {
        self.defer = true;
        self
    }

    /// [`Http::download`] of a package that is only installed, not read
    /// while resolving: with a deferring client and a known digest, nothing
    /// is fetched and the digest comes back with size 0.
    pub fn download_artifact(
        &self,
        url: &str,
        expected: Option<&Digest>,
        cache: &Cache,
    ) -> Result<(Digest, u64)> {
        match expected {
            Some(d) if self.defer && cache.verified(d)?.is_none() => Ok((d.clone(), 0)),
            _ => self.download(url, expected, cache),
        }
    }

    /// Download into the cache; with `expected`, a mismatch is an error and nothing is stored.
    /// A download of a digest another thread is downloading waits for it
    /// and takes its blob ([`Flight`]): a wheel fetched ahead on a guess is
    /// not fetched a second time by the resolver that wants it meanwhile.
    pub fn download(
        &self,
        url: &str,
        expected: Option<&Digest>,
        cache: &Cache,
    ) -> Result<(Digest, u64)> {
        let held = |d: &Digest| -> Result<Option<(Digest, u64)>> {
            Ok(cache.verified(d)?.map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (d.clone(), len)
            }))
        };
        if let Some(found) = expected.map(held).transpose()?.flatten() {
            return Ok(found);
        }
        let _flight = expected.map(Flight::take);
        if let Some(found) = expected.map(held).transpose()?.flatten() {
            return Ok(found);
        }
        if let Some(path) = file_url_path(url) {
            return cache.adopt(&path, expected, &redact(url), |e| local_file(url, e).into());
        }
        let commit = |mut r: reqwest::blocking::Response| -> Result<(Digest, u64)> {
            let mut w = cache.writer()?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = r.read(&mut buf).map_err(|e| StoreError::Transfer {
                    url: redact(url),
                    source: e,
                })?;
                if n == 0 {
                    break;
                }
                self.transfers.add(n as u64);
                w.write_all(&buf[..n])
                    .io_context(|| "writing to the cache".into())?;
            }
            w.commit(expected).map_err(|e| e.context(redact(url)))
        };
        self.retrying(
            url,
            |resp| {
                self.transfers.start(resp.content_length());
                let done = commit(resp);
                match &done {
                    Ok((d, _)) => self.transfers.finish(d.to_string()),
                    Err(_) => self.transfers.abandon(),
                }
                done
            },
            None,
            &[],
        )
    }

    fn retrying<T>(
        &self,
        url: &str,
        mut on_ok: impl FnMut(reqwest::blocking::Response) -> Result<T>,
        accept: Option<&str>,
        conditional: &[(reqwest::header::HeaderName, String)],
    ) -> Result<T> {
        if self.offline {
            return Err(StoreError::Offline { url: redact(url) }.into());
        }
        let mut delay = Duration::from_millis(300);
        let mut attempt = 1;
        loop {
            let mut req = shared_client()?.get(url);
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            for (k, v) in conditional {
                req = req.header(k, v);
            }
            let outcome = match req.send() {
                // 304 only ever answers a conditional request (get_cached).
                Ok(resp) if resp.status().is_success() || resp.status().as_u16() == 304 => {
                    match on_ok(resp) {
                        // The body broke off: worth another attempt.
                        Err(e) if e.kind() == ErrorKind::Network => Err((true, e)),
                        other => return other,
                    }
                }
                Ok(resp) => {
                    let s = resp.status();
                    let transient = s.is_server_error() || s.as_u16() == 429;
                    let err = StoreError::HttpStatus {
                        url: redact(url),
                        status: s.as_u16(),
                    };
                    Err((transient, err.into()))
                }
                Err(e) => Err((
                    e.is_connect() || e.is_timeout() || e.is_request(),
                    net_error(url, e).into(),
                )),
            };
            match outcome {
                Err((true, _)) if attempt < ATTEMPTS => {
                    std::thread::sleep(delay);
                    delay *= 3;
                    attempt += 1;
                }
                Err((_, e)) => return Err(e),
                Ok(v) => return Ok(v),
            }
        }
    }
}

/// Part of a file, as [`Http::get_range`] got it.
pub struct RangeReply {
    /// Offset of `bytes[0]` in the file.
    pub start: u64,
    /// The whole file's size.
    pub total: u64,
    pub bytes: Vec<u8>,
}

/// What `get_cached` keeps of a response (its line of `<key>.kept`; the
/// body follows it).
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptResponse {
    url: String,
    final_url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    content_type: Option<String>,
    /// Digest of the kept body, checked when it is read back.
    body: String,
}

/// `file:///x/y` → `/x/y`; other schemes → None.
pub fn file_url_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("file://")?;
    let decoded = kiln_core::url::percent_decode(rest);
    Some(PathBuf::from(decoded))
}

fn net_error(url: &str, e: reqwest::Error) -> StoreError {
    // reqwest's message repeats the URL, credentials included: leave it out.
    StoreError::Connection {
        url: redact(url),
        source: e.without_url(),
    }
}

fn local_file(url: &str, source: std::io::Error) -> StoreError {
    StoreError::LocalFile {
        url: redact(url),
        source,
    }
}

pub use kiln_core::url::redact;

/// A body as sent with `Content-Encoding: encoding`: gzip is decoded (to
/// at most `max` bytes: a page, not a bomb), none or identity taken as
/// is; anything else was not asked for.
fn decoded(body: Vec<u8>, encoding: Option<&str>, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    match encoding.map(str::trim) {
        None | Some("") => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("identity") => Ok(body),
        Some(e) if e.eq_ignore_ascii_case("gzip") || e.eq_ignore_ascii_case("x-gzip") => {
            let mut out = Vec::with_capacity(body.len() * 8);
            flate2::read::MultiGzDecoder::new(&body[..])
                .take(max + 1)
                .read_to_end(&mut out)?;
            if out.len() as u64 > max {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a gzip-encoded page larger than {max} bytes decoded"),
                ));
            }
            Ok(out)
        }
        Some(e) => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("sent with Content-Encoding `{e}`, which kiln did not ask for"),
        )),
    }
}

/// The most a gzip-encoded page may decode to.
const MAX_DECODED: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::Error;

    /// A page sent gzip-encoded is decoded (within a bound); one sent in
    /// an encoding kiln did not ask for is refused, not taken as is.
    #[test]
    fn encoded_pages_are_decoded_or_refused() {
        use std::io::Write as _;
        let page = b"{\"files\": []}".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&page).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decoded(gz.clone(), Some("gzip"), 1 << 20).unwrap(), page);
        assert_eq!(decoded(gz.clone(), Some(" GZIP "), 1 << 20).unwrap(), page);
        assert_eq!(decoded(page.clone(), None, 10).unwrap(), page);
        assert_eq!(decoded(page.clone(), Some("identity"), 10).unwrap(), page);
        let e = decoded(gz.clone(), Some("gzip"), page.len() as u64 - 1).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(decoded(page.clone(), Some("gzip"), 1 << 20).is_err());
        let e = decoded(gz, Some("br"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("`br`"), "{e}");
    }

    #[test]
    fn credentials_never_shown() {
        assert_eq!(
            redact("https://u:s3cret@host/simple/x/"),
            "https://***@host/simple/x/"
        );
        assert_eq!(redact("https://host/a@b"), "https://host/a@b");
        assert_eq!(redact("file:///x"), "file:///x");
        assert_eq!(
            redact("https://host/p.whl?X-Amz-Signature=abc&v=1&access_token=t0k#frag"),
            "https://host/p.whl?X-Amz-Signature=***&v=1&access_token=***#frag"
        );
    }

    /// Answer one request on a loopback port with `status`; the URL to ask.
    fn answer_once(status: &'static str) -> String {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        });
        format!("http://user:s3cret@127.0.0.1:{port}/simple/x/")
    }

    fn store_error(e: &Error) -> &StoreError {
        e.downcast_ref::<StoreError>().expect("a StoreError")
    }

    #[test]
    fn statuses_and_offline_are_typed_and_redacted() {
        let http = Http::new().unwrap();
        let url = answer_once("404 Not Found");
        let err = http.get(&url, None).err().unwrap();
        assert!(matches!(
            store_error(&err),
            StoreError::HttpStatus { status: 404, url } if !url.contains("s3cret")
        ));
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .ends_with("/simple/x/: not found (HTTP 404)"));
        assert!(!err.to_string().contains("s3cret"));

        let url = answer_once("401 Unauthorized");
        let err = http.get(&url, None).err().unwrap();
        assert!(matches!(
            store_error(&err),
            StoreError::HttpStatus { status: 401, .. }
        ));
        assert_eq!(err.exit_code(), 4);
        assert!(!err.to_string().contains("s3cret"));

        let offline = Http::offline().unwrap();
        let err = offline
            .get("https://u:s3cret@host/simple/x/", None)
            .err()
            .unwrap();
        assert!(matches!(store_error(&err), StoreError::Offline { .. }));
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            "offline: https://***@host/simple/x/ is not in the cache (run `kiln fetch` or `kiln cache import` first)"
        );
    }

    /// Answer `n` requests with 200 and the request line as the body.
    fn echo_server(n: usize) -> u16 {
        use std::io::BufRead;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for _ in 0..n {
                let (conn, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let body = first.trim().to_string();
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        port
    }

    /// Two downloads of one digest at once make one request: the second
    /// waits for the first and takes its blob.
    #[test]
    fn one_digest_is_downloaded_once_at_a_time() {
        use std::io::BufRead;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let body = b"the bytes of one wheel".to_vec();
        let digest = Digest::of(&body);
        let asked = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let counter = asked.clone();
        let served = body.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let conn = conn.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                // Slow enough that the other download starts meanwhile.
                std::thread::sleep(Duration::from_millis(300));
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    served.len()
                );
                let _ = conn.write_all(&served);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let url = format!("http://127.0.0.1:{port}/one.whl");
        let got: Vec<_> = std::thread::scope(|s| {
            let both: Vec<_> = (0..2)
                .map(|_| s.spawn(|| http.download(&url, Some(&digest), &cache).unwrap()))
                .collect();
            both.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(got, vec![(digest.clone(), body.len() as u64); 2]);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(cache.read(&digest).unwrap(), body);
    }

    #[test]
    fn cached_pages_keep_no_token_and_never_mix_two_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let port = echo_server(2);
        let a = format!("http://u:pw1@127.0.0.1:{port}/t/TOKENAAA/chan/x/");
        let b = format!("http://u:pw1@127.0.0.1:{port}/t/TOKENBBB/chan/x/");
        let ok = |_: &[u8]| Ok(());
        let fa = http.get_cached(&a, None, &cache, &ok).unwrap();
        let fb = http.get_cached(&b, None, &cache, &ok).unwrap();
        // Same redacted URL, two entries: each answer is its own.
        assert!(String::from_utf8_lossy(&fa.bytes).contains("TOKENAAA"));
        assert!(String::from_utf8_lossy(&fb.bytes).contains("TOKENBBB"));
        assert_eq!(
            fa.url, a,
            "the final URL keeps the credentials for relative links"
        );
        // Offline, from the cache: still apart, still with credentials.
        let offline = Http::offline().unwrap();
        let ob = offline.get_cached(&b, None, &cache, &ok).unwrap();
        assert_eq!(ob.bytes, fb.bytes);
        assert_eq!(ob.url, b);
        // Nothing on disk holds a token or a password in clear (the bodies
        // are this echo server's, so only the metadata line is checked).
        let mut kept = 0;
        for e in std::fs::read_dir(cache.bucket(CacheBucket::Http)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "kept") {
                kept += 1;
                let all = std::fs::read_to_string(&p).unwrap();
                let text = all.lines().next().unwrap();
                for secret in ["TOKENAAA", "TOKENBBB", "pw1"] {
                    assert!(
                        !text.contains(secret),
                        "{secret} in {}: {text}",
                        p.display()
                    );
                }
            }
        }
        assert_eq!(kept, 2, "one file per response");
    }

    #[test]
    fn network_bytes_are_counted_and_cache_hits_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let port = echo_server(2);
        let url = format!("http://127.0.0.1:{port}/pkg");
        let (d, len) = http.download(&url, None, &cache).unwrap();
        assert_eq!(http.transfers().bytes(), len);
        assert_eq!(http.transfers().files(), (1, 1));
        assert_eq!(http.transfers().finished(), vec![d.to_string()]);
        // A cache hit costs nothing; an index page counts its body.
        let clone = http.clone();
        clone.download(&url, Some(&d), &cache).unwrap();
        assert_eq!(http.transfers().bytes(), len);
        let page = clone.get(&url, None).unwrap();
        assert_eq!(http.transfers().bytes(), len + page.bytes.len() as u64);
        assert_eq!(http.transfers().files(), (1, 1));
        // A local mirror is no transfer.
        let file = dir.path().join("local");
        std::fs::write(&file, b"local").unwrap();
        let before = http.transfers().bytes();
        http.download(&format!("file://{}", file.display()), None, &cache)
            .unwrap();
        assert_eq!(http.transfers().bytes(), before);
    }

    #[test]
    fn local_files_are_input() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::offline().unwrap();
        let missing = format!("file://{}/nope", dir.path().display());
        let err = http.get(&missing, None).err().unwrap();
        assert!(matches!(store_error(&err), StoreError::LocalFile { .. }));
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with(&format!("{missing}: ")));
        let err = http.download(&missing, None, &cache).unwrap_err();
        assert!(matches!(store_error(&err), StoreError::LocalFile { .. }));

        let file = dir.path().join("pkg");
        std::fs::write(&file, b"bytes").unwrap();
        let url = format!("file://{}", file.display());
        let wrong = Digest::of(b"other");
        let err = http.download(&url, Some(&wrong), &cache).unwrap_err();
        assert!(matches!(
            store_error(&err),
            StoreError::DigestMismatch { expected, .. } if expected == &wrong
        ));
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .starts_with(&format!("{url}: content digest mismatch: expected {wrong}")));
        let (d, len) = http.download(&url, None, &cache).unwrap();
        assert_eq!((d, len), (Digest::of(b"bytes"), 5));
    }

    #[test]
    fn file_urls() {
        assert_eq!(
            file_url_path("file:///a%20b/c"),
            Some(PathBuf::from("/a b/c"))
        );
        assert_eq!(file_url_path("https://x/y"), None);
    }
}
