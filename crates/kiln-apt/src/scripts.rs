//! `--run-scripts`: run the new packages' maintainer scripts as dpkg would
//! (every `preinst install`, then every `postinst configure`, dependencies
//! first) in a chroot of the assembled filesystem, inside user, mount, pid,
//! network and ipc namespaces, and turn what they changed into one more
//! layer.
//!
//! Unprivileged: kiln starts itself (`kiln __run-script`) in a new user
//! namespace whose id maps the parent writes: as root, ids 0..65536 map to
//! themselves (so `chown root:mail` works and files keep their owners); as
//! another user, only that user maps to 0 (a chown to another account then
//! fails with the script's output). Capabilities exist only inside the
//! namespaces; the tree becomes the root by pivot_root, not chroot, so there
//! is no way back to the host's files. No network. Changes are found by comparing
//! inode, ctime, type, mode and owner of every path before and after, so
//! nothing a script touched is missed and nothing else is re-packed.
//! Only when the image's architecture is the host's: no emulation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::install::display_name;
use super::repo::Package;
use super::AptPlan;
use crate::AptError;
use kiln_core::error::{IoContext, Result};
use kiln_fs::layer::{Entry, EntryKind};
use kiln_fs::rootfs::{Node, Rootfs};

/// Not compared: kernel filesystems mounted for the scripts.
const SKIPPED: &[&str] = &["proc", "sys", "dev"];

/// What running the scripts did.
pub struct ScriptRun {
    /// The layer: changed and new paths, whiteouts for removed ones.
    pub entries: Vec<Entry>,
    /// `package: script argument` in the order run.
    pub ran: Vec<String>,
}

/// Can scripts for an image of Debian architecture `arch` run here?
/// Checked before anything is resolved or downloaded.
pub fn check_host(arch: &str) -> Result<()> {
    let host = super::debian_arch(&kiln_core::platform::Platform::host())?;
    if arch != host {
        return Err(AptError::ForeignHost {
            image: arch.to_string(),
            host: host.to_string(),
        }
        .into());
    }
    Ok(())
}

/// Run the maintainer scripts of `plan` over `full` (the base with every
/// apt layer applied, contents kept). `tmp` is a scratch directory on a
/// filesystem that supports ownership; it is removed again.
pub fn run(plan: &AptPlan, full: &Rootfs, tmp: &Path, epoch: u64) -> Result<ScriptRun> {
    check_host(&plan.arch)?;
    let dir = tempfile::Builder::new()
        .prefix(&kiln_store::temp_prefix("run-scripts"))
        .tempdir_in(tmp)
        .io_context(|| format!("creating a directory in {}", tmp.display()))?;
    let root = dir.path().join("rootfs");
    let kiln = std::env::current_exe().io_context(|| "finding kiln's own binary".to_string())?;
    // Who kiln runs as: the owner of the directory it just made.
    let euid = fs::metadata(dir.path())
        .io_context(|| format!("reading {}", dir.path().display()))?
        .uid();
    materialize(full, &root)?;
    let before = snapshot(&root)?;

    let order = configure_order(&plan.packages);
    let mut ran = Vec::new();
    for (script, arg) in [("preinst", "install"), ("postinst", "configure")] {
        for &i in &order {
            let p = &plan.packages[i];
            let rel = format!("var/lib/dpkg/info/{}.{script}", p.info_name());
            if !root.join(&rel).is_file() {
                continue;
            }
            let mut cmd = Command::new(&kiln);
            cmd.arg("__run-script")
                .arg(&root)
                .arg(format!("/{rel}"))
                .arg(arg)
                .arg("") // most recently configured version: none
                .env_clear()
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .env("HOME", "/root")
                .env("LC_ALL", "C")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("DEBCONF_NONINTERACTIVE_SEEN", "true")
                .env("SOURCE_DATE_EPOCH", epoch.to_string())
                .env("DPKG_MAINTSCRIPT_PACKAGE", &p.name)
                .env("DPKG_MAINTSCRIPT_ARCH", &p.arch)
                .env("DPKG_MAINTSCRIPT_NAME", script)
                .env("DPKG_MAINTSCRIPT_PACKAGE_REFCOUNT", "1")
                .env("DPKG_ADMINDIR", "/var/lib/dpkg")
                .env("DPKG_ROOT", "");
            let out = run_in_namespace(cmd, euid)?;
            let name = display_name(p, &plan.arch);
            if !out.status.success() {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                return Err(AptError::ScriptFailed {
                    package: name,
                    script: script.to_string(),
                    arg: arg.to_string(),
                    status: out.status,
                    output: tail.join("\n"),
                }
                .into());
            }
            ran.push(format!("{name}: {script} {arg}"));
        }
    }
    let after = snapshot(&root)?;
    let entries = changes(&root, &before, &after, euid)?;
    Ok(ScriptRun { entries, ran })
}

/// Parent side: start `cmd` (`kiln __run-script …`), wait until it has
/// entered its user namespace, write the id maps, then let it go on.
fn run_in_namespace(mut cmd: Command, euid: u32) -> Result<std::process::Output> {
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
        return Err(AptError::UserNamespace {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(out)
}

/// A failed system call of the namespace set-up, said plainly.
fn sys(what: &str, e: rustix::io::Errno) -> AptError {
    AptError::Sandbox {
        step: what.to_string(),
        source: e.into(),
    }
}

/// `kiln __run-script ROOT PROGRAM ARGS...`, first half: enter a new user
/// namespace, wait for the parent's id maps, then new mount, pid, network,
/// ipc and uts namespaces, and run the second half as pid 1 there.
/// Returns the exit code to leave with.
pub fn namespace_stage(root: &Path, program: &str, args: &[String]) -> Result<i32> {
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
        return Err(AptError::NoIdMaps.into());
    }
    let flags = UnshareFlags::NEWNS
        | UnshareFlags::NEWPID
        | UnshareFlags::NEWNET
        | UnshareFlags::NEWIPC
        | UnshareFlags::NEWUTS;
    // SAFETY: as above.
    unsafe { unshare_unsafe(flags) }.map_err(|e| sys("creating namespaces", e))?;
    let exe = std::env::current_exe().io_context(|| "finding kiln's own binary".to_string())?;
    let status = Command::new(exe)
        .arg("__run-script")
        .arg("--inside")
        .arg(root)
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .status()
        .io_context(|| "starting the script".to_string())?;
    Ok(status.code().unwrap_or(128))
}

/// Second half, pid 1 of the new namespaces: make ROOT the root with
/// pivot_root (unlike chroot, there is no way back to the host's tree),
/// with /proc and a few host device nodes, then exec PROGRAM. Returns only
/// on failure.
pub fn enter_and_exec(root: &Path, program: &str, args: &[String]) -> Result<()> {
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
    for d in ["null", "zero", "full", "random", "urandom"] {
        let inside = Path::new("dev").join(d);
        if fs::symlink_metadata(&inside).is_err() {
            fs::write(&inside, b"").io_context(|| format!("creating /dev/{d}"))?;
        }
        mount_bind(Path::new("/dev").join(d), &inside)
            .map_err(|e| sys(&format!("binding /dev/{d}"), e))?;
    }
    rustix::process::pivot_root(".", ".").map_err(|e| sys("pivot_root", e))?;
    unmount(".", UnmountFlags::DETACH).map_err(|e| sys("detaching the host's root", e))?;
    std::env::set_current_dir("/").io_context(|| "entering /".to_string())?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(AptError::Sandbox {
        step: format!("running {program}"),
        source: err,
    }
    .into())
}

/// Dependencies first (dpkg's configure order); ties and cycles by name.
fn configure_order(packages: &[Package]) -> Vec<usize> {
    let by_name: BTreeMap<&str, Vec<usize>> =
        packages
            .iter()
            .enumerate()
            .fold(BTreeMap::new(), |mut m, (i, p)| {
                m.entry(p.name.as_str()).or_insert_with(Vec::new).push(i);
                for v in &p.provides {
                    m.entry(v.name.as_str()).or_insert_with(Vec::new).push(i);
                }
                m
            });
    let mut done = vec![false; packages.len()];
    let mut order = Vec::new();
    fn visit(
        i: usize,
        packages: &[Package],
        by_name: &BTreeMap<&str, Vec<usize>>,
        done: &mut [bool],
        order: &mut Vec<usize>,
    ) {
        if done[i] {
            return;
        }
        done[i] = true; // marked on entry: a cycle is broken here
        for group in &packages[i].depends {
            for d in group {
                for &j in by_name.get(d.name.as_str()).into_iter().flatten() {
                    visit(j, packages, by_name, done, order);
                }
            }
        }
        order.push(i);
    }
    for i in 0..packages.len() {
        visit(i, packages, &by_name, &mut done, &mut order);
    }
    order
}

/// Write the filesystem view to `root`. Nothing is written through a
/// symlink: an entry below one is skipped.
fn materialize(full: &Rootfs, root: &Path) -> Result<()> {
    let io = |what: &Path| format!("--run-scripts: writing {}", what.display());
    fs::create_dir_all(root).io_context(|| io(root))?;
    let mut links: HashSet<String> = HashSet::new();
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
            Node::Dir => fs::create_dir_all(&dst).io_context(|| io(&dst))?,
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
    // Mount points and /tmp, so the run adds none of them to the layer.
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

/// What identifies a path's state: a change to any of it means the scripts touched it.
#[derive(PartialEq, Eq)]
struct Stamp {
    ino: u64,
    ctime: (i64, i64),
    mode: u32,
    uid: u32,
    gid: u32,
}

fn snapshot(root: &Path) -> Result<BTreeMap<String, Stamp>> {
    let mut out = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !SKIPPED.iter().any(|s| e.file_name() == *s));
    for e in walk {
        let reading = |e: walkdir::Error| AptError::Sandbox {
            step: "reading the tree".into(),
            source: e.into(),
        };
        let e = e.map_err(reading)?;
        let md = e.metadata().map_err(reading)?;
        let Ok(rel) = e.path().strip_prefix(root) else {
            continue;
        };
        out.insert(
            rel.to_string_lossy().into_owned(),
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
            return Err(AptError::SpecialFile { path: rel.clone() }.into());
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

    fn pkg(name: &str, depends: &str) -> Package {
        crate::repo::test_package(name, "1", "amd64", "no", depends)
    }

    #[test]
    fn dependencies_are_configured_first() {
        let p = vec![
            pkg("app", "lib | other, tool"),
            pkg("lib", "base"),
            pkg("base", ""),
            pkg("tool", "app"), // a cycle, broken deterministically
        ];
        let order: Vec<&str> = configure_order(&p)
            .into_iter()
            .map(|i| p[i].name.as_str())
            .collect();
        assert_eq!(order, ["base", "lib", "tool", "app"]);
    }

    #[test]
    fn scripts_run_only_for_the_host_architecture() {
        let e = check_host("not-the-host").unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<AptError>(),
                Some(AptError::ForeignHost { image, .. }) if image == "not-the-host"
            ),
            "{e:?}"
        );
        assert!(e
            .to_string()
            .contains("the image is not-the-host but this machine is"));
    }

    #[test]
    fn a_script_leaving_a_special_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let before = snapshot(dir.path()).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let after = snapshot(dir.path()).unwrap();
        let e = changes(dir.path(), &before, &after, 0).unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<AptError>(),
                Some(AptError::SpecialFile { path }) if path == "sock"
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "--run-scripts: a script created /sock, which is not a file, directory or symlink"
        );
    }
}
