//! # cutover-api
//!
//! The admin API of cutover: JSON over HTTP/1.1 on a unix socket (mode
//! 0600), and optionally over TCP (`[admin] listen`, bearer tokens, TLS),
//! both served by the same axum router. The CLI is its main client (also
//! from another machine, `--admin https://…`); scripts may use it directly
//! (`curl --unix-socket .cutover/admin.sock http://cutover/v1/apps`).
//!
//! Every error is a JSON object `{"error": "..."}` with a fitting status:
//! engine errors map through [`EngineError::http_status`], bad requests
//! (malformed JSON, bad path or query parameters) are 400 with a message
//! that says what was wrong and what was expected, unknown paths are 404.
//!
//! # Layout
//!
//! - [`routes`]: the router and its handlers (apps, deployments, actions).
//! - `error`: [`HttpError`], the JSON error response.
//! - `extract`: extractors that turn axum's plain-text rejections into
//!   JSON errors.
//! - `events`: the Server-Sent Events stream of a deployment.
//! - `dashboard`: `GET /` and `/assets/*`, the browser dashboard (HTML,
//!   CSS and JS in `dashboard/`, compiled in with `include_str!`) with its
//!   Content-Security-Policy; it reads and acts through the endpoints
//!   above with the token the user types in.
//! - `logs`: tail and follow of a release's log file.
//! - `certs`: `GET /v1/certs`, `POST /v1/certs/{name}/renew` and the
//!   certificate gauges of `/metrics` (`[proxy.acme]`).
//! - `metrics`: `GET /metrics`, Prometheus text of the proxy's and the
//!   engine's metrics.
//! - `socket`: [`AdminSocket`], binding the unix socket safely (refusing
//!   to start when another daemon answers on it) and serving it with
//!   graceful shutdown; adopting the socket from the process being
//!   upgraded.
//! - `transport`: one connection on any transport (hyper HTTP/1.1 with
//!   the header read timeout and head size limit, graceful end), the
//!   414/413 limits, and hyper's own parse-error answers rewritten as JSON.
//! - `remote`: [`AdminTcp`], the TCP listener (TLS optional) and its guard:
//!   `Host` check (421), CORS for `[admin] cors_origins`, bearer tokens
//!   (401/403) except for the dashboard's page and assets.
//! - `tokens`: the tokens of `token_file`/`read_tokens_file` as digests
//!   compared in constant time, read again when the files change.
//! - [`upgrade`]: `POST /v1/upgrade`, carried to the daemon's upgrade
//!   ([`Upgrades`]) and its step-by-step [`UpgradeReport`] back.
//!
//! [`EngineError::http_status`]: cutover_engine::EngineError::http_status

#![forbid(unsafe_code)]

mod certs;
mod dashboard;
mod error;
mod events;
mod extract;
mod logs;
mod metrics;
mod remote;
pub mod routes;
mod shutdown;
mod socket;
mod tokens;
mod transport;
pub mod upgrade;

pub use error::HttpError;
pub use remote::AdminTcp;
pub use routes::router;
pub use socket::{serve_unix, AdminSocket, ApiError, KeepSocketFile};
pub use transport::MAX_BODY_BYTES;
pub use upgrade::{UpgradeAsk, UpgradeReport, Upgrades};
