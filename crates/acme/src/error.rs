//! What can go wrong while obtaining a certificate.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server could not be reached, or the connection broke.
    #[error("cannot reach the ACME server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with an error (an RFC 7807 problem document).
    #[error("the ACME server refused {url} ({status}{}): {detail}", kind.as_deref().map(|k| format!(", {k}")).unwrap_or_default())]
    Problem {
        url: String,
        status: u16,
        kind: Option<String>,
        detail: String,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The answer did not follow RFC 8555.
    #[error("unexpected answer from the ACME server: {0}")]
    Protocol(String),
    /// The server checked the challenge, or the order, and said no.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Crypto(String),
    #[error("the certificate store failed: {0}")]
    Store(String),
    #[error("the proxy refused the certificate: {0}")]
    Tls(#[from] cutover_proxy::TlsError),
    #[error("cannot read ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
}

impl AcmeError {
    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Problem { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the server's problem is of this type (without the
    /// `urn:ietf:params:acme:error:` prefix).
    pub fn is_problem(&self, name: &str) -> bool {
        matches!(self, AcmeError::Problem { kind: Some(kind), .. }
            if kind.strip_prefix("urn:ietf:params:acme:error:") == Some(name))
    }

    /// Whether trying again soon may help: the server was not reached or
    /// failed itself (no validation was spent).
    pub fn is_transient(&self) -> bool {
        match self {
            AcmeError::Unreachable { .. } => true,
            AcmeError::Problem { status, .. } => *status >= 500 || self.is_problem("badNonce"),
            _ => false,
        }
    }
}
