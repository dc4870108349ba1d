//! A commit's tree written into a directory straight from the object
//! database: files with their modes, symlinks, directories. This is all a
//! build context needs, and far less than a checkout (no index, filters or
//! attributes). Entry names are checked so nothing lands outside the
//! directory; mtimes are the commit's time so the same commit gives the
//! same files on every machine.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gix::objs::tree::EntryKind;

/// Deeper trees than this are refused (a hostile tree cannot recurse forever).
const MAX_DEPTH: usize = 256;

/// Write the tree of `commit` (a full id) into `out` (created here).
pub(crate) fn write_commit(repo: &gix::Repository, commit: &str, out: &Path) -> Result<(), String> {
    let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|e| e.to_string())?;
    let commit = repo
        .find_commit(id)
        .map_err(|e| format!("the commit was not fetched: {e}"))?;
    let seconds = commit.time().map(|t| t.seconds).unwrap_or(0).max(0) as u64;
    let mtime = UNIX_EPOCH + Duration::from_secs(seconds);
    let tree = commit.tree_id().map_err(|e| e.to_string())?.detach();
    fs::create_dir(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut dirs = Vec::new();
    write_tree(repo, tree, out, 0, mtime, &mut dirs)?;
    // Directories last: writing their entries changed their mtimes.
    for d in dirs.iter().rev().chain(std::iter::once(&out.to_path_buf())) {
        set_mtime(d, mtime);
    }
    Ok(())
}

fn write_tree(
    repo: &gix::Repository,
    id: gix::ObjectId,
    dir: &Path,
    depth: usize,
    mtime: SystemTime,
    dirs: &mut Vec<std::path::PathBuf>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "the tree is nested deeper than {MAX_DEPTH} directories"
        ));
    }
    let tree = repo.find_tree(id).map_err(|e| e.to_string())?;
    let entries: Vec<(Vec<u8>, EntryKind, gix::ObjectId)> = tree
        .decode()
        .map_err(|e| e.to_string())?
        .entries
        .iter()
        .map(|e| (e.filename.to_vec(), e.mode.kind(), e.oid.to_owned()))
        .collect();
    for (name, kind, oid) in entries {
        check_name(&name)?;
        let path = dir.join(std::ffi::OsStr::from_bytes(&name));
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        match kind {
            EntryKind::Tree => {
                fs::create_dir(&path).map_err(err)?;
                write_tree(repo, oid, &path, depth + 1, mtime, dirs)?;
                dirs.push(path);
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let blob = repo.find_object(oid).map_err(|e| e.to_string())?;
                let mode = if kind == EntryKind::BlobExecutable {
                    0o755
                } else {
                    0o644
                };
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&path)
                    .map_err(err)?;
                f.write_all(&blob.data).map_err(err)?;
                // The umask may have narrowed the mode.
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(err)?;
                f.set_modified(mtime).map_err(err)?;
            }
            EntryKind::Link => {
                let blob = repo.find_object(oid).map_err(|e| e.to_string())?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&blob.data), &path)
                    .map_err(err)?;
            }
            // A submodule: an empty directory, as `git clone` leaves it.
            EntryKind::Commit => {
                fs::create_dir(&path).map_err(err)?;
                dirs.push(path);
            }
        }
    }
    Ok(())
}

/// One path component, never `.`, `..`, `.git` or with a separator.
fn check_name(name: &[u8]) -> Result<(), String> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.eq_ignore_ascii_case(b".git")
        || name.contains(&b'/')
        || name.contains(&0);
    if bad {
        return Err(format!(
            "the tree has an entry named {:?} that cannot be written safely",
            String::from_utf8_lossy(name)
        ));
    }
    Ok(())
}

fn set_mtime(dir: &Path, mtime: SystemTime) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.set_modified(mtime);
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for bad in [&b""[..], b".", b"..", b".git", b".GIT", b"a/b", b"a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for ok in [&b"a"[..], b".gitignore", b"..a", b"Dockerfile"] {
            assert!(check_name(ok).is_ok(), "{ok:?}");
        }
    }
}
