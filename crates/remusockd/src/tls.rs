//! TLS settings: the listener's (`cert key`, `-C`, `-H`) and the
//! dialer's (system roots and the host name, `-C`, `-H`, `-V`, and
//! `cert key` as its client certificate), built into rustls
//! configurations on start and again on SIGHUP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chainmail_tls::keys::{self, TrustAnchors};
use chainmail_tls::verify::{AnyServerCertificate, Pin, PinnedCertificate, Pins};
use chainmail_tls::{ConfigError, provider};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// The system's trust store (Debian's bundle).
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads `-H`: SHA-512 fingerprints of 128 hex digits, any case, separated
/// by `:`; the colons of `openssl x509 -fingerprint -sha512` output are
/// accepted too (every colon is dropped, and the digits are cut in 128s).
pub fn parse_pins(value: &str) -> Result<Pins, String> {
    let value = value.strip_prefix("sha512 Fingerprint=").unwrap_or(value);
    let digits: String = value.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
    let bad = || format!("invalid -H {value:?}: expected SHA-512 fingerprints of 128 hex digits, separated by ':'");
    if digits.is_empty() || digits.len() % 128 != 0 || !digits.is_ascii() {
        return Err(bad());
    }
    let pins = digits
        .as_bytes()
        .chunks(128)
        .map(|c| std::str::from_utf8(c).ok().and_then(|s| Pin::parse(s).ok()))
        .collect::<Option<Vec<Pin>>>()
        .ok_or_else(bad)?;
    Pins::new(pins).ok_or_else(bad)
}

/// The TLS settings from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `cert key`.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// `-C`.
    pub ca_file: Option<PathBuf>,
    /// `-H`.
    pub pins: Option<Pins>,
    /// `-V`.
    pub no_verify: bool,
}

fn setup(e: impl std::fmt::Display) -> ConfigError {
    ConfigError::Setup(rustls::Error::General(e.to_string()))
}

impl Settings {
    fn ca_roots(&self) -> Result<Option<rustls::RootCertStore>, ConfigError> {
        self.ca_file.as_ref().map(|f| TrustAnchors::File(f.clone()).load("-C")).transpose()
    }

    /// The listener's configuration: TLS 1.2 or later, its certificate, and
    /// a client certificate required by `-C`, `-H` or both.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, ConfigError> {
        let provider = Arc::new(provider());
        let (cert, key) = self.cert_key.as_ref().ok_or_else(|| setup("a TLS listener needs cert and key"))?;
        let chain = keys::load_certificates("cert", cert)?;
        let key_der = keys::load_private_key("key", key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ConfigError::Setup)?;
        let ca = match self.ca_roots()? {
            Some(roots) => Some(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(ConfigError::Verifier)?,
            ),
            None => None,
        };
        let pinned = self.pins.clone().map(|p| PinnedCertificate::new(p, &provider));
        let builder = match (ca, pinned) {
            (None, None) => builder.with_no_client_auth(),
            (Some(ca), None) => builder.with_client_cert_verifier(ca),
            (None, Some(p)) => builder.with_client_cert_verifier(p),
            (Some(ca), Some(p)) => builder.with_client_cert_verifier(Arc::new(ClientBoth { ca, pinned: p })),
        };
        let config = builder.with_single_cert(chain, key_der).map_err(|source| ConfigError::Key {
            var: "key".into(),
            path: key.clone(),
            source,
        })?;
        Ok(Arc::new(config))
    }

    /// The dialer's configuration: the server is checked against `-C`'s
    /// CAs (or the system roots when neither `-C` nor `-H` is given) and
    /// `-H`'s pins, and carries the host name; `-V` drops the name and the
    /// system roots (not `-C` or `-H`). `cert key` is the client
    /// certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ConfigError> {
        let provider = Arc::new(provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ConfigError::Setup)?;
        let roots = match self.ca_roots()? {
            Some(r) => Some(r),
            None if self.pins.is_none() && !self.no_verify => {
                Some(TrustAnchors::File(Path::new(SYSTEM_ROOTS).to_owned()).load("system roots")?)
            }
            None => None,
        };
        let webpki = match roots {
            Some(r) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(r), provider.clone()).build().map_err(setup)?,
            ),
            None => None,
        };
        let verifier = Arc::new(ServerCheck {
            webpki,
            pinned: self.pins.clone().map(|p| PinnedCertificate::new(p, &provider)),
            check_name: !self.no_verify,
            signatures: AnyServerCertificate::new(&provider),
        });
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let mut config = match &self.cert_key {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = keys::load_certificates("cert", cert)?;
                let key_der = keys::load_private_key("key", key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|source| ConfigError::Key {
                    var: "key".into(),
                    path: key.clone(),
                    source,
                })?
            }
        };
        config.enable_sni = true;
        Ok(Arc::new(config))
    }
}

/// `-C` and `-H` together on the listener: the chain must lead to one of
/// the CAs and the certificate must be pinned.
#[derive(Debug)]
struct ClientBoth {
    ca: Arc<dyn ClientCertVerifier>,
    pinned: Arc<PinnedCertificate>,
}

impl ClientCertVerifier for ClientBoth {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.ca.verify_client_cert(end_entity, intermediates, now)?;
        self.pinned.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// The dialer's check of the server: the chain (WebPKI, when there are
/// roots), the pins, and the host name, each when configured.
#[derive(Debug)]
struct ServerCheck {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pinned: Option<Arc<PinnedCertificate>>,
    check_name: bool,
    signatures: Arc<AnyServerCertificate>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(w) = &self.webpki {
            match w.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Ok(_) => {}
                Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
                | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }))
                    if !self.check_name => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = &self.pinned {
            p.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        if self.check_name && self.webpki.is_none() {
            rustls::client::verify_server_name(&ParsedCertificate::try_from(end_entity)?, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_in_every_form() {
        let a = "AB".repeat(64);
        let b = "0f".repeat(64);
        let openssl_form = (0..64).map(|_| "AB").collect::<Vec<_>>().join(":");
        for (value, count) in [
            (a.clone(), 1),
            (format!("{a}:{b}"), 2),
            (openssl_form.clone(), 1),
            (format!("sha512 Fingerprint={openssl_form}"), 1),
            (format!("{openssl_form}:{b}"), 2),
        ] {
            assert_eq!(parse_pins(&value).map(|p| p.as_slice().len()), Ok(count), "{value}");
        }
        for bad in ["", "ab", &"zz".repeat(64), &"ab".repeat(63), &"ab".repeat(65), &"é".repeat(64)] {
            assert!(parse_pins(bad).is_err(), "{bad}");
        }
    }
}
