//! The connection information a UCSPI-TLS server hands back to its
//! application after `Y`: `NAME=value\0` records with mod_ssl's names,
//! then one more `\0`. A name without `=` means "unset", as in s6.

use std::fmt::Write;

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

    /// The record: `SSL_PROTOCOL`, `SSL_CIPHER`, `SSL_TLS_SNI_SERVERNAME`,
    /// `SSL_PEER_CERT_HASH` (`SHA256:` and the lower-case hex digest of the
    /// certificate's DER) and `SSL_PEER_CERT_SUBJECT` (RFC 4514), each
    /// ended by `\0`, then a final `\0`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = String::with_capacity(256);
        let mut var = |name: &str, value: Option<&str>| {
            out.push_str(name);
            if let Some(v) = value {
                out.push('=');
                out.push_str(v);
            }
            out.push('\0');
        };
        var("SSL_PROTOCOL", self.protocol.and_then(protocol_name));
        let cipher = self.cipher.map(cipher_suite_name);
        var("SSL_CIPHER", cipher.as_deref());
        // A DNS name never holds a NUL; refuse one rather than break the
        // record if rustls ever let one through.
        var("SSL_TLS_SNI_SERVERNAME", self.server_name.filter(|s| !s.contains('\0')));
        let hash = self.peer_certificate.map(certificate_hash);
        var("SSL_PEER_CERT_HASH", hash.as_deref());
        let subject = self.peer_certificate.and_then(dn::certificate_subject);
        var("SSL_PEER_CERT_SUBJECT", subject.as_deref());
        out.push('\0');
        out.into_bytes()
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
    fn empty_session_writes_bare_names() {
        let info = ConnectionInfo::default();
        assert_eq!(
            info.encode(),
            b"SSL_PROTOCOL\0SSL_CIPHER\0SSL_TLS_SNI_SERVERNAME\0SSL_PEER_CERT_HASH\0SSL_PEER_CERT_SUBJECT\0\0"
        );
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
        let rec = String::from_utf8(info.encode()).expect("utf8");
        let fields: Vec<&str> = rec.split('\0').collect();
        assert_eq!(fields.len(), 7, "{rec:?}");
        assert_eq!(fields[0], "SSL_PROTOCOL=TLSv1.3");
        assert_eq!(fields[1], "SSL_CIPHER=TLS_AES_256_GCM_SHA384");
        assert_eq!(fields[2], "SSL_TLS_SNI_SERVERNAME=mail.test");
        assert_eq!(fields[3], certificate_hash(cert).replace("SHA256:", "SSL_PEER_CERT_HASH=SHA256:"));
        assert_eq!(fields[4], "SSL_PEER_CERT_SUBJECT=CN=mail.test");
        assert_eq!(&fields[5..], ["", ""]);
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
