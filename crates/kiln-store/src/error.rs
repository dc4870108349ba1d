//! What the cache and the HTTP client fail with. URLs in these errors are
//! always redacted (see [`crate::http::redact`]): no credentials in messages.

use std::io;

use kiln_core::error::with_causes;
use kiln_core::{Classify, Digest, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Bytes written to the cache are not what a trusted index said (not
    /// transient: fetching again would give the same bytes).
    #[error(
        "content digest mismatch: expected {expected}, got {actual}; the download was discarded"
    )]
    DigestMismatch { expected: Digest, actual: Digest },

    /// A blob the caller relies on being cached is not (or no longer) there.
    #[error("blob {digest} is not in the cache")]
    NotCached { digest: Digest },

    /// The server answered with an error status: 404/410 (bad input),
    /// 401/403 (credentials), anything else (network).
    #[error("{url}: {}", status_message(*status))]
    HttpStatus { url: String, status: u16 },

    /// The request failed before a status: connection refused, DNS, TLS,
    /// timeout, or the body broke off.
    #[error("{url}: {}", with_causes(source))]
    Connection {
        url: String,
        /// Without its URL (which may hold credentials).
        source: reqwest::Error,
    },

    /// A download broke off while its body was being read.
    #[error("{url}: {source}")]
    Transfer { url: String, source: io::Error },

    /// A `file://` URL that cannot be read.
    #[error("{url}: {source}")]
    LocalFile { url: String, source: io::Error },

    /// `--offline`, and the URL is not cached.
    #[error("offline: {url} is not in the cache (run `kiln fetch` or `kiln cache import` first)")]
    Offline { url: String },

    /// A `304 Not Modified` to a request that had nothing to revalidate.
    #[error("{url}: the server answered 304 to an unconditional request")]
    Unsolicited304 { url: String },

    /// The HTTP client could not be set up (TLS roots, ...).
    #[error("cannot create the HTTP client: {} (for HTTPS kiln needs the system's CA certificates, e.g. the ca-certificates package, or SSL_CERT_FILE)", with_causes(.0))]
    Client(#[source] reqwest::Error),
}

fn status_message(status: u16) -> String {
    match status {
        404 | 410 => format!("not found (HTTP {status})"),
        401 | 403 => format!("access denied (HTTP {status})"),
        _ => match reqwest::StatusCode::from_u16(status) {
            Ok(s) => format!("HTTP {s}"),
            Err(_) => format!("HTTP {status}"),
        },
    }
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::DigestMismatch { .. } | StoreError::LocalFile { .. } => ErrorKind::Input,
            StoreError::HttpStatus { status, .. } => match status {
                404 | 410 => ErrorKind::Input,
                401 | 403 => ErrorKind::Auth,
                _ => ErrorKind::Network,
            },
            StoreError::Connection { .. }
            | StoreError::Transfer { .. }
            | StoreError::Offline { .. }
            | StoreError::Unsolicited304 { .. } => ErrorKind::Network,
            StoreError::NotCached { .. } | StoreError::Client(_) => ErrorKind::Internal,
        }
    }
}

impl From<StoreError> for kiln_core::Error {
    fn from(e: StoreError) -> Self {
        kiln_core::Error::typed(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify_and_read_as_before() {
        let at = |status| StoreError::HttpStatus {
            url: "https://***@host/x".into(),
            status,
        };
        assert_eq!(at(404).kind(), ErrorKind::Input);
        assert_eq!(at(410).kind(), ErrorKind::Input);
        assert_eq!(at(401).kind(), ErrorKind::Auth);
        assert_eq!(at(403).kind(), ErrorKind::Auth);
        assert_eq!(at(503).kind(), ErrorKind::Network);
        assert_eq!(at(429).kind(), ErrorKind::Network);
        assert_eq!(
            at(404).to_string(),
            "https://***@host/x: not found (HTTP 404)"
        );
        assert_eq!(
            at(403).to_string(),
            "https://***@host/x: access denied (HTTP 403)"
        );
        assert_eq!(
            at(503).to_string(),
            "https://***@host/x: HTTP 503 Service Unavailable"
        );
        let e: kiln_core::Error = at(401).into();
        assert_eq!(e.exit_code(), 4);
        assert!(matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::HttpStatus { status: 401, .. })
        ));
    }
}
