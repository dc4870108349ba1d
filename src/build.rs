//! `kiln build`, `kiln lock` and `kiln fetch`: plan → stages → outputs.
//!
//! [`plan_build`] checks everything a user can get wrong (spec, outputs,
//! platform counts per output, `--push` name and credentials, local files,
//! kiln.lock) before the network is touched; the three commands share one
//! [`Setup`]. Then the base is read, each platform's package stages run
//! (or are taken from an identical locked build), the image is assembled,
//! and nothing is written to an output path until it is complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::BuildError;
use crate::locales;
use crate::memo::{self, PlatformMemo};
use crate::run_steps;
pub use crate::stages::PipReport;
use crate::stages::Stages;
use crate::stamp;
use crate::summary::{self, Summary, Tally};
use kiln_apt as apt;
use kiln_conda as conda;
use kiln_core::digest::Digest;
use kiln_core::error::{Error, IoContext, Result};
use kiln_core::progress::{Progress, Transfers};
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

#[derive(Clone)]
pub struct BuildOptions {
    pub spec: PathBuf,
    pub outputs: Vec<OutputTarget>,
    pub push: bool,
    pub compression: Compression,
    pub insecure_registries: Vec<String>,
    pub cache_dir: PathBuf,
    /// SOURCE_DATE_EPOCH (or 0): every mtime.
    pub epoch: u64,
    /// SOURCE_DATE_EPOCH when set: the image's `created` (otherwise the
    /// newest input date: kiln.lock's `resolved-at`, the base's `created`).
    pub created: Option<u64>,
    /// `--tag`: the names docker-archive outputs carry (instead of `[image] name`).
    pub archive_names: Vec<String>,
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
    /// `--network`: what `[[run]]` steps that name none get (default host).
    pub network: Option<kiln_spec::spec::Network>,
    /// Names shown instead of image references (reference, name): a
    /// Dockerfile stage's scratch layout is `stage:NAME` in the base
    /// annotations, the SBOM and the layer history, never its temp path.
    pub image_names: Vec<(String, String)>,
    /// `--cache-from`: images whose pushed stage records (referrers) may
    /// stand in for a locked platform's package stages: their layers are
    /// taken as they are, no package is fetched.
    pub cache_from: Vec<String>,
    /// Where the lock is when not beside the spec (`--lockfile`, a
    /// Dockerfile's `NAME.kiln.lock`).
    pub lock_file: Option<PathBuf>,
}

impl BuildOptions {
    /// A build of `spec` with every flag at its default (gzip, an SBOM, the
    /// lock when it matches, no push): what `kiln lock` builds a
    /// Dockerfile's stages with.
    pub fn defaults(spec: PathBuf, cache_dir: PathBuf, progress: Progress) -> BuildOptions {
        BuildOptions {
            spec,
            outputs: Vec::new(),
            push: false,
            compression: Compression::DEFAULT,
            insecure_registries: Vec::new(),
            cache_dir,
            epoch: 0,
            created: None,
            archive_names: Vec::new(),
            progress,
            sbom: true,
            lock_mode: LockMode::Auto,
            offline: false,
            reuse: true,
            run_scripts: false,
            source_scope: SourceScope::Context,
            spec_text: None,
            network: None,
            image_names: Vec::new(),
            cache_from: Vec::new(),
            lock_file: None,
        }
    }
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
    /// The numbers of the closing summary (sizes, counts, bytes, time).
    pub summary: Summary,
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

/// Seconds since the epoch now (kiln.lock's `resolved-at`).
fn now_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `SOURCE_DATE_EPOCH` when set (and not blank).
pub fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => parse_epoch(Some(v)).map(Some),
        _ => Ok(None),
    }
}

/// `kiln lock --upgrade PKG...` takes package names: a value that is a
/// spec path (`kiln lock --upgrade t2/kiln.toml`) is refused, not resolved
/// as a package that does not exist.
pub fn check_upgrade_names(names: &[String]) -> Result<()> {
    match names
        .iter()
        .find(|n| n.ends_with(".toml") || Path::new(n).is_file())
    {
        Some(n) => Err(Error::input(format!(
            "--upgrade takes package names, and `{n}` looks like a spec file; \
             give the spec first or with --spec: `kiln lock {n} --upgrade [PKG...]` \
             or `kiln lock --spec {n} --upgrade [PKG...]`"
        ))),
        None => Ok(()),
    }
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
    /// Shared with the uploaders of [`push::EarlyPush`].
    registry: Option<std::sync::Arc<Registry>>,
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
        let registry = registry_for(&base_src, push, offline, insecure)?.map(std::sync::Arc::new);
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
        self.load_base(blobs, Compression::DEFAULT, progress)
    }

    fn blobs(&self) -> Blobs<'_> {
        Blobs::new(&self.cache, self.registry.as_deref())
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
            self.registry.as_deref(),
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
            resolve_only: false,
            tree: None,
            bytecode: false,
            ahead: None,
        }
    }
}

/// The filesystem view of one platform of the base.
fn base_rootfs(
    base: &base::BaseImage,
    img: &base::PlatformImage,
    blobs: &Blobs,
    keep: &(dyn Fn(&str) -> bool + Sync),
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
    /// The spec's inputs, as a lock records them.
    inputs: Vec<String>,
    /// One layer per `[[files]]` entry, collected from disk.
    file_groups: Vec<layer::LayerGroup>,
    /// The reference the spec names, for the base annotations (not the pin).
    base_name: Option<String>,
    /// RepoTags of docker-archive outputs.
    archive_names: Vec<String>,
    /// The counters of the build's summary.
    tally: Tally,
    /// With `--push`: the layers going out as they are built.
    early: Option<push::EarlyPush>,
}

fn plan_build(opts: &BuildOptions) -> Result<BuildPlan> {
    let mut spec = match &opts.spec_text {
        Some(text) => Spec::parse(text, &opts.spec)?,
        None => Spec::load(&opts.spec)?,
    };
    spec.lock_file = opts.lock_file.clone();
    spec.input_names = opts.image_names.clone();
    spec.read_package_files(opts.source_scope)?;
    run_steps::check_host(&spec, &spec.platforms())?;
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
        .map(|f| match &f.from {
            // Downloaded once the cache is open (below).
            _ if f.url.is_some() => Ok(layer::LayerGroup::new(
                format!(
                    "kiln files {} -> {}",
                    kiln_core::url::redact(f.url.as_deref().unwrap_or("")),
                    f.dst.0
                ),
                Vec::new(),
            )),
            // Read from the image once the cache is open (below).
            Some(from) => Ok(layer::LayerGroup::new(
                format!(
                    "kiln files from {} {} -> {}",
                    shown_name(opts, from),
                    f.src,
                    f.dst.0
                ),
                Vec::new(),
            )),
            None => {
                let entries = layer::tree::collect_files(f, &spec_dir, opts.source_scope)?;
                Ok(layer::LayerGroup::new(
                    format!("kiln files {} -> {}", f.src, f.dst.0),
                    entries,
                ))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let (pinned, lock_status, inputs) = pins_for(&spec, opts.lock_mode)?;
    let archive_names = stamp::archive_names(
        &opts.archive_names,
        spec.image.name.as_ref().map(|n| n.0.as_str()),
        &tags,
        &outputs,
    )?;
    let base_name = match base_source(&spec)? {
        _ if shown_name(opts, &spec.image.base) != spec.image.base => {
            Some(shown_name(opts, &spec.image.base).to_string())
        }
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
    let mut file_groups = file_groups;
    for (f, group) in setup.spec.files.iter().zip(&mut file_groups) {
        if let Some(url) = &f.url {
            group.entries = file_from_url(f, url, &setup, opts)?;
        } else if f.from.is_some() {
            group.entries = files_from_image(f, &setup, pinned.as_ref(), opts)?;
        }
    }
    Ok(BuildPlan {
        setup,
        tags,
        push,
        outputs,
        pinned,
        lock_status,
        inputs,
        file_groups,
        base_name,
        archive_names,
        tally: Tally::new(&opts.progress),
        early: None,
    })
}

/// How `reference` is shown in the image ([`BuildOptions::image_names`]).
fn shown_name<'a>(opts: &'a BuildOptions, reference: &'a str) -> &'a str {
    opts.image_names
        .iter()
        .find(|(r, _)| r == reference)
        .map_or(reference, |(_, n)| n.as_str())
}

/// A `[[files]] from` entry's layer entries, read out of that image (for
/// the spec's platform; the image's own when the spec names none), keeping
/// only the contents under `src`.
/// A `[[files]] url` entry: the file downloaded through the HTTP cache
/// (offline: the kept copy), checked against `sha256` when given, as one
/// file at `dst` (0600 unless `mode`, as docker's `ADD URL`).
fn file_from_url(
    f: &kiln_spec::spec::FileEntry,
    url: &str,
    setup: &Setup,
    opts: &BuildOptions,
) -> Result<Vec<layer::Entry>> {
    let http = if opts.offline {
        Http::offline()?
    } else {
        Http::new()?
    };
    let check = |bytes: &[u8]| -> Result<()> {
        match &f.sha256 {
            Some(want) => {
                let got = kiln_core::digest::Digest::of(bytes).hex().to_string();
                if got.eq_ignore_ascii_case(want) {
                    Ok(())
                } else {
                    Err(BuildError::UrlChecksum {
                        url: kiln_core::url::redact(url),
                        expected: want.to_ascii_lowercase(),
                        got,
                    }
                    .into())
                }
            }
            None => Ok(()),
        }
    };
    let shown = kiln_core::url::redact(url);
    let fetched = http
        .get_cached(url, None, &setup.cache, &check)
        .map_err(|e| e.context(format!("[[files]] url {shown}")))?;
    layer::tree::data_file(f, fetched.bytes, 0o600, &shown)
}

fn files_from_image(
    f: &kiln_spec::spec::FileEntry,
    setup: &Setup,
    lock: Option<&Lock>,
    opts: &BuildOptions,
) -> Result<Vec<layer::Entry>> {
    let from = f.from.as_deref().expect("only entries with from");
    let spec = &setup.spec;
    let at = |e: Error| {
        e.context(format!(
            "{}: [[files]] from = {from:?}",
            spec.path.display()
        ))
    };
    let platforms = spec.platforms();
    if platforms.len() > 1 {
        return Err(BuildError::FilesFromPlatforms {
            spec: spec.path.clone(),
            from: from.to_string(),
            platforms: platforms.len(),
        }
        .into());
    }
    let src = ImageSource::parse(from, &setup.spec_dir).map_err(at)?;
    let src = pinned_image(src, from, lock);
    let registry = registry_for(&src, None, opts.offline, &opts.insecure_registries)?;
    let mut blobs = Blobs::new(&setup.cache, registry.as_ref());
    let image = base::load(
        &src,
        &platforms,
        &mut blobs,
        registry.as_ref(),
        opts.compression,
    )
    .map_err(at)?;
    let img = image.images.first().expect("a loaded image has a platform");
    let keep = layer::tree::from_image_keep(f);
    let fs = inventory::load(img, &blobs, &keep).map_err(at)?;
    layer::tree::collect_from_rootfs(f, &fs)
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
    /// What its stages added (for the summary).
    pins: LockedPlatform,
    /// The key of its stage record (a locked build), pushed beside the image.
    memo: Option<Digest>,
    /// Its `[[run]]` steps' layers by their keys (pushed in that record).
    runs: Vec<memo::RunRecord>,
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let mut plan = plan_build(opts)?;
    if let (Some((_, first)), Some(reg)) = (&plan.push, &plan.setup.registry) {
        let cache = plan.setup.cache.clone();
        plan.early = Some(push::EarlyPush::start(reg.clone(), first.clone(), cache));
    }
    let plan = plan;
    let setup = &plan.setup;
    if let Some(r) = &setup.registry {
        r.count_transfers(plan.tally.transfers.clone());
    }
    let mut blobs = setup.blobs();
    phase("resolving");
    // `[pip]`'s index pages, fetched while the base is pulled (a locked or
    // offline build resolves nothing).
    let prefetch = (setup.spec.pip.as_ref())
        .filter(|_| !opts.offline && plan.pinned.is_none())
        .map(|section| PipAhead::start(section, setup, &plan.tally.transfers));
    let mut base = setup.load_base(&mut blobs, opts.compression, &opts.progress)?;
    if let Some(name) = &plan.base_name {
        base.name = Some(name.clone());
    }
    if let Some(lock) = &plan.pinned {
        check_locked_base(&base, lock, &setup.spec)?;
    }
    let base_platforms: Vec<_> = base.images.iter().map(|i| i.platform.clone()).collect();
    run_steps::check_host(&setup.spec, &base_platforms)?;
    locales::check_host(
        &setup.spec,
        &base.images,
        plan.pinned.as_ref(),
        &setup.cache,
    )?;
    phase("fetching");
    let mut platforms = run_stages(&plan, &base, &blobs, opts, prefetch)?;
    // The time zone and `[apt] locales`, over the stages' layers.
    for (p, img) in platforms.iter_mut().zip(&base.images) {
        let (spec, cache) = (&setup.spec, &setup.cache);
        let (progress, reuse) = (&opts.progress, opts.reuse);
        let mut groups = locales::groups(
            spec, img, &blobs, &p.layers, &p.pins, cache, progress, reuse,
        )?;
        if let Some(s) = &mut p.sbom {
            for g in &mut groups {
                s.fs.adopt_existing_dirs(&mut g.entries);
                s.fs.apply_entries(&g.entries, &keep_for(opts, spec));
            }
        }
        p.layers.extend(build_groups(&groups, opts, cache, &plan)?);
    }
    phase("building");

    // `[[files]]` layers on top, their parent directories as each
    // platform's tree has them; with `[[run]]`, in order with the commands
    // (one platform: the host's).
    let runs = !setup.spec.run.is_empty();
    let keep = keep_for(opts, &setup.spec);
    for (p, img) in platforms.iter_mut().zip(&base.images) {
        let planned = match (runs, &mut p.sbom) {
            (true, s) => {
                let s = s.as_mut().expect("run_stages keeps the tree for [[run]]");
                // The commands' tree: the base's layers, then the stages'.
                let built = &p.layers;
                let layers = || image_layers(img, &blobs, built, &setup.cache);
                let under = runs_under(img, built, opts);
                run_steps::groups(
                    &setup.spec,
                    &img.config,
                    &layers,
                    &plan.file_groups,
                    &mut s.fs,
                    &keep,
                    opts.network,
                    &setup.cache,
                    &opts.progress,
                    under,
                )?
            }
            (false, s) => {
                let mut groups = plan.file_groups.clone();
                if let Some(s) = s {
                    for (group, f) in groups.iter_mut().zip(&setup.spec.files) {
                        s.fs.adopt_parents(f.dst.relative(), &mut group.entries);
                        s.fs.apply_entries(&group.entries, &keep);
                    }
                }
                groups
                    .into_iter()
                    .map(|g| run_steps::Planned::Build(g, None))
                    .collect()
            }
        };
        let (layers, runs) = build_planned(planned, opts, &setup.cache, &plan)?;
        p.layers.extend(layers);
        p.runs = runs;
        // The tree was kept for the commands or the copies; only the SBOM
        // reads it from here on.
        if !opts.sbom {
            p.sbom = None;
        }
    }
    let per_platform: Vec<Vec<NewLayer>> = platforms.iter().map(|p| p.layers.clone()).collect();
    let created = stamp::image_created(opts.created, plan.pinned.as_ref(), &base);
    let assembled = image::assemble(
        &AssemblyInputs {
            base: &base,
            layers: &per_platform,
            config: &setup.spec.config,
            annotations: &setup.spec.image.annotations,
            epoch: created,
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
        created,
        &setup.cache,
    )?;
    let memos: Vec<Option<Digest>> = platforms.iter().map(|p| p.memo.clone()).collect();
    let runs: Vec<Vec<memo::RunRecord>> = platforms.iter().map(|p| p.runs.clone()).collect();
    let outputs = write_outputs(
        &plan,
        &base,
        &assembled,
        &per_platform,
        Records {
            sboms: &sboms,
            memos: &memos,
            runs: &runs,
        },
        &blobs,
        opts,
    )?;

    let built: Vec<LayerBlob> = per_platform
        .first()
        .map(|l| l.iter().map(|n| n.blob.clone()).collect())
        .unwrap_or_default();
    let stages_reused = platforms.iter().filter(|p| p.reused).count();
    let summary = build_summary(
        &plan,
        &base,
        &assembled,
        &per_platform,
        &platforms,
        &outputs.push,
    );
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
        summary,
    };
    for p in platforms {
        report.apt.extend(p.apt);
        report.conda.extend(p.conda);
        report.pip.extend(p.pip);
    }
    Ok(report)
}

/// The closing summary: every layer of each manifest with its origin,
/// the packages each platform added, the bytes moved.
fn build_summary(
    plan: &BuildPlan,
    base: &base::BaseImage,
    assembled: &image::Assembled,
    per_platform: &[Vec<NewLayer>],
    platforms: &[PlatformBuild],
    push: &Option<push::PushReport>,
) -> Summary {
    let inputs: Vec<summary::PlatformInput> = assembled
        .images
        .iter()
        .zip(&base.images)
        .zip(per_platform.iter().zip(platforms))
        .map(|((img, b), (new, p))| summary::PlatformInput {
            platform: img.platform.to_string(),
            manifest: img.manifest.digest.to_string(),
            layers: img.layers.iter().map(|l| (&l.digest, l.size)).collect(),
            base_layers: b.layers.len(),
            created_by: new.iter().map(|n| n.created_by.clone()).collect(),
            pins: &p.pins,
            reused: p.reused,
            skipped_scripts: p.apt.as_ref().map_or(0, |a| a.skipped_scripts.len()),
        })
        .collect();
    let mut summary = summary::summarize(
        &plan.tally,
        plan.setup.spec.image.name.as_ref().map(|n| n.0.clone()),
        plan.tags.clone(),
        assembled.top().digest.to_string(),
        &inputs,
        push.as_ref()
            .map_or(0, |p| p.bytes_uploaded + p.referrer_bytes_uploaded),
    );
    for (img, p) in assembled.images.iter().zip(platforms) {
        for why in p
            .pip
            .iter()
            .filter_map(|r| r.bytecode.as_ref()?.skipped.as_ref())
        {
            summary
                .warnings
                .push(format!("[pip] compile for {}: {why}", img.platform));
        }
    }
    summary
}

/// Which base contents the build keeps in its filesystem view: running
/// scripts needs the whole base on disk, so then every content is kept.
fn keep_for(opts: &BuildOptions, spec: &Spec) -> impl Fn(&str) -> bool {
    let all = opts.run_scripts && spec.apt.is_some();
    move |p: &str| all || keep_path(p)
}

/// `[pip]`'s downloads ahead of resolving, on a thread of their own that
/// runs while the base is pulled and read: the index pages (and the pure
/// wheels of pins), then, once the base's paths show its Python
/// ([`pip::PythonHint`]), the wheels the requirements start from for it.
/// Not below an `[apt]` stage: those wheels would share the link with the
/// stage's `.deb`s, which the image waits for (with the packages behind
/// 20 MB/s, the Dockerfile data image took 11.8 s with them, 10.4 s
/// without), and would all arrive together rather than one after another
/// as the pip stage's own downloads do, each compiled as it comes.
struct PipAhead {
    /// Gets a message (or hangs up) once the pages are fetched.
    pages: Option<std::sync::mpsc::Receiver<()>>,
    hint: Arc<pip::PythonHint>,
    /// Whether the image's Python is guessed at all: a conda prefix, or
    /// a venv beside a `[conda]` stage, may hold another one; an `[apt]`
    /// stage's downloads go first.
    guesses: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PipAhead {
    fn start(
        section: &kiln_spec::sections::PipSection,
        setup: &Setup,
        transfers: &Arc<Transfers>,
    ) -> Self {
        let (section, dir) = (section.clone(), setup.spec_dir.clone());
        let (cache, transfers) = (setup.cache.clone(), transfers.clone());
        let guesses =
            (section.target == "system" || setup.spec.conda.is_none()) && setup.spec.apt.is_none();
        let (told, pages) = std::sync::mpsc::channel();
        let hint = Arc::new(pip::PythonHint::new());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, halt) = (hint.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let Ok(http) = Http::new() else { return };
            let http = http.with_transfers(transfers);
            let fetched = move || {
                let _ = told.send(());
            };
            pip::prefetch_with_guess(&section, &dir, &http, &cache, fetched, &h, &halt);
        });
        PipAhead {
            pages: Some(pages),
            hint,
            guesses,
            stop,
            thread: Some(thread),
        }
    }

    /// The hint the base of `platform` is read with (the first read only).
    fn hint_for(&self, platform: &kiln_core::platform::Platform) -> Option<&pip::PythonHint> {
        let arch = kiln_core::Arch::from_platform(platform).ok();
        match (self.guesses && self.pages.is_some(), arch) {
            (true, Some(arch)) => {
                self.hint.reading(arch);
                Some(&self.hint)
            }
            _ => None,
        }
    }

    /// Wait for the pages (once): resolving reads them first. The base
    /// is read: the hint is closed.
    fn pages_fetched(&mut self) {
        self.hint.close();
        if let Some(pages) = self.pages.take() {
            let _ = pages.recv();
        }
    }

    /// Stop fetching on the guess and wait for what is under way (the
    /// stages took what they needed of it already).
    fn finish(mut self) {
        self.stop_guessing();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_guessing(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.hint.close();
    }
}

/// A build that fails leaves the thread to end on its own (what it writes
/// to the cache is whole or not there).
impl Drop for PipAhead {
    fn drop(&mut self) {
        self.stop_guessing();
    }
}

/// The package stages of every platform (each architecture resolves on its
/// own); a locked platform built before from the same inputs is reused.
/// `prefetch`'s pages are waited for once the base's view is read, before
/// the stages resolve: the two ran side by side (waiting first left the
/// base unread for the pages' 0.3 s on a 110-wheel freeze). The first
/// base read tells it the Python it sees, and its guessed wheels keep
/// downloading while the stages run.
fn run_stages(
    plan: &BuildPlan,
    base: &base::BaseImage,
    blobs: &Blobs,
    opts: &BuildOptions,
    mut prefetch: Option<PipAhead>,
) -> Result<Vec<PlatformBuild>> {
    let setup = &plan.setup;
    let spec = &setup.spec;
    let has_stages = spec.apt.is_some() || spec.pip.is_some() || spec.conda.is_some();
    // `[[run]]` needs the tree even with no stage and no SBOM, and
    // `[[files]]` its directories (their parents keep what is there).
    let runs = !spec.run.is_empty();
    let tree = opts.sbom || runs || !spec.files.is_empty();
    if !has_stages && !tree {
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
    }
    .with_transfers(plan.tally.transfers.clone());
    let run_scripts = opts.run_scripts && spec.apt.is_some();
    let keep = keep_for(opts, spec);
    // The layers the stages built so far, for the image's Python (`[pip] compile`).
    // (A Mutex: the sdist builder asks for it from the resolver's threads.)
    let built: std::sync::Mutex<Vec<NewLayer>> = Default::default();
    let so_far = |platform: &kiln_core::platform::Platform| {
        let img = base.image_for(platform);
        image_so_far(img, blobs, &built.lock().unwrap(), &setup.cache)
    };
    let mut stages = setup.stages(&http, base, opts.epoch, &opts.progress, &keep, run_scripts);
    stages.tree = Some(&so_far);
    stages.bytecode = true;
    if opts.reuse {
        stages.ahead = Some(crate::stages::Ahead {
            compression: opts.compression,
            tally: &plan.tally,
        });
    }
    // Pins are kept for an unlocked build of package stages (see
    // `memo::KeptPins`), and taken where a lock's would be: `[[run]]`
    // steps run after the stages either way.
    let keeps_pins = plan.pinned.is_none()
        && opts.reuse
        && (spec.apt.is_some() || spec.pip.is_some() || spec.conda.is_some());
    let mut out = Vec::new();
    for img in &base.images {
        let locked = plan
            .pinned
            .as_ref()
            .map(|l| locked_platform(l, &img.platform))
            .transpose()?;
        let memo_key = plan
            .pinned
            .as_ref()
            .zip(locked)
            .map(|(l, p)| memo::key(l, p, img, opts, spec));
        let remembered = memo_key.as_ref().filter(|_| opts.reuse).and_then(|k| {
            PlatformMemo::read(&setup.cache, k).or_else(|| {
                PlatformMemo::from_registry(
                    &setup.cache,
                    &opts.cache_from,
                    &opts.insecure_registries,
                    &img.platform,
                    k,
                )
            })
        });
        if let Some(m) = remembered {
            let pins = locked.cloned().unwrap_or_default();
            let how = kiln_pip::Resolution::Locked;
            out.push(PlatformBuild::remembered(m, pins, how, tree, memo_key));
            continue;
        }
        // Unlocked: the pins an earlier build of the same inputs kept on
        // this base, and the stages' memo they lead to, while the
        // resolution they came from still holds.
        let kept = keeps_pins
            .then(|| take_kept_pins(plan, base, img, opts, &http))
            .flatten();
        if let Some((pins, m)) = kept {
            let how = kiln_pip::Resolution::Kept;
            out.push(PlatformBuild::remembered(m, pins, how, tree, None));
            continue;
        }
        // The base's view is remembered by its manifest, unless maintainer
        // scripts need every content of it.
        let view = img.manifest_digest.as_ref().filter(|_| !run_scripts);
        let mut fs = match view.and_then(|d| memo::read_view(&setup.cache, d)) {
            Some(fs) => fs,
            None => {
                let hint = prefetch.as_ref().and_then(|p| p.hint_for(&img.platform));
                let watched = |path: &str| {
                    if let Some(h) = hint {
                        h.saw(path);
                    }
                    keep(path)
                };
                let fs = base_rootfs(base, img, blobs, &watched)?;
                match (view, &img.manifest_digest) {
                    (Some(d), _) => memo::write_view(&setup.cache, d, &fs),
                    // Read with every content for the scripts: the view
                    // kept is the one a build without them reads (the
                    // kept pins' check reads the base's apt sources there).
                    (None, Some(d)) => memo::write_view(&setup.cache, d, &fs.keeping(&keep_path)),
                    (None, None) => {}
                }
                fs
            }
        };
        let base_purls = if opts.sbom {
            sbom::purls(&sbom::scan(&fs))
        } else {
            Default::default()
        };
        built.lock().unwrap().clear();
        if let Some(p) = &mut prefetch {
            p.pages_fetched();
        }
        let outcome = stages.run(&img.platform, &mut fs, locked, &mut |groups| {
            phase("building");
            let new = build_groups(groups, opts, &setup.cache, plan)?;
            built.lock().unwrap().extend(new);
            Ok(())
        })?;
        let layers = std::mem::take(&mut *built.lock().unwrap());
        // Unlocked, with its resolutions kept: the pins, kept for the next
        // build, and the memo they lead to.
        let apt_kept = outcome.apt_kept.clone().filter(|_| spec.apt.is_some());
        let conda_kept = outcome.conda_kept.clone().filter(|_| spec.conda.is_some());
        let pip_kept = outcome.kept.get(crate::stages::PIP).cloned().flatten();
        // An environment.yml's `pip:` list is a pip stage of its own.
        let env_ran = outcome.kept.contains_key(crate::stages::ENV_PIP);
        let env_kept = outcome.kept.get(crate::stages::ENV_PIP).cloned().flatten();
        let resolutions_kept = spec.apt.is_some() == apt_kept.is_some()
            && spec.conda.is_some() == conda_kept.is_some()
            && spec.pip.is_some() == pip_kept.is_some()
            && env_ran == env_kept.is_some();
        let kept = (keeps_pins && resolutions_kept).then(|| {
            let pins = platform_pins(setup, base, img, outcome.pins.clone());
            let synthetic = Lock::new(plan.inputs.clone(), vec![pins]);
            let pins = synthetic.platforms[0].clone();
            let key = memo::key(&synthetic, &pins, img, opts, spec);
            let mut kept = memo::KeptPins::new(pins);
            kept.apt = apt_kept;
            kept.conda = conda_kept;
            kept.environment_pip = env_kept;
            kept.pip = pip_kept;
            (key, kept, synthetic.inputs_hash)
        });
        if let Some(key) = memo_key.as_ref().or(kept.as_ref().map(|k| &k.0)) {
            if let Ok(m) = PlatformMemo::new(
                key,
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
        // The memo first: pins found lead to it.
        if let Some((_, pins, inputs_hash)) = &kept {
            pins.write(
                &setup.cache,
                inputs_hash,
                img.manifest_digest.as_ref(),
                &img.platform,
            );
        }
        out.push(PlatformBuild {
            layers,
            sbom: tree.then(|| SbomInput {
                known: known_checksums(Some(&outcome.pins)),
                fs,
                base_purls,
            }),
            apt: outcome.apt,
            conda: outcome.conda,
            pip: outcome.pip,
            reused: false,
            pins: outcome.pins,
            memo: memo_key,
            runs: Vec::new(),
        });
    }
    if let Some(p) = prefetch {
        p.finish();
    }
    Ok(out)
}

impl PlatformBuild {
    /// A platform whose stages come from the memo `m` for `pins` (a
    /// lock's, or kept); its reports say how this build came by the
    /// versions (`how`), not how the build that wrote the memo did. `memo`
    /// is pushed beside the image as its stage record.
    fn remembered(
        m: PlatformMemo,
        pins: LockedPlatform,
        how: kiln_pip::Resolution,
        tree: bool,
        memo: Option<Digest>,
    ) -> PlatformBuild {
        let layers = m.layers();
        let sbom = tree.then(|| SbomInput {
            fs: m.fs(),
            base_purls: m.base_purls.clone(),
            known: known_checksums(Some(&pins)),
        });
        let mut pip = m.pip;
        for r in &mut pip {
            r.resolution = how;
        }
        PlatformBuild {
            layers,
            sbom,
            apt: m.apt,
            conda: m.conda,
            pip,
            reused: true,
            pins,
            memo,
            runs: Vec::new(),
        }
    }
}

/// The pins an earlier unlocked build of the same inputs kept for `img`
/// (see [`memo::KeptPins`]), with the stages' memo they lead to: only when
/// each resolution they came from would be taken again now.
fn take_kept_pins(
    plan: &BuildPlan,
    base: &base::BaseImage,
    img: &base::PlatformImage,
    opts: &BuildOptions,
    http: &Http,
) -> Option<(LockedPlatform, PlatformMemo)> {
    let setup = &plan.setup;
    let spec = &setup.spec;
    let synthetic = Lock::new(plan.inputs.clone(), Vec::new());
    let manifest = img.manifest_digest.as_ref();
    let kept = memo::KeptPins::read(
        &setup.cache,
        &synthetic.inputs_hash,
        manifest,
        &img.platform,
    )?;
    let key = memo::key(&synthetic, &kept.pins, img, opts, spec);
    let m = PlatformMemo::read(&setup.cache, &key)?;
    // A pip stage's resolution as it would be made now (the stages' pip
    // plans build sdists: `Stages::run`).
    let pip_holds = |kept: &kiln_pip::KeptResolution, section: &kiln_spec::sections::PipSection| {
        kiln_pip::kept_resolution_holds(
            kept,
            section,
            &setup.spec_dir,
            &img.platform,
            true,
            http,
            &setup.cache,
        )
        .ok()?
        .then_some(())
    };
    if let Some(section) = &spec.apt {
        // The sources and keyrings are read from the base's view, as the
        // stage reads them.
        let fs = match manifest {
            Some(d) => memo::read_view(&setup.cache, d)?,
            None if base.is_scratch() => Rootfs::default(),
            None => return None,
        };
        kiln_apt::kept_indexes_hold(
            kept.apt.as_ref()?,
            section,
            &setup.spec_dir,
            &fs,
            base.is_scratch(),
            http,
            &setup.cache,
        )
        .ok()?
        .then_some(())?;
    }
    if let Some(section) = &spec.conda {
        // The image conda solves on (the base prefix, the virtual packages
        // of its C library) is the base's, or what `[apt]` made of it with
        // the pins that held above: the same as when the pins were kept.
        let holds = kiln_conda::kept_repodata_holds(
            kept.conda.as_ref()?,
            section,
            &setup.spec_dir,
            &img.platform,
            http,
            &setup.cache,
        )
        .ok()?;
        let kiln_conda::KeptHolds::Holds { environment_pip } = holds else {
            return None;
        };
        // Its environment.yml's `pip:` list, resolved on the Python the
        // conda stage left (the same, its pins holding).
        if let Some(env_pip) = environment_pip {
            pip_holds(kept.environment_pip.as_ref()?, &env_pip)?;
        }
    }
    if let Some(section) = &spec.pip {
        pip_holds(kept.pip.as_ref()?, section)?;
    }
    Some((kept.pins, m))
}

/// The uncompressed tar streams of a platform's image so far: the base's
/// layers, then `built` (from the cache).
pub(crate) fn image_layers(
    img: &base::PlatformImage,
    blobs: &Blobs,
    built: &[NewLayer],
    cache: &Cache,
) -> Result<Vec<Box<dyn std::io::Read>>> {
    Ok(image_so_far(img, blobs, built, cache)?.readers)
}

/// [`image_layers`], with the key of that tree.
fn image_so_far(
    img: &base::PlatformImage,
    blobs: &Blobs,
    built: &[NewLayer],
    cache: &Cache,
) -> Result<crate::stages::TreeLayers> {
    use sha2::{Digest as _, Sha256};
    let mut key = Sha256::new();
    key.update("kiln-tree/1\n");
    for d in img
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain(built.iter().map(|l| &l.blob.digest))
    {
        key.update(format!("{d}\n"));
    }
    let mut layers = kiln_oci::inventory::layer_readers(img, blobs)?;
    for l in built {
        let r = layer::open_layer(cache, &l.blob)?;
        layers.push(Box::new(layer::ReadAhead::new(r)));
    }
    Ok(crate::stages::TreeLayers {
        key: Digest::from_hasher(key),
        readers: layers,
    })
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

/// A locked build's stage records (its memos), pushed as referrers of the
/// platform manifests, so `--cache-from` on another machine takes the
/// stage layers without fetching a package. Only when every platform has
/// one; records already attached are not pushed again.
fn push_stage_records(
    reg: &kiln_oci::registry::Registry,
    plan: &BuildPlan,
    repo: &str,
    assembled: &image::Assembled,
    records: &Records,
    blobs: &Blobs,
    created: &str,
) -> Result<()> {
    let cache = &plan.setup.cache;
    let Some(keys) = records
        .memos
        .iter()
        .cloned()
        .collect::<Option<Vec<Digest>>>()
    else {
        return Ok(());
    };
    let mut docs = Vec::new();
    for (i, (key, img)) in keys.iter().zip(&assembled.images).enumerate() {
        let runs = records.runs.get(i).map(Vec::as_slice).unwrap_or_default();
        let Some(bytes) = PlatformMemo::record(cache, key, runs) else {
            return Ok(());
        };
        docs.push(push::SbomBlob {
            media_type: memo::MEDIA_TYPE,
            digest: cache.put(&bytes)?,
            size: bytes.len() as u64,
            file_name: format!("{}.stages.json", img.platform.to_string().replace('/', "-")),
            created: created.to_string(),
        });
    }
    push::attach(reg, repo, &plan.tags[0], assembled, &docs, blobs)
}

/// What goes beside an image: per platform, its SBOM and its stage record.
struct Records<'a> {
    sboms: &'a [Sbom],
    memos: &'a [Option<Digest>],
    runs: &'a [Vec<memo::RunRecord>],
}

/// Push first (a failed push must not leave local outputs behind), then
/// every local output.
fn write_outputs(
    plan: &BuildPlan,
    base: &base::BaseImage,
    assembled: &image::Assembled,
    per_platform: &[Vec<NewLayer>],
    outputs: Records,
    blobs: &Blobs,
    opts: &BuildOptions,
) -> Result<Written> {
    let sboms = outputs.sboms;
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
            let report = push::push(
                reg,
                repo,
                tags,
                assembled,
                &sbom_blobs,
                blobs,
                &opts.progress,
                &plan.early.as_ref().map(|e| e.finish()).unwrap_or_default(),
            )?;
            push_stage_records(reg, plan, repo, assembled, &outputs, blobs, &created)?;
            Some(report)
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
                let repo_tags = &plan.archive_names;
                let diff_ids: Vec<_> = base.images[0]
                    .diff_ids
                    .iter()
                    .cloned()
                    .chain(per_platform[0].iter().map(|n| n.blob.diff_id.clone()))
                    .collect();
                archive::write(path, assembled, repo_tags, &diff_ids, opts.epoch, blobs)?
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
    /// The spec's text when it is not read from `spec` (a translated
    /// Dockerfile), as for a build.
    pub spec_text: Option<String>,
    /// Where the lock is when not beside the spec.
    pub lock_file: Option<PathBuf>,
    /// The Git sources the spec came from, at their commits: recorded.
    pub git: Vec<kiln_spec::lock::GitPin>,
    /// As [`BuildOptions::image_names`]: a Dockerfile stage's layout is
    /// `stage:NAME` in the lock's inputs.
    pub image_names: Vec<(String, String)>,
    /// The locks of the Dockerfile stages the target builds on: recorded.
    pub stages: Vec<kiln_spec::lock::StageLock>,
}

impl LockOptions {
    /// Lock (or fetch) the spec file at `spec`, nothing else set.
    pub fn for_spec(
        spec: PathBuf,
        insecure_registries: Vec<String>,
        cache_dir: PathBuf,
        progress: Progress,
    ) -> LockOptions {
        LockOptions {
            spec,
            insecure_registries,
            cache_dir,
            progress,
            upgrade: None,
            spec_text: None,
            lock_file: None,
            git: Vec::new(),
            image_names: Vec::new(),
            stages: Vec::new(),
        }
    }

    /// The spec, from its text or its file, with its lock's place.
    fn load_spec(&self) -> Result<Spec> {
        let mut spec = match &self.spec_text {
            Some(text) => Spec::parse(text, &self.spec)?,
            None => Spec::load(&self.spec)?,
        };
        spec.lock_file = self.lock_file.clone();
        spec.input_names = self.image_names.clone();
        Ok(spec)
    }
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
    let mut spec = opts.load_spec()?;
    // packages-files inside the spec's directory only (as `kiln build`
    // without --allow-outside-context).
    spec.read_package_files(SourceScope::Context)?;
    let path = spec.lock_path();
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
        if l.inputs == inputs
            && l.git == opts.git
            && l.stages == opts.stages
            && opts.upgrade.is_none()
        {
            return Ok(report(l, "unchanged"));
        }
    }
    let setup = Setup::for_reading(spec, None, opts)?;
    let mut blobs = setup.blobs();
    let base = setup.read_base(&mut blobs, &opts.progress)?;
    let http = Http::new()?.with_transfers(opts.progress.transfers("downloading"));
    let keep = keep_path;
    let mut stages = setup.stages(&http, &base, 0, &opts.progress, &keep, false);
    stages.upgrade_only = match (&existing, &opts.upgrade) {
        (Some(l), Some(names)) if !names.is_empty() => Some((l, names.as_slice())),
        _ => None,
    };
    // The stages' groups so far: written as layers (memoised, so the
    // build that follows reuses them) only when an sdist build needs the tree.
    let groups: std::sync::Mutex<Vec<layer::LayerGroup>> = Default::default();
    let so_far = |platform: &kiln_core::platform::Platform| {
        let img = base.image_for(platform);
        let gzip = Compression::DEFAULT;
        let built = groups
            .lock()
            .unwrap()
            .iter()
            .map(|g| {
                let built =
                    layer::build_layer_reporting(&g.entries, &g.parts, 0, gzip, &setup.cache)?;
                Ok(NewLayer {
                    blob: built.blob,
                    created_by: g.label.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        image_so_far(img, &blobs, &built, &setup.cache)
    };
    stages.tree = Some(&so_far);
    let mut platforms = Vec::new();
    for img in &base.images {
        let mut fs = base_rootfs(&base, img, &blobs, &keep)?;
        groups.lock().unwrap().clear();
        let outcome = stages.run(&img.platform, &mut fs, None, &mut |g| {
            groups.lock().unwrap().extend(g.iter().cloned());
            Ok(())
        })?;
        platforms.push(platform_pins(&setup, &base, img, outcome.pins));
    }
    let mut new = Lock::new(inputs, platforms);
    new.git = opts.git.clone();
    new.stages = opts.stages.clone();
    new.images = image_pins(&setup.spec, &opts.insecure_registries)?;
    // The same pins keep their date (and leave the file alone); new pins are dated now.
    new.resolved_at = existing.as_ref().and_then(|l| l.resolved_at.clone());
    let status = match &existing {
        Some(l) if *l == new && l.resolved_at.is_some() => "unchanged",
        Some(_) => "updated",
        None => "written",
    };
    if status != "unchanged" {
        new.resolved_at = Some(kiln_core::time::rfc3339(now_epoch()));
    }
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
    let spec = opts.load_spec()?;
    let (Some(lock), _, _) = pins_for(&spec, LockMode::Locked)? else {
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
    let http = Http::new()?.with_transfers(opts.progress.transfers("downloading"));
    // (A wheel kiln built: its sdist; the build makes the wheel.)
    let artifacts = lock.downloadable_digests();
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
        outputs: vec![OutputTarget::Layout(scratch.path().join("second"))],
        push: false,
        progress: Progress::hidden(),
        reuse: false,
        ..opts.clone()
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

/// `kiln build --dry-run`: the checks and the resolution of a build (from
/// kiln.lock when it matches, as a build would), and what would be built
/// and written; no layer, output, lock or push. Without a matching lock the
/// stages resolve as `kiln lock` does (index pages and the packages later
/// stages read go to the cache).
pub fn dry_run(opts: &BuildOptions) -> Result<summary::DryRun> {
    let plan = plan_build(opts)?;
    let setup = &plan.setup;
    if let Some(r) = &setup.registry {
        r.count_transfers(plan.tally.transfers.clone());
    }
    let mut blobs = setup.blobs();
    let base = setup.load_base(&mut blobs, opts.compression, &opts.progress)?;
    if let Some(lock) = &plan.pinned {
        check_locked_base(&base, lock, &setup.spec)?;
    }
    let spec = &setup.spec;
    let mut stage_names = Vec::new();
    for (on, name) in [
        (spec.apt.is_some(), "apt"),
        (spec.conda.is_some(), "conda"),
        (spec.pip.is_some(), "pip"),
    ] {
        if on {
            stage_names.push(name.to_string());
        }
    }
    let cached = |d: &kiln_core::digest::Digest| match setup.cache.verified(d) {
        Ok(Some(_)) => "cached",
        _ => "download",
    };
    let action = |reused: bool| if reused { "reuse" } else { "build" };
    // A layer the build would make: reused when the memo has it.
    let planned = |g: &layer::LayerGroup| -> Result<summary::PlannedLayer> {
        let hit = layer::cached_layer(
            &g.entries,
            &g.parts,
            opts.epoch,
            opts.compression,
            &setup.cache,
        )?;
        Ok(summary::PlannedLayer {
            created_by: g.label.clone(),
            action: action(hit.is_some()),
        })
    };
    let http = if opts.offline {
        Http::offline()?
    } else {
        Http::new()?
    }
    .with_transfers(plan.tally.transfers.clone());
    let keep = keep_path;
    let mut platforms = Vec::new();
    for img in &base.images {
        let platform = img.platform.to_string();
        let locked = plan
            .pinned
            .as_ref()
            .map(|l| locked_platform(l, &img.platform))
            .transpose()?;
        let mut layers = Vec::new();
        let mut stages_reused = false;
        // The stages' layers and the tree after them, when known now.
        let mut after_stages: Option<(Vec<NewLayer>, Rootfs)> = None;
        let pins = match locked {
            Some(pins) => {
                let key = memo::key(plan.pinned.as_ref().expect("locked"), pins, img, opts, spec);
                // (`[[run]]` steps run after the stages either way.)
                match PlatformMemo::read(&setup.cache, &key) {
                    Some(m) => {
                        stages_reused = true;
                        after_stages = Some((m.layers(), m.fs()));
                        layers.extend(m.layers().into_iter().map(|l| summary::PlannedLayer {
                            created_by: l.created_by,
                            action: "reuse",
                        }));
                    }
                    // Which layers the stages make is known once they unpack.
                    None => layers.extend(stage_names.iter().map(|n| summary::PlannedLayer {
                        created_by: format!("kiln {n} (stage)"),
                        action: "build",
                    })),
                }
                pins.clone()
            }
            None if stage_names.is_empty() => LockedPlatform::default(),
            None => {
                let mut fs = base_rootfs(&base, img, &blobs, &keep)?;
                let mut stages =
                    setup.stages(&http, &base, opts.epoch, &opts.progress, &keep, false);
                stages.resolve_only = true;
                let outcome = stages.run(&img.platform, &mut fs, None, &mut |groups| {
                    for g in groups {
                        layers.push(planned(g)?);
                    }
                    Ok(())
                })?;
                // The last stage only resolved: its layer is not made.
                let last = [
                    ("pip", outcome.pins.pip.is_empty()),
                    ("conda", outcome.pins.conda.is_empty()),
                    ("apt", outcome.pins.apt.is_empty()),
                ]
                .into_iter()
                .find(|(_, empty)| !empty);
                if let Some((name, _)) = last {
                    layers.push(summary::PlannedLayer {
                        created_by: format!("kiln {name} packages"),
                        action: "build",
                    });
                }
                outcome.pins
            }
        };
        if stage_names.is_empty() && !spec.run.is_empty() {
            let fs = match img
                .manifest_digest
                .as_ref()
                .and_then(|d| memo::read_view(&setup.cache, d))
            {
                Some(fs) => fs,
                None => base_rootfs(&base, img, &blobs, &keep)?,
            };
            after_stages = Some((Vec::new(), fs));
        }
        let commands = planned_commands(&plan, img, after_stages, opts)?;
        platforms.push(summary::PlannedPlatform {
            packages: summary::package_lines(&platform, &pins, cached),
            platform,
            stages: stage_names.clone(),
            stages_reused,
            layers,
            commands,
        });
    }
    let files = plan
        .file_groups
        .iter()
        .map(planned)
        .collect::<Result<Vec<_>>>()?;
    let mut packages = std::collections::BTreeMap::new();
    for l in platforms.iter().flat_map(|p| &p.packages) {
        *packages.entry(l.ecosystem.to_string()).or_insert(0) += 1;
    }
    Ok(summary::DryRun {
        spec: spec.path.display().to_string(),
        base: setup.base_src.to_string(),
        lock: plan.lock_status.to_string(),
        platforms,
        packages,
        files,
        outputs: plan.outputs.iter().map(|o| o.to_string()).collect(),
        push: plan.push.as_ref().map(|(_, r)| r.whole()),
        bytes_downloaded: plan.tally.transfers.bytes(),
    })
}

/// What `img`'s `[[run]]` steps are remembered under, over the stages'
/// layers `stages` (see [`run_steps::RunsUnder`]).
fn runs_under(
    img: &base::PlatformImage,
    stages: &[NewLayer],
    opts: &BuildOptions,
) -> run_steps::RunsUnder {
    let base_ids = img.config["rootfs"]["diff_ids"].as_array();
    let diff_ids = base_ids
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .chain(stages.iter().map(|l| l.blob.diff_id.to_string()));
    run_steps::RunsUnder::new(diff_ids, opts.epoch, opts.compression, opts.reuse)
}

/// The `[[run]]` steps of a plan, in the order they run: those an earlier
/// build remembered over the same layers, as far as they are known
/// (`after_stages`: the stages' layers and the tree they leave), then
/// the rest, which would run.
fn planned_commands(
    plan: &BuildPlan,
    img: &base::PlatformImage,
    after_stages: Option<(Vec<NewLayer>, Rootfs)>,
    opts: &BuildOptions,
) -> Result<Vec<summary::PlannedLayer>> {
    let spec = &plan.setup.spec;
    let labels = run_steps::labels(spec, plan.file_groups.len());
    let remembered = match after_stages {
        Some((stage_layers, mut fs)) if opts.reuse && !labels.is_empty() => {
            let mut under = runs_under(img, &stage_layers, opts);
            under.plan_only = true;
            let planned = run_steps::groups(
                spec,
                &img.config,
                &|| Ok(Vec::new()),
                &plan.file_groups,
                &mut fs,
                &keep_path,
                opts.network,
                &plan.setup.cache,
                &opts.progress,
                under,
            )?;
            planned
                .iter()
                .filter(|p| matches!(p, run_steps::Planned::Remembered(..)))
                .count()
        }
        _ => 0,
    };
    Ok(labels
        .into_iter()
        .enumerate()
        .map(|(i, created_by)| summary::PlannedLayer {
            created_by,
            action: if i < remembered { "remembered" } else { "run" },
        })
        .collect())
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

/// The lock a build takes its pins from (when it matches the spec), what
/// it says about the lock, and the spec's inputs.
fn pins_for(spec: &Spec, mode: LockMode) -> Result<(Option<Lock>, &'static str, Vec<String>)> {
    let path = spec.lock_path();
    let existing = Lock::read(&path)?;
    let inputs = lock::inputs(spec)?;
    let (lock, status) = match existing {
        Some(l) if l.inputs == inputs => (Some(l), "used"),
        Some(l) if mode == LockMode::Locked => {
            return Err(SpecError::LockMismatch {
                diff: lock::diff(&l.inputs, &inputs),
                lock: path,
                spec: spec.path.clone(),
            }
            .into())
        }
        None if mode == LockMode::Locked => {
            return Err(SpecError::LockMissing { lock: path }.into())
        }
        Some(_) => (None, "stale"),
        None => (None, "absent"),
    };
    Ok((lock, status, inputs))
}

/// The registry images `[[files]] from` names by tag, at their digests now.
fn image_pins(spec: &Spec, insecure: &[String]) -> Result<Vec<lock::ImagePin>> {
    let mut pins = Vec::new();
    for from in spec.files.iter().filter_map(|f| f.from.as_deref()) {
        let src = ImageSource::parse(from, &spec.dir())?;
        let ImageSource::Registry(r) = &src else {
            continue;
        };
        if r.digest().is_some() || pins.iter().any(|p: &lock::ImagePin| p.reference == from) {
            continue;
        }
        let registry = registry_for(&src, None, false, insecure)?
            .ok_or_else(|| Error::internal("no registry client for a registry image"))?;
        let at = |e: Error| {
            e.context(format!(
                "{}: [[files]] from = {from:?}",
                spec.path.display()
            ))
        };
        let digest = registry.tag_digest(r).map_err(at)?.ok_or_else(|| {
            at(Error::input(format!(
                "{} is not in the registry",
                r.whole()
            )))
        })?;
        pins.push(lock::ImagePin {
            reference: from.to_string(),
            digest: digest.parse()?,
        });
    }
    pins.sort();
    Ok(pins)
}

/// `[[files]] from` a registry image by tag: at the digest the lock recorded.
fn pinned_image(src: ImageSource, from: &str, lock: Option<&Lock>) -> ImageSource {
    let pin = lock.and_then(|l| l.images.iter().find(|p| p.reference == from));
    match (src, pin) {
        (ImageSource::Registry(r), Some(p)) if r.digest().is_none() => {
            ImageSource::Registry(oci_client::Reference::with_digest(
                r.registry().into(),
                r.repository().into(),
                p.digest.to_string(),
            ))
        }
        (src, _) => src,
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
    // A Dockerfile stage is pinned by its own lock; its digest also depends
    // on how it is built (compression), so it is not held to the lock's.
    if spec.input_names.iter().any(|(r, _)| *r == spec.image.base) {
        return Ok(());
    }
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

/// A platform's pins as the lock records them: the stages' pins with the
/// platform and its base.
fn platform_pins(
    setup: &Setup,
    base: &base::BaseImage,
    img: &base::PlatformImage,
    pins: LockedPlatform,
) -> LockedPlatform {
    LockedPlatform {
        platform: img.platform.to_string(),
        base: img.manifest_digest.clone(),
        base_top: match &setup.base_src {
            ImageSource::Registry(_) => base.top_digest.clone(),
            _ => None,
        },
        ..pins
    }
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

/// [`build_groups`] of the layers to build, in order with the commands'
/// layers remembered from earlier builds; each command's new layer is
/// remembered by its key. Also every command's layer with its key.
fn build_planned(
    planned: Vec<run_steps::Planned>,
    opts: &BuildOptions,
    cache: &Cache,
    plan: &BuildPlan,
) -> Result<(Vec<NewLayer>, Vec<memo::RunRecord>)> {
    use run_steps::Planned;
    // The groups to build go to `build_groups` together; each place in the
    // order keeps what it needs to take its layer back.
    enum Slot {
        Built(Option<Digest>),
        Remembered(layer::LayerBlob, String, Digest),
    }
    let mut groups = Vec::new();
    let mut order = Vec::new();
    for p in planned {
        match p {
            Planned::Build(g, key) => {
                groups.push(g);
                order.push(Slot::Built(key));
            }
            Planned::Remembered(blob, created_by, key) => {
                order.push(Slot::Remembered(blob, created_by, key))
            }
        }
    }
    let mut built = build_groups(&groups, opts, cache, plan)?.into_iter();
    let (mut out, mut runs) = (Vec::new(), Vec::new());
    for slot in order {
        match slot {
            Slot::Built(key) => {
                let layer = built.next().expect("one built layer per group");
                if let Some(key) = key {
                    plan.tally.command(false);
                    layer::remember(cache, &key, &layer.blob);
                    let layer = layer.blob.clone();
                    runs.push(memo::RunRecord { key, layer });
                }
                out.push(layer);
            }
            Slot::Remembered(blob, created_by, key) => {
                let layer = blob.clone();
                runs.push(memo::RunRecord { key, layer });
                plan.tally.command(true);
                plan.tally.layer(&blob.digest, true);
                if let Some(early) = &plan.early {
                    early.send(&blob.digest, blob.size);
                }
                out.push(NewLayer { blob, created_by });
            }
        }
    }
    Ok((out, runs))
}

/// Build labelled entry groups into layers, in parallel; order is kept.
/// With `--push`, each goes to the registry as soon as it is built.
fn build_groups(
    groups: &[layer::LayerGroup],
    opts: &BuildOptions,
    cache: &Cache,
    plan: &BuildPlan,
) -> Result<Vec<NewLayer>> {
    let tally = &plan.tally;
    let bar = opts.progress.bar(groups.len() as u64, "building layers");
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let out = groups
        .par_iter()
        .map(|g| {
            // Without reuse, nothing comes from the cache: not even parts.
            let built = layer::build_layer_using(
                &g.entries,
                &g.parts,
                opts.epoch,
                opts.compression,
                cache,
                opts.reuse,
            )?;
            tally.parts_copied(built.parts_copied);
            let (blob, reused) = (built.blob, built.reused);
            tally.layer(&blob.digest, reused);
            if let Some(early) = &plan.early {
                early.send(&blob.digest, blob.size);
            }
            let total =
                bytes.fetch_add(blob.size, std::sync::atomic::Ordering::Relaxed) + blob.size;
            bar.set_message(format!("layers {}", summary::human_bytes(total)));
            bar.inc(1);
            Ok(NewLayer {
                blob,
                created_by: g.label.clone(),
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

/// `known` plus the packages the spec names (the SBOM's image DEPENDS_ON
/// them; `kiln why` starts its chains there).
fn with_requested(mut known: sbom::Known, spec: &Spec) -> sbom::Known {
    // The name before any version, architecture or extras.
    let name = |s: &str| -> String {
        let s = s.trim();
        let s = s.rsplit_once("::").map_or(s, |(_, n)| n);
        s.split(|c: char| !(c.is_ascii_alphanumeric() || "-_.+".contains(c)))
            .next()
            .unwrap_or("")
            .to_string()
    };
    let sections: [(&str, &[String]); 3] = [
        ("deb", spec.apt.as_ref().map_or(&[], |a| &a.packages)),
        ("pypi", spec.pip.as_ref().map_or(&[], |p| &p.packages)),
        ("conda", spec.conda.as_ref().map_or(&[], |c| &c.packages)),
    ];
    for (eco, packages) in sections {
        for p in packages {
            let n = name(p);
            if !n.is_empty() {
                known.add_requested(eco, &n);
            }
        }
    }
    known
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
            &with_requested(input.known, spec),
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
            outputs: vec![OutputTarget::Layout(dir.path().join("out"))],
            sbom: false,
            ..BuildOptions::defaults(path, dir.path().join("cache"), Progress::hidden())
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
            Ok((None, "stale", _))
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
