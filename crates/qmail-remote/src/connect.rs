//! A TCP connection with a time limit.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use chainmail_sys::poll::{self, Deadline, Interest};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, connect, getsockopt, socket, sockopt};

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnectError {
    /// No answer within the time limit: this is what tcpto counts.
    TimedOut,
    /// Refused, unreachable, or another error.
    Failed(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::TimedOut => f.write_str("connection timed out"),
            // strerror's words, without Rust's "(os error N)".
            ConnectError::Failed(e) => match e.raw_os_error() {
                Some(n) => f.write_str(nix::errno::Errno::from_raw(n).desc()),
                None => write!(f, "{e}"),
            },
        }
    }
}

fn failed(e: nix::Error) -> ConnectError {
    ConnectError::Failed(io::Error::from_raw_os_error(e as i32))
}

/// Connects to `ip:port` within `limit`. The socket is close-on-exec and
/// non-blocking.
pub fn connect_within(ip: IpAddr, port: u16, limit: Duration) -> Result<OwnedFd, ConnectError> {
    let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let sock =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None).map_err(failed)?;
    let addr = SockaddrStorage::from(SocketAddr::new(ip, port));
    match connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr) {
        Ok(()) => return Ok(sock),
        Err(nix::Error::EINPROGRESS) | Err(nix::Error::EINTR) => {}
        Err(e) => return Err(failed(e)),
    }
    let deadline = Deadline::after(limit);
    match poll::wait_one(sock.as_fd(), Interest::Write, deadline) {
        Ok(None) => return Err(ConnectError::TimedOut),
        Ok(Some(_)) => {}
        Err(e) => return Err(ConnectError::Failed(e)),
    }
    match getsockopt(&sock, sockopt::SocketError) {
        Ok(0) => Ok(sock),
        Ok(errno) if errno == libc_etimedout() => Err(ConnectError::TimedOut),
        Ok(errno) => Err(ConnectError::Failed(io::Error::from_raw_os_error(errno))),
        Err(e) => Err(failed(e)),
    }
}

fn libc_etimedout() -> i32 {
    nix::Error::ETIMEDOUT as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn connects_and_refuses() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(connect_within("127.0.0.1".parse().expect("ip"), port, Duration::from_secs(5)).is_ok());
        drop(l);
        match connect_within("127.0.0.1".parse().expect("ip"), port, Duration::from_secs(5)) {
            Err(ConnectError::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("{other:?}"),
        }
    }
}
