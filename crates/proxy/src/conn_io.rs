//! Client connection timeouts, enforced by wrapping the socket, for what
//! `http1::server` does not time itself: the TLS handshake (the wrapper stays
//! under the TLS stream afterwards, where its clocks agree with
//! `http1::server`'s), and HTTP/2 connections (hyper serves them, and its own
//! timeouts cannot tell a slow header sender from an idle client).
//! [`TimedIo`] keeps the two apart:
//!
//! - **headers**: from the connection's start, or from the first byte of a
//!   later request, until the request head is complete:
//!   `header_read_timeout`.
//! - **active**: a request is being served (from the moment hyper hands it
//!   to the proxy until its response body has ended): no timeout here; the
//!   upstream timeouts apply.
//! - **idle**: between requests, no byte received yet: `idle_timeout`.
//!
//! The service marks requests through [`ConnActivity`] (two uncontended
//! atomics per connection); the reader derives the phase from them.
//! A timeout fails the read with `TimedOut`, and hyper closes the connection.
//!
//! On an HTTP/2 connection requests are streams: "active" while any stream
//! is, "idle" otherwise; the connection's own frames (pings, settings)
//! arriving between streams keep it idle rather than starting a header
//! timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::settings::deadline_after;

/// Requests of one client connection, as seen by the service.
#[derive(Debug, Default)]
pub(crate) struct ConnActivity {
    /// Requests handed to the service so far.
    started: AtomicU64,
    /// Requests whose response has not ended yet.
    active: AtomicUsize,
}

impl ConnActivity {
    /// Marks a request as being served until the guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        ConnGuard(Arc::clone(self))
    }
}

/// A request in progress on a client connection.
#[derive(Debug)]
pub(crate) struct ConnGuard(Arc<ConnActivity>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head; the deadline is set when
    /// the first read after the first byte would block.
    Headers(Option<Instant>),
    Active,
    Idle(Instant),
}

/// A client socket that fails reads once the header or idle timeout passes.
#[derive(Debug)]
pub(crate) struct TimedIo {
    io: TcpStream,
    activity: Arc<ConnActivity>,
    header_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    /// `started` when the phase was last derived.
    seen_started: u64,
    /// An HTTP/2 connection ([`TimedIo::set_multiplexed`]): bytes between
    /// requests are frames of the connection itself (pings, settings,
    /// window updates), not the start of a request head, so they do not end
    /// the idle phase.
    multiplexed: bool,
    /// Fires at or before the current phase's deadline.
    timer: Pin<Box<Sleep>>,
}

impl TimedIo {
    pub(crate) fn new(
        io: TcpStream,
        activity: Arc<ConnActivity>,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let deadline = deadline_after(header_timeout);
        TimedIo {
            io,
            activity,
            header_timeout,
            idle_timeout,
            phase: Phase::Headers(Some(deadline)),
            seen_started: 0,
            multiplexed: false,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Marks the connection as HTTP/2 (its preface seen by the server, or
    /// `h2` negotiated by ALPN).
    pub(crate) fn set_multiplexed(&mut self) {
        self.multiplexed = true;
    }

    /// Updates the phase from what the service reported since the last call.
    /// Returns whether the connection just became idle.
    fn refresh_phase(&mut self) -> bool {
        let started = self.activity.started.load(Ordering::Relaxed);
        let active = self.activity.active.load(Ordering::Relaxed);
        if active > 0 {
            self.seen_started = started;
            self.phase = Phase::Active;
            false
        } else if started != self.seen_started || matches!(self.phase, Phase::Active) {
            // A request was served since: now waiting for the next one.
            self.seen_started = started;
            self.phase = Phase::Idle(deadline_after(self.idle_timeout));
            true
        } else {
            false
        }
    }

    /// After a write: if the response just ended, arm the idle timer now.
    /// hyper may already be parked on a read that only data would wake.
    fn arm_if_idle(&mut self, cx: &mut Context<'_>) {
        if self.refresh_phase() {
            // Expiry is reported by the next read, which the timer wakes.
            let _ = self.expired(cx);
        }
    }

    /// Whether the current phase's deadline has passed; if not, the timer is
    /// armed to wake the task by then.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = match &mut self.phase {
            Phase::Active => return false,
            Phase::Idle(deadline) => *deadline,
            Phase::Headers(Some(deadline)) => *deadline,
            Phase::Headers(deadline @ None) => {
                *deadline.insert(deadline_after(self.header_timeout))
            }
        };
        if deadline < self.timer.deadline() {
            self.timer.as_mut().reset(deadline);
        }
        // The timer may be armed for an earlier, stale deadline: then re-arm.
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.timer.deadline() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
        false
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.refresh_phase();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() && !this.multiplexed && matches!(this.phase, Phase::Idle(_)) {
                    this.phase = Phase::Headers(None);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.expired(cx) {
                    let what = match this.phase {
                        Phase::Idle(_) => "idle keep-alive connection timed out",
                        _ => "client did not send a complete request head in time",
                    };
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.arm_if_idle(cx);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.arm_if_idle(cx);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        this.arm_if_idle(cx);
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
