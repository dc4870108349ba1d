//! OCI image layout output (`oci:DIR`).
//!
//! The layout is assembled in a staging directory beside DIR and swapped in
//! at the end. An existing layout keeps its images under other tags; a tag
//! kiln writes replaces the old entry of that name. `DIR/sbom/` holds the
//! SPDX documents of the images this write tagged (one per platform); it is
//! replaced on every write.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::{link_or_copy, parent_dir, set_output_mode};
use crate::blobs::Blobs;
use crate::image::Assembled;
use crate::manifest::{self, canonical_json, Desc, Document, OCI_INDEX};
use crate::ImageError;
use kiln_core::digest::Digest;
use kiln_core::error::{IoContext, Result};

const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Where the SBOMs of the images kiln wrote go, inside the layout directory.
pub const SBOM_DIR: &str = "sbom";

/// Fail early (before any work) if DIR exists and is not a layout we may update.
pub fn check_target(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let is_empty_dir = dir.is_dir()
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if is_empty_dir || dir.join("oci-layout").is_file() {
        return Ok(());
    }
    Err(ImageError::NotLayoutTarget {
        dir: dir.to_path_buf(),
    }
    .into())
}

/// Write the layout; `sboms` are `(file name, bytes)` put in `DIR/sbom/`
/// (beside the layout's own files, which OCI tools ignore), swapped in with
/// the rest.
pub fn write(
    dir: &Path,
    image: &Assembled,
    tags: &[String],
    blobs: &Blobs,
    sboms: &[(String, Vec<u8>)],
) -> Result<()> {
    check_target(dir)?;
    let parent = parent_dir(dir);
    fs::create_dir_all(parent).io_context(|| format!("creating {}", parent.display()))?;
    kiln_store::remove_stale_temps_beside(parent, ".kiln-staging");
    let staging = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix(".kiln-staging"))
        .tempdir_in(parent)
        .io_context(|| format!("creating a staging directory in {}", parent.display()))?;
    let root = staging.path();
    let blob_dir = root.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).io_context(|| format!("creating {}", blob_dir.display()))?;
    set_output_mode(&root.join("blobs"))?;
    set_output_mode(&blob_dir)?;

    let mut digests: Vec<&Digest> = Vec::new();
    for img in &image.images {
        digests.extend(img.layers.iter().map(|l| &l.digest));
        digests.push(&img.config.digest);
        digests.push(&img.manifest.digest);
    }
    if let Some(i) = &image.index {
        digests.push(&i.digest);
    }
    for (d, p) in digests.iter().zip(blobs.paths(digests.iter().copied())?) {
        link_or_copy(&p, &blob_dir.join(d.hex()))?;
    }

    let mut entries: Vec<Value> = Vec::new();
    if dir.join("index.json").is_file() {
        for old in carried_over(dir, tags)? {
            copy_closure(dir, &old, &blob_dir)?;
            entries.push(old.to_json());
        }
    }
    for tag in tags {
        let mut d: Desc = image.top().clone();
        if image.index.is_some() {
            d.platform = None;
        }
        d.annotations.insert(REF_NAME.into(), tag.clone());
        entries.push(d.to_json());
    }
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries});
    write_file(&root.join("index.json"), &canonical_json(&index))?;
    write_file(
        &root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    if !sboms.is_empty() {
        let sbom_dir = root.join(SBOM_DIR);
        fs::create_dir(&sbom_dir).io_context(|| format!("creating {}", sbom_dir.display()))?;
        set_output_mode(&sbom_dir)?;
        for (name, bytes) in sboms {
            write_file(&sbom_dir.join(name), bytes)?;
        }
    }

    // The staging directory starts private; the layout gets a directory's
    // mode as the umask says.
    set_output_mode(root)?;

    // Swap in: old layout aside, staging into place, old removed.
    let staged = staging.keep();
    if dir.exists() {
        let aside = tempfile::Builder::new()
            .prefix(".kiln-old-")
            .tempdir_in(parent)
            .io_context(|| "creating a temp directory".into())?;
        let aside_path = aside.path().join("old");
        fs::rename(dir, &aside_path)
            .io_context(|| format!("moving old {} aside", dir.display()))?;
        if let Err(e) = fs::rename(&staged, dir) {
            let _ = fs::rename(&aside_path, dir);
            let _ = fs::remove_dir_all(&staged);
            return Err(e).io_context(|| format!("moving the new layout to {}", dir.display()));
        }
        drop(aside);
    } else if let Err(e) = fs::rename(&staged, dir) {
        let _ = fs::remove_dir_all(&staged);
        return Err(e).io_context(|| format!("moving the new layout to {}", dir.display()));
    }
    Ok(())
}

fn write_file(p: &Path, bytes: &[u8]) -> Result<()> {
    fs::write(p, bytes).io_context(|| format!("writing {}", p.display()))?;
    set_output_mode(p)
}

/// Entries of the existing layout not replaced by our tags.
fn carried_over(dir: &Path, tags: &[String]) -> Result<Vec<Desc>> {
    let bytes = fs::read(dir.join("index.json"))
        .io_context(|| format!("reading {}/index.json", dir.display()))?;
    let Document::Index(entries) =
        manifest::parse(&bytes, &format!("{}/index.json", dir.display()))?
    else {
        return Err(ImageError::OutputNotIndexed {
            dir: dir.to_path_buf(),
        }
        .into());
    };
    Ok(entries
        .into_iter()
        .filter(|e| {
            e.annotations
                .get(REF_NAME)
                .is_none_or(|t| !tags.contains(t))
        })
        .collect())
}

/// Copy everything an existing entry references (manifests, configs, layers).
fn copy_closure(dir: &Path, d: &Desc, blob_dir: &Path) -> Result<()> {
    let src = dir.join("blobs/sha256").join(d.digest.hex());
    if !src.is_file() {
        return Ok(()); // a dangling entry stays dangling; not ours to fix
    }
    link_or_copy(&src, &blob_dir.join(d.digest.hex()))?;
    let is_json = d.media_type.ends_with("+json") || d.media_type.ends_with(".json");
    if !is_json || d.size > (4 << 20) {
        return Ok(());
    }
    let bytes = fs::read(&src).io_context(|| format!("reading {}", src.display()))?;
    match manifest::parse(&bytes, "existing layout") {
        Ok(Document::Index(children)) => {
            for c in children {
                copy_closure(dir, &c, blob_dir)?;
            }
        }
        Ok(Document::Manifest { config, layers }) => {
            copy_closure(dir, &config, blob_dir)?;
            for l in layers {
                copy_closure(dir, &l, blob_dir)?;
            }
        }
        Err(_) => {}
    }
    Ok(())
}
