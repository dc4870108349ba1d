//! Errors, grouped by who has to act: the user (bad input), the network or
//! registry, credentials, the local machine, or kiln itself.
//!
//! Each crate has its own typed error (a `thiserror` enum naming causes,
//! with the data a caller or a test can branch on) that implements
//! [`Classify`]; it travels up through this crate's [`Error`] as
//! [`Error::Typed`], so every function can return [`Result`] and `?` works
//! across crates, while `err.downcast_ref::<kiln_apt::AptError>()` still
//! finds the cause. The CLI maps [`ErrorKind`] to the exit code.

use std::fmt;

/// Who has to act on an error. Decides the exit code and `--json`'s `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The spec, a flag, a local file or a referenced image is wrong. Exit code 2.
    Input,
    /// A registry or the network failed (unreachable, 5xx, broken transfer). Exit code 3.
    Network,
    /// The registry refused our credentials. Exit code 4.
    Auth,
    /// Local I/O failure outside the user's inputs (disk full, cache permissions). Exit code 1.
    Io,
    /// A bug or an unexpected state. Exit code 1.
    Internal,
    /// A signature check failed (`kiln verify`): none verifies. Exit code 1.
    Verification,
}

impl ErrorKind {
    /// Process exit code: 2 bad input, 3 network/registry, 4 authentication, 1 anything else.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Input => 2,
            ErrorKind::Network => 3,
            ErrorKind::Auth => 4,
            ErrorKind::Io | ErrorKind::Internal | ErrorKind::Verification => 1,
        }
    }

    /// Short machine-readable name, used in `--json` error output.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Input => "input",
            ErrorKind::Network => "network",
            ErrorKind::Auth => "auth",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::Verification => "verification",
        }
    }
}

/// A crate's typed error says who has to act on it.
pub trait Classify: std::error::Error + Send + Sync + 'static {
    fn kind(&self) -> ErrorKind;
}

/// Everything kiln can fail with, as it crosses crate boundaries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec, a flag, a local file or a referenced image is wrong.
    #[error("{0}")]
    Input(String),
    /// A registry or the network failed.
    #[error("{0}")]
    Network(String),
    /// The registry refused our credentials.
    #[error("{0}")]
    Auth(String),
    /// Local I/O failure outside the user's inputs.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A bug or an unexpected state.
    #[error("{0}")]
    Internal(String),
    /// A crate's typed error (see [`Classify`]), with where it happened.
    #[error("{}{source}", context.iter().rev().map(|c| format!("{c}: ")).collect::<String>())]
    Typed {
        kind: ErrorKind,
        /// Outermost last; printed outermost first.
        context: Vec<String>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn input(msg: impl fmt::Display) -> Self {
        Error::Input(msg.to_string())
    }
    pub fn network(msg: impl fmt::Display) -> Self {
        Error::Network(msg.to_string())
    }
    pub fn internal(msg: impl fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }

    /// Carry a crate's typed error.
    pub fn typed(e: impl Classify) -> Self {
        Error::Typed {
            kind: e.kind(),
            context: Vec::new(),
            source: Box::new(e),
        }
    }

    /// Who has to act.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input(_) => ErrorKind::Input,
            Error::Network(_) => ErrorKind::Network,
            Error::Auth(_) => ErrorKind::Auth,
            Error::Io { .. } => ErrorKind::Io,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Typed { kind, .. } => *kind,
        }
    }

    /// Process exit code (see [`ErrorKind::exit_code`]).
    pub fn exit_code(&self) -> i32 {
        self.kind().exit_code()
    }

    /// The typed cause, when this is a crate's error of type `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            Error::Typed { source, .. } => source.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// Prefix the message with where it happened, keeping the class (and
    /// the typed cause).
    pub fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Error::Input(m) => Error::Input(format!("{what}: {m}")),
            Error::Network(m) => Error::Network(format!("{what}: {m}")),
            Error::Auth(m) => Error::Auth(format!("{what}: {m}")),
            Error::Internal(m) => Error::Internal(format!("{what}: {m}")),
            Error::Io { context, source } => Error::Io {
                context: format!("{what}: {context}"),
                source,
            },
            Error::Typed {
                kind,
                mut context,
                source,
            } => {
                context.push(what.to_string());
                Error::Typed {
                    kind,
                    context,
                    source,
                }
            }
        }
    }
}

/// An error's message followed by its causes, each once (reqwest keeps
/// "connection refused" in a source, not in its own message).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Attach a description to an `io::Error`.
pub trait IoContext<T> {
    fn io_context<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("no package `{0}`")]
    struct Missing(String);

    impl Classify for Missing {
        fn kind(&self) -> ErrorKind {
            ErrorKind::Input
        }
    }

    #[test]
    fn typed_errors_keep_kind_cause_and_context() {
        let e = Error::typed(Missing("nope".into()))
            .context("apt")
            .context("linux/arm64");
        assert_eq!(e.kind(), ErrorKind::Input);
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "linux/arm64: apt: no package `nope`");
        assert_eq!(e.downcast_ref::<Missing>().unwrap().0, "nope");
        assert!(Error::network("x").downcast_ref::<Missing>().is_none());
        assert_eq!(ErrorKind::Auth.exit_code(), 4);
        assert_eq!(ErrorKind::Network.name(), "network");
    }
}
