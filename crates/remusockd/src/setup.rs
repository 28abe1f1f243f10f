//! Start-up, before the runtime: the pidfile and its lock, the socket
//! file, the TCP listeners, daemonizing and the privilege drop.

use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use chainmail_sys::process::{Forked, TlsIds};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Uid, User};

/// The owner and group `-u`/`-g` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// `-u`, if given.
    pub uid: Option<Uid>,
    /// `-g`, or the user's group.
    pub gid: Option<Gid>,
}

/// Resolves `-u` and `-g` (names or numbers). The group defaults to the
/// user's.
pub fn resolve_ids(user: Option<&str>, group: Option<&str>) -> Result<Ids, String> {
    let mut ids = Ids { uid: None, gid: None };
    if let Some(u) = user {
        let found = match u.parse::<u32>() {
            Ok(n) => User::from_uid(Uid::from_raw(n)).ok().flatten(),
            Err(_) => User::from_name(u).ok().flatten(),
        };
        match (found, u.parse::<u32>()) {
            (Some(pw), _) => {
                ids.uid = Some(pw.uid);
                ids.gid = Some(pw.gid);
            }
            (None, Ok(n)) => ids.uid = Some(Uid::from_raw(n)),
            (None, Err(_)) => return Err(format!("unknown user {u:?}")),
        }
    }
    if let Some(g) = group {
        ids.gid = Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => Group::from_name(g).ok().flatten().map(|gr| gr.gid).ok_or(format!("unknown group {g:?}"))?,
        });
    }
    if ids.uid.is_some() && ids.gid.is_none() {
        return Err("-u with a numeric id unknown to the system needs -g".into());
    }
    Ok(ids)
}

/// An open, locked pidfile.
#[derive(Debug)]
pub struct Pidfile {
    file: Flock<File>,
}

impl Pidfile {
    /// Opens and locks `path`: an error if another process holds it.
    pub fn lock(path: &Path) -> io::Result<Pidfile> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).read(true).open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            if e == nix::errno::Errno::EWOULDBLOCK {
                io::Error::new(io::ErrorKind::AddrInUse, "locked by another instance")
            } else {
                io::Error::from_raw_os_error(e as i32)
            }
        })?;
        Ok(Pidfile { file })
    }

    /// Writes this process's id (after daemonizing).
    pub fn write_pid(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        let mut f: &File = &self.file;
        f.write_all(format!("{}\n", std::process::id()).as_bytes())
    }
}

/// Binds the socket file: a stale socket (nobody answers) is replaced;
/// a live one, or another kind of file, is refused. Created with no
/// access for anyone, then given `mode` and the owner and group.
pub fn bind_socket(path: &Path, mode: u32, ids: Ids) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "a live socket is there"));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o777));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let l = bound?;
    if ids.uid.is_some() || ids.gid.is_some() {
        nix::unistd::chown(path, ids.uid, ids.gid).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

/// The TCP listeners: one per `-b` address (names resolved, every
/// address), or the wildcard (IPv6 with IPv4, or IPv4 alone).
pub fn listen_tcp(bind: &[String], port: u16) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    if bind.is_empty() {
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
        match TcpListener::bind(any6) {
            Ok(l) => out.push(l),
            Err(_) => out.push(TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))?),
        }
    }
    for b in bind {
        let addrs: Vec<SocketAddr> = match b.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => (b.as_str(), port).to_socket_addrs()?.collect(),
        };
        for a in addrs {
            out.push(TcpListener::bind(a).map_err(|e| io::Error::new(e.kind(), format!("{a}: {e}")))?);
        }
    }
    for l in &out {
        l.set_nonblocking(true)?;
    }
    Ok(out)
}

/// Forks into the background: the parent returns `false` (and exits),
/// the child `true`, in a new session with stdin, stdout and stderr on
/// /dev/null.
pub fn daemonize() -> io::Result<bool> {
    match chainmail_sys::process::fork()? {
        Forked::Parent { .. } => Ok(false),
        Forked::Child => {
            nix::unistd::setsid().map_err(|e| io::Error::from_raw_os_error(e as i32))?;
            let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
            for n in 0..=2 {
                // 0-2 were inherited and never taken over: dup_onto may
                // replace them.
                // (A descriptor closed at start stays closed.)
                let _ = chainmail_sys::fd::dup_onto(null.as_fd(), n);
            }
            Ok(true)
        }
    }
}

/// When running as root with `-u`: becomes that user and group for good.
pub fn drop_privileges(ids: Ids) -> Result<(), String> {
    let (Some(uid), Some(gid)) = (ids.uid, ids.gid) else { return Ok(()) };
    if !Uid::effective().is_root() {
        return Ok(());
    }
    TlsIds { uid, gid }.drop_privileges().map_err(|e| e.to_string())
}
