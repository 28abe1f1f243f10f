//! Reading under a deadline, for the handshakes (the relay has its own
//! loop).

use std::io;
use std::os::fd::AsFd;

use chainmail_sys::Deadline;
use chainmail_sys::fd;
use chainmail_sys::poll::{Interest, wait_one};

/// Reads what is there (at least one byte, or 0 at EOF), waiting until
/// `deadline` at most.
pub fn read_some(f: &impl AsFd, buf: &mut [u8], deadline: Deadline) -> io::Result<usize> {
    loop {
        if wait_one(f.as_fd(), Interest::Read, deadline)?.is_none() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        match fd::read(f, buf) {
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
            r => return r,
        }
    }
}

/// Writes all of `buf`, waiting until `deadline` at most.
pub fn write_all(f: &impl AsFd, mut buf: &[u8], deadline: Deadline) -> io::Result<()> {
    while !buf.is_empty() {
        if wait_one(f.as_fd(), Interest::Write, deadline)?.is_none() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        match fd::write(f, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
