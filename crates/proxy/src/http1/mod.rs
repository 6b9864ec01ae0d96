//! HTTP/1.1, once, for both sides of the proxy.
//!
//! - `head`, `body`, `encode`: the sans-IO codec. Bytes in, heads and body
//!   events out; heads and chunks encoded into the caller's buffer. The
//!   framing rules of RFC 9112 live here and only here (one place to
//!   harden against request smuggling).
//! - `server`: [`server::serve`], a client connection served in HTTP/1.1
//!   (`ServerConn`).
//! - `client`: `UpstreamConn`, one keep-alive connection to an upstream,
//!   and `Http1Body`, a response body read from it.
//! - `fuzz` (tests only): bounded generated and mutated inputs for `head`
//!   and `body`, checked against a reference of the framing rules.
//! - `differential` (tests only): the same generated requests through this
//!   codec and through hyper's server; any disagreement on where a message
//!   ends fails, every other disagreement is reported by kind.
//! - `park`: `ParkingLot`, where idle keep-alive connections wait outside
//!   any task (their socket, context and guards only) until readable.
//! - `io`: transports (TCP or TLS, split and rejoined for upgrades),
//!   `Prefixed` streams, vectored writes.

pub(crate) mod body;
pub(crate) mod client;
#[cfg(test)]
mod differential;
pub(crate) mod encode;
#[cfg(test)]
mod fuzz;
pub(crate) mod head;
pub(crate) mod io;
pub(crate) mod park;
pub(crate) mod server;
