//! What a base image already holds, read from its layers without running
//! anything: the merged filesystem view ([`Rootfs`]), from which the
//! resolvers read the package databases they care about.

use std::io::{BufReader, Read};
use std::path::PathBuf;

use crate::base::PlatformImage;
use crate::blobs::Blobs;
use kiln_core::error::{IoContext, Result};
use kiln_fs::rootfs::Rootfs;

/// Read a base image's filesystem (decompressing its layers in order),
/// keeping the contents of the paths `keep` selects, while the layers'
/// diff_ids are hashed in the same pass ([`Blobs::read_checking`]).
pub fn load(image: &PlatformImage, blobs: &Blobs, keep: &dyn Fn(&str) -> bool) -> Result<Rootfs> {
    blobs.read_checking(&image.layers, |readers| Rootfs::from_layers(readers, keep))
}

/// The uncompressed tar streams of the image's layers, lowest first.
pub fn layer_readers(image: &PlatformImage, blobs: &Blobs) -> Result<Vec<Box<dyn Read>>> {
    readers_of(image, blobs.paths(image.layers.iter().map(|l| &l.digest))?)
}

fn readers_of(image: &PlatformImage, paths: Vec<PathBuf>) -> Result<Vec<Box<dyn Read>>> {
    let mut readers: Vec<Box<dyn Read>> = Vec::new();
    for (l, p) in image.layers.iter().zip(paths) {
        let f = std::fs::File::open(&p).io_context(|| format!("opening {}", p.display()))?;
        let f = BufReader::with_capacity(1 << 20, f);
        let r = kiln_fs::layer::decompressed(&l.media_type, f)
            .map_err(|e| e.context(format!("base layer {}", l.digest)))?;
        readers.push(r);
    }
    Ok(readers)
}
