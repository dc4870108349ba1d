//! What can be wrong with kiln.toml, kiln.lock or an image reference. Every
//! cause is the user's to fix ([`ErrorKind::Input`], exit code 2).

use std::path::PathBuf;

use kiln_core::{Classify, ErrorKind};

use crate::lock::LOCK_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A file kiln.toml or kiln.lock depends on cannot be read.
    #[error("{}", unreadable(what, path, source))]
    Unreadable {
        what: Unreadable,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// kiln.toml is not valid TOML or does not fit the schema, at a known place.
    #[error(
        "{}:{line}:{column}: {}{message}\n  {line} | {line_text}",
        path.display(),
        key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default()
    )]
    Located {
        path: PathBuf,
        line: usize,
        column: usize,
        /// The key whose value is wrong, when the error points at a value.
        key: Option<String>,
        message: String,
        /// The offending line, quoted under the message.
        line_text: String,
    },
    /// kiln.toml does not parse, with no place to point at.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value that parses but is not allowed (`[config] env` names).
    #[error("{}: {key}: {message}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A `packages-file` that resolves outside the spec's directory.
    #[error(
        "packages-file `{file}` resolves to {}, outside the build context {}; \
         it must be inside the spec's directory (kiln build --allow-outside-context lifts this)",
        resolved.display(),
        context.display()
    )]
    OutsideContext {
        file: String,
        resolved: PathBuf,
        context: PathBuf,
    },
    /// A `packages-file` that is not UTF-8 text (`file:line` of the first bad byte).
    #[error("packages-file {file}: not UTF-8 text; write one package per line")]
    NotText { file: String },
    /// kiln.lock is not TOML or does not fit the lock schema.
    #[error(
        "{}: not a valid kiln.lock ({message}); remove it and run `kiln lock`",
        path.display()
    )]
    LockParse { path: PathBuf, message: String },
    /// kiln.lock was written by a kiln with another lock format.
    #[error(
        "{}: lock version {version} is not supported (expected {}); run `kiln lock`",
        path.display(),
        LOCK_VERSION
    )]
    LockVersion { path: PathBuf, version: u32 },
    /// kiln.lock's inputs-hash is not the hash of its inputs.
    #[error(
        "{}: inputs-hash does not match its inputs (edited by hand?); run `kiln lock`",
        path.display()
    )]
    LockHash { path: PathBuf },
    /// `--locked`, and kiln.lock was made from other spec inputs.
    #[error(
        "{} does not match {}:\n{diff}run `kiln lock` to update it",
        lock.display(),
        spec.display()
    )]
    LockMismatch {
        lock: PathBuf,
        spec: PathBuf,
        /// `  - ` lines only in the lock, `  + ` lines only in the spec.
        diff: String,
    },
    /// `--locked`, and there is no kiln.lock.
    #[error("--locked: there is no {}; run `kiln lock` first", lock.display())]
    LockMissing { lock: PathBuf },
    /// `oci:` or `docker-archive:` with nothing after it.
    #[error("`{reference}`: missing {} after `{}`", transport.wants(), transport.prefix())]
    EmptyPath {
        reference: String,
        transport: Transport,
    },
    /// `target:NAME`: another workspace member, which only the workspace
    /// builder resolves.
    #[error("base `target:{name}` is a workspace member; build it with the workspace")]
    WorkspaceTarget { name: String },
    /// Not a registry reference either.
    #[error("invalid image reference `{reference}`: {message}")]
    InvalidReference { reference: String, message: String },
    /// `--output` is neither `oci:DIR` nor `docker-archive:FILE`.
    #[error("invalid output `{output}`: expected oci:DIR or docker-archive:FILE")]
    InvalidOutput { output: String },
}

/// Which file could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// kiln.toml itself.
    Spec,
    /// kiln.lock.
    Lock,
    /// A file the spec names (requirements, environment.yml), relative to
    /// the spec's directory as written in it.
    SpecInput { spec: PathBuf },
}

fn unreadable(what: &Unreadable, path: &std::path::Path, e: &std::io::Error) -> String {
    match what {
        Unreadable::Spec => format!("cannot read spec {}: {e}", path.display()),
        Unreadable::Lock => format!("cannot read {}: {e}", path.display()),
        Unreadable::SpecInput { spec } => {
            format!("{}: {}: {e}", spec.display(), path.display())
        }
    }
}

/// A local image transport whose path is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Layout,
    DockerArchive,
}

impl Transport {
    fn prefix(self) -> &'static str {
        match self {
            Transport::Layout => "oci:",
            Transport::DockerArchive => "docker-archive:",
        }
    }

    fn wants(self) -> &'static str {
        match self {
            Transport::Layout => "directory",
            Transport::DockerArchive => "file",
        }
    }
}

impl Classify for SpecError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<SpecError> for kiln_core::Error {
    fn from(e: SpecError) -> Self {
        kiln_core::Error::typed(e)
    }
}
