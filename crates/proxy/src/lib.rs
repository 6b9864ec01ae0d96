//! `cutover-proxy`: the data plane of cutover, an HTTP/1.1 reverse proxy.
//!
//! It knows apps, their Host patterns and the endpoints of each app's live
//! release; nothing of deployments, nor which engine runs the endpoints. The engine drives it through two
//! handles: [`Router::set_live`] publishes a new route table atomically, and
//! [`Upstream::drain`] waits for an old release's last in-flight request.
//!
//! # Layout
//!
//! - [`settings`]: [`ProxySettings`], limits and timeouts; [`TrustedProxies`]
//!   ([`Cidr`] blocks) whose `X-Forwarded-*` headers are believed.
//! - [`router`]: [`Router`], the route table behind an `ArcSwap`: Host and
//!   longest path prefix ([`AppRoutes`]) → app → live [`Upstream`]; one
//!   lock-free load per request; [`Router::set_live_many`] switches several
//!   apps in one published table (release groups); and one reserved path
//!   prefix served ahead of every app on every host
//!   ([`Router::set_reserved_path`]: the webhook receiver).
//! - [`upstream`]: [`Upstream`], one release: its set of endpoints behind an
//!   `ArcSwap` (replaced live by [`Upstream::set_endpoints`]), in-flight
//!   count over all of them, the retire/drain protocol (Dekker-style, see
//!   its docs), stats, and its one send entry point with its one retry rule
//!   (`retry_rule`): HTTP/1.1 on a pooled connection of the endpoint the
//!   balancer picked; a request not sent (refused connection, pooled
//!   connection handing it back) goes to another connection or endpoint; a
//!   bodiless idempotent request whose connection closed before any
//!   response is replayed (same endpoint after a reused connection, another
//!   after a fresh one); nothing else is ever sent twice; at most 3
//!   endpoints per request. HTTP/2 (h2c upstreams) through hyper.
//! - [`endpoint`]: [`EndpointSpec`] (address + free-text label, from the
//!   engine) and the live endpoint state: in-flight and request/failure
//!   counters, the engine's health mark, passive ejection on a refused
//!   connection (backoff 1 s doubling to 30 s, then one trial request), its
//!   keep-alive pool and HTTP/2 connection; [`EndpointStats`] for status.
//! - [`balance`]: [`Balance`] and the pick: power of two choices on
//!   in-flight requests (default) or round robin, over endpoints in
//!   rotation; the least recently ejected one when all are out; a lone
//!   endpoint is always tried.
//! - `http1`: HTTP/1.1, once, for both sides. `head` (request and response
//!   heads, the RFC 9112 framing rules), `body` (the one decoder: exact,
//!   chunked, until close) and `encode` are a sans-IO codec; `server` is a
//!   client connection served in HTTP/1.1 (`ServerConn`: request heads,
//!   streamed request bodies, responses, keep-alive without buffers while
//!   idle, upgrades, header-read and idle timeouts); `client` is one
//!   keep-alive connection to an upstream (`UpstreamConn`: the request's own
//!   future writes the head and body and reads the response, no connection
//!   task, no channels) and the response body read from it.
//! - `pool`: the idle keep-alive connections of one endpoint (a LIFO stack
//!   per worker), and opening new ones.
//! - `forward`: the per-request path: the reserved prefix first
//!   (`start_on_reserved`), else route, start on the live upstream,
//!   rewrite headers, forward, map failures to 404/413/502/503/504.
//! - `headers`: hop-by-hop stripping, `X-Forwarded-*`, `X-Real-IP`
//!   (replaced, unless the peer is in [`TrustedProxies`]: then the chain is
//!   extended and the others kept), `X-Request-Id`.
//! - `body`: streaming bodies: the size-limited request body, and the
//!   response body that holds a request's guards until it has been sent.
//! - `tunnel`: upgraded connections (WebSocket and other `Upgrade`s): the
//!   byte copy both ways, counted in the upstream's drain, and their closing
//!   (WebSocket close frame 1001) when a drain times out.
//! - [`tls`]: [`Tls`], TLS termination with rustls: certificates chosen by
//!   SNI, reloaded on change keeping the old set on a bad reload; ACME
//!   certificates and tls-alpn-01 challenge certificates beside the files,
//!   each map swapped whole (`ArcSwap`) by the ACME control plane.
//! - [`challenge`]: [`Http01Answers`], ACME http-01 tokens answered on the
//!   plain listeners before routing (`forward` calls it first).
//! - [`access_log`]: [`AccessLog`], combined or JSON lines written by their
//!   own thread behind a bounded queue (overflow dropped and counted).
//! - [`metrics`]: per app/slot and per endpoint counters in atomics,
//!   encoded for Prometheus on scrape.
//! - `conn_io`: the client socket wrapper enforcing the header-read and idle
//!   timeouts.
//! - `server`: [`serve`], the accept loops, TLS, HTTP/1.1 (`http1`) or
//!   HTTP/2 (hyper) per connection, graceful shutdown; accept errors back
//!   off (10 ms doubling to 1 s) and are logged once per interval with a
//!   count.
//! - [`admission`]: [`Admission`], `max_connections` over all listeners
//!   and `max_connections_per_client` per address: a registry of open
//!   connections by age, locked at accept and close only; at the cap the
//!   oldest idle HTTP/1.1 keep-alive connection is asked to close (an
//!   atomic state plus a `Notify` its idle wait selects on), else the new
//!   connection is closed at once.
//! - [`handoff`]: idle HTTP/1.1 client connections leaving the data plane
//!   at a request boundary during an upgrade ([`Handoff`]) and entering the
//!   new process's ([`Intake`], served by [`serve_adopting`]).
//! - [`workers`]: [`Workers`], the data plane's threads, each with its own
//!   single-threaded event loop accepting from the shared listening socket;
//!   a connection and its upstream connections stay on one thread. With
//!   [`Io::Uring`] each has an io_uring its request and response heads are
//!   queued on, submitted once per event-loop turn (`cutover_uring`).
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
//! - Upstream connections are pooled per endpoint of an [`Upstream`]
//!   object, so a new release on a reused port never receives an old
//!   release's connection; an endpoint that leaves the set pools nothing
//!   more, and its pool dies with its last request.
//! - A request counts in its upstream's in-flight total whichever endpoint
//!   serves it, also one that left the set: a drain waits for all of them.
//! - The request path reads the endpoint set with one lock-free load and
//!   never waits on the engine; the engine's changes (`set_endpoints`,
//!   `set_endpoint_healthy`) are atomic stores.
//! - HTTP/1 framing (how long a body is, whether a connection persists) is
//!   decided in one place, `http1::head`, for both sides; an upstream
//!   connection goes back to its pool only after a complete response whose
//!   framing allows reuse, with nothing left unread, and carries a request
//!   only if it said nothing while idle (`UpstreamConn::check_silent`).
//! - A request head breaking an RFC 9112 MUST is answered 400/405/431/
//!   501/505 and the connection closed; nothing of it is forwarded. An
//!   upstream response with ambiguous framing is a 502 saying why, and its
//!   connection is closed. The codec's answers do not depend on how the
//!   bytes were split (checked by the `http1::fuzz` harness).
//! - Nothing on a request's path panics on input.
//! - Connection limits cost no lock per request: the admission registry is
//!   touched at accept and close; between requests only an atomic flips.
//!   Only an idle connection (between requests) is ever closed to make room.

pub mod access_log;
pub mod admission;
pub mod balance;
mod body;
pub mod challenge;
mod conn_io;
pub mod endpoint;
pub mod error;
mod forward;
pub mod handoff;
mod headers;
mod http1;
pub mod metrics;
mod pool;
mod ring;
pub mod router;
mod server;
pub mod settings;
pub mod tls;
mod tunnel;
pub mod upstream;
pub mod workers;

pub use access_log::{AccessLog, AccessLogError, AccessLogFormat, AccessLogTarget};
pub use admission::Admission;
pub use balance::{Balance, UnknownBalance};
pub use challenge::Http01Answers;
pub use endpoint::{EndpointSpec, EndpointStats};
pub use error::ProxyError;
pub use handoff::{intake, HandedConn, Handoff, Intake, IntakeSender};
pub use router::{AppRoutes, Preview, Router, UpstreamProtocol, PREVIEW_COOKIE, STICKY_COOKIE};
pub use server::{serve, serve_adopting, serve_with, ServeOptions};
pub use settings::{Cidr, ProxySettings, TrustedProxies};
pub use tls::{CertKeyFiles, Tls, TlsError};
pub use upstream::{DrainOutcome, Upstream, UpstreamStats};
pub use workers::{Io, Workers};
