//! The UCSPI-TLS protocol, both sides.
//!
//! A UCSPI-TLS server (ucspi-tlsd, s6-ucspitlsd, `sslserver -n`) runs a TLS
//! engine beside its application and tells the application, through the
//! environment, where the control socket and the plaintext pipes are. The
//! application asks for TLS on the control socket when its protocol says so
//! (after `STARTTLS`), and the engine answers with the connection
//! information once the handshake is done.
//!
//! This crate owns all of it: the environment contract ([`SslFds`]), and
//! the control protocol (`y`, `Y`, and chainmail's `H` with its handover)
//! from both sides. It does no TLS itself; chainmail-tls fills the plain
//! [`ConnectionInfo`] struct from a rustls connection.
#![forbid(unsafe_code)]

pub mod env;

pub use env::{SslFds, UCSPI_TLS_VARS};
