//! Envelope addresses as they go into `MAIL FROM:<…>` and `RCPT TO:<…>`.
//!
//! qmail keeps addresses unquoted (`we ird@example.com`); qmail-remote
//! splits them at the last `@` and quotes the local part when it is not a
//! dot-string (RFC 5321 §4.1.2): `"we ird"@example.com`, with `\` before
//! `"` and `\`. The domain is passed on as it is. An address without `@` is
//! treated as a local part alone (`<postmaster>`).
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
    pub fn is_null(&self) -> bool {
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
pub fn needs_quoting(local: &[u8]) -> bool {
    let utf8 = std::str::from_utf8(local).is_ok();
    local.is_empty()
        || local
            .split(|&b| b == b'.')
            .any(|atom| atom.is_empty() || !atom.iter().all(|&b| is_atext(b) || (utf8 && b >= 0x80)))
}

/// The local part as a quoted string: `"` … `"` with `\` before `"` and
/// `\`.
pub fn quote(local: &[u8]) -> Vec<u8> {
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
            (b"#@[]", b"#@[]"),
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
