//! Certificate verifiers that replace the WebPKI chain and name check:
//! any certificate (opportunistic TLS), or certificates pinned by hash.
//!
//! Every verifier here still checks the handshake signatures against the
//! key of the certificate presented: only the question "is this the
//! right certificate" is answered differently.
//!
//! Pins, as written in options and control files (told apart by length):
//!
//! * 128 hex digits: the SHA-512 of the whole certificate (DER), the form
//!   of remusock's `-H hash[:hash...]`
//!   (`openssl x509 -outform DER | sha512sum`);
//! * 64 hex digits, or 44 base64 characters: the SHA-256 of the
//!   certificate's SubjectPublicKeyInfo (DER), in DANE's form (TLSA
//!   `3 1 1`) or HPKP's (`pin-sha256`), which survives a renewal that
//!   keeps the key (`openssl x509 -pubkey -noout | openssl pkey -pubin
//!   -outform DER | sha256sum`).
//!
//! A list is the pins separated by `:`; a certificate matching any one of
//! them is accepted.

use std::fmt;
use std::sync::Arc;

use base64ct::{Base64, Encoding};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use thiserror::Error;

/// A pin that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid pin {0:?}: expected 128 hex digits (SHA-512 of the certificate), or 64 hex digits or 44 base64 \
     characters (SHA-256 of its SubjectPublicKeyInfo)"
)]
pub struct PinError(pub String);

/// One pinned certificate or key.
#[derive(Clone, PartialEq, Eq)]
pub enum Pin {
    /// SHA-512 of the certificate's DER.
    CertificateSha512([u8; 64]),
    /// SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    SpkiSha256([u8; 32]),
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::CertificateSha512(h) => write!(f, "CertificateSha512({})", hex(h)),
            Pin::SpkiSha256(h) => write!(f, "SpkiSha256({})", hex(h)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl Pin {
    /// Reads one pin (see the module documentation for the forms).
    pub fn parse(s: &str) -> Result<Pin, PinError> {
        let bad = || PinError(s.to_owned());
        match s.len() {
            128 => unhex(s).map(Pin::CertificateSha512).ok_or_else(bad),
            64 => unhex(s).map(Pin::SpkiSha256).ok_or_else(bad),
            44 => {
                let mut out = [0u8; 32];
                match Base64::decode(s, &mut out) {
                    Ok(d) if d.len() == 32 => Ok(Pin::SpkiSha256(out)),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    /// Whether the certificate `der` is the one pinned (or carries the
    /// pinned key).
    pub fn matches(&self, der: &[u8]) -> bool {
        use aws_lc_rs::digest::{SHA256, SHA512, digest};
        match self {
            Pin::CertificateSha512(want) => digest(&SHA512, der).as_ref() == want,
            Pin::SpkiSha256(want) => {
                crate::x509::subject_public_key_info(der).is_some_and(|spki| digest(&SHA256, &spki).as_ref() == want)
            }
        }
    }

    /// The SHA-512 pin of a certificate (for the tests).
    #[cfg(test)]
    pub(crate) fn certificate_sha512(der: &[u8]) -> Pin {
        let mut out = [0u8; 64];
        out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, der).as_ref());
        Pin::CertificateSha512(out)
    }

    /// The SubjectPublicKeyInfo pin of a certificate, if it can be read (for
    /// the tests).
    #[cfg(test)]
    pub(crate) fn spki_sha256(der: &[u8]) -> Option<Pin> {
        let spki = crate::x509::subject_public_key_info(der)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki).as_ref());
        Some(Pin::SpkiSha256(out))
    }
}

impl fmt::Display for Pin {
    /// The hex form, which [`Pin::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pin::CertificateSha512(h) => f.write_str(&hex(h)),
            Pin::SpkiSha256(h) => f.write_str(&hex(h)),
        }
    }
}

/// A non-empty set of pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins(Vec<Pin>);

impl Pins {
    /// Reads `pin[:pin...]`.
    pub fn parse(list: &str) -> Result<Pins, PinError> {
        let pins = list.split(':').map(Pin::parse).collect::<Result<Vec<Pin>, PinError>>()?;
        Pins::new(pins).ok_or_else(|| PinError(list.to_owned()))
    }

    /// A set of these pins; `None` if there are none.
    pub fn new(pins: Vec<Pin>) -> Option<Pins> {
        (!pins.is_empty()).then_some(Pins(pins))
    }

    /// Whether `der` matches any pin.
    pub fn matches(&self, der: &[u8]) -> bool {
        self.0.iter().any(|p| p.matches(der))
    }

    /// The pins.
    pub fn as_slice(&self) -> &[Pin] {
        &self.0
    }
}

impl fmt::Display for Pins {
    /// `pin:pin...`, which [`Pins::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Checks handshake signatures with the provider's algorithms.
#[derive(Debug, Clone, Copy)]
struct Signatures(WebPkiSupportedAlgorithms);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Accepts any server certificate (opportunistic TLS, RFC 7435), but
/// checks that the handshake was signed by the key of the certificate
/// presented.
#[derive(Debug)]
pub struct AnyServerCertificate(Signatures);

impl AnyServerCertificate {
    /// The verifier, with the signature algorithms of `provider`.
    pub fn new(provider: &CryptoProvider) -> Arc<AnyServerCertificate> {
        Arc::new(AnyServerCertificate(Signatures(provider.signature_verification_algorithms)))
    }
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Accepts a peer (a server, or a client asked for its certificate)
/// whose leaf certificate matches one of the pins; the chain and names
/// are not looked at. A server using it requires a client certificate.
#[derive(Debug)]
pub struct PinnedCertificate {
    pins: Pins,
    signatures: Signatures,
}

impl PinnedCertificate {
    /// The verifier for `pins`, with the signature algorithms of `provider`.
    pub fn new(pins: Pins, provider: &CryptoProvider) -> Arc<PinnedCertificate> {
        Arc::new(PinnedCertificate { pins, signatures: Signatures(provider.signature_verification_algorithms) })
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if self.pins.matches(end_entity.as_ref()) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

impl ClientCertVerifier for PinnedCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests;
