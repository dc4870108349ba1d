//! What a build did, in numbers: the closing summary of `kiln build` (text
//! on a terminal, the `summary` key of `--json`) and the plan of
//! `kiln build --dry-run`.
//!
//! The counts are gathered with little threading: one [`Tally`] per build
//! holds the transfers every download goes through (the package HTTP
//! client and the registry client count into it) and the layers compressed
//! during the build; the rest (layers, pins, push report) the build already
//! has at its end.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use kiln_core::digest::Digest;
use kiln_core::progress::{Progress, Transfers};
use kiln_spec::lock::LockedPlatform;

/// The counters of one build.
pub(crate) struct Tally {
    started: Instant,
    /// Every download of the build (packages, index pages, base blobs).
    pub(crate) transfers: Arc<Transfers>,
    /// Layers compressed by this build (the others came from the cache).
    built: DigestSet,
    /// Of those, the ones written while packages still downloaded.
    ahead: DigestSet,
    /// Layer parts compressed while packages still downloaded, and parts
    /// copied from the cache into a layer instead of compressed again.
    parts_ahead: std::sync::atomic::AtomicUsize,
    parts_copied: std::sync::atomic::AtomicUsize,
    /// `[[run]]` steps run, and those whose layer was remembered.
    commands_run: std::sync::atomic::AtomicUsize,
    commands_remembered: std::sync::atomic::AtomicUsize,
}

/// Digests noted from several threads.
#[derive(Default)]
struct DigestSet(Mutex<HashSet<Digest>>);

impl DigestSet {
    fn insert(&self, d: &Digest) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.clone());
    }

    fn contains(&self, d: &Digest) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).contains(d)
    }
}

impl Tally {
    pub(crate) fn new(progress: &Progress) -> Tally {
        Tally {
            started: Instant::now(),
            transfers: progress.transfers("downloading"),
            built: DigestSet::default(),
            ahead: DigestSet::default(),
            parts_ahead: Default::default(),
            parts_copied: Default::default(),
            commands_run: Default::default(),
            commands_remembered: Default::default(),
        }
    }

    /// A `[[run]]` step ran, or its layer was remembered.
    pub(crate) fn command(&self, remembered: bool) {
        let n = match remembered {
            true => &self.commands_remembered,
            false => &self.commands_run,
        };
        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// A layer part was compressed while packages still downloaded.
    pub(crate) fn part_ahead(&self) {
        self.parts_ahead
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `n` parts of a layer were copied from the cache.
    pub(crate) fn parts_copied(&self, n: usize) {
        self.parts_copied
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// A layer was built: `reused` when the cache had it.
    pub(crate) fn layer(&self, digest: &Digest, reused: bool) {
        if !reused {
            self.built.insert(digest);
        }
    }

    /// A layer was built ahead of its stage's layer step.
    pub(crate) fn layer_ahead(&self, digest: &Digest, reused: bool) {
        if !reused {
            self.built.insert(digest);
            self.ahead.insert(digest);
        }
    }

    fn was_built(&self, digest: &Digest) -> bool {
        self.built.contains(digest)
    }

    fn was_ahead(&self, digest: &Digest) -> bool {
        self.ahead.contains(digest)
    }
}

/// The closing summary of a build.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `[image] name`, when the spec gives one.
    pub image: Option<String>,
    pub tags: Vec<String>,
    /// What the tags point at (a manifest, or the index of several).
    pub digest: String,
    pub platforms: Vec<PlatformSummary>,
    /// Packages kiln added, per ecosystem (`apt`, `conda`, `pip`), summed
    /// over the platforms.
    pub packages: BTreeMap<String, usize>,
    /// Every package added, with where it came from (`-v` prints them).
    pub package_list: Vec<PackageLine>,
    /// Layers this build compressed, and those taken from the cache (each
    /// layer once, over every platform; base layers are neither).
    pub layers_built: usize,
    pub layers_reused: usize,
    /// Of the layers built, those written while packages still downloaded
    /// (a pip wheel's own layer, as soon as the wheel was in).
    pub layers_built_ahead: usize,
    /// Parts of layers cut into parts (a small wheel's files in a layer
    /// it shares) compressed while packages still downloaded, and parts
    /// copied from the cache instead of compressed again.
    pub layer_parts_built_ahead: usize,
    pub layer_parts_copied: usize,
    /// `[[run]]` steps (a Dockerfile's other RUN lines) run by this build,
    /// and those whose layer an earlier build made from the same command
    /// over the same layers (not run).
    pub commands_run: usize,
    pub commands_remembered: usize,
    /// Bytes that came over the network (packages, index pages, base
    /// blobs); 0 when the cache had everything.
    pub bytes_downloaded: u64,
    /// Files (packages, blobs) downloaded.
    pub files_downloaded: u64,
    /// Blob bytes uploaded by `--push` (blobs the registry had are not counted).
    pub bytes_pushed: u64,
    pub seconds: f64,
    /// apt maintainer scripts not run (without `--run-scripts`), most on any platform.
    pub skipped_scripts: usize,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PlatformSummary {
    pub platform: String,
    pub manifest: String,
    /// Every layer of the manifest, in order.
    pub layers: Vec<LayerLine>,
}

#[derive(Debug, Serialize)]
pub struct LayerLine {
    pub digest: String,
    /// Compressed size (the blob's).
    pub size: u64,
    /// `base`, `built` (compressed now) or `reused` (from the cache).
    pub origin: &'static str,
    /// What made it (`base` for the base's layers).
    pub created_by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PackageLine {
    pub platform: String,
    pub ecosystem: &'static str,
    pub name: String,
    pub version: String,
    /// `downloaded` (this build) or `cached`; in a dry run, `cached` or
    /// `download` (would be downloaded).
    pub source: &'static str,
}

/// One platform of a finished build, as the summary reads it.
pub(crate) struct PlatformInput<'a> {
    pub(crate) platform: String,
    pub(crate) manifest: String,
    /// Every layer of the manifest (base first).
    pub(crate) layers: Vec<(&'a Digest, u64)>,
    pub(crate) base_layers: usize,
    /// What made each of the new layers.
    pub(crate) created_by: Vec<String>,
    pub(crate) pins: &'a LockedPlatform,
    /// Its stages came from an earlier identical build.
    pub(crate) reused: bool,
    pub(crate) skipped_scripts: usize,
}

pub(crate) fn summarize(
    tally: &Tally,
    image: Option<String>,
    tags: Vec<String>,
    digest: String,
    platforms: &[PlatformInput],
    bytes_pushed: u64,
) -> Summary {
    let downloaded: HashSet<String> = tally.transfers.finished().into_iter().collect();
    let mut built = BTreeSet::new();
    let mut ahead = BTreeSet::new();
    let mut reused = BTreeSet::new();
    let mut out = Vec::new();
    let mut package_list = Vec::new();
    for p in platforms {
        let layers = p
            .layers
            .iter()
            .enumerate()
            .map(|(i, (d, size))| {
                let origin = if i < p.base_layers {
                    "base"
                } else if !p.reused && tally.was_built(d) {
                    built.insert(d.to_string());
                    if tally.was_ahead(d) {
                        ahead.insert(d.to_string());
                    }
                    "built"
                } else {
                    reused.insert(d.to_string());
                    "reused"
                };
                LayerLine {
                    digest: d.to_string(),
                    size: *size,
                    origin,
                    created_by: i
                        .checked_sub(p.base_layers)
                        .and_then(|j| p.created_by.get(j).cloned())
                        .unwrap_or_else(|| "base".into()),
                }
            })
            .collect();
        out.push(PlatformSummary {
            platform: p.platform.clone(),
            manifest: p.manifest.clone(),
            layers,
        });
        package_list.extend(package_lines(&p.platform, p.pins, |d| {
            if downloaded.contains(&d.to_string()) {
                "downloaded"
            } else {
                "cached"
            }
        }));
    }
    let mut packages = BTreeMap::new();
    for l in &package_list {
        *packages.entry(l.ecosystem.to_string()).or_insert(0) += 1;
    }
    let skipped_scripts = platforms
        .iter()
        .map(|p| p.skipped_scripts)
        .max()
        .unwrap_or(0);
    let mut warnings = Vec::new();
    if skipped_scripts > 0 {
        warnings.push(format!(
            "{skipped_scripts} maintainer script{} {} not run; see --run-scripts",
            if skipped_scripts == 1 { "" } else { "s" },
            if skipped_scripts == 1 { "was" } else { "were" },
        ));
    }
    Summary {
        image,
        tags,
        digest,
        platforms: out,
        packages,
        package_list,
        layers_built: built.len(),
        layers_reused: reused.len(),
        layers_built_ahead: ahead.len(),
        layer_parts_built_ahead: tally.parts_ahead.load(std::sync::atomic::Ordering::Relaxed),
        layer_parts_copied: tally
            .parts_copied
            .load(std::sync::atomic::Ordering::Relaxed),
        commands_run: tally
            .commands_run
            .load(std::sync::atomic::Ordering::Relaxed),
        commands_remembered: tally
            .commands_remembered
            .load(std::sync::atomic::Ordering::Relaxed),
        bytes_downloaded: tally.transfers.bytes(),
        files_downloaded: tally.transfers.files().0,
        bytes_pushed,
        seconds: (tally.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        skipped_scripts,
        warnings,
    }
}

/// The packages a platform's pins add, each with where its file is.
pub(crate) fn package_lines(
    platform: &str,
    pins: &LockedPlatform,
    source: impl Fn(&Digest) -> &'static str,
) -> Vec<PackageLine> {
    let line = |ecosystem, name: &str, version: &str, d: &Digest| PackageLine {
        platform: platform.to_string(),
        ecosystem,
        name: name.to_string(),
        version: version.to_string(),
        source: source(d),
    };
    let mut out: Vec<PackageLine> = pins
        .apt
        .iter()
        .map(|p| line("apt", &p.name, &p.version, &p.sha256))
        .collect();
    out.extend(
        pins.conda
            .iter()
            .map(|p| line("conda", &p.name, &p.version, &p.sha256)),
    );
    out.extend(
        pins.pip
            .iter()
            .map(|p| line("pip", &p.name, &p.version, &p.sha256)),
    );
    out
}

/// `12.3 MiB`: binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `apt 12, pip 3` (or `none`).
fn counts(packages: &BTreeMap<String, usize>) -> String {
    if packages.is_empty() {
        return "none".into();
    }
    packages
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short digest for tables: `sha256:0123456789ab`.
fn short(d: &str) -> &str {
    &d[..d.len().min("sha256:".len() + 12)]
}

impl Summary {
    /// The closing text of a build on a terminal; `verbose` adds a line per package.
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        match &self.image {
            Some(name) => writeln!(s, "image       {name}:{}", self.tags.join(", :")),
            None => writeln!(s, "tags        {} (no [image] name)", self.tags.join(", ")),
        }
        .ok();
        let _ = writeln!(s, "digest      {}", self.digest);
        for p in &self.platforms {
            let total: u64 = p.layers.iter().map(|l| l.size).sum();
            let _ = writeln!(
                s,
                "platform    {} ({} layer{}, {})",
                p.platform,
                p.layers.len(),
                if p.layers.len() == 1 { "" } else { "s" },
                human_bytes(total)
            );
            for l in &p.layers {
                let _ = writeln!(
                    s,
                    "  {} {:>10}  {:<6}  {}",
                    short(&l.digest),
                    human_bytes(l.size),
                    l.origin,
                    l.created_by
                );
            }
        }
        let ahead = match self.layers_built_ahead {
            0 => String::new(),
            n => format!(" ({n} while downloading)"),
        };
        let parts = match (self.layer_parts_built_ahead, self.layer_parts_copied) {
            (0, 0) => String::new(),
            (a, c) => format!("; parts: {a} compressed while downloading, {c} copied"),
        };
        let _ = writeln!(
            s,
            "layers      {} built{ahead}, {} reused from the cache{parts}",
            self.layers_built, self.layers_reused
        );
        if self.commands_run + self.commands_remembered > 0 {
            let _ = writeln!(
                s,
                "commands    {} run, {} remembered",
                self.commands_run, self.commands_remembered
            );
        }
        let _ = writeln!(s, "packages    {}", counts(&self.packages));
        if verbose {
            for p in &self.package_list {
                let _ = writeln!(
                    s,
                    "  {} {} {} ({}{})",
                    p.name,
                    p.version,
                    p.ecosystem,
                    p.source,
                    if self.platforms.len() > 1 {
                        format!(", {}", p.platform)
                    } else {
                        String::new()
                    }
                );
            }
        }
        let _ = writeln!(
            s,
            "downloaded  {} ({} files)",
            human_bytes(self.bytes_downloaded),
            self.files_downloaded
        );
        let _ = writeln!(s, "pushed      {}", human_bytes(self.bytes_pushed));
        let _ = writeln!(s, "time        {:.1}s", self.seconds);
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

/// What `kiln build --dry-run` would do.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub spec: String,
    pub base: String,
    /// `used` (pins from kiln.lock), `absent` or `stale` (resolved afresh).
    pub lock: String,
    pub platforms: Vec<PlannedPlatform>,
    /// Packages per ecosystem, summed over the platforms.
    pub packages: BTreeMap<String, usize>,
    /// `[[files]]` layers (the same on every platform).
    pub files: Vec<PlannedLayer>,
    /// The outputs that would be written.
    pub outputs: Vec<String>,
    /// Where `--push` would push (the first tag's reference).
    pub push: Option<String>,
    /// Bytes resolving took from the network (index pages; without a
    /// matching lock, the packages later stages read).
    pub bytes_downloaded: u64,
}

#[derive(Debug, Serialize)]
pub struct PlannedPlatform {
    pub platform: String,
    /// The package stages, in order (`apt`, `conda`, `pip`).
    pub stages: Vec<String>,
    /// Its stages would be taken whole from an earlier identical build.
    pub stages_reused: bool,
    /// Its `[[run]]` steps' layers, in the order they run: `remembered`
    /// (an earlier build ran the same command over the same layers) or
    /// `run`. A plan knows a command is remembered only when the layers
    /// under it are known: the stages reused, or none.
    pub commands: Vec<PlannedLayer>,
    pub packages: Vec<PackageLine>,
    pub layers: Vec<PlannedLayer>,
}

#[derive(Debug, Serialize)]
pub struct PlannedLayer {
    pub created_by: String,
    /// `build` or `reuse` (the cache has it); for a command, `run` or
    /// `remembered`.
    pub action: &'static str,
}

impl DryRun {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "spec        {}", self.spec);
        let _ = writeln!(s, "base        {}", self.base);
        let _ = writeln!(s, "lock        {}", self.lock);
        for p in &self.platforms {
            let _ = writeln!(
                s,
                "platform    {}: stages {}{}",
                p.platform,
                if p.stages.is_empty() {
                    "none".to_string()
                } else {
                    p.stages.join(" → ")
                },
                if p.stages_reused {
                    " (reused from an earlier build)"
                } else {
                    ""
                }
            );
            for l in &p.packages {
                let _ = writeln!(
                    s,
                    "  {} {} {} ({})",
                    l.name, l.version, l.ecosystem, l.source
                );
            }
            for l in &p.layers {
                let _ = writeln!(s, "  layer: {} {}", l.action, l.created_by);
            }
            for l in &p.commands {
                let _ = writeln!(s, "  command: {} {}", l.action, l.created_by);
            }
        }
        for l in &self.files {
            let _ = writeln!(s, "layer       {} {}", l.action, l.created_by);
        }
        let _ = writeln!(s, "packages    {}", counts(&self.packages));
        for o in &self.outputs {
            let _ = writeln!(s, "would write {o}");
        }
        if let Some(p) = &self.push {
            let _ = writeln!(s, "would push  {p}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_spec::lock::AptPin;

    fn pins() -> LockedPlatform {
        let apt = |name: &str, body: &[u8]| AptPin {
            name: name.into(),
            version: "1.0".into(),
            arch: "amd64".into(),
            suite: "stable".into(),
            url: "https://deb.invalid/x.deb".into(),
            sha256: Digest::of(body),
            size: body.len() as u64,
        };
        LockedPlatform {
            platform: "linux/amd64".into(),
            apt: vec![apt("curl", b"curl"), apt("zlib1g", b"zlib")],
            ..Default::default()
        }
    }

    #[test]
    fn layers_and_packages_are_counted_by_origin() {
        let tally = Tally::new(&Progress::hidden());
        let (base, built, reused) = (Digest::of(b"b"), Digest::of(b"n"), Digest::of(b"r"));
        tally.layer(&built, false);
        tally.layer(&reused, true);
        tally.transfers.start(Some(4));
        tally.transfers.add(4);
        tally.transfers.finish(Digest::of(b"curl").to_string());
        let pins = pins();
        let s = summarize(
            &tally,
            Some("registry.example.com/app".into()),
            vec!["v1".into()],
            "sha256:top".into(),
            &[PlatformInput {
                platform: "linux/amd64".into(),
                manifest: "sha256:m".into(),
                layers: vec![(&base, 10), (&built, 20), (&reused, 30)],
                base_layers: 1,
                created_by: vec!["kiln apt".into(), "kiln files".into()],
                pins: &pins,
                reused: false,
                skipped_scripts: 17,
            }],
            0,
        );
        let origins: Vec<_> = s.platforms[0].layers.iter().map(|l| l.origin).collect();
        assert_eq!(origins, ["base", "built", "reused"]);
        assert_eq!(s.platforms[0].layers[2].created_by, "kiln files");
        assert_eq!((s.layers_built, s.layers_reused), (1, 1));
        assert_eq!(s.packages["apt"], 2);
        let sources: Vec<_> = s.package_list.iter().map(|p| p.source).collect();
        assert_eq!(sources, ["downloaded", "cached"]);
        assert_eq!((s.bytes_downloaded, s.files_downloaded), (4, 1));
        assert_eq!(
            s.warnings,
            ["17 maintainer scripts were not run; see --run-scripts"]
        );
        let text = s.render(true);
        assert!(
            text.contains("image       registry.example.com/app:v1"),
            "{text}"
        );
        assert!(text.contains("  curl 1.0 apt (downloaded)"), "{text}");
        assert!(text.contains("packages    apt 2"), "{text}");
        assert!(!s.render(false).contains("curl 1.0"));
    }

    #[test]
    fn reused_stages_build_nothing() {
        let tally = Tally::new(&Progress::hidden());
        let d = Digest::of(b"n");
        // Built by another build of this process, reused by this platform.
        tally.layer(&d, false);
        let pins = LockedPlatform::default();
        let s = summarize(
            &tally,
            None,
            vec!["latest".into()],
            "sha256:top".into(),
            &[PlatformInput {
                platform: "linux/amd64".into(),
                manifest: "sha256:m".into(),
                layers: vec![(&d, 1)],
                base_layers: 0,
                created_by: vec!["kiln pip".into()],
                pins: &pins,
                reused: true,
                skipped_scripts: 0,
            }],
            5,
        );
        assert_eq!((s.layers_built, s.layers_reused), (0, 1));
        assert!(s.warnings.is_empty());
        assert_eq!(s.bytes_pushed, 5);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
