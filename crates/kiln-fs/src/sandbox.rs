//! Run a command in an assembled filesystem without privileges, and turn
//! what it changed into a layer: apt's maintainer scripts (`--run-scripts`)
//! and a Dockerfile's other `RUN` lines (`[[run]]` in a spec) go through
//! here.
//!
//! The tree is written to a scratch directory (from the layers,
//! streaming: [`Sandbox::from_layers`]; or from a filesystem view with
//! every content: [`Sandbox::materialize`]; or, for commands that only
//! read it, once into the cache, mounted read-only: [`SharedTree`]),
//! then kiln starts itself (`kiln __run-script`) in a new user namespace
//! whose id maps the parent writes: as root, ids 0..65536 map to themselves
//! (so `chown root:mail` works and files keep their owners); as another
//! user, only that user maps to 0 (a chown to another account then fails
//! with the command's output). Then new mount, pid, ipc, uts and (with
//! [`Network::None`]) network namespaces; the tree becomes the root by
//! pivot_root, not chroot, so there is no way back to the host's files.
//! Changes are found by comparing inode, ctime, type, mode and owner of
//! every path before and after, so nothing a command touched is missed and
//! nothing else is re-packed. Only for the host's architecture: no
//! emulation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_core::error::{IoContext, Result};
use kiln_core::{Classify, ErrorKind};

use crate::layer::{Entry, EntryKind};
use crate::rootfs::{Node, Rootfs};

mod unpack;

pub use unpack::Paths;
use unpack::{remove_any, write_layers};

/// Not compared: kernel filesystems mounted for the command.
const SKIPPED: &[&str] = &["proc", "sys", "dev"];

/// The PATH a command gets when its environment names none (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Files of the host bound over the tree's own while a command with the
/// host's network runs (name lookups need them), as docker does. They are
/// never part of the layer.
const HOST_NET_FILES: &[&str] = &["etc/resolv.conf", "etc/hosts"];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The parent could not write the child's id maps.
    #[error(
        "{purpose}: could not set up a user namespace (are unprivileged user namespaces enabled?): {stderr}"
    )]
    UserNamespace { purpose: String, stderr: String },
    /// The child was told no id maps were written.
    #[error("no id maps were written for the sandbox")]
    NoIdMaps,
    /// A system-level step failed (a namespace, mount or exec call, reading the tree).
    #[error("{purpose}: {step}: {source}")]
    System {
        purpose: String,
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// The command left something that is not a file, directory or symlink.
    #[error("{purpose}: the command created /{path}, which is not a file, directory or symlink")]
    SpecialFile { purpose: String, path: String },
    /// `USER` names an account the image's /etc/passwd does not have.
    #[error("unable to find user {user}: no matching entries in the image's /etc/passwd")]
    UnknownUser { user: String },
    /// A user other than root, but kiln itself is not root: only one id is mapped.
    #[error(
        "{purpose}: running as user {user} needs kiln to run as root (unprivileged, only root is mapped in the sandbox)"
    )]
    UnmappedUser { purpose: String, user: String },
}

impl Classify for SandboxError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<SandboxError> for kiln_core::Error {
    fn from(e: SandboxError) -> Self {
        kiln_core::Error::typed(e)
    }
}

pub use kiln_spec::spec::Network;

/// One command to run.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// The whole environment (nothing of kiln's own leaks in).
    pub env: Vec<(String, String)>,
    /// `USER`: a name or id, optionally `:group`; `None` is root.
    pub user: Option<String>,
    /// The directory to start in (made when missing, as docker's WORKDIR).
    pub workdir: Option<String>,
    pub network: Network,
}

/// A materialised tree, its snapshot before, and the scratch directory
/// that holds both (removed on drop).
pub struct Sandbox {
    /// Holds the tree; removed when the sandbox is dropped.
    _dir: tempfile::TempDir,
    root: PathBuf,
    euid: u32,
    before: BTreeMap<String, Stamp>,
    /// Files made only so that host files can be bound over them: never
    /// compared, never in a layer.
    placeholders: Vec<String>,
    /// Who is running: `--run-scripts`, `[[run]] 2` … (for messages).
    purpose: String,
}

impl Sandbox {
    /// Write `full` (contents kept for every path) under a new directory
    /// in `tmp` (a filesystem that supports ownership) and take the
    /// snapshot its changes are measured against.
    pub fn materialize(full: &Rootfs, tmp: &Path, purpose: &str) -> Result<Sandbox> {
        let (dir, root, euid) = scratch(tmp)?;
        write_tree(full, &root, purpose)?;
        Self::ready(dir, root, euid, purpose)
    }

    /// Write the tree the layers make (uncompressed tar streams, lowest
    /// first, OCI whiteouts applied) under a new directory in `tmp`,
    /// streaming: nothing is held in memory, and owners are kept (as root;
    /// otherwise everything belongs to kiln's user, which maps to root).
    pub fn from_layers(
        layers: Vec<Box<dyn std::io::Read + '_>>,
        tmp: &Path,
        purpose: &str,
    ) -> Result<Sandbox> {
        let (dir, root, euid) = scratch(tmp)?;
        write_layers(layers, &root, euid, purpose, Paths::All)?;
        Self::ready(dir, root, euid, purpose)
    }

    /// The placeholders and the first snapshot of a written tree.
    fn ready(dir: tempfile::TempDir, root: PathBuf, euid: u32, purpose: &str) -> Result<Sandbox> {
        let before = snapshot(&root, &[], purpose)?;
        Ok(Sandbox {
            _dir: dir,
            root,
            euid,
            before,
            placeholders: Vec::new(),
            purpose: purpose.to_string(),
        })
    }

    /// Empty files where the host's network files are bound and the tree
    /// has none (made before each command: files written since may have
    /// made /etc); never compared, never in a layer.
    fn placeholders(&mut self) -> Result<()> {
        for f in HOST_NET_FILES {
            let p = self.root.join(f);
            if !self.placeholders.iter().any(|x| x == f)
                && fs::symlink_metadata(&p).is_err()
                && p.parent()
                    .is_some_and(|d| fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()))
            {
                fs::write(&p, b"").io_context(|| format!("writing {}", p.display()))?;
                self.placeholders.push(f.to_string());
            }
        }
        Ok(())
    }

    /// The tree on the host (for reading what a command left).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run one command inside; its output is returned whatever its status.
    pub fn run(&mut self, spec: &RunSpec) -> Result<Output> {
        if spec.network == Network::Host {
            self.placeholders()?;
        }
        run(&self.root, self.euid, spec, None, &self.purpose)
    }

    /// What the commands run since the sandbox was made, or since the
    /// last call, changed: new and changed paths, whiteouts for removed
    /// ones (one for the topmost), sorted by path. The next call measures
    /// from here, so each command can be a layer of its own.
    pub fn take_changes(&mut self) -> Result<Vec<Entry>> {
        let after = snapshot(&self.root, &self.placeholders, &self.purpose)?;
        let entries = changes(&self.root, &self.before, &after, self.euid, &self.purpose)?;
        self.before = after;
        Ok(entries)
    }

    /// Write one more layer (an uncompressed tar stream, OCI whiteouts
    /// applied) into the tree, not counted as a change: it is a layer of
    /// its own already.
    pub fn apply_layer(&mut self, layer: Box<dyn std::io::Read + '_>) -> Result<()> {
        write_layers(
            vec![layer],
            &self.root,
            self.euid,
            &self.purpose,
            Paths::All,
        )?;
        self.take_changes()?;
        Ok(())
    }

    /// [`Sandbox::take_changes`], and the scratch directory removed.
    pub fn changes(mut self) -> Result<Vec<Entry>> {
        self.take_changes()
    }
}

/// Where, at the top of a [`SharedTree`], the caller's scratch directory
/// is bound: the only place a command there can write.
pub const SCRATCH_MOUNT: &str = ".kiln-scratch";

/// How many trees the cache keeps: opening a new one drops the least
/// recently used beyond these (each is an image written out, ~200 MB).
const KEPT_TREES: usize = 2;

/// A tree written once from an image's layers and kept in the cache
/// (bucket `trees-v1`, named by the caller's key for those layers and
/// the [`Paths`] it holds), for
/// commands that only read the image: it is mounted read-only and they
/// write in a scratch directory bound at [`SCRATCH_MOUNT`]. Compiling a
/// new wheel's bytecode so needs no image written out (~3 s for a Debian
/// python3) when an earlier build already did.
///
/// An open tree holds a shared lock on `<key>.lock`; a tree is dropped
/// (least recently opened first) only under an exclusive one, so never
/// while a build uses it.
pub struct SharedTree {
    root: PathBuf,
    euid: u32,
    _lock: fs::File,
    purpose: String,
}

impl SharedTree {
    /// The tree of `key` holding `paths`, written from `layers`
    /// (uncompressed tar streams, lowest first) when the cache does not
    /// have it yet.
    pub fn open(
        cache: &kiln_store::Cache,
        key: &kiln_core::digest::Digest,
        layers: impl FnOnce() -> Result<Vec<Box<dyn std::io::Read>>>,
        purpose: &str,
        paths: Paths,
    ) -> Result<SharedTree> {
        use rustix::fs::{flock, FlockOperation};
        let dir = cache.bucket(kiln_store::CacheBucket::Trees);
        fs::create_dir_all(&dir).io_context(|| format!("creating {}", dir.display()))?;
        // A tree of some paths only is another tree.
        let key = match &paths {
            Paths::All => key.clone(),
            Paths::Python { prefix: None } => {
                kiln_core::digest::Digest::of(format!("{key} python files").as_bytes())
            }
            Paths::Python { prefix: Some(p) } => {
                kiln_core::digest::Digest::of(format!("{key} python files and {p}").as_bytes())
            }
        };
        let name = key.hex();
        let lock_path = dir.join(format!("{name}.lock"));
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .io_context(|| format!("opening {}", lock_path.display()))?;
        flock(&lock, FlockOperation::LockShared)
            .map_err(|e| sys(&format!("locking {}", lock_path.display()), e))?;
        // Its mtime says when the tree was last used.
        let _ = lock.set_modified(std::time::SystemTime::now());
        let euid = rustix::process::geteuid().as_raw();
        let root = dir.join(name);
        if !root.is_dir() {
            let tmp = tempfile::Builder::new()
                .prefix(&kiln_store::temp_prefix(".tmp"))
                .tempdir_in(&dir)
                .io_context(|| format!("creating a directory in {}", dir.display()))?;
            let at = tmp.path().join("rootfs");
            write_layers(layers()?, &at, euid, purpose, paths)?;
            for d in DEVICES {
                let p = at.join("dev").join(d);
                if fs::symlink_metadata(&p).is_err() {
                    fs::write(&p, b"").io_context(|| format!("writing {}", p.display()))?;
                }
            }
            let scratch = at.join(SCRATCH_MOUNT);
            remove_any(&scratch);
            fs::create_dir(&scratch).io_context(|| format!("writing {}", scratch.display()))?;
            // Another build may have put the same tree in place meanwhile: keep theirs.
            if let Err(e) = fs::rename(&at, &root) {
                if !root.is_dir() {
                    return Err(e).io_context(|| format!("writing {}", root.display()));
                }
            }
            let _ = remove_tree(tmp.path());
            evict(&dir, name);
        }
        Ok(SharedTree {
            root,
            euid,
            _lock: lock,
            purpose: purpose.to_string(),
        })
    }

    /// The tree on the host (read it; never write it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Run one command over the read-only tree, `scratch` (a host
    /// directory) bound at [`SCRATCH_MOUNT`]; its output is returned
    /// whatever its status.
    pub fn run(&self, spec: &RunSpec, scratch: &Path) -> Result<Output> {
        run(&self.root, self.euid, spec, Some(scratch), &self.purpose)
    }

    /// Remove the cache's trees no build has open (`kiln cache gc`), or
    /// with `dry_run` only list them; returns each one's name (relative
    /// to the cache) and size.
    pub fn remove_unused(cache: &kiln_store::Cache, dry_run: bool) -> Vec<(String, u64)> {
        let dir = cache.bucket(kiln_store::CacheBucket::Trees);
        let bucket = kiln_store::CacheBucket::Trees.dir_name();
        let mut out = Vec::new();
        for name in tree_names(&dir) {
            if let Some(size) = drop_tree(&dir, &name, Removal::Measured { dry_run }) {
                out.push((format!("{bucket}/{name}"), size));
            }
        }
        out
    }
}

/// The device nodes [`enter_and_exec`] binds from the host.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// The trees in the bucket `dir` (directories named by a lock beside them).
fn tree_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".lock")
                .map(String::from)
        })
        .filter(|n| dir.join(n).is_dir())
        .collect()
}

/// Drop the least recently used trees of `dir` beyond [`KEPT_TREES`],
/// `keep` (just made) aside; a tree some build has open stays.
fn evict(dir: &Path, keep: &str) {
    let mut trees: Vec<(std::time::SystemTime, String)> = tree_names(dir)
        .into_iter()
        .filter(|n| n != keep)
        .filter_map(|n| {
            let used = fs::metadata(dir.join(format!("{n}.lock")))
                .and_then(|m| m.modified())
                .ok()?;
            Some((used, n))
        })
        .collect();
    trees.sort_by(|a, b| b.cmp(a));
    for (_, name) in trees.into_iter().skip(KEPT_TREES.saturating_sub(1)) {
        drop_tree(dir, &name, Removal::Unmeasured);
    }
}

/// How [`drop_tree`] goes: `kiln cache gc` reports each tree's size (and
/// may only list it); eviction during a build needs no size, and walking
/// a tree of ~11k files for one would be wasted.
#[derive(Clone, Copy)]
enum Removal {
    Measured { dry_run: bool },
    Unmeasured,
}

/// Remove the tree `name` of `dir` unless a build has it open: it is
/// renamed to a temporary first, so a half-removed tree is never used
/// (and a killed removal is finished by the next `Cache::open`).
/// Returns its size (0 when [`Removal::Unmeasured`]) when it was (or, with
/// `dry_run`, could be) removed.
fn drop_tree(dir: &Path, name: &str, how: Removal) -> Option<u64> {
    use rustix::fs::{flock, FlockOperation};
    let lock = fs::File::options()
        .write(true)
        .open(dir.join(format!("{name}.lock")))
        .ok()?;
    flock(&lock, FlockOperation::NonBlockingLockExclusive).ok()?;
    let root = dir.join(name);
    let size = match how {
        Removal::Measured { .. } => walkdir::WalkDir::new(&root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
        Removal::Unmeasured => 0,
    };
    if let Removal::Measured { dry_run: true } = how {
        return Some(size);
    }
    let doomed = dir.join(format!("{}{name}", kiln_store::temp_prefix(".tmp")));
    fs::rename(&root, &doomed).ok()?;
    let _ = remove_tree(&doomed);
    Some(size)
}

/// `remove_dir_all`, after making every directory writable by its owner
/// (an image's read-only directories would stop it otherwise).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    for e in walkdir::WalkDir::new(path).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o700));
        }
    }
    fs::remove_dir_all(path)
}

/// Run `spec` over `root` in new namespaces (`kiln __run-script`); with
/// `scratch`, the tree is read-only and the scratch directory is bound at
/// [`SCRATCH_MOUNT`].
fn run(
    root: &Path,
    euid: u32,
    spec: &RunSpec,
    scratch: Option<&Path>,
    purpose: &str,
) -> Result<Output> {
    if let Some(user) = &spec.user {
        if euid != 0 && !is_root(user) {
            return Err(SandboxError::UnmappedUser {
                purpose: purpose.to_string(),
                user: user.clone(),
            }
            .into());
        }
    }
    let how = Inside {
        network: spec.network,
        user: spec.user.clone(),
        workdir: spec.workdir.clone(),
        scratch: scratch.map(Path::to_path_buf),
    };
    let mut cmd = Command::new(own_binary()?);
    cmd.arg("__run-script")
        .args(how.args())
        .arg(root)
        .args(&spec.argv)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    run_in_namespace(cmd, euid, purpose)
}

/// The running kiln, to start again as `kiln __run-script`: through
/// `/proc/self/exe`, which still reaches the binary when its file was
/// replaced or removed since it started (an upgrade, a rebuild), where its
/// path no longer does.
fn own_binary() -> Result<PathBuf> {
    let proc = Path::new("/proc/self/exe");
    if proc.exists() {
        return Ok(proc.to_path_buf());
    }
    std::env::current_exe().io_context(|| "finding kiln's own binary".to_string())
}

fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or(user);
    name == "root" || name == "0"
}

/// Parent side: start `cmd` (`kiln __run-script …`), wait until it has
/// entered its user namespace, write the id maps, then let it go on.
fn run_in_namespace(mut cmd: Command, euid: u32, purpose: &str) -> Result<Output> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .io_context(|| "starting kiln __run-script".to_string())?;
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let own = fs::read_link("/proc/self/ns/user").ok();
    let mut entered = false;
    for _ in 0..5000 {
        let ns = fs::read_link(proc_dir.join("ns/user")).ok();
        if ns.is_some() && ns != own {
            entered = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mapped = entered
        && (|| -> std::io::Result<()> {
            if euid == 0 {
                fs::write(proc_dir.join("uid_map"), "0 0 65536\n")?;
                fs::write(proc_dir.join("gid_map"), "0 0 65536\n")?;
            } else {
                fs::write(proc_dir.join("setgroups"), "deny")?;
                fs::write(proc_dir.join("uid_map"), format!("0 {euid} 1\n"))?;
                fs::write(proc_dir.join("gid_map"), format!("0 {euid} 1\n"))?;
            }
            Ok(())
        })()
        .is_ok();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(if mapped { b"go\n" } else { b"no\n" });
    }
    let out = child
        .wait_with_output()
        .io_context(|| "waiting for kiln __run-script".to_string())?;
    if !mapped {
        return Err(SandboxError::UserNamespace {
            purpose: purpose.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(out)
}

/// A failed system call of the namespace set-up, said plainly.
fn sys(what: &str, e: impl Into<std::io::Error>) -> SandboxError {
    SandboxError::System {
        purpose: "sandbox".to_string(),
        step: what.to_string(),
        source: e.into(),
    }
}

/// How `kiln __run-script` was asked to run its command.
#[derive(Debug, Clone, Default)]
pub struct Inside {
    pub network: Network,
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// A host directory bound read-write at [`SCRATCH_MOUNT`], the tree
    /// then mounted read-only (a [`SharedTree`]).
    pub scratch: Option<PathBuf>,
}

impl Inside {
    /// The flags `kiln __run-script` is given for this.
    fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["--network".into(), self.network.as_str().into()];
        if let Some(u) = &self.user {
            a.extend(["--user".into(), u.into()]);
        }
        if let Some(w) = &self.workdir {
            a.extend(["--workdir".into(), w.into()]);
        }
        if let Some(s) = &self.scratch {
            a.extend(["--scratch".into(), s.into()]);
        }
        a
    }
}

/// `kiln __run-script ROOT PROGRAM ARGS...`, first half: enter a new user
/// namespace, wait for the parent's id maps, then new mount, pid, ipc, uts
/// (and network) namespaces, and run the second half as pid 1 there.
/// Returns the exit code to leave with.
pub fn namespace_stage(root: &Path, how: &Inside, program: &str, args: &[String]) -> Result<i32> {
    use rustix::thread::{unshare_unsafe, UnshareFlags};
    use std::io::BufRead;
    // SAFETY: kiln is single-threaded here (nothing else has started), and
    // no file table is unshared.
    unsafe { unshare_unsafe(UnshareFlags::NEWUSER) }
        .map_err(|e| sys("creating a user namespace", e))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .io_context(|| "waiting for the id maps".to_string())?;
    if line.trim() != "go" {
        return Err(SandboxError::NoIdMaps.into());
    }
    let mut flags =
        UnshareFlags::NEWNS | UnshareFlags::NEWPID | UnshareFlags::NEWIPC | UnshareFlags::NEWUTS;
    if how.network == Network::None {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: as above.
    unsafe { unshare_unsafe(flags) }.map_err(|e| sys("creating namespaces", e))?;
    let mut cmd = Command::new(own_binary()?);
    cmd.arg("__run-script").arg("--inside").args(how.args());
    let status = cmd
        .arg(root)
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .status()
        .io_context(|| "starting the command".to_string())?;
    Ok(status.code().unwrap_or(128))
}

/// Second half, pid 1 of the new namespaces: make ROOT the root with
/// pivot_root (unlike chroot, there is no way back to the host's tree),
/// with /proc, a few host device nodes and (host network) the host's
/// resolv.conf and hosts, then exec PROGRAM as the user in the directory
/// asked for. Returns only on failure.
pub fn enter_and_exec(root: &Path, how: &Inside, program: &str, args: &[String]) -> Result<()> {
    use rustix::mount::{
        mount, mount_bind, mount_change, unmount, MountFlags, MountPropagationFlags, UnmountFlags,
    };
    use std::os::unix::process::CommandExt;
    // Nothing mounted here may reach the host's mount table.
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| sys("making mounts private", e))?;
    mount_bind(root, root).map_err(|e| sys("bind-mounting the root", e))?;
    std::env::set_current_dir(root).io_context(|| format!("entering {}", root.display()))?;
    mount("proc", "proc", "proc", MountFlags::empty(), None)
        .map_err(|e| sys("mounting /proc", e))?;
    for d in DEVICES {
        let inside = Path::new("dev").join(d);
        if fs::symlink_metadata(&inside).is_err() {
            fs::write(&inside, b"").io_context(|| format!("creating /dev/{d}"))?;
        }
        mount_bind(Path::new("/dev").join(d), &inside)
            .map_err(|e| sys(&format!("binding /dev/{d}"), e))?;
    }
    if let Some(scratch) = &how.scratch {
        mount_bind(scratch, SCRATCH_MOUNT).map_err(|e| {
            sys(
                &format!("binding the scratch directory at /{SCRATCH_MOUNT}"),
                e,
            )
        })?;
    }
    if how.scratch.is_some() {
        // The mount the root sits on may carry flags a user namespace
        // cannot drop (nosuid, nodev, noexec, atime): keep them.
        let st = rustix::fs::statvfs(".").map_err(|e| sys("reading the root's mount flags", e))?;
        let mut flags = MountFlags::BIND | MountFlags::RDONLY;
        for (has, flag) in [
            (rustix::fs::StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (rustix::fs::StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (rustix::fs::StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
            (rustix::fs::StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
            (
                rustix::fs::StatVfsMountFlags::NODIRATIME,
                MountFlags::NODIRATIME,
            ),
        ] {
            if st.f_flag.contains(has) {
                flags |= flag;
            }
        }
        rustix::mount::mount_remount(".", flags, "")
            .map_err(|e| sys("making the tree read-only", e))?;
    }
    if how.network == Network::Host {
        for f in HOST_NET_FILES {
            let host = Path::new("/").join(f);
            // Only over a regular file of the tree's (materialize made one
            // where it had none); a symlink there is not followed out.
            let is_file = fs::symlink_metadata(f).is_ok_and(|m| m.is_file());
            if is_file && host.is_file() {
                let inside = Path::new(f);
                mount_bind(&host, inside).map_err(|e| sys(&format!("binding /{f}"), e))?;
                // Read-only: the command must not write the host's file.
                rustix::mount::mount_remount(inside, MountFlags::BIND | MountFlags::RDONLY, "")
                    .map_err(|e| sys(&format!("making /{f} read-only"), e))?;
            }
        }
    }
    rustix::process::pivot_root(".", ".").map_err(|e| sys("pivot_root", e))?;
    unmount(".", UnmountFlags::DETACH).map_err(|e| sys("detaching the host's root", e))?;
    std::env::set_current_dir("/").io_context(|| "entering /".to_string())?;

    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    let mut home = None;
    if let Some(user) = &how.user {
        let (uid, gid, dir) = lookup_user(user)?;
        cmd.uid(uid).gid(gid);
        home = dir;
    }
    if std::env::var_os("HOME").is_none() {
        cmd.env(
            "HOME",
            home.unwrap_or_else(|| match &how.user {
                Some(u) if !is_root(u) => "/".to_string(),
                _ => "/root".to_string(),
            }),
        );
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if let Some(w) = &how.workdir {
        fs::create_dir_all(w).io_context(|| format!("making the working directory {w}"))?;
        cmd.current_dir(w);
    }
    let err = cmd.exec();
    Err(SandboxError::System {
        purpose: "sandbox".to_string(),
        step: format!("running {program}"),
        source: err,
    }
    .into())
}

/// `USER` as docker reads it: `name|uid[:group|gid]`, names from the
/// image's /etc/passwd and /etc/group. Returns (uid, gid, home).
fn lookup_user(user: &str) -> Result<(u32, u32, Option<String>)> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 7 && (f[0] == u || f[2] == u)).then(|| {
            (
                f[2].parse::<u32>().ok(),
                f[3].parse::<u32>().ok(),
                f[5].to_string(),
            )
        })
    });
    let (uid, default_gid, home) = match (u.parse::<u32>(), entry) {
        (_, Some((Some(uid), gid, home))) => (uid, gid.unwrap_or(uid), Some(home)),
        (Ok(uid), _) => (uid, uid, None),
        (Err(_), _) => {
            return Err(SandboxError::UnknownUser {
                user: u.to_string(),
            }
            .into())
        }
    };
    let gid = match g {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => fs::read_to_string("/etc/group")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g)
                        .then(|| f[2].parse::<u32>().ok())
                        .flatten()
                })
                .ok_or_else(|| SandboxError::UnknownUser {
                    user: format!("{u}:{g}"),
                })?,
        },
    };
    Ok((uid, gid, home))
}

/// A new scratch directory in `tmp` for a tree, and who kiln runs as.
fn scratch(tmp: &Path) -> Result<(tempfile::TempDir, PathBuf, u32)> {
    let dir = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix("sandbox"))
        .tempdir_in(tmp)
        .io_context(|| format!("creating a directory in {}", tmp.display()))?;
    let root = dir.path().join("rootfs");
    // Who kiln runs as: the owner of the directory it just made.
    let euid = fs::metadata(dir.path())
        .io_context(|| format!("reading {}", dir.path().display()))?
        .uid();
    Ok((dir, root, euid))
}

/// Mount points and /tmp, so a command's run adds none of them to a layer.
fn mount_points(root: &Path, purpose: &str) -> Result<()> {
    let io = |what: &Path| format!("{purpose}: writing {}", what.display());
    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
    ] {
        let p = root.join(d);
        if fs::symlink_metadata(&p).is_err() {
            fs::create_dir(&p).io_context(|| io(&p))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).io_context(|| io(&p))?;
        }
    }
    Ok(())
}

/// Write the filesystem view to `root`. Nothing is written through a
/// symlink: an entry below one is skipped.
fn write_tree(full: &Rootfs, root: &Path, purpose: &str) -> Result<()> {
    let io = |what: &Path| format!("{purpose}: writing {}", what.display());
    fs::create_dir_all(root).io_context(|| io(root))?;
    let mut links: HashSet<String> = HashSet::new();
    let mut dir_modes = Vec::new();
    for (path, node) in full.paths() {
        let below_link = path
            .match_indices('/')
            .skip(1)
            .any(|(i, _)| links.contains(&path[..i]));
        if below_link {
            continue;
        }
        let dst = root.join(path.trim_start_matches('/'));
        match node {
            Node::Dir => {
                fs::create_dir_all(&dst).io_context(|| io(&dst))?;
                if let Some(mode) = full.dir_mode(path) {
                    dir_modes.push((dst, mode));
                }
            }
            Node::File { mode, content, .. } => {
                fs::write(&dst, content.as_deref().unwrap_or_default()).io_context(|| io(&dst))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode & 0o7777))
                    .io_context(|| io(&dst))?;
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(target, &dst).io_context(|| io(&dst))?;
                links.insert(path.clone());
            }
            Node::Other => {} // devices and fifos: not recreated
        }
    }
    // The layers' directory modes (a sticky /tmp stays sticky), so a
    // command that touches a directory puts it in its layer as it was;
    // set last, deepest first, so a read-only one was still writable.
    for (dst, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dst, fs::Permissions::from_mode(*mode)).io_context(|| io(dst))?;
    }
    mount_points(root, purpose)
}

/// What identifies a path's state: a change to any of it means a command touched it.
#[derive(PartialEq, Eq)]
struct Stamp {
    ino: u64,
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

fn snapshot(root: &Path, skip: &[String], purpose: &str) -> Result<BTreeMap<String, Stamp>> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !SKIPPED.iter().any(|s| e.file_name() == *s));
    for e in walk {
        let reading = |e: walkdir::Error| SandboxError::System {
            purpose: purpose.to_string(),
            step: "reading the tree".into(),
            source: e.into(),
        };
        let e = e.map_err(reading)?;
        let md = e.metadata().map_err(reading)?;
        let Ok(rel) = e.path().strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        if skip.contains(&rel) {
            continue;
        }
        out.insert(
            rel,
            Stamp {
                ino: md.ino(),
                ctime: (md.ctime(), md.ctime_nsec()),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
            },
        );
    }
    Ok(out)
}

/// Layer entries for what changed between two snapshots.
fn changes(
    root: &Path,
    before: &BTreeMap<String, Stamp>,
    after: &BTreeMap<String, Stamp>,
    euid: u32,
    purpose: &str,
) -> Result<Vec<Entry>> {
    // As root the ids map to themselves; otherwise only kiln's user (as 0).
    let id = |host: u32| if euid == 0 { u64::from(host) } else { 0 };
    let mut entries = Vec::new();
    for (rel, stamp) in after {
        if before.get(rel) == Some(stamp) {
            continue;
        }
        let p = root.join(rel);
        let md = fs::symlink_metadata(&p).io_context(|| format!("reading {}", p.display()))?;
        let kind = if md.is_dir() {
            EntryKind::Dir
        } else if md.file_type().is_symlink() {
            EntryKind::Symlink {
                target: fs::read_link(&p)
                    .io_context(|| format!("reading {}", p.display()))?
                    .to_string_lossy()
                    .into_owned(),
            }
        } else if md.is_file() {
            EntryKind::Data(std::sync::Arc::new(
                fs::read(&p).io_context(|| format!("reading {}", p.display()))?,
            ))
        } else {
            return Err(SandboxError::SpecialFile {
                purpose: purpose.to_string(),
                path: rel.clone(),
            }
            .into());
        };
        entries.push(Entry {
            path: rel.clone(),
            kind,
            mode: md.mode() & 0o7777,
            uid: id(md.uid()),
            gid: id(md.gid()),
        });
    }
    // Removed paths: one whiteout for the topmost.
    let mut removed: BTreeSet<&str> = BTreeSet::new();
    for rel in before.keys() {
        if after.contains_key(rel) {
            continue;
        }
        let parent_gone = rel
            .match_indices('/')
            .any(|(i, _)| removed.contains(&rel[..i]));
        if !parent_gone {
            removed.insert(rel);
            entries.push(Entry::whiteout(rel));
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new tree pushes out the least recently used ones beyond
    /// [`KEPT_TREES`], except one a build has open; `kiln cache gc` lists
    /// (dry run) then removes what no build has open, with sizes.
    #[test]
    fn eviction_keeps_the_newest_and_the_open_trees() {
        use rustix::fs::{flock, FlockOperation};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        let lock = |n: &str| {
            fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(d.join(format!("{n}.lock")))
                .unwrap()
        };
        // Oldest first: a, b (open by a build), c, then new (just made).
        for (i, n) in ["a", "b", "c", "new"].iter().enumerate() {
            fs::create_dir_all(d.join(n).join("usr")).unwrap();
            fs::write(d.join(n).join("usr/f"), vec![0u8; 10 * (i + 1)]).unwrap();
            lock(n)
                .set_modified(t0 + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        let open = lock("b");
        flock(&open, FlockOperation::LockShared).unwrap();
        evict(d, "new");
        let mut left = tree_names(d);
        left.sort();
        // c is the newest other tree (KEPT_TREES = 2 with new); b is open.
        assert_eq!(left, ["b", "c", "new"]);
        assert!(!d.join("a").exists());
        // No half-removed tree is left behind under its own name.
        assert!(fs::read_dir(d)
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")));

        let gc = |dry_run| {
            let mut v: Vec<(String, u64)> = tree_names(d)
                .into_iter()
                .filter_map(|n| drop_tree(d, &n, Removal::Measured { dry_run }).map(|s| (n, s)))
                .collect();
            v.sort();
            v
        };
        let listed = gc(true);
        assert_eq!(listed, [("c".to_string(), 30), ("new".to_string(), 40)]);
        assert_eq!(gc(false), listed);
        assert_eq!(tree_names(d), ["b"]);
        drop(open);
    }

    #[test]
    fn a_command_leaving_a_special_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let before = snapshot(dir.path(), &[], "[[run]] 1").unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let after = snapshot(dir.path(), &[], "[[run]] 1").unwrap();
        let e = changes(dir.path(), &before, &after, 0, "[[run]] 1").unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<SandboxError>(),
                Some(SandboxError::SpecialFile { path, .. }) if path == "sock"
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "[[run]] 1: the command created /sock, which is not a file, directory or symlink"
        );
    }

    #[test]
    fn removed_trees_get_one_whiteout_and_changes_are_sorted() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("a/b/c"), b"x").unwrap();
        fs::write(dir.path().join("keep"), b"k").unwrap();
        let before = snapshot(dir.path(), &[], "t").unwrap();
        fs::remove_dir_all(dir.path().join("a")).unwrap();
        fs::write(dir.path().join("new"), b"n").unwrap();
        let after = snapshot(dir.path(), &[], "t").unwrap();
        let e = changes(dir.path(), &before, &after, 0, "t").unwrap();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, [".wh.a", "new"], "{e:?}");
    }

    #[test]
    fn network_modes_parse_as_docker_spells_them() {
        assert_eq!("host".parse::<Network>().unwrap(), Network::Host);
        assert_eq!("none".parse::<Network>().unwrap(), Network::None);
        assert!("bridge"
            .parse::<Network>()
            .unwrap_err()
            .contains("host or none"));
    }
}
