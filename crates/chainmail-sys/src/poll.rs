//! Deadlines and a `poll(2)` that honours them.

use std::io;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollTimeout};

/// A point in time after which an operation gives up, or never.
///
/// No constructor panics: a deadline further away than `Instant` can
/// represent (a huge timeout) is a deadline that never passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// A deadline that never passes.
    pub const NEVER: Deadline = Deadline(None);

    /// A deadline `d` from now.
    pub fn after(d: Duration) -> Deadline {
        Deadline(Instant::now().checked_add(d))
    }

    /// A deadline `d` after `start` (never, when that overflows).
    pub fn after_from(start: Instant, d: Duration) -> Deadline {
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
    pub fn remaining(self) -> Option<Duration> {
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
}

/// Waits on `fds` until one is ready or `deadline` passes. Returns the
/// number of ready descriptors, 0 when the deadline passed. `EINTR` is
/// retried with the time that is left.
pub fn wait(fds: &mut [PollFd<'_>], deadline: Deadline) -> io::Result<usize> {
    loop {
        let timeout = match deadline.remaining() {
            None => PollTimeout::NONE,
            Some(left) => {
                // Round up so that we never wake just before the deadline
                // and spin; cap to what poll(2) takes.
                let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128);
                PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        match nix::poll::poll(fds, timeout) {
            Ok(n) => return Ok(n as usize),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn wait_times_out() {
        let (r, _w) = crate::fd::pipe().expect("pipe");
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(r.as_fd(), nix::poll::PollFlags::POLLIN)];
        let start = Instant::now();
        let n = wait(&mut fds, Deadline::after(Duration::from_millis(30))).expect("poll");
        assert_eq!(n, 0);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }
}
