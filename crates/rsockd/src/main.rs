//! rsockd: a SOCKS4/4a/5 server for one connection (the client on fds 0
//! and 1, under tcpserver, s6-tcpserver or inetd) that decides with
//! `sockd.conf` whether to serve, and with `socks.conf` how to reach the
//! destination: directly, refused, or through upstream SOCKS servers
//! tried in order. With `-L`, it listens itself and serves each
//! connection on a thread of its own with the same session code. See
//! doc/rsockd.md.
#![forbid(unsafe_code)]

mod config;
mod ident;
mod io;
mod listen;
mod log;
mod session;
mod state;
mod udp;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chainmail_socks::conf::IdentMode;
use chainmail_sys::cli::{self, EXIT_OK, EXIT_TEMPORARY, EXIT_USAGE, Failure};
use chainmail_sys::diag;

const USAGE: &str = "rsockd [-ver | -i | -I] [-f sockd.conf] [-F socks.conf] [-a passwords] [-s statedir] \
[-b seconds] [-c seconds] [-t seconds] [-l] [-L address:port [-n max] [-N fd]] | rsockd [-f ...] [-F ...] -T dest port [user] | rsockd [-f ...] [-F ...] -C";

/// What the command line asks for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `-i` / `-I`: the identd mode of rules without `?=`.
    pub ident: IdentMode,
    /// `-f`.
    pub sockd_conf: PathBuf,
    /// `-F`.
    pub socks_conf: PathBuf,
    /// `-a`.
    pub passwords: Option<PathBuf>,
    /// `-s`.
    pub state_dir: Option<PathBuf>,
    /// `-b`.
    pub bad_for: Duration,
    /// `-c`.
    pub connect_timeout: Duration,
    /// `-t`.
    pub idle_timeout: Duration,
    /// `-l`: log to syslog too.
    pub syslog: bool,
}

/// `-L`, `-n`, `-N`: the listener mode.
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// `-L`: where to listen.
    pub addr: std::net::SocketAddr,
    /// `-n`: connections served at once, at most.
    pub max: usize,
    /// `-N`: the descriptor that gets a newline once listening.
    pub notify_fd: Option<i32>,
}

/// `-n`'s default and its largest value.
const DEFAULT_MAX: usize = 100;
const LARGEST_MAX: usize = 10_000;

enum Mode {
    Version,
    Serve,
    Listen(ListenOptions),
    Test { dest: String, port: String, user: Option<String> },
    Check,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("unable to {0}: {1}")]
    Sys(String, std::io::Error),
}

impl Failure for Error {
    fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Config(_) => EXIT_USAGE,
            Error::Session(e) => e.exit_code(),
            Error::Sys(..) => EXIT_TEMPORARY,
        }
    }

    fn usage(&self) -> Option<&'static str> {
        matches!(self, Error::Usage(_)).then_some(USAGE)
    }
}

fn parse(args: Vec<OsString>) -> Result<(Mode, Options), String> {
    use lexopt::prelude::*;
    let mut o = Options {
        ident: IdentMode::Off,
        sockd_conf: PathBuf::from("/etc/sockd.conf"),
        socks_conf: PathBuf::from("/etc/socks.conf"),
        passwords: None,
        state_dir: None,
        bad_for: Duration::from_secs(300),
        connect_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(3600),
        syslog: false,
    };
    // `-ver` is the original's spelling: one option of three letters.
    if args.iter().any(|a| a == "-ver") {
        return Ok((Mode::Version, o));
    }
    let mut p = lexopt::Parser::from_args(args);
    let bad = |e: lexopt::Error| e.to_string();
    let secs = |v: OsString, what: &str| cli::seconds(&v, what).map(Duration::from_secs);
    let mut mode = Mode::Serve;
    let mut test = false;
    let mut free = Vec::new();
    let (mut listen, mut max, mut notify_fd) = (None, None, None);
    while let Some(arg) = p.next().map_err(bad)? {
        match arg {
            Short('i') => o.ident = IdentMode::Lenient,
            Short('I') => o.ident = IdentMode::Strict,
            Short('f') => o.sockd_conf = PathBuf::from(p.value().map_err(bad)?),
            Short('F') => o.socks_conf = PathBuf::from(p.value().map_err(bad)?),
            Short('a') => o.passwords = Some(PathBuf::from(p.value().map_err(bad)?)),
            Short('s') => o.state_dir = Some(PathBuf::from(p.value().map_err(bad)?)),
            Short('b') => o.bad_for = secs(p.value().map_err(bad)?, "bad-upstream time")?,
            Short('c') => o.connect_timeout = secs(p.value().map_err(bad)?, "connect timeout")?,
            Short('t') => o.idle_timeout = secs(p.value().map_err(bad)?, "idle timeout")?,
            Short('l') => o.syslog = true,
            Short('T') => test = true,
            Short('C') => mode = Mode::Check,
            Short('L') => {
                let v = p.value().map_err(bad)?.string().map_err(bad)?;
                let addr = v.parse::<std::net::SocketAddr>();
                listen = Some(addr.map_err(|_| format!("-L wants address:port or [v6]:port, not {v:?}"))?);
            }
            Short('n') => {
                let v = p.value().map_err(bad)?.string().map_err(bad)?;
                let n = v.parse::<usize>().ok().filter(|n| (1..=LARGEST_MAX).contains(n));
                max = Some(n.ok_or_else(|| format!("-n wants 1 to {LARGEST_MAX}, not {v:?}"))?);
            }
            Short('N') => {
                let v = p.value().map_err(bad)?.string().map_err(bad)?;
                let n = v.parse::<i32>().ok().filter(|n| *n >= 0);
                notify_fd = Some(n.ok_or_else(|| format!("-N wants a descriptor number, not {v:?}"))?);
            }
            Value(v) => free.push(v.string().map_err(bad)?),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if test {
        if free.len() < 2 || free.len() > 3 {
            return Err("-T needs dest port [user]".into());
        }
        let mut f = free.into_iter();
        let (dest, port) = (f.next().unwrap_or_default(), f.next().unwrap_or_default());
        mode = Mode::Test { dest, port, user: f.next() };
    } else if !free.is_empty() {
        return Err(format!("unexpected argument {:?}", free[0]));
    }
    match (listen, &mode) {
        (Some(addr), Mode::Serve) => {
            mode = Mode::Listen(ListenOptions { addr, max: max.unwrap_or(DEFAULT_MAX), notify_fd });
        }
        (Some(_), _) => return Err("-L does not go with -T or -C".into()),
        (None, _) if max.is_some() || notify_fd.is_some() => return Err("-n and -N need -L".into()),
        (None, _) => {}
    }
    Ok((mode, o))
}

fn run() -> Result<u8, Error> {
    let (mode, opts) = parse(std::env::args_os().skip(1).collect()).map_err(Error::Usage)?;
    match mode {
        Mode::Version => {
            println!("rsockd {} (chainmail): SOCKS4, SOCKS4a, SOCKS5, RFC 1929", env!("CARGO_PKG_VERSION"));
            Ok(EXIT_OK)
        }
        Mode::Check => match config::Config::load(&opts) {
            Ok(_) => Ok(EXIT_OK),
            Err(e) => {
                println!("{e}");
                Ok(EXIT_USAGE)
            }
        },
        Mode::Test { dest, port, user } => {
            let c = config::Config::load(&opts).map_err(|e| Error::Config(e.to_string()))?;
            let line = c.explain(&dest, &port, user.as_deref()).map_err(Error::Usage)?;
            println!("{line}");
            Ok(EXIT_OK)
        }
        Mode::Serve => {
            config::set_resolve_timeout(opts.connect_timeout);
            Ok(session::serve_stdio(&opts)?)
        }
        Mode::Listen(l) => {
            config::set_resolve_timeout(opts.connect_timeout);
            listen::run(opts, &l)
        }
    }
}

fn main() -> ExitCode {
    diag::set_program("rsockd");
    diag::abort_on_panic();
    cli::finish(run(), false)
}

/// Exit code of a temporary failure, for the modules.
pub const TEMPORARY: u8 = EXIT_TEMPORARY;
