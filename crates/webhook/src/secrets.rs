//! Webhook secrets, read once when the receiver starts from the files or
//! environment variables the configuration names. A [`Secret`] never
//! prints its value (`Debug` shows `[secret]`).

use cutover_config::docker::SecretSource;
use std::fmt;

#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(value: impl Into<Vec<u8>>) -> Secret {
        Secret(value.into())
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

/// Reads one secret; the error names where it was looked for, never the value.
pub fn read(source: &SecretSource, key: &str) -> Result<Secret, String> {
    let value = match source {
        SecretSource::File(path) => {
            std::fs::read(path).map_err(|e| format!("cannot read {key} {}: {e}", path.display()))?
        }
        SecretSource::Env(name) => std::env::var_os(name)
            .map(|v| v.into_encoded_bytes())
            .ok_or_else(|| format!("{key}: the environment variable {name} is not set"))?,
    };
    let mut value = value;
    while value.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        value.pop();
    }
    if value.is_empty() {
        let place = match source {
            SecretSource::File(path) => path.display().to_string(),
            SecretSource::Env(name) => format!("${name}"),
        };
        return Err(format!(
            "{key} {place} is empty; a webhook secret must not be empty"
        ));
    }
    Ok(Secret(value))
}
