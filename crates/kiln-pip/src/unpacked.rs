//! A wheel's members unpacked once and kept in the cache by the wheel's
//! digest, as uv keeps unpacked wheels: a warm build takes slices of the
//! kept bytes instead of inflating every wheel again, and a layer found in
//! the cache never reads them at all (its key uses the members' hashes).
//!
//! `pip-unpacked-v1/<wheel hex>.data` holds the members' bytes end to end,
//! written by the parallel inflater as a spool; `<wheel hex>` is the index:
//! the sha256 of the rest, a newline, then JSON naming the wheel, the data
//! file's stamp and each member's path, place, mode bit and RECORD hash.
//! The index is used only when its digest matches, it names this wheel and
//! the data file is the one it was written for (same size, times, inode):
//! anything else unpacks the wheel again. The index is written after the
//! data file is in place, so a build killed in between leaves nothing used.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_fs::layer::{Content, Spool};
use kiln_store::cache::{file_stamp, write_atomic, Cache, CacheBucket};

use crate::install::{content_hash, MemberHashes};
use crate::wheel::{held_in_memory, read_wheel, WheelFile};

#[derive(Serialize, Deserialize)]
struct Index {
    /// The wheel these members came from.
    wheel: String,
    /// [`file_stamp`] of the data file when the index was written.
    data: String,
    members: Vec<Kept>,
}

#[derive(Serialize, Deserialize)]
struct Kept {
    path: String,
    offset: u64,
    len: u64,
    executable: bool,
    /// RECORD form: `sha256=<urlsafe base64>`.
    hash: String,
}

/// Every regular file of the verified wheel `digest` (at `wheel`, named
/// `filename`), in the order the wheel has them, with their RECORD hashes.
/// The members the installer reads ([`held_in_memory`]) are in memory;
/// the rest are slices of the kept data file, each known by its hash.
pub(crate) fn unpack(
    cache: &Cache,
    digest: &Digest,
    wheel: &Path,
    filename: &str,
) -> Result<(Vec<WheelFile>, MemberHashes)> {
    finish(members(cache, digest, wheel, filename)?, filename)
}

/// The wheel's members as kept, unpacked and kept now if they were not:
/// every one a slice of the data file, known by its hash.
pub(crate) fn members(
    cache: &Cache,
    digest: &Digest,
    wheel: &Path,
    filename: &str,
) -> Result<Vec<WheelFile>> {
    let index = cache.entry(CacheBucket::PipUnpacked, digest.hex());
    let data = cache.entry(CacheBucket::PipUnpacked, format!("{}.data", digest.hex()));
    if let Some(files) = kept(&index, &data, digest) {
        return Ok(files);
    }
    let tmp_dir = cache.bucket(CacheBucket::Tmp);
    let tmp = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix("wheel"))
        .tempfile_in(&tmp_dir)
        .io_context(|| {
            format!(
                "making a file to unpack {filename} in {}",
                tmp_dir.display()
            )
        })?;
    let spool = Spool::over(
        tmp.as_file()
            .try_clone()
            .io_context(|| format!("making a file to unpack {filename}"))?,
    );
    let files = read_wheel(wheel, filename, Some(&spool))?;
    // Best effort: members that cannot be kept are unpacked again next
    // time; the open spool serves this build either way.
    let _ = keep(tmp, &files, digest, &index, &data);
    Ok(files)
}

/// The kept members of `digest`, if the index and data file are whole
/// and belong together.
fn kept(index: &Path, data: &Path, digest: &Digest) -> Option<Vec<WheelFile>> {
    let body = std::fs::read(index).ok()?;
    let nl = body.iter().position(|c| *c == b'\n')?;
    let (sum, json) = (&body[..nl], &body[nl + 1..]);
    if sum != Digest::of(json).to_string().as_bytes() {
        return None;
    }
    let index: Index = serde_json::from_slice(json).ok()?;
    if index.wheel != digest.to_string() {
        return None;
    }
    let file = File::open(data).ok()?;
    if file_stamp(&file.metadata().ok()?) != index.data {
        return None;
    }
    let spool = Spool::open_file(file).ok()?;
    index
        .members
        .into_iter()
        .map(|k| {
            let slice = spool.slice_at(k.offset, k.len).ok()?.known_as(k.hash);
            Some(WheelFile {
                path: k.path,
                data: Content::Spooled(slice),
                executable: k.executable,
            })
        })
        .collect()
}

/// Put the data file in place, then the index describing it.
fn keep(
    tmp: tempfile::NamedTempFile,
    files: &[WheelFile],
    digest: &Digest,
    index: &Path,
    data: &Path,
) -> std::io::Result<()> {
    let members = files
        .iter()
        .map(|f| match &f.data {
            Content::Spooled(s) => Some(Kept {
                path: f.path.clone(),
                offset: s.offset(),
                len: s.len(),
                executable: f.executable,
                hash: s.known_hash()?.to_string(),
            }),
            Content::Held(_) => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| std::io::Error::other("a member was not spooled"))?;
    if let Some(dir) = data.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = tmp.persist(data).map_err(|e| e.error)?;
    let index_json = serde_json::to_vec(&Index {
        wheel: digest.to_string(),
        data: file_stamp(&file.metadata()?),
        members,
    })?;
    let mut body = format!("{}\n", Digest::of(&index_json)).into_bytes();
    body.extend_from_slice(&index_json);
    write_atomic(index, &body);
    Ok(())
}

/// The members with their hashes; those the installer reads are read into memory.
fn finish(files: Vec<WheelFile>, filename: &str) -> Result<(Vec<WheelFile>, MemberHashes)> {
    let mut hashes = MemberHashes::new();
    let files = files
        .into_iter()
        .map(|mut f| {
            let hash = content_hash(&f.data)
                .io_context(|| format!("reading {} of {filename} back", f.path))?;
            if held_in_memory(&f.path) {
                f.data = Content::from(f.bytes(filename)?.into_owned());
            }
            hashes.insert(f.path.clone(), hash);
            Ok(f)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((files, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn wheel_bytes(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, data) in members {
            z.start_file(
                *name,
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
            z.write_all(data).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    /// Paths, bytes, held or not, and hashes of what `unpack` gave.
    fn seen(files: &[WheelFile], hashes: &MemberHashes) -> Vec<(String, Vec<u8>, bool, String)> {
        files
            .iter()
            .map(|f| {
                (
                    f.path.clone(),
                    f.bytes("w").unwrap().into_owned(),
                    matches!(f.data, Content::Held(_)),
                    hashes[&f.path].clone(),
                )
            })
            .collect()
    }

    #[test]
    fn a_wheel_is_unpacked_once_and_its_members_taken_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let filename = "demo-1.0-py3-none-any.whl";
        let bytes = wheel_bytes(&[
            ("demo/__init__.py", b"print('hi')\n"),
            ("demo/data.bin", &[7u8; 5000]),
            ("demo-1.0.dist-info/METADATA", b"Name: demo\nVersion: 1.0\n"),
        ]);
        let digest = cache.put(&bytes).unwrap();
        let wheel = cache.blob_path(&digest);
        let (files, hashes) = unpack(&cache, &digest, &wheel, filename).unwrap();
        let first = seen(&files, &hashes);
        assert_eq!(
            first
                .iter()
                .map(|(p, _, held, _)| (p.as_str(), *held))
                .collect::<Vec<_>>(),
            [
                ("demo/__init__.py", false),
                ("demo/data.bin", false),
                ("demo-1.0.dist-info/METADATA", true)
            ]
        );
        assert_eq!(first[0].1, b"print('hi')\n");
        assert_eq!(first[0].3, crate::install::record_hash(b"print('hi')\n"));
        let data = cache.entry(CacheBucket::PipUnpacked, format!("{}.data", digest.hex()));
        assert!(data.is_file());
        // Nothing is left in tmp.
        assert_eq!(
            std::fs::read_dir(cache.bucket(CacheBucket::Tmp))
                .unwrap()
                .count(),
            0
        );

        // Kept: the same members and hashes with the wheel gone, and the
        // spooled ones are known by their hash (a layer key reads nothing).
        std::fs::rename(&wheel, dir.path().join("away")).unwrap();
        let (files, hashes) = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files, &hashes), first);
        assert!(files.iter().all(|f| match &f.data {
            Content::Spooled(s) => s.known_hash() == Some(hashes[&f.path].as_str()),
            Content::Held(_) => held_in_memory(&f.path),
        }));

        // A data file that changed (same length, other bytes) or a damaged
        // index is not used: the wheel is unpacked again.
        std::fs::rename(dir.path().join("away"), &wheel).unwrap();
        let mut changed = std::fs::read(&data).unwrap();
        changed[0] ^= 1;
        std::fs::write(&data, &changed).unwrap();
        let (files, hashes) = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files, &hashes), first);
        let index = cache.entry(CacheBucket::PipUnpacked, digest.hex());
        let mut damaged = std::fs::read(&index).unwrap();
        let at = damaged.len() - 3;
        damaged[at] ^= 1;
        std::fs::write(&index, damaged).unwrap();
        std::fs::write(&data, b"").unwrap();
        let (files, hashes) = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files, &hashes), first);
        // ...and kept again: usable with the wheel gone.
        std::fs::remove_file(&wheel).unwrap();
        let (files, hashes) = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files, &hashes), first);
        // The index of another wheel is not taken for this one.
        let other = Digest::of(b"another wheel");
        std::fs::copy(&index, cache.entry(CacheBucket::PipUnpacked, other.hex())).unwrap();
        assert!(kept(
            &cache.entry(CacheBucket::PipUnpacked, other.hex()),
            &data,
            &other
        )
        .is_none());
    }
}
