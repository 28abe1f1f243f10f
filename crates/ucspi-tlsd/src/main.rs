//! A UCSPI-TLS server: lets its application start TLS on demand.
//!
//! `ucspi-tlsd [options] prog...` runs under a UCSPI server with the
//! network on fds 0 and 1. It forks: the parent execs prog with
//! `SSLCTLFD`, `SSLREADFD` and `SSLWRITEFD` in its environment; the child
//! is the TLS engine, which loads the key material, drops privileges and
//! waits for prog to write `y`, `Y` or `H` on the control socket. See
//! `doc/ucspi-tlsd.md`.
#![forbid(unsafe_code)]

mod options;
mod session;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;

use chainmail_sys::cli::{self, SysError, sys};
use chainmail_sys::process::{self, EnvChanges, Forked, PrivError, TlsIds};
use chainmail_sys::{Deadline, diag, fd, net};
use chainmail_tls::{ConfigError, ConnectionInfo, EngineError, ServerEngine, TlsEnv};
use chainmail_ucspi_tls::control::{self, Command, ControlError, EngineControl};
use chainmail_ucspi_tls::env;
use thiserror::Error;

use crate::options::Config;
use crate::session::{HandshakeError, RelayError, Session};

/// Everything that ends ucspi-tlsd with a non-zero status.
#[derive(Debug, Error)]
enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("file descriptors 0 and 1 must be open (the network connection)")]
    NoNetwork,
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("unable to set up the TLS engine: {0}")]
    Setup(#[source] chainmail_tls::rustls::Error),
    #[error("unable to drop privileges: {0}")]
    Privileges(#[from] PrivError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error("unable to exec {prog}: {source}")]
    Exec { prog: String, source: io::Error },
    #[error("TLS handshake failed: {0}")]
    Handshake(EngineError),
    #[error("TLS handshake failed: timed out")]
    HandshakeTimeout,
    #[error("TLS error: {0}")]
    Tls(EngineError),
    #[error("unable to send the last data to the network: timed out")]
    FlushTimeout,
}

/// A variable the options need is missing, or the key material is
/// unreadable or invalid (s6-ucspitlsd's code).
const EXIT_TLS_CONFIG: u8 = 96;
/// The TLS engine could not be set up from valid material.
const EXIT_TLS_SETUP: u8 = 97;
/// The handshake or the session failed at the TLS level.
const EXIT_TLS_RUNTIME: u8 = 98;

impl cli::Failure for Error {
    /// The exit status: the one place where errors become numbers.
    fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::NoNetwork | Error::Control(ControlError::UnknownCommand(_)) => cli::EXIT_USAGE,
            Error::Privileges(e) if e.is_config() => cli::EXIT_USAGE,
            Error::Config(e) if e.is_engine_setup() => EXIT_TLS_SETUP,
            Error::Config(_) => EXIT_TLS_CONFIG,
            Error::Setup(_) => EXIT_TLS_SETUP,
            Error::Handshake(_) | Error::HandshakeTimeout | Error::FlushTimeout => EXIT_TLS_RUNTIME,
            Error::Tls(e) if e.is_tls() => EXIT_TLS_RUNTIME,
            Error::Tls(_) | Error::Control(_) | Error::Privileges(_) | Error::Sys(_) | Error::Exec { .. } => {
                cli::EXIT_TEMPORARY
            }
        }
    }

    fn usage(&self) -> Option<&'static str> {
        matches!(self, Error::Usage(_)).then_some(options::USAGE)
    }
}

fn main() -> ExitCode {
    diag::set_program("ucspi-tlsd");
    diag::abort_on_panic();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let config = match options::parse(args) {
        Ok(c) => c,
        Err(reason) => return cli::finish::<Error>(Err(Error::Usage(reason)), false),
    };
    // Both processes, prog (if its exec fails) and the engine, end here.
    cli::finish(run(&config).map(|()| cli::EXIT_OK), config.verbosity == 0)
}

/// Checks, forks, and becomes either prog (no return on success) or the
/// TLS engine (returns when the session is over).
fn run(config: &Config) -> Result<(), Error> {
    if !fd::is_inherited(0) || !fd::is_inherited(1) {
        return Err(Error::NoNetwork);
    }
    // A half-configured drop stops everything before the first session.
    let tls_ids = TlsIds::from_env()?;
    let tls_env = TlsEnv::from_env();
    tls_env.check(config.sni, config.client_auth)?;

    // prog reads plaintext from `to_app_r` and writes to `from_app_w`.
    let (to_app_r, to_app_w) = fd::pipe().map_err(sys("create a pipe"))?;
    let (from_app_r, from_app_w) = fd::pipe().map_err(sys("create a pipe"))?;
    let (ctl_app, ctl_engine) = fd::socketpair().map_err(sys("create a socket pair"))?;

    match process::fork().map_err(sys("fork"))? {
        Forked::Parent { .. } => {
            drop((to_app_w, from_app_r, ctl_engine));
            exec_prog(config, ctl_app, to_app_r, from_app_w)
        }
        Forked::Child => {
            drop((to_app_r, from_app_w, ctl_app));
            engine(config, &tls_env, tls_ids, ctl_engine, from_app_r, to_app_w)
        }
    }
}

fn exec_prog(config: &Config, ctl: OwnedFd, read: OwnedFd, write: OwnedFd) -> Result<(), Error> {
    let mut changes = EnvChanges::new();
    if !config.keep_env {
        changes.remove_matching(env::is_tls_engine_var);
    }
    for (name, fd) in [(env::SSLCTLFD, &ctl), (env::SSLREADFD, &read), (env::SSLWRITEFD, &write)] {
        fd::set_cloexec(fd, false).map_err(sys("clear close-on-exec"))?;
        changes.set(name, fd.as_raw_fd().to_string());
    }
    // This engine takes handovers (`H`, see chainmail_ucspi_tls::control).
    changes.set(env::HANDOVER_VAR, "1");
    let source = process::exec(&config.prog, &changes);
    Err(Error::Exec { prog: config.prog[0].to_string_lossy().into_owned(), source })
}

/// The TLS engine: the child of prog.
fn engine(
    config: &Config,
    tls_env: &TlsEnv,
    tls_ids: Option<TlsIds>,
    ctl: OwnedFd,
    app_r: OwnedFd,
    app_w: OwnedFd,
) -> Result<(), Error> {
    let notice = |args: std::fmt::Arguments<'_>| {
        if config.verbosity >= 2 {
            diag::info(args);
        }
    };
    let server_config = tls_env.server_config(config.sni, config.client_auth)?;
    // The keys are loaded: nothing more needs root.
    if let Some(ids) = tls_ids {
        ids.drop_privileges()?;
    }

    // The control socket: its other end lives as long as prog (or until
    // prog closes it), so this blocking read is bounded by prog's life.
    let Some(control) = EngineControl::read_command(ctl)? else {
        notice(format_args!("application declined TLS"));
        return Ok(());
    };

    // prog no longer uses the network: it is ours, and non-blocking.
    let net_r = fd::adopt(0).map_err(sys("take over fd 0"))?;
    let net_w = fd::adopt(1).map_err(sys("take over fd 1"))?;
    for fd in [&net_r, &net_w, &app_r, &app_w] {
        fd::set_nonblocking(fd, true).map_err(sys("set a descriptor non-blocking"))?;
    }
    net::set_nodelay(&net_w);

    let control_command = control.command();
    let mut engine = ServerEngine::new(server_config, config.policy).map_err(Error::Setup)?;
    let mut session = Session::new(net_r, net_w, app_r, app_w);
    let deadline = Deadline::after_millis_or_never(config.handshake_timeout_ms);
    if let Err(e) = session.handshake(&mut engine, deadline) {
        session.abort(&mut engine);
        return Err(match e {
            HandshakeError::Engine(e) => Error::Handshake(e),
            HandshakeError::Timeout => Error::HandshakeTimeout,
            HandshakeError::Poll(e) => Error::Sys(SysError { what: "poll", source: e }),
        });
    }

    session.ack_now();

    let info = ConnectionInfo::of(&engine);
    if config.verbosity >= 2 {
        let protocol = info.protocol.and_then(chainmail_tls::protocol_name).unwrap_or("?");
        let cipher = info.cipher.map(chainmail_tls::cipher_suite_name).unwrap_or_default();
        let sni = info.server_name.unwrap_or("");
        notice(format_args!("TLS handshake done: {protocol} {cipher} sni={sni}"));
    }
    let mut idle = None;
    if let Some(handover) = control.finish(&info.record(), control::HANDOVER_WAIT)? {
        // From here on the engine relays with what is behind the new
        // descriptors (the smtpd) and the proxy is gone.
        session.replace_app(handover.from_app, handover.to_app).map_err(sys("take the handed-over descriptors"))?;
        engine.queue_app_data(&handover.to_client);
        idle = handover.idle;
        notice(format_args!("the application handed its descriptors over"));
    } else if control_command == Command::TlsWithHandover {
        notice(format_args!("no handover: relaying through SSLREADFD and SSLWRITEFD"));
    }

    session.resume_app();
    if let Err(e) = session.relay(&mut engine, idle) {
        if let RelayError::Idle = e {
            notice(format_args!("nothing relayed for {:?}: session closed", idle.unwrap_or_default()));
            session.abort(&mut engine);
            return Ok(());
        }
        // After the application's last byte has left and the write side
        // is shut down, a peer's alert is only a comment on how the
        // session ended: OpenSSL 3 sends one when EOF comes without
        // close_notify, which is what -s (the default) does. Nothing was
        // lost; it is not an error of this session.
        if let RelayError::Engine(EngineError::Tls(chainmail_tls::rustls::Error::AlertReceived(alert))) = &e {
            if engine.output_done() {
                notice(format_args!("peer sent {alert:?} after the end of the session"));
                session.drain();
                return Ok(());
            }
        }
        session.abort(&mut engine);
        return Err(match e {
            RelayError::Engine(e) => Error::Tls(e),
            RelayError::FlushTimeout => Error::FlushTimeout,
            RelayError::Poll(e) => Error::Sys(SysError { what: "poll", source: e }),
            RelayError::Idle => unreachable!("handled above"),
        });
    }
    session.drain();
    Ok(())
}
