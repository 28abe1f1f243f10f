//! Socket details: Nagle, half-close, and the lingering close that keeps
//! the last reply of a session from being destroyed by a reset.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{Shutdown, setsockopt, sockopt};

use crate::poll::Deadline;

/// Turns Nagle's algorithm off on a TCP socket. Returns `false` (and does
/// nothing) when `fd` is not a TCP socket.
///
/// chainmail writes each TLS flight and each batch of replies with one
/// system call, so there is never a second small segment for Nagle to hold
/// back while the peer delays its acknowledgement.
pub fn set_nodelay(fd: &impl AsFd) -> bool {
    setsockopt(&fd.as_fd(), sockopt::TcpNoDelay, &true).is_ok()
}

/// Sends a delayed acknowledgement at once (`TCP_QUICKACK`). Returns
/// `false` (and does nothing) when `fd` is not a TCP socket.
///
/// A TLS 1.3 server that sends no session tickets has nothing to say
/// after the client's Finished, so the kernel delays the ACK (up to
/// 40 ms). A client without `TCP_NODELAY` that writes its Finished and
/// its first command separately then holds the command back (Nagle)
/// until that ACK comes. Calling this right after reading the Finished
/// removes the stall. The option is not sticky: the kernel may go back
/// to delayed ACKs later, which is what we want for the rest of the
/// session, where replies carry the ACKs.
pub fn quickack(fd: &impl AsFd) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt only reads `size_of::<c_int>()` bytes from the
    // pointer, which points to `one`, alive for the whole call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// `shutdown(SHUT_WR)`: the peer reads EOF once it has read everything we
/// sent. Errors other than a missing connection are returned.
pub fn shutdown_write(fd: &impl AsFd) -> io::Result<()> {
    shutdown(fd, Shutdown::Write)
}

/// `shutdown(SHUT_RD)`.
pub fn shutdown_read(fd: &impl AsFd) -> io::Result<()> {
    shutdown(fd, Shutdown::Read)
}

fn shutdown(fd: &impl AsFd, how: Shutdown) -> io::Result<()> {
    match nix::sys::socket::shutdown(fd.as_fd().as_raw_fd(), how) {
        Ok(()) | Err(nix::Error::ENOTCONN) => Ok(()),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Reads and discards from `fd` until EOF, an error, or `deadline`.
///
/// Closing a TCP socket that still has unread input makes the kernel send
/// a reset, and a reset can destroy data the peer has not read yet (the
/// final `221`). After `shutdown_write`, draining the input until the peer
/// closes avoids that. The descriptor may be blocking or not.
pub fn drain(fd: &impl AsFd, deadline: Deadline) {
    let mut buf = [0u8; 4096];
    loop {
        match crate::poll::wait_one(fd.as_fd(), crate::poll::Interest::Read, deadline) {
            Ok(None) | Err(_) => return,
            Ok(Some(_)) => {}
        }
        match crate::fd::read(fd, &mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quickack_only_on_tcp() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        assert!(quickack(&server));
        assert!(quickack(&client));
        let (a, _b) = crate::fd::socketpair().expect("socketpair");
        assert!(!quickack(&a));
    }
}
