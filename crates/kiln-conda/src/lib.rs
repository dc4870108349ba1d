//! `[conda]`: solve conda MatchSpecs for the image's platform and install the
//! packages into a prefix as layers.
//!
//! Nothing runs inside the image and nothing is read from the host: the
//! target's virtual packages come from the image ([`target`]), channels are
//! fetched with kiln's HTTP client ([`channels`]), rattler's resolvo solver
//! picks the set with the prefix's current packages preferred, and
//! [`install`] extracts and links every package (rattler's linker: prefix
//! placeholders, noarch python, entry points) into per-package fragments
//! that become layers. `environment.yml` files are read by `environment`.

pub mod channels;
mod environment;
mod error;
pub mod install;
pub mod target;

pub use channels::KeptRepodata;
pub use error::{CondaError, Hostile, SolveTarget};

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rattler_conda_types::{
    Channel, GenericVirtualPackage, MatchSpec, ParseStrictness, PrefixRecord, RepoDataRecord,
    Subdir,
};
use rattler_solve::{resolvo::Solver, ChannelPriority, SolveError, SolverImpl, SolverTask};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use kiln_core::digest::Digest;
use kiln_core::error::{ErrorKind, Result};
use kiln_core::platform::Platform;
use kiln_core::suggest::{self, Missing};
use kiln_core::url::strip_credentials;
use kiln_fs::rootfs::Rootfs;
use kiln_spec::sections::CondaSection;
pub use kiln_spec::sections::Priority;
use kiln_store::cache::Cache;
use kiln_store::http::{redact, Http};

/// A solved environment for one platform, every archive verified in the cache.
pub struct CondaPlan {
    pub(crate) prefix: String,
    pub(crate) subdir: Subdir,
    /// Packages to install (new or changed), sorted by name.
    pub install: Vec<Pinned>,
    /// Packages of the base prefix that the solution keeps as they are.
    pub(crate) unchanged: Vec<PrefixRecord>,
    /// Packages of the base prefix that the solution replaces.
    pub(crate) replaced: Vec<PrefixRecord>,
    /// The requests, for `conda-meta/history` (without credentials: [`public_spec`]).
    pub(crate) specs: Vec<String>,
    pub(crate) virtual_packages: Vec<GenericVirtualPackage>,
    /// An environment.yml `pip:` list, installed into the prefix's Python
    /// after the conda layers (into the image's Python when the
    /// environment has none: target `system`).
    pub pip: Option<kiln_spec::sections::PipSection>,
    /// The repodata the packages were solved from (none for a locked plan).
    pub kept: Option<KeptRepodata>,
}

impl CondaPlan {
    /// Nothing to install or replace: the stage writes no layer (an
    /// environment.yml with only a `pip:` list).
    pub fn changes_nothing(&self) -> bool {
        self.install.is_empty() && self.replaced.is_empty()
    }
}

pub struct Pinned {
    pub(crate) record: RepoDataRecord,
    /// Cache digest of the archive (its sha256).
    pub(crate) sha256: Digest,
    /// The spec that asked for it by name, if any (without credentials:
    /// [`public_spec`]).
    pub(crate) requested: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CondaReport {
    pub prefix: String,
    pub subdir: String,
    pub virtual_packages: String,
    /// `channel::name-version-build`.
    pub installed: Vec<String>,
    pub unchanged: Vec<String>,
    pub replaced: Vec<String>,
    /// Link scripts kiln does not run (`post-link`, `pre-unlink`), per package.
    pub scripts_skipped: Vec<String>,
    /// Paths written by more than one package (or over a file conda does not own).
    pub clobbered: Vec<String>,
}

/// Base files the conda stage needs the contents of.
pub fn keep_path(path: &str) -> bool {
    path.contains("/conda-meta/") && (path.ends_with(".json") || path.ends_with("/history"))
}

/// Package records already in `prefix` (its `conda-meta/*.json`).
pub(crate) fn installed(fs: &Rootfs, prefix: &str) -> Result<Vec<PrefixRecord>> {
    let dir = format!("{prefix}/conda-meta");
    let mut out = Vec::new();
    for name in fs.list(&dir) {
        if !name.ends_with(".json") {
            continue;
        }
        let path = format!("{dir}/{name}");
        let Some(bytes) = fs.read(&path) else {
            continue;
        };
        let r = PrefixRecord::from_reader(bytes).map_err(|e| CondaError::BadPrefixRecord {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        out.push(r);
    }
    out.sort_by(|a, b| a.name().as_normalized().cmp(b.name().as_normalized()));
    Ok(out)
}

/// What to solve: the spec's packages and channels plus an environment.yml's.
pub(crate) struct Request {
    pub(crate) specs: Vec<MatchSpec>,
    pub(crate) spec_texts: Vec<String>,
    /// Where each was written when not in kiln.toml (`conda.txt:3`,
    /// `environment.yml`), for the message naming missing packages.
    pub(crate) origins: Vec<Option<String>>,
    pub(crate) channels: Vec<Channel>,
    pub(crate) pip: Option<kiln_spec::sections::PipSection>,
}

pub(crate) fn request(section: &CondaSection, spec_dir: &Path) -> Result<Request> {
    if !section.prefix.starts_with('/')
        || section.prefix.split('/').any(|c| c == ".." || c == ".")
        || section.prefix.trim_end_matches('/').is_empty()
    {
        return Err(CondaError::BadPrefix {
            prefix: section.prefix.clone(),
        }
        .into());
    }
    let config = channels::config(spec_dir, section.channel_alias.as_deref())?;
    let mut texts: Vec<(String, String)> = section
        .requests()
        .into_iter()
        .map(|(p, origin)| (p.to_string(), origin))
        .collect();
    let mut channel_texts = section.channels.clone();
    let mut pip = None;
    if let Some(env) = &section.environment {
        let e = environment::read(&spec_dir.join(env))?;
        texts.extend(e.dependencies.into_iter().map(|d| (d, env.clone())));
        channel_texts.extend(e.channels);
        if !e.pip.is_empty() {
            let dir = spec_dir
                .join(env)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| spec_dir.to_path_buf());
            pip = Some(kiln_spec::sections::PipSection {
                target: section.prefix.trim_end_matches('/').to_string(),
                inline: vec![(format!("{env} (pip:)"), dir, e.pip.join("\n"))],
                ..Default::default()
            });
        }
    }
    let mut specs = Vec::new();
    for (t, origin) in &texts {
        let spec = MatchSpec::from_str(t, ParseStrictness::Lenient).map_err(|e| {
            CondaError::BadMatchSpec {
                origin: origin.clone(),
                spec: redact(t),
                reason: e.to_string(),
            }
        })?;
        specs.push(spec);
    }
    let mut chans: Vec<Channel> = Vec::new();
    let mut seen = BTreeSet::new();
    for c in &channels::expand_defaults(&channel_texts, &section.default_channels) {
        let ch = channels::parse(c, &config)?;
        if seen.insert(ch.base_url.to_string()) {
            chans.push(ch);
        }
    }
    // A `channel::name` spec pulls its channel in (after the listed ones).
    for s in &specs {
        if let Some(ch) = &s.channel {
            if seen.insert(ch.base_url.to_string()) {
                chans.push((**ch).clone());
            }
        }
    }
    if chans.is_empty() && !specs.is_empty() {
        return Err(CondaError::NoChannels.into());
    }
    Ok(Request {
        specs,
        origins: texts
            .iter()
            .map(|(_, o)| (o != "[conda] packages").then(|| o.clone()))
            .collect(),
        spec_texts: texts.into_iter().map(|(t, _)| t).collect(),
        channels: chans,
        pip,
    })
}

/// Solve `specs` over `available` for the given virtual packages, preferring
/// (not forcing) the records in `locked`.
pub fn solve(
    available: &[Vec<RepoDataRecord>],
    locked: &[RepoDataRecord],
    virtual_packages: Vec<GenericVirtualPackage>,
    specs: Vec<MatchSpec>,
    priority: Priority,
) -> Result<Vec<RepoDataRecord>> {
    Ok(solve_typed(
        available,
        locked,
        virtual_packages,
        specs,
        &[],
        priority,
    )?)
}

/// [`solve`], with the cause kept typed (so [`plan`] can name the target);
/// `asked` holds the first requests as written and where (for messages).
fn solve_typed(
    available: &[Vec<RepoDataRecord>],
    locked: &[RepoDataRecord],
    virtual_packages: Vec<GenericVirtualPackage>,
    specs: Vec<MatchSpec>,
    asked: &[(String, Option<String>)],
    priority: Priority,
) -> Result<Vec<RepoDataRecord>, CondaError> {
    // Unknown names and versions get their own message, all at once.
    let missing = missing(available, locked, &specs, asked);
    if !missing.is_empty() {
        return Err(CondaError::UnknownPackages {
            missing,
            target: None,
        });
    }
    let hint_specs = specs.clone();
    let task = SolverTask {
        locked_packages: locked.iter().collect(),
        virtual_packages,
        specs,
        timeout: Some(Duration::from_secs(600)),
        channel_priority: match priority {
            Priority::Strict => ChannelPriority::Strict,
            Priority::Disabled => ChannelPriority::Disabled,
        },
        ..SolverTask::from_iter(available.iter().map(|v| v.iter()))
    };
    match Solver.solve(task) {
        Ok(r) => {
            let mut records = r.records;
            records.sort_by(|a, b| {
                a.package_record
                    .name
                    .as_normalized()
                    .cmp(b.package_record.name.as_normalized())
            });
            Ok(records)
        }
        // Requests may name a channel by URL: no credentials in the explanation.
        Err(SolveError::Unsolvable(why)) => Err(CondaError::Unsatisfiable {
            explanation: why.iter().map(|l| redact(l)).collect(),
            hints: version_hints(available, &hint_specs)
                .iter()
                .map(|h| redact(h))
                .collect(),
            target: None,
        }),
        Err(e) => Err(CondaError::Solver {
            reason: redact(&e.to_string()),
            target: None,
        }),
    }
}

/// Every request whose name no channel (nor the prefix) has, with close
/// names, or whose version constraint no record of that name meets, with
/// the versions there are (newest first).
fn missing(
    available: &[Vec<RepoDataRecord>],
    locked: &[RepoDataRecord],
    specs: &[MatchSpec],
    asked: &[(String, Option<String>)],
) -> Vec<Missing> {
    let all = || available.iter().flatten().chain(locked.iter());
    let mut out = Vec::new();
    let mut names: Option<BTreeSet<&str>> = None;
    for (n, s) in specs.iter().enumerate() {
        let Some(name) = s.name.as_exact() else {
            continue;
        };
        if name.as_normalized().starts_with("__") {
            continue;
        }
        let (request, at) = match asked.get(n) {
            Some((t, at)) => (redact(t), at.as_deref()),
            None => (redact(&s.to_string()), None),
        };
        let same: Vec<&RepoDataRecord> = all().filter(|r| &r.package_record.name == name).collect();
        if same.is_empty() {
            let names = names.get_or_insert_with(|| {
                all()
                    .map(|r| r.package_record.name.as_normalized())
                    .collect()
            });
            let close = suggest::close_names(name.as_normalized(), names.iter().copied());
            out.push(Missing::name(&request, close).at(at));
            continue;
        }
        let Some(vs) = &s.version else {
            continue;
        };
        if same.iter().any(|r| vs.matches(&r.package_record.version)) {
            continue;
        }
        let mut versions: Vec<&rattler_conda_types::Version> =
            same.iter().map(|r| &*r.package_record.version).collect();
        versions.sort_by(|a, b| b.cmp(a));
        versions.dedup();
        let versions = versions.iter().map(|v| v.to_string()).collect();
        out.push(Missing::version(&request, name.as_source(), versions).at(at));
    }
    out
}

/// For each request nothing matches: which versions the channels do have.
fn version_hints(available: &[Vec<RepoDataRecord>], specs: &[MatchSpec]) -> Vec<String> {
    use rattler_conda_types::Matches;
    let mut out = Vec::new();
    for s in specs {
        let Some(name) = s.name.as_exact() else {
            continue;
        };
        let same_name: Vec<&RepoDataRecord> = available
            .iter()
            .flatten()
            .filter(|r| &r.package_record.name == name)
            .collect();
        if same_name.is_empty() || same_name.iter().any(|r| s.matches(*r)) {
            continue;
        }
        let versions: BTreeSet<String> = same_name
            .iter()
            .map(|r| r.package_record.version.to_string())
            .collect();
        out.push(format!(
            "`{s}`: the channels have {} {}",
            name.as_source(),
            versions.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// What `plan` and `plan_locked` both start from: the request, the
/// prefix, the target's subdir and virtual packages, and what the prefix
/// already holds.
struct Start {
    req: Request,
    prefix: String,
    subdir: rattler_conda_types::Subdir,
    virtual_packages: Vec<rattler_conda_types::GenericVirtualPackage>,
    base: Vec<PrefixRecord>,
}

fn start(
    section: &CondaSection,
    spec_dir: &Path,
    fs: &Rootfs,
    platform: &Platform,
) -> Result<Start> {
    let req = request(section, spec_dir)?;
    let prefix = section.prefix.trim_end_matches('/').to_string();
    let subdir = target::subdir(platform)?;
    let virtual_packages = target::virtual_packages(fs, platform, &section.virtual_packages)?;
    let base = installed(fs, &prefix)?;
    Ok(Start {
        req,
        prefix,
        subdir,
        virtual_packages,
        base,
    })
}

/// Resolve the section for one platform and download every archive (verified) into the cache.
pub fn plan(
    section: &CondaSection,
    spec_dir: &Path,
    fs: &Rootfs,
    platform: &Platform,
    http: &Http,
    cache: &Cache,
) -> Result<CondaPlan> {
    let Start {
        req,
        prefix,
        subdir,
        virtual_packages,
        base,
    } = start(section, spec_dir, fs, platform)?;
    // Nothing to solve (an environment.yml with only a `pip:` list): no
    // channel is read and the base prefix stays as it is.
    let (solution, kept) = if req.specs.is_empty() {
        let unchanged = base.iter().map(|r| r.repodata_record.clone()).collect();
        (unchanged, KeptRepodata::default())
    } else {
        solve_channels(section, &req, subdir, &virtual_packages, &base, http, cache)?
    };
    let plan = finish(
        solution,
        base,
        prefix,
        subdir,
        virtual_packages,
        req,
        http,
        cache,
    )?;
    Ok(CondaPlan {
        kept: Some(kept),
        ..plan
    })
}

/// What [`kept_repodata_holds`] found.
#[derive(Debug)]
pub enum KeptHolds {
    /// The repodata (or the channels) changed.
    Changed,
    /// The same repodata; with the pip stage the section's
    /// environment.yml `pip:` list makes, as it reads now (read in the
    /// same pass: the caller checks that list's kept resolution too).
    Holds {
        environment_pip: Option<Box<kiln_spec::sections::PipSection>>,
    },
}

/// Whether a plan of `section` would read the same repodata as `kept`
/// now: the same channels and subdirs (from the section as it reads now),
/// each `repodata.json` revalidated and the same bytes. The image the plan
/// reads (the base prefix, the virtual packages) is not read here: it is
/// the caller's to vouch for (the same base, and the same pins below it).
pub fn kept_repodata_holds(
    kept: &KeptRepodata,
    section: &CondaSection,
    spec_dir: &Path,
    platform: &Platform,
    http: &Http,
    cache: &Cache,
) -> Result<KeptHolds> {
    let req = request(section, spec_dir)?;
    let subdir = target::subdir(platform)?;
    let holds = if req.specs.is_empty() {
        kept.0.is_empty()
    } else {
        &channels::read_now(&req.channels, subdir, http, cache)? == kept
    };
    Ok(match holds {
        true => KeptHolds::Holds {
            environment_pip: req.pip.map(Box::new),
        },
        false => KeptHolds::Changed,
    })
}

/// Fetch the channels' repodata and solve the request against it, the
/// base prefix's records (and `prefer`) preferred.
fn solve_channels(
    section: &CondaSection,
    req: &Request,
    subdir: Subdir,
    virtual_packages: &[GenericVirtualPackage],
    base: &[PrefixRecord],
    http: &Http,
    cache: &Cache,
) -> Result<(Vec<RepoDataRecord>, KeptRepodata)> {
    let (available, kept) = channels::fetch_all(&req.channels, subdir, http, cache)?;
    let mut locked: Vec<RepoDataRecord> = base.iter().map(|r| r.repodata_record.clone()).collect();
    for r in available.iter().flatten() {
        let p = &r.package_record;
        let id = (
            p.name.as_normalized().to_string(),
            p.version.to_string(),
            p.build.as_str().to_string(),
        );
        if section.prefer.contains(&id)
            && !locked
                .iter()
                .any(|l| l.package_record.name == r.package_record.name)
        {
            locked.push(r.clone());
        }
    }
    let asked: Vec<(String, Option<String>)> = req
        .spec_texts
        .iter()
        .cloned()
        .zip(req.origins.iter().cloned())
        .collect();
    let solution = solve_typed(
        &available,
        &locked,
        virtual_packages.to_vec(),
        req.specs.clone(),
        &asked,
        section.channel_priority,
    )
    .map_err(|e| {
        e.for_target(SolveTarget {
            subdir: subdir.to_string(),
            virtual_packages: target::describe(virtual_packages),
        })
    })?;
    Ok((solution, kept))
}

/// Package name → the request that named it, as kiln.lock and conda-meta
/// record it ([`public_spec`]).
fn requested_names(req: &Request) -> BTreeMap<String, String> {
    req.specs
        .iter()
        .zip(&req.spec_texts)
        .filter_map(|(s, t)| {
            s.name
                .as_exact()
                .map(|n| (n.as_normalized().to_string(), public_spec(t)))
        })
        .collect()
}

/// A request as kiln writes it out (kiln.lock, `conda-meta`): a channel
/// URL loses its credentials (`https://host/t/TOKEN/chan::numpy` →
/// `https://host/chan::numpy`), and any other URL in it is redacted.
pub(crate) fn public_spec(text: &str) -> String {
    let text = match text.rsplit_once("::") {
        Some((channel, rest)) if channel.contains("://") => {
            format!("{}::{rest}", strip_credentials(channel))
        }
        _ => text.to_string(),
    };
    redact(&text)
}

/// A record as kiln writes it out (kiln.lock, `conda-meta`, reports,
/// history): its channel and URL without credentials. Records in memory
/// keep them, to download with.
pub(crate) fn public_record(r: &RepoDataRecord) -> RepoDataRecord {
    let mut r = r.clone();
    let bare = strip_credentials(r.url.as_str());
    // A URL without credentials is still a URL; should it not parse, the
    // masked one is the next best thing.
    if let Ok(u) = url::Url::parse(&bare).or_else(|_| url::Url::parse(&redact(&bare))) {
        r.url = u;
    }
    r.channel = r.channel.as_deref().map(strip_credentials);
    r
}

/// Split a solution into kept / replaced / new against the base prefix and
/// download (verified) what is new.
#[allow(clippy::too_many_arguments)]
fn finish(
    solution: Vec<RepoDataRecord>,
    base: Vec<PrefixRecord>,
    prefix: String,
    subdir: Subdir,
    virtual_packages: Vec<GenericVirtualPackage>,
    req: Request,
    http: &Http,
    cache: &Cache,
) -> Result<CondaPlan> {
    let requested = &requested_names(&req);
    let by_name: BTreeMap<&str, &PrefixRecord> =
        base.iter().map(|r| (r.name().as_normalized(), r)).collect();
    let mut todo = Vec::new();
    let mut unchanged = Vec::new();
    let mut replaced = Vec::new();
    for r in solution {
        let name = r.package_record.name.as_normalized().to_string();
        match by_name.get(name.as_str()) {
            Some(b) if same_package(&b.repodata_record, &r) => unchanged.push((*b).clone()),
            Some(b) => {
                replaced.push((*b).clone());
                todo.push(r);
            }
            None => todo.push(r),
        }
    }
    let install = kiln_store::http::on_network_pool(|| {
        todo.into_par_iter()
            .map(|r| {
                let sha256 = download(&r, http, cache)?;
                let requested = requested
                    .get(r.package_record.name.as_normalized())
                    .cloned();
                Ok(Pinned {
                    record: r,
                    sha256,
                    requested,
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    // An environment.yml with only a `pip:` list (no conda Python in the
    // environment) installs into the image's own Python, as pip would.
    let has_python = install
        .iter()
        .map(|p| &p.record)
        .chain(unchanged.iter().map(|r| &r.repodata_record))
        .any(|r| r.package_record.name.as_normalized() == "python");
    let pip = req.pip.map(|mut p| {
        if !has_python {
            p.target = kiln_spec::sections::PipSection::default().target;
        }
        p
    });
    Ok(CondaPlan {
        prefix,
        subdir,
        install,
        unchanged,
        replaced,
        specs: req.spec_texts.iter().map(|t| public_spec(t)).collect(),
        virtual_packages,
        pip,
        kept: None,
    })
}

/// The plan a lock pins: no repodata is read. Packages the base prefix
/// already has (same sha256) are kept; the others are fetched by URL,
/// checked against the locked sha256, and their records rebuilt from the
/// archive's own `info/index.json`.
pub fn plan_locked(
    section: &CondaSection,
    spec_dir: &Path,
    fs: &Rootfs,
    platform: &Platform,
    pins: &[kiln_spec::lock::CondaPin],
    http: &Http,
    cache: &Cache,
) -> Result<CondaPlan> {
    let Start {
        req,
        prefix,
        subdir,
        virtual_packages,
        base,
    } = start(section, spec_dir, fs, platform)?;
    // The lock holds URLs without credentials; the configured channels hold them.
    let sources: Vec<String> = req
        .channels
        .iter()
        .map(|c| c.base_url.as_str().to_string())
        .collect();
    let records = kiln_store::http::on_network_pool(|| {
        pins.par_iter()
            .map(|pin| {
                if let Some(b) = base.iter().find(|b| {
                    b.repodata_record
                        .package_record
                        .sha256
                        .is_some_and(|h| hex::encode(h) == pin.sha256.hex())
                }) {
                    return Ok(b.repodata_record.clone());
                }
                install::record_from_archive(pin, &sources, http, cache)
            })
            .collect::<Result<Vec<_>>>()
    })?;
    finish(
        records,
        base,
        prefix,
        subdir,
        virtual_packages,
        req,
        http,
        cache,
    )
}

/// What a lock records for a conda plan: the whole environment (kept and
/// new), channels and URLs without credentials (a locked build puts them
/// back from the spec's channels).
pub fn pins(plan: &CondaPlan) -> Vec<kiln_spec::lock::CondaPin> {
    let requested: BTreeMap<&str, &String> = plan
        .install
        .iter()
        .filter_map(|p| {
            p.requested
                .as_ref()
                .map(|r| (p.record.package_record.name.as_normalized(), r))
        })
        .collect();
    plan.install
        .iter()
        .map(|p| &p.record)
        .chain(plan.unchanged.iter().map(|r| &r.repodata_record))
        .filter_map(|r| {
            let r = public_record(r);
            let p = &r.package_record;
            Some(kiln_spec::lock::CondaPin {
                name: p.name.as_normalized().to_string(),
                version: p.version.to_string(),
                build: p.build.as_str().to_string(),
                channel: r.channel.clone().unwrap_or_default(),
                subdir: p.subdir.clone(),
                filename: r.identifier.to_string(),
                url: r.url.to_string(),
                sha256: Digest::from_hex(&hex::encode(p.sha256?)).ok()?,
                md5: p.md5.map(hex::encode),
                size: p.size,
                depends: p.depends.clone(),
                constrains: p.constrains.clone(),
                requested: requested.get(p.name.as_normalized()).map(|s| s.to_string()),
            })
        })
        .collect()
}

fn same_package(a: &RepoDataRecord, b: &RepoDataRecord) -> bool {
    let (a, b) = (&a.package_record, &b.package_record);
    match (&a.sha256, &b.sha256) {
        (Some(x), Some(y)) => x == y,
        _ => a.version == b.version && a.build == b.build && a.subdir == b.subdir,
    }
}

/// A transfer that failed: not there, refused or unreachable ones say where
/// else to get it; anything else (a checksum mismatch) keeps its message.
pub(crate) fn fetch_error(e: kiln_core::Error, what: impl FnOnce() -> String) -> kiln_core::Error {
    let missing = e.kind() == ErrorKind::Input && channels::is_missing(&e.to_string());
    if matches!(e.kind(), ErrorKind::Network | ErrorKind::Auth) || missing {
        CondaError::Fetch {
            what: what(),
            message: kiln_core::error::with_causes(&e),
            kind: e.kind(),
        }
        .into()
    } else {
        e.context(format!("[conda] {}", what()))
    }
}

/// Download one archive into the cache, checked against the repodata's
/// sha256 (or md5 when a channel only gives that).
fn download(r: &RepoDataRecord, http: &Http, cache: &Cache) -> Result<Digest> {
    let p = &r.package_record;
    let package = || format!("{}-{}-{}", p.name.as_source(), p.version, p.build.as_str());
    let expected = p
        .sha256
        .as_ref()
        .map(|h| format!("sha256:{}", hex::encode(h)).parse::<Digest>())
        .transpose()?;
    let (digest, _) = http
        .download_artifact(r.url.as_str(), expected.as_ref(), cache)
        .map_err(|e| fetch_error(e, || format!("package {}", package())))?;
    if expected.is_none() {
        let Some(md5) = &p.md5 else {
            return Err(CondaError::Unverifiable {
                package: package(),
                url: redact(r.url.as_str()),
            }
            .into());
        };
        use md5::Digest as _;
        let bytes = cache.read(&digest)?;
        let got = format!("{:x}", md5::Md5::digest(&bytes));
        let want = hex::encode(md5);
        if got != want {
            return Err(CondaError::Md5Mismatch {
                package: package(),
                url: redact(r.url.as_str()),
                expected: want,
                actual: got,
            }
            .into());
        }
    }
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real conda-forge linux-64 subset kept in this crate's `fixtures/conda`.
    fn fixture() -> Vec<RepoDataRecord> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/conda/conda-forge-numpy-linux-64.json");
        let repodata = channels::parse_repodata(&std::fs::read(path).unwrap()).unwrap();
        let config = channels::config(Path::new("/"), None).unwrap();
        repodata.into_repo_data_records(&Channel::from_name("conda-forge", &config))
    }

    fn bookworm_virtuals() -> Vec<GenericVirtualPackage> {
        let o = BTreeMap::from([("glibc".to_string(), "2.36".to_string())]);
        target::virtual_packages(&Rootfs::default(), &Platform::linux("amd64"), &o).unwrap()
    }

    fn solve_fixture(specs: &[&str]) -> Result<BTreeMap<String, String>> {
        let specs = specs
            .iter()
            .map(|s| MatchSpec::from_str(s, ParseStrictness::Lenient).unwrap())
            .collect();
        let records = solve(
            &[fixture()],
            &[],
            bookworm_virtuals(),
            specs,
            Priority::Strict,
        )?;
        Ok(records
            .into_iter()
            .map(|r| {
                (
                    r.package_record.name.as_normalized().to_string(),
                    r.package_record.version.to_string(),
                )
            })
            .collect())
    }

    #[test]
    fn numpy_closure_from_real_repodata() {
        let got = solve_fixture(&["numpy"]).unwrap();
        assert_eq!(got["numpy"], "1.26.4");
        assert_eq!(got["python"], "3.12.1");
        assert_eq!(got["libopenblas"], "0.3.26");
        for dep in [
            "libgcc-ng",
            "libstdcxx-ng",
            "libblas",
            "liblapack",
            "openssl",
            "python_abi",
        ] {
            assert!(got.contains_key(dep), "{dep} missing from {got:?}");
        }
        // Same closure when asked with a channel and a version glob.
        let pinned = solve_fixture(&["conda-forge::numpy==1.26*", "python=3.12"]).unwrap();
        assert_eq!(got, pinned);
    }

    #[test]
    fn missing_names_and_versions_are_all_named() {
        let err =
            solve_fixture(&["numpy==1.17*", "nosuchpkg", "numpyy", "python=3.12"]).unwrap_err();
        match err.downcast_ref::<CondaError>() {
            Some(CondaError::UnknownPackages {
                missing,
                target: None,
            }) => {
                let got: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
                assert_eq!(
                    got,
                    [
                        "`numpy 1.17.*`: no such version; numpy has 1.26.4",
                        "`nosuchpkg`: no such package",
                        "`numpyy`: no such package; did you mean `numpy`?",
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("[conda] 3 requested packages not found in the channels:\n  - "),
            "{err}"
        );
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        let e = solve_fixture(&["python=3.11", "numpy"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`python 3.11.*`: no such version; python has 3.12.1"),
            "{e}"
        );
    }

    /// A `[conda]` section in the default prefix with strict priority.
    fn section(channels: Vec<String>, packages: Vec<String>) -> CondaSection {
        CondaSection {
            prefix: "/opt/conda".into(),
            channels,
            channel_alias: None,
            default_channels: Vec::new(),
            packages,
            packages_file: None,
            listed: Vec::new(),
            environment: None,
            virtual_packages: BTreeMap::new(),
            channel_priority: Priority::Strict,
            prefer: Vec::new(),
        }
    }

    #[test]
    fn the_matchspec_forms_people_write() {
        let s = section(
            vec!["conda-forge".into()],
            vec![
                "conda-forge::numpy==1.17*".into(),
                "numpy>=1.26,<2".into(),
                "python=3.11".into(),
                "openblas=*=pthreads*".into(),
                "scipy 1.11.* py311*".into(),
            ],
        );
        let r = request(&s, Path::new("/")).unwrap();
        assert_eq!(r.specs.len(), 5);
        assert_eq!(
            r.specs[0].channel.as_ref().unwrap().name.as_deref(),
            Some("conda-forge")
        );
        let openblas = r.specs[3].to_string();
        assert!(openblas.contains("pthreads"), "{openblas}");
        // One channel: the named one and the spec's `conda-forge::` are the same.
        assert_eq!(r.channels.len(), 1);
    }

    #[test]
    fn defaults_is_the_configured_set() {
        let mut s = section(
            vec!["conda-forge".into(), "defaults".into(), "nodefaults".into()],
            vec!["numpy".into()],
        );
        s.channel_alias = Some("https://mirror.example/conda/".into());
        let urls = |s: &CondaSection| -> Vec<String> {
            request(s, Path::new("/"))
                .unwrap()
                .channels
                .iter()
                .map(|c| c.base_url.to_string())
                .collect()
        };
        assert_eq!(
            urls(&s),
            [
                "https://mirror.example/conda/conda-forge/",
                "https://mirror.example/conda/pkgs/main/",
                "https://mirror.example/conda/pkgs/r/",
            ]
        );
        s.default_channels = vec!["https://internal.example/main".into()];
        assert_eq!(
            urls(&s),
            [
                "https://mirror.example/conda/conda-forge/",
                "https://internal.example/main/",
            ]
        );
    }

    #[test]
    fn bad_matchspec_and_prefix() {
        let s = section(vec!["conda-forge".into()], vec!["numpy >=>= 1".into()]);
        let err = request(&s, Path::new("/")).err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadMatchSpec { origin, spec, .. })
                    if origin == "[conda] packages" && spec == "numpy >=>= 1"
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("not a valid MatchSpec"), "{err}");
        let s = CondaSection {
            prefix: "opt/conda".into(),
            packages: vec![],
            packages_file: None,
            listed: Vec::new(),
            ..s
        };
        let err = request(&s, Path::new("/")).err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadPrefix { prefix }) if prefix == "opt/conda"
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "[conda] prefix = \"opt/conda\": expected an absolute path such as \"/opt/conda\""
        );
    }

    #[test]
    fn packages_need_a_channel() {
        let s = section(vec![], vec!["numpy".into()]);
        let err = request(&s, Path::new("/")).err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::NoChannels)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn base_records_must_parse() {
        let mut fs = Rootfs::default();
        for d in ["/opt", "/opt/conda", "/opt/conda/conda-meta"] {
            fs.insert(d, kiln_fs::rootfs::Node::Dir);
        }
        fs.insert_file("/opt/conda/conda-meta/bad-1-0.json", b"{not json");
        let err = installed(&fs, "/opt/conda").err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadPrefixRecord { path, .. })
                    if path == "/opt/conda/conda-meta/bad-1-0.json"
            ),
            "{err:?}"
        );
    }

    /// A fixture record served from a local file, without a sha256.
    fn unverified_record(dir: &Path, md5: Option<&str>) -> RepoDataRecord {
        let archive = dir.join("zlib-1.0-0.tar.bz2");
        std::fs::write(&archive, b"not really an archive").unwrap();
        let mut r = fixture().into_iter().next().unwrap();
        r.url = url::Url::from_file_path(&archive).unwrap();
        r.package_record.sha256 = None;
        r.package_record.md5 =
            md5.map(|h| rattler_digest::parse_digest_from_hex::<rattler_digest::Md5>(h).unwrap());
        r
    }

    #[test]
    fn downloads_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::offline().unwrap();
        let r = unverified_record(dir.path(), None);
        let err = download(&r, &http, &cache).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::Unverifiable { url, .. }) if url == r.url.as_str()
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("refusing an unverifiable package"),
            "{err}"
        );
        let wrong = "00000000000000000000000000000000";
        let r = unverified_record(dir.path(), Some(wrong));
        let err = download(&r, &http, &cache).unwrap_err();
        match err.downcast_ref::<CondaError>() {
            Some(CondaError::Md5Mismatch {
                expected, actual, ..
            }) => {
                assert_eq!(expected, wrong);
                assert_ne!(actual, wrong);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("md5 mismatch"), "{err}");
    }

    // -- Channel tokens (`https://host/t/<TOKEN>/channel`) ---------------------

    const SECRET: &str = "SECRETTOKEN";

    /// An error's whole message, causes included.
    fn shown(err: &kiln_core::Error) -> String {
        kiln_core::error::with_causes(err)
    }

    /// A loopback HTTP server answering every request with `status` and
    /// `body`: its base URL and the paths it was asked for.
    fn serve(
        status: &'static str,
        body: &'static [u8],
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                if let Some(path) = line.split_whitespace().nth(1) {
                    log.lock().unwrap().push(path.to_string());
                }
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(body);
            }
        });
        (format!("http://127.0.0.1:{port}"), seen)
    }

    fn token_channel(base: &str) -> Channel {
        let config = channels::config(Path::new("/"), None).unwrap();
        channels::parse(&format!("{base}/t/{SECRET}/chan"), &config).unwrap()
    }

    #[test]
    fn channel_tokens_stay_out_of_the_lock_and_the_image() {
        let config = channels::config(Path::new("/"), None).unwrap();
        let chan = channels::parse("https://h.invalid/t/SECRETTOKEN/chan", &config).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/conda/conda-forge-numpy-linux-64.json");
        let repodata = channels::parse_repodata(&std::fs::read(path).unwrap()).unwrap();
        let numpy = repodata
            .into_repo_data_records(&chan)
            .into_iter()
            .find(|r| r.package_record.name.as_normalized() == "numpy")
            .unwrap();
        // What the channel serves carries the token, as it must to be fetched.
        assert!(numpy.url.as_str().contains(SECRET));
        assert!(numpy.channel.as_deref().unwrap().contains(SECRET));

        let spec = "https://h.invalid/t/SECRETTOKEN/chan::numpy";
        let s = section(vec![chan.base_url.to_string()], vec![spec.into()]);
        let req = request(&s, Path::new("/")).unwrap();
        let requested = requested_names(&req);
        assert_eq!(requested["numpy"], "https://h.invalid/chan::numpy");
        let sha256 = Digest::from_hex(&hex::encode(numpy.package_record.sha256.unwrap())).unwrap();
        let plan = CondaPlan {
            prefix: "/opt/conda".into(),
            subdir: "linux-64".parse().unwrap(),
            install: vec![Pinned {
                record: numpy.clone(),
                sha256,
                requested: requested.get("numpy").cloned(),
            }],
            unchanged: Vec::new(),
            replaced: Vec::new(),
            specs: req.spec_texts.iter().map(|t| public_spec(t)).collect(),
            virtual_packages: Vec::new(),
            pip: None,
            kept: None,
        };
        let pins = pins(&plan);
        let locked = serde_json::to_string(&pins).unwrap();
        assert!(!locked.contains(SECRET), "{locked}");
        assert_eq!(pins[0].channel, "https://h.invalid/chan/");
        let file = numpy.identifier.to_file_name();
        assert_eq!(
            pins[0].url,
            format!("https://h.invalid/chan/linux-64/{file}")
        );
        assert_eq!(
            pins[0].requested.as_deref(),
            Some("https://h.invalid/chan::numpy")
        );
        // A locked build gets the exact URL back from the configured channel.
        let sources: Vec<String> = req
            .channels
            .iter()
            .map(|c| c.base_url.as_str().to_string())
            .collect();
        assert_eq!(
            kiln_core::url::with_credentials(&pins[0].url, &sources),
            numpy.url.as_str()
        );

        // Reports, history and conda-meta records.
        assert!(plan.specs.iter().all(|s| !s.contains(SECRET)));
        assert_eq!(
            install::label(&numpy),
            format!("chan::numpy-1.26.4-{}", numpy.package_record.build)
        );
        let public = public_record(&numpy);
        assert_eq!(public.url.as_str(), pins[0].url);
        let mut meta = Vec::new();
        PrefixRecord::from_repodata_record(public, Vec::new())
            .write_to(&mut meta, true)
            .unwrap();
        let meta = String::from_utf8(meta).unwrap();
        assert!(!meta.contains(SECRET), "{meta}");
        assert!(meta.contains("https://h.invalid/chan/"), "{meta}");
    }

    #[test]
    fn channel_tokens_stay_out_of_request_errors() {
        // A MatchSpec naming its channel by URL.
        let s = section(
            vec!["conda-forge".into()],
            vec!["https://h.invalid/t/SECRETTOKEN/chan::numpy >=>= 1".into()],
        );
        let err = request(&s, Path::new("/")).err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadMatchSpec { .. })
            ),
            "{err:?}"
        );
        assert!(!shown(&err).contains(SECRET), "{err}");
        assert!(
            shown(&err).contains("https://h.invalid/t/***/chan::numpy"),
            "{err}"
        );
        // A channel URL that does not parse.
        let s = section(
            vec!["https://u:pw@h.invalid:99999/t/SECRETTOKEN/chan".into()],
            vec!["numpy".into()],
        );
        let err = request(&s, Path::new("/")).err().unwrap();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadChannel { .. })
            ),
            "{err:?}"
        );
        assert!(
            !shown(&err).contains(SECRET) && !shown(&err).contains("pw"),
            "{err}"
        );
        // An alias that does not parse.
        let err = channels::config(
            Path::new("/"),
            Some("https://h.invalid:99999/t/SECRETTOKEN"),
        )
        .unwrap_err();
        assert!(!shown(&err).contains(SECRET), "{err}");
    }

    #[test]
    fn channel_tokens_stay_out_of_fetch_errors() {
        let subdir: Subdir = "linux-64".parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let fetch_error = |base: &str, http: &Http| {
            channels::fetch_all(&[token_channel(base)], subdir, http, &cache).unwrap_err()
        };
        // Neither subdir there.
        let (base, seen) = serve("404 Not Found", b"");
        let err = fetch_error(&base, &Http::new().unwrap());
        match err.downcast_ref::<CondaError>() {
            Some(CondaError::NoRepodata { channel, url, .. }) => {
                assert_eq!(url, &format!("{base}/t/***/chan/"));
                assert!(!channel.contains(SECRET), "{channel}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!shown(&err).contains(SECRET), "{err}");
        // The token was used to ask.
        let asked = seen.lock().unwrap().clone();
        assert!(
            asked.contains(&format!("/t/{SECRET}/chan/linux-64/repodata.json")),
            "{asked:?}"
        );
        // A repodata.json that does not parse.
        let (base, _) = serve("200 OK", b"{not json");
        let err = fetch_error(&base, &Http::new().unwrap());
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::BadRepodata { .. })
            ),
            "{err:?}"
        );
        assert!(
            shown(&err).contains("/t/***/chan/linux-64/repodata.json"),
            "{err}"
        );
        assert!(!shown(&err).contains(SECRET), "{err}");
        // A server error, and offline.
        let (base, _) = serve("403 Forbidden", b"");
        let err = fetch_error(&base, &Http::new().unwrap());
        assert!(!shown(&err).contains(SECRET), "{err}");
        let err = fetch_error("https://h.invalid", &Http::offline().unwrap());
        assert!(!shown(&err).contains(SECRET), "{err}");
    }

    #[test]
    fn download_errors_name_the_url_once_with_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let (base, _) = serve("404 Not Found", b"");
        let mut r = unverified_record(dir.path(), None);
        r.url = url::Url::parse(&format!("{base}/chan/linux-64/zlib-1.0-0.tar.bz2")).unwrap();
        let err = download(&r, &http, &cache).unwrap_err();
        let text = shown(&err);
        assert_eq!(text.matches("zlib-1.0-0.tar.bz2").count(), 1, "{text}");
        assert!(text.contains("hint:"), "{text}");
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        // Nothing listening: a network error, the URL still once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        r.url = url::Url::parse(&format!(
            "http://127.0.0.1:{port}/c/linux-64/zlib-1.0-0.tar.bz2"
        ))
        .unwrap();
        let err = download(&r, &http, &cache).unwrap_err();
        let text = shown(&err);
        assert_eq!(err.kind(), kiln_core::ErrorKind::Network, "{text}");
        assert_eq!(text.matches("zlib-1.0-0.tar.bz2").count(), 1, "{text}");
        assert!(text.contains("hint:"), "{text}");
    }

    #[test]
    fn channel_tokens_stay_out_of_download_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let (base, _) = serve("200 OK", b"not really an archive");
        let url = format!("{base}/t/{SECRET}/chan/linux-64/zlib-1.0-0.tar.bz2");
        let mut r = unverified_record(dir.path(), None);
        r.url = url::Url::parse(&url).unwrap();
        let err = download(&r, &http, &cache).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::Unverifiable { .. })
            ),
            "{err:?}"
        );
        assert!(!shown(&err).contains(SECRET), "{err}");
        r.package_record.md5 = Some(
            rattler_digest::parse_digest_from_hex::<rattler_digest::Md5>(
                "00000000000000000000000000000000",
            )
            .unwrap(),
        );
        let err = download(&r, &http, &cache).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::Md5Mismatch { .. })
            ),
            "{err:?}"
        );
        assert!(!shown(&err).contains(SECRET), "{err}");
    }

    #[test]
    fn a_locked_build_fetches_with_the_configured_token() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let body: &'static [u8] = b"not really an archive";
        let (base, seen) = serve("200 OK", body);
        let chan = token_channel(&base);
        let pin = kiln_spec::lock::CondaPin {
            name: "zlib".into(),
            version: "1.0".into(),
            build: "0".into(),
            channel: format!("{base}/chan/"),
            subdir: "linux-64".into(),
            filename: "zlib-1.0-0.tar.bz2".into(),
            url: format!("{base}/chan/linux-64/zlib-1.0-0.tar.bz2"),
            sha256: Digest::of(body),
            md5: None,
            size: None,
            depends: Vec::new(),
            constrains: Vec::new(),
            requested: None,
        };
        let sources = vec![chan.base_url.as_str().to_string()];
        let err = install::record_from_archive(&pin, &sources, &Http::new().unwrap(), &cache)
            .unwrap_err();
        // Fetched with the token; the archive is no archive; the message has no token.
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [format!("/t/{SECRET}/chan/linux-64/zlib-1.0-0.tar.bz2")]
        );
        assert!(
            matches!(
                err.downcast_ref::<CondaError>(),
                Some(CondaError::CorruptArchive { .. })
            ),
            "{err:?}"
        );
        assert!(!shown(&err).contains(SECRET), "{err}");
    }
}
