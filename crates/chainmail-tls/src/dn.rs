//! Distinguished names as RFC 4514 strings (`CN=client.test,O=Test`).
//!
//! x509-parser reads the certificate and its name; this module only
//! decides how a name is written. The RDNs come out last first, as RFC
//! 4514 wants, so the output reads like `openssl x509 -nameopt RFC2253`.
//! Attribute types with a common short name (CN, C, ST, L, O, OU, STREET,
//! DC, UID, emailAddress) are written by name with their string value;
//! any other type, and any value that is not a decodable string, is
//! written in the RFC's fallback form `dotted.oid=#hex-of-the-DER-value`.

use std::fmt::Write;

use x509_parser::asn1_rs::{Any, Class, Oid};
use x509_parser::nom::Offset;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

/// Short names for the attribute types worth naming, by DER contents of
/// their OBJECT IDENTIFIER.
const NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 0x04, 0x03], "CN"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (&[0x55, 0x04, 0x09], "STREET"),
    (&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19], "DC"),
    (&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01], "UID"),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01], "emailAddress"),
];

/// Universal tags of the directory string types.
mod tag {
    pub const UTF8_STRING: u32 = 12;
    pub const NUMERIC_STRING: u32 = 18;
    pub const PRINTABLE_STRING: u32 = 19;
    pub const TELETEX_STRING: u32 = 20;
    pub const IA5_STRING: u32 = 22;
    pub const VISIBLE_STRING: u32 = 26;
    pub const UNIVERSAL_STRING: u32 = 28;
    pub const BMP_STRING: u32 = 30;
}

/// The subject of a DER-encoded X.509 certificate, as an RFC 4514 string.
/// `None` if the certificate cannot be read.
pub fn certificate_subject(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    write_name(cert.subject(), cert_der)
}

/// Formats a DER `Name` (the whole SEQUENCE element) as an RFC 4514 string.
/// `None` if it is malformed.
pub fn format_name(name_der: &[u8]) -> Option<String> {
    let (rest, name) = X509Name::from_der(name_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    write_name(&name, name_der)
}

/// Writes `name`, read from `container`. x509-parser stops reading a
/// name at the first RDN it cannot parse and keeps the ones before: a
/// name that was not read to its end is refused here rather than written
/// shortened.
fn write_name(name: &X509Name<'_>, container: &[u8]) -> Option<String> {
    let raw = name.as_raw();
    let start = container.offset(raw);
    let (rest, _) = Any::from_der(container.get(start..)?).ok()?;
    if container.len() - start - rest.len() != raw.len() {
        return None;
    }
    let mut out = String::with_capacity(name.as_raw().len() + 16);
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // The values of a multi-valued RDN have no order; like OpenSSL,
        // write them last first as well.
        let atvs: Vec<_> = rdn.iter().collect();
        if atvs.is_empty() {
            return None; // an empty RDN is not allowed
        }
        for (j, atv) in atvs.iter().rev().enumerate() {
            if j > 0 {
                out.push('+');
            }
            write_atv(&mut out, atv.attr_type(), atv.attr_value())?;
        }
    }
    Some(out)
}

fn write_atv(out: &mut String, oid: &Oid<'_>, value: &Any<'_>) -> Option<()> {
    let short = NAMES.iter().find(|(der, _)| *der == oid.as_bytes()).map(|(_, n)| *n);
    match short {
        Some(name) => {
            out.push_str(name);
            out.push('=');
            let mark = out.len();
            if !write_string_value(out, value) {
                out.truncate(mark);
                write_hex_value(out, value)?;
            }
        }
        None => {
            // Arcs beyond 64 bits: not an OID worth writing.
            let arcs: Vec<u64> = oid.iter()?.collect();
            if arcs.is_empty() {
                return None;
            }
            for (i, arc) in arcs.iter().enumerate() {
                let _ = write!(out, "{}{arc}", if i > 0 { "." } else { "" });
            }
            out.push('=');
            write_hex_value(out, value)?;
        }
    }
    Some(())
}

/// `#` and the hex of the value's whole DER element (identifier, length,
/// contents).
fn write_hex_value(out: &mut String, value: &Any<'_>) -> Option<()> {
    let identifier = value.header.raw_tag()?;
    let len = value.data.len();
    let mut length = Vec::with_capacity(5);
    if len < 0x80 {
        length.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        length.push(0x80 | (bytes.len() - skip) as u8);
        length.extend_from_slice(&bytes[skip..]);
    }
    out.push('#');
    for b in identifier.iter().chain(&length).chain(value.data) {
        let _ = write!(out, "{b:02x}");
    }
    Some(())
}

/// Decodes a directory string and writes it escaped. Returns `false` for
/// types that are not strings or contents that do not decode.
fn write_string_value(out: &mut String, v: &Any<'_>) -> bool {
    if v.header.class() != Class::Universal || v.header.constructed() {
        return false;
    }
    let bytes = v.data;
    match v.header.tag().0 {
        tag::UTF8_STRING => match std::str::from_utf8(bytes) {
            Ok(s) => escape_into(out, s.chars()),
            Err(_) => return false,
        },
        tag::PRINTABLE_STRING | tag::IA5_STRING | tag::NUMERIC_STRING | tag::VISIBLE_STRING => {
            if !bytes.is_ascii() {
                return false;
            }
            escape_into(out, bytes.iter().map(|&b| char::from(b)));
        }
        // T.61 is in practice used for Latin-1.
        tag::TELETEX_STRING => escape_into(out, bytes.iter().map(|&b| char::from(b))),
        tag::BMP_STRING => {
            if bytes.len() % 2 != 0 {
                return false;
            }
            let units = bytes.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            let mut chars = Vec::with_capacity(bytes.len() / 2);
            for c in char::decode_utf16(units) {
                match c {
                    Ok(c) => chars.push(c),
                    Err(_) => return false,
                }
            }
            escape_into(out, chars.into_iter());
        }
        tag::UNIVERSAL_STRING => {
            if bytes.len() % 4 != 0 {
                return false;
            }
            let mut chars = Vec::with_capacity(bytes.len() / 4);
            for c in bytes.chunks_exact(4) {
                match char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])) {
                    Some(c) => chars.push(c),
                    None => return false,
                }
            }
            escape_into(out, chars.into_iter());
        }
        _ => return false,
    }
    true
}

/// RFC 4514 section 2.4: backslash before `" + , ; < > \`, before a
/// leading `#` or space and a trailing space; NUL and other control
/// characters as `\hh` for each of their UTF-8 octets.
fn escape_into(out: &mut String, chars: impl Iterator<Item = char> + Clone) {
    let count = chars.clone().count();
    for (i, c) in chars.enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == count => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02x}");
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identifier octets, to build names by hand.
    mod t {
        pub const INTEGER: u8 = 0x02;
        pub const OID: u8 = 0x06;
        pub const UTF8_STRING: u8 = 0x0c;
        pub const PRINTABLE_STRING: u8 = 0x13;
        pub const TELETEX_STRING: u8 = 0x14;
        pub const IA5_STRING: u8 = 0x16;
        pub const UNIVERSAL_STRING: u8 = 0x1c;
        pub const BMP_STRING: u8 = 0x1e;
        pub const SEQUENCE: u8 = 0x30;
        pub const SET: u8 = 0x31;
    }

    /// DER helpers to build names by hand.
    fn tlv(t: u8, v: &[u8]) -> Vec<u8> {
        assert!(v.len() < 0x80);
        let mut out = vec![t, v.len() as u8];
        out.extend_from_slice(v);
        out
    }

    fn atv(oid: &[u8], vtag: u8, v: &[u8]) -> Vec<u8> {
        let mut inner = tlv(t::OID, oid);
        inner.extend(tlv(vtag, v));
        tlv(t::SEQUENCE, &inner)
    }

    fn name(rdns: &[Vec<Vec<u8>>]) -> Vec<u8> {
        let mut seq = Vec::new();
        for rdn in rdns {
            seq.extend(tlv(t::SET, &rdn.concat()));
        }
        tlv(t::SEQUENCE, &seq)
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const C: &[u8] = &[0x55, 0x04, 0x06];

    #[test]
    fn reversed_order_and_multivalued() {
        let n = name(&[
            vec![atv(C, t::PRINTABLE_STRING, b"DE")],
            vec![atv(O, t::UTF8_STRING, b"Test"), atv(&[0x55, 0x04, 0x0b], t::UTF8_STRING, b"Unit")],
            vec![atv(CN, t::UTF8_STRING, b"client.test")],
        ]);
        assert_eq!(format_name(&n).as_deref(), Some("CN=client.test,OU=Unit+O=Test,C=DE"));
    }

    #[test]
    fn escaping() {
        for (value, want) in [
            (&b"a,b"[..], r"CN=a\,b"),
            (b"#x", r"CN=\#x"),
            (b"x#", "CN=x#"),
            (b" lead", r"CN=\ lead"),
            (b"trail ", r"CN=trail\ "),
            (b" ", r"CN=\ "),
            (b"in ner", "CN=in ner"),
            (b"q\"+;<>\\", r#"CN=q\"\+\;\<\>\\"#),
            (b"nul\0x", r"CN=nul\00x"),
            (b"nl\n", r"CN=nl\0a"),
            ("Müller".as_bytes(), "CN=Müller"),
            (b"a=b", "CN=a=b"),
            (b"", "CN="),
        ] {
            let n = name(&[vec![atv(CN, t::UTF8_STRING, value)]]);
            assert_eq!(format_name(&n).as_deref(), Some(want), "{value:?}");
        }
    }

    #[test]
    fn string_types() {
        let bmp: Vec<u8> = "Zoë".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let univ: Vec<u8> = "Zoë".chars().flat_map(|c| (c as u32).to_be_bytes()).collect();
        for (t, v, want) in [
            (t::BMP_STRING, bmp.as_slice(), "CN=Zoë"),
            (t::UNIVERSAL_STRING, univ.as_slice(), "CN=Zoë"),
            (t::TELETEX_STRING, &[0x5a, 0x6f, 0xeb][..], "CN=Zoë"),
            (t::IA5_STRING, b"a@b", "CN=a@b"),
            // Not decodable: the hex fallback of the whole value element.
            (t::UTF8_STRING, &[0xff][..], "CN=#0c01ff"),
            (t::PRINTABLE_STRING, &[0xe9][..], "CN=#1301e9"),
            (t::BMP_STRING, &[0x00][..], "CN=#1e0100"),
            (t::BMP_STRING, &[0xd8, 0x00][..], "CN=#1e02d800"),
            (t::UNIVERSAL_STRING, &[0, 0x11, 0, 0][..], "CN=#1c0400110000"),
            (t::INTEGER, &[0x05][..], "CN=#020105"),
        ] {
            let n = name(&[vec![atv(CN, t, v)]]);
            assert_eq!(format_name(&n).as_deref(), Some(want), "tag {t:#x}");
        }
    }

    #[test]
    fn unknown_oid_is_dotted_with_hex() {
        let n = name(&[vec![atv(&[0x55, 0x04, 0x05], t::PRINTABLE_STRING, b"42")]]);
        assert_eq!(format_name(&n).as_deref(), Some("2.5.4.5=#13023432"));
    }

    fn first_cert(pem: &[u8]) -> Vec<u8> {
        crate::keys::parse_certificates(pem).expect("certificate")[0].as_ref().to_vec()
    }

    /// Certificates made by `testdata/gen.sh`; the expected strings are
    /// what `openssl x509 -noout -subject -nameopt RFC2253,-esc_msb`
    /// printed for them (`*.subject`).
    #[test]
    fn real_certificates_match_openssl() {
        let client = first_cert(include_bytes!("../testdata/client.pem"));
        let want = include_str!("../testdata/client.subject").trim_end();
        assert_eq!(want, "CN=client.test,O=Test");
        assert_eq!(certificate_subject(&client).as_deref(), Some(want));

        // OpenSSL names two types RFC 4514 does not: serialNumber (which we
        // write as an OID with its DER value, as RFC 4514 says for types
        // without a registered short name) and street (which RFC 4514
        // spells STREET).
        let odd = first_cert(include_bytes!("../testdata/odd.pem"));
        let want = include_str!("../testdata/odd.subject")
            .trim_end_matches('\n')
            .replace("serialNumber=42", "2.5.4.5=#13023432")
            .replace("street=", "STREET=");
        assert_eq!(certificate_subject(&odd).as_deref(), Some(want.as_str()));
        assert!(want.contains(r#"CN=\#hash \"q\" \<x\>\;y\\z\ ,"#), "{want}");
        assert!(want.starts_with("CN=Zoë Ünïcode,"), "{want}");

        let server = first_cert(include_bytes!("../testdata/server-ec.pem"));
        assert_eq!(certificate_subject(&server).as_deref(), Some("CN=mail.test"));
        let ca = first_cert(include_bytes!("../testdata/ca.pem"));
        assert_eq!(certificate_subject(&ca).as_deref(), Some("CN=chainmail test CA,O=Chainmail"));
    }

    #[test]
    fn empty_and_malformed() {
        assert_eq!(format_name(&[0x30, 0x00]).as_deref(), Some(""));
        assert_eq!(format_name(&[0x30, 0x02, 0x31, 0x00]), None);
        // A bad RDN after a good one: refused, not shortened.
        let mut n = name(&[vec![atv(CN, t::UTF8_STRING, b"abc")]]);
        n.extend([0x31, 0x00]);
        n[1] += 2;
        assert_eq!(format_name(&n), None);
        let mut n = name(&[vec![atv(CN, t::UTF8_STRING, b"abc")]]);
        n.extend([0x31, 0x03, 0x30, 0x01, 0x00]);
        n[1] += 5;
        assert_eq!(format_name(&n), None);
        assert_eq!(format_name(&[0x30, 0x02, 0x30, 0x00]), None);
        assert_eq!(format_name(&[0x31, 0x00]), None);
        assert_eq!(format_name(&[0x30, 0x00, 0x00]), None);
        let truncated = name(&[vec![atv(CN, t::UTF8_STRING, b"abc")]]);
        assert_eq!(format_name(&truncated[..truncated.len() - 1]), None);
        assert_eq!(certificate_subject(b"not a certificate"), None);
    }
}
