//! tls-sink: a fast STARTTLS SMTP sink in one process, for measuring an
//! SMTP client (qmail-remote) without the cost of a per-connection server.
//!
//! ```text
//! tls-sink ADDR CERTFILE KEYFILE [HOLD-MS]
//! ```
//!
//! Listens on ADDR (port 0: any free one), prints the port on stdout as
//! soon as it listens, and serves every connection in a thread of its own
//! until killed: a `220` greeting; `EHLO` with PIPELINING, 8BITMIME, SIZE
//! and (before TLS) STARTTLS; `STARTTLS` (rustls, TLS 1.2 and 1.3, no
//! resumption); `MAIL`, `RCPT`, `DATA` accepted; the message read up to its
//! final dot and thrown away; `QUIT`. Replies to pipelined commands leave
//! in one write. Sockets have TCP_NODELAY. This is what postfix's
//! `smtp-sink` is to the plaintext measurement. With HOLD-MS, the reply to
//! the final dot waits that long (to look at the client while it waits).
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data),
            Stream::Tls(s) => s.write_all(data).and_then(|()| s.flush()),
        }
    }
}

fn serve(sock: TcpStream, config: Arc<ServerConfig>, hold: std::time::Duration) -> io::Result<()> {
    sock.set_nodelay(true)?;
    let mut s = Stream::Plain(sock);
    s.write_all(b"220 tls-sink.bench.test ESMTP\r\n")?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut tmp = vec![0u8; 64 * 1024];
    let mut in_data = false;
    // The data has just begun: a "." line right here ends it.
    let mut data_fresh = false;
    loop {
        // Every complete line (or, in DATA, everything up to the final dot).
        let mut start = 0;
        let mut starttls = false;
        let mut quit = false;
        loop {
            if in_data {
                let rest = &buf[start..];
                // The final dot: a line "." after a CRLF (or at the start).
                let end = if data_fresh && rest.starts_with(b".\r\n") {
                    Some(0)
                } else {
                    rest.windows(5).position(|w| w == b"\r\n.\r\n").map(|i| i + 2)
                };
                if rest.len() >= 3 {
                    data_fresh = false;
                }
                match end {
                    Some(i) => {
                        start += i + 3;
                        in_data = false;
                        std::thread::sleep(hold);
                        out.extend_from_slice(b"250 2.0.0 Ok: discarded\r\n");
                    }
                    None => {
                        // Keep the last 4 bytes: they may begin the final dot.
                        start = buf.len().saturating_sub(4).max(start);
                        break;
                    }
                }
                continue;
            }
            let Some(i) = buf[start..].iter().position(|&b| b == b'\n') else { break };
            let line = &buf[start..start + i + 1];
            start += i + 1;
            let verb: Vec<u8> = line.iter().take(4).map(u8::to_ascii_uppercase).collect();
            match verb.as_slice() {
                b"EHLO" => {
                    out.extend_from_slice(b"250-tls-sink.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n");
                    if matches!(s, Stream::Plain(_)) {
                        out.extend_from_slice(b"250-STARTTLS\r\n");
                    }
                    out.extend_from_slice(b"250 SIZE 100000000\r\n");
                }
                b"HELO" => out.extend_from_slice(b"250 tls-sink.bench.test\r\n"),
                b"STAR" if matches!(s, Stream::Plain(_)) => {
                    out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                    starttls = true;
                    break;
                }
                b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
                b"DATA" => {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    in_data = true;
                    data_fresh = true;
                }
                b"QUIT" => {
                    out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                    quit = true;
                    break;
                }
                _ => out.extend_from_slice(b"502 5.5.2 Not implemented\r\n"),
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            s.write_all(&out)?;
            out.clear();
        }
        if quit {
            if let Stream::Tls(t) = &mut s {
                t.conn.send_close_notify();
                let _ = t.flush();
            }
            return Ok(());
        }
        if starttls {
            let Stream::Plain(sock) = s else { return Ok(()) };
            if !buf.is_empty() {
                return Ok(()); // commands pipelined after STARTTLS: drop them and the client
            }
            let conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
            s = Stream::Tls(Box::new(StreamOwned::new(conn, sock)));
            continue;
        }
        let n = match s.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| format!("cannot read {cert}: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read {key}: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    c.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    c.send_tls13_tickets = 0;
    Ok(Arc::new(c))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, cert, key, hold) = match args.as_slice() {
        [a, c, k] => (a, c, k, 0),
        [a, c, k, h] if h.parse::<u64>().is_ok() => (a, c, k, h.parse().unwrap_or(0)),
        _ => {
            eprintln!("tls-sink: usage: tls-sink ADDR CERTFILE KEYFILE [HOLD-MS]");
            return ExitCode::from(100);
        }
    };
    let hold = std::time::Duration::from_millis(hold);
    let config = match config(cert, key) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tls-sink: fatal: {e}");
            return ExitCode::from(96);
        }
    };
    let listener = match TcpListener::bind(addr.as_str()).and_then(|l| Ok((l.local_addr()?, l))) {
        Ok((a, l)) => {
            println!("{}", a.port());
            let _ = io::stdout().flush();
            l
        }
        Err(e) => {
            eprintln!("tls-sink: fatal: unable to listen on {addr}: {e}");
            return ExitCode::from(111);
        }
    };
    for conn in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, config, hold);
        });
    }
    ExitCode::SUCCESS
}
