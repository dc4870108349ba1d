//! One error type for the whole pipeline, grouped by who has to act:
//! the user (bad input), the network/registry, or credentials.

use std::fmt;

/// Everything kiln can fail with. The variant decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec, a flag, a local file or a referenced image is wrong. Exit code 2.
    #[error("{0}")]
    Input(String),
    /// A registry or the network failed (unreachable, 5xx, broken transfer). Exit code 3.
    #[error("{0}")]
    Network(String),
    /// The registry refused our credentials. Exit code 4.
    #[error("{0}")]
    Auth(String),
    /// Local I/O failure outside the user's inputs (disk full, permissions on the cache ...). Exit code 1.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A bug or an unexpected state. Exit code 1.
    #[error("{0}")]
    Internal(String),
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

    /// Process exit code: 2 bad input, 3 network/registry, 4 authentication, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) => 2,
            Error::Network(_) => 3,
            Error::Auth(_) => 4,
            Error::Io { .. } | Error::Internal(_) => 1,
        }
    }

    /// Short machine-readable class, used in `--json` error output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Input(_) => "input",
            Error::Network(_) => "network",
            Error::Auth(_) => "auth",
            Error::Io { .. } => "io",
            Error::Internal(_) => "internal",
        }
    }

    /// Prefix the message with where it happened, keeping the class.
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
