//! Peer processes (the Python peers of `tests/peers/`, smtp-sink...) and the
//! DNS server peer, `tests/peers/dnsserver.py`.
//!
//! A [`Peer`] runs in a process group of its own with its stderr in a file,
//! and is killed by its process group id when dropped. Peers that print a
//! line when they are ready (their port) are waited for with
//! [`first_line`], bounded.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{TestDir, secs};

/// The Python with the Debian modules (aiosmtpd, dnslib); the pyenv
/// `python3` first in `PATH` has neither.
pub const PYTHON: &str = "/usr/bin/python3";

/// A peer script of `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers").join(name)
}

static PEERS: AtomicU32 = AtomicU32::new(0);

/// A fresh directory `<stem>-<n>` in `dir` for one peer's files.
pub fn peer_dir(dir: &TestDir, stem: &str) -> PathBuf {
    let d = dir.join(format!("{stem}-{}", PEERS.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).expect("create a peer directory");
    d
}

/// A peer process, in its own process group, killed by its id on drop.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Set once the child has been reaped: its id may then be reused, so
    /// nothing is killed by it any more.
    reaped: bool,
    /// Where its stderr goes.
    pub stderr_path: PathBuf,
}

impl Peer {
    /// Starts `cmd` with stdin and stdout piped and stderr into
    /// `stderr_path`; returns its stdout. `what` names it in a panic.
    pub fn spawn(mut cmd: Command, stderr_path: PathBuf, what: &str) -> (Peer, Option<ChildStdout>) {
        let stderr = File::create(&stderr_path).expect("create a stderr file");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::from(stderr)).process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stdout = child.stdout.take();
        let stdin = child.stdin.take();
        (Peer { child, stdin, reaped: false, stderr_path }, stdout)
    }

    /// Its process id (and process group id).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        self.reaped |= status.is_some();
        status
    }

    /// Kills its process group, reaps it and returns what it wrote on
    /// stderr.
    pub fn stop(&mut self) -> String {
        self.kill();
        self.stderr()
    }

    fn kill(&mut self) {
        drop(self.stdin.take());
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads the first line of `stdout` within `limit`; `None` on EOF, an
/// error or the limit. The pipe stays open (drained) until the peer exits,
/// so that it never gets EPIPE.
pub fn first_line(stdout: ChildStdout, limit: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut r = BufReader::new(stdout);
        let ok = r.read_line(&mut line).is_ok();
        let _ = tx.send(ok.then_some(line));
        let mut sink = Vec::new();
        let _ = r.read_to_end(&mut sink);
    });
    rx.recv_timeout(limit).ok().flatten().filter(|l| !l.is_empty())
}

/// `tests/peers/dnsserver.py` serving a zone on 127.0.0.1 (UDP and TCP).
#[derive(Debug)]
pub struct DnsServer {
    peer: Peer,
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    /// The same, as `DNSCACHEIP` wants it (`127.0.0.1:port`).
    pub dnscacheip: String,
}

impl DnsServer {
    /// Serves `zone` (dnsserver.py's format), its files in `dir`.
    pub fn start(dir: &TestDir, zone: &str) -> DnsServer {
        DnsServer::start_with(dir, zone, &[])
    }

    /// Serves `zone`, answering every query `ms` milliseconds after it
    /// arrived.
    pub fn start_delayed(dir: &TestDir, zone: &str, ms: u32) -> DnsServer {
        DnsServer::start_with(dir, zone, &["--delay-ms".to_owned(), ms.to_string()])
    }

    fn start_with(dir: &TestDir, zone: &str, args: &[String]) -> DnsServer {
        let d = peer_dir(dir, "dns");
        let zone_file = d.join("zone");
        std::fs::write(&zone_file, zone).expect("write the zone");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(peer_script("dnsserver.py")).args(args).arg(&zone_file);
        let (mut peer, stdout) = Peer::spawn(cmd, d.join("queries"), "tests/peers/dnsserver.py");
        // The port line is the readiness signal.
        match first_line(stdout.expect("piped"), secs(30)).as_deref().map(str::trim).map(str::parse::<u16>) {
            Some(Ok(port)) => {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                DnsServer { peer, addr, dnscacheip: addr.to_string() }
            }
            other => panic!("dnsserver.py did not start ({other:?}):\n{}", peer.stop()),
        }
    }

    /// The queries so far, `proto TYPE name.` per line.
    pub fn queries(&self) -> String {
        self.peer.stderr()
    }

    /// Kills the server and returns its query log, one `proto TYPE name.`
    /// per line.
    pub fn stop(&mut self) -> Vec<String> {
        self.peer.stop().lines().map(str::to_owned).collect()
    }
}
