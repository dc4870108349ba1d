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
use crate::error::{Error, IoContext, Result};
use crate::http::Http;
use crate::image::{self, AssemblyInputs, NewLayer};
use crate::inventory::{self, Rootfs};
use crate::layer::{self, Compression, LayerBlob};
use crate::lock::{self, Lock, LockedPlatform};
use crate::memo::{self, PlatformMemo};
use crate::output::{archive, layout, push};
use crate::pip;
use crate::progress::Progress;
use crate::registry::Registry;
use crate::sbom;
use crate::source::{ImageSource, OutputTarget};
use crate::spec::Spec;
pub use crate::stages::PipReport;
use crate::stages::Stages;

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
    pub lock_mode: LockMode,
    /// No network at all: packages from the cache (or `file://`), a base
    /// pinned by digest from the cache.
    pub offline: bool,
    /// Reuse layers and locked stages built before from the same inputs
    /// (off for the second build of `--check-reproducible`).
    pub reuse: bool,
    /// `--run-scripts`: run apt maintainer scripts and layer their changes.
    pub run_scripts: bool,
}

/// How a build uses kiln.lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockMode {
    /// Use the lock when it matches the spec; resolve otherwise.
    #[default]
    Auto,
    /// `--locked` / `--frozen`: the lock must exist and match; nothing is resolved.
    Locked,
}

#[derive(Debug, Serialize)]
pub struct ManifestReport {
    pub platform: String,
    pub digest: String,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub digest: String,
    /// `used` (pins from kiln.lock), `absent` or `stale` (resolved afresh).
    pub lock: String,
    /// Platforms whose locked stages were taken from an earlier identical build.
    pub stages_reused: usize,
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
    let base_src = base_source(&spec)?;
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
    let (pinned, lock_status) = pins_for(&spec, opts.lock_mode)?;
    let base_name = match &base_src {
        ImageSource::Registry(r) => Some(r.whole()),
        _ => None,
    };
    let base_src = pinned_base(base_src, pinned.as_ref());
    let push_ref = push_repo
        .as_deref()
        .map(|r| push::tag_ref(r, &tags[0]))
        .transpose()?;
    if opts.offline && push_ref.is_some() {
        return Err(Error::input("--offline and --push exclude each other"));
    }
    let registry = registry_for(
        &base_src,
        push_ref.as_ref(),
        opts.offline,
        &opts.insecure_registries,
    )?;
    let mut blobs = Blobs::new(&cache, registry.as_ref());

    let spinner = opts.progress.spinner(&format!("resolving base {base_src}"));
    let mut base = base::load(
        &base_src,
        &spec.platforms(),
        &mut blobs,
        registry.as_ref(),
        opts.compression,
    )?;
    spinner.finish_and_clear();
    if let Some(name) = base_name {
        // Annotate with the reference the spec names, not the pin.
        base.name = Some(name);
    }
    if let Some(lock) = &pinned {
        check_locked_base(&base, lock, &spec)?;
    }

    // Package stages, per platform (each architecture resolves on its own).
    let http = if opts.offline {
        Http::offline()?
    } else {
        Http::new()?
    };
    let has_stages = spec.apt.is_some() || spec.pip.is_some() || spec.conda.is_some();
    let mut per_platform: Vec<Vec<NewLayer>> = Vec::new();
    let mut apt_reports = Vec::new();
    let mut pip_reports = Vec::new();
    let mut conda_reports = Vec::new();
    // Running scripts needs the whole base on disk, so every content is kept.
    let run_scripts = opts.run_scripts && spec.apt.is_some();
    let keep = |p: &str| run_scripts || keep_path(p);
    let stages = Stages {
        spec: &spec,
        spec_dir: &spec_dir,
        http: &http,
        cache: &cache,
        epoch: opts.epoch,
        progress: &opts.progress,
        scratch: base.is_scratch(),
        keep: &keep,
        upgrade_only: None,
        run_scripts,
    };
    // What each platform's SBOM is read from: the final filesystem view.
    let mut sbom_inputs: Vec<SbomInput> = Vec::new();
    let mut stages_reused = 0;
    for img in &base.images {
        if !has_stages && !opts.sbom {
            per_platform.push(Vec::new());
            continue;
        }
        let locked = pinned
            .as_ref()
            .map(|l| locked_platform(l, &img.platform))
            .transpose()?;
        // A locked platform built before with the same inputs: reuse it.
        let memo_key = pinned.as_ref().zip(locked).map(|(l, p)| {
            memo::key(
                l,
                p,
                img.manifest_digest.as_ref(),
                opts.epoch,
                opts.compression,
                opts.sbom,
                run_scripts,
            )
        });
        let remembered = memo_key
            .as_ref()
            .filter(|_| opts.reuse)
            .and_then(|k| PlatformMemo::read(&cache, k));
        if let Some(m) = remembered {
            if let Some(layers) = m.layers() {
                stages_reused += 1;
                per_platform.push(layers);
                if opts.sbom {
                    sbom_inputs.push(SbomInput {
                        fs: m.fs(),
                        base_purls: m.base_purls.clone(),
                        known: known_checksums(locked),
                    });
                }
                apt_reports.extend(m.apt);
                conda_reports.extend(m.conda);
                pip_reports.extend(m.pip);
                continue;
            }
        }
        let mut fs = if base.is_scratch() {
            Rootfs::default()
        } else {
            inventory::load(img, &blobs, &keep)?
        };
        let mut sbom_in = SbomInput::default();
        if opts.sbom {
            sbom_in.base_purls = sbom::purls(&sbom::scan(&fs));
        }
        let mut layers = Vec::new();
        let outcome = stages.run(&img.platform, &mut fs, locked, &mut |groups| {
            layers.extend(build_groups(groups, opts, &cache)?);
            Ok(())
        })?;
        if let Some(key) = &memo_key {
            if let Ok(m) = PlatformMemo::new(
                &layers,
                outcome.apt.as_ref(),
                outcome.conda.as_ref(),
                &outcome.pip,
                &sbom_in.base_purls,
                &fs,
            ) {
                m.write(&cache, key);
            }
        }
        per_platform.push(layers);
        apt_reports.extend(outcome.apt);
        conda_reports.extend(outcome.conda);
        pip_reports.extend(outcome.pip);
        if opts.sbom {
            sbom_in.known = known_checksums(Some(&outcome.pins));
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
        lock: lock_status.to_string(),
        stages_reused,
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

pub struct LockOptions {
    pub spec: PathBuf,
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    pub progress: Progress,
    /// `None`: keep a lock that matches the spec. `Some([])`: re-resolve
    /// everything. `Some(names)`: re-resolve, keeping the locked version of
    /// every package not named.
    pub upgrade: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct LockReport {
    pub path: String,
    /// `unchanged`, `written` or `updated`.
    pub status: String,
    pub platforms: usize,
    pub apt: usize,
    pub pip: usize,
    pub conda: usize,
}

/// `kiln lock`: resolve every stage for every platform (nothing is built)
/// and write kiln.lock beside the spec.
pub fn lock(opts: &LockOptions) -> Result<LockReport> {
    let spec = Spec::load(&opts.spec)?;
    let spec_dir = spec.dir();
    let path = lock::path_for(&spec.path);
    let existing = Lock::read(&path)?;
    let inputs = lock::inputs(&spec)?;
    let count = |l: &Lock, f: fn(&LockedPlatform) -> usize| l.platforms.iter().map(f).sum();
    let report = |l: &Lock, status: &str| LockReport {
        path: path.display().to_string(),
        status: status.to_string(),
        platforms: l.platforms.len(),
        apt: count(l, |p| p.apt.len()),
        pip: count(l, |p| p.pip.len()),
        conda: count(l, |p| p.conda.len()),
    };
    if let Some(l) = &existing {
        if l.inputs == inputs && opts.upgrade.is_none() {
            return Ok(report(l, "unchanged"));
        }
    }
    let base_src = base_source(&spec)?;
    let cache = Cache::open(&opts.cache_dir)?;
    let registry = registry_for(&base_src, None, false, &opts.insecure_registries)?;
    let mut blobs = Blobs::new(&cache, registry.as_ref());
    let base = read_base(&spec, &base_src, &mut blobs, registry.as_ref())?;
    let http = Http::new()?;
    let keep = keep_path;
    let stages = Stages {
        spec: &spec,
        spec_dir: &spec_dir,
        http: &http,
        cache: &cache,
        epoch: 0,
        progress: &opts.progress,
        scratch: base.is_scratch(),
        keep: &keep,
        upgrade_only: match (&existing, &opts.upgrade) {
            (Some(l), Some(names)) if !names.is_empty() => Some((l, names.as_slice())),
            _ => None,
        },
        run_scripts: false,
    };
    let mut platforms = Vec::new();
    for img in &base.images {
        let mut fs = if base.is_scratch() {
            Rootfs::default()
        } else {
            inventory::load(img, &blobs, &keep)?
        };
        let outcome = stages.run(&img.platform, &mut fs, None, &mut |_| Ok(()))?;
        platforms.push(LockedPlatform {
            platform: img.platform.to_string(),
            base: img.manifest_digest.as_ref().map(|d| d.to_string()),
            base_top: match &base_src {
                ImageSource::Registry(_) => base.top_digest.as_ref().map(|d| d.to_string()),
                _ => None,
            },
            ..outcome.pins
        });
    }
    let new = Lock::new(inputs, platforms);
    let status = match &existing {
        Some(l) if *l == new => "unchanged",
        Some(_) => "updated",
        None => "written",
    };
    if status != "unchanged" {
        new.write(&path)?;
    }
    Ok(report(&new, status))
}

#[derive(Debug, Serialize)]
pub struct FetchReport {
    pub base_blobs: usize,
    pub artifacts: usize,
    pub bytes: u64,
}

/// `kiln fetch`: everything kiln.lock names (base manifests, config and
/// layers; every package archive) into the cache, verified, in parallel.
pub fn fetch(opts: &LockOptions) -> Result<FetchReport> {
    let spec = Spec::load(&opts.spec)?;
    let (Some(lock), _) = pins_for(&spec, LockMode::Locked)? else {
        return Err(Error::internal("a locked build without a lock"));
    };
    let cache = Cache::open(&opts.cache_dir)?;
    let base_src = pinned_base(base_source(&spec)?, Some(&lock));
    let registry = registry_for(&base_src, None, false, &opts.insecure_registries)?;
    let mut blobs = Blobs::new(&cache, registry.as_ref());
    let base = read_base(&spec, &base_src, &mut blobs, registry.as_ref())?;
    check_locked_base(&base, &lock, &spec)?;
    let mut base_blobs = 0;
    for img in &base.images {
        for l in &img.layers {
            blobs.path(&l.digest)?;
            base_blobs += 1;
        }
    }
    let http = Http::new()?;
    let artifacts = lock.artifact_digests()?;
    let bar = opts.progress.bar(artifacts.len() as u64, "fetching");
    let sizes = crate::http::on_network_pool(|| {
        artifacts
            .par_iter()
            .map(|(d, url)| {
                let (_, size) = http
                    .download(url, Some(d), &cache)
                    .map_err(|e| e.context(format!("fetching {url}")))?;
                bar.inc(1);
                Ok(size)
            })
            .collect::<Result<Vec<u64>>>()
    });
    bar.finish_and_clear();
    let sizes = sizes?;
    Ok(FetchReport {
        base_blobs,
        artifacts: sizes.len(),
        bytes: sizes.iter().sum(),
    })
}

#[derive(Debug, Serialize)]
pub struct ReproReport {
    pub reproducible: bool,
    pub first: String,
    pub second: String,
    /// Layers (by what made them) whose digests differ between the builds.
    pub differing_layers: Vec<String>,
}

/// `kiln build --check-reproducible`: build a second time on one thread into
/// a scratch layout and compare digests, layer by layer.
pub fn check_reproducible(opts: &BuildOptions, first: &BuildReport) -> Result<ReproReport> {
    let scratch = tempfile::tempdir().io_context(|| "creating a scratch directory".into())?;
    let second_opts = BuildOptions {
        spec: opts.spec.clone(),
        outputs: vec![OutputTarget::Layout(scratch.path().join("second"))],
        push: false,
        compression: opts.compression,
        insecure_registries: opts.insecure_registries.clone(),
        cache_dir: opts.cache_dir.clone(),
        epoch: opts.epoch,
        progress: Progress::hidden(),
        sbom: opts.sbom,
        lock_mode: opts.lock_mode,
        offline: opts.offline,
        reuse: false,
        run_scripts: opts.run_scripts,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Error::internal(format!("thread pool: {e}")))?;
    let second = pool.install(|| build(&second_opts))?;
    let differing_layers = first
        .layers
        .iter()
        .zip(&second.layers)
        .filter(|(a, b)| a.digest != b.digest)
        .map(|(a, _)| a.digest.to_string())
        .collect();
    Ok(ReproReport {
        reproducible: first.digest == second.digest,
        first: first.digest.clone(),
        second: second.digest,
        differing_layers,
    })
}

/// sha256 of the `.deb`s and wheels a platform's pins name, for the SBOM.
fn known_checksums(pins: Option<&LockedPlatform>) -> sbom::Known {
    let mut known = sbom::Known::default();
    let Some(pins) = pins else { return known };
    for a in &pins.apt {
        if let Ok(d) = format!("sha256:{}", a.sha256).parse() {
            known.add_deb(&a.name, &a.version, &a.arch, &d);
        }
    }
    for w in &pins.pip {
        if let Ok(d) = format!("sha256:{}", w.sha256).parse() {
            known.add_wheel(&w.name, &w.version, &d);
        }
    }
    known
}

/// The spec's `[image] base`.
fn base_source(spec: &Spec) -> Result<ImageSource> {
    ImageSource::parse(&spec.image.base, &spec.dir())
        .map_err(|e| e.context(format!("{}: [image] base", spec.path.display())))
}

/// Base paths whose contents some stage (or the SBOM) reads.
fn keep_path(p: &str) -> bool {
    apt::keep_path(p) || pip::keep_path(p) || conda::keep_path(p) || sbom::keep_path(p)
}

/// The lock a build takes its pins from, and what it says about the lock.
fn pins_for(spec: &Spec, mode: LockMode) -> Result<(Option<Lock>, &'static str)> {
    let path = lock::path_for(&spec.path);
    let existing = Lock::read(&path)?;
    let inputs = lock::inputs(spec)?;
    match existing {
        Some(l) if l.inputs == inputs => Ok((Some(l), "used")),
        Some(l) if mode == LockMode::Locked => Err(Error::input(format!(
            "{} does not match {}:\n{}run `kiln lock` to update it",
            path.display(),
            spec.path.display(),
            lock::diff(&l.inputs, &inputs)
        ))),
        None if mode == LockMode::Locked => Err(Error::input(format!(
            "--locked: there is no {}; run `kiln lock` first",
            path.display()
        ))),
        Some(_) => Ok((None, "stale")),
        None => Ok((None, "absent")),
    }
}

/// A registry base named by tag is taken at the digest the lock recorded.
fn pinned_base(src: ImageSource, lock: Option<&Lock>) -> ImageSource {
    let top = lock
        .and_then(|l| l.platforms.first())
        .and_then(|p| p.base_top.clone());
    match (src, top) {
        (ImageSource::Registry(r), Some(top)) if r.digest().is_none() => ImageSource::Registry(
            oci_client::Reference::with_digest(r.registry().into(), r.repository().into(), top),
        ),
        (src, _) => src,
    }
}

/// The base as `lock` and `fetch` read it. They write no image, so the
/// compression (used only to re-pack an uncompressed on-disk base) is moot.
fn read_base(
    spec: &Spec,
    src: &ImageSource,
    blobs: &mut Blobs,
    registry: Option<&Registry>,
) -> Result<base::BaseImage> {
    base::load(
        src,
        &spec.platforms(),
        blobs,
        registry,
        Compression::Gzip { level: 6 },
    )
}

/// A registry client when the base or the push needs one (never offline).
fn registry_for(
    base: &ImageSource,
    push: Option<&oci_client::Reference>,
    offline: bool,
    insecure: &[String],
) -> Result<Option<Registry>> {
    let mut refs = Vec::new();
    if let ImageSource::Registry(r) = base {
        if !offline {
            refs.push(r);
        }
    }
    if let Some(r) = push {
        refs.push(r);
    }
    if refs.is_empty() {
        Ok(None)
    } else {
        Registry::new(insecure, &refs).map(Some)
    }
}

/// The base must still be the one the lock was made against.
fn check_locked_base(base: &base::BaseImage, lock: &Lock, spec: &Spec) -> Result<()> {
    for img in &base.images {
        let want = locked_platform(lock, &img.platform)?.base.as_deref();
        let got = img.manifest_digest.as_ref().map(|d| d.to_string());
        if want != got.as_deref() {
            return Err(Error::input(format!(
                "{}: the base image for {} is {} but kiln.lock was made against {}; run `kiln lock`",
                spec.path.display(),
                img.platform,
                got.as_deref().unwrap_or("scratch"),
                want.unwrap_or("scratch")
            )));
        }
    }
    Ok(())
}

fn locked_platform<'l>(
    lock: &'l Lock,
    platform: &crate::platform::Platform,
) -> Result<&'l LockedPlatform> {
    lock.platform(&platform.to_string()).ok_or_else(|| {
        Error::input(format!(
            "kiln.lock has no pins for platform {platform}; run `kiln lock`"
        ))
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
            let blob = if opts.reuse {
                layer::build_layer(entries, opts.epoch, opts.compression, cache)?
            } else {
                layer::build_layer_fresh(entries, opts.epoch, opts.compression, cache)?
            };
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
