//! What the apt stage can fail with, by cause. Public functions return
//! [`kiln_core::Result`]; the cause travels inside it and is found again with
//! `err.downcast_ref::<AptError>()`.

use std::path::PathBuf;

use kiln_core::error::{Classify, ErrorKind};

/// Why the apt stage failed.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    // --- the request ([apt] in the spec) ---
    /// A `[apt] packages` entry does not parse.
    #[error("[apt] packages: {detail}")]
    BadRequest { request: String, detail: String },
    /// `name:ARCH` names an architecture Debian does not have.
    #[error(
        "[apt] packages: `{request}`: `{arch}` is not a Debian architecture (one of {})",
        .known.join(", ")
    )]
    NotDebianArch {
        request: String,
        arch: String,
        known: Vec<String>,
    },
    /// The image's platform has no Debian architecture.
    #[error("apt: Debian has no architecture for platform {platform}")]
    NoDebianArch { platform: String },
    #[error("[apt] bootstrap needs `base = \"scratch\"`; the base already is a system")]
    BootstrapNeedsScratch,
    #[error("[apt] asks for nothing: give packages or bootstrap")]
    NothingRequested,

    // --- sources and keyrings ---
    /// An apt source line (spec, base image or host) does not parse.
    #[error("apt source line `{line}`: {problem}")]
    BadSourceLine { line: String, problem: String },
    /// A deb822 `.sources` paragraph lacks a required field.
    #[error("deb822 source without {field}")]
    Deb822Missing { field: &'static str },
    /// Neither the spec, the base image nor the host names a source.
    #[error(
        "apt: no sources: the base image has none and the host has none for suite `{suite}`; give [apt] sources"
    )]
    NoSources { suite: String },
    /// A source's keyring file cannot be read.
    #[error("apt: keyring {} for {uri} {suite}: {source}", .path.display())]
    KeyringUnreadable {
        path: PathBuf,
        uri: String,
        suite: String,
        #[source]
        source: std::io::Error,
    },
    /// A keyring was read but holds no usable OpenPGP key.
    #[error("keyring {keyring}{problem}")]
    BadKeyring {
        keyring: String,
        problem: KeyringProblem,
    },

    // --- repositories ---
    /// `InRelease` is not a cleartext-signed OpenPGP message.
    #[error("{repo}: not a signed InRelease file: {detail}")]
    NotSigned { repo: String, detail: String },
    /// `InRelease`'s signature does not verify against the source's keyring.
    #[error(
        "{repo}: the OpenPGP signature does not verify against the keyring; refusing to use this repository"
    )]
    BadSignature { repo: String },
    /// The signed Release lists no `Packages` index for a component and architecture.
    #[error("{repo}: Release lists no index for {component}/{arch}")]
    NoIndex {
        repo: String,
        component: String,
        arch: String,
    },
    /// A repository file that passed its checksum does not read as one.
    #[error("{repo}: {problem}")]
    BadIndex { repo: String, problem: IndexProblem },

    // --- resolution ---
    /// Requested packages no configured repository has, or not at the
    /// requested version: every one, with close names or the versions there are.
    #[error(
        "apt: {} not found in the configured repositories:{}",
        if missing.len() == 1 { "1 requested package".to_string() } else { format!("{} requested packages", missing.len()) },
        kiln_core::suggest::lines(missing)
    )]
    UnknownPackages {
        missing: Vec<kiln_core::suggest::Missing>,
    },
    /// The solver found no installable set; `explanation` is its account of why.
    #[error("apt: the requested packages cannot be installed together:\n{explanation}")]
    Unsatisfiable { explanation: String },
    #[error("apt: solver cancelled")]
    SolverCancelled,

    // --- packages ---
    /// A `.deb` kiln.lock pins is another package than the lock says.
    #[error(
        "apt: locked {locked_name} {locked_version}: {url} is {name} {version}, not what kiln.lock says"
    )]
    LockMismatch {
        locked_name: String,
        locked_version: String,
        url: String,
        name: String,
        version: String,
    },
    /// A `.deb` is malformed: not an ar archive, a corrupt or unsupported
    /// member, a missing or empty control file. `package` says which.
    #[error("{package}: {detail}")]
    BadDeb { package: String, detail: String },
    /// A `.deb` member kiln refuses to unpack.
    #[error("{package}: {}", .reason.describe(.member))]
    HostileDeb {
        package: String,
        /// The member's path as the archive gives it (for an escaping link
        /// target: the target).
        member: String,
        reason: Hostile,
    },
    /// A zstd decoder could not be set up.
    #[error("zstd: {0}")]
    Zstd(#[source] std::io::Error),

    // --- --run-scripts ---
    /// Maintainer scripts run only for the host's architecture.
    #[error(
        "--run-scripts: the image is {image} but this machine is {host}; maintainer scripts run only for the host's architecture (kiln does not emulate)"
    )]
    ForeignHost { image: String, host: String },
    /// A maintainer script exited non-zero; `output` is its last lines.
    #[error(
        "--run-scripts: {package} {script} {arg} failed ({status}); nothing was written. Its last output:\n{output}"
    )]
    ScriptFailed {
        package: String,
        script: String,
        arg: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Why a keyring is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyringProblem {
    #[error(": not an OpenPGP keyring: {0}")]
    NotOpenPgp(String),
    #[error(": unreadable key: {0}")]
    UnreadableKey(String),
    #[error(" holds no keys")]
    NoKeys,
}

/// Why a repository file does not read, though its checksum matched.
#[derive(Debug, thiserror::Error)]
pub enum IndexProblem {
    #[error("InRelease is not UTF-8")]
    ReleaseNotUtf8,
    #[error("corrupt index {index}: {detail}")]
    Corrupt { index: String, detail: String },
    #[error("index {index} is not UTF-8")]
    NotUtf8 { index: String },
    #[error("malformed entry in {index}: {detail}")]
    MalformedEntry { index: String, detail: String },
}

/// What makes a `.deb` member hostile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A path that climbs out of the root with `..`.
    EscapesRoot,
    /// A hard link to a file the package does not hold.
    LinkOutside { target: String },
    /// A device node or fifo.
    DeviceNode,
}

impl Hostile {
    fn describe(&self, member: &str) -> String {
        match self {
            Hostile::EscapesRoot => format!("path `{member}` escapes the root"),
            Hostile::LinkOutside { target } => {
                format!("hard link {member} points outside the package ({target})")
            }
            Hostile::DeviceNode => format!("refusing device node or fifo `{member}`"),
        }
    }
}

impl Classify for AptError {
    fn kind(&self) -> ErrorKind {
        match self {
            AptError::SolverCancelled => ErrorKind::Internal,
            AptError::BadRequest { .. }
            | AptError::NotDebianArch { .. }
            | AptError::NoDebianArch { .. }
            | AptError::BootstrapNeedsScratch
            | AptError::NothingRequested
            | AptError::BadSourceLine { .. }
            | AptError::Deb822Missing { .. }
            | AptError::NoSources { .. }
            | AptError::KeyringUnreadable { .. }
            | AptError::BadKeyring { .. }
            | AptError::NotSigned { .. }
            | AptError::BadSignature { .. }
            | AptError::NoIndex { .. }
            | AptError::BadIndex { .. }
            | AptError::UnknownPackages { .. }
            | AptError::Unsatisfiable { .. }
            | AptError::LockMismatch { .. }
            | AptError::BadDeb { .. }
            | AptError::HostileDeb { .. }
            | AptError::Zstd(_)
            | AptError::ForeignHost { .. }
            | AptError::ScriptFailed { .. } => ErrorKind::Input,
        }
    }
}

impl From<AptError> for kiln_core::Error {
    fn from(e: AptError) -> Self {
        kiln_core::Error::typed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_before_and_classify() {
        use std::os::unix::process::ExitStatusExt;
        let cases: Vec<(AptError, &str)> = vec![
            (
                AptError::KeyringUnreadable {
                    path: "/k.gpg".into(),
                    uri: "http://m/debian".into(),
                    suite: "bookworm".into(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
                "apt: keyring /k.gpg for http://m/debian bookworm: entity not found",
            ),
            (
                AptError::BadKeyring {
                    keyring: "k.gpg".into(),
                    problem: KeyringProblem::NoKeys,
                },
                "keyring k.gpg holds no keys",
            ),
            (
                AptError::BadKeyring {
                    keyring: "k.gpg".into(),
                    problem: KeyringProblem::UnreadableKey("bad".into()),
                },
                "keyring k.gpg: unreadable key: bad",
            ),
            (
                AptError::NoIndex {
                    repo: "http://m bookworm".into(),
                    component: "main".into(),
                    arch: "arm64".into(),
                },
                "http://m bookworm: Release lists no index for main/arm64",
            ),
            (
                AptError::BadIndex {
                    repo: "r s".into(),
                    problem: IndexProblem::MalformedEntry {
                        index: "main/binary-amd64/Packages.xz".into(),
                        detail: "missing Version".into(),
                    },
                },
                "r s: malformed entry in main/binary-amd64/Packages.xz: missing Version",
            ),
            (
                AptError::LockMismatch {
                    locked_name: "hello".into(),
                    locked_version: "1.0".into(),
                    url: "http://m/h.deb".into(),
                    name: "other".into(),
                    version: "2.0".into(),
                },
                "apt: locked hello 1.0: http://m/h.deb is other 2.0, not what kiln.lock says",
            ),
            (
                AptError::HostileDeb {
                    package: "evil_1".into(),
                    member: "x".into(),
                    reason: Hostile::LinkOutside {
                        target: "/etc/shadow".into(),
                    },
                },
                "evil_1: hard link x points outside the package (/etc/shadow)",
            ),
            (
                AptError::ScriptFailed {
                    package: "script-fail".into(),
                    script: "postinst".into(),
                    arg: "configure".into(),
                    status: std::process::ExitStatus::from_raw(1 << 8),
                    output: "cannot configure".into(),
                },
                "--run-scripts: script-fail postinst configure failed (exit status: 1); nothing was written. Its last output:\ncannot configure",
            ),
            (
                AptError::NoSources {
                    suite: "trixie".into(),
                },
                "apt: no sources: the base image has none and the host has none for suite `trixie`; give [apt] sources",
            ),
            (
                AptError::BootstrapNeedsScratch,
                "[apt] bootstrap needs `base = \"scratch\"`; the base already is a system",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
            assert_eq!(e.kind(), ErrorKind::Input, "{e}");
        }
        assert_eq!(AptError::SolverCancelled.kind(), ErrorKind::Internal);
        let e: kiln_core::Error = AptError::NothingRequested.into();
        assert_eq!(e.exit_code(), 2);
        assert!(matches!(
            e.context("linux/amd64").downcast_ref::<AptError>(),
            Some(AptError::NothingRequested)
        ));
    }
}
