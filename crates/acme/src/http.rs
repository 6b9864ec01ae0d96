//! HTTPS to the ACME server: one connection per request (ACME traffic is a
//! handful of requests per certificate), rustls with the roots of
//! `ca_file` or of the system, HTTP/1.1 through hyper.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::AcmeError;

/// Longest any one exchange with the ACME server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer read (a certificate chain is a few KiB).
const MAX_ANSWER: usize = 1 << 20;
/// Where Linux distributions keep the system's roots, when `ca_file` is
/// not given (`SSL_CERT_FILE` first).
const SYSTEM_ROOTS: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// One answer of the ACME server.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `Retry-After`, as seconds or an HTTP date.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        parse_retry_after(self.header("retry-after")?, SystemTime::now())
    }
}

/// `Retry-After: 120` or `Retry-After: Fri, 31 Dec 1999 23:59:59 GMT`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[derive(Clone)]
pub(crate) struct HttpsClient {
    connector: TlsConnector,
}

impl HttpsClient {
    /// A client trusting the roots in `ca_file`, or the system's.
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<HttpsClient, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_roots(ca_file)? {
            // A bundle may hold a certificate rustls cannot use; skip it.
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Crypto(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(HttpsClient {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// One request; any answer (also 4xx/5xx) is `Ok`.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, AcmeError> {
        let unreachable = |reason: String| AcmeError::Unreachable {
            url: url.to_owned(),
            reason,
        };
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange(method, url, body))
            .await
            .map_err(|_| unreachable(format!("no answer within {EXCHANGE_TIMEOUT:?}")))?
            .map_err(unreachable)
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err("the ACME server must be spoken to over https".into());
        }
        let host = uri.host().ok_or("the URL names no host")?.to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(|c| c == '[' || c == ']'), port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.trim_matches(|c| c == '[' || c == ']').to_owned())
            .map_err(|e| e.to_string())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or(host);
        let request = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |pq| pq.as_str()))
            .header(http::header::HOST, authority)
            .header(
                http::header::USER_AGENT,
                concat!("cutover/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONTENT_TYPE, "application/jose+json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        driver.abort();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

fn read_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, AcmeError> {
    let env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let candidates: Vec<&Path> = match ca_file {
        Some(file) => vec![file],
        None => env
            .as_deref()
            .into_iter()
            .chain(SYSTEM_ROOTS.iter().map(Path::new))
            .collect(),
    };
    let mut last = String::from("no root certificate file found");
    for path in candidates {
        match CertificateDer::pem_file_iter(path).map(|certs| certs.collect::<Result<Vec<_>, _>>())
        {
            Ok(Ok(certs)) if !certs.is_empty() => return Ok(certs),
            Ok(Ok(_)) => last = format!("{} holds no certificate", path.display()),
            Ok(Err(e)) | Err(e) => last = format!("{}: {e}", path.display()),
        }
    }
    Err(AcmeError::CaFile {
        path: ca_file.map_or_else(|| "(system roots)".into(), |p| p.display().to_string()),
        reason: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
