//! Sans-IO SOCKS for rsockd: everything that can be decided from bytes and
//! text alone, with no descriptor in sight.
//!
//! - [`wire`]: addresses, commands, the reply codes of SOCKS4 and SOCKS5,
//!   reply and UDP header encodings;
//! - [`server`]: the server side of a handshake (SOCKS4, 4a, 5 with
//!   RFC 1929), fed bytes as they come, with every bound checked;
//! - [`client`]: the client side, to talk to an upstream server;
//! - [`auth`]: the `user:password` file of `rsockd -a`;
//! - [`upstream`]: the upstream forms (`host[:port]`, `socks4://`,
//!   `socks4a://`, `socks5://[user:password@]host:port`);
//! - [`conf`]: the CSTC `sockd.conf` and `socks.conf` grammars (old syntax,
//!   CIDR, domain suffixes, port ranges, user lists, `/file` references)
//!   and their first-match matcher.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod client;
pub mod conf;
pub mod server;
pub mod upstream;
pub mod wire;

pub use wire::{Command, Host, Target};
