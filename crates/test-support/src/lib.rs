//! Fixtures shared by the integration tests of every cutover crate. Used
//! only as a dev-dependency; it depends on no workspace crate, so each
//! crate's tests can use it without a cycle. Everything here starts real
//! things (processes, sockets, servers) on loopback and stops only what it
//! started, by PID, never by name.
//!
//! # Layout
//!
//! - [`ports`]: a free loopback port.
//! - [`wait`]: polling until a condition holds, blocking or async.
//! - [`process`]: signals by PID, process state and children from /proc,
//!   resident memory, stopping a child gracefully, log files for children.
//! - [`binaries`]: the workspace's built binaries (`cutover`, `cutover-testapp`).
//! - [`http`]: a blocking HTTP/1.1 client over TCP or unix sockets that
//!   writes exactly the request it is given and reads one framed response.
//! - [`load`]: bounded keep-alive load (N clients) with a per-client record
//!   of the versions answered.
//! - [`tls`]: a test CA (rcgen) signing leaf certificates, a client
//!   connector trusting it, handshakes that report the served certificate.
//! - [`docker`]: the `docker` CLI, test images `FROM scratch`, container
//!   listings by cutover's labels, clean-up guards, a local registry.
//! - [`swarm`]: the swarm-manager check, services by cutover's labels, a
//!   clean-up guard for a test's services (then its containers and images).
//! - [`nginx`]: Debian's nginx with its own prefix and configuration.
//! - [`pebble`]: Debian's pebble (test ACME server) with its own ports and
//!   config, resolving names through a DNS answerer on a port-0 UDP socket.
//! - [`sshd`]: Debian's sshd on loopback with throwaway keys.
//! - [`git`]: git with a fixed identity; a bare origin with a working clone.
//! - [`toml`]: TOML string and list literals for configs the tests write.
//! - [`fuzz`]: the budget (`CUTOVER_FUZZ_CASES`) and seeded generator of
//!   every fuzz harness.

#![allow(clippy::unwrap_used)] // Fixtures: a failure to set up fails the test.

pub mod binaries;
pub mod docker;
pub mod fuzz;
pub mod git;
pub mod http;
pub mod load;
pub mod nginx;
pub mod pebble;
pub mod ports;
pub mod process;
pub mod sshd;
pub mod swarm;
pub mod tls;
pub mod toml;
pub mod wait;
