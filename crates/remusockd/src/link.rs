//! One link: a transport (a TCP socket, or UCSPI descriptors), TLS or
//! not, a [`Tunnel`], and the local connections of its channels.
//!
//! The link task owns the tunnel. Each channel has a reader task and a
//! writer task on its local connection, which share a [`Chan`] with the
//! link task:
//!
//! * local → link: the reader reads no more than the channel's credit
//!   (unlimited with an original peer) and sends the bytes through one
//!   bounded queue for all channels, which the link task takes only while
//!   the tunnel's output is small: a slow link stops the readers;
//! * link → local: the link task appends to the channel's buffer and wakes
//!   the writer. Between new peers the window bounds the buffer; with an
//!   original peer, a buffer over [`WINDOW`] stops the reading of the
//!   link until it drains (the original's head-of-line blocking, now
//!   bounded).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use chainmail_remusock::tunnel::WINDOW;
use chainmail_remusock::{ChannelId, Event, MAX_DATA, Role, Tunnel};
use chainmail_tls::engine::Side;
use chainmail_tls::{ClientEngine, Engine, EngineError, ServerEngine, Step};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::log;

/// Tunnel output above which local connections are not read.
const OUTPUT_LOW: usize = 256 * 1024;
/// Tunnel output above which the link is not read (PINGs and BYEs of a
/// peer that does not read our answers).
const OUTPUT_HIGH: usize = 1024 * 1024;
/// Local data messages in flight to the link task, for all channels.
const LOCAL_QUEUE: usize = 64;
/// How long a closed channel's writer may take to deliver what it holds.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
/// How long a connect to the local socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes from the link waiting for the local connections of all channels
/// of a link, above which the link is not read: each channel's buffer is
/// bounded by its window, this bounds their sum (a peer that opens
/// thousands of channels to a service that does not read).
const BUFFERED_LIMIT: usize = 64 * 1024 * 1024;
/// Local clients held at most while the link is down.
pub const HOLD_LIMIT: usize = 4096;

/// What all links of the daemon share.
#[derive(Debug)]
pub struct Shared {
    /// This side's role.
    pub role: Role,
    /// The socket (the socket client connects to it).
    pub socket: PathBuf,
    /// `-w`.
    pub hold: Duration,
    /// Socket server: local clients waiting for a link, with the time
    /// they came.
    pub held: RefCell<VecDeque<(UnixStream, Instant)>>,
    /// Wakes the link when a client is held.
    pub held_notify: Notify,
    /// A link is established (the IDENT exchange is done).
    pub link_up: Cell<bool>,
    /// A link exists (socket server: only one at a time).
    pub link_active: Cell<bool>,
    /// `-N` for a dialer: written once the first link is established.
    pub ready: RefCell<Option<OwnedFd>>,
    /// Probe for and use the extensions (off only for tests that emulate
    /// the original).
    pub extensions: bool,
}

impl Shared {
    /// A local client arrived (socket server).
    pub fn hold_client(&self, s: UnixStream) {
        if !self.link_up.get() && self.hold.is_zero() {
            log::debug(format_args!("no link: local client reset"));
            return;
        }
        let mut held = self.held.borrow_mut();
        if held.len() >= HOLD_LIMIT {
            log::warn(format_args!("{HOLD_LIMIT} local clients wait already: one more reset"));
            return;
        }
        held.push_back((s, Instant::now()));
        drop(held);
        self.held_notify.notify_one();
    }

    /// Drops the clients that waited longer than `-w` (while no link is up).
    pub fn expire_held(&self) {
        if self.link_up.get() {
            return;
        }
        let now = Instant::now();
        let mut held = self.held.borrow_mut();
        while held.front().is_some_and(|(_, since)| now.saturating_duration_since(*since) >= self.hold) {
            held.pop_front();
            log::debug(format_args!("local client waited {} s for the link: reset", self.hold.as_secs()));
        }
    }
}

/// The TLS side of a link, or none.
#[derive(Debug)]
pub enum Crypto {
    /// Plaintext.
    Plain,
    /// We accepted the connection.
    Server(Box<ServerEngine>),
    /// We dialed.
    Client(Box<ClientEngine>),
}

/// The descriptors of a link: one socket, or two (UCSPI).
#[derive(Debug)]
pub struct Wire {
    rx: pipe::Receiver,
    tx: pipe::Sender,
}

impl Wire {
    /// A socket used both ways (made non-blocking).
    pub fn socket(fd: OwnedFd) -> io::Result<Wire> {
        let other = fd.try_clone()?;
        Wire::pair(fd, other)
    }

    /// A descriptor to read and one to write (made non-blocking): pipes or
    /// sockets alike.
    pub fn pair(rd: OwnedFd, wr: OwnedFd) -> io::Result<Wire> {
        chainmail_sys::fd::set_nonblocking(&rd, true)?;
        chainmail_sys::fd::set_nonblocking(&wr, true)?;
        Ok(Wire { rx: pipe::Receiver::from_owned_fd_unchecked(rd)?, tx: pipe::Sender::from_owned_fd_unchecked(wr)? })
    }
}

struct FdIo<'a>(BorrowedFd<'a>);

impl Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        chainmail_sys::fd::read(&self.0, buf)
    }
}

impl Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        chainmail_sys::fd::write(&self.0, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// State a channel's tasks share with the link task.
#[derive(Debug, Default)]
struct Chan {
    to_local: RefCell<Vec<u8>>,
    eof: Cell<bool>,
    close: Cell<bool>,
    wake_writer: Notify,
    credit: Cell<usize>,
    unlimited: Cell<bool>,
    wake_reader: Notify,
}

#[derive(Debug)]
enum FromLocal {
    Data(ChannelId, u64, Vec<u8>),
    Eof(ChannelId, u64),
    Failed(ChannelId, u64),
}

#[derive(Debug)]
enum Ctl {
    Written(ChannelId, u64, usize),
    WriterDone(ChannelId, u64),
    WriterFailed(ChannelId, u64),
    Connected(ChannelId, u64, UnixStream),
    ConnectFailed(ChannelId, u64),
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    chan: Rc<Chan>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
    /// Socket server: the local client, until CONNECT; with its arrival.
    pending: Option<(UnixStream, Instant)>,
    connecting: Option<JoinHandle<()>>,
    reader_done: bool,
    writer_done: bool,
    over: bool,
    /// Bytes given to the writer and not yet reported written.
    queued: usize,
}

impl Entry {
    fn new(generation: u64) -> Entry {
        Entry {
            generation,
            chan: Rc::new(Chan::default()),
            reader: None,
            writer: None,
            pending: None,
            connecting: None,
            reader_done: false,
            writer_done: false,
            over: false,
            queued: 0,
        }
    }

    fn abort(&mut self) {
        for h in [self.reader.take(), self.writer.take(), self.connecting.take()].into_iter().flatten() {
            h.abort();
        }
    }
}

async fn reader(
    id: ChannelId,
    generation: u64,
    rd: tokio::net::unix::OwnedReadHalf,
    chan: Rc<Chan>,
    tx: mpsc::Sender<FromLocal>,
) {
    loop {
        let allow = loop {
            if chan.unlimited.get() {
                break MAX_DATA;
            }
            let c = chan.credit.get();
            if c > 0 {
                break c.min(MAX_DATA);
            }
            chan.wake_reader.notified().await;
        };
        // The buffer is taken only once there is something to read: an
        // idle channel holds none.
        if rd.readable().await.is_err() {
            let _ = tx.send(FromLocal::Failed(id, generation)).await;
            return;
        }
        let mut buf = vec![0u8; allow];
        let mut got = Err(std::io::ErrorKind::WouldBlock.into());
        // As in the link's reader: a short read means the socket is empty,
        // and the readiness is cleared with it (no read that can only fail
        // with EAGAIN before the next epoll round).
        let _ = rd.as_ref().try_io(tokio::io::Interest::READABLE, || {
            got = chainmail_sys::fd::read(&rd.as_ref().as_fd(), &mut buf);
            match &got {
                Ok(n) if *n > 0 && *n < buf.len() => Err(std::io::ErrorKind::WouldBlock.into()),
                Ok(_) => Ok(()),
                Err(e) => Err(std::io::Error::from(e.kind())),
            }
        });
        let msg = match got {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) => FromLocal::Eof(id, generation),
            Ok(n) => {
                buf.truncate(n);
                if !chan.unlimited.get() {
                    chan.credit.set(chan.credit.get().saturating_sub(n));
                }
                FromLocal::Data(id, generation, buf)
            }
            Err(_) => FromLocal::Failed(id, generation),
        };
        let last = !matches!(msg, FromLocal::Data(..));
        if tx.send(msg).await.is_err() || last {
            return;
        }
    }
}

async fn writer(
    id: ChannelId,
    generation: u64,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    chan: Rc<Chan>,
    ctl: mpsc::UnboundedSender<Ctl>,
) {
    loop {
        let buf = std::mem::take(&mut *chan.to_local.borrow_mut());
        if !buf.is_empty() {
            if wr.write_all(&buf).await.is_err() {
                let _ = ctl.send(Ctl::WriterFailed(id, generation));
                return;
            }
            let _ = ctl.send(Ctl::Written(id, generation, buf.len()));
            continue;
        }
        if chan.close.get() {
            return;
        }
        if chan.eof.get() {
            let _ = wr.shutdown().await;
            let _ = ctl.send(Ctl::WriterDone(id, generation));
            // Keep the half until the channel closes: dropping it is what
            // closes the socket once the reader is done too.
            while !chan.close.get() {
                chan.wake_writer.notified().await;
            }
            return;
        }
        chan.wake_writer.notified().await;
    }
}

async fn connect_local(id: ChannelId, generation: u64, path: PathBuf, ctl: mpsc::UnboundedSender<Ctl>) {
    let msg = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&path)).await {
        Ok(Ok(s)) => Ctl::Connected(id, generation, s),
        Ok(Err(e)) => {
            log::warn(format_args!("unable to connect to {}: {e}", path.display()));
            Ctl::ConnectFailed(id, generation)
        }
        Err(_) => {
            log::warn(format_args!("unable to connect to {}: timed out", path.display()));
            Ctl::ConnectFailed(id, generation)
        }
    };
    let _ = ctl.send(msg);
}

/// The channels of one link and what their tasks send back.
struct Channels {
    map: HashMap<ChannelId, Entry>,
    generation: u64,
    stalled: usize,
    /// Bytes given to writers and not yet written, all channels.
    buffered: usize,
    data_tx: mpsc::Sender<FromLocal>,
    ctl_tx: mpsc::UnboundedSender<Ctl>,
}

impl Channels {
    fn start(&mut self, id: ChannelId, stream: UnixStream, credit: Option<u32>) {
        let Some(e) = self.map.get_mut(&id) else { return };
        match credit {
            None => e.chan.unlimited.set(true),
            Some(c) => e.chan.credit.set(c as usize),
        }
        let (rd, wr) = stream.into_split();
        e.reader =
            Some(tokio::task::spawn_local(reader(id, e.generation, rd, Rc::clone(&e.chan), self.data_tx.clone())));
        e.writer =
            Some(tokio::task::spawn_local(writer(id, e.generation, wr, Rc::clone(&e.chan), self.ctl_tx.clone())));
    }

    fn get(&mut self, id: ChannelId, generation: u64) -> Option<&mut Entry> {
        self.map.get_mut(&id).filter(|e| e.generation == generation)
    }

    /// Ends a channel now: both tasks stop, the local connection closes.
    fn remove(&mut self, id: ChannelId) {
        if let Some(mut e) = self.map.remove(&id) {
            if e.over {
                self.stalled -= 1;
            }
            self.buffered -= e.queued;
            e.abort();
        }
    }

    /// Ends a channel after its writer delivered what it holds (bounded).
    fn remove_after_flush(&mut self, id: ChannelId) {
        let Some(mut e) = self.map.remove(&id) else { return };
        if e.over {
            self.stalled -= 1;
        }
        self.buffered -= e.queued;
        if let Some(r) = e.reader.take() {
            r.abort();
        }
        if let Some(c) = e.connecting.take() {
            c.abort();
        }
        if let Some(w) = e.writer.take() {
            e.chan.close.set(true);
            e.chan.wake_writer.notify_one();
            tokio::task::spawn_local(async move {
                tokio::time::sleep(CLOSE_FLUSH).await;
                w.abort();
            });
        }
    }

    fn new_entry(&mut self, id: ChannelId) -> &mut Entry {
        self.generation += 1;
        let generation = self.generation;
        self.map.insert(id, Entry::new(generation));
        self.map.get_mut(&id).unwrap_or_else(|| unreachable!("just inserted"))
    }
}

/// Why a link ended (one log line).
#[derive(Debug)]
pub struct LinkEnd {
    /// The reason.
    pub reason: String,
    /// Whether the IDENT exchange had completed.
    pub established: bool,
}

fn engine_send<S: Side>(e: &mut Engine<S>, tunnel: &mut Tunnel) -> Result<(), EngineError> {
    while !tunnel.output().is_empty() {
        let n = e.send(tunnel.output())?;
        if n == 0 {
            break;
        }
        tunnel.consume_output(n);
    }
    Ok(())
}

/// Reads the network once into the engine and takes the plaintext out.
/// Returns (blocked, ended).
fn engine_read<S: Side>(
    e: &mut Engine<S>,
    fd: BorrowedFd<'_>,
    plain: &mut Vec<u8>,
) -> Result<(bool, bool), EngineError> {
    let step = e.read_net(&mut FdIo(fd))?;
    while e.wants().app_write {
        match e.write_app(plain)? {
            Step::Moved(_) => {}
            _ => break,
        }
    }
    Ok((step == Step::Blocked, step == Step::Closed || e.net_input_ended()))
}

fn engine_write<S: Side>(e: &mut Engine<S>, fd: BorrowedFd<'_>) -> Result<bool, EngineError> {
    Ok(e.write_net(&mut FdIo(fd))? == Step::Blocked)
}

fn flush_alert<S: Side>(e: &mut Engine<S>, fd: BorrowedFd<'_>) {
    let _ = e.write_net(&mut FdIo(fd));
}

/// Runs one link until it ends. `listener`: this side accepted it (it
/// speaks first).
pub async fn run(shared: Rc<Shared>, wire: Wire, mut crypto: Crypto, listener: bool, peer: &str) -> LinkEnd {
    let mut tunnel = Tunnel::new(shared.role, listener, shared.extensions, Instant::now());
    let (data_tx, mut data_rx) = mpsc::channel::<FromLocal>(LOCAL_QUEUE);
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<Ctl>();
    let mut chans = Channels { map: HashMap::new(), generation: 0, stalled: 0, buffered: 0, data_tx, ctl_tx };
    let mut established = false;
    let mut plain = Vec::new();
    let mut rbuf = vec![0u8; 64 * 1024];
    let reason: String = loop {
        if let Crypto::Server(e) = &mut crypto
            && let Err(err) = engine_send(e, &mut tunnel)
        {
            break format!("TLS: {err}");
        }
        if let Crypto::Client(e) = &mut crypto
            && let Err(err) = engine_send(e, &mut tunnel)
        {
            break format!("TLS: {err}");
        }
        let (tls_read, tls_write) = match &crypto {
            Crypto::Plain => (true, !tunnel.output().is_empty()),
            Crypto::Server(e) => (e.wants().net_read, e.wants().net_write),
            Crypto::Client(e) => (e.wants().net_read, e.wants().net_write),
        };
        let want_read =
            tls_read && tunnel.output().len() < OUTPUT_HIGH && chans.stalled == 0 && chans.buffered <= BUFFERED_LIMIT;
        let take_local = established && tunnel.output().len() < OUTPUT_LOW;
        let hold_wanted = established && shared.role == Role::SocketServer;
        let deadline = tokio::time::Instant::from_std(tunnel.next_deadline());
        tokio::select! {
            r = wire.rx.readable(), if want_read => {
                if let Err(e) = r {
                    break format!("unable to wait for the link: {e}");
                }
                let fd = wire.rx.as_fd();
                let wfd = wire.tx.as_fd();
                let mut outcome = Ok((false, false));
                // Plaintext read straight into `rbuf`, or decrypted into `plain`.
                let mut direct = 0;
                let _ = wire.rx.try_io(|| {
                    outcome = match &mut crypto {
                        Crypto::Plain => match chainmail_sys::fd::read(&fd, &mut rbuf) {
                            Ok(0) => Ok((false, true)),
                            Ok(n) => {
                                direct = n;
                                Ok((false, false))
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok((true, false)),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok((false, false)),
                            Err(e) => Err(format!("unable to read from the link: {e}")),
                        },
                        Crypto::Server(e) => engine_read(e, fd, &mut plain).map_err(|err| {
                            flush_alert(e, wfd);
                            format!("TLS: {err}")
                        }),
                        Crypto::Client(e) => engine_read(e, fd, &mut plain).map_err(|err| {
                            flush_alert(e, wfd);
                            format!("TLS: {err}")
                        }),
                    };
                    // A short plaintext read emptied the socket: say so, so
                    // that the next round waits for epoll instead of trying a
                    // read that can only fail with EAGAIN (tokio clears the
                    // readiness only if no new event came meanwhile).
                    let drained = direct > 0 && direct < rbuf.len();
                    if matches!(outcome, Ok((true, _))) || drained {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                });
                let ended = match outcome {
                    Ok((_, ended)) => ended,
                    Err(reason) => break reason,
                };
                if direct > 0 || !plain.is_empty() {
                    let input: &[u8] = if direct > 0 { &rbuf[..direct] } else { &plain };
                    if let Err(e) = tunnel.receive(Instant::now(), input) {
                        // The answer already queued (a PONG) is of no use.
                        break e.to_string();
                    }
                    plain.clear();
                    if !established && tunnel.is_established() {
                        established = true;
                        shared.link_up.set(true);
                        shared.held_notify.notify_one();
                        log::info(format_args!("link with {peer} up"));
                        if let Some(fd) = shared.ready.borrow_mut().take() {
                            let _ = chainmail_sys::fd::write_all(&fd, b"\n");
                        }
                    }
                    handle_events(&shared, &mut tunnel, &mut chans);
                }
                if ended {
                    break "the peer closed the link".to_owned();
                }
            }
            w = wire.tx.writable(), if tls_write => {
                if let Err(e) = w {
                    break format!("unable to wait for the link: {e}");
                }
                let fd = wire.tx.as_fd();
                let mut outcome = Ok(false);
                let _ = wire.tx.try_io(|| {
                    outcome = match &mut crypto {
                        Crypto::Plain => match chainmail_sys::fd::write(&fd, tunnel.output()) {
                            Ok(n) => {
                                tunnel.consume_output(n);
                                Ok(false)
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
                            Err(e) => Err(format!("unable to write to the link: {e}")),
                        },
                        Crypto::Server(e) => engine_write(e, fd).map_err(|err| format!("TLS: {err}")),
                        Crypto::Client(e) => engine_write(e, fd).map_err(|err| format!("TLS: {err}")),
                    };
                    if matches!(outcome, Ok(true)) { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
                });
                if let Err(reason) = outcome {
                    break reason;
                }
            }
            m = ctl_rx.recv() => {
                if let Some(m) = m {
                    handle_ctl(&mut tunnel, &mut chans, m);
                    handle_events(&shared, &mut tunnel, &mut chans);
                }
            }
            m = data_rx.recv(), if take_local => {
                if let Some(m) = m {
                    handle_local(&mut tunnel, &mut chans, m);
                }
            }
            () = shared.held_notify.notified(), if hold_wanted => {
                loop {
                    let next = shared.held.borrow_mut().pop_front();
                    let Some((stream, since)) = next else { break };
                    match tunnel.open_local() {
                        Some(id) => {
                            let e = chans.new_entry(id);
                            e.pending = Some((stream, since));
                        }
                        None => log::warn(format_args!("no channel id free: local client reset")),
                    }
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                if let Err(e) = tunnel.on_timer(Instant::now()) {
                    break e.to_string();
                }
            }
        }
    };
    // The channels end with the link; clients still waiting for their
    // CONNECT are held for the next link.
    let mut requeue = Vec::new();
    for (_, mut e) in chans.map.drain() {
        if let Some(p) = e.pending.take() {
            requeue.push(p);
        }
        e.abort();
    }
    shared.link_up.set(false);
    if !requeue.is_empty() && !shared.hold.is_zero() {
        requeue.sort_by_key(|(_, t)| *t);
        let mut held = shared.held.borrow_mut();
        for p in requeue.into_iter().rev() {
            held.push_front(p);
        }
    }
    LinkEnd { reason, established }
}

fn handle_events(shared: &Shared, tunnel: &mut Tunnel, chans: &mut Channels) {
    for ev in tunnel.take_events() {
        match ev {
            Event::Connect(id) => {
                let ctl = chans.ctl_tx.clone();
                let path = shared.socket.clone();
                let e = chans.new_entry(id);
                e.connecting = Some(tokio::task::spawn_local(connect_local(id, e.generation, path, ctl)));
            }
            Event::Start { id, credit } => {
                let Some(stream) = chans.map.get_mut(&id).and_then(|e| e.pending.take()) else { continue };
                chans.start(id, stream.0, credit);
            }
            Event::Data(id, bytes) => {
                let Some(e) = chans.map.get_mut(&id) else { continue };
                e.queued += bytes.len();
                chans.buffered += bytes.len();
                let mut buf = e.chan.to_local.borrow_mut();
                buf.extend_from_slice(&bytes);
                let over = buf.len() > WINDOW as usize;
                drop(buf);
                e.chan.wake_writer.notify_one();
                if over && !e.over {
                    e.over = true;
                    chans.stalled += 1;
                }
            }
            Event::Eof(id) => {
                if let Some(e) = chans.map.get_mut(&id) {
                    e.chan.eof.set(true);
                    e.chan.wake_writer.notify_one();
                }
            }
            Event::Close(id) => chans.remove_after_flush(id),
            Event::Credit(id, n) => {
                if let Some(e) = chans.map.get_mut(&id) {
                    e.chan.credit.set(e.chan.credit.get() + n as usize);
                    e.chan.wake_reader.notify_one();
                }
            }
        }
    }
}

fn handle_local(tunnel: &mut Tunnel, chans: &mut Channels, m: FromLocal) {
    match m {
        FromLocal::Data(id, g, bytes) => {
            if chans.get(id, g).is_some() {
                let taken = tunnel.local_data(id, &bytes);
                if taken < bytes.len() {
                    log::debug(format_args!("channel {id}: {} bytes over the window dropped", bytes.len() - taken));
                }
            }
        }
        FromLocal::Eof(id, g) => {
            let Some(e) = chans.get(id, g) else { return };
            e.reader_done = true;
            let writer_done = e.writer_done;
            if !tunnel.local_eof(id) {
                // An original peer: EOF ends the channel (BYE sent).
                chans.remove_after_flush(id);
            } else if writer_done {
                tunnel.local_closed(id);
                chans.remove(id);
            }
        }
        FromLocal::Failed(id, g) => {
            if chans.get(id, g).is_some() {
                tunnel.local_closed(id);
                chans.remove(id);
            }
        }
    }
}

fn handle_ctl(tunnel: &mut Tunnel, chans: &mut Channels, m: Ctl) {
    match m {
        Ctl::Written(id, g, n) => {
            let Some(e) = chans.get(id, g) else { return };
            let written = n.min(e.queued);
            e.queued -= written;
            let relieved = e.over && e.chan.to_local.borrow().len() <= WINDOW as usize;
            if relieved {
                e.over = false;
            }
            chans.buffered -= written;
            if relieved {
                chans.stalled -= 1;
            }
            tunnel.local_written(id, n);
        }
        Ctl::WriterDone(id, g) => {
            let Some(e) = chans.get(id, g) else { return };
            e.writer_done = true;
            if e.reader_done {
                tunnel.local_closed(id);
                chans.remove(id);
            }
        }
        Ctl::WriterFailed(id, g) => {
            if chans.get(id, g).is_some() {
                tunnel.local_closed(id);
                chans.remove(id);
            }
        }
        Ctl::Connected(id, g, stream) => {
            let Some(e) = chans.get(id, g) else { return };
            e.connecting = None;
            match tunnel.local_connected(id) {
                Ok(credit) => chans.start(id, stream, credit),
                Err(()) => chans.remove(id),
            }
        }
        Ctl::ConnectFailed(id, g) => {
            if chans.get(id, g).is_some() {
                tunnel.local_closed(id);
                chans.remove(id);
            }
        }
    }
}
