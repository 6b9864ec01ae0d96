//! `cutover-proxy`: the data plane of cutover, an HTTP/1.1 reverse proxy.
//!
//! It knows apps, their Host patterns and the address of each app's live
//! release; nothing of deployments. The engine drives it through two
//! handles: [`Router::set_live`] publishes a new route table atomically, and
//! [`Upstream::drain`] waits for an old release's last in-flight request.
//!
//! # Layout
//!
//! - [`settings`]: [`ProxySettings`], limits and timeouts.
//! - [`router`]: [`Router`], the route table behind an `ArcSwap`: Host → app
//!   → live [`Upstream`]; one lock-free load per request.
//! - [`upstream`]: [`Upstream`], one release: in-flight count, the
//!   retire/drain protocol (Dekker-style, see its docs), stats, and sending
//!   a request with retry on a pooled connection found closed.
//! - `pool`: the keep-alive connections of one upstream (hyper's HTTP/1.1
//!   client connections, a LIFO stack of idle senders).
//! - `forward`: the per-request path: route, start on the live upstream,
//!   rewrite headers, forward, map failures to 404/413/502/503/504.
//! - `headers`: hop-by-hop stripping, `X-Forwarded-*`, `X-Real-IP`,
//!   `X-Request-Id`.
//! - `body`: streaming bodies: the size-limited request body, and the
//!   response body that holds a request's guards until it has been sent.
//! - `conn_io`: the client socket wrapper enforcing the header-read and idle
//!   timeouts.
//! - `server`: [`serve`], the accept loop, hyper connections, graceful
//!   shutdown.
//! - [`error`]: [`ProxyError`] and the per-request error type.
//!
//! # Invariants
//!
//! - Every request, also on a reused client connection, routes from the
//!   current table: after `set_live` returns, new requests go to the new
//!   upstream.
//! - A request counts as in flight on its upstream from routing until its
//!   response body has ended or been dropped; `drain` resolves when that
//!   count reaches zero, never by sleeping.
//! - Upstream connections are pooled per [`Upstream`] object, so a new
//!   release on a reused port never receives an old release's connection.
//! - Nothing on a request's path panics on input.

mod body;
mod conn_io;
pub mod error;
mod forward;
mod headers;
mod pool;
pub mod router;
mod server;
pub mod settings;
pub mod upstream;

pub use error::ProxyError;
pub use router::Router;
pub use server::serve;
pub use settings::ProxySettings;
pub use upstream::{DrainOutcome, Upstream, UpstreamStats};

pub(crate) fn xflag(name: &str) -> bool {
    static FLAGS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FLAGS
        .get_or_init(|| std::env::var("XFLAGS").unwrap_or_default())
        .split(',')
        .any(|f| f == name)
}
