//! What the QMQP tests share: postfix's qmqp-sink as a real upstream, a
//! scripted QMQP server that records what it got and answers what the
//! test says, and qmail-qmqpc runs under a temporary qmail home.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use chainmail_tests::free_port;
use chainmail_tests::run::{Output, run};
use chainmail_tests::{TestDir, bin, find_program, secs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Waits (bounded, polling) until `path` takes connections.
pub fn wait_unix(path: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {} after {limit:?}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// postfix's qmqp-sink (`-c`: it prints its count of messages), on a Unix
/// socket or a TCP port; stopped by PID on drop.
#[derive(Debug)]
pub struct QmqpSink {
    child: Child,
    /// `unix:PATH` or `127.0.0.1:PORT`, as qmqp-source takes it.
    pub endpoint: String,
    /// The socket's path, for a Unix sink.
    pub path: Option<PathBuf>,
    /// The port, for a TCP sink.
    pub port: Option<u16>,
    out: PathBuf,
}

impl QmqpSink {
    /// A sink on `dir/name`.
    pub fn unix(dir: &TestDir, name: &str) -> QmqpSink {
        let path = dir.join(name);
        let out = dir.join(format!("{name}.out"));
        let child = Self::spawn(&format!("unix:{}", path.display()), &out);
        wait_unix(&path, secs(20));
        QmqpSink { child, endpoint: format!("unix:{}", path.display()), path: Some(path), port: None, out }
    }

    /// A sink on 127.0.0.1.
    pub fn tcp(dir: &TestDir) -> QmqpSink {
        let port = free_port();
        let out = dir.join(format!("sink-{port}.out"));
        let child = Self::spawn(&format!("127.0.0.1:{port}"), &out);
        let deadline = Instant::now() + secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "qmqp-sink does not listen on port {port}");
            std::thread::sleep(Duration::from_millis(10));
        }
        QmqpSink { child, endpoint: format!("127.0.0.1:{port}"), path: None, port: Some(port), out }
    }

    fn spawn(endpoint: &str, out: &Path) -> Child {
        let out = std::fs::File::create(out).expect("sink output");
        Command::new(find_program("qmqp-sink"))
            .args(["-c", endpoint, "64"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("cannot start qmqp-sink (tests/run unpacks it from the postfix package)")
    }

    /// The last count qmqp-sink printed (it prints `N\r` per message).
    pub fn count(&self) -> u64 {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.split(['\r', '\n']).filter_map(|s| s.trim().parse().ok()).next_back().unwrap_or(0)
    }

    /// Waits (bounded) until the count reaches `n`.
    pub fn wait_count(&self, n: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            assert!(Instant::now() < deadline, "qmqp-sink counted {} of {n} messages", self.count());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for QmqpSink {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// What a scripted server does with a connection.
#[derive(Debug, Clone)]
pub enum Script {
    /// Reads the whole request, then sends these bytes and closes.
    Reply(Vec<u8>),
    /// Reads the whole request, then closes without a word.
    Close,
    /// Reads the whole request, then waits this long before replying `K`.
    Stall(Duration),
}

/// A QMQP server on a Unix socket or a TCP port that serves one
/// connection per script entry in a thread, and hands over each request
/// it read (the raw bytes).
#[derive(Debug)]
pub struct ScriptedServer {
    /// Where it listens (`/path`, or `127.0.0.1:PORT`).
    pub entry: String,
    requests: mpsc::Receiver<Vec<u8>>,
}

fn read_request(s: &mut impl Read) -> Vec<u8> {
    use chainmail_qmqp::request::{Limits, RequestParser, Status};
    let mut p = RequestParser::new(Limits { address_check: chainmail_qmqp::AddressCheck::Off, ..Limits::default() });
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => n,
        };
        all.extend_from_slice(&buf[..n]);
        if p.feed(&buf[..n]).1 != Status::NeedMore {
            return all;
        }
    }
}

fn serve(mut s: impl Read + Write, script: Script, tx: &mpsc::Sender<Vec<u8>>) {
    let got = read_request(&mut s);
    let _ = tx.send(got);
    match script {
        Script::Reply(bytes) => {
            let _ = s.write_all(&bytes);
        }
        Script::Close => {}
        Script::Stall(d) => {
            std::thread::sleep(d);
            let _ = s.write_all(b"3:Kok,");
        }
    }
}

impl ScriptedServer {
    /// On the Unix socket `path`.
    pub fn unix(path: &Path, scripts: Vec<Script>) -> ScriptedServer {
        let l = UnixListener::bind(path).expect("bind the scripted server");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for script in scripts {
                let Ok((s, _)) = l.accept() else { return };
                serve(s, script, &tx);
            }
        });
        ScriptedServer { entry: path.display().to_string(), requests: rx }
    }

    /// On a TCP port of 127.0.0.1.
    pub fn tcp(scripts: Vec<Script>) -> ScriptedServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the scripted server");
        let entry = format!("127.0.0.1:{}", l.local_addr().expect("addr").port());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for script in scripts {
                let Ok((s, _)) = l.accept() else { return };
                serve(s, script, &tx);
            }
        });
        ScriptedServer { entry, requests: rx }
    }

    /// The next request it read (bounded wait).
    pub fn request(&self) -> Vec<u8> {
        self.requests.recv_timeout(secs(30)).expect("the scripted server got no request")
    }
}

/// A qmail home with `control/qmqpservers`.
pub fn qmail_home(dir: &TestDir, servers: &[&str]) -> PathBuf {
    let home = dir.join("qmail");
    std::fs::create_dir_all(home.join("control")).expect("mkdir control");
    let mut text = servers.join("\n");
    text.push('\n');
    std::fs::write(home.join("control/qmqpservers"), text).expect("write qmqpservers");
    home
}

/// Runs qmail-qmqpc with `message` on fd 0 and `envelope` on fd 1 (read
/// from a file, through `sh -c 'exec "$0" 1<"$1"'`), under `home`.
pub fn qmqpc(dir: &TestDir, home: &Path, message: &[u8], envelope: &[u8]) -> Output {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let env_path = dir.join(format!("envelope-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
    std::fs::write(&env_path, envelope).expect("write envelope");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("exec \"$0\" 1<\"$1\"").arg(bin("qmail-qmqpc")).arg(&env_path).env_clear().env("QMAILHOME", home);
    run(&mut cmd, message, secs(120))
}

/// A TCP listener on 127.0.0.1 that never accepts, with its accept queue
/// filled: connecting to it times out. The connections that fill it are
/// kept with it.
pub fn full_listener() -> ((std::os::fd::OwnedFd, Vec<std::net::TcpStream>), u16) {
    use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, getsockname, listen, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::new(127, 0, 0, 1, 0)).expect("bind");
    listen(&fd, Backlog::new(0).expect("backlog")).expect("listen");
    let port = getsockname::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd)).expect("getsockname").port();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        match std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    ((fd, fillers), port)
}

/// qrelay running as a daemon on a configuration, started with
/// `NOTIFY_SOCKET` pointing into the test directory and waited for
/// (`READY=1`); stopped by PID (SIGTERM, then SIGKILL) on drop.
#[derive(Debug)]
pub struct Qrelay {
    child: Option<Child>,
    /// Its configuration file.
    pub config: PathBuf,
    stderr: PathBuf,
}

impl Qrelay {
    /// Writes `config` to `dir/config.lua` and starts qrelay on it.
    pub fn start(dir: &TestDir, config: &str) -> Qrelay {
        Self::start_with(dir, config, |program, args| {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        })
    }

    /// Like [`Qrelay::start`], with the command line made by `wrap` from
    /// qrelay's path and arguments (the environment and stdio are set
    /// afterwards).
    pub fn start_with(
        dir: &TestDir,
        config: &str,
        wrap: impl FnOnce(&Path, &[std::ffi::OsString]) -> Command,
    ) -> Qrelay {
        use std::os::unix::net::UnixDatagram;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config_path = dir.join(format!("config-{n}.lua"));
        std::fs::write(&config_path, config).expect("write config");
        let notify = dir.join(format!("notify-{n}.sock"));
        let ready = UnixDatagram::bind(&notify).expect("bind the notify socket");
        ready.set_read_timeout(Some(secs(30))).expect("timeout");
        let stderr = dir.join(format!("qrelay-{n}.stderr"));
        let mut cmd = wrap(&bin("qrelay"), &["--config".into(), config_path.clone().into_os_string()]);
        cmd.env_clear()
            .env("NOTIFY_SOCKET", &notify)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .process_group(0);
        let child = cmd.spawn().expect("start qrelay");
        let mut buf = [0u8; 64];
        let got = ready.recv(&mut buf);
        let q = Qrelay { child: Some(child), config: config_path, stderr };
        match got {
            Ok(n) if &buf[..n] == b"READY=1" => q,
            other => panic!("qrelay did not get ready: {other:?}\n{}", q.stderr()),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends it a signal.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal qrelay");
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits (bounded, polling the file) until its stderr contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_count(needle, 1)
    }

    /// Waits (bounded) until its stderr contains `needle` `n` times.
    pub fn wait_log_count(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + secs(30);
        loop {
            let text = self.stderr();
            if text.matches(needle).count() >= n {
                return text;
            }
            assert!(Instant::now() < deadline, "qrelay never logged {needle:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits (bounded) for the exit: its exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("qrelay did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Qrelay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// Sends `request` to the Unix socket `path` (then half-closes when
/// `half_close`), and reads until EOF (bounded): the reply bytes.
pub fn raw_client(path: &Path, request: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = UnixStream::connect(path).expect("connect to qrelay");
    s.set_read_timeout(Some(secs(30))).expect("timeout");
    s.set_write_timeout(Some(secs(30))).expect("timeout");
    let _ = s.write_all(request);
    if half_close {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}
