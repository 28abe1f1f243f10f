//! The TLS engine of chainmail, both sides, without the I/O.
//!
//! An [`Engine`] sits between the network (ciphertext) and an application
//! (plaintext). It never touches a descriptor, a clock or the
//! environment: the caller asks [`Engine::wants`] what to wait for, waits,
//! and hands the engine a `Read` or `Write` for the side that is ready.
//! ucspi-tlsd passes descriptors ([`ServerEngine`]); qmail-remote-io passes
//! its socket and in-memory buffers ([`ClientEngine`]); the tests pass
//! memory buffers fed a few bytes at a time.
//!
//! It runs on rustls' unbuffered API: ciphertext is read from the network
//! straight into the engine's buffer and decrypted there, and plaintext is
//! encrypted straight into the buffer that goes to the network. A
//! decrypted record is written to the application from rustls' own copy
//! when the application can take it; only what the application leaves is
//! copied aside.
//!
//! Memory is bounded in both directions:
//!
//! * network to application: the network is not read while more than
//!   [`PLAINTEXT_INPUT_LIMIT`] bytes of decrypted plaintext wait for the
//!   application, nor while the ciphertext buffer ([`NET_CHUNK`]) is full;
//! * application to network: the application is not read while a chunk
//!   of it waits to be encrypted, nor while [`TLS_OUTPUT_LIMIT`] bytes of
//!   ciphertext wait for the network.
//!
//! The buffers start empty, take [`SMALL_CHUNK`] on first use, grow to
//! their full size only when a read fills them, and [`Engine::trim`] gives
//! the memory of empty ones back: an idle session holds a few hundred
//! bytes of buffers.
//!
//! Each [`Engine::write_net`] is one `write` of everything pending: a TLS
//! flight never leaves in two segments.

use std::io::{self, Read, Write};
use std::ops::DerefMut;
use std::sync::{Arc, OnceLock};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConnectionData, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
    UnbufferedConnectionCommon, UnbufferedStatus, WriteTraffic,
};
use rustls::{ClientConfig, CommonState, ServerConfig};
use thiserror::Error;

/// Bytes of application plaintext read at once: one full TLS record.
pub const APP_CHUNK: usize = 16 * 1024;
/// Bytes of ciphertext read from the network at once in bulk: about two
/// full records, so that a bulk transfer costs one `read(2)` per 32 KiB.
/// The buffer holds at most this, and the partial record left over from
/// the read before.
pub const NET_CHUNK: usize = 32 * 1024;
/// The size a buffer takes on first use. A buffer grows to its full size
/// the first time a read fills it: an interactive session (SMTP commands
/// and replies) never touches more than these few pages.
pub const SMALL_CHUNK: usize = 4 * 1024;
/// Encrypted output that may wait for the network before the engine
/// stops reading the application.
pub const TLS_OUTPUT_LIMIT: usize = 64 * 1024;
/// Decrypted input that may wait for the application before the engine
/// stops reading the network.
pub const PLAINTEXT_INPUT_LIMIT: usize = 16 * 1024;
/// What the network buffer may grow to during the handshake: a
/// handshake message (a certificate chain) may span several records, and
/// rustls keeps its parts in the buffer until it is whole. rustls refuses
/// handshake messages over 64 KiB.
const HANDSHAKE_NET_LIMIT: usize = 64 * 1024 + NET_CHUNK;
/// The largest plaintext of one record.
const MAX_FRAGMENT: usize = 16 * 1024;
/// The largest record on the wire: header and the most a TLS 1.2
/// ciphertext may add to the plaintext.
const MAX_RECORD: usize = 5 + MAX_FRAGMENT + 2048;
/// Room kept for what encryption adds to a record (header, nonce, tag,
/// content type): 29 bytes at most with the suites rustls offers.
const RECORD_OVERHEAD: usize = 64;

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
    /// The TLS layer failed (bad record, handshake failure...). The alert
    /// is queued: flush once with [`Engine::write_net`].
    #[error("{0}")]
    Tls(#[from] rustls::Error),
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
    /// Plaintext was offered after the session failed or its output was
    /// closed.
    #[error("the TLS session is closed")]
    SessionClosed,
}

impl EngineError {
    /// Whether this is a TLS-level failure (exit 98) rather than a failing
    /// system call (exit 111).
    pub fn is_tls(&self) -> bool {
        matches!(self, EngineError::Tls(_) | EngineError::HandshakeEof | EngineError::UncleanEof)
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

/// One side of a rustls unbuffered connection: what the engine needs of
/// [`UnbufferedServerConnection`] and [`UnbufferedClientConnection`].
pub trait Side: DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> {
    /// rustls' per-side connection data.
    type Data;
    /// `process_tls_records` of this side.
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
}

/// A byte buffer used from `start` to `end`, allocated on first use.
#[derive(Debug, Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn pending_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Free space after `end`, at least `want` bytes if the buffer may
    /// grow to `max` for it (moving the pending bytes to the front first).
    fn spare(&mut self, want: usize, max: usize) -> &mut [u8] {
        if self.data.len() - self.end < want {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.data.len() - self.end < want {
                let size = (self.end + want).max(self.data.len() * 2).max(SMALL_CHUNK).min(max.max(self.end + want));
                self.data.resize(size, 0);
            }
        }
        &mut self.data[self.end..]
    }

    fn commit(&mut self, n: usize) {
        self.end += n;
    }

    fn extend(&mut self, bytes: &[u8]) {
        let room = self.spare(bytes.len(), usize::MAX);
        room[..bytes.len()].copy_from_slice(bytes);
        self.commit(bytes.len());
    }

    /// Gives the memory back if nothing is pending.
    fn trim(&mut self) {
        if self.is_empty() {
            *self = Buf::default();
        }
    }
}

/// Where decrypted records go while rustls is driven.
enum Sink<'a> {
    /// Leave them in rustls (it stops at the first).
    Hold,
    /// Copy them aside: rustls must get past them to encrypt.
    Copy,
    /// Write them to the application.
    Deliver(&'a mut dyn Write),
}

/// A TLS session between a network and an application: the server side
/// ([`ServerEngine`]) or the client side ([`ClientEngine`]).
pub struct Engine<S: Side> {
    conn: S,
    policy: Policy,
    /// Ciphertext from the network rustls has not consumed.
    net_in: Buf,
    /// Decrypted plaintext the application has not taken, beyond the
    /// record rustls may hold.
    plain: Buf,
    /// Application plaintext not encrypted yet.
    app_in: Buf,
    /// Ciphertext for the network.
    net_out: Buf,
    /// rustls holds a decrypted record for the application.
    record_held: bool,
    /// The application's last write would have blocked.
    app_blocked: bool,
    inbound: Inbound,
    outbound: Outbound,
    /// No more network input will come (EOF or close_notify seen).
    net_ended: bool,
    peer_closed: bool,
    close_notify_queued: bool,
    /// The session failed; rustls will not process anything more.
    failed: bool,
    /// The name the client asked for (server side; rustls' unbuffered
    /// server does not keep it, the certificate resolver records it).
    server_name: Option<Arc<OnceLock<String>>>,
}

/// The server side of a session.
pub type ServerEngine = Engine<UnbufferedServerConnection>;
/// The client side of a session.
pub type ClientEngine = Engine<UnbufferedClientConnection>;

impl<S: Side> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("handshaking", &self.conn.is_handshaking())
            .field("inbound", &self.inbound)
            .field("outbound", &self.outbound)
            .field("net_in", &self.net_in.len())
            .field("plain", &self.plain.len())
            .field("record_held", &self.record_held)
            .field("app_in", &self.app_in.len())
            .field("net_out", &self.net_out.len())
            .finish_non_exhaustive()
    }
}

/// Records the server name of the client's hello on its way to the
/// real certificate resolver.
#[derive(Debug)]
struct RecordServerName {
    inner: Arc<dyn ResolvesServerCert>,
    seen: Arc<OnceLock<String>>,
}

impl ResolvesServerCert for RecordServerName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let _ = self.seen.set(name.to_owned());
        }
        self.inner.resolve(hello)
    }
}

impl Engine<UnbufferedServerConnection> {
    /// A new server session waiting for the client's hello.
    pub fn new(config: Arc<ServerConfig>, policy: Policy) -> Result<ServerEngine, rustls::Error> {
        let seen = Arc::new(OnceLock::new());
        let mut own = (*config).clone();
        own.cert_resolver = Arc::new(RecordServerName { inner: config.cert_resolver.clone(), seen: seen.clone() });
        let conn = UnbufferedServerConnection::new(Arc::new(own))?;
        let mut engine = Engine::with_connection(conn, policy);
        engine.server_name = Some(seen);
        Ok(engine)
    }

    /// The server name the client sent (SNI), once its hello is read.
    pub fn server_name(&self) -> Option<&str> {
        self.server_name.as_ref().and_then(|s| s.get()).map(String::as_str)
    }
}

impl Engine<UnbufferedClientConnection> {
    /// A new client session; its hello is ready to be written.
    pub fn new_client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        policy: Policy,
    ) -> Result<ClientEngine, rustls::Error> {
        let conn = UnbufferedClientConnection::new(config, name)?;
        let mut engine = Engine::with_connection(conn, policy);
        // The hello.
        engine.drive(Sink::Hold).map_err(|e| match e {
            EngineError::Tls(e) => e,
            other => rustls::Error::General(other.to_string()),
        })?;
        Ok(engine)
    }
}

impl<S: Side> Engine<S> {
    fn with_connection(conn: S, policy: Policy) -> Engine<S> {
        Engine {
            conn,
            policy,
            net_in: Buf::default(),
            plain: Buf::default(),
            app_in: Buf::default(),
            net_out: Buf::default(),
            record_held: false,
            app_blocked: false,
            inbound: Inbound::Open,
            outbound: Outbound::Open,
            net_ended: false,
            peer_closed: false,
            close_notify_queued: false,
            failed: false,
            server_name: None,
        }
    }

    /// The negotiated parameters and the peer's certificates.
    pub fn connection(&self) -> &CommonState {
        &self.conn
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// What the engine can use now. The application is not read before
    /// the handshake completes.
    pub fn wants(&self) -> Wants {
        // A record held in rustls stops the reading: it goes to the
        // application first (measured: reading on meanwhile made twice the
        // reads, of half the size).
        let plaintext_waiting = self.plain.len() + if self.record_held { MAX_FRAGMENT + 1 } else { 0 };
        let handshaking = self.conn.is_handshaking();
        Wants {
            net_read: !self.net_ended
                && !self.failed
                && self.net_in.len() < self.net_in_limit()
                && match self.inbound {
                    Inbound::Open => plaintext_waiting <= PLAINTEXT_INPUT_LIMIT,
                    Inbound::Discarding => true,
                    Inbound::Closing | Inbound::Done => false,
                },
            net_write: !self.net_out.is_empty() && self.outbound != Outbound::Done,
            app_read: self.outbound == Outbound::Open
                && self.app_in.is_empty()
                && self.net_out.len() < TLS_OUTPUT_LIMIT
                && !handshaking
                && !self.failed,
            app_write: matches!(self.inbound, Inbound::Open | Inbound::Closing)
                && (!self.plain.is_empty() || self.record_held),
        }
    }

    /// Reads ciphertext once from the network into the engine's buffer
    /// and processes what it completes.
    pub fn read_net(&mut self, rd: &mut dyn Read) -> Result<Step, EngineError> {
        if self.net_ended || self.failed {
            return Ok(Step::Closed);
        }
        let limit = self.net_in_limit();
        if self.net_in.len() >= limit {
            return Ok(Step::Blocked);
        }
        // In bulk, every read has room for a whole chunk beside the partial
        // record that waits for its end: reads of less than a chunk cost
        // system calls (measured: twice the reads, a fifth more CPU).
        let want = if self.net_in.data.len() >= NET_CHUNK { NET_CHUNK.min(limit - self.net_in.len()) } else { 1 };
        let room = self.net_in.spare(want, limit + MAX_RECORD);
        let room_len = room.len();
        match rd.read(room) {
            Ok(0) => self.net_eof(),
            Ok(n) => {
                self.net_in.commit(n);
                if n == room_len && self.net_in.data.len() < NET_CHUNK {
                    // A filled buffer: bulk is coming.
                    self.net_in.data.resize(NET_CHUNK, 0);
                }
                self.drive_idle()?;
                Ok(Step::Moved(n))
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => Ok(Step::Blocked),
                io::ErrorKind::Interrupted => Ok(Step::Moved(0)),
                // A reset is an EOF that forgot its manners.
                io::ErrorKind::ConnectionReset => self.net_eof(),
                _ => Err(EngineError::NetRead(e)),
            },
        }
    }

    fn net_in_limit(&self) -> usize {
        if self.conn.is_handshaking() { HANDSHAKE_NET_LIMIT } else { NET_CHUNK }
    }

    fn net_eof(&mut self) -> Result<Step, EngineError> {
        self.net_ended = true;
        self.input_ended()?;
        Ok(Step::Closed)
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
        if self.inbound == Inbound::Closing && self.plain.is_empty() && !self.record_held {
            self.inbound = Inbound::Done;
        }
    }

    /// Drives rustls without an application to deliver to: records stay
    /// in rustls unless it must get past them to encrypt what waits.
    fn drive_idle(&mut self) -> Result<(), EngineError> {
        let must_encrypt = !self.app_in.is_empty() || self.close_notify_due();
        self.drive(if must_encrypt { Sink::Copy } else { Sink::Hold })
    }

    fn close_notify_due(&self) -> bool {
        self.outbound == Outbound::Flushing
            && self.policy.close_notify_on_app_eof
            && !self.close_notify_queued
            && self.app_in.is_empty()
    }

    /// Runs rustls until it needs the network or the application: encodes
    /// handshake messages, encrypts waiting plaintext, and sends decrypted
    /// records to `sink`.
    fn drive(&mut self, mut sink: Sink<'_>) -> Result<(), EngineError> {
        if self.failed {
            return Ok(());
        }
        loop {
            let close_notify_due = self.close_notify_due();
            let Engine { conn, net_in, plain, app_in, net_out, record_held, app_blocked, inbound, .. } = self;
            let UnbufferedStatus { mut discard, state } = conn.process(net_in.pending_mut());
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    net_in.consume(discard);
                    return Err(self.fail(e));
                }
            };
            let mut again = true;
            let mut close_notify_sent = false;
            let mut peer_closed = false;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    if matches!(sink, Sink::Hold) && matches!(inbound, Inbound::Open | Inbound::Closing) {
                        *record_held = true;
                        again = false;
                    } else {
                        *record_held = false;
                        match take_records(&mut traffic, &mut sink, plain, app_blocked, inbound) {
                            Ok(extra) => discard += extra,
                            Err(e) => {
                                drop(traffic);
                                net_in.consume(discard);
                                return Err(self.fail(e));
                            }
                        }
                    }
                }
                ConnectionState::EncodeTlsData(mut data) => encode(&mut data, net_out),
                ConnectionState::TransmitTlsData(mut transmit) => {
                    // The records are in `net_out`, in order, and leave
                    // with the next write: rustls may go on.
                    if let Some(mut traffic) = transmit.may_encrypt_app_data() {
                        encrypt(&mut traffic, app_in, net_out)?;
                    }
                    transmit.done();
                }
                ConnectionState::WriteTraffic(mut traffic) => {
                    encrypt(&mut traffic, app_in, net_out)?;
                    if close_notify_due && app_in.is_empty() {
                        let room = net_out.spare(RECORD_OVERHEAD, usize::MAX);
                        // If it does not fit, it stays in rustls: the next round
                        // encodes it.
                        if let Ok(n) = traffic.queue_close_notify(room) {
                            net_out.commit(n);
                        }
                        close_notify_sent = true;
                    } else {
                        again = false;
                    }
                }
                ConnectionState::PeerClosed => peer_closed = true,
                ConnectionState::ReadEarlyData(_) => {
                    // Early data is never accepted (max_early_data_size 0).
                    net_in.consume(discard);
                    return Err(self.fail(rustls::Error::General("unexpected early data".into())));
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => again = false,
                _ => again = false,
            }
            net_in.consume(discard);
            if close_notify_sent {
                self.close_notify_queued = true;
            }
            if peer_closed && !self.peer_closed {
                self.peer_closed = true;
                self.net_ended = true;
                self.net_in = Buf::default();
                self.input_ended()?;
            }
            if !again {
                break;
            }
        }
        self.settle_inbound();
        Ok(())
    }

    /// Records a failure, and encodes the alert rustls queued for it.
    ///
    /// rustls hands out queued records before it looks at the input
    /// again, so one more round yields the alert (if there is one) without
    /// processing anything: a second round would run into the failing
    /// record again.
    fn fail(&mut self, e: rustls::Error) -> EngineError {
        self.failed = true;
        let UnbufferedStatus { state, .. } = self.conn.process(self.net_in.pending_mut());
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = state {
            encode(&mut data, &mut self.net_out);
        }
        EngineError::Tls(e)
    }

    /// Delivers decrypted plaintext to the application until it is all
    /// out or the application's pipe is full. A write error means the
    /// application is gone.
    pub fn write_app(&mut self, wr: &mut dyn Write) -> Result<Step, EngineError> {
        if !matches!(self.inbound, Inbound::Open | Inbound::Closing) {
            return Ok(Step::Closed);
        }
        self.app_blocked = false;
        let mut app = Counting { inner: wr, count: 0 };
        while !self.plain.is_empty() && !self.app_blocked && self.inbound != Inbound::Discarding {
            let n = deliver(&mut app, self.plain.pending(), &mut self.app_blocked, &mut self.inbound);
            self.plain.consume(n);
        }
        if self.plain.is_empty() && !self.app_blocked && self.record_held && self.inbound != Inbound::Discarding {
            self.drive(Sink::Deliver(&mut app))?;
        }
        if self.inbound == Inbound::Discarding {
            self.app_gone();
            return Ok(Step::Closed);
        }
        self.settle_inbound();
        Ok(if app.count > 0 { Step::Moved(app.count) } else { Step::Blocked })
    }

    /// The application no longer reads (its pipe broke): decrypted input
    /// is thrown away from now on, and the network is still read so that
    /// the session can end without a reset.
    pub fn app_gone(&mut self) {
        if matches!(self.inbound, Inbound::Open | Inbound::Closing | Inbound::Discarding) {
            self.inbound = if self.net_ended { Inbound::Done } else { Inbound::Discarding };
            self.plain = Buf::default();
            if self.record_held {
                self.record_held = false;
                // Records are dropped as they come (Discarding).
                let _ = self.drive(Sink::Copy);
            }
        }
    }

    /// Queues `data` for the peer as if the application had written it,
    /// ahead of what the application writes next: the bytes a proxy still
    /// held when it handed its descriptors over. Only after the handshake.
    pub fn queue_app_data(&mut self, data: &[u8]) {
        if data.is_empty() || self.outbound != Outbound::Open {
            return;
        }
        self.app_in.extend(data);
        let _ = self.drive_idle();
    }

    /// Reads plaintext once from the application and encrypts what the
    /// output buffer takes; the rest waits in the engine, and the
    /// application is not read again until it has gone.
    pub fn read_app(&mut self, rd: &mut dyn Read) -> Result<Step, EngineError> {
        if self.outbound != Outbound::Open {
            return Ok(Step::Closed);
        }
        if !self.app_in.is_empty() || self.conn.is_handshaking() || self.failed {
            return Ok(Step::Blocked);
        }
        let want = if self.app_in.data.len() >= APP_CHUNK { APP_CHUNK } else { 1 };
        let room = self.app_in.spare(want, APP_CHUNK);
        let room_len = room.len();
        match rd.read(room) {
            Ok(0) => {
                self.outbound = Outbound::Flushing;
                self.advance_outbound()?;
                Ok(Step::Closed)
            }
            Ok(n) => {
                self.app_in.commit(n);
                if n == room_len && self.app_in.data.len() < APP_CHUNK {
                    self.app_in.data.resize(APP_CHUNK, 0);
                }
                self.drive_idle()?;
                Ok(Step::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Moved(0)),
            Err(e) => Err(EngineError::AppRead(e)),
        }
    }

    /// Takes plaintext from an application in the same process (a
    /// client), at most one record's worth, and encrypts what the output
    /// buffer takes. Returns how many bytes were taken: 0 while earlier
    /// plaintext still waits, or before the handshake completed; an error
    /// once the session failed or the application's side was closed.
    pub fn send(&mut self, data: &[u8]) -> Result<usize, EngineError> {
        if self.outbound != Outbound::Open || self.failed {
            return Err(EngineError::SessionClosed);
        }
        if !self.app_in.is_empty() || self.conn.is_handshaking() {
            return Ok(0);
        }
        let take = data.len().min(APP_CHUNK);
        self.app_in.extend(&data[..take]);
        self.drive_idle()?;
        Ok(take)
    }

    /// The application will send nothing more (an in-process application:
    /// what `read_app` does on EOF).
    pub fn close_app_input(&mut self) -> Result<(), EngineError> {
        if self.outbound == Outbound::Open {
            self.outbound = Outbound::Flushing;
            self.advance_outbound()?;
        }
        Ok(())
    }

    fn advance_outbound(&mut self) -> Result<(), EngineError> {
        if self.outbound != Outbound::Flushing {
            return Ok(());
        }
        if !self.app_in.is_empty() || self.close_notify_due() {
            self.drive_idle()?;
        }
        if self.app_in.is_empty() && !self.close_notify_due() && self.net_out.is_empty() {
            self.outbound = Outbound::ShutdownDue;
        }
        Ok(())
    }

    /// Writes pending ciphertext to the network: one `write` of all of it.
    pub fn write_net(&mut self, wr: &mut dyn Write) -> Result<Step, EngineError> {
        if self.net_out.is_empty() {
            if !self.failed {
                self.advance_outbound()?;
            }
            return Ok(Step::Moved(0));
        }
        match wr.write(self.net_out.pending()) {
            Ok(n) => {
                self.net_out.consume(n);
                if !self.failed {
                    if !self.app_in.is_empty() {
                        self.drive_idle()?;
                    }
                    self.advance_outbound()?;
                }
                Ok(Step::Moved(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Step::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Step::Moved(0)),
            Err(e) => Err(EngineError::NetWrite(e)),
        }
    }

    /// Gives back the memory of the buffers that are empty: for a session
    /// that has been idle a while.
    pub fn trim(&mut self) {
        self.net_in.trim();
        self.plain.trim();
        self.app_in.trim();
        self.net_out.trim();
    }

    /// Bytes of buffer the engine holds (not counting rustls' own state).
    pub fn buffer_capacity(&self) -> usize {
        self.net_in.data.len() + self.plain.data.len() + self.app_in.data.len() + self.net_out.data.len()
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

/// A writer that counts what it passes on.
struct Counting<'a> {
    inner: &'a mut dyn Write,
    count: usize,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `bytes` to the application until it is all out or the
/// application blocks; a failing write means it is gone (`Discarding`).
/// Returns how much it took.
fn deliver(app: &mut dyn Write, bytes: &[u8], blocked: &mut bool, inbound: &mut Inbound) -> usize {
    let mut done = 0;
    while done < bytes.len() {
        match app.write(&bytes[done..]) {
            Ok(n) if n > 0 => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *blocked = true;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(_) | Err(_) => {
                *inbound = Inbound::Discarding;
                break;
            }
        }
    }
    done
}

/// Takes the decrypted records rustls offers: writes them to the
/// application (`Sink::Deliver`), copies aside into `plain` what it does
/// not take (or everything, `Sink::Copy`), and drops them when nobody
/// reads any more. Once the application is full, the sink becomes
/// `Hold` and the rest stays in rustls. Returns the bytes of input the
/// records add to the discard.
fn take_records<D>(
    traffic: &mut ReadTraffic<'_, '_, D>,
    sink: &mut Sink<'_>,
    plain: &mut Buf,
    app_blocked: &mut bool,
    inbound: &mut Inbound,
) -> Result<usize, rustls::Error> {
    let mut discard = 0;
    let discarding = !matches!(inbound, Inbound::Open | Inbound::Closing);
    while let Some(record) = traffic.next_record() {
        let record = record?;
        discard += record.discard;
        if discarding {
            continue;
        }
        let mut done = 0;
        if let Sink::Deliver(app) = sink {
            if plain.is_empty() && !*app_blocked {
                done = deliver(&mut **app, record.payload, app_blocked, inbound);
            }
        }
        if *inbound == Inbound::Discarding {
            // The application went away while we wrote.
            continue;
        }
        if done < record.payload.len() {
            plain.extend(&record.payload[done..]);
        }
        if *app_blocked && matches!(sink, Sink::Deliver(_)) {
            *sink = Sink::Hold;
            break;
        }
    }
    Ok(discard)
}

/// Encodes a handshake record rustls hands out into `net_out`, growing
/// it as needed.
fn encode<D>(data: &mut EncodeTlsData<'_, D>, net_out: &mut Buf) {
    let mut want = 256;
    loop {
        match data.encode(net_out.spare(want, usize::MAX)) {
            Ok(n) => net_out.commit(n),
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) if required_size > want => {
                want = required_size;
                continue;
            }
            Err(_) => {}
        }
        return;
    }
}

/// Encrypts what `app_in` holds into `net_out`, whole records of up to
/// 16 KiB, while the output stays under [`TLS_OUTPUT_LIMIT`].
fn encrypt<D>(traffic: &mut WriteTraffic<'_, D>, app_in: &mut Buf, net_out: &mut Buf) -> Result<(), EngineError> {
    while !app_in.is_empty() && net_out.len() < TLS_OUTPUT_LIMIT {
        let take = app_in.len().min(MAX_FRAGMENT);
        let mut want = take + RECORD_OVERHEAD;
        loop {
            let room = net_out.spare(want, TLS_OUTPUT_LIMIT + MAX_FRAGMENT + RECORD_OVERHEAD);
            match traffic.encrypt(&app_in.pending()[..take], room) {
                Ok(n) => {
                    net_out.commit(n);
                    app_in.consume(take);
                    break;
                }
                Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size }))
                    if required_size > want =>
                {
                    want = required_size;
                }
                Err(e) => return Err(EngineError::Tls(rustls::Error::General(e.to_string()))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
