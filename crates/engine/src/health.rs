//! HTTP health checks: one check, and the fast polling that gates a switch.

use bytes::Bytes;
use cutover_config::HealthConfig;
use cutover_drivers::{Driver, Endpoint, ExitWatch, RuntimeHealth};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Bodies beyond this are not read for `expect_body`.
const MAX_BODY: usize = 64 * 1024;
/// First delay between checks while deploying; it grows to [`MAX_DEPLOY_POLL`].
const FIRST_DEPLOY_POLL: Duration = Duration::from_millis(50);
/// Keeps the switch within ~200 ms of the release becoming healthy.
const MAX_DEPLOY_POLL: Duration = Duration::from_millis(200);

/// Runs one health check; `Err` says why it failed.
pub async fn check(addr: SocketAddr, config: &HealthConfig) -> Result<(), String> {
    match tokio::time::timeout(config.timeout, check_inner(addr, config)).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "GET {} timed out after {:?}",
            config.path, config.timeout
        )),
    }
}

async fn check_inner(addr: SocketAddr, config: &HealthConfig) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr} failed: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(config.path.as_str())
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "cutover-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the health request for {}: {e}", config.path))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {} failed: {e}", config.path))?;
    let status = response.status().as_u16();
    let (low, high) = config.expect_status;
    if !(low..=high).contains(&status) {
        return Err(format!(
            "GET {} answered {status} (expected {low}-{high})",
            config.path
        ));
    }
    if let Some(expected) = &config.expect_body {
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the body of GET {} failed: {e}", config.path))?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(expected.as_str()) {
            return Err(format!(
                "GET {} answered {status} but the body does not contain `{expected}`",
                config.path
            ));
        }
    }
    Ok(())
}

/// Why a release did not become healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// The release ended while being checked, or its runtime declared it
    /// failed (a Docker HEALTHCHECK reporting unhealthy). Completes
    /// "web v2 in slot green …".
    Exited(String),
    /// Not healthy by the deadline; the last check's failure.
    TimedOut { after: Duration, last: String },
}

/// Checks every endpoint at once; `Err` names the first that failed and
/// why (also when there is none yet).
pub async fn check_all(endpoints: &[Endpoint], config: &HealthConfig) -> Result<(), String> {
    if endpoints.is_empty() {
        return Err("the release has no endpoint yet (no task running)".to_string());
    }
    let checks = endpoints.iter().map(|e| check(e.addr, config));
    let results = futures_util::future::join_all(checks).await;
    for (endpoint, result) in endpoints.iter().zip(results) {
        if let Err(why) = result {
            return Err(match endpoints.len() {
                1 => why,
                _ => format!("endpoint {} ({}): {why}", endpoint.label, endpoint.addr),
            });
        }
    }
    Ok(())
}

/// The HTTP check of every endpoint and the runtime's own verdict on the
/// release (see [`Driver::check`]): `Err(Ok(why))` worth retrying,
/// `Err(Err(how))` final.
async fn check_release(
    endpoints: &[Endpoint],
    config: &HealthConfig,
    (driver, runtime_id): (&dyn Driver, &str),
) -> Result<(), Result<String, String>> {
    let (http, runtime) = tokio::join!(check_all(endpoints, config), driver.check(runtime_id));
    match (runtime, http) {
        (RuntimeHealth::Failing(how), _) => Err(Err(how)),
        (_, Err(why)) | (RuntimeHealth::Pending(why), Ok(())) => Err(Ok(why)),
        (RuntimeHealth::Healthy, Ok(())) => Ok(()),
    }
}

/// Polls fast (50 ms, growing to 200 ms, never beyond `interval`) until
/// `healthy_after` consecutive checks pass (the HTTP check of every
/// endpoint `endpoints()` gives at that moment and, through `runtime` =
/// (driver, runtime id), the runtime's own), the release exits or fails
/// for good, or the deadline passes. Returns how long it took.
pub async fn wait_until_healthy(
    endpoints: &(dyn Fn() -> Vec<Endpoint> + Send + Sync),
    config: &HealthConfig,
    exited: &mut ExitWatch,
    deadline: Duration,
    runtime: (&dyn Driver, &str),
) -> Result<Duration, Unhealthy> {
    let started = Instant::now();
    let give_up = tokio::time::Instant::now() + deadline;
    let max_poll = MAX_DEPLOY_POLL.min(config.interval);
    let mut delay = FIRST_DEPLOY_POLL.min(max_poll);
    let mut passes = 0;
    let mut last = "no check finished yet".to_string();
    loop {
        if let Some(how) = exited.exited() {
            return Err(Unhealthy::Exited(how));
        }
        let now = endpoints();
        let outcome = tokio::select! {
            outcome = tokio::time::timeout_at(give_up, check_release(&now, config, runtime)) => outcome,
            how = exited.wait() => return Err(Unhealthy::Exited(how)),
        };
        match outcome {
            Err(_) => {
                return Err(Unhealthy::TimedOut {
                    after: started.elapsed(),
                    last,
                })
            }
            Ok(Ok(())) => {
                passes += 1;
                if passes >= config.healthy_after {
                    return Ok(started.elapsed());
                }
            }
            Ok(Err(Err(how))) => return Err(Unhealthy::Exited(how)),
            Ok(Err(Ok(why))) => {
                passes = 0;
                last = why;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(give_up.min(tokio::time::Instant::now() + delay)) => {}
            how = exited.wait() => return Err(Unhealthy::Exited(how)),
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Unhealthy::TimedOut {
                after: started.elapsed(),
                last,
            });
        }
        delay = (delay * 3 / 2).min(max_poll);
    }
}
