//! An HTTP/1.1 client of the admin API (hyper 1): over its unix socket,
//! or over TCP (`--admin https://host:9900`, TLS by rustls; `http://` only
//! to a loopback address) with the bearer token of `CUTOVER_TOKEN`. One
//! connection per request: the CLI makes few.
//!
//! TLS trusts the system's certificate authorities (`SSL_CERT_FILE`, else
//! the distribution's bundle), or, with `--admin-ca FILE` /
//! `CUTOVER_CA_FILE`, only the authorities in that file: the way to reach
//! a daemon whose certificate comes from a private CA (or is self-signed).

use crate::failure::Failure;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::de::DeserializeOwned;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

/// The environment variable holding the token for `--admin URL`.
pub const TOKEN_ENV: &str = "CUTOVER_TOKEN";

#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers at the endpoint.
    Unreachable { endpoint: String, source: io::Error },
    /// The connection broke or the daemon spoke no HTTP.
    Connection { endpoint: String, message: String },
    /// The API answered with an error.
    Api { status: StatusCode, message: String },
    /// The API answered with something the CLI cannot read.
    Protocol(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Unreachable { endpoint, source } => write!(
                f,
                "cannot reach the cutover daemon at {endpoint} ({source}); is `cutover serve` running with this config?"
            ),
            ClientError::Connection { endpoint, message } => {
                write!(f, "the connection to the cutover daemon at {endpoint} failed: {message}")
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

/// Where the daemon's admin API is.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(Arc<Remote>),
}

/// The admin API over TCP.
struct Remote {
    /// `https://host:port`, for messages.
    url: String,
    host: String,
    port: u16,
    /// `host:port` as written: the `Host` header the daemon checks.
    authority: String,
    token: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

#[derive(Clone)]
pub struct Client {
    target: Target,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client {
            target: Target::Unix(socket),
        }
    }

    /// A client of the admin API at `url` (`https://host:port`, or
    /// `http://` to a loopback address) sending `token`; TLS trusts the
    /// authorities of `ca_file`, else the system's. The error says what to
    /// fix.
    pub fn remote(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Client, String> {
        let (secure, authority) = match (url.strip_prefix("https://"), url.strip_prefix("http://"))
        {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                return Err(format!(
                    "--admin {url}: use https://host:port (or a unix socket path)"
                ))
            }
        };
        let authority = authority.trim_end_matches('/');
        let (host, port) = split_authority(authority, if secure { 443 } else { 80 })
            .ok_or_else(|| format!("--admin {url}: expected scheme://host[:port] with no path"))?;
        if !secure && !is_loopback(&host) {
            return Err(format!(
                "--admin {url}: the token would cross the network in clear; use https:// (http:// is only for a loopback address)"
            ));
        }
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("--admin {url} needs a token: set {TOKEN_ENV} to one of the daemon's [admin] token_file (or read_tokens_file) tokens"))?;
        let tls = match secure {
            true => Some(tls_connector(&host, ca_file)?),
            false => None,
        };
        let scheme = if secure { "https" } else { "http" };
        Ok(Client {
            target: Target::Tcp(Arc::new(Remote {
                url: format!("{scheme}://{authority}"),
                host,
                port,
                authority: authority.to_string(),
                token: token.to_string(),
                tls,
            })),
        })
    }

    /// The socket path or URL, for messages.
    fn endpoint(&self) -> String {
        match &self.target {
            Target::Unix(path) => path.display().to_string(),
            Target::Tcp(remote) => remote.url.clone(),
        }
    }

    fn broken(&self, error: impl fmt::Display) -> ClientError {
        ClientError::Connection {
            endpoint: self.endpoint(),
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
        let request = self.request(method, path, body, headers)?;
        let unreachable = |source| ClientError::Unreachable {
            endpoint: self.endpoint(),
            source,
        };
        match &self.target {
            Target::Unix(socket) => {
                let stream = UnixStream::connect(socket).await.map_err(unreachable)?;
                self.send_over(stream, request).await
            }
            Target::Tcp(remote) => {
                let stream = TcpStream::connect((remote.host.as_str(), remote.port))
                    .await
                    .map_err(unreachable)?;
                let _ = stream.set_nodelay(true);
                match &remote.tls {
                    None => self.send_over(stream, request).await,
                    Some((connector, name)) => {
                        let stream = connector
                            .connect(name.clone(), stream)
                            .await
                            .map_err(|e| self.broken(format!("TLS: {e}")))?;
                        self.send_over(stream, request).await
                    }
                }
            }
        }
    }

    /// The request with the headers every request carries: `Host`, and
    /// over TCP the token.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, String)],
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let mut request = Request::builder().method(method).uri(path);
        request = match &self.target {
            Target::Unix(_) => request.header(header::HOST, "cutover"),
            Target::Tcp(remote) => request
                .header(header::HOST, remote.authority.as_str())
                .header(header::AUTHORIZATION, format!("Bearer {}", remote.token)),
        };
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
        request
            .body(body)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    async fn send_over<IO>(
        &self,
        io: IO,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, ClientError>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.broken(e))?;
        tokio::spawn(async move {
            // Errors surface on the request or the body; nothing to add here.
            let _ = connection.await;
        });
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

/// `host:port`, `host` (default port), `[v6]:port`; the host without brackets.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return None,
            }
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            Some(_) => return None,
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_string(), port))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where the system keeps its certificate authorities (Debian and Ubuntu,
/// Fedora and RHEL, Alpine and others).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A TLS client for `host` trusting the authorities of `ca_file`, else
/// the system's; it offers HTTP/1.1 only.
fn tls_connector(
    host: &str,
    ca_file: Option<&Path>,
) -> Result<(TlsConnector, ServerName<'static>), String> {
    let bundle = match ca_file {
        Some(file) => file.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .or_else(|| SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()))
            .ok_or("no system certificate authorities found; give the daemon's CA with --admin-ca FILE (or CUTOVER_CA_FILE)")?,
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&bundle)
        .and_then(|certs| certs.collect())
        .map_err(|e| {
            format!(
                "cannot read certificate authorities from {}: {e}",
                bundle.display()
            )
        })?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(format!(
            "{} holds no usable CA certificate (PEM)",
            bundle.display()
        ));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS set-up failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a host name or address"))?;
    Ok((TlsConnector::from(Arc::new(config)), name))
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
    fn admin_urls_name_host_and_port() {
        assert_eq!(
            split_authority("h.example:9900", 443),
            Some(("h.example".into(), 9900))
        );
        assert_eq!(
            split_authority("h.example", 443),
            Some(("h.example".into(), 443))
        );
        assert_eq!(
            split_authority("[::1]:9900", 80),
            Some(("::1".into(), 9900))
        );
        assert_eq!(split_authority("h.example:9900/v1", 443), None);
        assert_eq!(split_authority("h.example:0", 443), None);
        assert_eq!(split_authority("", 443), None);
    }

    #[test]
    fn tokens_go_in_clear_only_to_loopback() {
        let token = Some("a-token-of-enough-length");
        assert!(Client::remote("http://127.0.0.1:9900", token, None).is_ok());
        assert!(Client::remote("http://localhost:9900/", token, None).is_ok());
        let clear = Client::remote("http://10.0.0.5:9900", token, None).unwrap_err();
        assert!(clear.contains("in clear"), "{clear}");
        let missing = Client::remote("http://127.0.0.1:9900", None, None).unwrap_err();
        assert!(missing.contains("CUTOVER_TOKEN"), "{missing}");
        let path = Client::remote("https://h.example:9900/admin", token, None).unwrap_err();
        assert!(path.contains("no path"), "{path}");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("web-1"), "web-1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
