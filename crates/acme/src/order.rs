//! One certificate for one name: order → authorization → challenge
//! answered by the proxy → validation → finalize with a fresh key → chain.

use std::time::{Duration, Instant};

use cutover_config::Challenge;
use cutover_proxy::{Http01Answers, Tls};

use crate::client::{describe_problem, AcmeClient, Authorization, Order};
use crate::error::AcmeError;

/// Longest wait for the server to validate or to issue.
const POLL_BOUND: Duration = Duration::from_secs(90);
/// First pause between polls, doubled up to `POLL_MAX_PAUSE` unless the
/// server says otherwise (Retry-After).
const POLL_FIRST_PAUSE: Duration = Duration::from_millis(200);
const POLL_MAX_PAUSE: Duration = Duration::from_secs(5);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Where challenge answers are published: the proxy's own handles.
#[derive(Clone)]
pub(crate) struct Answerer {
    pub challenge: Challenge,
    pub tls: Tls,
    pub http01: Http01Answers,
}

impl Answerer {
    fn publish(&self, name: &str, token: &str, key_authorization: &str) -> Result<(), AcmeError> {
        match self.challenge {
            Challenge::Http01 => {
                self.http01.set(token, key_authorization);
                Ok(())
            }
            Challenge::TlsAlpn01 => {
                let (cert, key) = alpn_certificate(name, key_authorization)?;
                self.tls.set_alpn_challenge(name, cert, key)?;
                Ok(())
            }
        }
    }

    fn withdraw(&self, name: &str, token: &str) {
        match self.challenge {
            Challenge::Http01 => self.http01.remove(token),
            Challenge::TlsAlpn01 => self.tls.clear_alpn_challenge(name),
        }
    }
}

/// The RFC 8737 certificate: self-signed for `name`, with the SHA-256 of
/// the key authorization in the critical acmeIdentifier extension.
fn alpn_certificate(name: &str, key_authorization: &str) -> Result<(Vec<u8>, Vec<u8>), AcmeError> {
    let crypto = |e: rcgen::Error| AcmeError::Crypto(format!("tls-alpn-01 certificate: {e}"));
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(crypto)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().map_err(crypto)?;
    let cert = params.self_signed(&key).map_err(crypto)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// Orders, proves and downloads a certificate for `name`.
pub(crate) async fn obtain(
    client: &AcmeClient,
    answerer: &Answerer,
    name: &str,
) -> Result<Issued, AcmeError> {
    let (order_url, order) = client.new_order(name).await?;
    for url in &order.authorizations {
        authorize(client, answerer, name, url).await?;
    }
    let key = rcgen::KeyPair::generate()
        .map_err(|e| AcmeError::Crypto(format!("certificate key: {e}")))?;
    let csr = rcgen::CertificateParams::new(vec![name.to_owned()])
        .and_then(|params| params.serialize_request(&key))
        .map_err(|e| AcmeError::Crypto(format!("certificate request: {e}")))?;
    let ready = wait_for_order(client, &order_url, "ready", order).await?;
    let finalized = client.finalize(&ready.finalize, csr.der()).await?;
    let valid = wait_for_order(client, &order_url, "valid", finalized).await?;
    let certificate = valid
        .certificate
        .ok_or_else(|| AcmeError::Protocol("a valid order has no certificate URL".into()))?;
    let chain_pem = client.download(&certificate).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Proves control of `name` for one authorization (nothing to do when the
/// server still holds a valid one).
async fn authorize(
    client: &AcmeClient,
    answerer: &Answerer,
    name: &str,
    url: &str,
) -> Result<(), AcmeError> {
    let (authorization, _) = client.fetch::<Authorization>(url).await?;
    if authorization.status == "valid" {
        return Ok(());
    }
    let wanted = answerer.challenge.as_str();
    let challenge = authorization
        .challenges
        .iter()
        .find(|c| c.kind == wanted)
        .ok_or_else(|| {
            AcmeError::Invalid(format!(
                "the ACME server offers no {wanted} challenge for {name}"
            ))
        })?;
    let key_authorization = client.key().key_authorization(&challenge.token);
    answerer.publish(name, &challenge.token, &key_authorization)?;
    let outcome = async {
        client.respond(&challenge.url).await?;
        wait_for_authorization(client, url, name).await
    }
    .await;
    answerer.withdraw(name, &challenge.token);
    outcome
}

async fn wait_for_authorization(
    client: &AcmeClient,
    url: &str,
    name: &str,
) -> Result<(), AcmeError> {
    let mut poll = Poll::new();
    loop {
        let (authorization, retry_after) = client.fetch::<Authorization>(url).await?;
        match authorization.status.as_str() {
            "valid" => return Ok(()),
            "pending" | "processing" => poll.pause(retry_after, "validation").await?,
            other => {
                let problem = authorization
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref());
                return Err(AcmeError::Invalid(format!(
                    "the ACME server could not validate {name} ({other}): {}",
                    describe_problem(problem)
                )));
            }
        }
    }
}

/// Polls the order until it reaches `wanted`; `invalid` is an error.
async fn wait_for_order(
    client: &AcmeClient,
    url: &str,
    wanted: &str,
    mut order: Order,
) -> Result<Order, AcmeError> {
    let mut poll = Poll::new();
    let mut retry_after = None;
    loop {
        if order.status == wanted || (wanted == "ready" && order.status == "valid") {
            return Ok(order);
        }
        if order.status == "invalid" {
            return Err(AcmeError::Invalid(format!(
                "the order became invalid: {}",
                describe_problem(order.error.as_ref())
            )));
        }
        poll.pause(retry_after, "the order").await?;
        (order, retry_after) = client.fetch::<Order>(url).await?;
    }
}

/// Paced, bounded polling.
struct Poll {
    started: Instant,
    pause: Duration,
}

impl Poll {
    fn new() -> Poll {
        Poll {
            started: Instant::now(),
            pause: POLL_FIRST_PAUSE,
        }
    }

    async fn pause(&mut self, retry_after: Option<Duration>, what: &str) -> Result<(), AcmeError> {
        if self.started.elapsed() > POLL_BOUND {
            return Err(AcmeError::Invalid(format!(
                "the ACME server did not finish {what} within {POLL_BOUND:?}"
            )));
        }
        let pause = retry_after
            .unwrap_or(self.pause)
            .clamp(POLL_FIRST_PAUSE, POLL_MAX_PAUSE);
        tokio::time::sleep(pause).await;
        self.pause = (self.pause * 2).min(POLL_MAX_PAUSE);
        Ok(())
    }
}
