//! The rustls client used for STARTTLS upgrades.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use crate::KeyPair;

/// Which TLS version the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
    /// Both; the server chooses.
    Any,
}

/// A client configuration and the name it expects the server to have.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// A client that trusts only `ca`, offers `version`, sends `server_name`
    /// as SNI (when it is a DNS name) and checks the server certificate
    /// against it, and presents `client_cert` when given.
    pub fn new(ca: &Path, version: TlsVersion, server_name: &str, client_cert: Option<&KeyPair>) -> TlsClient {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
            TlsVersion::Tls12 => &[&rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
            TlsVersion::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", ca.display())) {
            let cert = cert.unwrap_or_else(|e| panic!("bad certificate in {}: {e}", ca.display()));
            roots.add(cert).unwrap_or_else(|e| panic!("cannot trust {}: {e}", ca.display()));
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some(pair) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", pair.cert.display()))
                    .collect::<Result<_, _>>()
                    .unwrap_or_else(|e| panic!("bad certificate in {}: {e}", pair.cert.display()));
                let key = PrivateKeyDer::from_pem_file(&pair.key)
                    .unwrap_or_else(|e| panic!("cannot read {}: {e}", pair.key.display()));
                builder.with_client_auth_cert(chain, key).expect("client certificate")
            }
        };
        let server_name = ServerName::try_from(server_name.to_owned())
            .unwrap_or_else(|e| panic!("bad server name {server_name:?}: {e}"));
        TlsClient { config: Arc::new(config), server_name }
    }

    /// A client of the test CA for `mx.test`, without client certificate.
    pub fn mx(certs: &crate::Certs, version: TlsVersion) -> TlsClient {
        TlsClient::new(&certs.ca(), version, "mx.test", None)
    }

    /// A fresh connection state.
    pub fn connection(&self) -> ClientConnection {
        ClientConnection::new(self.config.clone(), self.server_name.clone()).expect("rustls client connection")
    }
}
