//! Sans-IO QMQP (<https://cr.yp.to/proto/qmqp.html>), for qrelay, qmail-qmqpc
//! and the tests.
//!
//! * [`netstring`]: `<len>:<bytes>,` framing, encoding;
//! * [`address`]: the address rules a server applies ([`AddressCheck`]);
//! * [`request`]: [`RequestParser`], a resumable parser of one request with
//!   its limits, and [`encode_request`] for clients;
//! * [`reply`]: [`Reply`] (the server's answer) and [`ReplyParser`], a
//!   resumable, bounded reader of one reply.
//!
//! Nothing here touches a descriptor, a clock or the environment.
#![forbid(unsafe_code)]

pub mod address;
pub mod netstring;
pub mod reply;
pub mod request;
pub mod server;

pub use address::{AddressCheck, AddressProblem, check_address};
pub use reply::{Reply, ReplyError, ReplyParser, Verdict};
pub use request::{Limits, Rejection, Request, RequestParser, Status, encode_request};
pub use server::{BadServer, ServerSpec};

/// The QMQP port.
pub const QMQP_PORT: u16 = 628;
