//! What can be wrong with a workspace. Everything is the user's to fix
//! (exit code 2), except a missing `git` binary.

use std::path::PathBuf;

use kiln_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {key}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{}: glob `{glob}`: {message}", path.display())]
    BadGlob {
        path: PathBuf,
        glob: String,
        message: String,
    },
    #[error("member {}: no kiln.toml and no Dockerfile", dir.display())]
    MissingSpec { dir: PathBuf },
    #[error("two members are target `{target}`: {} and {}", first.display(), second.display())]
    DuplicateTarget {
        target: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("{member}: `target:{name}` is not a workspace member (members: {known})")]
    UnknownTarget {
        member: String,
        name: String,
        known: String,
    },
    #[error("{member}: compat `{name}` is not a compat directory of the workspace (compat dirs: {known})")]
    UnknownCompat {
        member: String,
        name: String,
        known: String,
    },
    #[error("members depend on each other in a cycle: {cycle}")]
    TargetCycle { cycle: String },
    #[error("compat includes form a cycle: {cycle}")]
    CompatCycle { cycle: String },
    #[error("{image}:{version} has {} final images (members nothing else depends on): {}; exactly one is released", finals.len(), finals.join(", "))]
    SeveralFinals {
        image: String,
        version: String,
        finals: Vec<String>,
    },
    #[error("{member}: `[release] compat` is only for the final image of {image}:{version}, which is {final_member}")]
    CompatNotFinal {
        member: String,
        image: String,
        version: String,
        final_member: String,
    },
    #[error("{member}: invalid version `{version}`: {message}")]
    BadVersion {
        member: String,
        version: String,
        message: String,
    },
    #[error("{owner}: {} (named in {what}): {source}", path.display())]
    MissingInput {
        owner: String,
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not inside the workspace root {}", path.display(), root.display())]
    OutsideRoot { path: PathBuf, root: PathBuf },
    /// The `git` binary is not there.
    #[error("`git` is needed for workspace plans (changes since a ref, tags) but cannot be run: {source}")]
    GitMissing {
        #[source]
        source: std::io::Error,
    },
    /// git ran and refused (not a repository, unknown ref, no commits).
    #[error("`git {args}` failed in {}: {stderr}", dir.display())]
    Git {
        dir: PathBuf,
        args: String,
        stderr: String,
    },
}

impl Classify for WorkspaceError {
    fn kind(&self) -> ErrorKind {
        match self {
            WorkspaceError::GitMissing { .. } => ErrorKind::Io,
            _ => ErrorKind::Input,
        }
    }
}

impl From<WorkspaceError> for kiln_core::Error {
    fn from(e: WorkspaceError) -> Self {
        kiln_core::Error::typed(e)
    }
}
