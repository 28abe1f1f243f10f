//! A two-way byte relay: what s6-ioconnect does, in-process.
//!
//! Each direction ("leg") moves bytes from a source descriptor to a
//! destination descriptor. When either end is a pipe the bytes move with
//! `splice(2)` and never enter user space; otherwise through a buffer.
//! EOF passes on (`shutdown(SHUT_WR)` for a socket, `close` for a pipe), so
//! a half-closed connection stays half-open in the right direction only.
//!
//! When a destination goes away (its reader exited), a socket source is
//! read and discarded until the peer closes, bounded by the linger time, so
//! that closing the socket never resets a connection whose last bytes are
//! still on their way to the peer.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::SpliceFFlags;
use nix::poll::{PollFd, PollFlags};

use crate::fd::{self, Kind};
use crate::net;
use crate::poll::{self, Deadline};

/// Bytes per transfer.
const CHUNK: usize = 1 << 16;

/// Transfers per leg and wake-up, at most.
const STEPS_PER_WAKEUP: usize = 8;

/// How long a relay must be idle before the process gives its code pages
/// back.
pub const TRIM_AFTER: Duration = Duration::from_secs(1);

/// One direction of a relay, as given to [`ByteRelay::new`].
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Moving bytes.
    Running,
    /// The destination is gone; the source is read and thrown away.
    Discarding,
    /// Nothing more to do.
    Done,
}

#[derive(Debug)]
struct Leg {
    src: Option<OwnedFd>,
    dst: Option<OwnedFd>,
    src_kind: Kind,
    dst_kind: Kind,
    /// Bytes to write before reading more: the leftover, then in copy mode
    /// whatever a short write left behind.
    pending: Vec<u8>,
    sent: usize,
    splice: bool,
    /// The last transfer could not write: wait for the destination.
    dst_blocked: bool,
    state: State,
    moved: u64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions reached EOF (or their peer went away).
    Finished,
    /// No byte moved in either direction for the idle time.
    IdleTimeout,
}

/// Bytes moved, per direction, as `[forward, backward]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayReport {
    /// How it ended.
    pub outcome: RelayEnd,
    /// Bytes moved forward then backward.
    pub moved: [u64; 2],
}

/// A two-way relay between two endpoints.
#[derive(Debug)]
pub struct ByteRelay {
    legs: [Leg; 2],
    idle: Option<Duration>,
    linger: Duration,
}

impl Leg {
    fn new(spec: LegSpec) -> io::Result<Leg> {
        let src_kind = fd::kind(&spec.src)?;
        let dst_kind = fd::kind(&spec.dst)?;
        fd::set_nonblocking(&spec.src, true)?;
        fd::set_nonblocking(&spec.dst, true)?;
        Ok(Leg {
            splice: src_kind == Kind::Pipe || dst_kind == Kind::Pipe,
            src: Some(spec.src),
            dst: Some(spec.dst),
            src_kind,
            dst_kind,
            pending: spec.leftover,
            sent: 0,
            dst_blocked: false,
            state: State::Running,
            moved: 0,
        })
    }

    fn has_pending(&self) -> bool {
        self.sent < self.pending.len()
    }

    /// What to wait for: (descriptor is src?, events).
    fn interest(&self) -> Option<(bool, PollFlags)> {
        match self.state {
            State::Done => None,
            State::Discarding => Some((true, PollFlags::POLLIN)),
            State::Running if self.has_pending() || self.dst_blocked => Some((false, PollFlags::POLLOUT)),
            State::Running => Some((true, PollFlags::POLLIN)),
        }
    }

    /// The source reached EOF or failed: pass EOF on and finish.
    fn finish_src(&mut self) {
        self.src = None;
        if let Some(dst) = self.dst.take() {
            if self.dst_kind == Kind::Socket {
                let _ = net::shutdown_write(&dst);
            }
        }
        self.state = State::Done;
    }

    /// The destination went away.
    fn lose_dst(&mut self) {
        self.dst = None;
        self.pending.clear();
        self.sent = 0;
        if self.src_kind == Kind::Socket && self.src.is_some() {
            self.state = State::Discarding;
        } else {
            self.src = None;
            self.state = State::Done;
        }
    }

    /// Does whatever the readiness allows, a few transfers at most (so
    /// that one busy direction cannot starve the other), without waiting
    /// for a new readiness between them. Returns true if a byte moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        for i in 0..STEPS_PER_WAKEUP {
            let m = match self.state {
                State::Done => false,
                State::Discarding => self.discard(),
                State::Running if self.has_pending() => self.flush_pending(),
                State::Running if self.splice => self.splice_once(i == 0),
                State::Running => self.copy_once(),
            };
            if !m {
                break;
            }
            moved = true;
        }
        moved
    }

    fn discard(&mut self) -> bool {
        let Some(src) = &self.src else {
            self.state = State::Done;
            return false;
        };
        let mut buf = [0u8; 4096];
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

    fn flush_pending(&mut self) -> bool {
        let Some(dst) = &self.dst else {
            self.lose_dst();
            return false;
        };
        match fd::write(dst, &self.pending[self.sent..]) {
            Ok(n) => {
                self.sent += n;
                self.moved += n as u64;
                if !self.has_pending() {
                    self.pending.clear();
                    self.sent = 0;
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

    /// One `splice(2)`. `woken` says whether this is the first transfer
    /// since poll said the descriptor we waited on is ready.
    fn splice_once(&mut self, woken: bool) -> bool {
        let (Some(src), Some(dst)) = (&self.src, &self.dst) else {
            return false;
        };
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        loop {
            match nix::fcntl::splice(src.as_fd(), None, dst.as_fd(), None, CHUNK, flags) {
                Ok(0) => {
                    self.finish_src();
                    return false;
                }
                Ok(n) => {
                    self.moved += n as u64;
                    self.dst_blocked = false;
                    return true;
                }
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => {
                    // Either the source is empty or the destination full.
                    // Right after a wake-up it is the side we were not
                    // waiting on; after a transfer that worked, the
                    // source has been drained.
                    if woken {
                        self.dst_blocked = !self.dst_blocked;
                    } else {
                        self.dst_blocked = false;
                    }
                    return false;
                }
                Err(nix::Error::EINVAL) => {
                    // This pair does not splice (an odd file type): fall
                    // back to copying for the rest of the relay.
                    self.splice = false;
                    return self.copy_once();
                }
                Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => {
                    self.lose_dst();
                    return false;
                }
                Err(_) => {
                    // A read-side failure (a reset connection): EOF.
                    self.finish_src();
                    return false;
                }
            }
        }
    }

    fn copy_once(&mut self) -> bool {
        let Some(src) = &self.src else {
            return false;
        };
        let mut buf = vec![0u8; CHUNK];
        match fd::read(src, &mut buf) {
            Ok(0) => {
                self.finish_src();
                false
            }
            Ok(n) => {
                buf.truncate(n);
                self.pending = buf;
                self.sent = 0;
                self.flush_pending();
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => {
                self.finish_src();
                false
            }
        }
    }
}

impl ByteRelay {
    /// A relay moving bytes along `forward` and `backward` at once. Every
    /// descriptor is made non-blocking.
    pub fn new(forward: LegSpec, backward: LegSpec) -> io::Result<ByteRelay> {
        Ok(ByteRelay { legs: [Leg::new(forward)?, Leg::new(backward)?], idle: None, linger: Duration::from_secs(10) })
    }

    /// Gives up when no byte moves in either direction for `idle`.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> ByteRelay {
        self.idle = idle.filter(|d| !d.is_zero());
        self
    }

    /// How long a direction whose destination is gone keeps draining its
    /// source after the other direction has finished (default 10 s).
    pub fn linger(mut self, linger: Duration) -> ByteRelay {
        self.linger = linger;
        self
    }

    /// Runs until both directions are done or the idle time passes.
    ///
    /// After [`TRIM_AFTER`] without a byte moving, the process gives its
    /// code pages back ([`crate::process::release_clean_file_pages`]),
    /// once per idle period.
    pub fn run(mut self) -> io::Result<RelayReport> {
        let mut last_progress = Instant::now();
        let mut linger_deadline = Deadline::NEVER;
        let mut trimmed = false;
        loop {
            let live = self.legs.iter().filter(|l| l.state != State::Done).count();
            if live == 0 {
                return Ok(self.report(RelayEnd::Finished));
            }
            // A direction that only discards keeps the relay alive for the
            // linger time once nothing else is left to do.
            let only_discarding = self.legs.iter().all(|l| matches!(l.state, State::Done | State::Discarding));
            if only_discarding {
                if linger_deadline == Deadline::NEVER {
                    linger_deadline = Deadline::after(self.linger);
                }
                if linger_deadline.expired() {
                    return Ok(self.report(RelayEnd::Finished));
                }
            }
            let idle_deadline = match self.idle {
                Some(d) => Deadline::after_from(last_progress, d),
                None => Deadline::NEVER,
            };
            if idle_deadline.expired() {
                return Ok(self.report(RelayEnd::IdleTimeout));
            }
            let trim_deadline = if trimmed { Deadline::NEVER } else { Deadline::after_from(last_progress, TRIM_AFTER) };
            if trim_deadline.expired() {
                let _ = crate::process::release_clean_file_pages();
                trimmed = true;
                continue;
            }
            let deadline =
                idle_deadline.min(if only_discarding { linger_deadline } else { Deadline::NEVER }).min(trim_deadline);

            // Build the poll set: the descriptor each leg waits on, plus
            // each leg's destination with no events, so that a reader that
            // goes away (POLLERR on a pipe) is noticed even when idle.
            let mut slots: Vec<(usize, Which)> = Vec::with_capacity(4);
            let mut pfds: Vec<PollFd<'_>> = Vec::with_capacity(4);
            for (i, leg) in self.legs.iter().enumerate() {
                match leg.interest() {
                    Some((true, ev)) => {
                        if let Some(src) = &leg.src {
                            pfds.push(PollFd::new(src.as_fd(), ev));
                            slots.push((i, Which::Src));
                        }
                        if leg.state == State::Running {
                            if let Some(dst) = &leg.dst {
                                pfds.push(PollFd::new(dst.as_fd(), PollFlags::empty()));
                                slots.push((i, Which::DstWatch));
                            }
                        }
                    }
                    Some((false, ev)) => {
                        if let Some(dst) = &leg.dst {
                            pfds.push(PollFd::new(dst.as_fd(), ev));
                            slots.push((i, Which::Dst));
                        }
                    }
                    None => {}
                }
            }
            if pfds.is_empty() {
                // Nothing can make progress (should not happen): stop.
                return Ok(self.report(RelayEnd::Finished));
            }
            let n = poll::wait(&mut pfds, deadline)?;
            if n == 0 {
                continue; // a deadline passed; checked at the top
            }
            let ready: Vec<(usize, Which, PollFlags)> = slots
                .iter()
                .zip(pfds.iter())
                .filter_map(|(&(i, w), p)| p.revents().filter(|r| !r.is_empty()).map(|r| (i, w, r)))
                .collect();
            drop(pfds);
            for (i, which, revents) in ready {
                let leg = &mut self.legs[i];
                match which {
                    Which::DstWatch => {
                        if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                            && leg.state == State::Running
                        {
                            // The reader is gone. Whatever is buffered for
                            // it can no longer be delivered.
                            if leg.dst_kind != Kind::Socket || revents.contains(PollFlags::POLLERR) {
                                leg.lose_dst();
                            }
                        }
                    }
                    Which::Src | Which::Dst => {
                        if leg.step() {
                            last_progress = Instant::now();
                            trimmed = false;
                        }
                    }
                }
            }
        }
    }

    fn report(&self, outcome: RelayEnd) -> RelayReport {
        RelayReport { outcome, moved: [self.legs[0].moved, self.legs[1].moved] }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Src,
    Dst,
    DstWatch,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::thread;

    fn read_all(fd: &OwnedFd) -> Vec<u8> {
        fd::set_nonblocking(fd, false).expect("blocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match fd::read(fd, &mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
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
        assert_eq!(report.moved, [want.len() as u64, 21]);
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
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
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
