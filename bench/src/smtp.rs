//! A small blocking SMTP client with STARTTLS, for the load generator.
//!
//! It behaves like an ordinary mail client: one command, then its reply;
//! sockets keep Nagle's algorithm unless asked (`nodelay`); the TLS
//! handshake completes (client Finished written) before the first command
//! over TLS is written, as OpenSSL-based clients do with `SSL_connect`
//! then `SSL_write`; no session resumption (every handshake is a full
//! one, on both servers).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Which key exchange groups the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kx {
    /// rustls' default: X25519MLKEM768 (with an X25519 share too), X25519,
    /// P-256, P-384.
    Default,
    /// X25519 only.
    X25519,
    /// P-256 only.
    P256,
}

impl Kx {
    /// Parses `default`, `x25519` or `p256`.
    pub fn parse(s: &str) -> Option<Kx> {
        match s {
            "default" => Some(Kx::Default),
            "x25519" => Some(Kx::X25519),
            "p256" => Some(Kx::P256),
            _ => None,
        }
    }
}

/// Which cipher suites the client offers (the TLS 1.3 suite and, for
/// TLS 1.2, the ECDHE suites with the same AEAD, for ECDSA and RSA keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// rustls' default order: AES-256-GCM, AES-128-GCM, ChaCha20-Poly1305.
    Default,
    /// AES-128-GCM only.
    Aes128,
    /// AES-256-GCM only.
    Aes256,
    /// ChaCha20-Poly1305 only.
    Chacha20,
}

impl Suite {
    /// Parses `default`, `aes128`, `aes256` or `chacha20`.
    pub fn parse(s: &str) -> Option<Suite> {
        match s {
            "default" => Some(Suite::Default),
            "aes128" => Some(Suite::Aes128),
            "aes256" => Some(Suite::Aes256),
            "chacha20" => Some(Suite::Chacha20),
            _ => None,
        }
    }

    /// The suites offered, TLS 1.3 first; `None` for rustls' default list.
    fn suites(self) -> Option<Vec<rustls::SupportedCipherSuite>> {
        use aws_lc_rs::cipher_suite as cs;
        match self {
            Suite::Default => None,
            Suite::Aes128 => Some(vec![
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ]),
            Suite::Aes256 => Some(vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            ]),
            Suite::Chacha20 => Some(vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]),
        }
    }
}

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// TLS 1.3 and TLS 1.2 (the server chooses: 1.3 with both servers here).
    Any,
    /// TLS 1.2 only.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl Version {
    /// Parses `any`, `1.2` or `1.3`.
    pub fn parse(s: &str) -> Option<Version> {
        match s {
            "any" => Some(Version::Any),
            "1.2" => Some(Version::Tls12),
            "1.3" => Some(Version::Tls13),
            _ => None,
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS12: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
        static TLS13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Version::Any => rustls::DEFAULT_VERSIONS,
            Version::Tls12 => &TLS12,
            Version::Tls13 => &TLS13,
        }
    }
}

/// A client configuration trusting the CA certificates in `ca` (PEM),
/// without session resumption.
pub fn client_config(ca: &Path, kx: Kx, suite: Suite, version: Version) -> Result<Arc<ClientConfig>, String> {
    let mut provider: CryptoProvider = aws_lc_rs::default_provider();
    match kx {
        Kx::Default => {}
        Kx::X25519 => provider.kx_groups = vec![aws_lc_rs::kx_group::X25519],
        Kx::P256 => provider.kx_groups = vec![aws_lc_rs::kx_group::SECP256R1],
    }
    if let Some(suites) = suite.suites() {
        provider.cipher_suites = suites;
    }
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("cannot trust {}: {e}", ca.display()))?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(version.versions())
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Why a session failed: the step and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The step (`greeting`, `EHLO`, `STARTTLS`, `handshake`, ..., `QUIT`).
    pub step: &'static str,
    /// What went wrong.
    pub what: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.what)
    }
}

fn fail(step: &'static str) -> impl Fn(io::Error) -> Failure {
    move |e| Failure { step, what: e.to_string() }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// An SMTP connection.
pub struct Client {
    stream: Stream,
    /// Received bytes not yet parsed as reply lines.
    buf: Vec<u8>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("tls", &matches!(self.stream, Stream::Tls(_))).finish_non_exhaustive()
    }
}

/// A reply: its code and its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The last line, without the code and the line end.
    pub last: String,
}

impl Client {
    /// Connects to `addr`; every later read and write may take at most
    /// `timeout`.
    pub fn connect(addr: SocketAddr, nodelay: bool, timeout: Duration) -> Result<Client, Failure> {
        let sock = TcpStream::connect_timeout(&addr, timeout).map_err(fail("connect"))?;
        sock.set_nodelay(nodelay).map_err(fail("connect"))?;
        sock.set_read_timeout(Some(timeout)).map_err(fail("connect"))?;
        sock.set_write_timeout(Some(timeout)).map_err(fail("connect"))?;
        Ok(Client { stream: Stream::Plain(sock), buf: Vec::with_capacity(4096) })
    }

    fn read_some(&mut self, step: &'static str) -> Result<(), Failure> {
        let mut tmp = [0u8; 8192];
        let n = match &mut self.stream {
            Stream::Plain(s) => s.read(&mut tmp),
            Stream::Tls(s) => s.read(&mut tmp),
        }
        .map_err(fail(step))?;
        if n == 0 {
            return Err(Failure { step, what: "connection closed before the reply".into() });
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }

    /// Reads one reply (all its lines).
    pub fn reply(&mut self, step: &'static str) -> Result<Reply, Failure> {
        let mut scanned = 0;
        loop {
            while let Some(i) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[scanned..scanned + i + 1];
                scanned += i + 1;
                let text = String::from_utf8_lossy(line).trim_end().to_owned();
                let code: u16 = text
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| Failure { step, what: format!("not a reply: {text:?}") })?;
                match text.as_bytes().get(3) {
                    None | Some(b' ') => {
                        self.buf.drain(..scanned);
                        let last = text.get(4..).unwrap_or("").to_owned();
                        return Ok(Reply { code, last });
                    }
                    Some(b'-') => {}
                    Some(_) => return Err(Failure { step, what: format!("not a reply: {text:?}") }),
                }
            }
            self.read_some(step)?;
        }
    }

    /// Sends `data` as it is (one write for a plaintext socket, one TLS
    /// record per 16 KiB through TLS).
    pub fn send(&mut self, step: &'static str, data: &[u8]) -> Result<(), Failure> {
        match &mut self.stream {
            Stream::Plain(s) => s.write_all(data),
            Stream::Tls(s) => s.write_all(data).and_then(|()| s.flush()),
        }
        .map_err(fail(step))
    }

    /// Sends `line` and CRLF, reads the reply, and checks its code.
    pub fn command(&mut self, step: &'static str, line: &str, want: u16) -> Result<Reply, Failure> {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        self.send(step, &data)?;
        self.expect(step, want)
    }

    /// Reads a reply and checks its code.
    pub fn expect(&mut self, step: &'static str, want: u16) -> Result<Reply, Failure> {
        let r = self.reply(step)?;
        if r.code != want {
            return Err(Failure { step, what: format!("expected {want}, got {} {}", r.code, r.last) });
        }
        Ok(r)
    }

    /// Runs the TLS handshake on the connection (after a `220` to
    /// STARTTLS, or at once for implicit TLS) and completes it.
    pub fn start_tls(&mut self, config: &Arc<ClientConfig>, name: &ServerName<'static>) -> Result<(), Failure> {
        const STEP: &str = "handshake";
        if !self.buf.is_empty() {
            return Err(Failure { step: STEP, what: "the server sent data after its 220".into() });
        }
        let Stream::Plain(sock) = &self.stream else {
            return Err(Failure { step: STEP, what: "TLS already started".into() });
        };
        let sock = sock.try_clone().map_err(fail(STEP))?;
        let conn = ClientConnection::new(config.clone(), name.clone())
            .map_err(|e| Failure { step: STEP, what: e.to_string() })?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(fail(STEP))?;
        }
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// `TLSv1_3/TLS13_AES_256_GCM_SHA384/X25519MLKEM768`, once TLS runs.
    pub fn tls_info(&self) -> Option<String> {
        let Stream::Tls(s) = &self.stream else { return None };
        let c = &s.conn;
        Some(format!(
            "{:?}/{:?}/{:?}",
            c.protocol_version()?,
            c.negotiated_cipher_suite()?.suite(),
            c.negotiated_key_exchange_group()?.name()
        ))
    }

    /// Ends the connection as a mail client does after the `221`: TLS
    /// close_notify (when TLS runs), then close, without waiting for the
    /// server.
    pub fn close(self) {
        if let Stream::Tls(mut s) = self.stream {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
        }
    }
}

/// How a full session runs.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    /// The server.
    pub addr: SocketAddr,
    /// The TLS client configuration.
    pub tls: Arc<ClientConfig>,
    /// The server name for SNI and the certificate check.
    pub name: ServerName<'static>,
    /// TCP_NODELAY on the client socket.
    pub nodelay: bool,
    /// STARTTLS, TLS from the first byte, or no TLS at all.
    pub transport: Transport,
    /// The message, dot-stuffed, with CRLF line ends, without the final
    /// dot line.
    pub body: Arc<Vec<u8>>,
    /// The limit for each read and write.
    pub timeout: Duration,
}

/// How a session gets (or does not get) TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// EHLO, STARTTLS, the handshake, EHLO again.
    Starttls,
    /// TLS from the first byte (SMTPS), then EHLO.
    Implicit,
    /// A client that never says STARTTLS: EHLO, and the mail in plaintext.
    Plain,
}

/// The client's name in EHLO.
pub const HELO: &str = "EHLO client.bench.test";

/// When each step of a session ended: `(step, instant)`, in order, the
/// first being the start.
pub type Marks = Vec<(&'static str, Instant)>;

fn mark(marks: &mut Option<&mut Marks>, step: &'static str) {
    if let Some(m) = marks {
        m.push((step, Instant::now()));
    }
}

/// Connects and goes as far as the EHLO after the TLS handshake (the
/// first EHLO with [`Transport::Plain`]).
pub fn open_tls_session(spec: &SessionSpec) -> Result<Client, Failure> {
    open_marked(spec, &mut None)
}

fn open_marked(spec: &SessionSpec, marks: &mut Option<&mut Marks>) -> Result<Client, Failure> {
    mark(marks, "start");
    let mut c = Client::connect(spec.addr, spec.nodelay, spec.timeout)?;
    mark(marks, "connect");
    match spec.transport {
        Transport::Implicit => {
            c.start_tls(&spec.tls, &spec.name)?;
            mark(marks, "handshake");
            c.expect("greeting", 220)?;
            mark(marks, "greeting");
        }
        Transport::Starttls => {
            c.expect("greeting", 220)?;
            mark(marks, "greeting");
            c.command("EHLO", HELO, 250)?;
            mark(marks, "ehlo");
            c.command("STARTTLS", "STARTTLS", 220)?;
            mark(marks, "starttls");
            c.start_tls(&spec.tls, &spec.name)?;
            mark(marks, "handshake");
        }
        Transport::Plain => {
            c.expect("greeting", 220)?;
            mark(marks, "greeting");
            c.command("EHLO", HELO, 250)?;
            mark(marks, "ehlo");
            return Ok(c);
        }
    }
    c.command("EHLO after TLS", HELO, 250)?;
    mark(marks, "ehlo2");
    Ok(c)
}

/// Sends `QUIT`, reads the `221` and closes.
pub fn quit(mut c: Client) -> Result<(), Failure> {
    c.command("QUIT (221 lost)", "QUIT", 221)?;
    c.close();
    Ok(())
}

/// One full session: connect, greeting, EHLO, STARTTLS, handshake, EHLO,
/// MAIL, RCPT, DATA, the message, QUIT, the 221, close. Returns the TLS
/// parameters. With `marks`, records when each step ended.
pub fn full_session(spec: &SessionSpec, mut marks: Option<&mut Marks>) -> Result<String, Failure> {
    let mut c = open_marked(spec, &mut marks)?;
    let info = c.tls_info().unwrap_or_else(|| "plaintext".into());
    c.command("MAIL", "MAIL FROM:<load@client.bench.test>", 250)?;
    mark(&mut marks, "mail");
    c.command("RCPT", "RCPT TO:<sink@test.smtpd>", 250)?;
    mark(&mut marks, "rcpt");
    c.command("DATA", "DATA", 354)?;
    mark(&mut marks, "data");
    let mut msg = Vec::with_capacity(spec.body.len() + 3);
    msg.extend_from_slice(&spec.body);
    msg.extend_from_slice(b".\r\n");
    c.send("end of data", &msg)?;
    c.expect("end of data", 250)?;
    mark(&mut marks, "message");
    c.command("QUIT (221 lost)", "QUIT", 221)?;
    mark(&mut marks, "quit");
    c.close();
    Ok(info)
}

/// A message of exactly `size` bytes (at least 32): a Subject header, an
/// empty line, and lines of 76 letters, CRLF line ends, no leading dots.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: chainmail bench\r\n\r\n".to_vec();
    let mut i = 0u8;
    while m.len() < size {
        let room = size - m.len();
        let n = room.min(78);
        if n < 3 {
            // Too little room for a line of its own: lengthen the last one.
            let at = m.len() - 2;
            m.splice(at..at, std::iter::repeat_n(b'z', n));
            break;
        }
        m.extend(std::iter::repeat_n(b'a' + i % 26, n - 2));
        m.extend_from_slice(b"\r\n");
        i = i.wrapping_add(1);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_sizes() {
        for size in [32, 100, 1024, 1025, 4096, 79, 80, 81] {
            let m = message(size);
            assert_eq!(m.len(), size, "size {size}");
            assert!(m.ends_with(b"\r\n"));
            assert!(!m.windows(3).any(|w| w == b"\n.\r" || w == b"\n.."));
        }
    }
}
