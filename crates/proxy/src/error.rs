//! Typed errors: [`ProxyError`] for the caller of [`crate::serve`], and
//! `ForwardError` for one request that could not be proxied (each variant
//! maps to the status and short text the client gets).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::http1::client::ExchangeError;

/// Why [`crate::serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The listening socket is unusable (e.g. its address cannot be read).
    #[error("proxy listener is unusable: {0}")]
    Listener(#[source] io::Error),
}

/// Why one request could not be forwarded; rendered as the client's response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("no app serves host '{host}'")]
    NoApp { host: String },
    #[error("no app serves path '{path}' on host '{host}'")]
    NoPath { host: String, path: String },
    #[error("app '{app}' has no live release")]
    NoLiveRelease { app: Arc<str> },
    #[error("app '{app}': its release has no endpoint")]
    NoEndpoint { app: Arc<str> },
    #[error("request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("reading the request body from the client failed")]
    ClientBody,
    #[error("{method} requests are not supported")]
    MethodNotSupported { method: http::Method },
    #[error("app '{app}': connecting to its release timed out after {timeout:?}")]
    ConnectTimeout { app: Arc<str>, timeout: Duration },
    #[error("app '{app}': {}", connect_failure(source))]
    Connect {
        app: Arc<str>,
        #[source]
        source: io::Error,
    },
    #[error("app '{app}': its release did not answer within {timeout:?}")]
    ResponseTimeout { app: Arc<str>, timeout: Duration },
    #[error("app '{app}': its release switched protocols without being asked to")]
    UnexpectedSwitch { app: Arc<str> },
    #[error("app '{app}': {}", exchange_failure(source))]
    Exchange {
        app: Arc<str>,
        #[source]
        source: ExchangeError,
    },
    /// An HTTP/2 exchange (hyper) failed.
    #[error("app '{app}': its release failed to answer")]
    Upstream {
        app: Arc<str>,
        #[source]
        source: hyper::Error,
    },
}

/// What a failed connection attempt was, in the client's words: a refusal
/// is told apart from every other failure.
fn connect_failure(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "its release refused the connection".to_owned(),
        _ => format!("connecting to its release failed: {e}"),
    }
}

/// What went wrong in an HTTP/1.1 exchange, in the client's words: a reset
/// is not a refusal, a malformed head says what was malformed.
fn exchange_failure(e: &ExchangeError) -> String {
    let io_failure = |e: &io::Error| match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            "its release reset the connection".to_owned()
        }
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
            "its release closed the connection".to_owned()
        }
        _ => format!("talking to its release failed: {e}"),
    };
    match e {
        ExchangeError::Unsent(e) | ExchangeError::Io(e) => io_failure(e),
        ExchangeError::ClosedBeforeResponse(Some(e)) => {
            format!("{} before responding", io_failure(e))
        }
        ExchangeError::ClosedBeforeResponse(None) => {
            "its release closed the connection before responding".to_owned()
        }
        ExchangeError::Invalid(head) => {
            format!("its release sent a malformed response: {head}")
        }
        ExchangeError::UnexpectedSwitch => {
            "its release switched protocols without being asked to".to_owned()
        }
        ExchangeError::Timeout(timeout) => format!("its release did not answer within {timeout:?}"),
        ExchangeError::Body(_) => "the request body could not be sent".to_owned(),
    }
}

impl ForwardError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ForwardError::NoApp { .. } | ForwardError::NoPath { .. } => StatusCode::NOT_FOUND,
            ForwardError::NoLiveRelease { .. } | ForwardError::NoEndpoint { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ForwardError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ForwardError::ClientBody => StatusCode::BAD_REQUEST,
            ForwardError::MethodNotSupported { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ForwardError::ConnectTimeout { .. } | ForwardError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ForwardError::Connect { .. }
            | ForwardError::Upstream { .. }
            | ForwardError::Exchange { .. }
            | ForwardError::UnexpectedSwitch { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The app the request was for, when known.
    pub(crate) fn app(&self) -> Option<&str> {
        match self {
            ForwardError::NoLiveRelease { app }
            | ForwardError::NoEndpoint { app }
            | ForwardError::ConnectTimeout { app, .. }
            | ForwardError::Connect { app, .. }
            | ForwardError::ResponseTimeout { app, .. }
            | ForwardError::Upstream { app, .. }
            | ForwardError::Exchange { app, .. }
            | ForwardError::UnexpectedSwitch { app } => Some(app),
            _ => None,
        }
    }

    /// Whether the upstream (not the client) is at fault; counted in its stats.
    pub(crate) fn is_upstream_fault(&self) -> bool {
        matches!(
            self,
            ForwardError::ConnectTimeout { .. }
                | ForwardError::Connect { .. }
                | ForwardError::ResponseTimeout { .. }
                | ForwardError::Upstream { .. }
                | ForwardError::Exchange { .. }
                | ForwardError::UnexpectedSwitch { .. }
        )
    }
}
