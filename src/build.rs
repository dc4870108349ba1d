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
use crate::conda;
use crate::error::{Error, Result};
use crate::http::Http;
use crate::image::{self, AssemblyInputs, NewLayer};
use crate::inventory::{self, Rootfs};
use crate::layer::{self, Compression, LayerBlob};
use crate::output::{archive, layout, push};
use crate::pip;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::sbom;
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
    /// An SPDX SBOM per platform: beside OCI layout outputs, and pushed as
    /// a referrer of each platform manifest.
    pub sbom: bool,
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
    /// Per platform: its SBOM (empty with `--no-sbom`).
    pub sbom: Vec<SbomReport>,
    /// Per platform: packages installed, script effects emulated and skipped.
    pub apt: Vec<apt::AptReport>,
    /// Per platform (and per pip section): wheels installed by the pip stage.
    pub pip: Vec<PipReport>,
    /// Per platform: the conda environment's changes.
    pub conda: Vec<conda::CondaReport>,
}

#[derive(Debug, Serialize)]
pub struct SbomReport {
    pub platform: String,
    /// sha256 of the SPDX JSON document (also its blob digest when pushed).
    pub digest: String,
    pub packages: usize,
    /// Files written beside OCI layout outputs.
    pub paths: Vec<String>,
    /// The pushed referrer manifest (artifactType `application/spdx+json`).
    pub referrer: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PipReport {
    pub python: String,
    pub installed: Vec<String>,
    pub already_installed: Vec<String>,
    /// (name, version, sha256) of the wheels installed, for the SBOM.
    #[serde(skip)]
    pub wheel_sha256: Vec<(String, String, crate::digest::Digest)>,
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
    let http = if spec.apt.is_some() || spec.pip.is_some() || spec.conda.is_some() {
        Some(Http::new()?)
    } else {
        None
    };
    let mut per_platform: Vec<Vec<NewLayer>> = Vec::new();
    let mut apt_reports = Vec::new();
    let mut pip_reports = Vec::new();
    let mut conda_reports = Vec::new();
    let keep = |p: &str| {
        apt::keep_path(p) || pip::keep_path(p) || conda::keep_path(p) || sbom::keep_path(p)
    };
    // What each platform's SBOM is read from: the final filesystem view.
    let mut sbom_inputs: Vec<SbomInput> = Vec::new();
    for img in &base.images {
        let mut layers = Vec::new();
        let Some(http) = &http else {
            per_platform.push(layers);
            if opts.sbom {
                let fs = if base.is_scratch() {
                    Rootfs::default()
                } else {
                    inventory::load(img, &blobs, &keep)?
                };
                sbom_inputs.push(SbomInput::new(fs));
            }
            continue;
        };
        let mut fs = if base.is_scratch() {
            Rootfs::default()
        } else {
            inventory::load(img, &blobs, &keep)?
        };
        let mut sbom_in = SbomInput::default();
        if opts.sbom {
            sbom_in.base_purls = sbom::purls(&sbom::scan(&fs));
        }
        let pip_reports_before = pip_reports.len();
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
            for p in &plan.packages {
                if let Some(d) = &p.sha256 {
                    sbom_in
                        .known
                        .add_deb(&p.name, &p.version.to_string(), &p.arch, d);
                }
            }
            // pip sees the Python that apt just installed.
            for (_, entries) in &groups {
                fs.apply_entries(entries, &keep);
            }
        }
        if let Some(section) = &spec.conda {
            let spinner = opts
                .progress
                .spinner(&format!("conda: solving for {}", img.platform));
            let plan = conda::plan(section, &spec_dir, &fs, &img.platform, http, &cache)?;
            spinner.set_message(format!(
                "conda: linking {} packages for {}",
                plan.install.len(),
                img.platform
            ));
            let (groups, report, _fragments) =
                conda::install::layer_groups(&plan, &fs, &cache, opts.epoch)?;
            spinner.finish_and_clear();
            layers.extend(build_groups(&groups, opts, &cache)?);
            conda_reports.push(report);
            for (_, entries) in &groups {
                fs.apply_entries(entries, &keep);
            }
            if let Some(pip_section) = &plan.pip {
                let (groups, report) =
                    pip_stage(pip_section, &spec_dir, &fs, img, http, &cache, opts)?;
                layers.extend(build_groups(&groups, opts, &cache)?);
                pip_reports.push(report);
                for (_, entries) in &groups {
                    fs.apply_entries(entries, &keep);
                }
            }
        }
        if let Some(section) = &spec.pip {
            let (groups, report) = pip_stage(section, &spec_dir, &fs, img, http, &cache, opts)?;
            layers.extend(build_groups(&groups, opts, &cache)?);
            pip_reports.push(report);
            for (_, entries) in &groups {
                fs.apply_entries(entries, &keep);
            }
        }
        per_platform.push(layers);
        if opts.sbom {
            for r in &pip_reports[pip_reports_before..] {
                for (name, version, d) in &r.wheel_sha256 {
                    sbom_in.known.add_wheel(name, version, d);
                }
            }
            sbom_in.fs = fs;
            sbom_inputs.push(sbom_in);
        }
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
    for s in &mut sbom_inputs {
        for (_, entries) in &file_groups {
            s.fs.apply_entries(entries, &keep);
        }
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

    let sboms = make_sboms(
        &spec,
        &base,
        &assembled,
        &tags,
        sbom_inputs,
        opts.epoch,
        &cache,
    )?;

    // Push first: a failed push must not leave local outputs behind.
    let mut referrers = Vec::new();
    let push_report = match (&push_repo, &registry) {
        (Some(repo), Some(reg)) => {
            let mut report = push::push(reg, repo, &tags, &assembled, &blobs, &opts.progress)?;
            if let (Some(target), false) = (&push_ref, sboms.is_empty()) {
                let spinner = opts.progress.spinner("pushing SBOM referrers");
                let blobs_list: Vec<push::SbomBlob> = sboms
                    .iter()
                    .map(|s| push::SbomBlob {
                        digest: s.digest.clone(),
                        size: s.bytes.len() as u64,
                        file_name: s.file_name.clone(),
                    })
                    .collect();
                referrers = push::push_sboms(
                    reg,
                    target,
                    &assembled,
                    &blobs_list,
                    &image::rfc3339(opts.epoch),
                    &blobs,
                    &mut report,
                )?;
                spinner.finish_and_clear();
            }
            Some(report)
        }
        _ => None,
    };

    let mut outputs = opts.outputs.clone();
    if outputs.is_empty() && !opts.push {
        outputs.push(OutputTarget::Layout(PathBuf::from("kiln-out")));
    }
    let mut written = Vec::new();
    let sbom_files: Vec<(String, Vec<u8>)> = sboms
        .iter()
        .map(|s| (s.file_name.clone(), s.bytes.clone()))
        .collect();
    let mut sbom_paths: Vec<Vec<String>> = vec![Vec::new(); sboms.len()];
    for out in &outputs {
        let spinner = opts.progress.spinner(&format!("writing {out}"));
        match out {
            OutputTarget::Layout(dir) => {
                layout::write(dir, &assembled, &tags, &blobs, &sbom_files)?;
                for (paths, s) in sbom_paths.iter_mut().zip(&sboms) {
                    let p = dir.join(layout::SBOM_DIR).join(&s.file_name);
                    paths.push(p.display().to_string());
                }
            }
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
        sbom: sboms
            .iter()
            .zip(sbom_paths)
            .enumerate()
            .map(|(i, (s, paths))| SbomReport {
                platform: s.platform.to_string(),
                digest: s.digest.to_string(),
                packages: s.packages,
                paths,
                referrer: referrers.get(i).map(|d| d.to_string()),
            })
            .collect(),
        apt: apt_reports,
        pip: pip_reports,
        conda: conda_reports,
    })
}

/// Resolve and lay out one pip section for one platform.
fn pip_stage(
    section: &pip::PipSection,
    spec_dir: &std::path::Path,
    fs: &Rootfs,
    img: &base::PlatformImage,
    http: &Http,
    cache: &Cache,
    opts: &BuildOptions,
) -> Result<(Vec<layer::LayerGroup>, PipReport)> {
    let spinner = opts
        .progress
        .spinner(&format!("pip: resolving for {}", img.platform));
    let plan = pip::plan(section, spec_dir, fs, &img.platform, http, cache)?;
    let groups = pip::layer_groups(&plan, cache)?;
    spinner.finish_and_clear();
    let report = PipReport {
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
        wheel_sha256: plan
            .wheels
            .iter()
            .map(|w| (w.name.clone(), w.version.clone(), w.sha256.clone()))
            .collect(),
    };
    Ok((groups, report))
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

/// What one platform's SBOM is made from, gathered while its stages run.
#[derive(Default)]
struct SbomInput {
    /// The final filesystem view (base, every stage, `[[files]]`).
    fs: Rootfs,
    /// purls of what the base already had.
    base_purls: std::collections::BTreeSet<String>,
    /// sha256 of the `.deb`s and wheels kiln installed.
    known: sbom::Known,
}

impl SbomInput {
    /// For an image no stage changes: everything comes from the base.
    fn new(fs: Rootfs) -> Self {
        SbomInput {
            base_purls: sbom::purls(&sbom::scan(&fs)),
            fs,
            known: sbom::Known::default(),
        }
    }
}

/// One platform's finished SBOM, stored in the cache under `digest`.
struct Sbom {
    platform: crate::platform::Platform,
    file_name: String,
    bytes: Vec<u8>,
    digest: crate::digest::Digest,
    packages: usize,
}

/// The SPDX documents of every platform (none when `inputs` is empty).
fn make_sboms(
    spec: &Spec,
    base: &base::BaseImage,
    assembled: &image::Assembled,
    tags: &[String],
    inputs: Vec<SbomInput>,
    epoch: u64,
    cache: &Cache,
) -> Result<Vec<Sbom>> {
    let mut out = Vec::new();
    for ((input, img), base_img) in inputs.into_iter().zip(&assembled.images).zip(&base.images) {
        let packages = sbom::scan(&input.fs);
        let base_desc = base.name.as_deref().map(|name| sbom::BaseImage {
            name,
            repository: base
                .reference
                .as_ref()
                .map(|r| format!("{}/{}", r.registry(), r.repository())),
            tag: base
                .reference
                .as_ref()
                .and_then(|r| r.tag().map(str::to_string)),
            manifest_digest: base_img.manifest_digest.as_ref(),
            purls: &input.base_purls,
        });
        let bytes = sbom::document(
            &sbom::Subject {
                repository: spec.image.name.as_ref().map(|n| n.0.as_str()),
                tag: tags.first().map(String::as_str),
                platform: &img.platform,
                manifest_digest: &img.manifest.digest,
            },
            base_desc.as_ref(),
            &packages,
            &input.known,
            epoch,
        )?;
        let digest = cache.put(&bytes)?;
        out.push(Sbom {
            platform: img.platform.clone(),
            file_name: sbom::file_name(&img.platform),
            bytes,
            digest,
            packages: packages.len(),
        });
    }
    Ok(out)
}
