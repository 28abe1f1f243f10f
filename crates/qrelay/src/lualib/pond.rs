//! The Pond log: `log_server` and `log_resolve()`. When `log_server` is
//! set, every processed message also goes out as one datagram to the
//! Pond server (or a multicast group), besides the stderr line.
//!
//! The wire format (CM4all libcommon `net/log/Protocol.hxx`, protocol
//! version 2): a datagram is the 32-bit magic `0x63046103`, then
//! attributes, each an identifying byte and its payload, then a CRC-32
//! (ISO-HDLC, as zlib's) of everything after the magic. Integers are
//! big-endian; strings end with a null byte; the timestamp and the
//! duration are 64-bit microseconds. The default port is 5479.
//!
//! What qrelay sends per message (as the original does): the time, the
//! account as the site, a message `from=<S> to=<R1>,<R2> TEXT` (TEXT: the
//! reply without its K/Z/D), the length of the message as forwarded, the
//! traffic (the request's bytes in; out: those plus the added headers
//! once an action ran, else 0), the duration and the record type
//! "submission".

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

use chainmail_qmqp::Reply;
use chainmail_qmqp::request::Request;
use mlua::{Lua, Value};
use nix::sys::socket::SockType;

use super::{Counted, send_now, targets};
use crate::script::{Address, Mail, Module, Target};

/// Version 2's magic number (with the CRC).
pub const MAGIC_V2: u32 = 0x6304_6103;
/// The Pond server's default port.
pub const DEFAULT_PORT: u16 = 5479;
/// The message attribute is cut to this many bytes (a thousand
/// recipients would not fit a datagram).
pub const MAX_MESSAGE: usize = 8192;

/// The attribute codes qrelay uses.
pub mod attribute {
    /// 64-bit microseconds since the epoch.
    pub const TIMESTAMP: u8 = 1;
    /// A string: the account.
    pub const SITE: u8 = 3;
    /// A 64-bit length.
    pub const LENGTH: u8 = 9;
    /// Two 64-bit byte counts: received, sent.
    pub const TRAFFIC: u8 = 10;
    /// 64-bit microseconds.
    pub const DURATION: u8 = 11;
    /// A one-line string.
    pub const MESSAGE: u8 = 13;
    /// One byte: the record type.
    pub const TYPE: u8 = 15;
}

/// The record type of a mail submission.
pub const TYPE_SUBMISSION: u8 = 3;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When, in microseconds since the epoch.
    pub timestamp_us: u64,
    /// The account (the "site").
    pub site: Option<Vec<u8>>,
    /// `from=<..> to=<..> text`.
    pub message: Vec<u8>,
    /// The message's length as forwarded.
    pub length: u64,
    /// Bytes received.
    pub received: u64,
    /// Bytes sent.
    pub sent: u64,
    /// How long the session took, in microseconds.
    pub duration_us: u64,
}

/// CRC-32/ISO-HDLC (reflected, polynomial 0x04C11DB7, initial and final
/// value all ones).
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn put_string(out: &mut Vec<u8>, code: u8, s: &[u8]) {
    out.push(code);
    // A string ends at its first null byte: none may be inside.
    out.extend(s.iter().map(|&b| if b == 0 { b'?' } else { b }));
    out.push(0);
}

/// The datagram of `r`, attributes in the order of their codes.
pub fn encode(r: &Record) -> Vec<u8> {
    let mut out = MAGIC_V2.to_be_bytes().to_vec();
    out.push(attribute::TIMESTAMP);
    out.extend_from_slice(&r.timestamp_us.to_be_bytes());
    if let Some(site) = r.site.as_deref().filter(|s| !s.is_empty()) {
        put_string(&mut out, attribute::SITE, site);
    }
    out.push(attribute::LENGTH);
    out.extend_from_slice(&r.length.to_be_bytes());
    out.push(attribute::TRAFFIC);
    out.extend_from_slice(&r.received.to_be_bytes());
    out.extend_from_slice(&r.sent.to_be_bytes());
    out.push(attribute::DURATION);
    out.extend_from_slice(&r.duration_us.to_be_bytes());
    put_string(&mut out, attribute::MESSAGE, &r.message[..r.message.len().min(MAX_MESSAGE)]);
    out.push(attribute::TYPE);
    out.push(TYPE_SUBMISSION);
    let crc = crc32(&out[4..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// `from=<S> to=<R1>,<R2> TEXT`.
pub fn message_text(sender: &[u8], recipients: &[Vec<u8>], text: &[u8]) -> Vec<u8> {
    let mut m = b"from=<".to_vec();
    m.extend_from_slice(sender);
    m.extend_from_slice(b"> to=");
    for (i, r) in recipients.iter().enumerate() {
        if i > 0 {
            m.push(b',');
        }
        m.push(b'<');
        m.extend_from_slice(r);
        m.push(b'>');
    }
    if !text.is_empty() {
        m.push(b' ');
        m.extend_from_slice(text);
    }
    m
}

/// The bytes of a netstring holding `n` bytes.
fn netstring_len(n: usize) -> u64 {
    (n.to_string().len() + 2 + n) as u64
}

/// The bytes of the request inside its outer netstring.
pub fn request_len(request: &Request) -> u64 {
    netstring_len(request.message.len())
        + netstring_len(request.sender.len())
        + request.recipients.iter().map(|r| netstring_len(r.len())).sum::<u64>()
}

/// The socket to the Pond server, once the configuration set one.
#[derive(Debug)]
struct PondLog {
    socket: Counted,
    /// When the last failure was reported (one warning a minute).
    warned: Cell<Option<Instant>>,
}

/// Sends the record of one processed message, if `log_server` is set.
/// `prefix_len` is the bytes qrelay added before the message; `acted`
/// tells whether the handler's action ran (else nothing was sent on);
/// `duration` is the session's so far.
pub fn log_message(
    lua: &Lua,
    request: &Request,
    mail: &Mail,
    reply: &Reply,
    prefix_len: usize,
    acted: bool,
    duration: Duration,
) {
    let Some(pond) = lua.app_data_ref::<PondLog>() else { return };
    let received = request_len(request);
    let record = Record {
        timestamp_us: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_micros()
            as u64,
        site: mail.account.as_ref().map(|a| a.as_bytes().to_vec()),
        message: message_text(&mail.sender, &mail.recipients, reply.text()),
        length: (request.message.len() + prefix_len) as u64,
        received,
        sent: if acted { received + prefix_len as u64 } else { 0 },
        duration_us: duration.as_micros() as u64,
    };
    if let Err(e) = send_now(pond.socket.fd(), &encode(&record)) {
        let now = Instant::now();
        if pond.warned.get().is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
            pond.warned.set(Some(now));
            chainmail_sys::diag::warn(format_args!("unable to send the log datagram: {e}"));
        }
    }
}

/// `log_resolve(NAME)`: an address object with the Pond port as default.
fn resolve(_: &Lua, name: String) -> mlua::Result<Address> {
    targets(&name, DEFAULT_PORT).map(Address).map_err(mlua::Error::runtime)
}

/// The module.
pub struct PondLibrary;

impl Module for PondLibrary {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        lua.globals().set("log_resolve", lua.create_function(resolve)?)
    }

    fn configured(&self, lua: &Lua) -> mlua::Result<()> {
        let targets: Vec<Target> = match lua.globals().get::<Value>("log_server")? {
            Value::Nil => return Ok(()),
            Value::String(s) => targets(&s.to_str()?, DEFAULT_PORT).map_err(|e| rt(format!("log_server: {e}")))?,
            Value::UserData(ud) if ud.is::<Address>() => ud.borrow::<Address>()?.0.clone(),
            _ => return Err(rt("log_server must be an address string or log_resolve()'s result")),
        };
        let c = super::connect(lua, &targets, SockType::Datagram).map_err(|e| rt(format!("log_server: {e}")))?;
        lua.set_app_data(PondLog { socket: c, warned: Cell::new(None) });
        Ok(())
    }
}

fn rt(msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_iso_hdlc() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn datagram_layout() {
        let r = Record {
            timestamp_us: 0x0102_0304_0506_0708,
            site: Some(b"acct".to_vec()),
            message: b"from=<a@b> to=<c@d> ok".to_vec(),
            length: 45,
            received: 80,
            sent: 130,
            duration_us: 1500,
        };
        let d = encode(&r);
        let mut want = vec![0x63, 0x04, 0x61, 0x03, 1, 1, 2, 3, 4, 5, 6, 7, 8, 3];
        want.extend_from_slice(b"acct\0");
        want.push(9);
        want.extend_from_slice(&45u64.to_be_bytes());
        want.push(10);
        want.extend_from_slice(&80u64.to_be_bytes());
        want.extend_from_slice(&130u64.to_be_bytes());
        want.push(11);
        want.extend_from_slice(&1500u64.to_be_bytes());
        want.push(13);
        want.extend_from_slice(b"from=<a@b> to=<c@d> ok\0");
        want.extend_from_slice(&[15, 3]);
        let crc = crc32(&want[4..]);
        want.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(d, want);
        // No site without an account; null bytes cannot end a string early.
        let d = encode(&Record { site: None, message: b"a\0b".to_vec(), ..r.clone() });
        assert_eq!(d[13], attribute::LENGTH);
        assert!(contains(&d, b"a?b\0"));
        // A long message is cut.
        let d = encode(&Record { message: vec![b'x'; 100_000], ..r });
        assert!(d.len() < MAX_MESSAGE + 100);
    }

    fn contains(h: &[u8], n: &[u8]) -> bool {
        h.windows(n.len()).any(|w| w == n)
    }

    #[test]
    fn message_and_lengths() {
        assert_eq!(message_text(b"a@b", &[b"c@d".to_vec(), b"e@f".to_vec()], b"ok"), b"from=<a@b> to=<c@d>,<e@f> ok");
        assert_eq!(message_text(b"", &[b"c@d".to_vec()], b""), b"from=<> to=<c@d>");
        let request = Request { message: vec![b'm'; 45], sender: b"a@b".to_vec(), recipients: vec![b"c@d".to_vec()] };
        // 45:...,  3:a@b,  3:c@d,
        assert_eq!(request_len(&request), 49 + 6 + 6);
        assert_eq!(
            request_len(&request),
            chainmail_qmqp::encode_request(&request.message, &request.sender, &[b"c@d"]).len() as u64 - 4
        );
    }
}
