//! What can be wrong with a Dockerfile kiln is asked to build. Every cause
//! is the user's to act on ([`ErrorKind::Input`], exit code 2), and every
//! message names the Dockerfile and the line (and column, when the parser
//! gives one).

use std::path::PathBuf;

use kiln_core::{Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    /// The Dockerfile cannot be read.
    #[error("cannot read Dockerfile {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The parser refused the text.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A valid instruction (or form of one) this increment cannot translate.
    #[error("{} line {line}: {instruction}: {what} is not supported yet", path.display())]
    NotSupported {
        path: PathBuf,
        line: usize,
        /// The instruction keyword (`ADD`, `HEALTHCHECK`, `COPY --from`, …).
        instruction: String,
        what: String,
    },
    /// A value kiln cannot use (a bad variable expansion, a relative path,
    /// a source missing from the context, …).
    #[error("{} line {line}: {instruction}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        instruction: String,
        message: String,
    },
    /// Package installs in an order kiln's pipeline cannot reproduce.
    #[error(
        "{} line {line}: RUN installs {stage} packages after {earlier} packages (line {earlier_line}); kiln installs apt, then conda, then pip",
        path.display()
    )]
    Order {
        path: PathBuf,
        line: usize,
        stage: &'static str,
        earlier: &'static str,
        earlier_line: usize,
    },
}

impl DockerfileError {
    /// The Dockerfile line the error is about (0 when it is about the file).
    pub fn line(&self) -> usize {
        match self {
            DockerfileError::Unreadable { .. } => 0,
            DockerfileError::Syntax { line, .. }
            | DockerfileError::NotSupported { line, .. }
            | DockerfileError::Invalid { line, .. }
            | DockerfileError::Order { line, .. } => *line,
        }
    }
}

impl Classify for DockerfileError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Input
    }
}

impl From<DockerfileError> for kiln_core::Error {
    fn from(e: DockerfileError) -> Self {
        kiln_core::Error::typed(e)
    }
}
