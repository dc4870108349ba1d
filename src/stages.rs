//! The package stages of one platform, in order: apt → conda (and an
//! environment.yml `pip:` list) → pip. Each stage resolves afresh or takes
//! its pins from kiln.lock, hands its layer groups to `emit` (which builds
//! layers, or does nothing when only locking), and lays them onto the
//! filesystem view the next stage reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use kiln_apt as apt;
use kiln_conda as conda;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_core::progress::Progress;
use kiln_fs::layer::{Compression, Entry, LayerGroup};
use kiln_fs::rootfs::Rootfs;
use kiln_pip as pip;
use kiln_spec::lock::LockedPlatform;
use kiln_spec::spec::Spec;
use kiln_store::cache::Cache;
use kiln_store::http::Http;

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct PipReport {
    pub python: String,
    pub installed: Vec<String>,
    pub already_installed: Vec<String>,
    /// `resolved`, `kept` (an earlier build's, for the same inputs and
    /// index pages) or `locked`.
    #[serde(default)]
    pub resolution: pip::Resolution,
    /// `[pip] compile`: the pycs made (absent when not asked or only locking).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytecode: Option<crate::bytecode::BytecodeReport>,
}

/// What the stages of one platform did.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) apt: Option<apt::AptReport>,
    pub(crate) conda: Option<conda::CondaReport>,
    pub(crate) pip: Vec<PipReport>,
    /// What a lock records for this platform (the caller fills in platform and base).
    pub(crate) pins: LockedPlatform,
    /// The signed indexes the apt stage resolved from (see `memo::KeptPins`).
    pub(crate) apt_kept: Option<apt::KeptIndexes>,
    /// The repodata the conda stage solved from.
    pub(crate) conda_kept: Option<conda::KeptRepodata>,
    /// The kept resolution of each pip stage that ran, by its name in the
    /// lock (`[pip]`'s, an environment.yml's `pip:` list's).
    pub(crate) kept: BTreeMap<&'static str, Option<pip::KeptResolution>>,
}

pub(crate) struct Stages<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) spec_dir: &'a Path,
    pub(crate) http: &'a Http,
    pub(crate) cache: &'a Cache,
    pub(crate) epoch: u64,
    pub(crate) progress: &'a Progress,
    /// The base is `scratch` (apt may bootstrap).
    pub(crate) scratch: bool,
    /// Which base paths the filesystem view keeps the contents of.
    pub(crate) keep: &'a dyn Fn(&str) -> bool,
    /// `kiln lock --upgrade PKG...`: the previous lock, whose versions are
    /// kept for every package not named.
    pub(crate) upgrade_only: Option<(&'a kiln_spec::lock::Lock, &'a [String])>,
    /// Run apt maintainer scripts (`keep` must then keep every content).
    pub(crate) run_scripts: bool,
    /// `kiln build --dry-run`: the last stage only resolves (its packages
    /// are not downloaded, unpacked or emitted); earlier ones run, since
    /// the next stage reads what they install.
    pub(crate) resolve_only: bool,
    /// The image so far as uncompressed tar streams (the base's layers,
    /// then those emitted), for running its Python (`[pip] compile`,
    /// building sdists);
    /// `None` when no layers are built.
    pub(crate) tree: Option<&'a ImageSoFar<'a>>,
    /// Add the pip stages' bytecode (`[pip] compile`; needs `tree`): a
    /// build, not a lock.
    pub(crate) bytecode: bool,
    /// Write the layers of wheels with a layer of their own while the
    /// other wheels download ([`pip::LayerAhead`]): a build that reuses
    /// layers from its memo.
    pub(crate) ahead: Option<Ahead<'a>>,
}

/// How the build writes layers, for the ones written ahead.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<'a> {
    pub(crate) compression: Compression,
    pub(crate) tally: &'a crate::summary::Tally,
}

/// Writes a wheel's own layer into the layer memo as [`Stages::lay`] and
/// the build's layer step would: its directories as the tree below the
/// stage has them, the same epoch and compression. The layer step then
/// finds it; it counts as built by this build. As many at once as there
/// are cores: each holds a few MiB of chunks in flight, and more builds
/// than cores would buy nothing but memory (24 wheels of 100 MB peaked at
/// 146 MB with one per download thread).
struct PipLayersAhead<'a> {
    fs: &'a Rootfs,
    epoch: u64,
    cache: &'a Cache,
    how: Ahead<'a>,
    slots: Slots,
    /// Each wheel's entries go to the compiler's tree too, once started
    /// ([`crate::bytecode::Early::feed`]).
    compile: &'a (dyn Fn(&[Entry]) + Sync),
}

impl pip::LayerAhead for PipLayersAhead<'_> {
    fn own_layer(&self, mut entries: Vec<Entry>) {
        (self.compile)(&entries);
        self.fs.adopt_existing_dirs(&mut entries);
        let _slot = self.slots.take_weighing(weight(&entries));
        // Best effort: a failure here is met again, and reported, there.
        if let Ok(built) = kiln_fs::layer::build_layer_reporting(
            &entries,
            &[],
            self.epoch,
            self.how.compression,
            self.cache,
        ) {
            self.how.tally.layer_ahead(&built.blob.digest, built.reused);
        }
    }

    fn shared_part(&self, entries: Vec<Entry>) {
        (self.compile)(&entries);
        let _slot = self.slots.take_weighing(weight(&entries));
        // Best effort: the shared layer compresses a part it cannot find.
        if let Ok(false) =
            kiln_fs::layer::build_part_ahead(&entries, self.epoch, self.how.compression, self.cache)
        {
            self.how.tally.part_ahead();
        }
    }
}

impl<'a> PipLayersAhead<'a> {
    fn new(
        fs: &'a Rootfs,
        epoch: u64,
        cache: &'a Cache,
        how: Ahead<'a>,
        compile: &'a (dyn Fn(&[Entry]) + Sync),
    ) -> Self {
        PipLayersAhead {
            fs,
            epoch,
            cache,
            how,
            slots: Slots::one_a_core(),
            compile,
        }
    }
}

/// The bytes of the files in `entries`: what a layer waiting for a slot
/// weighs ([`Slots::take_weighing`]).
fn weight(entries: &[Entry]) -> u64 {
    entries.iter().filter_map(|e| e.kind.file_len()).sum()
}

/// Work done at most one a core at once (layers written ahead, batches
/// compiled ahead): a count of free slots, each taken by a guard and given
/// back when the guard drops, however the work ends.
///
/// A freed slot goes to the heaviest work waiting (the earliest of equals):
/// a big wheel that lands while the cores are busy with small ones would
/// otherwise wait its turn and then be written alone at the end. A cold
/// 110-wheel freeze wrote pyarrow's layer last, one core idle for 0.2 s.
pub(crate) struct Slots {
    state: std::sync::Mutex<SlotState>,
    freed: std::sync::Condvar,
}

struct SlotState {
    free: usize,
    /// (weight, arrival) of each waiter; the greatest goes next.
    waiting: std::collections::BinaryHeap<(u64, std::cmp::Reverse<u64>)>,
    arrivals: u64,
}

/// A slot of [`Slots`], taken until dropped.
pub(crate) struct Slot<'s>(&'s Slots);

impl Slots {
    pub(crate) fn one_a_core() -> Slots {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Slots::new(cores)
    }

    fn new(free: usize) -> Slots {
        Slots {
            state: std::sync::Mutex::new(SlotState {
                free,
                waiting: std::collections::BinaryHeap::new(),
                arrivals: 0,
            }),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Wait for a free slot, in turn (after any heavier waiter of
    /// [`Slots::take_weighing`]).
    pub(crate) fn take(&self) -> Slot<'_> {
        self.take_weighing(0)
    }

    /// Wait for a free slot and no heavier waiter before this one.
    pub(crate) fn take_weighing(&self, weight: u64) -> Slot<'_> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let me = (weight, std::cmp::Reverse(s.arrivals));
        s.arrivals += 1;
        s.waiting.push(me);
        while s.free == 0 || s.waiting.peek() != Some(&me) {
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.waiting.pop();
        s.free -= 1;
        if s.free > 0 && !s.waiting.is_empty() {
            // Another slot is free: the next waiter may be asleep.
            self.freed.notify_all();
        }
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).free += 1;
        // Every waiter looks: only the heaviest goes.
        self.0.freed.notify_all();
    }
}

/// The uncompressed tar streams of a platform's image so far.
pub(crate) type ImageSoFar<'a> = dyn Fn(&Platform) -> Result<TreeLayers> + Sync + 'a;

/// An image so far: its layers' tar streams, and a key naming them (the
/// layers' digests), under which its tree is kept written out.
pub(crate) struct TreeLayers {
    pub(crate) key: kiln_core::digest::Digest,
    pub(crate) readers: Vec<Box<dyn std::io::Read>>,
}

/// The pip list of an environment.yml, as recorded in the lock.
pub(crate) const ENV_PIP: &str = "environment";
pub(crate) const PIP: &str = "pip";

impl Stages<'_> {
    /// Run every stage the spec has for `platform`, fresh or from `locked`.
    pub(crate) fn run(
        &self,
        platform: &Platform,
        fs: &mut Rootfs,
        locked: Option<&LockedPlatform>,
        emit: &mut dyn FnMut(&[LayerGroup]) -> Result<()>,
    ) -> Result<Outcome> {
        let mut out = Outcome::default();
        let (spec, http, cache) = (self.spec, self.http, self.cache);
        let previous = self
            .upgrade_only
            .and_then(|(l, names)| l.platform(&platform.to_string()).map(|p| (p, names)));
        let upgrading = |name: &str, names: &[String]| {
            names
                .iter()
                .any(|n| pip::normalize(n) == pip::normalize(name))
        };

        // The client of the last stage when only resolving.
        let deferring = self.http.clone().deferring();
        if let Some(section) = &spec.apt {
            let last = self.resolve_only && spec.conda.is_none() && spec.pip.is_none();
            let http = if last { &deferring } else { http };
            let mut section = section.clone();
            if let Some((prev, names)) = previous {
                section.pinned = prev
                    .apt
                    .iter()
                    .filter(|a| !upgrading(&a.name, names))
                    .map(|a| (a.name.clone(), a.version.clone()))
                    .collect();
            }
            let section = &section;
            if self.run_scripts {
                apt::scripts::check_host(apt::debian_arch(platform)?)?;
            }
            let spinner = self
                .progress
                .spinner(&format!("apt: resolving for {platform}"));
            let plan = match locked {
                Some(l) => {
                    apt::plan_locked(section, self.spec_dir, &l.apt, fs, platform, http, cache)?
                }
                None => apt::plan(
                    section,
                    self.spec_dir,
                    fs,
                    platform,
                    self.scratch,
                    http,
                    cache,
                )?,
            };
            out.apt_kept = plan.kept.clone();
            if last {
                spinner.finish_and_clear();
                out.pins.apt = apt::pins(&plan);
                return Ok(out);
            }
            spinner.finish_and_clear();
            let bar = self
                .progress
                .bar(plan.packages.len() as u64, "apt: unpacking");
            let bytes = std::sync::atomic::AtomicU64::new(0);
            let unpacked = |n: u64| {
                let total = bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
                bar.set_message(format!(
                    "apt: unpacked {}",
                    crate::summary::human_bytes(total)
                ));
                bar.inc(1);
            };
            let (mut groups, mut report) =
                apt::layer_groups_counted(&plan, fs, cache, self.epoch, &unpacked)?;
            bar.finish_and_clear();
            let spinner = self
                .progress
                .spinner(&format!("apt: layering for {platform}"));
            self.lay(fs, &mut groups);
            if self.run_scripts {
                // `keep` holds every content then, so `fs` is the whole assembled tree.
                spinner.set_message(format!("apt: running maintainer scripts for {platform}"));
                let run = apt::scripts::run(
                    &plan,
                    fs,
                    &cache.bucket(kiln_store::CacheBucket::Tmp),
                    self.epoch,
                )?;
                report.skipped_scripts.clear();
                report.ran_scripts = run.ran;
                if !run.entries.is_empty() {
                    let layer = LayerGroup::new("kiln apt maintainer scripts", run.entries);
                    self.apply(fs, std::slice::from_ref(&layer));
                    groups.push(layer);
                }
            }
            spinner.finish_and_clear();
            emit(&groups)?;
            out.pins.apt = apt::pins(&plan);
            out.apt = Some(report);
        }

        if let Some(section) = &spec.conda {
            let mut section = section.clone();
            if let Some((prev, names)) = previous {
                section.prefer = prev
                    .conda
                    .iter()
                    .filter(|c| !upgrading(&c.name, names))
                    .map(|c| (c.name.clone(), c.version.clone(), c.build.clone()))
                    .collect();
            }
            let section = &section;
            let spinner = self
                .progress
                .spinner(&format!("conda: solving for {platform}"));
            // An environment.yml may bring a pip list, known once solved.
            let last = self.resolve_only && spec.pip.is_none();
            let defer = last && section.environment.is_none();
            let http = if defer { &deferring } else { http };
            let plan = match locked {
                Some(l) => {
                    conda::plan_locked(section, self.spec_dir, fs, platform, &l.conda, http, cache)?
                }
                None => conda::plan(section, self.spec_dir, fs, platform, http, cache)?,
            };
            out.conda_kept = plan.kept.clone();
            if last && plan.pip.is_none() {
                spinner.finish_and_clear();
                out.pins.conda = conda::pins(&plan);
                return Ok(out);
            }
            spinner.set_message(format!(
                "conda: linking {} packages for {platform}",
                plan.install.len()
            ));
            out.pins.conda = conda::pins(&plan);
            // The fragments the layer entries (and so `fs`) point at live
            // until the stages are done.
            let mut _fragments = None;
            if plan.changes_nothing() {
                spinner.finish_and_clear();
            } else {
                let (mut groups, report, fragments) =
                    conda::install::layer_groups(&plan, fs, cache, self.epoch)?;
                _fragments = Some(fragments);
                spinner.finish_and_clear();
                self.lay(fs, &mut groups);
                emit(&groups)?;
                out.conda = Some(report);
            }
            if let Some(pip_section) = &plan.pip {
                // With no conda Python, the `pip:` list goes where `[pip]`'s would.
                let mut pip_section = pip_section.clone();
                if let (Some(p), "system") = (&spec.pip, pip_section.target.as_str()) {
                    pip_section.target = p.target.clone();
                }
                self.pip(&pip_section, ENV_PIP, platform, fs, locked, emit, &mut out)?;
            }
        }

        if let Some(section) = &spec.pip {
            self.pip(section, PIP, platform, fs, locked, emit, &mut out)?;
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn pip(
        &self,
        section: &pip::PipSection,
        name: &'static str,
        platform: &Platform,
        fs: &mut Rootfs,
        locked: Option<&LockedPlatform>,
        emit: &mut dyn FnMut(&[LayerGroup]) -> Result<()>,
        out: &mut Outcome,
    ) -> Result<()> {
        let mut section = section.clone();
        if let Some((prev, names)) = self
            .upgrade_only
            .and_then(|(l, names)| l.platform(&platform.to_string()).map(|p| (p, names)))
        {
            section.pinned = prev
                .pip
                .iter()
                .filter(|w| w.section == name && !names.iter().any(|n| pip::normalize(n) == w.name))
                .map(|w| (w.name.clone(), w.version.clone()))
                .collect();
        }
        let section = &section;
        let last = self.resolve_only && (name == PIP || self.spec.pip.is_none());
        let http = if last {
            &self.http.clone().deferring()
        } else {
            self.http
        };
        let spinner = self
            .progress
            .spinner(&format!("pip: resolving for {platform}"));
        std::thread::scope(|scope| {
            // The compiler's tree, written while the wheels download.
            let early: std::sync::Mutex<Option<crate::bytecode::Early>> = Default::default();
            let tree = self
                .tree
                .filter(|_| !last && crate::bytecode::uses_shared_tree(self, section, platform));
            let cache = self.cache;
            let below: &Rootfs = fs;
            // With layers written ahead, the bytecode layer's parts are too.
            let parts = self.ahead.map(|a| (self.epoch, a));
            let start_tree = |python: &pip::PythonTarget| {
                if let (Some(tree), Ok(mut early)) = (tree, early.lock()) {
                    if early.is_none() {
                        *early = Some(crate::bytecode::spawn_tree(
                            tree, cache, platform, python, below, parts, scope,
                        ));
                    }
                }
            };
            // sdists and source trees: built by the image's Python, in the sandbox.
            let builder = crate::sdist_build::SandboxBuilder::new(self.tree, platform, self.cache);
            let feed = |entries: &[Entry]| {
                if let Some(early) = early.lock().ok().as_ref().and_then(|e| e.as_ref()) {
                    early.feed(entries);
                }
            };
            let ahead = (self.ahead.filter(|_| !last))
                .map(|how| PipLayersAhead::new(below, self.epoch, self.cache, how, &feed));
            let hooks = pip::Hooks {
                builder: Some(&builder),
                ahead: ahead.as_ref().map(|a| a as &dyn pip::LayerAhead),
                resolved: Some(&start_tree),
            };
            let plan = match locked {
                Some(l) => {
                    let pins: Vec<_> = l
                        .pip
                        .iter()
                        .filter(|p| p.section == name)
                        .cloned()
                        .collect();
                    pip::plan_locked_building(
                        section,
                        self.spec_dir,
                        fs,
                        platform,
                        &pins,
                        http,
                        self.cache,
                        hooks,
                    )?
                }
                None => pip::plan_building(
                    section,
                    self.spec_dir,
                    fs,
                    platform,
                    http,
                    self.cache,
                    hooks,
                )?,
            };
            drop(builder);
            out.kept.insert(name, plan.kept.clone());
            if last {
                spinner.finish_and_clear();
                out.pins.pip.extend(pip::pins(&plan, name));
                return Ok(());
            }
            let mut groups = pip::layer_groups(&plan, self.cache)?;
            spinner.finish_and_clear();
            self.lay(fs, &mut groups);
            // The compiler's tree is the image below this stage plus the
            // sources alone: taken before the stage's layers are emitted.
            let mut bytecode = crate::bytecode::compile(
                self,
                section,
                &plan,
                &groups,
                fs,
                platform,
                early.lock().ok().and_then(|mut e| e.take()),
                &mut || emit(&groups),
            )?;
            if let Some((Some(layer), _)) = &mut bytecode {
                self.lay(fs, std::slice::from_mut(layer));
                emit(std::slice::from_ref(layer))?;
            }
            out.pins.pip.extend(pip::pins(&plan, name));
            out.pip.push(PipReport {
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
                resolution: plan.resolution,
                bytecode: bytecode.map(|(_, report)| report),
            });
            Ok(())
        })
    }

    /// Lay a stage's layers on the tree: the directories the tree already
    /// has keep their mode and owner ([`Rootfs::adopt_existing_dirs`]),
    /// then the view holds what the layers add.
    fn lay(&self, fs: &mut Rootfs, groups: &mut [LayerGroup]) {
        for g in groups.iter_mut() {
            fs.adopt_existing_dirs(&mut g.entries);
        }
        self.apply(fs, groups);
    }

    fn apply(&self, fs: &mut Rootfs, groups: &[LayerGroup]) {
        for g in groups {
            fs.apply_entries(&g.entries, self.keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the only slot held, waiters of weights 1, 3, 3 and 2 get it in
    /// the order 3 (the earlier), 3, 2, 1, whatever order they woke in.
    #[test]
    fn a_freed_slot_goes_to_the_heaviest_waiter() {
        let slots = Slots::new(1);
        let order = std::sync::Mutex::new(Vec::new());
        let held = slots.take();
        std::thread::scope(|s| {
            for (name, weight) in [("a", 1), ("b", 3), ("c", 3), ("d", 2)] {
                let (slots, order) = (&slots, &order);
                s.spawn(move || {
                    let _slot = slots.take_weighing(weight);
                    order.lock().unwrap().push(name);
                });
                // Each queues before the next arrives.
                while slots.state.lock().unwrap().waiting.len() < "abcd".find(name).unwrap() + 1 {
                    std::thread::yield_now();
                }
            }
            drop(held);
        });
        assert_eq!(*order.lock().unwrap(), ["b", "c", "d", "a"]);
    }
}
