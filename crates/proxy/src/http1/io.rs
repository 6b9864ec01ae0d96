//! Connection plumbing shared by both sides: a client connection's
//! transport (TCP or TLS) split into halves that can be joined again for an
//! upgrade, a stream with bytes already read in front of it, and vectored
//! writes.
//!
//! On a worker with an io_uring, a response head (and small body) written
//! with [`WriteSide::write_vec`] to a TCP client is queued on the worker's
//! ring and goes out with the rest of the event loop's turn; any other
//! write on that socket first waits for it to end, so bytes keep their
//! order.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::conn_io::TimedIo;

/// A TLS client connection (its handshake ran over the timed socket).
pub(crate) type TlsConn = tokio_rustls::server::TlsStream<TimedIo>;

/// A client connection's transport.
pub(crate) enum ClientIo {
    Tcp(TcpStream),
    Tls(Box<TlsConn>),
}

pub(crate) enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<Box<TlsConn>>),
}

pub(crate) enum WriteSide {
    Tcp(TcpWrite),
    Tls(WriteHalf<Box<TlsConn>>),
}

/// The writing half of a TCP client connection, and its queued send.
pub(crate) struct TcpWrite {
    outbox: cutover_uring::Outbox,
    /// `None` only once taken by `rejoin` or `drop`.
    half: Option<OwnedWriteHalf>,
}

impl TcpWrite {
    fn half(&mut self) -> io::Result<&mut OwnedWriteHalf> {
        self.half
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for TcpWrite {
    /// Dropping the half shuts the socket down for writing (FIN): with its
    /// last bytes still queued on the ring, the half waits in the send and
    /// goes when it ended, so those bytes go out first.
    fn drop(&mut self) {
        if let Some(half) = self.half.take() {
            if let Err(half) = self.outbox.hold_until_sent(Box::new(half)) {
                drop(half);
            }
        }
    }
}

impl ClientIo {
    pub(crate) fn split(self) -> (ReadSide, WriteSide) {
        match self {
            ClientIo::Tcp(stream) => {
                let (r, w) = stream.into_split();
                let w = TcpWrite {
                    outbox: cutover_uring::Outbox::new(),
                    half: Some(w),
                };
                (ReadSide::Tcp(r), WriteSide::Tcp(w))
            }
            ClientIo::Tls(stream) => {
                let (r, w) = tokio::io::split(stream);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }

    /// The halves joined again. Call [`WriteSide::sent`] first: a send
    /// still queued would be submitted now, but could then overlap with
    /// the joined stream's next write.
    pub(crate) fn rejoin(read: ReadSide, write: WriteSide) -> Option<ClientIo> {
        match (read, write) {
            (ReadSide::Tcp(r), WriteSide::Tcp(mut w)) => {
                let half = w.half.take()?;
                r.reunite(half).ok().map(ClientIo::Tcp)
            }
            (ReadSide::Tls(r), WriteSide::Tls(w)) => Some(ClientIo::Tls(r.unsplit(w))),
            _ => None,
        }
    }
}

impl ReadSide {
    /// Waits until a read would not block. Needs no buffer on TCP; a TLS
    /// stream may hold decrypted bytes already, so there it returns at once.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match self {
            ReadSide::Tcp(r) => r.readable().await,
            ReadSide::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl WriteSide {
    /// A buffer to encode a response head into (a sent one's, reused).
    pub(crate) fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        match self {
            WriteSide::Tcp(w) => w.outbox.buffer(capacity),
            WriteSide::Tls(_) => Vec::with_capacity(capacity),
        }
    }

    /// Writes all of `buf`: queued on the worker's ring when it has one
    /// (a TCP client; the call returns before the bytes went out), else
    /// written now.
    pub(crate) async fn write_vec(&mut self, buf: Vec<u8>) -> io::Result<()> {
        if let WriteSide::Tcp(w) = self {
            w.outbox.sent().await?;
            let half = w.half.as_mut().ok_or(io::ErrorKind::NotConnected)?;
            match w.outbox.queue(half.as_ref(), buf) {
                Ok(()) => Ok(()),
                Err(buf) => half.write_all(&buf).await,
            }
        } else {
            self.write_all(&buf).await
        }
    }

    /// Waits until a queued send went out (its failure, if it failed).
    pub(crate) async fn sent(&mut self) -> io::Result<()> {
        match self {
            WriteSide::Tcp(w) => w.outbox.sent().await,
            WriteSide::Tls(_) => Ok(()),
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => {
                ready!(w.outbox.poll_sent(cx))?;
                Pin::new(w.half()?).poll_write(cx, buf)
            }
            WriteSide::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => {
                ready!(w.outbox.poll_sent(cx))?;
                Pin::new(w.half()?).poll_write_vectored(cx, bufs)
            }
            WriteSide::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Tcp(w) => w.half.as_ref().is_some_and(|h| h.is_write_vectored()),
            WriteSide::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => {
                ready!(w.outbox.poll_sent(cx))?;
                Pin::new(w.half()?).poll_flush(cx)
            }
            WriteSide::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => {
                // The FIN goes after the queued bytes (even if they failed).
                let _ = ready!(w.outbox.poll_sent(cx));
                Pin::new(w.half()?).poll_shutdown(cx)
            }
            WriteSide::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection with bytes already read from it: they are read again
/// first.
#[derive(Debug)]
pub(crate) struct Prefixed<T> {
    pub(crate) prefix: Bytes,
    pub(crate) io: T,
}

/// An upgraded client connection (with what was read past the request).
pub(crate) type Upgraded = Prefixed<ClientIo>;

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Writes all of `parts`, in as few writes as the transport allows.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    write: &mut W,
    parts: &[IoSlice<'_>],
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        // Rebuild the slices past what was written.
        let mut skip = written;
        let mut rest: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            rest.push(IoSlice::new(&part[skip..]));
            skip = 0;
        }
        let n = poll_fn(|cx| Pin::new(&mut *write).poll_write_vectored(cx, &rest)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    Ok(())
}

/// One chunk of a chunked body (nothing for empty data, which would read as
/// the last chunk), in as few writes as the transport allows.
pub(crate) async fn write_chunk<W: AsyncWrite + Unpin>(
    write: &mut W,
    scratch: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    scratch.clear();
    super::encode::chunk_header(scratch, data.len());
    let parts = [
        IoSlice::new(scratch),
        IoSlice::new(data),
        IoSlice::new(b"\r\n"),
    ];
    write_all_vectored(write, &parts).await
}
