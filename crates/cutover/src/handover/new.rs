//! The new process's side of an upgrade: take the listening sockets, the
//! admin socket and the live releases from the process it replaces, say
//! when it serves, then serve the idle client connections it passes on.

use super::wire::{self, HandoverError, ListenerKind, ListenerTag, Message};
use super::AppSnapshot;
use cutover_proxy::{HandedConn, IntakeSender};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the old process has to send its hello once connected.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// What the old process handed over.
pub struct Inheritance {
    stream: UnixStream,
    pub from_pid: u32,
    listeners: Vec<(ListenerTag, std::net::TcpListener)>,
    admin: Option<std::os::unix::net::UnixListener>,
    pub apps: Vec<AppSnapshot>,
}

impl Inheritance {
    /// Connects to the old process at `path` and reads its hello. On an
    /// error after connecting, the stream is returned too, to refuse on.
    pub fn receive(path: &Path) -> Result<Inheritance, (HandoverError, Option<UnixStream>)> {
        let stream = UnixStream::connect(path).map_err(|e| (e.into(), None))?;
        match read_hello(&stream) {
            Ok((from_pid, listeners, admin, apps)) => Ok(Inheritance {
                stream,
                from_pid,
                listeners,
                admin: Some(admin),
                apps,
            }),
            Err(e) => Err((e, Some(stream))),
        }
    }

    /// The inherited listener for this config entry, if the old process had one.
    pub fn take_listener(
        &mut self,
        kind: ListenerKind,
        configured: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let at = self
            .listeners
            .iter()
            .position(|(tag, _)| tag.kind == kind && tag.configured == configured)?;
        Some(self.listeners.remove(at).1)
    }

    pub fn take_admin(&mut self) -> Option<std::os::unix::net::UnixListener> {
        self.admin.take()
    }

    /// Tells the old process this one serves, then serves the connections
    /// it passes on (each to the listener it was accepted on) until it
    /// closes the socket.
    pub fn ready(self, intakes: HashMap<SocketAddr, IntakeSender>) -> Result<(), HandoverError> {
        let ready = Message::Ready {
            pid: std::process::id(),
        };
        wire::send(&self.stream, &ready, &[])?;
        self.stream.set_read_timeout(None)?;
        let stream = self.stream;
        std::thread::spawn(move || receive_connections(&stream, &intakes));
        Ok(())
    }
}

impl Inheritance {
    /// Says why this process will not take over (the old one serves on).
    pub fn refuse(&self, reason: &str) {
        refuse(&self.stream, reason);
    }
}

/// Says why this process will not take over (the old one serves on).
pub fn refuse(stream: &UnixStream, reason: &str) {
    let refused = Message::Refused {
        reason: reason.to_string(),
    };
    if let Err(e) = wire::send(stream, &refused, &[]) {
        tracing::warn!(error = %e, "cannot tell the running cutover why this one does not take over");
    }
}

type Hello = (
    u32,
    Vec<(ListenerTag, std::net::TcpListener)>,
    std::os::unix::net::UnixListener,
    Vec<AppSnapshot>,
);

fn read_hello(stream: &UnixStream) -> Result<Hello, HandoverError> {
    stream.set_read_timeout(Some(HELLO_TIMEOUT))?;
    let (message, fds) = wire::receive_message(stream, wire::descriptors_of)?;
    let Message::Hello {
        pid,
        listeners,
        apps,
        ..
    } = message
    else {
        return Err(HandoverError::Unexpected(
            "the first message is not a hello",
        ));
    };
    let mut fds = fds.into_iter();
    let listeners = listeners
        .into_iter()
        .zip(fds.by_ref())
        .map(|(tag, fd)| (tag, std::net::TcpListener::from(fd)))
        .collect();
    let admin = fds
        .next()
        .map(std::os::unix::net::UnixListener::from)
        .ok_or(HandoverError::Unexpected(
            "the hello carries no admin socket",
        ))?;
    Ok((pid, listeners, admin, apps))
}

fn receive_connections(stream: &UnixStream, intakes: &HashMap<SocketAddr, IntakeSender>) {
    let mut adopted = 0usize;
    loop {
        match wire::receive_message(stream, wire::descriptors_of) {
            Ok((
                Message::Connection {
                    listener,
                    prefix,
                    fresh,
                },
                mut fds,
            )) => {
                let Some(fd) = fds.pop() else { continue };
                let conn = HandedConn {
                    listener,
                    stream: std::net::TcpStream::from(fd),
                    prefix: prefix.into(),
                    fresh,
                };
                match intakes.get(&listener) {
                    Some(intake) if intake.adopt(conn).is_ok() => adopted += 1,
                    // No such listener here (the config changed): it closes.
                    _ => {
                        tracing::debug!(%listener, "a handed-over connection has no listener here")
                    }
                }
            }
            Ok(_) => tracing::warn!("unexpected hand-over message after ready"),
            Err(HandoverError::Closed) => break,
            Err(e) => {
                tracing::warn!(error = %e, "the connection hand-over ended");
                break;
            }
        }
    }
    tracing::info!("the previous process finished; {adopted} idle connection(s) taken over");
}
