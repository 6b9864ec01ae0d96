//! One admin API connection, whatever carries it (unix socket, TCP, TLS):
//! HTTP/1.1 by hyper with the transport's limits, and the graceful end of
//! every connection when the daemon stops.
//!
//! Limits, each answered with a JSON `{"error": …}` body:
//! - a request head must arrive within [`HEADER_READ_TIMEOUT`] (a request
//!   line with nothing after it is closed), and fit in [`MAX_HEAD_BYTES`]
//!   (else 431);
//! - a request target longer than [`MAX_TARGET_BYTES`] is 414, headers
//!   over [`MAX_HEADER_BYTES`] are 431, a declared body larger than
//!   [`MAX_BODY_BYTES`] is 413 at once (nothing of it is read), all by
//!   [`limits`];
//! - the answers hyper makes itself for a head it cannot parse (400, 414,
//!   431, with empty bodies) are rewritten by [`JsonErrors`] into the same
//!   JSON form as every other error.

use crate::error::HttpError;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};

/// How long a client may take to send a request head (also how long an
/// idle keep-alive connection stays open).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send a request body.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers).
pub(crate) const MAX_HEAD_BYTES: usize = 64 << 10;
/// Largest sum of header lines (names and values).
pub(crate) const MAX_HEADER_BYTES: usize = 32 << 10;
/// Longest request target (path and query).
pub(crate) const MAX_TARGET_BYTES: usize = 8 << 10;
/// Largest request body: every body of the API is a small JSON object.
pub const MAX_BODY_BYTES: u64 = 64 << 10;

/// Who is on the other end of a connection, for logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub Option<std::net::SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unix socket"),
        }
    }
}

/// The open connections of one listener: each holds a clone of `alive`;
/// all are asked to finish when `stopped` turns true.
pub(crate) struct Connections {
    alive: mpsc::Sender<()>,
    all_closed: mpsc::Receiver<()>,
    stopped: watch::Receiver<bool>,
}

impl Connections {
    pub(crate) fn new(stopped: watch::Receiver<bool>) -> Connections {
        let (alive, all_closed) = mpsc::channel(1);
        Connections {
            alive,
            all_closed,
            stopped,
        }
    }

    /// Serves one connection on its own task.
    pub(crate) fn spawn<IO>(&self, io: IO, peer: Peer, app: axum::Router)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(serve(io, peer, app, self.track()));
    }

    /// A mark of one more open connection, and the stop signal it obeys.
    pub(crate) fn track(&self) -> Tracked {
        Tracked {
            _alive: self.alive.clone(),
            stopped: self.stopped.clone(),
        }
    }

    /// Waits until every connection ended, at most `grace`; whether they did.
    pub(crate) async fn wait_closed(self, grace: Duration) -> bool {
        let Connections {
            alive,
            mut all_closed,
            ..
        } = self;
        drop(alive);
        tokio::time::timeout(grace, all_closed.recv()).await.is_ok()
    }
}

/// One open connection of [`Connections`]: counted until dropped.
pub(crate) struct Tracked {
    _alive: mpsc::Sender<()>,
    stopped: watch::Receiver<bool>,
}

/// Serves one connection until it ends, or finishes its request in
/// progress once the daemon stops.
pub(crate) async fn serve<IO>(io: IO, peer: Peer, app: axum::Router, tracked: Tracked)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tower = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer);
        hyper::service::Service::call(&tower, request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let connection = builder.serve_connection(TokioIo::new(JsonErrors::new(io)), service);
    tokio::pin!(connection);
    let mut stopped = tracked.stopped.clone();
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "admin API connection ended with an error");
    }
}

/// 414 for a long target, 413 for a declared body over the limit — before
/// anything reads the body, so a client announcing 10 GB is answered at
/// once (and its connection closed, since the body stays unread).
pub(crate) async fn limits(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |target| target.as_str().len());
    if target > MAX_TARGET_BYTES {
        return HttpError::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is {target} bytes long; at most {MAX_TARGET_BYTES} are accepted"),
        )
        .into_response();
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return HttpError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request's headers are {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        )
        .into_response();
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if let Some(length) = declared.filter(|length| *length > MAX_BODY_BYTES) {
        let mut response = HttpError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is {length} bytes; at most {MAX_BODY_BYTES} are accepted"),
        )
        .into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return response;
    }
    next.run(request).await
}

/// A connection's stream whose writes pass through unchanged, except the
/// responses hyper makes on its own for a request head it cannot parse
/// (400, 414, 431 with an empty body, the last thing on the connection):
/// those become JSON errors like every other answer of the API.
pub(crate) struct JsonErrors<IO> {
    io: IO,
    /// A rewritten answer and how much of it was written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> JsonErrors<IO> {
    pub(crate) fn new(io: IO) -> JsonErrors<IO> {
        JsonErrors { io, pending: None }
    }
}

impl<IO: AsyncWrite + Unpin> JsonErrors<IO> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for JsonErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for JsonErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(answer) = json_transport_error(buf) {
            self.pending = Some((answer, 0));
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|buf| !buf.is_empty()) {
            if let Some(answer) = json_transport_error(first) {
                self.pending = Some((answer, 0));
                return Poll::Ready(Ok(first.len()));
            }
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The JSON answer replacing `bytes` when they are exactly one of hyper's
/// own empty error responses; `None` for anything else. The API's own
/// errors always have a JSON body, so an empty 400/414/431 is hyper's.
fn json_transport_error(bytes: &[u8]) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(bytes).ok()?;
    let rest = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let message = match status {
        400 => "the request is malformed: its request line or a header is not valid HTTP/1.1",
        414 => "the request target is too long",
        431 => "the request's headers are too large",
        _ => return None,
    };
    let empty = head
        .to_ascii_lowercase()
        .split("\r\n")
        .any(|line| line == "content-length: 0");
    if !head.ends_with("\r\n\r\n") || !empty {
        return None;
    }
    let status = StatusCode::from_u16(status).ok()?;
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_error_answers_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 23:00:00 GMT\r\n\r\n";
        let answer = json_transport_error(hyper_400).map(String::from_utf8);
        let Some(Ok(answer)) = answer else {
            panic!("not rewritten");
        };
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with(r#"{"error":"the request is malformed: its request line or a header is not valid HTTP/1.1"}"#), "{answer}");
        assert!(json_transport_error(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
        )
        .is_some());
        // The API's own errors carry a body; other statuses pass.
        assert!(
            json_transport_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n")
                .is_none()
        );
        assert!(
            json_transport_error(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_none()
        );
        assert!(
            json_transport_error(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}")
                .is_none()
        );
        assert!(json_transport_error(b"data: HTTP/1.1 400\r\n\r\n").is_none());
    }
}
