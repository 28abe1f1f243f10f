//! The connection to the server: plaintext or TLS over a non-blocking
//! socket, every wait bounded by the per-operation timeout
//! (`timeoutremote`, as stock qmail applies it to each read and write).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use chainmail_sys::fd::{self, FdIo};
use chainmail_sys::poll::{Deadline, Interest, PollSet};
use chainmail_tls::{ClientEngine, EngineError, Policy, Step};
use rustls::pki_types::ServerName;

/// Why the connection stopped working.
#[derive(Debug)]
pub enum ConnError {
    /// A wait exceeded the timeout.
    Timeout,
    /// EOF, a reset, or another error of the socket.
    Closed(String),
    /// The TLS layer failed (handshake, certificate, bad record).
    Tls(rustls::Error),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::Timeout => f.write_str("timed out"),
            ConnError::Closed(why) => f.write_str(why),
            ConnError::Tls(e) => write!(f, "{e}"),
        }
    }
}

/// Plaintext read ahead while writing beyond which reading pauses.
const INBOX_LIMIT: usize = 1 << 20;

/// How the TLS session of a delivery ends: with close_notify after the
/// last command, and an EOF without it ends the input like any EOF (SMTP
/// replies say themselves where they end).
const POLICY: Policy = Policy { close_notify_on_app_eof: true, require_close_notify: false };

/// A connection to the server.
#[derive(Debug)]
pub struct Conn {
    rfd: OwnedFd,
    wfd: OwnedFd,
    tls: Option<Box<ClientEngine>>,
    /// Plaintext received and not yet handed out.
    inbox: Vec<u8>,
    eof: bool,
    timeout: Duration,
    /// The poll set, reused by every wait.
    poll: PollSet<Direction>,
}

/// Which way a wait on the socket looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The read side (`-6`).
    In,
    /// The write side (`-7`).
    Out,
}

fn closed(e: io::Error) -> ConnError {
    ConnError::Closed(e.to_string())
}

fn engine_failed(e: EngineError) -> ConnError {
    match e {
        EngineError::Tls(e) => ConnError::Tls(e),
        EngineError::HandshakeEof => ConnError::Closed("connection closed during the TLS handshake".into()),
        other => ConnError::Closed(other.to_string()),
    }
}

impl Conn {
    /// A connection on `rfd`/`wfd` (non-blocking from now on).
    pub fn new(rfd: OwnedFd, wfd: OwnedFd, timeout: Duration) -> io::Result<Conn> {
        fd::set_nonblocking(&rfd, true)?;
        fd::set_nonblocking(&wfd, true)?;
        chainmail_sys::net::set_nodelay(&wfd);
        Ok(Conn { rfd, wfd, tls: None, inbox: Vec::new(), eof: false, timeout, poll: PollSet::with_capacity(2) })
    }

    /// Waits until the socket can be read (`read`) or written (`write`):
    /// `(readable, writable)`, or a timeout at `deadline`.
    fn wait(&mut self, read: bool, write: bool, deadline: Deadline) -> Result<(bool, bool), ConnError> {
        let mut round = self.poll.round();
        if read {
            round.register(self.rfd.as_fd(), Interest::Read, Direction::In);
        }
        if write {
            round.register(self.wfd.as_fd(), Interest::Write, Direction::Out);
        }
        let ready = round.wait(deadline).map_err(closed)?;
        if ready.is_empty() {
            return Err(ConnError::Timeout);
        }
        let is_ready = |d: Direction| ready.iter().any(|&(t, _)| t == d);
        Ok((is_ready(Direction::In), is_ready(Direction::Out)))
    }

    /// Reads what the socket has now into the inbox (through TLS if it
    /// runs). Returns false when nothing could be read.
    fn pump_input(&mut self) -> Result<bool, ConnError> {
        if self.eof || self.inbox.len() >= INBOX_LIMIT {
            return Ok(false);
        }
        match &mut self.tls {
            None => {
                let mut buf = [0u8; 16 * 1024];
                match fd::read(&self.rfd, &mut buf) {
                    Ok(0) => {
                        self.eof = true;
                        Ok(true)
                    }
                    Ok(n) => {
                        self.inbox.extend_from_slice(&buf[..n]);
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(closed(e)),
                }
            }
            Some(tls) => {
                let wfd = self.wfd.as_fd();
                let result = (|| {
                    let mut moved = false;
                    if tls.wants().app_write {
                        moved |= matches!(tls.write_app(&mut self.inbox)?, Step::Moved(_));
                    }
                    if tls.wants().net_read {
                        moved |= matches!(tls.read_net(&mut FdIo(self.rfd.as_fd()))?, Step::Moved(_) | Step::Closed);
                    }
                    if tls.wants().app_write {
                        tls.write_app(&mut self.inbox)?;
                    }
                    Ok(moved)
                })();
                if !tls.app_output_open() {
                    self.eof = true;
                }
                result.map_err(|e| {
                    // Send the alert the engine queued, if the socket takes it.
                    let _ = tls.write_net(&mut FdIo(wfd));
                    engine_failed(e)
                })
            }
        }
    }

    /// What the server sent: at least one byte, or an error (EOF is
    /// [`ConnError::Closed`]).
    pub fn read(&mut self) -> Result<Vec<u8>, ConnError> {
        loop {
            if !self.inbox.is_empty() {
                return Ok(std::mem::take(&mut self.inbox));
            }
            if self.eof {
                return Err(ConnError::Closed("connection closed by the server".into()));
            }
            if !self.pump_input()? {
                self.wait(true, false, Deadline::after(self.timeout))?;
            }
        }
    }

    /// Writes pending TLS output, waiting as needed.
    fn flush_tls(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(tls) = &mut self.tls else { return Ok(()) };
            if !tls.wants().net_write {
                return Ok(());
            }
            match tls.write_net(&mut FdIo(self.wfd.as_fd())) {
                Ok(Step::Blocked) => self.wait_writable()?,
                Ok(_) => {}
                Err(e) => return Err(engine_failed(e)),
            }
        }
    }

    /// Waits until the socket takes more, reading meanwhile, so that a
    /// server blocked on sending us replies cannot deadlock a long
    /// pipelined group.
    fn wait_writable(&mut self) -> Result<(), ConnError> {
        let (readable, _) =
            self.wait(!self.eof && self.inbox.len() < INBOX_LIMIT, true, Deadline::after(self.timeout))?;
        if readable {
            self.pump_input()?;
        }
        Ok(())
    }

    /// Sends `data` (through TLS if it runs).
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), ConnError> {
        while !data.is_empty() {
            match &mut self.tls {
                Some(tls) => {
                    let n = tls.send(data).map_err(engine_failed)?;
                    data = &data[n..];
                    if n == 0 {
                        if !tls.wants().net_write {
                            // Nothing to drain and nothing taken: never spin.
                            return Err(ConnError::Closed("the TLS session does not take data".into()));
                        }
                        // The output is full: let it drain.
                        self.flush_tls()?;
                    }
                }
                None => match fd::write(&self.wfd, data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable()?,
                    Err(e) => return Err(closed(e)),
                },
            }
        }
        self.flush_tls()
    }

    /// Runs the TLS handshake within `limit`. Whatever plaintext was read
    /// ahead is thrown away first: it came before the handshake and cannot
    /// be trusted to be the server's. The client's last handshake message
    /// stays queued, to leave with the first command in one segment.
    pub fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> Result<(), ConnError> {
        let mut tls = ClientEngine::new_client(config, name, POLICY).map_err(ConnError::Tls)?;
        self.inbox.clear();
        let deadline = Deadline::after(limit);
        while tls.is_handshaking() {
            if tls.wants().net_write {
                match tls.write_net(&mut FdIo(self.wfd.as_fd())) {
                    Ok(Step::Blocked) => {
                        self.wait(false, true, deadline)?;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(engine_failed(e)),
                }
                continue;
            }
            match tls.read_net(&mut FdIo(self.rfd.as_fd())) {
                Ok(Step::Blocked) => {
                    self.wait(true, false, deadline)?;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tls.write_net(&mut FdIo(self.wfd.as_fd()));
                    return Err(engine_failed(e));
                }
            }
        }
        self.tls = Some(Box::new(tls));
        Ok(())
    }

    /// The negotiated protocol and cipher suite, once TLS runs.
    pub fn tls_summary(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let proto = tls.connection().protocol_version().and_then(chainmail_tls::protocol_name).unwrap_or("TLS");
        let suite = tls.connection().negotiated_cipher_suite().map(|s| chainmail_tls::cipher_suite_name(s.suite()));
        Some(format!("{proto} {}", suite.unwrap_or_default()))
    }

    /// Sends what is left (a `QUIT`) within `limit`, closes TLS with
    /// close_notify, and shuts the socket down. Errors are ignored: the
    /// outcome is already known.
    pub fn close(mut self, last: &[u8], limit: Duration) {
        let saved = self.timeout;
        self.timeout = limit.min(saved);
        if !last.is_empty() {
            let _ = self.write_all(last);
        }
        if let Some(tls) = &mut self.tls {
            let _ = tls.close_app_input();
        }
        let _ = self.flush_tls();
        let _ = chainmail_sys::net::shutdown_write(&self.wfd);
    }
}
