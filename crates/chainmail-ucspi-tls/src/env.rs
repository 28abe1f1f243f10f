//! The UCSPI-TLS environment contract.
//!
//! A UCSPI-TLS server (ucspi-tlsd, s6-ucspitlsd, `sslserver -n`) starts
//! its application with three descriptor numbers in the environment:
//!
//! * `SSLCTLFD`: the control socket ([`crate::control`]). Writing `y`
//!   starts TLS; `Y` starts TLS and asks for the connection information
//!   back on the same socket; closing it declines TLS.
//! * `SSLREADFD`: where the application reads plaintext once TLS runs.
//! * `SSLWRITEFD`: where the application writes plaintext once TLS runs.

use std::ffi::OsStr;
use std::os::fd::{OwnedFd, RawFd};

use thiserror::Error;

use chainmail_sys::fd;

/// Name of the control socket variable.
pub const SSLCTLFD: &str = "SSLCTLFD";
/// Name of the read pipe variable.
pub const SSLREADFD: &str = "SSLREADFD";
/// Name of the write pipe variable.
pub const SSLWRITEFD: &str = "SSLWRITEFD";
/// The three variables, in the order above.
pub const UCSPI_TLS_VARS: [&str; 3] = [SSLCTLFD, SSLREADFD, SSLWRITEFD];

/// A problem with the environment contract.
#[derive(Debug, Error)]
pub enum EnvError {
    /// The variable is not set.
    #[error("{0} is not set")]
    Missing(&'static str),
    /// The variable is not an unsigned decimal integer.
    #[error("{name} is not a valid file descriptor number: {value:?}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What it contained.
        value: String,
    },
    /// The number is 0, 1 or 2: those are the network's (or the standard
    /// error's), and two owners would close the same descriptor.
    #[error("{name}={fd} names a standard descriptor (0, 1 or 2), which the UCSPI-TLS descriptors may not be")]
    Standard {
        /// The variable.
        name: &'static str,
        /// The number.
        fd: RawFd,
    },
    /// The number does not name an open descriptor.
    #[error("{name}={fd} does not name an open file descriptor")]
    NotOpen {
        /// The variable.
        name: &'static str,
        /// The number.
        fd: RawFd,
    },
    /// A system call failed while taking the descriptors over.
    #[error("unable to take over {name}: {source}")]
    Io {
        /// The variable.
        name: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// Parses a descriptor number the way skalibs does: decimal digits only,
/// no sign, no spaces, and it must fit an `int`.
pub(crate) fn parse_fd_number(value: &OsStr) -> Option<RawFd> {
    let s = value.to_str()?;
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<RawFd>().ok()
}

fn fd_var(name: &'static str) -> Result<RawFd, EnvError> {
    let value = std::env::var_os(name).ok_or(EnvError::Missing(name))?;
    parse_fd_number(&value).ok_or_else(|| EnvError::Invalid { name, value: value.to_string_lossy().into_owned() })
}

/// The three UCSPI-TLS descriptors, owned.
#[derive(Debug)]
pub struct SslFds {
    /// The control socket.
    pub ctl: OwnedFd,
    /// Plaintext from the TLS engine.
    pub read: OwnedFd,
    /// Plaintext to the TLS engine.
    pub write: OwnedFd,
}

impl SslFds {
    /// Reads `SSLCTLFD`, `SSLREADFD` and `SSLWRITEFD`, checks that each
    /// names an open descriptor and takes ownership of them.
    ///
    /// The contract allows the read and write descriptors to be the same
    /// number (a socket); the second one is then a duplicate, so that each
    /// can be closed on its own. The same holds for the control socket.
    /// The numbers 0, 1 and 2 are refused: the network is on 0 and 1, and
    /// the program takes those over itself.
    pub fn from_env() -> Result<SslFds, EnvError> {
        let numbers = [fd_var(SSLCTLFD)?, fd_var(SSLREADFD)?, fd_var(SSLWRITEFD)?];
        for (name, &n) in UCSPI_TLS_VARS.iter().zip(numbers.iter()) {
            if n <= 2 {
                return Err(EnvError::Standard { name, fd: n });
            }
        }
        for (name, &n) in UCSPI_TLS_VARS.iter().zip(numbers.iter()) {
            if !fd::is_open(n) {
                return Err(EnvError::NotOpen { name, fd: n });
            }
        }
        let mut owned: Vec<OwnedFd> = Vec::with_capacity(3);
        for (i, (&name, &n)) in UCSPI_TLS_VARS.iter().zip(numbers.iter()).enumerate() {
            let earlier = numbers[..i].iter().position(|&m| m == n);
            let fd = match earlier {
                Some(j) => owned[j].try_clone().map_err(|source| EnvError::Io { name, source })?,
                None => fd::adopt(n).map_err(|source| EnvError::Io { name, source })?,
            };
            fd::set_cloexec(&fd, true).map_err(|source| EnvError::Io { name, source })?;
            owned.push(fd);
        }
        let write = owned.pop().ok_or(EnvError::Missing(SSLWRITEFD))?;
        let read = owned.pop().ok_or(EnvError::Missing(SSLREADFD))?;
        let ctl = owned.pop().ok_or(EnvError::Missing(SSLCTLFD))?;
        Ok(SslFds { ctl, read, write })
    }
}

/// Set to `1` by an engine that takes chainmail's handover (`H`, see
/// [`crate::control`]) in its application's environment. Other UCSPI-TLS
/// servers do not set it, and applications that do not know it never
/// send `H`.
pub const HANDOVER_VAR: &str = "CHAINMAIL_TLS_HANDOVER";

/// Whether this process's UCSPI-TLS server announced the handover.
pub fn handover_offered() -> bool {
    std::env::var_os(HANDOVER_VAR).is_some_and(|v| v == "1")
}

/// The variables that configure a TLS engine and that a UCSPI-TLS server
/// removes from its application's environment unless told to keep them:
/// `CADIR`, `CAFILE`, `CERTFILE`, `KEYFILE`, `CERTFILE:x`, `KEYFILE:x`,
/// `TLS_UID` and `TLS_GID`.
pub fn is_tls_engine_var(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    matches!(name, "CADIR" | "CAFILE" | "CERTFILE" | "KEYFILE" | "TLS_UID" | "TLS_GID")
        || name.starts_with("CERTFILE:")
        || name.starts_with("KEYFILE:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_numbers() {
        for (s, want) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("2147483647", Some(i32::MAX)),
            ("2147483648", None),
            ("", None),
            ("-1", None),
            ("+3", None),
            (" 3", None),
            ("3 ", None),
            ("3a", None),
            ("99999999999", None),
        ] {
            assert_eq!(parse_fd_number(OsStr::new(s)), want, "{s:?}");
        }
    }

    #[test]
    fn tls_engine_vars() {
        for yes in
            ["CADIR", "CAFILE", "CERTFILE", "KEYFILE", "TLS_UID", "TLS_GID", "CERTFILE:a.test", "KEYFILE:*.b.test"]
        {
            assert!(is_tls_engine_var(OsStr::new(yes)), "{yes}");
        }
        for no in ["CERTFILEX", "PATH", "SSLCTLFD", "TLS_UIDX", "certfile", "KEYFILES"] {
            assert!(!is_tls_engine_var(OsStr::new(no)), "{no}");
        }
    }
}
