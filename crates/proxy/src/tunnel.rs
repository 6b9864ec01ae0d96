//! Upgraded connections (WebSocket and any other HTTP/1.1 `Upgrade`): once
//! both sides switched protocols, bytes are copied both ways until one side
//! closes (its close is passed on, then both connections close, as nginx
//! does).
//!
//! A tunnel belongs to the upstream it was opened on, like a request: it
//! holds the request's in-flight count (so [`crate::Upstream::drain`] waits
//! for it) and is counted in [`crate::Upstream::upgraded`]. When a drain
//! times out, the upstream signals its tunnels to close:
//!
//! - a WebSocket tunnel finishes the frame in progress in each direction
//!   (bounded by [`FRAME_FINISH_GRACE`]), sends a close frame with status
//!   1001 "going away" to both sides (masked towards the upstream, as a
//!   client must), half-closes both, and waits briefly for their replies;
//! - any other tunnel is half-closed at once.
//!
//! Either way the tunnel is gone at most [`CLOSE_GRACE`] after the signal.
//! Copying needs no WebSocket parsing beyond frame boundaries: the copier
//! tracks frame headers only to know where a close frame may be inserted.

use std::future::Future;
use std::io;
use std::pin::pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use crate::conn_io::ConnGuard;
use crate::http1::io::{Prefixed, Upgraded};
use crate::upstream::{InFlightGuard, TunnelGuard};

/// Longest wait for the frame in progress to end before a close frame can
/// be sent; beyond it the connection is closed without one.
const FRAME_FINISH_GRACE: Duration = Duration::from_secs(1);
/// After the close frames: how long the peers' replies are awaited (and
/// discarded) before the TCP connections close.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Upper bound of a tunnel's life after the close signal.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// Copy buffer per direction.
const BUFFER: usize = 16 * 1024;

/// WebSocket close status 1001, "going away".
const GOING_AWAY: [u8; 12] = *b"\x03\xe9going away";

/// One upgraded client connection and its upstream connection.
pub(crate) struct Tunnel {
    /// The client's connection, handed over by the HTTP/1.1 server once the
    /// 101 has been sent.
    pub(crate) client: oneshot::Receiver<Upgraded>,
    /// The upstream's connection (with what it sent past its 101).
    pub(crate) upstream: Prefixed<TcpStream>,
    pub(crate) websocket: bool,
    pub(crate) in_flight: InFlightGuard,
    pub(crate) registration: TunnelGuard,
    /// Keeps the client connection's timeouts off while the tunnel lives.
    pub(crate) conn: Option<ConnGuard>,
}

/// Which way bytes flow; decides the close frame's masking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Towards {
    Client,
    Upstream,
}

impl Tunnel {
    /// Runs the tunnel until both sides closed or it was told to close.
    pub(crate) async fn run(self) {
        let Tunnel {
            client,
            upstream,
            websocket,
            in_flight,
            registration,
            conn,
        } = self;
        let closing = registration.closing();
        let app = in_flight.upstream().app().to_owned();
        let Ok(client) = client.await else {
            tracing::debug!(%app, "the client connection closed before switching protocols");
            return;
        };
        let (client_read, client_write) = tokio::io::split(client);
        let (upstream_read, upstream_write) = tokio::io::split(upstream);
        let to_upstream = pump(
            client_read,
            upstream_write,
            Towards::Upstream,
            websocket,
            closing.clone(),
        );
        let to_client = pump(
            upstream_read,
            client_write,
            Towards::Client,
            websocket,
            closing.clone(),
        );
        let copy = both_directions(to_upstream, to_client);
        let hard_stop = async {
            signalled(closing).await;
            tokio::time::sleep(CLOSE_GRACE).await;
        };
        tokio::select! {
            () = copy => {}
            () = hard_stop => tracing::debug!(%app, "upgraded connection closed forcibly after the drain timeout"),
        }
        drop(conn);
        drop(registration);
        drop(in_flight);
    }
}

/// How one direction of a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Its source closed; the end was passed on (half-close).
    Eof,
    /// Closed after the close signal.
    Closed,
}

/// Runs both directions. As in nginx, the tunnel ends when either source
/// closes (after passing the close on) or fails; after the close signal
/// both directions finish their closing (close frames, linger).
async fn both_directions(
    a: impl Future<Output = io::Result<Ended>>,
    b: impl Future<Output = io::Result<Ended>>,
) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let (first, other_is_b) = tokio::select! {
        result = &mut a => (result, true),
        result = &mut b => (result, false),
    };
    let result = match first {
        Ok(Ended::Closed) if other_is_b => b.await,
        Ok(Ended::Closed) => a.await,
        other => other,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "upgraded connection failed");
    }
}

/// Resolves once the close signal is set; never if its sender is gone.
async fn signalled(mut closing: watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Copies `from` → `to` until EOF (then shuts `to` down) or the close
/// signal (then closes as the module docs say).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    towards: Towards,
    websocket: bool,
    closing: watch::Receiver<bool>,
) -> io::Result<Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = websocket.then(FrameTracker::default);
    let mut buf = vec![0u8; BUFFER];
    let mut signal = pin!(signalled(closing));
    loop {
        let n = tokio::select! {
            biased;
            () = &mut signal => break,
            n = from.read(&mut buf) => n?,
        };
        if n == 0 {
            to.shutdown().await?;
            return Ok(Ended::Eof);
        }
        if let Some(frames) = &mut frames {
            frames.consume(&buf[..n], false);
        }
        to.write_all(&buf[..n]).await?;
    }

    // Closing after the drain timeout.
    if let Some(mut frames) = frames {
        let at_boundary = frames.at_boundary()
            || matches!(
                tokio::time::timeout(
                    FRAME_FINISH_GRACE,
                    finish_frame(&mut from, &mut to, &mut frames, &mut buf)
                )
                .await,
                Ok(Ok(true))
            );
        if at_boundary {
            to.write_all(&close_frame(towards)).await?;
        }
    }
    to.flush().await?;
    let _ = to.shutdown().await;
    // The peer's own close frame (or EOF) comes back on the other direction's
    // writer, which is shut: read and discard what this side still sends.
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        while from.read(&mut buf).await? > 0 {}
        Ok::<(), io::Error>(())
    })
    .await;
    Ok(Ended::Closed)
}

/// Forwards the rest of the frame in progress; `true` once at a boundary,
/// `false` on EOF before it.
async fn finish_frame<R, W>(
    from: &mut R,
    to: &mut W,
    frames: &mut FrameTracker,
    buf: &mut [u8],
) -> io::Result<bool>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while !frames.at_boundary() {
        let n = from.read(buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let used = frames.consume(&buf[..n], true);
        to.write_all(&buf[..used]).await?;
    }
    Ok(true)
}

/// A close frame with status 1001 "going away"; masked towards the upstream
/// (frames from a client must be masked, RFC 6455 section 5.3).
fn close_frame(towards: Towards) -> Vec<u8> {
    let len = GOING_AWAY.len() as u8;
    match towards {
        Towards::Client => {
            let mut frame = vec![0x88, len];
            frame.extend_from_slice(&GOING_AWAY);
            frame
        }
        Towards::Upstream => {
            let key = fastrand::u32(..).to_be_bytes();
            let mut frame = vec![0x88, 0x80 | len];
            frame.extend_from_slice(&key);
            frame.extend(GOING_AWAY.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            frame
        }
    }
}

/// Follows WebSocket frame boundaries in a byte stream (headers only; the
/// payload is skipped, never inspected).
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    header: [u8; 14],
    /// Header bytes seen of the frame being started.
    have: usize,
    /// Payload bytes still to come of the current frame.
    remaining: u64,
}

impl FrameTracker {
    /// Between two frames.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Advances over `data`; with `stop_at_boundary`, stops right after the
    /// first frame that ends in it. Returns how many bytes were consumed.
    pub(crate) fn consume(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        while i < data.len() {
            if self.remaining > 0 {
                let take = self.remaining.min((data.len() - i) as u64);
                self.remaining -= take;
                i += take as usize;
                if self.remaining == 0 && stop_at_boundary {
                    return i;
                }
                continue;
            }
            self.header[self.have] = data[i];
            self.have += 1;
            i += 1;
            if let Some(len) = self.payload_len() {
                self.have = 0;
                self.remaining = len;
                if len == 0 && stop_at_boundary {
                    return i;
                }
            }
        }
        i
    }

    /// The payload length once the header is complete.
    fn payload_len(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let second = self.header[1];
        let masked = second & 0x80 != 0;
        let short = second & 0x7f;
        let extended = match short {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        if self.have < 2 + extended + if masked { 4 } else { 0 } {
            return None;
        }
        Some(match short {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(bytes)
            }
            n => u64::from(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked frame with `len` payload bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x82];
        match len {
            0..=125 => f.push(len as u8),
            126..=0xffff => {
                f.push(126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend(std::iter::repeat_n(0xaa, len));
        f
    }

    fn masked(len: usize) -> Vec<u8> {
        let mut f = frame(len);
        f[1] |= 0x80;
        let header = if len < 126 {
            2
        } else if len <= 0xffff {
            4
        } else {
            10
        };
        f.splice(header..header, [1, 2, 3, 4]);
        f
    }

    #[test]
    fn frame_boundaries_are_found_whatever_the_chunking() {
        let mut stream = Vec::new();
        let mut ends = Vec::new();
        for f in [
            frame(5),
            masked(0),
            frame(300),
            masked(70_000),
            frame(0),
            masked(125),
        ] {
            stream.extend_from_slice(&f);
            ends.push(stream.len());
        }
        for chunk in [1, 2, 3, 7, 64, 1000, stream.len()] {
            let mut tracker = FrameTracker::default();
            let mut seen = Vec::new();
            let mut offset = 0;
            while offset < stream.len() {
                let end = (offset + chunk).min(stream.len());
                let mut piece = &stream[offset..end];
                while !piece.is_empty() {
                    let used = tracker.consume(piece, true);
                    offset += used;
                    piece = &piece[used..];
                    if tracker.at_boundary() {
                        seen.push(offset);
                    }
                }
            }
            assert_eq!(seen, ends, "chunk size {chunk}");
        }
    }

    #[test]
    fn without_stopping_the_whole_input_is_consumed() {
        let mut tracker = FrameTracker::default();
        let mut stream = frame(10);
        stream.extend_from_slice(&frame(200)[..50]);
        assert_eq!(tracker.consume(&stream, false), stream.len());
        assert!(!tracker.at_boundary());
    }

    #[test]
    fn close_frames_carry_1001_going_away_masked_only_towards_the_upstream() {
        let to_client = close_frame(Towards::Client);
        assert_eq!(&to_client[..2], &[0x88, 12]);
        assert_eq!(&to_client[2..], b"\x03\xe9going away");
        let to_upstream = close_frame(Towards::Upstream);
        assert_eq!(&to_upstream[..2], &[0x88, 0x80 | 12]);
        let key = &to_upstream[2..6];
        let payload: Vec<u8> = to_upstream[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(payload, b"\x03\xe9going away");
    }
}
