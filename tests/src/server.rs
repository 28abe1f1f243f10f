//! `tcpserver -1 …` running a command line for the duration of a test.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::procs::{self, Proc};
use crate::{Smtp, TestDir, bin, find_program};

/// A running `tcpserver -1 -R -H -l0 -c100 127.0.0.1 0 prog...`.
///
/// It is its own process group leader, so the processes of its sessions
/// can be found (and, on drop, ended) through the group. Its stderr, which
/// every process of every session inherits, goes to a file.
#[derive(Debug)]
pub struct Server {
    child: Child,
    _stdout: ChildStdout,
    port: u16,
    stderr_path: PathBuf,
    /// Where test-smtpd logs what it reads (when the chain runs it).
    pub smtpd_log: PathBuf,
    /// Where test-smtpd stores messages.
    pub maildir: PathBuf,
    /// Where test-smtpd writes its environment.
    pub smtpd_env: PathBuf,
}

impl Server {
    /// Starts tcpserver with `prog` as the per-connection command line and
    /// exactly the environment `env` (plus `PATH`), in `dir`. Waits (bounded)
    /// for the port it prints.
    pub fn start(dir: &TestDir, prog: &[OsString], env: &[(OsString, OsString)]) -> Server {
        let stderr_path = unique(dir.path(), "tcpserver", "stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr file");
        let mut cmd = Command::new(find_program("tcpserver"));
        cmd.args(["-1", "-R", "-H", "-l0", "-c100", "127.0.0.1", "0"])
            .args(prog)
            .env_clear()
            .env("PATH", crate::bins::CHILD_PATH)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start tcpserver: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let res = r.read_line(&mut line);
            let _ = tx.send((res.map(|_| line), r.into_inner()));
        });
        let limit = crate::secs(20);
        let got = rx.recv_timeout(limit);
        let fail = |child: &mut Child, why: String| -> ! {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("tcpserver did not start: {why}\ncommand: {prog:?}\n--- its stderr ---\n{err}");
        };
        let (line, stdout) = match got {
            Ok((Ok(line), stdout)) => (line, stdout),
            Ok((Err(e), _)) => fail(&mut child, format!("cannot read its stdout: {e}")),
            Err(_) => fail(&mut child, format!("no port on its stdout within {limit:?}")),
        };
        let _ = reader.join();
        let port = match line.trim().parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => fail(&mut child, format!("expected a port number on its stdout, got {line:?}")),
        };
        let none = PathBuf::new();
        Server {
            child,
            _stdout: stdout,
            port,
            stderr_path,
            smtpd_log: none.clone(),
            maildir: none.clone(),
            smtpd_env: none,
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// tcpserver's process id, which is also the process group of every
    /// session.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A new SMTP client connection.
    pub fn connect(&self) -> Smtp<TcpStream> {
        Smtp::connect(self.addr())
    }

    /// A new connection whose greeting (`220`) has been read.
    pub fn connect_greeted(&self) -> Smtp<TcpStream> {
        let mut c = self.connect();
        c.expect(220);
        c
    }

    /// What tcpserver and all the processes of all sessions wrote on
    /// stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Asserts that nothing was written on stderr.
    pub fn assert_stderr_empty(&self) {
        let e = self.stderr();
        assert!(e.is_empty(), "expected an empty stderr from the chain, got:\n{e}");
    }

    /// The live processes of the sessions (not tcpserver itself).
    pub fn session_processes(&self) -> Vec<Proc> {
        procs::group_members(self.pid())
    }

    /// Waits until no session process is left; panics (listing them) if
    /// some remain after `limit`.
    pub fn wait_sessions_gone(&self, limit: Duration) {
        if procs::wait_until_none(self.pid(), limit, |_| true).is_err() {
            panic!("session processes still running after {limit:?}\n{}", self.diagnostics());
        }
    }

    /// The state of the server for failure messages: its session processes
    /// (with what they wait on), the TCP connections of its port, and its
    /// stderr.
    pub fn diagnostics(&self) -> String {
        let mut out = format!("tcpserver pid {} port {}\nsession processes:\n", self.pid(), self.port);
        for p in self.session_processes() {
            let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", p.pid)).unwrap_or_default();
            out.push_str(&format!("  {} (parent {}) {} state {} waiting in {wchan}\n", p.pid, p.ppid, p.comm, p.state));
        }
        if let Some(ss) = crate::bins::try_find_program("ss") {
            let filter = format!("( sport = :{p} or dport = :{p} )", p = self.port);
            let o = crate::run::run(Command::new(ss).args(["-tanpo", &filter]), b"", crate::secs(10));
            out.push_str(&format!("sockets:\n{}", o.stdout_str()));
        }
        out.push_str(&format!("stderr:\n{}", self.stderr()));
        out
    }

    /// Waits until no session process named `comm` is left.
    pub fn wait_no_process_named(&self, comm: &str, limit: Duration) -> Result<(), Vec<Proc>> {
        procs::wait_until_none(self.pid(), limit, |p| p.comm == comm)
    }

    /// Everything test-smtpd read, from all sessions.
    pub fn smtpd_log(&self) -> Vec<u8> {
        std::fs::read(&self.smtpd_log).unwrap_or_default()
    }

    /// The messages test-smtpd stored, sorted by file name.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&self.maildir) {
            Ok(d) => d
                .filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// The environment test-smtpd last started with.
    pub fn smtpd_environment(&self) -> BTreeMap<String, String> {
        let raw = std::fs::read(&self.smtpd_env)
            .unwrap_or_else(|e| panic!("test-smtpd wrote no environment to {}: {e}", self.smtpd_env.display()));
        raw.split(|&b| b == 0)
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let kv = String::from_utf8_lossy(kv);
                match kv.split_once('=') {
                    Some((k, v)) => (k.to_owned(), v.to_owned()),
                    None => (kv.into_owned(), String::new()),
                }
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = self.child.wait();
                    break;
                }
                // Bounded polling of the exit status.
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // Whatever is left of the sessions goes too: a test that failed
        // halfway must not leave processes behind for the next one.
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

fn unique(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (0..)
        .map(|n| if n == 0 { dir.join(format!("{stem}.{ext}")) } else { dir.join(format!("{stem}-{n}.{ext}")) })
        .find(|p| !p.exists())
        .expect("a free file name")
}

/// The STARTTLS server chain under test:
/// `tcpserver … ucspi-tlsd [tlsd args] -- smtpd-starttls-proxy-io [proxy args] -- smtpd…`
///
/// By default the smtpd is `test-smtpd` with its log, maildir and
/// environment file in the test directory, and `CERTFILE`/`KEYFILE` name
/// the `mx.test` certificate.
#[derive(Debug)]
pub struct Chain<'a> {
    dir: &'a TestDir,
    tlsd: Vec<OsString>,
    proxy: Vec<OsString>,
    smtpd: Option<Vec<OsString>>,
    env: Vec<(OsString, OsString)>,
    default_certs: bool,
    no_handover: bool,
}

impl<'a> Chain<'a> {
    /// The default chain in `dir`.
    pub fn new(dir: &'a TestDir) -> Chain<'a> {
        Chain {
            dir,
            tlsd: Vec::new(),
            proxy: Vec::new(),
            smtpd: None,
            env: Vec::new(),
            default_certs: true,
            no_handover: false,
        }
    }

    /// Adds options of ucspi-tlsd.
    pub fn tlsd_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.tlsd.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds options of smtpd-starttls-proxy-io.
    pub fn proxy_args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.proxy.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Replaces test-smtpd by another SMTP server command line.
    pub fn smtpd<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, argv: I) -> Self {
        self.smtpd = Some(argv.into_iter().map(|a| a.as_ref().to_owned()).collect());
        self
    }

    /// Sets an environment variable of the whole chain (later settings of
    /// the same name win).
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Does not set `CERTFILE`/`KEYFILE` to the `mx.test` pair.
    pub fn no_default_certs(mut self) -> Self {
        self.default_certs = false;
        self
    }

    /// Runs the proxy without `CHAINMAIL_TLS_HANDOVER`, as under another
    /// UCSPI-TLS server: it keeps relaying after STARTTLS itself.
    pub fn without_handover(mut self) -> Self {
        self.no_handover = true;
        self
    }

    /// The command line tcpserver runs for each connection.
    pub fn argv(&self) -> Vec<OsString> {
        let mut argv = vec![bin("ucspi-tlsd").into_os_string()];
        argv.extend(self.tlsd.iter().cloned());
        argv.push("--".into());
        if self.no_handover {
            argv.extend(["env", "-u", "CHAINMAIL_TLS_HANDOVER"].map(OsString::from));
        }
        argv.push(bin("smtpd-starttls-proxy-io").into_os_string());
        argv.extend(self.proxy.iter().cloned());
        argv.push("--".into());
        match &self.smtpd {
            Some(s) => argv.extend(s.iter().cloned()),
            None => argv.push(bin("test-smtpd").into_os_string()),
        }
        argv
    }

    /// Starts tcpserver with the chain.
    pub fn start(self) -> Server {
        let argv = self.argv();
        let dir = self.dir;
        let smtpd_log = dir.join("smtpd.log");
        let maildir = dir.join("mail");
        let smtpd_env = dir.join("smtpd.env");
        std::fs::create_dir_all(&maildir).expect("create the maildir");
        let mut env: Vec<(OsString, OsString)> = vec![
            ("TEST_SMTPD_LOG".into(), smtpd_log.clone().into()),
            ("TEST_SMTPD_MAILDIR".into(), maildir.clone().into()),
            ("TEST_SMTPD_ENV".into(), smtpd_env.clone().into()),
        ];
        if self.default_certs {
            let mx = dir.certs().mx();
            env.push(("CERTFILE".into(), mx.cert.into()));
            env.push(("KEYFILE".into(), mx.key.into()));
        }
        for (k, v) in self.env {
            env.retain(|(old, _)| *old != k);
            env.push((k, v));
        }
        let mut server = Server::start(dir, &argv, &env);
        server.smtpd_log = smtpd_log;
        server.maildir = maildir;
        server.smtpd_env = smtpd_env;
        server
    }
}
