//! The account key (ECDSA P-256) and the JWS requests signed with it
//! (RFC 8555 6.2, RFC 7515 flattened JSON, `ES256`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::error::AcmeError;

/// base64url without padding, as JOSE and ACME write binary values.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The ACME account's key pair.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    /// PKCS#8 DER, for the store.
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountKey")
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

impl AccountKey {
    /// A new random key.
    pub fn generate() -> Result<AccountKey, AcmeError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| AcmeError::Crypto("generating the account key failed".into()))?;
        AccountKey::from_pkcs8(pkcs8.as_ref())
    }

    /// A key read back from its PKCS#8 DER.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<AccountKey, AcmeError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|e| AcmeError::Crypto(format!("the stored account key is unusable: {e}")))?;
        Ok(AccountKey {
            pair,
            pkcs8: pkcs8.to_vec(),
            rng,
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK (members in the order RFC 7638 hashes them).
    fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || x || y.
        let (x, y) = point[1..].split_at(32);
        json!({"crv": "P-256", "kty": "EC", "x": b64(x), "y": b64(y)})
    }

    /// RFC 7638 thumbprint, the second half of every key authorization.
    pub fn thumbprint(&self) -> String {
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(x),
            b64(y)
        );
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// `token.thumbprint`.
    pub fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint())
    }

    /// A flattened JWS of `payload` (`None`: POST-as-GET, empty payload)
    /// for `url`, identified by `kid` or, before the account exists, by the
    /// key itself.
    pub(crate) fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&Value>,
    ) -> Result<Vec<u8>, AcmeError> {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match kid {
            Some(kid) => protected["kid"] = Value::from(kid),
            None => protected["jwk"] = self.jwk(),
        }
        let protected = b64(protected.to_string().as_bytes());
        let payload = match payload {
            Some(payload) => b64(payload.to_string().as_bytes()),
            None => String::new(),
        };
        let signing_input = format!("{protected}.{payload}");
        let signature = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| AcmeError::Crypto("signing a request failed".into()))?;
        let body = json!({
            "protected": protected,
            "payload": payload,
            "signature": b64(signature.as_ref()),
        });
        Ok(body.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_key_reads_back_with_the_same_thumbprint() {
        let key = AccountKey::generate().expect("key");
        let again = AccountKey::from_pkcs8(key.pkcs8()).expect("read back");
        assert_eq!(key.thumbprint(), again.thumbprint());
        assert_eq!(key.thumbprint().len(), 43);
        assert!(key.key_authorization("tok").starts_with("tok."));
    }

    #[test]
    fn a_signed_request_verifies_with_the_accounts_public_key() {
        let key = AccountKey::generate().expect("key");
        let body = key
            .sign(
                "https://a.test/x",
                "n1",
                Some("kid-1"),
                Some(&json!({"a": 1})),
            )
            .expect("signed");
        let body: Value = serde_json::from_slice(&body).expect("json");
        let input = format!(
            "{}.{}",
            body["protected"].as_str().expect("protected"),
            body["payload"].as_str().expect("payload")
        );
        let signature = URL_SAFE_NO_PAD
            .decode(body["signature"].as_str().expect("signature"))
            .expect("b64");
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            key.pair.public_key().as_ref(),
        );
        public
            .verify(input.as_bytes(), &signature)
            .expect("signature verifies");
    }
}
