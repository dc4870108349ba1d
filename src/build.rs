//! `kiln build`, `kiln lock` and `kiln fetch`: plan → stages → outputs.
//!
//! [`plan_build`] checks everything a user can get wrong (spec, outputs,
//! platform counts per output, `--push` name and credentials, local files,
//! kiln.lock) before the network is touched; the three commands share one
//! [`Setup`]. Then the base is read, each platform's package stages run
//! (or are taken from an identical locked build), the image is assembled,
//! and nothing is written to an output path until it is complete.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::error::BuildError;
use crate::memo::{self, PlatformMemo};
pub use crate::stages::PipReport;
use crate::stages::Stages;
use kiln_apt as apt;
use kiln_conda as conda;
use kiln_core::error::{Error, IoContext, Result};
use kiln_core::progress::Progress;
use kiln_fs::layer::tree::SourceScope;
use kiln_fs::layer::{self, Compression, LayerBlob};
use kiln_fs::rootfs::Rootfs;
use kiln_oci::base;
use kiln_oci::blobs::Blobs;
use kiln_oci::image::{self, AssemblyInputs, NewLayer};
use kiln_oci::inventory;
use kiln_oci::output::{archive, layout, push};
use kiln_oci::registry::Registry;
use kiln_pip as pip;
use kiln_sbom as sbom;
use kiln_spec::lock::{self, Lock, LockedPlatform};
use kiln_spec::source::{ImageSource, OutputTarget};
use kiln_spec::spec::Spec;
use kiln_spec::SpecError;
use kiln_store::cache::Cache;
use kiln_store::http::Http;

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
    /// Where `[[files]]` sources may come from (`--allow-outside-context`).
    pub source_scope: SourceScope,
    /// The spec's text when it is not read from `spec` (a translated
    /// Dockerfile): `spec` is then only where it stands, for relative paths.
    pub spec_text: Option<String>,
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

/// With `KILN_PHASES=1`, `kiln build` prints `kiln-phase: NAME` on stderr
/// as it enters each phase: `resolving` (the base), `fetching` (base
/// layers; package resolution and downloads), `building` (layers, image,
/// SBOMs), `pushing`; each once, when it changes. For `kiln serve`'s
/// workers, which show it as the job's phase.
fn phase(name: &'static str) {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static LAST: std::sync::Mutex<&str> = std::sync::Mutex::new("");
    if *ON.get_or_init(|| std::env::var("KILN_PHASES").is_ok_and(|v| v == "1")) {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if *last != name {
            *last = name;
            eprintln!("kiln-phase: {name}");
        }
    }
}

/// `SOURCE_DATE_EPOCH`, or 0 when unset.
pub fn epoch_from_env() -> Result<u64> {
    parse_epoch(std::env::var("SOURCE_DATE_EPOCH").ok())
}

fn parse_epoch(value: Option<String>) -> Result<u64> {
    match value {
        Some(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| BuildError::BadEpoch { value: v.clone() }.into()),
        _ => Ok(0),
    }
}

/// What `build`, `lock` and `fetch` share, made before any network or
/// output: the spec, the base reference (at the digest kiln.lock recorded,
/// when there is one), the cache, and a registry client when one is needed.
struct Setup {
    spec: Spec,
    spec_dir: PathBuf,
    cache: Cache,
    base_src: ImageSource,
    registry: Option<Registry>,
}

impl Setup {
    fn new(
        spec: Spec,
        lock: Option<&Lock>,
        cache_dir: &Path,
        push: Option<&oci_client::Reference>,
        offline: bool,
        insecure: &[String],
    ) -> Result<Setup> {
        let spec_dir = spec.dir();
        let base_src = pinned_base(base_source(&spec)?, lock);
        let registry = registry_for(&base_src, push, offline, insecure)?;
        let cache = Cache::open(cache_dir)?;
        Ok(Setup {
            spec,
            spec_dir,
            cache,
            base_src,
            registry,
        })
    }

    /// The set-up of `lock` and `fetch`: they read the base (online) and
    /// write no image.
    fn for_reading(spec: Spec, lock: Option<&Lock>, opts: &LockOptions) -> Result<Setup> {
        Setup::new(
            spec,
            lock,
            &opts.cache_dir,
            None,
            false,
            &opts.insecure_registries,
        )
    }

    /// [`Setup::load_base`] for commands that write no image: the
    /// compression (only used to re-pack an uncompressed on-disk base) is moot.
    fn read_base(&self, blobs: &mut Blobs, progress: &Progress) -> Result<base::BaseImage> {
        self.load_base(blobs, Compression::Gzip { level: 6 }, progress)
    }

    fn blobs(&self) -> Blobs<'_> {
        Blobs::new(&self.cache, self.registry.as_ref())
    }

    /// Resolve the base (a registry base is fetched here: the first network).
    fn load_base(
        &self,
        blobs: &mut Blobs,
        compression: Compression,
        progress: &Progress,
    ) -> Result<base::BaseImage> {
        let spinner = progress.spinner(&format!("resolving base {}", self.base_src));
        let base = base::load(
            &self.base_src,
            &self.spec.platforms(),
            blobs,
            self.registry.as_ref(),
            compression,
        )?;
        spinner.finish_and_clear();
        Ok(base)
    }

    fn stages<'a>(
        &'a self,
        http: &'a Http,
        base: &base::BaseImage,
        epoch: u64,
        progress: &'a Progress,
        keep: &'a dyn Fn(&str) -> bool,
        run_scripts: bool,
    ) -> Stages<'a> {
        Stages {
            spec: &self.spec,
            spec_dir: &self.spec_dir,
            http,
            cache: &self.cache,
            epoch,
            progress,
            scratch: base.is_scratch(),
            keep,
            upgrade_only: None,
            run_scripts,
        }
    }
}

/// The filesystem view of one platform of the base.
fn base_rootfs(
    base: &base::BaseImage,
    img: &base::PlatformImage,
    blobs: &Blobs,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Rootfs> {
    if base.is_scratch() {
        Ok(Rootfs::default())
    } else {
        inventory::load(img, blobs, keep)
    }
}

/// A build with everything a user can get wrong already checked: the spec,
/// the outputs (writable layouts; a docker-archive only for one platform),
/// `--push` with an image name and readable credentials, `--offline`
/// without `--push`, the `[[files]]` inputs, and kiln.lock against the
/// spec. Made before any network or output.
struct BuildPlan {
    setup: Setup,
    tags: Vec<String>,
    /// `[image] name` and the first tag's reference, with `--push`.
    push: Option<(String, oci_client::Reference)>,
    outputs: Vec<OutputTarget>,
    pinned: Option<Lock>,
    lock_status: &'static str,
    /// One layer per `[[files]]` entry, collected from disk.
    file_groups: Vec<layer::LayerGroup>,
    /// The reference the spec names, for the base annotations (not the pin).
    base_name: Option<String>,
}

fn plan_build(opts: &BuildOptions) -> Result<BuildPlan> {
    let spec = match &opts.spec_text {
        Some(text) => Spec::parse(text, &opts.spec)?,
        None => Spec::load(&opts.spec)?,
    };
    let tags: Vec<String> = spec.image.tags.iter().map(|t| t.0.clone()).collect();
    let push = match opts.push {
        false => None,
        true => {
            let repo = spec
                .image
                .name
                .as_ref()
                .ok_or_else(|| BuildError::PushWithoutName {
                    spec: spec.path.clone(),
                })?;
            let reference = push::tag_ref(&repo.0, &tags[0])?;
            Some((repo.0.clone(), reference))
        }
    };
    if opts.offline && push.is_some() {
        return Err(BuildError::OfflinePush.into());
    }
    if let Some((_, r)) = &push {
        // Credentials are read (env, Docker config, helpers) now, so a
        // broken configuration fails before anything is fetched.
        kiln_oci::registry::auth::credentials_for(r.registry())
            .map_err(|e| e.context(format!("--push to {}", r.whole())))?;
    }
    let mut outputs = opts.outputs.clone();
    if outputs.is_empty() && !opts.push {
        outputs.push(OutputTarget::Layout(PathBuf::from("kiln-out")));
    }
    let platforms = spec.platforms().len().max(1);
    for out in &outputs {
        match out {
            OutputTarget::Layout(dir) => layout::check_target(dir)?,
            OutputTarget::DockerArchive(path) if platforms > 1 => {
                return Err(BuildError::ArchivePlatforms {
                    path: path.clone(),
                    spec: spec.path.clone(),
                    platforms,
                }
                .into())
            }
            OutputTarget::DockerArchive(_) => {}
        }
    }
    // Local inputs: a missing file fails before any download.
    let spec_dir = spec.dir();
    let file_groups = spec
        .files
        .iter()
        .map(|f| {
            let entries = layer::tree::collect_files(f, &spec_dir, opts.source_scope)?;
            Ok((format!("kiln files {} -> {}", f.src, f.dst.0), entries))
        })
        .collect::<Result<Vec<_>>>()?;
    let (pinned, lock_status) = pins_for(&spec, opts.lock_mode)?;
    let base_name = match base_source(&spec)? {
        ImageSource::Registry(r) => Some(r.whole()),
        _ => None,
    };
    let setup = Setup::new(
        spec,
        pinned.as_ref(),
        &opts.cache_dir,
        push.as_ref().map(|(_, r)| r),
        opts.offline,
        &opts.insecure_registries,
    )?;
    Ok(BuildPlan {
        setup,
        tags,
        push,
        outputs,
        pinned,
        lock_status,
        file_groups,
        base_name,
    })
}

/// What the stages made for one platform.
#[derive(Default)]
struct PlatformBuild {
    layers: Vec<NewLayer>,
    apt: Option<apt::AptReport>,
    conda: Option<conda::CondaReport>,
    pip: Vec<PipReport>,
    /// What its SBOM is read from (with `opts.sbom`).
    sbom: Option<SbomInput>,
    reused: bool,
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let plan = plan_build(opts)?;
    let setup = &plan.setup;
    let mut blobs = setup.blobs();
    phase("resolving");
    let mut base = setup.load_base(&mut blobs, opts.compression, &opts.progress)?;
    if let Some(name) = &plan.base_name {
        base.name = Some(name.clone());
    }
    if let Some(lock) = &plan.pinned {
        check_locked_base(&base, lock, &setup.spec)?;
    }
    phase("fetching");
    let mut platforms = run_stages(&plan, &base, &blobs, opts)?;
    phase("building");

    // `[[files]]` layers, the same on every platform, on top.
    let file_layers = build_groups(&plan.file_groups, opts, &setup.cache)?;
    let keep = keep_for(opts, &setup.spec);
    for p in &mut platforms {
        p.layers.extend(file_layers.iter().cloned());
        if let Some(s) = &mut p.sbom {
            for (_, entries) in &plan.file_groups {
                s.fs.apply_entries(entries, &keep);
            }
        }
    }
    let per_platform: Vec<Vec<NewLayer>> = platforms.iter().map(|p| p.layers.clone()).collect();
    let assembled = image::assemble(
        &AssemblyInputs {
            base: &base,
            layers: &per_platform,
            config: &setup.spec.config,
            annotations: &setup.spec.image.annotations,
            epoch: opts.epoch,
        },
        &setup.cache,
    )?;
    let sbom_inputs: Vec<SbomInput> = platforms.iter_mut().filter_map(|p| p.sbom.take()).collect();
    let sboms = make_sboms(
        &setup.spec,
        &base,
        &assembled,
        &plan.tags,
        sbom_inputs,
        opts.epoch,
        &setup.cache,
    )?;
    let outputs = write_outputs(
        &plan,
        &base,
        &assembled,
        &per_platform,
        &sboms,
        &blobs,
        opts,
    )?;

    let built: Vec<LayerBlob> = per_platform
        .first()
        .map(|l| l.iter().map(|n| n.blob.clone()).collect())
        .unwrap_or_default();
    let stages_reused = platforms.iter().filter(|p| p.reused).count();
    let mut report = BuildReport {
        lock: plan.lock_status.to_string(),
        stages_reused,
        digest: assembled.top().digest.to_string(),
        media_type: assembled.top().media_type.to_string(),
        manifests: assembled
            .images
            .iter()
            .map(|i| ManifestReport {
                platform: i.platform.to_string(),
                digest: i.manifest.digest.to_string(),
            })
            .collect(),
        layers: built,
        outputs: outputs.written,
        push: outputs.push,
        sbom: sboms
            .iter()
            .zip(outputs.sbom_paths)
            .enumerate()
            .map(|(i, (s, paths))| SbomReport {
                platform: s.platform.to_string(),
                digest: s.digest.to_string(),
                packages: s.packages,
                paths,
                referrer: outputs.referrers.get(i).cloned(),
            })
            .collect(),
        apt: Vec::new(),
        pip: Vec::new(),
        conda: Vec::new(),
    };
    for p in platforms {
        report.apt.extend(p.apt);
        report.conda.extend(p.conda);
        report.pip.extend(p.pip);
    }
    Ok(report)
}

/// Which base contents the build keeps in its filesystem view: running
/// scripts needs the whole base on disk, so then every content is kept.
fn keep_for(opts: &BuildOptions, spec: &Spec) -> impl Fn(&str) -> bool {
    let all = opts.run_scripts && spec.apt.is_some();
    move |p: &str| all || keep_path(p)
}

/// The package stages of every platform (each architecture resolves on its
/// own); a locked platform built before from the same inputs is reused.
fn run_stages(
    plan: &BuildPlan,
    base: &base::BaseImage,
    blobs: &Blobs,
    opts: &BuildOptions,
) -> Result<Vec<PlatformBuild>> {
    let setup = &plan.setup;
    let spec = &setup.spec;
    let has_stages = spec.apt.is_some() || spec.pip.is_some() || spec.conda.is_some();
    if !has_stages && !opts.sbom {
        return Ok(base
            .images
            .iter()
            .map(|_| PlatformBuild::default())
            .collect());
    }
    let http = if opts.offline {
        Http::offline()?
    } else {
        Http::new()?
    };
    let run_scripts = opts.run_scripts && spec.apt.is_some();
    let keep = keep_for(opts, spec);
    let stages = setup.stages(&http, base, opts.epoch, &opts.progress, &keep, run_scripts);
    let mut out = Vec::new();
    for img in &base.images {
        let locked = plan
            .pinned
            .as_ref()
            .map(|l| locked_platform(l, &img.platform))
            .transpose()?;
        let memo_key = plan.pinned.as_ref().zip(locked).map(|(l, p)| {
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
            .and_then(|k| PlatformMemo::read(&setup.cache, k));
        if let Some(m) = remembered {
            out.push(PlatformBuild {
                layers: m.layers(),
                sbom: opts.sbom.then(|| SbomInput {
                    fs: m.fs(),
                    base_purls: m.base_purls.clone(),
                    known: known_checksums(locked),
                }),
                apt: m.apt,
                conda: m.conda,
                pip: m.pip,
                reused: true,
            });
            continue;
        }
        let mut fs = base_rootfs(base, img, blobs, &keep)?;
        let base_purls = if opts.sbom {
            sbom::purls(&sbom::scan(&fs))
        } else {
            Default::default()
        };
        let mut layers = Vec::new();
        let outcome = stages.run(&img.platform, &mut fs, locked, &mut |groups| {
            phase("building");
            layers.extend(build_groups(groups, opts, &setup.cache)?);
            Ok(())
        })?;
        if let Some(key) = &memo_key {
            if let Ok(m) = PlatformMemo::new(
                &layers,
                outcome.apt.as_ref(),
                outcome.conda.as_ref(),
                &outcome.pip,
                &base_purls,
                &fs,
            ) {
                m.write(&setup.cache, key);
            }
        }
        out.push(PlatformBuild {
            layers,
            sbom: opts.sbom.then(|| SbomInput {
                known: known_checksums(Some(&outcome.pins)),
                fs,
                base_purls,
            }),
            apt: outcome.apt,
            conda: outcome.conda,
            pip: outcome.pip,
            reused: false,
        });
    }
    Ok(out)
}

/// What writing the outputs did.
struct Written {
    written: Vec<String>,
    push: Option<push::PushReport>,
    /// The pushed SBOM referrer manifests, per platform.
    referrers: Vec<String>,
    /// Per SBOM: the files written beside OCI layouts.
    sbom_paths: Vec<Vec<String>>,
}

/// Push first (a failed push must not leave local outputs behind), then
/// every local output.
fn write_outputs(
    plan: &BuildPlan,
    base: &base::BaseImage,
    assembled: &image::Assembled,
    per_platform: &[Vec<NewLayer>],
    sboms: &[Sbom],
    blobs: &Blobs,
    opts: &BuildOptions,
) -> Result<Written> {
    let spec = &plan.setup.spec;
    let tags = &plan.tags;
    // Blobs, manifests, SBOM referrers, then the tags: one push, which
    // either completes or says what the registry holds.
    let push_report = match (&plan.push, &plan.setup.registry) {
        (Some((repo, _)), Some(reg)) => {
            phase("pushing");
            let created = kiln_core::time::rfc3339(opts.epoch);
            let sbom_blobs: Vec<push::SbomBlob> = sboms
                .iter()
                .map(|s| push::SbomBlob {
                    media_type: sbom::MEDIA_TYPE,
                    digest: s.digest.clone(),
                    size: s.bytes.len() as u64,
                    file_name: s.file_name.clone(),
                    created: created.clone(),
                })
                .collect();
            Some(push::push(
                reg,
                repo,
                tags,
                assembled,
                &sbom_blobs,
                blobs,
                &opts.progress,
            )?)
        }
        _ => None,
    };
    let referrers = push_report
        .as_ref()
        .map(|r| r.referrer_manifests.clone())
        .unwrap_or_default();

    let mut written = Vec::new();
    let sbom_files: Vec<(String, Vec<u8>)> = sboms
        .iter()
        .map(|s| (s.file_name.clone(), s.bytes.clone()))
        .collect();
    let mut sbom_paths: Vec<Vec<String>> = vec![Vec::new(); sboms.len()];
    for out in &plan.outputs {
        let spinner = opts.progress.spinner(&format!("writing {out}"));
        match out {
            OutputTarget::Layout(dir) => {
                layout::write(dir, assembled, tags, blobs, &sbom_files)?;
                for (paths, s) in sbom_paths.iter_mut().zip(sboms) {
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
                archive::write(path, assembled, &repo_tags, &diff_ids, opts.epoch, blobs)?
            }
        }
        spinner.finish_and_clear();
        written.push(out.to_string());
    }
    Ok(Written {
        written,
        push: push_report,
        referrers,
        sbom_paths,
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
    let setup = Setup::for_reading(spec, None, opts)?;
    let mut blobs = setup.blobs();
    let base = setup.read_base(&mut blobs, &opts.progress)?;
    let http = Http::new()?;
    let keep = keep_path;
    let mut stages = setup.stages(&http, &base, 0, &opts.progress, &keep, false);
    stages.upgrade_only = match (&existing, &opts.upgrade) {
        (Some(l), Some(names)) if !names.is_empty() => Some((l, names.as_slice())),
        _ => None,
    };
    let mut platforms = Vec::new();
    for img in &base.images {
        let mut fs = base_rootfs(&base, img, &blobs, &keep)?;
        let outcome = stages.run(&img.platform, &mut fs, None, &mut |_| Ok(()))?;
        platforms.push(LockedPlatform {
            platform: img.platform.to_string(),
            base: img.manifest_digest.clone(),
            base_top: match &setup.base_src {
                ImageSource::Registry(_) => base.top_digest.clone(),
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
    let setup = Setup::for_reading(spec, Some(&lock), opts)?;
    let mut blobs = setup.blobs();
    let base = setup.read_base(&mut blobs, &opts.progress)?;
    check_locked_base(&base, &lock, &setup.spec)?;
    let mut base_blobs = 0;
    for img in &base.images {
        for l in &img.layers {
            blobs.path(&l.digest)?;
            base_blobs += 1;
        }
    }
    let http = Http::new()?;
    let artifacts = lock.artifact_digests();
    let bar = opts.progress.bar(artifacts.len() as u64, "fetching");
    let cache = &setup.cache;
    let sizes = kiln_store::http::on_network_pool(|| {
        artifacts
            .par_iter()
            .map(|(d, url)| {
                let (_, size) = http
                    .download(url, Some(d), cache)
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
        source_scope: opts.source_scope,
        spec_text: opts.spec_text.clone(),
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
        known.add_deb(&a.name, &a.version, &a.arch, &a.sha256);
    }
    for w in &pins.pip {
        known.add_wheel(&w.name, &w.version, &w.sha256);
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
        Some(l) if mode == LockMode::Locked => Err(SpecError::LockMismatch {
            diff: lock::diff(&l.inputs, &inputs),
            lock: path,
            spec: spec.path.clone(),
        }
        .into()),
        None if mode == LockMode::Locked => Err(SpecError::LockMissing { lock: path }.into()),
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
        (ImageSource::Registry(r), Some(top)) if r.digest().is_none() => {
            ImageSource::Registry(oci_client::Reference::with_digest(
                r.registry().into(),
                r.repository().into(),
                top.to_string(),
            ))
        }
        (src, _) => src,
    }
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
        let want = locked_platform(lock, &img.platform)?.base.as_ref();
        let got = img.manifest_digest.as_ref();
        if want != got {
            return Err(BuildError::BaseChanged {
                spec: spec.path.clone(),
                platform: img.platform.to_string(),
                found: got.cloned(),
                locked: want.cloned(),
            }
            .into());
        }
    }
    Ok(())
}

fn locked_platform<'l>(
    lock: &'l Lock,
    platform: &kiln_core::platform::Platform,
) -> Result<&'l LockedPlatform> {
    lock.platform(&platform.to_string()).ok_or_else(|| {
        BuildError::NoPins {
            platform: platform.to_string(),
        }
        .into()
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
    platform: kiln_core::platform::Platform,
    file_name: String,
    bytes: Vec<u8>,
    digest: kiln_core::digest::Digest,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec in a temp directory and options building it (nothing is fetched).
    fn options(spec: &str) -> (tempfile::TempDir, BuildOptions) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, spec).unwrap();
        let opts = BuildOptions {
            spec: path,
            outputs: vec![OutputTarget::Layout(dir.path().join("out"))],
            push: false,
            compression: Compression::Gzip { level: 6 },
            insecure_registries: Vec::new(),
            cache_dir: dir.path().join("cache"),
            epoch: 0,
            progress: Progress::hidden(),
            sbom: false,
            lock_mode: LockMode::Auto,
            offline: false,
            reuse: true,
            run_scripts: false,
            source_scope: SourceScope::Context,
            spec_text: None,
        };
        (dir, opts)
    }

    fn plan_err(opts: &BuildOptions) -> Error {
        match plan_build(opts) {
            Ok(_) => panic!("the plan was accepted"),
            Err(e) => e,
        }
    }

    fn build_error(e: &Error) -> &BuildError {
        e.downcast_ref::<BuildError>()
            .unwrap_or_else(|| panic!("not a BuildError: {e:?}"))
    }

    #[test]
    fn push_needs_a_name_and_the_network() {
        let (_d, mut opts) = options("[image]\n");
        opts.push = true;
        let e = plan_err(&opts);
        assert!(matches!(
            build_error(&e),
            BuildError::PushWithoutName { spec } if *spec == opts.spec
        ));
        assert!(
            e.to_string()
                .ends_with("kiln.toml: --push needs [image] name"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);

        let (_d, mut opts) = options("[image]\nname = \"127.0.0.1:5000/demo/app\"\n");
        opts.push = true;
        opts.offline = true;
        let e = plan_err(&opts);
        assert!(matches!(build_error(&e), BuildError::OfflinePush));
        assert_eq!(e.to_string(), "--offline and --push exclude each other");
    }

    #[test]
    fn a_docker_archive_holds_one_platform() {
        let (d, mut opts) = options("[image]\nplatforms = [\"linux/amd64\", \"linux/arm64\"]\n");
        opts.outputs = vec![OutputTarget::DockerArchive(d.path().join("img.tar"))];
        let e = plan_err(&opts);
        assert!(
            matches!(
                build_error(&e),
                BuildError::ArchivePlatforms { platforms: 2, .. }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("holds one platform"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn locked_builds_need_a_matching_lock() {
        let (d, mut opts) = options("[image]\n");
        opts.lock_mode = LockMode::Locked;
        let e = plan_err(&opts);
        let lock_path = d.path().join("kiln.lock");
        assert!(
            matches!(e.downcast_ref::<SpecError>(), Some(SpecError::LockMissing { lock }) if *lock == lock_path),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("--locked: there is no "), "{e}");

        Lock::new(vec!["image.base = \"other\"".into()], vec![])
            .write(&lock_path)
            .unwrap();
        let e = plan_err(&opts);
        match e.downcast_ref::<SpecError>() {
            Some(SpecError::LockMismatch { diff, .. }) => {
                assert_eq!(
                    diff,
                    "  - image.base = \"other\"\n  + image.base = \"scratch\"\n"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string().ends_with("run `kiln lock` to update it"),
            "{e}"
        );
        // Without --locked, a stale lock is only reported.
        opts.lock_mode = LockMode::Auto;
        let spec = Spec::load(&opts.spec).unwrap();
        assert!(matches!(
            pins_for(&spec, LockMode::Auto),
            Ok((None, "stale"))
        ));
    }

    #[test]
    fn a_lock_without_the_platform_has_no_pins() {
        let lock = Lock::new(vec![], vec![]);
        let platform = kiln_core::platform::Platform::linux("arm64");
        let e = locked_platform(&lock, &platform).unwrap_err();
        assert!(
            matches!(build_error(&e), BuildError::NoPins { platform } if platform == "linux/arm64"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "kiln.lock has no pins for platform linux/arm64; run `kiln lock`"
        );
    }

    #[test]
    fn base_changes_name_both_digests() {
        let d = kiln_core::digest::Digest::of(b"base");
        let e: Error = BuildError::BaseChanged {
            spec: PathBuf::from("kiln.toml"),
            platform: "linux/amd64".into(),
            found: Some(d.clone()),
            locked: None,
        }
        .into();
        assert_eq!(
            e.to_string(),
            format!(
                "kiln.toml: the base image for linux/amd64 is {d} but kiln.lock was made \
                 against scratch; run `kiln lock`"
            )
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn epochs_are_numbers() {
        assert_eq!(parse_epoch(None).unwrap(), 0);
        assert_eq!(parse_epoch(Some(" ".into())).unwrap(), 0);
        assert_eq!(
            parse_epoch(Some("1700000000".into())).unwrap(),
            1_700_000_000
        );
        let e = parse_epoch(Some("yesterday".into())).unwrap_err();
        assert!(matches!(
            build_error(&e),
            BuildError::BadEpoch { value } if value == "yesterday"
        ));
        assert_eq!(
            e.to_string(),
            "SOURCE_DATE_EPOCH=`yesterday` is not a number of seconds"
        );
    }

    #[test]
    fn irreproducible_builds_are_kilns_fault() {
        let e: Error = BuildError::NotReproducible {
            first: "sha256:a".into(),
            second: "sha256:b".into(),
            differing_layers: vec!["sha256:c".into(), "sha256:d".into()],
        }
        .into();
        assert_eq!(e.kind(), kiln_core::ErrorKind::Internal);
        assert_eq!(
            e.to_string(),
            "not reproducible: sha256:a then sha256:b (layers differing: sha256:c, sha256:d)"
        );
    }
}
