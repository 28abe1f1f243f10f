//! Sans-IO SMTP: the pieces of the protocol that chainmail's binaries
//! drive from their poll loops. Nothing here touches a socket, a clock or
//! the environment: bytes and events go in, bytes and decisions come out,
//! so every behaviour can be tested in memory and fed in chunks of any
//! size.
//!
//! * [`line`]: a resumable, bounded line splitter.
//! * [`reply`]: reply lines (`250-text`) and whole replies.
//! * [`command`]: client command lines and their verbs.
//! * [`proxy`]: the STARTTLS proxy that sits in front of a plain smtpd.
#![forbid(unsafe_code)]

pub mod command;
pub mod line;
pub mod proxy;
pub mod reply;
