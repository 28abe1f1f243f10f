//! qmail's control files, smtproutes, tcpto and qmail-remote's report records.
//!
//! This crate holds everything a drop-in `qmail-remote` needs to know about
//! the qmail installation it runs in, and nothing about the network:
//!
//! * [`control`]: `$QMAILHOME` and the control files, read the way qmail's
//!   `control.c` reads them ([`Control`]).
//! * [`routes`]: `control/smtproutes` with stock semantics, compiled to a cdb
//!   under `$QMAILHOME/run/qmail-remote/` ([`Routes`]).
//! * [`tcpto`]: the connection-timeout history, stock `queue/lock/tcpto` for
//!   IPv4 and our own `tcpto6` for IPv6 ([`Tcpto`]).
//! * [`ipme`]: the local addresses, from `control/ipme` or detected ([`Ipme`]).
//! * [`report`]: the records qmail-remote writes for qmail-rspawn, with stock
//!   qmail's wording ([`Report`], [`Final`]), and qmail-rspawn's reading of
//!   them (`report::parse_report`, with the `test-support` feature).
//! * [`address`]: envelope addresses as they go into `MAIL FROM` and
//!   `RCPT TO` ([`address::encode_sender`], [`address::encode_recipient`]).
//!
//! Paths are always built from an explicit home directory, never from the
//! current directory, so that every piece is testable on a temporary tree.
#![forbid(unsafe_code)]

pub mod address;
pub mod control;
pub mod home;
pub mod ipme;
pub mod message;
pub mod remote_io;
pub mod report;
pub mod routes;
pub mod tcpto;

#[cfg(test)]
mod testutil;

pub use address::{AddressError, SmtpPath};
pub use control::{Control, ControlError, NoTrustAnchors, TlsStrictness};
pub use ipme::{Ipme, IpmeError};
pub use report::{Disposition, Final, RemoteText, Report};
pub use routes::{RelayHost, Route, RouteTable, Routes, RoutesError};
pub use tcpto::{Tcpto, TcptoError};

/// Directory, relative to `$QMAILHOME`, that qmail-remote owns at run time:
/// it holds `smtproutes.cdb`, `smtproutes.lock` and `tcpto6`. The installer
/// creates it writable by `qmailr`; when it is missing or read-only,
/// qmail-remote still works (routes are parsed from the text, IPv6 timeouts
/// are not remembered).
pub const RUN_DIR: &str = "run/qmail-remote";
