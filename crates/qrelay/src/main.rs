//! qrelay: a QMQP relay whose routing is a Lua script.
//!
//! `qrelay [--config PATH] [--check] [--notify-fd N]` runs the daemon: it
//! loads the configuration (`/etc/cm4all/qrelay/config.lua` by default),
//! listens where its `qmqp_listen()` calls say, and for each message asks
//! the listener's Lua handler what to do (relay by QMQP, run a program,
//! discard, reject) and does it. One process on a current-thread tokio
//! runtime serves many connections at once.
//!
//! `qrelay --ucspi [--config PATH] [--listener NAME]` serves one
//! connection on fds 0/1 under s6-ipcserver, unixserver or tcpserver.
#![forbid(unsafe_code)]

mod cgroup;
mod listen;
mod lualib;
mod relay;
mod script;
mod session;

use std::cell::Cell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use chainmail_sys::cli::{self, EXIT_OK, EXIT_TEMPORARY, EXIT_USAGE, Failure};
use tokio::sync::Notify;

use crate::listen::Socket;
use crate::script::{Peer, Script};
use crate::session::{Listener, Shared};

const USAGE: &str =
    "qrelay [ --config path ] [ --check ] [ --notify-fd n ] | qrelay --ucspi [ --config path ] [ --listener name ]";
/// How long SIGTERM waits for the messages in flight (the longest action
/// without a program: 20 s connect, 10 s send, 60 s reply).
const DRAIN_LIMIT: Duration = Duration::from_secs(100);

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(#[from] script::ConfigError),
    #[error("unable to {0}: {1}")]
    Sys(String, std::io::Error),
}

impl Failure for Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => EXIT_USAGE,
            Error::Sys(..) => EXIT_TEMPORARY,
        }
    }

    fn usage(&self) -> Option<&'static str> {
        matches!(self, Error::Usage(_)).then_some(USAGE)
    }
}

#[derive(Debug, Default)]
struct Options {
    config: Option<PathBuf>,
    check: bool,
    ucspi: bool,
    listener: Option<OsString>,
    notify_fd: Option<i32>,
}

fn parse_args() -> Result<Options, Error> {
    use lexopt::prelude::*;
    let mut o = Options::default();
    let mut p = lexopt::Parser::from_env();
    let usage = |e: lexopt::Error| Error::Usage(e.to_string());
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("config") => o.config = Some(p.value().map_err(usage)?.into()),
            Long("check") => o.check = true,
            Long("ucspi") => o.ucspi = true,
            Long("listener") => o.listener = Some(p.value().map_err(usage)?),
            Long("notify-fd") => {
                let v = p.value().map_err(usage)?;
                let n = v.to_str().and_then(|s| s.parse::<i32>().ok()).filter(|n| *n >= 3);
                o.notify_fd = Some(n.ok_or_else(|| Error::Usage(format!("invalid --notify-fd {v:?}")))?);
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    if o.listener.is_some() && !o.ucspi {
        return Err(Error::Usage("--listener needs --ucspi".into()));
    }
    Ok(o)
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Sys("start the runtime".into(), e))
}

fn cgroup_mount() -> Option<PathBuf> {
    cgroup::cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The sessions in flight, and a wake-up when the count reaches zero.
#[derive(Debug, Default)]
struct InFlight {
    count: Cell<usize>,
    idle: Notify,
}

struct Guard(Rc<InFlight>);
impl Guard {
    fn new(f: &Rc<InFlight>) -> Guard {
        f.count.set(f.count.get() + 1);
        Guard(Rc::clone(f))
    }
}
impl Drop for Guard {
    fn drop(&mut self) {
        let n = self.0.count.get() - 1;
        self.0.count.set(n);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

fn unix_peer(s: &tokio::net::UnixStream) -> Peer {
    match s.peer_cred() {
        Ok(c) => Peer { pid: c.pid(), uid: Some(c.uid()), gid: Some(c.gid()), ip: None },
        Err(_) => Peer::default(),
    }
}

async fn accept_loop(
    socket: Socket,
    shared: Rc<Shared>,
    listener: Rc<Listener>,
    flight: Rc<InFlight>,
    stop: Rc<Notify>,
) {
    match socket {
        Socket::Unix(l) => {
            let Ok(l) = tokio::net::UnixListener::from_std(l) else { return };
            loop {
                let accepted = tokio::select! {
                    r = l.accept() => r,
                    () = stop.notified() => return,
                };
                let Ok((s, _)) = accepted else { continue };
                let (shared, listener, guard) = (Rc::clone(&shared), Rc::clone(&listener), Guard::new(&flight));
                tokio::task::spawn_local(async move {
                    let peer = unix_peer(&s);
                    let (r, w) = s.into_split();
                    session::serve(&shared, &listener, r, w, peer).await;
                    drop(guard);
                });
            }
        }
        Socket::Tcp(l) => {
            let Ok(l) = tokio::net::TcpListener::from_std(l) else { return };
            loop {
                let accepted = tokio::select! {
                    r = l.accept() => r,
                    () = stop.notified() => return,
                };
                let Ok((s, addr)) = accepted else { continue };
                let (shared, listener, guard) = (Rc::clone(&shared), Rc::clone(&listener), Guard::new(&flight));
                tokio::task::spawn_local(async move {
                    let peer = Peer { ip: Some(addr.ip()), ..Peer::default() };
                    let (r, w) = s.into_split();
                    session::serve(&shared, &listener, r, w, peer).await;
                    drop(guard);
                });
            }
        }
    }
}

fn daemon(o: &Options, script: Script) -> Result<u8, Error> {
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut systemd = None;
        let mut opened = Vec::new();
        for spec in &script.config.listeners {
            let sockets = listen::open(&spec.target, &mut systemd)
                .map_err(|e| Error::Sys(format!("listen on {}", spec.target), e))?;
            let l = Rc::new(Listener::new(Rc::clone(&spec.handler), spec.max_size, script.config.address_check));
            opened.extend(sockets.into_iter().map(|s| (s, Rc::clone(&l))));
        }
        let shared = Rc::new(Shared { script, cgroup_mount: cgroup_mount() });
        shared.script.start();
        let flight = Rc::new(InFlight::default());
        let stop = Rc::new(Notify::new());
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| Error::Sys("catch SIGHUP".into(), e))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Sys("catch SIGTERM".into(), e))?;
        let mut loops = Vec::new();
        for (socket, l) in opened {
            loops.push(tokio::task::spawn_local(accept_loop(
                socket,
                Rc::clone(&shared),
                l,
                Rc::clone(&flight),
                Rc::clone(&stop),
            )));
        }
        listen::notify_systemd().map_err(|e| Error::Sys("notify NOTIFY_SOCKET".into(), e))?;
        if let Some(fd) = o.notify_fd {
            listen::notify_fd(fd).map_err(|e| Error::Sys(format!("notify readiness on fd {fd}"), e))?;
        }
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    if let Err(e) = shared.script.reload().await {
                        chainmail_sys::diag::warn(format_args!("reload() failed: {e}"));
                    }
                }
                _ = term.recv() => break,
            }
        }
        // Stop accepting (the listeners close), then let the sessions end.
        stop.notify_waiters();
        for l in loops {
            let _ = l.await;
        }
        let _ = tokio::time::timeout(DRAIN_LIMIT, async {
            while flight.count.get() > 0 {
                let idle = flight.idle.notified();
                if flight.count.get() == 0 {
                    break;
                }
                idle.await;
            }
        })
        .await;
        Ok(EXIT_OK)
    })
}

/// The peer of a UCSPI connection: SO_PEERCRED when fd 0 is a Unix
/// socket, else the UCSPI environment.
fn ucspi_peer(fd0: &std::os::fd::OwnedFd) -> Peer {
    use nix::sys::socket::{AddressFamily, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt};
    use std::os::fd::AsRawFd;
    // SO_PEERCRED answers on a TCP socket too (pid 0, uid -1): only a
    // Unix socket's answer counts.
    let unix =
        getsockname::<SockaddrStorage>(fd0.as_raw_fd()).ok().and_then(|a| a.family()) == Some(AddressFamily::Unix);
    if unix {
        if let Ok(c) = getsockopt(fd0, sockopt::PeerCredentials) {
            return Peer { pid: Some(c.pid()), uid: Some(c.uid()), gid: Some(c.gid()), ip: None };
        }
    }
    let num = |n: &str| std::env::var(n).ok().and_then(|v| v.parse().ok());
    let ip = std::env::var("TCPREMOTEIP").ok().and_then(|v| v.parse().ok());
    Peer { pid: num("IPCREMOTEPID").map(|p: u32| p as i32), uid: num("IPCREMOTEEUID"), gid: num("IPCREMOTEEGID"), ip }
}

fn ucspi(o: &Options, script: Script) -> Result<u8, Error> {
    let spec = match &o.listener {
        Some(name) => {
            script.config.listeners.iter().find(|l| l.target.to_string().as_bytes() == name.as_encoded_bytes())
        }
        None if script.config.listeners.len() == 1 => script.config.listeners.first(),
        None => return Err(Error::Usage("the configuration has several listeners: choose one with --listener".into())),
    }
    .ok_or_else(|| Error::Usage("no qmqp_listen() of that name".into()))?;
    let listener = Listener::new(Rc::clone(&spec.handler), spec.max_size, script.config.address_check);
    let fd0 = chainmail_sys::fd::adopt(0).map_err(|e| Error::Sys("take fd 0".into(), e))?;
    let fd1 = chainmail_sys::fd::adopt(1).map_err(|e| Error::Sys("take fd 1".into(), e))?;
    let peer = ucspi_peer(&fd0);
    let rt = runtime()?;
    let shared = Shared { script, cgroup_mount: cgroup_mount() };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        shared.script.start();
        chainmail_sys::fd::set_nonblocking(&fd0, true).map_err(|e| Error::Sys("use fd 0".into(), e))?;
        chainmail_sys::fd::set_nonblocking(&fd1, true).map_err(|e| Error::Sys("use fd 1".into(), e))?;
        let r = pipe_or_socket_reader(fd0).map_err(|e| Error::Sys("use fd 0".into(), e))?;
        let w = pipe_or_socket_writer(fd1).map_err(|e| Error::Sys("use fd 1".into(), e))?;
        session::serve(&shared, &listener, r, w, peer).await;
        Ok(EXIT_OK)
    })
}

/// fd 0 as an async reader: a Unix or TCP socket, or a pipe.
fn pipe_or_socket_reader(fd: std::os::fd::OwnedFd) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Unpin>> {
    Ok(match chainmail_sys::fd::kind(&fd)? {
        chainmail_sys::fd::Kind::Socket => match std::os::unix::net::UnixStream::from(fd.try_clone()?).peer_addr() {
            Ok(_) => Box::new(tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?),
            Err(_) => Box::new(tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?),
        },
        _ => Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?),
    })
}

/// fd 1 as an async writer: a Unix or TCP socket, or a pipe.
fn pipe_or_socket_writer(fd: std::os::fd::OwnedFd) -> std::io::Result<Box<dyn tokio::io::AsyncWrite + Unpin>> {
    Ok(match chainmail_sys::fd::kind(&fd)? {
        chainmail_sys::fd::Kind::Socket => match std::os::unix::net::UnixStream::from(fd.try_clone()?).peer_addr() {
            Ok(_) => Box::new(tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?),
            Err(_) => Box::new(tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?),
        },
        _ => Box::new(tokio::net::unix::pipe::Sender::from_owned_fd(fd)?),
    })
}

fn run() -> Result<u8, Error> {
    let o = parse_args()?;
    let path = o.config.clone().unwrap_or_else(|| PathBuf::from(script::DEFAULT_CONFIG));
    let script = Script::load(&path)?;
    if o.check {
        for l in &script.config.listeners {
            println!("listen {} max_size={}", l.target, l.max_size);
        }
        return Ok(EXIT_OK);
    }
    if o.ucspi { ucspi(&o, script) } else { daemon(&o, script) }
}

fn main() -> ExitCode {
    chainmail_sys::diag::set_program("qrelay");
    chainmail_sys::diag::abort_on_panic();
    cli::finish(run(), false)
}
