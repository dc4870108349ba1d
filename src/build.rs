//! `kiln build`: the pipeline, one stage after another.
//!
//! spec → (check outputs) → collect inputs → base → layers (parallel) →
//! assembly → outputs. Everything that can be checked locally is checked
//! before the network is touched, and nothing is written to an output path
//! until the image is complete.

use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::base;
use crate::blobs::Blobs;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::image::{self, AssemblyInputs, NewLayer};
use crate::layer::{self, Compression, LayerBlob};
use crate::output::{archive, layout, push};
use crate::progress::Progress;
use crate::registry::Registry;
use crate::source::{ImageSource, OutputTarget};
use crate::spec::Spec;

pub struct BuildOptions {
    pub spec: PathBuf,
    pub outputs: Vec<OutputTarget>,
    pub push: bool,
    pub compression: Compression,
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    /// SOURCE_DATE_EPOCH: every mtime and `created`.
    pub epoch: u64,
    pub progress: Progress,
}

#[derive(Debug, Serialize)]
pub struct ManifestReport {
    pub platform: String,
    pub digest: String,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub digest: String,
    pub media_type: String,
    pub manifests: Vec<ManifestReport>,
    /// Layers kiln built (base layers are not listed).
    pub layers: Vec<LayerBlob>,
    pub outputs: Vec<String>,
    pub push: Option<push::PushReport>,
}

/// `SOURCE_DATE_EPOCH`, or 0 when unset.
pub fn epoch_from_env() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|_| {
            Error::input(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        }),
        _ => Ok(0),
    }
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let spec = Spec::load(&opts.spec)?;
    let spec_dir = spec.dir();
    let base_src = ImageSource::parse(&spec.image.base, &spec_dir)
        .map_err(|e| e.context(format!("{}: [image] base", spec.path.display())))?;
    let tags: Vec<String> = spec.image.tags.iter().map(|t| t.0.clone()).collect();
    let push_repo = if opts.push {
        Some(
            spec.image
                .name
                .as_ref()
                .ok_or_else(|| {
                    Error::input(format!(
                        "{}: --push needs [image] name",
                        spec.path.display()
                    ))
                })?
                .0
                .clone(),
        )
    } else {
        None
    };
    for out in &opts.outputs {
        if let OutputTarget::Layout(dir) = out {
            layout::check_target(dir)?;
        }
    }

    // Local inputs first: a missing file fails before any download.
    let inputs: Vec<Vec<layer::Entry>> = spec
        .files
        .iter()
        .map(|f| layer::tree::collect_files(f, &spec_dir))
        .collect::<Result<_>>()?;

    let cache = Cache::open(&opts.cache_dir)?;
    let push_ref = push_repo
        .as_deref()
        .map(|r| push::tag_ref(r, &tags[0]))
        .transpose()?;
    let mut refs = Vec::new();
    if let ImageSource::Registry(r) = &base_src {
        refs.push(r);
    }
    if let Some(r) = &push_ref {
        refs.push(r);
    }
    let registry = if refs.is_empty() {
        None
    } else {
        Some(Registry::new(&opts.insecure_registries, &refs)?)
    };
    let mut blobs = Blobs::new(&cache, registry.as_ref());

    let spinner = opts.progress.spinner(&format!("resolving base {base_src}"));
    let base = base::load(
        &base_src,
        &spec.platforms(),
        &mut blobs,
        registry.as_ref(),
        opts.compression,
    )?;
    spinner.finish_and_clear();

    let bar = opts.progress.bar(inputs.len() as u64, "building layers");
    let built: Vec<LayerBlob> = inputs
        .par_iter()
        .map(|entries| {
            let r = layer::build_layer(entries, opts.epoch, opts.compression, &cache);
            bar.inc(1);
            r
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let new_layers: Vec<NewLayer> = built
        .iter()
        .zip(&spec.files)
        .map(|(blob, f)| NewLayer {
            blob: blob.clone(),
            created_by: format!("kiln files {} -> {}", f.src, f.dst.0),
        })
        .collect();

    let assembled = image::assemble(
        &AssemblyInputs {
            base: &base,
            layers: &new_layers,
            config: &spec.config,
            annotations: &spec.image.annotations,
            epoch: opts.epoch,
        },
        &cache,
    )?;

    // Push first: a failed push must not leave local outputs behind.
    let push_report = match (&push_repo, &registry) {
        (Some(repo), Some(reg)) => Some(push::push(
            reg,
            repo,
            &tags,
            &assembled,
            &blobs,
            &opts.progress,
        )?),
        _ => None,
    };

    let mut outputs = opts.outputs.clone();
    if outputs.is_empty() && !opts.push {
        outputs.push(OutputTarget::Layout(PathBuf::from("kiln-out")));
    }
    let mut written = Vec::new();
    for out in &outputs {
        let spinner = opts.progress.spinner(&format!("writing {out}"));
        match out {
            OutputTarget::Layout(dir) => layout::write(dir, &assembled, &tags, &blobs)?,
            OutputTarget::DockerArchive(path) => {
                let repo_tags: Vec<String> = match &spec.image.name {
                    Some(n) => tags.iter().map(|t| format!("{}:{t}", n.0)).collect(),
                    None => vec![],
                };
                let diff_ids: Vec<_> = base.images[0]
                    .diff_ids
                    .iter()
                    .cloned()
                    .chain(built.iter().map(|b| b.diff_id.clone()))
                    .collect();
                archive::write(path, &assembled, &repo_tags, &diff_ids, opts.epoch, &blobs)?
            }
        }
        spinner.finish_and_clear();
        written.push(out.to_string());
    }

    Ok(BuildReport {
        digest: assembled.top().digest.to_string(),
        media_type: assembled.top().media_type.clone(),
        manifests: assembled
            .images
            .iter()
            .map(|i| ManifestReport {
                platform: i.platform.to_string(),
                digest: i.manifest.digest.to_string(),
            })
            .collect(),
        layers: built,
        outputs: written,
        push: push_report,
    })
}
