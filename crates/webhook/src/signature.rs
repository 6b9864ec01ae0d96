//! Verification of a delivery, on the raw body bytes, before anything reads
//! them: HMAC-SHA256 for GitHub, Gitea/Forgejo and Bitbucket, the shared
//! token for GitLab. Comparisons are constant-time (`hmac`'s `verify_slice`,
//! `subtle` for tokens). Any of the configured secrets (one, or two while
//! rotating) may match.

use crate::provider::Provider;
use crate::secrets::Secret;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a delivery was refused (401). Never includes a secret or the
/// signature that was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unauthorized(pub String);

/// Checks `body` against the provider's signature header(s).
pub fn verify(
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[Secret],
) -> Result<(), Unauthorized> {
    if secrets.is_empty() {
        return Err(Unauthorized(format!(
            "no {} secret is configured",
            provider.as_str()
        )));
    }
    match provider {
        Provider::GitHub => {
            let value = header(headers, "x-hub-signature-256").ok_or_else(|| {
                if header(headers, "x-hub-signature").is_some() {
                    Unauthorized("only X-Hub-Signature-256 (sha256) signatures are accepted; X-Hub-Signature (sha1) is not".to_string())
                } else {
                    Unauthorized("the X-Hub-Signature-256 header is missing".to_string())
                }
            })?;
            let hex = prefixed_sha256(value, "X-Hub-Signature-256")?;
            verify_hmac(hex, body, secrets)
        }
        Provider::Gitea => {
            // Gitea sends X-Gitea-Signature, Forgejo X-Forgejo-Signature
            // (bare hex); both also send X-Hub-Signature-256.
            if let Some(value) = header(headers, "x-forgejo-signature")
                .or_else(|| header(headers, "x-gitea-signature"))
            {
                return verify_hmac(value.trim(), body, secrets);
            }
            match header(headers, "x-hub-signature-256") {
                Some(value) => verify_hmac(
                    prefixed_sha256(value, "X-Hub-Signature-256")?,
                    body,
                    secrets,
                ),
                None => Err(Unauthorized(
                    "the X-Gitea-Signature (or X-Forgejo-Signature) header is missing".to_string(),
                )),
            }
        }
        Provider::Bitbucket => {
            let value = header(headers, "x-hub-signature")
                .ok_or_else(|| Unauthorized("the X-Hub-Signature header is missing".to_string()))?;
            let hex = prefixed_sha256(value, "X-Hub-Signature")?;
            verify_hmac(hex, body, secrets)
        }
        Provider::GitLab => {
            let token = header(headers, "x-gitlab-token")
                .filter(|t| !t.is_empty())
                .ok_or_else(|| Unauthorized("the X-Gitlab-Token header is missing".to_string()))?;
            let matched = secrets.iter().fold(subtle::Choice::from(0), |any, secret| {
                any | secret.bytes().ct_eq(token.as_bytes())
            });
            if bool::from(matched) {
                Ok(())
            } else {
                Err(Unauthorized(
                    "the X-Gitlab-Token does not match".to_string(),
                ))
            }
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{0}"))
}

/// `sha256=<hex>` → `<hex>`; another algorithm or an empty value is refused.
fn prefixed_sha256<'a>(value: &'a str, name: &str) -> Result<&'a str, Unauthorized> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Unauthorized(format!("the {name} header is empty")));
    }
    match value.split_once('=') {
        Some((algorithm, hex)) if algorithm.eq_ignore_ascii_case("sha256") => Ok(hex),
        Some((algorithm, _)) => Err(Unauthorized(format!(
            "{name} uses `{}`; only sha256 signatures are accepted",
            algorithm.escape_debug()
        ))),
        None => Err(Unauthorized(format!("{name} must look like sha256=<hex>"))),
    }
}

fn verify_hmac(hex_signature: &str, body: &[u8], secrets: &[Secret]) -> Result<(), Unauthorized> {
    let signature = hex::decode(hex_signature.trim())
        .ok()
        .filter(|bytes| bytes.len() == 32)
        .ok_or_else(|| {
            Unauthorized("the signature is not 64 hex digits (an HMAC-SHA256)".to_string())
        })?;
    let mut matched = false;
    for secret in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.bytes()) else {
            continue;
        };
        mac.update(body);
        // Constant-time comparison inside `verify_slice`.
        matched |= mac.verify_slice(&signature).is_ok();
    }
    if matched {
        Ok(())
    } else {
        Err(Unauthorized(
            "the signature does not match the body".to_string(),
        ))
    }
}

/// The hex HMAC-SHA256 of `body` (for tests and tools; GitHub sends it as `sha256=<hex>`).
pub fn sign_sha256(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published example ("Validating webhook deliveries").
    #[test]
    fn githubs_test_vector() {
        assert_eq!(
            sign_sha256(b"It's a Secret to Everybody", b"Hello, World!"),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
