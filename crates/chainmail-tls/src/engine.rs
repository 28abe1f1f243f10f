//! The TLS engine of a UCSPI-TLS server, without the I/O.
//!
//! An [`Engine`] sits between the network (ciphertext) and the application
//! (plaintext, over two pipes). It never touches a descriptor, a clock or
//! the environment: the caller asks [`Engine::wants`] what to wait for,
//! waits, and hands the engine a `Read` or `Write` for the side that is
//! ready. The binary passes descriptors; the tests pass memory buffers fed
//! a few bytes at a time.
//!
//! Memory is bounded in both directions:
//!
//! * network to application: the network is not read while more than
//!   [`PLAINTEXT_INPUT_LIMIT`] bytes of decrypted plaintext wait for the
//!   application (rustls holds them, plus at most one partial record);
//! * application to network: the application is not read while a chunk
//!   of it waits for rustls, which accepts plaintext only while its TLS
//!   output buffer is under [`TLS_OUTPUT_LIMIT`].
//!
//! Each [`Engine::write_net`] is one `write_tls`, which hands all pending
//! records to a single `write_vectored` (one `writev(2)` for a descriptor):
//! a TLS flight never leaves in two segments.

use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::ServerConnection;
use thiserror::Error;

/// Bytes of application plaintext read at once: one full TLS record.
pub const APP_CHUNK: usize = 16 * 1024;
/// Bytes of ciphertext read from the network at once: about two full
/// records, so that a bulk transfer costs one `read(2)` per 32 KiB rather
/// than the 4 KiB rustls asks for at a time.
pub const NET_CHUNK: usize = 32 * 1024;
/// The size both read buffers start with. A buffer grows to its full size
/// the first time a read fills it: an interactive session (SMTP commands
/// and replies) never touches more than these few pages.
pub const SMALL_CHUNK: usize = 4 * 1024;
/// Encrypted output rustls may hold for the network before the engine
/// stops reading the application.
pub const TLS_OUTPUT_LIMIT: usize = 64 * 1024;
/// Decrypted input that may wait for the application before the engine
/// stops reading the network. This is rustls' own fixed limit: it refuses
/// to read more beyond it.
pub const PLAINTEXT_INPUT_LIMIT: usize = 16 * 1024;

/// How the ends of a session are handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// `-S`: when the application closes its end, send close_notify and
    /// end the session. Otherwise (`-s`) only half-close the network.
    pub close_notify_on_app_eof: bool,
    /// `-J`: a network EOF without close_notify is an error. Otherwise
    /// (`-j`) it ends the input like a close_notify does.
    pub require_close_notify: bool,
}

/// Why a session failed.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The TLS layer failed (bad record, handshake failure...). rustls has
    /// queued the alert to send: flush once with [`Engine::write_net`].
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    /// The peer sent something the record layer cannot frame.
    #[error("{0}")]
    Framing(io::Error),
    /// The network ended before the handshake completed.
    #[error("peer closed the connection during the handshake")]
    HandshakeEof,
    /// The network ended without close_notify, under [`Policy::require_close_notify`].
    #[error("peer closed the connection without close_notify")]
    UncleanEof,
    /// Reading the network failed.
    #[error("unable to read from the network: {0}")]
    NetRead(#[source] io::Error),
    /// Writing to the network failed.
    #[error("unable to write to the network: {0}")]
    NetWrite(#[source] io::Error),
    /// Reading the application's plaintext failed.
    #[error("unable to read from the application: {0}")]
    AppRead(#[source] io::Error),
}

impl EngineError {
    /// Whether this is a TLS-level failure (exit 98) rather than a failing
    /// system call (exit 111).
    pub fn is_tls(&self) -> bool {
        matches!(
            self,
            EngineError::Tls(_) | EngineError::Framing(_) | EngineError::HandshakeEof | EngineError::UncleanEof
        )
    }
}

/// The result of one engine step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes moved (possibly 0, when there was nothing to do).
    Moved(usize),
    /// The other side is not ready: wait for it.
    Blocked,
    /// That side reached its end (EOF, or it went away).
    Closed,
}

/// What the engine can use right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wants {
    /// Ciphertext from the network.
    pub net_read: bool,
    /// Room on the network for pending ciphertext.
    pub net_write: bool,
    /// Plaintext from the application.
    pub app_read: bool,
    /// Room in the application's pipe for decrypted plaintext.
    pub app_write: bool,
}

/// Network to application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbound {
    Open,
    /// The network input ended; what is left is delivered, then EOF.
    Closing,
    /// The application stopped reading; input is read and thrown away.
    Discarding,
    Done,
}

/// Application to network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    Open,
    /// The application sent EOF; what is left goes out first.
    Flushing,
    /// Everything is out: the caller should shut the network's write side.
    ShutdownDue,
    Done,
}

/// A server-side TLS session between a network and an application.
pub struct Engine {
    conn: ServerConnection,
    policy: Policy,
    /// Application plaintext rustls has not taken yet: `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Ciphertext read from the network that rustls has not taken yet:
    /// `net_buf[net_start..net_end]`.
    net_buf: Vec<u8>,
    net_start: usize,
    net_end: usize,
    /// Decrypted bytes rustls holds for the application.
    in_pending: usize,
    inbound: Inbound,
    outbound: Outbound,
    /// No more network input will come (EOF or close_notify seen).
    net_ended: bool,
    peer_closed: bool,
    close_notify_queued: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("handshaking", &self.conn.is_handshaking())
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .field("in_pending", &self.in_pending)
            .field("out_pending", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A new session waiting for the client's hello.
    pub fn new(config: Arc<ServerConfig>, policy: Policy) -> Result<Engine, rustls::Error> {
        let mut conn = ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(TLS_OUTPUT_LIMIT));
        Ok(Engine {
            conn,
            policy,
            buf: vec![0u8; SMALL_CHUNK],
            start: 0,
            end: 0,
            net_buf: vec![0u8; SMALL_CHUNK],
            net_start: 0,
            net_end: 0,
            in_pending: 0,
            inbound: Inbound::Open,
            outbound: Outbound::Open,
            net_ended: false,
            peer_closed: false,
            close_notify_queued: false,
        })
    }

    /// The rustls connection, for the negotiated parameters.
    pub fn connection(&self) -> &ServerConnection {
        &self.conn
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// What the engine can use now. The application is not read before
    /// the handshake completes.
    pub fn wants(&self) -> Wants {
        Wants {
            net_read: !self.net_ended
                && match self.inbound {
                    Inbound::Open => self.in_pending <= PLAINTEXT_INPUT_LIMIT,
                    Inbound::Discarding => true,
                    Inbound::Closing | Inbound::Done => false,
                },
            net_write: self.conn.wants_write() && self.outbound != Outbound::Done,
            app_read: self.outbound == Outbound::Open && self.start == self.end && !self.conn.is_handshaking(),
            app_write: matches!(self.inbound, Inbound::Open | Inbound::Closing) && self.in_pending > 0,
        }
    }

    /// Reads ciphertext once from the network (unless some is still
    /// buffered from an earlier read) and hands rustls as much of it as
    /// it takes.
    pub fn read_net(&mut self, rd: &mut dyn Read) -> Result<Step, EngineError> {
        if self.net_ended {
            return Ok(Step::Closed);
        }
        if self.net_start == self.net_end {
            match rd.read(&mut self.net_buf) {
                Ok(0) => return self.net_eof(),
                Ok(n) => {
                    self.net_start = 0;
                    self.net_end = n;
                    grow_if_filled(&mut self.net_buf, n, NET_CHUNK);
                }
                Err(e) => {
                    return match e.kind() {
                        io::ErrorKind::WouldBlock => Ok(Step::Blocked),
                        // A reset is an EOF that forgot its manners.
                        io::ErrorKind::ConnectionReset => self.net_eof(),
                        _ => Err(EngineError::NetRead(e)),
                    };
                }
            }
        }
        let fed = self.feed()?;
        Ok(Step::Moved(fed))
    }

    /// Whether ciphertext read earlier still waits for rustls (which took
    /// no more while the application lagged behind).
    pub fn has_buffered_net(&self) -> bool {
        self.net_start < self.net_end && !self.net_ended
    }

    /// Hands buffered ciphertext to rustls; returns how much it took.
    fn feed(&mut self) -> Result<usize, EngineError> {
        let mut fed = 0;
        while self.net_start < self.net_end && !self.net_ended && self.in_pending <= PLAINTEXT_INPUT_LIMIT {
            let mut src: &[u8] = &self.net_buf[self.net_start..self.net_end];
            match self.conn.read_tls(&mut src) {
                // Only after close_notify: the rest is ignored.
                Ok(0) => break,
                Ok(k) => {
                    self.net_start += k;
                    fed += k;
                    self.process()?;
                }
                // The record layer refuses what it cannot frame.
                Err(e) => return Err(EngineError::Framing(e)),
            }
        }
        if self.net_start == self.net_end {
            self.net_start = 0;
            self.net_end = 0;
        }
        Ok(fed)
    }

    fn net_eof(&mut self) -> Result<Step, EngineError> {
        self.net_ended = true;
        self.process()?;
        self.input_ended()?;
        Ok(Step::Closed)
    }

    fn process(&mut self) -> Result<(), EngineError> {
        let state = self.conn.process_new_packets()?;
        self.in_pending = state.plaintext_bytes_to_read();
        if self.inbound == Inbound::Discarding {
            self.discard_plaintext();
        }
        if state.peer_has_closed() && !self.peer_closed {
            self.peer_closed = true;
            self.net_ended = true;
            self.input_ended()?;
        }
        Ok(())
    }

    /// The network will send nothing more.
    fn input_ended(&mut self) -> Result<(), EngineError> {
        if self.conn.is_handshaking() {
            return Err(EngineError::HandshakeEof);
        }
        if !self.peer_closed && self.policy.require_close_notify {
            return Err(EngineError::UncleanEof);
        }
        self.inbound = match self.inbound {
            Inbound::Open | Inbound::Closing => Inbound::Closing,
            Inbound::Discarding | Inbound::Done => Inbound::Done,
        };
        self.settle_inbound();
        Ok(())
    }

    fn settle_inbound(&mut self) {
        if self.inbound == Inbound::Closing && self.in_pending == 0 {
            self.inbound = Inbound::Done;
        }
    }

    fn discard_plaintext(&mut self) {
        loop {
            let n = match self.conn.reader().into_first_chunk() {
                Ok(chunk) => chunk.len(),
                Err(_) => 0,
            };
            if n == 0 {
                break;
            }
            self.conn.reader().consume(n);
        }
        self.in_pending = 0;
    }

    /// Delivers decrypted plaintext to the application, one write per
    /// buffered record, until it is all out or the application's pipe is
    /// full. A write error means the application is gone.
    pub fn write_app(&mut self, wr: &mut dyn Write) -> Result<Step, EngineError> {
        if !matches!(self.inbound, Inbound::Open | Inbound::Closing) {
            return Ok(Step::Closed);
        }
        let mut moved = 0;
        while self.in_pending > 0 {
            let chunk = match self.conn.reader().into_first_chunk() {
                Ok(chunk) if !chunk.is_empty() => chunk,
                _ => {
                    self.in_pending = 0;
                    break;
                }
            };
            let len = chunk.len();
            match wr.write(chunk) {
                Ok(n) if n > 0 => {
                    self.conn.reader().consume(n);
                    self.in_pending = self.in_pending.saturating_sub(n);
                    moved += n;
                    if n < len {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(_) | Err(_) => {
                    self.app_gone();
                    return Ok(Step::Closed);
                }
            }
        }
        self.settle_inbound();
        Ok(if moved > 0 { Step::Moved(moved) } else { Step::Blocked })
    }

    /// The application no longer reads (its pipe broke): decrypted input
    /// is thrown away from now on, and the network is still read so that
    /// the session can end without a reset.
    pub fn app_gone(&mut self) {
        if matches!(self.inbound, Inbound::Open | Inbound::Closing) {
            self.inbound = if self.net_ended { Inbound::Done } else { Inbound::Discarding };
            self.discard_plaintext();
        }
    }

    /// Queues `data` for the peer as if the application had written it,
    /// ahead of what the application writes next: the bytes a proxy still
    /// held when it handed its descriptors over. Only after the handshake.
    pub fn queue_app_data(&mut self, data: &[u8]) {
        if data.is_empty() || self.outbound != Outbound::Open {
            return;
        }
        let mut pending = self.buf[self.start..self.end].to_vec();
        pending.extend_from_slice(data);
        if self.buf.len() < pending.len() {
            self.buf.resize(pending.len(), 0);
        }
        self.buf[..pending.len()].copy_from_slice(&pending);
        self.start = 0;
        self.end = pending.len();
        self.push_out();
    }

    /// Reads plaintext once from the application and encrypts what rustls
    /// accepts; the rest waits in the engine, and the application is not
    /// read again until it has gone.
    pub fn read_app(&mut self, rd: &mut dyn Read) -> Result<Step, EngineError> {
        if self.outbound != Outbound::Open {
            return Ok(Step::Closed);
        }
        if self.start != self.end || self.conn.is_handshaking() {
            return Ok(Step::Blocked);
        }
        match rd.read(&mut self.buf) {
            Ok(0) => {
                self.outbound = Outbound::Flushing;
                self.advance_outbound();
                Ok(Step::Closed)
            }
            Ok(n) => {
                self.start = 0;
                self.end = n;
                grow_if_filled(&mut self.buf, n, APP_CHUNK);
                self.push_out();
                Ok(Step::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) => Err(EngineError::AppRead(e)),
        }
    }

    fn push_out(&mut self) {
        while self.start < self.end {
            match self.conn.writer().write(&self.buf[self.start..self.end]) {
                Ok(n) if n > 0 => self.start += n,
                _ => break,
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn advance_outbound(&mut self) {
        if self.outbound != Outbound::Flushing {
            return;
        }
        self.push_out();
        if self.start != self.end {
            return;
        }
        if self.policy.close_notify_on_app_eof && !self.close_notify_queued {
            self.conn.send_close_notify();
            self.close_notify_queued = true;
        }
        if !self.conn.wants_write() {
            self.outbound = Outbound::ShutdownDue;
        }
    }

    /// Writes pending ciphertext to the network: one `write_tls`, hence
    /// one `write_vectored` of every pending record.
    pub fn write_net(&mut self, wr: &mut dyn Write) -> Result<Step, EngineError> {
        if !self.conn.wants_write() {
            self.advance_outbound();
            return Ok(Step::Moved(0));
        }
        match self.conn.write_tls(wr) {
            Ok(n) => {
                self.push_out();
                self.advance_outbound();
                Ok(Step::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) => Err(EngineError::NetWrite(e)),
        }
    }

    /// Whether the application's input pipe should stay open: false once
    /// the network input has ended and everything was delivered, or the
    /// application went away. The caller then closes the pipe, and the
    /// application reads EOF.
    pub fn app_output_open(&self) -> bool {
        matches!(self.inbound, Inbound::Open | Inbound::Closing)
    }

    /// Whether the application has sent EOF (its pipe can be closed).
    pub fn app_input_ended(&self) -> bool {
        self.outbound != Outbound::Open
    }

    /// Whether everything the application sent is out, so that the caller
    /// should now shut down the network's write side (and then call
    /// [`Engine::net_shutdown_done`]).
    pub fn wants_net_shutdown(&self) -> bool {
        self.outbound == Outbound::ShutdownDue
    }

    /// Whether everything the application sent has left and the
    /// network's write side is shut down: from here on, nothing the peer
    /// does can lose data of ours.
    pub fn output_done(&self) -> bool {
        self.outbound == Outbound::Done
    }

    /// Records that the network's write side is shut down.
    pub fn net_shutdown_done(&mut self) {
        self.outbound = Outbound::Done;
    }

    /// Whether the application sent EOF and its data still waits to go
    /// out (the caller bounds how long this may take).
    pub fn is_flushing(&self) -> bool {
        matches!(self.outbound, Outbound::Flushing | Outbound::ShutdownDue)
    }

    /// Whether the session is over: the output is shut down, and the input
    /// ended or nobody reads it any more (or `-S` broke the session).
    pub fn is_finished(&self) -> bool {
        self.outbound == Outbound::Done
            && (matches!(self.inbound, Inbound::Done | Inbound::Discarding) || self.policy.close_notify_on_app_eof)
    }

    /// Whether the network input ended (EOF or close_notify).
    pub fn net_input_ended(&self) -> bool {
        self.net_ended
    }

    /// Whether the peer sent close_notify.
    pub fn peer_sent_close_notify(&self) -> bool {
        self.peer_closed
    }
}

/// Grows `buf` to `full` bytes once a read of `n` bytes filled it.
fn grow_if_filled(buf: &mut Vec<u8>, n: usize, full: usize) {
    if n == buf.len() && buf.len() < full {
        buf.resize(full, 0);
    }
}

#[cfg(test)]
mod tests;
