//! `[admin]`: the admin API's unix socket, and its optional TCP listener
//! for remote operation (`listen`, bearer tokens from `token_file` and
//! `read_tokens_file`, `tls`, the `Host` names it answers, CORS origins).
//!
//! Tokens are read from their files by the API when it starts (and again
//! when the files change); they never sit in the model. [`read_token_file`]
//! is the one reader, used by `config check` too.

use crate::error::{ConfigError, Located};
use crate::tls::TlsCert;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Shortest token accepted: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

/// Largest token file read (a token file is a few lines).
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

/// `[admin]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub socket: Option<String>,
    pub listen: Option<Spanned<String>>,
    pub token_file: Option<Spanned<String>>,
    pub read_tokens_file: Option<Spanned<String>>,
    pub tls: Option<Spanned<RawAdminTls>>,
    pub hosts: Option<Vec<Spanned<String>>>,
    pub cors_origins: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    pub cert: String,
    pub key: String,
}

/// The admin API over TCP (`[admin] listen`), for the CLI on another
/// machine and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAdmin {
    pub listen: SocketAddr,
    /// Tokens that may do everything, one per line.
    pub token_file: PathBuf,
    /// Tokens that may only read (GET), one per line.
    pub read_tokens_file: Option<PathBuf>,
    /// Certificate and key of the listener; required unless `listen` is a
    /// loopback address.
    pub tls: Option<TlsCert>,
    /// `Host` names answered besides the listen address and loopback
    /// names (lowercase, without port).
    pub hosts: Vec<String>,
    /// Origins allowed to call the API from a browser page of theirs.
    pub cors_origins: Vec<String>,
}

pub(crate) fn validate(
    raw: &RawAdmin,
    base: &Path,
    file: &Path,
    source: &str,
    check_files: bool,
) -> Result<Option<RemoteAdmin>, ConfigError> {
    remote_admin(raw, base, check_files)
        .map_err(|located| ConfigError::located(file, source, located))
}

fn remote_admin(
    raw: &RawAdmin,
    base: &Path,
    check_files: bool,
) -> Result<Option<RemoteAdmin>, Located> {
    let Some(listen_raw) = &raw.listen else {
        return refuse_orphans(raw).map(|()| None);
    };
    let listen = listen(listen_raw)?;
    let Some(token_file) = &raw.token_file else {
        return Err((
            listen_raw.span(),
            "[admin] listen needs `token_file`, a file of bearer tokens (one per line, mode 0600): every request over TCP must carry one".to_string(),
        ));
    };
    let token_file_path = token_path(token_file, base, check_files)?;
    let read_tokens_file = raw
        .read_tokens_file
        .as_ref()
        .map(|f| token_path(f, base, check_files))
        .transpose()?;
    let tls = raw.tls.as_ref().map(|tls| TlsCert {
        cert: base.join(&tls.get_ref().cert),
        key: base.join(&tls.get_ref().key),
    });
    if let (Some(tls), Some(spanned)) = (&tls, &raw.tls) {
        check_tls_files(tls, spanned, check_files)?;
    }
    if tls.is_none() && !listen.ip().is_loopback() {
        return Err((
            listen_raw.span(),
            format!("[admin] listen `{listen}` is not a loopback address, so tokens would cross the network in clear: set [admin] tls = {{ cert = \"…\", key = \"…\" }}, or listen on 127.0.0.1"),
        ));
    }
    Ok(Some(RemoteAdmin {
        listen,
        token_file: token_file_path,
        read_tokens_file,
        tls,
        hosts: hosts(raw.hosts.as_deref().unwrap_or_default())?,
        cors_origins: origins(raw.cors_origins.as_deref().unwrap_or_default())?,
    }))
}

/// Keys that only mean something with `listen`.
fn refuse_orphans(raw: &RawAdmin) -> Result<(), Located> {
    let orphan = [
        ("token_file", raw.token_file.as_ref().map(Spanned::span)),
        (
            "read_tokens_file",
            raw.read_tokens_file.as_ref().map(Spanned::span),
        ),
        ("tls", raw.tls.as_ref().map(Spanned::span)),
        (
            "hosts",
            raw.hosts
                .as_ref()
                .and_then(|h| h.first())
                .map(Spanned::span),
        ),
        (
            "cors_origins",
            raw.cors_origins
                .as_ref()
                .and_then(|o| o.first())
                .map(Spanned::span),
        ),
    ]
    .into_iter()
    .find_map(|(key, span)| span.map(|span| (key, span)));
    match orphan {
        Some((key, span)) => Err((
            span,
            format!("[admin] {key} is for the TCP listener, but [admin] has no `listen`; add listen = \"127.0.0.1:9900\" or remove {key}"),
        )),
        None => Ok(()),
    }
}

fn listen(raw: &Spanned<String>) -> Result<SocketAddr, Located> {
    raw.get_ref().trim().parse::<SocketAddr>().map_err(|_| {
        (
            raw.span(),
            format!(
                "`{}` is not a listen address; write it like \"127.0.0.1:9900\"",
                raw.get_ref().escape_debug()
            ),
        )
    })
}

fn token_path(raw: &Spanned<String>, base: &Path, check_files: bool) -> Result<PathBuf, Located> {
    let text = raw.get_ref().trim();
    if text.is_empty() {
        return Err((
            raw.span(),
            "a token file path must not be empty".to_string(),
        ));
    }
    let path = base.join(text);
    if check_files {
        read_token_file(&path).map_err(|problem| (raw.span(), problem))?;
    }
    Ok(path)
}

fn check_tls_files(
    tls: &TlsCert,
    spanned: &Spanned<RawAdminTls>,
    check_files: bool,
) -> Result<(), Located> {
    if !check_files {
        return Ok(());
    }
    for (what, path) in [("cert", &tls.cert), ("key", &tls.key)] {
        if !path.is_file() {
            return Err((
                spanned.span(),
                format!(
                    "[admin] tls {what} file {} does not exist; give the PEM file of the admin listener's {what}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn hosts(raw: &[Spanned<String>]) -> Result<Vec<String>, Located> {
    raw.iter()
        .map(|host| {
            let text = host.get_ref().trim().to_ascii_lowercase();
            let name = host_name(&text);
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if ok {
                Ok(name.trim_matches(['[', ']']).to_string())
            } else {
                Err((
                    host.span(),
                    format!(
                        "[admin] hosts entry `{}` is not a host name or address (e.g. \"cutover.example.com\")",
                        host.get_ref().escape_debug()
                    ),
                ))
            }
        })
        .collect()
}

fn origins(raw: &[Spanned<String>]) -> Result<Vec<String>, Located> {
    raw.iter()
        .map(|origin| {
            let text = origin.get_ref().trim().trim_end_matches('/');
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            match rest {
                Some(authority)
                    if !authority.is_empty()
                        && !authority.contains(['/', '?', '#', '*', ' ', '@']) =>
                {
                    Ok(text.to_ascii_lowercase())
                }
                _ => Err((
                    origin.span(),
                    format!(
                        "[admin] cors_origins entry `{}` is not an origin; write scheme and host, e.g. \"https://ops.example.com\"",
                        origin.get_ref().escape_debug()
                    ),
                )),
            }
        })
        .collect()
}

/// `example.com:9900` → `example.com`; `[::1]:9900` → `[::1]`.
pub fn host_name(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

/// Whether `host` (a `Host` header value, port optional) names the admin
/// listener: its address, a loopback name (`localhost`, 127.0.0.1, ::1)
/// when it listens on a loopback or wildcard address, or `[admin] hosts`.
/// Anything else is a name an attacker's page may have pointed at us
/// (DNS rebinding).
pub fn host_allowed(remote: &RemoteAdmin, host: &str) -> bool {
    let name = host_name(host)
        .trim_matches(['[', ']'])
        .trim_end_matches('.');
    let name = name.to_ascii_lowercase();
    let listen_ip = remote.listen.ip();
    if let Ok(ip) = name.parse::<IpAddr>() {
        if ip == listen_ip && !ip.is_unspecified() {
            return true;
        }
        if ip.is_loopback() && (listen_ip.is_loopback() || listen_ip.is_unspecified()) {
            return true;
        }
    } else if name == "localhost" && (listen_ip.is_loopback() || listen_ip.is_unspecified()) {
        return true;
    }
    remote.hosts.contains(&name)
}

/// Reads a token file: one token per line (blank lines and `#` comments
/// skipped). Refused when the file is readable or writable by anyone but
/// its owner, empty, or holds a token shorter than [`MIN_TOKEN_LEN`] or
/// with spaces. The error never quotes a token.
pub fn read_token_file(path: &Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the token file {shown}: {e}; create it (mode 0600) with one token per line"))?;
    if !meta.is_file() {
        return Err(format!("the token file {shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the token file {shown} has mode {mode:04o}: group or others may read it; make it private with `chmod 600 {shown}`"
        ));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the token file {shown}: {e}"))?;
    let mut tokens = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let token = line.trim();
        if token.is_empty() || token.starts_with('#') {
            continue;
        }
        if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "the token on line {} of {shown} is not usable: a token is at least {MIN_TOKEN_LEN} characters without spaces (e.g. the output of `openssl rand -hex 32`)",
                index + 1
            ));
        }
        tokens.push(token.to_string());
    }
    if tokens.is_empty() {
        return Err(format!(
            "the token file {shown} holds no token; write one per line (e.g. `openssl rand -hex 32 > {shown}`)"
        ));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(listen: &str, hosts: &[&str]) -> RemoteAdmin {
        RemoteAdmin {
            listen: listen
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 1))),
            token_file: PathBuf::from("t"),
            read_tokens_file: None,
            tls: None,
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            cors_origins: Vec::new(),
        }
    }

    #[test]
    fn hosts_answered_are_the_listen_address_loopback_names_and_the_configured_ones() {
        let local = remote("127.0.0.1:9900", &[]);
        assert!(host_allowed(&local, "127.0.0.1:9900"));
        assert!(host_allowed(&local, "localhost:9900"));
        assert!(host_allowed(&local, "[::1]:9900"));
        assert!(!host_allowed(&local, "evil.example:9900"));
        let public = remote("0.0.0.0:9900", &["cutover.example.com"]);
        assert!(host_allowed(&public, "cutover.example.com:9900"));
        assert!(host_allowed(&public, "CUTOVER.example.com."));
        assert!(!host_allowed(&public, "0.0.0.0:9900"));
        assert!(!host_allowed(&public, "rebind.attacker.test"));
        let exact = remote("10.1.2.3:9900", &[]);
        assert!(host_allowed(&exact, "10.1.2.3:9900"));
        assert!(!host_allowed(&exact, "localhost"));
    }

    #[test]
    fn host_names_lose_their_port() {
        assert_eq!(host_name("a.example:80"), "a.example");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name("a.example"), "a.example");
    }
}
