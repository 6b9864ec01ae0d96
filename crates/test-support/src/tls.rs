//! A test CA (rcgen) that signs leaf certificates, a client connector that
//! trusts only it, and handshakes that report the certificate served.

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
pub use tokio_rustls::TlsConnector;

/// A self-signed certificate authority for one test.
pub struct Ca {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    der: CertificateDer<'static>,
    pem: String,
}

/// A leaf certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = rcgen::KeyPair::generate().expect("ca key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test CA");
        let cert = params.self_signed(&key).expect("ca cert");
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// The CA's certificate in PEM, for clients told to trust it.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for `names`, signed by this CA.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// Writes a new leaf for `name` to `<dir>/<file>.crt` and `.key`; its DER.
    pub fn write_leaf(&self, dir: &Path, file: &str, name: &str) -> CertificateDer<'static> {
        let leaf = self.leaf(&[name]);
        leaf.write(dir, file);
        leaf.der
    }

    /// A blocking-client configuration that trusts this CA only.
    pub fn blocking_client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// A client that trusts this CA only and offers `alpn`.
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

impl Leaf {
    /// Writes `<dir>/<name>.key`, then `<dir>/<name>.crt`, each replaced
    /// atomically; (cert path, key path).
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        replace_file(&key, &self.key_pem);
        replace_file(&cert, &self.cert_pem);
        (cert, key)
    }
}

/// A client trusting only the root(s) in `root_pem`, offering `alpn`.
pub fn connector_trusting(root_pem: &str, alpn: &[&[u8]]) -> TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(cert.expect("a PEM root")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

/// Replaces a file the way certificate tools do: write aside, then rename.
pub fn replace_file(path: &Path, content: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, content).unwrap();
    std::fs::rename(&aside, path).unwrap();
}

/// Handshakes with `addr` using `name` as SNI; the stream and the leaf
/// certificate it served.
pub async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<(TlsStream<TcpStream>, CertificateDer<'static>)> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).expect("a server name");
    let stream = connector.connect(server_name, tcp).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("a certificate");
    Ok((stream, leaf))
}

/// The leaf certificate `addr` serves for `name`.
pub async fn served_cert(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> CertificateDer<'static> {
    handshake(connector, addr, name).await.expect("handshake").1
}
