//! One task per name: wait until the certificate is due (two thirds of its
//! lifetime, or now when there is none) or a renewal is asked for, order,
//! store, swap into the proxy; on failure keep what is served, record the
//! error and retry with backoff (at least the server's `Retry-After`).
//! Names never wait on each other.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};

use crate::error::AcmeError;
use crate::order::{obtain, Issued};
use crate::status::{unix, CertState};
use crate::Shared;

/// First retry after a failure that spent nothing (server unreachable or
/// failing), doubling up to `TRANSIENT_MAX`.
const TRANSIENT_FIRST: Duration = Duration::from_secs(1);
const TRANSIENT_MAX: Duration = Duration::from_secs(300);
/// First retry after the server said no (validation failed, rejected),
/// doubling up to `REFUSED_MAX`: failed validations count against rate
/// limits.
const REFUSED_FIRST: Duration = Duration::from_secs(30);
const REFUSED_MAX: Duration = Duration::from_secs(3600);
/// Longest `Retry-After` honoured as given.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(86_400);

/// A forced renewal and where its outcome goes.
pub(crate) type RenewAsk = oneshot::Sender<Result<(), String>>;

/// How long to wait after the `failures`-th failure in a row.
pub(crate) fn backoff(failures: u32, error: &AcmeError) -> Duration {
    let (first, max) = if error.is_transient() {
        (TRANSIENT_FIRST, TRANSIENT_MAX)
    } else {
        (REFUSED_FIRST, REFUSED_MAX)
    };
    let doubled = first.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let delay = doubled.min(max);
    match error.retry_after() {
        Some(asked) => delay.max(asked.min(RETRY_AFTER_MAX)),
        None => delay,
    }
}

/// Runs `name`'s renewals until the process ends.
pub(crate) async fn run(shared: Arc<Shared>, name: String, mut asks: mpsc::Receiver<RenewAsk>) {
    loop {
        let due = shared.next_due(&name);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let ask = tokio::select! {
            () = tokio::time::sleep(wait) => None,
            ask = asks.recv() => match ask {
                Some(ask) => Some(ask),
                None => return,
            },
        };
        let outcome = attempt(&shared, &name).await;
        if let Some(ask) = ask {
            let _ = ask.send(outcome);
        }
    }
}

/// One order for `name`, with its outcome recorded.
async fn attempt(shared: &Shared, name: &str) -> Result<(), String> {
    shared.update(name, |status| {
        status.state = CertState::Ordering;
        status.orders += 1;
    });
    tracing::info!(%name, directory = %shared.config.directory, "ordering a certificate");
    match order(shared, name).await {
        Ok(()) => Ok(()),
        Err(error) => {
            // The next attempt starts a new session: the server may have
            // lost the account, or its directory may have moved.
            shared.forget_session().await;
            let failures = shared.status(name).map_or(1, |s| s.failures + 1);
            let delay = backoff(failures, &error);
            let message = error.to_string();
            tracing::warn!(%name, error = %message, retry_in = ?delay, "obtaining a certificate failed; the certificate served (if any) stays");
            shared.update(name, |status| {
                status.state = CertState::Failing;
                status.failures = failures;
                status.last_error = Some(message.clone());
                status.next_renewal = Some(unix(SystemTime::now() + delay));
            });
            Err(message)
        }
    }
}

/// Order, store (before serving: what is served survives a restart), serve.
async fn order(shared: &Shared, name: &str) -> Result<(), AcmeError> {
    let client = shared.client().await?;
    let issued: Issued = obtain(&client, &shared.answerer, name).await?;
    let facts = crate::facts_of(&issued)
        .ok_or_else(|| AcmeError::Protocol("the issued certificate is unreadable".into()))?;
    shared.store.save(name, &issued)?;
    shared
        .answerer
        .tls
        .set_acme_certificate(name, &issued.chain_pem, &issued.key_pem)?;
    shared.update(name, |status| status.serving(&facts));
    tracing::info!(%name, issuer = %facts.issuer, not_after = %humantime::format_rfc3339_seconds(facts.not_after), "certificate obtained and served");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(status: u16, retry_after: Option<u64>) -> AcmeError {
        AcmeError::Problem {
            url: "https://a.test/x".into(),
            status,
            kind: Some("urn:ietf:params:acme:error:rateLimited".into()),
            detail: "slow down".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn backoff_doubles_to_a_bound_and_honours_retry_after() {
        let down = AcmeError::Unreachable {
            url: "https://a.test".into(),
            reason: "refused".into(),
        };
        assert_eq!(backoff(1, &down), Duration::from_secs(1));
        assert_eq!(backoff(3, &down), Duration::from_secs(4));
        assert_eq!(backoff(40, &down), TRANSIENT_MAX);
        assert_eq!(backoff(1, &problem(429, None)), REFUSED_FIRST);
        assert_eq!(
            backoff(1, &problem(429, Some(7200))),
            Duration::from_secs(7200)
        );
        assert_eq!(backoff(1, &problem(503, Some(5))), Duration::from_secs(5));
        assert_eq!(
            backoff(1, &problem(429, Some(10 * 86_400))),
            RETRY_AFTER_MAX
        );
    }
}
