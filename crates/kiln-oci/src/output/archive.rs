//! docker-archive output (`docker-archive:FILE`), the `docker save` format:
//! `manifest.json`, the config as `<hex>.json`, each layer uncompressed as
//! `<diff_id hex>/layer.tar`. Written to a temp file and renamed at the end.

use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::Path;

use serde_json::json;

use super::{parent_dir, set_output_mode};
use crate::blobs::Blobs;
use crate::image::Assembled;
use crate::manifest::canonical_json;
use crate::ImageError;
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};

pub fn write(
    path: &Path,
    image: &Assembled,
    repo_tags: &[String],
    diff_ids: &[Digest],
    mtime: u64,
    blobs: &Blobs,
) -> Result<()> {
    let [img] = image.images.as_slice() else {
        return Err(ImageError::ArchivePlatforms {
            path: path.to_path_buf(),
            count: image.images.len(),
        }
        .into());
    };
    let parent = parent_dir(path);
    std::fs::create_dir_all(parent).io_context(|| format!("creating {}", parent.display()))?;
    // Leftovers of killed runs beside the output go first.
    kiln_store::remove_stale_temps_beside(parent, ".kiln-archive");
    let tmp = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix(".kiln-archive"))
        .tempfile_in(parent)
        .io_context(|| format!("creating a temp file in {}", parent.display()))?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp));

    let config_name = format!("{}.json", img.config.digest.hex());
    let config =
        std::fs::read(blobs.path(&img.config.digest)?).io_context(|| "reading config".into())?;
    append(
        &mut tar,
        &config_name,
        config.len() as u64,
        &config[..],
        mtime,
    )?;

    let mut layer_names = Vec::new();
    for (layer, diff_id) in img.layers.iter().zip(diff_ids) {
        let name = format!("{}/layer.tar", diff_id.hex());
        if layer_names.contains(&name) {
            continue;
        }
        // The tar header needs the size first: decompress to a scratch file.
        let mut scratch =
            tempfile::tempfile_in(parent).io_context(|| "creating a temp file".into())?;
        let blob = BufReader::with_capacity(1 << 20, blobs.open(&layer.digest)?);
        let mut reader = kiln_fs::layer::decompressed(&layer.media_type, blob)?;
        let size = io::copy(&mut reader, &mut scratch)
            .io_context(|| format!("decompressing layer {}", layer.digest))?;
        scratch
            .rewind()
            .io_context(|| "rewinding temp file".into())?;
        append_dir(&mut tar, diff_id.hex(), mtime)?;
        append(&mut tar, &name, size, scratch, mtime)?;
        layer_names.push(name);
    }
    let mut entry = json!({"Config": config_name, "Layers": layer_names});
    if !repo_tags.is_empty() {
        entry["RepoTags"] = json!(repo_tags);
    }
    let manifest = canonical_json(&json!([entry]));
    append(
        &mut tar,
        "manifest.json",
        manifest.len() as u64,
        &manifest[..],
        mtime,
    )?;

    let out = tar.into_inner().io_context(|| "finishing archive".into())?;
    let tmp = out
        .into_inner()
        .map_err(|e| e.into_error())
        .io_context(|| "flushing archive".into())?;
    // An output file, not a secret: its mode as the umask says, like any
    // file the user writes (the temp file starts 0600).
    set_output_mode(tmp.path()).map_err(|e| e.context(format!("writing {}", path.display())))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .io_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn header(size: u64, mtime: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(kind);
    h
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl Read,
    mtime: u64,
) -> Result<()> {
    let mut h = header(size, mtime, 0o644, tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
        .io_context(|| format!("writing {name} to the archive"))
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str, mtime: u64) -> Result<()> {
    let mut h = header(0, mtime, 0o755, tar::EntryType::Directory);
    tar.append_data(&mut h, format!("{name}/"), io::empty())
        .io_context(|| format!("writing {name}/ to the archive"))
}
