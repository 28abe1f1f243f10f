//! Envelope addresses as they go into `MAIL FROM:<…>` and `RCPT TO:<…>`.
//!
//! qmail keeps addresses unquoted (`we ird@example.com`); qmail-remote
//! splits them at the last `@` and quotes the local part when it is not a
//! dot-string (RFC 5321 §4.1.2): `"we ird"@example.com`, with `\` before
//! `"` and `\`. An address without `@` is treated as a local part alone
//! (`<postmaster>`).
//!
//! * The domain must be a domain name (labels of letters, digits, `-` and
//!   `_`, or non-ASCII UTF-8, joined by single dots) or an address literal
//!   (`[192.0.2.1]`, `[IPv6:2001:db8::1]`, or RFC 5321's
//!   `[tag:content]`); anything else is refused with
//!   [`AddressError::BadDomain`]. The domain goes into the command as it
//!   is, so without this check `x@evil.example> AUTH=<>` would end the path
//!   and add an `AUTH=<>` parameter (and `NOTIFY=` or `ORCPT=` after
//!   `RCPT TO`): `<`, `>`, spaces and control characters can only appear
//!   in the local part, which is quoted.
//!
//! * The null sender `""` and qmail's double-bounce sender `#@[]` both
//!   become `<>` (stock qmail sends `<#@[]>`, which servers often refuse;
//!   a bounce of a bounce must have the null path).
//! * A CR, LF or NUL anywhere is refused with [`AddressError::Forbidden`]:
//!   quoting cannot make them safe in a command line, and sending them would
//!   let an address inject SMTP commands. (Stock qmail puts a backslash
//!   before CR and LF, which does not stop a server that ends lines at LF.)
//! * Other control characters pass inside quotes, as in stock qmail.
//! * Non-ASCII bytes anywhere mean the address needs the SMTPUTF8 extension
//!   ([`SmtpPath::needs_smtputf8`]). A local part that is valid UTF-8 is a
//!   dot-string under RFC 6531 and is not quoted for its non-ASCII
//!   characters; one that is not valid UTF-8 is quoted, as in stock qmail.

use std::fmt;

use thiserror::Error;

/// An address that cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AddressError {
    /// The address contains a byte that would end the SMTP command.
    #[error("the address {address:?} contains {} at byte {position}", byte_name(*byte))]
    Forbidden {
        /// The byte: CR, LF or NUL.
        byte: u8,
        /// Its offset in the address.
        position: usize,
        /// The address, lossily decoded.
        address: String,
    },
    /// A recipient address is empty.
    #[error("empty recipient address")]
    EmptyRecipient,
    /// The part after the last `@` is neither a domain name nor an
    /// address literal.
    #[error("the address {address:?} has a domain that is neither a domain name nor an address literal")]
    BadDomain {
        /// The address, lossily decoded.
        address: String,
    },
}

fn byte_name(b: u8) -> &'static str {
    match b {
        b'\r' => "a carriage return",
        b'\n' => "a line feed",
        _ => "a NUL",
    }
}

/// A reverse-path or forward-path, encoded for SMTP.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpPath {
    path: Vec<u8>,
    smtputf8: bool,
}

impl fmt::Debug for SmtpPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpPath")
            .field("path", &String::from_utf8_lossy(&self.path))
            .field("smtputf8", &self.smtputf8)
            .finish()
    }
}

impl SmtpPath {
    /// The path without its angle brackets (empty for the null path).
    pub fn as_bytes(&self) -> &[u8] {
        &self.path
    }

    /// The path with its angle brackets, as it follows `MAIL FROM:` or
    /// `RCPT TO:`.
    pub fn bracketed(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.path.len() + 2);
        v.push(b'<');
        v.extend_from_slice(&self.path);
        v.push(b'>');
        v
    }

    /// True when the address has non-ASCII bytes, so that the server must
    /// offer SMTPUTF8 and `MAIL FROM` must carry the `SMTPUTF8` parameter.
    pub fn needs_smtputf8(&self) -> bool {
        self.smtputf8
    }

    /// True for the null reverse-path `<>`.
    #[cfg(test)]
    pub(crate) fn is_null(&self) -> bool {
        self.path.is_empty()
    }
}

/// `atext` of RFC 5322: letters, digits and ``!#$%&'*+-/=?^_`{|}~``.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Whether `local` must be quoted: it is not a dot-string (atoms of
/// `atext` joined by single dots; non-ASCII counts as `atext` when the
/// whole local part is valid UTF-8).
pub(crate) fn needs_quoting(local: &[u8]) -> bool {
    let utf8 = std::str::from_utf8(local).is_ok();
    local.is_empty()
        || local
            .split(|&b| b == b'.')
            .any(|atom| atom.is_empty() || !atom.iter().all(|&b| is_atext(b) || (utf8 && b >= 0x80)))
}

/// The local part as a quoted string: `"` … `"` with `\` before `"` and
/// `\`.
pub(crate) fn quote(local: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(local.len() + 2);
    v.push(b'"');
    for &b in local {
        if b == b'"' || b == b'\\' {
            v.push(b'\\');
        }
        v.push(b);
    }
    v.push(b'"');
    v
}

/// Whether `domain` (without its `@`) is a domain name: labels of ASCII
/// letters, digits, `-` and `_` (found in real host names), or of non-ASCII
/// characters that are neither spaces nor controls (an internationalized
/// name, sent with SMTPUTF8), joined by single dots; at most 255 bytes.
pub(crate) fn is_domain_name(domain: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(domain) else { return false };
    !text.is_empty()
        && text.len() <= 255
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || c == '_'
                        || (!c.is_ascii() && !c.is_whitespace() && !c.is_control())
                })
        })
}

/// Whether `domain` is an address literal of RFC 5321 §4.1.3: `[IPv4]`,
/// `[IPv6:addr]`, or `[tag:content]` with a tag of letters, digits and
/// `-` and content of printable ASCII other than `[`, `\` and `]`.
pub(crate) fn is_address_literal(domain: &[u8]) -> bool {
    let Some(inner) = domain.strip_prefix(b"[").and_then(|d| d.strip_suffix(b"]")) else { return false };
    let Ok(inner) = std::str::from_utf8(inner) else { return false };
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let Some((tag, content)) = inner.split_once(':') else { return false };
    if tag.eq_ignore_ascii_case("IPv6") {
        return content.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.starts_with('-')
        && !tag.ends_with('-')
        && !content.is_empty()
        && content.bytes().all(|b| (33..=126).contains(&b) && !matches!(b, b'[' | b'\\' | b']'))
}

fn encode(address: &[u8]) -> Result<SmtpPath, AddressError> {
    if let Some(position) = address.iter().position(|b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(AddressError::Forbidden {
            byte: address[position],
            position,
            address: String::from_utf8_lossy(address).into_owned(),
        });
    }
    let (local, domain) = match address.iter().rposition(|&b| b == b'@') {
        Some(at) => (&address[..at], Some(&address[at..])),
        None => (address, None),
    };
    let mut path = if needs_quoting(local) { quote(local) } else { local.to_vec() };
    if let Some(domain) = domain {
        let name = &domain[1..];
        if !is_domain_name(name) && !is_address_literal(name) {
            return Err(AddressError::BadDomain { address: String::from_utf8_lossy(address).into_owned() });
        }
        path.extend_from_slice(domain);
    }
    Ok(SmtpPath { path, smtputf8: !address.is_ascii() })
}

/// The reverse-path for qmail's envelope sender `sender`.
pub fn encode_sender(sender: &[u8]) -> Result<SmtpPath, AddressError> {
    if sender.is_empty() || sender == b"#@[]" {
        return Ok(SmtpPath { path: Vec::new(), smtputf8: false });
    }
    encode(sender)
}

/// The forward-path for qmail's envelope recipient `recipient`.
pub fn encode_recipient(recipient: &[u8]) -> Result<SmtpPath, AddressError> {
    if recipient.is_empty() {
        return Err(AddressError::EmptyRecipient);
    }
    encode(recipient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"", b"<>", false),
            (b"#@[]", b"<>", false),
            (b"user@example.com", b"<user@example.com>", false),
            (b"#@example.com", b"<#@example.com>", false),
            (b"first.last+tag@example.com", b"<first.last+tag@example.com>", false),
        ];
        for (sender, want, utf8) in cases {
            let p = encode_sender(sender).expect("valid");
            assert_eq!(p.bracketed(), *want, "{sender:?}");
            assert_eq!(p.needs_smtputf8(), *utf8, "{sender:?}");
        }
        assert!(encode_sender(b"").expect("null").is_null());
        assert!(!encode_sender(b"a@b").expect("valid").is_null());
    }

    #[test]
    fn recipients() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"user@example.com", b"user@example.com"),
            (b"we ird@example.com", b"\"we ird\"@example.com"),
            (b"x\"y@example.com", b"\"x\\\"y\"@example.com"),
            (b"back\\slash@example.com", b"\"back\\\\slash\"@example.com"),
            (b".lead@example.com", b"\".lead\"@example.com"),
            (b"trail.@example.com", b"\"trail.\"@example.com"),
            (b"two..dots@example.com", b"\"two..dots\"@example.com"),
            (b"@example.com", b"\"\"@example.com"),
            (b"a@b@example.com", b"\"a@b\"@example.com"),
            (b"(comment)@example.com", b"\"(comment)\"@example.com"),
            (b"tab\there@example.com", b"\"tab\there\"@example.com"),
            (b"postmaster", b"postmaster"),
            (b"post master", b"\"post master\""),
            (b"user@[192.0.2.1]", b"user@[192.0.2.1]"),
            ("jöran@example.com".as_bytes(), "jöran@example.com".as_bytes()),
            ("user@exämple.com".as_bytes(), "user@exämple.com".as_bytes()),
            (b"l\xe4tin1@example.com", b"\"l\xe4tin1\"@example.com"),
        ];
        for (rcpt, want) in cases {
            let p = encode_recipient(rcpt).expect("valid");
            assert_eq!(String::from_utf8_lossy(p.as_bytes()), String::from_utf8_lossy(want), "{rcpt:?}");
            assert_eq!(p.needs_smtputf8(), !rcpt.is_ascii(), "{rcpt:?}");
        }
    }

    #[test]
    fn injection_is_refused() {
        let cases: &[(&[u8], u8, usize)] =
            &[(b"a@example.com>\r\nRSET", b'\r', 14), (b"a\n@example.com", b'\n', 1), (b"a@exa\0mple.com", 0, 5)];
        for (addr, byte, position) in cases {
            let want = AddressError::Forbidden {
                byte: *byte,
                position: *position,
                address: String::from_utf8_lossy(addr).into_owned(),
            };
            assert_eq!(encode_recipient(addr), Err(want.clone()), "{addr:?}");
            assert_eq!(encode_sender(addr), Err(want), "{addr:?}");
        }
        assert_eq!(encode_recipient(b""), Err(AddressError::EmptyRecipient));
        // ESMTP parameters (or anything else) smuggled through the domain.
        let smuggled: &[&[u8]] = &[
            b"x@evil.example> AUTH=<>",
            b"x@evil.example> NOTIFY=NEVER ORCPT=rfc822;a",
            b"x@evil.example>",
            b"x@<evil.example",
            b"x@evil example",
            b"x@evil.example\t",
            b"x@evil.example\x0b",
            b"x@evil.example\x7f",
            b"x@",
            b"x@.",
            b"x@example..com",
            b"x@.example.com",
            b"x@example.com.",
            b"x@exa\"mple.com",
            b"x@exa(mple).com",
            b"x@exa\xe4mple.com",
            "x@exa\u{a0}mple.com".as_bytes(),
            "x@exa\u{2028}mple.com".as_bytes(),
            b"x@[]",
            b"x@[192.0.2.1",
            b"x@[192.0.2.1]>",
            b"x@[192.0.2.1] AUTH=<>",
            b"x@[IPv6:nonsense]",
            b"x@[tag:a b]",
            b"x@[tag:a]b]",
            b"x@[-tag:x]",
            b"x@[tag-:x]",
            b"x@[:x]",
            b"x@[tag:]",
            b"#@[]x",
        ];
        for addr in smuggled {
            let want = AddressError::BadDomain { address: String::from_utf8_lossy(addr).into_owned() };
            assert_eq!(encode_recipient(addr), Err(want.clone()), "{:?}", String::from_utf8_lossy(addr));
            assert_eq!(encode_sender(addr), Err(want), "{:?}", String::from_utf8_lossy(addr));
        }
        // What stays valid: the local part is quoted, whatever it holds.
        for (addr, path) in [
            (&b"a> AUTH=<>@example.com"[..], &b"\"a> AUTH=<>\"@example.com"[..]),
            (b"x@[192.0.2.1]", b"x@[192.0.2.1]"),
            (b"x@[IPv6:2001:db8::1]", b"x@[IPv6:2001:db8::1]"),
            (b"x@[ipv6:::1]", b"x@[ipv6:::1]"),
            (b"x@[x-tag:anything-printable]", b"x@[x-tag:anything-printable]"),
            (b"x@under_score.example", b"x@under_score.example"),
            (b"x@localhost", b"x@localhost"),
            // Split at the last `@`: the rest is a quoted local part.
            (b"x@evil.example> ORCPT=a@b", b"\"x@evil.example> ORCPT=a\"@b"),
        ] {
            assert_eq!(encode_recipient(addr).expect("valid").as_bytes(), path, "{addr:?}");
        }
        assert!(encode_recipient(format!("x@{}.test", "a.".repeat(130)).as_bytes()).is_err(), "longer than 255");
        let e = encode_recipient(b"a\r@b").expect_err("refused");
        assert_eq!(e.to_string(), "the address \"a\\r@b\" contains a carriage return at byte 1");
    }

    #[test]
    fn quoting_rules() {
        for local in [&b"a"[..], b"a.b", b"!#$%&'*+-/=?^_`{|}~", b"0"] {
            assert!(!needs_quoting(local), "{local:?}");
        }
        for local in [&b""[..], b".", b"a.", b".a", b"a..b", b"a b", b"a\"b", b"a,b", b"a:b", b"[a]"] {
            assert!(needs_quoting(local), "{local:?}");
        }
    }
}
