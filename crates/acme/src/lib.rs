//! # cutover-acme
//!
//! Automatic HTTPS (`[proxy.acme]`): certificates ordered from an ACME
//! server (RFC 8555), proven through the built-in proxy's own listeners
//! (tls-alpn-01, RFC 8737, or http-01), stored under `state_dir`, served by
//! SNI beside `[[proxy.tls]]` files and renewed at two thirds of their
//! lifetime, all without a restart.
//!
//! This is control plane. The proxy only ever loads what this crate
//! stores into its `ArcSwap`s ([`cutover_proxy::Tls::set_acme_certificate`],
//! [`cutover_proxy::Tls::set_alpn_challenge`], [`Http01Answers`]); a
//! handshake or request never waits on an order.
//!
//! # Layout
//!
//! - [`Acme`] (here): the handle `cutover serve` starts — stored
//!   certificates served at once, one scheduler task per name, status,
//!   forced renewals.
//! - `scheduler`: a name's loop: due time or forced renewal → order →
//!   store → serve; failures recorded with backoff (`Retry-After`
//!   honoured), never touching what is served.
//! - `order`: one certificate: order, authorizations, the challenge
//!   answered through the proxy (`Answerer`), finalize with a fresh key,
//!   download.
//! - `client`: the protocol: directory, nonces (`badNonce` retried),
//!   signed requests, account, resources and problem documents.
//! - `jws`: the account key (ECDSA P-256, ring), JWK thumbprint, ES256
//!   flattened JWS.
//! - `http`: HTTPS to the ACME server (hyper + rustls; roots of `ca_file`
//!   or of the system), `Retry-After`.
//! - [`store`]: `state_dir/acme/` (0700): `account.pem` and
//!   `certs/<name>.pem` (chain + key), 0600, written atomically.
//! - [`x509`]: validity and issuer read from a certificate's DER.
//! - [`status`]: [`CertStatus`], what status, API and metrics show.
//! - `error`: [`AcmeError`].

#![forbid(unsafe_code)]

mod client;
mod error;
mod http;
mod jws;
mod order;
mod scheduler;
pub mod status;
pub mod store;
pub mod x509;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use cutover_config::AcmeConfig;
use cutover_proxy::{Http01Answers, Tls};
use tokio::sync::{mpsc, oneshot};

pub use error::AcmeError;
pub use order::Issued;
pub use status::{CertState, CertStatus};

use client::AcmeClient;
use order::Answerer;
use store::CertStore;

/// Longest a forced renewal is waited for.
const RENEW_WAIT: Duration = Duration::from_secs(180);

/// Automatic HTTPS for one daemon. Cheap to clone.
#[derive(Clone)]
pub struct Acme {
    shared: Arc<Shared>,
    /// Forced renewals, per name.
    asks: Arc<BTreeMap<String, mpsc::Sender<scheduler::RenewAsk>>>,
}

/// What every name's task shares.
pub(crate) struct Shared {
    config: AcmeConfig,
    store: CertStore,
    answerer: Answerer,
    http: http::HttpsClient,
    /// The session with the ACME server, made on the first order.
    client: tokio::sync::Mutex<Option<Arc<AcmeClient>>>,
    statuses: Mutex<BTreeMap<String, CertStatus>>,
}

/// Why a forced renewal did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error("{0} is not one of [proxy.acme] domains")]
    UnknownName(String),
    #[error("the order failed: {0}")]
    Failed(String),
    #[error("cutover is stopping")]
    Stopped,
    #[error("the order did not finish within {0:?}; see `cutover certs`")]
    TimedOut(Duration),
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.shared.config.directory)
            .field("names", &self.asks.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Acme {
    /// Serves the stored certificates of `config.domains` at once, then
    /// starts each name's scheduler (orders go out for names without a
    /// usable certificate). Needs a tokio runtime.
    pub fn start(
        config: &AcmeConfig,
        state_dir: &Path,
        tls: Tls,
        http01: Http01Answers,
    ) -> Result<Acme, AcmeError> {
        let store = CertStore::open(state_dir)?;
        let http = http::HttpsClient::new(config.ca_file.as_deref())?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            store,
            answerer: Answerer {
                challenge: config.challenge,
                tls,
                http01,
            },
            http,
            client: tokio::sync::Mutex::new(None),
            statuses: Mutex::new(BTreeMap::new()),
        });
        let mut asks = BTreeMap::new();
        for name in &config.domains {
            shared.serve_stored(name);
            let (ask, asked) = mpsc::channel(4);
            asks.insert(name.clone(), ask);
            tokio::spawn(scheduler::run(Arc::clone(&shared), name.clone(), asked));
        }
        Ok(Acme {
            shared,
            asks: Arc::new(asks),
        })
    }

    /// Every name's certificate, by name.
    pub fn status(&self) -> Vec<CertStatus> {
        self.shared.lock().values().cloned().collect()
    }

    /// Orders a new certificate for `name` now and waits for the outcome.
    pub async fn renew(&self, name: &str) -> Result<CertStatus, RenewError> {
        let name = name.to_ascii_lowercase();
        let ask = self
            .asks
            .get(&name)
            .ok_or_else(|| RenewError::UnknownName(name.clone()))?;
        let (reply, outcome) = oneshot::channel();
        ask.send(reply).await.map_err(|_| RenewError::Stopped)?;
        match tokio::time::timeout(RENEW_WAIT, outcome).await {
            Err(_) => Err(RenewError::TimedOut(RENEW_WAIT)),
            Ok(Err(_)) => Err(RenewError::Stopped),
            Ok(Ok(Err(message))) => Err(RenewError::Failed(message)),
            Ok(Ok(Ok(()))) => self.shared.status(&name).ok_or(RenewError::Stopped),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, CertStatus>> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn status(&self, name: &str) -> Option<CertStatus> {
        self.lock().get(name).cloned()
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut CertStatus)) {
        let mut statuses = self.lock();
        let status = statuses
            .entry(name.to_owned())
            .or_insert_with(|| CertStatus::new(name));
        change(status);
    }

    /// When `name`'s next order is due.
    fn next_due(&self, name: &str) -> SystemTime {
        self.status(name)
            .and_then(|s| s.next_renewal)
            .map_or_else(SystemTime::now, |at| {
                SystemTime::UNIX_EPOCH + Duration::from_secs(at)
            })
    }

    /// Serves `name`'s stored certificate, if there is a usable one.
    fn serve_stored(&self, name: &str) {
        self.update(name, |_| {});
        let Some(issued) = self.store.load(name) else {
            return;
        };
        let Some(facts) = facts_of(&issued) else {
            tracing::warn!(%name, "the stored certificate is unreadable; ordering a new one");
            return;
        };
        if facts.not_after <= SystemTime::now() {
            tracing::info!(%name, "the stored certificate has expired; ordering a new one");
            return;
        }
        match self
            .answerer
            .tls
            .set_acme_certificate(name, &issued.chain_pem, &issued.key_pem)
        {
            Ok(()) => {
                self.update(name, |status| status.serving(&facts));
                tracing::info!(%name, not_after = %humantime::format_rfc3339_seconds(facts.not_after), "serving the stored certificate");
            }
            Err(error) => {
                tracing::warn!(%name, %error, "the stored certificate is unusable; ordering a new one");
            }
        }
    }

    async fn forget_session(&self) {
        *self.client.lock().await = None;
    }

    /// The session with the ACME server (account key from the store).
    async fn client(&self) -> Result<Arc<AcmeClient>, AcmeError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(Arc::clone(client));
        }
        let key = self.store.account_key()?;
        let made = Arc::new(
            AcmeClient::connect(
                self.http.clone(),
                &self.config.directory,
                key,
                self.config.contact.clone(),
            )
            .await?,
        );
        *client = Some(Arc::clone(&made));
        Ok(made)
    }
}

/// Validity and issuer of an issued chain's leaf.
pub(crate) fn facts_of(issued: &Issued) -> Option<x509::CertFacts> {
    x509::facts(store::leaf_der(&issued.chain_pem)?.as_ref())
}
