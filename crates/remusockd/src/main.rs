//! remusockd: a Unix socket on another machine, over one multiplexed TCP
//! or TLS link; on the wire compatible with remusock 2.0.
//!
//! One side is the socket server (it binds `socket` and accepts local
//! clients), the other the socket client (`-c`: it connects to `socket`
//! for each channel). Independently, one side listens on TCP `port` and
//! the other dials it (`-r host`). With `-U` the link is the descriptors
//! the program was started with (0/1, or 6/7 under a UCSPI client).
//!
//! The protocol is `chainmail-remusock`; this is the I/O around it, on
//! one current-thread tokio runtime.
#![forbid(unsafe_code)]

mod args;
mod link;
mod log;
mod setup;
mod tls;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use chainmail_remusock::Role;
use chainmail_sys::cli::{self, EXIT_OK, EXIT_TEMPORARY, EXIT_USAGE, Failure};
use chainmail_tls::{Policy, ServerEngine};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::link::{Crypto, Shared, Wire};

const USAGE: &str = "remusockd [-UVcfntv] [-C CAfile] [-H hash[:hash...]] [-N fd] [-b address] [-g group] \
                     [-m mode] [-p pidfile] [-r remotehost] [-u user] [-w seconds] socket port [cert key]";
/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The dialer's longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(String),
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

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Sys(what, e)
}

/// The TLS configurations, rebuilt on SIGHUP.
#[derive(Debug)]
struct TlsState {
    settings: tls::Settings,
    server: Option<Arc<rustls::ServerConfig>>,
    client: Option<Arc<rustls::ClientConfig>>,
}

impl TlsState {
    fn build(settings: tls::Settings, listener: bool) -> Result<TlsState, String> {
        let mut s = TlsState { settings, server: None, client: None };
        s.reload(listener)?;
        Ok(s)
    }

    fn reload(&mut self, listener: bool) -> Result<(), String> {
        if listener {
            self.server = Some(self.settings.server_config().map_err(|e| e.to_string())?);
        } else {
            self.client = Some(self.settings.client_config().map_err(|e| e.to_string())?);
        }
        Ok(())
    }
}

/// A small generator for the backoff's jitter (not for secrets).
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        Jitter((t as u64) ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// A fraction in [0.5, 1).
    fn half_to_one(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        0.5 + (self.0 >> 11) as f64 / (1u64 << 53) as f64 / 2.0
    }
}

/// The wait before the dialer's attempt number `failures` (1 = the first
/// retry): at most 1 s, then doubling up to 30 s, each times a factor in
/// [0.5, 1).
fn backoff(failures: u32, jitter: &mut Jitter) -> Duration {
    let base = Duration::from_secs(1u64 << failures.saturating_sub(1).min(5)).min(BACKOFF_CAP);
    base.mul_f64(jitter.half_to_one())
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| format!("invalid host name {host:?}"))
}

async fn serve_tcp(shared: Rc<Shared>, tls: Rc<RefCell<TlsState>>, listener: std::net::TcpListener) {
    let Ok(l) = tokio::net::TcpListener::from_std(listener) else { return };
    loop {
        let (stream, addr) = match l.accept().await {
            Ok(a) => a,
            Err(e) => {
                log::warn(format_args!("unable to accept a TCP connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.role == Role::SocketServer && shared.link_active.get() {
            log::warn(format_args!("{addr}: a link is up already: connection reset"));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let crypto = match &tls.borrow().server {
            None => Crypto::Plain,
            Some(config) => match ServerEngine::new(Arc::clone(config), Policy::default()) {
                Ok(e) => Crypto::Server(Box::new(e)),
                Err(e) => {
                    log::warn(format_args!("{addr}: TLS: {e}"));
                    continue;
                }
            },
        };
        let wire = match stream.into_std().map(OwnedFd::from).and_then(Wire::socket) {
            Ok(w) => w,
            Err(e) => {
                log::warn(format_args!("{addr}: {e}"));
                continue;
            }
        };
        let shared = Rc::clone(&shared);
        if shared.role == Role::SocketServer {
            shared.link_active.set(true);
        }
        tokio::task::spawn_local(async move {
            let peer = addr.to_string();
            log::debug(format_args!("connection from {peer}"));
            let end = link::run(Rc::clone(&shared), wire, crypto, true, &peer).await;
            log::info(format_args!("link with {peer} closed: {}", end.reason));
            if shared.role == Role::SocketServer {
                shared.link_active.set(false);
            }
        });
    }
}

async fn dial(shared: Rc<Shared>, tls: Rc<RefCell<TlsState>>, host: String, port: u16) {
    let mut jitter = Jitter::new();
    let mut failures = 0u32;
    loop {
        let established = dial_once(&shared, &tls, &host, port).await;
        failures = if established { 1 } else { failures + 1 };
        let wait = backoff(failures, &mut jitter);
        log::debug(format_args!("reconnecting in {} ms", wait.as_millis()));
        tokio::time::sleep(wait).await;
    }
}

/// One connection of the dialer; whether its IDENT exchange completed.
async fn dial_once(shared: &Rc<Shared>, tls: &Rc<RefCell<TlsState>>, host: &str, port: u16) -> bool {
    let target = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host(&target).await {
        Ok(a) => a.collect(),
        Err(e) => {
            log::warn(format_args!("unable to resolve {host}: {e}"));
            return false;
        }
    };
    let mut stream = None;
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                stream = Some((s, a));
                break;
            }
            Ok(Err(e)) => log::warn(format_args!("unable to connect to {a}: {e}")),
            Err(_) => log::warn(format_args!("unable to connect to {a}: timed out")),
        }
    }
    let Some((stream, addr)) = stream else { return false };
    let _ = stream.set_nodelay(true);
    let crypto = match &tls.borrow().client {
        None => Crypto::Plain,
        Some(config) => {
            let name = match server_name(host) {
                Ok(n) => n,
                Err(e) => {
                    log::warn(format_args!("{e}"));
                    return false;
                }
            };
            match chainmail_tls::ClientEngine::new_client(Arc::clone(config), name, Policy::default()) {
                Ok(e) => Crypto::Client(Box::new(e)),
                Err(e) => {
                    log::warn(format_args!("TLS: {e}"));
                    return false;
                }
            }
        }
    };
    let wire = match stream.into_std().map(OwnedFd::from).and_then(Wire::socket) {
        Ok(w) => w,
        Err(e) => {
            log::warn(format_args!("{addr}: {e}"));
            return false;
        }
    };
    shared.link_active.set(true);
    let peer = addr.to_string();
    let end = link::run(Rc::clone(shared), wire, crypto, false, &peer).await;
    shared.link_active.set(false);
    log::info(format_args!("link with {peer} closed: {}", end.reason));
    end.established
}

async fn accept_local(shared: Rc<Shared>, listener: std::os::unix::net::UnixListener) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(l) = tokio::net::UnixListener::from_std(listener) else { return };
    loop {
        match l.accept().await {
            Ok((s, _)) => shared.hold_client(s),
            Err(e) => {
                log::warn(format_args!("unable to accept a local connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn expire_held(shared: Rc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        shared.expire_held();
    }
}

/// SIGHUP, SIGTERM and SIGINT, caught from before the readiness
/// notification on.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn catch() -> Result<Signals, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            hup: signal(SignalKind::hangup()).map_err(sys("catch SIGHUP"))?,
            term: signal(SignalKind::terminate()).map_err(sys("catch SIGTERM"))?,
            int: signal(SignalKind::interrupt()).map_err(sys("catch SIGINT"))?,
        })
    }
}

/// Waits for SIGTERM or SIGINT, reloading the certificates on SIGHUP.
async fn signals(s: &mut Signals, tls: Option<(Rc<RefCell<TlsState>>, bool)>) {
    loop {
        tokio::select! {
            _ = s.hup.recv() => {
                if let Some((state, listener)) = &tls {
                    match state.borrow_mut().reload(*listener) {
                        Ok(()) => log::info(format_args!("certificates reloaded")),
                        Err(e) => log::warn(format_args!("reload failed, keeping the old certificates: {e}")),
                    }
                }
            }
            _ = s.term.recv() => return,
            _ = s.int.recv() => return,
        }
    }
}

/// Raises the soft limit on descriptors to the hard one: every channel
/// holds a local connection.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn run() -> Result<u8, Error> {
    raise_descriptor_limit();
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let o = args::parse(argv).map_err(Error::Usage)?;
    log::set_verbose(o.verbose);
    let role = if o.socket_client { Role::SocketClient } else { Role::SocketServer };
    let ids = setup::resolve_ids(o.user.as_deref(), o.group.as_deref()).map_err(Error::Config)?;
    let listener_side = o.remote.is_none();
    let tls = if o.tls {
        let pins = o.pins.as_deref().map(tls::parse_pins).transpose().map_err(Error::Usage)?;
        let settings = tls::Settings {
            cert_key: o.cert_key.as_ref().map(|(c, k)| (PathBuf::from(c), PathBuf::from(k))),
            ca_file: o.ca_file.as_ref().map(PathBuf::from),
            pins,
            no_verify: o.no_verify,
        };
        Some(Rc::new(RefCell::new(TlsState::build(settings, listener_side).map_err(Error::Config)?)))
    } else {
        None
    };

    // The pidfile first: a second instance must not touch the socket.
    let pidfile_path = match (&o.pidfile, o.foreground) {
        (Some(p), _) => Some(PathBuf::from(p)),
        (None, false) => Some(PathBuf::from(args::DEFAULT_PIDFILE)),
        (None, true) => None,
    };
    let mut pidfile = match &pidfile_path {
        Some(p) => Some(setup::Pidfile::lock(p).map_err(sys(format!("lock {}", p.display())))?),
        None => None,
    };
    let socket = PathBuf::from(&o.socket);
    let unix_listener = if role == Role::SocketServer {
        Some(setup::bind_socket(&socket, o.mode, ids).map_err(sys(format!("bind {}", socket.display())))?)
    } else {
        None
    };
    let tcp = if listener_side && !o.ucspi {
        setup::listen_tcp(&o.bind, o.port).map_err(sys(format!("listen on port {}", o.port)))?
    } else {
        Vec::new()
    };
    let ucspi_fds = if o.ucspi {
        let (r, w) =
            if chainmail_sys::fd::is_inherited(6) && chainmail_sys::fd::is_inherited(7) { (6, 7) } else { (0, 1) };
        Some((
            chainmail_sys::fd::adopt(r).map_err(sys(format!("take fd {r}")))?,
            chainmail_sys::fd::adopt(w).map_err(sys(format!("take fd {w}")))?,
        ))
    } else {
        None
    };
    let notify = o.notify_fd.map(|n| chainmail_sys::fd::adopt(n).map_err(sys(format!("take fd {n}")))).transpose()?;

    if !o.foreground {
        if !setup::daemonize().map_err(sys("daemonize"))? {
            return Ok(EXIT_OK);
        }
        log::use_syslog();
    }
    if let Some(p) = &mut pidfile {
        p.write_pid().map_err(sys("write the pidfile"))?;
    }
    setup::drop_privileges(ids).map_err(|e| Error::Sys(e, std::io::Error::from_raw_os_error(1)))?;

    // Ready once the signals are caught for a listener; a dialer is ready
    // once its link is.
    let ready_now = listener_side && !o.ucspi;
    let (ready, notify_now) = if ready_now { (None, notify) } else { (notify, None) };
    let shared = Rc::new(Shared {
        role,
        socket: socket.clone(),
        hold: Duration::from_secs(o.hold_secs),
        held: RefCell::new(VecDeque::new()),
        held_notify: Notify::new(),
        link_up: Cell::new(false),
        link_active: Cell::new(false),
        ready: RefCell::new(ready),
        extensions: std::env::var_os("REMUSOCKD_ORIGINAL_PROTOCOL").is_none(),
    });

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(sys("start the runtime"))?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async {
        let mut caught = Signals::catch()?;
        if let Some(fd) = notify_now {
            chainmail_sys::fd::write_all(&fd, b"\n").map_err(sys("write to the readiness descriptor"))?;
        }
        if let Some(l) = unix_listener {
            tokio::task::spawn_local(accept_local(Rc::clone(&shared), l));
            tokio::task::spawn_local(expire_held(Rc::clone(&shared)));
        }
        if let Some((r, w)) = ucspi_fds {
            let wire = Wire::pair(r, w).map_err(sys("use the UCSPI descriptors"))?;
            let end = tokio::select! {
                end = link::run(Rc::clone(&shared), wire, Crypto::Plain, true, "UCSPI peer") => end,
                () = signals(&mut caught, None) => return Ok(EXIT_OK),
            };
            log::info(format_args!("link closed: {}", end.reason));
            return Ok(EXIT_OK);
        }
        let tls_state = tls.clone().unwrap_or_else(|| {
            Rc::new(RefCell::new(TlsState {
                settings: tls::Settings { cert_key: None, ca_file: None, pins: None, no_verify: false },
                server: None,
                client: None,
            }))
        });
        for l in tcp {
            tokio::task::spawn_local(serve_tcp(Rc::clone(&shared), Rc::clone(&tls_state), l));
        }
        if let Some(host) = &o.remote {
            tokio::task::spawn_local(dial(Rc::clone(&shared), Rc::clone(&tls_state), host.clone(), o.port));
        }
        signals(&mut caught, tls.map(|t| (t, listener_side))).await;
        Ok(EXIT_OK)
    });
    if role == Role::SocketServer {
        let _ = std::fs::remove_file(&socket);
    }
    if let Some(p) = &pidfile_path
        && pidfile.is_some()
    {
        let _ = std::fs::remove_file(p);
    }
    result
}

fn main() -> ExitCode {
    chainmail_sys::diag::set_program("remusockd");
    chainmail_sys::diag::abort_on_panic();
    cli::finish(run(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_within_a_second_and_stops_at_30() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let first = backoff(1, &mut j);
            assert!(first >= Duration::from_millis(500) && first < Duration::from_secs(1), "{first:?}");
            let late = backoff(40, &mut j);
            assert!(late >= Duration::from_secs(15) && late < BACKOFF_CAP, "{late:?}");
        }
        assert!(backoff(3, &mut j) >= Duration::from_secs(2));
    }
}
