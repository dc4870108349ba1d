//! `kiln build`: the pipeline, one stage after another.
//!
//! spec → (check outputs) → collect inputs → base → layers (parallel) →
//! assembly → outputs. Everything that can be checked locally is checked
//! before the network is touched, and nothing is written to an output path
//! until the image is complete.

use std::path::PathBuf;

use rayon::prelude::*;
use serde::Serialize;

use crate::apt;
use crate::base;
use crate::blobs::Blobs;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::http::Http;
use crate::image::{self, AssemblyInputs, NewLayer};
use crate::inventory::{self, Rootfs};
use crate::layer::{self, Compression, LayerBlob};
use crate::output::{archive, layout, push};
use crate::pip;
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
    /// Per platform: packages installed, script effects emulated and skipped.
    pub apt: Vec<apt::AptReport>,
    /// Per platform: wheels installed by the pip stage.
    pub pip: Vec<PipReport>,
}

#[derive(Debug, Serialize)]
pub struct PipReport {
    pub python: String,
    pub installed: Vec<String>,
    pub already_installed: Vec<String>,
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

    // Package stages, per platform (each architecture resolves on its own).
    let http = if spec.apt.is_some() || spec.pip.is_some() {
        Some(Http::new()?)
    } else {
        None
    };
    let mut per_platform: Vec<Vec<NewLayer>> = Vec::new();
    let mut apt_reports = Vec::new();
    let mut pip_reports = Vec::new();
    let keep = |p: &str| apt::keep_path(p) || pip::keep_path(p);
    for img in &base.images {
        let mut layers = Vec::new();
        let Some(http) = &http else {
            per_platform.push(layers);
            continue;
        };
        let mut fs = if base.is_scratch() {
            Rootfs::default()
        } else {
            inventory::load(img, &blobs, &keep)?
        };
        if let Some(section) = &spec.apt {
            let spinner = opts
                .progress
                .spinner(&format!("apt: resolving for {}", img.platform));
            let plan = apt::plan(
                section,
                &spec_dir,
                &fs,
                &img.platform,
                base.is_scratch(),
                http,
                &cache,
            )?;
            spinner.set_message(format!(
                "apt: unpacking {} packages for {}",
                plan.packages.len(),
                img.platform
            ));
            let (groups, report) = apt::layer_groups(&plan, &fs, &cache, opts.epoch)?;
            spinner.finish_and_clear();
            layers.extend(build_groups(&groups, opts, &cache)?);
            apt_reports.push(report);
            // pip sees the Python that apt just installed.
            for (_, entries) in &groups {
                fs.apply_entries(entries, &keep);
            }
        }
        if let Some(section) = &spec.pip {
            let spinner = opts
                .progress
                .spinner(&format!("pip: resolving for {}", img.platform));
            let plan = pip::plan(section, &spec_dir, &fs, &img.platform, http, &cache)?;
            let groups = pip::layer_groups(&plan, &cache)?;
            spinner.finish_and_clear();
            layers.extend(build_groups(&groups, opts, &cache)?);
            pip_reports.push(PipReport {
                python: plan.python.interpreter.clone(),
                installed: plan
                    .wheels
                    .iter()
                    .map(|w| format!("{} {}", w.name, w.version))
                    .collect(),
                already_installed: plan
                    .already_installed
                    .iter()
                    .map(|(n, v)| format!("{n} {v}"))
                    .collect(),
            });
        }
        per_platform.push(layers);
    }

    let file_groups: Vec<layer::LayerGroup> = inputs
        .into_iter()
        .zip(&spec.files)
        .map(|(entries, f)| (format!("kiln files {} -> {}", f.src, f.dst.0), entries))
        .collect();
    let file_layers = build_groups(&file_groups, opts, &cache)?;
    let built: Vec<LayerBlob> = per_platform
        .first()
        .map(|l| l.iter().map(|n| n.blob.clone()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(file_layers.iter().map(|n| n.blob.clone()))
        .collect();
    for layers in &mut per_platform {
        layers.extend(file_layers.iter().cloned());
    }

    let assembled = image::assemble(
        &AssemblyInputs {
            base: &base,
            layers: &per_platform,
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
                    .chain(per_platform[0].iter().map(|n| n.blob.diff_id.clone()))
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
        apt: apt_reports,
        pip: pip_reports,
    })
}

/// Build labelled entry groups into layers, in parallel; order is kept.
fn build_groups(
    groups: &[layer::LayerGroup],
    opts: &BuildOptions,
    cache: &Cache,
) -> Result<Vec<NewLayer>> {
    let bar = opts.progress.bar(groups.len() as u64, "building layers");
    let out = groups
        .par_iter()
        .map(|(label, entries)| {
            let blob = layer::build_layer(entries, opts.epoch, opts.compression, cache)?;
            bar.inc(1);
            Ok(NewLayer {
                blob,
                created_by: label.clone(),
            })
        })
        .collect::<Result<Vec<_>>>();
    bar.finish_and_clear();
    out
}
