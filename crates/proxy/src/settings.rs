//! Tunables of the data plane.

use std::time::Duration;

/// Limits and timeouts of the proxy. `Default` gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// Largest accepted request body, in bytes (default 100 MiB). A bigger declared
    /// `Content-Length` is answered with 413 at once; a streamed body that
    /// grows past it is cut off (413 if no response has started yet).
    pub max_body: u64,
    /// Time a client has to send a complete request head, counted from the
    /// connection's start or from the first byte of a later request.
    /// Slow senders (slowloris) are disconnected.
    pub header_read_timeout: Duration,
    /// Time a keep-alive client connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Time to establish a TCP connection to an upstream; beyond it: 504.
    pub upstream_connect_timeout: Duration,
    /// Time from sending a request upstream to its response head; beyond it: 504.
    pub upstream_response_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_body: 100 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
        }
    }
}

/// `now + timeout` on tokio's clock, saturating far in the future (a
/// configured timeout may be huge).
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
