//! An HTTP/1.1 client of the admin API over its unix socket (hyper 1).
//! One connection per request: the CLI makes few.

use crate::failure::Failure;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use std::fmt;
use std::io;
use std::path::PathBuf;
use tokio::net::UnixStream;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers on the socket.
    Unreachable { socket: PathBuf, source: io::Error },
    /// The connection broke or the daemon spoke no HTTP.
    Connection { socket: PathBuf, message: String },
    /// The API answered with an error.
    Api { status: StatusCode, message: String },
    /// The API answered with something the CLI cannot read.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { socket, source } => write!(
                f,
                "cannot reach the cutover daemon at {} ({source}); is `cutover serve` running with this config?",
                socket.display()
            ),
            ClientError::Connection { socket, message } => {
                write!(f, "the connection to the cutover daemon at {} failed: {message}", socket.display())
            }
            ClientError::Api { message, .. } => f.write_str(message),
            ClientError::Protocol(message) => write!(f, "unexpected answer from the cutover daemon: {message}"),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match &error {
            // A 400 is the caller's mistake, and so is a 404 (an app or
            // deployment that does not exist): usage errors (exit 2).
            ClientError::Api { status, .. }
                if *status == StatusCode::BAD_REQUEST || *status == StatusCode::NOT_FOUND =>
            {
                Failure::usage(&error)
            }
            _ => Failure::failed(&error),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    fn broken(&self, error: impl fmt::Display) -> ClientError {
        ClientError::Connection {
            socket: self.socket.clone(),
            message: error.to_string(),
        }
    }

    /// Sends a request; an error status is turned into [`ClientError::Api`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let response = self.exchange(method, path, body, headers).await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(e))?
            .to_bytes();
        Err(ClientError::Api {
            status,
            message: error_message(status, &bytes),
        })
    }

    /// Sends a request and reads its JSON answer whatever its status.
    pub async fn json_any_status(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(http::StatusCode, serde_json::Value), ClientError> {
        let response = self.exchange(method, path, body, &[]).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(e))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&bytes)))
        })?;
        Ok((status, value))
    }

    /// Sends a request and returns its response, whatever its status.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken(e))?;
        tokio::spawn(async move {
            // Errors surface on the request or the body; nothing to add here.
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "cutover");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.broken(e))
    }

    /// Sends a request and reads its JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let response = self.send(method, path, body, &[]).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.broken(e))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Protocol(format!("{e} in {}", String::from_utf8_lossy(&bytes)))
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, body).await
    }

    /// The next chunk of a streamed body; `None` at its end.
    pub async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, ClientError> {
        loop {
            match body.frame().await {
                None => return Ok(None),
                Some(Err(error)) => return Err(self.broken(error)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// The `error` of a JSON error body, else the body as text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("the daemon answered {status}")
            } else {
                format!("the daemon answered {status}: {text}")
            }
        }
    }
}

/// Percent-encodes a path segment (app names are plain, but never trust).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_prefer_the_json_error() {
        assert_eq!(
            error_message(StatusCode::NOT_FOUND, br#"{"error": "no app named `x`"}"#),
            "no app named `x`"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b"oops"),
            "the daemon answered 502 Bad Gateway: oops"
        );
        assert_eq!(
            error_message(StatusCode::BAD_GATEWAY, b""),
            "the daemon answered 502 Bad Gateway"
        );
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web-1"), "web-1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
