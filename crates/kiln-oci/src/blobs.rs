//! Where each blob of an image can be read from. Blobs of a registry or
//! OCI-layout base are fetched into the cache only when an output needs
//! their bytes, so a push to the registry the base lives in never
//! downloads them.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

use oci_client::Reference;

use crate::registry::Registry;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_store::cache::Cache;

#[derive(Clone, Debug)]
pub enum Origin {
    Registry(Reference),
    Layout(PathBuf),
}

pub struct Blobs<'a> {
    pub cache: &'a Cache,
    pub registry: Option<&'a Registry>,
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
    pub fn add_origin(&mut self, digest: &Digest, size: u64, origin: Origin) {
        self.origins.entry(digest.clone()).or_insert((origin, size));
    }

    pub fn origin(&self, digest: &Digest) -> Option<&Origin> {
        self.origins.get(digest).map(|(o, _)| o)
    }

    /// A verified cache path for the blob, fetching or importing it first if needed.
    pub fn path(&self, digest: &Digest) -> Result<PathBuf> {
        if let Some(p) = self.cache.verified(digest)? {
            return Ok(p);
        }
        match self.origins.get(digest) {
            Some((Origin::Registry(r), size)) => {
                let reg = self.registry.ok_or_else(|| {
                    Error::network(format!(
                        "offline: blob {digest} of {} is not in the cache (run `kiln fetch` or `kiln cache import` first)",
                        r.whole()
                    ))
                })?;
                reg.fetch_blob(r, digest, *size, self.cache)?;
            }
            Some((Origin::Layout(dir), _)) => {
                let src = dir.join("blobs/sha256").join(digest.hex());
                let f = File::open(&src).map_err(|e| {
                    Error::input(format!(
                        "OCI layout {}: blob {digest} is missing: {e}",
                        dir.display()
                    ))
                })?;
                self.cache
                    .put_reader(std::io::BufReader::new(f), digest)
                    .map_err(|e| match e {
                        Error::Network(m) => {
                            Error::input(format!("OCI layout {}: {m}", dir.display()))
                        }
                        other => other,
                    })?;
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
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest)?;
        File::open(&p).io_context(|| format!("opening {}", p.display()))
    }
}
