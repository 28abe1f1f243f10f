//! qmail-qmqpc: qmail-queue's interface (the message on fd 0, the
//! envelope on fd 1), the message sent by QMQP to the first server of
//! `control/qmqpservers` that takes the connection. What
//! `bin/qmail-queue` points to on a mini-qmail host.
//!
//! As the original: each entry is tried in turn, with a 10 s connect
//! timeout, and only a failed connect moves on to the next; reads and
//! writes time out after 60 s; the first `K`, `Z` or `D` byte of the reply
//! decides; the exit codes are qmail-queue's (0, 31, 71, 72, 73, 74, 91,
//! and 51/54/55/61 for local trouble). Unlike the original, an entry may
//! also be `host:port`, `[v6]:port`, a `/path` to a Unix socket or an
//! `@abstract` one, so that it can talk to qrelay directly.
#![forbid(unsafe_code)]

mod envelope;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use chainmail_qmail::control;
use chainmail_qmqp::reply::first_verdict_byte;
use chainmail_qmqp::{ServerSpec, Verdict, request};

/// qmail-queue's exit codes, as the original uses them.
mod exit {
    /// The server accepted the message (`K`).
    pub const OK: u8 = 0;
    /// The server refused it for good (`D`).
    pub const PERMANENT: u8 = 31;
    /// Out of memory.
    pub const NO_MEMORY: u8 = 51;
    /// The message or envelope could not be read.
    pub const READ: u8 = 54;
    /// `control/qmqpservers` could not be read, or no entry was usable.
    pub const CONTROL: u8 = 55;
    /// The qmail home is not there.
    pub const HOME: u8 = 61;
    /// The server failed temporarily (`Z`).
    pub const TEMPORARY: u8 = 71;
    /// The last connect timed out.
    pub const CONNECT_TIMEOUT: u8 = 72;
    /// The last connect was refused or failed otherwise.
    pub const CONNECT_FAILED: u8 = 73;
    /// The connection was lost before a reply.
    pub const CONNECTION_LOST: u8 = 74;
    /// The envelope is not in qmail-queue's format.
    pub const BAD_ENVELOPE: u8 = 91;
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The envelope is at most this long (qmail-queue's callers never come
/// close; a larger one is not an envelope).
const MAX_ENVELOPE: u64 = 64 * 1024 * 1024;

/// A connected server.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    fn set_timeouts(&self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))
            }
            Conn::Unix(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))
            }
        }
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Tcp(s) => s,
            Conn::Unix(s) => s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Why a server could not be connected to: it decides the exit code when
/// it is the last one.
fn connect_error_code(e: &std::io::Error) -> u8 {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => exit::CONNECT_TIMEOUT,
        _ => exit::CONNECT_FAILED,
    }
}

fn connect_tcp(addrs: &[SocketAddr]) -> Result<Conn, u8> {
    let mut last = exit::CONNECT_FAILED;
    for addr in addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(Conn::Tcp(s)),
            Err(e) => last = connect_error_code(&e),
        }
    }
    Err(last)
}

/// Connects to the server of one entry. `Ok(None)`: the entry is not an
/// address, skipped as the original skips what `ip_scan` refuses.
fn connect(entry: &str) -> Result<Option<Conn>, u8> {
    let Ok(spec) = ServerSpec::parse(entry) else { return Ok(None) };
    let conn = match spec {
        ServerSpec::Inet(addr) => connect_tcp(&[addr])?,
        ServerSpec::Host(host, port) => {
            let addrs: Vec<SocketAddr> =
                (host.as_str(), port).to_socket_addrs().map_err(|_| exit::CONNECT_FAILED)?.collect();
            connect_tcp(&addrs)?
        }
        ServerSpec::Unix(path) => Conn::Unix(UnixStream::connect(path).map_err(|e| connect_error_code(&e))?),
        ServerSpec::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).map_err(|_| exit::CONNECT_FAILED)?;
            Conn::Unix(UnixStream::connect_addr(&addr).map_err(|e| connect_error_code(&e))?)
        }
    };
    Ok(Some(conn))
}

/// Sends the request and reads the reply: the exit code.
fn deliver(conn: &mut Conn, message: &[u8], env: &envelope::Envelope) -> u8 {
    if conn.set_timeouts().is_err() {
        return exit::CONNECTION_LOST;
    }
    let (before, after) = request::frame(message.len(), &env.sender, &env.recipients);
    let s = conn.stream();
    if s.write_all(&before).and_then(|()| s.write_all(message)).and_then(|()| s.write_all(&after)).is_err() {
        return exit::CONNECTION_LOST;
    }
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return exit::CONNECTION_LOST,
            Ok(n) => match first_verdict_byte(&buf[..n]) {
                Some(Verdict::Accepted) => return exit::OK,
                Some(Verdict::Temporary) => return exit::TEMPORARY,
                Some(Verdict::Permanent) => return exit::PERMANENT,
                None => {}
            },
        }
    }
}

fn read_all(r: &mut impl Read, limit: u64) -> Result<Vec<u8>, u8> {
    let mut v = Vec::new();
    r.take(limit).read_to_end(&mut v).map_err(|e| match e.kind() {
        std::io::ErrorKind::OutOfMemory => exit::NO_MEMORY,
        _ => exit::READ,
    })?;
    Ok(v)
}

fn run() -> u8 {
    let home = chainmail_qmail::home::qmail_home_of_program();
    if !Path::new(&home).is_dir() {
        return exit::HOME;
    }
    // Missing or unreadable: the original's "unable to read controls".
    let Ok(servers) = std::fs::read(home.join("control/qmqpservers")) else { return exit::CONTROL };
    let message = match read_all(&mut std::io::stdin().lock(), u64::MAX) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let Ok(fd1) = chainmail_sys::fd::adopt(1) else { return exit::READ };
    let mut envelope_in = std::fs::File::from(fd1);
    let envelope = match read_all(&mut envelope_in, MAX_ENVELOPE) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let Ok(env) = envelope::parse(&envelope) else { return exit::BAD_ENVELOPE };

    let mut last = exit::CONTROL;
    for line in control::lines(&servers) {
        let Ok(entry) = std::str::from_utf8(line.text) else { continue };
        match connect(entry) {
            Ok(Some(mut conn)) => return deliver(&mut conn, &message, &env),
            Ok(None) => {}
            Err(code) => last = code,
        }
    }
    last
}

fn main() -> ExitCode {
    chainmail_sys::diag::set_program("qmail-qmqpc");
    ExitCode::from(run())
}
