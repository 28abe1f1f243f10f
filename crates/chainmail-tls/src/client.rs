//! TLS client configurations for SMTP delivery (qmail-remote-io).
//!
//! Two kinds of server authentication:
//!
//! * **Opportunistic** (RFC 7435), for `tlsstrictness` 0 and 1: any
//!   certificate is accepted, so that TLS protects against passive
//!   eavesdropping even with servers whose certificates do not verify (most
//!   MX hosts). The handshake signatures are still checked against the
//!   certificate presented. skarnet's client verified the host name even in
//!   this mode and so deferred mail to every MX whose certificate did not
//!   carry the MX name; this one does not.
//! * **Verified**, for `tlsstrictness` 2: the chain must lead to one of the
//!   trust anchors and the certificate must carry the server's name (the
//!   MX name, or the relay's name or address).
//!
//! Trust anchors come from a PEM bundle, a directory of certificates, or
//! the Mozilla roots built into the binary (webpki-roots), so that a fresh
//! installation needs no CA bundle.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::ServerName;

use crate::error::ConfigError;
use crate::keys;
use crate::verify::AnyServerCertificate;

/// Where the trust anchors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchors {
    /// The Mozilla roots compiled in (webpki-roots).
    BuiltIn,
    /// A PEM bundle.
    File(PathBuf),
    /// A directory of certificates, one per file, PEM or DER.
    Dir(PathBuf),
}

/// How the server is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAuth {
    /// Any certificate (opportunistic TLS).
    Opportunistic,
    /// A chain to these anchors, for the server's name.
    Verified(Anchors),
}

/// A client configuration's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// How the server is authenticated.
    pub server_auth: ServerAuth,
    /// A certificate chain and key to send when the server asks.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The trust anchors of `anchors`.
pub fn root_store(anchors: &Anchors) -> Result<RootCertStore, ConfigError> {
    match anchors {
        Anchors::BuiltIn => Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
        Anchors::File(path) => keys::trust_anchors_from_file("control/trustanchors", path),
        Anchors::Dir(path) => keys::trust_anchors_from_dir("control/trustanchors", path),
    }
}

/// Builds a client configuration: TLS 1.2 and 1.3 with the aws-lc-rs
/// provider, no session resumption (one delivery per process).
pub fn client_config(settings: &ClientSettings) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = Arc::new(crate::provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(ConfigError::Setup)?;
    let builder = match &settings.server_auth {
        ServerAuth::Opportunistic => {
            builder.dangerous().with_custom_certificate_verifier(AnyServerCertificate::new(&provider))
        }
        ServerAuth::Verified(anchors) => {
            let roots = root_store(anchors)?;
            let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| ConfigError::Setup(rustls::Error::General(e.to_string())))?;
            builder.with_webpki_verifier(verifier)
        }
    };
    let mut config = match &settings.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = keys::load_certificates("control/clientcert", cert)?;
            let key_der = keys::load_private_key("control/clientkey", key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|source| ConfigError::Key {
                var: "control/clientkey".to_owned(),
                path: key.clone(),
                source,
            })?
        }
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// The name to send as SNI and to verify: a DNS name, or an address.
pub fn server_name(name: Option<&str>, ip: std::net::IpAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.trim_end_matches('.').to_owned()).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_roots_and_names() {
        let store = root_store(&Anchors::BuiltIn).expect("roots");
        assert!(store.len() > 100);
        let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(matches!(server_name(Some("mx.example.org."), ip), ServerName::DnsName(_)));
        assert!(matches!(server_name(None, ip), ServerName::IpAddress(_)));
        assert!(matches!(server_name(Some("not a name"), ip), ServerName::IpAddress(_)));
        for auth in [ServerAuth::Opportunistic, ServerAuth::Verified(Anchors::BuiltIn)] {
            client_config(&ClientSettings { server_auth: auth, identity: None }).expect("config");
        }
        let missing =
            ClientSettings { server_auth: ServerAuth::Verified(Anchors::File("/nonexistent".into())), identity: None };
        assert!(client_config(&missing).is_err());
    }
}
