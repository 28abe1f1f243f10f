//! rsockd under a real tcpserver, with real clients (curl, ncat, and a
//! byte-level client for BIND, UDP and bad input), real upstreams
//! (danted, microsocks, another rsockd) and a `python3 -m http.server`
//! target. Names: only `localhost` (from /etc/hosts) is used, so every
//! resolution stays on this machine.

mod rsockd_support;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chainmail_tests::peer::{Peer, first_line};
use chainmail_tests::run::{Output, run};
use chainmail_tests::{Server, TestDir, bin, find_program, secs};
use rsockd_support::*;

fn write_secret(dir: &TestDir, name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = write(dir, name, text);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// rsockd under tcpserver with these files (socks.conf absent when `None`).
fn rsockd(dir: &TestDir, tag: &str, sockd: &str, socks: Option<&str>, args: &[&str]) -> Server {
    rsockd_env(dir, tag, sockd, socks, args, &[])
}

fn rsockd_env(
    dir: &TestDir,
    tag: &str,
    sockd: &str,
    socks: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Server {
    let f = write(dir, &format!("{tag}-sockd.conf"), sockd);
    let socks_path = dir.join(format!("{tag}-socks.conf"));
    if let Some(s) = socks {
        std::fs::write(&socks_path, s).expect("write socks.conf");
    }
    let mut prog: Vec<OsString> = vec![bin("rsockd").into(), "-f".into(), f.into(), "-F".into(), socks_path.into()];
    prog.extend(args.iter().map(OsString::from));
    let env: Vec<(OsString, OsString)> = env.iter().map(|(k, v)| (k.into(), v.into())).collect();
    Server::start(dir, &prog, &env)
}

fn curl(proxy_kind: &str, proxy: u16, url: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(find_program("curl"));
    cmd.args(["-sS", "--max-time", "15", &format!("--{proxy_kind}"), &format!("127.0.0.1:{proxy}")])
        .args(extra)
        .arg(url);
    run(&mut cmd, b"", secs(20))
}

/// The log lines of the sessions, once there are at least `n`.
fn log_lines(s: &Server, n: usize) -> Vec<String> {
    let deadline = Instant::now() + secs(10);
    loop {
        let lines: Vec<String> =
            s.stderr().lines().filter(|l| l.starts_with("rsockd: client=")).map(str::to_owned).collect();
        if lines.len() >= n || Instant::now() >= deadline {
            assert!(lines.len() >= n, "expected {n} log lines, got:\n{}", s.stderr());
            return lines;
        }
        // Bounded polling of a log file written at the end of a session.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} does not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn v4_request(cd: u8, port: u16, ip: [u8; 4], user: &[u8], name: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![4, cd];
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&ip);
    v.extend_from_slice(user);
    v.push(0);
    if let Some(n) = name {
        v.extend_from_slice(n);
        v.push(0);
    }
    v
}

/// A SOCKS4 request as user `user`; the reply code.
fn socks4_code(port: u16, dest: u16, user: &[u8]) -> u8 {
    let mut s = connect(port);
    s.write_all(&v4_request(1, dest, [127, 0, 0, 1], user, None)).expect("write");
    read_exact(&mut s, 8)[1]
}

fn http_get(s: &mut TcpStream) -> String {
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("write GET");
    String::from_utf8_lossy(&read_to_end(s)).into_owned()
}

#[test]
fn curl_and_ncat_in_every_protocol() {
    let dir = TestDir::new("rsockd_curl");
    let t = http_target(&dir);
    let pw = write_secret(&dir, "passwords", "alice:wonder land\n");
    let open = rsockd(&dir, "open", "permit 127.0.0.0 255.0.0.0\n", None, &[]);
    let auth = rsockd(&dir, "auth", "permit *=alice 127.0.0.0/8\n", None, &["-a", pw.to_str().expect("utf-8")]);
    for kind in ["socks4", "socks4a", "socks5", "socks5-hostname"] {
        let o = curl(kind, open.port(), &format!("http://localhost:{}/index.html", t.port), &[]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind}: {}", o.describe());
    }
    let lines = log_lines(&open, 4);
    assert!(
        lines.iter().filter(|l| l.contains("dest=localhost:")).count() == 2,
        "4a and 5-hostname pass the name: {lines:#?}"
    );
    assert!(lines.iter().all(|l| l.contains("rule=1:permit route=direct") && l.contains("outcome=ok")), "{lines:#?}");
    for kind in ["socks5", "socks5-hostname"] {
        let url = format!("http://localhost:{}/index.html", t.port);
        let o = curl(kind, auth.port(), &url, &["-U", "alice:wonder land"]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind} -U: {}", o.describe());
        let o = curl(kind, auth.port(), &url, &["-U", "alice:wrong"]);
        assert!(!o.success(), "a wrong password must fail: {}", o.describe());
        let o = curl(kind, auth.port(), &url, &[]);
        assert!(!o.success(), "no credentials with -a must fail: {}", o.describe());
    }
    let lines = log_lines(&auth, 6);
    assert!(lines.iter().any(|l| l.contains("user=alice") && l.contains("outcome=ok")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("outcome=refused:authentication-failed")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("outcome=refused:no-acceptable-method")), "{lines:#?}");
    // SOCKS4 clients keep their USERID even with -a.
    let o =
        curl("socks4", auth.port(), &format!("http://127.0.0.1:{}/index.html", t.port), &["--proxy-user", "alice:"]);
    assert!(o.success() && o.stdout_str() == PAGE, "socks4 with USERID alice: {}", o.describe());
    for kind in ["socks4", "socks5"] {
        let mut cmd = Command::new(find_program("ncat"));
        cmd.args([
            "--proxy",
            &format!("127.0.0.1:{}", open.port()),
            "--proxy-type",
            kind,
            "127.0.0.1",
            &t.port.to_string(),
        ]);
        let o = run(&mut cmd, b"GET /index.html HTTP/1.0\r\n\r\n", secs(20));
        assert!(o.stdout_str().ends_with(PAGE), "ncat {kind}: {}", o.describe());
    }
}

#[test]
fn rules_through_t_and_c() {
    let dir = TestDir::new("rsockd_rules");
    write(&dir, "staff", "carol dave\nerin\n");
    let sockd = format!(
        "# order, operators, masks, users\n\
         deny 127.0.0.5 255.255.255.255\n\
         permit 127.0.0.0 255.0.0.0 10.0.0.1 255.0.0.255 eq 80\n\
         permit 127.0.0.0/8 192.168.0.0/16 lt 1024\n\
         permit *=alice,{staff} ALL 172.16.0.0/12 eq 8000-8100\n\
         permit ALL .example.org neq 8000-8100\n\
         permit ALL 2001:db8::/32 ge 443\n\
         permit ALL 198.51.100.0/24 gt ftp\n\
         permit ALL 203.0.113.0/24 le 22\n",
        staff = dir.join("staff").display()
    );
    let f = write(&dir, "sockd.conf", &sockd);
    let socks = write(
        &dir,
        "socks.conf",
        "sockd @=socks5://u:secret@127.0.0.1:1081,proxy.invalid:1080 .example.org\ndeny 10.0.0.66/32\ndirect 10.0.0.0/8\nsockd ALL eq 8000-8100\n",
    );
    let t = |remote: &str, dest: &str, port: &str, user: Option<&str>| -> String {
        let mut cmd = Command::new(bin("rsockd"));
        cmd.arg("-f").arg(&f).arg("-F").arg(&socks).args(["-T", dest, port]).args(user).env("TCPREMOTEIP", remote);
        let o = run(&mut cmd, b"", secs(10));
        assert!(o.success(), "{}", o.describe());
        o.stdout_str().trim().to_owned()
    };
    let cases: &[(&str, &str, &str, Option<&str>, &str)] = &[
        ("127.0.0.5", "10.0.0.1", "80", None, "sockd.conf:2 deny socks.conf:3 direct"),
        ("127.0.0.6", "10.0.0.1", "80", None, "sockd.conf:3 permit socks.conf:3 direct"),
        ("127.0.0.6", "10.9.9.1", "www", None, "sockd.conf:3 permit socks.conf:3 direct"),
        ("127.0.0.6", "10.0.0.2", "80", None, "sockd.conf:- deny socks.conf:3 direct"),
        ("127.0.0.6", "10.0.0.1", "81", None, "sockd.conf:- deny socks.conf:3 direct"),
        ("127.0.0.6", "10.0.0.66", "80", None, "sockd.conf:- deny socks.conf:2 deny"),
        ("127.0.0.6", "192.168.1.1", "1023", None, "sockd.conf:4 permit socks.conf:- deny"),
        ("127.0.0.6", "192.168.1.1", "1024", None, "sockd.conf:- deny socks.conf:- deny"),
        ("10.1.1.1", "192.168.1.1", "80", None, "sockd.conf:- deny socks.conf:- deny"),
        ("10.1.1.1", "172.16.0.1", "8000", Some("alice"), "sockd.conf:5 permit socks.conf:4 sockd SOCKS_SERVER"),
        ("10.1.1.1", "172.16.0.1", "8100", Some("erin"), "sockd.conf:5 permit socks.conf:4 sockd SOCKS_SERVER"),
        ("10.1.1.1", "172.16.0.1", "8101", Some("erin"), "sockd.conf:- deny socks.conf:- deny"),
        ("10.1.1.1", "172.16.0.1", "8000", Some("mallory"), "sockd.conf:- deny socks.conf:4 sockd SOCKS_SERVER"),
        (
            "10.1.1.1",
            "www.example.org",
            "80",
            None,
            "sockd.conf:6 permit socks.conf:1 sockd socks5://u@127.0.0.1:1081,socks4://proxy.invalid:1080",
        ),
        ("10.1.1.1", "2001:db8::1", "443", None, "sockd.conf:7 permit socks.conf:- deny"),
        ("10.1.1.1", "2001:db8::1", "442", None, "sockd.conf:- deny socks.conf:- deny"),
        ("10.1.1.1", "198.51.100.1", "22", None, "sockd.conf:8 permit socks.conf:- deny"),
        ("10.1.1.1", "198.51.100.1", "21", None, "sockd.conf:- deny socks.conf:- deny"),
        ("10.1.1.1", "203.0.113.1", "22", None, "sockd.conf:9 permit socks.conf:- deny"),
        ("10.1.1.1", "203.0.113.1", "23", None, "sockd.conf:- deny socks.conf:- deny"),
    ];
    for (remote, dest, port, user, want) in cases {
        assert_eq!(t(remote, dest, port, *user), *want, "{remote} -> {dest}:{port} as {user:?}");
    }
    // -C: valid files, then the first error as FILE:LINE: reason, exit 100.
    let check = |sockd: &Path, socks: &Path| {
        let mut cmd = Command::new(bin("rsockd"));
        cmd.arg("-f").arg(sockd).arg("-F").arg(socks).arg("-C");
        run(&mut cmd, b"", secs(10))
    };
    let o = check(&f, &socks);
    assert!(o.success() && o.stdout.is_empty(), "{}", o.describe());
    for (name, text, want) in [
        ("bad1.conf", "permit ALL\npermit 10.0.0.1\n", ":2: no mask after \"10.0.0.1\""),
        ("bad2.conf", "permit ALL ALL eq gopherx\n", ":1: unknown service"),
        ("bad3.conf", &format!("permit ALL {}\n", "#".repeat(1100)), ":1: line longer than 1023 characters"),
        ("bad4.conf", "permit *=/nonexistent/users ALL\n", ":1: unable to read /nonexistent/users"),
    ] {
        let bad = write(&dir, name, text);
        let o = check(&bad, &socks);
        assert_eq!(o.code(), Some(100), "{}", o.describe());
        assert!(
            o.stdout_str().starts_with(&bad.display().to_string()) && o.stdout_str().contains(want),
            "{}",
            o.describe()
        );
    }
    let bad = write(&dir, "bad-socks.conf", "direct ALL\nsockd @=http://x ALL\n");
    let o = check(&f, &bad);
    assert_eq!(o.code(), Some(100), "{}", o.describe());
    assert!(o.stdout_str().contains("bad-socks.conf:2: invalid upstream"), "{}", o.describe());
    // A real request that no line permits: refused, nothing reached.
    let s = rsockd(&dir, "deny", "permit 10.0.0.0/8\n", None, &[]);
    assert_eq!(socks4_code(s.port(), 9, b""), 91);
    assert!(log_lines(&s, 1)[0].contains("outcome=refused:no-sockd-rule"));
}

/// A listener on 127.0.0.1:113 with SO_REUSEADDR (the previous identd's
/// connections linger in TIME_WAIT on that port).
fn listen_113() -> TcpListener {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    setsockopt(&fd, sockopt::ReuseAddr, &true).expect("SO_REUSEADDR");
    bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 113)).expect("bind 127.0.0.1:113 (the tests run as root)");
    listen(&fd, Backlog::new(16).expect("backlog")).expect("listen");
    TcpListener::from(fd)
}

/// A minimal RFC 1413 server on 127.0.0.1:113 answering `user` for every
/// query, until dropped.
struct Identd {
    addr: SocketAddr,
    stop: Arc<AtomicUsize>,
    queries: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Identd {
    fn start(user: &'static str) -> Identd {
        let l = listen_113();
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicUsize::new(0));
        let queries = Arc::new(AtomicUsize::new(0));
        let (st, q) = (stop.clone(), queries.clone());
        let thread = std::thread::spawn(move || {
            for c in l.incoming() {
                if st.load(Ordering::SeqCst) != 0 {
                    return;
                }
                let Ok(mut c) = c else { continue };
                q.fetch_add(1, Ordering::SeqCst);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 256];
                let n = c.read(&mut buf).unwrap_or(0);
                let query = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                let _ = c.write_all(format!("{query} : USERID : UNIX : {user}\r\n").as_bytes());
            }
        });
        Identd { addr, stop, queries, thread: Some(thread) }
    }
}

impl Drop for Identd {
    fn drop(&mut self) {
        self.stop.store(1, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        // The port is free again only once the thread has dropped its
        // listener.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn identd_modes() {
    let dir = TestDir::new("rsockd_identd");
    let t = http_target(&dir);
    let marks = dir.join("marks");
    std::fs::create_dir(&marks).expect("mkdir");
    let sockd = format!(
        "#NO_IDENTD: /usr/bin/touch {m}/no_identd\n#BAD_ID: /usr/bin/touch {m}/bad_id\n\
         permit ?=n *=nobody-checks ALL\npermit ALL\n",
        m = marks.display()
    );
    let strict = rsockd(&dir, "strict", &sockd, None, &["-I"]);
    let lenient = rsockd(&dir, "lenient", &sockd, None, &["-i"]);
    let wait_mark = |name: &str| {
        let deadline = Instant::now() + secs(10);
        while !marks.join(name).exists() {
            assert!(Instant::now() < deadline, "no {name} mark");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    {
        // No identd: strict refuses with 92 and runs #NO_IDENTD, lenient
        // serves; ?=n never asks.
        assert_eq!(socks4_code(strict.port(), t.port, b"alice"), 92);
        wait_mark("no_identd");
        assert_eq!(socks4_code(lenient.port(), t.port, b"alice"), 90);
        assert_eq!(socks4_code(strict.port(), t.port, b"nobody-checks"), 90);
    }
    {
        let identd = Identd::start("alice");
        assert_eq!(socks4_code(strict.port(), t.port, b"alice"), 90);
        assert_eq!(socks4_code(lenient.port(), t.port, b"alice"), 90);
        assert_eq!(socks4_code(strict.port(), t.port, b"bob"), 93);
        wait_mark("bad_id");
        assert_eq!(socks4_code(lenient.port(), t.port, b"bob"), 93);
        let before = identd.queries.load(Ordering::SeqCst);
        assert_eq!(socks4_code(strict.port(), t.port, b"nobody-checks"), 90);
        assert_eq!(identd.queries.load(Ordering::SeqCst), before, "?=n must not ask identd");
        assert!(before >= 4, "identd was asked {before} times");
    }
    {
        // An identd that accepts and never answers: -c 1 bounds the wait.
        let l = listen_113();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming() {
                held.push(c);
                if held.len() > 1 {
                    return;
                }
            }
        });
        let quick = rsockd(&dir, "quick", &sockd, None, &["-I", "-c", "1"]);
        let start = Instant::now();
        assert_eq!(socks4_code(quick.port(), t.port, b"alice"), 92);
        assert!(start.elapsed() >= Duration::from_millis(900) && start.elapsed() < secs(8), "{:?}", start.elapsed());
        // Release the port for what follows: the listener thread ends on a
        // second connection.
        let _ = TcpStream::connect("127.0.0.1:113");
    }
    // TCPREMOTEINFO (the UCSPI server asked already) is used instead.
    let prog: Vec<OsString> = vec![
        find_program("env").into(),
        "TCPREMOTEINFO=carol".into(),
        bin("rsockd").into(),
        "-I".into(),
        "-f".into(),
        dir.join("strict-sockd.conf").into(),
        "-F".into(),
        dir.join("none.conf").into(),
    ];
    let info = Server::start(&dir, &prog, &[]);
    assert_eq!(socks4_code(info.port(), t.port, b"carol"), 90);
    assert_eq!(socks4_code(info.port(), t.port, b"alice"), 93);
    assert!(log_lines(&info, 2).iter().all(|l| l.contains("ident=carol")));
}

#[test]
fn command_without_shell() {
    let dir = TestDir::new("rsockd_command");
    let t = http_target(&dir);
    let script = write(
        &dir,
        "record",
        &format!(
            "#!/bin/sh\necho LEAK-STDOUT\necho LEAK-STDERR >&2\nenv | grep '^SOCKD_' | sort > {}/env.$$.tmp\nmv {}/env.$$.tmp {}/env\n",
            dir.path().display(),
            dir.path().display(),
            dir.path().display()
        ),
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let pwned = dir.join("pwned");
    let s = rsockd(&dir, "cmd", &format!("permit ALL ALL : {} %U `id` $(id)\n", script.display()), None, &[]);
    let user = format!("x;touch {};`touch {}`", pwned.display(), pwned.display());
    let mut c = connect(s.port());
    c.write_all(&v4_request(1, t.port, [0, 0, 0, 1], user.as_bytes(), Some(b"localhost"))).expect("write");
    let reply = read_exact(&mut c, 8);
    assert_eq!(reply[1], 90);
    let page = http_get(&mut c);
    assert!(page.ends_with(PAGE) && !page.contains("LEAK"), "the command's output reached the client: {page:?}");
    let deadline = Instant::now() + secs(10);
    while !dir.join("env").exists() {
        assert!(Instant::now() < deadline, "the command did not run: {}", s.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    let env = std::fs::read_to_string(dir.join("env")).expect("env");
    for want in [
        "SOCKD_CLIENT_ADDR=127.0.0.1\n".to_owned(),
        "SOCKD_COMMAND=connect\n".into(),
        "SOCKD_DEST_HOST=localhost\n".into(),
        format!("SOCKD_DEST_PORT={}\n", t.port),
        format!("SOCKD_USER={user}\n"),
        "SOCKD_IDENT_USER=\n".into(),
        // The name was never resolved for the matching: no address, and
        // no lookup just for the command.
        "SOCKD_DEST_ADDR=\n".into(),
    ] {
        assert!(env.contains(&want), "{want:?} not in\n{env}");
    }
    assert!(!pwned.exists(), "the user name ran a command");
    assert!(s.stderr().contains("LEAK-STDOUT"), "the command's stdout goes to the log");
}

#[test]
fn upstreams_dante_and_microsocks() {
    let dir = TestDir::new("rsockd_upstreams");
    let t = http_target(&dir);
    let dante_port = free_port();
    let conf = write(
        &dir,
        "danted.conf",
        &format!(
            "logoutput: stderr\ninternal: 127.0.0.1 port = {dante_port}\nexternal: 127.0.0.1\nclientmethod: none\n\
             socksmethod: none\nuser.unprivileged: nobody\nclient pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\n\
             socks pass {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0\n  log: connect\n}}\n"
        ),
    );
    let mut cmd = Command::new(find_program("danted"));
    cmd.arg("-f").arg(&conf).arg("-p").arg(dir.join("danted.pid"));
    let (mut dante, _) = Peer::spawn(cmd, dir.join("danted.stderr"), "danted");
    let micro_port = free_port();
    let mut cmd = Command::new(find_program("microsocks"));
    cmd.args(["-i", "127.0.0.1", "-p", &micro_port.to_string(), "-u", "route", "-P", "route-pw"]);
    let (mut micro, _) = Peer::spawn(cmd, dir.join("microsocks.stderr"), "microsocks");
    wait_listening(dante_port, "danted");
    wait_listening(micro_port, "microsocks");
    let pw = write_secret(&dir, "passwords", "client:client-pw\n");
    let socks = format!(
        "sockd @=socks4://127.0.0.1:{dante_port} ALL eq {p}\n\
         sockd @=socks5://route:route-pw@127.0.0.1:{micro_port} ALL\n",
        p = t.port
    );
    let s = rsockd(&dir, "up", "permit 127.0.0.0/8\n", Some(&socks), &["-a", pw.to_str().expect("utf-8")]);
    // Through danted (SOCKS4; the name is resolved by rsockd for it).
    for (kind, host) in [("socks4", "127.0.0.1"), ("socks4a", "localhost")] {
        let o = curl(kind, s.port(), &format!("http://{host}:{}/index.html", t.port), &[]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind} via danted: {}", o.describe());
    }
    // Through microsocks with the route's credentials (the client's are
    // different, and microsocks would refuse them).
    let o = curl(
        "socks5-hostname",
        s.port(),
        &format!("http://localhost:{}/index.html", t.port),
        &["-U", "client:client-pw"],
    );
    assert!(o.success() && o.stdout_str() == PAGE, "via danted with 5-hostname: {}", o.describe());
    let lines = log_lines(&s, 3);
    assert!(lines.iter().all(|l| l.contains(&format!("via=socks4://127.0.0.1:{dante_port}"))), "{lines:#?}");
    // The second route: any port other than the target's; use a second
    // target so that the first line does not match.
    let t2 = http_target(&dir);
    for kind in ["socks5", "socks5-hostname"] {
        let o = curl(kind, s.port(), &format!("http://localhost:{}/index.html", t2.port), &["-U", "client:client-pw"]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind} via microsocks: {}", o.describe());
    }
    let lines = log_lines(&s, 5);
    assert!(
        lines[3..]
            .iter()
            .all(|l| l.contains(&format!("via=socks5://route@127.0.0.1:{micro_port}")) && l.contains("outcome=ok")),
        "{lines:#?}"
    );
    // microsocks refuses other credentials: the route really carried its own.
    let bad = format!("sockd @=socks5://client:client-pw@127.0.0.1:{micro_port} ALL\n");
    let s2 = rsockd(&dir, "badroute", "permit 127.0.0.0/8\n", Some(&bad), &[]);
    let o = curl("socks5", s2.port(), &format!("http://127.0.0.1:{}/index.html", t2.port), &[]);
    assert!(!o.success(), "{}", o.describe());
    assert!(log_lines(&s2, 1)[0].contains("upstream_refused_the_credentials"), "{}", s2.stderr());
    // danted as a SOCKS5 upstream: the name goes to it unresolved.
    let s5 = rsockd(
        &dir,
        "dante5",
        "permit 127.0.0.0/8\n",
        Some(&format!("sockd @=socks5://127.0.0.1:{dante_port} ALL\n")),
        &[],
    );
    let o = curl("socks5-hostname", s5.port(), &format!("http://localhost:{}/index.html", t.port), &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "via danted by SOCKS5: {}", o.describe());
    assert!(log_lines(&s5, 1)[0].contains(&format!("via=socks5://127.0.0.1:{dante_port}")), "{}", s5.stderr());
    let dante_log = dante.stop();
    let _ = micro.stop();
    assert!(dante_log.contains("pass") || dante_log.contains("connect"), "danted saw nothing:\n{dante_log}");
}

/// A listener that accepts and closes at once, counting: an upstream that
/// is up but broken.
fn broken_upstream() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    (port, n)
}

#[test]
fn chained_rsockd() {
    let dir = TestDir::new("rsockd_chain");
    let t = http_target(&dir);
    let pw_b = write_secret(&dir, "passwords-b", "route:route-pw\nclient:client-pw\n");
    let pw_a = write_secret(&dir, "passwords-a", "client:client-pw\n");
    let b = rsockd(&dir, "b", "permit 127.0.0.0/8\n", None, &["-a", pw_b.to_str().expect("utf-8")]);
    let (broken, attempts) = broken_upstream();
    let dead = free_port();
    let state = dir.join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let socks = format!(
        "sockd @=socks5://127.0.0.1:{dead},socks5://127.0.0.1:{broken},socks5://route:route-pw@127.0.0.1:{b} ALL\n",
        b = b.port()
    );
    let a = rsockd(
        &dir,
        "a",
        "permit 127.0.0.0/8\n",
        Some(&socks),
        &["-a", pw_a.to_str().expect("utf-8"), "-s", state.to_str().expect("utf-8")],
    );
    let url = format!("http://localhost:{}/index.html", t.port);
    // Failover: the dead and the broken servers are skipped, and marked.
    let o = curl("socks5-hostname", a.port(), &url, &["-U", "client:client-pw"]);
    assert!(o.success() && o.stdout_str() == PAGE, "failover: {}", o.describe());
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    let marked: Vec<String> = std::fs::read_dir(&state)
        .expect("state")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(marked.len(), 2, "both bad upstreams marked: {marked:?}");
    // Marked bad: tried last, so the broken one is not tried again.
    let o = curl("socks5-hostname", a.port(), &url, &["-U", "client:client-pw"]);
    assert!(o.success() && o.stdout_str() == PAGE, "second: {}", o.describe());
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "a bad upstream was tried first");
    let a_lines = log_lines(&a, 2);
    let b_lines = log_lines(&b, 2);
    // B saw the route's user and the name, unresolved; never the client's.
    assert!(b_lines.iter().all(|l| l.contains("user=route") && l.contains("dest=localhost:")), "{b_lines:#?}");
    assert!(!b.stderr().contains("user=client"), "the client's credentials went upstream");
    assert!(a_lines.iter().all(|l| l.contains("user=client")), "{a_lines:#?}");

    // 4a resolved at the right hop: A passes the name to a 4a upstream, and
    // resolves it itself for a plain SOCKS4 one.
    let s4a = rsockd(
        &dir,
        "a4",
        "permit 127.0.0.0/8\n",
        Some(&format!("sockd @=socks4a://127.0.0.1:{b} ALL\n", b = b.port())),
        &[],
    );
    let o = curl("socks4a", s4a.port(), &url, &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "4a chain: {}", o.describe());
    let s4 = rsockd(
        &dir,
        "a4plain",
        "permit 127.0.0.0/8\n",
        Some(&format!("sockd @=socks4://127.0.0.1:{b} ALL\n", b = b.port())),
        &[],
    );
    let o = curl("socks4a", s4.port(), &url, &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "4 chain: {}", o.describe());
    let b_lines = log_lines(&b, 4);
    assert!(b_lines[2].contains(&format!("dest=localhost:{}", t.port)), "4a upstream got the name: {b_lines:#?}");
    assert!(
        b_lines[3].contains(&format!("dest=127.0.0.1:{}", t.port)),
        "plain 4 upstream got the address: {b_lines:#?}"
    );

    // BIND through the upstream: the peer connects to B's listener.
    let mut c = connect(s4a.port());
    c.write_all(&v4_request(2, 0, [127, 0, 0, 1], b"", None)).expect("write");
    let first = read_exact(&mut c, 8);
    assert_eq!(first[1], 90, "{first:?}");
    let port = u16::from_be_bytes([first[2], first[3]]);
    let ip = std::net::Ipv4Addr::new(first[4], first[5], first[6], first[7]);
    assert_eq!(ip, std::net::Ipv4Addr::LOCALHOST);
    let mut peer = TcpStream::connect((ip, port)).expect("connect to the BIND address");
    let second = read_exact(&mut c, 8);
    assert_eq!(second[1], 90, "{second:?}");
    assert_eq!(u16::from_be_bytes([second[2], second[3]]), peer.local_addr().expect("addr").port());
    peer.write_all(b"from the peer").expect("write");
    assert_eq!(read_exact(&mut c, 13), b"from the peer");
    c.write_all(b"from the client").expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    peer.set_read_timeout(Some(secs(10))).expect("timeout");
    assert_eq!(read_to_end(&mut peer), b"from the client", "half-close passed through both hops");

    // SOCKS5 BIND through a SOCKS5 upstream (with the route's credentials).
    let mut c = connect(a.port());
    c.write_all(&[5, 1, 2]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 2]);
    c.write_all(&[&[1u8, 6][..], b"client", &[9], b"client-pw"].concat()).expect("write");
    assert_eq!(read_exact(&mut c, 2), [1, 0]);
    c.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 0]).expect("write");
    let first = read_exact(&mut c, 10);
    assert_eq!(&first[..4], [5, 0, 0, 1], "{first:?}");
    let mut peer = TcpStream::connect(("127.0.0.1", u16::from_be_bytes([first[8], first[9]]))).expect("connect");
    let second = read_exact(&mut c, 10);
    assert_eq!(&second[..4], [5, 0, 0, 1], "{second:?}");
    peer.write_all(b"5bind").expect("write");
    assert_eq!(read_exact(&mut c, 5), b"5bind");
    drop(peer);
    drop(c);

    // A route to this server itself is refused instead of looping.
    let own = rsockd(&dir, "self", "permit 127.0.0.0/8\n", Some("direct ALL\n"), &[]);
    std::fs::write(dir.join("self-socks.conf"), format!("sockd @=socks5://127.0.0.1:{} ALL\n", own.port()))
        .expect("write");
    let mut c = connect(own.port());
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    c.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80]).expect("write");
    assert_eq!(read_exact(&mut c, 10)[1], 2, "loop: REP 2");
    assert!(log_lines(&own, 1)[0].contains("refused:loop"), "{}", own.stderr());
}

#[test]
fn direct_bind_and_udp_associate() {
    let dir = TestDir::new("rsockd_bind_udp");
    let s = rsockd(&dir, "bu", "deny ALL ALL eq 9\npermit 127.0.0.0/8\n", None, &[]);
    // SOCKS5 BIND, direct.
    let mut c = connect(s.port());
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    c.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 0]).expect("write");
    let first = read_exact(&mut c, 10);
    assert_eq!(&first[..4], [5, 0, 0, 1]);
    let port = u16::from_be_bytes([first[8], first[9]]);
    let mut peer = TcpStream::connect(("127.0.0.1", port)).expect("connect to BIND address");
    let second = read_exact(&mut c, 10);
    assert_eq!(&second[..4], [5, 0, 0, 1]);
    assert_eq!(u16::from_be_bytes([second[8], second[9]]), peer.local_addr().expect("addr").port());
    peer.write_all(b"ping").expect("write");
    assert_eq!(read_exact(&mut c, 4), b"ping");
    drop(peer);
    drop(c);

    // UDP ASSOCIATE with an echo server; a datagram to a denied port is
    // dropped (the echo server never sees it).
    // Dual-stack: "localhost" may resolve to ::1 or 127.0.0.1.
    let echo = UdpSocket::bind("[::]:0").expect("bind");
    let echo_port = echo.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            seen2.lock().expect("lock").push(buf[..n].to_vec());
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let denied = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut ctl = connect(s.port());
    ctl.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut ctl, 2), [5, 0]);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.set_read_timeout(Some(secs(10))).expect("timeout");
    let cport = client.local_addr().expect("addr").port().to_be_bytes();
    ctl.write_all(&[5, 3, 0, 1, 127, 0, 0, 1, cport[0], cport[1]]).expect("write");
    let r = read_exact(&mut ctl, 10);
    assert_eq!(&r[..4], [5, 0, 0, 1], "{r:?}");
    let relay = SocketAddr::from(([r[4], r[5], r[6], r[7]], u16::from_be_bytes([r[8], r[9]])));
    let dgram = |port: u16, payload: &[u8], name: bool| {
        let mut d = vec![0, 0, 0];
        if name {
            d.extend_from_slice(&[3, 9]);
            d.extend_from_slice(b"localhost");
        } else {
            d.extend_from_slice(&[1, 127, 0, 0, 1]);
        }
        d.extend_from_slice(&port.to_be_bytes());
        d.extend_from_slice(payload);
        d
    };
    // Port 9 is denied by sockd.conf; a fragment is dropped.
    client.send_to(&dgram(9, b"denied", false), relay).expect("send");
    let mut frag = dgram(echo_port, b"fragment", false);
    frag[2] = 1;
    client.send_to(&frag, relay).expect("send");
    client.send_to(&dgram(echo_port, b"by address", false), relay).expect("send");
    client.send_to(&dgram(echo_port, b"by name", true), relay).expect("send");
    let mut buf = [0u8; 2048];
    let mut got = Vec::new();
    for _ in 0..2 {
        let (n, _) = client.recv_from(&mut buf).expect("an echo through the relay");
        let (header, payload) = match buf[3] {
            1 => (10, &[&[0u8, 0, 0, 1, 127, 0, 0, 1][..], &echo_port.to_be_bytes()].concat()),
            _ => (22, &[&[0u8, 0, 0, 4][..], &[0; 15], &[1], &echo_port.to_be_bytes()].concat()),
        };
        assert_eq!(&buf[..header], &payload[..], "the echo's address in the header");
        got.push(buf[header..n].to_vec());
    }
    got.sort();
    assert_eq!(got, [b"by address".to_vec(), b"by name".to_vec()]);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "only the permitted datagrams went out: {seen:?}");
    drop(denied);
    drop(ctl);
    let lines = log_lines(&s, 2);
    assert!(lines.iter().any(|l| l.contains("cmd=udp") && l.contains("ok:udp:2-datagrams-dropped")), "{lines:#?}");
}

#[test]
fn bad_input_gets_the_right_reply_and_reaches_nothing() {
    let dir = TestDir::new("rsockd_bad");
    let target = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tport = target.local_addr().expect("addr").port();
    target.set_nonblocking(true).expect("nonblocking");
    let s = rsockd(&dir, "bad", "permit ALL\n", None, &[]);
    let p = tport.to_be_bytes();
    let long = vec![b'a'; 300];
    let v5 = |req: &[u8]| [&[5u8, 1, 0][..], req].concat();
    let cases: Vec<(&str, Vec<u8>, bool, Vec<u8>)> = vec![
        ("v4 truncated", vec![4, 1, p[0], p[1], 127], true, vec![0, 91, 0, 0, 0, 0, 0, 0]),
        ("v4 userid too long", v4_request(1, tport, [127, 0, 0, 1], &long, None), false, vec![0, 91, 0, 0, 0, 0, 0, 0]),
        (
            "v4a name too long",
            v4_request(1, tport, [0, 0, 0, 1], b"", Some(&long)),
            false,
            vec![0, 91, 0, 0, 0, 0, 0, 0],
        ),
        ("v4a bad name", v4_request(1, tport, [0, 0, 0, 1], b"", Some(b"a b")), false, vec![0, 91, 0, 0, 0, 0, 0, 0]),
        ("v4 command 3", v4_request(3, tport, [127, 0, 0, 1], b"", None), false, vec![0, 91, 0, 0, 0, 0, 0, 0]),
        (
            "v4 garbage after",
            [v4_request(1, tport, [127, 0, 0, 1], b"", None), b"GET /".to_vec()].concat(),
            false,
            vec![0, 91, 0, 0, 0, 0, 0, 0],
        ),
        ("unknown version", vec![6, 1, 0, 80], false, vec![]),
        ("http", b"GET / HTTP/1.0\r\n\r\n".to_vec(), false, vec![]),
        ("v5 no methods", vec![5, 0], false, vec![5, 0xff]),
        ("v5 command 9", v5(&[5, 9, 0, 1, 127, 0, 0, 1, p[0], p[1]]), false, vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("v5 atyp 2", v5(&[5, 1, 0, 2, 127, 0, 0, 1, p[0], p[1]]), false, vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("v5 empty name", v5(&[5, 1, 0, 3, 0, p[0], p[1]]), false, vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("v5 truncated", v5(&[5, 1, 0, 1, 127]), true, vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
        (
            "v5 garbage after",
            v5(&[5, 1, 0, 1, 127, 0, 0, 1, p[0], p[1], 0xde, 0xad]),
            false,
            vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
    ];
    for (what, input, half_close, want) in &cases {
        let mut c = connect(s.port());
        c.write_all(input).expect("write");
        if *half_close {
            c.shutdown(Shutdown::Write).expect("shutdown");
        }
        assert_eq!(&read_to_end(&mut c), want, "{what}");
    }
    let lines = log_lines(&s, cases.len());
    assert!(lines.iter().all(|l| l.contains("outcome=bad-request") || l.contains("refused")), "{lines:#?}");
    assert!(target.accept().is_err(), "bad input made a connection");
}

#[test]
fn half_close_and_idle_timeout() {
    let dir = TestDir::new("rsockd_halfclose");
    // A target that reads to EOF, then answers with the byte count.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tport = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut v = Vec::new();
            let _ = c.read_to_end(&mut v);
            let _ = c.write_all(format!("got {}", v.len()).as_bytes());
        }
    });
    let s = rsockd(&dir, "hc", "permit ALL\n", None, &["-t", "1"]);
    let mut c = connect(s.port());
    c.write_all(&v4_request(1, tport, [127, 0, 0, 1], b"", None)).expect("write");
    assert_eq!(read_exact(&mut c, 8)[1], 90);
    let big = vec![b'x'; 3 << 20];
    c.write_all(&big).expect("write");
    c.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(read_to_end(&mut c), format!("got {}", big.len()).as_bytes());
    let line = &log_lines(&s, 1)[0];
    assert!(line.contains(&format!("out={} in=", big.len())), "{line}");
    // Connect timeout: a listener whose backlog is full never completes
    // the handshake; -c 1 gives up (SOCKS5: REP 4, host unreachable).
    let mut cmd = Command::new(find_program("python3"));
    cmd.args([
        "-u",
        "-c",
        "import socket, time\nl = socket.socket()\nl.bind(('127.0.0.1', 0))\nl.listen(0)\n\
         c = socket.create_connection(l.getsockname())\nprint(l.getsockname()[1])\ntime.sleep(60)\n",
    ]);
    let (_full, out) = Peer::spawn(cmd, dir.join("full.stderr"), "a full listener");
    let full: u16 = first_line(out.expect("stdout"), secs(20)).and_then(|l| l.trim().parse().ok()).expect("port");
    let quick = rsockd(&dir, "quick", "permit ALL\n", None, &["-c", "1"]);
    let mut c = connect(quick.port());
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    let start = Instant::now();
    let p = full.to_be_bytes();
    c.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, p[0], p[1]]).expect("write");
    assert_eq!(read_exact(&mut c, 10)[1], 4, "REP 4 after the connect timeout");
    assert!(start.elapsed() >= Duration::from_millis(900) && start.elapsed() < secs(8), "{:?}", start.elapsed());
    assert!(log_lines(&quick, 1)[0].contains("outcome=failed:connect"), "{}", quick.stderr());
    // Idle: nothing moves for -t 1 second, and the connection is closed.
    let mut c = connect(s.port());
    c.write_all(&v4_request(1, tport, [127, 0, 0, 1], b"", None)).expect("write");
    assert_eq!(read_exact(&mut c, 8)[1], 90);
    let start = Instant::now();
    let _ = read_to_end(&mut c);
    assert!(start.elapsed() >= Duration::from_millis(900) && start.elapsed() < secs(10), "{:?}", start.elapsed());
    assert!(log_lines(&s, 2)[1].contains("outcome=ok:idle-timeout"), "{}", s.stderr());
}

#[test]
fn socks_server_default_ipv6_and_upstream_timeout() {
    let dir = TestDir::new("rsockd_v6");
    let www = dir.join("www6");
    std::fs::create_dir_all(&www).expect("mkdir");
    std::fs::write(www.join("index.html"), PAGE).expect("write");
    let mut cmd = Command::new(find_program("python3"));
    cmd.args(["-u", "-m", "http.server", "--bind", "::1", "--directory"]).arg(&www).arg("0");
    let (_http, out) = Peer::spawn(cmd, dir.join("http6.stderr"), "python3 -m http.server --bind ::1");
    let line = first_line(out.expect("stdout"), secs(20)).expect("http.server on ::1 did not start");
    let port: u16 =
        line.split_whitespace().skip_while(|w| *w != "port").nth(1).and_then(|p| p.parse().ok()).expect("port");
    let url = format!("http://[::1]:{port}/index.html");
    let b = rsockd(&dir, "b", "permit 127.0.0.0/8 ::1/128\n", None, &[]);
    // An upstream that accepts and never answers: -c 1 gives up on it.
    let slow = TcpListener::bind("127.0.0.1:0").expect("bind");
    let slow_port = slow.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in slow.incoming() {
            held.push(c);
        }
    });
    let servers = format!("socks5://127.0.0.1:{slow_port},socks5://127.0.0.1:{}", b.port());
    let a =
        rsockd_env(&dir, "a", "permit 127.0.0.0/8\n", Some("sockd ALL\n"), &["-c", "1"], &[("SOCKS_SERVER", &servers)]);
    let start = Instant::now();
    let o = curl("socks5", a.port(), &url, &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "IPv6 through SOCKS_SERVER: {}", o.describe());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "the silent upstream was not waited for: {:?}",
        start.elapsed()
    );
    let a_line = &log_lines(&a, 1)[0];
    assert!(
        a_line.contains("route=1:sockd@=SOCKS_SERVER")
            && a_line.contains(&format!("via=socks5://127.0.0.1:{}", b.port())),
        "{a_line}"
    );
    assert!(log_lines(&b, 1)[0].contains(&format!("dest=[::1]:{port}")), "{}", b.stderr());
    // Without SOCKS_SERVER a `sockd` line without a list cannot route.
    let c = rsockd(&dir, "c", "permit 127.0.0.0/8\n", Some("sockd ALL\n"), &[]);
    assert_eq!(socks4_code(c.port(), 80, b""), 91);
    assert!(log_lines(&c, 1)[0].contains("no-SOCKS_SERVER"), "{}", c.stderr());
}

#[test]
fn udp_associate_through_an_upstream() {
    let dir = TestDir::new("rsockd_udp_chain");
    let b = rsockd(&dir, "b", "permit 127.0.0.0/8\n", None, &[]);
    let a =
        rsockd(&dir, "a", "permit 127.0.0.0/8\n", Some(&format!("sockd @=socks5://127.0.0.1:{} ALL\n", b.port())), &[]);
    let echo = UdpSocket::bind("[::]:0").expect("bind");
    let echo_port = echo.local_addr().expect("addr").port();
    let seen = Arc::new(AtomicUsize::new(0));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            seen2.fetch_add(1, Ordering::SeqCst);
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut ctl = connect(a.port());
    ctl.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut ctl, 2), [5, 0]);
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.set_read_timeout(Some(secs(10))).expect("timeout");
    ctl.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).expect("write");
    let r = read_exact(&mut ctl, 10);
    assert_eq!(&r[..4], [5, 0, 0, 1], "{r:?}");
    let relay = SocketAddr::from(([r[4], r[5], r[6], r[7]], u16::from_be_bytes([r[8], r[9]])));
    let mut d = vec![0, 0, 0, 3, 9];
    d.extend_from_slice(b"localhost");
    d.extend_from_slice(&echo_port.to_be_bytes());
    d.extend_from_slice(b"by name, resolved by B");
    client.send_to(&d, relay).expect("send");
    let mut buf = [0u8; 2048];
    let (n, _) = client.recv_from(&mut buf).expect("an echo through both relays");
    assert!(buf[..n].ends_with(b"by name, resolved by B"), "{:?}", &buf[..n]);
    assert_eq!(u16::from_be_bytes([buf[n - 24], buf[n - 23]]), echo_port, "the echo's port in B's header");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    drop(ctl);
    let a_line = &log_lines(&a, 1)[0];
    assert!(a_line.contains("cmd=udp") && a_line.contains(&format!("via=socks5://127.0.0.1:{}", b.port())), "{a_line}");
    let b_line = &log_lines(&b, 1)[0];
    assert!(b_line.contains("cmd=udp") && b_line.contains("ok:udp:0-datagrams-dropped"), "{b_line}");
}

#[test]
fn options_and_password_file_mode() {
    let dir = TestDir::new("rsockd_options");
    let o = run(Command::new(bin("rsockd")).arg("-ver"), b"", secs(10));
    assert!(o.success() && o.stdout_str().starts_with("rsockd "), "{}", o.describe());
    for bad in [&["-x"][..], &["-c", "604801"], &["-t", "5s"], &["-T", "onlyone"], &["extra"]] {
        let o = run(Command::new(bin("rsockd")).args(bad), b"", secs(10));
        assert_eq!(o.code(), Some(100), "{bad:?}: {}", o.describe());
        assert!(o.stderr_str().contains("rsockd: usage:"), "{}", o.describe());
    }
    // A password file others can read is refused, by -C and when serving.
    let sockd = write(&dir, "sockd.conf", "permit ALL\n");
    let pw = write(&dir, "passwords", "alice:secret\n");
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    let o = run(
        Command::new(bin("rsockd")).arg("-f").arg(&sockd).arg("-F").arg(dir.join("none")).arg("-a").arg(&pw).arg("-C"),
        b"",
        secs(10),
    );
    assert_eq!(o.code(), Some(100), "{}", o.describe());
    assert!(o.stdout_str().contains("readable or writable by group or others"), "{}", o.describe());
    let s = rsockd(&dir, "pw", "permit ALL\n", None, &["-a", pw.to_str().expect("utf-8")]);
    let mut c = connect(s.port());
    c.write_all(&[5, 1, 2]).expect("write");
    assert_eq!(read_to_end(&mut c), b"", "served with an unsafe password file");
    let deadline = Instant::now() + secs(10);
    while !s.stderr().contains("rsockd: fatal:") {
        assert!(Instant::now() < deadline, "{}", s.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(s.stderr().contains("group or others"), "{}", s.stderr());
    // No socks.conf line: refused (91); without TCPREMOTEIP the client
    // comes from getpeername.
    let prog: Vec<OsString> = vec![
        find_program("env").into(),
        "-u".into(),
        "TCPREMOTEIP".into(),
        "-u".into(),
        "TCPREMOTEPORT".into(),
        bin("rsockd").into(),
        "-f".into(),
        sockd.clone().into(),
        "-F".into(),
        write(&dir, "only10.conf", "direct 10.0.0.0/8\n").into(),
    ];
    let peer = Server::start(&dir, &prog, &[]);
    let mut c = connect(peer.port());
    let me = c.local_addr().expect("addr");
    c.write_all(&v4_request(1, 80, [127, 0, 0, 1], b"", None)).expect("write");
    assert_eq!(read_exact(&mut c, 8)[1], 91);
    let line = &log_lines(&peer, 1)[0];
    assert!(line.contains(&format!("client={me} ")) && line.contains("outcome=refused:no-route"), "{line}");
    // -b 0: a failed upstream is never held back (marks expire at once).
    let (broken, attempts) = broken_upstream();
    let target = http_target(&dir);
    let b = rsockd(&dir, "b", "permit ALL\n", None, &[]);
    let state = dir.join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let socks = format!("sockd @=socks4a://127.0.0.1:{broken},socks4a://127.0.0.1:{} ALL\n", b.port());
    let a = rsockd(&dir, "a0", "permit ALL\n", Some(&socks), &["-s", state.to_str().expect("utf-8"), "-b", "0"]);
    for round in 1..=2 {
        assert_eq!(socks4_code(a.port(), target.port, b""), 90);
        assert_eq!(attempts.load(Ordering::SeqCst), round, "-b 0 tried the broken upstream first again");
    }
}
