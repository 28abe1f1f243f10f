//! DNS for chainmail's `qmail-remote`: where to deliver mail for a domain,
//! found with all queries in parallel under one deadline.
//!
//! * [`Servers`]: the servers to ask, from `DNSCACHEIP` (djbdns's
//!   variable, here with optional ports: `127.0.0.1:5353`, `[::1]:5353`) or
//!   else the `nameserver` lines of `/etc/resolv.conf`.
//! * [`Resolver`]: synchronous calls over hickory's name server pool on a
//!   private current-thread tokio runtime.
//!   [`plan_mx`](Resolver::plan_mx) gives the [`Exchanger`]s of a mail
//!   domain (MX, then A and AAAA of every exchanger at once: two rounds);
//!   [`resolve_host`](Resolver::resolve_host) gives the addresses of an
//!   smtproutes relay.
//! * [`DnsError`]: why there is nowhere to deliver, and
//!   [`DnsError::is_permanent`], the bounce-or-retry decision.
//!
//! The rules that turn answers into a plan (Null MX, implicit MX, which
//! failures drop an exchanger, ordering, interleaving) are sans-IO code in
//! `plan` and `answer`, tested without a network; the workspace's
//! `tests/tests/dns_loopback.rs` runs the whole against a real DNS server on
//! loopback (`tests/peers/dnsserver.py`).
#![forbid(unsafe_code)]

mod answer;
mod error;
mod plan;
mod resolver;
mod servers;

pub use error::DnsError;
pub use plan::{Cut, Exchanger, MAX_ADDRESSES_PER_FAMILY, MAX_EXCHANGERS, Source, parse_literal};
pub use resolver::{ATTEMPT_TIMEOUT, ATTEMPTS_WITHOUT_DEADLINE, BACKUP_GRACE, Resolver};
pub use servers::{DNSCACHEIP, FromEnvError, Servers, ServersError};
