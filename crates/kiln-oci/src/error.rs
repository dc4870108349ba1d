//! What talking to registries ([`RegistryError`]) and reading or writing
//! images ([`ImageError`]) fail with. Credentials never appear in either.

use std::io;
use std::path::PathBuf;

use oci_client::errors::OciDistributionError;

use crate::output::push::{PushReport, PushStep};
use kiln_core::error::with_causes;
use kiln_core::{Classify, Digest, ErrorKind, Platform};

/// A registry, its credentials, or the lack of one (`--offline`).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused our credentials (or their absence).
    #[error("{op} {reference}: registry {registry} refused the credentials (check KILN_REGISTRY_USERNAME/KILN_REGISTRY_PASSWORD or your Docker config)")]
    Denied {
        op: &'static str,
        reference: String,
        registry: String,
    },

    /// The manifest, tag, blob or repository does not exist there.
    #[error("{op} {reference}: not found in registry {registry}")]
    NotFound {
        op: &'static str,
        reference: String,
        registry: String,
    },

    /// No answer: connection refused, DNS, TLS, timeout (after retries).
    #[error("{op} {reference}: {}", with_causes(source))]
    Unreachable {
        op: &'static str,
        reference: String,
        source: OciDistributionError,
    },

    /// Any other failure the registry reported (after retries), with the
    /// HTTP status when there was one.
    #[error("{op} {reference}: {}", with_causes(source))]
    Failed {
        op: &'static str,
        reference: String,
        status: Option<u16>,
        source: OciDistributionError,
    },

    /// The manifest a digest reference named arrived with another digest.
    #[error("manifest of {reference} has digest {actual}, expected {expected}")]
    ManifestDigest {
        reference: String,
        expected: String,
        actual: Digest,
    },

    /// `--offline` (no registry), and the manifest is not cached: say how
    /// to fill the cache (a base named by tag is only read offline at the
    /// digest kiln.lock pins).
    #[error("offline: the manifest of {reference} is not in the cache (online, run `kiln lock` and `kiln fetch` first, or `kiln cache import FILE` from a machine that did)")]
    OfflineManifest { reference: String },

    /// `--offline` (no registry), and the blob is not cached; `hint`: say
    /// how to fill the cache.
    #[error("offline: blob {digest} of {image} is not in the cache{}", if *hint { " (run `kiln fetch` or `kiln cache import` first)" } else { "" })]
    OfflineBlob {
        digest: Digest,
        image: String,
        hint: bool,
    },

    #[error("KILN_REGISTRY_USERNAME is set but KILN_REGISTRY_PASSWORD is not")]
    PasswordMissing,

    #[error("cannot parse Docker config {}: {source}", path.display())]
    DockerConfig {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// An `auths` entry of the Docker config that is not base64 of `user:password`.
    #[error("{}: auths entry for {key} is {problem}", path.display())]
    AuthEntry {
        path: PathBuf,
        key: String,
        /// `not valid base64`, `not UTF-8`, `not user:password`.
        problem: &'static str,
    },

    #[error("cannot run credential helper {helper}: {source}")]
    HelperNotRunnable { helper: String, source: io::Error },

    #[error("credential helper {helper} failed: {source}")]
    HelperFailed { helper: String, source: io::Error },

    /// The helper (or credential store) knows nothing for this registry.
    #[error("credential helper {helper} has no credentials for {server}")]
    HelperNoCredentials { helper: String, server: String },

    #[error("credential helper {helper} gave an unreadable answer")]
    HelperUnreadable { helper: String },

    /// A push that failed part-way: what the registry holds now, and the
    /// step that failed with its cause (whose kind the push keeps).
    #[error("{}", push_incomplete(repository, report, *blobs_total, *sboms, tags, *step, source))]
    PushIncomplete {
        /// `registry/repository` pushed to.
        repository: String,
        /// What was pushed before the failure.
        report: Box<PushReport>,
        /// Blobs of the image (layers and configs) the push needed.
        blobs_total: usize,
        /// SBOM referrers the push was to attach (0 with `--no-sbom`).
        sboms: usize,
        /// Every tag the push was to write; `report.tags` were written.
        tags: Vec<String>,
        step: PushStep,
        source: kiln_core::Error,
    },
}

/// The message of [`RegistryError::PushIncomplete`]: the failure on the
/// first line, then one line each for blobs, manifests, SBOM referrers and
/// tags.
fn push_incomplete(
    repository: &str,
    report: &PushReport,
    blobs_total: usize,
    sboms: usize,
    tags: &[String],
    step: PushStep,
    source: &kiln_core::Error,
) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let in_registry = report.blobs_uploaded + report.blobs_mounted + report.blobs_skipped;
    let mut msg = format!(
        "push to {repository} incomplete: {step} failed: {source}\n  \
         blobs in the registry: {in_registry} of {blobs_total} ({} uploaded, {} mounted, {} already there)\n  \
         manifests pushed: {}",
        report.blobs_uploaded,
        report.blobs_mounted,
        report.blobs_skipped,
        list(&report.manifests),
    );
    if sboms > 0 {
        let pushed = report.referrer_manifests.len();
        msg.push_str("\n  SBOM referrers: ");
        msg.push_str(&if pushed == 0 {
            "not pushed".to_string()
        } else if pushed >= sboms {
            format!("pushed ({pushed})")
        } else {
            format!("{pushed} of {sboms} pushed")
        });
    }
    let missing: Vec<String> = tags
        .iter()
        .filter(|t| !report.tags.contains(t))
        .cloned()
        .collect();
    msg.push_str(&format!("\n  tags written: {}", list(&report.tags)));
    if !missing.is_empty() {
        msg.push_str(&format!("; tags not written: {}", list(&missing)));
    }
    msg
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        use RegistryError::*;
        match self {
            Denied { .. } | HelperNoCredentials { .. } => ErrorKind::Auth,
            Unreachable { .. }
            | Failed { .. }
            | ManifestDigest { .. }
            | OfflineManifest { .. }
            | OfflineBlob { .. } => ErrorKind::Network,
            NotFound { .. }
            | PasswordMissing
            | DockerConfig { .. }
            | AuthEntry { .. }
            | HelperNotRunnable { .. }
            | HelperFailed { .. }
            | HelperUnreadable { .. } => ErrorKind::Input,
            // Who has to act is whoever has to act on the cause.
            PushIncomplete { source, .. } => source.kind(),
        }
    }
}

impl From<RegistryError> for kiln_core::Error {
    fn from(e: RegistryError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// Which document did not parse (the words of the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocumentKind {
    /// Not JSON at all.
    Json,
    Index,
    Manifest,
    Config,
    /// A docker-archive's `manifest.json`.
    ArchiveManifest,
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DocumentKind::Json => "not valid JSON",
            DocumentKind::Index => "invalid image index",
            DocumentKind::Manifest => "invalid image manifest",
            DocumentKind::Config => "invalid image config",
            DocumentKind::ArchiveManifest => "invalid manifest.json",
        })
    }
}

/// An image, OCI layout or docker-archive that is not what kiln needs, or an
/// output it may not write. `what` names the image as the user wrote it
/// (`oci:DIR:TAG`, `docker-archive:FILE`, a reference). All bad input.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// `kiln rebase` of an image it cannot rebase safely.
    #[error("cannot rebase {image}: {why}")]
    NotRebasable { image: String, why: String },

    /// A manifest, index, config or `manifest.json` that does not parse.
    #[error("{what}: {document}: {source}")]
    Unparsable {
        what: String,
        document: DocumentKind,
        source: serde_json::Error,
    },

    #[error(
        "{what}: neither an image manifest nor an index (schema 1 manifests are not supported)"
    )]
    NotManifestOrIndex { what: String },

    #[error("{what}: an index inside an index is not supported")]
    NestedIndex { what: String },

    /// The base has no image for a requested platform.
    #[error("{what} has no image for platform {requested} (it has: {available})")]
    PlatformMissing {
        what: String,
        requested: Platform,
        /// `os/arch[/variant], ...`
        available: String,
    },

    /// A single-platform base (`single`), or a docker-archive, is for another platform.
    #[error("{what} is {}image for {has}, but {requested} was requested", if *single { "a single-platform " } else { "an " })]
    PlatformMismatch {
        what: String,
        has: Platform,
        requested: Platform,
        single: bool,
    },

    /// A single-platform base for a build of several platforms.
    #[error("{what} is a single-platform image; it cannot be the base of {requested} platforms")]
    SinglePlatform { what: String, requested: usize },

    /// The config's `diff_ids` and the layers (of the manifest, or of a
    /// docker-archive's `manifest.json`) do not pair up.
    #[error("{what}: {}", if *in_archive { format!("{layers} layers but {diff_ids} diff_ids") } else { format!("config lists {diff_ids} diff_ids but the manifest has {layers} layers") })]
    LayerCount {
        what: String,
        layers: usize,
        diff_ids: usize,
        in_archive: bool,
    },

    #[error("{what}: not an OCI layout (cannot read {}: {source})", index.display())]
    NotALayout {
        what: String,
        index: PathBuf,
        source: io::Error,
    },

    #[error("{what}: oci-layout says imageLayoutVersion `{version}`; kiln reads 1.0.0")]
    LayoutVersion { what: String, version: String },

    #[error("{what}: index.json is not an image index")]
    LayoutNotIndexed { what: String },

    /// `oci:DIR:TAG` with a tag the layout does not have.
    #[error("{what}: no image tagged `{tag}` in {}; {}", index.display(), tag_list(tags))]
    TagNotFound {
        what: String,
        tag: String,
        index: PathBuf,
        /// The tags the layout has.
        tags: Vec<String>,
    },

    /// A registry reference whose tag the repository does not have.
    #[error("{reference}: no such tag in {repository}; {}", tag_list(tags))]
    RegistryTagNotFound {
        reference: String,
        repository: String,
        /// The repository's tags (`tags/list`).
        tags: Vec<String>,
    },

    /// `oci:DIR` without a tag, and the layout holds several images.
    #[error("{what}: the layout holds {count} images; name one as oci:DIR:TAG")]
    AmbiguousLayout {
        what: String,
        count: usize,
        /// The tags the layout has.
        tags: Vec<String>,
    },

    /// A blob a layout's manifests name is not in it.
    #[error("{what}: missing blob {digest}: {source}")]
    MissingBlob {
        what: String,
        digest: Digest,
        source: io::Error,
    },

    /// A layout's manifest or blob whose bytes are not what its digest says.
    #[error("{what}: {item} {digest} does not match its digest")]
    DigestMismatch {
        what: String,
        /// `manifest` or `blob`.
        item: &'static str,
        digest: Digest,
    },

    /// A docker-archive that cannot be opened or read as tar, or a layer in
    /// it that does not decompress.
    #[error("{what}: {problem}: {source}")]
    UnreadableArchive {
        what: String,
        /// `cannot open`, `not a tar archive`, `corrupt archive`, `corrupt compressed layer`.
        problem: &'static str,
        source: io::Error,
    },

    #[error("{what}: no manifest.json: not a docker-archive")]
    NotDockerArchive { what: String },

    /// A docker-archive with no image, or with several.
    #[error("{what}: {}", if *count == 0 { "manifest.json lists no image".to_string() } else { format!("holds {count} images; kiln reads archives with one") })]
    ArchiveImageCount { what: String, count: usize },

    /// A docker-archive member path that would leave the archive (`..`, absolute).
    #[error("{what}: refusing unsafe member path `{path}` in manifest.json")]
    UnsafeMember { what: String, path: String },

    /// A config or layer `manifest.json` names but the archive lacks.
    #[error("{what}: {item} {name} missing from the archive")]
    MissingMember {
        what: String,
        /// `config` or `layer`.
        item: &'static str,
        name: String,
    },

    #[error("{what}: layer content {actual} does not match diff_id {diff_id}")]
    DiffIdMismatch {
        what: String,
        actual: Digest,
        diff_id: Digest,
    },

    /// A docker-archive output for a build of several platforms.
    #[error("docker-archive:{} holds one platform, but {count} were built; use an oci: output for several", path.display())]
    ArchivePlatforms { path: PathBuf, count: usize },

    /// `oci:DIR` output where DIR is something else.
    #[error("output oci:{} exists and is not an OCI layout; refusing to overwrite it", dir.display())]
    NotLayoutTarget { dir: PathBuf },

    /// The existing layout of an `oci:DIR` output has an `index.json` that is no index.
    #[error("{}/index.json is not an index", dir.display())]
    OutputNotIndexed { dir: PathBuf },

    #[error("invalid push reference {repo}:{tag}: {source}")]
    InvalidPushReference {
        repo: String,
        tag: String,
        source: oci_client::ParseError,
    },

    /// The referrers tag (`sha256-<hex>`) holds something kiln will not overwrite.
    #[error("{reference}: the referrers tag holds something other than an image index; not overwriting it")]
    ReferrersTagNotIndex { reference: String },

    /// A blob whose size is not the one its descriptor declares.
    #[error("{what}: blob {digest} is {actual} bytes but its descriptor says {declared}")]
    BlobSize {
        what: String,
        digest: Digest,
        declared: u64,
        actual: u64,
    },

    /// A layer blob that does not decompress.
    #[error("{what}: layer {digest} does not decompress: {source}")]
    CorruptLayer {
        what: String,
        digest: Digest,
        source: io::Error,
    },

    /// A symlink, FIFO, device or directory where a blob or document must be.
    #[error("{what}: {item} is {kind}, not a regular file; refusing to read it")]
    NotRegular {
        what: String,
        /// `blob sha256:…`, `index.json`, `member manifest.json`.
        item: String,
        kind: &'static str,
    },

    /// An index, manifest or config larger than kiln reads.
    #[error("{what}: {item} is {size} bytes; kiln reads documents of at most {max} bytes")]
    TooLarge {
        what: String,
        item: String,
        size: u64,
        max: u64,
    },
}

/// "tags there: a, b" (the first 20), or that there are none.
fn tag_list(tags: &[String]) -> String {
    const SHOWN: usize = 20;
    match tags.len() {
        0 => "it has no tags".into(),
        n if n <= SHOWN => format!("tags there: {}", tags.join(", ")),
        n => format!(
            "tags there: {}, and {} more",
            tags[..SHOWN].join(", "),
            n - SHOWN
        ),
    }
}

impl Classify for ImageError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<ImageError> for kiln_core::Error {
    fn from(e: ImageError) -> Self {
        kiln_core::Error::typed(e)
    }
}

/// The key formats the messages of [`SignError::KeyFormat`] name.
const PRIVATE_FORMATS: &str = "an ECDSA P-256 private key in PEM: PKCS#8 (BEGIN PRIVATE KEY), SEC1 (BEGIN EC PRIVATE KEY), or cosign's encrypted key (BEGIN ENCRYPTED SIGSTORE PRIVATE KEY, password in COSIGN_PASSWORD)";
const PUBLIC_FORMATS: &str = "an ECDSA P-256 public key in PEM (BEGIN PUBLIC KEY)";

/// Signing and verifying image signatures (`kiln sign`, `kiln verify`).
/// Key files are named by their path only, never by what they hold.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read key file {}: {source}", path.display())]
    KeyUnreadable { path: PathBuf, source: io::Error },

    /// A key file kiln cannot use; `problem` says why.
    #[error("key file {}: {problem}; expected {}", path.display(), if *private { PRIVATE_FORMATS } else { PUBLIC_FORMATS })]
    KeyFormat {
        path: PathBuf,
        problem: String,
        /// A private key was expected (`--key` of sign), else a public one.
        private: bool,
    },

    /// `oci:DIR`, `docker-archive:FILE` or `scratch`: there is no registry to
    /// store a signature in.
    #[error("{reference}: signatures live in a registry; name the image as REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:…")]
    NotRegistry { reference: String },

    /// cosign's signature tag holds something other than an image manifest.
    #[error("{reference} holds something other than a signature manifest; not overwriting it")]
    SignatureTagNotManifest { reference: String },

    /// Neither cosign's tag nor an OCI referrer holds a signature.
    #[error("no signature of {digest} in {repository}: neither the tag {tag} nor a referrer of type {artifact_type} exists (sign with `kiln sign`)")]
    NoSignature {
        digest: String,
        repository: String,
        tag: String,
        artifact_type: &'static str,
    },

    /// Signatures exist, but none verifies with the key (or every one that
    /// does names another image): one reason per signature.
    #[error("no signature of {digest} verifies with {}: {}", key.display(), reasons.join("; "))]
    NotVerified {
        digest: String,
        key: PathBuf,
        reasons: Vec<String>,
    },
}

impl Classify for SignError {
    fn kind(&self) -> ErrorKind {
        match self {
            SignError::KeyUnreadable { .. }
            | SignError::KeyFormat { .. }
            | SignError::NotRegistry { .. }
            | SignError::SignatureTagNotManifest { .. } => ErrorKind::Input,
            SignError::NoSignature { .. } | SignError::NotVerified { .. } => {
                ErrorKind::Verification
            }
        }
    }
}

impl From<SignError> for kiln_core::Error {
    fn from(e: SignError) -> Self {
        kiln_core::Error::typed(e)
    }
}
