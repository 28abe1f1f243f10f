//! The UCSPI-TLS protocol, both sides.
//!
//! A UCSPI-TLS server (ucspi-tlsd, s6-ucspitlsd, `sslserver -n`) runs a TLS
//! engine beside its application and tells the application, through the
//! environment, where the control socket and the plaintext pipes are. The
//! application asks for TLS on the control socket when its protocol says so
//! (after `STARTTLS`), and the engine answers with the connection
//! information once the handshake is done.
//!
//! This crate owns all of it, without doing any TLS itself:
//!
//! * [`env`](mod@env): the environment contract ([`SslFds`]), the variables a server
//!   keeps from its application ([`env::is_tls_engine_var`]), and the
//!   announcement of chainmail's handover ([`env::HANDOVER_VAR`]).
//! * [`control`]: the commands `y`, `Y` and `H` on the control socket, from
//!   the engine's side ([`control::EngineControl`]) and from the
//!   application's ([`control::request_tls`], [`control::send_handover`]),
//!   with the handover message and its descriptors.
//! * [`info`]: the connection information record ([`InfoRecord`]), encoded
//!   by the engine and decoded by the application; chainmail-tls fills it
//!   from a rustls connection.
#![forbid(unsafe_code)]

pub mod control;
pub mod env;
pub mod info;

pub use control::{Command, ControlError, EngineControl, Handover};
pub use env::{SslFds, UCSPI_TLS_VARS};
pub use info::InfoRecord;
