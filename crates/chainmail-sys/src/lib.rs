//! The Unix side of chainmail: the plumbing the binaries share. Owned
//! descriptors from inherited numbers, deadlines and `poll`, forking and
//! exec-ing into the next program of a chain, dropping privileges, a byte
//! relay that uses `splice(2)` where the kernel allows it, diagnostics, and
//! the command-line conventions (exit codes, usage, the `fatal` line).
//! The UCSPI-TLS protocol itself lives in chainmail-ucspi-tls.
//!
//! This is the only crate of the workspace that contains `unsafe` code.
//! It is confined to a few small functions: turning an inherited descriptor
//! number into an owned descriptor ([`fd::adopt`], with [`fd::is_open`] and
//! [`fd::dup_onto`]), `fork(2)` ([`process::fork`]), and one socket option
//! nix does not wrap ([`net::quickack`]).
//! Every other crate has `#![forbid(unsafe_code)]`.

pub mod cli;
pub mod diag;
pub mod fd;
pub mod net;
pub mod poll;
pub mod process;
pub mod relay;

pub use poll::Deadline;
