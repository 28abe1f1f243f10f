//! Integration tests of chainmail against real peers, and their test helpers.
//!
//! The integration tests in `tests/tests/` run the real binaries of the
//! workspace behind a real `tcpserver`, talk to them with real clients
//! (`swaks`, `openssl s_client`, a rustls client of our own) and put real
//! SMTP servers behind them (`test-smtpd` from this crate, `exim4 -bs`).
//! This library is what they share:
//!
//! * [`bins`]: where the binaries under test are (`CHAINMAIL_BIN_DIR`, or
//!   the cargo target directory of the running test);
//! * [`TestDir`]: a scratch directory per test, removed when the test passes;
//! * [`certs`]: a test CA and the certificates the tests need, made once per
//!   test process with the `openssl` command;
//! * [`Server`] and [`Chain`]: `tcpserver -1 …` running a command line, with
//!   its port, its captured stderr and the processes of its sessions;
//! * [`smtp`]: a line-oriented SMTP client over plain TCP or rustls;
//! * [`tls`]: the rustls client configurations;
//! * [`run`]: external programs with a time limit and captured output;
//! * [`clients`]: `openssl s_client` and `swaks` runs;
//! * [`procs`]: the processes of a session, from `/proc`;
//! * [`exim`]: `exim4 -bs` as the SMTP server of a chain;
//! * [`peer`]: peer processes killed by process group on drop, and the DNS
//!   server peer ([`peer::DnsServer`]).
//!
//! Every wait in here is bounded; nothing sleeps to wait for something to be
//! ready.
#![forbid(unsafe_code)]

pub mod bins;
pub mod certs;
pub mod clients;
pub mod exim;
pub mod peer;
pub mod procs;
pub mod run;
pub mod server;
pub mod smtp;
pub mod tls;
pub mod tmp;

pub use bins::{bin, bin_dir, find_program};
pub use certs::{Certs, KeyPair};
pub use server::{Chain, Server};
pub use smtp::{Reply, Smtp};
pub use tls::{TlsClient, TlsVersion};
pub use tmp::TestDir;

use std::time::Duration;

/// Scales a time limit for slow machines: `CHAINMAIL_TEST_TIME_SCALE`
/// (a positive number, default 1) multiplies every limit the tests use for
/// "this must happen by then". Limits that a test checks from below (a
/// timeout must not fire too early) are not scaled.
pub fn limit(d: Duration) -> Duration {
    let scale = std::env::var("CHAINMAIL_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// Shorthand for [`limit`] of whole seconds.
pub fn secs(s: u64) -> Duration {
    limit(Duration::from_secs(s))
}

/// A loopback TCP port that was free a moment ago (for programs that
/// take their port as a number and cannot report one they chose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// Whether `haystack` contains `needle`, for byte strings.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A printable rendering of bytes for assertion messages: text stays text,
/// control bytes are escaped, and long inputs are cut in the middle.
pub fn show(bytes: &[u8]) -> String {
    const MAX: usize = 2000;
    let esc = |b: &[u8]| b.escape_ascii().to_string();
    if bytes.len() <= MAX {
        esc(bytes)
    } else {
        format!(
            "{} [... {} bytes ...] {}",
            esc(&bytes[..MAX / 2]),
            bytes.len() - MAX,
            esc(&bytes[bytes.len() - MAX / 2..])
        )
    }
}
