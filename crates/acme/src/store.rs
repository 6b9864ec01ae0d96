//! The certificate store under `state_dir/acme/` (0700): the account key
//! (`account.pem`) and one file per name (`certs/<name>.pem`: the chain,
//! then its private key, so the pair is replaced as one). Every file is
//! 0600 and written atomically (a temporary file beside it, fsync, rename,
//! fsync of the directory), so a crash leaves the old pair or the new one.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::AcmeError;
use crate::jws::AccountKey;
use crate::order::Issued;

#[derive(Debug, Clone)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// Opens (creating, 0700) `<state_dir>/acme`.
    pub fn open(state_dir: &Path) -> Result<CertStore, AcmeError> {
        let dir = state_dir.join("acme");
        for dir in [&dir, &dir.join("certs")] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
                .map_err(|e| store_error(dir, e))?;
        }
        Ok(CertStore { dir })
    }

    /// The stored account key, or a new one (stored before it is used).
    pub fn account_key(&self) -> Result<AccountKey, AcmeError> {
        let path = self.dir.join("account.pem");
        match fs::read(&path) {
            Ok(pem) => {
                let key = PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| AcmeError::Store(format!("{}: {e}", path.display())))?;
                AccountKey::from_pkcs8(key.secret_der())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = AccountKey::generate()?;
                let pem = pem_block("PRIVATE KEY", key.pkcs8());
                write_atomically(&path, pem.as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(store_error(&path, e)),
        }
    }

    /// The file of `name`'s certificate and key.
    pub fn cert_path(&self, name: &str) -> PathBuf {
        self.dir.join("certs").join(format!("{name}.pem"))
    }

    /// `name`'s stored certificate, if any (unreadable counts as none).
    pub fn load(&self, name: &str) -> Option<Issued> {
        let text = fs::read_to_string(self.cert_path(name)).ok()?;
        let key_at = text.find("-----BEGIN PRIVATE KEY-----")?;
        let (chain_pem, key_pem) = text.split_at(key_at);
        Some(Issued {
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    pub fn save(&self, name: &str, issued: &Issued) -> Result<(), AcmeError> {
        let mut text = issued.chain_pem.trim_end().to_owned();
        text.push('\n');
        text.push_str(&issued.key_pem);
        write_atomically(&self.cert_path(name), text.as_bytes())
    }
}

/// The leaf of a PEM chain, DER.
pub(crate) fn leaf_der(chain_pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn store_error(path: &Path, e: std::io::Error) -> AcmeError {
    AcmeError::Store(format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` (mode 0600) so that readers see the old or the
/// new content, never a part.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let aside = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&aside, path))
        .and_then(|()| fs::File::open(dir)?.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&aside);
        return Err(store_error(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn keys_and_certificates_are_private_and_read_back() {
        let state = tempfile::tempdir().expect("dir");
        let store = CertStore::open(state.path()).expect("store");
        let key = store.account_key().expect("new key");
        let again = store.account_key().expect("stored key");
        assert_eq!(key.thumbprint(), again.thumbprint());
        let issued = Issued {
            chain_pem: "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n".into(),
        };
        store.save("a.test", &issued).expect("saved");
        let loaded = store.load("a.test").expect("loaded");
        assert_eq!(loaded.key_pem, issued.key_pem);
        assert!(loaded.chain_pem.contains("BEGIN CERTIFICATE"));
        for file in [
            state.path().join("acme/account.pem"),
            store.cert_path("a.test"),
        ] {
            assert_eq!(
                fs::metadata(&file).expect("file").mode() & 0o777,
                0o600,
                "{}",
                file.display()
            );
        }
        assert_eq!(
            fs::metadata(state.path().join("acme")).expect("dir").mode() & 0o777,
            0o700
        );
        assert!(store.load("b.test").is_none());
    }
}
