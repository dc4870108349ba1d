//! Where each blob of an image can be read from. Blobs of a registry or
//! OCI-layout base are fetched into the cache only when an output needs
//! their bytes, so a push to the registry the base lives in never
//! downloads them.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use oci_client::Reference;

use crate::manifest::Desc;
use crate::registry::Registry;
use crate::{ImageError, RegistryError};
use kiln_core::digest::{digest_reader, Digest, HashingReader};
use kiln_core::error::{Error, IoContext, Result};
use kiln_store::cache::{write_atomic, Cache, CacheBucket};
use kiln_store::Growing;

/// `f` of every digest on rayon's pool; the error is the first failing
/// digest's, in the order given.
fn side_by_side(
    digests: &[&Digest],
    f: impl Fn(&Digest) -> Result<PathBuf> + Sync,
) -> Result<Vec<PathBuf>> {
    use rayon::prelude::*;
    digests
        .par_iter()
        .map(|d| f(d))
        .collect::<Vec<Result<PathBuf>>>()
        .into_iter()
        .collect()
}

/// Base layer blobs [`Blobs::read_checking`] fetches at a time.
const FETCHERS: usize = 4;

/// What the thread fetching a base layer tells its reader: the blob is
/// coming (read it as it is written), or it is in the cache (its verified
/// path), or the fetch failed (its error [`Blobs::read_checking`] reports).
enum Ready {
    Coming(Arc<Growing>),
    At(PathBuf),
    Failed,
}

/// Where a reader puts the diff_id it hashed, once it read to the end.
type End = Arc<std::sync::OnceLock<Digest>>;

/// A base layer's decompressed stream, opened once its fetch has begun
/// (see [`Ready`]) and hashed into `end` as it is read.
struct Arriving {
    layer: Desc,
    rx: Option<std::sync::mpsc::Receiver<Ready>>,
    end: End,
    inner: Option<HashingReader<Box<dyn Read + Send>>>,
}

impl Read for Arriving {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(rx) = self.rx.take() {
            let r = match rx.recv() {
                Ok(Ready::Coming(g)) => Some(decompressed_from(&self.layer, g.reader())),
                Ok(Ready::At(path)) => Some(decompressed_layer(&self.layer, &path)),
                Ok(Ready::Failed) | Err(_) => None,
            };
            if let Some(r) = r {
                let r = r.map_err(std::io::Error::other)?;
                self.inner = Some(HashingReader::reporting_to(r, self.end.clone()));
            }
        }
        match &mut self.inner {
            Some(r) => r.read(buf),
            None => Err(std::io::Error::other(format!(
                "base layer {} is not at hand",
                self.layer.digest
            ))),
        }
    }
}

/// The uncompressed tar stream of layer `l`, whose blob is at `path`.
/// Decompressed on a thread of its own ([`ReadAhead`](kiln_fs::layer::ReadAhead)):
/// the reader hashes, parses or writes beside it.
pub(crate) fn decompressed_layer(l: &Desc, path: &Path) -> Result<Box<dyn Read + Send>> {
    let f = File::open(path).io_context(|| format!("opening {}", path.display()))?;
    decompressed_from(l, f)
}

/// [`decompressed_layer`] of the compressed bytes `raw` gives.
fn decompressed_from(l: &Desc, raw: impl Read + Send + 'static) -> Result<Box<dyn Read + Send>> {
    let r = kiln_fs::layer::decompressed(&l.media_type, BufReader::with_capacity(1 << 20, raw))
        .map_err(|e| e.context(format!("base layer {}", l.digest)))?;
    Ok(Box::new(kiln_fs::layer::ReadAhead::new(r)))
}

#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Registry(Reference),
    Layout(PathBuf),
}

/// A base layer: where its blob is, and what it must hold.
#[derive(Debug)]
struct BaseLayer {
    origin: Origin,
    size: u64,
    media_type: String,
    diff_id: Digest,
    /// The base, for messages.
    what: String,
}

pub struct Blobs<'a> {
    pub(crate) cache: &'a Cache,
    registry: Option<&'a Registry>,
    layers: HashMap<Digest, BaseLayer>,
    /// Base layers whose size, digest and diff_id this build has checked.
    checked: Mutex<HashSet<Digest>>,
}

impl<'a> Blobs<'a> {
    pub fn new(cache: &'a Cache, registry: Option<&'a Registry>) -> Self {
        Blobs {
            cache,
            registry,
            layers: HashMap::new(),
            checked: Mutex::new(HashSet::new()),
        }
    }

    /// Record a base layer: where its blob can be had, and the diff_id the
    /// config says it decompresses to (checked when the blob is first used).
    pub(crate) fn add_layer(&mut self, layer: &Desc, diff_id: &Digest, origin: Origin, what: &str) {
        self.layers
            .entry(layer.digest.clone())
            .or_insert_with(|| BaseLayer {
                origin,
                size: layer.size,
                media_type: layer.media_type.clone(),
                diff_id: diff_id.clone(),
                what: what.to_string(),
            });
    }

    pub(crate) fn origin(&self, digest: &Digest) -> Option<&Origin> {
        self.layers.get(digest).map(|l| &l.origin)
    }

    /// A verified cache path for the blob, fetching or importing it first if
    /// needed. A base layer is checked the first time a build uses it: its
    /// declared size, and the diff_id its config names; a layout base's layer
    /// is read from the layout itself (a cached blob of the same name does
    /// not stand in for a missing or damaged one in the layout).
    pub fn path(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self.located(digest)?;
        self.check_first_use(digest, &path)?;
        Ok(path)
    }

    /// The cache path of the blob, fetched or imported if needed, with
    /// the blob's own digest checked but not yet a base layer's diff_id.
    fn located(&self, digest: &Digest) -> Result<PathBuf> {
        self.located_showing(digest, None)
    }

    /// [`Blobs::located`]; a blob fetched from a registry is shown to
    /// `coming`'s growth as it is written, after `coming` is told of it.
    fn located_showing(
        &self,
        digest: &Digest,
        coming: Option<&dyn Fn(Arc<Growing>)>,
    ) -> Result<PathBuf> {
        let Some(layer) = self.layers.get(digest) else {
            return self.cache.verified(digest)?.ok_or_else(|| {
                Error::internal(format!("blob {digest} is neither cached nor fetchable"))
            });
        };
        let first = !self.checked.lock().expect("not poisoned").contains(digest);
        match &layer.origin {
            Origin::Layout(dir) if first => self.import_layout_blob(dir, digest, layer),
            origin => match self.cache.verified(digest)? {
                Some(p) => Ok(p),
                None => {
                    self.fetch(digest, layer, origin, coming)?;
                    self.cache.verified(digest)?.ok_or_else(|| {
                        Error::internal(format!("blob {digest} vanished from the cache"))
                    })
                }
            },
        }
    }

    /// A base layer's size and diff_id, the first time this build uses it.
    fn check_first_use(&self, digest: &Digest, path: &Path) -> Result<()> {
        self.check_first_use_hashed(digest, path, None)
    }

    /// [`Blobs::check_first_use`], with the diff_id already hashed if a
    /// read went through the whole layer.
    fn check_first_use_hashed(
        &self,
        digest: &Digest,
        path: &Path,
        hashed: Option<&Digest>,
    ) -> Result<()> {
        let Some(layer) = self.layers.get(digest) else {
            return Ok(());
        };
        if self.checked.lock().expect("not poisoned").contains(digest) {
            return Ok(());
        }
        self.check_layer(digest, path, layer, hashed)?;
        self.checked
            .lock()
            .expect("not poisoned")
            .insert(digest.clone());
        Ok(())
    }

    /// `read` the decompressed tar streams of `layers` (lowest first),
    /// each hashed as it is read: a base layer read to its end is checked
    /// by that hash, its diff_id, instead of being decompressed once more
    /// (a base's inventory reads every layer through); one left unread is
    /// checked by a pass of its own. The blobs are fetched side by side
    /// ([`FETCHERS`] at a time, lowest first) while `read` runs, and a
    /// blob being fetched is read as it is written ([`Growing`]): on a
    /// loopback registry the reading no longer waits 0.2 s for the blobs,
    /// and behind a slow link it ends with the last byte rather than half
    /// a second after it. Nothing read is returned unless every fetch and
    /// check passed; should a fetch have been retried while it was read,
    /// `read` runs again on the verified blobs. The first failing fetch's
    /// error (in the order given) comes first, then a check's: a layer
    /// that is not what its config says is reported as that, not as what
    /// reading it met.
    pub fn read_checking<T>(
        &self,
        layers: &[Desc],
        read: impl Fn(Vec<Box<dyn Read + Send>>) -> Result<T>,
    ) -> Result<T> {
        use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
        // Two messages at most (coming, then where or failed): never a wait.
        let (senders, receivers): (Vec<SyncSender<Ready>>, Vec<Receiver<Ready>>) =
            layers.iter().map(|_| sync_channel(2)).unzip();
        let fetched: Vec<Mutex<Option<Result<PathBuf>>>> =
            layers.iter().map(|_| Mutex::new(None)).collect();
        let growths: Vec<Mutex<Option<Arc<Growing>>>> =
            layers.iter().map(|_| Mutex::new(None)).collect();
        let (out, ends) = std::thread::scope(|s| {
            kiln_core::threads::spawn_in_order(s, layers.len(), FETCHERS, |i| {
                let coming = |g: Arc<Growing>| {
                    *growths[i].lock().expect("not poisoned") = Some(g.clone());
                    let _ = senders[i].send(Ready::Coming(g));
                };
                let got = self.located_showing(&layers[i].digest, Some(&coming));
                // The reader may be gone (`read` returned early).
                let _ = senders[i].send(match &got {
                    Ok(p) => Ready::At(p.clone()),
                    Err(_) => Ready::Failed,
                });
                *fetched[i].lock().expect("not poisoned") = Some(got);
            });
            Self::read_arriving(layers, receivers, &read)
        });
        let mut paths = Vec::new();
        for slot in fetched {
            let got = slot.into_inner().expect("not poisoned");
            paths.push(got.expect("every layer's fetch ran")?);
        }
        let retried = growths.into_iter().any(|g| {
            g.into_inner()
                .expect("not poisoned")
                .is_some_and(|g| g.abandoned())
        });
        let (out, ends) = if retried {
            let receivers = paths
                .iter()
                .map(|p| {
                    let (tx, rx) = sync_channel(1);
                    let _ = tx.send(Ready::At(p.clone()));
                    rx
                })
                .collect();
            Self::read_arriving(layers, receivers, &read)
        } else {
            (out, ends)
        };
        for ((l, p), end) in layers.iter().zip(&paths).zip(ends) {
            self.check_first_use_hashed(&l.digest, p, end.get())?;
        }
        out
    }

    /// `read` of the layers each receiver will say where to read; with
    /// the diff_id each reader hashed, when it read to the end.
    fn read_arriving<T>(
        layers: &[Desc],
        receivers: Vec<std::sync::mpsc::Receiver<Ready>>,
        read: &impl Fn(Vec<Box<dyn Read + Send>>) -> Result<T>,
    ) -> (Result<T>, Vec<End>) {
        let mut ends = Vec::new();
        let mut readers: Vec<Box<dyn Read + Send>> = Vec::new();
        for (l, rx) in layers.iter().zip(receivers) {
            let end = Arc::new(std::sync::OnceLock::new());
            ends.push(end.clone());
            readers.push(Box::new(Arriving {
                layer: l.clone(),
                rx: Some(rx),
                end,
                inner: None,
            }));
        }
        (read(readers), ends)
    }

    /// [`Blobs::path`] of every digest, in the order given, found side by
    /// side: a base layer's first use fetches it and decompresses it whole
    /// to check its diff_id, which one layer after another leaves a core
    /// idle. The error is the first failing digest's, in the order given.
    pub fn paths<'d>(&self, digests: impl IntoIterator<Item = &'d Digest>) -> Result<Vec<PathBuf>> {
        let digests: Vec<&Digest> = digests.into_iter().collect();
        side_by_side(&digests, |d| self.path(d))
    }

    /// Fetch or import the blob into the cache; one from a registry is
    /// shown to `coming`'s growth as it is written (see
    /// [`Blobs::located_showing`]).
    fn fetch(
        &self,
        digest: &Digest,
        layer: &BaseLayer,
        origin: &Origin,
        coming: Option<&dyn Fn(Arc<Growing>)>,
    ) -> Result<()> {
        match origin {
            Origin::Registry(r) => {
                let reg = self.registry.ok_or_else(|| RegistryError::OfflineBlob {
                    digest: digest.clone(),
                    image: r.whole(),
                    hint: true,
                })?;
                let growing = coming.map(|coming| {
                    let g = Growing::new();
                    coming(g.clone());
                    g
                });
                let got =
                    reg.fetch_blob_showing(r, digest, layer.size, self.cache, growing.as_ref());
                if let Some(g) = &growing {
                    // Its reader must not wait for a fetch that failed
                    // before it began writing.
                    g.ended(got.is_ok());
                }
                got
            }
            Origin::Layout(dir) => self.import_layout_blob(dir, digest, layer).map(drop),
        }
    }

    /// Copy a layout's own blob into the cache, verified against its digest.
    fn import_layout_blob(
        &self,
        dir: &Path,
        digest: &Digest,
        layer: &BaseLayer,
    ) -> Result<PathBuf> {
        let (_, f) = open_layout_blob(dir, digest, layer.size, &layer.what)?;
        self.cache
            .put_reader(BufReader::with_capacity(1 << 20, f), digest)
            .map_err(|e| match e.downcast_ref::<kiln_store::StoreError>() {
                Some(kiln_store::StoreError::DigestMismatch { .. }) => ImageError::DigestMismatch {
                    what: layer.what.clone(),
                    item: "blob",
                    digest: digest.clone(),
                }
                .into(),
                _ => e,
            })
    }

    /// The blob's size is the declared one, and it decompresses to the
    /// diff_id the config names (remembered per blob digest, so a warm
    /// build does not decompress the base again).
    fn check_layer(
        &self,
        digest: &Digest,
        path: &Path,
        layer: &BaseLayer,
        hashed: Option<&Digest>,
    ) -> Result<()> {
        let size = std::fs::metadata(path)
            .io_context(|| format!("reading {}", path.display()))?
            .len();
        if size != layer.size {
            return Err(ImageError::BlobSize {
                what: layer.what.clone(),
                digest: digest.clone(),
                declared: layer.size,
                actual: size,
            }
            .into());
        }
        let memo = self.cache.entry(CacheBucket::LayerDiffIds, digest.hex());
        let known = std::fs::read_to_string(&memo)
            .ok()
            .and_then(|s| s.trim().parse::<Digest>().ok());
        let from_memo = known.is_some();
        let actual = match known.or_else(|| hashed.cloned()) {
            Some(d) => d,
            None => {
                let f = File::open(path).io_context(|| format!("opening {}", path.display()))?;
                let reader = kiln_fs::layer::decompressed(
                    &layer.media_type,
                    BufReader::with_capacity(1 << 20, f),
                )
                .map_err(|e| e.context(format!("{}: base layer {digest}", layer.what)))?;
                let (d, _) = digest_reader(reader).map_err(|source| ImageError::CorruptLayer {
                    what: layer.what.clone(),
                    digest: digest.clone(),
                    source,
                })?;
                d
            }
        };
        if !from_memo {
            write_atomic(&memo, actual.to_string().as_bytes());
        }
        if actual != layer.diff_id {
            return Err(ImageError::DiffIdMismatch {
                what: format!("{}: layer {digest}", layer.what),
                actual,
                diff_id: layer.diff_id.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Open a verified blob for reading.
    pub(crate) fn open(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).io_context(|| format!("opening {}", p.display()))
    }
}

/// A blob of an OCI layout, opened only if it is what a blob must be: a
/// regular file (not a symlink, FIFO or device) of the declared size.
pub(crate) fn open_layout_blob(
    dir: &Path,
    digest: &Digest,
    size: u64,
    what: &str,
) -> Result<(PathBuf, File)> {
    let p = dir.join("blobs/sha256").join(digest.hex());
    let md = std::fs::symlink_metadata(&p).map_err(|source| ImageError::MissingBlob {
        what: what.to_string(),
        digest: digest.clone(),
        source,
    })?;
    check_regular(&md, what, &format!("blob {digest}"))?;
    if md.len() != size {
        return Err(ImageError::BlobSize {
            what: what.to_string(),
            digest: digest.clone(),
            declared: size,
            actual: md.len(),
        }
        .into());
    }
    let f = open_nofollow(&p).map_err(|source| ImageError::MissingBlob {
        what: what.to_string(),
        digest: digest.clone(),
        source,
    })?;
    // The file checked above may have been swapped since: check what was opened.
    let md = f
        .metadata()
        .io_context(|| format!("reading {}", p.display()))?;
    check_regular(&md, what, &format!("blob {digest}"))?;
    Ok((p, f))
}

/// Refuse anything but a regular file where a document or blob is read.
pub(crate) fn check_regular(md: &std::fs::Metadata, what: &str, item: &str) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let t = md.file_type();
    let kind = if t.is_file() {
        return Ok(());
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Err(ImageError::NotRegular {
        what: what.to_string(),
        item: item.to_string(),
        kind,
    }
    .into())
}

/// Open without following a final symlink and without blocking on a FIFO.
fn open_nofollow(p: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(p)
}

/// Read a small document (index, manifest, config, marker) from a file:
/// a regular file, at most [`crate::manifest::MAX_DOCUMENT`] bytes, read
/// without following a symlink.
pub(crate) fn read_document(
    p: &Path,
    what: &str,
    item: &str,
) -> std::result::Result<Vec<u8>, DocumentReadError> {
    let refused = DocumentReadError::Refused;
    let md = std::fs::symlink_metadata(p).map_err(DocumentReadError::Io)?;
    check_regular(&md, what, item).map_err(refused)?;
    let f = open_nofollow(p).map_err(DocumentReadError::Io)?;
    let md = f.metadata().map_err(DocumentReadError::Io)?;
    check_regular(&md, what, item).map_err(refused)?;
    crate::manifest::check_size(md.len(), what, item).map_err(refused)?;
    // Bounded again while reading: the file may grow after the check.
    let mut b = Vec::with_capacity(md.len() as usize);
    f.take(crate::manifest::MAX_DOCUMENT + 1)
        .read_to_end(&mut b)
        .map_err(DocumentReadError::Io)?;
    crate::manifest::check_size(b.len() as u64, what, item).map_err(refused)?;
    Ok(b)
}

/// Why [`read_document`] gave nothing: the file could not be read (the
/// caller says what was missing), or it is not what a document must be.
pub(crate) enum DocumentReadError {
    Io(std::io::Error),
    Refused(Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_fs::layer::Compression;

    fn desc(d: &Digest, size: u64) -> Desc {
        Desc::new(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            d.clone(),
            size,
        )
    }

    #[test]
    fn blobs_that_cannot_be_had() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let mut blobs = Blobs::new(&cache, None);

        let d = Digest::of(b"layer");
        let r: Reference = "registry.example/app:1".parse().unwrap();
        blobs.add_layer(&desc(&d, 5), &d, Origin::Registry(r), "base");
        let err = blobs.path(&d).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<RegistryError>(),
            Some(RegistryError::OfflineBlob { hint: true, digest, .. }) if digest == &d
        ));
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            format!("offline: blob {d} of registry.example/app:1 is not in the cache (run `kiln fetch` or `kiln cache import` first)")
        );

        let layout = tempfile::tempdir().unwrap();
        let d = Digest::of(b"other layer");
        blobs.add_layer(
            &desc(&d, 11),
            &d,
            Origin::Layout(layout.path().to_path_buf()),
            "oci:base",
        );
        let err = blobs.path(&d).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::MissingBlob { digest, .. }) if digest == &d
        ));
        assert_eq!(err.exit_code(), 2);
        assert!(err
            .to_string()
            .starts_with(&format!("oci:base: missing blob {d}: ")));
    }

    /// A gzip layer holding one file, as a layout blob; returns (digest, diff_id, size).
    fn layout_layer(dir: &Path, content: &[u8]) -> (Digest, Digest, u64) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, "f", content).unwrap();
        let raw = tar.into_inner().unwrap();
        let diff_id = Digest::of(&raw);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let blob = gz.finish().unwrap();
        let d = Digest::of(&blob);
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), &blob).unwrap();
        (d, diff_id, blob.len() as u64)
    }

    /// Layers are read while later ones are still being fetched: every
    /// layer read, lowest first; and a layer that cannot be had fails the
    /// read with its own error (the first in order), not the reader's.
    #[test]
    fn layers_are_read_as_their_blobs_arrive() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let layout = tempfile::tempdir().unwrap();
        let origin = || Origin::Layout(layout.path().to_path_buf());
        let layers: Vec<_> = (0..6)
            .map(|i| layout_layer(layout.path(), format!("layer {i}").as_bytes()))
            .collect();
        let descs: Vec<_> = layers.iter().map(|(d, _, size)| desc(d, *size)).collect();
        let blobs_of = || {
            let mut blobs = Blobs::new(&cache, None);
            for (d, diff_id, size) in &layers {
                blobs.add_layer(&desc(d, *size), diff_id, origin(), "oci:base");
            }
            blobs
        };
        let tails = |readers: Vec<Box<dyn Read + Send>>| -> Result<Vec<String>> {
            let mut out = Vec::new();
            for mut r in readers {
                let mut tar = Vec::new();
                r.read_to_end(&mut tar)
                    .map_err(|e| Error::internal(e.to_string()))?;
                out.push(String::from_utf8_lossy(&tar[512..519]).into_owned());
            }
            Ok(out)
        };
        let read = blobs_of().read_checking(&descs, tails).unwrap();
        assert_eq!(
            read,
            (0..6).map(|i| format!("layer {i}")).collect::<Vec<_>>()
        );

        for (d, _, _) in &layers[2..] {
            std::fs::remove_file(cache.blob_path(d)).unwrap();
        }
        for (d, _, _) in &layers[3..5] {
            std::fs::remove_file(layout.path().join("blobs/sha256").join(d.hex())).unwrap();
        }
        let err = blobs_of().read_checking(&descs, tails).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::MissingBlob { digest, .. }) if digest == &layers[3].0
            ),
            "{err:?}"
        );
    }

    #[test]
    fn base_layers_are_checked_against_their_descriptor_and_diff_id() {
        let _ = Compression::Gzip { level: 1 };
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let layout = tempfile::tempdir().unwrap();
        let (d, diff_id, size) = layout_layer(layout.path(), b"hello");
        let origin = || Origin::Layout(layout.path().to_path_buf());

        // The right diff_id: served, and remembered.
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
        blobs.path(&d).unwrap();
        let memo = cache.entry(CacheBucket::LayerDiffIds, d.hex());
        assert_eq!(std::fs::read_to_string(&memo).unwrap(), diff_id.to_string());

        // A config that names another diff_id: refused, even with the blob cached.
        let mut blobs = Blobs::new(&cache, None);
        let wrong = Digest::of(b"not the layer");
        blobs.add_layer(&desc(&d, size), &wrong, origin(), "oci:base");
        let err = blobs.path(&d).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::DiffIdMismatch { actual, diff_id: want, .. })
                    if actual == &diff_id && want == &wrong
            ),
            "{err:?}"
        );
        assert_eq!(err.exit_code(), 2);
        // Read in one pass with the check: what was read is not handed
        // out, and the check's error is the one reported.
        let read_all = |readers: Vec<Box<dyn Read + Send>>| -> Result<Vec<u8>> {
            let mut out = Vec::new();
            for mut r in readers {
                r.read_to_end(&mut out).unwrap();
            }
            Ok(out)
        };
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &wrong, origin(), "oci:base");
        let err = blobs
            .read_checking(&[desc(&d, size)], read_all)
            .unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::DiffIdMismatch { .. })
            ),
            "{err:?}"
        );
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
        let err = blobs
            .read_checking(&[desc(&d, size)], |_| -> Result<()> {
                Err(Error::internal("read failed"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("read failed"), "{err}");
        // A read through the whole layer is its check: with no diff_id
        // remembered, the hash of that read is what is compared (and
        // remembered); a read that stops early leaves a pass of its own.
        std::fs::remove_file(&memo).unwrap();
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
        let cached = cache.verified(&d).unwrap().unwrap();
        let read = blobs
            .read_checking(&[desc(&d, size)], |readers| {
                let read = read_all(readers);
                // Not decompressed again: damage after the read goes unseen.
                std::fs::write(&cached, vec![0u8; size as usize]).unwrap();
                read
            })
            .unwrap();
        assert_eq!(Digest::of(&read), diff_id);
        assert!(blobs.checked.lock().unwrap().contains(&d));
        assert_eq!(std::fs::read_to_string(&memo).unwrap(), diff_id.to_string());
        std::fs::remove_file(&memo).unwrap();
        std::fs::remove_file(&cached).unwrap();
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
        blobs
            .read_checking(&[desc(&d, size)], |mut readers| {
                let mut first = [0u8; 10];
                readers[0].read_exact(&mut first).unwrap();
                Ok(())
            })
            .unwrap();
        assert!(blobs.checked.lock().unwrap().contains(&d));
        assert_eq!(std::fs::read_to_string(&memo).unwrap(), diff_id.to_string());

        // A declared size that is not the blob's (2^62): refused before reading.
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, 1 << 62), &diff_id, origin(), "oci:base");
        let err = blobs.path(&d).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::BlobSize { declared, actual, .. })
                    if *declared == 1 << 62 && *actual == size
            ),
            "{err:?}"
        );

        // The layout's own copy damaged: the cached copy does not stand in for it.
        let p = layout.path().join("blobs/sha256").join(d.hex());
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        let mut blobs = Blobs::new(&cache, None);
        blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
        let err = blobs.path(&d).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<ImageError>(),
                Some(ImageError::DigestMismatch { item: "blob", .. })
            ),
            "{err:?}"
        );

        // A symlink (to /dev/zero) or a FIFO in its place: refused, not read.
        for kind in ["a symlink", "a FIFO"] {
            std::fs::remove_file(&p).unwrap();
            if kind == "a symlink" {
                std::os::unix::fs::symlink("/dev/zero", &p).unwrap();
            } else {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap();
            }
            let mut blobs = Blobs::new(&cache, None);
            blobs.add_layer(&desc(&d, size), &diff_id, origin(), "oci:base");
            let err = blobs.path(&d).unwrap_err();
            assert!(
                matches!(
                    err.downcast_ref::<ImageError>(),
                    Some(ImageError::NotRegular { kind: k, .. }) if *k == kind
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }
}
