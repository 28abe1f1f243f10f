//! smtpd-starttls-proxy-io: runs in front of a plain SMTP server (such as
//! qmail-smtpd) under a UCSPI-TLS server, and adds STARTTLS to it.
//!
//! `main` parses the command line, forks, execs the smtpd in the parent
//! and runs the proxy in the child; the exit code is decided in one place
//! (`Fatal::exit_code` and `session::Ended::exit_code`).
#![forbid(unsafe_code)]

mod session;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::Duration;

use chainmail_smtp::proxy;
use chainmail_sys::cli::{self, SysError, sys};
use chainmail_sys::process::{EnvChanges, Forked};
use chainmail_sys::{diag, fd};
use chainmail_ucspi_tls::{SslFds, UCSPI_TLS_VARS};

const USAGE: &str =
    "smtpd-starttls-proxy-io [ -v verbosity ] [ -t timeout ] [ -T relaytimeout ] [ -R ] [ -- ] smtpd...";

/// Settings from the command line.
#[derive(Debug)]
pub struct Options {
    /// 0 quiet, 1 errors and warnings, 2 notices.
    pub verbosity: u32,
    /// Idle time before the TLS decision; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Idle time of the relay after the decision; `None` for no limit.
    pub relay_timeout: Option<Duration>,
    /// The proxy core's settings.
    pub proxy: proxy::Config,
    /// The smtpd's command line.
    pub smtpd: Vec<OsString>,
    /// The UCSPI-TLS server takes handovers (`CHAINMAIL_TLS_HANDOVER=1`).
    pub handover: bool,
}

#[derive(Debug, thiserror::Error)]
enum Fatal {
    #[error("no smtpd to run")]
    Usage,
    #[error("{0}")]
    BadOption(String),
    #[error("{0}")]
    Env(#[from] chainmail_ucspi_tls::env::EnvError),
    #[error("unable to find the network connection on fds 0 and 1")]
    NoNetwork,
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl cli::Failure for Fatal {
    fn exit_code(&self) -> u8 {
        match self {
            Fatal::Usage | Fatal::BadOption(_) | Fatal::Env(_) | Fatal::NoNetwork => cli::EXIT_USAGE,
            Fatal::Sys(_) => cli::EXIT_TEMPORARY,
        }
    }

    fn usage(&self) -> Option<&'static str> {
        matches!(self, Fatal::Usage | Fatal::BadOption(_)).then_some(USAGE)
    }
}

/// A timeout in seconds, 0 for none; at most [`cli::MAX_TIMEOUT_SECS`].
fn seconds(value: OsString, what: &str) -> Result<Option<Duration>, Fatal> {
    let n = cli::seconds(&value, what).map_err(Fatal::BadOption)?;
    Ok((n > 0).then(|| Duration::from_secs(n)))
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Options, Fatal> {
    use lexopt::prelude::*;
    let mut opts = Options {
        verbosity: 1,
        timeout: Some(Duration::from_secs(300)),
        relay_timeout: Some(Duration::from_secs(1200)),
        proxy: proxy::Config::default(),
        smtpd: Vec::new(),
        handover: chainmail_ucspi_tls::env::handover_offered(),
    };
    let mut parser = lexopt::Parser::from_args(args);
    let bad = |e: lexopt::Error| Fatal::BadOption(e.to_string());
    while let Some(arg) = parser.next().map_err(bad)? {
        match arg {
            Short('v') | Long("verbosity") => {
                let v = parser.value().map_err(bad)?;
                opts.verbosity = v.parse().map_err(bad)?;
            }
            Short('t') | Long("timeout") => opts.timeout = seconds(parser.value().map_err(bad)?, "timeout")?,
            Short('T') | Long("relay-timeout") => {
                opts.relay_timeout = seconds(parser.value().map_err(bad)?, "relay timeout")?
            }
            Short('R') | Long("require-tls") => opts.proxy.require_tls = true,
            Value(v) => {
                opts.smtpd.push(v);
                opts.smtpd.extend(parser.raw_args().map_err(bad)?);
            }
            _ => return Err(bad(arg.unexpected())),
        }
    }
    if opts.smtpd.is_empty() {
        return Err(Fatal::Usage);
    }
    Ok(opts)
}

fn run() -> Result<u8, Fatal> {
    let opts = parse_args(std::env::args_os().skip(1))?;
    let ssl = SslFds::from_env()?;
    if !fd::is_inherited(0) || !fd::is_inherited(1) {
        return Err(Fatal::NoNetwork);
    }
    let (to_smtpd_r, to_smtpd_w) = fd::pipe().map_err(sys("create a pipe"))?;
    let (from_smtpd_r, from_smtpd_w) = fd::pipe().map_err(sys("create a pipe"))?;
    // Bigger pipes mean fewer wake-ups for a large message; best effort.
    let _ = fd::set_pipe_size(&to_smtpd_w, session::PIPE_SIZE);
    let _ = fd::set_pipe_size(&from_smtpd_w, session::PIPE_SIZE);

    match chainmail_sys::process::fork().map_err(sys("fork"))? {
        Forked::Parent { .. } => {
            // The smtpd: pipes on 0 and 1, no network, no UCSPI-TLS
            // descriptors (they are close-on-exec) nor their variables.
            fd::dup_onto(to_smtpd_r.as_fd(), 0).map_err(sys("move a pipe to fd 0"))?;
            fd::dup_onto(from_smtpd_w.as_fd(), 1).map_err(sys("move a pipe to fd 1"))?;
            drop((to_smtpd_r, to_smtpd_w, from_smtpd_r, from_smtpd_w, ssl));
            let mut env = EnvChanges::new();
            for name in UCSPI_TLS_VARS {
                env.remove(name);
            }
            env.remove(chainmail_ucspi_tls::env::HANDOVER_VAR);
            let err = chainmail_sys::process::exec(&opts.smtpd, &env);
            Err(sys("exec the smtpd")(err).into())
        }
        Forked::Child => {
            drop((to_smtpd_r, from_smtpd_w));
            let net_in = fd::adopt(0).map_err(sys("take over fd 0"))?;
            let net_out = fd::adopt(1).map_err(sys("take over fd 1"))?;
            let ended = session::run(
                &opts,
                session::Fds { net_in, net_out, ssl, smtpd_in: to_smtpd_w, smtpd_out: from_smtpd_r },
            )
            .map_err(sys("relay the session"))?;
            Ok(ended.exit_code())
        }
    }
}

fn main() -> ExitCode {
    diag::set_program("smtpd-starttls-proxy-io");
    diag::abort_on_panic();
    cli::finish(run(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(args(&["qmail-smtpd"])).expect("plain");
        assert_eq!(o.smtpd, args(&["qmail-smtpd"]));
        assert_eq!(o.timeout, Some(Duration::from_secs(300)));
        assert!(!o.proxy.require_tls);
        let o = parse_args(args(&["-R", "-t", "5", "-T0", "--", "-odd", "-x"])).expect("opts");
        assert!(o.proxy.require_tls);
        assert_eq!(o.timeout, Some(Duration::from_secs(5)));
        assert_eq!(o.relay_timeout, None);
        assert_eq!(o.smtpd, args(&["-odd", "-x"]));
        // Options after the smtpd's name are the smtpd's.
        let o = parse_args(args(&["smtpd", "-R", "x"])).expect("stop at prog");
        assert!(!o.proxy.require_tls);
        assert_eq!(o.smtpd, args(&["smtpd", "-R", "x"]));
        assert!(matches!(parse_args(args(&[])), Err(Fatal::Usage)));
        assert!(matches!(parse_args(args(&["-t", "x", "s"])), Err(Fatal::BadOption(_))));
        assert!(matches!(parse_args(args(&["-q", "s"])), Err(Fatal::BadOption(_))));
        // Absurd timeouts are refused: -T 18446744073709551615 overflowed
        // the relay's deadline in every plaintext session.
        for opt in ["-t", "-T"] {
            assert!(matches!(parse_args(args(&[opt, "18446744073709551615", "s"])), Err(Fatal::BadOption(_))));
        }
        assert_eq!(
            parse_args(args(&["-T", "604800", "s"])).expect("a week").relay_timeout,
            Some(Duration::from_secs(604_800))
        );
    }
}
