//! Support for `tests/qmail_remote.rs`: a temporary qmail home, running
//! `qmail-remote` the way qmail-rspawn does, reading its report the way
//! qmail-rspawn does, and the peers (aiosmtpd, postfix `smtp-sink`, the
//! loopback DNS server, a listener whose backlog is full).
//!
//! Every peer is a child process in a process group of its own, killed by
//! its id when its guard is dropped; every wait is bounded.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What a server stores for a message sent by a correct client: every LF,
/// CRLF and bare CR becomes CRLF.
pub use chainmail_smtp::data::with_crlf_line_ends as normalized;
use chainmail_tests::bins::CHILD_PATH;
use chainmail_tests::peer::{PYTHON, Peer, first_line, peer_dir, peer_script};
use chainmail_tests::run::{Output, run};
use chainmail_tests::{KeyPair, TestDir, bin, find_program, secs, show};

// ------------------------------------------------------------ reports

/// Splits a report into its records, strictly: `r` (no text), `h`, `s`
/// records, then exactly one `K`, `Z` or `D`, each ended by a NUL, and
/// nothing after (`chainmail_qmail::report::parse_records`).
pub fn parse_records(out: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    chainmail_qmail::report::parse_records(out)
        .map(|records| records.into_iter().map(|(l, t)| (l, t.to_vec())).collect())
        .map_err(|e| e.to_string())
}

/// What qmail-rspawn's `report()` hands qmail-send for the output `s` of a
/// qmail-remote that exited 0: the letter and the text.
pub fn rspawn(s: &[u8]) -> (u8, Vec<u8>) {
    chainmail_qmail::report::parse_report(s)
}

/// One run of qmail-remote, checked: it ended within its limit, exited 0,
/// wrote nothing on stderr and a well-formed report on stdout.
#[derive(Debug)]
pub struct Report {
    /// What the program did.
    pub out: Output,
    /// A shell command line that repeats the run.
    pub repro: String,
    /// The records.
    pub records: Vec<(u8, Vec<u8>)>,
    /// What qmail-rspawn passes on: `K`, `Z` or `D`.
    pub rspawn_letter: u8,
    /// And its text.
    pub rspawn_text: Vec<u8>,
}

impl Report {
    /// The report bytes.
    pub fn raw(&self) -> &[u8] {
        &self.out.stdout
    }

    /// The record letters, in order (`"rhK"`).
    pub fn letters(&self) -> String {
        self.records.iter().map(|(l, _)| *l as char).collect()
    }

    /// The final record's letter.
    pub fn verdict(&self) -> u8 {
        self.records.last().map(|(l, _)| *l).unwrap_or(0)
    }

    /// The final record's text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.records.last().map(|(_, t)| t.clone()).unwrap_or_default()).into_owned()
    }

    /// The text of record `i`.
    pub fn text_of(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.records[i].1).into_owned()
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "reproduce with:\n  {}\nreport: \"{}\"\nqmail-rspawn reads: {} \"{}\"\n{}",
            self.repro,
            show(self.raw()),
            self.rspawn_letter as char,
            show(&self.rspawn_text),
            self.out.describe()
        )
    }

    /// Asserts the record letters (`"rK"`) and what qmail-rspawn sees.
    pub fn expect(&self, letters: &str, rspawn_letter: char) -> &Self {
        assert_eq!(self.letters(), letters, "record letters\n{}", self.describe());
        assert_eq!(self.rspawn_letter as char, rspawn_letter, "qmail-rspawn's letter\n{}", self.describe());
        self
    }

    /// Asserts the report byte for byte.
    pub fn expect_exact(&self, report: &[u8]) -> &Self {
        assert!(self.raw() == report, "expected the report \"{}\"\n{}", show(report), self.describe());
        self
    }

    /// Asserts that the final text starts with `prefix`.
    pub fn expect_text_starts(&self, prefix: &str) -> &Self {
        assert!(self.text().starts_with(prefix), "final text should start with {prefix:?}\n{}", self.describe());
        self
    }

    /// Asserts that the final text contains `needle`.
    pub fn expect_text_contains(&self, needle: &str) -> &Self {
        assert!(self.text().contains(needle), "final text should contain {needle:?}\n{}", self.describe());
        self
    }

    /// Asserts that the final text does not contain `needle`.
    pub fn expect_text_lacks(&self, needle: &str) -> &Self {
        assert!(!self.text().contains(needle), "final text should not contain {needle:?}\n{}", self.describe());
        self
    }
}

// ------------------------------------------------------- qmail home

/// A temporary `$QMAILHOME`: `control/me` (`me.test`), `control/ipme`
/// (only 192.0.2.254, an address nothing uses, so that the 127.0.0.0/8
/// exchangers are not "this host"), bounded timeouts, a zeroed
/// `queue/lock/tcpto` (1024 bytes) and `run/qmail-remote/`.
#[derive(Debug)]
pub struct Home {
    /// The directory.
    pub path: PathBuf,
    messages: PathBuf,
}

static MESSAGES: AtomicU32 = AtomicU32::new(0);

impl Home {
    /// A new qmail home in `dir`.
    pub fn new(dir: &TestDir) -> Home {
        let path = dir.join("qmail");
        for d in ["control", "queue/lock", "run/qmail-remote", "messages"] {
            std::fs::create_dir_all(path.join(d)).expect("create the qmail home");
        }
        let home = Home { messages: path.join("messages"), path };
        home.control("me", "me.test\n");
        home.control("ipme", "192.0.2.254\n");
        home.control("timeoutconnect", "10\n");
        home.control("timeoutremote", "30\n");
        home.control("timeoutdns", "10\n");
        home.write_tcpto(&[0u8; 1024]);
        home
    }

    /// Writes `control/<name>`.
    pub fn control(&self, name: &str, content: &str) {
        std::fs::write(self.path.join("control").join(name), content).expect("write a control file");
    }

    /// Removes `control/<name>`.
    pub fn remove_control(&self, name: &str) {
        let _ = std::fs::remove_file(self.path.join("control").join(name));
    }

    /// `control/smtproutes` with the default route to `ip:port`.
    pub fn route_to(&self, ip: IpAddr, port: u16) {
        let relay = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        self.control("smtproutes", &format!(":{relay}:{port}\n"));
    }

    /// `queue/lock/tcpto`.
    pub fn tcpto_path(&self) -> PathBuf {
        self.path.join("queue/lock/tcpto")
    }

    /// Replaces `queue/lock/tcpto`.
    pub fn write_tcpto(&self, bytes: &[u8]) {
        std::fs::write(self.tcpto_path(), bytes).expect("write tcpto");
    }

    /// Writes `message` to a new file of this home (a queue file).
    pub fn message_file(&self, message: &[u8]) -> PathBuf {
        let n = MESSAGES.fetch_add(1, Ordering::Relaxed);
        let msg = self.messages.join(format!("m{n}"));
        std::fs::write(&msg, message).expect("write the message");
        msg
    }

    /// Runs `qmail-remote args...` with `message` as a queue file on fd 0
    /// (a regular file, as qmail-rspawn gives it) and the environment
    /// `env`, `PATH`, `QMAILHOME` (this home unless `env` sets it) and
    /// `DNSCACHEIP` (a closed port unless `env` sets it, so that no test
    /// ever asks the real resolver).
    /// Checks the exit code, stderr and the report format.
    pub fn run(&self, env: &[(&str, &str)], args: &[&[u8]], message: &[u8], limit: Duration) -> Report {
        let home = self.path.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "QMAILHOME") {
            env.push(("QMAILHOME", &home));
        }
        self.run_program(&bin("qmail-remote"), Path::new("/"), &env, args, message, limit)
    }

    /// Runs `program` (qmail-remote, or a copy of it) in the directory
    /// `cwd`, as [`Home::run`] does but with no `QMAILHOME` unless `env`
    /// sets it.
    pub fn run_program(
        &self,
        program: &Path,
        cwd: &Path,
        env: &[(&str, &str)],
        args: &[&[u8]],
        message: &[u8],
        limit: Duration,
    ) -> Report {
        let msg = self.message_file(message);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "DNSCACHEIP") {
            env.push(("DNSCACHEIP", "127.0.0.1:9"));
        }
        let mut argv: Vec<OsString> = vec![program.into()];
        argv.extend(args.iter().map(|a| OsString::from(std::ffi::OsStr::from_bytes(a))));
        let (out, repro) = run_with_stdin_file_in(&argv, &env, &msg, limit, cwd);
        let records = parse_records(&out.stdout);
        let (rspawn_letter, rspawn_text) = rspawn(&out.stdout);
        let report = Report { out, repro, records: records.clone().unwrap_or_default(), rspawn_letter, rspawn_text };
        assert!(!report.out.timed_out, "qmail-remote ran past {limit:?}\n{}", report.describe());
        assert_eq!(report.out.code(), Some(0), "qmail-remote must always exit 0\n{}", report.describe());
        assert!(
            report.out.stderr.is_empty(),
            "qmail-remote wrote on stderr (qmail-rspawn reads it as part of the report)\n{}",
            report.describe()
        );
        if let Err(e) = records {
            panic!("malformed report: {e}\n{}", report.describe());
        }
        report
    }

    /// [`Home::run`] with text arguments and a 60 s limit.
    pub fn deliver(&self, env: &[(&str, &str)], args: &[&str], message: &[u8]) -> Report {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.run(env, &args, message, secs(60))
    }
}

/// Runs `argv` with exactly the environment `env` (plus `PATH`), the file
/// `stdin` on fd 0 and a time limit, in `/`. The harness runner pipes
/// stdin, so a shell opens the file and execs the program (same process,
/// same process group, which the runner kills on timeout). Returns the
/// output and a shell command line that repeats the run.
pub fn run_with_stdin_file(argv: &[OsString], env: &[(&str, &str)], stdin: &Path, limit: Duration) -> (Output, String) {
    run_with_stdin_file_in(argv, env, stdin, limit, Path::new("/"))
}

/// [`run_with_stdin_file`] in the directory `cwd`.
pub fn run_with_stdin_file_in(
    argv: &[OsString],
    env: &[(&str, &str)],
    stdin: &Path,
    limit: Duration,
    cwd: &Path,
) -> (Output, String) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("exec \"$0\" \"$@\" <\"$QR_TEST_STDIN\"").args(argv);
    cmd.env_clear().env("PATH", CHILD_PATH).env("QR_TEST_STDIN", stdin).current_dir(cwd);
    let mut repro = format!("cd {} && env -i PATH={CHILD_PATH}", cwd.display());
    for (k, v) in env {
        cmd.env(k, v);
        repro.push_str(&format!(" {k}='{v}'"));
    }
    for a in argv {
        repro.push_str(&format!(" '{}'", show(a.as_bytes())));
    }
    repro.push_str(&format!(" <{} | od -c", stdin.display()));
    (run(&mut cmd, b"", limit), repro)
}

// ------------------------------------------------ loopback addresses

static ADDRS: AtomicU32 = AtomicU32::new(0);

/// A pseudo-random address in 127.0.0.0/8 (outside 127.0.0.0/16), for a
/// peer on a fixed port (25, where MX delivery goes). Every 127.0.0.0/8
/// address is local on Linux; collisions with other test processes are
/// handled by the callers (they retry on "address in use").
pub fn random_loopback() -> Ipv4Addr {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mut x: u64 = (u64::from(std::process::id()) << 32)
        ^ u64::from(nanos)
        ^ (u64::from(ADDRS.fetch_add(1, Ordering::Relaxed)) << 20)
        ^ 0x9e37_79b9_7f4a_7c15;
    for _ in 0..3 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    let b = x.to_le_bytes();
    Ipv4Addr::new(127, 1 + b[0] % 254, b[1], 1 + b[2] % 254)
}

/// Exclusive use of `[::1]:25` (the only IPv6 loopback address) across
/// test processes: a `flock` held until dropped.
#[derive(Debug)]
pub struct V6Port25(#[allow(dead_code)] nix::fcntl::Flock<File>); // held for its Drop

impl V6Port25 {
    /// Waits (bounded) for the lock.
    pub fn lock() -> V6Port25 {
        let path = std::env::temp_dir().join("chainmail-qmail-remote-ipv6-port25.lock");
        let deadline = Instant::now() + secs(120);
        loop {
            let f = File::options().create(true).append(true).open(&path).expect("open the [::1]:25 lock file");
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => return V6Port25(l),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err((_, e)) => panic!("cannot lock {} within the limit: {e}", path.display()),
            }
        }
    }
}

/// Starts a peer on a random 127.0.0.0/8 address at `port` (25), retrying
/// with another address while `start` says the address is taken.
fn on_random_address<T>(mut start: impl FnMut(IpAddr) -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..20 {
        match start(IpAddr::V4(random_loopback())) {
            Ok(t) => return t,
            Err(e) => last = e,
        }
    }
    panic!("no free 127.0.0.0/8 address for a peer on port 25: {last}");
}

// ------------------------------------------------------------ aiosmtpd

/// How to run `peers/qmail/smtpd.py`.
#[derive(Debug, Clone, Default)]
pub struct AioOpts {
    /// STARTTLS with this certificate.
    pub tls: Option<KeyPair>,
    /// Require a client certificate from this CA.
    pub client_ca: Option<PathBuf>,
    /// TLS 1.2 at most.
    pub tls12: bool,
    /// Announce SIZE with this limit (0: no SIZE).
    pub size: u64,
    /// Announce PIPELINING.
    pub pipelining: bool,
    /// Announce SMTPUTF8.
    pub smtputf8: bool,
    /// Do not announce 8BITMIME.
    pub no_8bitmime: bool,
    /// Answer STARTTLS with 454.
    pub starttls_454: bool,
    /// Put a plaintext reply after the 220 to STARTTLS.
    pub inject_after_220: bool,
}

/// A message the aiosmtpd peer stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its bytes, un-stuffed, as received.
    pub content: Vec<u8>,
    /// Its envelope: `helo`, `mail_from`, `mail_option`, `rcpt`, `tls`,
    /// `client_cert`.
    pub env: Vec<(String, String)>,
}

impl Stored {
    /// The values of `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.env.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    /// The first value of `key` (empty if none).
    pub fn get(&self, key: &str) -> String {
        self.all(key).into_iter().next().unwrap_or_default()
    }
}

/// A running aiosmtpd peer.
#[derive(Debug)]
pub struct Aiosmtpd {
    peer: Peer,
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// Where it stores messages and its log.
    pub dir: PathBuf,
}

impl Aiosmtpd {
    fn try_start(dir: &TestDir, ip: IpAddr, port: u16, o: &AioOpts) -> Result<Aiosmtpd, String> {
        let store = peer_dir(dir, "aiosmtpd");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(peer_script("qmail/smtpd.py")).arg(&store).arg("--host").arg(ip.to_string());
        cmd.arg("--port").arg(port.to_string());
        if let Some(kp) = &o.tls {
            cmd.arg("--cert").arg(&kp.cert).arg("--key").arg(&kp.key);
        }
        if let Some(ca) = &o.client_ca {
            cmd.arg("--client-ca").arg(ca);
        }
        if o.tls12 {
            cmd.arg("--tls12");
        }
        if o.size > 0 {
            cmd.arg("--size").arg(o.size.to_string());
        }
        if o.pipelining {
            cmd.arg("--pipelining");
        }
        if o.smtputf8 {
            cmd.arg("--smtputf8");
        }
        if o.no_8bitmime {
            cmd.arg("--no-8bitmime");
        }
        if o.starttls_454 {
            cmd.arg("--starttls-454");
        }
        if o.inject_after_220 {
            cmd.arg("--inject-after-220");
        }
        let (mut peer, stdout) = Peer::spawn(cmd, store.join("stderr"), "peers/qmail/smtpd.py");
        let line = first_line(stdout.expect("piped"), secs(30));
        match line.as_deref().map(str::trim).map(str::parse::<u16>) {
            Some(Ok(port)) => Ok(Aiosmtpd { peer, ip, port, dir: store }),
            _ => {
                let deadline = Instant::now() + secs(5);
                let status = loop {
                    if let Some(s) = peer.exited() {
                        break Some(s);
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                if status.and_then(|s| s.code()) == Some(98) {
                    Err(format!("{ip}:{port} is taken"))
                } else {
                    panic!("smtpd.py did not start on {ip}:{port} ({status:?}); stderr:\n{}", peer.stderr())
                }
            }
        }
    }

    /// On 127.0.0.1, a port the kernel picks.
    pub fn start(dir: &TestDir, o: &AioOpts) -> Aiosmtpd {
        Self::try_start_at(dir, IpAddr::V4(Ipv4Addr::LOCALHOST), 0, o)
    }

    /// On `ip:port` (port 0: the kernel picks).
    pub fn try_start_at(dir: &TestDir, ip: IpAddr, port: u16, o: &AioOpts) -> Aiosmtpd {
        Self::try_start(dir, ip, port, o).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a random 127.0.0.0/8 address, port 25 (for MX delivery).
    pub fn start_25(dir: &TestDir, o: &AioOpts) -> Aiosmtpd {
        on_random_address(|ip| Self::try_start(dir, ip, 25, o))
    }

    /// On `[::1]:25`; the caller holds the lock.
    pub fn start_v6_25(dir: &TestDir, _lock: &V6Port25, o: &AioOpts) -> Aiosmtpd {
        Self::try_start(dir, IpAddr::V6(Ipv6Addr::LOCALHOST), 25, o).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The event log (see smtpd.py).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// The commands it read whose verb is `verb` (`"MAIL"`), as lines.
    pub fn commands(&self, verb: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.strip_prefix("> "))
            .filter(|c| c.split(' ').next().is_some_and(|v| v.eq_ignore_ascii_case(verb)))
            .map(str::to_owned)
            .collect()
    }

    /// How many connections it got.
    pub fn connects(&self) -> usize {
        self.log().lines().filter(|l| *l == "connect").count()
    }

    /// How many TLS handshakes completed.
    pub fn handshakes(&self) -> usize {
        self.log().lines().filter(|l| l.starts_with("tls ")).count()
    }

    /// The messages it stored, in order.
    pub fn messages(&self) -> Vec<Stored> {
        let log = self.log();
        log.lines()
            .filter_map(|l| l.strip_prefix("stored "))
            .map(|name| {
                let content = std::fs::read(self.dir.join(format!("{name}.eml"))).expect("read a stored message");
                let env = std::fs::read_to_string(self.dir.join(format!("{name}.env"))).expect("read an envelope");
                let env =
                    env.lines().filter_map(|l| l.split_once(": ").map(|(k, v)| (k.to_owned(), v.to_owned()))).collect();
                Stored { content, env }
            })
            .collect()
    }

    /// Everything about it, for assertion messages.
    pub fn describe(&self) -> String {
        format!("aiosmtpd {}:{} log:\n{}\nstderr:\n{}", self.ip, self.port, self.log(), self.peer.stderr())
    }
}

// ----------------------------------------------------------- smtp-sink

/// A running postfix `smtp-sink -u root -d DIR/m. [args] IP:PORT 16`.
#[derive(Debug)]
pub struct SmtpSink {
    /// The process (killed when this is dropped).
    _peer: Peer,
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
    /// Where it dumps messages.
    pub dump: PathBuf,
}

/// The port of a listening TCP socket held by process `pid`.
fn listening_port(pid: i32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next()?;
                return u16::from_str_radix(port, 16).ok();
            }
        }
    }
    None
}

impl SmtpSink {
    fn try_start(dir: &TestDir, ip: IpAddr, port: u16, args: &[&str]) -> Result<SmtpSink, String> {
        let dump = peer_dir(dir, "smtp-sink");
        let mut cmd = Command::new(find_program("smtp-sink"));
        let addr = match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        cmd.arg("-u").arg("root").arg("-d").arg(format!("{}/m.", dump.display()));
        cmd.args(args).arg(&addr).arg("16");
        let (mut peer, _stdout) = Peer::spawn(cmd, dump.join("stderr"), "smtp-sink");
        // Ready once it holds a listening socket (connections queue in its
        // backlog from then on); gone if it could not bind.
        let deadline = Instant::now() + secs(20);
        loop {
            if let Some(p) = listening_port(peer.pid()) {
                return Ok(SmtpSink { _peer: peer, ip, port: p, dump });
            }
            if let Some(status) = peer.exited() {
                let err = peer.stderr();
                if err.contains("in use") || err.contains("bind") {
                    return Err(format!("{addr}: {err}"));
                }
                panic!("smtp-sink {args:?} {addr} exited ({status}) without listening:\n{err}");
            }
            if Instant::now() >= deadline {
                panic!("smtp-sink {args:?} {addr} did not listen within the limit:\n{}", peer.stderr());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// On 127.0.0.1, a port the kernel picks.
    pub fn start(dir: &TestDir, args: &[&str]) -> SmtpSink {
        Self::try_start(dir, IpAddr::V4(Ipv4Addr::LOCALHOST), 0, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a random 127.0.0.0/8 address, port 25.
    pub fn start_25(dir: &TestDir, args: &[&str]) -> SmtpSink {
        on_random_address(|ip| Self::try_start(dir, ip, 25, args))
    }

    /// The messages it dumped (headers it adds, then the message with LF
    /// line ends), sorted by name.
    pub fn dumps(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dump)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.file_name().is_some_and(|n| n.as_bytes().starts_with(b"m.")))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// The `X-Mail-Args:` and other headers smtp-sink adds to each dump.
    pub fn dump_header(dump: &[u8], name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(dump);
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    }
}

// ----------------------------------------------------- full backlog

/// `peers/qmail/backlog.py`: a listener with a full backlog, which drops
/// new SYNs: a connection to it times out.
#[derive(Debug)]
pub struct FullBacklog {
    /// The process (killed when this is dropped).
    _peer: Peer,
    /// Its address.
    pub ip: IpAddr,
    /// Its port.
    pub port: u16,
}

impl FullBacklog {
    fn try_start(dir: &TestDir, ip: IpAddr, port: u16) -> Result<FullBacklog, String> {
        let d = peer_dir(dir, "backlog");
        let mut cmd = Command::new(PYTHON);
        cmd.arg(peer_script("qmail/backlog.py")).arg(ip.to_string()).arg(port.to_string());
        let (mut peer, stdout) = Peer::spawn(cmd, d.join("stderr"), "peers/qmail/backlog.py");
        match first_line(stdout.expect("piped"), secs(30)).as_deref().map(str::trim).map(str::parse::<u16>) {
            Some(Ok(port)) => Ok(FullBacklog { _peer: peer, ip, port }),
            _ => {
                let deadline = Instant::now() + secs(5);
                while peer.exited().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(format!("backlog.py on {ip}:{port}: {}", peer.stderr()))
            }
        }
    }

    /// On 127.0.0.1, any port.
    pub fn start(dir: &TestDir) -> FullBacklog {
        Self::try_start(dir, IpAddr::V4(Ipv4Addr::LOCALHOST), 0).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a random 127.0.0.0/8 address, port 25.
    pub fn start_25(dir: &TestDir) -> FullBacklog {
        on_random_address(|ip| Self::try_start(dir, ip, 25))
    }
}

// --------------------------------------------------------------- misc

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").port()
}

/// The `SIZE=` a correct client announces for `message`: the normalized
/// message with its leading dots doubled, without the terminator.
pub fn encoded_size(message: &[u8]) -> usize {
    let n = normalized(message);
    let mut dots = usize::from(n.first() == Some(&b'.'));
    dots += n.windows(2).filter(|w| w == b"\n.").count();
    n.len() + dots
}

/// A small xorshift PRNG, seeded: the random messages are the same on
/// every run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (not 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Writes `bytes` to a new file in `dir`.
pub fn write_file(path: &Path, bytes: &[u8]) {
    let mut f = File::create(path).expect("create a file");
    f.write_all(bytes).expect("write a file");
}

/// Reads a whole file (empty if missing).
pub fn read_file(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut v);
    }
    v
}
