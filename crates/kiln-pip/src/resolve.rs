//! PubGrub over index candidates: PEP 440 ranges, extras as virtual packages, markers for the target.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use pubgrub::{
    DefaultStringReporter, Dependencies, DependencyProvider, PackageResolutionStatistics,
    PubGrubError, Ranges, Reporter,
};
use rayon::prelude::*;
use uv_normalize::ExtraName;
use uv_pep440::{Version, VersionSpecifiers};
use uv_pep508::{MarkerEnvironment, Requirement, VersionOrUrl};

use kiln_core::error::{Error, Result};
use kiln_core::suggest::{self, Missing};

use crate::PipError;

use super::index::{file_version, DistFile, IndexClient};
use super::metadata::CoreMetadata;
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
            Pkg::Root => write!(f, "the [pip] requirements"),
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
    /// All file names, for error messages.
    files: Vec<String>,
}

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
    candidates: Mutex<HashMap<String, Arc<Candidates>>>,
    metadata: Mutex<HashMap<(String, Version), Arc<CoreMetadata>>>,
}

fn version(s: &str) -> Option<Version> {
    Version::from_str(s).ok()
}

impl<'a> Provider<'a> {
    pub(crate) fn new(
        client: &'a IndexClient<'a>,
        target: &'a PythonTarget,
        env: MarkerEnvironment,
        roots: Vec<Req>,
        constraints: &[Req],
        prerelease: bool,
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
                let (url, frag) = match raw.split_once('#') {
                    Some((a, b)) => (a.to_string(), b.strip_prefix("sha256=").map(String::from)),
                    None => (raw.clone(), None),
                };
                let filename = url.rsplit('/').next().unwrap_or("").to_string();
                let filename = kiln_store::http::file_url_path(&format!("file:///{filename}"))
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or(filename);
                if !filename.ends_with(".whl") {
                    return Err(PipError::NotAWheel {
                        origin: r.origin.clone(),
                        url: crate::error::quote(&raw, r.owner),
                    }
                    .into());
                }
                let sha = frag.or_else(|| (r.hashes.len() == 1).then(|| r.hashes[0].clone()));
                let file = DistFile {
                    filename,
                    url: url.clone(),
                    sha256: sha,
                    requires_python: None,
                    yanked: false,
                    core_metadata: None,
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
            candidates: Mutex::new(HashMap::new()),
            metadata: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn direct_url(&self, name: &str) -> Option<&str> {
        self.direct.get(name).map(|(_, u)| u.as_str())
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
        let files: Vec<DistFile> = match self.direct.get(name) {
            Some((f, _)) => vec![f.clone()],
            None => match self.client.files(name)? {
                Some(f) => f.to_vec(),
                None if installed.is_some() => Vec::new(),
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
        let mut names = Vec::new();
        for f in files {
            names.push(f.filename.clone());
            if f.yanked {
                continue;
            }
            let Some(v) = file_version(&f.filename).and_then(|v| version(&v)) else {
                continue;
            };
            versions.push(v.clone());
            if !f.is_wheel() {
                continue;
            }
            if let Some(rp) = &f.requires_python {
                if let Ok(spec) = VersionSpecifiers::from_str(rp) {
                    if !spec.contains(&self.python) {
                        continue;
                    }
                }
            }
            let Some(rank) = WheelName::parse(&f.filename)
                .ok()
                .and_then(|w| self.tags.rank(&w))
            else {
                continue;
            };
            match best.get(&v) {
                Some((r, _)) if *r <= rank => {}
                _ => {
                    best.insert(v, (rank, f));
                }
            }
        }
        versions.sort();
        versions.dedup();
        names.sort();
        names.dedup();
        let c = Arc::new(Candidates {
            versions,
            best: best.into_iter().map(|(v, (_, f))| (v, f)).collect(),
            installed,
            files: names,
        });
        self.candidates
            .lock()
            .unwrap()
            .insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Every root requirement (for this target's markers) whose project
    /// no source has, or none of whose versions exists; `names` gives the
    /// projects the sources know, asked only when a name is missing.
    pub(crate) fn missing_roots(&self, names: &dyn Fn() -> Vec<String>) -> Result<Vec<Missing>> {
        let roots: Vec<&Req> = self
            .roots
            .iter()
            .filter(|r| {
                r.req.marker.evaluate(&self.env, &[])
                    && !self.direct.contains_key(r.req.name.as_ref())
            })
            .collect();
        // Fetched in parallel: the resolver reads these pages first anyway.
        let looked: Vec<Result<Option<Arc<Candidates>>>> =
            kiln_store::http::on_network_pool(|| {
                roots
                    .par_iter()
                    .map(|r| match self.candidates(r.req.name.as_ref()) {
                        Ok(c) => Ok(Some(c)),
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
        for (r, c) in roots.iter().zip(looked) {
            let name = r.req.name.to_string();
            let request = crate::error::quote(&r.req.to_string(), r.owner).unwrap_or(name.clone());
            let at = (r.origin != "[pip] packages").then_some(r.origin.as_str());
            match c? {
                None => {
                    let known = known.get_or_insert_with(names);
                    let close = suggest::close_names(&name, known.iter().map(String::as_str));
                    out.push(Missing::name(&request, close).at(at));
                }
                Some(c) => {
                    let Some(VersionOrUrl::VersionSpecifier(spec)) = &r.req.version_or_url else {
                        continue;
                    };
                    if c.versions.is_empty() || c.versions.iter().any(|v| spec.contains(v)) {
                        continue;
                    }
                    let versions = c.versions.iter().rev().map(|v| v.to_string()).collect();
                    out.push(Missing::version(&request, &name, versions).at(at));
                }
            }
        }
        Ok(out)
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

    /// Versions of `name` allowed by `spec` (and the constraints), as PubGrub ranges.
    fn range(
        &self,
        name: &str,
        spec: Option<&VersionSpecifiers>,
        origin: &str,
    ) -> Result<Ranges<Version>> {
        let c = self.candidates(name)?;
        let spec_pre = spec.is_some_and(|s| s.iter().any(|s| s.version().any_prerelease()));
        let no_finals = c.versions.iter().all(|v| v.any_prerelease());
        let allow_pre = self.prerelease || spec_pre || no_finals;
        let cons = self.constraints.get(name);
        let ok = |v: &Version| {
            (allow_pre || !v.any_prerelease())
                && spec.is_none_or(|s| s.contains(v))
                && cons.is_none_or(|cs| cs.iter().all(|s| s.contains(v)))
        };
        let matching: Vec<&Version> = c.versions.iter().filter(|v| ok(v)).collect();
        if !matching.is_empty() && !matching.iter().any(|v| Self::selectable(&c, v)) {
            return Err(self.no_wheel_error(name, spec, origin, &c));
        }
        let mut r = Ranges::empty();
        let mut run: Option<(Version, Version)> = None;
        for v in &c.versions {
            if ok(v) {
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
        Ok(r)
    }

    fn no_wheel_error(
        &self,
        name: &str,
        spec: Option<&VersionSpecifiers>,
        origin: &str,
        c: &Candidates,
    ) -> Error {
        PipError::NoCompatibleWheel {
            name: name.to_string(),
            specifier: spec.map(|s| s.to_string()).unwrap_or_default(),
            origin: origin.to_string(),
            python: self.target.full_version.clone(),
            machine: self.target.machine.clone(),
            libc: self.target.libc.clone(),
            tags: self.tags.summary(),
            files: c.files.clone(),
        }
        .into()
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
            self.client
                .metadata(f)
                .map_err(|e| e.context(format!("[pip] {name} {v}")))?
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
        reqs: Vec<(Requirement, String)>,
        self_name: Option<&str>,
    ) -> Result<Dependencies<Pkg, Ranges<Version>, String>> {
        // Fetch the pages (and the newest candidate's metadata) of all dependencies in parallel.
        let names: Vec<String> = reqs.iter().map(|(r, _)| r.name.to_string()).collect();
        kiln_store::http::on_network_pool(|| {
            names.par_iter().for_each(|n| {
                if let Ok(c) = self.candidates(n) {
                    if let Some(v) = c.best.keys().next_back() {
                        let _ = self.metadata_of(n, v);
                    }
                }
            })
        });
        let mut out: BTreeMap<Pkg, Ranges<Version>> = BTreeMap::new();
        for (r, origin) in reqs {
            let name = r.name.to_string();
            if Some(name.as_str()) == self_name && r.extras.is_empty() {
                continue;
            }
            let spec = match &r.version_or_url {
                Some(VersionOrUrl::VersionSpecifier(s)) => Some(s),
                _ => None,
            };
            let range = self.range(&name, spec, &origin)?;
            let mut add = |p: Pkg, rg: &Ranges<Version>| {
                let e = out.entry(p).or_insert_with(Ranges::full);
                *e = e.intersection(rg);
            };
            add(Pkg::Dist(name.clone()), &range);
            for x in r.extras.iter() {
                add(Pkg::Extra(name.clone(), x.to_string()), &range);
            }
        }
        Ok(Dependencies::Available(out.into_iter().collect()))
    }
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
                    .map(|r| (r.req.clone(), r.origin.clone()))
                    .collect();
                self.deps_for(reqs, None)
            }
            Pkg::Dist(n) => {
                let m = self.metadata_of(n, v)?;
                let reqs = self.applicable(&m.requires_dist, &[], &format!("{n} {v}"))?;
                let who = format!("{n} {v}");
                self.deps_for(
                    reqs.into_iter().map(|r| (r, who.clone())).collect(),
                    Some(n),
                )
            }
            Pkg::Extra(n, e) => {
                let m = self.metadata_of(n, v)?;
                let extra = ExtraName::from_str(e).map_err(|err| PipError::InvalidExtra {
                    name: n.clone(),
                    extra: e.clone(),
                    detail: err.to_string(),
                })?;
                let known = m
                    .provides_extra
                    .iter()
                    .any(|p| ExtraName::from_str(p).is_ok_and(|p| p == extra));
                let reqs = self.applicable(
                    &m.requires_dist,
                    std::slice::from_ref(&extra),
                    &format!("{n} {v}"),
                )?;
                let who = format!("{n}[{e}] {v}");
                let reqs: Vec<_> = reqs.into_iter().map(|r| (r, who.clone())).collect();
                let Dependencies::Available(deps) = self.deps_for(reqs, Some(n))? else {
                    unreachable!()
                };
                let mut all: Vec<(Pkg, Ranges<Version>)> = deps.iter().cloned().collect();
                all.push((Pkg::Dist(n.clone()), Ranges::singleton(v.clone())));
                if !known && !m.provides_extra.is_empty() {
                    // pip warns and carries on; so do we (the extra adds nothing).
                }
                Ok(Dependencies::Available(all.into_iter().collect()))
            }
        }
    }
}

/// Run the resolver; the result is sorted by name.
pub(crate) fn resolve(provider: &Provider) -> Result<Vec<Resolved>> {
    let sol = match pubgrub::resolve(provider, Pkg::Root, Version::new([0])) {
        Ok(s) => s,
        Err(PubGrubError::NoSolution(mut tree)) => {
            tree.collapse_no_versions();
            return Err(PipError::Unsatisfiable {
                explanation: DefaultStringReporter::report(&tree),
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
    fn resolve_owned(files: &[&str], roots: &[&str], owner: Owner) -> kiln_core::Error {
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
            .map(|r| {
                let origin = match owner {
                    Owner::Spec => "[pip] packages",
                    Owner::Included => "req.txt:1",
                };
                parse_requirement(r, dir.path(), origin, owner).unwrap()
            })
            .collect();
        let provider = match Provider::new(&client, &t, env, roots, &[], false) {
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
        let provider = Provider::new(&client, &t, env, roots, &[], false).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let listed = client.project_names();
        assert!(listed.iter().any(|n| n == "numpy"), "{listed:?}");
        provider
            .missing_roots(&|| names.clone())
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
        ];
        let got = missing_with(
            &files,
            &[
                ("numpyy", "[pip] packages"),
                ("pandsa>=2", "pkgs.txt:3"),
                ("numpy==9.9", "[pip] packages"),
                ("pandas", "[pip] packages"),
                ("nothing-like-it", "[pip] packages"),
            ],
            &["numpy", "pandas", "requests"],
        );
        assert_eq!(
            got,
            [
                "`numpyy`: no such package; did you mean `numpy`?",
                "`pandsa>=2` (pkgs.txt:3): no such package; did you mean `pandas`?",
                "`numpy==9.9`: no such version; numpy has 2.0.0, 1.26.4",
                "`nothing-like-it`: no such package",
            ]
        );
    }

    #[test]
    fn sdist_only_lists_what_exists() {
        let err = resolve_with(&["demo-1.0.tar.gz", "demo-0.9.zip"], &["demo>=0.5"]);
        let Some(PipError::NoCompatibleWheel {
            name,
            specifier,
            origin,
            python,
            files,
            ..
        }) = err.downcast_ref::<PipError>()
        else {
            panic!("{err:?}")
        };
        assert_eq!(
            (
                name.as_str(),
                specifier.as_str(),
                origin.as_str(),
                python.as_str()
            ),
            ("demo", ">=0.5", "[pip] packages", "3.11.0")
        );
        assert_eq!(files, &["demo-0.9.zip", "demo-1.0.tar.gz"]);
        let m = err.to_string();
        assert!(
            m.starts_with("[pip] no compatible wheel for `demo>=0.5` (required by [pip] packages) for CPython 3.11.0 on x86_64 (an unknown C library).\n  tags tried: cp311-cp311-linux_x86_64, "),
            "{m}"
        );
        assert!(
            m.contains("\n  files that exist: demo-0.9.zip, demo-1.0.tar.gz\n"),
            "{m}"
        );
    }

    #[test]
    fn conflicting_roots_are_unsatisfiable() {
        let err = resolve_with(
            &["demo-1.0-py3-none-any.whl", "demo-2.0-py3-none-any.whl"],
            &["demo==1.0", "demo==2.0"],
        );
        assert_eq!(err.kind(), kiln_core::ErrorKind::Input);
        assert!(
            matches!(err.downcast_ref::<PipError>(), Some(PipError::Unsatisfiable { explanation }) if explanation.contains("demo")),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("[pip] the requirements cannot be satisfied:\n"));
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
