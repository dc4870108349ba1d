//! What can go wrong in the pipeline itself: planning a build (outputs,
//! `--push`, `--offline`, kiln.lock against the base) and moving a cache
//! (`kiln cache export`, `import`, `gc`). Spec, lock-file and layer-input
//! causes are [`kiln_spec::SpecError`] and [`kiln_fs::FsError`].

use std::fmt::Write as _;
use std::path::PathBuf;

use kiln_core::digest::Digest;
use kiln_core::{Classify, ErrorKind};

use crate::cache_transfer::{INDEX_ENTRY, LIST_MAX};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// `SOURCE_DATE_EPOCH` is set to something that is not a number.
    #[error("SOURCE_DATE_EPOCH=`{value}` is not a number of seconds")]
    BadEpoch { value: String },
    /// `--push` with no `[image] name` to push to.
    #[error("{}: --push needs [image] name", spec.display())]
    PushWithoutName { spec: PathBuf },
    /// `--offline` together with `--push`.
    #[error("--offline and --push exclude each other")]
    OfflinePush,
    /// A docker-archive output for a spec with several platforms.
    #[error(
        "docker-archive:{} holds one platform, but {} asks for {platforms}; \
         use an oci: output (or --push) for several",
        path.display(),
        spec.display()
    )]
    ArchivePlatforms {
        path: PathBuf,
        spec: PathBuf,
        platforms: usize,
    },
    /// A `[[files]] from` entry in a spec that builds several platforms
    /// (the image is read for one).
    #[error(
        "{}: [[files]] from = {from:?} copies out of one platform of that image, but the spec builds {platforms}; build one platform per spec",
        spec.display()
    )]
    FilesFromPlatforms {
        spec: PathBuf,
        from: String,
        platforms: usize,
    },
    /// kiln.lock has nothing for a platform the base has.
    #[error("kiln.lock has no pins for platform {platform}; run `kiln lock`")]
    NoPins { platform: String },
    /// The base (by manifest digest, `None` for scratch) is not the one kiln.lock was made against.
    #[error(
        "{}: the base image for {platform} is {} but kiln.lock was made against {}; run `kiln lock`",
        spec.display(),
        or_scratch(found),
        or_scratch(locked)
    )]
    BaseChanged {
        spec: PathBuf,
        platform: String,
        found: Option<Digest>,
        locked: Option<Digest>,
    },
    /// `--check-reproducible`: the second build differs.
    #[error(
        "not reproducible: {first} then {second} (layers differing: {})",
        differing_layers.join(", ")
    )]
    NotReproducible {
        first: String,
        second: String,
        differing_layers: Vec<String>,
    },
    /// A `[[files]] url` whose bytes are not the `sha256` given.
    #[error("{url}: sha256 is {got}, but the spec expects {expected}; nothing was written")]
    UrlChecksum {
        url: String,
        expected: String,
        got: String,
    },
    /// A `[[run]]` command (a Dockerfile's RUN) exited non-zero.
    #[error(
        "{step}: `{command}` failed ({status}); nothing was written. Its last output:\n{output}"
    )]
    RunFailed {
        step: String,
        command: String,
        status: std::process::ExitStatus,
        output: String,
    },
    /// `[[run]]` for an image of another architecture: no emulation.
    #[error(
        "{step}: the image is {platform} but this machine is {host}; commands run only for the \
         host's platform (kiln does not emulate); build {host} or drop the command"
    )]
    RunForeignPlatform {
        step: String,
        platform: String,
        host: String,
    },
    /// `kiln inspect scratch`.
    #[error("`scratch` is not an image to inspect")]
    InspectScratch,
    /// `kiln cache` with no `--lock`.
    #[error("no lock given")]
    NoLockGiven,
    /// A `--lock` that does not exist.
    #[error("{}: no such lock; run `kiln lock` or name one with --lock", path.display())]
    NoSuchLock { path: PathBuf },
    /// A locked base manifest in the cache turns out to be an index.
    #[error(
        "base manifest {digest} of {platform} (in the cache) is an index, not an image manifest; \
         run `kiln lock` again"
    )]
    BaseIsIndex { digest: Digest, platform: String },
    /// The cache lacks blobs the locks need (digest → what it is).
    #[error("{}", missing_blobs(whose, missing))]
    MissingBlobs {
        /// `the lock`, or the lock paths.
        whose: String,
        missing: Vec<(Digest, String)>,
    },
    /// A cached blob no longer matches its digest (it is removed from the cache).
    #[error(
        "cached blob {digest} is damaged (it was removed from the cache); \
         run `kiln fetch` and export again"
    )]
    DamagedBlob { digest: Digest },
    /// An export destination that names no file.
    #[error("{}: not a file name", path.display())]
    NotAFileName { path: PathBuf },
    /// No temporary file can be made beside the export destination.
    #[error("cannot write in {}: {source}", dir.display())]
    CannotWrite {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file to import cannot be opened (`opening`) or read.
    #[error(
        "cannot {} {}: {source}",
        if *opening { "open" } else { "read" },
        file.display()
    )]
    ImportUnreadable {
        file: PathBuf,
        opening: bool,
        #[source]
        source: std::io::Error,
    },
    /// The file to import starts like zstd but is not.
    #[error("{}: not a zstd stream: {source}", file.display())]
    NotZstd {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The tar stream of an import breaks off or is damaged.
    #[error("{}: corrupt or truncated archive: {source}", file.display())]
    CorruptArchive {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An import entry kiln does not accept (see [`Refusal`]).
    #[error("{}: refusing entry `{entry}`: {reason}", file.display())]
    RefusedEntry {
        file: PathBuf,
        /// The entry's name, lossily decoded.
        entry: String,
        reason: Refusal,
    },
    /// An import without an index.
    #[error("{}: not a kiln cache export (no {INDEX_ENTRY})", file.display())]
    NotAnExport { file: PathBuf },
    /// An import whose index lists blobs the archive does not hold.
    #[error(
        "{}: truncated export: {} blob(s) listed in the index are absent (e.g. {}); \
         the {imported} present were imported",
        file.display(),
        absent.len(),
        absent.first().map(ToString::to_string).unwrap_or_default()
    )]
    TruncatedExport {
        file: PathBuf,
        absent: Vec<Digest>,
        imported: usize,
    },
}

/// Why an entry of a cache import is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the name is not UTF-8")]
    NonUtf8Name,
    /// A link, device, directory elsewhere ...: `kind` names it.
    #[error("a {kind} entry (an export holds regular files only)")]
    NotAFile { kind: &'static str },
    #[error("a second index")]
    SecondIndex,
    #[error("the index is implausibly large")]
    IndexTooLarge,
    /// The index is not JSON of the export's schema.
    #[error("not a valid index: {0}")]
    InvalidIndex(String),
    #[error(
        "format `{format}` version {version} is not supported (expected `{}` version {})",
        crate::cache_transfer::FORMAT,
        crate::cache_transfer::FORMAT_VERSION
    )]
    UnsupportedFormat { format: String, version: u32 },
    /// A digest in the index that does not parse.
    #[error("{0}")]
    BadDigest(String),
    #[error("{0} is listed twice")]
    ListedTwice(String),
    #[error("not a name a kiln cache export uses")]
    UnknownName,
    #[error("{INDEX_ENTRY} must come before the blobs (is this a kiln cache export?)")]
    IndexNotFirst,
    #[error("the blob is not listed in the index")]
    Unlisted,
    #[error("{size} bytes, but the index says {listed}")]
    SizeMismatch { size: u64, listed: u64 },
    #[error("the blob appears twice")]
    Duplicate,
}

fn or_scratch(d: &Option<Digest>) -> String {
    d.as_ref().map_or("scratch".into(), |d| d.to_string())
}

fn missing_blobs(whose: &str, missing: &[(Digest, String)]) -> String {
    let mut msg = format!(
        "the cache lacks {} blob(s) that {whose} need(s):\n",
        missing.len()
    );
    for (d, what) in missing.iter().take(LIST_MAX) {
        let _ = writeln!(msg, "  {d}  {what}");
    }
    if missing.len() > LIST_MAX {
        let _ = writeln!(msg, "  ... and {} more", missing.len() - LIST_MAX);
    }
    msg.push_str("run `kiln fetch` with this cache first");
    msg
}

impl Classify for BuildError {
    fn kind(&self) -> ErrorKind {
        match self {
            // Two builds of the same inputs differ: kiln's bug, not the user's.
            BuildError::NotReproducible { .. } => ErrorKind::Internal,
            _ => ErrorKind::Input,
        }
    }
}

impl From<BuildError> for kiln_core::Error {
    fn from(e: BuildError) -> Self {
        kiln_core::Error::typed(e)
    }
}
