//! The poll loop that drives a [`chainmail_tls::ServerEngine`] over the real
//! descriptors: the network on 0/1, the application's two pipes.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use chainmail_sys::Deadline;
use chainmail_sys::fd::{self, FdIo, Kind};
use chainmail_sys::net;
use chainmail_sys::poll::{Interest, PollSet};
use chainmail_tls::{EngineError, ServerEngine, Step};

/// How long what the application sent before its EOF may take to leave.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the network is drained at the end of a session.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session must be idle before it gives its code pages back.
pub const TRIM_AFTER: Duration = Duration::from_secs(1);

/// Work rounds between two flushes (each moves at most about 32 KiB per
/// direction).
const MAX_ROUNDS: usize = 32;

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    Ready,
    TimedOut,
}

/// The descriptors of a session and what is known of their readiness.
#[derive(Debug)]
pub struct Session {
    net_r: OwnedFd,
    /// `None` once shut down (or closed, when it is not a socket).
    net_w: Option<OwnedFd>,
    net_w_kind: Kind,
    /// Plaintext from the application; `None` after its EOF.
    app_r: Option<OwnedFd>,
    /// Plaintext to the application; `None` once it is told EOF.
    app_w: Option<OwnedFd>,
    net_readable: bool,
    net_writable: bool,
    app_readable: bool,
    app_writable: bool,
    /// The application's side is not touched: during the handshake and
    /// until a possible handover has settled which descriptors it is.
    app_paused: bool,
    /// The poll set, reused by every wait.
    poll: PollSet<Slot>,
}

/// What a descriptor of the session's poll set stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    NetR,
    NetW,
    AppR,
    AppW,
}

impl Session {
    /// Takes the descriptors; the caller has made them non-blocking.
    pub fn new(net_r: OwnedFd, net_w: OwnedFd, app_r: OwnedFd, app_w: OwnedFd) -> Session {
        let net_w_kind = fd::kind(&net_w).unwrap_or(Kind::Other);
        Session {
            net_r,
            net_w: Some(net_w),
            net_w_kind,
            app_r: Some(app_r),
            app_w: Some(app_w),
            // Optimistic: a step that finds nothing says so, and costs one
            // system call; the ClientHello is often there already.
            net_readable: true,
            net_writable: true,
            app_readable: true,
            app_writable: true,
            app_paused: true,
            poll: PollSet::with_capacity(4),
        }
    }

    /// Does everything the engine and the readiness allow without
    /// waiting, then flushes pending TLS output with one write. The rounds
    /// are bounded so that a client streaming at full speed cannot delay
    /// the flush (and the replies in it) indefinitely.
    pub fn pump(&mut self, engine: &mut ServerEngine) -> Result<(), EngineError> {
        for _ in 0..MAX_ROUNDS {
            let mut moved = false;
            if engine.wants().net_read && self.net_readable {
                match engine.read_net(&mut FdIo(self.net_r.as_fd()))? {
                    Step::Blocked => self.net_readable = false,
                    Step::Moved(n) => moved |= n > 0,
                    Step::Closed => moved = true,
                }
            }
            if engine.wants().app_write && self.app_writable && !self.app_paused {
                if let Some(w) = &self.app_w {
                    match engine.write_app(&mut FdIo(w.as_fd()))? {
                        Step::Blocked => self.app_writable = false,
                        Step::Moved(_) | Step::Closed => moved = true,
                    }
                }
            }
            if engine.wants().app_read && self.app_readable && !self.app_paused {
                if let Some(r) = &self.app_r {
                    match engine.read_app(&mut FdIo(r.as_fd()))? {
                        Step::Blocked => self.app_readable = false,
                        Step::Moved(_) | Step::Closed => moved = true,
                    }
                }
            }
            self.settle(engine);
            if !moved {
                break;
            }
        }
        if engine.wants().net_write && self.net_writable {
            if let Some(w) = &self.net_w {
                if engine.write_net(&mut FdIo(w.as_fd()))? == Step::Blocked {
                    self.net_writable = false;
                }
            }
        }
        self.settle(engine);
        Ok(())
    }

    /// Closes what the engine is done with.
    fn settle(&mut self, engine: &mut ServerEngine) {
        if self.app_w.is_some() && !engine.app_output_open() {
            self.app_w = None; // the application reads EOF
        }
        if self.app_r.is_some() && engine.app_input_ended() {
            self.app_r = None;
        }
        if engine.wants_net_shutdown() {
            self.shutdown_net();
            engine.net_shutdown_done();
        }
    }

    /// Passes EOF on to the network: `shutdown(SHUT_WR)` for a socket,
    /// which works even while prog still holds a copy of the descriptor;
    /// a plain close otherwise.
    pub fn shutdown_net(&mut self) {
        if let Some(w) = self.net_w.take() {
            if self.net_w_kind == Kind::Socket {
                let _ = net::shutdown_write(&w);
            }
        }
    }

    /// Waits until a descriptor the engine wants is ready, or `deadline`.
    pub fn wait(&mut self, engine: &mut ServerEngine, deadline: Deadline) -> std::io::Result<Waited> {
        let w = engine.wants();
        let mut round = self.poll.round();
        if w.net_read {
            round.register(self.net_r.as_fd(), Interest::Read, Slot::NetR);
        }
        if let (true, Some(fd)) = (w.net_write, &self.net_w) {
            round.register(fd.as_fd(), Interest::Write, Slot::NetW);
        }
        if let (true, false, Some(fd)) = (w.app_read, self.app_paused, &self.app_r) {
            round.register(fd.as_fd(), Interest::Read, Slot::AppR);
        }
        if let (false, Some(fd)) = (self.app_paused, &self.app_w) {
            // Without interest in writing, the wait still says when the
            // reader went away.
            let interest = if w.app_write { Interest::Write } else { Interest::HangUp };
            round.register(fd.as_fd(), interest, Slot::AppW);
        }
        let ready = round.wait(deadline)?;
        if ready.is_empty() {
            return Ok(Waited::TimedOut);
        }
        let mut app_lost = false;
        for &(slot, r) in ready {
            match slot {
                Slot::NetR => self.net_readable = true,
                Slot::NetW => self.net_writable = true,
                Slot::AppR => self.app_readable = true,
                Slot::AppW => {
                    self.app_writable |= r.writable;
                    app_lost |= r.hang_up || r.error;
                }
            }
        }
        if app_lost {
            engine.app_gone();
            self.settle(engine);
        }
        Ok(Waited::Ready)
    }

    /// Runs the handshake until it completes, fails, or `deadline`.
    pub fn handshake(&mut self, engine: &mut ServerEngine, deadline: Deadline) -> Result<(), HandshakeError> {
        loop {
            self.pump(engine).map_err(HandshakeError::Engine)?;
            if !engine.is_handshaking() {
                return Ok(());
            }
            match self.wait(engine, deadline).map_err(HandshakeError::Poll)? {
                Waited::Ready => {}
                Waited::TimedOut => return Err(HandshakeError::Timeout),
            }
        }
    }

    /// Acknowledges the client's last handshake flight at once: a TLS 1.3
    /// server has nothing to send after it (no tickets), and a client
    /// that writes its first command separately, without TCP_NODELAY,
    /// would otherwise wait for our delayed ACK (40 ms) before sending it.
    pub fn ack_now(&self) {
        net::quickack(&self.net_r);
    }

    /// Starts moving the application's plaintext (after the handshake and
    /// the handover, if any).
    pub fn resume_app(&mut self) {
        self.app_paused = false;
    }

    /// Takes over the application's side from new descriptors (a
    /// handover): `app_r` is where plaintext for the network comes from,
    /// `app_w` where the network's plaintext goes. The old ones are
    /// closed.
    pub fn replace_app(&mut self, app_r: OwnedFd, app_w: OwnedFd) -> std::io::Result<()> {
        fd::set_nonblocking(&app_r, true)?;
        fd::set_nonblocking(&app_w, true)?;
        self.app_r = Some(app_r);
        self.app_w = Some(app_w);
        self.app_readable = true;
        self.app_writable = true;
        Ok(())
    }

    /// Relays until the session is over, or until nothing happened on any
    /// descriptor for `idle` (`RelayError::Idle`).
    ///
    /// A session idle for [`TRIM_AFTER`] gives its empty buffers and its
    /// code pages back (`Engine::trim`, `release_clean_file_pages`), once
    /// per idle period: an idle engine then costs its data, not the code
    /// its handshake ran.
    pub fn relay(&mut self, engine: &mut ServerEngine, idle: Option<Duration>) -> Result<(), RelayError> {
        let mut flush_deadline = Deadline::NEVER;
        let idle_deadline = || idle.map_or(Deadline::NEVER, Deadline::after);
        let mut quiet_until = idle_deadline();
        let mut trim_at = Deadline::after(TRIM_AFTER);
        loop {
            self.pump(engine).map_err(RelayError::Engine)?;
            if engine.is_finished() {
                return Ok(());
            }
            if engine.is_flushing() && flush_deadline == Deadline::NEVER {
                flush_deadline = Deadline::after(FLUSH_TIMEOUT);
            }
            match self.wait(engine, flush_deadline.min(quiet_until).min(trim_at)).map_err(RelayError::Poll)? {
                Waited::Ready => {
                    quiet_until = idle_deadline();
                    trim_at = Deadline::after(TRIM_AFTER);
                }
                Waited::TimedOut if flush_deadline.expired() => return Err(RelayError::FlushTimeout),
                Waited::TimedOut if quiet_until.expired() => return Err(RelayError::Idle),
                Waited::TimedOut if trim_at.expired() => {
                    engine.trim();
                    let _ = chainmail_sys::process::release_clean_file_pages();
                    trim_at = Deadline::NEVER;
                }
                // Nothing left to wait for (should not happen): the end.
                Waited::TimedOut => return Ok(()),
            }
        }
    }

    /// After a failure: sends what rustls queued (the alert), once, and
    /// shuts the network's write side.
    pub fn abort(&mut self, engine: &mut ServerEngine) {
        if let Some(w) = &self.net_w {
            let _ = engine.write_net(&mut FdIo(w.as_fd()));
        }
        self.shutdown_net();
    }

    /// Reads and discards the network input until the peer closes, so
    /// that closing never turns into a reset that destroys the last bytes
    /// on their way to the peer.
    pub fn drain(&mut self) {
        self.app_r = None;
        self.app_w = None;
        self.shutdown_net();
        net::drain(&self.net_r, Deadline::after(DRAIN_TIMEOUT));
    }
}

/// How a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    Engine(EngineError),
    Poll(std::io::Error),
    Timeout,
}

/// How a relay failed.
#[derive(Debug)]
pub enum RelayError {
    /// Nothing happened for the idle time of a handover.
    Idle,
    Engine(EngineError),
    Poll(std::io::Error),
    FlushTimeout,
}
