//! TLS termination with rustls (ring): certificates chosen by SNI, reloaded
//! without a restart.
//!
//! Each configured certificate (PEM chain + PEM private key) serves the DNS
//! names in its subjectAltName, wildcards (`*.example.com`) included. A
//! client that sends no SNI, or a name no certificate has, gets the first
//! certificate (nginx's default server does the same).
//!
//! [`Tls::reload`] reads every file again and swaps the whole set at once;
//! if anything is wrong (a file missing, a key that does not match its
//! certificate) the old set keeps serving and the error says which file.
//! [`Tls::watch`] reloads when the files change on disk (polled: size,
//! modification time, inode), SIGHUP calls [`Tls::reload`] directly.
//! ALPN offers `h2` and `http/1.1`.
//!
//! With ACME ([`Tls::with_acme`]) the set may start empty, and two more
//! maps sit beside the files' set, each behind its own `ArcSwap` that the
//! ACME control plane replaces while handshakes only load it:
//! certificates obtained over ACME (an exact name there wins over the
//! files), and tls-alpn-01 challenge certificates, served only to a client
//! offering ALPN `acme-tls/1` (RFC 8737), whose connection then closes.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// One certificate: its PEM chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no TLS certificate is configured")]
    NoCertificates,
    #[error("cannot read the certificate file {}: {source}", .path.display())]
    ReadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)", .path.display())]
    NoCert { path: PathBuf },
    #[error("{} is not a usable X.509 certificate: {reason}", .path.display())]
    BadCert { path: PathBuf, reason: String },
    #[error("the certificate {} names no DNS host in its subjectAltName", .path.display())]
    NoNames { path: PathBuf },
    #[error("cannot read the private key file {}: {source}", .path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the private key {} does not fit the certificate {}: {reason}", .key.display(), .cert.display())]
    BadKey {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS set-up failed: {0}")]
    Config(#[source] rustls::Error),
    #[error("the certificate for {name} is unusable: {reason}")]
    Unusable { name: String, reason: String },
}

/// The ALPN protocol of tls-alpn-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The certificates of the TLS listeners. Cheap to clone; clones share the
/// certificates, so a reload reaches every listener.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    files: Vec<CertKeyFiles>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// The files as last looked at by a reload (success or not), so that a
    /// broken set is tried again only after it changed again.
    seen: Mutex<Vec<Stamp>>,
    /// Whether the files may be none (ACME provides certificates too).
    files_optional: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .field("names", &self.names())
            .finish()
    }
}

/// What identifies a file's content cheaply: size, modification time, inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, Option<SystemTime>, u64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok(), m.ino())),
        )
    }
}

/// A loaded set of certificates, indexed by name.
#[derive(Debug)]
struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients without SNI or with an unknown name; `None`: no file.
    default: Option<Arc<CertifiedKey>>,
    names: Vec<String>,
}

impl Certificates {
    fn find(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

/// Certificates by exact lower-case name.
type ByName = HashMap<String, Arc<CertifiedKey>>;

#[derive(Debug)]
struct Resolver {
    current: ArcSwap<Certificates>,
    /// Obtained over ACME.
    acme: ArcSwap<ByName>,
    /// tls-alpn-01 challenge certificates.
    challenges: ArcSwap<ByName>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
        let validating = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validating {
            // Only the challenge certificate, never a real one.
            return self.challenges.load().get(name.as_deref()?).cloned();
        }
        if let Some(key) = name
            .as_deref()
            .and_then(|n| self.acme.load().get(n).cloned())
        {
            return Some(key);
        }
        let certificates = self.current.load();
        if let Some(key) = name.as_deref().and_then(|n| certificates.find(n)) {
            return Some(Arc::clone(key));
        }
        if let Some(key) = &certificates.default {
            return Some(Arc::clone(key));
        }
        // No file at all: the first ACME certificate by name.
        let acme = self.acme.load();
        acme.keys().min().and_then(|first| acme.get(first).cloned())
    }
}

impl Tls {
    /// Loads every certificate; any problem is an error naming the file.
    pub fn load(files: Vec<CertKeyFiles>) -> Result<Tls, TlsError> {
        Tls::build(files, false)
    }

    /// [`Tls::load`] for listeners that also serve ACME certificates: the
    /// files may be none, and ALPN `acme-tls/1` is answered with challenge
    /// certificates ([`Tls::set_alpn_challenge`]).
    pub fn with_acme(files: Vec<CertKeyFiles>) -> Result<Tls, TlsError> {
        Tls::build(files, true)
    }

    fn build(files: Vec<CertKeyFiles>, files_optional: bool) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = files.iter().flat_map(stamps).collect();
        let certificates = load_all(&files, &provider, files_optional)?;
        let resolver = Arc::new(Resolver {
            current: ArcSwap::from_pointee(certificates),
            acme: ArcSwap::default(),
            challenges: ArcSwap::default(),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if files_optional {
            // Chosen only by a client offering nothing else (the validator).
            config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                provider,
                resolver,
                acceptor: TlsAcceptor::from(Arc::new(config)),
                seen: Mutex::new(seen),
                files_optional,
            }),
        })
    }

    /// Serves `chain_pem` (leaf first) with `key_pem` for `name` to new
    /// connections, replacing the previous ACME certificate of that name.
    pub fn set_acme_certificate(
        &self,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<(), TlsError> {
        let key = self.certified_from_pem(name, chain_pem, key_pem)?;
        insert(&self.inner.resolver.acme, name, key);
        Ok(())
    }

    /// Answers tls-alpn-01 validation of `name` with this certificate (DER)
    /// until [`Tls::clear_alpn_challenge`].
    pub fn set_alpn_challenge(
        &self,
        name: &str,
        cert_der: Vec<u8>,
        key_der: Vec<u8>,
    ) -> Result<(), TlsError> {
        let key = PrivateKeyDer::try_from(key_der).map_err(|reason| TlsError::Unusable {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })?;
        // Not `from_der`: its key check parses the certificate, and the
        // critical acmeIdentifier extension is unknown to webpki.
        let signer = self
            .inner
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Unusable {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        let certified = CertifiedKey::new(vec![CertificateDer::from(cert_der)], signer);
        insert(&self.inner.resolver.challenges, name, Arc::new(certified));
        Ok(())
    }

    /// Stops answering tls-alpn-01 validation of `name`.
    pub fn clear_alpn_challenge(&self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.inner.resolver.challenges.rcu(|current| {
            let mut next = ByName::clone(current);
            next.remove(&name);
            next
        });
    }

    fn certified_from_pem(
        &self,
        name: &str,
        chain_pem: &str,
        key_pem: &str,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let unusable = |reason: String| TlsError::Unusable {
            name: name.to_owned(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| unusable(e.to_string()))?;
        if chain.is_empty() {
            return Err(unusable("no certificate in the chain".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| unusable(e.to_string()))?;
        CertifiedKey::from_der(chain, key, &self.inner.provider)
            .map(Arc::new)
            .map_err(|e| unusable(e.to_string()))
    }

    /// Reads the files again and, if all are good, serves the new set to
    /// new connections. On error the current set keeps serving.
    pub fn reload(&self) -> Result<Vec<String>, TlsError> {
        *self.lock_seen() = self.current_stamps();
        let certificates = load_all(
            &self.inner.files,
            &self.inner.provider,
            self.inner.files_optional,
        )?;
        let names = certificates.names.clone();
        self.inner.resolver.current.store(Arc::new(certificates));
        Ok(names)
    }

    /// The DNS names the current certificates serve (files, then ACME).
    pub fn names(&self) -> Vec<String> {
        let mut names = self.inner.resolver.current.load().names.clone();
        let acme = self.inner.resolver.acme.load();
        let mut obtained: Vec<&String> = acme.keys().collect();
        obtained.sort();
        names.extend(obtained.into_iter().cloned());
        names
    }

    /// Whether a file changed since the last load or reload attempt.
    pub fn changed_on_disk(&self) -> bool {
        *self.lock_seen() != self.current_stamps()
    }

    /// Reloads whenever the files change (checked every `every`); logs the
    /// outcome. Runs until the returned task is aborted.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tls.changed_on_disk() {
                    tls.reload_and_log("the certificate files changed");
                }
            }
        })
    }

    /// Reloads and reports the outcome in the log; `why` says what asked.
    pub fn reload_and_log(&self, why: &str) -> bool {
        match self.reload() {
            Ok(names) => {
                tracing::info!(names = %names.join(", "), "{why}: TLS certificates reloaded");
                true
            }
            Err(error) => {
                tracing::error!(%error, "{why}: reloading the TLS certificates failed; still serving the previous ones");
                false
            }
        }
    }

    /// An acceptor for servers that speak HTTP/1.1 only (the admin API):
    /// the same certificates (and reloads), ALPN `http/1.1`.
    pub fn http1_acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.inner.provider))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&self.inner.resolver) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.inner.acceptor
    }

    fn lock_seen(&self) -> MutexGuard<'_, Vec<Stamp>> {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn current_stamps(&self) -> Vec<Stamp> {
        self.inner.files.iter().flat_map(stamps).collect()
    }
}

fn stamps(files: &CertKeyFiles) -> [Stamp; 2] {
    [Stamp::of(&files.cert), Stamp::of(&files.key)]
}

/// Puts `key` under `name`, keeping concurrent updates of other names.
fn insert(map: &ArcSwap<ByName>, name: &str, key: Arc<CertifiedKey>) {
    let name = name.to_ascii_lowercase();
    map.rcu(|current| {
        let mut next = ByName::clone(current);
        next.insert(name.clone(), Arc::clone(&key));
        next
    });
}

fn load_all(
    files: &[CertKeyFiles],
    provider: &CryptoProvider,
    files_optional: bool,
) -> Result<Certificates, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut names = Vec::new();
    let mut default = None;
    for pair in files {
        let (key, cert_names) = load_one(pair, provider)?;
        let key = Arc::new(key);
        default.get_or_insert_with(|| Arc::clone(&key));
        for name in cert_names {
            let name = name.to_ascii_lowercase();
            let slot = match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()),
                None => exact.entry(name.clone()),
            };
            // The first certificate that names a host serves it.
            slot.or_insert_with(|| Arc::clone(&key));
            names.push(name);
        }
    }
    if default.is_none() && !files_optional {
        return Err(TlsError::NoCertificates);
    }
    Ok(Certificates {
        exact,
        wildcard,
        default,
        names,
    })
}

fn load_one(
    files: &CertKeyFiles,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let read_cert = |source| TlsError::ReadCert {
        path: files.cert.clone(),
        source,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(read_cert)?
        .collect::<Result<_, _>>()
        .map_err(read_cert)?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCert {
            path: files.cert.clone(),
        });
    };
    let names: Vec<String> = {
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| TlsError::BadCert {
            path: files.cert.clone(),
            reason: format!("{e:?}"),
        })?;
        parsed.valid_dns_names().map(str::to_owned).collect()
    };
    if names.is_empty() {
        return Err(TlsError::NoNames {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::ReadKey {
        path: files.key.clone(),
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::BadKey {
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason: e.to_string(),
    })?;
    Ok((certified, names))
}
