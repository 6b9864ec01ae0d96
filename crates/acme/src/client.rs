//! The ACME protocol (RFC 8555) as cutover uses it: the directory, nonces,
//! signed requests (retried once per `badNonce`), the account, orders,
//! authorizations, challenges, finalization and the certificate download.

use std::sync::Mutex;

use http::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::AcmeError;
use crate::http::{Answer, HttpsClient};
use crate::jws::AccountKey;

/// How often a request refused for a stale nonce is signed again.
const NONCE_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// An order (RFC 8555 7.1.3), as far as cutover reads it.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Order {
    pub status: String,
    #[serde(default)]
    pub authorizations: Vec<String>,
    pub finalize: String,
    pub certificate: Option<String>,
    pub error: Option<Value>,
}

/// An authorization (RFC 8555 7.1.4).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Authorization {
    pub status: String,
    #[serde(default)]
    pub challenges: Vec<ChallengeObject>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ChallengeObject {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub token: String,
    pub error: Option<Value>,
}

/// A session with one ACME server under one account.
pub(crate) struct AcmeClient {
    http: HttpsClient,
    directory: Directory,
    key: AccountKey,
    /// The account URL (`kid`), once registered.
    kid: Mutex<Option<String>>,
    /// A nonce from the last answer, used by the next request.
    nonce: Mutex<Option<String>>,
    contact: Vec<String>,
}

impl AcmeClient {
    /// Reads the directory at `url`.
    pub(crate) async fn connect(
        http: HttpsClient,
        url: &str,
        key: AccountKey,
        contact: Vec<String>,
    ) -> Result<AcmeClient, AcmeError> {
        let answer = http.send(Method::GET, url, None).await?;
        let answer = successful(url, answer)?;
        let directory: Directory = parse(url, &answer)?;
        Ok(AcmeClient {
            http,
            directory,
            key,
            kid: Mutex::new(None),
            nonce: Mutex::new(None),
            contact,
        })
    }

    pub(crate) fn key(&self) -> &AccountKey {
        &self.key
    }

    /// Registers the account (or finds it again: the same key always
    /// names the same account) once per session.
    pub(crate) async fn ensure_account(&self) -> Result<String, AcmeError> {
        if let Some(kid) = lock(&self.kid).clone() {
            return Ok(kid);
        }
        let url = self.directory.new_account.clone();
        let payload = json!({"termsOfServiceAgreed": true, "contact": self.contact});
        let answer = self.post(&url, None, Some(&payload)).await?;
        let kid = answer
            .header("location")
            .ok_or_else(|| AcmeError::Protocol("the new account has no Location".into()))?
            .to_owned();
        *lock(&self.kid) = Some(kid.clone());
        Ok(kid)
    }

    /// A new order for one DNS name: its URL and body.
    pub(crate) async fn new_order(&self, name: &str) -> Result<(String, Order), AcmeError> {
        let url = self.directory.new_order.clone();
        let payload = json!({"identifiers": [{"type": "dns", "value": name}]});
        let answer = self.signed(&url, Some(&payload)).await?;
        let location = answer
            .header("location")
            .ok_or_else(|| AcmeError::Protocol("the new order has no Location".into()))?
            .to_owned();
        Ok((location, parse(&url, &answer)?))
    }

    /// POST-as-GET of a JSON resource, with the server's Retry-After.
    pub(crate) async fn fetch<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
    ) -> Result<(T, Option<std::time::Duration>), AcmeError> {
        let answer = self.signed(url, None).await?;
        Ok((parse(url, &answer)?, answer.retry_after()))
    }

    /// Tells the server the challenge at `url` is ready to be checked.
    pub(crate) async fn respond(&self, url: &str) -> Result<(), AcmeError> {
        self.signed(url, Some(&json!({}))).await.map(drop)
    }

    /// Sends the CSR (DER) to the order's finalize URL.
    pub(crate) async fn finalize(&self, url: &str, csr_der: &[u8]) -> Result<Order, AcmeError> {
        let payload = json!({"csr": crate::jws::b64(csr_der)});
        let answer = self.signed(url, Some(&payload)).await?;
        parse(url, &answer)
    }

    /// The PEM chain at the certificate URL.
    pub(crate) async fn download(&self, url: &str) -> Result<String, AcmeError> {
        let answer = self.signed(url, None).await?;
        String::from_utf8(answer.body.to_vec())
            .map_err(|_| AcmeError::Protocol("the certificate chain is not PEM text".into()))
    }

    /// A request signed under the account (registered first if needed).
    async fn signed(&self, url: &str, payload: Option<&Value>) -> Result<Answer, AcmeError> {
        let kid = self.ensure_account().await?;
        self.post(url, Some(&kid), payload).await
    }

    /// A signed POST, signed again with a fresh nonce while the server
    /// says the nonce was bad; any other error answer is a `Problem`.
    async fn post(
        &self,
        url: &str,
        kid: Option<&str>,
        payload: Option<&Value>,
    ) -> Result<Answer, AcmeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let nonce = self.nonce().await?;
            let body = self.key.sign(url, &nonce, kid, payload)?;
            let answer = self.http.send(Method::POST, url, Some(body)).await?;
            self.keep_nonce(&answer);
            match successful(url, answer) {
                Err(e) if e.is_problem("badNonce") && attempt < NONCE_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn nonce(&self) -> Result<String, AcmeError> {
        if let Some(nonce) = lock(&self.nonce).take() {
            return Ok(nonce);
        }
        let url = &self.directory.new_nonce;
        let answer = self.http.send(Method::HEAD, url, None).await?;
        answer
            .header("replay-nonce")
            .map(str::to_owned)
            .ok_or_else(|| AcmeError::Protocol(format!("{url} gave no Replay-Nonce")))
    }

    fn keep_nonce(&self, answer: &Answer) {
        if let Some(nonce) = answer.header("replay-nonce") {
            *lock(&self.nonce) = Some(nonce.to_owned());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The answer if it is a success, else its problem document as an error.
fn successful(url: &str, answer: Answer) -> Result<Answer, AcmeError> {
    if answer.status.is_success() {
        return Ok(answer);
    }
    let problem: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Err(AcmeError::Problem {
        url: url.to_owned(),
        status: answer.status.as_u16(),
        kind: problem["type"].as_str().map(str::to_owned),
        detail: problem["detail"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&answer.body)
                    .chars()
                    .take(200)
                    .collect()
            }),
        retry_after: answer.retry_after(),
    })
}

fn parse<T: for<'de> Deserialize<'de>>(url: &str, answer: &Answer) -> Result<T, AcmeError> {
    serde_json::from_slice(&answer.body)
        .map_err(|e| AcmeError::Protocol(format!("{url} answered unreadable JSON: {e}")))
}

/// A problem object inside an order or challenge, as one line.
pub(crate) fn describe_problem(problem: Option<&Value>) -> String {
    match problem {
        Some(problem) => {
            let kind = problem["type"].as_str().unwrap_or("error");
            let kind = kind
                .strip_prefix("urn:ietf:params:acme:error:")
                .unwrap_or(kind);
            let detail = problem["detail"].as_str().unwrap_or("no detail given");
            format!("{kind}: {detail}")
        }
        None => "no reason given".into(),
    }
}
