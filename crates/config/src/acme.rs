//! `[proxy.acme]`: automatic HTTPS. Certificates for `domains` are ordered
//! from an ACME server (`directory`) and served by the built-in proxy's
//! HTTPS listeners beside any `[[proxy.tls]]` files.

use crate::error::{ConfigError, Located};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `[proxy.acme]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: Spanned<String>,
    pub contact: Option<Vec<Spanned<String>>>,
    pub domains: Option<Spanned<Vec<Spanned<String>>>>,
    pub challenge: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
}

/// How the ACME server checks that cutover answers for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// RFC 8737: a special certificate on the HTTPS listeners (`acme-tls/1`).
    TlsAlpn01,
    /// RFC 8555 8.3: a token under `/.well-known/acme-challenge/` on the
    /// plain listeners.
    Http01,
}

impl Challenge {
    /// The name the ACME protocol uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// Automatic HTTPS with an ACME server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The ACME directory URL (https).
    pub directory: String,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// One certificate per name; default: the apps' hosts without `*`.
    pub domains: Vec<String>,
    pub challenge: Challenge,
    /// Roots trusted for the ACME server's own HTTPS; `None`: the system's.
    pub ca_file: Option<PathBuf>,
}

/// What the `[proxy.acme]` check needs from the rest of the file.
pub(crate) struct AcmeContext<'a> {
    pub base: &'a Path,
    /// Hosts of every app, in file order.
    pub app_hosts: Vec<&'a str>,
    pub has_tls_listen: bool,
    pub has_plain_listen: bool,
    pub nginx_mode: bool,
    pub check_files: bool,
}

pub(crate) fn validate(
    raw: &Spanned<RawAcme>,
    context: &AcmeContext<'_>,
    file: &Path,
    source: &str,
) -> Result<AcmeConfig, ConfigError> {
    acme_config(raw, context).map_err(|located| ConfigError::located(file, source, located))
}

fn acme_config(raw: &Spanned<RawAcme>, context: &AcmeContext<'_>) -> Result<AcmeConfig, Located> {
    let section = raw.span();
    let raw = raw.get_ref();
    if context.nginx_mode {
        return Err((
            section,
            "[proxy.acme] belongs to the built-in proxy; in nginx mode obtain certificates for nginx (e.g. certbot)".into(),
        ));
    }
    if !context.has_tls_listen {
        return Err((
            section,
            "[proxy.acme] needs HTTPS listeners to serve its certificates: add `tls_listen = [\"0.0.0.0:443\"]` to [proxy]".into(),
        ));
    }
    let directory = directory(&raw.directory)?;
    let contact = contact(raw.contact.as_deref())?;
    let challenge = challenge(raw.challenge.as_ref(), context)?;
    let domains = domains(raw.domains.as_ref(), context, section)?;
    let ca_file = ca_file(raw.ca_file.as_ref(), context)?;
    Ok(AcmeConfig {
        directory,
        contact,
        domains,
        challenge,
        ca_file,
    })
}

fn directory(raw: &Spanned<String>) -> Result<String, Located> {
    let url = raw.get_ref().trim();
    let rest = url.strip_prefix("https://").unwrap_or_default();
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err((
            raw.span(),
            format!("`directory = \"{url}\"` is not an https:// URL of an ACME directory, e.g. \"https://acme-v02.api.letsencrypt.org/directory\""),
        ));
    }
    Ok(url.to_owned())
}

fn contact(raw: Option<&[Spanned<String>]>) -> Result<Vec<String>, Located> {
    raw.unwrap_or_default()
        .iter()
        .map(|entry| {
            let value = entry.get_ref();
            let address = value.strip_prefix("mailto:").unwrap_or_default();
            if address.contains('@') && !value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Ok(value.clone())
            } else {
                Err((
                    entry.span(),
                    format!("contact `{value}` is not a mailto: URL; write it like \"mailto:ops@example.com\""),
                ))
            }
        })
        .collect()
}

fn challenge(
    raw: Option<&Spanned<String>>,
    context: &AcmeContext<'_>,
) -> Result<Challenge, Located> {
    let Some(raw) = raw else {
        return Ok(Challenge::TlsAlpn01);
    };
    let challenge = match raw.get_ref().as_str() {
        "tls-alpn-01" => Challenge::TlsAlpn01,
        "http-01" => Challenge::Http01,
        other => {
            return Err((
                raw.span(),
                format!("challenge `{other}` is not known; use \"tls-alpn-01\" (on the HTTPS listeners) or \"http-01\" (on the plain listeners)"),
            ))
        }
    };
    if challenge == Challenge::Http01 && !context.has_plain_listen {
        return Err((
            raw.span(),
            "challenge \"http-01\" is answered on the plain listeners, and [proxy] has none".into(),
        ));
    }
    Ok(challenge)
}

fn domains(
    raw: Option<&Spanned<Vec<Spanned<String>>>>,
    context: &AcmeContext<'_>,
    section: std::ops::Range<usize>,
) -> Result<Vec<String>, Located> {
    let Some(raw) = raw else {
        let defaults: Vec<String> = context
            .app_hosts
            .iter()
            .filter(|host| !host.contains('*'))
            .map(|host| host.to_ascii_lowercase())
            .collect();
        if defaults.is_empty() {
            return Err((
                section,
                "[proxy.acme] has no names to order certificates for: set `domains = [\"shop.example.com\"]` or give the apps `hosts`".into(),
            ));
        }
        return Ok(dedup(defaults));
    };
    if raw.get_ref().is_empty() {
        return Err((
            raw.span(),
            "`domains` is empty; list the names to order certificates for, or omit it to use the apps' hosts".into(),
        ));
    }
    let mut names = Vec::new();
    for entry in raw.get_ref() {
        names.push(domain(entry)?);
    }
    Ok(dedup(names))
}

fn domain(entry: &Spanned<String>) -> Result<String, Located> {
    let name = entry.get_ref().to_ascii_lowercase();
    if name.contains('*') {
        return Err((
            entry.span(),
            format!("`{name}` is a wildcard; ACME issues wildcards only over dns-01, which cutover does not answer (http-01 and tls-alpn-01 prove one name each): list the names"),
        ));
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok
        || !name.contains('.')
        || name.len() > 253
        || name.parse::<std::net::IpAddr>().is_ok()
    {
        return Err((
            entry.span(),
            format!("`{name}` is not a DNS name ACME can issue for (like \"shop.example.com\")"),
        ));
    }
    Ok(name)
}

fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

fn ca_file(
    raw: Option<&Spanned<String>>,
    context: &AcmeContext<'_>,
) -> Result<Option<PathBuf>, Located> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let path = context.base.join(raw.get_ref());
    if context.check_files {
        if let Err(e) = std::fs::read(&path) {
            return Err((
                raw.span(),
                format!("cannot read ca_file {}: {e}", path.display()),
            ));
        }
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use crate::{Challenge, Config};
    use std::path::Path;

    const APP: &str = "[[app]]\nname = \"web\"\nhosts = [\"shop.example.com\", \"*\"]\n[app.process]\ncommand = [\"x\"]\n";

    fn parse(acme: &str) -> Result<Config, crate::ConfigError> {
        Config::parse(
            Path::new("/etc/cutover/cutover.toml"),
            &format!("[proxy]\ntls_listen = [\"127.0.0.1:8443\"]\n[proxy.acme]\n{acme}\n{APP}"),
        )
    }

    #[test]
    fn acme_defaults_to_tls_alpn_and_the_apps_hosts_without_wildcards() {
        let config = parse("directory = \"https://acme.test/dir\"\ncontact = [\"mailto:a@b.c\"]\nca_file = \"ca.pem\"\n")
            .expect("valid");
        let acme = config.proxy.acme.expect("acme");
        assert_eq!(acme.domains, ["shop.example.com"]);
        assert_eq!(acme.challenge, Challenge::TlsAlpn01);
        assert_eq!(acme.contact, ["mailto:a@b.c"]);
        assert_eq!(
            acme.ca_file.as_deref(),
            Some(Path::new("/etc/cutover/ca.pem"))
        );
    }

    #[test]
    fn acme_keys_that_cannot_work_are_located_errors() {
        let cases = [
            ("directory = \"https://a.test/d\"\nchallenge = \"dns-01\"", "challenge `dns-01` is not known"),
            ("directory = \"http://a.test/d\"", "not an https:// URL"),
            ("directory = \"https://a.test/d\"\nchallenge = \"http-01\"\ndomains = [\"*.example.com\"]", "wildcard"),
            ("directory = \"https://a.test/d\"\ndomains = [\"bad name\"]", "not a DNS name"),
            ("directory = \"https://a.test/d\"\ndomains = []", "`domains` is empty"),
            ("directory = \"https://a.test/d\"\ncontact = [\"ops@example.com\"]", "not a mailto: URL"),
            ("directory = \"https://a.test/d\"\nport = 3", "unknown field `port`"),
        ];
        for (acme, expected) in cases {
            let error = parse(acme).expect_err(acme);
            assert!(error.to_string().contains(expected), "{acme}: {error}");
            assert!(error.position.is_some(), "{acme}: {error}");
        }
    }

    #[test]
    fn acme_without_https_listeners_is_a_located_error() {
        let error = Config::parse(
            Path::new("/c.toml"),
            &format!("[proxy.acme]\ndirectory = \"https://a.test/d\"\n{APP}"),
        )
        .expect_err("no tls_listen");
        assert!(
            error.to_string().contains("needs HTTPS listeners"),
            "{error}"
        );
        assert!(error.position.is_some());
    }
}
