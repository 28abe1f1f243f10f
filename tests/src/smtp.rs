//! A line-oriented SMTP client for tests, over plain TCP or rustls.
//!
//! Everything it reads goes through one buffer that lives as long as the
//! connection, so replies that arrive in pieces or several at a time are
//! parsed the same way. Every read has a deadline. Assertion helpers panic
//! with the transcript of the session so far.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use crate::{TlsClient, show};

/// A TLS connection of the client.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// What the client talks over.
pub trait Conn: Read + Write {
    /// The TCP connection underneath, for timeouts and shutdown.
    fn tcp(&self) -> &TcpStream;
    /// Ends our direction of the stream (TLS: `close_notify` first).
    fn close_write(&mut self) -> io::Result<()>;
    /// The negotiated TLS version, if this is TLS.
    fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        None
    }
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Conn for TlsStream {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }
    fn close_write(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.sock)?;
        }
        self.sock.shutdown(Shutdown::Write)
    }
    fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// Its lines, without the CRLF (`"250-PIPELINING"`).
    pub lines: Vec<String>,
}

impl Reply {
    /// The text of each line (after `ddd-`/`ddd `).
    pub fn texts(&self) -> Vec<&str> {
        self.lines.iter().map(|l| l.get(4..).unwrap_or("")).collect()
    }

    /// Whether a line's text equals `text`, ignoring ASCII case.
    pub fn has_text(&self, text: &str) -> bool {
        self.texts().iter().any(|t| t.eq_ignore_ascii_case(text))
    }

    /// How many lines have the text `text`, ignoring ASCII case.
    pub fn count_text(&self, text: &str) -> usize {
        self.texts().iter().filter(|t| t.eq_ignore_ascii_case(text)).count()
    }

    /// The reply as it went over the wire.
    pub fn wire(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\r\n")).collect()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join(" | "))
    }
}

/// How reading ended when no complete reply came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// Nothing more within the time limit.
    Timeout,
    /// The peer ended the stream (TCP FIN, or TLS `close_notify`).
    Eof,
    /// The TCP connection ended without TLS `close_notify`.
    UncleanEof,
    /// The peer reset the connection.
    Reset,
    /// Any other error (a TLS alert, for instance).
    Error(String),
}

impl ReadEnd {
    /// Whether this means the connection is gone (as opposed to a timeout).
    pub fn is_closed(&self) -> bool {
        !matches!(self, ReadEnd::Timeout)
    }
}

/// Why [`Smtp::try_reply`] did not return a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// Reading ended before a complete reply; `partial` is what came.
    Ended {
        /// How it ended.
        end: ReadEnd,
        /// Bytes of an incomplete reply.
        partial: Vec<u8>,
    },
    /// A line that is not a reply line.
    Malformed(Vec<u8>),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Ended { end, partial } => write!(f, "{end:?} (incomplete: \"{}\")", show(partial)),
            ReplyError::Malformed(l) => write!(f, "malformed reply line \"{}\"", show(l)),
        }
    }
}

/// The default limit for one reply.
pub fn reply_limit() -> Duration {
    crate::secs(20)
}

/// An SMTP client connection.
#[derive(Debug)]
pub struct Smtp<S: Conn> {
    s: S,
    buf: Vec<u8>,
    transcript: Vec<u8>,
}

const TRANSCRIPT_MAX: usize = 16 * 1024;

impl Smtp<TcpStream> {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> Smtp<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, crate::secs(20))
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        let _ = s.set_nodelay(true);
        s.set_write_timeout(Some(crate::secs(20))).expect("set write timeout");
        Smtp { s, buf: Vec::new(), transcript: Vec::new() }
    }

    /// Sends `STARTTLS`, expects exactly `220 2.0.0 Ready to start TLS` with
    /// nothing after it, and upgrades the connection; panics on failure.
    pub fn starttls(mut self, tls: &TlsClient) -> Smtp<TlsStream> {
        self.line("STARTTLS");
        self.expect_line("220 2.0.0 Ready to start TLS");
        match self.tls_handshake(tls) {
            Ok(s) => s,
            Err((e, transcript)) => panic!("TLS handshake failed: {e}\n--- transcript ---\n{transcript}"),
        }
    }

    /// Runs the TLS handshake now (after the `220`). On failure, returns
    /// the error and the transcript.
    pub fn tls_handshake(self, tls: &TlsClient) -> Result<Smtp<TlsStream>, (String, String)> {
        let transcript = self.transcript_string();
        if !self.buf.is_empty() {
            return Err((format!("server sent bytes after its 220: \"{}\"", show(&self.buf)), transcript));
        }
        let mut conn = tls.connection();
        let mut tcp = self.s;
        let deadline = Instant::now() + crate::secs(20);
        while conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(("TLS handshake timed out".to_owned(), transcript));
            }
            let _ = tcp.set_read_timeout(Some(left));
            if let Err(e) = conn.complete_io(&mut tcp) {
                return Err((format!("TLS handshake: {e}"), transcript));
            }
        }
        let mut s = Smtp { s: StreamOwned::new(conn, tcp), buf: Vec::new(), transcript: self.transcript };
        let v = s.s.tls_version();
        s.note(format!("=== TLS {v:?}\n").as_bytes());
        Ok(s)
    }
}

impl<S: Conn> Smtp<S> {
    fn note(&mut self, b: &[u8]) {
        self.transcript.extend_from_slice(b);
        if self.transcript.len() > 2 * TRANSCRIPT_MAX {
            let cut = self.transcript.len() - TRANSCRIPT_MAX;
            self.transcript.drain(..cut);
        }
    }

    /// The session so far (client lines `C:`, server bytes `S:`).
    pub fn transcript_string(&self) -> String {
        String::from_utf8_lossy(&self.transcript).into_owned()
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.s
    }

    /// The TLS version, if TLS runs.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.s.tls_version()
    }

    /// Bytes received but not yet consumed as replies.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Sends `bytes` at once: one `write` for plain TCP (a TLS stream
    /// sends them in one record when they fit). Panics on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.note(format!("C: \"{}\"\n", show(bytes)).as_bytes());
        if let Err(e) = self.s.write_all(bytes).and_then(|()| self.s.flush()) {
            panic!("cannot send \"{}\": {e}\n--- transcript ---\n{}", show(bytes), self.transcript_string());
        }
    }

    /// Like [`Smtp::send`], but returns the error.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.note(format!("C: \"{}\"\n", show(bytes)).as_bytes());
        self.s.write_all(bytes).and_then(|()| self.s.flush())
    }

    /// Sends `line` and CRLF.
    pub fn line(&mut self, line: &str) {
        self.send(format!("{line}\r\n").as_bytes());
    }

    /// Ends our direction of the connection.
    pub fn close_write(&mut self) {
        self.note(b"C: <shutdown write>\n");
        if let Err(e) = self.s.close_write() {
            panic!("cannot shut down the write side: {e}\n--- transcript ---\n{}", self.transcript_string());
        }
    }

    /// Reads more bytes into the buffer, until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Timeout);
            }
            let _ = self.s.tcp().set_read_timeout(Some(left));
            match self.s.read(&mut tmp) {
                Ok(0) => {
                    self.note(b"S: <EOF>\n");
                    return Err(ReadEnd::Eof);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    self.note(format!("S: \"{}\"\n", show(&tmp[..n])).as_bytes());
                    return Ok(());
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => continue,
                    io::ErrorKind::UnexpectedEof => {
                        self.note(b"S: <EOF without close_notify>\n");
                        return Err(ReadEnd::UncleanEof);
                    }
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        self.note(b"S: <reset>\n");
                        return Err(ReadEnd::Reset);
                    }
                    _ => {
                        self.note(format!("S: <error {e}>\n").as_bytes());
                        return Err(ReadEnd::Error(e.to_string()));
                    }
                },
            }
        }
    }

    /// Takes one complete reply off the buffer, if there is one.
    fn take_reply(&mut self) -> Option<Result<Reply, ReplyError>> {
        let mut pos = 0;
        let mut lines = Vec::new();
        let mut code = None;
        while let Some(nl) = self.buf[pos..].iter().position(|&b| b == b'\n') {
            let raw = &self.buf[pos..pos + nl + 1];
            let bad = || Some(Err(ReplyError::Malformed(raw.to_vec())));
            let Some(body) = raw.strip_suffix(b"\r\n") else { return bad() };
            if body.len() < 3 || !body[..3].iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&body[0]) {
                return bad();
            }
            let this: u16 = (body[0] - b'0') as u16 * 100 + (body[1] - b'0') as u16 * 10 + (body[2] - b'0') as u16;
            if *code.get_or_insert(this) != this {
                return bad();
            }
            let last = match body.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return bad(),
            };
            lines.push(String::from_utf8_lossy(body).into_owned());
            pos += nl + 1;
            if last {
                self.buf.drain(..pos);
                return Some(Ok(Reply { code: this, lines }));
            }
        }
        None
    }

    /// Reads one complete (possibly multi-line) reply within `limit`.
    pub fn try_reply_within(&mut self, limit: Duration) -> Result<Reply, ReplyError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(r) = self.take_reply() {
                return r;
            }
            if let Err(end) = self.fill(deadline) {
                return Err(ReplyError::Ended { end, partial: self.buf.clone() });
            }
        }
    }

    /// Reads one reply within the default limit.
    pub fn try_reply(&mut self) -> Result<Reply, ReplyError> {
        self.try_reply_within(reply_limit())
    }

    /// Reads one reply; panics with the transcript if none comes.
    pub fn reply(&mut self) -> Reply {
        match self.try_reply() {
            Ok(r) => r,
            Err(e) => panic!("no reply: {e}\n--- transcript ---\n{}", self.transcript_string()),
        }
    }

    /// Reads one reply and checks its code.
    pub fn expect(&mut self, code: u16) -> Reply {
        let r = self.reply();
        assert_eq!(
            r.code,
            code,
            "expected a {code} reply, got \"{r}\"\n--- transcript ---\n{}",
            self.transcript_string()
        );
        r
    }

    /// Reads one reply and checks that it is exactly the single line
    /// `line`.
    pub fn expect_line(&mut self, line: &str) -> Reply {
        let r = self.reply();
        assert_eq!(
            r.lines,
            vec![line.to_owned()],
            "expected the reply \"{line}\"\n--- transcript ---\n{}",
            self.transcript_string()
        );
        r
    }

    /// Sends `line` and reads the reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.line(line);
        self.reply()
    }

    /// Sends `line` and expects a reply with `code`.
    pub fn cmd_expect(&mut self, line: &str, code: u16) -> Reply {
        self.line(line);
        self.expect(code)
    }

    /// Sends `line` and expects exactly the single-line reply `reply`.
    pub fn cmd_expect_line(&mut self, line: &str, reply: &str) -> Reply {
        self.line(line);
        self.expect_line(reply)
    }

    /// Reads until the connection ends or `limit` passes; returns the bytes
    /// that came (beyond any already buffered, which are included) and how
    /// it ended.
    ///
    /// Once the server has closed, the client closes its side too, as a
    /// real client would: a relay that waits for the client to go away
    /// before it exits must not keep the session alive for the test.
    pub fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, ReadEnd) {
        let deadline = Instant::now() + limit;
        loop {
            if let Err(end) = self.fill(deadline) {
                if end.is_closed() {
                    let _ = self.s.tcp().shutdown(Shutdown::Both);
                }
                return (std::mem::take(&mut self.buf), end);
            }
        }
    }

    /// Asserts that the server closes the connection within `limit` without
    /// sending anything more.
    pub fn expect_closed(&mut self, limit: Duration) -> ReadEnd {
        let (extra, end) = self.read_until_closed(limit);
        assert!(
            end.is_closed(),
            "the connection was not closed within {limit:?}\n--- transcript ---\n{}",
            self.transcript_string()
        );
        assert!(
            extra.is_empty(),
            "unexpected bytes before the close: \"{}\"\n--- transcript ---\n{}",
            show(&extra),
            self.transcript_string()
        );
        end
    }

    /// The usual end: `QUIT`, a `221`, then the server closes.
    pub fn quit(&mut self) {
        self.cmd_expect("QUIT", 221);
        self.expect_closed(crate::secs(20));
    }

    /// A whole mail transaction: MAIL, RCPT, DATA, `body` (already
    /// dot-stuffed, ending in CRLF), the final dot; expects 250s and 354.
    pub fn send_mail(&mut self, from: &str, to: &str, body: &str) -> Reply {
        self.cmd_expect(&format!("MAIL FROM:<{from}>"), 250);
        self.cmd_expect(&format!("RCPT TO:<{to}>"), 250);
        self.cmd_expect("DATA", 354);
        self.send(body.as_bytes());
        self.cmd_expect(".", 250)
    }
}
