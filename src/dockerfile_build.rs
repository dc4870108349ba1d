//! Multi-stage Dockerfiles: the stages the target needs are translated
//! (kiln-dockerfile), each into its own spec, and built in order by the
//! same pipeline and cache into scratch OCI layouts under the cache's `tmp`
//! bucket; the target then names them as its base (`FROM <stage>`) or in
//! `[[files]] from` (`COPY --from=<stage>`). The layouts live as long as
//! the [`Prepared`] build and are never named in an image: they are shown
//! as `stage:NAME` ([`BuildOptions::image_names`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::build::{self, BuildOptions, LockMode};
use kiln_core::error::{Error, IoContext, Result};
use kiln_dockerfile::{BaseConfig, Options, StageSpec, Translation};
use kiln_spec::lock::{Lock, StageLock};
use kiln_spec::source::{ImageSource, OutputTarget};
use kiln_store::cache::{temp_prefix, Cache, CacheBucket};

/// A translated Dockerfile whose earlier stages are still to be built.
pub struct Prepared {
    /// The stages' scratch layouts (removed when this is dropped).
    dir: tempfile::TempDir,
    /// The stages the target needs, in build order (the target excluded).
    stages: Vec<StageSpec>,
    /// Where the translated specs stand (the context).
    spec_path: PathBuf,
}

/// One built stage, for the report.
#[derive(Debug, Serialize)]
pub struct StageBuilt {
    pub stage: String,
    pub digest: String,
}

/// The layout stage `index` is built into.
fn layout(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("stage-{index}"))
}

/// Stage `index`'s image in kiln's base syntax.
fn image_ref(dir: &Path, index: usize) -> String {
    format!("oci:{}:latest", layout(dir, index).display())
}

/// The Env and WorkingDir of a Dockerfile's base, for `$PATH`-like
/// variables and relative paths (BuildKit reads them too); a registry base
/// is not read offline.
pub fn base_config(
    image: &str,
    platform: Option<&str>,
    context: &Path,
    offline: bool,
    insecure: &[String],
    cache_dir: &Path,
) -> Result<Option<BaseConfig>> {
    let src = ImageSource::parse(image, context)?;
    if offline && matches!(src, ImageSource::Registry(_)) {
        return Ok(None);
    }
    let platform = platform.map(str::parse).transpose()?;
    let cache = Cache::open(cache_dir)?;
    let report = kiln_oci::inspect::inspect(&src, platform, insecure, &cache)?;
    let d = kiln_oci::image::ProcessDefaults::of(&report.config);
    Ok(Some(BaseConfig {
        env: d.env,
        workdir: d.workdir,
    }))
}

/// Translate `text` for `opts.target` (default: the last stage); the
/// stages it needs get layouts in a scratch directory of the cache at
/// `cache_dir` (`opts.stage_image` is set here).
pub fn translate(
    text: &str,
    dockerfile: &Path,
    context: &Path,
    opts: Options,
    cache_dir: &Path,
) -> Result<(Translation, Prepared)> {
    let cache = Cache::open(cache_dir)?;
    let tmp = cache.bucket(CacheBucket::Tmp);
    let dir = tempfile::Builder::new()
        .prefix(&temp_prefix("stages"))
        .tempdir_in(&tmp)
        .io_context(|| format!("creating a directory in {}", tmp.display()))?;
    let root = dir.path().to_path_buf();
    let stage_image = move |i: usize| image_ref(&root, i);
    let opts = Options {
        stage_image: Some(&stage_image),
        ..opts
    };
    let mut s = kiln_dockerfile::translate_stages(text, dockerfile, context, &opts)?;
    let target = s.stages.pop().expect("a translation has a target stage");
    let t = Translation {
        spec: target.spec,
        toml: target.toml,
        explained: s.explained,
        warnings: s.warnings,
    };
    let prepared = Prepared {
        dir,
        stages: s.stages,
        spec_path: kiln_dockerfile::spec_path(context),
    };
    Ok((t, prepared))
}

impl Prepared {
    /// Whether the target needs other stages built first.
    pub fn has_stages(&self) -> bool {
        !self.stages.is_empty()
    }

    /// The names of the stages the target needs.
    pub fn stage_labels(&self) -> Vec<String> {
        self.stages.iter().map(|s| s.label.clone()).collect()
    }

    /// How the stages' layouts are shown in images: `stage:NAME`.
    pub fn image_names(&self) -> Vec<(String, String)> {
        self.stages
            .iter()
            .map(|s| {
                (
                    image_ref(self.dir.path(), s.index),
                    format!("stage:{}", s.label),
                )
            })
            .collect()
    }

    /// The lock a stage is built with: written in the scratch directory
    /// from its entry in the target's lock.
    fn stage_lock(&self, s: &StageSpec) -> PathBuf {
        self.dir.path().join(format!("stage-{}.kiln.lock", s.index))
    }

    /// A stage's build: the target's options (cache, compression, network,
    /// …) into its layout, with its own lock; no SBOM, no push.
    fn stage_options(&self, s: &StageSpec, opts: &BuildOptions, mode: LockMode) -> BuildOptions {
        BuildOptions {
            spec: self.spec_path.clone(),
            spec_text: Some(s.toml.clone()),
            outputs: vec![OutputTarget::Layout(layout(self.dir.path(), s.index))],
            push: false,
            archive_names: Vec::new(),
            sbom: false,
            lock_mode: mode,
            lock_file: Some(self.stage_lock(s)),
            image_names: self.image_names(),
            ..opts.clone()
        }
    }

    /// Build the stages the target needs, in order. Each takes its pins
    /// from `locks` (the target lock's `[[stage]]` entries) when they match
    /// it; under `--locked` every stage must have them.
    pub fn build_stages(
        &self,
        opts: &BuildOptions,
        locks: &[StageLock],
    ) -> Result<Vec<StageBuilt>> {
        let mut built = Vec::new();
        for s in &self.stages {
            let pinned = locks.iter().find(|l| l.name == s.label);
            match pinned {
                Some(l) => l.lock.write(&self.stage_lock(s))?,
                None if opts.lock_mode == LockMode::Locked => {
                    return Err(Error::input(format!(
                        "--locked: the lock has no pins for the Dockerfile stage `{}` the target \
                         builds on; run `kiln lock --dockerfile ...` first",
                        s.label
                    )))
                }
                None => {}
            }
            let mode = match pinned {
                Some(_) => opts.lock_mode,
                None => LockMode::Auto,
            };
            let r = build::build(&self.stage_options(s, opts, mode))
                .map_err(|e| e.context(format!("Dockerfile stage `{}`", s.label)))?;
            built.push(StageBuilt {
                stage: s.label.clone(),
                digest: r.digest,
            });
        }
        Ok(built)
    }

    /// `kiln lock` of the stages the target builds on: each is resolved
    /// (what `existing` pinned for it kept, as `kiln lock` keeps a lock,
    /// unless upgrading) and built from those pins, as the next stage reads
    /// it. Returns their locks for the target's lock.
    pub fn lock_stages(
        &self,
        opts: &BuildOptions,
        lock: &build::LockOptions,
        existing: &[StageLock],
    ) -> Result<Vec<StageLock>> {
        let mut out = Vec::new();
        for s in &self.stages {
            let path = self.stage_lock(s);
            if let Some(l) = existing.iter().find(|l| l.name == s.label) {
                l.lock.write(&path)?;
            }
            let at = |e: kiln_core::Error| e.context(format!("Dockerfile stage `{}`", s.label));
            build::lock(&build::LockOptions {
                upgrade: lock.upgrade.clone(),
                spec_text: Some(s.toml.clone()),
                lock_file: Some(path.clone()),
                image_names: self.image_names(),
                ..build::LockOptions::for_spec(
                    self.spec_path.clone(),
                    lock.insecure_registries.clone(),
                    lock.cache_dir.clone(),
                    lock.progress.clone(),
                )
            })
            .map_err(at)?;
            build::build(&self.stage_options(s, opts, LockMode::Locked)).map_err(at)?;
            let l = Lock::read(&path)?
                .ok_or_else(|| kiln_core::Error::internal("a stage lock was not written"))?;
            out.push(StageLock {
                name: s.label.clone(),
                lock: l,
            });
        }
        Ok(out)
    }
}
