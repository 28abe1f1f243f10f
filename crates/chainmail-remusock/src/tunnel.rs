//! One link between two remusock peers: handshake, channels, timers and
//! capabilities, driven by the caller's inputs.
//!
//! The caller hands the tunnel the bytes read from the link
//! ([`Tunnel::receive`]), what happens on the local connections
//! ([`Tunnel::open_local`], [`Tunnel::local_connected`],
//! [`Tunnel::local_data`], [`Tunnel::local_eof`], [`Tunnel::local_closed`],
//! [`Tunnel::local_written`]) and the time ([`Tunnel::on_timer`]); it takes
//! back the bytes to write to the link ([`Tunnel::output`]) and the
//! [`Event`]s for its local connections.
//!
//! **Capabilities.** The original closes the link on any command byte it
//! does not know, so a new peer announces itself with frames the original
//! accepts, in a pattern the original never sends: two PONGs right after
//! its IDENT (the original sends a PONG only to answer a PING, and nobody
//! has sent one yet). A peer whose first two frames are these PONGs is
//! capable; any other first frame, or a PING of ours sent before the
//! peer's first frame, marks it as an original. Extension frames are sent
//! only to a capable peer, and accepted only from one. Every channel
//! starts after the peer's first frame (a HELLO or a CONNECT of the peer
//! opens it), so a channel always knows which kind of peer it talks to.
//!
//! On a capable link:
//! * a local EOF becomes `E` id, which shuts down writing on the far side;
//!   the channel lives on in the other direction;
//! * each direction of a channel has a window of [`WINDOW`] bytes: DATA
//!   beyond it is a protocol error, and the receiver gives credit back
//!   (`W` id bytes) as its local peer takes the data. A local peer that
//!   does not read stalls only its channel;
//! * a BYE is acknowledged (`A` id), and the socket server reuses an id
//!   only once its BYE was acknowledged.
//!
//! Frames for an id this side has closed (late DATA, CONNECT, BYE, EOF,
//! CREDIT) are ignored, as v1 did; v2 tore the link down on them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::frame::{self, Decoder, Frame, FrameError, MAX_DATA};

/// A channel id (the socket server assigns them).
pub type ChannelId = u16;

/// Silence after which a PING is sent.
pub const PING_AFTER: Duration = Duration::from_secs(50);
/// Silence after which the link is dropped.
pub const DROP_AFTER: Duration = Duration::from_secs(60);
/// Time for the IDENT exchange (and, in `remusockd`, the TLS handshake
/// before it). The original gave 2 ticks of its 1 s timer to the IDENT
/// alone.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The window of each direction of a channel on a capable link.
pub const WINDOW: u32 = 256 * 1024;
/// Credit is given back once this much was written locally (or once the
/// peer used half its window).
const CREDIT_BATCH: u32 = WINDOW / 4;
/// The probe a new peer sends right after its IDENT.
pub const PROBE: &[u8] = b"!!";

/// Which end of the Unix socket a side is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Binds the socket, accepts local connections, assigns ids (`S`).
    SocketServer,
    /// Connects to the socket for each channel (`C`).
    SocketClient,
}

impl Role {
    /// The IDENT role byte.
    pub fn byte(self) -> u8 {
        match self {
            Role::SocketServer => b'S',
            Role::SocketClient => b'C',
        }
    }

    fn other(self) -> Role {
        match self {
            Role::SocketServer => Role::SocketClient,
            Role::SocketClient => Role::SocketServer,
        }
    }
}

/// What is known of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// No frame received yet.
    Unknown,
    /// One PONG of the probe received.
    HalfProbe,
    /// A new peer: extensions on.
    Capable,
    /// An original (or a new peer with extensions turned off).
    Original,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TunnelError {
    /// A frame that cannot be read.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// The peer's IDENT is not `I` and the complementary role.
    #[error("bad IDENT {0:?} from the peer (expected I{1})")]
    BadIdent(String, char),
    /// The IDENT exchange did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// 60 s without a byte from the peer.
    #[error("peer silent for 60 s")]
    IdleTimeout,
    /// A frame only the other role may send.
    #[error("protocol error: {0} from a peer in the wrong role")]
    WrongRole(&'static str),
    /// A HELLO for an id in use.
    #[error("protocol error: HELLO for channel {0}, which is in use")]
    DuplicateHello(u16),
    /// A second CONNECT for a channel.
    #[error("protocol error: second CONNECT for channel {0}")]
    DuplicateConnect(u16),
    /// DATA or EOF on a channel not yet connected.
    #[error("protocol error: data on channel {0} before CONNECT")]
    DataBeforeConnect(u16),
    /// DATA beyond the channel's window, or credit beyond it.
    #[error("protocol error: channel {0} window overrun")]
    Window(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Socket server: HELLO sent, waiting for CONNECT.
    HelloSent,
    /// Socket client: HELLO received, our connect() running.
    Connecting,
    /// Both ends connected.
    Open,
    /// BYE sent on a capable link, waiting for its acknowledgement.
    ByeSent,
}

#[derive(Debug, Clone)]
struct Channel {
    state: State,
    /// What the peer still lets us send (capable links).
    send_credit: u32,
    /// What the peer may still send us (capable links).
    recv_window: u32,
    /// Written locally, not yet given back.
    credit_due: u32,
    eof_sent: bool,
    eof_received: bool,
}

impl Channel {
    fn new(state: State) -> Channel {
        Channel { state, send_credit: WINDOW, recv_window: WINDOW, credit_due: 0, eof_sent: false, eof_received: false }
    }
}

/// What the caller does on its local connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Socket client: connect to the socket for this new channel, then
    /// call [`Tunnel::local_connected`] (or [`Tunnel::local_closed`] if
    /// the connect failed).
    Connect(ChannelId),
    /// Socket server: the far side connected; start reading the local
    /// connection. `credit`: how much may be sent before the peer gives
    /// more (`None`: no windows on this link).
    Start { id: ChannelId, credit: Option<u32> },
    /// Write this to the local connection, then report it with
    /// [`Tunnel::local_written`].
    Data(ChannelId, Vec<u8>),
    /// Shut down writing on the local connection (after the data before).
    Eof(ChannelId),
    /// The far side closed: close the local connection.
    Close(ChannelId),
    /// The peer took this much more: the local connection may be read
    /// for that many more bytes.
    Credit(ChannelId, u32),
}

/// One link's protocol state.
#[derive(Debug)]
pub struct Tunnel {
    role: Role,
    listener: bool,
    extensions: bool,
    started: Instant,
    last_received: Instant,
    ping_sent: bool,
    /// A PING left before the peer's first frame: a PONG then is an answer.
    ping_sent_before_first: bool,
    /// IDENT bytes received so far.
    ident: Vec<u8>,
    ident_done: bool,
    capability: Capability,
    decoder: Decoder,
    out: Vec<u8>,
    channels: HashMap<ChannelId, Channel>,
    next_id: u16,
    events: Vec<Event>,
}

impl Tunnel {
    /// A tunnel for a link that just came up at `now`. `listener`: this
    /// side accepted the TCP connection (it sends its IDENT first).
    /// `extensions`: send the probe and use the extensions with a capable
    /// peer (off: behave exactly as the original).
    pub fn new(role: Role, listener: bool, extensions: bool, now: Instant) -> Tunnel {
        let mut t = Tunnel {
            role,
            listener,
            extensions,
            started: now,
            last_received: now,
            ping_sent: false,
            ping_sent_before_first: false,
            ident: Vec::with_capacity(2),
            ident_done: false,
            capability: Capability::Unknown,
            decoder: Decoder::new(),
            out: Vec::new(),
            channels: HashMap::new(),
            next_id: 0,
            events: Vec::new(),
        };
        if listener {
            t.send_ident();
        }
        t
    }

    fn send_ident(&mut self) {
        self.out.push(b'I');
        self.out.push(self.role.byte());
        if self.extensions {
            self.out.extend_from_slice(PROBE);
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether the IDENT exchange is over (for the dialer: its readiness).
    pub fn is_established(&self) -> bool {
        self.ident_done
    }

    /// What is known of the peer.
    pub fn capability(&self) -> Capability {
        self.capability
    }

    fn capable(&self) -> bool {
        self.capability == Capability::Capable
    }

    /// Bytes waiting for the link.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// `n` bytes of [`Tunnel::output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
        if self.out.is_empty() && self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
    }

    /// The events produced since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Open channels (in any state).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Bytes from the link. On an error the caller closes the link (after
    /// writing what [`Tunnel::output`] holds, if it likes).
    pub fn receive(&mut self, now: Instant, mut input: &[u8]) -> Result<(), TunnelError> {
        if input.is_empty() {
            return Ok(());
        }
        self.last_received = now;
        self.ping_sent = false;
        if !self.ident_done {
            let take = (2 - self.ident.len()).min(input.len());
            self.ident.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.ident.len() < 2 {
                return Ok(());
            }
            let want = self.role.other().byte();
            if self.ident != [b'I', want] {
                return Err(TunnelError::BadIdent(String::from_utf8_lossy(&self.ident).into_owned(), want as char));
            }
            self.ident_done = true;
            if !self.listener {
                self.send_ident();
            }
        }
        while let Some(frame) = self.decoder.next(&mut input)? {
            self.handle(frame)?;
        }
        Ok(())
    }

    fn handle(&mut self, frame: Frame) -> Result<(), TunnelError> {
        match self.capability {
            Capability::Unknown if frame == Frame::Pong && self.extensions && !self.ping_sent_before_first => {
                self.capability = Capability::HalfProbe;
                return Ok(());
            }
            Capability::HalfProbe if frame == Frame::Pong => {
                self.capability = Capability::Capable;
                self.decoder.accept_extensions();
                return Ok(());
            }
            Capability::Unknown | Capability::HalfProbe => self.capability = Capability::Original,
            Capability::Capable | Capability::Original => {}
        }
        match frame {
            Frame::Ping => Frame::Pong.encode(&mut self.out),
            Frame::Pong => {}
            Frame::Hello(id) => {
                if self.role != Role::SocketClient {
                    return Err(TunnelError::WrongRole("HELLO"));
                }
                if self.channels.contains_key(&id) {
                    return Err(TunnelError::DuplicateHello(id));
                }
                self.channels.insert(id, Channel::new(State::Connecting));
                self.events.push(Event::Connect(id));
            }
            Frame::Connect(id) => {
                if self.role != Role::SocketServer {
                    return Err(TunnelError::WrongRole("CONNECT"));
                }
                let capable = self.capable();
                match self.channels.get_mut(&id) {
                    Some(c) if c.state == State::HelloSent => {
                        c.state = State::Open;
                        let credit = capable.then_some(c.send_credit);
                        self.events.push(Event::Start { id, credit });
                    }
                    Some(c) if c.state == State::Open => return Err(TunnelError::DuplicateConnect(id)),
                    // Late: this side closed the channel already.
                    _ => {}
                }
            }
            Frame::Bye(id) => {
                let capable = self.capable();
                if let Some(c) = self.channels.get(&id) {
                    let crossed = c.state == State::ByeSent;
                    self.channels.remove(&id);
                    if !crossed {
                        if capable {
                            Frame::ByeAck(id).encode(&mut self.out);
                        }
                        self.events.push(Event::Close(id));
                    }
                }
            }
            Frame::ByeAck(id) => {
                if self.channels.get(&id).is_some_and(|c| c.state == State::ByeSent) {
                    self.channels.remove(&id);
                }
            }
            Frame::Data(id, payload) => {
                let capable = self.capable();
                let Some(c) = self.channels.get_mut(&id) else { return Ok(()) };
                match c.state {
                    State::ByeSent => return Ok(()),
                    State::HelloSent | State::Connecting => return Err(TunnelError::DataBeforeConnect(id)),
                    State::Open => {}
                }
                if c.eof_received {
                    return Err(TunnelError::Window(id));
                }
                if capable {
                    let len = payload.len() as u32;
                    if len > c.recv_window {
                        return Err(TunnelError::Window(id));
                    }
                    c.recv_window -= len;
                }
                self.events.push(Event::Data(id, payload));
            }
            Frame::Eof(id) => {
                let Some(c) = self.channels.get_mut(&id) else { return Ok(()) };
                match c.state {
                    State::ByeSent => {}
                    State::HelloSent | State::Connecting => return Err(TunnelError::DataBeforeConnect(id)),
                    State::Open if !c.eof_received => {
                        c.eof_received = true;
                        self.events.push(Event::Eof(id));
                    }
                    State::Open => {}
                }
            }
            Frame::Credit(id, n) => {
                let Some(c) = self.channels.get_mut(&id) else { return Ok(()) };
                if c.state == State::ByeSent {
                    return Ok(());
                }
                match c.send_credit.checked_add(n) {
                    Some(total) if total <= WINDOW => c.send_credit = total,
                    _ => return Err(TunnelError::Window(id)),
                }
                if n > 0 && c.state == State::Open && !c.eof_sent {
                    self.events.push(Event::Credit(id, n));
                }
            }
        }
        Ok(())
    }

    /// Socket server: a local connection was accepted. Returns its id
    /// (HELLO is queued), or `None` when every id is in use or the link
    /// is not up yet.
    pub fn open_local(&mut self) -> Option<ChannelId> {
        if self.role != Role::SocketServer || !self.ident_done || self.channels.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id != 0 && !self.channels.contains_key(&self.next_id) {
                break;
            }
        }
        let id = self.next_id;
        self.channels.insert(id, Channel::new(State::HelloSent));
        Frame::Hello(id).encode(&mut self.out);
        Some(id)
    }

    /// Socket client: the connect for channel `id` succeeded. Returns how
    /// much may be sent before the peer gives credit (`None`: no windows),
    /// or `Err(())` if the channel was closed meanwhile (close the
    /// connection).
    #[allow(clippy::result_unit_err)]
    pub fn local_connected(&mut self, id: ChannelId) -> Result<Option<u32>, ()> {
        let capable = self.capable();
        match self.channels.get_mut(&id) {
            Some(c) if c.state == State::Connecting => {
                c.state = State::Open;
                Frame::Connect(id).encode(&mut self.out);
                Ok(capable.then_some(c.send_credit))
            }
            _ => Err(()),
        }
    }

    /// What may be sent on channel `id` now: 0 if it is not open (or its
    /// output ended), else up to [`MAX_DATA`] within the window.
    pub fn send_allowance(&self, id: ChannelId) -> usize {
        match self.channels.get(&id) {
            Some(c) if c.state == State::Open && !c.eof_sent => {
                if self.capable() {
                    (c.send_credit as usize).min(MAX_DATA)
                } else {
                    MAX_DATA
                }
            }
            _ => 0,
        }
    }

    /// Data read from local connection `id`. Queues DATA frames for what
    /// the window allows and returns how much was taken (the caller reads
    /// no more than [`Tunnel::send_allowance`], so that is everything).
    pub fn local_data(&mut self, id: ChannelId, mut data: &[u8]) -> usize {
        let mut taken = 0;
        while !data.is_empty() {
            let allow = self.send_allowance(id);
            if allow == 0 {
                break;
            }
            let n = allow.min(data.len());
            frame::encode_data(&mut self.out, id, &data[..n]);
            if self.capable()
                && let Some(c) = self.channels.get_mut(&id)
            {
                c.send_credit -= n as u32;
            }
            data = &data[n..];
            taken += n;
        }
        taken
    }

    /// Local connection `id` reached EOF. On a capable link this
    /// half-closes the channel (`E`); otherwise the channel ends (BYE), as
    /// in the original. Returns whether the channel is still open (for
    /// its other direction).
    pub fn local_eof(&mut self, id: ChannelId) -> bool {
        if !self.capable() {
            self.local_closed(id);
            return false;
        }
        match self.channels.get_mut(&id) {
            Some(c) if c.state == State::Open && !c.eof_sent => {
                c.eof_sent = true;
                Frame::Eof(id).encode(&mut self.out);
                true
            }
            Some(c) if c.state == State::Open => true,
            _ => false,
        }
    }

    /// Local connection `id` is closed (or its connect failed): BYE.
    pub fn local_closed(&mut self, id: ChannelId) {
        let capable = self.capable();
        let Some(c) = self.channels.get_mut(&id) else { return };
        if c.state == State::ByeSent {
            return;
        }
        Frame::Bye(id).encode(&mut self.out);
        if capable {
            c.state = State::ByeSent;
        } else {
            self.channels.remove(&id);
        }
    }

    /// `n` bytes of channel `id`'s data were written to its local
    /// connection: give the window back (in batches).
    pub fn local_written(&mut self, id: ChannelId, n: usize) {
        if !self.capable() {
            return;
        }
        let Some(c) = self.channels.get_mut(&id) else { return };
        if c.state != State::Open {
            return;
        }
        c.credit_due = c.credit_due.saturating_add(n as u32);
        // Credit goes back in batches, or as soon as the peer has used half
        // its window: a sender never stalls while its data is written, and
        // requests and replies of a few bytes cost no credit frame each.
        let half_used = c.recv_window <= WINDOW / 2;
        if (c.credit_due >= CREDIT_BATCH || half_used) && !c.eof_received {
            let give = c.credit_due.min(WINDOW - c.recv_window);
            c.credit_due = 0;
            if give > 0 {
                c.recv_window += give;
                Frame::Credit(id, give).encode(&mut self.out);
            }
        }
    }

    /// When [`Tunnel::on_timer`] wants to be called next.
    pub fn next_deadline(&self) -> Instant {
        if !self.ident_done {
            return self.started + HANDSHAKE_TIMEOUT;
        }
        if self.ping_sent { self.last_received + DROP_AFTER } else { self.last_received + PING_AFTER }
    }

    /// The time is `now`: PING after 50 s of silence, an error after 60 s
    /// (or when the handshake is late).
    pub fn on_timer(&mut self, now: Instant) -> Result<(), TunnelError> {
        if !self.ident_done {
            if now >= self.started + HANDSHAKE_TIMEOUT {
                return Err(TunnelError::HandshakeTimeout);
            }
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_received);
        if silent >= DROP_AFTER {
            return Err(TunnelError::IdleTimeout);
        }
        if silent >= PING_AFTER && !self.ping_sent {
            self.ping_sent = true;
            if self.capability == Capability::Unknown {
                // An original answering this PING must not pass for a probe.
                self.ping_sent_before_first = true;
            }
            Frame::Ping.encode(&mut self.out);
        }
        Ok(())
    }

    /// Every open channel's id (when the link goes down, the caller closes
    /// their local connections).
    pub fn channel_ids(&self) -> Vec<ChannelId> {
        self.channels.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests;
