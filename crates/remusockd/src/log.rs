//! Logging: `remusockd: level: message` on stderr in the foreground (one
//! write per line, through `chainmail_sys::diag`), or syslog (facility
//! daemon, over `/dev/log`) once daemonized. `-v` adds the debug lines.

use std::fmt;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();
static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Turns the debug lines on.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Sends everything to syslog from now on (after daemonizing). Falls back
/// to stderr (which is then /dev/null) when there is no syslog socket.
pub fn use_syslog() {
    if let Ok(s) = UnixDatagram::unbound()
        && s.connect("/dev/log").is_ok()
    {
        let _ = SYSLOG.set(s);
    }
}

fn emit(severity: u8, level: &str, args: fmt::Arguments<'_>) {
    match SYSLOG.get() {
        Some(s) => {
            // Facility daemon (3).
            let line = format!("<{}>remusockd[{}]: {level}: {args}", 3 * 8 + severity, std::process::id());
            let _ = s.send(line.as_bytes());
        }
        None => match level {
            "warning" => chainmail_sys::diag::warn(args),
            _ => chainmail_sys::diag::info(args),
        },
    }
}

/// A notice (links up and down, reloads).
pub fn info(args: fmt::Arguments<'_>) {
    emit(6, "info", args);
}

/// Something went wrong, and the daemon goes on.
pub fn warn(args: fmt::Arguments<'_>) {
    emit(4, "warning", args);
}

/// Only with `-v`.
pub fn debug(args: fmt::Arguments<'_>) {
    if VERBOSE.load(Ordering::Relaxed) {
        emit(7, "debug", args);
    }
}
