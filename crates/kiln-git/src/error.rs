//! What fetching a Git source fails with. Every URL here is redacted.

use std::path::PathBuf;

use kiln_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The source string is not a Git URL kiln understands.
    #[error("{url}: not a Git source kiln understands: {reason}")]
    BadUrl { url: String, reason: String },

    /// The remote (or local repository) has no such branch, tag or commit.
    #[error("{url}: no branch, tag or commit `{reference}` (check the ref; `git ls-remote {url}` lists them)")]
    UnknownRef { url: String, reference: String },

    /// The path after the ref is not in the commit's tree.
    #[error("{url}: `{path}` is not in commit {commit}")]
    PathMissing {
        url: String,
        commit: String,
        path: String,
    },

    /// A `tree` URL names a file or a `blob` URL a directory.
    #[error("{url}: `{path}` in commit {commit} is not a {expected}")]
    WrongKind {
        url: String,
        commit: String,
        path: String,
        expected: &'static str,
    },

    /// A local path or `file://` URL that is not a Git repository.
    #[error("{url}: not a Git repository: {message}")]
    NotARepository { url: String, message: String },

    /// The remote could not be reached or the transfer broke off.
    #[error("{url}: fetching failed: {message}")]
    Network { url: String, message: String },

    /// The remote asked for credentials and refused (or got) none.
    #[error("{url}: authentication failed (set KILN_GIT_USERNAME and KILN_GIT_PASSWORD or KILN_GIT_TOKEN, or configure a git credential helper): {message}")]
    Auth { url: String, message: String },

    /// `--offline` (or a locked commit) and the commit's tree is not cached.
    #[error("offline: {url} at {reference} is not in the cache (build once online first)")]
    Offline { url: String, reference: String },

    /// The fetched objects are unreadable or the tree holds an entry that
    /// cannot be written safely.
    #[error("{url}: commit {commit}: {message}")]
    BadTree {
        url: String,
        commit: String,
        message: String,
    },

    /// Writing the tree into the cache failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Classify for GitError {
    fn kind(&self) -> ErrorKind {
        match self {
            GitError::BadUrl { .. }
            | GitError::UnknownRef { .. }
            | GitError::PathMissing { .. }
            | GitError::WrongKind { .. }
            | GitError::NotARepository { .. }
            | GitError::BadTree { .. } => ErrorKind::Input,
            GitError::Network { .. } | GitError::Offline { .. } => ErrorKind::Network,
            GitError::Auth { .. } => ErrorKind::Auth,
            GitError::Io { .. } => ErrorKind::Io,
        }
    }
}

impl From<GitError> for kiln_core::Error {
    fn from(e: GitError) -> Self {
        kiln_core::Error::typed(e)
    }
}

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GitError {
    let path = path.into();
    move |source| GitError::Io { path, source }
}
