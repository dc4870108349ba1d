//! What a base image already holds, read from its layers without running
//! anything: the merged filesystem view ([`rootfs`]), from which the
//! resolvers read the package databases they care about.

pub mod rootfs;

pub use rootfs::{Node, Rootfs};

use std::io::{BufReader, Read};

use crate::base::PlatformImage;
use crate::blobs::Blobs;
use crate::error::Result;
use crate::layer::{Entry, EntryKind};

/// Read a base image's filesystem (decompressing its layers in order),
/// keeping the contents of the paths `keep` selects.
pub fn load(image: &PlatformImage, blobs: &Blobs, keep: &dyn Fn(&str) -> bool) -> Result<Rootfs> {
    let mut readers: Vec<Box<dyn Read>> = Vec::new();
    for l in &image.layers {
        let f = BufReader::with_capacity(1 << 20, blobs.open(&l.digest)?);
        let r = crate::layer::decompressed(&l.media_type, f)
            .map_err(|e| e.context(format!("base layer {}", l.digest)))?;
        readers.push(r);
    }
    Rootfs::from_layers(readers, keep)
}

impl Rootfs {
    /// Lay kiln's own layer entries on top (so a later stage sees what an earlier one installed).
    pub fn apply_entries(&mut self, entries: &[Entry], keep: &dyn Fn(&str) -> bool) {
        for e in entries {
            let path = format!("/{}", e.path);
            // A whiteout (an upgraded package's dropped file) removes what it names.
            if let Some((dir, hidden)) = path
                .rsplit_once('/')
                .and_then(|(d, n)| Some((d, n.strip_prefix(".wh.")?)))
            {
                if !hidden.starts_with(".wh.") {
                    self.remove_tree(&format!("{dir}/{hidden}"));
                    continue;
                }
            }
            let node = match &e.kind {
                EntryKind::Dir => Node::Dir,
                EntryKind::Symlink { target } => Node::Symlink(target.clone()),
                EntryKind::Data(d) => Node::File {
                    size: d.len() as u64,
                    mode: e.mode,
                    content: keep(&path).then(|| d.as_ref().clone()),
                },
                EntryKind::File { src, size } => Node::File {
                    size: *size,
                    mode: e.mode,
                    content: if keep(&path) {
                        std::fs::read(src).ok()
                    } else {
                        None
                    },
                },
            };
            self.insert(&path, node);
        }
    }
}
