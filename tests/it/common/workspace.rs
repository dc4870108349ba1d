//! Scratch space: unique dirs and repo names, per-test [`Workspace`]s, listing and copying trees.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::kiln;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// `$KILN_TEST_SCRATCH/kiln-it/<pid>`, or under `$CARGO_TARGET_TMPDIR`
/// when that is unset; created once per test process. `make test` points
/// `KILN_TEST_SCRATCH` at a tmpfs when there is one with room: the suite
/// writes and removes millions of files (unpacked images, sandboxes), and
/// a third of its CPU went to the disk file system's inode work.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        process_root(match std::env::var_os("KILN_TEST_SCRATCH") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        })
    })
}

/// `base/kiln-it/<pid>`, made, after removing what test processes that no
/// longer run left under `base/kiln-it`.
fn process_root(base: PathBuf) -> PathBuf {
    let base = base.join("kiln-it");
    fs::create_dir_all(&base).expect("create scratch base");
    if let Ok(rd) = fs::read_dir(&base) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(pid) = name.parse::<u32>() {
                if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let root = base.join(std::process::id().to_string());
    fs::create_dir_all(&root).expect("create scratch root");
    root
}

/// A new, empty, uniquely named directory at a short path (`/tmp/kiln-it/<pid>/…`),
/// for what holds Unix sockets: a socket's path holds at most 107 bytes,
/// and the scratch root may be deep in a checkout (gpg-agent, whose
/// sockets go in its GnuPG home, did not start under
/// `/tmp/ci-clone52/target/x86_64-unknown-linux-gnu/tmp/kiln-it/…`).
pub fn short_dir(label: &str) -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    let root = ROOT.get_or_init(|| process_root(PathBuf::from("/tmp")));
    made(root.join(format!("{label}-{}", next_id())))
}

/// A new, empty, uniquely named directory under the scratch root.
pub fn unique_dir(label: &str) -> PathBuf {
    made(unique_path(label))
}

/// `p`, created.
fn made(p: PathBuf) -> PathBuf {
    fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    p
}

/// A path under the scratch root that does not exist yet.
pub fn unique_path(label: &str) -> PathBuf {
    scratch_root().join(format!("{label}-{}", next_id()))
}

/// A repository name that no other test (in any test binary) uses.
pub fn unique_repo(label: &str) -> String {
    let clean: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    format!("kiln-it/{clean}-{}-{}", std::process::id(), next_id())
}

/// Per-test working directory. Removed on drop unless the test is failing
/// (then it is kept and its path printed) or `KILN_TEST_KEEP` is set.
pub struct Workspace {
    path: PathBuf,
}

impl Workspace {
    pub fn new(label: &str) -> Workspace {
        Workspace {
            path: unique_dir(label),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Write a file (parents created) and set its permission bits.
    pub fn write_mode(&self, rel: &str, contents: impl AsRef<[u8]>, mode: u32) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// Write a file with mode 0644.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        self.write_mode(rel, contents, 0o644)
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> PathBuf {
        let p = self.join(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    pub fn symlink(&self, rel: &str, target: &str) -> PathBuf {
        let p = self.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        std::os::unix::fs::symlink(target, &p).unwrap();
        p
    }

    /// Write `kiln.toml` (or another name) in the workspace.
    pub fn spec(&self, toml: &str) -> PathBuf {
        self.write("kiln.toml", toml)
    }

    /// `kiln` with cwd = this workspace and a fresh cache.
    pub fn kiln(&self) -> Command {
        let mut c = kiln();
        c.current_dir(&self.path);
        c
    }

    /// Names of the entries directly in the workspace, sorted.
    pub fn listing(&self) -> Vec<String> {
        list_dir(&self.path)
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KILN_TEST_KEEP").is_some() {
            eprintln!("kiln tests: keeping workspace {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Copy a directory tree (files keep their permission bits; symlinks copied
/// as symlinks).
pub fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let to = dst.join(e.file_name());
        if ft.is_dir() {
            copy_dir(&e.path(), &to);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &to).unwrap();
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Replace every FROM with TO in the text file at PATH.
pub fn rewrite(path: &Path, from: &str, to: &str) {
    let text = fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{} does not mention {from:?}",
        path.display()
    );
    fs::write(path, text.replace(from, to)).unwrap();
}
