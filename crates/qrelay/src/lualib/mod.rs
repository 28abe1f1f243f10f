//! The Lua libraries the seed documents beyond the mail object, each a
//! [`crate::script::Module`] listed in `script::MODULES`: `sodium`, `json`
//! and `jwt` (pure computation), the PostgreSQL client `pg`, and the `socket` library, the beng-proxy
//! `control_client` and the Pond log (`log_server`, `log_resolve`).
//!
//! What the network libraries share is here: turning an address string into
//! socket addresses (with `ServerSpec`, the workspace's one address parser),
//! and opening a non-blocking connected socket, counted against a bound.
//!
//! Nothing here may block the daemon (one current-thread runtime): every
//! socket is non-blocking, a TCP connect completes in the background, and
//! host names go to the system resolver only while the configuration
//! runs (there is no runtime then); a handler must use numeric addresses.

pub mod control;
pub mod json;
pub mod jwt;
pub mod pg;
mod pg_array;
pub mod pond;
pub mod socket;
pub mod sodium;

use std::cell::Cell;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;

use chainmail_qmqp::ServerSpec;
use mlua::{IntoLuaMulti, Lua, MultiValue, Value};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr};

use crate::script::Target;

/// At most this many sockets (socket objects, control clients, the Pond
/// socket) are open at once: each holds a file descriptor, and a script
/// that forgets to close them must not exhaust the daemon's.
pub const MAX_OPEN_SOCKETS: usize = 256;

/// `nil, message`: how every library function here reports a failure.
pub fn failure(lua: &Lua, message: impl std::fmt::Display) -> mlua::Result<MultiValue> {
    (Value::Nil, message.to_string()).into_lua_multi(lua)
}

/// Whether the configuration is still running: there is no runtime yet,
/// so a blocking name lookup holds up nothing.
fn at_startup() -> bool {
    tokio::runtime::Handle::try_current().is_err()
}

/// The addresses of `s` (`ip`, `ip:port`, `[v6]:port`, `host[:port]`,
/// `/path`, `@abstract`), the port defaulting to `default_port` (0: the
/// port is required). Host names are resolved only at startup.
pub fn targets(s: &str, default_port: u16) -> Result<Vec<Target>, String> {
    let (unscoped, scope) = split_scope(s)?;
    let mut all = unscoped_targets(s, &unscoped, default_port)?;
    if let Some(scope) = scope {
        for t in &mut all {
            match t {
                Target::Inet(std::net::SocketAddr::V6(a)) => a.set_scope_id(scope),
                _ => return Err(format!("a scope is only for IPv6 addresses: {s:?}")),
            }
        }
    }
    Ok(all)
}

/// An IPv6 scope (`fe80::1%eth0`, `[ff02::1%2]:5478`: an interface name
/// or index, as link-local and multicast addresses need) taken out of
/// `s`: the address without it, and the interface index.
fn split_scope(s: &str) -> Result<(String, Option<u32>), String> {
    let Some(percent) = s.find('%') else { return Ok((s.to_owned(), None)) };
    if s.starts_with('/') || s.starts_with('@') {
        return Ok((s.to_owned(), None));
    }
    let end = s[percent..].find(']').map_or(s.len(), |i| percent + i);
    let name = &s[percent + 1..end];
    let index = match name.parse::<u32>() {
        Ok(n) if n > 0 => n,
        _ if !name.is_empty() => {
            nix::net::if_::if_nametoindex(name).map_err(|e| format!("no interface {name:?} in {s:?}: {}", e.desc()))?
        }
        _ => return Err(format!("bad address: {s:?}")),
    };
    Ok((format!("{}{}", &s[..percent], &s[end..]), Some(index)))
}

fn unscoped_targets(s: &str, unscoped: &str, default_port: u16) -> Result<Vec<Target>, String> {
    let bad = || format!("bad address: {s:?}");
    match ServerSpec::parse_with_port(unscoped, default_port).map_err(|_| bad())? {
        ServerSpec::Inet(a) if a.port() == 0 => Err(format!("no port in {s:?}")),
        ServerSpec::Inet(a) => Ok(vec![Target::Inet(a)]),
        ServerSpec::Unix(p) => Ok(vec![Target::Unix(p)]),
        ServerSpec::Abstract(n) => Ok(vec![Target::Abstract(n)]),
        ServerSpec::Host(_, 0) => Err(format!("no port in {s:?}")),
        ServerSpec::Host(host, port) => {
            if !at_startup() {
                return Err(format!("{host:?} is not a numeric address (names are resolved only at startup)"));
            }
            let all: Vec<Target> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
                .map(Target::Inet)
                .collect();
            if all.is_empty() { Err(format!("cannot resolve {host:?}: no address")) } else { Ok(all) }
        }
    }
}

/// The count of open sockets, shared by all of a state's sockets.
#[derive(Debug, Clone, Default)]
pub struct OpenCount(Rc<Cell<usize>>);

impl OpenCount {
    /// The state's count (created on first use).
    pub fn of(lua: &Lua) -> OpenCount {
        if let Some(c) = lua.app_data_ref::<OpenCount>() {
            return c.clone();
        }
        let c = OpenCount::default();
        lua.set_app_data(c.clone());
        c
    }

    /// How many are open.
    pub fn get(&self) -> usize {
        self.0.get()
    }
}

/// An open socket, counted while it lives.
#[derive(Debug)]
pub struct Counted {
    fd: OwnedFd,
    count: OpenCount,
}

impl Counted {
    /// The socket.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.count.0.set(self.count.0.get().saturating_sub(1));
    }
}

fn sockaddr(target: &Target) -> Result<(AddressFamily, Box<dyn SockaddrLike>), String> {
    match target {
        Target::Inet(a) => {
            let family = if a.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            Ok((family, Box::new(SockaddrStorage::from(*a))))
        }
        Target::Unix(p) => {
            let u = UnixAddr::new(p).map_err(|e| format!("{}: {}", p.display(), e.desc()))?;
            Ok((AddressFamily::Unix, Box::new(u)))
        }
        Target::Abstract(n) => {
            let u = UnixAddr::new_abstract(n).map_err(|e| format!("@{}: {}", n.escape_ascii(), e.desc()))?;
            Ok((AddressFamily::Unix, Box::new(u)))
        }
    }
}

/// Opens a non-blocking socket of type `ty` connected to the first of
/// `targets` that does not refuse at once. A TCP connect that is under
/// way counts as success: it completes in the background, and until it
/// does a send says `would block`.
pub fn connect(lua: &Lua, targets: &[Target], ty: SockType) -> Result<Counted, String> {
    let count = OpenCount::of(lua);
    if count.get() >= MAX_OPEN_SOCKETS {
        // Sockets the script dropped without close() go with the garbage.
        let _ = lua.gc_collect();
        if count.get() >= MAX_OPEN_SOCKETS {
            return Err(format!("too many open sockets (at most {MAX_OPEN_SOCKETS})"));
        }
    }
    let mut last = "no address".to_owned();
    for target in targets {
        let (family, addr) = sockaddr(target)?;
        let fd = nix::sys::socket::socket(family, ty, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(|e| format!("socket: {}", e.desc()))?;
        match nix::sys::socket::connect(fd.as_raw_fd(), addr.as_ref()) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(e) => {
                last = format!("connect to {target}: {}", e.desc());
                continue;
            }
        }
        count.0.set(count.get() + 1);
        return Ok(Counted { fd, count });
    }
    Err(last)
}

/// Sends `data` on `fd` without waiting: the bytes sent, or why not
/// (`would block` when the socket buffer is full or a TCP connect is
/// still under way).
pub fn send_now(fd: &OwnedFd, data: &[u8]) -> Result<usize, String> {
    use nix::sys::socket::MsgFlags;
    match nix::sys::socket::send(fd.as_raw_fd(), data, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
        Ok(n) => Ok(n),
        Err(Errno::EAGAIN) => Err("would block".to_owned()),
        Err(e) => Err(e.desc().to_owned()),
    }
}

/// The address argument: a string (or a number, as Lua converts).
pub fn address_arg(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => s.to_str().ok().map(|s| s.to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_with_and_without_default_ports() {
        let inet = |s: &str| Ok(vec![Target::Inet(s.parse().expect("addr"))]);
        assert_eq!(targets("127.0.0.1:1234", 0), inet("127.0.0.1:1234"));
        assert_eq!(targets("[::1]:1234", 0), inet("[::1]:1234"));
        assert_eq!(targets("127.0.0.1", 5478), inet("127.0.0.1:5478"));
        assert_eq!(targets("ff02::dead:beef", 5478), inet("[ff02::dead:beef]:5478"));
        assert!(targets("127.0.0.1", 0).is_err());
        assert!(targets("localhost", 0).is_err());
        assert_eq!(targets("/run/x", 0), Ok(vec![Target::Unix("/run/x".into())]));
        assert_eq!(targets("@x", 0), Ok(vec![Target::Abstract(b"x".to_vec())]));
        assert!(targets("a b", 0).is_err());
        // An IPv6 scope, by interface name or index.
        let scoped = |s: &str| match targets(s, 5478).as_deref() {
            Ok([Target::Inet(std::net::SocketAddr::V6(a))]) => Some((a.to_string(), a.scope_id())),
            _ => None,
        };
        assert_eq!(scoped("ff02::dead:beef%lo"), Some(("[ff02::dead:beef%1]:5478".into(), 1)));
        assert_eq!(scoped("[ff02::dead:beef%1]:1234"), Some(("[ff02::dead:beef%1]:1234".into(), 1)));
        assert_eq!(scoped("ff02::dead:beef%no-such-interface"), None);
        assert_eq!(scoped("127.0.0.1%lo"), None);
        assert_eq!(scoped("ff02::1%"), None);
        assert_eq!(targets("/tmp/a%b", 0), Ok(vec![Target::Unix("/tmp/a%b".into())]));
        // No runtime here: names are resolved (localhost is in /etc/hosts).
        assert!(targets("localhost:1234", 0).is_ok_and(|t| !t.is_empty()));
    }

    #[test]
    fn host_names_are_refused_while_the_daemon_runs() {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let r = rt.block_on(async { targets("localhost:1234", 0) });
        assert!(r.is_err_and(|e| e.contains("only at startup")));
    }

    #[test]
    fn the_count_bounds_open_sockets() {
        let lua = Lua::new();
        let listener = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let target = [Target::Inet(listener.local_addr().expect("addr"))];
        let mut open = Vec::new();
        for _ in 0..MAX_OPEN_SOCKETS {
            open.push(connect(&lua, &target, SockType::Datagram).expect("connect"));
        }
        assert!(connect(&lua, &target, SockType::Datagram).is_err_and(|e| e.contains("too many")));
        open.pop();
        assert_eq!(OpenCount::of(&lua).get(), MAX_OPEN_SOCKETS - 1);
        assert!(connect(&lua, &target, SockType::Datagram).is_ok());
    }
}
