//! One SMTP dialogue: qmail-remote-io on a connected socket.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chainmail_qmail::control::Control;
use chainmail_qmail::remote_io;
use chainmail_qmail::report::parse_records;
use chainmail_smtp::data::MessageFacts;
use chainmail_sys::fd;
use chainmail_tls::TlsPolicy;

use crate::plan::Target;

/// How an attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempted {
    /// The report is final: pass these bytes on.
    Final(Vec<u8>),
    /// Try the next address; the text says why.
    Next(String),
    /// TLS was required and not offered.
    NoStartTls(String),
    /// TLS failed.
    TlsFailed(String),
}

/// The most bytes read from qmail-remote-io's report.
const MAX_REPORT: usize = 1 << 20;

/// Whether `path` is a regular file this process may execute.
fn executable(path: &std::path::Path) -> bool {
    path.is_file() && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// Where qmail-remote-io is: beside this program, else in `PATH`; checked
/// before any connection, so that a missing or non-executable program is
/// a deferral that says nothing was sent, not a failed attempt after the
/// server has answered.
pub fn io_program() -> Result<PathBuf, String> {
    const NAME: &str = "qmail-remote-io";
    let beside = std::env::current_exe().ok().and_then(|me| me.parent().map(|dir| dir.join(NAME)));
    if let Some(p) = &beside {
        if executable(p) {
            return Ok(p.clone());
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
        let p = dir.join(NAME);
        if executable(&p) {
            return Ok(p);
        }
    }
    Err(match beside {
        Some(p) if p.exists() => format!("{} is not an executable file", p.display()),
        Some(p) => format!("{NAME} is neither at {} nor in PATH", p.display()),
        None => format!("{NAME} is not in PATH"),
    })
}

/// Everything qmail-remote-io needs besides the target and the mode.
#[derive(Debug)]
pub struct Job<'a> {
    /// The control files.
    pub control: &'a Control,
    /// What the scan of the message found.
    pub facts: MessageFacts,
    /// The sender, as qmail gave it.
    pub sender: &'a OsString,
    /// The recipients, as qmail gave them.
    pub recipients: &'a [OsString],
    /// The qmail-remote-io program.
    pub program: &'a PathBuf,
}

fn first_text(out: &[u8]) -> String {
    let text = out.split(|&b| b == 0).next().unwrap_or(&[]);
    let text = text.get(1..).unwrap_or(&[]);
    String::from_utf8_lossy(text).trim_end().to_owned()
}

/// Checks that `out` is a well-formed final report for `recipients`
/// recipients: recipient records, then exactly one `K`, `Z` or `D`.
fn well_formed(out: &[u8], recipients: usize) -> bool {
    let Ok(records) = parse_records(out) else { return false };
    let Some((last, rest)) = records.split_last() else { return false };
    matches!(last.0, b'K' | b'Z' | b'D')
        && rest.len() <= recipients
        && rest.iter().all(|(l, _)| matches!(l, b'r' | b'h' | b's'))
}

/// Runs qmail-remote-io on `sock` (which it takes over).
pub fn run(job: &Job<'_>, target: &Target, policy: &TlsPolicy, sock: OwnedFd) -> Attempted {
    let c = job.control;
    let mut cmd = Command::new(job.program);
    let n = sock.as_raw_fd().to_string();
    cmd.arg("-t").arg(c.timeout_remote.as_secs().to_string());
    cmd.arg("-K").arg(c.timeout_connect.as_secs().to_string());
    cmd.arg("-h").arg(&c.helohost);
    cmd.arg("-s").arg(policy.encode());
    if let Some(name) = &target.name {
        cmd.arg("-n").arg(name);
    }
    if let Some(id) = &c.client_identity {
        cmd.arg("-c").arg(&id.cert).arg("-k").arg(&id.key);
    }
    cmd.arg("-z").arg(job.facts.encoded_size.to_string());
    if job.facts.eight_bit {
        cmd.arg("-8");
    }
    cmd.arg("-6").arg(&n).arg("-7").arg(&n);
    cmd.arg("--").arg(target.ip.to_string()).arg(job.sender).args(job.recipients);
    // fd 0 is the message; fd 2 of qmail-remote is the report pipe, so
    // nothing of the child may reach it.
    cmd.stdin(Stdio::inherit()).stdout(Stdio::piped()).stderr(Stdio::null());
    if let Err(e) = fd::set_cloexec(&sock, false) {
        return Attempted::Final(crashed(&format!("unable to pass the socket on: {e}")));
    }
    let spawned = cmd.spawn();
    drop(sock);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            // Nothing ran on the connection: nothing was sent.
            return Attempted::Final(crate::report_of(chainmail_qmail::Final::custom(
                chainmail_qmail::Disposition::Deferred,
                format!("Unable to run {}: {e}; nothing was sent. (#4.3.0)\n", job.program.display()).as_bytes(),
            )));
        }
    };
    let mut out = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    if out.len() < MAX_REPORT {
                        out.extend_from_slice(&buf[..k.min(MAX_REPORT - out.len())]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }
    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => return Attempted::Final(crashed(&format!("unable to wait for qmail-remote-io: {e}"))),
    };
    match status.code() {
        Some(remote_io::EXIT_FINAL) if well_formed(&out, job.recipients.len()) => Attempted::Final(out),
        Some(remote_io::EXIT_FINAL) => Attempted::Final(crashed("qmail-remote-io wrote a malformed report")),
        Some(remote_io::EXIT_NEXT) => Attempted::Next(first_text(&out)),
        Some(remote_io::EXIT_NO_STARTTLS) => Attempted::NoStartTls(first_text(&out)),
        Some(remote_io::EXIT_TLS_FAILED) => Attempted::TlsFailed(first_text(&out)),
        Some(code) => {
            let said = first_text(&out);
            Attempted::Final(crashed(&format!("qmail-remote-io exited {code}: {said}")))
        }
        None => {
            Attempted::Final(crashed(&format!("qmail-remote-io was killed by signal {}", status.signal().unwrap_or(0))))
        }
    }
}

/// A temporary failure of our own making. Nothing was delivered, or if
/// qmail-remote-io died after the final dot, we cannot know: say so.
fn crashed(what: &str) -> Vec<u8> {
    crate::report_of(chainmail_qmail::Final::custom(
        chainmail_qmail::Disposition::Deferred,
        format!("{what}; the message may have been delivered. (#4.3.0)\n").as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_shape() {
        assert!(well_formed(b"r\0K1.2.3.4 accepted message.\n\0", 1));
        assert!(well_formed(b"Zno\n\0", 1));
        assert!(!well_formed(b"r\0r\0K\0", 1));
        assert!(!well_formed(b"r\0", 1));
        assert!(!well_formed(b"K\0K\0", 1));
        assert!(!well_formed(b"x\0K\0", 1));
        assert!(!well_formed(b"", 1));
        assert_eq!(first_text(b"Zsome reason\n\0"), "some reason");
    }
}
