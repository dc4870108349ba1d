//! Content-addressed blob cache (`$KILN_CACHE`, default `~/.cache/kiln`).
//!
//! Blobs live at `blobs/sha256/<hex>`. Every write goes to a temp file in
//! `tmp/` on the same filesystem and is renamed into place only after its
//! digest was checked, so a killed build never leaves a corrupt entry and two
//! builds sharing the cache at worst both write the same bytes (rename is
//! atomic). Reads re-verify, so bytes damaged on disk later are detected and
//! the entry is dropped to be fetched again.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::growing::Growing;
use kiln_core::digest::{digest_reader, Digest, HashingWriter};
use kiln_core::error::{IoContext, Result};

use crate::StoreError;

/// Every directory of the cache. A bucket whose format changes gets a new
/// version in its name, so an old kiln and a new one never misread each
/// other's files; `kiln cache gc` removes whatever is not a bucket here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheBucket {
    /// Verified blobs by sha256: layers, configs, manifests, `.deb`s,
    /// wheels, conda archives, indexes. The only bucket export/import moves.
    Blobs,
    /// Temporary files and work directories (renamed into place or dropped).
    Tmp,
    /// Conditionally revalidated HTTP responses (`InRelease`), by URL hash.
    Http,
    /// Decompressed apt `Packages` indexes, by the compressed blob's digest.
    AptIndexes,
    /// A `.deb` unpacked: its files' bytes end to end (`<hex>.data`) and an
    /// index of its control members and files (`<hex>`), by its digest.
    AptUnpacked,
    /// Simple-API project pages, by URL hash (expire by TTL).
    PipPages,
    /// Resolutions kept with the digests of the pages they read, by the
    /// hash of the resolver's other inputs (expire with the pages).
    PipResolutions,
    /// Core metadata read from a wheel, by the wheel's digest.
    PipMetadata,
    /// Wheels built from sdists (→ the wheel blob), by the sdist's digest
    /// and the target's Python and platform.
    PipBuiltWheels,
    /// Extracted conda packages, by the archive's digest.
    CondaPackages,
    /// The diff_id a base layer blob was checked to decompress to, by the
    /// blob's digest (so a warm build does not decompress the base again).
    LayerDiffIds,
    /// Built layers, by the hash of their inputs (→ the layer blob).
    Layers,
    /// Parts of layers cut into parts (see `kiln_fs::layer::LayerGroup`),
    /// by the hash of their inputs (→ their compressed bytes: a slice of
    /// a blob, and its hash).
    LayerParts,
    /// Locked package stages, by the hash of their inputs (→ their layers).
    Stages,
    /// An unlocked build's pins with what they were resolved from, by the
    /// spec's inputs and the base (→ the stages' memo; expire with the
    /// pages, as kept resolutions).
    KeptPins,
    /// Git sources: a commit's tree written out, by the full commit id.
    GitTrees,
    /// Compiled `[apt] locales` (their paths → blobs), by the versions of
    /// libc-bin and locales and the list.
    Locales,
    /// The bytecode compiled for a pip stage (its `.pyc` paths → blobs),
    /// by the Python version and the installed files.
    Bytecode,
    /// When a blob was last hashed and found whole (its size, mtime
    /// and inode then), by its digest: a warm build does not hash every
    /// cached layer again while the file is untouched.
    Checked,
    /// The digest of a local file taken as a blob (see [`Cache::adopt`]),
    /// by the hash of its stamp: a warm build does not hash an untouched
    /// wheelhouse again.
    Local,
    /// Images written out for commands that only read them (the
    /// interpreter compiling bytecode), by their layers; the least
    /// recently used beyond two are dropped.
    Trees,
    /// Manifests known to be in a registry's repository (pushed there or
    /// seen there), by the hash of registry, repository and digest: empty
    /// files trusted for a day from their mtime.
    Pushed,
}

impl CacheBucket {
    pub const ALL: &'static [CacheBucket] = &[
        CacheBucket::Blobs,
        CacheBucket::Tmp,
        CacheBucket::Http,
        CacheBucket::AptIndexes,
        CacheBucket::AptUnpacked,
        CacheBucket::PipPages,
        CacheBucket::PipResolutions,
        CacheBucket::PipMetadata,
        CacheBucket::PipBuiltWheels,
        CacheBucket::CondaPackages,
        CacheBucket::LayerDiffIds,
        CacheBucket::Layers,
        CacheBucket::LayerParts,
        CacheBucket::Stages,
        CacheBucket::KeptPins,
        CacheBucket::GitTrees,
        CacheBucket::Locales,
        CacheBucket::Bytecode,
        CacheBucket::Checked,
        CacheBucket::Local,
        CacheBucket::Trees,
        CacheBucket::Pushed,
    ];

    /// The directory under the cache root.
    pub fn dir_name(self) -> &'static str {
        match self {
            CacheBucket::Blobs => "blobs/sha256",
            CacheBucket::Tmp => "tmp",
            CacheBucket::Http => "http-v1",
            CacheBucket::AptIndexes => "apt-indexes-v1",
            CacheBucket::AptUnpacked => "apt-unpacked-v1",
            CacheBucket::PipPages => "pip-pages-v1",
            CacheBucket::PipResolutions => "pip-resolutions-v1",
            CacheBucket::PipMetadata => "pip-metadata-v1",
            CacheBucket::PipBuiltWheels => "pip-built-wheels-v1",
            CacheBucket::CondaPackages => "conda-pkgs-v1",
            CacheBucket::LayerDiffIds => "layer-diff-ids-v1",
            CacheBucket::Layers => "layers-v1",
            CacheBucket::LayerParts => "layer-parts-v1",
            CacheBucket::Stages => "stages-v1",
            CacheBucket::KeptPins => "kept-pins-v1",
            CacheBucket::GitTrees => "git-trees-v1",
            CacheBucket::Locales => "locales-v1",
            CacheBucket::Bytecode => "pip-bytecode-v1",
            CacheBucket::Checked => "checked-v1",
            CacheBucket::Local => "local-files-v1",
            CacheBucket::Trees => "trees-v1",
            CacheBucket::Pushed => "pushed-v1",
        }
    }

    /// The top-level directory holding the bucket (`blobs` for `blobs/sha256`).
    pub fn top_dir(self) -> &'static str {
        self.dir_name().split('/').next().unwrap_or_default()
    }
}

#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    /// Blobs this process wrote or hashed, with the [`file_stamp`] they had
    /// then: a small blob it wrote, or a file changed a moment ago, has no
    /// stamp on disk (see [`Stamp`]), and without this every `verified`
    /// call in the same build would hash it again.
    seen: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Digest, String>>>,
}

impl Cache {
    /// Open (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for b in [CacheBucket::Blobs, CacheBucket::Tmp] {
            let p = root.join(b.dir_name());
            fs::create_dir_all(&p)
                .io_context(|| format!("creating cache directory {}", p.display()))?;
        }
        // What killed builds left behind (their process is gone): work
        // files in `tmp`, half-written memos beside the others.
        remove_stale_temps(&root.join(CacheBucket::Tmp.dir_name()));
        for b in CacheBucket::ALL {
            if !matches!(b, CacheBucket::Blobs | CacheBucket::Tmp) {
                remove_stale_temps_beside(&root.join(b.dir_name()), ".tmp");
            }
        }
        Ok(Cache {
            root,
            seen: Default::default(),
        })
    }

    /// `--cache`, else `$KILN_CACHE`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("KILN_CACHE") {
            return PathBuf::from(p);
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("kiln");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        home.join(".cache").join("kiln")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a bucket (not created here).
    pub fn bucket(&self, b: CacheBucket) -> PathBuf {
        self.root.join(b.dir_name())
    }

    /// One entry of a bucket: `<bucket>/<name>`.
    pub fn entry(&self, b: CacheBucket, name: impl AsRef<Path>) -> PathBuf {
        self.bucket(b).join(name)
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.entry(CacheBucket::Blobs, d.hex())
    }

    /// Cheap presence check, no verification.
    pub fn contains(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Path of a present blob whose content still matches its name; a damaged
    /// entry is removed and reported as absent.
    pub fn verified(&self, d: &Digest) -> Result<Option<PathBuf>> {
        let path = self.blob_path(d);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).io_context(|| format!("opening cached blob {}", path.display()))
            }
        };
        let stamp = file.metadata().ok().map(|m| Stamp::of(&m));
        let stamp_path = self.entry(CacheBucket::Checked, d.hex());
        if let Some(st) = &stamp {
            if self.seen_as(d).as_deref() == Some(st.line.as_str())
                || std::fs::read(&stamp_path).is_ok_and(|b| b == st.line.as_bytes())
            {
                return Ok(Some(path));
            }
        }
        let (actual, _) = digest_reader(io::BufReader::with_capacity(1 << 20, file))
            .io_context(|| format!("reading cached blob {}", path.display()))?;
        if &actual == d {
            if let Some(st) = stamp {
                if st.settled {
                    write_atomic(&stamp_path, st.line.as_bytes());
                }
                self.saw(d, st.line);
            }
            Ok(Some(path))
        } else {
            // Someone or something changed the bytes: drop the entry so it is fetched again.
            let _ = fs::remove_file(&path);
            Ok(None)
        }
    }

    /// The stamp blob `d` had when this process last hashed it.
    fn seen_as(&self, d: &Digest) -> Option<String> {
        self.seen.lock().ok()?.get(d).cloned()
    }

    fn saw(&self, d: &Digest, stamp: String) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(d.clone(), stamp);
        }
    }

    /// The local file at `path` (a wheelhouse's wheel, a `file://`
    /// mirror's package) as the blob of its bytes, with its size.
    ///
    /// The blob is a hard link to the file when the kernel allows one (the
    /// same file system, a file the caller may link), so a wheelhouse of
    /// gigabytes is hashed but not copied; otherwise it is copied as a
    /// download is. A file whose stamp (size, mtime, inode, device) has
    /// settled is remembered by it, and a later build takes its digest
    /// without reading it. The local file is never written: a linked blob
    /// changed in place afterwards has another stamp, so [`Cache::verified`]
    /// hashes it again and drops the entry, as for any damaged blob.
    ///
    /// `read_error` makes the error for a file that cannot be read (bad
    /// input, not a cache fault); `name` names it in any other error.
    pub fn adopt(
        &self,
        path: &Path,
        expected: Option<&Digest>,
        name: &str,
        read_error: impl Fn(io::Error) -> kiln_core::Error,
    ) -> Result<(Digest, u64)> {
        let file = File::open(path).map_err(&read_error)?;
        let meta = file.metadata().map_err(&read_error)?;
        let stamp = Stamp::of(&meta);
        let mismatch = |expected: &Digest, actual: Digest| -> kiln_core::Error {
            kiln_core::Error::from(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            })
            .context(name.to_string())
        };
        let memo = self.entry(CacheBucket::Local, Digest::of(stamp.line.as_bytes()).hex());
        let known = fs::read_to_string(&memo)
            .ok()
            .and_then(|t| t.trim().parse::<Digest>().ok());
        if let Some(d) = known {
            if let Some(e) = expected.filter(|e| **e != d) {
                return Err(mismatch(e, d));
            }
            if self.verified(&d)?.is_some() {
                return Ok((d, meta.len()));
            }
        }
        let remember = |d: &Digest| {
            if stamp.settled {
                write_atomic(&memo, d.to_string().as_bytes());
            }
        };
        let Some(link) = self.link_in_tmp(path, &meta) else {
            // Another file system, or a file the kernel will not link.
            let mut w = self.writer()?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match (&file).read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(read_error(e)),
                };
                w.write_all(&buf[..n])
                    .io_context(|| "writing to the cache".into())?;
            }
            let (d, len) = w
                .commit(expected)
                .map_err(|e| e.context(name.to_string()))?;
            remember(&d);
            return Ok((d, len));
        };
        let (d, len) =
            digest_reader(io::BufReader::with_capacity(1 << 20, &file)).map_err(&read_error)?;
        // Bytes written while they were hashed would make the link's
        // content another digest's.
        if file.metadata().map(|m| file_stamp(&m)).ok().as_ref() != Some(&stamp.line) {
            return Err(read_error(io::Error::other(
                "the file changed while kiln read it",
            )));
        }
        if let Some(e) = expected.filter(|e| **e != d) {
            return Err(mismatch(e, d));
        }
        // A blob already there (a copy, or another build's link) stays,
        // and `verified` checks it as any other.
        let dst = self.blob_path(&d);
        let linked = !dst.is_file()
            && match link.persist_noclobber(&dst) {
                Ok(()) => true,
                Err(_) if dst.is_file() => false,
                Err(e) => {
                    return Err(e.error).io_context(|| format!("storing blob {}", dst.display()))
                }
            };
        if linked {
            // The blob is the file just hashed: its stamp is the file's.
            if stamp.settled {
                write_atomic(
                    &self.entry(CacheBucket::Checked, d.hex()),
                    stamp.line.as_bytes(),
                );
            }
            self.saw(&d, stamp.line.clone());
        }
        remember(&d);
        Ok((d, len))
    }

    /// A hard link in `tmp` to the file at `path` whose metadata is
    /// `meta` (the same inode: the path may have been replaced since it
    /// was opened), removed when dropped; `None` when it cannot be made.
    fn link_in_tmp(&self, path: &Path, meta: &fs::Metadata) -> Option<tempfile::TempPath> {
        use std::os::unix::fs::MetadataExt;
        let link = tempfile::Builder::new()
            .prefix(&temp_prefix("blob"))
            .make_in(self.bucket(CacheBucket::Tmp), |p| fs::hard_link(path, p))
            .ok()?
            .into_temp_path();
        let same =
            fs::metadata(&link).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
        same.then_some(link)
    }

    /// Start writing a new blob.
    pub fn writer(&self) -> Result<BlobWriter> {
        let tmp = tempfile::Builder::new()
            .prefix(&temp_prefix("blob"))
            .tempfile_in(self.bucket(CacheBucket::Tmp))
            .io_context(|| format!("creating temp file in {}", self.root.display()))?;
        Ok(BlobWriter {
            cache: self.clone(),
            out: HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp)),
            shown: None,
        })
    }

    /// Store bytes held in memory.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if !self.contains(&d) {
            let mut w = self.writer()?;
            w.write_all(bytes)
                .io_context(|| "writing blob to cache".into())?;
            w.commit(Some(&d))?;
        }
        Ok(d)
    }

    /// Copy a blob from a reader, verifying it against `expected`.
    pub fn put_reader(&self, r: impl Read, expected: &Digest) -> Result<PathBuf> {
        let mut w = self.writer()?;
        let mut r = r;
        io::copy(&mut r, &mut w)
            .io_context(|| format!("copying blob {expected} into the cache"))?;
        w.commit(Some(expected))?;
        Ok(self.blob_path(expected))
    }

    /// Bytes derived from the verified blob `from` (an unpacked `.deb`, a
    /// decompressed index), remembered at `<kind>/<from hex>.zst` so a warm
    /// build skips the slow decompression that made them. Entries are zstd
    /// frames with a content checksum: a damaged one fails to decode and is
    /// made again. Storing is best effort (a full disk costs the memo, not
    /// the build) and atomic (temp file, then rename).
    pub fn derived(
        &self,
        kind: CacheBucket,
        from: &Digest,
        make: impl FnOnce() -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        if let Some(bytes) = self.read_derived(kind, from) {
            return Ok(bytes);
        }
        let bytes = make()?;
        self.keep_derived(kind, from, &bytes);
        Ok(bytes)
    }

    /// The bytes [`Cache::derived`] remembers at `<kind>/<from hex>.zst`, if
    /// they are there and whole (for a caller that makes them elsewhere).
    pub fn read_derived(&self, kind: CacheBucket, from: &Digest) -> Option<Vec<u8>> {
        let z = fs::read(self.derived_path(kind, from)).ok()?;
        zstd::stream::decode_all(&z[..]).ok()
    }

    /// Remember `bytes` as [`Cache::derived`] does (best effort, atomic).
    pub fn keep_derived(&self, kind: CacheBucket, from: &Digest, bytes: &[u8]) {
        let _ = self.store_derived(&self.derived_path(kind, from), bytes);
    }

    /// Drop a derived entry whose content turned out to be unusable.
    pub fn forget_derived(&self, kind: CacheBucket, from: &Digest) {
        let _ = fs::remove_file(self.derived_path(kind, from));
    }

    fn derived_path(&self, kind: CacheBucket, from: &Digest) -> PathBuf {
        self.entry(kind, format!("{}.zst", from.hex()))
    }

    fn store_derived(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut z = zstd::bulk::Compressor::new(1)?;
        z.include_checksum(true)?;
        z.include_contentsize(true)?;
        write_atomic(path, &z.compress(bytes)?);
        Ok(())
    }

    /// Read a whole (small) blob, verified.
    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self
            .verified(d)?
            .ok_or_else(|| StoreError::NotCached { digest: d.clone() })?;
        fs::read(&path).io_context(|| format!("reading {}", path.display()))
    }
}

/// A temporary's name prefix that carries this process' id (`what-PID-`),
/// so a later run can tell what a killed build left behind from what a
/// running one is still writing.
pub fn temp_prefix(what: &str) -> String {
    format!("{what}-{}-", std::process::id())
}

/// The process id in a [`temp_prefix`] name (`blob-1234-xyz` → 1234).
fn temp_owner(name: &str) -> Option<u32> {
    let mut parts = name.split('-');
    parts.next()?;
    parts
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Remove the temporaries in the cache's `dir` whose creating process is
/// gone. Best effort: a temporary that cannot be removed only costs disk.
pub fn remove_stale_temps(dir: &Path) {
    remove_dead(dir, |_| true);
}

/// Remove `what-PID-…` temporaries beside an output (and nothing else of
/// that directory) whose creating process is gone.
pub fn remove_stale_temps_beside(dir: &Path, what: &str) {
    let prefix = format!("{what}-");
    remove_dead(dir, |name| name.starts_with(&prefix));
}

fn remove_dead(dir: &Path, ours: impl Fn(&str) -> bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|n| ours(n)).and_then(temp_owner) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let p = e.path();
        let _ = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
}

/// Best effort, for memos beside the blobs (a memo that cannot be written
/// only costs recomputing it): write through a temp file in the same
/// directory, then rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if fs::create_dir_all(dir).is_err() {
        return;
    }
    if let Ok(mut tmp) = tempfile::Builder::new()
        .prefix(&temp_prefix(".tmp"))
        .tempfile_in(dir)
    {
        if tmp.write_all(bytes).is_ok() {
            let _ = tmp.persist(path);
        }
    }
}

/// What a blob file looked like when it was hashed: a write to it (in
/// place, or through an output that hard-links it) changes its mtime, a
/// replacement its inode. Not its ctime: linking the blob into an output
/// and unlinking it again (every build into a fresh OCI layout) changes
/// that without touching a byte, and would make every warm build hash
/// every layer again.
struct Stamp {
    line: String,
    /// Older than the file system's timestamp tick: a write in the same
    /// tick as the hash could leave the times as they were (git's "racily
    /// clean" entries), so a fresh file is hashed again next time.
    settled: bool,
}

/// A file's size, modification time, inode and device as one line: it
/// changes when the file is written to or replaced (see [`Stamp`]).
pub fn file_stamp(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!(
        "{} {}.{} {} {}\n",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino(),
        m.dev()
    )
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let line = file_stamp(m);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Stamp {
            line,
            settled: m.mtime() + 1 < now,
        }
    }
}

/// How far back a blob kiln wrote is dated: past [`Stamp`]'s tick, so it
/// has settled when it is stored.
const BACKDATED_BY: std::time::Duration = std::time::Duration::from_secs(2);

/// Blobs from this size on get their stamp when they are written: a
/// smaller one costs less to hash again than a file costs to make.
const STAMPED_FROM: u64 = 1 << 20;

/// A blob being written; nothing is visible in the cache until `commit`.
pub struct BlobWriter {
    cache: Cache,
    out: HashingWriter<BufWriter<tempfile::NamedTempFile>>,
    shown: Option<Shown>,
}

/// Bytes a writer shows its [`Growing`] once this many more are written.
const SHOWN_EVERY: u64 = 256 << 10;

/// A writer's [`Growing`]: abandoned if the writer ends uncommitted.
struct Shown {
    growing: Arc<Growing>,
    len: u64,
    done: bool,
}

impl Drop for Shown {
    fn drop(&mut self) {
        if !self.done {
            self.growing.ended(false);
        }
    }
}

impl BlobWriter {
    /// Show the bytes to `growing` as they are written (see [`Growing`]).
    pub fn showing(mut self, growing: Arc<Growing>) -> Result<BlobWriter> {
        let file = self
            .out
            .get_ref()
            .get_ref()
            .as_file()
            .try_clone()
            .io_context(|| "opening a blob being written".into())?;
        growing.begin(file);
        self.shown = Some(Shown {
            growing,
            len: 0,
            done: false,
        });
        Ok(self)
    }

    /// Verify and move into place. With `expected`, a mismatch is an error
    /// (the temp file is deleted); without, the computed digest names the blob.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let shown = self.shown.take();
        let (buf, digest, len) = self.out.finish();
        if let Some(exp) = expected {
            if exp != &digest {
                // Not transient: the bytes are not what a trusted index said.
                return Err(StoreError::DigestMismatch {
                    expected: exp.clone(),
                    actual: digest,
                }
                .into());
            }
        }
        let tmp = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .io_context(|| "flushing blob".into())?;
        // Blobs are shared read-only content (outputs hard-link them).
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .io_context(|| "setting blob permissions".into())?;
        // Dated a moment back, its stamp has settled at once (see [`Stamp`]):
        // a later write to it, through any link, dates it to the present.
        // Best effort: a blob that keeps its time is hashed once more by the
        // next build, as before.
        let _ = tmp
            .as_file()
            .set_modified(std::time::SystemTime::now() - BACKDATED_BY);
        let dst = self.cache.blob_path(&digest);
        let file = tmp
            .persist(&dst)
            .map_err(|e| e.error)
            .io_context(|| format!("storing blob {}", dst.display()))?;
        // Hashed as it was written: `verified` need not read it again, in
        // this build or (a big blob's stamp kept) the next one.
        if let Ok(m) = file.metadata() {
            let stamp = Stamp::of(&m);
            if stamp.settled && len >= STAMPED_FROM {
                let path = self.cache.entry(CacheBucket::Checked, digest.hex());
                write_atomic(&path, stamp.line.as_bytes());
            }
            self.cache.saw(&digest, stamp.line);
        }
        if let Some(mut shown) = shown {
            shown.growing.grew(len);
            shown.growing.ended(true);
            shown.done = true;
        }
        Ok((digest, len))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(shown) = &mut self.shown {
            let len = self.out.len();
            if len - shown.len >= SHOWN_EVERY {
                self.out.flush()?;
                shown.growing.grew(len);
                shown.len = len;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_processes_go_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join(format!("{}x", temp_prefix("blob")));
        // pid_max is at most 2^22 on Linux: this process cannot exist.
        let dead = dir.path().join("blob-4194999-abc");
        let dead_dir = dir.path().join("conda-link-4194999-xyz");
        let foreign = dir.path().join("notes-4194999-keep");
        for f in [&live, &dead, &foreign] {
            fs::write(f, b"x").unwrap();
        }
        fs::create_dir_all(dead_dir.join("sub")).unwrap();
        remove_stale_temps_beside(dir.path(), "blob");
        assert!(!dead.exists() && live.exists() && dead_dir.exists() && foreign.exists());
        remove_stale_temps(dir.path());
        assert!(live.exists() && !dead_dir.exists() && !foreign.exists());
        assert_eq!(temp_owner("blob-12-34"), Some(12));
        assert_eq!(temp_owner(".kiln-archive-77-q1"), Some(77));
        assert_eq!(temp_owner("blob-abc"), None);
    }
    use kiln_core::Error;

    /// The error `adopt` is given for an unreadable file.
    fn unreadable(e: io::Error) -> Error {
        StoreError::LocalFile {
            url: "file:///local".into(),
            source: e,
        }
        .into()
    }

    /// `path`'s mtime a minute ago: a stamp that has settled.
    fn settle(path: &Path) {
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(past)
            .unwrap();
    }

    #[test]
    fn a_local_file_is_linked_not_copied_and_remembered_by_its_stamp() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let tmp = cache.bucket(CacheBucket::Tmp);
        let local = dir.path().join("w.whl");
        fs::write(&local, b"wheel bytes").unwrap();
        settle(&local);
        let d = Digest::of(b"wheel bytes");

        // Another digest expected: an error, and nothing is kept.
        let other = Digest::of(b"other");
        let err = cache
            .adopt(&local, Some(&other), "w.whl", unreadable)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("w.whl: content digest mismatch"),
            "{err}"
        );
        assert!(!cache.contains(&d));
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);

        // The blob is the local file itself, not a copy; its digest is
        // remembered by the file's stamp, and the blob is stamped checked.
        assert_eq!(
            cache.adopt(&local, None, "w.whl", unreadable).unwrap(),
            (d.clone(), 11)
        );
        let blob = fs::metadata(cache.blob_path(&d)).unwrap();
        assert_eq!(blob.ino(), fs::metadata(&local).unwrap().ino());
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(cache.bucket(CacheBucket::Local))
                .unwrap()
                .count(),
            1
        );
        assert!(cache.entry(CacheBucket::Checked, d.hex()).is_file());
        // A later build takes it by its stamp, expected or not, and knows
        // another expected digest is wrong without reading it.
        let later = Cache::open(dir.path().join("cache")).unwrap();
        assert_eq!(
            later.adopt(&local, Some(&d), "w.whl", unreadable).unwrap(),
            (d.clone(), 11)
        );
        let err = later
            .adopt(&local, Some(&other), "w.whl", unreadable)
            .unwrap_err();
        assert!(err.to_string().contains("content digest mismatch"), "{err}");

        // Rewritten in place: the blob is the same inode, so it is damaged
        // now; the next build finds that out and drops the entry (the local
        // file keeps its new bytes), and takes the new bytes as a new blob.
        fs::write(&local, b"rebuilt wheel").unwrap();
        let next = Cache::open(dir.path().join("cache")).unwrap();
        assert_eq!(next.verified(&d).unwrap(), None);
        assert!(!cache.contains(&d));
        assert_eq!(fs::read(&local).unwrap(), b"rebuilt wheel");
        let (d2, _) = next.adopt(&local, None, "w.whl", unreadable).unwrap();
        assert_eq!(d2, Digest::of(b"rebuilt wheel"));
        assert!(next.verified(&d2).unwrap().is_some());

        // Missing: the caller's error.
        let err = next
            .adopt(&dir.path().join("nope.whl"), None, "nope.whl", unreadable)
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::LocalFile { .. })
        ));
    }

    #[test]
    fn a_local_file_on_another_file_system_is_copied() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        // tmpfs, where the machine has one apart from the temp directory.
        let elsewhere =
            tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
        let local = elsewhere.path().join("p.deb");
        fs::write(&local, b"package").unwrap();
        settle(&local);
        let (d, len) = cache.adopt(&local, None, "p.deb", unreadable).unwrap();
        assert_eq!((d.clone(), len), (Digest::of(b"package"), 7));
        let (blob, file) = (
            fs::metadata(cache.blob_path(&d)).unwrap(),
            fs::metadata(&local).unwrap(),
        );
        // Linked where it can be, a copy of its own where it cannot.
        assert_eq!(blob.dev() == file.dev(), blob.ino() == file.ino());
        assert_eq!(fs::read(cache.blob_path(&d)).unwrap(), b"package");
        assert_eq!(
            fs::read_dir(cache.bucket(CacheBucket::Tmp))
                .unwrap()
                .count(),
            0
        );
        // Remembered either way.
        let later = Cache::open(dir.path().join("cache")).unwrap();
        assert_eq!(
            later.adopt(&local, None, "p.deb", unreadable).unwrap(),
            (d, 7)
        );
    }

    #[test]
    fn a_big_blob_is_stamped_as_it_is_written_and_a_write_at_once_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let big = vec![7u8; STAMPED_FROM as usize];
        let d = cache.put(&big).unwrap();
        let stamp = cache.entry(CacheBucket::Checked, d.hex());
        let line = fs::read_to_string(&stamp).unwrap();
        assert_eq!(
            line,
            file_stamp(&fs::metadata(cache.blob_path(&d)).unwrap())
        );
        // The next build takes it by its stamp.
        let next = Cache::open(dir.path()).unwrap();
        assert!(next.verified(&d).unwrap().is_some());
        assert!(next.seen_as(&d).is_none(), "not hashed again");
        // Damaged in place the same second, same size: its mtime is the
        // present now, not the stamp's, so it is hashed and dropped.
        let mut other = big.clone();
        other[0] = 8;
        fs::write(cache.blob_path(&d), &other).unwrap();
        let next = Cache::open(dir.path()).unwrap();
        assert!(next.verified(&d).unwrap().is_none());
        assert!(!cache.blob_path(&d).exists());
    }

    #[test]
    fn a_settled_blob_is_hashed_once_and_a_write_to_it_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"settled").unwrap();
        let stamp = cache.entry(CacheBucket::Checked, d.hex());
        // Small: known to this process, not stamped when written.
        assert!(cache.verified(&d).unwrap().is_some());
        assert!(!stamp.exists());
        // A later build (a process of its own) hashes it once more and
        // stamps it: written by the cache, it is dated back past the tick.
        let cache = Cache::open(dir.path()).unwrap();
        assert!(cache.verified(&d).unwrap().is_some());
        let line = fs::read_to_string(&stamp).unwrap();
        assert!(line.starts_with("7 "), "{line}");
        // Linked into an output and unlinked again (its ctime moves): the
        // same stamp, so the next build does not hash it again.
        let out = dir.path().join("layout-blob");
        fs::hard_link(cache.blob_path(&d), &out).unwrap();
        fs::remove_file(&out).unwrap();
        let now = file_stamp(&fs::metadata(cache.blob_path(&d)).unwrap());
        assert_eq!(now, line);
        // A stamp that does not describe the file is no pass.
        fs::write(&stamp, "7 0.0 0.0 0 0\n").unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert!(cache.verified(&d).unwrap().is_some());
        assert_eq!(fs::read_to_string(&stamp).unwrap(), line);
        // Damage in place, same size: its times change, so it is hashed,
        // found wrong and dropped.
        fs::write(cache.blob_path(&d), b"SETTLED").unwrap();
        assert!(cache.verified(&d).unwrap().is_none());
        assert!(!cache.blob_path(&d).exists());
    }

    #[test]
    fn a_blob_this_process_wrote_or_hashed_is_not_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"fresh").unwrap();
        let now = || file_stamp(&fs::metadata(cache.blob_path(&d)).unwrap());
        // Written (and hashed while written) here: remembered as it is.
        assert_eq!(cache.seen_as(&d), Some(now()));
        assert!(cache.verified(&d).unwrap().is_some());
        // Another process's view of the same cache knows nothing of it.
        let other = Cache::open(dir.path()).unwrap();
        assert_eq!(other.seen_as(&d), None);
        assert!(other.verified(&d).unwrap().is_some());
        assert_eq!(other.seen_as(&d), Some(now()));
        // A write changes the stamp, so the memo is no pass (another size:
        // a same-size write within the clock's tick could keep the times).
        fs::write(cache.blob_path(&d), b"FRESH!").unwrap();
        assert!(cache.verified(&d).unwrap().is_none());
    }

    #[test]
    fn put_verify_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = cache.put(b"hello").unwrap();
        assert!(cache.verified(&d).unwrap().is_some());
        // Another size: the stamp changes however coarse the clock.
        fs::write(cache.blob_path(&d), b"HELLO!").unwrap();
        assert!(cache.verified(&d).unwrap().is_none());
        assert!(!cache.contains(&d), "corrupt entry must be removed");
    }

    #[test]
    fn mismatch_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let wrong = Digest::of(b"other");
        let err = cache.put_reader(&b"hello"[..], &wrong).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::DigestMismatch { expected, actual })
                if expected == &wrong && actual == &Digest::of(b"hello")
        ));
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("mismatch"));
        assert!(!cache.contains(&wrong));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn reading_an_absent_blob_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Digest::of(b"never stored");
        let err = cache.read(&d).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<StoreError>(),
            Some(StoreError::NotCached { digest }) if digest == &d
        ));
        assert_eq!(err.to_string(), format!("blob {d} is not in the cache"));
    }

    #[test]
    fn derived_entries_are_remembered_and_remade_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let from = cache.put(b"packed").unwrap();
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            Ok(b"unpacked ".repeat(1000))
        };
        let first = cache.derived(CacheBucket::Layers, &from, make).unwrap();
        assert_eq!(
            cache.derived(CacheBucket::Layers, &from, make).unwrap(),
            first
        );
        assert_eq!(made.get(), 1, "the second call must come from the memo");

        // Flip one byte inside the frame: the checksum catches it.
        let path = cache.entry(CacheBucket::Layers, format!("{}.zst", from.hex()));
        let mut z = fs::read(&path).unwrap();
        let mid = z.len() / 2;
        z[mid] ^= 0x55;
        fs::write(&path, &z).unwrap();
        assert_eq!(
            cache.derived(CacheBucket::Layers, &from, make).unwrap(),
            first
        );
        assert_eq!(made.get(), 2, "a damaged entry must be made again");

        // A failing maker stores nothing; forget drops an entry.
        cache.forget_derived(CacheBucket::Layers, &from);
        assert!(!path.exists());
        let err = cache
            .derived(CacheBucket::Layers, &from, || Err(Error::input("no")))
            .unwrap_err();
        assert!(err.to_string().contains("no"));
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
