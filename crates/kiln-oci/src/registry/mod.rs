//! Registry access over the OCI distribution API (oci-client), exposed as
//! blocking calls so the rest of kiln stays synchronous and rayon-driven.
//!
//! TLS trusts the system store (and `SSL_CERT_FILE`/`SSL_CERT_DIR`) through
//! rustls' platform verifier; proxies come from `HTTPS_PROXY`/`NO_PROXY`.
//! Plain HTTP is used only for loopback registries and those named with
//! `--insecure-registry`. Transient failures are retried with backoff.

pub mod auth;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::RegistryError;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, ErrorKind, IoContext, Result};
use kiln_core::progress::Transfers;
use kiln_spec::source::is_loopback_registry;
use kiln_store::cache::Cache;

/// Manifest media types we accept when pulling.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Blobs above this size are streamed from disk instead of read into
/// memory; a push sends a few blobs at once (`output::push`), so it holds
/// at most a few of these and a read buffer per streamed blob.
const STREAM_THRESHOLD: u64 = 1 << 20;
/// The reads of a streamed blob (one body: the push is monolithic).
const STREAM_READ: usize = 1 << 20;
/// The first wait before a retry; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(8);
/// How often a refusal of the credentials is retried (see [`Registry::run`]).
const REFUSALS_RETRIED: u32 = 2;
/// How long one registry operation is retried, unless `KILN_RETRY_DEADLINE`
/// (seconds) says otherwise; and at most how many times it is tried.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: u32 = 16;

fn retry_deadline() -> Duration {
    std::env::var("KILN_RETRY_DEADLINE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_DEADLINE, Duration::from_secs)
}

/// Between half and all of `d`, so clients that failed together do not
/// retry together (the clock's nanoseconds are random enough for that).
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

pub struct Registry {
    client: Client,
    /// Registries spoken to over plain HTTP (loopback, `--insecure-registry`).
    plain: BTreeSet<String>,
    /// For [`Registry::manifest_digest_quick`]: plain requests, no handshake.
    direct: std::sync::OnceLock<Option<reqwest::Client>>,
    rt: tokio::runtime::Runtime,
    auths: Mutex<HashMap<String, RegistryAuth>>,
    /// Blob bytes pulled (a build's summary and download bar).
    transfers: Mutex<Arc<Transfers>>,
}

impl Registry {
    /// `insecure`: `host[:port]` names allowed over plain HTTP, in addition
    /// to loopback registries among `refs`.
    pub fn new(insecure: &[String], refs: &[&Reference]) -> Result<Self> {
        let mut plain: BTreeSet<String> = insecure.iter().cloned().collect();
        for r in refs {
            if is_loopback_registry(r.registry()) {
                plain.insert(r.registry().to_string());
            }
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain.iter().cloned().collect()),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
            platform_resolver: None,
            https_proxy: env_any(&["HTTPS_PROXY", "https_proxy"]),
            http_proxy: env_any(&["HTTP_PROXY", "http_proxy"]),
            no_proxy: env_any(&["NO_PROXY", "no_proxy"]),
            // A blob goes up as a POST and one PUT with its body (what
            // containerd does, and what the distribution spec requires of
            // every registry), not POST, PATCH and PUT: a round trip less
            // a blob, and a retried upload has one request fewer to lose
            // on a flaky network.
            use_monolithic_push: true,
            ..Default::default()
        };
        // Without CA certificates (kiln alone in an empty root) oci-client
        // panics building its client: say what is missing instead.
        kiln_store::http::check_client()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .io_context(|| "starting the network runtime".into())?;
        Ok(Registry {
            client: Client::new(config),
            plain,
            direct: std::sync::OnceLock::new(),
            rt,
            auths: Mutex::new(HashMap::new()),
            transfers: Mutex::new(Transfers::hidden("pulling")),
        })
    }

    /// Count (and show) the blobs pulled from now on on `transfers`.
    pub fn count_transfers(&self, transfers: Arc<Transfers>) {
        *self.transfers.lock().unwrap_or_else(|e| e.into_inner()) = transfers;
    }

    fn transfers(&self) -> Arc<Transfers> {
        self.transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn auth(&self, r: &Reference) -> Result<RegistryAuth> {
        let mut auths = self.auths.lock().expect("auth lock");
        if let Some(a) = auths.get(r.registry()) {
            return Ok(a.clone());
        }
        let a = auth::credentials_for(r.registry())?;
        auths.insert(r.registry().to_string(), a.clone());
        Ok(a)
    }

    /// Run `op` with retries, blocking. Connection failures, cut bodies,
    /// 408/429/5xx are retried with capped exponential backoff and jitter
    /// (429 waits at least a second), up to [`MAX_ATTEMPTS`] tries within
    /// [`retry_deadline`]. A
    /// refusal of the credentials is retried twice too: oci-client goes on
    /// without a token when its `/v2/` ping fails (a 503 there looks like a
    /// registry without auth), and the next request is then refused; only a
    /// refusal that persists is an authentication error.
    fn run<T, F, Fut>(&self, what: &'static str, r: &Reference, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let auth = self.auth(r)?;
        let deadline = retry_deadline();
        self.rt.block_on(async {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &auth)
                .await;
            let start = std::time::Instant::now();
            let mut delay = FIRST_DELAY;
            let mut refusals = 0;
            let mut attempt = 1;
            loop {
                let e = match op().await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                let refused = is_refusal(&e);
                let again = if refused {
                    refusals += 1;
                    refusals <= REFUSALS_RETRIED
                } else {
                    is_transient(&e)
                };
                let wait = jittered(delay).max(if is_rate_limited(&e) {
                    Duration::from_secs(1)
                } else {
                    Duration::ZERO
                });
                if !again || attempt >= MAX_ATTEMPTS || start.elapsed() + wait > deadline {
                    return Err(classify(e, what, r).into());
                }
                attempt += 1;
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
        })
    }

    /// Fetch a manifest (or index) as raw bytes with its digest. When the
    /// reference names a digest, the bytes are checked against it.
    pub(crate) fn pull_manifest(&self, r: &Reference) -> Result<(Vec<u8>, Digest)> {
        let auth = self.auth(r)?;
        let (bytes, _) = self.run("pulling manifest", r, || {
            self.client.pull_manifest_raw(r, &auth, MANIFEST_TYPES)
        })?;
        let digest = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            if want != digest.to_string() {
                return Err(RegistryError::ManifestDigest {
                    reference: r.whole(),
                    expected: want.to_string(),
                    actual: digest,
                }
                .into());
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Like [`Registry::pull_manifest`], but a manifest or tag that does not
    /// exist is `None` instead of an error.
    pub(crate) fn pull_manifest_opt(&self, r: &Reference) -> Result<Option<(Vec<u8>, Digest)>> {
        let auth = self.auth(r)?;
        let got = self.run("pulling manifest", r, || async {
            match self
                .client
                .pull_manifest_raw(r, &auth, MANIFEST_TYPES)
                .await
            {
                Ok((bytes, _)) => Ok(Some(bytes)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        Ok(got.map(|b| {
            let d = Digest::of(&b);
            (b.to_vec(), d)
        }))
    }

    /// The digest a tag names (one HEAD request), `None` when the tag does
    /// not exist.
    pub fn tag_digest(&self, r: &Reference) -> Result<Option<String>> {
        let auth = self.auth(r)?;
        self.run("checking a tag", r, || async {
            match self.client.fetch_manifest_digest(r, &auth).await {
                Ok(d) => Ok(Some(d)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    /// The digest `r` (a tag or a digest) names, in one HEAD and no more,
    /// when the registry answers it without credentials; else what
    /// [`Registry::tag_digest`] finds. oci-client pings `/v2/` before every
    /// request to a registry that gives no token, so a no-op push's checks
    /// cost two requests each through it. Only a 200 with the digest header
    /// is taken from the plain request: a 401, a 404 (a private repository
    /// may look absent without credentials) or a failure goes the
    /// authenticated way.
    pub fn manifest_digest_quick(&self, r: &Reference) -> Result<Option<String>> {
        match self.head_manifest_plain(r) {
            Some(d) => Ok(Some(d)),
            None => self.tag_digest(r),
        }
    }

    fn head_manifest_plain(&self, r: &Reference) -> Option<String> {
        let client = self
            .direct
            .get_or_init(|| {
                reqwest::Client::builder()
                    .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                    .connect_timeout(Duration::from_secs(15))
                    .timeout(Duration::from_secs(30))
                    .build()
                    .ok()
            })
            .as_ref()?;
        let scheme = if self.plain.contains(r.registry()) {
            "http"
        } else {
            "https"
        };
        let what = r.digest().or(r.tag()).unwrap_or("latest");
        let url = format!(
            "{scheme}://{}/v2/{}/manifests/{what}",
            r.resolve_registry(),
            r.repository()
        );
        self.rt.block_on(async {
            let res = client
                .head(&url)
                .header(reqwest::header::ACCEPT, MANIFEST_TYPES.join(", "))
                .send()
                .await
                .ok()?;
            if res.status() != reqwest::StatusCode::OK {
                return None;
            }
            let d = res.headers().get("docker-content-digest")?.to_str().ok()?;
            d.parse::<Digest>().ok().map(|d| d.to_string())
        })
    }

    /// Digests of the manifests that name `subject` (a digest reference) as
    /// their subject and have `artifact_type`: from the referrers API, or,
    /// where the registry has none (404), from the referrers tag schema
    /// (`sha256-<hex>`), as oci-client's `pull_referrers` implements it.
    pub(crate) fn referrers(
        &self,
        subject: &Reference,
        artifact_type: &str,
    ) -> Result<Vec<String>> {
        let index = self.run("listing referrers", subject, || {
            self.client.pull_referrers(subject, Some(artifact_type))
        })?;
        Ok(index.manifests.into_iter().map(|m| m.digest).collect())
    }

    /// Every manifest naming `subject` (a digest reference) as its subject:
    /// the referrers API, or the `sha256-<hex>` tag schema where the
    /// registry has no API (oci-client falls back on a 404).
    pub(crate) fn referrer_entries(
        &self,
        subject: &Reference,
    ) -> Result<Vec<oci_client::manifest::ImageIndexEntry>> {
        let index = self.run("listing referrers", subject, || {
            self.client.pull_referrers(subject, None)
        })?;
        Ok(index.manifests)
    }

    /// The repository's tags (`tags/list`, first page of up to 1000).
    pub fn list_tags(&self, r: &Reference) -> Result<Vec<String>> {
        let auth = self.auth(r)?;
        let got = self.run("listing tags", r, || {
            self.client.list_tags(r, &auth, Some(1000), None)
        })?;
        let mut tags = got.tags;
        tags.sort();
        Ok(tags)
    }

    /// Download a blob into the cache, verified against its digest.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        cache: &Cache,
    ) -> Result<()> {
        self.fetch_blob_showing(r, digest, size, cache, None)
    }

    /// [`Registry::fetch_blob`], its bytes shown to `growing` as they come
    /// (a retry abandons it: see [`kiln_store::Growing`]).
    pub fn fetch_blob_showing(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        cache: &Cache,
        growing: Option<&std::sync::Arc<kiln_store::Growing>>,
    ) -> Result<()> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        let transfers = self.transfers();
        self.run("pulling blob", r, || async {
            let mut w = cache
                .writer()
                .and_then(|w| match growing {
                    Some(g) => w.showing(g.clone()),
                    None => Ok(w),
                })
                .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
            // The blob writer hashes what it keeps; asked for the range
            // from 0, a registry that serves ranges answers 206 and
            // oci-client leaves the bytes to that one hash instead of
            // hashing them too (a cold build's base, once more). A full
            // answer is hashed by both, as before. (An empty blob has no
            // range to ask for.)
            let mut stream = if size > 0 {
                match self
                    .client
                    .pull_blob_stream_partial(r, &desc, 0, None)
                    .await?
                {
                    BlobResponse::Full(s) | BlobResponse::Partial(s) => s,
                }
            } else {
                self.client.pull_blob_stream(r, &desc).await?
            };
            transfers.start(Some(size));
            let mut counted = Counted(&transfers, true);
            // A registry that sends more than the descriptor declares is cut
            // off (not left to fill the disk); less fails the digest check.
            let mut got: u64 = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                transfers.add(chunk.len() as u64);
                got += chunk.len() as u64;
                if got > size {
                    return Err(OciDistributionError::GenericError(Some(format!(
                        "blob {digest} is larger than the {size} bytes its descriptor declares"
                    ))));
                }
                w.write_all(&chunk)?;
            }
            w.commit(Some(digest)).map_err(|e| {
                OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError {
                        expected: digest.to_string(),
                        actual: e.to_string(),
                    },
                )
            })?;
            counted.1 = false;
            transfers.finish(digest.to_string());
            Ok(())
        })
    }

    pub(crate) fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool> {
        let d = digest.to_string();
        self.run("checking blob", r, || self.client.blob_exists(r, &d))
    }

    /// Cross-repository mount; `false` when the registry declined (then upload).
    pub(crate) fn mount_blob(
        &self,
        target: &Reference,
        source: &Reference,
        digest: &Digest,
    ) -> Result<bool> {
        let d = digest.to_string();
        match self.run("mounting blob", target, || {
            self.client.mount_blob(target, source, &d)
        }) {
            Ok(()) => Ok(true),
            // Refused credentials fail the push; any other refusal means: upload.
            Err(e) if e.kind() == ErrorKind::Auth => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Upload a blob from a file; large blobs go in chunks without being read into memory.
    pub(crate) fn push_blob(
        &self,
        r: &Reference,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let d = digest.to_string();
        if size <= STREAM_THRESHOLD {
            let data = bytes::Bytes::from(
                std::fs::read(path).io_context(|| format!("reading {}", path.display()))?,
            );
            self.run("pushing blob", r, || {
                self.client.push_blob(r, data.clone(), &d)
            })?;
        } else {
            self.run("pushing blob", r, || async {
                let file = std::fs::File::open(path)?;
                let stream = file_chunks(file);
                self.client
                    .push_blob_stream(r, stream, &d, Some(size))
                    .await
            })?;
        }
        Ok(())
    }

    /// Upload a small blob held in memory (signature payloads, their configs).
    pub(crate) fn push_blob_data(&self, r: &Reference, data: Vec<u8>) -> Result<Digest> {
        let digest = Digest::of(&data);
        let d = digest.to_string();
        let data = bytes::Bytes::from(data);
        self.run("pushing blob", r, || {
            self.client.push_blob(r, data.clone(), &d)
        })?;
        Ok(digest)
    }

    /// Download a small blob into memory, verified against its digest;
    /// refused when it is larger than `max` bytes (a hostile registry
    /// cannot fill memory).
    pub(crate) fn pull_blob_data(
        &self,
        r: &Reference,
        digest: &Digest,
        max: u64,
    ) -> Result<Vec<u8>> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            ..Default::default()
        };
        self.run("pulling blob", r, || async {
            let mut stream = self.client.pull_blob_stream(r, &desc).await?;
            let mut data = Vec::new();
            while let Some(chunk) = stream.next().await {
                data.extend_from_slice(&chunk?);
                if data.len() as u64 > max {
                    return Err(OciDistributionError::GenericError(Some(format!(
                        "blob {digest} is larger than {max} bytes"
                    ))));
                }
            }
            let actual = Digest::of(&data);
            if actual != *digest {
                return Err(OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError {
                        expected: digest.to_string(),
                        actual: actual.to_string(),
                    },
                ));
            }
            Ok(data)
        })
    }

    pub(crate) fn push_manifest(
        &self,
        r: &Reference,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<()> {
        let ct: http::HeaderValue = media_type
            .parse()
            .map_err(|_| Error::internal(format!("bad media type {media_type}")))?;
        self.run("pushing manifest", r, || {
            self.client.push_manifest_raw(r, bytes.to_vec(), ct.clone())
        })?;
        Ok(())
    }
}

/// A started transfer that is abandoned unless disarmed (`.1 = false`),
/// so every early return of a pull still ends it.
struct Counted<'a>(&'a Transfers, bool);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.abandon();
        }
    }
}

fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// A file as a stream of 16 MiB pieces, each becoming one PATCH.
fn file_chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
       + Send
       + 'static {
    use std::io::Read;
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; STREAM_READ];
        let mut filled = 0;
        loop {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        break;
                    }
                }
                Err(e) => return Some((Err(e.into()), None)),
            }
        }
        if filled == 0 {
            return None;
        }
        buf.truncate(filled);
        Some((Ok(bytes::Bytes::from(buf)), Some(file)))
    })
}

/// Worth another try: the connection failed or was cut (before or during
/// the response), or the registry said 408, 429 or 5xx.
fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.is_body()
                || r.is_request()
                || r.is_decode()
                || r.status()
                    .is_some_and(|s| s.is_server_error() || matches!(s.as_u16(), 408 | 429))
        }
        OciDistributionError::ServerError { code, .. } => {
            *code >= 500 || *code == 429 || *code == 408
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        OciDistributionError::IoError(_) => true,
        // A response cut short can leave half a JSON document.
        OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::RegistryNoLocationError => true,
        _ => false,
    }
}

fn is_rate_limited(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 429,
        OciDistributionError::RequestError(r) => r.status().is_some_and(|s| s.as_u16() == 429),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        _ => false,
    }
}

/// The registry refused the credentials (or asked for some).
fn is_refusal(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
        OciDistributionError::RequestError(r) => {
            r.status().is_some_and(|s| matches!(s.as_u16(), 401 | 403))
        }
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

/// The registry said the manifest, tag or repository does not exist.
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().all(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) && !envelope.errors.is_empty()
        }
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RequestError(re) => re.status().map(|s| s.as_u16()) == Some(404),
        _ => false,
    }
}

/// Who has to act on a registry failure (after retries): a refusal of the
/// credentials, a name that does not exist, or the network.
fn classify(e: OciDistributionError, op: &'static str, r: &Reference) -> RegistryError {
    let reference = r.whole();
    let registry = r.registry().to_string();
    let status = match &e {
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(re) => re.status().map(|s| s.as_u16()),
        _ => None,
    };
    let denied = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => matches!(status, Some(401 | 403)),
    };
    let not_found = match &e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
                    | OciErrorCode::BlobUnknown
            )
        }),
        _ => status == Some(404),
    };
    let unreachable =
        matches!(&e, OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout());
    if denied {
        RegistryError::Denied {
            op,
            reference,
            registry,
        }
    } else if not_found {
        RegistryError::NotFound {
            op,
            reference,
            registry,
        }
    } else if unreachable {
        RegistryError::Unreachable {
            op,
            reference,
            source: e,
        }
    } else {
        RegistryError::Failed {
            op,
            reference,
            status,
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::errors::OciEnvelope;

    const REF: &str = "registry.example:5000/team/app:1.0";

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "https://registry.example:5000/v2/team/app/manifests/1.0".into(),
            message: String::new(),
        }
    }

    fn envelope(code: &str) -> OciDistributionError {
        let envelope: OciEnvelope = serde_json::from_str(&format!(
            r#"{{"errors":[{{"code":"{code}","message":"m"}}]}}"#
        ))
        .unwrap();
        OciDistributionError::RegistryError {
            envelope,
            url: "https://registry.example:5000/v2/".into(),
        }
    }

    /// What `Registry::run` returns for `e` (after its retries).
    fn failed(e: OciDistributionError, op: &'static str) -> Error {
        classify(e, op, &REF.parse().unwrap()).into()
    }

    #[test]
    fn refused_credentials_are_auth_errors() {
        for e in [
            server(401),
            server(403),
            envelope("DENIED"),
            envelope("UNAUTHORIZED"),
            OciDistributionError::UnauthorizedError {
                url: "https://registry.example:5000/v2/".into(),
            },
            OciDistributionError::AuthenticationFailure("bad token".into()),
        ] {
            let err = failed(e, "pulling manifest");
            assert!(
                matches!(
                    err.downcast_ref::<RegistryError>(),
                    Some(RegistryError::Denied { op: "pulling manifest", registry, .. })
                        if registry == "registry.example:5000"
                ),
                "{err:?}"
            );
            assert_eq!(err.exit_code(), 4);
            assert_eq!(
                err.to_string(),
                format!("pulling manifest {REF}: registry registry.example:5000 refused the credentials (check KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD or your Docker config)")
            );
        }
    }

    #[test]
    fn missing_names_are_input_errors() {
        for e in [
            server(404),
            envelope("MANIFEST_UNKNOWN"),
            envelope("NAME_UNKNOWN"),
            envelope("BLOB_UNKNOWN"),
            OciDistributionError::ImageManifestNotFoundError("x".into()),
        ] {
            let err = failed(e, "pulling manifest");
            assert!(
                matches!(
                    err.downcast_ref::<RegistryError>(),
                    Some(RegistryError::NotFound { .. })
                ),
                "{err:?}"
            );
            assert_eq!(err.exit_code(), 2);
            assert_eq!(
                err.to_string(),
                format!("pulling manifest {REF}: not found in registry registry.example:5000")
            );
        }
    }

    #[test]
    fn server_failures_are_network_errors_with_their_status() {
        let err = failed(server(503), "pushing blob");
        assert!(
            matches!(
                err.downcast_ref::<RegistryError>(),
                Some(RegistryError::Failed {
                    op: "pushing blob",
                    status: Some(503),
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 3);
        assert!(err
            .to_string()
            .starts_with(&format!("pushing blob {REF}: Server error:")));
        let err = failed(envelope("TOOMANYREQUESTS"), "pushing blob");
        assert!(matches!(
            err.downcast_ref::<RegistryError>(),
            Some(RegistryError::Failed { status: None, .. })
        ));
        assert_eq!(err.exit_code(), 3);
        assert!(is_transient(&server(503)) && is_transient(&envelope("TOOMANYREQUESTS")));
        assert!(!is_transient(&server(401)) && !is_transient(&server(404)));
    }

    #[test]
    fn connection_refused_is_unreachable() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        kiln_store::http::tls();
        let refused = reqwest::blocking::get(format!("http://127.0.0.1:{port}/v2/")).unwrap_err();
        assert!(refused.is_connect());
        let e = OciDistributionError::RequestError(refused);
        assert!(is_transient(&e));
        let err = failed(e, "checking blob");
        assert!(
            matches!(
                err.downcast_ref::<RegistryError>(),
                Some(RegistryError::Unreachable {
                    op: "checking blob",
                    ..
                })
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 3);
        assert!(err
            .to_string()
            .starts_with(&format!("checking blob {REF}: ")));
    }
}
