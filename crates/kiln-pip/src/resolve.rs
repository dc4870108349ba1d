//! PubGrub over index candidates: PEP 440 ranges, extras as virtual packages, markers for the target.
//!
//! Failures read like uv's: requirements that cannot be met on their own
//! (missing names or versions, wheels only for another Python or platform,
//! contradicting pins) are all reported before resolving
//! ([`Provider::root_problems`]); what only resolving finds is PubGrub's
//! derivation in words ([`Explain`]), naming Requires-Python and missing
//! wheels where they are the cause.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use pubgrub::{
    DefaultStringReporter, Dependencies, DependencyProvider, Derived, External, Map,
    PackageResolutionStatistics, PubGrubError, Ranges, ReportFormatter, Reporter, Term,
};
use rayon::prelude::*;
use uv_normalize::ExtraName;
use uv_pep440::{Version, VersionSpecifiers};
use uv_pep508::{MarkerEnvironment, Requirement, VersionOrUrl};

use kiln_core::error::{Error, Result};
use kiln_core::suggest::{self, Missing};

use crate::PipError;
use crate::RequirementProblem;

use super::index::{file_version, DistFile, IndexClient};
use super::metadata::CoreMetadata;
use super::sdist::{is_sdist, Builds, NoBinary};
use super::spec::Req;
use super::tags::{TagSet, WheelName};
use super::target::PythonTarget;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Pkg {
    Root,
    Dist(String),
    Extra(String, String),
}

impl fmt::Display for Pkg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pkg::Root => write!(f, "your requirements"),
            Pkg::Dist(n) => write!(f, "{n}"),
            Pkg::Extra(n, e) => write!(f, "{n}[{e}]"),
        }
    }
}

/// Versions of one project and the wheel kiln would pick for each.
pub(crate) struct Candidates {
    /// Every version seen (files of any kind, the installed one), ascending.
    versions: Vec<Version>,
    pub(crate) best: BTreeMap<Version, DistFile>,
    pub(crate) installed: Option<Version>,
    /// Versions whose wheels for the image all carry a `Requires-Python`
    /// the image's Python does not meet: that specifier.
    too_new: BTreeMap<Version, String>,
    /// File names of each version, for messages.
    files: BTreeMap<Version, Vec<String>>,
}

/// A root's specifier on a project, where it was written, and the versions it matches.
type RootPin = (String, Option<String>, Vec<Version>);

/// A resolved distribution.
pub(crate) struct Resolved {
    pub(crate) name: String,
    pub(crate) version: Version,
    pub(crate) file: Option<DistFile>,
    pub(crate) installed: bool,
}

pub(crate) struct Provider<'a> {
    client: &'a IndexClient<'a>,
    target: &'a PythonTarget,
    env: MarkerEnvironment,
    tags: TagSet,
    python: Version,
    roots: Vec<Req>,
    constraints: HashMap<String, Vec<VersionSpecifiers>>,
    direct: HashMap<String, (DistFile, String)>,
    prerelease: bool,
    /// Builds wheels of sdists and source trees; `None`: wheels only.
    builds: Option<&'a Builds<'a>>,
    no_binary: NoBinary,
    candidates: Mutex<HashMap<String, Arc<Candidates>>>,
    metadata: Mutex<HashMap<(String, Version), Arc<CoreMetadata>>>,
    /// The specifier each range was made from (`(name, range)` →
    /// `>=1.2`), so the derivation says what was written.
    labels: Mutex<HashMap<(String, Ranges<Version>), String>>,
}

/// pip's rule for pre-releases of a name: candidates when asked for
/// (`--pre`), when one of `specs` names one, or when `versions` has
/// nothing else.
pub(crate) fn prereleases_allowed<'a>(
    asked: bool,
    specs: impl IntoIterator<Item = &'a VersionSpecifiers>,
    versions: impl IntoIterator<Item = &'a Version>,
) -> bool {
    asked
        || specs
            .into_iter()
            .flat_map(|s| s.iter())
            .any(|s| s.version().any_prerelease())
        || versions.into_iter().all(Version::any_prerelease)
}

fn version(s: &str) -> Option<Version> {
    Version::from_str(s).ok()
}

/// A requirement's version specifiers (none for a URL or no version).
fn specifiers<T: uv_pep508::Pep508Url>(r: &Requirement<T>) -> Option<&VersionSpecifiers> {
    match &r.version_or_url {
        Some(VersionOrUrl::VersionSpecifier(s)) => Some(s),
        _ => None,
    }
}

impl<'a> Provider<'a> {
    pub(crate) fn new(
        client: &'a IndexClient<'a>,
        target: &'a PythonTarget,
        env: MarkerEnvironment,
        roots: Vec<Req>,
        constraints: &[Req],
        prerelease: bool,
        builds: Option<(&'a Builds<'a>, NoBinary)>,
    ) -> Result<Self> {
        let mut cons: HashMap<String, Vec<VersionSpecifiers>> = HashMap::new();
        for c in constraints {
            if !c.req.marker.evaluate(&env, &[]) {
                continue;
            }
            if let Some(VersionOrUrl::VersionSpecifier(s)) = &c.req.version_or_url {
                cons.entry(c.req.name.to_string())
                    .or_default()
                    .push(s.clone());
            }
        }
        let mut direct = HashMap::new();
        for r in &roots {
            if let Some(VersionOrUrl::Url(u)) = &r.req.version_or_url {
                let raw = u.raw().to_string();
                let git = raw.starts_with("git+");
                let (url, frag) = match raw.split_once('#') {
                    // A Git URL keeps its `#subdirectory=`.
                    _ if git => (raw.clone(), None),
                    Some((a, b)) => (a.to_string(), b.strip_prefix("sha256=").map(String::from)),
                    None => (raw.clone(), None),
                };
                let filename = url.rsplit('/').next().unwrap_or("").to_string();
                let filename = kiln_store::http::file_url_path(&format!("file:///{filename}"))
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or(filename);
                let local_dir = kiln_store::http::file_url_path(&url).is_some_and(|p| p.is_dir());
                if !filename.ends_with(".whl") {
                    if !local_dir && !git && !is_sdist(&filename) {
                        return Err(PipError::NotAWheel {
                            origin: r.origin.clone(),
                            url: crate::error::quote(&raw, r.owner),
                        }
                        .into());
                    }
                    let what = format!(
                        "{}: {}",
                        r.origin,
                        crate::error::quote(&r.req.to_string(), r.owner)
                            .map(|q| format!("`{q}`"))
                            .unwrap_or_else(|| r.req.name.to_string())
                    );
                    match &builds {
                        // Before anything is fetched.
                        Some((b, _)) => b.check_host(&what)?,
                        None => {
                            return Err(PipError::NotAWheel {
                                origin: r.origin.clone(),
                                url: crate::error::quote(&raw, r.owner),
                            }
                            .into())
                        }
                    }
                }
                let sha = frag.or_else(|| (r.hashes.len() == 1).then(|| r.hashes[0].clone()));
                let file = DistFile {
                    filename,
                    url: url.clone(),
                    sha256: sha,
                    requires_python: None,
                    yanked: false,
                    core_metadata: None,
                    size: None,
                };
                direct.insert(r.req.name.to_string(), (file, url));
            }
        }
        Ok(Provider {
            client,
            target,
            env,
            tags: target.tags(),
            python: version(&target.full_version)
                .unwrap_or_else(|| Version::new([3, target.minor as u64])),
            roots,
            constraints: cons,
            direct,
            prerelease,
            no_binary: builds.as_ref().map(|(_, n)| n.clone()).unwrap_or_default(),
            builds: builds.map(|(b, _)| b),
            candidates: Mutex::new(HashMap::new()),
            metadata: Mutex::new(HashMap::new()),
            labels: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a root names a URL or path (its file is not from a page).
    pub(crate) fn has_direct(&self) -> bool {
        !self.direct.is_empty()
    }

    pub(crate) fn direct_url(&self, name: &str) -> Option<&str> {
        self.direct.get(name).map(|(_, u)| u.as_str())
    }

    /// `CPython 3.11.2 on x86_64 (glibc 2.36)`, for messages.
    pub(crate) fn target_description(&self) -> String {
        format!(
            "CPython {} on {} ({})",
            self.target.full_version, self.target.machine, self.target.libc
        )
    }

    pub(crate) fn tags_summary(&self) -> String {
        self.tags.summary()
    }

    pub(crate) fn candidates(&self, name: &str) -> Result<Arc<Candidates>> {
        if let Some(c) = self.candidates.lock().unwrap().get(name) {
            return Ok(c.clone());
        }
        let installed = if self.direct.contains_key(name) {
            None
        } else {
            self.target
                .installed
                .get(name)
                .and_then(|(v, _)| version(v))
        };
        // The index's list is shared (read, not copied: a large project's
        // page lists thousands of files); only the chosen ones are cloned.
        let files: Arc<Vec<DistFile>> = match self.direct.get(name) {
            Some((f, _)) => Arc::new(vec![f.clone()]),
            None => match self.client.files(name)? {
                Some(f) => f,
                None if installed.is_some() => Arc::default(),
                None => {
                    return Err(PipError::PackageNotFound {
                        name: name.to_string(),
                        sources: self.sources(),
                    }
                    .into());
                }
            },
        };
        let mut versions: Vec<Version> = installed.iter().cloned().collect();
        let mut best: BTreeMap<Version, (usize, DistFile)> = BTreeMap::new();
        // sdists, used for versions without a fitting wheel (or all, `--no-binary`).
        let mut sdists: BTreeMap<Version, DistFile> = BTreeMap::new();
        // For another architecture nothing is built: an sdist is no
        // candidate (an older wheel is chosen, or the missing wheel named),
        // and `--no-binary` is refused before anything is fetched.
        let buildable = self.builds.filter(|b| b.check_host("").is_ok());
        let no_binary = self.builds.is_some() && self.no_binary.applies(name);
        if let (true, Some(b), None) = (no_binary, self.builds, buildable) {
            b.check_host(&format!("{name} (`--no-binary`)"))?;
        }
        if let (Some(b), Some((f, _))) = (self.builds, self.direct.get(name)) {
            if !f.is_wheel() {
                // A direct sdist or directory: its version is the built wheel's.
                let built = b.build(name, f)?;
                if let Some(v) = built.version().and_then(|v| version(&v)) {
                    versions.push(v.clone());
                    sdists.insert(v, f.clone());
                }
            }
        }
        let mut too_new: BTreeMap<Version, String> = BTreeMap::new();
        let mut names: BTreeMap<Version, Vec<String>> = BTreeMap::new();
        for f in files.iter() {
            if f.yanked {
                continue;
            }
            let Some(v) = file_version(&f.filename).and_then(|v| version(&v)) else {
                continue;
            };
            versions.push(v.clone());
            names.entry(v.clone()).or_default().push(f.filename.clone());
            if !f.is_wheel() {
                if buildable.is_some() && is_sdist(&f.filename) {
                    if let Some(rp) = f.excluding(&self.python) {
                        too_new.entry(v).or_insert_with(|| rp.trim().to_string());
                    } else {
                        // `.tar.gz` before `.zip` when a version has both.
                        match sdists.get(&v) {
                            Some(o) if o.filename.ends_with(".tar.gz") => {}
                            _ => {
                                sdists.insert(v, f.clone());
                            }
                        }
                    }
                }
                continue;
            }
            if no_binary {
                continue;
            }
            let Some(rank) = WheelName::parse(&f.filename)
                .ok()
                .and_then(|w| self.tags.rank(&w))
            else {
                continue;
            };
            if let Some(rp) = f.excluding(&self.python) {
                too_new.entry(v).or_insert_with(|| rp.trim().to_string());
                continue;
            }
            match best.get(&v) {
                Some((r, _)) if *r <= rank => {}
                _ => {
                    best.insert(v, (rank, f.clone()));
                }
            }
        }
        for (v, f) in sdists {
            best.entry(v).or_insert((usize::MAX, f));
        }
        too_new.retain(|v, _| !best.contains_key(v));
        versions.sort();
        versions.dedup();
        for n in names.values_mut() {
            n.sort();
            n.dedup();
        }
        let c = Arc::new(Candidates {
            versions,
            best: best.into_iter().map(|(v, (_, f))| (v, f)).collect(),
            installed,
            too_new,
            files: names,
        });
        self.candidates
            .lock()
            .unwrap()
            .insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Every root requirement (for this target's markers) that cannot be met
    /// on its own, all at once: projects no source has (with close names
    /// from `names`, asked only then), versions that do not exist, matching
    /// versions whose wheels need another Python or are not for this image,
    /// and pins on one project that contradict each other.
    pub(crate) fn root_problems(
        &self,
        names: &dyn Fn() -> Vec<String>,
    ) -> Result<Vec<RequirementProblem>> {
        let roots: Vec<&Req> = self
            .roots
            .iter()
            .filter(|r| {
                r.req.marker.evaluate(&self.env, &[])
                    && !self.direct.contains_key(r.req.name.as_ref())
            })
            .collect();
        // Fetched in parallel: the resolver reads these pages first anyway,
        // and then the metadata of the version it will likely take.
        let looked: Vec<Result<Option<Arc<Candidates>>>> =
            kiln_store::http::on_network_pool(|| {
                roots
                    .par_iter()
                    .map(|r| match self.candidates(r.req.name.as_ref()) {
                        Ok(c) => {
                            let spec = specifiers(&r.req);
                            if let Some(v) = self.likely(r.req.name.as_ref(), &c, spec) {
                                let _ = self.metadata_of(r.req.name.as_ref(), &v);
                            }
                            Ok(Some(c))
                        }
                        Err(e)
                            if matches!(
                                e.downcast_ref::<PipError>(),
                                Some(PipError::PackageNotFound { .. })
                            ) =>
                        {
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    })
                    .collect()
            });
        let mut known: Option<Vec<String>> = None;
        let mut out = Vec::new();
        // name → (specifier, where, versions it matches) of each root on it.
        let mut pins: BTreeMap<String, Vec<RootPin>> = BTreeMap::new();
        for (r, c) in roots.iter().zip(looked) {
            let name = r.req.name.to_string();
            let quoted = crate::error::quote(&r.req.to_string(), r.owner);
            let request = quoted.clone().unwrap_or(name.clone());
            let at = (r.origin != "[pip] packages").then(|| r.origin.clone());
            let Some(c) = c? else {
                let known = known.get_or_insert_with(names);
                let close = suggest::close_names(&name, known.iter().map(String::as_str));
                out.push(RequirementProblem::Missing(
                    Missing::name(&request, close).at(at.as_deref()),
                ));
                continue;
            };
            let spec = specifiers(&r.req);
            if c.versions.is_empty() {
                continue;
            }
            if let Some(s) = spec {
                if !c.versions.iter().any(|v| s.contains(v)) {
                    out.push(missing_version(&c, s, &name, &request, quoted, at));
                    continue;
                }
            }
            let matching = self.matching(&name, &c, spec);
            if let Some(s) = spec {
                pins.entry(name.clone()).or_default().push((
                    s.to_string(),
                    at.clone(),
                    matching.clone(),
                ));
            }
            if matching.is_empty() || matching.iter().any(|v| Self::selectable(&c, v)) {
                continue;
            }
            let newest = matching.last().expect("not empty").clone();
            let too_new = matching
                .iter()
                .rev()
                .find_map(|v| c.too_new.get_key_value(v));
            out.push(match too_new {
                Some((v, rp)) => RequirementProblem::RequiresPython {
                    at,
                    name: name.clone(),
                    version: v.to_string(),
                    requires_python: rp.clone(),
                    python: self.target.full_version.clone(),
                    newest: self.newest_usable(&c),
                },
                None => RequirementProblem::NoWheel {
                    request: quoted,
                    at,
                    name: name.clone(),
                    files: c.files.get(&newest).cloned().unwrap_or_default(),
                    version: newest.to_string(),
                },
            });
        }
        for (name, specs) in pins {
            if specs.len() < 2 || specs.iter().any(|(_, _, m)| m.is_empty()) {
                continue;
            }
            let both = specs[0]
                .2
                .iter()
                .any(|v| specs[1..].iter().all(|(_, _, m)| m.contains(v)));
            if !both {
                out.push(RequirementProblem::Conflict {
                    name,
                    requests: specs.into_iter().map(|(s, a, _)| (s, a)).collect(),
                });
            }
        }
        Ok(out)
    }

    /// [`Provider::root_problems`] as an error: [`PipError::UnknownPackages`]
    /// when every problem is a missing name or version, else
    /// [`PipError::CannotInstall`].
    pub(crate) fn check_roots(&self, names: &dyn Fn() -> Vec<String>) -> Result<()> {
        let problems = self.root_problems(names)?;
        if problems.is_empty() {
            return Ok(());
        }
        if problems
            .iter()
            .all(|p| matches!(p, RequirementProblem::Missing(_)))
        {
            let missing = problems
                .into_iter()
                .filter_map(|p| match p {
                    RequirementProblem::Missing(m) => Some(m),
                    _ => None,
                })
                .collect();
            return Err(PipError::UnknownPackages {
                missing,
                sources: self.sources(),
            }
            .into());
        }
        Err(PipError::CannotInstall {
            problems,
            target: self.target_description(),
            tags: self.tags_summary(),
            sources: self.sources(),
        }
        .into())
    }

    /// The newest version with a wheel for the image and its Python (a
    /// final release when there is one), for hints.
    fn newest_usable(&self, c: &Candidates) -> Option<String> {
        let usable = || c.best.keys().rev();
        usable()
            .find(|v| !v.any_prerelease())
            .or_else(|| usable().next())
            .map(|v| v.to_string())
    }

    /// Indexes then find-links locations, redacted, for messages.
    pub(crate) fn sources(&self) -> Vec<String> {
        self.client
            .indexes
            .iter()
            .chain(&self.client.find_links)
            .map(|u| kiln_store::http::redact(u))
            .collect()
    }

    fn selectable(c: &Candidates, v: &Version) -> bool {
        c.best.contains_key(v) || c.installed.as_ref() == Some(v)
    }

    /// Known versions of `name` that `spec`, the constraints and the
    /// pre-release rule allow, ascending.
    fn matching(
        &self,
        name: &str,
        c: &Candidates,
        spec: Option<&VersionSpecifiers>,
    ) -> Vec<Version> {
        let allow_pre = prereleases_allowed(self.prerelease, spec, &c.versions);
        let cons = self.constraints.get(name);
        c.versions
            .iter()
            .filter(|v| {
                (allow_pre || !v.any_prerelease())
                    && spec.is_none_or(|s| s.contains(v))
                    && cons.is_none_or(|cs| cs.iter().all(|s| s.contains(v)))
            })
            .cloned()
            .collect()
    }

    /// The version the resolver most likely takes for `name` under `spec`:
    /// the newest one allowed with a wheel for the image (what it tries
    /// first), so its metadata can be fetched beside the others' (a
    /// freeze's pins, each then a network round trip less on the way).
    fn likely(
        &self,
        name: &str,
        c: &Candidates,
        spec: Option<&VersionSpecifiers>,
    ) -> Option<Version> {
        self.matching(name, c, spec)
            .into_iter()
            .rev()
            .find(|v| c.best.get(v).is_some_and(|f| f.is_wheel()))
    }

    /// Versions of `name` allowed by `spec` (and the constraints), as
    /// PubGrub ranges over the versions that exist. Versions without a
    /// usable wheel stay in: the resolver finds it has none for them, and
    /// the derivation says why.
    fn range(&self, name: &str, spec: Option<&VersionSpecifiers>) -> Result<Ranges<Version>> {
        let c = self.candidates(name)?;
        let ok = self.matching(name, &c, spec);
        let mut r = Ranges::empty();
        let mut run: Option<(Version, Version)> = None;
        for v in &c.versions {
            if ok.binary_search(v).is_ok() {
                run = Some(match run {
                    Some((a, _)) => (a, v.clone()),
                    None => (v.clone(), v.clone()),
                });
            } else if let Some((a, b)) = run.take() {
                r = r.union(&Ranges::from_range_bounds((
                    Bound::Included(a),
                    Bound::Included(b),
                )));
            }
        }
        if let Some((a, b)) = run {
            r = r.union(&Ranges::from_range_bounds((
                Bound::Included(a),
                Bound::Included(b),
            )));
        }
        self.labels
            .lock()
            .unwrap()
            .entry((name.to_string(), r.clone()))
            .or_insert_with(|| spec.map(|s| s.to_string()).unwrap_or_default());
        Ok(r)
    }

    fn metadata_of(&self, name: &str, v: &Version) -> Result<Arc<CoreMetadata>> {
        let key = (name.to_string(), v.clone());
        if let Some(m) = self.metadata.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let c = self.candidates(name)?;
        let m = if c.installed.as_ref() == Some(v) {
            match self.target.installed.get(name).and_then(|(_, m)| m.clone()) {
                Some(m) => m,
                None => CoreMetadata {
                    name: name.into(),
                    version: v.to_string(),
                    ..Default::default()
                },
            }
        } else {
            let f = c.best.get(v).ok_or_else(|| PipError::NoFile {
                name: name.to_string(),
                version: v.to_string(),
                resolved: false,
            })?;
            match self.builds.filter(|_| !f.is_wheel()) {
                Some(b) => {
                    let built = b.build(name, f)?;
                    let path = b.cache.blob_path(&built.sha256);
                    let bytes = super::wheel::read_metadata_file(&path, &built.filename)?;
                    CoreMetadata::parse(&bytes)
                        .map_err(|e| e.context(format!("metadata of {}", built.filename)))?
                }
                None => self
                    .client
                    .metadata(f)
                    .map_err(|e| e.context(format!("[pip] {name} {v}")))?,
            }
        };
        let m = Arc::new(m);
        self.metadata.lock().unwrap().insert(key, m.clone());
        Ok(m)
    }

    /// Requirements that apply with `extras` active, parsed.
    fn applicable(
        &self,
        reqs: &[String],
        extras: &[ExtraName],
        who: &str,
    ) -> Result<Vec<Requirement>> {
        let mut out = Vec::new();
        for r in reqs {
            // The parser's message repeats the whole input under it: only the message.
            let req = Requirement::from_str(r).map_err(|e| PipError::InvalidRequiresDist {
                dist: who.to_string(),
                requirement: crate::error::cut(r),
                detail: crate::error::cut(&e.message.to_string()),
            })?;
            if req.marker.evaluate(&self.env, extras) {
                out.push(req);
            }
        }
        Ok(out)
    }

    fn deps_for(
        &self,
        reqs: Vec<Requirement>,
        self_name: Option<&str>,
    ) -> Result<Dependencies<Pkg, Ranges<Version>, String>> {
        // Fetch the pages (and the likely candidate's metadata) of all
        // dependencies in parallel. Not an sdist's: building is for when
        // it is chosen.
        kiln_store::http::on_network_pool(|| {
            reqs.par_iter().for_each(|r| {
                let n = r.name.as_ref();
                if let Ok(c) = self.candidates(n) {
                    let spec = specifiers(r);
                    if let Some(v) = self.likely(n, &c, spec) {
                        let _ = self.metadata_of(n, &v);
                    }
                }
            })
        });
        let mut out: BTreeMap<Pkg, Ranges<Version>> = BTreeMap::new();
        // Specifiers per package, to name an intersection of several.
        let mut specs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in reqs {
            let name = r.name.to_string();
            if Some(name.as_str()) == self_name && r.extras.is_empty() {
                continue;
            }
            let spec = specifiers(&r);
            let range = self.range(&name, spec)?;
            specs
                .entry(name.clone())
                .or_default()
                .push(spec.map(|s| s.to_string()).unwrap_or_default());
            let mut add = |p: Pkg, rg: &Ranges<Version>| {
                let e = out.entry(p).or_insert_with(Ranges::full);
                *e = e.intersection(rg);
            };
            add(Pkg::Dist(name.clone()), &range);
            for x in r.extras.iter() {
                add(Pkg::Extra(name.clone(), x.to_string()), &range);
            }
        }
        for (p, r) in &out {
            if let Pkg::Dist(n) = p {
                let written: Vec<&String> = specs[n].iter().filter(|s| !s.is_empty()).collect();
                if written.len() > 1 {
                    let label = written
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ");
                    self.labels
                        .lock()
                        .unwrap()
                        .entry((n.clone(), r.clone()))
                        .or_insert(label);
                }
            }
        }
        Ok(Dependencies::Available(out.into_iter().collect()))
    }

    /// Why `name` has no usable version in `range`, in words: none exists,
    /// they need another Python, or they have no wheel for the image.
    fn why_no_versions(&self, name: &str, range: &Ranges<Version>) -> String {
        let what = self.term(&Pkg::Dist(name.to_string()), range);
        let Ok(c) = self.candidates(name) else {
            return format!("there is no version of {what}");
        };
        let in_range: Vec<&Version> = c.versions.iter().filter(|v| range.contains(v)).collect();
        let Some(newest) = in_range.last() else {
            let all: Vec<String> = c.versions.iter().rev().map(|v| v.to_string()).collect();
            return if all.is_empty() {
                format!("there is no version of {what}")
            } else {
                format!(
                    "there is no version of {what} ({name} has {})",
                    suggest::version_list(&all)
                )
            };
        };
        if let Some((v, rp)) = in_range
            .iter()
            .rev()
            .find_map(|v| c.too_new.get_key_value(v))
        {
            let newest = match self.newest_usable(&c) {
                Some(n) => format!("the newest {name} that supports it is {n}"),
                None => format!("no version of {name} supports it"),
            };
            return format!(
                "{name}=={v} requires Python {rp} (the image has Python {}; {newest})",
                self.target.full_version
            );
        }
        let files = c.files.get(*newest).cloned().unwrap_or_default();
        format!(
            "{what} has no wheel for this image ({name} {newest} has only {}{})",
            if files.is_empty() {
                "no files".to_string()
            } else {
                files.join(", ")
            },
            if files.iter().any(|f| !f.ends_with(".whl")) {
                ", and an sdist is built only by `kiln build` for the host's architecture"
            } else {
                ""
            }
        )
    }

    /// A package at a version when the range is one (`app==1.0`), else [`Provider::term`].
    fn at_version(&self, p: &Pkg, r: &Ranges<Version>) -> String {
        match (p, r.as_singleton()) {
            (Pkg::Dist(_) | Pkg::Extra(..), Some(v)) => format!("{p}=={v}"),
            _ => self.term(p, r),
        }
    }

    /// A package and a range as people write them: `pyyaml==6.0.1`,
    /// `helper>=1` (the specifier it came from), `your requirements`.
    fn term(&self, p: &Pkg, r: &Ranges<Version>) -> String {
        let name = match p {
            Pkg::Root => return "your requirements".to_string(),
            Pkg::Dist(n) => n,
            Pkg::Extra(n, _) => n,
        };
        if r == &Ranges::full() {
            return p.to_string();
        }
        if let Some(label) = self.labels.lock().unwrap().get(&(name.clone(), r.clone())) {
            return format!("{p}{label}");
        }
        if let Some(v) = r.as_singleton() {
            return format!("{p}=={v}");
        }
        if r.is_empty() {
            return format!("{p} (no version)");
        }
        let segments: Vec<String> = r
            .iter()
            .map(|(lo, hi)| match (lo, hi) {
                (Bound::Included(a), Bound::Included(b)) if a == b => format!("=={a}"),
                _ => {
                    let lo = match lo {
                        Bound::Included(a) => Some(format!(">={a}")),
                        Bound::Excluded(a) => Some(format!(">{a}")),
                        Bound::Unbounded => None,
                    };
                    let hi = match hi {
                        Bound::Included(b) => Some(format!("<={b}")),
                        Bound::Excluded(b) => Some(format!("<{b}")),
                        Bound::Unbounded => None,
                    };
                    lo.into_iter().chain(hi).collect::<Vec<_>>().join(", ")
                }
            })
            .collect();
        format!("{p}{}", segments.join(" or "))
    }
}

/// PubGrub's derivation in words: the root is "your requirements", ranges
/// are the specifiers they came from, and a package without a usable
/// version says why (Requires-Python, no wheel for the image).
struct Explain<'p, 'a> {
    provider: &'p Provider<'a>,
}

type Ext = External<Pkg, Ranges<Version>, String>;
type Der = Derived<Pkg, Ranges<Version>, String>;
type Terms = Map<Pkg, Term<Ranges<Version>>>;

impl ReportFormatter<Pkg, Ranges<Version>, String> for Explain<'_, '_> {
    type Output = String;

    fn format_external(&self, external: &Ext) -> String {
        let p = self.provider;
        match external {
            External::NotRoot(..) => "your requirements are what is resolved".to_string(),
            External::NoVersions(Pkg::Root, _) => "your requirements cannot be read".to_string(),
            External::NoVersions(Pkg::Dist(n) | Pkg::Extra(n, _), r) => p.why_no_versions(n, r),
            External::FromDependencyOf(from, rf, dep, rd) => {
                let mut s = match from {
                    Pkg::Root => format!("you require {}", p.term(dep, rd)),
                    _ => format!("{} depends on {}", p.at_version(from, rf), p.term(dep, rd)),
                };
                if rd.is_empty() {
                    if let Pkg::Dist(n) | Pkg::Extra(n, _) = dep {
                        if let Ok(c) = p.candidates(n) {
                            let all: Vec<String> =
                                c.versions.iter().rev().map(|v| v.to_string()).collect();
                            s.push_str(&format!(
                                ", which no version of {n} meets ({n} has {})",
                                suggest::version_list(&all)
                            ));
                        }
                    }
                }
                s
            }
            External::Custom(pkg, r, why) => format!("{} {why}", p.at_version(pkg, r)),
        }
    }

    fn format_terms(&self, terms: &Terms) -> String {
        let p = self.provider;
        let list: Vec<_> = terms.iter().collect();
        match list.as_slice() {
            [] => "your requirements cannot be satisfied".into(),
            [(Pkg::Root, Term::Positive(_))] => "your requirements cannot be satisfied".into(),
            [(pkg, Term::Positive(r))] => format!("{} cannot be used", p.at_version(pkg, r)),
            [(pkg, Term::Negative(r))] => format!("{} is required", p.term(pkg, r)),
            [(p1, Term::Positive(r1)), (p2, Term::Negative(r2))]
            | [(p2, Term::Negative(r2)), (p1, Term::Positive(r1))] => self.format_external(
                &External::FromDependencyOf((*p1).clone(), r1.clone(), (*p2).clone(), r2.clone()),
            ),
            many => {
                let parts: Vec<String> = many
                    .iter()
                    .map(|(pkg, t)| match t {
                        Term::Positive(r) => p.term(pkg, r),
                        Term::Negative(r) => format!("not {}", p.term(pkg, r)),
                    })
                    .collect();
                format!("{} cannot be used together", parts.join(", "))
            }
        }
    }

    fn explain_both_external(&self, e1: &Ext, e2: &Ext, current: &Terms) -> String {
        format!(
            "Because {} and {}, {}.",
            self.format_external(e1),
            self.format_external(e2),
            self.format_terms(current)
        )
    }

    fn explain_both_ref(
        &self,
        id1: usize,
        d1: &Der,
        id2: usize,
        d2: &Der,
        current: &Terms,
    ) -> String {
        format!(
            "Because {} ({id1}) and {} ({id2}), {}.",
            self.format_terms(&d1.terms),
            self.format_terms(&d2.terms),
            self.format_terms(current)
        )
    }

    fn explain_ref_and_external(&self, id: usize, d: &Der, e: &Ext, current: &Terms) -> String {
        format!(
            "Because {} ({id}) and {}, {}.",
            self.format_terms(&d.terms),
            self.format_external(e),
            self.format_terms(current)
        )
    }

    fn and_explain_external(&self, e: &Ext, current: &Terms) -> String {
        format!(
            "And because {}, {}.",
            self.format_external(e),
            self.format_terms(current)
        )
    }

    fn and_explain_ref(&self, id: usize, d: &Der, current: &Terms) -> String {
        format!(
            "And because {} ({id}), {}.",
            self.format_terms(&d.terms),
            self.format_terms(current)
        )
    }

    fn and_explain_prior_and_external(&self, prior: &Ext, e: &Ext, current: &Terms) -> String {
        format!(
            "And because {} and {}, {}.",
            self.format_external(prior),
            self.format_external(e),
            self.format_terms(current)
        )
    }
}

/// A root version specifier that matches no version: the versions there
/// are, or, for a local version (`+cpu`) whose public version exists, where
/// local versions come from.
fn missing_version(
    c: &Candidates,
    spec: &VersionSpecifiers,
    name: &str,
    request: &str,
    quoted: Option<String>,
    at: Option<String>,
) -> RequirementProblem {
    for s in spec.iter() {
        let v = s.version();
        if v.local().is_empty() {
            continue;
        }
        let public = v.clone().without_local();
        if c.versions.contains(&public) {
            let local = v.to_string();
            let local = local.split_once('+').map(|x| x.1).unwrap_or("").to_string();
            return RequirementProblem::LocalVersion {
                request: quoted,
                at,
                name: name.to_string(),
                public: public.to_string(),
                local,
            };
        }
    }
    let versions = c.versions.iter().rev().map(|v| v.to_string()).collect();
    RequirementProblem::Missing(Missing::version(request, name, versions).at(at.as_deref()))
}

impl DependencyProvider for Provider<'_> {
    type P = Pkg;
    type V = Version;
    type VS = Ranges<Version>;
    type M = String;
    type Priority = (u32, Reverse<usize>);
    type Err = Error;

    fn prioritize(
        &self,
        package: &Pkg,
        _range: &Ranges<Version>,
        stats: &PackageResolutionStatistics,
    ) -> Self::Priority {
        let n = match package {
            Pkg::Root => 0,
            Pkg::Dist(n) | Pkg::Extra(n, _) => self
                .candidates
                .lock()
                .unwrap()
                .get(n)
                .map(|c| c.best.len())
                .unwrap_or(usize::MAX),
        };
        (stats.conflict_count(), Reverse(n))
    }

    fn choose_version(&self, package: &Pkg, range: &Ranges<Version>) -> Result<Option<Version>> {
        match package {
            Pkg::Root => Ok(Some(Version::new([0]))),
            Pkg::Dist(n) | Pkg::Extra(n, _) => {
                let c = self.candidates(n)?;
                if let Some(i) = &c.installed {
                    if range.contains(i) {
                        return Ok(Some(i.clone()));
                    }
                }
                Ok(c.best.keys().rev().find(|v| range.contains(*v)).cloned())
            }
        }
    }

    fn get_dependencies(
        &self,
        package: &Pkg,
        v: &Version,
    ) -> Result<Dependencies<Pkg, Ranges<Version>, String>> {
        match package {
            Pkg::Root => {
                let reqs = self
                    .roots
                    .iter()
                    .filter(|r| r.req.marker.evaluate(&self.env, &[]))
                    .map(|r| r.req.clone())
                    .collect();
                self.deps_for(reqs, None)
            }
            Pkg::Dist(n) => {
                let m = self.metadata_of(n, v)?;
                // The index may not say (find-links, old pages): METADATA
                // does. What the image has installed stays usable, as in pip.
                let installed = self.candidates(n)?.installed.as_ref() == Some(v);
                if let Some(rp) = m.requires_python.as_ref().filter(|_| !installed) {
                    if let Ok(spec) = VersionSpecifiers::from_str(rp) {
                        if !spec.contains(&self.python) {
                            return Ok(Dependencies::Unavailable(format!(
                                "requires Python {} (the image has Python {})",
                                rp.trim(),
                                self.target.full_version
                            )));
                        }
                    }
                }
                let reqs = self.applicable(&m.requires_dist, &[], &format!("{n} {v}"))?;
                self.deps_for(reqs, Some(n))
            }
            Pkg::Extra(n, e) => {
                let m = self.metadata_of(n, v)?;
                let extra = ExtraName::from_str(e).map_err(|err| PipError::InvalidExtra {
                    name: n.clone(),
                    extra: e.clone(),
                    detail: err.to_string(),
                })?;
                // An extra the project does not provide adds nothing (pip warns and carries on).
                let reqs = self.applicable(
                    &m.requires_dist,
                    std::slice::from_ref(&extra),
                    &format!("{n} {v}"),
                )?;
                let Dependencies::Available(deps) = self.deps_for(reqs, Some(n))? else {
                    unreachable!()
                };
                let mut all: Vec<(Pkg, Ranges<Version>)> = deps.iter().cloned().collect();
                all.push((Pkg::Dist(n.clone()), Ranges::singleton(v.clone())));
                Ok(Dependencies::Available(all.into_iter().collect()))
            }
        }
    }
}

/// Run the resolver; the result is sorted by name.
pub(crate) fn resolve(provider: &Provider) -> Result<Vec<Resolved>> {
    let sol = match pubgrub::resolve(provider, Pkg::Root, Version::new([0])) {
        Ok(s) => s,
        Err(PubGrubError::NoSolution(tree)) => {
            let explanation =
                DefaultStringReporter::report_with_formatter(&tree, &Explain { provider });
            return Err(PipError::Unsatisfiable {
                target: provider.target_description(),
                explanation,
            }
            .into());
        }
        Err(PubGrubError::ErrorRetrievingDependencies { source, .. }) => return Err(source),
        Err(PubGrubError::ErrorChoosingVersion { source, .. }) => return Err(source),
        Err(PubGrubError::ErrorInShouldCancel(e)) => return Err(e),
    };
    let mut out = Vec::new();
    for (p, v) in sol.iter() {
        if let Pkg::Dist(n) = p {
            let c = provider.candidates(n)?;
            let installed = c.installed.as_ref() == Some(v);
            out.push(Resolved {
                name: n.clone(),
                version: v.clone(),
                file: if installed {
                    None
                } else {
                    c.best.get(v).cloned()
                },
                installed,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::platform::Platform;
    use kiln_fs::rootfs::Rootfs;
    use kiln_store::cache::Cache;
    use kiln_store::http::Http;

    use std::path::Path;

    use crate::error::Owner;
    use crate::spec::{file_url, parse_requirement};

    fn target() -> PythonTarget {
        let mut fs = Rootfs::default();
        fs.insert_file("/usr/local/bin/python3.11", b"");
        fs.insert_file("/usr/local/lib/python3.11/os.py", b"");
        PythonTarget::detect(&fs, &Platform::linux("amd64"), "system").unwrap()
    }

    /// Resolve `roots` against a find-links directory holding `files` (empty files).
    fn resolve_with(files: &[&str], roots: &[&str]) -> kiln_core::Error {
        resolve_owned(files, roots, Owner::Spec)
    }

    /// [`resolve_with`], the roots written by `owner`.
    /// `f` with a client of a find-links directory holding `files`
    /// (empty files), the directory it is in, and the target's markers.
    fn with_wheelhouse<T>(
        files: &[&str],
        f: impl FnOnce(&Path, &IndexClient, &PythonTarget, MarkerEnvironment) -> T,
    ) -> T {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wheelhouse");
        std::fs::create_dir(&wh).unwrap();
        for f in files {
            std::fs::write(wh.join(f), b"").unwrap();
        }
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let client = IndexClient::new(&http, &cache, Vec::new(), vec![file_url(&wh)]);
        let t = target();
        let env = crate::markers::environment(&t).unwrap();
        f(dir.path(), &client, &t, env)
    }

    fn resolve_owned(files: &[&str], roots: &[&str], owner: Owner) -> kiln_core::Error {
        with_wheelhouse(files, |dir, client, t, env| {
            resolve_roots(dir, client, t, env, roots, owner)
        })
    }

    fn resolve_roots(
        dir: &Path,
        client: &IndexClient,
        t: &PythonTarget,
        env: MarkerEnvironment,
        roots: &[&str],
        owner: Owner,
    ) -> kiln_core::Error {
        let roots = roots
            .iter()
            .map(|r| {
                let origin = match owner {
                    Owner::Spec => "[pip] packages",
                    Owner::Included => "req.txt:1",
                };
                parse_requirement(r, dir, origin, owner).unwrap()
            })
            .collect();
        let provider = match Provider::new(client, t, env, roots, &[], false, None) {
            Ok(p) => p,
            Err(e) => return e,
        };
        match resolve(&provider) {
            Ok(r) => panic!(
                "resolved: {:?}",
                r.iter().map(|r| &r.name).collect::<Vec<_>>()
            ),
            Err(e) => e,
        }
    }

    /// The version whose metadata is fetched beside the pages: the newest
    /// wheel the specifier allows (a pin's own), not an sdist's nor a
    /// pre-release's.
    #[test]
    fn the_likely_version_is_the_newest_wheel_the_specifier_allows() {
        let files = [
            "a-1.0-py3-none-any.whl",
            "a-2.0-py3-none-any.whl",
            "a-2.5.tar.gz",
            "a-3.0rc1-py3-none-any.whl",
        ];
        with_wheelhouse(&files, |_, client, t, env| likely_versions(client, t, env));
    }

    fn likely_versions(client: &IndexClient, t: &PythonTarget, env: MarkerEnvironment) {
        let provider = Provider::new(client, t, env, Vec::new(), &[], false, None).unwrap();
        let c = provider.candidates("a").unwrap();
        let likely = |spec: &str| {
            let spec = VersionSpecifiers::from_str(spec).unwrap();
            let spec = (!spec.is_empty()).then_some(&spec);
            provider.likely("a", &c, spec).map(|v| v.to_string())
        };
        assert_eq!(likely("==1.0").as_deref(), Some("1.0"));
        assert_eq!(likely("").as_deref(), Some("2.0"));
        assert_eq!(likely("<2").as_deref(), Some("1.0"));
        assert_eq!(likely(">2.0,<3").as_deref(), None, "only an sdist");
        assert_eq!(likely(">=3.0rc1").as_deref(), Some("3.0rc1"));
    }

    #[test]
    fn unknown_package() {
        let err = resolve_with(&[], &["nothere"]);
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::PackageNotFound { name, sources })
                if name == "nothere" && sources.len() == 1 && sources[0].starts_with("file://")),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("[pip] package `nothere` was not found on file://"));
    }

    /// Missing roots, all at once, before resolving: names with close
    /// ones, versions with the versions there are.
    fn missing_with(files: &[&str], roots: &[(&str, &str)], names: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let wh = dir.path().join("wheelhouse");
        std::fs::create_dir(&wh).unwrap();
        for f in files {
            std::fs::write(wh.join(f), b"").unwrap();
        }
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let client = IndexClient::new(&http, &cache, Vec::new(), vec![file_url(&wh)]);
        let t = target();
        let env = crate::markers::environment(&t).unwrap();
        let roots = roots
            .iter()
            .map(|(r, origin)| parse_requirement(r, dir.path(), origin, Owner::Spec).unwrap())
            .collect();
        let provider = Provider::new(&client, &t, env, roots, &[], false, None).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let listed = client.project_names();
        assert!(listed.iter().any(|n| n == "numpy"), "{listed:?}");
        provider
            .root_problems(&|| names.clone())
            .unwrap()
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    #[test]
    fn every_missing_root_is_named_with_close_names_or_versions() {
        let files = [
            "numpy-1.26.4-py3-none-any.whl",
            "numpy-2.0.0-py3-none-any.whl",
            "pandas-2.2.0-py3-none-any.whl",
            "torch-2.3.1-py3-none-any.whl",
        ];
        let got = missing_with(
            &files,
            &[
                ("numpyy", "[pip] packages"),
                ("pandsa>=2", "pkgs.txt:3"),
                ("numpy==9.9", "[pip] packages"),
                ("pandas", "[pip] packages"),
                ("nothing-like-it", "[pip] packages"),
                ("torch==2.3.1+cpu", "req.txt:7"),
            ],
            &["numpy", "pandas", "requests"],
        );
        assert_eq!(
            got,
            [
                "`numpyy`: no such package; did you mean `numpy`?",
                "pkgs.txt:3: `pandsa>=2`: no such package; did you mean `pandas`?",
                "`numpy==9.9`: no such version; numpy has 2.0.0, 1.26.4",
                "`nothing-like-it`: no such package",
                "req.txt:7: `torch==2.3.1+cpu`: no such version: the sources have torch 2.3.1 but not its local version `+cpu` \
                 (local versions come from the project's own wheel index: add it to `extra-index`, or require `torch==2.3.1`)",
            ]
        );
    }

    /// `(file, Requires-Python on the page, METADATA as a PEP 658 file)`.
    type IndexFile<'a> = (&'a str, Option<&'a str>, Option<&'a str>);
    type Project<'a> = (&'a str, &'a [IndexFile<'a>]);

    /// A `file://` simple index in `dir`: `(project, [(file, Requires-Python
    /// on the page, METADATA served as a PEP 658 file)])`. Wheels are empty
    /// files: only their METADATA is read.
    fn local_index(dir: &Path, projects: &[Project]) -> String {
        let simple = dir.join("simple");
        for (project, files) in projects {
            let page = simple.join(project);
            std::fs::create_dir_all(&page).unwrap();
            let mut html = String::new();
            for (f, rp, meta) in files.iter() {
                std::fs::write(page.join(f), b"").unwrap();
                let mut attrs = String::new();
                if let Some(rp) = rp {
                    attrs += &format!(" data-requires-python=\"{}\"", rp.replace('>', "&gt;"));
                }
                if let Some(m) = meta {
                    std::fs::write(page.join(format!("{f}.metadata")), m).unwrap();
                    attrs += " data-core-metadata=\"true\"";
                }
                html += &format!("<a href=\"{f}\"{attrs}>{f}</a>\n");
            }
            std::fs::write(page.join("index.html"), html).unwrap();
        }
        file_url(&simple)
    }

    /// Resolve `roots` against a [`local_index`]: the pins, or the message.
    fn against_index(
        projects: &[Project],
        roots: &[(&str, &str)],
    ) -> std::result::Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let index = local_index(dir.path(), projects);
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let http = Http::new().unwrap();
        let client = IndexClient::new(&http, &cache, vec![index], Vec::new());
        let t = target();
        let env = crate::markers::environment(&t).unwrap();
        let roots = roots
            .iter()
            .map(|(r, origin)| parse_requirement(r, dir.path(), origin, Owner::Spec).unwrap())
            .collect();
        let provider = Provider::new(&client, &t, env, roots, &[], false, None).unwrap();
        let names = || projects.iter().map(|p| p.0.to_string()).collect();
        let out = provider
            .check_roots(&names)
            .and_then(|()| resolve(&provider))
            .map_err(|e| {
                assert_eq!(e.kind(), kiln_core::ErrorKind::Input, "{e}");
                e.to_string()
            })?;
        Ok(out
            .iter()
            .map(|r| format!("{}=={}", r.name, r.version))
            .collect())
    }

    fn meta(name: &str, version: &str, extra: &str) -> String {
        format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{extra}")
    }

    /// No word of PubGrub's internals or of Debug formatting.
    fn readable(m: &str) {
        for bad in [
            "∅",
            "Root",
            "requirements 0",
            "Glibc {",
            "Version {",
            "[pip] requirements",
        ] {
            assert!(!m.contains(bad), "{bad:?} in:\n{m}");
        }
    }

    #[test]
    fn requires_python_is_named_with_the_newest_version_that_fits() {
        let m = |v: &str| meta("contourpy", v, "");
        let (m14, m13) = (m("1.4.0"), m("1.3.2"));
        let contourpy: &[IndexFile] = &[
            (
                "contourpy-0.0.1-cp37-cp37m-manylinux1_x86_64.whl",
                None,
                None,
            ),
            (
                "contourpy-1.3.2-py3-none-any.whl",
                Some(">=3.10"),
                Some(&m13),
            ),
            (
                "contourpy-1.4.0-py3-none-any.whl",
                Some(">=3.12"),
                Some(&m14),
            ),
            ("contourpy-1.4.0.tar.gz", Some(">=3.12"), None),
        ];
        // A frozen pin: found before resolving.
        let err = against_index(
            &[("contourpy", contourpy)],
            &[("contourpy==1.4.0", "req.txt:12")],
        )
        .unwrap_err();
        readable(&err);
        assert!(
            err.contains("req.txt:12: contourpy==1.4.0 requires Python >=3.12; the image has Python 3.11.0; the newest contourpy that supports it is 1.3.2"),
            "{err}"
        );
        assert!(!err.contains("no wheel"), "{err}");

        // Required by another package: the resolver's derivation says so.
        let ma = meta("app", "1.0", "Requires-Dist: contourpy>=1.4\n");
        let app: &[IndexFile] = &[("app-1.0-py3-none-any.whl", None, Some(&ma))];
        let err = against_index(
            &[("contourpy", contourpy), ("app", app)],
            &[("app", "[pip] packages")],
        )
        .unwrap_err();
        readable(&err);
        for want in [
            "[pip] your requirements cannot be satisfied on CPython 3.11.0 on x86_64 (an unknown C library):\n",
            "app==1.0 depends on contourpy>=1.4",
            "contourpy==1.4.0 requires Python >=3.12 (the image has Python 3.11.0; the newest contourpy that supports it is 1.3.2)",
            "you require app,",
        ] {
            assert!(err.contains(want), "{want:?} in:\n{err}");
        }

        // With an older app that fits, the resolver goes back to it.
        let ma2 = meta("app", "2.0", "Requires-Dist: contourpy>=1.4\n");
        let ma1 = meta("app", "1.0", "Requires-Dist: contourpy<1.4\n");
        let app: &[IndexFile] = &[
            ("app-1.0-py3-none-any.whl", None, Some(&ma1)),
            ("app-2.0-py3-none-any.whl", None, Some(&ma2)),
        ];
        let pins = against_index(
            &[("contourpy", contourpy), ("app", app)],
            &[("app", "[pip] packages")],
        )
        .unwrap();
        assert_eq!(pins, ["app==1.0", "contourpy==1.3.2"]);
    }

    #[test]
    fn requires_python_only_in_metadata_is_honoured() {
        let new = meta("newpkg", "2.0", "Requires-Python: >=3.13\n");
        let old = meta("newpkg", "1.0", "Requires-Python: >=3.8\n");
        let only_new: &[IndexFile] = &[("newpkg-2.0-py3-none-any.whl", None, Some(&new))];
        let err =
            against_index(&[("newpkg", only_new)], &[("newpkg", "[pip] packages")]).unwrap_err();
        readable(&err);
        assert!(
            err.contains("newpkg==2.0 requires Python >=3.13 (the image has Python 3.11.0)"),
            "{err}"
        );
        let both: &[IndexFile] = &[
            ("newpkg-1.0-py3-none-any.whl", None, Some(&old)),
            ("newpkg-2.0-py3-none-any.whl", None, Some(&new)),
        ];
        assert_eq!(
            against_index(&[("newpkg", both)], &[("newpkg", "[pip] packages")]).unwrap(),
            ["newpkg==1.0"]
        );
    }

    #[test]
    fn conflicting_pins_and_missing_wheels_all_at_once_with_pins_kept() {
        let y1 = meta("pyyaml", "6.0.1", "");
        let y2 = meta("pyyaml", "6.0.2", "");
        let pyyaml: &[IndexFile] = &[
            ("PyYAML-6.0.1-py3-none-any.whl", None, Some(&y1)),
            ("PyYAML-6.0.2-py3-none-any.whl", None, Some(&y2)),
        ];
        let docopt: &[IndexFile] = &[("docopt-0.6.2.tar.gz", None, None)];
        let antlr: &[IndexFile] = &[
            ("antlr4-python3-runtime-4.9.3.tar.gz", None, None),
            ("antlr4_python3_runtime-4.13.0-py3-none-any.whl", None, None),
        ];
        let requests: &[IndexFile] = &[
            ("requests-2.32.3-py3-none-any.whl", None, None),
            ("requests-2.31.0-py3-none-any.whl", None, None),
        ];
        let err = against_index(
            &[
                ("pyyaml", pyyaml),
                ("docopt", docopt),
                ("antlr4-python3-runtime", antlr),
                ("requests", requests),
            ],
            &[
                ("PyYAML==6.0.1", "req.txt:3"),
                ("pyyaml==6.0.2", "req.txt:4"),
                ("docopt==0.6.2", "req.txt:5"),
                ("antlr4-python3-runtime==4.9.3", "req.txt:6"),
                ("requests==9.9.9", "req.txt:7"),
            ],
        )
        .unwrap_err();
        readable(&err);
        for want in [
            "[pip] 4 requirements cannot be installed on CPython 3.11.0 on x86_64 (an unknown C library):\n  - ",
            "\n  - req.txt:5: `docopt==0.6.2`: no wheel of docopt 0.6.2 fits this image; there is only docopt-0.6.2.tar.gz (an sdist is built only by `kiln build` for the host's architecture)",
            "\n  - req.txt:6: `antlr4-python3-runtime==4.9.3`: no wheel of antlr4-python3-runtime 4.9.3 fits",
            "\n  - req.txt:7: `requests==9.9.9`: no such version; requests has 2.32.3, 2.31.0",
            "\n  - you require pyyaml==6.0.1 and pyyaml==6.0.2 (req.txt:3, req.txt:4); no version of pyyaml is both",
            "`pip wheel --no-deps docopt==0.6.2 antlr4-python3-runtime==4.9.3 -w wheelhouse/`",
            "\n  tags tried: cp311-cp311-linux_x86_64, ",
            "\n  sources: file://",
        ] {
            assert!(err.contains(want), "{want:?} in:\n{err}");
        }
    }

    #[test]
    fn derivations_name_specifiers_and_versions() {
        let a = meta("app", "1.0", "Requires-Dist: helper>=99\n");
        let app: &[IndexFile] = &[("app-1.0-py3-none-any.whl", None, Some(&a))];
        let h = meta("helper", "1.0", "");
        let helper: &[IndexFile] = &[
            ("helper-1.0-py3-none-any.whl", None, Some(&h)),
            ("helper-2.0.tar.gz", None, None),
        ];
        let err = against_index(
            &[("app", app), ("helper", helper)],
            &[("app", "[pip] packages")],
        )
        .unwrap_err();
        readable(&err);
        assert!(
            err.contains("app==1.0 depends on helper>=99, which no version of helper meets (helper has 2.0, 1.0)"),
            "{err}"
        );
        // A dependency whose versions have no wheel for the image.
        let a = meta("app", "1.0", "Requires-Dist: helper>=2\n");
        let app: &[IndexFile] = &[("app-1.0-py3-none-any.whl", None, Some(&a))];
        let err = against_index(
            &[("app", app), ("helper", helper)],
            &[("app", "[pip] packages")],
        )
        .unwrap_err();
        readable(&err);
        assert!(
            err.contains("helper>=2 has no wheel for this image (helper 2.0 has only helper-2.0.tar.gz, and an sdist is built only by `kiln build` for the host's architecture)"),
            "{err}"
        );
    }

    #[test]
    fn url_requirement_must_be_a_wheel_and_its_url_is_redacted() {
        let err = resolve_with(&[], &["demo @ https://user:s3cret@host/demo-1.0.tar.gz"]);
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::NotAWheel { origin, url })
                if origin == "[pip] packages" && url.as_deref() == Some("https://***@host/demo-1.0.tar.gz")),
            "{err:?}"
        );
        assert!(!err.to_string().contains("s3cret"));
    }

    #[test]
    fn url_requirement_of_an_included_file_is_not_quoted() {
        let err = resolve_owned(
            &[],
            &["demo @ https://h.invalid/SECRET-PATH/demo-1.0.tar.gz"],
            Owner::Included,
        );
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::NotAWheel { origin, url: None })
                if origin == "req.txt:1"),
            "{err:?}"
        );
        let m = err.to_string();
        assert!(!m.contains("SECRET"), "{m}");
        assert!(
            m.starts_with("req.txt:1: the requirement's URL (not quoted"),
            "{m}"
        );
    }

    #[test]
    fn long_url_requirements_are_cut() {
        let url = format!("https://h.invalid/{}/demo-1.0.tar.gz", "p".repeat(5000));
        let err = resolve_with(&[], &[&format!("demo @ {url}")]);
        match err.downcast_ref::<PipError>() {
            Some(PipError::NotAWheel { url: Some(u), .. }) => {
                assert_eq!(u.chars().count(), crate::error::QUOTED_CHARS + 1);
                assert!(u.ends_with('…'));
            }
            other => panic!("{other:?}"),
        }
    }
}
