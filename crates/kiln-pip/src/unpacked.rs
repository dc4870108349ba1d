//! A wheel's members unpacked once and kept in the cache by the wheel's
//! digest, as uv keeps unpacked wheels: a warm build takes slices of the
//! kept bytes instead of inflating every wheel again, and a layer found in
//! the cache never reads them at all (its key uses the members' names,
//! [`crate::wheel::member_id`]).
//!
//! Kept by [`Kept`] in `pip-unpacked-v1`: the members' bytes end to end,
//! written by the parallel inflater as a spool, and an index naming the
//! wheel and each member's path, place, mode bit, name and deflate stream.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_fs::layer::{Content, Deflated, Kept};
use kiln_store::cache::{Cache, CacheBucket};

use crate::wheel::{held_in_memory, read_wheel, stream_id, Keep, WheelFile};

/// What [`Index::format`] must be: 2 since members keep their deflate
/// streams, 3 since members from 16 KiB (not 64) do, 4 since members are
/// known by their place in the wheel rather than a sha256. The index
/// records which members keep their streams, so one written under other
/// rules would give a warm build other gzip layer bytes than a cold one.
const FORMAT: u32 = 4;

#[derive(Serialize, Deserialize)]
struct Index {
    #[serde(default)]
    format: u32,
    /// The wheel these members came from.
    wheel: String,
    members: Vec<Member>,
}

#[derive(Serialize, Deserialize)]
struct Member {
    path: String,
    offset: u64,
    len: u64,
    executable: bool,
    /// The name the member is known by ([`crate::wheel::member_id`]).
    id: String,
    /// The member's deflate stream in the wheel, when a gzip layer takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deflated: Option<KeptStream>,
}

#[derive(Serialize, Deserialize)]
struct KeptStream {
    offset: u64,
    len: u64,
    crc32: u32,
}

/// Every regular file of the verified wheel `digest` (at `wheel`, named
/// `filename`), in the order the wheel has them. The members the
/// installer reads ([`held_in_memory`]) are in memory; the rest are
/// slices of the kept data file, each known by its name.
pub(crate) fn unpack(
    cache: &Cache,
    digest: &Digest,
    wheel: &Path,
    filename: &str,
) -> Result<Vec<WheelFile>> {
    members(cache, digest, wheel, filename)?
        .into_iter()
        .map(|mut f| {
            if held_in_memory(&f.path) {
                f.data = Content::from(f.bytes(filename)?.into_owned());
            }
            Ok(f)
        })
        .collect()
}

/// The wheel's members as kept, unpacked and kept now if they were not:
/// every one a slice of the data file, known by its name.
pub(crate) fn members(
    cache: &Cache,
    digest: &Digest,
    wheel: &Path,
    filename: &str,
) -> Result<Vec<WheelFile>> {
    let kept = Kept::new(cache, CacheBucket::PipUnpacked, digest);
    if let Some(files) = kept_members(&kept, digest, wheel) {
        return Ok(files);
    }
    let (tmp, spool) = Kept::spool(cache, filename)?;
    let files = read_wheel(
        wheel,
        filename,
        Some(Keep {
            spool: &spool,
            wheel: digest,
        }),
    )?;
    // Best effort: members that cannot be kept are unpacked again next
    // time; the open spool serves this build either way.
    if let Some(index) = index_of(&files, digest) {
        let _ = kept.keep(tmp, &index);
    }
    Ok(files)
}

/// The kept members of `digest`, if they are whole and of this format.
fn kept_members(kept: &Kept, digest: &Digest, wheel: &Path) -> Option<Vec<WheelFile>> {
    let (index, spool) = kept.open::<Index>()?;
    if index.format != FORMAT || index.wheel != digest.to_string() {
        return None;
    }
    // The wheel (content-addressed, verified when it came) holds the
    // streams; opened once, and only if a member has one.
    let streams = if index.members.iter().any(|k| k.deflated.is_some()) {
        let w = std::sync::Arc::new(File::open(wheel).ok()?);
        Some((w.metadata().ok()?.len(), w))
    } else {
        None
    };
    index
        .members
        .into_iter()
        .map(|k| {
            let mut slice = spool.slice_at(k.offset, k.len).ok()?.known_as(k.id);
            if let Some(d) = k.deflated {
                let (size, w) = streams.as_ref()?;
                if d.offset.checked_add(d.len)? > *size {
                    return None;
                }
                let id = stream_id(digest, d.offset);
                slice = slice.deflated_as(Deflated::new(w.clone(), d.offset, d.len, d.crc32, id));
            }
            Some(WheelFile {
                path: k.path,
                data: Content::Spooled(slice),
                executable: k.executable,
            })
        })
        .collect()
}

/// The index of `files`, all spooled and known by their names.
fn index_of(files: &[WheelFile], digest: &Digest) -> Option<Index> {
    let members = files
        .iter()
        .map(|f| match &f.data {
            Content::Spooled(s) => Some(Member {
                path: f.path.clone(),
                offset: s.offset(),
                len: s.len(),
                executable: f.executable,
                id: s.known_name()?.to_string(),
                deflated: s.deflated().map(|d| KeptStream {
                    offset: d.offset(),
                    len: d.len(),
                    crc32: d.crc32(),
                }),
            }),
            Content::Held(_) => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Index {
        format: FORMAT,
        wheel: digest.to_string(),
        members,
    })
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

    /// Paths, bytes, held or not, and the names spooled members are known by.
    fn seen(files: &[WheelFile]) -> Vec<(String, Vec<u8>, bool, Option<String>)> {
        files
            .iter()
            .map(|f| {
                let known = match &f.data {
                    Content::Spooled(s) => s.known_name().map(str::to_string),
                    Content::Held(_) => None,
                };
                (
                    f.path.clone(),
                    f.bytes("w").unwrap().into_owned(),
                    matches!(f.data, Content::Held(_)),
                    known,
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
        let files = unpack(&cache, &digest, &wheel, filename).unwrap();
        let first = seen(&files);
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
        // Spooled members are known by their place in the wheel, each its own.
        let ids: Vec<&str> = first.iter().filter_map(|s| s.3.as_deref()).collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(ids
            .iter()
            .all(|id| id.starts_with(&format!("member:{}@", digest.hex()))));
        let data = cache.entry(CacheBucket::PipUnpacked, format!("{}.data", digest.hex()));
        assert!(data.is_file());
        // Nothing is left in tmp.
        assert_eq!(
            std::fs::read_dir(cache.bucket(CacheBucket::Tmp))
                .unwrap()
                .count(),
            0
        );

        // Kept: the same members, known by the same names, with the wheel
        // gone (a layer key reads nothing).
        std::fs::rename(&wheel, dir.path().join("away")).unwrap();
        let files = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files), first);

        // A data file that changed (same length, other bytes) or a damaged
        // index is not used: the wheel is unpacked again.
        std::fs::rename(dir.path().join("away"), &wheel).unwrap();
        let mut changed = std::fs::read(&data).unwrap();
        changed[0] ^= 1;
        std::fs::write(&data, &changed).unwrap();
        let files = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files), first);
        let index = cache.entry(CacheBucket::PipUnpacked, digest.hex());
        let mut damaged = std::fs::read(&index).unwrap();
        let at = damaged.len() - 3;
        damaged[at] ^= 1;
        std::fs::write(&index, damaged).unwrap();
        std::fs::write(&data, b"").unwrap();
        let files = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files), first);
        // ...and kept again: usable with the wheel gone.
        std::fs::remove_file(&wheel).unwrap();
        let files = unpack(&cache, &digest, &wheel, filename).unwrap();
        assert_eq!(seen(&files), first);
        // The index of another wheel is not taken for this one.
        let other = Digest::of(b"another wheel");
        std::fs::copy(&index, cache.entry(CacheBucket::PipUnpacked, other.hex())).unwrap();
        let data_of_other = cache.entry(CacheBucket::PipUnpacked, format!("{}.data", other.hex()));
        std::fs::rename(&data, data_of_other).unwrap();
        let kept = Kept::new(&cache, CacheBucket::PipUnpacked, &other);
        assert!(kept.open::<Index>().is_some(), "whole and together");
        assert!(kept_members(&kept, &other, &wheel).is_none());
    }

    /// A big deflated member keeps its stream in the wheel, cold and kept
    /// alike; an index from before streams were kept is not used (its
    /// members would go into gzip layers as other bytes).
    #[test]
    fn kept_members_keep_their_deflate_streams() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let filename = "demo-1.0-py3-none-any.whl";
        let lib: Vec<u8> = (0..200_000u32).map(|i| (i % 89) as u8).collect();
        let bytes = wheel_bytes(&[
            ("demo/__init__.py", b"print('hi')\n"),
            ("demo/lib.so", &lib),
        ]);
        let digest = cache.put(&bytes).unwrap();
        let wheel = cache.blob_path(&digest);
        let streams = |files: &[WheelFile]| -> Vec<Option<(u64, u64, u32, String)>> {
            files
                .iter()
                .map(|f| match &f.data {
                    Content::Spooled(s) => s
                        .deflated()
                        .map(|d| (d.offset(), d.len(), d.crc32(), d.id().to_string())),
                    Content::Held(_) => None,
                })
                .collect()
        };
        let cold = unpack(&cache, &digest, &wheel, filename).unwrap();
        let warm = unpack(&cache, &digest, &wheel, filename).unwrap();
        let index = cache.entry(CacheBucket::PipUnpacked, digest.hex());
        let kept = Kept::new(&cache, CacheBucket::PipUnpacked, &digest);
        assert!(kept_members(&kept, &digest, &wheel).is_some());
        let (s_cold, s_warm) = (streams(&cold), streams(&warm));
        assert_eq!(s_cold, s_warm);
        let Some((offset, len, crc, _)) = s_cold[1].clone() else {
            panic!("lib.so kept no stream: {s_cold:?}")
        };
        assert!(s_cold[0].is_none());
        assert_eq!(crc, libdeflater::crc32(&lib));
        let mut back = Vec::new();
        let stream = &bytes[offset as usize..(offset + len) as usize];
        std::io::Read::read_to_end(&mut flate2::read::DeflateDecoder::new(stream), &mut back)
            .unwrap();
        assert_eq!(back, lib);
        // The same index without its format (as written before streams were
        // kept), or of format 2 (when only members from 64 KiB kept theirs):
        // not used.
        let body = std::fs::read(&index).unwrap();
        let nl = body.iter().position(|c| *c == b'\n').unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body[nl + 1..]).unwrap();
        assert_eq!(json["format"], FORMAT);
        for format in [None, Some(2)] {
            let mut json = json.clone();
            match format {
                None => drop(json.as_object_mut().unwrap().remove("format")),
                Some(f) => json["format"] = f.into(),
            }
            let json = serde_json::to_vec(&json).unwrap();
            let mut old = format!("{}\n", Digest::of(&json)).into_bytes();
            old.extend_from_slice(&json);
            std::fs::write(&index, old).unwrap();
            assert!(kept_members(&kept, &digest, &wheel).is_none(), "{format:?}");
            let again = unpack(&cache, &digest, &wheel, filename).unwrap();
            assert_eq!(streams(&again), s_cold);
        }
    }
}
