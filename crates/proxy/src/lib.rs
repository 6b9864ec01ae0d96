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
//!   retire/drain protocol (Dekker-style, see its docs), stats, and its one
//!   send entry point: HTTP/1.1 on a pooled connection, retried on another
//!   connection when a pooled one hands the request back unsent, replayed
//!   when a bodiless idempotent request meets a reused connection closing
//!   under it; HTTP/2 (h2c upstreams) through hyper.
//! - `http1`: HTTP/1.1, once, for both sides. `head` (request and response
//!   heads, the RFC 9112 framing rules), `body` (the one decoder: exact,
//!   chunked, until close) and `encode` are a sans-IO codec; `server` is a
//!   client connection served in HTTP/1.1 (`ServerConn`: request heads,
//!   streamed request bodies, responses, keep-alive without buffers while
//!   idle, upgrades, header-read and idle timeouts); `client` is one
//!   keep-alive connection to an upstream (`UpstreamConn`: the request's own
//!   future writes the head and body and reads the response, no connection
//!   task, no channels) and the response body read from it.
//! - `pool`: the idle keep-alive connections of one upstream (a LIFO stack
//!   per worker), and opening new ones.
//! - `forward`: the per-request path: route, start on the live upstream,
//!   rewrite headers, forward, map failures to 404/413/502/503/504.
//! - `headers`: hop-by-hop stripping, `X-Forwarded-*`, `X-Real-IP`,
//!   `X-Request-Id`.
//! - `body`: streaming bodies: the size-limited request body, and the
//!   response body that holds a request's guards until it has been sent.
//! - `tunnel`: upgraded connections (WebSocket and other `Upgrade`s): the
//!   byte copy both ways, counted in the upstream's drain, and their closing
//!   (WebSocket close frame 1001) when a drain times out.
//! - [`tls`]: [`Tls`], TLS termination with rustls: certificates chosen by
//!   SNI, reloaded on change keeping the old set on a bad reload.
//! - [`access_log`]: [`AccessLog`], combined or JSON lines written by their
//!   own thread behind a bounded queue (overflow dropped and counted).
//! - [`metrics`]: per app/slot counters in atomics, encoded for Prometheus
//!   on scrape.
//! - `conn_io`: the client socket wrapper enforcing the header-read and idle
//!   timeouts.
//! - `server`: [`serve`], the accept loops, TLS, HTTP/1.1 (`http1`) or
//!   HTTP/2 (hyper) per connection, graceful shutdown.
//! - [`handoff`]: idle HTTP/1.1 client connections leaving the data plane
//!   at a request boundary during an upgrade ([`Handoff`]) and entering the
//!   new process's ([`Intake`], served by [`serve_adopting`]).
//! - `workers`: [`Workers`], the data plane's threads, each with its own
//!   single-threaded event loop accepting from the shared listening socket;
//!   a connection and its upstream connections stay on one thread.
//! - [`error`]: [`ProxyError`] and the per-request error type.
//!
//! `examples/standalone.rs` runs the proxy alone in front of one backend,
//! for benchmarks before the daemon is involved.
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
//! - HTTP/1 framing (how long a body is, whether a connection persists) is
//!   decided in one place, `http1::head`, for both sides; an upstream
//!   connection goes back to its pool only after a complete response whose
//!   framing allows reuse, with nothing left unread.
//! - Nothing on a request's path panics on input.

pub mod access_log;
mod body;
mod conn_io;
pub mod error;
mod forward;
pub mod handoff;
mod headers;
mod http1;
pub mod metrics;
mod pool;
pub mod router;
mod server;
pub mod settings;
pub mod tls;
mod tunnel;
pub mod upstream;
mod workers;

pub use access_log::{AccessLog, AccessLogError, AccessLogFormat, AccessLogTarget};
pub use error::ProxyError;
pub use handoff::{intake, HandedConn, Handoff, Intake, IntakeSender};
pub use router::{Preview, Router, UpstreamProtocol, PREVIEW_COOKIE, STICKY_COOKIE};
pub use server::{serve, serve_adopting, serve_with, ServeOptions};
pub use settings::ProxySettings;
pub use tls::{CertKeyFiles, Tls, TlsError};
pub use upstream::{DrainOutcome, Upstream, UpstreamStats};
pub use workers::Workers;
