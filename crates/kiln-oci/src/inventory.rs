//! What a base image already holds, read from its layers without running
//! anything: the merged filesystem view ([`Rootfs`]), from which the
//! resolvers read the package databases they care about.

use std::io::Read;
use std::path::PathBuf;

use crate::base::PlatformImage;
use crate::blobs::Blobs;
use kiln_core::error::Result;
use kiln_fs::rootfs::Rootfs;

/// Read a base image's filesystem (decompressing its layers in order),
/// keeping the contents of the paths `keep` selects, while the layers'
/// diff_ids are hashed in the same pass ([`Blobs::read_checking`]).
pub fn load(
    image: &PlatformImage,
    blobs: &Blobs,
    keep: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Rootfs> {
    blobs.read_checking(&image.layers, |readers| Rootfs::from_layers(readers, keep))
}

/// The uncompressed tar streams of the image's layers, lowest first.
pub fn layer_readers(image: &PlatformImage, blobs: &Blobs) -> Result<Vec<Box<dyn Read>>> {
    readers_of(image, blobs.paths(image.layers.iter().map(|l| &l.digest))?)
}

fn readers_of(image: &PlatformImage, paths: Vec<PathBuf>) -> Result<Vec<Box<dyn Read>>> {
    image
        .layers
        .iter()
        .zip(paths)
        .map(|(l, p)| crate::blobs::decompressed_layer(l, &p).map(|r| r as Box<dyn Read>))
        .collect()
}
