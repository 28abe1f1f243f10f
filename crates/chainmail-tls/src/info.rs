//! The connection information a UCSPI-TLS server hands back to its
//! application after `Y`, filled from a rustls connection. The record and
//! its encoding are chainmail-ucspi-tls's ([`InfoRecord`]).

use std::fmt::Write;

use chainmail_ucspi_tls::InfoRecord;
use rustls::{CipherSuite, ProtocolVersion};

use crate::dn;

/// What is known about an established session.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionInfo<'a> {
    /// The negotiated protocol version.
    pub protocol: Option<ProtocolVersion>,
    /// The negotiated cipher suite.
    pub cipher: Option<CipherSuite>,
    /// The server name the client asked for (SNI).
    pub server_name: Option<&'a str>,
    /// The client's leaf certificate (DER), if it sent one.
    pub peer_certificate: Option<&'a [u8]>,
}

impl<'a> ConnectionInfo<'a> {
    /// The information of a connection whose handshake is complete.
    pub fn of(engine: &'a crate::ServerEngine) -> ConnectionInfo<'a> {
        let conn = engine.connection();
        ConnectionInfo {
            protocol: conn.protocol_version(),
            cipher: conn.negotiated_cipher_suite().map(|s| s.suite()),
            server_name: engine.server_name(),
            peer_certificate: conn.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref()),
        }
    }

    /// The record a UCSPI-TLS engine sends back after `Y` (its encoding
    /// is chainmail-ucspi-tls's): `SSL_PROTOCOL` and `SSL_CIPHER` by
    /// mod_ssl's and IANA's names, `SSL_TLS_SNI_SERVERNAME`,
    /// `SSL_PEER_CERT_HASH` (`SHA256:` and the lower-case hex digest of
    /// the certificate's DER) and `SSL_PEER_CERT_SUBJECT` (RFC 4514).
    pub fn record(&self) -> InfoRecord {
        InfoRecord {
            protocol: self.protocol.and_then(protocol_name).map(str::to_owned),
            cipher: self.cipher.map(cipher_suite_name),
            server_name: self.server_name.map(str::to_owned),
            peer_cert_hash: self.peer_certificate.map(certificate_hash),
            peer_cert_subject: self.peer_certificate.and_then(dn::certificate_subject),
        }
    }
}

/// `SHA256:` followed by the lower-case hex SHA-256 of `der`.
pub fn certificate_hash(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("SHA256:");
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// mod_ssl's name of a protocol version: `TLSv1.3`, `TLSv1.2`.
pub fn protocol_name(v: ProtocolVersion) -> Option<&'static str> {
    Some(match v {
        ProtocolVersion::TLSv1_3 => "TLSv1.3",
        ProtocolVersion::TLSv1_2 => "TLSv1.2",
        ProtocolVersion::TLSv1_1 => "TLSv1.1",
        ProtocolVersion::TLSv1_0 => "TLSv1",
        _ => return None,
    })
}

/// The IANA name of a cipher suite (`TLS_AES_256_GCM_SHA384`,
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`); an unknown one is written
/// as its number, `0x1234`.
pub fn cipher_suite_name(s: CipherSuite) -> String {
    let name = match s {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        other => return format!("0x{:04x}", u16::from(other)),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_session_leaves_every_field_unset() {
        assert_eq!(ConnectionInfo::default().record(), InfoRecord::default());
    }

    #[test]
    fn full_record() {
        let cert = include_bytes!("../testdata/server-ec.der");
        let info = ConnectionInfo {
            protocol: Some(ProtocolVersion::TLSv1_3),
            cipher: Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
            server_name: Some("mail.test"),
            peer_certificate: Some(cert),
        };
        assert_eq!(
            info.record(),
            InfoRecord {
                protocol: Some("TLSv1.3".into()),
                cipher: Some("TLS_AES_256_GCM_SHA384".into()),
                server_name: Some("mail.test".into()),
                peer_cert_hash: Some(certificate_hash(cert)),
                peer_cert_subject: Some("CN=mail.test".into()),
            }
        );
    }

    #[test]
    fn hash_is_sha256_of_the_der() {
        // SHA-256 of the empty string.
        assert_eq!(certificate_hash(b""), "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn names() {
        assert_eq!(protocol_name(ProtocolVersion::TLSv1_2), Some("TLSv1.2"));
        assert_eq!(protocol_name(ProtocolVersion::SSLv3), None);
        assert_eq!(
            cipher_suite_name(CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
        );
        assert_eq!(cipher_suite_name(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256), "TLS_CHACHA20_POLY1305_SHA256");
        assert_eq!(cipher_suite_name(CipherSuite::from(0x1234)), "0x1234");
        // Every suite the provider can negotiate has its IANA name.
        for s in crate::config::provider().cipher_suites {
            assert!(cipher_suite_name(s.suite()).starts_with("TLS_"), "{:?}", s.suite());
        }
    }
}
