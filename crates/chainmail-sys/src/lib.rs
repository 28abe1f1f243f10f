//! The Unix side of chainmail: the plumbing the binaries share. Owned
//! descriptors from inherited numbers, deadlines and `poll`, forking and
//! exec-ing into the next program of a chain, dropping privileges, a byte
//! relay that uses `splice(2)` where the kernel allows it, diagnostics, and
//! the command-line conventions (exit codes, usage, the `fatal` line).
//! The UCSPI-TLS protocol itself lives in chainmail-ucspi-tls.
//!
//! This is the only crate of the workspace that contains `unsafe` code,
//! one statement per block, each with its SAFETY reasoning: taking an
//! inherited descriptor over ([`fd::adopt`], [`fd::dup_onto`], which keep
//! a record of the descriptors open at start-up so that no number ever
//! gets two owners), owning received descriptors ([`fd::recv_with_fds`]),
//! `fork(2)` ([`process::fork`], refused with more than one thread),
//! `madvise` ([`process::release_clean_file_pages`]), `poll(2)` on the
//! descriptors a [`poll::Round`] borrows ([`poll::PollSet`]), and one socket option
//! nix does not wrap ([`net::quickack`]), and `listxattr`/`getxattr` into bounded
//! buffers ([`xattr`]). Every public function is safe and
//! enforces its own soundness. Every other crate has
//! `#![forbid(unsafe_code)]`.

pub mod cli;
pub mod diag;
pub mod fd;
pub mod net;
pub mod poll;
pub mod process;
pub mod relay;
pub mod xattr;

pub use poll::Deadline;
