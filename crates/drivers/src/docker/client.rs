//! The connection to the Docker engine: which socket, API version
//! negotiation on first use (retried until it succeeds), and the mapping of
//! bollard's errors to [`DockerError`]s that name the socket or the call.

use super::DockerError;
use bollard::errors::Error as BollardError;
use bollard::{Docker, API_DEFAULT_VERSION};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::OnceCell;

/// The socket tried when neither [app.docker] socket nor DOCKER_HOST says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Calls without a stream (create, stop, remove, inspect) must answer within
/// this long (plus the stop timeout for `stop`).
const MIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    /// `tcp://host:port`, spoken as plain HTTP.
    Tcp(String),
}

pub(crate) struct Client {
    endpoint: Endpoint,
    timeout: Duration,
    docker: OnceCell<Docker>,
}

impl Client {
    /// Where to connect: `socket` if configured, else `DOCKER_HOST`, else
    /// the default socket. Nothing is connected before the first call.
    pub fn new(socket: Option<&Path>, stop_timeout: Duration) -> Client {
        let endpoint = match socket {
            Some(path) => Endpoint::Unix(path.to_path_buf()),
            None => from_docker_host(std::env::var("DOCKER_HOST").ok().as_deref()),
        };
        Client {
            endpoint,
            timeout: MIN_TIMEOUT.max(stop_timeout + Duration::from_secs(60)),
            docker: OnceCell::new(),
        }
    }

    /// `unix:///var/run/docker.sock`, for messages.
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp(address) => address.clone(),
        }
    }

    /// The connected client; connects and negotiates the API version on
    /// first use (and again after a failure).
    pub async fn get(&self) -> Result<&Docker, DockerError> {
        self.docker.get_or_try_init(|| self.connect()).await
    }

    async fn connect(&self) -> Result<Docker, DockerError> {
        let unreachable = |reason: String| DockerError::Unreachable {
            socket: self.describe(),
            reason,
        };
        let timeout = self.timeout.as_secs();
        let docker = match &self.endpoint {
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(unreachable("the socket does not exist".to_string()));
                }
                let text = path.to_string_lossy();
                Docker::connect_with_unix(&text, timeout, API_DEFAULT_VERSION)
            }
            Endpoint::Tcp(address) => {
                Docker::connect_with_http(address, timeout, API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| unreachable(e.to_string()))?;
        // Version negotiation is also the first round trip: it tells
        // whether anything answers on the socket.
        let negotiated = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer within 10s".to_string()))?
            .map_err(|e| unreachable(with_causes(&e)))?;
        Ok(negotiated)
    }

    /// Maps a failed call: transport failures become "engine unreachable",
    /// answers become "the engine answered …" with `context`.
    pub fn error(&self, context: impl Into<String>, e: BollardError) -> DockerError {
        let context = context.into();
        match e {
            BollardError::DockerResponseServerError { message, .. } => {
                DockerError::Api { context, message }
            }
            BollardError::DockerStreamError { error } => DockerError::Api {
                context,
                message: error,
            },
            BollardError::RequestTimeoutError => DockerError::Api {
                context,
                message: format!("no answer within {}s", self.timeout.as_secs()),
            },
            BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::HttpClientError { .. }
            | BollardError::HyperResponseError { .. } => DockerError::Unreachable {
                socket: self.describe(),
                reason: format!("{context}: {}", with_causes(&e)),
            },
            other => DockerError::Api {
                context,
                message: other.to_string(),
            },
        }
    }
}

/// An error with its causes: bollard's transport errors say only "client
/// error (Connect)" themselves; the cause ("Connection refused") is below.
fn with_causes(e: &BollardError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        cause = inner.source();
    }
    text
}

fn from_docker_host(value: Option<&str>) -> Endpoint {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)),
        Some(value) => match value.strip_prefix("unix://") {
            Some(path) => Endpoint::Unix(PathBuf::from(path)),
            None if value.starts_with("tcp://") || value.starts_with("http://") => {
                Endpoint::Tcp(value.to_string())
            }
            // A bare path.
            None => Endpoint::Unix(PathBuf::from(value)),
        },
    }
}

/// The HTTP status of an answer from the engine, if the error is one.
pub(crate) fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Whether the engine itself refused (an answer, or an error in a progress
/// stream), rather than the call failing to reach it.
pub(crate) fn is_engine_refusal(e: &BollardError) -> bool {
    status(e).is_some() || matches!(e, BollardError::DockerStreamError { .. })
}

pub(crate) fn is_not_found(e: &BollardError) -> bool {
    status(e) == Some(404)
}

/// The engine's own words for an error.
pub(crate) fn message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.clone(),
        BollardError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_selects_the_endpoint() {
        assert_eq!(
            from_docker_host(None),
            Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))
        );
        assert_eq!(
            from_docker_host(Some("unix:///run/user/1000/docker.sock")),
            Endpoint::Unix(PathBuf::from("/run/user/1000/docker.sock"))
        );
        assert_eq!(
            from_docker_host(Some("tcp://127.0.0.1:2375")),
            Endpoint::Tcp("tcp://127.0.0.1:2375".to_string())
        );
        assert_eq!(
            from_docker_host(Some("")),
            Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET))
        );
    }
}
