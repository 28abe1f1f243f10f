//! The contract between `qmail-remote` and `qmail-remote-io`.
//!
//! qmail-remote plans a delivery (control files, routes, DNS), connects to
//! one address after another, and for each connected socket runs
//! qmail-remote-io, which holds the SMTP dialogue on that socket:
//!
//! ```text
//! qmail-remote-io [ -t timeoutremote ] [ -K handshaketimeout ] [ -h helohost ]
//!     [ -s off|try|require|verify ] [ -n servername ] [ -T trustanchors ]
//!     [ -c clientcert ] [ -k clientkey ] [ -z size ] [ -8 ] [ -6 fdr ] [ -7 fdw ]
//!     [ -- ] ip sender recip...
//! ```
//!
//! The message is on fd 0, the socket on `fdr`/`fdw` (6 and 7 by default,
//! as a UCSPI client such as `tcpclient` leaves them). qmail-remote-io
//! writes report records on fd 1 and exits with one of the codes below: 0
//! when the records are final (per-recipient records and one `K`, `Z` or
//! `D`), or a code asking for the next address, with one `Z` record saying
//! why.

/// The records on fd 1 are the final report.
pub const EXIT_FINAL: i32 = 0;
/// Nothing was committed on this server (4xx greeting, 4xx EHLO,
/// connection lost before the transaction): try the next address.
pub const EXIT_NEXT: i32 = 10;
/// TLS was required and the server does not offer STARTTLS.
pub const EXIT_NO_STARTTLS: i32 = 11;
/// TLS was required or tried and failed (STARTTLS refused under
/// `require`/`verify`, or the handshake or the certificate check failed).
pub const EXIT_TLS_FAILED: i32 = 12;
/// Wrong usage (chainmail's usage code, [`chainmail_sys::cli::EXIT_USAGE`]).
pub const EXIT_USAGE: i32 = chainmail_sys::cli::EXIT_USAGE as i32;
/// A system call failed; a `Z` record was written if possible
/// ([`chainmail_sys::cli::EXIT_TEMPORARY`]).
pub const EXIT_SYSTEM: i32 = chainmail_sys::cli::EXIT_TEMPORARY as i32;

/// What qmail-remote-io does about TLS on one connection (`-s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No STARTTLS.
    Off,
    /// STARTTLS when offered, any certificate accepted; plaintext on the
    /// same connection when not offered or refused. A failed handshake
    /// exits [`EXIT_TLS_FAILED`] (the connection is dead).
    Try,
    /// STARTTLS or nothing, any certificate accepted.
    Require,
    /// STARTTLS or nothing, and the certificate must verify against the
    /// trust anchors for the server name.
    Verify,
}

impl TlsMode {
    /// The `-s` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Try => "try",
            TlsMode::Require => "require",
            TlsMode::Verify => "verify",
        }
    }

    /// Parses a `-s` argument.
    pub fn parse(s: &str) -> Option<TlsMode> {
        match s {
            "off" => Some(TlsMode::Off),
            "try" => Some(TlsMode::Try),
            "require" => Some(TlsMode::Require),
            "verify" => Some(TlsMode::Verify),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for m in [TlsMode::Off, TlsMode::Try, TlsMode::Require, TlsMode::Verify] {
            assert_eq!(TlsMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(TlsMode::parse("on"), None);
    }
}
