//! The few Git facts a plan needs, from the `git` CLI.
//!
//! Why the CLI and not `gix`: gix with the features needed for a diff
//! against a ref (revision parsing, tree diff, index/worktree status) adds
//! well over a hundred crates to kiln's build, a large share of a CI run's
//! compile time, for three read-only questions that `git` answers exactly
//! (and with the user's own Git configuration). Every CI image that checks
//! out a repository has `git`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_core::error::Result;

use crate::error::WorkspaceError;

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|source| WorkspaceError::GitMissing { source })?;
    if !out.status.success() {
        return Err(WorkspaceError::Git {
            dir: dir.to_path_buf(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where HEAD is: for the tag scheme's `{count}` and `{hash}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub count: u64,
    pub short: String,
}

/// The repository's top-level directory (canonical).
pub fn toplevel(dir: &Path) -> Result<PathBuf> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(top.trim());
    Ok(top.canonicalize().unwrap_or(top))
}

/// `git rev-list --count HEAD` and `git rev-parse --short HEAD`.
pub fn head(dir: &Path) -> Result<Head> {
    let count = git(dir, &["rev-list", "--count", "HEAD"])?;
    let short = git(dir, &["rev-parse", "--short", "HEAD"])?;
    Ok(Head {
        count: count.trim().parse().map_err(|_| WorkspaceError::Git {
            dir: dir.to_path_buf(),
            args: "rev-list --count HEAD".into(),
            stderr: format!("unexpected output `{}`", count.trim()),
        })?,
        short: short.trim().to_string(),
    })
}

/// Files changed between `since` and the working tree (`git diff
/// --name-only`), plus untracked files that are not ignored, as absolute
/// paths.
pub fn changed_since(dir: &Path, since: &str) -> Result<Vec<PathBuf>> {
    let top = toplevel(dir)?;
    let commit = format!("{since}^{{commit}}");
    git(&top, &["rev-parse", "--verify", "--quiet", &commit]).map_err(|_| WorkspaceError::Git {
        dir: top.clone(),
        args: format!("rev-parse --verify {since}"),
        stderr: format!("`{since}` is not a commit of this repository"),
    })?;
    let mut out = Vec::new();
    let diff = git(&top, &["diff", "--name-only", "-z", since, "--"])?;
    let untracked = git(&top, &["ls-files", "--others", "--exclude-standard", "-z"])?;
    for name in diff.split('\0').chain(untracked.split('\0')) {
        if !name.is_empty() {
            out.push(top.join(name));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
