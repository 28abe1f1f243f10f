//! What the binaries refuse at start-up, before any session: descriptors
//! that break the UCSPI-TLS contract, and option values that would
//! overflow a deadline. Each is a usage or environment error: exit 100
//! with a `prog: fatal:` line.

use std::process::Command;

use chainmail_tests::run::{Output, run};
use chainmail_tests::{bin, secs};

fn start(prog: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin(prog));
    cmd.args(args).env_clear().env("PATH", chainmail_tests::bins::CHILD_PATH).envs(env.iter().copied());
    run(&mut cmd, b"", secs(10))
}

fn assert_refused(out: &Output, prog: &str, words: &[&str]) {
    assert_eq!(out.code(), Some(100), "{}", out.describe());
    let err = out.stderr_str();
    assert!(err.starts_with(&format!("{prog}: fatal: ")), "{}", out.describe());
    for w in words {
        assert!(err.contains(w), "{w:?} missing: {}", out.describe());
    }
}

/// An `SSL*FD` of 0, 1 or 2 would give two owners one descriptor (the
/// proxy takes 0 and 1 over as the network).
#[test]
fn standard_descriptors_are_not_ucspi_tls_descriptors() {
    for (ctl, read, write) in [("0", "5", "6"), ("5", "1", "6"), ("5", "6", "2")] {
        let env = [("SSLCTLFD", ctl), ("SSLREADFD", read), ("SSLWRITEFD", write)];
        let out = start("smtpd-starttls-proxy-io", &["true"], &env);
        assert_refused(&out, "smtpd-starttls-proxy-io", &["standard descriptor"]);
    }
}

/// `-T 18446744073709551615` killed every plaintext session with an
/// arithmetic overflow; every timeout option now refuses absurd values.
#[test]
fn absurd_timeouts_are_usage_errors() {
    const HUGE: &str = "18446744073709551615";
    for opt in ["-t", "-T"] {
        let out = start("smtpd-starttls-proxy-io", &[opt, HUGE, "true"], &[]);
        assert_refused(&out, "smtpd-starttls-proxy-io", &["timeout", "smtpd-starttls-proxy-io: usage: "]);
    }
    let out = start("ucspi-tlsd", &["-K", HUGE, "true"], &[]);
    assert_refused(&out, "ucspi-tlsd", &["handshake timeout", "ucspi-tlsd: usage: "]);
}

#[test]
fn an_absurd_relay_timeout_never_reaches_a_session() {
    let dir = chainmail_tests::TestDir::new("huge_relay_timeout");
    let server = chainmail_tests::Chain::new(&dir).proxy_args(["-T", "18446744073709551615"]).start();
    let mut c = server.connect();
    c.expect_closed(secs(20));
    server.wait_sessions_gone(secs(20));
    let err = server.stderr();
    assert!(err.contains("smtpd-starttls-proxy-io: fatal: invalid relay timeout"), "{err}");
    assert!(!err.contains("overflow") && !err.contains("internal error"), "{err}");
}
