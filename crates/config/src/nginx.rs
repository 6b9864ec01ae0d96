//! `[proxy] mode = "nginx"` and `[proxy.nginx]`: cutover drives an existing
//! nginx instead of its built-in proxy (the nginx front mode).
//!
//! The raw section ([`RawNginx`]) is deserialised strictly like the rest of
//! the file; [`validate`] turns it into an [`NginxConfig`] with defaults
//! applied and local paths resolved against the config file's directory.
//! Every value here ends up as an argv element (of a local command, or of
//! `ssh`), never in a shell string; values that `ssh` itself would parse
//! (`-o` options are split on whitespace, `%` tokens are expanded) are
//! checked so they reach it unchanged.

use crate::error::{ConfigError, Located};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNginx {
    pub conf: Option<Spanned<String>>,
    pub include_dir: Option<Spanned<String>>,
    pub pid_file: Option<Spanned<String>>,
    pub log_dir: Option<Spanned<String>>,
    pub test: Option<Spanned<Vec<String>>>,
    pub reload: Option<Spanned<Vec<String>>>,
    pub ssh: Option<Spanned<RawSsh>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub host: Spanned<String>,
    pub user: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub identity_file: Option<Spanned<String>>,
    pub known_hosts_file: Option<Spanned<String>>,
    pub strict_host_key_checking: Option<bool>,
}

/// How cutover drives nginx. See the README's "nginx front mode".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    /// nginx's main configuration file (used by the default `test` and
    /// `reload` commands and named in the generated site config).
    pub conf: PathBuf,
    /// Where cutover writes `<app>.upstream.conf`.
    pub include_dir: PathBuf,
    /// nginx's pid file: the master whose workers are drained after a
    /// reload (when not set: `/run/nginx.pid`, used only if `nginx -T`
    /// names no `pid`).
    pub pid_file: PathBuf,
    /// `pid_file` was not set: take it from the configuration (`nginx -T`).
    pub pid_file_from_conf: bool,
    /// Where the generated site config puts the app's access and error logs.
    pub log_dir: PathBuf,
    /// argv validating the whole nginx configuration (`nginx -t`).
    pub test: Vec<String>,
    /// argv reloading nginx (`nginx -s reload`, `systemctl reload nginx`, ...).
    pub reload: Vec<String>,
    /// Run every step on this host over `ssh`; paths above are on that host.
    pub ssh: Option<SshConfig>,
    /// `listen` addresses of the generated site config (`[proxy] listen`
    /// when given; port 80 otherwise).
    pub listen: Vec<String>,
}

impl NginxConfig {
    /// The file cutover rewrites at every switch of `app`.
    pub fn include_path(&self, app: &str) -> PathBuf {
        self.include_dir.join(format!("{app}.upstream.conf"))
    }

    /// The name of `app`'s upstream block.
    pub fn upstream_name(app: &str) -> String {
        format!("cutover_{app}")
    }
}

/// The system `ssh` client's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshConfig {
    pub host: String,
    pub user: Option<String>,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    /// A known_hosts file instead of the user's own (`UserKnownHostsFile`).
    pub known_hosts_file: Option<PathBuf>,
    /// `true` (default): `StrictHostKeyChecking=yes`, the host key must be
    /// known already; `false`: `accept-new` (trust on first use, a changed
    /// key is still refused).
    pub strict_host_key_checking: bool,
}

/// `[proxy] mode`: true for "nginx", false for "builtin" (or none).
pub(crate) fn mode(
    mode: Option<&Spanned<String>>,
    section: Option<&Spanned<RawNginx>>,
    file: &Path,
    source: &str,
) -> Result<bool, ConfigError> {
    let error = |span: std::ops::Range<usize>, message: String| {
        ConfigError::at(file, source, Some(span), message)
    };
    let nginx = match mode.map(|m| m.get_ref().as_str()) {
        None | Some("builtin") => false,
        Some("nginx") => true,
        Some(other) => {
            return Err(error(
                mode.map_or(0..0, Spanned::span),
                format!(
                    "proxy mode `{other}` is not known; use \"builtin\" (the default) or \"nginx\""
                ),
            ))
        }
    };
    if let (false, Some(section)) = (nginx, section) {
        return Err(error(
            section.span(),
            "[proxy.nginx] is only used with `mode = \"nginx\"` in [proxy]; add it or remove this section".to_string(),
        ));
    }
    Ok(nginx)
}

/// Validates `[proxy.nginx]` (absent: all defaults). `listen` is `[proxy]
/// listen` when it was given.
pub(crate) fn validate(
    raw: Option<&Spanned<RawNginx>>,
    listen: Option<&[SocketAddr]>,
    base: &Path,
    file: &Path,
    source: &str,
) -> Result<NginxConfig, ConfigError> {
    nginx_config(raw, listen, base).map_err(|located| ConfigError::located(file, source, located))
}

fn nginx_config(
    raw: Option<&Spanned<RawNginx>>,
    listen: Option<&[SocketAddr]>,
    base: &Path,
) -> Result<NginxConfig, Located> {
    let empty = RawNginx {
        conf: None,
        include_dir: None,
        pid_file: None,
        log_dir: None,
        test: None,
        reload: None,
        ssh: None,
    };
    let section = raw.map_or(&empty, Spanned::get_ref);
    let ssh = section
        .ssh
        .as_ref()
        .map(|ssh| ssh_config(ssh, base))
        .transpose()?;
    let paths = HostPaths {
        base,
        remote: ssh.is_some(),
    };
    let conf = paths.get(section.conf.as_ref(), "/etc/nginx/nginx.conf", "conf")?;
    let include_dir = paths.get(
        section.include_dir.as_ref(),
        "/etc/nginx/conf.d",
        "include_dir",
    )?;
    let pid_file = paths.get(section.pid_file.as_ref(), "/run/nginx.pid", "pid_file")?;
    let log_dir = paths.get(section.log_dir.as_ref(), "/var/log/nginx", "log_dir")?;
    if let (Some(raw), true) = (&section.log_dir, log_dir.to_string_lossy().contains('$')) {
        return Err((
            raw.span(),
            "`log_dir` must not contain `$`: nginx would read a variable in the access_log path"
                .to_string(),
        ));
    }
    let conf_text = conf.display().to_string();
    let test = command(
        section.test.as_ref(),
        vec!["nginx".into(), "-t".into(), "-c".into(), conf_text.clone()],
        "test",
    )?;
    let reload = command(
        section.reload.as_ref(),
        vec![
            "nginx".into(),
            "-s".into(),
            "reload".into(),
            "-c".into(),
            conf_text,
        ],
        "reload",
    )?;
    let listen = match listen {
        Some(addrs) if !addrs.is_empty() => addrs.iter().map(SocketAddr::to_string).collect(),
        _ => vec!["80".to_string()],
    };
    Ok(NginxConfig {
        conf,
        include_dir,
        pid_file,
        pid_file_from_conf: section.pid_file.is_none(),
        log_dir,
        test,
        reload,
        ssh,
        listen,
    })
}

/// Paths on the nginx host: absolute when that host is remote, else
/// relative to the config file's directory.
struct HostPaths<'a> {
    base: &'a Path,
    remote: bool,
}

impl HostPaths<'_> {
    fn get(
        &self,
        value: Option<&Spanned<String>>,
        default: &str,
        key: &str,
    ) -> Result<PathBuf, Located> {
        let Some(value) = value else {
            return Ok(PathBuf::from(default));
        };
        let text = value.get_ref();
        if text.trim().is_empty() {
            return Err((value.span(), format!("`{key}` must not be empty")));
        }
        if text.contains('\0') {
            return Err((
                value.span(),
                format!("`{key}` must not contain a NUL character"),
            ));
        }
        let path = Path::new(text);
        if path.is_absolute() {
            Ok(path.to_path_buf())
        } else if self.remote {
            Err((
                value.span(),
                format!("`{key}` = \"{text}\" must be an absolute path: with `ssh` it names a file on the nginx host"),
            ))
        } else {
            Ok(self.base.join(path))
        }
    }
}

/// `test` and `reload`: argv lists, `default` when not given.
fn command(
    value: Option<&Spanned<Vec<String>>>,
    default: Vec<String>,
    key: &str,
) -> Result<Vec<String>, Located> {
    let Some(value) = value else {
        return Ok(default);
    };
    let argv = value.get_ref();
    if argv.first().is_none_or(|p| p.trim().is_empty()) {
        return Err((
            value.span(),
            format!("`{key}` must be an argv list naming a program, e.g. [\"nginx\", \"-s\", \"reload\"] or [\"systemctl\", \"reload\", \"nginx\"]"),
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err((
            value.span(),
            format!("`{key}` must not contain a NUL character"),
        ));
    }
    Ok(argv.clone())
}

fn ssh_config(spanned: &Spanned<RawSsh>, base: &Path) -> Result<SshConfig, Located> {
    let raw = spanned.get_ref();
    // A host or user name that could be read as an option, or that carries
    // a second name, is refused: ssh gets them as separate argv elements
    // after `--` / `-l`, and they must stay one plain name.
    let plain = |text: &str| {
        !text.is_empty()
            && !text.starts_with('-')
            && !text.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '@' | '\'' | '"' | '\\' | '%')
            })
    };
    let host = raw.host.get_ref().trim().to_string();
    if !plain(&host) {
        return Err((
            raw.host.span(),
            format!("ssh host `{}` is not a host name or address: no spaces, quotes, `@`, `%`, or leading `-` (put the user in `user`)", raw.host.get_ref().escape_debug()),
        ));
    }
    let user = match &raw.user {
        None => None,
        Some(user) if plain(user.get_ref()) => Some(user.get_ref().clone()),
        Some(user) => {
            return Err((
                user.span(),
                format!(
                    "ssh user `{}` is not a user name: no spaces, quotes, `@`, `%`, or leading `-`",
                    user.get_ref().escape_debug()
                ),
            ))
        }
    };
    let port = match &raw.port {
        None => 22,
        Some(port) => match u16::try_from(*port.get_ref()) {
            Ok(p) if p > 0 => p,
            _ => {
                return Err((
                    port.span(),
                    format!("ssh port {} is not a port (1-65535)", port.get_ref()),
                ))
            }
        },
    };
    // ssh expands `%` tokens in both and splits `-o` values on whitespace
    // and quotes: such characters would not reach it as written.
    let local_file = |value: &Option<Spanned<String>>, key: &str| {
        let Some(value) = value else { return Ok(None) };
        let text = value.get_ref();
        let bad = text.trim().is_empty()
            || text.starts_with('~')
            || text.chars().any(|c| {
                c.is_whitespace() || c.is_control() || matches!(c, '%' | '\'' | '"' | '\\')
            });
        if bad {
            return Err((
                value.span(),
                format!("ssh {key} `{}` must be a path without spaces, quotes, `%`, `\\` or a leading `~`", text.escape_debug()),
            ));
        }
        Ok(Some(base.join(text)))
    };
    Ok(SshConfig {
        host,
        user,
        port,
        identity_file: local_file(&raw.identity_file, "identity_file")?,
        known_hosts_file: local_file(&raw.known_hosts_file, "known_hosts_file")?,
        strict_host_key_checking: raw.strict_host_key_checking.unwrap_or(true),
    })
}
