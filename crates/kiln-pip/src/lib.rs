//! `[pip]`: resolve Python requirements against the image's interpreter and install wheels as layers.
//!
//! Nothing runs inside the image: the interpreter, its version, the C library
//! and what is already installed are read from the base filesystem
//! (`target`); the index client (`index`) speaks the PEP 691/503 simple API
//! and PEP 658 metadata; `resolve` runs PubGrub with markers evaluated for
//! the target; `install` lays wheels out as deterministic layer entries.
//! Failures are [`PipError`]s inside [`kiln_core::Error`].

mod error;
mod guess;
mod index;
mod install;
mod markers;
mod metadata;
mod remote_zip;
mod resolution;
mod resolve;
mod sdist;
mod spec;
mod tags;
mod target;
mod wheel;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use kiln_core::digest::Digest;
use kiln_core::error::Result;
use kiln_core::platform::Platform;
use kiln_fs::layer::{Entry, LayerGroup, Tree};
use kiln_fs::rootfs::Rootfs;
use kiln_store::cache::Cache;
use kiln_store::http::Http;

pub use error::{PipError, RequirementProblem, WheelProblem};
pub use guess::{prefetch_with_guess, Guess, PythonHint};
pub use kiln_fs::probe::normalize;
pub use kiln_spec::sections::PipSection;
pub use resolution::{KeptResolution, Resolution};
pub use sdist::{BuildJob, WheelBuilder, LEGACY_BACKEND};
pub use target::PythonTarget;

/// Wheels larger than this get a layer of their own (the
/// [`MAX_BIG_WHEELS`] largest of them). Such a layer is written whole,
/// diff_id and all, as soon as its wheel is downloaded, while the others
/// still download; a shared layer is put together after the last download
/// from parts built ahead, and reading its files again for its diff_id is
/// a tail no download overlaps. At 20 MiB, 60% of a 110-wheel PyData
/// freeze's pip bytes went through that tail (0.5 s of a 2.5 s build);
/// at 2 MiB, 13 of its wheels get layers of their own and the rest share
/// 19 MB.
const BIG_WHEEL: u64 = 2 << 20;

/// At most this many wheels get a layer of their own for their size, the
/// largest first (by size, then name): with the base's layers and the
/// shared ones, an image stays well under the ~125 layers overlay
/// filesystems stack.
const MAX_BIG_WHEELS: usize = 40;

/// Up to this many wheels, each gets a layer of its own, so a version bump
/// re-pushes only that wheel; beyond it small wheels share
/// [`SHARED_LAYERS`] layers (images have a practical limit of ~125 layers).
const OWN_LAYERS_UP_TO: usize = 24;

/// The layers small wheels share beyond [`OWN_LAYERS_UP_TO`], each wheel in
/// the one its name hashes to: adding, removing or bumping one wheel of a
/// large freeze rebuilds and re-pushes an eighth of the small wheels, not
/// all of them (a 110-wheel freeze's shared layer was 101 MB compressed).
const SHARED_LAYERS: usize = 8;

/// Which shared layer a small wheel goes to: by its normalised name, so
/// the same wheel lands in the same layer whatever else is installed.
fn shared_layer(name: &str) -> usize {
    let d = Digest::of(normalize(name).as_bytes());
    usize::from_str_radix(&d.hex()[..4], 16).unwrap_or(0) % SHARED_LAYERS
}

/// Whether a wheel of `size` bytes may get a layer of its own in a stage
/// of `wheels` wheels: whether it does depends on the others' sizes too
/// ([`own_layers`]), so a layer written ahead on this guess may go unused.
fn may_own_layer(wheels: usize, size: u64) -> bool {
    size > BIG_WHEEL || wheels <= OWN_LAYERS_UP_TO
}

/// Which of `wheels` get layers of their own: every one in a small stage,
/// else the [`MAX_BIG_WHEELS`] largest of those above [`BIG_WHEEL`]. A
/// function of the wheels alone (not of their order or of what came
/// first), so the layers are the same on every build of them.
fn own_layers(wheels: &[PinnedWheel]) -> Vec<bool> {
    if wheels.len() <= OWN_LAYERS_UP_TO {
        return vec![true; wheels.len()];
    }
    let mut big: Vec<usize> = (0..wheels.len())
        .filter(|&i| wheels[i].size > BIG_WHEEL)
        .collect();
    big.sort_by(|&a, &b| {
        let (a, b) = (&wheels[a], &wheels[b]);
        b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name))
    });
    let mut own = vec![false; wheels.len()];
    for i in big.into_iter().take(MAX_BIG_WHEELS) {
        own[i] = true;
    }
    own
}

/// Told of each wheel that may get a layer of its own as soon as it is
/// downloaded, on the thread that fetched it while the others still
/// download: a build writes that layer then (into its memo), and the
/// stage's layer step finds it there when the stage's grouping gives the
/// wheel that layer ([`own_layers`]). Compressing is most of a cold pip
/// stage's CPU; this puts it beside the network waits instead of after
/// them. The entries are those [`layer_groups`] gives the wheel.
pub trait LayerAhead: Sync {
    fn own_layer(&self, entries: Vec<Entry>);
    /// A wheel that shares a layer: its part of that layer (see
    /// [`LayerGroup::parts`]), which a build compresses then into the
    /// cache, for the shared layer to copy.
    fn shared_part(&self, entries: Vec<Entry>);
}

/// What a plan may call on: a builder of wheels from sdists and source
/// trees, who writes layers ahead, and who is told once the wheels to
/// fetch are known (resolved, hashes checked; before any download), so
/// that a build starts there what needs only the image below the stage.
#[derive(Clone, Copy, Default)]
pub struct Hooks<'a> {
    pub builder: Option<&'a dyn WheelBuilder>,
    pub ahead: Option<&'a dyn LayerAhead>,
    /// Called once the wheels are known, before they download, with the
    /// target interpreter.
    pub resolved: Option<&'a (dyn Fn(&PythonTarget) + Sync)>,
}

/// One wheel to install, downloaded and verified in the cache.
#[derive(Debug, Clone)]
pub struct PinnedWheel {
    /// Normalised project name.
    pub name: String,
    pub version: String,
    pub(crate) url: String,
    pub(crate) sha256: Digest,
    pub(crate) size: u64,
    pub filename: String,
    /// Named in the spec (gets `REQUESTED`).
    pub(crate) requested: bool,
    /// `direct_url.json` for URL/path requirements.
    pub(crate) direct_url: Option<String>,
    /// Built by kiln: the source's URL and sha256 (hex; none for a directory).
    pub(crate) sdist: Option<(String, Option<String>)>,
}

#[derive(Debug, Clone)]
pub struct PipPlan {
    pub python: PythonTarget,
    /// Sorted by name.
    pub wheels: Vec<PinnedWheel>,
    /// `(name, version)` already in the image and satisfying the requirements.
    pub already_installed: Vec<(String, String)>,
    /// Where the versions came from.
    pub resolution: Resolution,
    /// The kept resolution these versions are (taken or kept by this
    /// plan), when there is one.
    pub kept: Option<KeptResolution>,
    /// The wheels already laid out to write their layers ahead.
    pub(crate) laid_out: LaidOut,
}

/// Wheels' installed entries by the wheel's digest, as [`layer_ahead`] laid
/// them out while the others downloaded: [`layer_groups`] takes them
/// instead of reading each wheel's kept members and RECORD again (on a
/// 110-wheel freeze, 0.1 s of CPU after the last download).
#[derive(Debug, Clone, Default)]
pub(crate) struct LaidOut(Arc<Mutex<HashMap<Digest, Vec<Entry>>>>);

impl LaidOut {
    fn keep(&self, wheel: &Digest, entries: Vec<Entry>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(wheel.clone(), entries);
    }

    fn take(&self, wheel: &Digest) -> Option<Vec<Entry>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(wheel)
    }
}

/// Paths of the base image whose contents `plan` reads.
pub fn keep_path(path: &str) -> bool {
    path.ends_with(".dist-info/METADATA")
        || path.ends_with(".egg-info/PKG-INFO")
        || (path.ends_with(".egg-info") && path.contains("-packages/"))
        || path == "/var/lib/dpkg/status"
        || path.starts_with("/var/lib/dpkg/status.d/")
        || path == "/lib/apk/db/installed"
        || (path.ends_with("/patchlevel.h") && path.contains("/include/python3."))
        || path.ends_with("/pyvenv.cfg")
}

/// Where packages come from, after every configuration source was consulted.
struct Sources {
    indexes: Vec<String>,
    find_links: Vec<String>,
    /// `no-index` was asked for (by the spec, a requirements file or pip.conf).
    no_index: bool,
}

fn sources(section: &PipSection, spec_dir: &Path, inputs: &spec::Inputs) -> Sources {
    let config = if section.isolated {
        spec::PipConfig::default()
    } else {
        spec::PipConfig::from_host()
    };
    let mut find_links: Vec<String> = section
        .find_links
        .iter()
        .map(|f| spec::location(f, spec_dir))
        .collect();
    find_links.extend(inputs.find_links.iter().cloned());
    find_links.extend(config.find_links.iter().cloned());
    dedup(&mut find_links);
    if section.no_index || inputs.no_index || config.no_index {
        return Sources {
            indexes: Vec::new(),
            find_links,
            no_index: true,
        };
    }
    let index = inputs
        .index
        .clone()
        .or_else(|| section.index.clone().map(|i| spec::location(&i, spec_dir)))
        .or(config.index.clone())
        .or_else(default_index);
    let mut indexes: Vec<String> = index.into_iter().collect();
    indexes.extend(
        section
            .extra_index
            .iter()
            .map(|i| spec::location(i, spec_dir)),
    );
    indexes.extend(inputs.extra_index.iter().cloned());
    indexes.extend(config.extra_index.iter().cloned());
    dedup(&mut indexes);
    Sources {
        indexes,
        find_links,
        no_index: false,
    }
}

/// The index used when no configuration names one: the public Python
/// package index, whose address uv's distribution types carry. The
/// `pypi-default` feature (on by default) brings that crate and, through
/// its authentication support, about 80 more (keyrings, D-Bus, cloud
/// signers); the test build leaves it out, as every test names its index.
#[cfg(feature = "pypi-default")]
fn default_index() -> Option<String> {
    Some(uv_distribution_types::PYPI_URL.to_string())
}

#[cfg(not(feature = "pypi-default"))]
fn default_index() -> Option<String> {
    None
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// Every requirement and option the section names: `packages`, its
/// requirements files, inline lists, and `kiln lock --upgrade` pins.
fn read_inputs(section: &PipSection, spec_dir: &Path) -> Result<spec::Inputs> {
    let mut inputs = spec::Inputs {
        prerelease: section.prerelease,
        ..Default::default()
    };
    for (p, origin) in section.requests() {
        inputs.requirements.push(spec::parse_requirement(
            p,
            spec_dir,
            &origin,
            error::Owner::Spec,
        )?);
    }
    for f in &section.requirements {
        spec::read_requirements_file(&spec_dir.join(f), &mut inputs, false, 0)?;
    }
    for (origin, dir, text) in &section.inline {
        spec::read_requirements_text(text, origin, dir, &mut inputs, false, 0)?;
    }
    spec::check_hash_mode(&inputs)?;
    for (name, version) in &section.pinned {
        inputs.constraints.push(spec::parse_requirement(
            &format!("{name}=={version}"),
            spec_dir,
            "kiln.lock",
            error::Owner::Spec,
        )?);
    }
    Ok(inputs)
}

/// What of `inputs` a resolution depends on, as text for its key: each
/// requirement and constraint in PEP 508 form with its hashes, and the
/// options. Not where each was written: the same spec checked out in
/// another directory (a service's job, a CI runner) resolves the same.
/// (The sources go into the key as the index client has them.)
fn resolution_inputs(inputs: &spec::Inputs) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (what, reqs) in [
        ("requirement", &inputs.requirements),
        ("constraint", &inputs.constraints),
    ] {
        for r in reqs {
            let _ = writeln!(out, "{what} {} {:?}", r.req, r.hashes);
        }
    }
    let _ = writeln!(
        out,
        "prerelease {} require-hashes {} no-binary {} {:?}",
        inputs.prerelease,
        inputs.require_hashes.is_some(),
        inputs.no_binary.all,
        inputs.no_binary.names
    );
    out
}

/// Fetch the index pages of the section's requirements into the cache
/// (where they stay fresh for the index TTL), side by side. The resolver
/// reads them first, but only once the base's Python is known: a build
/// starts this while it pulls the base, so resolving a freeze begins with
/// every page at hand. A pin whose version has a single wheel, a pure
/// Python 3 one (most of a freeze's), is downloaded too: whatever the
/// image's Python 3, the resolver takes that wheel (unless its
/// Requires-Python rules it out), so its bytes come while the base is read
/// instead of after it (not where a marker or `--no-binary` may leave it
/// out). Best effort and quiet: a page or wheel that fails here is fetched
/// again, and its failure reported, by the resolver.
pub fn prefetch_pages(section: &PipSection, spec_dir: &Path, http: &Http, cache: &Cache) {
    prefetch(section, spec_dir, http, cache, |_, _| {});
}

/// [`prefetch_pages`], then `then` with the index client that fetched
/// them (and holds them read) and the section's inputs. Not called when
/// the inputs cannot be read or name no index.
fn prefetch(
    section: &PipSection,
    spec_dir: &Path,
    http: &Http,
    cache: &Cache,
    then: impl FnOnce(&index::IndexClient, &spec::Inputs),
) {
    let Ok(inputs) = read_inputs(section, spec_dir) else {
        return;
    };
    let Sources { indexes, .. } = sources(section, spec_dir, &inputs);
    if indexes.is_empty() {
        return;
    }
    // find-links listings are read when resolving (usually local).
    let client = index::IndexClient::new(http, cache, indexes, Vec::new());
    let names: Vec<_> = pinned_names(&inputs).into_iter().collect();
    kiln_store::http::on_network_pool(|| {
        names.par_iter().for_each(|(n, (pin, always))| {
            // Fetched and read by an earlier build: nothing to get ahead
            // (and a kept resolution may not read the page at all).
            if client.fresh(n) {
                return;
            }
            let Ok(Some(files)) = client.files(n) else {
                return;
            };
            // A pinned version with a single wheel is read first by the
            // resolver whatever the image's Python: its metadata comes
            // now, while the base is still being read, not a round trip
            // each once resolving starts.
            let Some(pin) = pin else { return };
            let mut wheels = files.iter().filter(|f| {
                f.is_wheel()
                    && !f.yanked
                    && index::file_version(&f.filename)
                        .and_then(|v| v.parse::<uv_pep440::Version>().ok())
                        .is_some_and(|v| &v == pin)
            });
            if let (Some(only), None) = (wheels.next(), wheels.next()) {
                let _ = client.metadata(only);
                if *always
                    && !inputs.no_binary.applies(n)
                    && tags::WheelName::parse(&only.filename).is_ok_and(|w| w.is_pure_python3())
                {
                    let _ = client.download_artifact(only);
                }
            }
        })
    });
    then(&client, &inputs);
}

/// Each requirement's name once, with its pin (`==V`) if every line naming
/// it pins the same, and whether every such line applies whatever the
/// Python (no marker).
fn pinned_names(inputs: &spec::Inputs) -> BTreeMap<String, (Option<uv_pep440::Version>, bool)> {
    let mut names: BTreeMap<String, (Option<uv_pep440::Version>, bool)> = BTreeMap::new();
    for r in &inputs.requirements {
        let pin = pinned_version(&r.req);
        let always = r.req.marker.is_true();
        names
            .entry(r.req.name.to_string())
            .and_modify(|(p, a)| {
                if *p != pin {
                    *p = None
                }
                *a &= always;
            })
            .or_insert((pin, always));
    }
    names
}

/// The version `req` pins with `==V` (no wildcard), if it does.
fn pinned_version<T: uv_pep508::Pep508Url>(
    req: &uv_pep508::Requirement<T>,
) -> Option<uv_pep440::Version> {
    let Some(uv_pep508::VersionOrUrl::VersionSpecifier(s)) = &req.version_or_url else {
        return None;
    };
    let mut it = s.iter();
    match (it.next(), it.next()) {
        (Some(one), None)
            if matches!(
                one.operator(),
                uv_pep440::Operator::Equal | uv_pep440::Operator::ExactEqual
            ) =>
        {
            Some(one.version().clone())
        }
        _ => None,
    }
}

/// Resolve the section for the image's Python and download every wheel (verified) into the cache.
pub fn plan(
    section: &PipSection,
    spec_dir: &Path,
    rootfs: &Rootfs,
    platform: &Platform,
    http: &Http,
    cache: &Cache,
) -> Result<PipPlan> {
    plan_building(
        section,
        spec_dir,
        rootfs,
        platform,
        http,
        cache,
        Hooks::default(),
    )
}

/// [`plan`], with `hooks.builder` making wheels of sdists and source trees
/// (those with no fitting wheel, URL and path requirements, `--no-binary`)
/// and `hooks.ahead` told of each wheel with a layer of its own.
pub fn plan_building(
    section: &PipSection,
    spec_dir: &Path,
    rootfs: &Rootfs,
    platform: &Platform,
    http: &Http,
    cache: &Cache,
    hooks: Hooks<'_>,
) -> Result<PipPlan> {
    let builder = hooks.builder;
    let python = PythonTarget::detect(rootfs, platform, &section.target)?;
    let inputs = read_inputs(section, spec_dir)?;
    if builder.is_none() {
        if let Some(origin) = &inputs.no_binary.origin {
            return Err(PipError::UnsupportedOption {
                origin: origin.clone(),
                option: Some("--no-binary".into()),
                no_binary: true,
            }
            .into());
        }
    }
    let Sources {
        indexes,
        find_links,
        no_index,
    } = sources(section, spec_dir, &inputs);
    if indexes.is_empty() && find_links.is_empty() {
        return Err(PipError::NoPackageSource { no_index }.into());
    }
    let client = index::IndexClient::new(http, cache, indexes, find_links);
    let builds = builder.map(|b| sdist::Builds::new(b, &client, &python, platform, cache));
    let env = markers::environment(&python)?;
    let roots = inputs.requirements.clone();
    let provider = resolve::Provider::new(
        &client,
        &python,
        env,
        roots.clone(),
        &inputs.constraints,
        inputs.prerelease,
        builds.as_ref().map(|b| (b, inputs.no_binary.clone())),
    )?;
    // A root naming a URL or path is fetched or built while resolving: not kept.
    let python_key = format!("{python:?}");
    let kept_key = (!provider.has_direct())
        .then(|| resolution::key(platform, &python_key, &inputs, &client, builder.is_some()));
    let (resolved, how, kept) = match kept_key
        .as_ref()
        .and_then(|k| resolution::load(cache, k, &client))
    {
        Some(resolved) => (resolved, Resolution::Kept, kept_key),
        None => {
            // Every requirement that cannot be met on its own, in one message.
            provider.check_roots(&|| client.project_names())?;
            let resolved = resolve::resolve(&provider)?;
            let kept = kept_key.filter(|k| resolution::store(cache, k, &client, &resolved));
            (resolved, Resolution::Resolved, kept)
        }
    };
    let kept = kept.map(|key| KeptResolution {
        python: python_key,
        key,
    });

    let mut hashes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &roots {
        if !r.hashes.is_empty() {
            hashes
                .entry(r.req.name.to_string())
                .or_default()
                .extend(r.hashes.iter().cloned());
        }
    }
    let requested: std::collections::HashSet<String> =
        roots.iter().map(|r| r.req.name.to_string()).collect();

    // pip's hash-checking mode covers what the requirements pull in too:
    // every package to download needs a hash from the requirements.
    let hash_mode = spec::hash_mode(&inputs);
    let mut unhashed = Vec::new();
    let mut already_installed = Vec::new();
    let mut todo = Vec::new();
    let mut built = Vec::new();
    for r in resolved {
        if r.installed {
            already_installed.push((r.name, r.version.to_string()));
            continue;
        }
        let mut file = r.file.ok_or_else(|| PipError::NoFile {
            name: r.name.clone(),
            version: r.version.to_string(),
            resolved: true,
        })?;
        let direct_hashed = provider.direct_url(&r.name).is_some() && file.sha256.is_some();
        if hash_mode && !hashes.contains_key(&r.name) && !direct_hashed {
            unhashed.push(match &file.sha256 {
                Some(h) => format!("{}=={} --hash=sha256:{h}", r.name, r.version),
                None => format!(
                    "{}=={} (the source gives no hash: `pip hash` {})",
                    r.name, r.version, file.filename
                ),
            });
        }
        if let Some(allowed) = hashes.get(&r.name) {
            match &file.sha256 {
                Some(h) if !allowed.contains(h) => {
                    return Err(PipError::HashMismatch {
                        name: r.name,
                        filename: file.filename,
                        actual: h.clone(),
                        allowed: allowed.clone(),
                    }
                    .into())
                }
                Some(_) => {}
                None => file.sha256 = allowed.first().cloned(),
            }
        }
        if let Some(b) = builds.as_ref().filter(|_| !file.is_wheel()) {
            let w = b.get(&file.url).ok_or_else(|| PipError::NoFile {
                name: r.name.clone(),
                version: r.version.to_string(),
                resolved: true,
            })?;
            // PEP 610: an archive with its hash, a Git commit, or a directory.
            let direct_url = provider.direct_url(&r.name).map(|u| {
                let url = kiln_core::url::strip_credentials(u);
                match (&w.sdist_sha256, &w.pinned) {
                    (Some(d), _) => serde_json::json!({
                        "archive_info": {"hash": format!("sha256={}", d.hex()), "hashes": {"sha256": d.hex()}},
                        "url": url,
                    }),
                    (None, Some(p)) => {
                        let (repo, rev, _) = sdist::split_git_url(u);
                        let commit = p.split('@').next_back().unwrap_or("").split('#').next().unwrap_or("");
                        let mut vcs = serde_json::json!({"vcs": "git", "commit_id": commit});
                        if let Some(rev) = rev {
                            vcs["requested_revision"] = rev.into();
                        }
                        serde_json::json!({"url": kiln_core::url::strip_credentials(repo), "vcs_info": vcs})
                    }
                    (None, None) => serde_json::json!({"dir_info": {}, "url": url}),
                }
                .to_string()
            });
            built.push(PinnedWheel {
                name: r.name.clone(),
                version: r.version.to_string(),
                url: file.url.clone(),
                sha256: w.sha256.clone(),
                size: w.size,
                filename: w.filename.clone(),
                requested: requested.contains(&r.name),
                direct_url,
                sdist: Some((
                    w.pinned.clone().unwrap_or_else(|| file.url.clone()),
                    w.sdist_sha256.map(|d| d.hex().to_string()),
                )),
            });
            continue;
        }
        todo.push((r.name, r.version.to_string(), file));
    }
    if !unhashed.is_empty() {
        return Err(PipError::UnhashedDependencies { lines: unhashed }.into());
    }
    if let Some(resolved) = hooks.resolved {
        resolved(&python);
    }
    let wheel_count = todo.len() + built.len();
    // The largest first, taken in that order as the pool's threads free
    // up: they take longest, and have the most to compile and compress
    // once here, which then overlaps the smaller ones' downloads. The
    // results come back in the resolution's order.
    let mut order: Vec<usize> = (0..todo.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(todo[i].2.size.unwrap_or(0)));
    let laid_out = LaidOut::default();
    let downloaded: Vec<Result<PinnedWheel>> = kiln_store::http::on_network_pool(|| {
        let mut done: Vec<(usize, Result<PinnedWheel>)> = order
            .into_iter()
            .par_bridge()
            .map(|i| {
                let (name, version, file) = &todo[i];
                let fetched = || -> Result<PinnedWheel> {
                    let (digest, size) = client
                        .download_artifact(file)
                        .map_err(|e| e.context(format!("[pip] {name} {version}")))?;
                    let direct_url = provider.direct_url(name).map(|u| {
                        serde_json::json!({
                            "archive_info": {"hash": format!("sha256={}", digest.hex()), "hashes": {"sha256": digest.hex()}},
                            // PEP 610: no credentials in the installed record.
                            "url": kiln_core::url::strip_credentials(u),
                        })
                        .to_string()
                    });
                    let wheel = PinnedWheel {
                        name: name.clone(),
                        version: version.clone(),
                        url: file.url.clone(),
                        sha256: digest,
                        size,
                        filename: file.filename.clone(),
                        requested: requested.contains(name),
                        direct_url,
                        sdist: None,
                    };
                    layer_ahead(hooks.ahead, &python, wheel_count, &wheel, cache, &laid_out);
                    Ok(wheel)
                };
                (i, fetched())
            })
            .collect();
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect()
    });
    let mut wheels = downloaded.into_iter().collect::<Result<Vec<_>>>()?;
    wheels.extend(built);
    wheels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PipPlan {
        python,
        wheels,
        already_installed,
        resolution: how,
        kept,
        laid_out,
    })
}

/// Whether `kept` (a plan's [`PipPlan::kept`]) would be taken again by a
/// plan of `section` now, on the image the plan had: the same key from the
/// requirements, options and sources as they read now, and every page or
/// find-links directory the resolver read unchanged. The image below the
/// stage is the caller's to vouch for (the key names the Python it held);
/// `builder` says whether the plan would have had `Hooks::builder` (a
/// build's stages do).
pub fn kept_resolution_holds(
    kept: &KeptResolution,
    section: &PipSection,
    spec_dir: &Path,
    platform: &Platform,
    builder: bool,
    http: &Http,
    cache: &Cache,
) -> Result<bool> {
    let inputs = read_inputs(section, spec_dir)?;
    let Sources {
        indexes,
        find_links,
        ..
    } = sources(section, spec_dir, &inputs);
    let client = index::IndexClient::new(http, cache, indexes, find_links);
    let key = resolution::key(platform, &kept.python, &inputs, &client, builder);
    Ok(key == kept.key && resolution::load(cache, &key, &client).is_some())
}

/// The plan a lock pins: no index is read; each wheel is fetched by URL and
/// checked against the locked sha256 (a cache hit needs no network).
pub fn plan_locked(
    section: &PipSection,
    spec_dir: &Path,
    rootfs: &Rootfs,
    platform: &Platform,
    pins: &[kiln_spec::lock::PipPin],
    http: &Http,
    cache: &Cache,
) -> Result<PipPlan> {
    plan_locked_building(
        section,
        spec_dir,
        rootfs,
        platform,
        pins,
        http,
        cache,
        Hooks::default(),
    )
}

/// [`plan_locked`]; a built wheel the cache lacks is built again by
/// `hooks.builder` from its locked source, and must come out the same;
/// `hooks.ahead` is told of each wheel with a layer of its own.
#[allow(clippy::too_many_arguments)]
pub fn plan_locked_building(
    section: &PipSection,
    spec_dir: &Path,
    rootfs: &Rootfs,
    platform: &Platform,
    pins: &[kiln_spec::lock::PipPin],
    http: &Http,
    cache: &Cache,
    hooks: Hooks<'_>,
) -> Result<PipPlan> {
    let builder = hooks.builder;
    let python = PythonTarget::detect(rootfs, platform, &section.target)?;
    // The lock holds URLs without credentials; the configured sources hold them.
    let Sources {
        indexes,
        find_links,
        ..
    } = sources(section, spec_dir, &read_inputs(section, spec_dir)?);
    let credentialed: Vec<String> = indexes.iter().chain(&find_links).cloned().collect();
    let client = index::IndexClient::new(http, cache, indexes, find_links);
    let builds = builder.map(|b| sdist::Builds::new(b, &client, &python, platform, cache));
    // Built wheels first, one at a time (the cache usually has them).
    for pin in pins {
        let Some(src) = &pin.sdist else { continue };
        if cache.contains(&pin.sha256) {
            continue;
        }
        let what = format!("{} {} (locked)", pin.name, pin.version);
        let Some(b) = &builds else {
            return Err(PipError::NoBuilder {
                requirement: what,
                why: "this command does not do",
            }
            .into());
        };
        let url = kiln_core::url::with_credentials(&src.url, &credentialed);
        let file = index::DistFile {
            filename: src.url.rsplit('/').next().unwrap_or_default().to_string(),
            url,
            sha256: src.sha256.clone(),
            requires_python: None,
            yanked: false,
            core_metadata: None,
            size: None,
        };
        let w = b.build(&pin.name, &file)?;
        if w.sha256 != pin.sha256 {
            return Err(PipError::BuiltWheelDiffers {
                name: pin.name.clone(),
                sdist: file.filename,
                locked: pin.sha256.hex().to_string(),
                built: w.sha256.hex().to_string(),
            }
            .into());
        }
    }
    if let Some(resolved) = hooks.resolved {
        resolved(&python);
    }
    let laid_out = LaidOut::default();
    let mut wheels = pins
        .par_iter()
        .map(|pin| {
            if pin.sdist.is_some() {
                // In the cache (checked or just built): no URL to fetch.
                return Ok(PinnedWheel {
                    name: pin.name.clone(),
                    version: pin.version.clone(),
                    url: pin.url.clone(),
                    sha256: pin.sha256.clone(),
                    size: pin.size,
                    filename: pin.filename.clone(),
                    requested: pin.requested,
                    direct_url: pin.direct_url.clone(),
                    sdist: pin
                        .sdist
                        .as_ref()
                        .map(|s| (s.url.clone(), s.sha256.clone())),
                });
            }
            let what = format!("[pip] locked {} {}", pin.name, pin.version);
            let d: Digest = pin.sha256.clone();
            let url = kiln_core::url::with_credentials(&pin.url, &credentialed);
            let (sha256, size) = http
                .download(&url, Some(&d), cache)
                .map_err(|e| e.context(&what))?;
            let wheel = PinnedWheel {
                name: pin.name.clone(),
                version: pin.version.clone(),
                url: pin.url.clone(),
                sha256,
                size,
                filename: pin.filename.clone(),
                requested: pin.requested,
                direct_url: pin.direct_url.clone(),
                sdist: None,
            };
            layer_ahead(hooks.ahead, &python, pins.len(), &wheel, cache, &laid_out);
            Ok(wheel)
        })
        .collect::<Result<Vec<_>>>()?;
    wheels.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(PipPlan {
        python,
        wheels,
        already_installed: Vec::new(),
        resolution: Resolution::Locked,
        kept: None,
        laid_out,
    })
}

/// What a lock records for a pip plan; `section` tells `[pip]` from an environment.yml list.
pub fn pins(plan: &PipPlan, section: &str) -> Vec<kiln_spec::lock::PipPin> {
    plan.wheels
        .iter()
        .map(|w| kiln_spec::lock::PipPin {
            section: section.to_string(),
            name: w.name.clone(),
            version: w.version.clone(),
            filename: w.filename.clone(),
            // Credentials stay in the spec (or pip's configuration): a
            // locked build puts them back from there.
            url: kiln_core::url::strip_credentials(&w.url),
            sha256: w.sha256.clone(),
            size: w.size,
            requested: w.requested,
            direct_url: w.direct_url.clone(),
            sdist: w
                .sdist
                .as_ref()
                .map(|(url, sha256)| kiln_spec::lock::SdistPin {
                    url: kiln_core::url::strip_credentials(url),
                    sha256: sha256.clone(),
                }),
        })
        .collect()
}

/// Hand a just-downloaded wheel's own layer, or its part of a shared one,
/// to `ahead`. Best effort: a wheel that cannot be laid out is reported by
/// [`layer_groups`].
fn layer_ahead(
    ahead: Option<&dyn LayerAhead>,
    python: &PythonTarget,
    wheels: usize,
    wheel: &PinnedWheel,
    cache: &Cache,
    laid_out: &LaidOut,
) {
    let Some(ahead) = ahead else {
        return;
    };
    let Ok(entries) = wheel_layout(python, wheel, cache) else {
        return;
    };
    laid_out.keep(&wheel.sha256, entries.clone());
    if may_own_layer(wheels, wheel.size) {
        let mut tree = Tree::default();
        add_to(&mut tree, entries);
        ahead.own_layer(tree.into_sorted());
    } else {
        ahead.shared_part(LayerGroup::part_of(entries));
    }
}

/// A wheel's installed entries (its kept members, checked against RECORD).
fn wheel_layout(python: &PythonTarget, w: &PinnedWheel, cache: &Cache) -> Result<Vec<Entry>> {
    // `plan` verified every wheel a moment ago; hashing it again here
    // would double the warm-cache cost for nothing.
    if !cache.contains(&w.sha256) {
        return Err(PipError::NotInCache {
            filename: w.filename.clone(),
            sha256: w.sha256.clone(),
        }
        .into());
    }
    let path = cache.blob_path(&w.sha256);
    let files = wheel::read_wheel(&path, &w.filename, Some(&w.sha256))?;
    let info = install::InstallInfo {
        filename: &w.filename,
        requested: w.requested,
        direct_url: w.direct_url.clone(),
    };
    let known = wheel::verify(&w.filename, &files)?;
    install::wheel_entries(python, &info, files, &known)
}

/// Entries into a layer's tree, with their parent directories.
fn add_to(tree: &mut Tree, entries: Vec<Entry>) {
    for e in entries {
        tree.add_parents(&e.path);
        tree.insert(e);
    }
}

/// Layer entry groups: one per wheel (or per big wheel and one for the small
/// ones when there are many), plus the venv skeleton.
///
/// The wheels' files stay packed in the wheels (see [`wheel::read_wheel`])
/// and are inflated from there when the layers are written: the memory
/// this takes does not grow with the packages' size, and a warm build,
/// whose layers are in the cache, inflates nothing.
pub fn layer_groups(plan: &PipPlan, cache: &Cache) -> Result<Vec<LayerGroup>> {
    // Each wheel stays open until its layers are written.
    kiln_fs::layer::spool::raise_open_file_limit();
    let laid_out: Vec<Result<Vec<Entry>>> = plan
        .wheels
        .par_iter()
        .map(|w| match plan.laid_out.take(&w.sha256) {
            Some(entries) => Ok(entries),
            None => wheel_layout(&plan.python, w, cache),
        })
        .collect();
    // The shared layers (the venv skeleton goes with the first), then the
    // wheels with layers of their own.
    let mut shared: Vec<Shared> = (0..SHARED_LAYERS).map(|_| Default::default()).collect();
    let mut groups = Vec::new();
    shared[0].head = install::venv_entries(&plan.python);
    let own = own_layers(&plan.wheels);
    for ((w, entries), own) in plan.wheels.iter().zip(laid_out).zip(own) {
        let entries = entries?;
        if own {
            let mut t = Tree::default();
            add_to(&mut t, entries);
            groups.push(LayerGroup::new(
                format!("pip install {}=={}", w.name, w.version),
                t.into_sorted(),
            ));
        } else {
            let s = &mut shared[shared_layer(&w.name)];
            s.wheels
                .push((format!("{}=={}", w.name, w.version), entries));
        }
    }
    let shared = shared
        .into_iter()
        .filter(|s| !s.head.is_empty() || !s.wheels.is_empty())
        .map(|s| s.into_group(plan));
    groups.splice(0..0, shared);
    Ok(groups)
}

/// A layer small wheels share: what goes in before them (the venv
/// skeleton), and each wheel's entries by its `name==version`.
#[derive(Default)]
struct Shared {
    head: Vec<Entry>,
    wheels: Vec<(String, Vec<Entry>)>,
}

impl Shared {
    /// The layer, cut into parts: its directories and the skeleton first,
    /// then each wheel's files (in name order, whatever the order they were
    /// resolved or fetched in), so that a wheel bumped, added or removed
    /// leaves the other wheels' compressed bytes as they were (see
    /// [`LayerGroup::in_parts`]). Wheels that install the same path are
    /// merged into one part, the later by name winning.
    fn into_group(mut self, plan: &PipPlan) -> LayerGroup {
        let names: Vec<&str> = self.wheels.iter().map(|(n, _)| n.as_str()).collect();
        let label = if names.is_empty() {
            format!(
                "pip venv {}",
                plan.python
                    .venv
                    .as_ref()
                    .map(|v| v.path.as_str())
                    .unwrap_or("")
            )
        } else if names.len() > 8 {
            format!(
                "pip install {} and {} more",
                names[..8].join(" "),
                names.len() - 8
            )
        } else {
            format!("pip install {}", names.join(" "))
        };
        self.wheels.sort_by(|a, b| a.0.cmp(&b.0));
        let wheels = self.wheels.into_iter().map(|(_, w)| w).collect();
        LayerGroup::in_parts(label, self.head, wheels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keep() {
        assert_eq!(normalize("Foo__Bar.baz"), "foo-bar-baz");
        assert!(keep_path(
            "/usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA"
        ));
        assert!(keep_path("/usr/lib/python3/dist-packages/foo-1.0.egg-info"));
        assert!(keep_path("/var/lib/dpkg/status"));
        assert!(keep_path("/usr/local/include/python3.12/patchlevel.h"));
        assert!(!keep_path("/usr/lib/python3.11/os.py"));
    }

    /// A valid pure-Python wheel of `name` 1.0 in the cache, pinned.
    fn cached_wheel(cache: &Cache, name: &str) -> PinnedWheel {
        use std::io::Write;
        let di = format!("{name}-1.0.dist-info");
        let mut members = vec![
            (format!("{name}/__init__.py"), format!("NAME = {name:?}\n")),
            (
                format!("{di}/METADATA"),
                format!("Name: {name}\nVersion: 1.0\n"),
            ),
            (
                format!("{di}/WHEEL"),
                "Wheel-Version: 1.0\nTag: py3-none-any\n".into(),
            ),
        ];
        let mut record: String = members
            .iter()
            .map(|(p, d)| format!("{p},{},{}\n", install::record_hash(d.as_bytes()), d.len()))
            .collect();
        record.push_str(&format!("{di}/RECORD,,\n"));
        members.push((format!("{di}/RECORD"), record));
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (p, d) in &members {
            z.start_file(p.as_str(), zip::write::SimpleFileOptions::default())
                .unwrap();
            z.write_all(d.as_bytes()).unwrap();
        }
        let bytes = z.finish().unwrap().into_inner();
        let filename = format!("{name}-1.0-py3-none-any.whl");
        PinnedWheel {
            name: name.into(),
            version: "1.0".into(),
            url: format!("file:///wheels/{filename}"),
            sha256: cache.put(&bytes).unwrap(),
            size: bytes.len() as u64,
            filename,
            requested: true,
            direct_url: None,
            sdist: None,
        }
    }

    /// The pages of every name come beside the base; so does the metadata
    /// of a pin whose version has one wheel (what resolving reads first,
    /// whatever the image), and nothing else: not for a version with
    /// wheels for several platforms, nor for a range.
    #[test]
    fn prefetch_takes_the_metadata_of_pins_with_one_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let simple = dir.path().join("simple");
        let wheel = cached_wheel(&cache, "one");
        let bytes = cache.read(&wheel.sha256).unwrap();
        let files = [
            (
                "one",
                vec!["one-1.0-py3-none-any.whl", "one-0.9-py3-none-any.whl"],
            ),
            (
                "multi",
                vec![
                    "multi-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                    "multi-1.0-cp312-cp312-manylinux_2_17_x86_64.whl",
                ],
            ),
            ("ranged", vec!["ranged-1.0-py3-none-any.whl"]),
        ];
        for (name, wheels) in &files {
            let d = simple.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut page = String::from("<html><body>\n");
            for w in wheels {
                std::fs::write(d.join(w), &bytes).unwrap();
                let h = Digest::of(&bytes).hex().to_string();
                page.push_str(&format!("<a href=\"{w}#sha256={h}\">{w}</a>\n"));
            }
            std::fs::write(d.join("index.html"), page).unwrap();
        }
        let section = PipSection {
            packages: vec!["one==1.0".into(), "multi==1.0".into(), "ranged>=1".into()],
            index: Some(format!("file://{}", simple.display())),
            isolated: true,
            ..Default::default()
        };
        let memo = |h: &str| cache.entry(kiln_store::CacheBucket::PipMetadata, h);
        let h = Digest::of(&bytes).hex().to_string();
        assert!(!memo(&h).exists());
        prefetch_pages(&section, dir.path(), &Http::new().unwrap(), &cache);
        // All the files share one content: the memo is one-1.0's alone.
        assert!(memo(&h).exists());
        std::fs::remove_file(memo(&h)).unwrap();
        let section = PipSection {
            packages: vec!["multi==1.0".into(), "ranged>=1".into(), "one".into()],
            ..section
        };
        prefetch_pages(&section, dir.path(), &Http::new().unwrap(), &cache);
        assert!(!memo(&h).exists());
    }

    /// A simple index under `simple`: each project's page lists its
    /// wheels (content `the wheel NAME`), each with PEP 658 metadata of
    /// its own (the pages' prefetch reads a lone wheel's, which would
    /// otherwise download it), with the `Requires-Dist` lines `requires`
    /// gives its project. Returns each wheel's digest by file name.
    pub(crate) fn write_simple_index(
        simple: &Path,
        projects: &[(&str, Vec<&str>)],
        requires: &[(&str, &[&str])],
    ) -> BTreeMap<String, Digest> {
        let mut digests = BTreeMap::new();
        for (name, wheels) in projects {
            let d = simple.join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut page = String::new();
            for w in wheels {
                let bytes = format!("the wheel {w}");
                let mut meta = format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n");
                for (_, lines) in requires.iter().filter(|(p, _)| p == name) {
                    for l in *lines {
                        meta += &format!("Requires-Dist: {l}\n");
                    }
                }
                std::fs::write(d.join(w), &bytes).unwrap();
                std::fs::write(d.join(format!("{w}.metadata")), &meta).unwrap();
                let (h, m) = (Digest::of(bytes.as_bytes()), Digest::of(meta.as_bytes()));
                page.push_str(&format!(
                    "<a href=\"{w}#sha256={}\" data-core-metadata=\"sha256={}\">{w}</a>\n",
                    h.hex(),
                    m.hex()
                ));
                digests.insert(w.to_string(), h);
            }
            std::fs::write(d.join("index.html"), page).unwrap();
        }
        digests
    }

    /// While the base is read, a build downloads a pin's only wheel when
    /// it is pure and every line naming it applies whatever the Python
    /// (the metadata of the others is fetched, not their wheels).
    #[test]
    fn prefetch_downloads_the_pure_wheels_pins_must_take() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let simple = dir.path().join("simple");
        let wheels = [
            ("pure", vec!["pure-1.0-py3-none-any.whl"]),
            (
                "plat",
                vec!["plat-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"],
            ),
            ("marked", vec!["marked-1.0-py3-none-any.whl"]),
            ("built", vec!["built-1.0-py3-none-any.whl"]),
            ("loose", vec!["loose-1.0-py3-none-any.whl"]),
            ("old", vec!["old-1.0-py2-none-any.whl"]),
            ("both", vec!["both-1.0-py2.py3-none-any.whl"]),
        ];
        let digests = write_simple_index(&simple, &wheels, &[]);
        std::fs::write(
            dir.path().join("requirements.txt"),
            "pure==1.0\nplat==1.0\nmarked==1.0 ; python_version < \"3\"\n\
             --no-binary built\nbuilt==1.0\nloose>=1\nold==1.0\nboth==1.0\n",
        )
        .unwrap();
        let section = PipSection {
            requirements: vec!["requirements.txt".into()],
            index: Some(format!("file://{}", simple.display())),
            isolated: true,
            ..Default::default()
        };
        prefetch_pages(&section, dir.path(), &Http::new().unwrap(), &cache);
        let held: Vec<_> = digests
            .iter()
            .filter(|(_, d)| cache.contains(d))
            .map(|(w, _)| w.as_str())
            .collect();
        assert_eq!(
            held,
            ["both-1.0-py2.py3-none-any.whl", "pure-1.0-py3-none-any.whl"]
        );
    }

    /// Every wheel of a small stage gets a layer of its own; in a large one,
    /// those above BIG_WHEEL do, at most MAX_BIG_WHEELS, the largest (ties
    /// by name), whatever the wheels' order.
    #[test]
    fn the_largest_wheels_get_layers_of_their_own() {
        let wheel = |name: String, size: u64| PinnedWheel {
            name,
            version: "1.0".into(),
            url: String::new(),
            sha256: Digest::of(b"w"),
            size,
            filename: String::new(),
            requested: false,
            direct_url: None,
            sdist: None,
        };
        let owning = |wheels: &[PinnedWheel]| -> Vec<String> {
            let mut names: Vec<String> = wheels
                .iter()
                .zip(own_layers(wheels))
                .filter(|(_, own)| *own)
                .map(|(w, _)| w.name.clone())
                .collect();
            names.sort();
            names
        };
        let small: Vec<PinnedWheel> = (0..OWN_LAYERS_UP_TO)
            .map(|i| wheel(format!("s{i:02}"), 1000))
            .collect();
        assert_eq!(owning(&small).len(), OWN_LAYERS_UP_TO);
        // One small wheel more: only the big ones.
        let mut large = small.clone();
        large.push(wheel("big".into(), BIG_WHEEL + 1));
        large.push(wheel("edge".into(), BIG_WHEEL));
        assert_eq!(owning(&large), ["big"]);
        // More big wheels than the cap: the largest, ties by name.
        let mut many = small.clone();
        for i in 0..MAX_BIG_WHEELS + 5 {
            let size = BIG_WHEEL + 1 + (i as u64 / 2);
            many.push(wheel(format!("b{i:02}"), size));
        }
        let own = owning(&many);
        assert_eq!(own.len(), MAX_BIG_WHEELS);
        // The smallest are b00..b03 (sizes +0, +0, +1, +1), then b04 and
        // b05 (+2): b04 comes first by name, so b05 goes with b00..b03.
        for gone in ["b00", "b01", "b02", "b03", "b05"] {
            assert!(!own.iter().any(|n| n == gone), "{gone}: {own:?}");
        }
        assert!(own.iter().any(|n| n == "b04"), "{own:?}");
        many.reverse();
        assert_eq!(owning(&many), own, "another order, other layers");
    }

    /// Beyond OWN_LAYERS_UP_TO wheels, small ones share layers by the hash
    /// of their names: one more wheel changes one shared layer only.
    #[test]
    fn small_wheels_of_a_large_set_share_layers_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("pkg{i:02}")).collect();
        let plan_of = plans_of(&cache);
        let layers = |groups: Vec<LayerGroup>| -> Vec<(String, Vec<String>)> {
            groups
                .into_iter()
                .map(|g| (g.label, g.entries.into_iter().map(|e| e.path).collect()))
                .collect()
        };
        let before = layers(layer_groups(&plan_of(&names), &cache).unwrap());
        let used: std::collections::BTreeSet<usize> =
            names.iter().map(|n| shared_layer(n)).collect();
        assert_eq!(before.len(), used.len());
        assert!(before.len() > 4, "40 names spread over the shared layers");
        for n in &names {
            let holding: Vec<&String> = before
                .iter()
                .filter(|(_, paths)| {
                    paths
                        .iter()
                        .any(|p| p.ends_with(&format!("/{n}/__init__.py")))
                })
                .map(|(label, _)| label)
                .collect();
            assert_eq!(holding.len(), 1, "{n}: {holding:?}");
            // Named in the label (which lists eight and counts the rest).
            assert!(
                holding[0].contains(&format!("{n}==1.0")) || holding[0].ends_with(" more"),
                "{holding:?}"
            );
        }
        // The same wheels in another order: the same layers' contents.
        let mut reversed = names.clone();
        reversed.reverse();
        let contents = |l: &[(String, Vec<String>)]| {
            let mut c: Vec<Vec<String>> = l.iter().map(|(_, p)| p.clone()).collect();
            c.iter_mut().for_each(|p| p.sort());
            c.sort();
            c
        };
        let again = layers(layer_groups(&plan_of(&reversed), &cache).unwrap());
        assert!(
            contents(&again) == contents(&before),
            "another order, other layers"
        );
        // One wheel more: only the layer its name hashes to changes.
        let mut more = names.clone();
        more.push("newcomer".into());
        let after = layers(layer_groups(&plan_of(&more), &cache).unwrap());
        let changed: Vec<&(String, Vec<String>)> =
            after.iter().filter(|l| !before.contains(l)).collect();
        assert_eq!(changed.len(), 1, "{changed:?}");
        assert!(changed[0]
            .1
            .iter()
            .any(|p| p.ends_with("/newcomer/__init__.py")));
    }

    /// A shared layer is cut into a part per wheel, after a first part of
    /// its directories (and the venv skeleton): each path once, a wheel's
    /// part the same whatever else shares the layer, in name order.
    #[test]
    fn shared_layers_are_cut_into_a_part_per_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let plan_of = plans_of(&cache);
        // The part of each wheel: its name (from the files' paths) → paths.
        let parts_of = |g: &LayerGroup| -> Vec<Vec<String>> {
            let mut starts = g.parts.clone();
            starts.push(g.entries.len());
            starts
                .windows(2)
                .map(|w| {
                    g.entries[w[0]..w[1]]
                        .iter()
                        .map(|e| e.path.clone())
                        .collect()
                })
                .collect()
        };
        let names: Vec<String> = (0..40).map(|i| format!("pkg{i:02}")).collect();
        let groups = layer_groups(&plan_of(&names), &cache).unwrap();
        let mut seen = 0;
        for g in &groups {
            let paths: std::collections::HashSet<&str> =
                g.entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(paths.len(), g.entries.len(), "{}: a path twice", g.label);
            let head = &g.entries[..g.parts[0]];
            assert!(head
                .iter()
                .all(|e| matches!(e.kind, kiln_fs::layer::EntryKind::Dir)));
            let wheels = parts_of(g);
            assert_eq!(wheels.len(), g.parts.len());
            let mut owners = Vec::new();
            for part in &wheels {
                let owner = part[0].split('/').find(|c| c.starts_with("pkg")).unwrap();
                let owner = owner.split('-').next().unwrap().to_string();
                assert!(
                    part.iter().all(|p| p.contains(&format!("/{owner}"))),
                    "{part:?}"
                );
                let mut sorted = part.clone();
                sorted.sort();
                assert_eq!(&sorted, part);
                owners.push(owner);
            }
            let mut by_name = owners.clone();
            by_name.sort();
            assert_eq!(owners, by_name);
            seen += owners.len();
        }
        assert_eq!(seen, names.len());
        // A wheel more, in the plan's first place: the other wheels' parts
        // are the same entries as before.
        let mut more = vec!["newcomer".to_string()];
        more.extend(names.iter().cloned());
        let after = layer_groups(&plan_of(&more), &cache).unwrap();
        let all =
            |gs: &[LayerGroup]| -> Vec<Vec<String>> { gs.iter().flat_map(&parts_of).collect() };
        let (before, after) = (all(&groups), all(&after));
        assert_eq!(after.len(), before.len() + 1);
        for part in &before {
            assert!(after.contains(part), "{part:?} changed");
        }
    }

    /// Plans of pure-Python wheels by name (each `1.0`, in the cache) for
    /// the system Python of [`python_rootfs`].
    fn plans_of(cache: &Cache) -> impl Fn(&[String]) -> PipPlan + '_ {
        let python =
            PythonTarget::detect(&python_rootfs(), &Platform::linux("amd64"), "system").unwrap();
        move |names| PipPlan {
            python: python.clone(),
            wheels: names.iter().map(|n| cached_wheel(cache, n)).collect(),
            already_installed: Vec::new(),
            resolution: Resolution::Resolved,
            kept: None,
            laid_out: Default::default(),
        }
    }

    fn python_rootfs() -> Rootfs {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/local/bin/python3.11", b"");
        fs.insert_file("/usr/local/lib/python3.11/os.py", b"");
        fs
    }

    fn plan_err(section: &PipSection, spec_dir: &Path) -> kiln_core::Error {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        plan(
            section,
            spec_dir,
            &python_rootfs(),
            &Platform::linux("amd64"),
            &Http::new().unwrap(),
            &cache,
        )
        .unwrap_err()
    }

    #[test]
    fn no_index_without_find_links() {
        let section = PipSection {
            packages: vec!["six".into()],
            no_index: true,
            isolated: true,
            ..Default::default()
        };
        let err = plan_err(&section, Path::new("."));
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::NoPackageSource { no_index: true })
        ));
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
    }

    /// Nothing names an index: the public one with `pypi-default`, else
    /// an error that says how to name one (and nothing is fetched).
    #[test]
    fn with_no_index_configured_the_default_is_the_features() {
        let section = PipSection {
            packages: vec!["six".into()],
            isolated: true,
            ..Default::default()
        };
        let s = sources(&section, Path::new("."), &spec::Inputs::default());
        assert!(!s.no_index && s.find_links.is_empty());
        if cfg!(feature = "pypi-default") {
            assert_eq!(s.indexes.len(), 1);
            assert!(s.indexes[0].starts_with("https://"), "{:?}", s.indexes);
        } else {
            assert!(s.indexes.is_empty());
            let err = plan_err(&section, Path::new("."));
            assert!(matches!(
                err.downcast_ref::<PipError>(),
                Some(PipError::NoPackageSource { no_index: false })
            ));
            assert!(
                err.to_string().contains("`pypi-default`")
                    && err.to_string().contains("PIP_INDEX_URL"),
                "{err}"
            );
            assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        }
    }

    #[test]
    fn hash_mismatch_names_both_hashes() {
        // A local PEP 503 index offering one wheel (with its metadata file).
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("simple/demo");
        std::fs::create_dir_all(&page).unwrap();
        let offered = "a".repeat(64);
        let allowed = "b".repeat(64);
        std::fs::write(
            page.join("index.html"),
            format!(
                "<a href=\"demo-1.0-py3-none-any.whl#sha256={offered}\" data-dist-info-metadata=\"true\">demo</a>"
            ),
        )
        .unwrap();
        std::fs::write(
            page.join("demo-1.0-py3-none-any.whl.metadata"),
            "Name: demo\nVersion: 1.0\n",
        )
        .unwrap();
        let section = PipSection {
            packages: vec![format!("demo==1.0 --hash=sha256:{allowed}")],
            index: Some("simple".into()),
            isolated: true,
            ..Default::default()
        };
        let err = plan_err(&section, dir.path());
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::HashMismatch { name, filename, actual, allowed: a })
                if name == "demo" && filename == "demo-1.0-py3-none-any.whl" && actual == &offered && a.len() == 1 && a[0] == allowed),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "[pip] hash mismatch for `demo`: demo-1.0-py3-none-any.whl has sha256:{offered}, \
                 the requirements allow only sha256:{allowed}; update the --hash values or pin the version they were made for"
            )
        );
    }

    #[test]
    fn layer_groups_needs_the_wheels_in_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let sha256 = Digest::of(b"a wheel");
        let plan = PipPlan {
            python: PythonTarget::detect(&python_rootfs(), &Platform::linux("amd64"), "system")
                .unwrap(),
            wheels: vec![PinnedWheel {
                name: "demo".into(),
                version: "1.0".into(),
                url: "file:///nowhere/demo-1.0-py3-none-any.whl".into(),
                sha256: sha256.clone(),
                size: 7,
                filename: "demo-1.0-py3-none-any.whl".into(),
                requested: true,
                direct_url: None,
                sdist: None,
            }],
            already_installed: Vec::new(),
            resolution: Resolution::Resolved,
            kept: None,
            laid_out: Default::default(),
        };
        let err = layer_groups(&plan, &cache).unwrap_err();
        assert_eq!(err.kind(), kiln_core::ErrorKind::Internal);
        assert!(matches!(
            err.downcast_ref::<PipError>(),
            Some(PipError::NotInCache { filename, sha256: d }) if filename == "demo-1.0-py3-none-any.whl" && d == &sha256
        ));
    }

    #[test]
    fn section_parses_strictly() {
        let s: PipSection =
            toml::from_str("packages = [\"six\"]\nfind-links = [\"wh\"]\ntarget = \"/opt/venv\"\n")
                .unwrap();
        assert_eq!(s.target, "/opt/venv");
        assert!(toml::from_str::<PipSection>("pakages = []").is_err());
        let d: PipSection = toml::from_str("").unwrap();
        assert_eq!(d.target, "system");
    }
}
