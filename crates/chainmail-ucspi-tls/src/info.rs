//! The connection information record an engine sends back after `Y` or
//! `H`: `NAME=value\0` fields with mod_ssl's names, then one more `\0`. A
//! name without `=` means "unset", as in s6.
//!
//! The engine fills an [`InfoRecord`] (chainmail-tls does it from a rustls
//! connection) and [`InfoRecord::encode`]s it; the application reads it
//! back with [`InfoRecord::decode`].

/// Most bytes of a record an application accepts.
pub(crate) const MAX_RECORD: usize = 64 * 1024;

/// What the engine tells the application about an established session.
/// Every field is text, as it travels; `None` is "unset".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InfoRecord {
    /// `SSL_PROTOCOL`: `TLSv1.3`, `TLSv1.2`.
    pub protocol: Option<String>,
    /// `SSL_CIPHER`: the IANA name of the cipher suite.
    pub cipher: Option<String>,
    /// `SSL_TLS_SNI_SERVERNAME`: the server name the client asked for.
    pub server_name: Option<String>,
    /// `SSL_PEER_CERT_HASH`: `SHA256:` and the hex digest of the client's
    /// certificate.
    pub peer_cert_hash: Option<String>,
    /// `SSL_PEER_CERT_SUBJECT`: the client certificate's subject (RFC 4514).
    pub peer_cert_subject: Option<String>,
}

const SSL_PROTOCOL: &str = "SSL_PROTOCOL";
const SSL_CIPHER: &str = "SSL_CIPHER";
const SSL_TLS_SNI_SERVERNAME: &str = "SSL_TLS_SNI_SERVERNAME";
const SSL_PEER_CERT_HASH: &str = "SSL_PEER_CERT_HASH";
const SSL_PEER_CERT_SUBJECT: &str = "SSL_PEER_CERT_SUBJECT";

impl InfoRecord {
    /// The fields in the order they are sent.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            (SSL_PROTOCOL, self.protocol.as_deref()),
            (SSL_CIPHER, self.cipher.as_deref()),
            (SSL_TLS_SNI_SERVERNAME, self.server_name.as_deref()),
            (SSL_PEER_CERT_HASH, self.peer_cert_hash.as_deref()),
            (SSL_PEER_CERT_SUBJECT, self.peer_cert_subject.as_deref()),
        ]
    }

    /// The record: each field ended by `\0`, then a final `\0`. A value
    /// holding a NUL would break the record: it is sent as unset.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        for (name, value) in self.fields() {
            out.extend_from_slice(name.as_bytes());
            if let Some(v) = value.filter(|v| !v.contains('\0')) {
                out.push(b'=');
                out.extend_from_slice(v.as_bytes());
            }
            out.push(0);
        }
        out.push(0);
        out
    }

    /// Reads a record. Unknown names are skipped (other engines send more),
    /// a field that is not UTF-8 counts as unset, and the record may end
    /// without its final `\0` (an engine that closes the socket after the
    /// last field). `None` for an empty input: no record at all.
    pub fn decode(record: &[u8]) -> Option<InfoRecord> {
        if record.is_empty() {
            return None;
        }
        let mut info = InfoRecord::default();
        for field in record.split(|&b| b == 0) {
            if field.is_empty() {
                // The end of the record.
                break;
            }
            let (name, value) = match field.iter().position(|&b| b == b'=') {
                Some(i) => (&field[..i], std::str::from_utf8(&field[i + 1..]).ok().map(str::to_owned)),
                None => (field, None),
            };
            let slot = match name {
                b"SSL_PROTOCOL" => &mut info.protocol,
                b"SSL_CIPHER" => &mut info.cipher,
                b"SSL_TLS_SNI_SERVERNAME" => &mut info.server_name,
                b"SSL_PEER_CERT_HASH" => &mut info.peer_cert_hash,
                b"SSL_PEER_CERT_SUBJECT" => &mut info.peer_cert_subject,
                _ => continue,
            };
            *slot = value;
        }
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> InfoRecord {
        InfoRecord {
            protocol: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_256_GCM_SHA384".into()),
            server_name: Some("mail.test".into()),
            peer_cert_hash: Some("SHA256:00ff".into()),
            peer_cert_subject: Some("CN=client,O=Example\\, Inc.".into()),
        }
    }

    #[test]
    fn empty_record_writes_bare_names() {
        assert_eq!(
            InfoRecord::default().encode(),
            b"SSL_PROTOCOL\0SSL_CIPHER\0SSL_TLS_SNI_SERVERNAME\0SSL_PEER_CERT_HASH\0SSL_PEER_CERT_SUBJECT\0\0"
        );
    }

    #[test]
    fn full_record() {
        let rec = String::from_utf8(full().encode()).expect("utf8");
        let fields: Vec<&str> = rec.split('\0').collect();
        assert_eq!(
            fields,
            [
                "SSL_PROTOCOL=TLSv1.3",
                "SSL_CIPHER=TLS_AES_256_GCM_SHA384",
                "SSL_TLS_SNI_SERVERNAME=mail.test",
                "SSL_PEER_CERT_HASH=SHA256:00ff",
                "SSL_PEER_CERT_SUBJECT=CN=client,O=Example\\, Inc.",
                "",
                ""
            ]
        );
    }

    #[test]
    fn a_nul_in_a_value_is_sent_as_unset() {
        let info = InfoRecord { server_name: Some("a\0b".into()), ..InfoRecord::default() };
        assert!(info.encode().starts_with(b"SSL_PROTOCOL\0SSL_CIPHER\0SSL_TLS_SNI_SERVERNAME\0SSL_PEER"));
    }

    #[test]
    fn decode_round_trips_and_tolerates() {
        for info in [full(), InfoRecord::default()] {
            assert_eq!(InfoRecord::decode(&info.encode()), Some(info));
        }
        assert_eq!(InfoRecord::decode(b""), None);
        for (record, want) in [
            (&b"SSL_PROTOCOL=TLSv1.2\0"[..], InfoRecord { protocol: Some("TLSv1.2".into()), ..Default::default() }),
            (b"SSL_OTHER=1\0SSL_CIPHER=X\0\0", InfoRecord { cipher: Some("X".into()), ..Default::default() }),
            (b"SSL_CIPHER=\xff\0\0", InfoRecord::default()),
            (b"\0\0", InfoRecord::default()),
            (
                b"SSL_PROTOCOL=a\0\0SSL_CIPHER=after-the-end\0",
                InfoRecord { protocol: Some("a".into()), ..Default::default() },
            ),
        ] {
            assert_eq!(InfoRecord::decode(record), Some(want), "{record:?}");
        }
    }
}
