//! Each name's certificate as `cutover status`, `cutover certs`, the admin
//! API and `/metrics` show it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::x509::CertFacts;

/// Where a name stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertState {
    /// No certificate yet; the first order is under way or due.
    Pending,
    /// A certificate is served and not due for renewal.
    Valid,
    /// An order is running (a certificate may still be served).
    Ordering,
    /// The last order failed; it is retried at `retry_at` (a certificate
    /// that still works keeps serving).
    Failing,
}

/// One name's certificate and its renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub name: String,
    pub state: CertState,
    /// Issuer of the certificate served, if one is.
    pub issuer: Option<String>,
    /// Unix seconds.
    pub not_after: Option<u64>,
    /// When the next order is due (renewal, or retry after a failure).
    pub next_renewal: Option<u64>,
    pub last_error: Option<String>,
    /// Orders that failed in a row.
    pub failures: u32,
    /// Orders placed by this process.
    pub orders: u64,
}

impl CertStatus {
    pub(crate) fn new(name: &str) -> CertStatus {
        CertStatus {
            name: name.to_owned(),
            state: CertState::Pending,
            issuer: None,
            not_after: None,
            next_renewal: Some(unix(SystemTime::now())),
            last_error: None,
            failures: 0,
            orders: 0,
        }
    }

    /// Records the certificate now served.
    pub(crate) fn serving(&mut self, facts: &CertFacts) {
        self.state = CertState::Valid;
        self.issuer = Some(facts.issuer.clone());
        self.not_after = Some(unix(facts.not_after));
        self.next_renewal = Some(unix(facts.renewal_due()));
        self.last_error = None;
        self.failures = 0;
    }
}

/// Seconds since the Unix epoch.
pub fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
