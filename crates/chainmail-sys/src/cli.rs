//! The command-line conventions every chainmail program shares: the exit
//! codes, the usage message, the `unable to X: cause` error of a failed
//! system call, bounded option values, and the one place where `main`
//! turns its result into an exit code and a `prog: fatal:` line.
//!
//! `main` returns [`std::process::ExitCode`]; nothing calls
//! `std::process::exit`, so that every process (the forked ones too) ends
//! the same way. Program-specific codes (the TLS codes 96/97/98 of
//! ucspi-tlsd, the proxy's session codes) are named in their programs.

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::process::ExitCode;

use thiserror::Error;

use crate::diag;

/// Success.
pub const EXIT_OK: u8 = 0;
/// Wrong usage or a bad environment: running again will not help.
pub const EXIT_USAGE: u8 = 100;
/// A temporary or system failure: running again may help.
pub const EXIT_TEMPORARY: u8 = 111;

/// The largest timeout an option takes: a week. Larger values are
/// refused as usage errors rather than overflowing a deadline.
pub const MAX_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

/// Prints `prog: usage: <usage>` and returns exit code 100, for `main` to
/// return.
pub fn usage(usage: &str) -> ExitCode {
    diag::usage(format_args!("{usage}"));
    ExitCode::from(EXIT_USAGE)
}

/// A system call that failed: `unable to <what>: <cause>`.
#[derive(Debug, Error)]
#[error("unable to {what}: {source}")]
pub struct SysError {
    /// What we tried, as the end of "unable to ...".
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// Turns an `io::Error` into a [`SysError`] saying what failed; `?` then
/// turns that into the caller's error type (`#[from] SysError`):
/// `fd::pipe().map_err(sys("create a pipe"))?`.
pub fn sys(what: &'static str) -> impl FnOnce(io::Error) -> SysError {
    move |source| SysError { what, source }
}

/// An error that ends a program: it knows its exit code.
pub trait Failure: fmt::Display {
    /// The exit code (100, 111, or a program's own).
    fn exit_code(&self) -> u8;

    /// The usage line to print after the error, for errors of usage.
    fn usage(&self) -> Option<&'static str> {
        None
    }
}

/// The end of `main`: `Ok(code)` exits with `code`; an error prints
/// `prog: fatal: <error>` (unless `quiet`), then `prog: usage: ...` for a
/// usage error (always), and exits with the error's code.
pub fn finish<E: Failure>(result: Result<u8, E>, quiet: bool) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if !quiet {
                diag::fatal(format_args!("{e}"));
            }
            match e.usage() {
                Some(line) => usage(line),
                None => ExitCode::from(e.exit_code()),
            }
        }
    }
}

/// A number of seconds from an option's value, at most
/// [`MAX_TIMEOUT_SECS`]; `what` names the option in the error.
pub fn seconds(value: &OsStr, what: &str) -> Result<u64, String> {
    bounded(value, what, MAX_TIMEOUT_SECS, "seconds")
}

/// A number of milliseconds from an option's value, at most
/// [`MAX_TIMEOUT_SECS`] seconds' worth.
pub fn milliseconds(value: &OsStr, what: &str) -> Result<u64, String> {
    bounded(value, what, MAX_TIMEOUT_SECS * 1000, "milliseconds")
}

fn bounded(value: &OsStr, what: &str, max: u64, unit: &str) -> Result<u64, String> {
    let s = value.to_str().unwrap_or("");
    let invalid = || format!("invalid {what} {:?}: expected 0 to {max} {unit}", value.to_string_lossy());
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match s.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_values() {
        for (v, want) in [
            ("0", Some(0)),
            ("300", Some(300)),
            ("604800", Some(MAX_TIMEOUT_SECS)),
            ("604801", None),
            ("18446744073709551615", None),
            ("18446744073709551616", None),
            ("", None),
            ("-1", None),
            ("+5", None),
            ("5s", None),
            (" 5", None),
        ] {
            assert_eq!(seconds(OsStr::new(v), "timeout").ok(), want, "{v:?}");
        }
        assert_eq!(milliseconds(OsStr::new("604800000"), "t"), Ok(604_800_000));
        let e = milliseconds(OsStr::new("604800001"), "handshake timeout").expect_err("too big");
        assert_eq!(e, "invalid handshake timeout \"604800001\": expected 0 to 604800000 milliseconds");
    }

    #[derive(Debug, Error)]
    enum Example {
        #[error(transparent)]
        Sys(#[from] SysError),
    }

    impl Failure for Example {
        fn exit_code(&self) -> u8 {
            EXIT_TEMPORARY
        }
    }

    #[test]
    fn sys_says_what_failed() {
        let e = Example::from(sys("create a pipe")(io::Error::from_raw_os_error(libc::EMFILE)));
        assert_eq!(e.to_string(), "unable to create a pipe: Too many open files (os error 24)");
        assert_eq!(e.exit_code(), 111);
        let _ = finish::<Example>(Ok(0), true);
    }
}
