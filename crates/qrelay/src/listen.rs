//! The listening sockets: Unix socket files (a stale one replaced, mode
//! 0666, backlog 64, SO_PASSCRED), abstract sockets, and the sockets
//! systemd passes (`LISTEN_FDS`, `LISTEN_PID`); and the readiness
//! notifications (`NOTIFY_SOCKET`, an s6 notification descriptor).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr, bind, getsockname, listen,
    setsockopt, socket, sockopt,
};

use crate::script::ListenTarget;

/// The original's backlog.
const BACKLOG: i32 = 64;
/// systemd's first passed descriptor.
const SD_LISTEN_FDS_START: i32 = 3;

/// A listening socket.
#[derive(Debug)]
pub enum Socket {
    /// A Unix stream socket.
    Unix(std::os::unix::net::UnixListener),
    /// A TCP socket (from systemd): the peer is known by its address.
    Tcp(std::net::TcpListener),
}

fn unix_socket() -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    setsockopt(&fd, sockopt::PassCred, &true)?;
    Ok(fd)
}

fn listening(fd: OwnedFd) -> io::Result<Socket> {
    listen(&fd, Backlog::new(BACKLOG).map_err(io::Error::from)?)?;
    Ok(Socket::Unix(std::os::unix::net::UnixListener::from(fd)))
}

/// Binds a Unix socket file, replacing a stale one.
pub fn bind_path(path: &Path) -> io::Result<Socket> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = unix_socket()?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    listening(fd)
}

/// Binds an abstract socket.
pub fn bind_abstract(name: &[u8]) -> io::Result<Socket> {
    let fd = unix_socket()?;
    bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name)?)?;
    listening(fd)
}

/// The sockets passed by systemd, when `LISTEN_PID` is this process.
pub fn systemd_sockets() -> io::Result<Vec<Socket>> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let n = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    if !for_us || !(1..=1024).contains(&n) {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no sockets passed (LISTEN_PID, LISTEN_FDS)"));
    }
    let mut out = Vec::new();
    for i in 0..n {
        let fd = chainmail_sys::fd::adopt(SD_LISTEN_FDS_START + i)?;
        chainmail_sys::fd::set_cloexec(&fd, true)?;
        chainmail_sys::fd::set_nonblocking(&fd, true)?;
        let addr: SockaddrStorage = getsockname(fd.as_raw_fd())?;
        out.push(match addr.family() {
            Some(AddressFamily::Unix) => Socket::Unix(std::os::unix::net::UnixListener::from(fd)),
            Some(AddressFamily::Inet | AddressFamily::Inet6) => Socket::Tcp(std::net::TcpListener::from(fd)),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "a passed socket is neither Unix nor TCP")),
        });
    }
    Ok(out)
}

/// Opens the sockets of one `qmqp_listen`.
pub fn open(target: &ListenTarget, systemd: &mut Option<Vec<Socket>>) -> io::Result<Vec<Socket>> {
    match target {
        ListenTarget::Path(p) => Ok(vec![bind_path(p)?]),
        ListenTarget::Abstract(n) => Ok(vec![bind_abstract(n)?]),
        ListenTarget::Systemd => {
            if systemd.is_none() {
                *systemd = Some(systemd_sockets()?);
            }
            Ok(systemd.take().unwrap_or_default())
        }
    }
}

/// `READY=1` to `NOTIFY_SOCKET` (a path, or `@` for an abstract name).
pub fn notify_systemd() -> io::Result<()> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    use std::os::unix::ffi::OsStrExt;
    let bytes = target.as_bytes();
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(b"READY=1", &addr)?;
    } else {
        sock.send_to(b"READY=1", Path::new(&target))?;
    }
    Ok(())
}

/// s6's readiness notification: a newline on descriptor `n`, then close.
pub fn notify_fd(n: i32) -> io::Result<()> {
    let fd = chainmail_sys::fd::adopt(n)?;
    chainmail_sys::fd::write_all(&fd, b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_stale_socket_and_refuses_other_files() {
        let dir = std::env::temp_dir().join(format!("qrelay-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s.sock");
        let first = bind_path(&path).expect("bind");
        drop(first);
        // The file stays behind: a stale socket.
        assert!(path.exists());
        let _second = bind_path(&path).expect("rebind over the stale socket");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let plain = dir.join("plain");
        std::fs::write(&plain, b"x").expect("write");
        assert!(bind_path(&plain).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
