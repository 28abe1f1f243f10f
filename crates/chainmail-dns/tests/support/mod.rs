//! `tests/peers/dnsserver.py` as a child process, for the loopback tests.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The Python with python3-dnslib (the pyenv python3 first in PATH has no
/// dnslib).
const PYTHON: &str = "/usr/bin/python3";

/// How long the server may take to print its port.
const START_LIMIT: Duration = Duration::from_secs(20);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/peers/dnsserver.py")
}

/// A running `dnsserver.py`, killed (by its pid) when dropped.
pub struct DnsServer {
    child: Child,
    /// Where it listens, UDP and TCP.
    pub addr: SocketAddr,
    zone: PathBuf,
    stderr: Option<JoinHandle<String>>,
}

impl DnsServer {
    /// Serves `zone` (the text format of `dnsserver.py`).
    pub fn start(zone: &str) -> Self {
        Self::start_with(zone, &[])
    }

    /// Serves `zone`, answering every query after `ms` milliseconds.
    pub fn start_delayed(zone: &str, ms: u32) -> Self {
        Self::start_with(zone, &["--delay-ms".to_owned(), ms.to_string()])
    }

    fn start_with(zone: &str, args: &[String]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "dns-{}-{}.zone",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, zone).expect("write the zone file");
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args(args)
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dnsserver.py");
        let stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // The port line is the readiness signal; wait for it, bounded.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server =
            Self { child, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), zone: path, stderr: Some(stderr) };
        match rx.recv_timeout(START_LIMIT).map(|l| l.trim().parse::<u16>()) {
            Ok(Ok(port)) => server.addr.set_port(port),
            other => {
                let log = server.stop();
                panic!("dnsserver.py did not start ({other:?}); stderr:\n{}", log.join("\n"));
            }
        }
        server
    }

    /// Kills the server and returns its stderr: the query log, one
    /// "proto TYPE name" line per query.
    pub fn stop(&mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.zone);
        match self.stderr.take() {
            Some(h) => h.join().unwrap_or_default().lines().map(str::to_owned).collect(),
            None => Vec::new(),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
