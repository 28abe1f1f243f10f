//! rsockd's listener mode (`-L address:port`): it binds and accepts itself
//! and serves each connection on a thread with the UCSPI mode's session
//! code. Real clients (curl, a byte-level client), a `python3 -m
//! http.server` target, a UCSPI rsockd under tcpserver as the upstream.
//! Readiness is `-N 1`: a newline on stdout once listening.

mod rsockd_support;

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use chainmail_tests::peer::{Peer, first_line};
use chainmail_tests::run::{Output, run};
use chainmail_tests::{Server, TestDir, bin, find_program, secs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rsockd_support::*;

/// `rsockd -L 127.0.0.1:PORT -N 1` (or on `host`), started and ready.
struct Listener {
    peer: Peer,
    port: u16,
    sockd: PathBuf,
}

impl Listener {
    fn start(dir: &TestDir, tag: &str, host: &str, sockd: &str, socks: Option<&str>, args: &[&str]) -> Listener {
        let sockd = write(dir, &format!("{tag}-sockd.conf"), sockd);
        let socks_path = dir.join(format!("{tag}-socks.conf"));
        if let Some(s) = socks {
            std::fs::write(&socks_path, s).expect("write socks.conf");
        }
        let port = free_port();
        let mut cmd = Command::new(bin("rsockd"));
        cmd.arg("-f").arg(&sockd).arg("-F").arg(&socks_path);
        cmd.args(["-L", &format!("{host}:{port}"), "-N", "1"]).args(args);
        cmd.env_clear().env("PATH", chainmail_tests::bins::CHILD_PATH).current_dir(dir.path());
        let (peer, out) = Peer::spawn(cmd, dir.join(format!("{tag}.stderr")), "rsockd -L");
        let ready = first_line(out.expect("stdout"), secs(20));
        assert_eq!(ready.as_deref(), Some("\n"), "rsockd -L not ready; its stderr:\n{}", peer.stderr());
        Listener { peer, port, sockd }
    }

    fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.peer.pid()), s).expect("kill");
    }

    /// The log lines of the sessions, once there are at least `n`.
    fn log_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + secs(10);
        loop {
            let lines: Vec<String> =
                self.peer.stderr().lines().filter(|l| l.starts_with("rsockd: client=")).map(str::to_owned).collect();
            if lines.len() >= n || Instant::now() >= deadline {
                assert!(lines.len() >= n, "expected {n} log lines, got:\n{}", self.peer.stderr());
                return lines;
            }
            // Bounded polling of a log written at the end of a session.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn curl(proxy: &str, url: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(find_program("curl"));
    cmd.args(["-sS", "--max-time", "15", "-x", proxy]).args(extra).arg(url);
    run(&mut cmd, b"", secs(20))
}

/// A SOCKS5 CONNECT to 127.0.0.1:port, granted.
fn socks5_connect(proxy: u16, port: u16) -> TcpStream {
    let mut c = connect(proxy);
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&port.to_be_bytes());
    c.write_all(&req).expect("write");
    assert_eq!(read_exact(&mut c, 10)[..2], [5, 0], "CONNECT granted");
    c
}

fn http_get(mut c: TcpStream) -> String {
    c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").expect("write");
    String::from_utf8_lossy(&read_to_end(&mut c)).into_owned()
}

#[test]
fn curl_in_every_protocol_on_ipv4_and_ipv6() {
    let dir = TestDir::new("rsockd_listen_curl");
    let t = http_target(&dir);
    let l = Listener::start(&dir, "l", "127.0.0.1", "permit 127.0.0.0/8\n", None, &[]);
    let url = format!("http://127.0.0.1:{}/index.html", t.port);
    let named = format!("http://localhost:{}/index.html", t.port);
    for (kind, url) in [("socks4", &url), ("socks4a", &named), ("socks5", &url), ("socks5h", &named)] {
        let o = curl(&format!("{kind}://127.0.0.1:{}", l.port), url, &[]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind}: {}", o.describe());
    }
    let lines = l.log_lines(4);
    // The same log line as the UCSPI mode, one per request.
    for (line, dest) in lines.iter().zip(["127.0.0.1", "localhost", "127.0.0.1", "localhost"]) {
        assert!(line.starts_with("rsockd: client=127.0.0.1:"), "{line}");
        assert!(
            line.contains(&format!(" cmd=connect dest={dest}:{} rule=1:permit route=direct via=- outcome=ok ", t.port))
        );
    }
    assert_eq!(lines.len(), 4, "{lines:#?}");

    // [v6]:port.
    let l6 = Listener::start(&dir, "l6", "[::1]", "permit ::1/128\n", None, &[]);
    let o = curl(&format!("socks5://[::1]:{}", l6.port), &url, &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "IPv6 listener: {}", o.describe());
    assert!(l6.log_lines(1)[0].starts_with("rsockd: client=[::1]:"), "{}", l6.peer.stderr());
}

#[test]
fn at_most_n_connections_then_the_next_waits() {
    let dir = TestDir::new("rsockd_listen_max");
    let t = http_target(&dir);
    let l = Listener::start(&dir, "l", "127.0.0.1", "permit 127.0.0.0/8\n", None, &["-n", "2", "-c", "60"]);
    // Two sessions held in the handshake (the method reply proves each is
    // being served).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(l.port);
        c.write_all(&[5, 1, 0]).expect("write");
        assert_eq!(read_exact(&mut c, 2), [5, 0]);
        held.push(c);
    }
    // The third is connected (the backlog) but not served.
    let mut third = connect(l.port);
    third.write_all(&[5, 1, 0]).expect("write");
    third.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let mut b = [0u8; 2];
    match third.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        r => panic!("a third connection was served beyond -n 2: {r:?}"),
    }
    // One ends: the third is served, completely.
    drop(held.pop());
    third.set_read_timeout(Some(secs(15))).expect("timeout");
    assert_eq!(read_exact(&mut third, 2), [5, 0], "the third is served once one ended");
    let mut req = vec![5, 1, 0, 1, 127, 0, 0, 1];
    req.extend_from_slice(&t.port.to_be_bytes());
    third.write_all(&req).expect("write");
    assert_eq!(read_exact(&mut third, 10)[..2], [5, 0]);
    assert!(http_get(third).ends_with(PAGE));
    drop(held);
    let lines = l.log_lines(3);
    assert_eq!(lines.iter().filter(|l| l.contains("outcome=ok ")).count(), 1, "{lines:#?}");
    assert!(l.peer.stderr().lines().all(|l| !l.contains("fatal")), "{}", l.peer.stderr());
}

#[test]
fn bad_requests_do_not_affect_other_sessions() {
    let dir = TestDir::new("rsockd_listen_bad");
    let t = http_target(&dir);
    let mut l = Listener::start(&dir, "l", "127.0.0.1", "permit 127.0.0.0/8\n", None, &["-c", "5"]);
    // A session in its relay while the bad ones come and go.
    let good = socks5_connect(l.port, t.port);
    let p = t.port.to_be_bytes();
    let long = vec![b'a'; 300];
    let v4 = |ip: [u8; 4], user: &[u8], name: Option<&[u8]>| {
        let mut v = [&[4u8, 1, p[0], p[1]][..], &ip, user, &[0]].concat();
        if let Some(n) = name {
            v.extend_from_slice(n);
            v.push(0);
        }
        v
    };
    let v5 = |req: &[u8]| [&[5u8, 1, 0][..], req].concat();
    let refused4 = vec![0, 91, 0, 0, 0, 0, 0, 0];
    let cases: Vec<(&str, Vec<u8>, bool, Vec<u8>)> = vec![
        ("v4 truncated", vec![4, 1, p[0], p[1], 127], true, refused4.clone()),
        ("v4 userid too long", v4([127, 0, 0, 1], &long, None), false, refused4.clone()),
        ("v4a name too long", v4([0, 0, 0, 1], b"", Some(&long)), false, refused4.clone()),
        ("v4 garbage after", [v4([127, 0, 0, 1], b"", None), b"GET /".to_vec()].concat(), false, refused4),
        ("unknown version", vec![6, 1, 0, 80], false, vec![]),
        ("v5 no methods", vec![5, 0], false, vec![5, 0xff]),
        ("v5 command 9", v5(&[5, 9, 0, 1, 127, 0, 0, 1, p[0], p[1]]), false, vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("v5 atyp 2", v5(&[5, 1, 0, 2, 127, 0, 0, 1, p[0], p[1]]), false, vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0]),
        ("v5 truncated", v5(&[5, 1, 0, 1, 127]), true, vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0]),
    ];
    for (what, input, half_close, want) in &cases {
        let mut c = connect(l.port);
        c.write_all(input).expect("write");
        if *half_close {
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
        }
        assert_eq!(&read_to_end(&mut c), want, "{what}");
        assert!(l.peer.exited().is_none(), "rsockd -L exited after {what}: {}", l.peer.stderr());
    }
    // The first session still relays, and new ones are served.
    assert!(http_get(good).ends_with(PAGE), "the session in progress was affected");
    let o = curl(&format!("socks5://127.0.0.1:{}", l.port), &format!("http://127.0.0.1:{}/", t.port), &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "after the bad requests: {}", o.describe());
    let lines = l.log_lines(cases.len() + 2);
    let bad_lines = lines.iter().filter(|l| l.contains("outcome=bad-request")).count();
    assert_eq!(bad_lines, cases.len(), "{lines:#?}");
    assert!(l.peer.exited().is_none());
}

#[test]
fn chained_to_a_ucspi_rsockd_and_the_loop_refused() {
    let dir = TestDir::new("rsockd_listen_chain");
    let t = http_target(&dir);
    // B: UCSPI rsockd under tcpserver.
    let f = write(&dir, "b-sockd.conf", "permit 127.0.0.0/8\n");
    let prog: Vec<OsString> =
        vec![bin("rsockd").into(), "-f".into(), f.into(), "-F".into(), dir.join("b-none.conf").into()];
    let b = Server::start(&dir, &prog, &[]);
    let socks = format!("sockd @=socks5://127.0.0.1:{} ALL\n", b.port());
    let a = Listener::start(&dir, "a", "127.0.0.1", "permit 127.0.0.0/8\n", Some(&socks), &[]);
    let url = format!("http://localhost:{}/index.html", t.port);
    for kind in ["socks5h", "socks4a"] {
        let o = curl(&format!("{kind}://127.0.0.1:{}", a.port), &url, &[]);
        assert!(o.success() && o.stdout_str() == PAGE, "{kind} through A then B: {}", o.describe());
    }
    let a_lines = a.log_lines(2);
    assert!(a_lines.iter().all(|l| l.contains(&format!("via=socks5://127.0.0.1:{} outcome=ok", b.port()))));
    // The name went through A unresolved.
    let b_lines: Vec<String> =
        b.stderr().lines().filter(|l| l.starts_with("rsockd: client=")).map(Into::into).collect();
    assert_eq!(b_lines.len(), 2, "{}", b.stderr());
    assert!(b_lines.iter().all(|l| l.contains(&format!("dest=localhost:{} ", t.port))), "{b_lines:#?}");

    // A route to the listener itself (its address is the socket's, there
    // is no TCPLOCALIP) is refused instead of looping.
    let port = free_port();
    let own = format!("sockd @=socks5://127.0.0.1:{port} ALL\n");
    let sockd = write(&dir, "self-sockd.conf", "permit 127.0.0.0/8\n");
    let socks = write(&dir, "self-socks.conf", &own);
    let mut cmd = Command::new(bin("rsockd"));
    cmd.arg("-f").arg(&sockd).arg("-F").arg(&socks).args(["-L", &format!("127.0.0.1:{port}"), "-N", "1"]);
    let (me, out) = Peer::spawn(cmd, dir.join("self.stderr"), "rsockd -L");
    assert_eq!(first_line(out.expect("stdout"), secs(20)).as_deref(), Some("\n"), "{}", me.stderr());
    let mut c = connect(port);
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    c.write_all(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 80]).expect("write");
    assert_eq!(read_exact(&mut c, 10)[1], 2, "loop: REP 2");
}

#[test]
fn sighup_rereads_sigterm_stops_and_commands_get_their_own_values() {
    let dir = TestDir::new("rsockd_listen_signals");
    let t = http_target(&dir);
    let env = find_program("env");
    let sockd = format!("permit *=alice,bob 127.0.0.0/8 : {}\n", env.display());
    let mut l = Listener::start(&dir, "l", "127.0.0.1", &sockd, None, &[]);
    // Two sessions at the same time, two users: each command gets its own
    // SOCKD_USER (the environment is the command's, not the process's).
    let mut sessions = Vec::new();
    for user in [b"alice".as_slice(), b"bob"] {
        let mut c = connect(l.port);
        let mut req = vec![4, 1];
        req.extend_from_slice(&t.port.to_be_bytes());
        req.extend_from_slice(&[127, 0, 0, 1]);
        req.extend_from_slice(user);
        req.push(0);
        c.write_all(&req).expect("write");
        assert_eq!(read_exact(&mut c, 8)[1], 90);
        sessions.push(c);
    }
    for c in sessions {
        assert!(http_get(c).ends_with(PAGE));
    }
    l.log_lines(2);
    let deadline = Instant::now() + secs(10);
    let seen =
        |e: &str| ["SOCKD_USER=alice", "SOCKD_USER=bob"].iter().all(|v| e.lines().filter(|l| l == v).count() == 1);
    while !seen(&l.peer.stderr()) {
        assert!(Instant::now() < deadline, "each command's SOCKD_USER:\n{}", l.peer.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }

    // SIGHUP: sockd.conf is read again.
    let proxy = format!("socks4://127.0.0.1:{}", l.port);
    let url = format!("http://127.0.0.1:{}/", t.port);
    assert!(curl(&proxy, &url, &["-U", "carol:"]).code() != Some(0), "carol is not in the list yet");
    std::fs::write(&l.sockd, "permit 127.0.0.0/8\n").expect("rewrite sockd.conf");
    l.signal(Signal::SIGHUP);
    let deadline = Instant::now() + secs(10);
    loop {
        // The signal is handled asynchronously: bounded polling.
        let o = curl(&proxy, &url, &[]);
        if o.success() && o.stdout_str() == PAGE {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not re-read sockd.conf: {}", l.peer.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A bad file on SIGHUP: a warning, the previous configuration stays.
    std::fs::write(&l.sockd, "permit nonsense\n").expect("rewrite sockd.conf");
    l.signal(Signal::SIGHUP);
    let deadline = Instant::now() + secs(10);
    while !l.peer.stderr().contains("unable to reload") {
        assert!(Instant::now() < deadline, "no warning about the bad file:\n{}", l.peer.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = curl(&proxy, &url, &[]);
    assert!(o.success() && o.stdout_str() == PAGE, "the previous configuration was kept: {}", o.describe());
    assert!(l.peer.exited().is_none());

    // SIGTERM: stops and exits 0.
    l.signal(Signal::SIGTERM);
    let deadline = Instant::now() + secs(10);
    let status = loop {
        if let Some(s) = l.peer.exited() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop rsockd -L");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", l.peer.stderr());
    assert!(TcpStream::connect(("127.0.0.1", l.port)).is_err(), "still listening after SIGTERM");
}

#[test]
fn listener_options() {
    let dir = TestDir::new("rsockd_listen_options");
    let sockd = write(&dir, "sockd.conf", "permit 127.0.0.0/8\n");
    let bad_conf = write(&dir, "bad.conf", "permit nonsense\n");
    let f = sockd.to_str().expect("utf-8");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let cases: &[(&[&str], i32)] = &[
        (&["-f", f, "-n", "5"], 100),
        (&["-f", f, "-N", "1"], 100),
        (&["-f", f, "-L", "127.0.0.1"], 100),
        (&["-f", f, "-L", "localhost:1080"], 100),
        (&["-f", f, "-L", "127.0.0.1:1080", "-n", "0"], 100),
        (&["-f", f, "-L", "127.0.0.1:1080", "-n", "many"], 100),
        (&["-f", f, "-L", "127.0.0.1:1080", "-N", "-1"], 100),
        (&["-f", f, "-L", "127.0.0.1:1080", "-C"], 100),
        (&["-f", f, "-L", "127.0.0.1:1080", "-T", "127.0.0.1", "80"], 100),
        (&["-f", bad_conf.to_str().expect("utf-8"), "-L", "127.0.0.1:0"], 100),
        (&["-f", f, "-L", &busy_addr], 111),
    ];
    for (args, code) in cases {
        let o = run(Command::new(bin("rsockd")).args(*args), b"", secs(10));
        assert_eq!(o.code(), Some(*code), "{args:?}: {}", o.describe());
    }
}

#[test]
fn bind_and_udp_associate_on_the_listener() {
    let dir = TestDir::new("rsockd_listen_bind_udp");
    let l = Listener::start(&dir, "l", "127.0.0.1", "permit 127.0.0.0/8\n", None, &[]);
    // SOCKS5 BIND, direct: two replies, then the relay.
    let mut c = connect(l.port);
    c.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut c, 2), [5, 0]);
    c.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 0]).expect("write");
    let first = read_exact(&mut c, 10);
    assert_eq!(&first[..4], [5, 0, 0, 1]);
    let mut peer = TcpStream::connect(("127.0.0.1", u16::from_be_bytes([first[8], first[9]]))).expect("connect");
    let second = read_exact(&mut c, 10);
    assert_eq!(u16::from_be_bytes([second[8], second[9]]), peer.local_addr().expect("addr").port());
    peer.write_all(b"ping").expect("write");
    assert_eq!(read_exact(&mut c, 4), b"ping");
    drop(peer);
    drop(c);

    // UDP ASSOCIATE: the relay listens on the listener's own address.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let echo_port = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let mut ctl = connect(l.port);
    ctl.write_all(&[5, 1, 0]).expect("write");
    assert_eq!(read_exact(&mut ctl, 2), [5, 0]);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.set_read_timeout(Some(secs(10))).expect("timeout");
    let cport = client.local_addr().expect("addr").port().to_be_bytes();
    ctl.write_all(&[5, 3, 0, 1, 127, 0, 0, 1, cport[0], cport[1]]).expect("write");
    let r = read_exact(&mut ctl, 10);
    assert_eq!(&r[..8], [5, 0, 0, 1, 127, 0, 0, 1], "{r:?}");
    let relay = std::net::SocketAddr::from(([127, 0, 0, 1], u16::from_be_bytes([r[8], r[9]])));
    let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1];
    d.extend_from_slice(&echo_port.to_be_bytes());
    d.extend_from_slice(b"datagram");
    client.send_to(&d, relay).expect("send");
    let mut buf = [0u8; 2048];
    let (n, _) = client.recv_from(&mut buf).expect("the echo through the relay");
    assert_eq!(&buf[..n], &d[..], "header with the echo's address, then the payload");
    drop(ctl);
    let lines = l.log_lines(2);
    assert!(lines.iter().any(|l| l.contains("cmd=bind") && l.contains("outcome=ok ")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("cmd=udp") && l.contains("ok:udp:0-datagrams-dropped")), "{lines:#?}");
}
