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
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use kiln_core::digest::Digest;
use kiln_core::error::{with_causes, Error, IoContext, Result};
use kiln_spec::source::is_loopback_registry;
use kiln_store::cache::Cache;

/// Manifest media types we accept when pulling.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Blobs above this size are streamed from disk in chunks instead of read into memory.
const STREAM_THRESHOLD: u64 = 16 << 20;
const ATTEMPTS: u32 = 4;

pub struct Registry {
    client: Client,
    rt: tokio::runtime::Runtime,
    auths: Mutex<HashMap<String, RegistryAuth>>,
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
            protocol: ClientProtocol::HttpsExcept(plain.into_iter().collect()),
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")),
            platform_resolver: None,
            https_proxy: env_any(&["HTTPS_PROXY", "https_proxy"]),
            http_proxy: env_any(&["HTTP_PROXY", "http_proxy"]),
            no_proxy: env_any(&["NO_PROXY", "no_proxy"]),
            ..Default::default()
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .io_context(|| "starting the network runtime".into())?;
        Ok(Registry {
            client: Client::new(config),
            rt,
            auths: Mutex::new(HashMap::new()),
        })
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

    /// Run `op` with retries on transient failures, blocking.
    fn run<T, F, Fut>(&self, what: &str, r: &Reference, op: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let auth = self.auth(r)?;
        self.rt.block_on(async {
            self.client
                .store_auth_if_needed(r.resolve_registry(), &auth)
                .await;
            let mut delay = Duration::from_millis(250);
            let mut attempt = 1;
            loop {
                match op().await {
                    Ok(v) => return Ok(v),
                    Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                        tokio::time::sleep(delay).await;
                        delay *= 3;
                        attempt += 1;
                    }
                    Err(e) => return Err(classify(e, what, r)),
                }
            }
        })
    }

    /// Fetch a manifest (or index) as raw bytes with its digest. When the
    /// reference names a digest, the bytes are checked against it.
    pub fn pull_manifest(&self, r: &Reference) -> Result<(Vec<u8>, Digest)> {
        let auth = self.auth(r)?;
        let (bytes, _) = self.run("pulling manifest", r, || {
            self.client.pull_manifest_raw(r, &auth, MANIFEST_TYPES)
        })?;
        let digest = Digest::of(&bytes);
        if let Some(want) = r.digest() {
            if want != digest.to_string() {
                return Err(Error::network(format!(
                    "manifest of {} has digest {digest}, expected {want}",
                    r.whole()
                )));
            }
        }
        Ok((bytes.to_vec(), digest))
    }

    /// Like [`Registry::pull_manifest`], but a manifest or tag that does not
    /// exist is `None` instead of an error.
    pub fn pull_manifest_opt(&self, r: &Reference) -> Result<Option<(Vec<u8>, Digest)>> {
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

    /// Digests of the manifests that name `subject` (a digest reference) as
    /// their subject and have `artifact_type`: from the referrers API, or,
    /// where the registry has none (404), from the referrers tag schema
    /// (`sha256-<hex>`), as oci-client's `pull_referrers` implements it.
    pub fn referrers(&self, subject: &Reference, artifact_type: &str) -> Result<Vec<String>> {
        let index = self.run("listing referrers", subject, || {
            self.client.pull_referrers(subject, Some(artifact_type))
        })?;
        Ok(index.manifests.into_iter().map(|m| m.digest).collect())
    }

    /// Download a blob into the cache, verified against its digest.
    pub fn fetch_blob(
        &self,
        r: &Reference,
        digest: &Digest,
        size: u64,
        cache: &Cache,
    ) -> Result<()> {
        let desc = OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        };
        self.run("pulling blob", r, || async {
            let mut w = cache
                .writer()
                .map_err(|e| OciDistributionError::GenericError(Some(e.to_string())))?;
            let mut stream = self.client.pull_blob_stream(r, &desc).await?;
            while let Some(chunk) = stream.next().await {
                w.write_all(&chunk?)?;
            }
            w.commit(Some(digest)).map_err(|e| {
                OciDistributionError::DigestError(
                    oci_client::errors::DigestError::VerificationError {
                        expected: digest.to_string(),
                        actual: e.to_string(),
                    },
                )
            })?;
            Ok(())
        })
    }

    pub fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool> {
        let d = digest.to_string();
        self.run("checking blob", r, || self.client.blob_exists(r, &d))
    }

    /// Cross-repository mount; `false` when the registry declined (then upload).
    pub fn mount_blob(
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
            Err(Error::Auth(m)) => Err(Error::Auth(m)),
            Err(_) => Ok(false),
        }
    }

    /// Upload a blob from a file; large blobs go in chunks without being read into memory.
    pub fn push_blob(&self, r: &Reference, path: &Path, digest: &Digest, size: u64) -> Result<()> {
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

    pub fn push_manifest(&self, r: &Reference, bytes: &[u8], media_type: &str) -> Result<()> {
        let ct: http::HeaderValue = media_type
            .parse()
            .map_err(|_| Error::internal(format!("bad media type {media_type}")))?;
        self.run("pushing manifest", r, || {
            self.client.push_manifest_raw(r, bytes.to_vec(), ct.clone())
        })?;
        Ok(())
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
        let mut buf = vec![0u8; 16 << 20];
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

fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => {
            r.is_connect()
                || r.is_timeout()
                || r.is_body()
                || r.status().is_some_and(|s| s.is_server_error())
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| e.code == OciErrorCode::Toomanyrequests),
        OciDistributionError::IoError(_) => true,
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

fn classify(e: OciDistributionError, what: &str, r: &Reference) -> Error {
    let whole = r.whole();
    let not_found = || {
        Error::input(format!(
            "{what} {whole}: not found in registry {}",
            r.registry()
        ))
    };
    let denied = || {
        Error::Auth(format!(
            "{what} {whole}: registry {} refused the credentials (check KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD or your Docker config)",
            r.registry()
        ))
    };
    match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => denied(),
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                denied()
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            }) {
                not_found()
            } else {
                Error::network(format!("{what} {whole}: {}", with_causes(&e)))
            }
        }
        OciDistributionError::ServerError { code, .. } if *code == 401 || *code == 403 => denied(),
        OciDistributionError::ServerError { code: 404, .. } => not_found(),
        OciDistributionError::RequestError(re)
            if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            denied()
        }
        OciDistributionError::RequestError(re) if re.status().map(|s| s.as_u16()) == Some(404) => {
            not_found()
        }
        _ => Error::network(format!("{what} {whole}: {}", with_causes(&e))),
    }
}
