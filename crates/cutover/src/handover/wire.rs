//! The hand-over protocol between two cutover processes, on a unix stream
//! socket: length-prefixed JSON messages (a 4-byte big-endian length, then
//! the message), each carrying its file descriptors (`SCM_RIGHTS`) with
//! its first bytes. The first message, [`Message::Hello`], names the
//! protocol version; a process that does not speak it refuses before
//! anything else is read.
//!
//! Nothing secret travels here: addresses, slots, versions and runtime ids.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// The version of this message format. A new process refuses a hello with
/// another version (the old process keeps serving).
pub const PROTOCOL: u64 = 1;
/// No message is larger (a snapshot of many apps fits many times over).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// No message carries more descriptors.
pub const MAX_FDS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("the hand-over socket failed: {0}")]
    Io(#[from] io::Error),
    #[error("a hand-over message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the running cutover speaks hand-over protocol {found} and this binary speaks {PROTOCOL}: upgrade through a version that speaks both, or restart (`systemctl restart cutover`)")]
    UnknownProtocol { found: u64 },
    #[error("a hand-over message of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("a hand-over message came with {got} descriptors instead of {expected}")]
    Descriptors { expected: usize, got: usize },
    #[error("the other process closed the hand-over socket")]
    Closed,
    #[error("unexpected hand-over message: {0}")]
    Unexpected(&'static str),
}

/// One listening socket handed over: which config entry it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerTag {
    /// `listen`, `tls_listen`, `webhook` or `admin`.
    pub kind: ListenerKind,
    /// The address as configured (port 0 stays 0).
    pub configured: SocketAddr,
    /// The address it is bound to.
    pub local: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    Listen,
    TlsListen,
    Webhook,
    /// `[admin] listen`, the admin API over TCP.
    Admin,
}

/// A release handed over (see `cutover_engine::HandoverRelease`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSnapshot {
    pub slot: String,
    pub version: String,
    pub runtime_id: String,
    pub endpoints: Vec<SocketAddr>,
}

/// One app's releases: routed, and kept idle under `keep_old`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSnapshot {
    pub app: String,
    pub live: Option<ReleaseSnapshot>,
    pub standby: Option<ReleaseSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Old → new, first. Descriptors: one per `listeners` entry in order,
    /// then the admin socket.
    Hello {
        protocol: u64,
        pid: u32,
        listeners: Vec<ListenerTag>,
        apps: Vec<AppSnapshot>,
    },
    /// New → old: serving; the old one may stop accepting.
    Ready { pid: u32 },
    /// New → old: it will not take over, and why (it exits).
    Refused { reason: String },
    /// Old → new, any number after `Ready`: an idle HTTP/1.1 client
    /// connection accepted on `listener` (descriptor: the connection) and
    /// the bytes already read from it.
    Connection {
        listener: SocketAddr,
        prefix: Vec<u8>,
        /// Accepted but its protocol not told yet (else HTTP/1.1 between
        /// two requests).
        #[serde(default)]
        fresh: bool,
    },
}

/// Sends `message` with `fds` attached.
pub fn send(
    stream: &UnixStream,
    message: &Message,
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandoverError> {
    let body = serde_json::to_vec(message)?;
    let length = u32::try_from(body.len()).map_err(|_| HandoverError::TooLarge(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&body);
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(HandoverError::Descriptors {
            expected: fds.len(),
            got: 0,
        });
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(&frame)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(io::Error::from)?;
    // The descriptors went with the first bytes; the rest is plain data.
    let mut rest = stream;
    rest.write_all(&frame[sent..])?;
    Ok(())
}

/// Receives the next message's bytes and its descriptors (received
/// close-on-exec). A read timeout on `stream` before the first byte
/// surfaces as an `Io` error of kind `WouldBlock`/`TimedOut`.
pub fn receive(stream: &UnixStream) -> Result<(serde_json::Value, Vec<OwnedFd>), HandoverError> {
    let mut header = [0u8; 4];
    let mut fds = Vec::new();
    let mut got = 0;
    while got < header.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut header[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let received = match received {
            Ok(received) => received,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from(e).into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if received.bytes == 0 {
            return Err(HandoverError::Closed);
        }
        got += received.bytes;
    }
    let length = u32::from_be_bytes(header) as usize;
    if length > MAX_MESSAGE {
        return Err(HandoverError::TooLarge(length));
    }
    let mut body = vec![0u8; length];
    let mut rest = stream;
    rest.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HandoverError::Closed,
        _ => HandoverError::Io(e),
    })?;
    Ok((serde_json::from_slice(&body)?, fds))
}

/// Reads a received message: the version of a hello first, so that a
/// hello of another format is refused by its version, not by its shape.
pub fn parse(value: serde_json::Value) -> Result<Message, HandoverError> {
    if value.get("type").and_then(|t| t.as_str()) == Some("hello") {
        let found = value.get("protocol").and_then(|p| p.as_u64()).unwrap_or(0);
        if found != PROTOCOL {
            return Err(HandoverError::UnknownProtocol { found });
        }
    }
    Ok(serde_json::from_value(value)?)
}

/// [`receive`] and [`parse`], checking the number of descriptors.
pub fn receive_message(
    stream: &UnixStream,
    expected_fds: impl Fn(&Message) -> usize,
) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
    let (value, fds) = receive(stream)?;
    let message = parse(value)?;
    let expected = expected_fds(&message);
    if fds.len() != expected {
        return Err(HandoverError::Descriptors {
            expected,
            got: fds.len(),
        });
    }
    Ok((message, fds))
}

/// How many descriptors a message carries.
pub fn descriptors_of(message: &Message) -> usize {
    match message {
        Message::Hello { listeners, .. } => listeners.len() + 1,
        Message::Connection { .. } => 1,
        Message::Ready { .. } | Message::Refused { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::fd::AsFd;

    fn hello(protocol: u64) -> serde_json::Value {
        serde_json::json!({
            "type": "hello", "protocol": protocol, "pid": 7,
            "listeners": [], "apps": [], "something_new": true,
        })
    }

    #[test]
    fn a_connection_travels_with_its_descriptor_and_prefix() {
        let (old, new) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let message = Message::Connection {
            listener: addr,
            prefix: b"GET / HT".to_vec(),
            fresh: false,
        };
        send(&old, &message, &[accepted.as_fd()]).unwrap();
        drop(accepted);
        let (received, mut fds) = receive_message(&new, descriptors_of).unwrap();
        assert_eq!(received, message);
        let mut passed = std::net::TcpStream::from(fds.pop().unwrap());
        (&client).write_all(b"ping").unwrap();
        let mut read = [0u8; 4];
        passed.read_exact(&mut read).unwrap();
        assert_eq!(&read, b"ping");
    }

    #[test]
    fn a_hello_of_another_protocol_version_is_refused_by_its_version() {
        let error = parse(hello(PROTOCOL + 1)).unwrap_err();
        assert!(
            matches!(error, HandoverError::UnknownProtocol { found } if found == PROTOCOL + 1),
            "{error}"
        );
        assert!(error.to_string().contains("protocol 2"), "{error}");
    }

    #[test]
    fn a_message_without_its_descriptors_is_an_error() {
        let (old, new) = UnixStream::pair().unwrap();
        let message = Message::Connection {
            listener: "127.0.0.1:1".parse().unwrap(),
            prefix: Vec::new(),
            fresh: true,
        };
        send(&old, &message, &[]).unwrap();
        let error = receive_message(&new, descriptors_of).unwrap_err();
        assert!(matches!(
            error,
            HandoverError::Descriptors {
                expected: 1,
                got: 0
            }
        ));
    }

    #[test]
    fn a_closed_socket_reads_as_closed() {
        let (old, new) = UnixStream::pair().unwrap();
        drop(old);
        assert!(matches!(receive(&new), Err(HandoverError::Closed)));
    }
}
