//! `[proxy]` TLS keys: `tls_listen`, `[[proxy.tls]]` certificate/key files
//! and `redirect_http`.

use crate::error::{ConfigError, Located};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// `[[proxy.tls]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

/// One certificate of the TLS listeners: PEM chain and PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The TLS part of `[proxy]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Addresses of the HTTPS listeners.
    pub listen: Vec<SocketAddr>,
    /// Certificates, chosen per connection by SNI (the first is the default).
    pub certs: Vec<TlsCert>,
    /// Cleartext listeners answer with a redirect to HTTPS.
    pub redirect_http: bool,
}

pub(crate) struct RawTlsKeys<'a> {
    pub listen: Option<&'a Vec<Spanned<String>>>,
    pub certs: Option<&'a Spanned<Vec<RawTls>>>,
    pub redirect_http: Option<&'a Spanned<bool>>,
    /// The `mode` key, when nginx takes the traffic.
    pub nginx_mode: bool,
    /// `[proxy.acme]` is present: it provides certificates too.
    pub acme: bool,
}

pub(crate) fn validate(
    raw: RawTlsKeys<'_>,
    base: &Path,
    file: &Path,
    source: &str,
) -> Result<TlsConfig, ConfigError> {
    tls_config(raw, base).map_err(|located| ConfigError::located(file, source, located))
}

fn tls_config(raw: RawTlsKeys<'_>, base: &Path) -> Result<TlsConfig, Located> {
    let listen = listen(raw.listen)?;
    let certs: Vec<TlsCert> = raw
        .certs
        .map(|certs| {
            certs
                .get_ref()
                .iter()
                .map(|c| TlsCert {
                    cert: base.join(&c.cert),
                    key: base.join(&c.key),
                })
                .collect()
        })
        .unwrap_or_default();
    let redirect_http = raw.redirect_http.is_some_and(|r| *r.get_ref());
    check_combination(&raw, &listen)?;
    Ok(TlsConfig {
        listen,
        certs,
        redirect_http,
    })
}

fn listen(raw: Option<&Vec<Spanned<String>>>) -> Result<Vec<SocketAddr>, Located> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|addr| {
            addr.get_ref().parse::<SocketAddr>().map_err(|_| {
                (
                    addr.span(),
                    format!(
                        "`{}` is not a listen address; write it like \"0.0.0.0:443\" or \"[::]:443\"",
                        addr.get_ref()
                    ),
                )
            })
        })
        .collect()
}

/// The keys only make sense together: listeners with certificates, a
/// redirect with listeners, none of them in nginx mode.
fn check_combination(raw: &RawTlsKeys<'_>, listen: &[SocketAddr]) -> Result<(), Located> {
    if raw.nginx_mode {
        if let Some(span) = raw
            .certs
            .map(Spanned::span)
            .or(raw.redirect_http.map(Spanned::span))
            .or(raw.listen.and_then(|l| l.first()).map(Spanned::span))
        {
            return Err((
                span,
                "TLS keys of [proxy] belong to the built-in proxy; in nginx mode configure TLS in nginx".into(),
            ));
        }
    }
    if let Some(certs) = raw.certs {
        if listen.is_empty() {
            return Err((
                certs.span(),
                "[[proxy.tls]] certificates need HTTPS listeners: add `tls_listen = [\"0.0.0.0:443\"]` to [proxy]".into(),
            ));
        }
        if certs.get_ref().is_empty() {
            return Err((
                certs.span(),
                "`tls` is empty; add [[proxy.tls]] tables with `cert` and `key`".into(),
            ));
        }
    } else if let Some(first) = raw.listen.and_then(|l| l.first()).filter(|_| !raw.acme) {
        return Err((
            first.span(),
            "`tls_listen` needs certificates: add [[proxy.tls]] tables with `cert` and `key` files"
                .into(),
        ));
    }
    if let Some(redirect) = raw.redirect_http {
        if *redirect.get_ref() && listen.is_empty() {
            return Err((
                redirect.span(),
                "`redirect_http = true` needs HTTPS listeners (`tls_listen` and [[proxy.tls]])"
                    .into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::Config;
    use std::path::Path;

    const APP: &str = "[[app]]\nname = \"web\"\n[app.process]\ncommand = [\"x\"]\n";

    fn parse(proxy: &str) -> Result<Config, crate::ConfigError> {
        Config::parse(
            Path::new("/etc/cutover/cutover.toml"),
            &format!("{proxy}\n{APP}"),
        )
    }

    #[test]
    fn tls_listeners_certificates_and_redirect_are_read_with_paths_resolved() {
        let config = parse(
            "[proxy]\ntls_listen = [\"0.0.0.0:443\"]\nredirect_http = true\n\
             [[proxy.tls]]\ncert = \"a.pem\"\nkey = \"/keys/a.key\"\n\
             [[proxy.tls]]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .expect("valid");
        let tls = &config.proxy.tls;
        assert_eq!(tls.listen, ["0.0.0.0:443".parse().expect("addr")]);
        assert!(tls.redirect_http);
        assert_eq!(tls.certs.len(), 2);
        assert_eq!(tls.certs[0].cert, Path::new("/etc/cutover/a.pem"));
        assert_eq!(tls.certs[0].key, Path::new("/keys/a.key"));
        assert!(parse("").expect("valid").proxy.tls.listen.is_empty());
    }

    #[test]
    fn tls_keys_that_do_not_fit_together_are_located_errors() {
        let cases = [
            (
                "[proxy]\n[[proxy.tls]]\ncert = \"a\"\nkey = \"b\"\n",
                "need HTTPS listeners",
            ),
            (
                "[proxy]\ntls_listen = [\"0.0.0.0:443\"]\n",
                "needs certificates",
            ),
            ("[proxy]\nredirect_http = true\n", "needs HTTPS listeners"),
            (
                "[proxy]\ntls_listen = [\"443\"]\n[[proxy.tls]]\ncert = \"a\"\nkey = \"b\"\n",
                "not a listen address",
            ),
            (
                "[proxy]\ntls_listen = [\"0.0.0.0:443\"]\n[[proxy.tls]]\ncert = \"a\"\n",
                "missing field `key`",
            ),
        ];
        for (proxy, expected) in cases {
            let error = parse(proxy).expect_err(proxy);
            assert!(error.to_string().contains(expected), "{proxy}: {error}");
            assert!(error.position.is_some(), "{proxy}: {error}");
        }
    }
}
