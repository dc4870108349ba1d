//! A package's unpacked files kept in the cache by the package's digest,
//! so a warm build takes slices of the kept bytes instead of unpacking the
//! package again (a wheel's inflate, a `.deb`'s xz), and a layer found in
//! the cache never reads them at all (the slices are known by name).
//!
//! `<hex>.data` holds the files' bytes end to end, written as a [`Spool`]
//! while the package is unpacked; `<hex>` is the index: the sha256 of the
//! rest, a newline, then JSON with the data file's stamp and whatever the
//! ecosystem needs to rebuild its entries (paths, offsets, modes). The
//! index is used only when its digest matches and the data file is the one
//! it was written for (same size, times, inode): anything else unpacks the
//! package again. The index is written after the data file is in place, so
//! a build killed in between leaves nothing used.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Spool;
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};
use kiln_store::cache::{file_stamp, write_atomic, Cache, CacheBucket};

/// Where the package `digest`'s files are kept in `bucket`, and the temp
/// file that unpacking writes before [`Kept::keep`] puts it there.
pub struct Kept {
    index: PathBuf,
    data: PathBuf,
}

/// The index's JSON: the data file's stamp beside the caller's fields.
#[derive(Serialize)]
struct Envelope<'a, T> {
    data: String,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Deserialize)]
struct Opened<T> {
    data: String,
    #[serde(flatten)]
    body: T,
}

impl Kept {
    pub fn new(cache: &Cache, bucket: CacheBucket, digest: &Digest) -> Kept {
        Kept {
            index: cache.entry(bucket, digest.hex()),
            data: cache.entry(bucket, format!("{}.data", digest.hex())),
        }
    }

    /// The index and an open spool over the data file, if both are whole
    /// and belong together.
    pub fn open<T: DeserializeOwned>(&self) -> Option<(T, Arc<Spool>)> {
        let body = std::fs::read(&self.index).ok()?;
        let nl = body.iter().position(|c| *c == b'\n')?;
        let (sum, json) = (&body[..nl], &body[nl + 1..]);
        if sum != Digest::of(json).to_string().as_bytes() {
            return None;
        }
        let opened: Opened<T> = serde_json::from_slice(json).ok()?;
        let file = File::open(&self.data).ok()?;
        if file_stamp(&file.metadata().ok()?) != opened.data {
            return None;
        }
        Some((opened.body, Spool::open_file(file).ok()?))
    }

    /// A new unnamed-until-kept file in the cache's `tmp` bucket and a
    /// spool appending to it, for unpacking `what` into.
    pub fn spool(cache: &Cache, what: &str) -> Result<(tempfile::NamedTempFile, Arc<Spool>)> {
        let dir = cache.bucket(CacheBucket::Tmp);
        let context = || format!("making a file to unpack {what} in {}", dir.display());
        let tmp = tempfile::Builder::new()
            .prefix(&kiln_store::temp_prefix("unpack"))
            .tempfile_in(&dir)
            .io_context(context)?;
        let spool = Spool::over(tmp.as_file().try_clone().io_context(context)?);
        Ok((tmp, spool))
    }

    /// Put the data file `tmp` in place, then the index `body` describing it.
    pub fn keep<T: Serialize>(
        &self,
        tmp: tempfile::NamedTempFile,
        body: &T,
    ) -> std::io::Result<()> {
        if let Some(dir) = self.data.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = tmp.persist(&self.data).map_err(|e| e.error)?;
        let json = serde_json::to_vec(&Envelope {
            data: file_stamp(&file.metadata()?),
            body,
        })?;
        let mut bytes = format!("{}\n", Digest::of(&json)).into_bytes();
        bytes.extend_from_slice(&json);
        write_atomic(&self.index, &bytes);
        Ok(())
    }

    /// Drop the kept files (unusable: they failed a later check).
    pub fn forget(&self) {
        let _ = std::fs::remove_file(&self.index);
        let _ = std::fs::remove_file(&self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Body {
        name: String,
        at: Vec<(u64, u64)>,
    }

    #[test]
    fn kept_files_are_found_only_whole_and_together() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d = Digest::of(b"package");
        let kept = Kept::new(&cache, CacheBucket::AptUnpacked, &d);
        assert!(kept.open::<Body>().is_none());
        let (tmp, spool) = Kept::spool(&cache, "p").unwrap();
        let a = spool.put(b"hello").unwrap();
        let b = spool.put(b" world").unwrap();
        let body = Body {
            name: "p".into(),
            at: vec![
                (a.spool_offset().unwrap(), a.len()),
                (b.spool_offset().unwrap(), b.len()),
            ],
        };
        kept.keep(tmp, &body).unwrap();
        assert_eq!(
            std::fs::read_dir(cache.bucket(CacheBucket::Tmp))
                .unwrap()
                .count(),
            0
        );
        let (back, spool) = kept.open::<Body>().unwrap();
        assert_eq!(back, body);
        assert_eq!(spool.slice_at(5, 6).unwrap().read_all().unwrap(), b" world");

        // A data file written again (another stamp) is not the one indexed.
        let index = std::fs::read(&kept.index).unwrap();
        std::fs::write(&kept.data, b"hello world").unwrap();
        let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(7);
        File::options()
            .write(true)
            .open(&kept.data)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(kept.open::<Body>().is_none());

        // A damaged index is not read.
        let (tmp, _) = Kept::spool(&cache, "p").unwrap();
        kept.keep(tmp, &body).unwrap();
        assert!(kept.open::<Body>().is_some());
        let mut bad = std::fs::read(&kept.index).unwrap();
        let n = bad.len();
        bad[n - 3] ^= 1;
        std::fs::write(&kept.index, &bad).unwrap();
        assert!(kept.open::<Body>().is_none());
        assert_ne!(index, bad);
        kept.forget();
        assert!(!&kept.data.exists());
    }
}
