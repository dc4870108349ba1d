//! The image's Python guessed from the base's paths while its layers are
//! still read, and the wheels the requirements start from fetched for
//! that guess.
//!
//! Resolving waits for the base's whole view ([`PythonTarget::detect`]
//! reads every layer: whiteouts, what is installed). The wheels a
//! requirement list starts from do not depend on most of it: for CPython
//! 3.N on glibc, the wheel of a pin, or of the newest release a range
//! allows, and those of their dependencies, are fixed by N alone. N and
//! glibc show in paths (the interpreter and the C library, or dpkg's file
//! lists of `python3.N` and `libc6`, which a base built by kiln keeps in
//! a small layer of its own) long before the last layer is read. Those
//! wheels are downloaded then, side by side with the base's blobs, so
//! that behind a slow registry the base and the wheels arrive together
//! instead of one after the other. The guess only fills the
//! content-addressed cache: the resolver still decides from the full
//! view, and a wrong guess costs downloads, never a different image.
//!
//! [`PythonTarget::detect`]: crate::PythonTarget

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use rayon::prelude::*;

use kiln_core::platform::Arch;
use kiln_fs::probe::Libc;
use kiln_store::cache::Cache;
use kiln_store::http::Http;
use uv_pep440::{Version, VersionSpecifiers};
use uv_pep508::Requirement;

use crate::index::{file_version, DistFile, IndexClient};
use crate::spec::Inputs;
use crate::tags::{TagSet, WheelName};
use crate::PipSection;

/// Every glibc manylinux tag up to this minor counts as compatible in a
/// guess: the newest wheel a pin offers is the one a current glibc takes.
/// (An older base may take an older wheel: one download more, no harm.)
const GUESSED_GLIBC_MINOR: u32 = 99;

/// What a guess needs: CPython 3.`minor` with glibc, on `arch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guess {
    pub minor: u32,
    pub arch: Arch,
}

#[derive(Default)]
struct Seen {
    arch: Option<Arch>,
    minor: Option<u32>,
    glibc: bool,
    /// No more paths will come (the base is read, or nothing is guessed).
    closed: bool,
}

/// The guess, filled from paths by the base's readers ([`PythonHint::saw`])
/// and waited for by the thread that fetches ahead ([`PythonHint::wait`]).
#[derive(Default)]
pub struct PythonHint {
    seen: Mutex<Seen>,
    changed: Condvar,
    /// Set once the guess is whole or closed: later paths cost one load.
    settled: AtomicBool,
}

impl PythonHint {
    pub fn new() -> PythonHint {
        PythonHint::default()
    }

    /// The platform of the base being read (its paths name no architecture
    /// kiln can trust more).
    pub fn reading(&self, arch: Arch) {
        self.update(|s| s.arch = Some(arch));
    }

    /// A regular file's path in the base (with or without its leading `/`).
    pub fn saw(&self, path: &str) {
        if !self.settled.load(Ordering::Relaxed) {
            let path = path.trim_start_matches('/');
            self.learn(python_minor(path), is_glibc(path));
        }
    }

    /// What a path showed, if anything (the first minor wins).
    fn learn(&self, minor: Option<u32>, glibc: bool) {
        if minor.is_some() || glibc {
            self.update(|s| {
                if let Some(m) = minor {
                    s.minor.get_or_insert(m);
                }
                s.glibc |= glibc;
            });
        }
    }

    /// No more paths: a waiter gets the guess made so far, if whole.
    pub fn close(&self) {
        self.update(|s| s.closed = true);
    }

    /// Block until the guess is whole (`Some`) or the hint is closed
    /// without one (`None`).
    pub fn wait(&self) -> Option<Guess> {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(g) = whole(&s) {
                return Some(g);
            }
            if s.closed {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        if s.closed || whole(&s).is_some() {
            self.settled.store(true, Ordering::Relaxed);
        }
        self.changed.notify_all();
    }
}

fn whole(s: &Seen) -> Option<Guess> {
    match (s.arch, s.minor, s.glibc) {
        (Some(arch), Some(minor), true) => Some(Guess { minor, arch }),
        _ => None,
    }
}

/// `3.N`'s N from the paths that show an interpreter kiln would find
/// (`usr/bin/python3.N`, `usr/local/bin/python3.N`) or dpkg's list of a
/// `python3.N` package.
fn python_minor(path: &str) -> Option<u32> {
    for dir in ["usr/bin/python3.", "usr/local/bin/python3."] {
        if let Some(rest) = path.strip_prefix(dir) {
            return minor_of(rest);
        }
    }
    let list = path
        .strip_prefix("var/lib/dpkg/info/python3.")?
        .strip_suffix(".list")?;
    package_minor(list.split(':').next()?)
}

/// N from what follows `python3.` in a package's name: `N` or `N-minimal`.
fn package_minor(rest: &str) -> Option<u32> {
    minor_of(rest.strip_suffix("-minimal").unwrap_or(rest))
}

/// `11` from `11`: a minor version and nothing else.
fn minor_of(s: &str) -> Option<u32> {
    (!s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// glibc's shared library, wherever a distribution puts it, or dpkg's list
/// of the `libc6` package (which a base built by kiln keeps beside the
/// Python's, in its small dpkg layer, while the library is in the first).
fn is_glibc(path: &str) -> bool {
    let lib =
        path.ends_with("/libc.so.6") && (path.starts_with("lib") || path.starts_with("usr/lib"));
    let listed = path
        .strip_prefix("var/lib/dpkg/info/libc6")
        .and_then(|rest| rest.strip_suffix(".list"))
        .is_some_and(|arch| arch.is_empty() || arch.starts_with(':'));
    lib || listed
}

/// [`crate::prefetch_pages`], then `pages_fetched()`, then once `hint`
/// gives a guess: download the wheel each requirement the resolver starts
/// from would take for that Python (the newest version its line and
/// constraints allow, when no marker and no `--no-binary` may leave it
/// out), then those of the dependencies their metadata names for that
/// Python, level by level, each level largest first, until `stop` is set.
/// Best effort and quiet, as the pages' prefetch: the resolver downloads
/// (and reports) whatever is missing, and waits for a wheel still in
/// flight here rather than fetching it twice ([`Http::download`]).
pub fn prefetch_with_guess(
    section: &PipSection,
    spec_dir: &Path,
    http: &Http,
    cache: &Cache,
    pages_fetched: impl FnOnce(),
    hint: &PythonHint,
    stop: &AtomicBool,
) {
    crate::prefetch(section, spec_dir, http, cache, |client, inputs| {
        pages_fetched();
        if let Some(guess) = hint.wait() {
            fetch_guessed(client, inputs, guess, stop);
        }
    });
}

fn fetch_guessed(client: &IndexClient, inputs: &Inputs, guess: Guess, stop: &AtomicBool) {
    let libc = Libc::Glibc {
        major: 2,
        minor: GUESSED_GLIBC_MINOR,
    };
    let tags = TagSet::cpython(guess.minor, guess.arch.machine(), &libc);
    let python = Version::new([3, u64::from(guess.minor)]);
    let Ok(env) =
        crate::markers::cpython_linux(&format!("3.{}.0", guess.minor), guess.arch.machine())
    else {
        return;
    };
    let said = Said::of(inputs);
    let mut seen: BTreeSet<String> = said.lines.keys().cloned().collect();
    let mut level: Vec<(String, Vec<VersionSpecifiers>)> = said
        .lines
        .iter()
        .filter_map(|(n, specs)| Some((n.clone(), said.with_constraints(n, specs.clone()?)?)))
        .collect();
    // Level by level down the dependencies: each level's wheels download
    // (largest first, on the network pool as every other download) while
    // the next level's metadata is read.
    std::thread::scope(|s| {
        while !level.is_empty() && !stop.load(Ordering::Relaxed) {
            let wheels: Vec<DistFile> = kiln_store::http::on_network_pool(|| {
                level
                    .par_iter()
                    .filter_map(|(n, specs)| {
                        let files = client.files(n).ok()??;
                        guessed_wheel(&files, specs, inputs.prerelease, &tags, &python).cloned()
                    })
                    .collect()
            });
            let mut fetching = wheels.clone();
            fetching.sort_by_key(|f| std::cmp::Reverse(f.size.unwrap_or(0)));
            s.spawn(move || {
                kiln_store::http::on_guess_pool(|| {
                    // Taken in order by whichever thread is free.
                    fetching.into_iter().par_bridge().for_each(|f| {
                        if !stop.load(Ordering::Relaxed) {
                            let _ = client.download_artifact(&f);
                        }
                    })
                })
            });
            let deps: Vec<Requirement> = kiln_store::http::on_network_pool(|| {
                wheels
                    .par_iter()
                    .flat_map_iter(|w| {
                        let m = client.metadata(w).ok();
                        m.map(|m| unconditional(&m.requires_dist, &env))
                            .unwrap_or_default()
                    })
                    .collect()
            });
            let mut next: BTreeMap<String, Vec<VersionSpecifiers>> = BTreeMap::new();
            for r in deps {
                let name = r.name.to_string();
                if seen.contains(&name) || inputs.no_binary.applies(&name) {
                    continue;
                }
                let spec = match &r.version_or_url {
                    Some(uv_pep508::VersionOrUrl::VersionSpecifier(s)) => Some(s.clone()),
                    None => None,
                    Some(uv_pep508::VersionOrUrl::Url(_)) => continue,
                };
                next.entry(name).or_default().extend(spec);
            }
            seen.extend(next.keys().cloned());
            level = next
                .into_iter()
                .filter_map(|(n, specs)| {
                    let specs = said.with_constraints(&n, specs)?;
                    Some((n, specs))
                })
                .collect();
        }
    });
}

/// The requirements of `requires_dist` that apply on `env` with no extra
/// asked for (a dependency's own extras are not followed).
fn unconditional(requires_dist: &[String], env: &uv_pep508::MarkerEnvironment) -> Vec<Requirement> {
    requires_dist
        .iter()
        .filter_map(|r| Requirement::from_str(r).ok())
        .filter(|r| r.marker.evaluate(env, &[]))
        .collect()
}

/// What the requirement lines and the constraints say of each name they
/// name: the specifiers of all its lines, or `None` where a guess must
/// leave it alone (a line with a marker, a URL, `--no-binary`).
struct Said {
    lines: BTreeMap<String, Option<Vec<VersionSpecifiers>>>,
    constraints: BTreeMap<String, Option<Vec<VersionSpecifiers>>>,
}

impl Said {
    fn of(inputs: &Inputs) -> Said {
        let gather = |reqs: &[crate::spec::Req]| {
            let mut names: BTreeMap<String, Option<Vec<VersionSpecifiers>>> = BTreeMap::new();
            for r in reqs {
                let r = &r.req;
                let name = r.name.to_string();
                let entry = names
                    .entry(name.clone())
                    .or_insert_with(|| Some(Vec::new()));
                match (&r.version_or_url, r.marker.is_true()) {
                    (_, false) | (Some(uv_pep508::VersionOrUrl::Url(_)), _) => *entry = None,
                    (Some(uv_pep508::VersionOrUrl::VersionSpecifier(s)), true) => {
                        if let Some(specs) = entry {
                            specs.push(s.clone());
                        }
                    }
                    (None, true) => {}
                }
                if inputs.no_binary.applies(&name) {
                    *entry = None;
                }
            }
            names
        };
        Said {
            lines: gather(&inputs.requirements),
            constraints: gather(&inputs.constraints),
        }
    }

    /// `specs` and the constraints' on `name`, or `None` when a constraint
    /// leaves it to the resolver alone.
    fn with_constraints(
        &self,
        name: &str,
        mut specs: Vec<VersionSpecifiers>,
    ) -> Option<Vec<VersionSpecifiers>> {
        match self.constraints.get(name) {
            Some(None) => None,
            Some(Some(more)) => {
                specs.extend(more.iter().cloned());
                Some(specs)
            }
            None => Some(specs),
        }
    }
}

/// The wheel the resolver tries first for a name: of the versions every
/// one of `specs` allows, newest first (final releases unless prereleases
/// are allowed, asked for, or all there is), the first with a wheel for
/// `tags` and `python`. A newer release whose Requires-Python rules the
/// Python out (numpy and scipy drop old Pythons so) is passed over, as the
/// resolver passes it; one it passes over for a conflict costs a download.
fn guessed_wheel<'f>(
    files: &'f [DistFile],
    specs: &[VersionSpecifiers],
    prerelease: bool,
    tags: &TagSet,
    python: &Version,
) -> Option<&'f DistFile> {
    let versions: BTreeSet<Version> = files
        .iter()
        .filter(|f| !f.yanked)
        .filter_map(|f| file_version(&f.filename)?.parse().ok())
        .collect();
    let pre = crate::resolve::prereleases_allowed(prerelease, specs, &versions);
    versions
        .iter()
        .rev()
        .filter(|v| (pre || !v.any_prerelease()) && specs.iter().all(|s| s.contains(v)))
        .find_map(|v| best_wheel(files, v, tags, python))
}

/// The wheel of `pin` the resolver takes for `tags` and `python` (its
/// best-ranked one), when the index gives its digest: a download with
/// nothing to check it against would not be found again.
fn best_wheel<'f>(
    files: &'f [DistFile],
    pin: &Version,
    tags: &TagSet,
    python: &Version,
) -> Option<&'f DistFile> {
    let mut ranked: BTreeMap<usize, &DistFile> = BTreeMap::new();
    for f in files {
        if !f.is_wheel() || f.yanked || f.digest().is_none() {
            continue;
        }
        let version = file_version(&f.filename).and_then(|v| v.parse::<Version>().ok());
        if version.as_ref() != Some(pin) {
            continue;
        }
        let fits = f.excluding(python).is_none();
        let rank = WheelName::parse(&f.filename)
            .ok()
            .and_then(|w| tags.rank(&w));
        if let (true, Some(rank)) = (fits, rank) {
            ranked.entry(rank).or_insert(f);
        }
    }
    ranked.into_values().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_and_glibc_are_read_from_paths() {
        for (path, minor) in [
            ("/usr/bin/python3.11", Some(11)),
            ("usr/local/bin/python3.12", Some(12)),
            ("var/lib/dpkg/info/python3.11.list", Some(11)),
            ("var/lib/dpkg/info/python3.13-minimal:amd64.list", Some(13)),
            ("var/lib/dpkg/info/python3.11-venv.list", None),
            ("usr/bin/python3", None),
            ("usr/bin/python3.11-config", None),
            ("usr/lib/python3.11/os.py", None),
            ("opt/bin/python3.11", None),
        ] {
            assert_eq!(python_minor(path.trim_start_matches('/')), minor, "{path}");
        }
        assert!(is_glibc("usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_glibc("lib64/libc.so.6"));
        assert!(is_glibc("var/lib/dpkg/info/libc6:amd64.list"));
        assert!(is_glibc("var/lib/dpkg/info/libc6.list"));
        assert!(!is_glibc("var/lib/dpkg/info/libc6-dev:amd64.list"));
        assert!(!is_glibc("usr/lib/x86_64-linux-gnu/libc.so.60"));
        assert!(!is_glibc("opt/app/libc.so.6"));
    }

    /// The guess is given once the architecture, the minor and glibc are
    /// all known (in any order, the first minor seen winning), and a close
    /// before that leaves the waiter with nothing.
    #[test]
    fn a_guess_is_whole_or_closed() {
        let hint = std::sync::Arc::new(PythonHint::new());
        let waiter = {
            let hint = hint.clone();
            std::thread::spawn(move || hint.wait())
        };
        hint.saw("/usr/local/bin/python3.12");
        hint.saw("/usr/bin/python3.11");
        hint.reading(Arch::Arm64);
        hint.saw("/lib/aarch64-linux-gnu/libc.so.6");
        let guess = Guess {
            minor: 12,
            arch: Arch::Arm64,
        };
        assert_eq!(waiter.join().unwrap(), Some(guess));
        hint.close();
        assert_eq!(hint.wait(), Some(guess));

        let musl = PythonHint::new();
        musl.reading(Arch::Amd64);
        musl.saw("usr/bin/python3.11");
        musl.saw("lib/ld-musl-x86_64.so.1");
        musl.close();
        assert_eq!(musl.wait(), None);
    }

    /// On a guess of CPython 3.11 on x86_64, the wheel each line starts
    /// from is downloaded (a pin's; the newest final release a range and a
    /// constraint allow), and those of the dependencies their metadata
    /// gives for that Python; a marked line, `--no-binary`, an extra's or
    /// another Python's dependency and a stopped prefetch download nothing.
    #[test]
    fn guessed_wheels_of_pins_are_downloaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let simple = dir.path().join("simple");
        let projects = [
            (
                "np",
                vec![
                    "np-2.0-cp310-cp310-manylinux_2_17_x86_64.whl",
                    "np-2.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                    "np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                    "np-2.0-cp311-cp311-musllinux_1_2_x86_64.whl",
                    "np-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                ],
            ),
            (
                "marked",
                vec!["marked-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"],
            ),
            (
                "built",
                vec!["built-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"],
            ),
            (
                "loose",
                vec![
                    "loose-0.9-cp311-cp311-manylinux_2_17_x86_64.whl",
                    "loose-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                    "loose-2.0rc1-cp311-cp311-manylinux_2_17_x86_64.whl",
                ],
            ),
            (
                "capped",
                vec!["capped-1.0-py3-none-any.whl", "capped-2.0-py3-none-any.whl"],
            ),
            (
                "dep",
                vec!["dep-0.5-py3-none-any.whl", "dep-1.2-py3-none-any.whl"],
            ),
            ("deeper", vec!["deeper-1.0-py3-none-any.whl"]),
            ("testonly", vec!["testonly-1.0-py3-none-any.whl"]),
            ("oldpy", vec!["oldpy-1.0-py3-none-any.whl"]),
        ];
        // np's dependencies: one always (which has one of its own), one
        // for an extra and one for an older Python, not followed.
        let np_requires: &[&str] = &[
            "dep>=1",
            "testonly ; extra == 'test'",
            "oldpy ; python_version < '3.10'",
        ];
        let requires = [("np", np_requires), ("dep", &["deeper"][..])];
        let digests = crate::tests::write_simple_index(&simple, &projects, &requires);
        std::fs::write(
            dir.path().join("requirements.txt"),
            "np==2.0\nmarked==1.0 ; python_version < \"3.12\"\n--no-binary built\nbuilt==1.0\n\
             loose>=1\ncapped\n-c constraints.txt\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("constraints.txt"), "capped<2\n").unwrap();
        let section = PipSection {
            requirements: vec!["requirements.txt".into()],
            index: Some(format!("file://{}", simple.display())),
            isolated: true,
            ..Default::default()
        };
        let http = Http::new().unwrap();
        let held = || -> Vec<String> {
            let held = digests.iter().filter(|(_, d)| cache.contains(d));
            held.map(|(w, _)| w.clone()).collect()
        };
        let hint = PythonHint::new();
        hint.reading(Arch::Amd64);
        hint.saw("/usr/bin/python3.11");
        hint.saw("/usr/lib/x86_64-linux-gnu/libc.so.6");
        let fetch = |stop: bool| {
            let told = std::cell::Cell::new(false);
            let stop = AtomicBool::new(stop);
            prefetch_with_guess(
                &section,
                dir.path(),
                &http,
                &cache,
                || told.set(true),
                &hint,
                &stop,
            );
            assert!(told.get(), "the pages are said to be fetched");
        };
        fetch(true);
        assert!(held().is_empty());
        fetch(false);
        // The pin's wheel for 3.11, and the newest final release the other
        // lines and the constraint allow.
        assert_eq!(
            held(),
            [
                "capped-1.0-py3-none-any.whl",
                "deeper-1.0-py3-none-any.whl",
                "dep-1.2-py3-none-any.whl",
                "loose-1.0-cp311-cp311-manylinux_2_17_x86_64.whl",
                "np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl"
            ]
        );
        // Closed without a guess: the pages alone.
        let (unsure, stop) = (PythonHint::new(), AtomicBool::new(false));
        unsure.close();
        let other = Cache::open(dir.path().join("other")).unwrap();
        prefetch_with_guess(&section, dir.path(), &http, &other, || {}, &unsure, &stop);
        assert!(digests.values().all(|d| !other.contains(d)));
    }

    #[test]
    fn the_best_wheel_for_the_guess_is_the_resolvers() {
        let file = |name: &str, rp: Option<&str>| DistFile {
            filename: name.into(),
            url: format!("https://files.invalid/{name}"),
            sha256: Some("00".repeat(32)),
            requires_python: rp.map(str::to_string),
            yanked: false,
            core_metadata: None,
            size: None,
        };
        let files = vec![
            file("np-2.0-cp310-cp310-manylinux_2_17_x86_64.whl", None),
            file("np-2.0-cp311-cp311-manylinux_2_17_x86_64.whl", None),
            file("np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl", None),
            file("np-2.0-cp311-cp311-musllinux_1_2_x86_64.whl", None),
            file("np-2.0-cp311-cp311-manylinux_2_28_aarch64.whl", None),
            file("np-2.0-py3-none-any.whl", None),
            file("np-1.9-cp311-cp311-manylinux_2_34_x86_64.whl", None),
        ];
        let libc = Libc::Glibc {
            major: 2,
            minor: GUESSED_GLIBC_MINOR,
        };
        let tags = TagSet::cpython(11, "x86_64", &libc);
        let py = Version::new([3, 11]);
        let pin: Version = "2.0".parse().unwrap();
        let best =
            |files: &[DistFile]| best_wheel(files, &pin, &tags, &py).map(|f| f.filename.clone());
        assert_eq!(
            best(&files).as_deref(),
            Some("np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl")
        );
        // Requires-Python, a yanked file and one without a digest are passed over.
        let mut files = files;
        files[2].requires_python = Some(">=3.12".into());
        files[1].yanked = true;
        assert_eq!(best(&files).as_deref(), Some("np-2.0-py3-none-any.whl"));
        files[5].sha256 = None;
        assert_eq!(best(&files), None);

        // With no pin, the newest release with a wheel for this Python: a
        // newer one that needs a newer Python (every file of 2.1) is
        // passed over, and so is a prerelease.
        let mut files = vec![
            file(
                "np-2.1-cp312-cp312-manylinux_2_28_x86_64.whl",
                Some(">=3.12"),
            ),
            file("np-2.1.tar.gz", Some(">=3.12")),
            file("np-2.2rc1-cp311-cp311-manylinux_2_28_x86_64.whl", None),
            file("np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl", None),
            file("np-1.9-cp311-cp311-manylinux_2_28_x86_64.whl", None),
        ];
        let guessed = |files: &[DistFile], specs: &[VersionSpecifiers]| {
            guessed_wheel(files, specs, false, &tags, &py).map(|f| f.filename.clone())
        };
        assert_eq!(
            guessed(&files, &[]).as_deref(),
            Some("np-2.0-cp311-cp311-manylinux_2_28_x86_64.whl")
        );
        let below_2: VersionSpecifiers = "<2".parse().unwrap();
        assert_eq!(
            guessed(&files, &[below_2]).as_deref(),
            Some("np-1.9-cp311-cp311-manylinux_2_28_x86_64.whl")
        );
        // A version the Python can take but with no wheel for it: none.
        files.truncate(2);
        assert_eq!(guessed(&files, &[]), None);
    }
}
