//! The contract between `qmail-remote` and `qmail-remote-io`.
//!
//! qmail-remote plans a delivery (control files, routes, DNS), connects to
//! one address after another, and for each connected socket runs
//! qmail-remote-io, which holds the SMTP dialogue on that socket:
//!
//! ```text
//! qmail-remote-io [ -t timeoutremote ] [ -K handshaketimeout ] [ -h helohost ]
//!     [ -s off|try|require|verify:TRUSTANCHORS|pin:PIN[:PIN...] ] [ -n servername ]
//!     [ -c clientcert ] [ -k clientkey ] [ -z size ] [ -8 ] [ -6 fdr ] [ -7 fdw ]
//!     [ -- ] ip sender recip...
//! ```
//!
//! `-s` is the connection's TLS policy, one `chainmail_tls::TlsPolicy`
//! written by `TlsPolicy::encode` and read by `TlsPolicy::parse`.
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
/// TLS was required or tried and failed (STARTTLS refused under a policy
/// that requires TLS, or the handshake or the certificate check failed).
pub const EXIT_TLS_FAILED: i32 = 12;
/// Wrong usage (chainmail's usage code, [`chainmail_sys::cli::EXIT_USAGE`]).
pub const EXIT_USAGE: i32 = chainmail_sys::cli::EXIT_USAGE as i32;
/// A system call failed; a `Z` record was written if possible
/// ([`chainmail_sys::cli::EXIT_TEMPORARY`]).
pub const EXIT_SYSTEM: i32 = chainmail_sys::cli::EXIT_TEMPORARY as i32;
