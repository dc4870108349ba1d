//! Moving what a lock needs between caches (`kiln cache export` / `import`)
//! and trimming what no lock needs (`kiln cache gc`).
//!
//! What a lock needs ([`needed`]) is every pinned artifact (`.deb`s, wheels,
//! conda packages) plus, for a registry base, the top document (index or
//! manifest), each locked platform's manifest, its config and its layers:
//! exactly what `kiln build --offline` reads from the cache.
//!
//! An export is a plain tar (zstd-compressed when the file name ends in
//! `.zst`) holding `kiln-cache/INDEX.json` first and then
//! `kiln-cache/blobs/sha256/<hex>` per blob, sorted, with mtime 0 and
//! uid/gid 0, so the same cache and locks give the same bytes. It is written
//! to a temp file beside the destination and renamed into place at the end,
//! and every blob is hashed while it is copied, so neither a damaged cache
//! entry nor an error leaves a bad export behind.
//!
//! An import trusts nothing in the file: only those entry shapes are
//! accepted (no links, devices, other names or paths), each blob must be
//! listed in the index with its size, and each goes through the cache's
//! verified write (temp file, digest check, rename), so a tampered blob is
//! refused and never becomes a cache entry.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, Refusal};
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_oci::manifest::{self, Document};
use kiln_spec::lock::Lock;
use kiln_store::cache::{Cache, CacheBucket};

pub(crate) const INDEX_ENTRY: &str = "kiln-cache/INDEX.json";
const BLOB_PREFIX: &str = "kiln-cache/blobs/sha256/";
pub(crate) const FORMAT: &str = "kiln-cache-export";
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Directories an import tolerates (a repacked export may carry them).
const DIR_ENTRIES: [&str; 3] = ["kiln-cache", "kiln-cache/blobs", "kiln-cache/blobs/sha256"];
const MAX_INDEX_BYTES: u64 = 64 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Temporaries older than this belong to no running build.
const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// How many missing blobs an error lists before summarising.
pub(crate) const LIST_MAX: usize = 20;

/// `kiln-cache/INDEX.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportIndex {
    format: String,
    version: u32,
    blobs: Vec<IndexedBlob>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexedBlob {
    digest: String,
    size: u64,
}

/// What a set of locks needs from a cache: what is there, what is not.
#[derive(Default)]
struct Needs {
    present: BTreeSet<Digest>,
    /// Missing digest → what it is (URL or base document), for the error.
    missing: BTreeMap<Digest, String>,
}

impl Needs {
    fn want(&mut self, cache: &Cache, d: Digest, what: impl FnOnce() -> String) {
        if cache.contains(&d) {
            self.missing.remove(&d);
            self.present.insert(d);
        } else if !self.present.contains(&d) {
            self.missing.entry(d).or_insert_with(what);
        }
    }

    fn collect(&mut self, lock: &Lock, cache: &Cache) -> Result<()> {
        for (d, url) in lock.artifact_digests() {
            self.want(cache, d, || url);
        }
        for p in &lock.platforms {
            let plat = &p.platform;
            // A registry base (it has a top document) is loaded from the
            // cache when offline. A layout or docker-archive base is read
            // from its own files; its manifest counts only if it happens to
            // be cached.
            let registry = p.base_top.is_some();
            if let Some(top) = &p.base_top {
                self.want(cache, top.clone(), || {
                    format!("base index/manifest for {plat}")
                });
            }
            let Some(base) = &p.base else { continue };
            let d = base.clone();
            let Some(path) = cache.verified(&d)? else {
                if registry {
                    self.missing
                        .entry(d)
                        .or_insert_with(|| format!("base manifest for {plat}"));
                }
                continue;
            };
            self.want(cache, d.clone(), String::new);
            let bytes = fs::read(&path).io_context(|| format!("reading {}", path.display()))?;
            let what = format!("base manifest {d} of {plat} (in the cache)");
            let Document::Manifest { config, layers } = manifest::parse(&bytes, &what)? else {
                return Err(BuildError::BaseIsIndex {
                    digest: d,
                    platform: plat.clone(),
                }
                .into());
            };
            for desc in std::iter::once(config).chain(layers) {
                if registry || cache.contains(&desc.digest) {
                    let kind = desc.media_type.clone();
                    self.want(cache, desc.digest, || {
                        format!("base blob of {plat} ({kind})")
                    });
                }
            }
        }
        Ok(())
    }

    /// The sorted list, or an input error naming what is missing.
    fn into_complete(self, whose: &str) -> Result<Vec<Digest>> {
        if self.missing.is_empty() {
            return Ok(self.present.into_iter().collect());
        }
        Err(BuildError::MissingBlobs {
            whose: whose.to_string(),
            missing: self.missing.into_iter().collect(),
        }
        .into())
    }
}

/// Every blob `lock` needs from `cache` (sorted, deduplicated); an input
/// error listing what is missing when the cache does not hold it all.
pub fn needed(lock: &Lock, cache: &Cache) -> Result<Vec<Digest>> {
    let mut needs = Needs::default();
    needs.collect(lock, cache)?;
    needs.into_complete("the lock")
}

/// Read the named locks; a missing one is an input error.
fn read_locks(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Lock)>> {
    if paths.is_empty() {
        return Err(BuildError::NoLockGiven.into());
    }
    paths
        .iter()
        .map(|p| match Lock::read(p)? {
            Some(l) => Ok((p.clone(), l)),
            None => Err(BuildError::NoSuchLock { path: p.clone() }.into()),
        })
        .collect()
}

fn needed_all(locks: &[(PathBuf, Lock)], cache: &Cache) -> Result<Vec<Digest>> {
    let mut needs = Needs::default();
    for (path, lock) in locks {
        needs
            .collect(lock, cache)
            .map_err(|e| e.context(path.display()))?;
    }
    let whose = locks
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    needs.into_complete(&whose)
}

// ---------------------------------------------------------------------------
// export
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub file: PathBuf,
    pub locks: Vec<PathBuf>,
    /// `none` or `zstd`.
    pub compression: &'static str,
    pub blobs: usize,
    /// Sum of the blob sizes (before compression).
    pub bytes: u64,
}

impl std::fmt::Display for ExportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exported {} blob(s), {}, to {}",
            self.blobs,
            human_bytes(self.bytes),
            self.file.display()
        )
    }
}

/// Write everything `locks` need from `cache` into the tar `file`.
pub fn export(cache: &Cache, locks: &[PathBuf], file: &Path) -> Result<ExportReport> {
    let read = read_locks(locks)?;
    let digests = needed_all(&read, cache)?;
    let mut blobs = Vec::with_capacity(digests.len());
    for d in digests {
        let path = cache.blob_path(&d);
        let size = fs::metadata(&path)
            .io_context(|| format!("reading {}", path.display()))?
            .len();
        blobs.push(IndexedBlob {
            digest: d.to_string(),
            size,
        });
    }
    let zstd = file.extension().is_some_and(|e| e == "zst");
    let name = file.file_name().ok_or_else(|| BuildError::NotAFileName {
        path: file.to_path_buf(),
    })?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|source| BuildError::CannotWrite {
            dir: dir.to_path_buf(),
            source,
        })?;
    let out = BufWriter::with_capacity(1 << 20, tmp);
    let index = ExportIndex {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        blobs,
    };
    let out = if zstd {
        let enc = zstd::stream::write::Encoder::new(out, 3)
            .io_context(|| "starting zstd compression".into())?;
        write_tar(enc, cache, &index)?
            .finish()
            .io_context(|| format!("writing {}", file.display()))?
    } else {
        write_tar(out, cache, &index)?
    };
    let tmp = out
        .into_inner()
        .map_err(|e| e.into_error())
        .io_context(|| format!("writing {}", file.display()))?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .io_context(|| format!("writing {}", file.display()))?;
    tmp.as_file()
        .sync_all()
        .io_context(|| format!("writing {}", file.display()))?;
    tmp.persist(file).map_err(|e| Error::Io {
        context: format!("writing {}", file.display()),
        source: e.error,
    })?;
    Ok(ExportReport {
        file: file.to_path_buf(),
        locks: locks.to_vec(),
        compression: if zstd { "zstd" } else { "none" },
        blobs: index.blobs.len(),
        bytes: index.blobs.iter().map(|b| b.size).sum(),
    })
}

fn header(path: &str, size: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .io_context(|| format!("tar entry {path}"))?;
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(h)
}

fn write_tar<W: Write>(out: W, cache: &Cache, index: &ExportIndex) -> Result<W> {
    let io_err = |e: io::Error| Error::Io {
        context: "writing the export".into(),
        source: e,
    };
    let mut tar = tar::Builder::new(out);
    let mut json = serde_json::to_vec_pretty(index)
        .map_err(|e| Error::internal(format!("serialising INDEX.json: {e}")))?;
    json.push(b'\n');
    tar.append(&header(INDEX_ENTRY, json.len() as u64)?, &json[..])
        .map_err(io_err)?;
    for b in &index.blobs {
        let d: Digest = b.digest.parse()?;
        let path = cache.blob_path(&d);
        let f = File::open(&path).io_context(|| format!("opening {}", path.display()))?;
        let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, f).take(b.size));
        tar.append(
            &header(&format!("{BLOB_PREFIX}{}", d.hex()), b.size)?,
            &mut r,
        )
        .map_err(io_err)?;
        let (got, len) = r.finish();
        if got != d || len != b.size {
            // The entry changed or rotted on disk: drop it so `kiln fetch` gets it again.
            let _ = fs::remove_file(&path);
            return Err(BuildError::DamagedBlob { digest: d }.into());
        }
    }
    tar.into_inner().map_err(io_err)
}

/// Hashes what passes through, to check a blob while it is copied.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// import
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub file: PathBuf,
    /// Blobs the export lists.
    pub blobs: usize,
    pub imported: usize,
    pub already_present: usize,
    /// Bytes written into the cache.
    pub bytes_imported: u64,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported {} blob(s), {}, from {}; {} already present",
            self.imported,
            human_bytes(self.bytes_imported),
            self.file.display(),
            self.already_present
        )
    }
}

/// Add the blobs of an export to `cache`, each verified against its name.
pub fn import(cache: &Cache, file: &Path) -> Result<ImportReport> {
    let unreadable = |opening| {
        move |source| BuildError::ImportUnreadable {
            file: file.to_path_buf(),
            opening,
            source,
        }
    };
    let f = File::open(file).map_err(unreadable(true))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let head = r.fill_buf().map_err(unreadable(false))?;
    let report = if head.starts_with(&ZSTD_MAGIC) {
        let dec =
            zstd::stream::read::Decoder::with_buffer(r).map_err(|source| BuildError::NotZstd {
                file: file.to_path_buf(),
                source,
            })?;
        import_tar(cache, dec, file)?
    } else {
        import_tar(cache, r, file)?
    };
    Ok(ImportReport {
        file: file.to_path_buf(),
        ..report
    })
}

fn import_tar(cache: &Cache, r: impl Read, file: &Path) -> Result<ImportReport> {
    let corrupt = |source: io::Error| -> Error {
        BuildError::CorruptArchive {
            file: file.to_path_buf(),
            source,
        }
        .into()
    };
    let mut ar = tar::Archive::new(r);
    let mut expected: Option<BTreeMap<Digest, u64>> = None;
    let mut seen: BTreeSet<Digest> = BTreeSet::new();
    let mut report = ImportReport {
        file: PathBuf::new(),
        blobs: 0,
        imported: 0,
        already_present: 0,
        bytes_imported: 0,
    };
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let refuse = |reason: Refusal| -> Error {
            BuildError::RefusedEntry {
                file: file.to_path_buf(),
                entry: shown.clone(),
                reason,
            }
            .into()
        };
        let name = std::str::from_utf8(&raw).map_err(|_| refuse(Refusal::NonUtf8Name))?;
        let name = name.strip_prefix("./").unwrap_or(name);
        let kind = entry.header().entry_type();
        if kind.is_dir() && DIR_ENTRIES.contains(&name.trim_end_matches('/')) {
            continue;
        }
        if !kind.is_file() {
            return Err(refuse(Refusal::NotAFile {
                kind: kind_name(kind),
            }));
        }
        if name == INDEX_ENTRY {
            if expected.is_some() {
                return Err(refuse(Refusal::SecondIndex));
            }
            if entry.size() > MAX_INDEX_BYTES {
                return Err(refuse(Refusal::IndexTooLarge));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            let map = parse_index(&bytes).map_err(refuse)?;
            report.blobs = map.len();
            expected = Some(map);
            continue;
        }
        let digest = name
            .strip_prefix(BLOB_PREFIX)
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            .ok_or_else(|| refuse(Refusal::UnknownName))?;
        let Some(map) = &expected else {
            return Err(refuse(Refusal::IndexNotFirst));
        };
        let size = *map.get(&digest).ok_or_else(|| refuse(Refusal::Unlisted))?;
        if entry.size() != size {
            return Err(refuse(Refusal::SizeMismatch {
                size: entry.size(),
                listed: size,
            }));
        }
        if !seen.insert(digest.clone()) {
            return Err(refuse(Refusal::Duplicate));
        }
        if cache.verified(&digest)?.is_some() {
            report.already_present += 1;
            continue;
        }
        let mut w = cache.writer()?;
        copy_entry(&mut entry, &mut w).map_err(|e| match e {
            CopyError::Read(e) => corrupt(e),
            CopyError::Write(e) => Error::Io {
                context: format!("writing blob {digest} into the cache"),
                source: e,
            },
        })?;
        let (_, len) = w
            .commit(Some(&digest))
            .map_err(|e| e.context(format!("{}: entry `{shown}`", file.display())))?;
        report.imported += 1;
        report.bytes_imported += len;
    }
    let Some(map) = expected else {
        return Err(BuildError::NotAnExport {
            file: file.to_path_buf(),
        }
        .into());
    };
    let absent: Vec<Digest> = map.into_keys().filter(|d| !seen.contains(d)).collect();
    if !absent.is_empty() {
        return Err(BuildError::TruncatedExport {
            file: file.to_path_buf(),
            absent,
            imported: seen.len(),
        }
        .into());
    }
    Ok(report)
}

fn parse_index(bytes: &[u8]) -> std::result::Result<BTreeMap<Digest, u64>, Refusal> {
    let index: ExportIndex =
        serde_json::from_slice(bytes).map_err(|e| Refusal::InvalidIndex(e.to_string()))?;
    if index.format != FORMAT || index.version != FORMAT_VERSION {
        return Err(Refusal::UnsupportedFormat {
            format: index.format,
            version: index.version,
        });
    }
    let mut map = BTreeMap::new();
    for b in index.blobs {
        let d: Digest = b
            .digest
            .parse()
            .map_err(|e: Error| Refusal::BadDigest(e.to_string()))?;
        if map.insert(d, b.size).is_some() {
            return Err(Refusal::ListedTwice(b.digest));
        }
    }
    Ok(map)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Like `io::copy`, but tells a damaged archive from a failing cache disk.
fn copy_entry(r: &mut impl Read, w: &mut impl Write) -> std::result::Result<(), CopyError> {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}

fn kind_name(k: tar::EntryType) -> &'static str {
    use tar::EntryType as T;
    match k {
        T::Symlink => "symlink",
        T::Link => "hard link",
        T::Char => "character device",
        T::Block => "block device",
        T::Fifo => "fifo",
        T::Directory => "directory",
        T::Continuous => "contiguous file",
        _ => "special",
    }
}

// ---------------------------------------------------------------------------
// gc
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub locks: Vec<PathBuf>,
    /// Blobs kept because a lock needs them.
    pub kept: usize,
    pub kept_bytes: u64,
    /// Entries removed (or, with `dry_run`, that would be), relative to the cache.
    pub removed: Vec<String>,
    pub bytes_freed: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        write!(
            f,
            "{verb} {} entr{}, {}; kept {} blob(s), {}",
            self.removed.len(),
            if self.removed.len() == 1 { "y" } else { "ies" },
            human_bytes(self.bytes_freed),
            self.kept,
            human_bytes(self.kept_bytes)
        )
    }
}

/// Delete what none of `locks` needs, bucket by bucket (see
/// [`CacheBucket`]): blobs no lock pins; state derived from a blob (unpacked
/// `.deb`s, decompressed indexes, wheel metadata and RECORD hashes,
/// extracted conda packages) whose blob goes; layer and stage memos that
/// name a blob that goes; revalidation caches (HTTP responses, index pages)
/// and temporaries older than a day; and any directory that is not a bucket
/// of this kiln (an older kiln's layout).
pub fn gc(cache: &Cache, locks: &[PathBuf], dry_run: bool) -> Result<GcReport> {
    let read = read_locks(locks)?;
    let mut needs = Needs::default();
    for (path, lock) in &read {
        needs
            .collect(lock, cache)
            .map_err(|e| e.context(path.display()))?;
    }
    let keep = needs.present;
    let mut report = GcReport {
        dry_run,
        locks: locks.to_vec(),
        kept: 0,
        kept_bytes: 0,
        removed: Vec::new(),
        bytes_freed: 0,
    };
    let root = cache.root();
    let kept_name = |name: &str| {
        format!("sha256:{name}")
            .parse::<Digest>()
            .is_ok_and(|d| keep.contains(&d))
    };
    let now = SystemTime::now();
    let older_than = |md: &fs::Metadata, limit: Duration| {
        md.modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > limit)
    };
    let stale = |md: &fs::Metadata| older_than(md, STALE_AFTER);
    // Memos named `<blob hex>` (pip) or `<blob hex>.zst` (apt) of blobs that go.
    let memo_of_unkept =
        |name: &str, md: &fs::Metadata| md.is_file() && name.len() == 64 && !kept_name(name);
    let zst_memo_of_unkept = |name: &str, md: &fs::Metadata| {
        name.strip_suffix(".zst")
            .is_some_and(|hex| memo_of_unkept(hex, md))
    };
    // A layer or stage memo goes when a blob it names goes (or it is unreadable).
    let memo_naming_unkept = |bucket: CacheBucket, name: &str| {
        // A remembered base view is zstd-compressed JSON.
        let text = fs::read(cache.entry(bucket, name))
            .ok()
            .and_then(|b| match name.ends_with(".zst") {
                true => zstd::stream::decode_all(&b[..]).ok(),
                false => Some(b),
            })
            .and_then(|b| String::from_utf8(b).ok());
        let Some(text) = text else {
            return true;
        };
        let gone = named_digests(&text).any(|d| !keep.contains(&d));
        gone
    };

    // Top-level directories that are no bucket of this kiln.
    let tops: BTreeSet<&str> = CacheBucket::ALL.iter().map(|b| b.top_dir()).collect();
    for (name, md) in listing(root)? {
        if !tops.contains(name.as_str()) {
            remove(root, &name, &md, dry_run, &mut report)?;
        }
    }
    // Images written out for the interpreter: derived, made again when needed.
    for (name, bytes) in kiln_fs::sandbox::SharedTree::remove_unused(cache, dry_run) {
        report.removed.push(name);
        report.bytes_freed += bytes;
    }
    for &bucket in CacheBucket::ALL {
        let dir = bucket.dir_name();
        for (name, md) in listing(&cache.bucket(bucket))? {
            let doomed = match bucket {
                CacheBucket::Blobs => {
                    if md.is_dir() {
                        continue;
                    }
                    let kept = md.is_file() && kept_name(&name);
                    if kept {
                        report.kept += 1;
                        report.kept_bytes += md.len();
                    }
                    !kept
                }
                CacheBucket::Tmp
                | CacheBucket::Http
                | CacheBucket::PipPages
                | CacheBucket::PipResolutions
                | CacheBucket::KeptPins => stale(&md),
                // Past the time a push trusts them, records are of no use.
                CacheBucket::Pushed => {
                    !md.is_file() || older_than(&md, kiln_oci::output::pushed::TRUSTED_FOR)
                }
                CacheBucket::AptIndexes => zst_memo_of_unkept(&name, &md),
                CacheBucket::PipMetadata | CacheBucket::LayerDiffIds => memo_of_unkept(&name, &md),
                // An index, and the files it points into. (An unpacked
                // `.deb` kept before as one zstd file is of no use now.)
                CacheBucket::AptUnpacked if name.ends_with(".zst") => md.is_file(),
                CacheBucket::AptUnpacked => {
                    memo_of_unkept(name.strip_suffix(".data").unwrap_or(&name), &md)
                }
                CacheBucket::CondaPackages => {
                    let extracted = md.is_dir() && name.len() == 64;
                    (extracted && !kept_name(&name))
                        || (name.starts_with(".extract-") && stale(&md))
                }
                CacheBucket::Layers
                | CacheBucket::LayerParts
                | CacheBucket::Stages
                | CacheBucket::Locales
                | CacheBucket::Bytecode
                | CacheBucket::PipBuiltWheels => !md.is_file() || memo_naming_unkept(bucket, &name),
                // A stamp goes with its blob; a local file's digest too.
                CacheBucket::Checked => !kept_name(&name),
                CacheBucket::Local => !md.is_file() || memo_naming_unkept(bucket, &name),
                // Trees are small and named by commit, not by a blob: kept;
                // a killed fetch's temporary goes.
                CacheBucket::GitTrees => name.starts_with(".tmp-") && stale(&md),
                // Trees no build has open go below; a lock goes with its tree.
                CacheBucket::Trees => {
                    (name.starts_with(".tmp-") && stale(&md))
                        || (stale(&md)
                            && name
                                .strip_suffix(".lock")
                                .is_some_and(|t| !cache.bucket(bucket).join(t).exists()))
                }
            };
            if doomed {
                remove(root, &format!("{dir}/{name}"), &md, dry_run, &mut report)?;
            }
        }
    }
    Ok(report)
}

/// Every `sha256:<hex>` digest a memo's JSON names.
fn named_digests(text: &str) -> impl Iterator<Item = Digest> + '_ {
    text.match_indices("sha256:")
        .filter_map(|(i, _)| text.get(i..i + 71).and_then(|d| d.parse::<Digest>().ok()))
}

/// Sorted entries of `dir` (none when it does not exist), not following symlinks.
fn listing(dir: &Path) -> Result<Vec<(String, fs::Metadata)>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).io_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.io_context(|| format!("reading {}", dir.display()))?;
        let md = match fs::symlink_metadata(e.path()) {
            Ok(md) => md,
            // Removed under us (a concurrent gc or build): nothing to do.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).io_context(|| format!("reading {}", e.path().display())),
        };
        out.push((e.file_name().to_string_lossy().into_owned(), md));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn remove(
    root: &Path,
    rel: &str,
    md: &fs::Metadata,
    dry_run: bool,
    report: &mut GcReport,
) -> Result<()> {
    let path = root.join(rel);
    let bytes = if md.is_dir() {
        tree_size(&path)
    } else {
        md.len()
    };
    if !dry_run {
        let res = if md.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).io_context(|| format!("removing {}", path.display())),
        }
    }
    report.removed.push(rel.to_string());
    report.bytes_freed += bytes;
    Ok(())
}

/// Bytes of the files under `dir` (symlinks not followed; unreadable parts count 0).
fn tree_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match fs::symlink_metadata(e.path()) {
            Ok(md) if md.is_dir() => tree_size(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_strict() {
        let ok = br#"{"format":"kiln-cache-export","version":1,"blobs":[]}"#;
        assert!(parse_index(ok).unwrap().is_empty());
        let v2 = br#"{"format":"kiln-cache-export","version":2,"blobs":[]}"#;
        let e = parse_index(v2).unwrap_err();
        assert!(matches!(e, Refusal::UnsupportedFormat { version: 2, .. }));
        assert!(e.to_string().contains("not supported"), "{e}");
        let bad = br#"{"format":"kiln-cache-export","version":1,"blobs":[{"digest":"sha256:../x","size":1}]}"#;
        assert!(matches!(parse_index(bad), Err(Refusal::BadDigest(_))));
        let hex = "ab".repeat(32);
        let twice = format!(
            r#"{{"format":"kiln-cache-export","version":1,"blobs":[{{"digest":"sha256:{hex}","size":1}},{{"digest":"sha256:{hex}","size":1}}]}}"#
        );
        assert!(matches!(
            parse_index(twice.as_bytes()),
            Err(Refusal::ListedTwice(_))
        ));
        assert!(matches!(parse_index(b"{"), Err(Refusal::InvalidIndex(_))));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
    fn build_error(e: &Error) -> &BuildError {
        e.downcast_ref::<BuildError>()
            .unwrap_or_else(|| panic!("not a BuildError: {e:?}"))
    }

    /// A tar of `(name, type, data)` entries.
    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if kind.is_symlink() {
                h.set_link_name("/etc/passwd").unwrap();
            }
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn import_bytes(bytes: &[u8]) -> Result<ImportReport> {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        import_tar(&cache, bytes, Path::new("in.tar"))
    }

    fn index(blobs: &[(&Digest, usize)]) -> Vec<u8> {
        let blobs: Vec<IndexedBlob> = blobs
            .iter()
            .map(|(d, size)| IndexedBlob {
                digest: d.to_string(),
                size: *size as u64,
            })
            .collect();
        serde_json::to_vec(&ExportIndex {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            blobs,
        })
        .unwrap()
    }

    #[test]
    fn hostile_imports_are_refused_by_reason() {
        let refused = |bytes: &[u8]| {
            let e = import_bytes(bytes).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            match build_error(&e) {
                BuildError::RefusedEntry { reason, entry, .. } => (reason.clone(), entry.clone()),
                other => panic!("{other:?}"),
            }
        };
        let link = archive(&[("kiln-cache/evil", tar::EntryType::Symlink, b"")]);
        assert_eq!(
            refused(&link),
            (
                Refusal::NotAFile { kind: "symlink" },
                "kiln-cache/evil".to_string()
            )
        );
        let data = b"blob";
        let d = Digest::of(data);
        let blob_name = format!("{BLOB_PREFIX}{}", d.hex());
        let early = archive(&[(&blob_name, tar::EntryType::Regular, data)]);
        assert_eq!(refused(&early).0, Refusal::IndexNotFirst);
        let idx = index(&[(&d, data.len())]);
        let odd = archive(&[
            (INDEX_ENTRY, tar::EntryType::Regular, &idx),
            ("kiln-cache/blobs/md5/x", tar::EntryType::Regular, b"x"),
        ]);
        assert_eq!(refused(&odd).0, Refusal::UnknownName);
        let wrong_size = index(&[(&d, 3)]);
        let sized = archive(&[
            (INDEX_ENTRY, tar::EntryType::Regular, &wrong_size),
            (&blob_name, tar::EntryType::Regular, data),
        ]);
        assert_eq!(
            refused(&sized).0,
            Refusal::SizeMismatch { size: 4, listed: 3 }
        );
        let e = import_bytes(&link).unwrap_err();
        assert_eq!(
            e.to_string(),
            "in.tar: refusing entry `kiln-cache/evil`: a symlink entry \
             (an export holds regular files only)"
        );
    }

    #[test]
    fn incomplete_imports_say_what_is_missing() {
        let e = import_bytes(&archive(&[])).unwrap_err();
        assert!(matches!(build_error(&e), BuildError::NotAnExport { .. }));
        assert_eq!(
            e.to_string(),
            "in.tar: not a kiln cache export (no kiln-cache/INDEX.json)"
        );
        let d = Digest::of(b"gone");
        let idx = index(&[(&d, 4)]);
        let e =
            import_bytes(&archive(&[(INDEX_ENTRY, tar::EntryType::Regular, &idx)])).unwrap_err();
        assert!(
            matches!(build_error(&e), BuildError::TruncatedExport { absent, imported: 0, .. } if *absent == [d.clone()]),
            "{e:?}"
        );
        assert!(e.to_string().contains(&format!("(e.g. {d})")), "{e}");
        let e = import_bytes(b"not a tar at all, just some bytes").unwrap_err();
        assert!(
            matches!(build_error(&e), BuildError::CorruptArchive { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn locks_must_be_named_and_exist() {
        let e = read_locks(&[]).unwrap_err();
        assert!(matches!(build_error(&e), BuildError::NoLockGiven));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.lock");
        let e = read_locks(std::slice::from_ref(&path)).unwrap_err();
        assert!(matches!(build_error(&e), BuildError::NoSuchLock { path: p } if *p == path));
    }

    #[test]
    fn missing_blobs_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let pin = |n: usize| kiln_spec::lock::AptPin {
            name: format!("p{n}"),
            version: "1".into(),
            arch: "amd64".into(),
            suite: "stable".into(),
            url: format!("https://example.invalid/p{n}.deb"),
            sha256: Digest::of(format!("p{n}").as_bytes()),
            size: 1,
        };
        let lock = Lock::new(
            vec![],
            vec![kiln_spec::lock::LockedPlatform {
                platform: "linux/amd64".into(),
                apt: (0..LIST_MAX + 2).map(pin).collect(),
                ..Default::default()
            }],
        );
        let e = needed(&lock, &cache).unwrap_err();
        match build_error(&e) {
            BuildError::MissingBlobs { whose, missing } => {
                assert_eq!(whose, "the lock");
                assert_eq!(missing.len(), LIST_MAX + 2);
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.starts_with("the cache lacks 22 blob(s) that the lock need(s):\n"),
            "{msg}"
        );
        assert!(msg.contains("  ... and 2 more\n"), "{msg}");
        assert!(
            msg.ends_with("run `kiln fetch` with this cache first"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1 + LIST_MAX + 2);
    }

    #[test]
    fn an_export_needs_a_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let lock = dir.path().join("kiln.lock");
        Lock::new(vec![], vec![]).write(&lock).unwrap();
        let e = export(&cache, &[lock], &dir.path().join("..")).unwrap_err();
        assert!(
            matches!(build_error(&e), BuildError::NotAFileName { .. }),
            "{e:?}"
        );
    }
}
