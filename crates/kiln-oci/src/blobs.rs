//! Where each blob of an image can be read from. Blobs of a registry or
//! OCI-layout base are fetched into the cache only when an output needs
//! their bytes, so a push to the registry the base lives in never
//! downloads them.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

use oci_client::Reference;

use crate::registry::Registry;
use crate::{ImageError, RegistryError};
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_store::cache::Cache;

#[derive(Clone, Debug)]
pub(crate) enum Origin {
    Registry(Reference),
    Layout(PathBuf),
}

pub struct Blobs<'a> {
    pub(crate) cache: &'a Cache,
    registry: Option<&'a Registry>,
    origins: HashMap<Digest, (Origin, u64)>,
}

impl<'a> Blobs<'a> {
    pub fn new(cache: &'a Cache, registry: Option<&'a Registry>) -> Self {
        Blobs {
            cache,
            registry,
            origins: HashMap::new(),
        }
    }

    /// Record where a blob not yet in the cache can be found.
    pub(crate) fn add_origin(&mut self, digest: &Digest, size: u64, origin: Origin) {
        self.origins.entry(digest.clone()).or_insert((origin, size));
    }

    pub(crate) fn origin(&self, digest: &Digest) -> Option<&Origin> {
        self.origins.get(digest).map(|(o, _)| o)
    }

    /// A verified cache path for the blob, fetching or importing it first if needed.
    pub fn path(&self, digest: &Digest) -> Result<PathBuf> {
        if let Some(p) = self.cache.verified(digest)? {
            return Ok(p);
        }
        match self.origins.get(digest) {
            Some((Origin::Registry(r), size)) => {
                let reg = self.registry.ok_or_else(|| RegistryError::OfflineBlob {
                    digest: digest.clone(),
                    image: r.whole(),
                    hint: true,
                })?;
                reg.fetch_blob(r, digest, *size, self.cache)?;
            }
            Some((Origin::Layout(dir), _)) => {
                let src = dir.join("blobs/sha256").join(digest.hex());
                let f = File::open(&src).map_err(|source| ImageError::LayoutBlobMissing {
                    dir: dir.clone(),
                    digest: digest.clone(),
                    source,
                })?;
                self.cache.put_reader(std::io::BufReader::new(f), digest)?;
            }
            None => {
                return Err(Error::internal(format!(
                    "blob {digest} is neither cached nor fetchable"
                )))
            }
        }
        self.cache
            .verified(digest)?
            .ok_or_else(|| Error::internal(format!("blob {digest} vanished from the cache")))
    }

    /// Open a verified blob for reading.
    pub(crate) fn open(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).io_context(|| format!("opening {}", p.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_that_cannot_be_had() {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let mut blobs = Blobs::new(&cache, None);

        let d = Digest::of(b"layer");
        let r: Reference = "registry.example/app:1".parse().unwrap();
        blobs.add_origin(&d, 5, Origin::Registry(r));
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
        blobs.add_origin(&d, 11, Origin::Layout(layout.path().to_path_buf()));
        let err = blobs.path(&d).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<ImageError>(),
            Some(ImageError::LayoutBlobMissing { digest, .. }) if digest == &d
        ));
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with(&format!(
            "OCI layout {}: blob {d} is missing: ",
            layout.path().display()
        )));
    }
}
