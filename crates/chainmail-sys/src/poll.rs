//! Deadlines, and one poll set for every loop of the workspace.
//!
//! A loop registers each descriptor it waits on with an [`Interest`] and a
//! token of its own type (an enum that says what the descriptor is to the
//! loop), waits until a [`Deadline`], and gets back the tokens that are
//! ready with their [`Readiness`]. The set keeps its vectors from one wait
//! to the next, so a loop that reuses it allocates nothing per wake-up.
//!
//! ```
//! use std::os::fd::AsFd;
//! use chainmail_sys::poll::{Deadline, Interest, PollSet};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq)]
//! enum Side { Client, Server }
//!
//! let (client_r, client_w) = chainmail_sys::fd::pipe().unwrap();
//! let (server_r, _server_w) = chainmail_sys::fd::pipe().unwrap();
//! chainmail_sys::fd::write_all(&client_w, b"EHLO").unwrap();
//! let mut set = PollSet::new();
//! let mut round = set.round();
//! round.register(client_r.as_fd(), Interest::Read, Side::Client);
//! round.register(server_r.as_fd(), Interest::Read, Side::Server);
//! let ready = round.wait(Deadline::NEVER).unwrap();
//! assert_eq!(ready.len(), 1);
//! assert_eq!(ready[0].0, Side::Client);
//! assert!(ready[0].1.readable);
//! ```

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

/// A point in time after which an operation gives up, or never.
///
/// No constructor panics: a deadline further away than `Instant` can
/// represent (a huge timeout) is a deadline that never passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// A deadline that never passes.
    pub const NEVER: Deadline = Deadline(None);

    /// A deadline `d` from now; never if that instant cannot be
    /// represented.
    pub fn after(d: Duration) -> Deadline {
        Deadline::after_from(Instant::now(), d)
    }

    /// A deadline `d` after `start`; never if that instant cannot be
    /// represented (no overflow panic for a huge `d`).
    pub(crate) fn after_from(start: Instant, d: Duration) -> Deadline {
        Deadline(start.checked_add(d))
    }

    /// A deadline at `t`.
    pub fn at(t: Instant) -> Deadline {
        Deadline(Some(t))
    }

    /// A deadline `ms` milliseconds from now; 0 means never, as in the
    /// `-K` and `-t` options of the s6 tools.
    pub fn after_millis_or_never(ms: u64) -> Deadline {
        if ms == 0 { Deadline::NEVER } else { Deadline::after(Duration::from_millis(ms)) }
    }

    /// The instant, if any.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Time left, `None` for a deadline that never passes.
    pub(crate) fn remaining(self) -> Option<Duration> {
        self.0.map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Whether the deadline has passed.
    pub fn expired(self) -> bool {
        matches!(self.0, Some(t) if Instant::now() >= t)
    }

    /// The earlier of two deadlines.
    pub fn min(self, other: Deadline) -> Deadline {
        match (self.0, other.0) {
            (Some(a), Some(b)) => Deadline(Some(a.min(b))),
            (Some(a), None) | (None, Some(a)) => Deadline(Some(a)),
            (None, None) => Deadline::NEVER,
        }
    }

    /// The time left as a `poll(2)` timeout in milliseconds: -1 for never,
    /// rounded up so that a wait never ends just before the deadline and
    /// spins, capped to what `poll` takes.
    fn poll_timeout_ms(self) -> libc::c_int {
        match self.remaining() {
            None => -1,
            Some(left) => {
                let ms = left.as_micros().div_ceil(1000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        }
    }
}

/// What a registration waits for. Hang-up and error are reported whatever
/// the interest (`poll(2)` always reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// Nothing but hang-up and error: how a loop notices that the reader
    /// of a pipe went away while it has nothing to write to it.
    HangUp,
    /// Data (or EOF) to read.
    Read,
    /// Room to write.
    Write,
    /// Either.
    ReadWrite,
}

impl Interest {
    fn events(self) -> libc::c_short {
        match self {
            Interest::HangUp => 0,
            Interest::Read => libc::POLLIN,
            Interest::Write => libc::POLLOUT,
            Interest::ReadWrite => libc::POLLIN | libc::POLLOUT,
        }
    }
}

/// What `poll(2)` said about a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Data to read (`POLLIN`).
    pub readable: bool,
    /// Room to write (`POLLOUT`).
    pub writable: bool,
    /// The other end is gone (`POLLHUP`): for a pipe's read end, EOF once
    /// the buffered bytes are read; for a socket, both directions are shut.
    pub hang_up: bool,
    /// An error is pending (`POLLERR`, or `POLLNVAL`): for a pipe's write
    /// end, the reader is gone.
    pub error: bool,
}

impl Readiness {
    fn from_revents(revents: libc::c_short) -> Readiness {
        Readiness {
            readable: revents & libc::POLLIN != 0,
            writable: revents & libc::POLLOUT != 0,
            hang_up: revents & libc::POLLHUP != 0,
            error: revents & (libc::POLLERR | libc::POLLNVAL) != 0,
        }
    }

    /// A read will not block: it returns data, EOF or an error. A pipe
    /// whose writer closed reports only `hang_up`, not `readable`.
    #[cfg(test)]
    pub(crate) fn can_read(self) -> bool {
        self.readable || self.hang_up || self.error
    }

    /// A write will not block: it writes, or fails (the reader is gone).
    #[cfg(test)]
    pub(crate) fn can_write(self) -> bool {
        self.writable || self.hang_up || self.error
    }
}

/// A reusable `poll(2)` set whose entries carry tokens of type `T`.
///
/// Each wake-up is one [`Round`]: [`PollSet::round`] forgets the previous
/// registrations, [`Round::register`] adds descriptors, [`Round::wait`]
/// polls and returns the ready tokens. The round borrows the registered
/// descriptors until the wait, so none can be closed while it is polled;
/// the ready list borrows only the set, so the caller may change whatever
/// owns the descriptors while it handles the tokens.
pub struct PollSet<T> {
    fds: Vec<libc::pollfd>,
    tokens: Vec<T>,
    ready: Vec<(T, Readiness)>,
}

impl<T: fmt::Debug> fmt::Debug for PollSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fds: Vec<_> = self.fds.iter().map(|p| (p.fd, p.events, p.revents)).collect();
        f.debug_struct("PollSet").field("fds", &fds).field("tokens", &self.tokens).field("ready", &self.ready).finish()
    }
}

impl<T: Copy> Default for PollSet<T> {
    fn default() -> Self {
        PollSet::new()
    }
}

impl<T: Copy> PollSet<T> {
    /// An empty set.
    pub fn new() -> PollSet<T> {
        PollSet::with_capacity(0)
    }

    /// An empty set with room for `n` registrations before it allocates.
    pub fn with_capacity(n: usize) -> PollSet<T> {
        PollSet { fds: Vec::with_capacity(n), tokens: Vec::with_capacity(n), ready: Vec::with_capacity(n) }
    }

    /// Starts a new wake-up: the registrations of the previous one are
    /// forgotten, the memory kept.
    pub fn round<'fd>(&mut self) -> Round<'_, 'fd, T> {
        self.fds.clear();
        self.tokens.clear();
        self.ready.clear();
        Round { set: self, fds: PhantomData }
    }

    /// How many registrations the set holds without allocating.
    pub fn capacity(&self) -> usize {
        self.fds.capacity().min(self.tokens.capacity()).min(self.ready.capacity())
    }
}

/// The registrations of one wait; see [`PollSet`].
#[derive(Debug)]
pub struct Round<'set, 'fd, T> {
    set: &'set mut PollSet<T>,
    /// The registered descriptors stay borrowed until the wait.
    fds: PhantomData<BorrowedFd<'fd>>,
}

impl<'set, 'fd, T: Copy> Round<'set, 'fd, T> {
    /// Waits for `interest` on `fd`; `token` comes back when it is ready.
    /// The same descriptor may be registered more than once.
    pub fn register(&mut self, fd: BorrowedFd<'fd>, interest: Interest, token: T) {
        self.set.fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: interest.events(), revents: 0 });
        self.set.tokens.push(token);
    }

    /// How many registrations this round has.
    pub fn len(&self) -> usize {
        self.set.fds.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.set.fds.is_empty()
    }

    /// Waits until a registered descriptor is ready or `deadline` passes,
    /// and returns the ready tokens in registration order. Empty means
    /// the deadline passed; with nothing registered and no deadline
    /// (nothing could ever end the wait) it is empty at once. `EINTR` is
    /// retried with the time that is left.
    pub fn wait(self, deadline: Deadline) -> io::Result<&'set [(T, Readiness)]> {
        let set = self.set;
        if set.fds.is_empty() && deadline == Deadline::NEVER {
            return Ok(&set.ready);
        }
        poll_raw(&mut set.fds, deadline)?;
        for (p, &token) in set.fds.iter().zip(&set.tokens) {
            if p.revents != 0 {
                set.ready.push((token, Readiness::from_revents(p.revents)));
            }
        }
        Ok(&set.ready)
    }
}

/// `poll(2)` on raw entries until one is ready or `deadline`, `EINTR`
/// retried with the time left. Returns the number of ready entries.
fn poll_raw(fds: &mut [libc::pollfd], deadline: Deadline) -> io::Result<usize> {
    let count = libc::nfds_t::try_from(fds.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        let timeout = deadline.poll_timeout_ms();
        // SAFETY: `fds` is a valid, exclusively borrowed slice of `count`
        // pollfd entries for the whole call; poll(2) writes only their
        // `revents`. Each `fd` number was taken from a descriptor that the
        // caller keeps borrowed (Round's 'fd, or wait_one's argument) for
        // this call, so it names the descriptor that was registered.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(fds.as_mut_ptr(), count, timeout) };
        if n >= 0 {
            return Ok(usize::try_from(n).unwrap_or(0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits for `interest` on one descriptor until `deadline`: `None` when
/// the deadline passed, the readiness otherwise.
pub fn wait_one(fd: BorrowedFd<'_>, interest: Interest, deadline: Deadline) -> io::Result<Option<Readiness>> {
    let mut fds = [libc::pollfd { fd: fd.as_raw_fd(), events: interest.events(), revents: 0 }];
    poll_raw(&mut fds, deadline)?;
    Ok((fds[0].revents != 0).then(|| Readiness::from_revents(fds[0].revents)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd;
    use std::os::fd::AsFd;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Tok {
        A,
        B,
        C,
    }

    #[test]
    fn deadlines() {
        assert!(!Deadline::NEVER.expired());
        assert_eq!(Deadline::NEVER.remaining(), None);
        assert_eq!(Deadline::after_millis_or_never(0), Deadline::NEVER);
        let soon = Deadline::after(Duration::from_millis(5));
        assert!(soon.remaining().is_some_and(|d| d <= Duration::from_millis(5)));
        assert_eq!(soon.min(Deadline::NEVER), soon);
        assert_eq!(Deadline::NEVER.min(soon), soon);
        // Huge timeouts saturate to never instead of overflowing.
        assert_eq!(Deadline::after(Duration::MAX), Deadline::NEVER);
        assert_eq!(Deadline::after_from(Instant::now(), Duration::from_secs(u64::MAX)), Deadline::NEVER);
        assert_eq!(
            Deadline::after_millis_or_never(u64::MAX).remaining().map(|d| d > Duration::from_secs(1)),
            Some(true)
        );
        let past = Deadline::after(Duration::ZERO);
        assert!(past.expired());
        assert_eq!(soon.min(past), past);
    }

    #[test]
    fn deadline_arithmetic_saturates() {
        assert_eq!(Deadline::after(Duration::MAX), Deadline::NEVER);
        assert_eq!(Deadline::after_from(Instant::now(), Duration::MAX), Deadline::NEVER);
        assert_eq!(Deadline::NEVER.poll_timeout_ms(), -1);
        // Far but representable: capped to what poll takes.
        let far = Deadline::after(Duration::from_secs(100 * 86_400));
        assert_eq!(far.poll_timeout_ms(), libc::c_int::MAX);
        let past = Deadline::at(Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(Instant::now));
        assert_eq!(past.poll_timeout_ms(), 0);
        // Rounded up: a wait never ends just before the deadline.
        let near = Deadline::after(Duration::from_micros(1500));
        assert!((1..=2).contains(&near.poll_timeout_ms()));
    }

    #[test]
    fn set_times_out_with_nothing_ready() {
        let (r, _w) = fd::pipe().expect("pipe");
        let mut set = PollSet::new();
        let mut round = set.round();
        round.register(r.as_fd(), Interest::Read, Tok::A);
        let start = Instant::now();
        let ready = round.wait(Deadline::after(Duration::from_millis(30))).expect("poll");
        assert!(ready.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn empty_set_without_deadline_returns_at_once_and_with_one_sleeps() {
        let mut set: PollSet<Tok> = PollSet::new();
        let start = Instant::now();
        assert!(set.round().wait(Deadline::NEVER).expect("poll").is_empty());
        assert!(start.elapsed() < Duration::from_secs(1));
        let start = Instant::now();
        assert!(set.round().wait(Deadline::after(Duration::from_millis(20))).expect("poll").is_empty());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn ready_tokens_come_back_typed_and_in_order() {
        let (a_r, a_w) = fd::pipe().expect("pipe");
        let (b_r, _b_w) = fd::pipe().expect("pipe");
        let (_c_r, c_w) = fd::pipe().expect("pipe");
        fd::write_all(&a_w, b"x").expect("write");
        let mut set = PollSet::new();
        let mut round = set.round();
        round.register(a_r.as_fd(), Interest::Read, Tok::A);
        round.register(b_r.as_fd(), Interest::Read, Tok::B);
        round.register(c_w.as_fd(), Interest::Write, Tok::C);
        assert_eq!(round.len(), 3);
        let ready = round.wait(Deadline::NEVER).expect("poll");
        let want = [
            (Tok::A, Readiness { readable: true, ..Readiness::default() }),
            (Tok::C, Readiness { writable: true, ..Readiness::default() }),
        ];
        assert_eq!(ready, want);
    }

    #[test]
    fn hang_up_and_error_are_reported() {
        // A pipe whose writer closed: hang-up, and a read returns EOF.
        let (r, w) = fd::pipe().expect("pipe");
        drop(w);
        let got = wait_one(r.as_fd(), Interest::Read, Deadline::NEVER).expect("poll").expect("ready");
        assert!(got.hang_up && got.can_read() && !got.readable, "{got:?}");

        // A pipe whose reader closed: an error on the write end, even
        // when registered for nothing but hang-up.
        let (r, w) = fd::pipe().expect("pipe");
        let mut set = PollSet::new();
        let mut round = set.round();
        round.register(w.as_fd(), Interest::HangUp, Tok::B);
        assert!(round.wait(Deadline::after(Duration::ZERO)).expect("poll").is_empty());
        drop(r);
        let mut round = set.round();
        round.register(w.as_fd(), Interest::HangUp, Tok::B);
        let ready = round.wait(Deadline::NEVER).expect("poll");
        assert_eq!(ready.len(), 1);
        assert!(ready[0].1.error && ready[0].1.can_write() && !ready[0].1.writable, "{ready:?}");

        // A socket whose peer closed: readable (EOF) and hung up.
        let (a, b) = fd::socketpair().expect("socketpair");
        drop(b);
        let got = wait_one(a.as_fd(), Interest::ReadWrite, Deadline::NEVER).expect("poll").expect("ready");
        assert!(got.readable && got.hang_up, "{got:?}");
    }

    #[test]
    fn wait_one_times_out() {
        let (a, _b) = fd::socketpair().expect("socketpair");
        let got = wait_one(a.as_fd(), Interest::Read, Deadline::after(Duration::from_millis(10))).expect("poll");
        assert_eq!(got, None);
        let got = wait_one(a.as_fd(), Interest::Write, Deadline::NEVER).expect("poll");
        assert!(got.is_some_and(|r| r.writable && !r.readable));
    }

    #[test]
    fn rounds_reuse_their_memory() {
        let (r, w) = fd::pipe().expect("pipe");
        let (s1, _s2) = fd::socketpair().expect("socketpair");
        let mut set = PollSet::with_capacity(3);
        let capacity = set.capacity();
        assert!(capacity >= 3);
        for _ in 0..1000 {
            let mut round = set.round();
            round.register(r.as_fd(), Interest::Read, Tok::A);
            round.register(w.as_fd(), Interest::Write, Tok::B);
            round.register(s1.as_fd(), Interest::ReadWrite, Tok::C);
            let ready = round.wait(Deadline::NEVER).expect("poll");
            assert_eq!(ready.len(), 2);
        }
        assert_eq!(set.capacity(), capacity);
    }

    static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn note_signal(_: libc::c_int) {
        SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// A signal interrupts poll(2) with EINTR: the wait goes on with the
    /// time left instead of failing or returning early.
    #[test]
    fn interrupted_wait_goes_on_until_the_deadline() {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        let action = SigAction::new(SigHandler::Handler(note_signal), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; SIGUSR2 is used by nothing else in the tests.
        #[allow(unsafe_code)]
        let old = unsafe { sigaction(Signal::SIGUSR2, &action) }.expect("sigaction");
        let (r, _w) = fd::pipe().expect("pipe");
        // SAFETY: pthread_self has no preconditions.
        #[allow(unsafe_code)]
        let me = unsafe { libc::pthread_self() };
        let kicker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: `me` is the test thread, alive until it has joined
            // this one.
            #[allow(unsafe_code)]
            let r = unsafe { libc::pthread_kill(me, Signal::SIGUSR2 as libc::c_int) };
            assert_eq!(r, 0);
        });
        let mut set = PollSet::new();
        let mut round = set.round();
        round.register(r.as_fd(), Interest::Read, Tok::A);
        let start = Instant::now();
        let ready = round.wait(Deadline::after(Duration::from_millis(150))).expect("poll");
        let took = start.elapsed();
        kicker.join().expect("kicker");
        // SAFETY: puts back the disposition found above.
        #[allow(unsafe_code)]
        let _ = unsafe { sigaction(Signal::SIGUSR2, &old) };
        assert!(SIGNALLED.load(std::sync::atomic::Ordering::SeqCst));
        assert!(ready.is_empty());
        assert!(took >= Duration::from_millis(150), "{took:?}");
    }
}
