//! systemd integration: listening sockets from socket activation
//! (`LISTEN_FDS`, `LISTEN_PID`) and readiness notifications (`sd_notify`:
//! `READY=1`, and `MAINPID=` from the process that took over in an
//! upgrade). Without systemd (no such variables) both do nothing.
//!
//! This is the one module of the binary with `unsafe`: claiming the
//! inherited descriptors 3.. as owned sockets has no safe constructor.

#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// More than any `[proxy]` section names; a larger count is not systemd's.
const MAX_LISTEN_FDS: usize = 1024;

/// Descriptors are claimed at most once per process.
static CLAIMED: AtomicBool = AtomicBool::new(false);

/// The TCP listening sockets systemd passed to this process, if it was
/// socket-activated; marked close-on-exec so that releases started later
/// do not inherit them. Descriptors that are not TCP sockets are closed.
pub fn activated_listeners() -> Vec<std::net::TcpListener> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .unwrap_or(0);
    if !for_us || count == 0 || CLAIMED.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    let mut listeners = Vec::with_capacity(count);
    for offset in 0..count {
        let Ok(offset) = RawFd::try_from(offset) else {
            break;
        };
        let fd = LISTEN_FDS_START + offset;
        // SAFETY: LISTEN_PID names this process, so systemd passed it the
        // descriptors LISTEN_FDS_START..+LISTEN_FDS, open across exec: no
        // other object in this process owns them (the kernel cannot have
        // given their numbers to anything opened since, as they were never
        // closed), and `CLAIMED` makes this the only place that takes
        // ownership, once. Each becomes exactly one `OwnedFd`.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).is_err() {
            continue;
        }
        let is_tcp_listener = rustix::net::sockopt::socket_type(&owned)
            .is_ok_and(|kind| kind == rustix::net::SocketType::STREAM)
            && matches!(
                rustix::net::getsockname(&owned).map(|addr| addr.address_family()),
                Ok(rustix::net::AddressFamily::INET | rustix::net::AddressFamily::INET6)
            );
        if is_tcp_listener {
            listeners.push(std::net::TcpListener::from(owned));
        } else {
            tracing::warn!(
                fd,
                "ignoring a socket-activated descriptor that is not a TCP socket"
            );
        }
    }
    listeners
}

/// Sends `state` (e.g. `READY=1`) to systemd's notification socket, if
/// this process runs under systemd with `Type=notify`.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send_notification(&path, state) {
        tracing::warn!(%error, "cannot notify systemd ({state})");
    }
}

fn send_notification(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // An abstract socket name.
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_notification_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send_notification(path.as_os_str(), "READY=1\nMAINPID=42").unwrap();
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
    }
}
