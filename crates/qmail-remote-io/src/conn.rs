//! The connection to the server: plaintext or TLS over a non-blocking
//! socket, every wait bounded by the per-operation timeout
//! (`timeoutremote`, as stock qmail applies it to each read and write).

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use chainmail_sys::fd::{self, FdIo};
use chainmail_sys::poll::{self, Deadline};
use nix::poll::{PollFd, PollFlags};
use rustls::ClientConnection;
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
/// Plaintext rustls may hold for sending.
const TLS_BUFFER: usize = 64 * 1024;

/// A connection to the server.
#[derive(Debug)]
pub struct Conn {
    rfd: OwnedFd,
    wfd: OwnedFd,
    tls: Option<Box<ClientConnection>>,
    /// Plaintext received and not yet handed out.
    inbox: Vec<u8>,
    eof: bool,
    timeout: Duration,
}

fn closed(e: io::Error) -> ConnError {
    ConnError::Closed(e.to_string())
}

impl Conn {
    /// A connection on `rfd`/`wfd` (non-blocking from now on).
    pub fn new(rfd: OwnedFd, wfd: OwnedFd, timeout: Duration) -> io::Result<Conn> {
        fd::set_nonblocking(&rfd, true)?;
        fd::set_nonblocking(&wfd, true)?;
        chainmail_sys::net::set_nodelay(&wfd);
        Ok(Conn { rfd, wfd, tls: None, inbox: Vec::new(), eof: false, timeout })
    }

    fn wait(&self, read: bool, write: bool, deadline: Deadline) -> Result<(bool, bool), ConnError> {
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(2);
        if read {
            fds.push(PollFd::new(self.rfd.as_fd(), PollFlags::POLLIN));
        }
        if write {
            fds.push(PollFd::new(self.wfd.as_fd(), PollFlags::POLLOUT));
        }
        match poll::wait(&mut fds, deadline) {
            Ok(0) => Err(ConnError::Timeout),
            Ok(_) => {
                let ready = |i: usize| fds.get(i).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
                Ok(if read && write {
                    (ready(0), ready(1))
                } else if read {
                    (ready(0), false)
                } else {
                    (false, ready(0))
                })
            }
            Err(e) => Err(closed(e)),
        }
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
                match tls.read_tls(&mut FdIo(self.rfd.as_fd())) {
                    Ok(0) => self.eof = true,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) => return Err(closed(e)),
                }
                if let Err(e) = tls.process_new_packets() {
                    // Send the alert rustls queued, if the socket takes it.
                    let _ = tls.write_tls(&mut FdIo(self.wfd.as_fd()));
                    return Err(ConnError::Tls(e));
                }
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => {
                            self.eof = true;
                            break;
                        }
                        Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // EOF without close_notify: an ordinary EOF for SMTP,
                        // whose replies say themselves where they end.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            self.eof = true;
                            break;
                        }
                        Err(e) => return Err(closed(e)),
                    }
                }
                Ok(true)
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

    /// Writes TLS output pending in rustls, waiting as needed.
    fn flush_tls(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(tls) = &mut self.tls else { return Ok(()) };
            if !tls.wants_write() {
                return Ok(());
            }
            match tls.write_tls(&mut FdIo(self.wfd.as_fd())) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable()?,
                Err(e) => return Err(closed(e)),
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
                    let n = tls.writer().write(data).map_err(closed)?;
                    data = &data[n..];
                    self.flush_tls()?;
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
        let mut tls = ClientConnection::new(config, name).map_err(ConnError::Tls)?;
        tls.set_buffer_limit(Some(TLS_BUFFER));
        self.inbox.clear();
        let deadline = Deadline::after(limit);
        while tls.is_handshaking() {
            if tls.wants_write() {
                match tls.write_tls(&mut FdIo(self.wfd.as_fd())) {
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait(false, true, deadline)?;
                        continue;
                    }
                    Err(e) => return Err(closed(e)),
                }
            }
            match tls.read_tls(&mut FdIo(self.rfd.as_fd())) {
                Ok(0) => return Err(ConnError::Closed("connection closed during the TLS handshake".into())),
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        let _ = tls.write_tls(&mut FdIo(self.wfd.as_fd()));
                        return Err(ConnError::Tls(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(true, false, deadline)?;
                }
                Err(e) => return Err(closed(e)),
            }
        }
        self.tls = Some(Box::new(tls));
        Ok(())
    }

    /// The negotiated protocol and cipher suite, once TLS runs.
    pub fn tls_summary(&self) -> Option<String> {
        let tls = self.tls.as_ref()?;
        let proto = tls.protocol_version().and_then(chainmail_tls::protocol_name).unwrap_or("TLS");
        let suite = tls.negotiated_cipher_suite().map(|s| chainmail_tls::cipher_suite_name(s.suite()));
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
            tls.send_close_notify();
        }
        let _ = self.flush_tls();
        let _ = chainmail_sys::net::shutdown_write(&self.wfd);
    }
}
