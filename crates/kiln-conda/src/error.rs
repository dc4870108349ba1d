//! What the conda stage can fail with, by cause. Travels up as
//! [`kiln_core::Error::Typed`]; find it again with
//! `err.downcast_ref::<CondaError>()`.
//!
//! URLs (and requests that may hold one) are stored already redacted with
//! [`kiln_core::url::redact`]: no message shows a password or a channel's
//! `/t/<token>/`.

use std::path::PathBuf;

use kiln_core::error::{Classify, ErrorKind};

/// Everything `[conda]` reports, grouped by what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CondaError {
    // -- The spec and its environment.yml -------------------------------------
    /// `prefix` is not an absolute path.
    #[error("[conda] prefix = \"{prefix}\": expected an absolute path such as \"/opt/conda\"")]
    BadPrefix { prefix: String },
    /// A package request that does not parse as a MatchSpec.
    #[error("{origin}: `{spec}` is not a valid MatchSpec: {reason}")]
    BadMatchSpec {
        /// Where it was written (`[conda] packages` or an environment file).
        origin: String,
        /// As written, credentials redacted.
        spec: String,
        reason: String,
    },
    /// Packages were requested but no channel was named.
    #[error(
        "[conda] no channels: list at least one in `channels` (a name, a URL or a local directory)"
    )]
    NoChannels,
    /// The environment file cannot be read.
    #[error("[conda] environment {}: {source}", .path.display())]
    EnvironmentUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The environment file is not valid YAML for an environment.
    #[error("not a valid environment file: {reason}")]
    BadEnvironment { reason: String },
    /// A `dependencies:` subsection other than `pip:`.
    #[error("dependencies: unsupported subsection `{key}:` (only `pip:` is)")]
    UnsupportedSubsection { key: String },

    // -- Channels --------------------------------------------------------------
    /// `channel-alias` (or `CONDA_CHANNEL_ALIAS`) is neither a URL nor a directory.
    #[error("[conda] channel-alias `{alias}`: {reason}")]
    BadChannelAlias { alias: String, reason: String },
    /// A channel name or URL that does not parse (credentials redacted).
    #[error("[conda] channel `{channel}`: {reason}")]
    BadChannel { channel: String, reason: String },
    /// A channel whose subdir URL cannot be formed (credentials redacted).
    #[error("[conda] channel {url}: {reason}")]
    BadChannelUrl { url: String, reason: String },
    /// A channel without a `repodata.json` for the subdir or `noarch`
    /// (credentials redacted).
    #[error(
        "[conda] channel `{channel}` ({url}) has no repodata.json for {subdir} or noarch: \
         is the channel name or URL right?"
    )]
    NoRepodata {
        channel: String,
        url: String,
        subdir: String,
    },
    /// A `repodata.json` that does not parse.
    #[error("not valid repodata.json: {reason}")]
    BadRepodata { reason: String },

    // -- The target ------------------------------------------------------------
    /// Conda images are Linux images.
    #[error("[conda] platform {platform}: kiln builds Linux images only")]
    NotLinux { platform: String },
    /// An architecture conda has no subdir for.
    #[error("[conda] no conda subdir for architecture `{arch}`")]
    NoSubdir { arch: String },
    /// rattler does not know a subdir name kiln maps an architecture to (a bug).
    #[error("subdir {name}: {reason}")]
    UnknownSubdir { name: String, reason: String },
    /// A `virtual-packages` key other than glibc, linux, cuda or archspec.
    #[error(
        "[conda] virtual-packages: unknown key `{key}` (expected glibc, linux, cuda or archspec)"
    )]
    UnknownVirtualPackage { key: String },
    /// A virtual package version that is not a conda version.
    #[error("[conda] virtual-packages: `{name}` version `{version}`: {reason}")]
    BadVirtualPackageVersion {
        /// Without the `__` (`glibc`, `cuda`, ...).
        name: String,
        version: String,
        reason: String,
    },
    /// A base image `conda-meta/*.json` that is not a package record.
    #[error("base image: {path}: not a conda package record: {reason}")]
    BadPrefixRecord { path: String, reason: String },

    // -- The solve -------------------------------------------------------------
    /// Requested names no channel (nor the base prefix) has, or versions
    /// they do not have: every one, with close names or the versions there are.
    #[error(
        "[conda] {} not found in the channels:{}{}",
        if missing.len() == 1 { "1 requested package".to_string() } else { format!("{} requested packages", missing.len()) },
        kiln_core::suggest::lines(missing),
        target_note(.target)
    )]
    UnknownPackages {
        missing: Vec<kiln_core::suggest::Missing>,
        target: Option<SolveTarget>,
    },
    /// The requests conflict with each other or with the target.
    #[error(
        "[conda] the requested packages cannot be installed together:\n{}{}{}",
        .explanation.join("\n"),
        .hints.iter().map(|h| format!("\n{h}")).collect::<String>(),
        target_note(.target)
    )]
    Unsatisfiable {
        /// The solver's explanation, line by line (credentials redacted).
        explanation: Vec<String>,
        /// For each request nothing matches, the versions the channels have
        /// (`` `numpy==1.17*`: the channels have numpy 1.26.4 ``).
        hints: Vec<String>,
        target: Option<SolveTarget>,
    },
    /// The solver failed for another reason (timeout, cancelled).
    #[error("[conda] solver: {reason}{}", target_note(.target))]
    Solver {
        reason: String,
        target: Option<SolveTarget>,
    },

    // -- Packages --------------------------------------------------------------
    /// The channel gives no checksum for an archive.
    #[error(
        "[conda] {package}: the channel gives neither sha256 nor md5 for {url}; \
         refusing an unverifiable package"
    )]
    Unverifiable {
        /// `name-version-build`.
        package: String,
        url: String,
    },
    /// A channel or package that could not be fetched: the transfer's own
    /// message (which names the URL once) and where else it can come from.
    #[error(
        "[conda] {what}: {message}\n  hint: use a mirror (`channel-alias` or \
         CONDA_CHANNEL_ALIAS), a local channel directory, or `--offline` with a cache that \
         has what the build needs"
    )]
    Fetch {
        /// `channel conda-forge` or `package name-version-build`.
        what: String,
        message: String,
        /// The transfer error's class (network, auth, input), kept.
        kind: ErrorKind,
    },
    /// A downloaded archive whose md5 is not the channel's.
    #[error("[conda] {package}: md5 mismatch for {url}: expected {expected}, got {actual}")]
    Md5Mismatch {
        /// `name-version-build`.
        package: String,
        url: String,
        expected: String,
        actual: String,
    },
    /// A package pinned in kiln.lock that cannot be turned back into a record.
    #[error("[conda] locked {filename}: {reason}")]
    BadLockedPackage { filename: String, reason: String },
    /// An archive that is neither `.conda` nor `.tar.bz2`.
    #[error("{url}: unknown package format (expected .conda or .tar.bz2)")]
    UnknownFormat { url: String },
    /// An archive that does not extract.
    #[error("{url}: corrupt or unsafe package archive: {reason}")]
    CorruptArchive { url: String, reason: String },
    /// A package with a path that would leave the prefix or the package.
    #[error("refusing the package: {}", hostile(.path, .problem))]
    HostilePath {
        /// The archive's file name.
        package: String,
        /// As the package names it, relative to its root.
        path: String,
        problem: Hostile,
    },
    /// An extracted package without a usable `info/paths.json`.
    #[error("package has no readable info/paths.json: {reason}")]
    NoPathsJson { reason: String },
    /// rattler could not link a package (placeholders, entry points, ...).
    #[error("{reason}")]
    Link { reason: String },
    /// The environment's python record gives no usable version.
    #[error("[conda] python {version}: {reason}")]
    BadPython { version: String, reason: String },
    /// A `noarch: python` package in an environment without python.
    #[error(
        "[conda] {package} is a noarch: python package but the environment has no python; \
         add `python` to the packages"
    )]
    NoPython {
        /// `channel::name-version-build`.
        package: String,
    },

    // -- kiln itself -----------------------------------------------------------
    /// An archive checked into the cache is gone from it.
    #[error("{url} is not in the cache")]
    NotCached { url: String },
    /// A `conda-meta` record that cannot be serialised.
    #[error("writing the conda-meta record: {source}")]
    WriteRecord {
        #[source]
        source: std::io::Error,
    },
    /// A linked file found outside the fragment directory it was listed from.
    #[error("fragment path outside its root")]
    FragmentOutsideRoot { path: PathBuf },
}

/// How a package path is hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hostile {
    /// `info/paths.json` names a path outside the prefix.
    OutsidePrefix,
    /// A symlink whose target leaves the package.
    SymlinkOutside { target: String },
    /// A device, fifo or socket.
    SpecialFile,
}

fn hostile(path: &str, problem: &Hostile) -> String {
    match problem {
        Hostile::OutsidePrefix => format!("its paths.json names `{path}`, outside the prefix"),
        Hostile::SymlinkOutside { target } => {
            format!("symlink {path} -> {target} points outside the package")
        }
        Hostile::SpecialFile => format!("{path} is a device, fifo or socket"),
    }
}

/// The target a solve was for (added to solve errors by [`crate::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolveTarget {
    pub subdir: String,
    /// `__glibc=2.36, __unix=0, ...`.
    pub virtual_packages: String,
}

fn target_note(target: &Option<SolveTarget>) -> String {
    match target {
        Some(t) => format!("\n(target {}: {})", t.subdir, t.virtual_packages),
        None => String::new(),
    }
}

impl CondaError {
    /// A solve error, saying which target it was for.
    pub(crate) fn for_target(mut self, t: SolveTarget) -> Self {
        if let CondaError::UnknownPackages { target, .. }
        | CondaError::Unsatisfiable { target, .. }
        | CondaError::Solver { target, .. } = &mut self
        {
            *target = Some(t);
        }
        self
    }
}

impl Classify for CondaError {
    fn kind(&self) -> ErrorKind {
        match self {
            CondaError::UnknownSubdir { .. }
            | CondaError::NotCached { .. }
            | CondaError::WriteRecord { .. }
            | CondaError::FragmentOutsideRoot { .. } => ErrorKind::Internal,
            CondaError::Fetch { kind, .. } => *kind,
            _ => ErrorKind::Input,
        }
    }
}

impl From<CondaError> for kiln_core::Error {
    fn from(e: CondaError) -> Self {
        kiln_core::Error::typed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e: kiln_core::Error = CondaError::NotCached { url: "u".into() }.into();
        assert_eq!(e.kind(), ErrorKind::Internal);
        let e: kiln_core::Error = CondaError::NoChannels.into();
        assert_eq!(e.kind(), ErrorKind::Input);
        assert!(matches!(
            e.downcast_ref::<CondaError>(),
            Some(CondaError::NoChannels)
        ));
        let e = CondaError::HostilePath {
            package: "x-1-0.conda".into(),
            path: "lib/a".into(),
            problem: Hostile::SymlinkOutside {
                target: "../../etc".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "refusing the package: symlink lib/a -> ../../etc points outside the package"
        );
    }

    #[test]
    fn solve_errors_name_their_target() {
        let e = CondaError::Solver {
            reason: "timed out".into(),
            target: None,
        };
        assert_eq!(e.to_string(), "[conda] solver: timed out");
        let e = e.for_target(SolveTarget {
            subdir: "linux-64".into(),
            virtual_packages: "__unix=0".into(),
        });
        assert_eq!(
            e.to_string(),
            "[conda] solver: timed out\n(target linux-64: __unix=0)"
        );
        // Other errors have no target to add.
        let e = CondaError::NoChannels.for_target(SolveTarget {
            subdir: "linux-64".into(),
            virtual_packages: String::new(),
        });
        assert!(!e.to_string().contains("target"));
    }
}
