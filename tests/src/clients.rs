//! The external SMTP clients: `openssl s_client` and `swaks`.

use std::process::Command;

use crate::run::{Output, run};
use crate::{Server, find_program, secs};

/// What `openssl s_client -brief` reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Brief {
    /// `Protocol version: …` (e.g. `TLSv1.3`).
    pub protocol: Option<String>,
    /// `Ciphersuite: …`.
    pub cipher: Option<String>,
    /// `Peer certificate: …` (e.g. `CN = a.test`).
    pub peer: Option<String>,
    /// `Verification: …` or `Verification error: …`.
    pub verification: Option<String>,
}

impl Brief {
    /// Parses the `-brief` lines out of s_client's stderr.
    pub fn parse(stderr: &str) -> Brief {
        let mut b = Brief::default();
        for line in stderr.lines() {
            let field = |p: &str| line.strip_prefix(p).map(|v| v.trim().to_owned());
            if let Some(v) = field("Protocol version:") {
                b.protocol = Some(v);
            } else if let Some(v) = field("Ciphersuite:") {
                b.cipher = Some(v);
            } else if let Some(v) = field("Peer certificate:") {
                b.peer = Some(v);
            } else if let Some(v) = field("Verification:").or_else(|| field("Verification error:")) {
                b.verification = Some(v);
            }
        }
        b
    }
}

/// `openssl s_client -starttls smtp -brief` against `server`, trusting
/// the test CA, with `extra` options; `input` goes to the server after the
/// handshake (lines end in LF, sent as CRLF). s_client keeps reading after
/// its input ends, until the server closes.
pub fn s_client(server: &Server, ca: &std::path::Path, extra: &[&str], input: &str) -> (Output, Brief) {
    let mut cmd = Command::new(find_program("openssl"));
    cmd.arg("s_client")
        .arg("-connect")
        .arg(server.addr().to_string())
        .args(["-starttls", "smtp", "-name", "client.test", "-brief", "-ign_eof", "-crlf", "-CAfile"])
        .arg(ca)
        .args(extra)
        .env_clear()
        .env("PATH", crate::bins::CHILD_PATH);
    let out = run(&mut cmd, input.as_bytes(), secs(30));
    let brief = Brief::parse(&out.stderr_str());
    (out, brief)
}

/// `swaks` against `server` with `args`, within a time limit.
pub fn swaks(server: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(find_program("swaks"));
    cmd.args(["--server", "127.0.0.1", "--port"])
        .arg(server.port().to_string())
        .args(["--timeout", "30"])
        .args(args)
        .env_clear()
        .env("PATH", crate::bins::CHILD_PATH);
    run(&mut cmd, b"", secs(60))
}
