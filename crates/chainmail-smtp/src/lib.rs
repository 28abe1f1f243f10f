//! Sans-IO SMTP: the pieces of the protocol that chainmail's binaries
//! drive from their poll loops. Nothing here touches a socket, a clock or
//! the environment: bytes and events go in, bytes and decisions come out,
//! so every behaviour can be tested in memory and fed in chunks of any
//! size.
//!
//! * [`line`](mod@line): a resumable, bounded line splitter.
//! * [`reply`]: reply lines (`250-text`) and whole replies.
//! * [`command`]: client command lines and their verbs.
//! * [`data`]: the DATA encoding of a message (dot-stuffing, line ends).
//! * [`proxy`]: the STARTTLS proxy that sits in front of a plain smtpd.
//! * [`client`]: one delivery attempt of an SMTP client.
#![forbid(unsafe_code)]

pub mod client;
pub mod command;
pub mod data;
pub mod line;
pub mod proxy;
pub mod reply;
