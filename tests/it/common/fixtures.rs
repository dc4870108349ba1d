//! Expensive images built once per test run and shared by the modules that
//! only need them as a base: a Debian minbase and a Debian python3 on top of
//! it, both bootstrapped by kiln from the host's apt sources, plus a warm
//! kiln cache for builds that do not test cold behaviour.
//!
//! Several modules used to bootstrap the same Debian each (minutes of the
//! suite's time on two cores). Tests whose subject is the bootstrap itself
//! (apt_debian, debian_realism, offline_network, the examples) still make
//! their own.
//!
//! "Once per run": under `cargo test` (one process) the images live under
//! the process's scratch root; under nextest (one process per test) they
//! live in a directory named by `NEXTEST_RUN_ID`, built by the first process
//! that holds its file lock. A failed build is remembered, and every test
//! that needs the image panics with its message instead of building again.
//!
//! The images are read-only for their users: tests that may write next to a
//! base copy it ([`SharedImage::copy_to`]). The warm cache is shared by
//! concurrent kiln processes, which kiln supports (content-addressed blobs,
//! written to a temporary file and renamed).

use std::fs::{self, File};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use super::{copy_dir, kiln, run, scratch_root};

/// An OCI layout holding one image under `tag`.
pub struct SharedImage {
    pub layout: PathBuf,
    pub tag: &'static str,
}

impl SharedImage {
    /// `oci:LAYOUT:TAG`, for a spec's `base` or a Dockerfile's FROM.
    pub fn reference(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// Copy the layout to DST (a test's own copy, for relative references
    /// such as `FROM oci:base:base`).
    pub fn copy_to(&self, dst: &Path) {
        copy_dir(&self.layout, dst);
    }
}

/// Where the shared images and cache live: per nextest run, else per process.
fn shared_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = match std::env::var("NEXTEST_RUN_ID") {
            Ok(id) if !id.is_empty() && !id.contains('/') => {
                let base = scratch_root().parent().unwrap().to_path_buf();
                let root = base.join(format!("nextest-{id}"));
                fs::create_dir_all(&root)
                    .unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
                hold_run(&root);
                remove_finished_runs(&base, &root);
                root
            }
            _ => scratch_root().join("shared"),
        };
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        root
    })
}

/// Mark this process as a user of the nextest run's directory for its
/// lifetime: a shared lock on `users.lock`, whose mtime says when a test
/// of the run last started.
fn hold_run(root: &Path) {
    static HELD: OnceLock<File> = OnceLock::new();
    let path = root.join("users.lock");
    let f = File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let _ = f.set_modified(SystemTime::now());
    f.lock_shared()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    let _ = HELD.set(f);
}

/// Remove what finished nextest runs shared (about 1 GB each): no process
/// holds their `users.lock` and none started for ten minutes.
fn remove_finished_runs(base: &Path, ours: &Path) {
    let Ok(rd) = fs::read_dir(base) else { return };
    for e in rd.flatten() {
        let dir = e.path();
        if dir == ours || !e.file_name().to_string_lossy().starts_with("nextest-") {
            continue;
        }
        let older_than = |p: &Path, secs: u64| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age > Duration::from_secs(secs))
        };
        let users_path = dir.join("users.lock");
        let finished = match File::open(&users_path) {
            Ok(users) => older_than(&users_path, 600) && users.try_lock().is_ok(),
            // (A run before users.lock existed: a day old.)
            Err(_) => older_than(&dir, 24 * 3600),
        };
        if finished {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// A kiln cache shared by the whole run, warmed by the shared images'
/// builds (their Debian packages and indexes). Only for builds whose
/// assertions hold whatever the cache holds; never for cold-cache checks
/// or checks on the cache's contents.
pub fn warm_cache() -> PathBuf {
    let dir = shared_root().join("cache");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Build the shared directory NAME once per run with BUILD (given the empty
/// directory); the result, or the failure's message, is kept.
fn build_once(name: &str, build: impl FnOnce(&Path)) -> Result<PathBuf, String> {
    let root = shared_root();
    let dir = root.join(name);
    let lock_path = root.join(format!("{name}.lock"));
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // Other processes of a nextest run wait here while one builds.
    lock.lock()
        .map_err(|e| format!("lock {}: {e}", lock_path.display()))?;
    let done = root.join(format!("{name}.done"));
    let failed = root.join(format!("{name}.failed"));
    if done.exists() {
        return Ok(dir);
    }
    if let Ok(msg) = fs::read_to_string(&failed) {
        return Err(msg);
    }
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    match catch_unwind(AssertUnwindSafe(|| build(&dir))) {
        Ok(()) => {
            fs::write(&done, "").map_err(|e| format!("{}: {e}", done.display()))?;
            Ok(dir)
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(no message)".into());
            let _ = fs::write(&failed, &msg);
            Err(msg)
        }
    }
}

/// The image of a once-built fixture, or a panic naming the fixture and why
/// it failed (in every test that needs it).
#[track_caller]
fn expect(built: &'static Result<SharedImage, String>, name: &str) -> &'static SharedImage {
    match built {
        Ok(image) => image,
        Err(msg) => panic!("the shared fixture `{name}` could not be built:\n{msg}"),
    }
}

/// `kiln build --quiet --no-sbom` of DIR/kiln.toml into DIR/layout, with
/// the warm cache.
fn kiln_build_layout(dir: &Path, spec: &str) {
    fs::write(dir.join("kiln.toml"), spec).unwrap();
    run(kiln()
        .current_dir(dir)
        .env("KILN_CACHE", warm_cache())
        .args(["build", "--quiet", "--no-sbom", "-o", "oci:layout"]))
    .ok();
}

/// The condition of every test that bootstraps Debian: the host's apt
/// sources name a mirror (kiln finds it there; none is written here).
#[track_caller]
pub fn ensure_host_sources() {
    let has = Path::new("/etc/apt/sources.list.d")
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
        || fs::read_to_string("/etc/apt/sources.list")
            .map(|s| s.contains("deb "))
            .unwrap_or(false);
    assert!(
        has,
        "this test uses the host's apt sources to find a Debian mirror; none are configured"
    );
}

/// Debian minbase (`[apt] bootstrap = "minbase"`, no other package) from
/// the host's apt sources, tagged `base`, for the host's platform.
#[track_caller]
pub fn debian_minbase() -> &'static SharedImage {
    expect(minbase_built(), "debian-minbase")
}

fn minbase_built() -> &'static Result<SharedImage, String> {
    static CELL: OnceLock<Result<SharedImage, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let dir = build_once("debian-minbase", |dir| {
            ensure_host_sources();
            kiln_build_layout(
                dir,
                "[image]\ntags = [\"base\"]\n[apt]\nbootstrap = \"minbase\"\n",
            );
        })?;
        Ok(SharedImage {
            layout: dir.join("layout"),
            tag: "base",
        })
    })
}

/// Debian's python3 (from apt, the host's sources) on [`debian_minbase`],
/// tagged `py`, for the host's platform. No bytecode (Debian ships none
/// and no maintainer script runs).
#[track_caller]
pub fn debian_python3() -> &'static SharedImage {
    static CELL: OnceLock<Result<SharedImage, String>> = OnceLock::new();
    let built = CELL.get_or_init(|| {
        let base = minbase_built()
            .as_ref()
            .map_err(|msg| format!("its base, the shared `debian-minbase`, failed:\n{msg}"))?;
        let dir = build_once("debian-python3", |dir| {
            kiln_build_layout(
                dir,
                &format!(
                    "[image]\ntags = [\"py\"]\nbase = \"{}\"\n[apt]\npackages = [\"python3\"]\n",
                    base.reference()
                ),
            );
        })?;
        Ok(SharedImage {
            layout: dir.join("layout"),
            tag: "py",
        })
    });
    expect(built, "debian-python3")
}
