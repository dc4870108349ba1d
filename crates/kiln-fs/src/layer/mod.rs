//! Layer builder: entries → deterministic tar → gzip|zstd, with the blob
//! digest, the diff_id and the sizes computed in the same streaming pass,
//! written straight into the content-addressed cache.

mod ahead;
pub mod archive;
mod compress;
mod inflating;
mod kept;
mod packed;
mod parts;
pub mod spool;
mod tarball;
pub mod tree;

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

pub use ahead::ReadAhead;
pub use compress::Compression;
use compress::ParallelEncoder;
pub use kept::Kept;
pub use packed::{Damaged, Packed};
pub use spool::{read_claimed, Content, Deflated, FileRange, SliceReader, Spool, SpoolSlice};
pub use tree::{Entry, EntryKind, Tree};

use crate::error::FsError;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_store::cache::{Cache, CacheBucket};

/// The entries of one layer, in the order they are written, with the line
/// the layer gets in the image history.
#[derive(Clone, Debug)]
pub struct LayerGroup {
    pub label: String,
    pub entries: Vec<Entry>,
    /// Where the layer is cut into parts: the index of each part's first
    /// entry after the first part's. Empty: one part, the whole layer.
    ///
    /// Each part is compressed on its own and remembered by its inputs, so
    /// a layer that shares parts with one built before (a shared pip layer
    /// with one wheel bumped) copies their compressed bytes instead of
    /// compressing them again.
    pub parts: Vec<usize>,
}

impl LayerGroup {
    /// A layer of one part.
    pub fn new(label: impl Into<String>, entries: Vec<Entry>) -> LayerGroup {
        LayerGroup {
            label: label.into(),
            entries,
            parts: Vec::new(),
        }
    }
}

impl LayerGroup {
    /// A layer of several members (packages sharing a layer), cut into
    /// parts: the directories of all of them and `head` (entries that are
    /// not a member's) first, then each member's files and links by path,
    /// a part each, in the order given. A member's part then depends on
    /// that member alone, so adding, removing or changing another leaves
    /// its compressed bytes as they were.
    ///
    /// When members collide (one path in two of them, or a file where
    /// another has a directory), the layer is the merge of all, in order,
    /// a later member winning a path, in one part.
    pub fn in_parts(label: impl Into<String>, head: Vec<Entry>, members: Vec<Vec<Entry>>) -> Self {
        let label = label.into();
        let is_dir = |e: &Entry| matches!(e.kind, EntryKind::Dir);
        let mut tree = Tree::default();
        for e in head.iter().chain(members.iter().flatten()) {
            tree.add_parents(&e.path);
            tree.insert(e.clone());
        }
        let merged = tree.into_sorted();
        // Every directory some entry names or lies in.
        let dirs: std::collections::HashSet<&str> = head
            .iter()
            .chain(members.iter().flatten())
            .flat_map(|e| {
                let own = is_dir(e).then_some(e.path.as_str());
                let parents = e.path.match_indices('/').map(|(i, _)| &e.path[..i]);
                own.into_iter().chain(parents)
            })
            .collect();
        let files = |entries: &[Entry]| entries.iter().filter(|e| !is_dir(e)).count();
        let apart = files(&head) + members.iter().map(|m| files(m)).sum::<usize>();
        let clash = head
            .iter()
            .chain(members.iter().flatten())
            .any(|e| !is_dir(e) && dirs.contains(e.path.as_str()));
        if apart != files(&merged) || clash || members.is_empty() {
            return LayerGroup::new(label, merged);
        }
        let ours: std::collections::HashSet<&str> = head.iter().map(|e| e.path.as_str()).collect();
        let mut entries: Vec<Entry> = merged
            .iter()
            .filter(|e| is_dir(e) || ours.contains(e.path.as_str()))
            .cloned()
            .collect();
        let mut parts = Vec::with_capacity(members.len());
        for member in members {
            parts.push(entries.len());
            entries.extend(Self::part_of(member));
        }
        LayerGroup {
            label,
            entries,
            parts,
        }
    }

    /// A member's part of a layer [`LayerGroup::in_parts`] makes: its
    /// files and links, by path (what to compress ahead of the layer).
    pub fn part_of(member: Vec<Entry>) -> Vec<Entry> {
        let mut files: Vec<Entry> = member
            .into_iter()
            .filter(|e| !matches!(e.kind, EntryKind::Dir))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }
}

/// The ranges of `entries` the part starts `parts` cut them into.
fn part_ranges(len: usize, parts: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut starts: Vec<usize> = std::iter::once(0)
        .chain(parts.iter().copied().filter(|&p| p > 0 && p < len))
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(len));
    starts
        .iter()
        .copied()
        .zip(ends)
        .map(|(a, b)| a..b)
        .collect()
}

/// A layer blob in the cache.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerBlob {
    pub digest: Digest,
    pub diff_id: Digest,
    /// Compressed size.
    pub size: u64,
    pub media_type: String,
}

/// The uncompressed tar stream of a layer blob, by its media type.
pub fn decompressed<'a>(
    media_type: &str,
    blob: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>> {
    Ok(
        if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
            Box::new(crate::inflate::Gunzip::new(blob))
        } else if media_type.ends_with("+zstd") {
            Box::new(zstd::stream::read::Decoder::new(blob).map_err(|source| {
                FsError::Decompress {
                    media_type: media_type.to_string(),
                    source,
                }
            })?)
        } else if media_type.ends_with(".tar") {
            Box::new(blob)
        } else {
            return Err(FsError::UnsupportedMediaType {
                media_type: media_type.to_string(),
            }
            .into());
        },
    )
}

/// The uncompressed tar stream of the layer `blob` in the cache.
pub fn open_layer(cache: &Cache, blob: &LayerBlob) -> Result<Box<dyn Read + Send>> {
    let path = cache.blob_path(&blob.digest);
    let f = std::fs::File::open(&path).io_context(|| format!("opening {}", path.display()))?;
    decompressed(&blob.media_type, io::BufReader::with_capacity(1 << 20, f))
}

/// Write `entries` as one layer into the cache. `mtime` applies to every entry.
///
/// Memoised: the same entries (paths, metadata and content), mtime and
/// compression give the same blob, so a layer already built is found by
/// hashing its inputs, which costs a fraction of tar + compress.
pub fn build_layer(
    entries: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    build_layer_reporting(entries, &[], mtime, compression, cache).map(|b| b.blob)
}

/// [`build_layer`] of a layer cut into `parts` (see [`LayerGroup::parts`]),
/// saying whether the layer was taken from the cache (`true`) or built now
/// (for a build's summary).
pub fn build_layer_reporting(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<Built> {
    build_layer_using(entries, parts, mtime, compression, cache, true)
}

/// [`build_layer_reporting`] with `memos`, or without any (as
/// [`build_layer_fresh`]: the same bytes, all compressed now).
pub fn build_layer_using(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
    memos: bool,
) -> Result<Built> {
    if !memos {
        let blob = build_layer_fresh(entries, parts, mtime, compression, cache)?;
        return Ok(Built {
            blob,
            reused: false,
            parts_copied: 0,
        });
    }
    let key = input_key(entries, parts, mtime, compression)?;
    let memo = cache.entry(CacheBucket::Layers, format!("{}.json", key.hex()));
    if let Some(blob) = read_memo(&memo, cache) {
        return Ok(Built {
            blob,
            reused: true,
            parts_copied: 0,
        });
    }
    let (blob, parts_copied) = build_parted(entries, parts, mtime, compression, cache, true)?;
    write_memo(&memo, &blob);
    Ok(Built {
        blob,
        reused: false,
        parts_copied,
    })
}

/// A layer [`build_layer_reporting`] gave, and how.
#[derive(Debug)]
pub struct Built {
    pub blob: LayerBlob,
    /// The whole layer came from the cache.
    pub reused: bool,
    /// Parts whose compressed bytes were copied from the cache.
    pub parts_copied: usize,
}

/// The layer remembered under `key`, a key its caller makes (a `[[run]]`
/// step's: its command and the layers under it), if the cache still has
/// its blob intact. Kept beside the layers' own memos, so `kiln cache gc`
/// drops it with the blob.
pub fn remembered(cache: &Cache, key: &Digest) -> Option<LayerBlob> {
    read_memo(
        &cache.entry(CacheBucket::Layers, format!("{}.json", key.hex())),
        cache,
    )
}

/// Remember `blob` under `key` (see [`remembered`]). Best effort.
pub fn remember(cache: &Cache, key: &Digest, blob: &LayerBlob) {
    write_memo(
        &cache.entry(CacheBucket::Layers, format!("{}.json", key.hex())),
        blob,
    );
}

/// What decides the bytes of the layer `entries` make (cut into `parts`):
/// the key [`build_layer`] remembers it by.
pub fn layer_key(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
) -> Result<Digest> {
    input_key(entries, parts, mtime, compression)
}

/// The layer built before from the same inputs, if the cache still has it
/// (what `kiln build --dry-run` reports as reused).
pub fn cached_layer(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<Option<LayerBlob>> {
    let key = input_key(entries, parts, mtime, compression)?;
    let memo = cache.entry(CacheBucket::Layers, format!("{}.json", key.hex()));
    Ok(read_memo(&memo, cache))
}

/// Changes whenever the same entries would give other layer bytes, or a
/// key over them is made differently, so that no memo made before (a
/// layer's, a part's, a locked stage's) is taken for what a build makes
/// now: a warm build must give the cold one's digests. 2: gzip chunks by
/// libdeflate; 3: known hashes of spooled files; 4: wheel members from
/// 16 KiB keep their deflate streams (64 KiB before); 5: gzip chunks that
/// look random are stored; 6: wheels from 2 MiB get layers of their own,
/// which a locked stage's memo would not know; 7: wheel members from
/// 4 KiB keep their deflate streams).
pub const ENCODING: u32 = 7;

/// sha256 over everything that decides a layer's bytes.
fn input_key(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
) -> Result<Digest> {
    let mut head = format!(
        "kiln-layer/{ENCODING} {} {compression:?} {mtime}\n",
        env!("CARGO_PKG_VERSION")
    );
    let ranges = part_ranges(entries.len(), parts);
    if ranges.len() > 1 {
        head.push_str(&format!("parts {ranges:?}\n"));
    }
    key_of(&head, entries)
}

/// sha256 over everything that decides one part's compressed bytes.
fn part_key(entries: &[Entry], mtime: u64, compression: Compression) -> Result<Digest> {
    let head = format!(
        "kiln-layer-part/{ENCODING} {} {compression:?} {mtime}\n",
        env!("CARGO_PKG_VERSION")
    );
    key_of(&head, entries)
}

fn key_of(head: &str, entries: &[Entry]) -> Result<Digest> {
    use sha2::{Digest as _, Sha256};
    use std::fmt::Write as _;
    let mut h = Sha256::new();
    h.update(head);
    // Formatted straight into the hash: the same bytes as a string made
    // for each, without making them (1% of a cold freeze's profile, most
    // of it the allocations; the test below pins the bytes).
    let mut w = HashFmt(&mut h);
    for e in entries {
        let _ = write!(w, "{}\0{:o}\0{}\0{}\0", e.path, e.mode, e.uid, e.gid);
        match &e.kind {
            EntryKind::Dir => w.0.update(b"d\0"),
            EntryKind::Symlink { target } => {
                let _ = write!(w, "l{target}\0");
            }
            EntryKind::Data(d) => {
                let _ = write!(w, "f{}\0", d.len());
                w.0.update(d.as_slice());
            }
            // A file known by a name no other bytes have: its length and
            // that name (a warm pip stage's 600 MB of wheel members are not
            // hashed again).
            EntryKind::Spooled(s) => {
                match s.known_name() {
                    Some(known) => {
                        let _ = write!(w, "k{}\0{known}\0", s.len());
                    }
                    None => {
                        let _ = write!(w, "f{}\0", s.len());
                        let input = |source| FsError::LayerInput { path: None, source };
                        io::copy(&mut s.reader().map_err(input)?, &mut *w.0).map_err(input)?;
                    }
                }
                // A gzip layer copies this stream: it decides those bytes.
                if let Some(d) = s.deflated() {
                    let _ = write!(w, "z{}\0{}\0", d.len(), d.id());
                }
            }
            EntryKind::File { src, size } => {
                let _ = write!(w, "f{size}\0");
                let input = |source| FsError::LayerInput {
                    path: Some(src.clone()),
                    source,
                };
                let mut f = std::fs::File::open(src).map_err(input)?;
                io::copy(&mut f, &mut *w.0).map_err(input)?;
            }
        }
    }
    Ok(Digest::from_hasher(h))
}

/// Formats into a hash: `write!` hashes what `format!` would have made.
struct HashFmt<'a>(&'a mut sha2::Sha256);

impl std::fmt::Write for HashFmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        sha2::Digest::update(self.0, s.as_bytes());
        Ok(())
    }
}

fn read_memo(path: &std::path::Path, cache: &Cache) -> Option<LayerBlob> {
    let m: LayerBlob = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    // The blob itself must still be there and intact (gc, disk damage).
    cache.verified(&m.digest).ok()??;
    Some(m)
}

/// Best effort: a memo that cannot be written only costs a rebuild later.
fn write_memo(path: &std::path::Path, b: &LayerBlob) {
    if let Ok(json) = serde_json::to_vec(b) {
        kiln_store::cache::write_atomic(path, &json);
    }
}

/// Write `entries` as one layer, always tarring and compressing every part
/// (no memo is read or written).
pub fn build_layer_fresh(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    build_parted(entries, parts, mtime, compression, cache, false).map(|(blob, _)| blob)
}

/// Write `entries` as one layer. With `memos`, a layer cut into parts
/// copies the compressed bytes of each part built before (from the layer
/// or blob it was built in) and remembers where its own parts are; the
/// bytes are the same either way. Returns the parts copied.
fn build_parted(
    entries: &[Entry],
    parts: &[usize],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
    memos: bool,
) -> Result<(LayerBlob, usize)> {
    let ranges = part_ranges(entries.len(), parts);
    let enc = ParallelEncoder::new(cache.writer()?, compression);
    if ranges.len() <= 1 {
        let enc = tarball::write_tar(entries, mtime, enc).map_err(tar_error)?;
        return finish(enc, compression).map(|(blob, _)| (blob, 0));
    }
    let mut enc = enc;
    let mut copied_parts = 0;
    let mut keys = Vec::with_capacity(ranges.len());
    for r in ranges {
        let part = &entries[r];
        let key = part_key(part, mtime, compression)?;
        // Without memos no slice is read (nor hashed) at all.
        match memos.then(|| parts::find(cache, &key)).flatten() {
            Some(found) => {
                // The diff_id still covers the part's tar records; only
                // their compression is skipped. Reading them checks the
                // packed members a part built ahead took unread.
                if let Err(e) = tarball::write_records(part, mtime, HashOnly(&mut enc)) {
                    parts::forget_ahead(cache, &key);
                    if tarball::StreamNotWhole::is(&e) {
                        // The part's bytes are not its files': the layer
                        // is written afresh (the bytes a cold build makes).
                        return build_parted(entries, parts, mtime, compression, cache, false);
                    }
                    return Err(tar_error(e));
                }
                let want = found.len();
                let reading = || "reading a cached layer part".to_string();
                let copied = enc
                    .splice(found.into_reader().io_context(reading)?)
                    .io_context(|| "writing layer".into())?;
                if copied != want {
                    let short = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{copied} of {want} bytes: the cache's blob was cut short"),
                    );
                    return Err(short).io_context(reading);
                }
                copied_parts += 1;
            }
            None => {
                enc = tarball::write_records(part, mtime, enc).map_err(tar_error)?;
            }
        }
        enc.cut().io_context(|| "writing layer".into())?;
        keys.push(key);
    }
    io::Write::write_all(&mut enc, &tarball::TRAILER).io_context(|| "writing layer".into())?;
    let (blob, cuts) = finish(enc, compression)?;
    if memos {
        for (key, cut) in keys.iter().zip(cuts) {
            parts::remember(cache, key, &blob.digest, &cut);
            parts::forget_ahead(cache, key);
        }
    }
    Ok((blob, copied_parts))
}

/// Compress one part of a layer cut into parts ahead of the layer (a
/// small wheel just downloaded, while the others still download), into a
/// blob of its own: the layer finds it there (see [`build_layer_fresh`]).
/// Returns whether the part was already in the cache.
pub fn build_part_ahead(
    part: &[Entry],
    mtime: u64,
    compression: Compression,
    cache: &Cache,
) -> Result<bool> {
    let key = part_key(part, mtime, compression)?;
    if parts::find(cache, &key).is_some() {
        return Ok(true);
    }
    let writing = || "writing a layer part".to_string();
    // Its diff_id would never be read: the layer hashes these bytes again.
    let out = parts::ahead_writer(cache).io_context(writing)?;
    let enc = ParallelEncoder::unhashed(out, compression);
    let mut enc = tarball::write_records(part, mtime, enc).map_err(tar_error)?;
    enc.cut().io_context(writing)?;
    let (out, _) = enc.finish().io_context(writing)?;
    let out = out
        .into_inner()
        .map_err(|e| e.into_error())
        .io_context(writing)?;
    parts::keep_ahead(cache, &key, out);
    Ok(false)
}

/// Feeds the uncompressed stream's hash only (a part whose compressed
/// bytes are copied from the cache).
struct HashOnly<'a, W: io::Write>(&'a mut ParallelEncoder<W>);

/// A copied part's deflated members are hashed as their plain bytes; the
/// part took their streams (see [`tarball::StreamNotWhole`]).
impl<W: io::Write> tarball::RecordSink for HashOnly<'_, W> {
    fn stands_for_streams(&self) -> bool {
        self.0.takes_deflated()
    }
}

impl<W: io::Write> io::Write for HashOnly<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0.hash_only(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A failure while tarring: a layer input that went away or changed size,
/// or a packed member that is damaged ([`Packed`]), is reported as such.
fn tar_error(e: io::Error) -> Error {
    use io::ErrorKind::{InvalidData, NotFound, UnexpectedEof};
    if matches!(e.kind(), UnexpectedEof | NotFound | InvalidData) {
        FsError::LayerInput {
            path: None,
            source: e,
        }
        .into()
    } else {
        Error::Io {
            context: "writing layer".into(),
            source: e,
        }
    }
}

/// Compress an existing uncompressed tar stream (e.g. a docker-archive layer).
pub fn compress_tar(
    mut tar: impl Read,
    compression: Compression,
    cache: &Cache,
) -> Result<LayerBlob> {
    let mut enc = ParallelEncoder::new(cache.writer()?, compression);
    io::copy(&mut tar, &mut enc).io_context(|| "compressing layer".into())?;
    finish(enc, compression).map(|(blob, _)| blob)
}

fn finish(
    enc: ParallelEncoder<kiln_store::cache::BlobWriter>,
    compression: Compression,
) -> Result<(LayerBlob, Vec<compress::Cut>)> {
    let (w, summary) = enc.finish().io_context(|| "compressing layer".into())?;
    let diff_id = summary
        .diff_id
        .ok_or_else(|| io::Error::other("a layer compressed without hashing it"))
        .io_context(|| "compressing layer".into())?;
    let (digest, size) = w.commit(None)?;
    Ok((
        LayerBlob {
            digest,
            diff_id,
            size,
            media_type: compression.media_type().to_string(),
        },
        summary.cuts,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    #[test]
    fn unknown_media_types_are_refused() {
        let Err(e) = decompressed("application/vnd.oci.image.layer.v1.tar+lz4", &b""[..]) else {
            panic!("an lz4 layer was accepted");
        };
        assert!(matches!(
            e.downcast_ref::<FsError>(),
            Some(FsError::UnsupportedMediaType { media_type }) if media_type.ends_with("+lz4")
        ));
        assert_eq!(e.exit_code(), 2);
        assert!(decompressed("application/vnd.oci.image.layer.v1.tar", &b""[..]).is_ok());
    }

    /// A layer's memo key hashes these bytes for its entries, as it did
    /// when each was a string of its own (memos written before still hit).
    #[test]
    fn memo_keys_hash_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, b"file bytes").unwrap();
        let dirs = |path: &str, kind: EntryKind| Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 7,
        };
        let entries = vec![
            dirs("usr", EntryKind::Dir),
            dirs(
                "usr/bin/sh",
                EntryKind::Symlink {
                    target: "dash".into(),
                },
            ),
            Entry::data("etc/motd", b"hi\n".to_vec(), 0o644),
            dirs(
                "opt/f",
                EntryKind::File {
                    src: src.clone(),
                    size: 10,
                },
            ),
        ];
        let want = Digest::of(
            &[
                &b"head\n"[..],
                b"usr\x00755\x000\x007\x00d\x00",
                b"usr/bin/sh\x00755\x000\x007\x00ldash\x00",
                b"etc/motd\x00644\x000\x000\x00f3\x00hi\n",
                b"opt/f\x00755\x000\x007\x00f10\x00file bytes",
            ]
            .concat(),
        );
        assert_eq!(key_of("head\n", &entries).unwrap(), want);
    }

    #[test]
    fn a_layer_says_whether_the_cache_had_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let entries = vec![Entry::data("etc/motd", b"hi\n".to_vec(), 0o644)];
        let gz = Compression::Gzip { level: 1 };
        assert!(cached_layer(&entries, &[], 0, gz, &cache)
            .unwrap()
            .is_none());
        let first = build_layer_reporting(&entries, &[], 0, gz, &cache).unwrap();
        assert!(!first.reused);
        let again = build_layer_reporting(&entries, &[], 0, gz, &cache).unwrap();
        assert!(again.reused);
        assert_eq!(again.blob.digest, first.blob.digest);
        let hit = cached_layer(&entries, &[], 0, gz, &cache).unwrap().unwrap();
        assert_eq!(hit.digest, first.blob.digest);
        // Another mtime is another layer.
        assert!(cached_layer(&entries, &[], 1, gz, &cache)
            .unwrap()
            .is_none());
    }

    /// A spooled file with a known name enters the memo key as that name:
    /// the key is the same whatever spool holds the bytes, changes with
    /// the name, and is made without reading the bytes back.
    #[test]
    fn a_known_name_stands_for_the_spooled_bytes_in_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = |s: SpoolSlice| {
            vec![Entry {
                path: "usr/lib/m.py".into(),
                kind: EntryKind::Spooled(s),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }]
        };
        let key = |e: &[Entry]| input_key(e, &[], 0, Compression::Gzip { level: 1 }).unwrap();
        let (a, b) = (
            Spool::new_in(dir.path()).unwrap(),
            Spool::new_in(dir.path()).unwrap(),
        );
        b.put(b"padding first").unwrap();
        let known = |s: &Arc<Spool>| s.put(b"print(1)\n").unwrap().known_as("sha256=AAA");
        assert_eq!(key(&file(known(&a))), key(&file(known(&b))));
        let other = a.put(b"print(1)\n").unwrap().known_as("sha256=BBB");
        assert_ne!(key(&file(known(&a))), key(&file(other)));
        let plain = key(&file(a.put(b"print(1)\n").unwrap()));
        assert_ne!(plain, key(&file(known(&a))));
        // Hashing the bytes needs them; a known name does not.
        let cut = b.put(b"gone").unwrap();
        b.fail_for_test();
        assert!(input_key(&file(cut.clone()), &[], 0, Compression::Zstd { level: 3 }).is_err());
        assert!(input_key(
            &file(cut.known_as("sha256=CCC")),
            &[],
            0,
            Compression::Zstd { level: 3 }
        )
        .is_ok());
    }

    /// The uncompressed bytes of a layer blob in the cache.
    fn tar_of(cache: &Cache, blob: &LayerBlob) -> Vec<u8> {
        let f = std::fs::File::open(cache.blob_path(&blob.digest)).unwrap();
        let mut out = Vec::new();
        decompressed(&blob.media_type, f)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(Digest::of(&out), blob.diff_id);
        out
    }

    /// Three "wheels" of a shared layer: a few files each, one bigger than
    /// a compression chunk.
    fn wheel(name: &str, files: usize) -> Vec<Entry> {
        (0..files)
            .map(|i| {
                let len = if i == 0 { (1 << 20) + 4321 } else { 100 + i };
                let bytes = (0..len).map(|j| (j * 31 + i + name.len()) as u8).collect();
                Entry::data(&format!("site/{name}/f{i}.py"), bytes, 0o644)
            })
            .collect()
    }

    /// Wheel "a" with `lib` as its `site/a/lib.so`.
    fn with_lib(lib: SpoolSlice) -> Vec<Entry> {
        let mut e = wheel("a", 2);
        e.push(Entry {
            path: "site/a/lib.so".into(),
            kind: EntryKind::Spooled(lib),
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        e
    }

    fn parted(wheels: &[Vec<Entry>]) -> (Vec<Entry>, Vec<usize>) {
        let mut entries = vec![Entry {
            path: "site".into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
        }];
        let mut parts = Vec::new();
        for w in wheels {
            parts.push(entries.len());
            entries.extend(w.iter().cloned());
        }
        (entries, parts)
    }

    /// A layer cut into parts holds the same tar stream as the layer whole;
    /// a layer sharing parts with one built before copies their compressed
    /// bytes, and gives the same blob as a cache that never saw them.
    #[test]
    fn parts_built_before_are_copied_and_change_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let warm = Cache::open(dir.path().join("warm")).unwrap();
        for c in [
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 3 },
        ] {
            let (a, b, b2, c3) = (wheel("a", 3), wheel("b", 2), wheel("b", 4), wheel("c", 2));
            let (entries, parts) = parted(&[a.clone(), b, c3.clone()]);
            let whole = build_layer_fresh(&entries, &[], 0, c, &warm).unwrap();
            let (first, copied) = build_parted(&entries, &parts, 0, c, &warm, true).unwrap();
            assert_eq!(copied, 0);
            assert_eq!(first.diff_id, whole.diff_id);
            assert_eq!(tar_of(&warm, &first), tar_of(&warm, &whole));
            assert_ne!(first.digest, whole.digest, "parts are compressed apart");
            // One wheel bumped: the head (the directory) and the other
            // two wheels are copied.
            let (bumped, parts) = parted(&[a, b2, c3]);
            let (second, copied) = build_parted(&bumped, &parts, 0, c, &warm, true).unwrap();
            assert_eq!(copied, 3, "{c:?}");
            let cold = Cache::open(dir.path().join(format!("cold-{c:?}"))).unwrap();
            let (fresh, copied) = build_parted(&bumped, &parts, 0, c, &cold, true).unwrap();
            assert_eq!(copied, 0);
            assert_eq!(second.digest, fresh.digest);
            assert_eq!(second.diff_id, fresh.diff_id);
            let again = build_layer_fresh(&bumped, &parts, 0, c, &warm).unwrap();
            assert_eq!(again.digest, second.digest);
            tar_of(&warm, &second);
            // The memo of the whole layer knows the parts too.
            let hit = build_layer_reporting(&bumped, &parts, 0, c, &cold).unwrap();
            assert!(!hit.reused, "the whole layer's key holds its parts");
            assert_eq!(hit.parts_copied, 4);
            assert_eq!(hit.blob.digest, fresh.digest);
        }
    }

    /// A file with a deflated form (a wheel's member) goes into a gzip
    /// layer as its stream, in a gzip member of its own: the layer holds
    /// the stream's bytes as they are and inflates to the same tar as
    /// without it; the key tells the two apart; a parted layer copying
    /// such a part equals a cold build; zstd ignores the stream.
    #[test]
    fn deflated_files_go_into_gzip_layers_as_their_streams() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let lib: Vec<u8> = (0..300_000u32).map(|i| (i % 89 + i / 5003) as u8).collect();
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&lib).unwrap();
        let raw = enc.finish().unwrap();
        // The stream at offset 7 of another file, as in a wheel.
        let held = dir.path().join("w.whl");
        std::fs::write(&held, [&b"zipzip!"[..], &raw, b"central"].concat()).unwrap();
        let file = Arc::new(std::fs::File::open(&held).unwrap());
        let spool = Spool::new_in(dir.path()).unwrap();
        let slice = spool.put(&lib).unwrap().known_as("sha256=LIB");
        let d = || {
            let crc = libdeflater::crc32(&lib);
            Deflated::new(file.clone(), 7, raw.len() as u64, crc, "w@7".into())
        };
        let layer = |lib: SpoolSlice| {
            let mut e = with_lib(lib);
            e.extend(wheel("b", 2));
            parted(&[e])
        };
        let (with, parts) = layer(slice.clone().deflated_as(d()));
        let (plain, _) = layer(slice.clone());
        let gz = Compression::Gzip { level: 1 };
        let a = build_layer_fresh(&with, &[], 0, gz, &cache).unwrap();
        let b = build_layer_fresh(&plain, &[], 0, gz, &cache).unwrap();
        assert_eq!(tar_of(&cache, &a), tar_of(&cache, &b));
        assert_ne!(a.digest, b.digest);
        let blob = std::fs::read(cache.blob_path(&a.digest)).unwrap();
        assert!(
            blob.windows(raw.len()).any(|w| w == raw),
            "the stream is not in the layer"
        );
        assert!(blob.len() < std::fs::read(cache.blob_path(&b.digest)).unwrap().len());
        assert_ne!(
            input_key(&with, &[], 0, gz).unwrap(),
            input_key(&plain, &[], 0, gz).unwrap()
        );
        // Parted: copying the part gives a cold build's bytes.
        let (first, _) = build_parted(&with, &parts, 0, gz, &cache, true).unwrap();
        let (second, copied) = build_parted(&with, &parts, 0, gz, &cache, true).unwrap();
        assert_eq!(copied, 2);
        let cold = Cache::open(dir.path().join("cold")).unwrap();
        let (fresh, _) = build_parted(&with, &parts, 0, gz, &cold, false).unwrap();
        assert_eq!(
            (first.digest.clone(), second.digest),
            (fresh.digest, first.digest.clone())
        );
        assert_eq!(tar_of(&cache, &first), tar_of(&cache, &b));
        // A part built ahead (not hashed: its deflated member is not even
        // read) gives the layer the same bytes and diff_id when copied.
        let early = Cache::open(dir.path().join("early")).unwrap();
        let part = &with[parts[0]..];
        assert!(!build_part_ahead(part, 0, gz, &early).unwrap());
        let (ahead, copied) = build_parted(&with, &parts, 0, gz, &early, true).unwrap();
        assert_eq!(copied, 1);
        assert_eq!(
            (&ahead.digest, &ahead.diff_id),
            (&first.digest, &first.diff_id)
        );
        // zstd compresses the plain bytes whatever the slice holds.
        let z = Compression::Zstd { level: 3 };
        let za = build_layer_fresh(&with, &[], 0, z, &cache).unwrap();
        let zb = build_layer_fresh(&plain, &[], 0, z, &cache).unwrap();
        assert_eq!(za.digest, zb.digest);
    }

    /// A wheel's member read packed from the wheel ([`Packed`]) makes the
    /// layer a spooled copy of its bytes makes, its stream taken as it is;
    /// a stream with bytes after it inside the member is compressed like
    /// any file instead (the same tar); a damaged member fails the layer,
    /// naming it, and leaves nothing in the cache.
    #[test]
    fn packed_members_make_the_layers_spooled_ones_make() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let lib: Vec<u8> = (0..300_000u32).map(|i| (i % 89 + i / 5003) as u8).collect();
        let crc = libdeflater::crc32(&lib);
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&lib).unwrap();
        let raw = enc.finish().unwrap();
        let held = dir.path().join("w.whl");
        std::fs::write(&held, [&b"zipzip!"[..], &raw, b"JUNK", b"central"].concat()).unwrap();
        let file = Arc::new(std::fs::File::open(&held).unwrap());
        let stream = |len: usize| Deflated::new(file.clone(), 7, len as u64, crc, "w@7".into());
        // Raw bytes of `len` from offset 7 that must inflate to `crc`.
        let packed = |len: usize, crc: u32| {
            let p = Packed::new(
                file.clone(),
                7,
                len as u64,
                lib.len() as u64,
                crc,
                true,
                "w.whl: `lib.so`",
            );
            SpoolSlice::packed(p).known_as("sha256=LIB")
        };
        let layer = |lib: SpoolSlice| {
            let mut e = with_lib(lib);
            e.extend(wheel("b", 2));
            parted(&[e]).0
        };
        let gz = Compression::Gzip { level: 1 };
        let spool = Spool::new_in(dir.path()).unwrap();
        let spooled = spool.put(&lib).unwrap().known_as("sha256=LIB");
        let one = Cache::open(dir.path().join("one")).unwrap();
        let want = build_layer_fresh(
            &layer(spooled.deflated_as(stream(raw.len()))),
            &[],
            0,
            gz,
            &one,
        )
        .unwrap();
        let two = Cache::open(dir.path().join("two")).unwrap();
        let got = build_layer_fresh(
            &layer(packed(raw.len(), crc).deflated_as(stream(raw.len()))),
            &[],
            0,
            gz,
            &two,
        )
        .unwrap();
        assert_eq!((&got.digest, &got.diff_id), (&want.digest, &want.diff_id));
        // zstd reads the packed bytes as well.
        let z = Compression::Zstd { level: 3 };
        let zs = build_layer_fresh(&layer(spool.put(&lib).unwrap()), &[], 0, z, &one).unwrap();
        let zp = build_layer_fresh(&layer(packed(raw.len(), crc)), &[], 0, z, &two).unwrap();
        assert_eq!(zs.digest, zp.digest);

        // The member counts the four bytes after the stream as its own.
        let three = Cache::open(dir.path().join("three")).unwrap();
        let junk = raw.len() + 4;
        let j = build_layer_fresh(
            &layer(packed(junk, crc).deflated_as(stream(junk))),
            &[],
            0,
            gz,
            &three,
        )
        .unwrap();
        assert_eq!(tar_of(&three, &j), tar_of(&one, &want));
        let blob = std::fs::read(three.blob_path(&j.digest)).unwrap();
        assert!(
            !blob.windows(raw.len()).any(|w| w == raw),
            "a stream with junk went in"
        );
        // A part built ahead takes the stream unread; the layer copying it
        // finds it is not whole and is written afresh, as a cold build.
        let with_junk = |len| {
            let lib = packed(len, crc).deflated_as(stream(len));
            parted(&[wheel("b", 2), with_lib(lib)])
        };
        for len in [raw.len(), junk] {
            let (entries, parts) = with_junk(len);
            let early = Cache::open(dir.path().join(format!("early{len}"))).unwrap();
            assert!(!build_part_ahead(&entries[parts[1]..], 0, gz, &early).unwrap());
            let (ahead, copied) = build_parted(&entries, &parts, 0, gz, &early, true).unwrap();
            assert_eq!(copied, usize::from(len == raw.len()), "{len}");
            let cold = Cache::open(dir.path().join(format!("cold{len}"))).unwrap();
            let (fresh, _) = build_parted(&entries, &parts, 0, gz, &cold, false).unwrap();
            assert_eq!(
                (&ahead.digest, &ahead.diff_id),
                (&fresh.digest, &fresh.diff_id)
            );
        }

        // Damaged: an error that names the member and the problem; no
        // layer, memo or temporary file is left.
        let four = Cache::open(dir.path().join("four")).unwrap();
        let bad = layer(packed(raw.len(), crc ^ 1).deflated_as(stream(raw.len())));
        let err = build_layer(&bad, 0, gz, &four).unwrap_err().to_string();
        assert!(err.contains("w.whl: `lib.so`: CRC-32 mismatch"), "{err}");
        let files = walkdir::WalkDir::new(dir.path().join("four"))
            .into_iter()
            .filter(|e| e.as_ref().unwrap().file_type().is_file())
            .count();
        assert_eq!(files, 0, "the failed layer left files");
        let err =
            build_layer_fresh(&layer(packed(raw.len(), crc ^ 1)), &[], 0, z, &four).unwrap_err();
        assert!(err.to_string().contains("CRC-32 mismatch"), "{err}");
    }

    /// A part whose cached bytes were damaged is compressed again; a part
    /// built ahead, in a blob of its own, is copied from there.
    #[test]
    fn damaged_parts_are_rebuilt_and_parts_built_ahead_are_used() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let gz = Compression::Gzip { level: 1 };
        let (a, b) = (wheel("a", 2), wheel("b", 3));
        let (entries, parts) = parted(&[a.clone(), b.clone()]);
        let (want, _) = build_parted(&entries, &parts, 0, gz, &cache, true).unwrap();
        // Damage the blob the parts point into.
        let path = cache.blob_path(&want.digest);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let (again, copied) = build_parted(&entries, &parts, 0, gz, &cache, true).unwrap();
        assert!(copied < 3, "a damaged part was copied");
        assert_eq!(again.digest, want.digest);
        tar_of(&cache, &again);

        let other = Cache::open(dir.path().join("other")).unwrap();
        assert!(!build_part_ahead(&a, 0, gz, &other).unwrap());
        assert!(!build_part_ahead(&b, 0, gz, &other).unwrap());
        assert!(build_part_ahead(&b, 0, gz, &other).unwrap(), "built twice");
        let (ahead, copied) = build_parted(&entries, &parts, 0, gz, &other, true).unwrap();
        assert_eq!(copied, 2);
        // Copied, the parts are known by the layer's blob, not kept aside.
        let key = part_key(&a, 0, gz).unwrap();
        assert!(matches!(
            parts::find(&other, &key),
            Some(parts::Found::Blob { .. })
        ));
        assert_eq!(
            (&ahead.digest, &ahead.diff_id),
            (&want.digest, &want.diff_id)
        );
    }

    /// Members become parts after a first part of every directory (and the
    /// head's own entries); members that collide are merged in one part.
    #[test]
    fn members_become_parts_unless_they_collide() {
        let paths = |es: &[Entry]| es.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        let file = |p: &str, body: &str| Entry::data(p, body.as_bytes().to_vec(), 0o644);
        let head = vec![file("opt/env/conda-meta/history", "h")];
        let g = LayerGroup::in_parts(
            "two",
            head.clone(),
            vec![
                vec![file("opt/env/lib/b.py", "b"), file("opt/env/bin/b", "b")],
                vec![file("opt/env/lib/a.py", "a")],
            ],
        );
        assert_eq!(
            paths(&g.entries),
            [
                "opt",
                "opt/env",
                "opt/env/bin",
                "opt/env/conda-meta",
                "opt/env/conda-meta/history",
                "opt/env/lib",
                "opt/env/bin/b",
                "opt/env/lib/b.py",
                "opt/env/lib/a.py",
            ]
        );
        assert_eq!(g.parts, [6, 8]);
        // The same path in two members: one part, the later member's file.
        let g = LayerGroup::in_parts(
            "clash",
            head.clone(),
            vec![
                vec![file("opt/env/x", "first")],
                vec![file("opt/env/x", "second")],
            ],
        );
        assert!(g.parts.is_empty());
        let x = g.entries.iter().find(|e| e.path == "opt/env/x").unwrap();
        assert!(matches!(&x.kind, EntryKind::Data(d) if d.as_slice() == b"second"));
        // A file where another member has a directory: one part too.
        let g = LayerGroup::in_parts(
            "file-and-dir",
            Vec::new(),
            vec![vec![file("opt/env/x", "f")], vec![file("opt/env/x/y", "g")]],
        );
        assert!(g.parts.is_empty());
    }

    #[test]
    fn part_ranges_ignore_empty_and_unsorted_cuts() {
        assert_eq!(part_ranges(5, &[]), vec![0..5]);
        assert_eq!(part_ranges(5, &[3, 0, 1, 3, 9]), vec![0..1, 1..3, 3..5]);
        assert_eq!(part_ranges(0, &[0]), vec![0..0]);
    }

    #[test]
    fn a_vanished_input_is_a_layer_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let entries = vec![Entry {
            path: "gone".into(),
            kind: EntryKind::File {
                src: dir.path().join("gone"),
                size: 3,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
        }];
        let gz = Compression::Gzip { level: 1 };
        let e = build_layer_fresh(&entries, &[], 0, gz, &cache).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<FsError>(),
                Some(FsError::LayerInput { path: None, .. })
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("reading layer input: "), "{e}");
        // The memoised path hashes the inputs first and names the file.
        let e = build_layer(&entries, 0, gz, &cache).unwrap_err();
        match e.downcast_ref::<FsError>() {
            Some(FsError::LayerInput { path: Some(p), .. }) => {
                assert_eq!(*p, dir.path().join("gone"))
            }
            other => panic!("{other:?}"),
        }
    }
}
