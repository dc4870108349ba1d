//! Writing an image's layers out as a directory tree (a sandbox's root, a
//! [`super::SharedTree`]). One thread reads the tar streams in order and
//! makes directories, symlinks and hard links; regular files are created
//! by writer threads beside it. Making inodes is most of the cost (about
//! 11 500 for a Debian python3 base, 4 s on one core of an ext4 that has
//! freed many lately), and two threads make them about twice as fast.
//!
//! The result is the same as writing every member in order: a member that
//! could meet a file still queued (the same path again, a whiteout, a hard
//! link, a new directory at a queued path) first waits for the queue, and
//! so does the end of each layer.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use kiln_core::error::{IoContext, Result};

use super::SandboxError;

/// Files up to this size are read into memory and queued; larger ones are
/// copied by the reading thread itself, so the queue holds at most
/// [`QUEUE`] × this (16 MiB).
const QUEUED_MAX: u64 = 256 << 10;
const QUEUE: usize = 64;

/// A regular file for a writer thread.
struct Job {
    dst: PathBuf,
    data: Vec<u8>,
    mode: u32,
    owner: Option<(u32, u32)>,
}

/// Files sent and not yet written, and the first error a writer met.
#[derive(Default)]
struct Queue {
    state: Mutex<(usize, Option<kiln_core::Error>)>,
    drained: Condvar,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, Option<kiln_core::Error>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self, jobs: &Mutex<Receiver<Job>>, purpose: &str) {
        loop {
            let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(job) = job else { return };
            let written =
                write_file(&job).io_context(|| format!("{purpose}: writing {}", job.dst.display()));
            let mut state = self.lock();
            if let Err(e) = written {
                state.1.get_or_insert(e);
            }
            state.0 -= 1;
            if state.0 == 0 {
                self.drained.notify_all();
            }
        }
    }
}

fn write_file(job: &Job) -> std::io::Result<()> {
    remove_any(&job.dst);
    let mut f = fs::File::create(&job.dst)?;
    f.write_all(&job.data)?;
    f.set_permissions(fs::Permissions::from_mode(job.mode))?;
    if let Some((uid, gid)) = job.owner {
        let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
    }
    Ok(())
}

/// The reading side: the tree's root, who writes it, and what is queued.
struct Unpacker<'a> {
    root: &'a Path,
    euid: u32,
    purpose: &'a str,
    paths: Paths,
    /// Directory modes, set last (deepest first) so a read-only directory
    /// does not stop what goes into it.
    dirs: BTreeMap<PathBuf, u32>,
    jobs: SyncSender<Job>,
    queue: &'a Queue,
    /// Paths sent to the writers since the queue last drained.
    queued: HashSet<PathBuf>,
}

impl Unpacker<'_> {
    /// Wait until every queued file is written; a writer's error comes out here.
    fn drain(&mut self) -> Result<()> {
        let mut state = self.queue.lock();
        while state.0 > 0 {
            state = self
                .queue
                .drained
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        self.queued.clear();
        match state.1.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Drain first if `path` is still queued.
    fn settle(&mut self, path: &Path) -> Result<()> {
        if self.queued.contains(path) {
            self.drain()?;
        }
        Ok(())
    }

    fn queue(&mut self, job: Job) -> Result<()> {
        self.queued.insert(job.dst.clone());
        self.queue.lock().0 += 1;
        if self.jobs.send(job).is_err() {
            // Every writer is gone: only a panic does that.
            self.queue.lock().0 -= 1;
            return Err(kiln_core::Error::internal(
                "the tree's file writers stopped",
            ));
        }
        Ok(())
    }

    /// Unpack one layer's tar stream over the root: whiteouts remove, an
    /// opaque marker empties its directory of what lower layers put there;
    /// nothing is written through a symlink or outside the root (such
    /// members are skipped, as devices and fifos are).
    fn layer(&mut self, layer: Box<dyn Read + '_>) -> Result<()> {
        let (root, purpose) = (self.root, self.purpose);
        let io = |what: &Path| format!("{purpose}: writing {}", what.display());
        let bad = |e: std::io::Error| SandboxError::System {
            purpose: purpose.to_string(),
            step: "reading a layer".into(),
            source: e,
        };
        let mut archive = tar::Archive::new(layer);
        // Paths this layer wrote (an opaque marker keeps them).
        let mut this_layer: HashSet<PathBuf> = HashSet::new();
        for member in archive.entries().map_err(bad)? {
            let mut member = member.map_err(bad)?;
            let name = String::from_utf8_lossy(&member.path_bytes()).into_owned();
            let Some(rel) = crate::rootfs::norm(&name) else {
                continue;
            };
            let rel = rel.trim_start_matches('/').to_string();
            // (A whiteout of a path not kept has nothing to remove.)
            if !self.paths.keeps(&rel) {
                continue;
            }
            let (parent, base) = match rel.rsplit_once('/') {
                Some((p, b)) => (root.join(p), b.to_string()),
                None => (root.to_path_buf(), rel.clone()),
            };
            if below_symlink(root, &parent) {
                continue;
            }
            if base == ".wh..wh..opq" {
                self.drain()?;
                if let Ok(rd) = fs::read_dir(&parent) {
                    for e in rd.flatten() {
                        if !this_layer.contains(&e.path()) {
                            remove_any(&e.path());
                        }
                    }
                }
                continue;
            }
            if let Some(hidden) = base.strip_prefix(".wh.") {
                self.drain()?;
                remove_any(&parent.join(hidden));
                continue;
            }
            let dst = parent.join(&base);
            let h = member.header();
            let mode = h.mode().map_err(bad)? & 0o7777;
            let (uid, gid) = (h.uid().map_err(bad)? as u32, h.gid().map_err(bad)? as u32);
            let owner = (self.euid == 0).then_some((uid, gid));
            let kind = h.entry_type();
            let size = h.size().map_err(bad)?;
            self.settle(&parent)?;
            self.settle(&dst)?;
            fs::create_dir_all(&parent).io_context(|| io(&parent))?;
            match kind {
                tar::EntryType::Directory => {
                    if !fs::symlink_metadata(&dst).is_ok_and(|m| m.is_dir()) {
                        remove_any(&dst);
                        fs::create_dir(&dst).io_context(|| io(&dst))?;
                    }
                    self.dirs.insert(dst.clone(), mode);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous if size <= QUEUED_MAX => {
                    let mut data = Vec::with_capacity(size as usize);
                    member.read_to_end(&mut data).map_err(bad)?;
                    this_layer.insert(dst.clone());
                    self.queue(Job {
                        dst,
                        data,
                        mode,
                        owner,
                    })?;
                    continue;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    remove_any(&dst);
                    let mut f = fs::File::create(&dst).io_context(|| io(&dst))?;
                    std::io::copy(&mut member, &mut f).io_context(|| io(&dst))?;
                    f.set_permissions(fs::Permissions::from_mode(mode))
                        .io_context(|| io(&dst))?;
                }
                tar::EntryType::Symlink => {
                    let target = member
                        .link_name()
                        .map_err(bad)?
                        .unwrap_or_default()
                        .into_owned();
                    remove_any(&dst);
                    std::os::unix::fs::symlink(&target, &dst).io_context(|| io(&dst))?;
                }
                tar::EntryType::Link => {
                    let target = member.link_name().map_err(bad)?.unwrap_or_default();
                    let Some(t) = crate::rootfs::norm(&target.to_string_lossy()) else {
                        continue;
                    };
                    // Its target may be queued.
                    self.drain()?;
                    let src = root.join(t.trim_start_matches('/'));
                    if below_symlink(root, &src) || !src.is_file() {
                        continue;
                    }
                    remove_any(&dst);
                    fs::hard_link(&src, &dst).io_context(|| io(&dst))?;
                }
                _ => continue, // devices, fifos: not recreated
            }
            if let Some((uid, gid)) = owner {
                let _ = std::os::unix::fs::lchown(&dst, Some(uid), Some(gid));
            }
            this_layer.insert(dst);
        }
        // The next layer may whiteout or replace what this one queued.
        self.drain()
    }
}

/// Write the tree `layers` make at `root` (see [`super::Sandbox::from_layers`]),
/// with the mount points a run needs.
pub(super) fn write_layers(
    layers: Vec<Box<dyn Read + '_>>,
    root: &Path,
    euid: u32,
    purpose: &str,
    paths: Paths,
) -> Result<()> {
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    write_layers_with(layers, root, euid, purpose, writers, paths)
}

/// Which of an image's paths a tree written out holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paths {
    All,
    /// What the image's Python interpreter reads to start and compile:
    /// the top-level directories and links, `/etc`, every `lib*` (the
    /// shared libraries and the standard library), and the `python*`
    /// entries of the `bin` directories; for an interpreter installed
    /// under a prefix of its own (`/opt/conda/bin/python3`), all of that
    /// prefix. Not `/usr/share`, `/var` or the other programs, which are
    /// most of a Debian base's inodes.
    Python {
        prefix: Option<String>,
    },
}

impl Paths {
    /// [`Paths::Python`] for the interpreter at `interpreter`.
    pub fn python(interpreter: &str) -> Paths {
        let prefix = interpreter
            .trim_start_matches('/')
            .rsplit_once('/')
            .and_then(|(bin, _)| bin.strip_suffix("/bin"))
            .filter(|p| !matches!(*p, "" | "usr" | "usr/local"))
            .map(|p| format!("{p}/"));
        Paths::Python { prefix }
    }

    /// Whether `rel` (relative to the root, no leading `/`) is written.
    pub fn keeps(&self, rel: &str) -> bool {
        let prefix = match self {
            Paths::All => return true,
            Paths::Python { prefix } => prefix.as_deref(),
        };
        if let Some(p) = prefix {
            // The prefix, what is in it and the directories above it.
            let above = p.strip_prefix(rel).is_some_and(|r| r.starts_with('/'));
            if rel.starts_with(p) || above {
                return true;
            }
        }
        let rel = rel
            .strip_prefix("usr/local/")
            .or(rel.strip_prefix("usr/"))
            .unwrap_or(rel);
        let (top, rest) = match rel.split_once('/') {
            Some((t, r)) => (t, Some(r)),
            None => (rel, None),
        };
        match (top, rest) {
            (_, None) => true,
            ("etc", _) => true,
            (t, _) if t.starts_with("lib") => true,
            ("bin" | "sbin", Some(name)) => name.starts_with("python"),
            _ => false,
        }
    }
}

fn write_layers_with(
    layers: Vec<Box<dyn Read + '_>>,
    root: &Path,
    euid: u32,
    purpose: &str,
    writers: usize,
    paths: Paths,
) -> Result<()> {
    fs::create_dir_all(root).io_context(|| format!("creating {}", root.display()))?;
    let queue = Queue::default();
    let (jobs, receiver) = sync_channel::<Job>(QUEUE);
    let receiver = Mutex::new(receiver);
    let dirs = std::thread::scope(|s| {
        for _ in 0..writers {
            s.spawn(|| queue.writer(&receiver, purpose));
        }
        let mut unpacker = Unpacker {
            root,
            euid,
            purpose,
            paths,
            dirs: BTreeMap::new(),
            jobs,
            queue: &queue,
            queued: HashSet::new(),
        };
        let mut written = Ok(());
        for layer in layers {
            written = unpacker.layer(layer);
            if written.is_err() {
                break;
            }
        }
        // Let the writers finish what is queued, then stop.
        let drained = unpacker.drain();
        written.and(drained).map(|()| unpacker.dirs)
        // (`unpacker.jobs` dropped here: the writers' `recv` ends.)
    })?;
    for (d, mode) in dirs.iter().rev() {
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(*mode));
    }
    super::mount_points(root, purpose)
}

/// Whether `path` (under `root`) or a directory above it is a symlink.
pub(super) fn below_symlink(root: &Path, path: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(root) else {
        return true;
    };
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

pub(super) fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    enum M<'a> {
        Dir(&'a str, u32),
        File(&'a str, u32, Vec<u8>),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn layer(members: &[M]) -> Box<dyn Read> {
        let mut b = tar::Builder::new(Vec::new());
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_mode(0o777);
            match m {
                M::Dir(p, mode) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    h.set_size(0);
                    b.append_data(&mut h, p, std::io::empty()).unwrap();
                }
                M::File(p, mode, data) => {
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, &data[..]).unwrap();
                }
                M::Sym(p, t) | M::Hard(p, t) => {
                    h.set_entry_type(if matches!(m, M::Sym(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    });
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        Box::new(std::io::Cursor::new(b.into_inner().unwrap()))
    }

    /// Every path under `root`: kind, permission bits, contents or target,
    /// and which paths share an inode.
    fn listing(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    format!("dir {:o}", m.mode() & 0o7777)
                } else {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    format!(
                        "file {:o} {} bytes {:x} (inode of {first})",
                        m.mode() & 0o7777,
                        m.len(),
                        fs::read(&p).unwrap().iter().map(|&b| b as u64).sum::<u64>()
                    )
                };
                out.insert(rel, what);
            }
        }
        out
    }

    #[test]
    fn a_python_tree_keeps_what_the_interpreter_reads() {
        let python = Paths::python("/usr/bin/python3.11");
        assert_eq!(python, Paths::Python { prefix: None });
        let keeps = |p: &str| python.keeps(p);
        for kept in [
            "usr",
            "usr/share",
            "bin",
            "lib64",
            "etc/python3.11/sitecustomize.py",
            "usr/bin/python3.11",
            "usr/local/bin/python3",
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            "usr/lib/python3.11/os.py",
            "usr/local/lib/python3.12/site-packages/x.pth",
            "lib/x86_64-linux-gnu/libz.so.1",
            "usr/.wh.share",
        ] {
            assert!(keeps(kept), "{kept}");
            assert!(Paths::All.keeps(kept));
        }
        for left in [
            "usr/share/doc/python3/copyright",
            "usr/bin/perl",
            "bin/bash",
            "usr/sbin/useradd",
            "var/lib/dpkg/status",
            "usr/local/share/man/x",
            "root/.bashrc",
        ] {
            assert!(!keeps(left), "{left}");
            assert!(Paths::All.keeps(left));
        }
        // An interpreter under a prefix of its own keeps all of it.
        let conda = Paths::python("/opt/conda/bin/python3.11");
        for kept in [
            "opt",
            "opt/conda",
            "opt/conda/bin/conda",
            "opt/conda/share/x",
        ] {
            assert!(conda.keeps(kept), "{kept}");
        }
        for left in ["opt/other/x", "opt/condax/y", "usr/share/doc/x"] {
            assert!(!conda.keeps(left), "{left}");
        }
        for usual in ["/usr/local/bin/python3", "/bin/python3", "python3"] {
            assert_eq!(Paths::python(usual), Paths::Python { prefix: None });
        }
        // Written out: the kept paths (and the mount points), with a
        // whiteout still applied.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("py");
        let base = layer(&[
            M::File("usr/bin/python3.11", 0o755, b"elf".to_vec()),
            M::Sym("usr/bin/python3", "python3.11"),
            M::File("usr/bin/perl", 0o755, b"perl".to_vec()),
            M::File("usr/lib/python3.11/os.py", 0o644, b"os".to_vec()),
            M::File("usr/lib/python3.11/gone.py", 0o644, b"g".to_vec()),
            M::File("usr/share/doc/x", 0o644, b"doc".to_vec()),
            M::Hard("usr/lib/python3.11/again.py", "usr/lib/python3.11/os.py"),
        ]);
        let top = layer(&[M::File("usr/lib/python3.11/.wh.gone.py", 0o644, Vec::new())]);
        write_layers_with(vec![base, top], &root, 1, "test", 2, python.clone()).unwrap();
        let names: Vec<String> = listing(&root).into_keys().collect();
        assert_eq!(
            names,
            [
                "dev",
                "proc",
                "sys",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/python3",
                "usr/bin/python3.11",
                "usr/lib",
                "usr/lib/python3.11",
                "usr/lib/python3.11/again.py",
                "usr/lib/python3.11/os.py",
            ]
        );
    }

    fn layers() -> Vec<Box<dyn Read>> {
        let big = vec![7u8; (QUEUED_MAX + 1) as usize];
        vec![
            layer(&[
                M::Dir("a", 0o755),
                M::File("a/x", 0o644, b"x1".to_vec()),
                M::File("a/big", 0o600, big.clone()),
                M::Sym("l", "a"),
                M::File("a/y", 0o644, b"first".to_vec()),
                M::File("a/y", 0o640, b"second".to_vec()),
                M::File("d/gone", 0o644, b"g".to_vec()),
                M::File("o/old", 0o644, b"o".to_vec()),
                M::File("hl-src", 0o755, b"shared".to_vec()),
                M::Hard("hl", "hl-src"),
                M::Dir("ro", 0o555),
                M::File("ro/f", 0o444, b"r".to_vec()),
            ]),
            layer(&[
                M::File("d/.wh.gone", 0o644, Vec::new()),
                M::File("o/.wh..wh..opq", 0o644, Vec::new()),
                M::File("o/new", 0o644, b"n".to_vec()),
                M::File("l/evil", 0o644, b"e".to_vec()),
                M::File("a/x", 0o600, b"x2".to_vec()),
                M::Dir("a/y", 0o700),
                M::File("a/y/z", 0o644, b"z".to_vec()),
                M::File("a/big", 0o644, b"small now".to_vec()),
            ]),
        ]
    }

    /// Queued writers give the tree writing every member in order gives:
    /// the last of a path twice in a layer, whiteouts and opaque markers
    /// over queued files, a hard link to a queued file, a directory over
    /// a file, nothing through a symlink, modes kept.
    #[test]
    fn writers_beside_the_reader_give_the_tree_of_the_members_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("one");
        let four = dir.path().join("four");
        write_layers_with(layers(), &one, 1, "test", 1, Paths::All).unwrap();
        write_layers_with(layers(), &four, 1, "test", 4, Paths::All).unwrap();
        let tree = listing(&one);
        assert_eq!(tree, listing(&four));
        let at = |p: &str| tree.get(p).map(String::as_str).unwrap_or("missing");
        assert!(at("a/x").starts_with("file 600 2 bytes"), "{tree:#?}");
        assert_eq!(at("a/y"), "dir 700");
        assert!(at("a/y/z").starts_with("file 644 1 bytes"));
        assert!(at("a/big").starts_with("file 644 9 bytes"));
        assert_eq!(at("l"), "-> a");
        assert!(!tree.contains_key("a/evil") && !tree.contains_key("d/gone"));
        assert!(!tree.contains_key("o/old") && tree.contains_key("o/new"));
        assert!(at("hl").ends_with("(inode of hl-src)") || at("hl-src").ends_with("(inode of hl)"));
        assert_eq!(at("ro"), "dir 555");
        assert!(at("ro/f").starts_with("file 444"));
        for d in ["proc", "sys", "dev", "tmp"] {
            assert!(at(d).starts_with("dir"), "{d}");
        }
    }

    /// A member the reader cannot read is an error, and so is a file a
    /// writer cannot create; neither hangs the writers.
    #[test]
    fn errors_of_the_reader_and_of_the_writers_come_out() {
        let dir = tempfile::tempdir().unwrap();
        let truncated: Box<dyn Read> = {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(1000);
            h.set_mode(0o644);
            b.append_data(&mut h, "f", &[0u8; 1000][..]).unwrap();
            let mut bytes = b.into_inner().unwrap();
            bytes.truncate(700);
            Box::new(std::io::Cursor::new(bytes))
        };
        assert!(write_layers_with(
            vec![truncated],
            &dir.path().join("t"),
            1,
            "test",
            2,
            Paths::All
        )
        .is_err());
        // A queued file whose name no file system takes (root or not).
        let long = format!("sub/{}", "n".repeat(300));
        let bad = layer(&[
            M::File("sub/ok", 0o644, b"k".to_vec()),
            M::File(&long, 0o644, b"f".to_vec()),
        ]);
        let e = write_layers_with(vec![bad], &dir.path().join("w"), 1, "test", 2, Paths::All)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test: writing") && e.contains("nnnn"), "{e}");
    }
}
