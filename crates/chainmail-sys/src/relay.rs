//! A byte relay over any number of one-way legs: what s6-ioconnect does
//! for two, in-process, and what a tunnel does for many channels at once.
//!
//! Each leg moves bytes from a source descriptor to a destination
//! descriptor, after the caller's leftover bytes. How it moves them is
//! decided once from the kinds of the two descriptors ([`Path`]):
//!
//! - one end is a pipe: `splice(2)` from source to destination; the bytes
//!   never enter user space;
//! - both ends are sockets: `splice(2)` from the source into a pipe of the
//!   leg's own and from there to the destination, still without entering
//!   user space. There is no copying fallback for sockets;
//! - either end is neither a pipe nor a socket (a file, a terminal):
//!   `read(2)` and `write(2)` through a buffer of `COPY_BUFFER` bytes
//!   allocated once for the leg. Such descriptors are rare (tests, a
//!   terminal while debugging), so they are served rather than refused.
//!
//! EOF passes on per leg (`shutdown(SHUT_WR)` for a socket, `close`
//! otherwise), so a half-closed connection stays half-open in the right
//! direction only. A leg whose destination cannot take more stops reading
//! its source (its pipe or buffer holds at most one transfer), so the
//! backpressure reaches the sender; the other legs go on. Each leg does a
//! bounded number of transfers per wake-up, so one busy leg cannot starve
//! the others.
//!
//! When a destination goes away (its reader exited), a socket source is
//! read and discarded until the peer closes, bounded by the linger time
//! once nothing else is left, so that closing the socket never resets a
//! connection whose last bytes are still on their way to the peer.
//!
//! The relay ends when every leg is done, or when no byte moved for the
//! idle timeout. An idle hook ([`ByteRelay::on_idle`]) runs once per idle
//! period: a one-connection program uses it to give its code pages back.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::SpliceFFlags;

use crate::fd::{self, Kind};
use crate::net;
use crate::poll::{Deadline, Interest, PollSet, Readiness, Round};

/// Bytes per `splice(2)` call at most.
const CHUNK: usize = 1 << 16;

/// The buffer of a leg that copies (neither end a pipe, not both sockets).
pub(crate) const COPY_BUFFER: usize = 16 * 1024;

/// Transfers per leg and wake-up, at most.
const STEPS_PER_WAKEUP: usize = 8;

/// What a leg's source is read into and thrown away while discarding.
const DISCARD_BUFFER: usize = 16 * 1024;

/// One direction of a relay, as given to `ByteRelay::with_legs`.
#[derive(Debug)]
pub struct LegSpec {
    /// Where bytes come from.
    pub src: OwnedFd,
    /// Where bytes go.
    pub dst: OwnedFd,
    /// Bytes already read from `src` by the caller, to be written to `dst`
    /// before anything else.
    pub leftover: Vec<u8>,
}

/// How a leg moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// One end is a pipe: `splice(2)` straight from source to destination.
    Splice,
    /// Both ends are sockets: `splice(2)` into the leg's own pipe and out
    /// of it.
    SpliceThroughPipe,
    /// An end is neither a pipe nor a socket: `read(2)` and `write(2)`
    /// through a bounded buffer.
    Copy,
}

/// How a leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEnd {
    /// The source reached EOF (or failed) and EOF was passed on.
    Eof,
    /// The destination went away; what was held for it is lost.
    DestinationGone,
    /// The relay stopped first (idle timeout, or the linger time).
    Unfinished,
}

/// What one leg did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegReport {
    /// How the leg moved its bytes.
    pub path: Path,
    /// Bytes written to the destination, leftover included.
    pub moved: u64,
    /// Of those, bytes moved by `splice(2)`.
    pub spliced: u64,
    /// Of those, bytes read into and written from user space (the copy
    /// path). The leftover is counted in neither.
    pub copied: u64,
    /// How it ended.
    pub end: LegEnd,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Every leg reached EOF (or its destination went away).
    Finished,
    /// No byte moved in any leg for the idle time.
    IdleTimeout,
}

/// What a relay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayReport {
    /// How it ended.
    pub outcome: RelayEnd,
    /// One report per leg, in the order the legs were given.
    pub legs: Vec<LegReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Moving bytes.
    Running,
    /// The destination is gone; the source is read and thrown away.
    Discarding,
    /// Nothing more to do.
    Done,
}

/// The transfer machinery of a leg, with what it holds.
#[derive(Debug)]
enum Transfer {
    Splice,
    /// `held` bytes sit in the pipe, to be spliced to the destination
    /// before the source is read again.
    ThroughPipe {
        read_end: OwnedFd,
        write_end: OwnedFd,
        held: usize,
    },
    /// `buf[start..end]` is still to be written.
    Copy {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// The leg no longer moves bytes: its pipe or buffer is released.
    Released,
}

#[derive(Debug)]
struct Leg {
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    src_kind: Kind,
    dst_kind: Kind,
    leftover: Vec<u8>,
    leftover_sent: usize,
    transfer: Transfer,
    /// The source reached EOF; EOF passes on once nothing is held.
    src_ended: bool,
    /// The last transfer could not write: wait for the destination.
    dst_blocked: bool,
    state: State,
    report: LegReport,
}

/// What a relay waits on, per leg (the index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The source, for reading (or discarding).
    Src(usize),
    /// The destination, for writing.
    Dst(usize),
    /// The destination, for hang-up and error only, while the leg waits
    /// on its source: so that a reader going away is noticed when idle.
    DstWatch(usize),
}

/// A function run once per idle period.
struct IdleHook<'hook> {
    after: Duration,
    hook: Box<dyn FnMut() + Send + 'hook>,
}

impl fmt::Debug for IdleHook<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleHook").field("after", &self.after).finish_non_exhaustive()
    }
}

/// A relay over any number of legs; see the module documentation.
#[derive(Debug)]
pub struct ByteRelay<'hook> {
    legs: Vec<Leg>,
    idle: Option<Duration>,
    linger: Duration,
    idle_hook: Option<IdleHook<'hook>>,
    poll: PollSet<Token>,
}

fn splice_flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// `splice(2)` with `EINTR` retried.
fn splice(src: &OwnedFd, dst: &OwnedFd, len: usize) -> nix::Result<usize> {
    loop {
        match nix::fcntl::splice(src.as_fd(), None, dst.as_fd(), None, len, splice_flags()) {
            Err(nix::Error::EINTR) => continue,
            other => return other,
        }
    }
}

impl Leg {
    fn new(spec: LegSpec) -> io::Result<Leg> {
        let src_kind = fd::kind(&spec.src)?;
        let dst_kind = fd::kind(&spec.dst)?;
        fd::set_nonblocking(&spec.src, true)?;
        fd::set_nonblocking(&spec.dst, true)?;
        let (path, transfer) = match (src_kind, dst_kind) {
            (Kind::Other, _) | (_, Kind::Other) => {
                (Path::Copy, Transfer::Copy { buf: vec![0u8; COPY_BUFFER].into_boxed_slice(), start: 0, end: 0 })
            }
            (Kind::Socket, Kind::Socket) => {
                let (read_end, write_end) = fd::pipe()?;
                fd::set_nonblocking(&read_end, true)?;
                fd::set_nonblocking(&write_end, true)?;
                (Path::SpliceThroughPipe, Transfer::ThroughPipe { read_end, write_end, held: 0 })
            }
            _ => (Path::Splice, Transfer::Splice),
        };
        Ok(Leg {
            src: Some(spec.src),
            dst: Some(spec.dst),
            src_kind,
            dst_kind,
            leftover: spec.leftover,
            leftover_sent: 0,
            transfer,
            src_ended: false,
            dst_blocked: false,
            state: State::Running,
            report: LegReport { path, moved: 0, spliced: 0, copied: 0, end: LegEnd::Unfinished },
        })
    }

    fn has_leftover(&self) -> bool {
        self.leftover_sent < self.leftover.len()
    }

    /// Whether bytes read from the source wait for the destination.
    fn holds_bytes(&self) -> bool {
        self.has_leftover()
            || match &self.transfer {
                Transfer::ThroughPipe { held, .. } => *held > 0,
                Transfer::Copy { start, end, .. } => start < end,
                Transfer::Splice | Transfer::Released => false,
            }
    }

    /// Registers what the leg waits for.
    fn register<'fd>(&'fd self, index: usize, round: &mut Round<'_, 'fd, Token>) {
        match self.state {
            State::Done => {}
            State::Discarding => {
                if let Some(src) = &self.src {
                    round.register(src.as_fd(), Interest::Read, Token::Src(index));
                }
            }
            State::Running => {
                if self.holds_bytes() || self.dst_blocked || self.src.is_none() {
                    if let Some(dst) = &self.dst {
                        round.register(dst.as_fd(), Interest::Write, Token::Dst(index));
                    }
                } else if let Some(src) = &self.src {
                    round.register(src.as_fd(), Interest::Read, Token::Src(index));
                    if let Some(dst) = &self.dst {
                        round.register(dst.as_fd(), Interest::HangUp, Token::DstWatch(index));
                    }
                }
            }
        }
    }

    /// The source reached EOF or failed; EOF passes on once the bytes
    /// held for the destination are written.
    fn end_src(&mut self) {
        self.src = None;
        self.src_ended = true;
        self.pass_eof_if_drained();
    }

    fn pass_eof_if_drained(&mut self) {
        if self.state != State::Running || !self.src_ended || self.holds_bytes() {
            return;
        }
        if let Some(dst) = self.dst.take() {
            if self.dst_kind == Kind::Socket {
                let _ = net::shutdown_write(&dst);
            }
        }
        self.transfer = Transfer::Released;
        self.state = State::Done;
        self.report.end = LegEnd::Eof;
    }

    /// The destination went away: what is held for it is dropped, and a
    /// socket source is discarded until its peer closes.
    fn lose_dst(&mut self) {
        self.dst = None;
        self.leftover = Vec::new();
        self.leftover_sent = 0;
        self.transfer = Transfer::Released;
        self.dst_blocked = false;
        self.report.end = LegEnd::DestinationGone;
        if self.src_kind == Kind::Socket && self.src.is_some() {
            self.state = State::Discarding;
        } else {
            self.src = None;
            self.state = State::Done;
        }
    }

    /// What readiness on the watched destination means.
    fn dst_watch(&mut self, readiness: Readiness) {
        if self.state != State::Running || self.dst.is_none() {
            return;
        }
        // A pipe's reader going away shows as an error (or a hang-up); a
        // socket's hang-up may be our own shutdown of a duplicate, so only
        // its error counts.
        if readiness.error || (readiness.hang_up && self.dst_kind != Kind::Socket) {
            self.lose_dst();
        }
    }

    /// Does whatever the readiness allows, a few transfers at most (so
    /// that one busy leg cannot starve the others), without waiting for a
    /// new readiness between them. Returns true if a byte moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        for i in 0..STEPS_PER_WAKEUP {
            let m = match self.state {
                State::Done => false,
                State::Discarding => self.discard(),
                State::Running => self.transfer_once(i == 0),
            };
            if !m {
                break;
            }
            moved = true;
        }
        moved
    }

    fn transfer_once(&mut self, woken: bool) -> bool {
        let moved = if self.has_leftover() {
            self.write_leftover()
        } else {
            match self.transfer {
                Transfer::Splice => self.splice_direct(woken),
                Transfer::ThroughPipe { .. } => self.splice_through_pipe(),
                Transfer::Copy { .. } => self.copy(),
                Transfer::Released => false,
            }
        };
        self.pass_eof_if_drained();
        moved
    }

    fn discard(&mut self) -> bool {
        let Some(src) = &self.src else {
            self.state = State::Done;
            return false;
        };
        let mut buf = [0u8; DISCARD_BUFFER];
        match fd::read(src, &mut buf) {
            Ok(0) => {
                self.src = None;
                self.state = State::Done;
                false
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.src = None;
                self.state = State::Done;
                false
            }
        }
    }

    fn write_leftover(&mut self) -> bool {
        let Some(dst) = &self.dst else {
            self.lose_dst();
            return false;
        };
        match fd::write(dst, &self.leftover[self.leftover_sent..]) {
            Ok(n) => {
                self.leftover_sent += n;
                self.report.moved += n as u64;
                if !self.has_leftover() {
                    self.leftover = Vec::new();
                    self.leftover_sent = 0;
                }
                self.dst_blocked = false;
                n > 0
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.dst_blocked = true;
                false
            }
            Err(_) => {
                self.lose_dst();
                false
            }
        }
    }

    fn count_spliced(&mut self, n: usize) {
        self.report.moved += n as u64;
        self.report.spliced += n as u64;
        self.dst_blocked = false;
    }

    /// One `splice(2)` between a pipe and anything. `woken` says whether
    /// this is the first transfer since poll said the descriptor we
    /// waited on is ready.
    fn splice_direct(&mut self, woken: bool) -> bool {
        let (Some(src), Some(dst)) = (&self.src, &self.dst) else {
            return false;
        };
        match splice(src, dst, CHUNK) {
            Ok(0) => {
                self.end_src();
                false
            }
            Ok(n) => {
                self.count_spliced(n);
                true
            }
            Err(nix::Error::EAGAIN) => {
                // Either the source is empty or the destination full.
                // Right after a wake-up it is the side we were not
                // waiting on; after a transfer that worked, the source
                // has been drained.
                self.dst_blocked = woken && !self.dst_blocked;
                false
            }
            Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => {
                self.lose_dst();
                false
            }
            Err(_) => {
                // A read-side failure (a reset connection): EOF.
                self.end_src();
                false
            }
        }
    }

    /// Socket to socket: empties the leg's pipe into the destination,
    /// and refills it from the source only once it is empty, so that an
    /// `EAGAIN` always names one side (an empty pipe is never full, and a
    /// pipe that holds bytes is never empty) and the leg holds at most one
    /// transfer while its destination blocks.
    fn splice_through_pipe(&mut self) -> bool {
        let Transfer::ThroughPipe { read_end, write_end, held } = &mut self.transfer else {
            return false;
        };
        let Some(dst) = &self.dst else {
            return false;
        };
        if *held > 0 {
            return match splice(read_end, dst, *held) {
                Ok(n) if n > 0 => {
                    *held -= n;
                    self.count_spliced(n);
                    true
                }
                Err(nix::Error::EAGAIN) => {
                    self.dst_blocked = true;
                    false
                }
                // The pipe holds bytes, so a failure is the destination's.
                _ => {
                    self.lose_dst();
                    false
                }
            };
        }
        let Some(src) = &self.src else {
            return false;
        };
        match splice(src, write_end, CHUNK) {
            Ok(0) => {
                self.end_src();
                false
            }
            Ok(n) => {
                *held = n;
                self.dst_blocked = false;
                self.splice_through_pipe();
                true
            }
            Err(nix::Error::EAGAIN) => {
                // The pipe is empty: the source is.
                self.dst_blocked = false;
                false
            }
            Err(_) => {
                self.end_src();
                false
            }
        }
    }

    /// One `read(2)` or `write(2)` through the leg's buffer.
    fn copy(&mut self) -> bool {
        let Transfer::Copy { buf, start, end } = &mut self.transfer else {
            return false;
        };
        if start < end {
            let Some(dst) = &self.dst else {
                return false;
            };
            return match fd::write(dst, &buf[*start..*end]) {
                Ok(n) => {
                    *start += n;
                    if start == end {
                        (*start, *end) = (0, 0);
                    }
                    self.report.moved += n as u64;
                    self.report.copied += n as u64;
                    self.dst_blocked = false;
                    n > 0
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.dst_blocked = true;
                    false
                }
                Err(_) => {
                    self.lose_dst();
                    false
                }
            };
        }
        let Some(src) = &self.src else {
            return false;
        };
        match fd::read(src, &mut buf[..]) {
            Ok(0) => {
                self.end_src();
                false
            }
            Ok(n) => {
                (*start, *end) = (0, n);
                self.copy();
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.end_src();
                false
            }
        }
    }
}

impl<'hook> ByteRelay<'hook> {
    /// A relay moving bytes along `forward` and `backward` at once.
    pub fn new(forward: LegSpec, backward: LegSpec) -> io::Result<ByteRelay<'hook>> {
        ByteRelay::with_legs([forward, backward])
    }

    /// A relay moving bytes along every leg at once. Every descriptor is
    /// made non-blocking.
    pub(crate) fn with_legs(specs: impl IntoIterator<Item = LegSpec>) -> io::Result<ByteRelay<'hook>> {
        let legs = specs.into_iter().map(Leg::new).collect::<io::Result<Vec<Leg>>>()?;
        // Each leg waits on at most two registrations.
        let poll = PollSet::with_capacity(2 * legs.len());
        Ok(ByteRelay { legs, idle: None, linger: Duration::from_secs(10), idle_hook: None, poll })
    }

    /// Gives up when no byte moves in any leg for `idle`.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> ByteRelay<'hook> {
        self.idle = idle.filter(|d| !d.is_zero());
        self
    }

    /// How long legs whose destination is gone keep draining their
    /// sources once they are all that is left (default 10 s).
    pub fn linger(mut self, linger: Duration) -> ByteRelay<'hook> {
        self.linger = linger;
        self
    }

    /// Runs `hook` once per idle period: when no byte has moved for
    /// `after`, and again only after bytes have moved since.
    pub fn on_idle(mut self, after: Duration, hook: impl FnMut() + Send + 'hook) -> ByteRelay<'hook> {
        self.idle_hook = Some(IdleHook { after, hook: Box::new(hook) });
        self
    }

    /// Runs until every leg is done or the idle time passes.
    pub fn run(mut self) -> io::Result<RelayReport> {
        let mut last_progress = Instant::now();
        let mut linger_deadline = Deadline::NEVER;
        let mut hook_ran = false;
        loop {
            if self.legs.iter().all(|l| l.state == State::Done) {
                return Ok(self.report(RelayEnd::Finished));
            }
            // Legs that only discard keep the relay alive for the linger
            // time once nothing else is left to do.
            let only_discarding = self.legs.iter().all(|l| matches!(l.state, State::Done | State::Discarding));
            if only_discarding {
                if linger_deadline == Deadline::NEVER {
                    linger_deadline = Deadline::after(self.linger);
                }
                if linger_deadline.expired() {
                    return Ok(self.report(RelayEnd::Finished));
                }
            }
            let idle_deadline = self.idle.map_or(Deadline::NEVER, |d| Deadline::after_from(last_progress, d));
            if idle_deadline.expired() {
                return Ok(self.report(RelayEnd::IdleTimeout));
            }
            let hook_deadline = match &self.idle_hook {
                Some(h) if !hook_ran => Deadline::after_from(last_progress, h.after),
                _ => Deadline::NEVER,
            };
            if hook_deadline.expired() {
                if let Some(h) = &mut self.idle_hook {
                    (h.hook)();
                }
                hook_ran = true;
                continue;
            }
            let deadline =
                idle_deadline.min(if only_discarding { linger_deadline } else { Deadline::NEVER }).min(hook_deadline);

            let mut round = self.poll.round();
            for (i, leg) in self.legs.iter().enumerate() {
                leg.register(i, &mut round);
            }
            if round.is_empty() {
                // Nothing can make progress (should not happen): stop.
                return Ok(self.report(RelayEnd::Finished));
            }
            for &(token, readiness) in round.wait(deadline)? {
                let progressed = match token {
                    Token::DstWatch(i) => {
                        self.legs[i].dst_watch(readiness);
                        false
                    }
                    Token::Src(i) | Token::Dst(i) => self.legs[i].step(),
                };
                if progressed {
                    last_progress = Instant::now();
                    hook_ran = false;
                }
            }
        }
    }

    fn report(&self, outcome: RelayEnd) -> RelayReport {
        RelayReport { outcome, legs: self.legs.iter().map(|l| l.report).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, mpsc};
    use std::thread;

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        fd::set_nonblocking(fd, false).expect("blocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match fd::read(fd, &mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn read_exactly(fd: &OwnedFd, n: usize) -> Vec<u8> {
        fd::set_nonblocking(fd, false).expect("blocking");
        let mut out = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match fd::read(fd, &mut out[got..]) {
                Ok(0) => panic!("EOF after {got} of {n} bytes"),
                Ok(k) => got += k,
                Err(e) => panic!("read: {e}"),
            }
        }
        out
    }

    /// Bytes that differ from one leg to another and along each leg.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| ((i % 251) as u8).wrapping_mul(7).wrapping_add(seed)).collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum End {
        Pipe,
        Socket,
    }

    /// `(what the test writes to, the relay's source)`.
    fn source(end: End) -> (OwnedFd, OwnedFd) {
        match end {
            End::Pipe => {
                let (r, w) = fd::pipe().expect("pipe");
                (w, r)
            }
            End::Socket => fd::socketpair().expect("socketpair"),
        }
    }

    /// `(the relay's destination, what the test reads from)`.
    fn sink(end: End) -> (OwnedFd, OwnedFd) {
        match end {
            End::Pipe => {
                let (r, w) = fd::pipe().expect("pipe");
                (w, r)
            }
            End::Socket => fd::socketpair().expect("socketpair"),
        }
    }

    /// Writes `data` to `fd` and closes it (EOF for the reader).
    fn feed(fd: OwnedFd, data: Vec<u8>) -> thread::JoinHandle<()> {
        thread::spawn(move || fd::write_all(&fd, &data).expect("feed"))
    }

    /// Pipes on one side, a socket pair on the other: the shape of the
    /// plaintext relay (network socket, smtpd pipes).
    #[test]
    fn socket_to_pipes_both_ways_with_leftovers() {
        let (net_ours, net_peer) = fd::socketpair().expect("socketpair");
        let net_ours_w = net_ours.try_clone().expect("dup");
        let (to_app_r, to_app_w) = fd::pipe().expect("pipe");
        let (from_app_r, from_app_w) = fd::pipe().expect("pipe");

        let relay = ByteRelay::new(
            LegSpec { src: net_ours, dst: to_app_w, leftover: b"LEFT-FWD ".to_vec() },
            LegSpec { src: from_app_r, dst: net_ours_w, leftover: b"LEFT-BACK ".to_vec() },
        )
        .expect("relay");
        let handle = thread::spawn(move || relay.run().expect("run"));

        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let big2 = big.clone();
        let peer = thread::spawn(move || {
            fd::write_all(&net_peer, &big2).expect("peer write");
            net::shutdown_write(&net_peer).expect("shutdown");
            read_all(&net_peer)
        });
        let app = thread::spawn(move || {
            fd::write_all(&from_app_w, b"reply bytes").expect("app write");
            drop(from_app_w);
            read_all(&to_app_r)
        });
        let got_app = app.join().expect("app");
        let got_peer = peer.join().expect("peer");
        let report = handle.join().expect("relay");
        assert_eq!(report.outcome, RelayEnd::Finished);
        let mut want = b"LEFT-FWD ".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(got_app, want);
        assert_eq!(got_peer, b"LEFT-BACK reply bytes");
        let moved: Vec<u64> = report.legs.iter().map(|l| l.moved).collect();
        assert_eq!(moved, [want.len() as u64, 21]);
    }

    /// Pipe to pipe (the TLS relay) with the application exiting early:
    /// the relay must notice and finish instead of waiting forever.
    #[test]
    fn reader_going_away_finishes_the_relay() {
        let (a_r, a_w) = fd::pipe().expect("pipe");
        let (b_r, b_w) = fd::pipe().expect("pipe");
        let (c_r, c_w) = fd::pipe().expect("pipe");
        let (d_r, d_w) = fd::pipe().expect("pipe");
        // forward: a_r -> b_w ; backward: c_r -> d_w
        let relay = ByteRelay::new(
            LegSpec { src: a_r, dst: b_w, leftover: Vec::new() },
            LegSpec { src: c_r, dst: d_w, leftover: Vec::new() },
        )
        .expect("relay")
        .idle_timeout(Some(Duration::from_secs(5)));
        let handle = thread::spawn(move || relay.run().expect("run"));
        // The "application" reads nothing and exits: b_r and c_w close.
        drop(b_r);
        fd::write_all(&c_w, b"bye").expect("write");
        drop(c_w);
        let got = read_all(&d_r);
        assert_eq!(got, b"bye");
        let start = Instant::now();
        let report = handle.join().expect("relay");
        assert_eq!(report.outcome, RelayEnd::Finished);
        assert_eq!(report.legs[0].end, LegEnd::DestinationGone);
        assert_eq!(report.legs[1].end, LegEnd::Eof);
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(a_w);
    }

    #[test]
    fn idle_timeout_fires() {
        let (a_r, _a_w) = fd::pipe().expect("pipe");
        let (_b_r, b_w) = fd::pipe().expect("pipe");
        let (c_r, _c_w) = fd::pipe().expect("pipe");
        let (_d_r, d_w) = fd::pipe().expect("pipe");
        let start = Instant::now();
        let report = ByteRelay::new(
            LegSpec { src: a_r, dst: b_w, leftover: Vec::new() },
            LegSpec { src: c_r, dst: d_w, leftover: Vec::new() },
        )
        .expect("relay")
        .idle_timeout(Some(Duration::from_millis(100)))
        .run()
        .expect("run");
        assert_eq!(report.outcome, RelayEnd::IdleTimeout);
        assert!(report.legs.iter().all(|l| l.end == LegEnd::Unfinished));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
    }

    /// Four independent legs of every pipe/socket combination at once,
    /// each with a leftover and a big transfer, compared byte for byte.
    #[test]
    fn four_legs_of_every_kind_at_once() {
        let shapes = [
            (End::Socket, End::Socket, Path::SpliceThroughPipe, 3 << 20),
            (End::Pipe, End::Socket, Path::Splice, 2 << 20),
            (End::Socket, End::Pipe, Path::Splice, 2 << 20),
            (End::Pipe, End::Pipe, Path::Splice, 1 << 20),
        ];
        let mut specs = Vec::new();
        let mut feeders = Vec::new();
        let mut readers = Vec::new();
        let mut wants = Vec::new();
        for (i, &(from, to, _, len)) in shapes.iter().enumerate() {
            let (feed_end, src) = source(from);
            let (dst, read_end) = sink(to);
            let leftover = format!("leg {i} leftover|").into_bytes();
            let data = pattern(len, i as u8);
            let mut want = leftover.clone();
            want.extend_from_slice(&data);
            wants.push(want);
            specs.push(LegSpec { src, dst, leftover });
            feeders.push(feed(feed_end, data));
            readers.push(thread::spawn(move || read_all(&read_end)));
        }
        let relay = ByteRelay::with_legs(specs).expect("relay").idle_timeout(Some(Duration::from_secs(20)));
        let report = relay.run().expect("run");
        for f in feeders {
            f.join().expect("feeder");
        }
        for (i, (r, want)) in readers.into_iter().zip(&wants).enumerate() {
            let got = r.join().expect("reader");
            assert!(got == *want, "leg {i}: {} bytes, want {}", got.len(), want.len());
        }
        assert_eq!(report.outcome, RelayEnd::Finished);
        for (i, (leg, &(_, _, path, _))) in report.legs.iter().zip(&shapes).enumerate() {
            assert_eq!(leg.path, path, "leg {i}");
            assert_eq!(leg.moved, wants[i].len() as u64, "leg {i}");
            assert_eq!(leg.copied, 0, "leg {i}");
            assert_eq!(leg.end, LegEnd::Eof, "leg {i}");
        }
    }

    /// A proxied connection as two socket-to-socket legs: the client's
    /// half-close reaches the server as EOF while the server's answer
    /// still flows back, and only then does the relay finish.
    #[test]
    fn half_close_passes_per_leg() {
        let (client, client_ours) = fd::socketpair().expect("socketpair");
        let (server_ours, server) = fd::socketpair().expect("socketpair");
        let relay = ByteRelay::new(
            LegSpec {
                src: client_ours.try_clone().expect("dup"),
                dst: server_ours.try_clone().expect("dup"),
                leftover: Vec::new(),
            },
            LegSpec { src: server_ours, dst: client_ours, leftover: Vec::new() },
        )
        .expect("relay")
        .idle_timeout(Some(Duration::from_secs(10)));
        let handle = thread::spawn(move || relay.run().expect("run"));

        fd::write_all(&client, b"QUIT\r\n").expect("client write");
        net::shutdown_write(&client).expect("client shutdown");
        // The server reads the command, then EOF...
        assert_eq!(read_all(&server), b"QUIT\r\n");
        // ...and can still answer, in pieces.
        for piece in [&b"221 "[..], b"bye\r\n"] {
            fd::write_all(&server, piece).expect("server write");
            assert_eq!(read_exactly(&client, piece.len()), piece);
        }
        assert!(!handle.is_finished());
        net::shutdown_write(&server).expect("server shutdown");
        assert_eq!(read_all(&client), b"");
        let report = handle.join().expect("relay");
        assert_eq!(report.outcome, RelayEnd::Finished);
        assert_eq!(
            report.legs.iter().map(|l| (l.moved, l.end)).collect::<Vec<_>>(),
            [(6, LegEnd::Eof), (9, LegEnd::Eof)]
        );
    }

    /// One leg's destination takes nothing: the other legs keep flowing,
    /// and the stuck leg stops reading its source, so its sender blocks
    /// instead of the relay buffering without bound. Once the reader
    /// comes back, every byte arrives in order.
    #[test]
    fn blocked_destination_holds_back_its_source_only() {
        const STUCK_LEN: usize = 16 << 20;
        let (stuck_feed, stuck_src) = source(End::Socket);
        let (stuck_dst, stuck_read) = sink(End::Pipe);
        let mut specs = vec![LegSpec { src: stuck_src, dst: stuck_dst, leftover: Vec::new() }];
        let fed = Arc::new(AtomicU64::new(0));
        let stuck_data = pattern(STUCK_LEN, 99);
        let stuck_feeder = {
            let fed = Arc::clone(&fed);
            let data = stuck_data.clone();
            thread::spawn(move || {
                for piece in data.chunks(4096) {
                    fd::write_all(&stuck_feed, piece).expect("stuck feed");
                    fed.fetch_add(piece.len() as u64, Ordering::SeqCst);
                }
            })
        };
        let mut others = Vec::new();
        for (i, (from, to)) in [(End::Socket, End::Socket), (End::Pipe, End::Socket)].into_iter().enumerate() {
            let (feed_end, src) = source(from);
            let (dst, read_end) = sink(to);
            let data = pattern(4 << 20, i as u8);
            specs.push(LegSpec { src, dst, leftover: Vec::new() });
            let feeder = feed(feed_end, data.clone());
            others.push((feeder, thread::spawn(move || read_all(&read_end)), data));
        }
        let relay = ByteRelay::with_legs(specs).expect("relay").idle_timeout(Some(Duration::from_secs(20)));
        let handle = thread::spawn(move || relay.run().expect("run"));
        for (feeder, reader, data) in others {
            feeder.join().expect("feeder");
            assert!(reader.join().expect("reader") == data);
        }
        // The others are through; the stuck sender is held back by what
        // the kernel buffers (socket and pipe), nowhere near its 16 MiB.
        let held_back = fed.load(Ordering::SeqCst);
        assert!(held_back < 4 << 20, "{held_back} bytes taken from a source whose destination blocks");
        assert!(!stuck_feeder.is_finished());
        let got = thread::spawn(move || read_all(&stuck_read));
        stuck_feeder.join().expect("stuck feeder");
        assert!(got.join().expect("stuck reader") == stuck_data);
        let report = handle.join().expect("relay");
        assert_eq!(report.outcome, RelayEnd::Finished);
        assert_eq!(report.legs[0].moved, STUCK_LEN as u64);
    }

    /// 16 MiB between two TCP connections on loopback: the bytes arrive
    /// intact, after the leftover, and none of them went through user
    /// space (a copying leg counts them in `copied`).
    #[test]
    fn socket_to_socket_splices_16_mib_intact() {
        use std::net::{TcpListener, TcpStream};
        const LEN: usize = 16 << 20;
        let connected = || {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let outside = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (inside, _) = listener.accept().expect("accept");
            (OwnedFd::from(outside), OwnedFd::from(inside))
        };
        let (client, from_client) = connected();
        let (server, to_server) = connected();
        let data = pattern(LEN, 3);
        let feeder = feed(client, data.clone());
        let reader = thread::spawn(move || read_all(&server));
        let report =
            ByteRelay::with_legs([LegSpec { src: from_client, dst: to_server, leftover: b"EHLO\r\n".to_vec() }])
                .expect("relay")
                .idle_timeout(Some(Duration::from_secs(20)))
                .run()
                .expect("run");
        feeder.join().expect("feeder");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), LEN + 6);
        assert_eq!(&got[..6], b"EHLO\r\n");
        assert!(got[6..] == data[..], "the bytes differ");
        let leg = report.legs[0];
        assert_eq!(leg.path, Path::SpliceThroughPipe);
        assert_eq!((leg.moved, leg.spliced, leg.copied), (LEN as u64 + 6, LEN as u64, 0));
        assert_eq!(leg.end, LegEnd::Eof);
    }

    /// The idle hook runs once when the relay goes idle, not again while
    /// it stays idle, and once more after bytes have moved.
    #[test]
    fn idle_hook_runs_once_per_idle_period() {
        let (feed_end, src) = source(End::Pipe);
        let (dst, read_end) = sink(End::Socket);
        let (tx, rx) = mpsc::channel::<Instant>();
        let relay = ByteRelay::with_legs([LegSpec { src, dst, leftover: Vec::new() }])
            .expect("relay")
            .idle_timeout(Some(Duration::from_millis(400)))
            .on_idle(Duration::from_millis(30), move || tx.send(Instant::now()).expect("send"));
        let start = Instant::now();
        let handle = thread::spawn(move || relay.run().expect("run"));
        let first = rx.recv_timeout(Duration::from_secs(5)).expect("first idle period");
        assert!(first.duration_since(start) >= Duration::from_millis(30));
        fd::write_all(&feed_end, b"x").expect("write");
        assert_eq!(read_exactly(&read_end, 1), b"x");
        let moved_at = Instant::now();
        let second = rx.recv_timeout(Duration::from_secs(5)).expect("second idle period");
        assert!(second > first);
        let report = handle.join().expect("relay");
        assert_eq!(report.outcome, RelayEnd::IdleTimeout);
        assert!(moved_at.elapsed() >= Duration::from_millis(300));
        // The relay stayed idle for 370 ms after the second call: no third.
        assert_eq!(rx.try_iter().count(), 0);
        drop(feed_end);
    }

    /// A regular file is neither pipe nor socket: it is copied through
    /// the leg's bounded buffer, and says so.
    #[test]
    fn file_source_is_copied() {
        let path = std::env::temp_dir().join(format!("chainmail-relay-test-{}", std::process::id()));
        let data = pattern(200_000, 5);
        std::fs::write(&path, &data).expect("write file");
        let file = std::fs::File::open(&path).expect("open");
        std::fs::remove_file(&path).expect("remove");
        let (dst, read_end) = sink(End::Socket);
        let reader = thread::spawn(move || read_all(&read_end));
        let report = ByteRelay::with_legs([LegSpec { src: OwnedFd::from(file), dst, leftover: Vec::new() }])
            .expect("relay")
            .run()
            .expect("run");
        assert!(reader.join().expect("reader") == data);
        let leg = report.legs[0];
        assert_eq!((leg.path, leg.moved, leg.copied, leg.spliced), (Path::Copy, 200_000, 200_000, 0));
    }

    /// A socket source whose destination went away is read and thrown
    /// away (its sender never blocks) until the linger time, once nothing
    /// else is left.
    #[test]
    fn discarding_is_bounded_by_linger() {
        let (peer, net) = fd::socketpair().expect("socketpair");
        let (app_r, app_w) = fd::pipe().expect("pipe");
        let (back_r, back_w) = fd::pipe().expect("pipe");
        drop(app_r); // the application is gone
        drop(back_w); // and has nothing more to say
        let relay = ByteRelay::new(
            LegSpec { src: net.try_clone().expect("dup"), dst: app_w, leftover: Vec::new() },
            LegSpec { src: back_r, dst: net, leftover: Vec::new() },
        )
        .expect("relay")
        .linger(Duration::from_millis(300));
        let start = Instant::now();
        let handle = thread::spawn(move || relay.run().expect("run"));
        // 1 MiB, more than any socket buffer: only a discarding relay lets
        // this finish.
        fd::write_all(&peer, &pattern(1 << 20, 1)).expect("peer write");
        let report = handle.join().expect("relay");
        let took = start.elapsed();
        assert_eq!(report.outcome, RelayEnd::Finished);
        assert_eq!(report.legs[0].end, LegEnd::DestinationGone);
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
        // The peer saw our EOF, not a reset.
        assert_eq!(read_all(&peer), b"");
    }

    /// `smtpd-starttls-proxy-io -T 18446744073709551615` panicked here
    /// (`Instant + Duration` overflow) in every plaintext session.
    #[test]
    fn a_huge_idle_timeout_is_no_timeout() {
        let (a_r, a_w) = fd::pipe().expect("pipe");
        let (_b_r, b_w) = fd::pipe().expect("pipe");
        let (c_r, c_w) = fd::pipe().expect("pipe");
        let (_d_r, d_w) = fd::pipe().expect("pipe");
        drop((a_w, c_w));
        let report = ByteRelay::new(
            LegSpec { src: a_r, dst: b_w, leftover: Vec::new() },
            LegSpec { src: c_r, dst: d_w, leftover: Vec::new() },
        )
        .expect("relay")
        .idle_timeout(Some(Duration::from_secs(u64::MAX)))
        .run()
        .expect("run");
        assert_eq!(report.outcome, RelayEnd::Finished);
    }
}
