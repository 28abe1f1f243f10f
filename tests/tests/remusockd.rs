//! remusockd against real peers: socat as the local clients and as the
//! far-side service (`socat UNIX-LISTEN:…,fork EXEC:cat`), two remusockd
//! in both topologies and both TCP directions, TLS with certificates made
//! by openssl, and a protocol peer written from remusock 2.0's frame table
//! that behaves like the original (it closes on any byte it does not know).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chainmail_tests::peer::Peer;
use chainmail_tests::run::run;
use chainmail_tests::{TestDir, bin, find_program, free_port, secs};

/// Waits for `cond`, bounded; the condition is the signal (a file
/// appearing, a log line), checked every 20 ms.
fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running remusockd, started with `-f -N 3` and waited for.
struct Rd {
    peer: Peer,
}

impl Rd {
    /// Starts remusockd with `args` and waits for its readiness newline.
    fn start(dir: &TestDir, name: &str, args: &[&str]) -> Rd {
        Rd::start_env(dir, name, args, &[], true)
    }

    fn start_env(dir: &TestDir, name: &str, args: &[&str], env: &[(&str, &str)], wait_ready: bool) -> Rd {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("inherit");
        let w = write_end.as_raw_fd();
        let mut cmd = Command::new("/bin/bash");
        cmd.arg("-c").arg(format!("exec \"$@\" 3>&{w} {w}>&-")).arg("bash").arg(bin("remusockd")).arg("-f");
        cmd.arg("-N").arg("3").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (peer, _) = Peer::spawn(cmd, dir.join(format!("{name}.log")), "remusockd");
        drop(write_end);
        let rd = Rd { peer };
        if wait_ready {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut f = std::fs::File::from(read_end);
                let mut b = [0u8; 1];
                let n = f.read(&mut b).unwrap_or(0);
                let _ = tx.send(n == 1 && b[0] == b'\n');
            });
            let ok = rx.recv_timeout(secs(20)).unwrap_or(false);
            assert!(ok, "{name} not ready: {}", rd.peer.stderr());
        }
        rd
    }

    fn log(&self) -> String {
        self.peer.stderr()
    }

    fn wait_log(&self, needle: &str) {
        wait_for(&format!("{needle:?} in the log"), secs(20), || self.log().contains(needle));
    }

    fn pid(&self) -> i32 {
        self.peer.pid()
    }
}

/// The far-side service: `socat UNIX-LISTEN:path,fork EXEC:cat`.
fn echo_service(dir: &TestDir, path: &Path) -> Peer {
    let mut cmd = Command::new(find_program("socat"));
    cmd.arg(format!("UNIX-LISTEN:{},fork", path.display())).arg("EXEC:cat");
    let (peer, _) = Peer::spawn(cmd, dir.join("socat-service.log"), "socat");
    wait_for("the echo service", secs(10), || UnixStream::connect(path).is_ok());
    peer
}

/// `echo x | socat - UNIX-CONNECT:path`: a client that half-closes.
fn socat_half_close(path: &Path, input: &[u8]) -> Vec<u8> {
    let out = run(
        Command::new(find_program("socat")).arg("-t").arg("5").arg("-").arg(format!("UNIX-CONNECT:{}", path.display())),
        input,
        secs(20),
    );
    assert!(out.success(), "{}", out.describe());
    out.stdout
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(secs(20))).expect("timeout");
    s.set_write_timeout(Some(secs(20))).expect("timeout");
    s
}

fn echo_round(path: &Path, msg: &[u8]) -> Vec<u8> {
    let mut s = connect(path);
    s.write_all(msg).expect("write");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("read the echo");
    got
}

/// The two topologies × the two TCP directions: (socket server side args,
/// socket client side args, which one listens).
struct Pair {
    _front: Rd,
    _back: Rd,
    front_sock: PathBuf,
}

/// Starts the socket server side (front.sock) and the socket client side
/// (to svc.sock); `server_listens`: the socket server side listens on TCP.
fn start_pair(dir: &TestDir, server_listens: bool, front_extra: &[&str], back_extra: &[&str]) -> Pair {
    let port = free_port().to_string();
    let front_sock = dir.join("front.sock");
    let svc = dir.join("svc.sock");
    let (fs, ss) = (front_sock.display().to_string(), svc.display().to_string());
    let mut front_args: Vec<&str> = front_extra.to_vec();
    let mut back_args: Vec<&str> = back_extra.to_vec();
    back_args.push("-c");
    if server_listens {
        front_args.extend(["-b", "127.0.0.1"]);
        back_args.extend(["-r", "127.0.0.1"]);
    } else {
        back_args.extend(["-b", "127.0.0.1"]);
        front_args.extend(["-r", "127.0.0.1"]);
    }
    front_args.extend([fs.as_str(), port.as_str()]);
    back_args.extend([ss.as_str(), port.as_str()]);
    let (front, back) = if server_listens {
        let f = Rd::start(dir, "front", &front_args);
        let b = Rd::start(dir, "back", &back_args);
        f.wait_log("up");
        (f, b)
    } else {
        let b = Rd::start(dir, "back", &back_args);
        let f = Rd::start(dir, "front", &front_args);
        b.wait_log("up");
        (f, b)
    };
    Pair { _front: front, _back: back, front_sock }
}

#[test]
fn both_topologies_and_both_directions_carry_a_half_closing_client() {
    for server_listens in [true, false] {
        let dir = TestDir::new(&format!("remusockd_topology_{server_listens}"));
        let _svc = echo_service(&dir, &dir.join("svc.sock"));
        let pair = start_pair(&dir, server_listens, &[], &[]);
        // `echo x | socat - UNIX-CONNECT:` gets its answer (the original
        // lost it: EOF became BYE).
        for i in 0..3 {
            let line = format!("hello {i}\n");
            assert_eq!(
                socat_half_close(&pair.front_sock, line.as_bytes()),
                line.as_bytes(),
                "listens={server_listens}"
            );
        }
        // The socket file: mode 0600 by default.
        let mode = std::fs::metadata(&pair.front_sock).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn a_thousand_channels_at_once_on_one_link() {
    let dir = TestDir::new("remusockd_thousand");
    // The far side: an echo service of our own (a thousand socat+cat pairs
    // would be two thousand processes).
    let svc = dir.join("svc.sock");
    let l = UnixListener::bind(&svc).expect("bind");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let pair = start_pair(&dir, true, &[], &[]);
    let mut clients = Vec::new();
    for i in 0..1000 {
        let mut s = connect(&pair.front_sock);
        s.write_all(format!("client {i:04}\n").as_bytes()).expect("write");
        clients.push(s);
    }
    for (i, s) in clients.iter_mut().enumerate() {
        let mut got = [0u8; 12];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(&got, format!("client {i:04}\n").as_bytes());
    }
    // All still open: one more round on each.
    for s in &mut clients {
        s.write_all(b"x").expect("write");
    }
    for s in &mut clients {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"x");
    }
}

/// Bytes of a reproducible pattern.
fn pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let x = offset + i as u64;
        *b = (x ^ (x >> 8) ^ (x >> 16)) as u8;
    }
}

#[test]
fn a_large_transfer_through_one_channel() {
    const SIZE: u64 = 256 << 20;
    let dir = TestDir::new("remusockd_large");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let pair = start_pair(&dir, false, &[], &[]);
    let start = Instant::now();
    // Everything comes back, then EOF (half-close both ways).
    echo_bulk(&pair.front_sock, SIZE);
    eprintln!("256 MiB echoed in {:?}", start.elapsed());
}

#[test]
fn a_slow_reader_stalls_only_its_own_channel() {
    for original in [false, true] {
        let dir = TestDir::new(&format!("remusockd_slow_{original}"));
        let _svc = echo_service(&dir, &dir.join("svc.sock"));
        let env: &[(&str, &str)] = if original { &[("REMUSOCKD_ORIGINAL_PROTOCOL", "1")] } else { &[] };
        let port = free_port().to_string();
        let front_sock = dir.join("front.sock");
        let fs = front_sock.display().to_string();
        let ss = dir.join("svc.sock").display().to_string();
        let front = Rd::start_env(&dir, "front", &["-b", "127.0.0.1", &fs, &port], env, true);
        let _back = Rd::start_env(&dir, "back", &["-c", "-r", "127.0.0.1", &ss, &port], env, true);
        front.wait_log("up");
        // The slow one writes 8 MiB and reads nothing.
        let slow = connect(&front_sock);
        let mut sw = slow.try_clone().expect("clone");
        std::thread::spawn(move || {
            let block = vec![b's'; 64 << 10];
            for _ in 0..128 {
                if sw.write_all(&block).is_err() {
                    return;
                }
            }
        });
        // Time for the slow channel's buffers to fill (there is no signal
        // for "nothing moves any more").
        std::thread::sleep(Duration::from_millis(1500));
        // The fast one is served meanwhile (new peers), or not (the
        // original's head-of-line blocking).
        let mut fast = connect(&front_sock);
        fast.set_read_timeout(Some(if original { Duration::from_secs(3) } else { secs(15) })).expect("timeout");
        fast.write_all(b"quick\n").expect("write");
        let mut got = [0u8; 6];
        let served = fast.read_exact(&mut got).is_ok();
        assert_eq!(served, !original, "original={original}");
        if served {
            assert_eq!(&got, b"quick\n");
        }
        drop(slow);
    }
}

#[test]
fn a_killed_link_closes_its_channels_and_holds_new_clients_until_it_is_back() {
    let dir = TestDir::new("remusockd_kill");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let port = free_port().to_string();
    let front_sock = dir.join("front.sock");
    let fs = front_sock.display().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let front = Rd::start(&dir, "front", &["-b", "127.0.0.1", &fs, &port]);
    let back_args = ["-c", "-r", "127.0.0.1", ss.as_str(), port.as_str()];
    let back = Rd::start(&dir, "back", &back_args);
    front.wait_log("up");
    // Mid-transfer.
    let mut busy = connect(&front_sock);
    busy.write_all(b"before\n").expect("write");
    let mut got = [0u8; 7];
    busy.read_exact(&mut got).expect("echo");
    drop(back);
    // The channel ends with the link.
    let mut rest = Vec::new();
    busy.read_to_end(&mut rest).expect("the channel is closed with the link");
    front.wait_log("closed");
    // A client that comes now is held, not reset...
    let mut held = connect(&front_sock);
    held.write_all(b"held\n").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    // ...and served once the link is back.
    let _back = Rd::start(&dir, "back2", &back_args);
    let mut got = [0u8; 5];
    held.read_exact(&mut got).expect("the held client is served");
    assert_eq!(&got, b"held\n");
}

#[test]
fn with_w_0_clients_are_reset_while_the_link_is_down() {
    let dir = TestDir::new("remusockd_w0");
    let port = free_port().to_string();
    let fs = dir.join("front.sock").display().to_string();
    let _front = Rd::start(&dir, "front", &["-w", "0", "-b", "127.0.0.1", &fs, &port]);
    let mut s = connect(&dir.join("front.sock"));
    let mut b = Vec::new();
    let start = Instant::now();
    let _ = s.read_to_end(&mut b);
    assert!(b.is_empty());
    assert!(start.elapsed() < secs(5));
}

#[test]
fn a_stale_socket_is_replaced_a_live_one_and_other_files_are_not() {
    let dir = TestDir::new("remusockd_stale");
    let sock = dir.join("front.sock");
    drop(UnixListener::bind(&sock).expect("bind"));
    assert!(sock.exists(), "a stale socket file");
    let port = free_port().to_string();
    let s = sock.display().to_string();
    let first = Rd::start(&dir, "first", &["-b", "127.0.0.1", &s, &port]);
    assert!(UnixStream::connect(&sock).is_ok());
    // A second instance on the live socket refuses (and leaves it alone).
    let port2 = free_port().to_string();
    let out = run(Command::new(bin("remusockd")).args(["-f", "-b", "127.0.0.1", &s, &port2]), b"", secs(10));
    assert_eq!(out.code(), Some(111), "{}", out.describe());
    assert!(out.stderr_str().contains("live socket"), "{}", out.describe());
    assert!(UnixStream::connect(&sock).is_ok());
    drop(first);
    // A regular file is not replaced.
    let file = dir.join("file");
    std::fs::write(&file, b"data").expect("write");
    let out = run(Command::new(bin("remusockd")).args(["-f", &file.display().to_string(), &port2]), b"", secs(10));
    assert_eq!(out.code(), Some(111), "{}", out.describe());
    assert_eq!(std::fs::read(&file).expect("read"), b"data");
}

#[test]
fn the_pidfile_is_locked_and_a_second_instance_refuses() {
    let dir = TestDir::new("remusockd_pidfile");
    let pidfile = dir.join("r.pid").display().to_string();
    let port = free_port().to_string();
    let s = dir.join("a.sock").display().to_string();
    let first = Rd::start(&dir, "first", &["-p", &pidfile, "-b", "127.0.0.1", &s, &port]);
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("a pid");
    assert_eq!(pid, first.pid());
    let s2 = dir.join("b.sock").display().to_string();
    let port2 = free_port().to_string();
    let out =
        run(Command::new(bin("remusockd")).args(["-f", "-p", &pidfile, "-b", "127.0.0.1", &s2, &port2]), b"", secs(10));
    assert_eq!(out.code(), Some(111), "{}", out.describe());
    assert!(out.stderr_str().contains("locked"), "{}", out.describe());
    assert!(!Path::new(&s2).exists(), "the second instance touched nothing");
}

#[test]
fn daemonizes_without_f_and_writes_its_pid() {
    let dir = TestDir::new("remusockd_daemon");
    let pidfile = dir.join("d.pid");
    let port = free_port().to_string();
    let s = dir.join("d.sock");
    // The daemon inherits the readiness pipe on fd 3.
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("inherit");
    let w = write_end.as_raw_fd();
    let out = run(
        Command::new("/bin/bash")
            .arg("-c")
            .arg(format!("exec \"$@\" 3>&{w} {w}>&-"))
            .arg("bash")
            .arg(bin("remusockd"))
            .args([
                "-N",
                "3",
                "-p",
                &pidfile.display().to_string(),
                "-b",
                "127.0.0.1",
                &s.display().to_string(),
                &port,
            ]),
        b"",
        secs(10),
    );
    drop(write_end);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(std::fs::File::from(read_end).read(&mut b).ok() == Some(1));
    });
    assert_eq!(rx.recv_timeout(secs(20)), Ok(true), "the daemon's readiness");
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pid").trim().parse().expect("pid");
    assert_ne!(nix::unistd::Pid::from_raw(pid), nix::unistd::getpid());
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    assert!(alive, "the daemon runs");
    // SIGTERM: it removes its pidfile and socket.
    wait_for("the daemon's exit", secs(10), || !pidfile.exists() && !s.exists());
}

#[test]
fn as_root_u_sets_the_socket_owner_and_drops_privileges() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let dir = TestDir::new("remusockd_user");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let port = free_port().to_string();
    let s = dir.join("u.sock");
    let rd =
        Rd::start(&dir, "user", &["-u", "nobody", "-m", "660", "-b", "127.0.0.1", &s.display().to_string(), &port]);
    let meta = std::fs::metadata(&s).expect("stat");
    let nobody = nix::unistd::User::from_name("nobody").expect("getpwnam").expect("nobody");
    assert_eq!(meta.uid(), nobody.uid.as_raw());
    assert_eq!(meta.gid(), nobody.gid.as_raw());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    let status = std::fs::read_to_string(format!("/proc/{}/status", rd.pid())).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    let want = nobody.uid.as_raw().to_string();
    assert!(uid_line.split_whitespace().skip(1).all(|u| u == want), "{uid_line}");
}

#[test]
fn ucspi_mode_over_a_socketpair() {
    let dir = TestDir::new("remusockd_ucspi");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let front = dir.join("front.sock");
    let rd = bin("remusockd");
    let mut cmd = Command::new(find_program("socat"));
    cmd.arg(format!("EXEC:{} -f -U {}", rd.display(), front.display())).arg(format!(
        "EXEC:{} -f -U -c {}",
        rd.display(),
        dir.join("svc.sock").display()
    ));
    let (_peer, _) = Peer::spawn(cmd, dir.join("socat-ucspi.log"), "socat");
    wait_for("the UCSPI socket", secs(10), || UnixStream::connect(&front).is_ok());
    assert_eq!(echo_round(&front, b"over ucspi\n"), b"over ucspi\n");
    assert_eq!(socat_half_close(&front, b"x\n"), b"x\n");
}

// --- TLS ---------------------------------------------------------------

/// `openssl x509 -noout -fingerprint -sha512`, as printed.
fn fingerprint(cert: &Path) -> String {
    let out = run(
        Command::new(find_program("openssl")).args(["x509", "-noout", "-fingerprint", "-sha512", "-in"]).arg(cert),
        b"",
        secs(10),
    );
    assert!(out.success(), "{}", out.describe());
    out.stdout_str().trim().split('=').nth(1).expect("a fingerprint").to_owned()
}

/// A TLS listener (socket server, `mx` certificate, `listen` options) and
/// a dialer (`dial` options, and `client` as its certificate); whether a
/// request goes through. `@CA` and `@ROGUECA` stand for the CA files.
fn tls_case(name: &str, listen: &[String], dial: &[String], client: Option<chainmail_tests::KeyPair>) -> bool {
    let dir = TestDir::new(&format!("remusockd_tls_{name}"));
    let certs = dir.certs();
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let port = free_port().to_string();
    let fs = dir.join("front.sock").display().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let sub = |a: &String| -> String {
        a.replace("@ROGUECA", &certs.rogue_ca().display().to_string()).replace("@CA", &certs.ca().display().to_string())
    };
    let mut largs: Vec<String> = listen.iter().map(sub).collect();
    largs.extend(["-b".into(), "127.0.0.1".into(), fs, port.clone()]);
    largs.extend([certs.mx().cert.display().to_string(), certs.mx().key.display().to_string()]);
    let mut dargs: Vec<String> = dial.iter().map(sub).collect();
    dargs.extend(["-c".into(), "-r".into(), "127.0.0.1".into(), ss, port]);
    if let Some(kp) = client {
        dargs.extend([kp.cert.display().to_string(), kp.key.display().to_string()]);
    }
    let l: Vec<&str> = largs.iter().map(String::as_str).collect();
    let d: Vec<&str> = dargs.iter().map(String::as_str).collect();
    let front = Rd::start(&dir, "front", &l);
    let back = Rd::start_env(&dir, "back", &d, &[], false);
    // Either the link comes up, or one side says why not.
    wait_for("the link or its failure", secs(20), || {
        let (f, b) = (front.log(), back.log());
        f.contains(" up") || f.contains("closed") || b.contains("closed") || b.contains("fatal")
    });
    if !front.log().contains(" up") {
        return false;
    }
    echo_round(&dir.join("front.sock"), b"secret\n") == b"secret\n"
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tls_the_dialers_checks_of_the_server() {
    let dir = TestDir::new("remusockd_tls_server_checks");
    let certs = dir.certs();
    let server_pin = fingerprint(&certs.mx().cert);
    let other_pin = fingerprint(&certs.rogue_client().cert);
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        // -C and the address the dialer used (IP SAN 127.0.0.1).
        ("ca", strings(&["-C", "@CA"]), true),
        ("wrong_ca", strings(&["-C", "@ROGUECA"]), false),
        // The system roots do not know the test CA; -V skips the check.
        ("system_roots", strings(&["-t"]), false),
        ("no_verify", strings(&["-V"]), true),
        // Server pinning (new): openssl's form, or lower case without colons.
        ("server_pin", vec!["-H".into(), server_pin.clone()], true),
        ("server_pin_plain", vec!["-H".into(), server_pin.to_lowercase().replace(':', "")], true),
        ("server_wrong_pin", vec!["-H".into(), other_pin], false),
    ];
    for (name, dial, want) in cases {
        assert_eq!(tls_case(name, &[], &dial, None), want, "{name}");
    }
}

#[test]
fn tls_the_listeners_checks_of_the_client() {
    let dir = TestDir::new("remusockd_tls_client_checks");
    let certs = dir.certs();
    let client_pin = fingerprint(&certs.client().cert);
    let rogue_pin = fingerprint(&certs.rogue_client().cert);
    let ca = strings(&["-C", "@CA"]);
    let cases: Vec<(&str, Vec<String>, Option<chainmail_tests::KeyPair>, bool)> = vec![
        ("client_ca", ca.clone(), Some(certs.client()), true),
        ("client_none", ca.clone(), None, false),
        ("client_wrong_ca", ca.clone(), Some(certs.rogue_client()), false),
        ("client_expired", ca.clone(), Some(certs.expired()), false),
        ("client_pin", vec!["-H".into(), client_pin.clone()], Some(certs.client()), true),
        // -H alone: any issuer will do.
        ("client_pin_any_issuer", vec!["-H".into(), rogue_pin.clone()], Some(certs.rogue_client()), true),
        ("client_wrong_pin", vec!["-H".into(), rogue_pin.clone()], Some(certs.client()), false),
        // Both: both checks.
        (
            "client_ca_and_pin",
            vec!["-C".into(), "@CA".into(), "-H".into(), client_pin.clone()],
            Some(certs.client()),
            true,
        ),
        (
            "client_ca_not_pinned",
            vec!["-C".into(), "@CA".into(), "-H".into(), rogue_pin.clone()],
            Some(certs.client()),
            false,
        ),
        (
            "client_pinned_wrong_ca",
            vec!["-C".into(), "@CA".into(), "-H".into(), rogue_pin],
            Some(certs.rogue_client()),
            false,
        ),
    ];
    for (name, listen, client, want) in cases {
        assert_eq!(tls_case(name, &listen, &ca, client), want, "{name}");
    }
}

#[test]
fn sighup_reloads_the_certificate() {
    let dir = TestDir::new("remusockd_sighup");
    let certs = dir.certs();
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::copy(&certs.a().cert, &cert).expect("copy");
    std::fs::copy(&certs.a().key, &key).expect("copy");
    let port = free_port().to_string();
    let fs = dir.join("front.sock").display().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let front = Rd::start(
        &dir,
        "front",
        &["-b", "127.0.0.1", &fs, &port, &cert.display().to_string(), &key.display().to_string()],
    );
    // The dialer pins b's certificate: refused while the listener has a's.
    let pin = fingerprint(&certs.b().cert);
    let back = Rd::start_env(&dir, "back", &["-V", "-H", &pin, "-c", "-r", "127.0.0.1", &ss, &port], &[], false);
    back.wait_log("closed");
    assert!(!front.log().contains(" up"));
    std::fs::copy(&certs.b().cert, &cert).expect("copy");
    std::fs::copy(&certs.b().key, &key).expect("copy");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(front.pid()), nix::sys::signal::Signal::SIGHUP).expect("HUP");
    front.wait_log("certificates reloaded");
    wait_for("the link with the new certificate", secs(40), || front.log().contains(" up"));
    assert_eq!(echo_round(&dir.join("front.sock"), b"b\n"), b"b\n");
}

// --- A peer that behaves like remusock 2.0 ------------------------------

/// Reads exactly `n` bytes, bounded by the stream's timeout.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    b
}

/// One frame as the original reads it: any byte it does not know ends
/// the tunnel (returns `None`).
fn original_frame(s: &mut TcpStream) -> Option<(u8, u16, Vec<u8>)> {
    let mut c = [0u8; 1];
    s.read_exact(&mut c).ok()?;
    match c[0] {
        b'?' | b'!' => Some((c[0], 0, Vec::new())),
        b'H' | b'C' | b'B' => {
            let id = read_n(s, 2);
            Some((c[0], u16::from_be_bytes([id[0], id[1]]), Vec::new()))
        }
        b'D' => {
            let h = read_n(s, 4);
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            assert!((1..=16384).contains(&len), "DATA of {len} bytes");
            Some((b'D', u16::from_be_bytes([h[0], h[1]]), read_n(s, len)))
        }
        other => panic!("remusockd sent 0x{other:02x} to an original peer"),
    }
}

/// The next frame that is not a PONG.
fn next_frame(s: &mut TcpStream) -> (u8, u16, Vec<u8>) {
    loop {
        let f = original_frame(s).expect("a frame");
        if f.0 != b'!' {
            return f;
        }
    }
}

#[test]
fn an_original_socket_client_dialing_in_sees_only_original_frames() {
    let dir = TestDir::new("remusockd_original_client");
    let port = free_port();
    let fs = dir.join("front.sock");
    let rd = Rd::start(&dir, "front", &["-b", "127.0.0.1", &fs.display().to_string(), &port.to_string()]);
    let mut peer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    peer.set_read_timeout(Some(secs(10))).expect("timeout");
    // The IDENT, then the probe: two PONGs, which the original accepts.
    assert_eq!(read_n(&mut peer, 4), b"IS!!");
    peer.write_all(b"IC").expect("ident");
    // A local client: HELLO 1; the original connects, CONNECTs, and both
    // directions carry data.
    let mut local = connect(&fs);
    local.write_all(b"early").expect("write");
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'H', 1));
    peer.write_all(b"C\x00\x01").expect("connect");
    let (cmd, id, data) = next_frame(&mut peer);
    assert_eq!((cmd, id, data.as_slice()), (b'D', 1, &b"early"[..]));
    peer.write_all(b"D\x00\x01\x00\x03abc").expect("data");
    let mut got = [0u8; 3];
    local.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"abc");
    // A PING is answered.
    peer.write_all(b"?").expect("ping");
    assert_eq!(original_frame(&mut peer).expect("pong").0, b'!');
    // EOF from the local client is BYE for an original (no half-close).
    local.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'B', 1));
    // Late frames for the closed id are ignored, the link stays.
    peer.write_all(b"D\x00\x01\x00\x01zB\x00\x01C\x00\x01?").expect("late frames");
    assert_eq!(original_frame(&mut peer).expect("pong").0, b'!');
    // The ids go on: 2 next.
    let mut local2 = connect(&fs);
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'H', 2));
    // The original's BYE closes the local client.
    peer.write_all(b"B\x00\x02").expect("bye");
    let mut rest = Vec::new();
    local2.read_to_end(&mut rest).expect("EOF");
    drop(rd);
}

#[test]
fn remusockd_dialing_an_original_socket_server() {
    let dir = TestDir::new("remusockd_original_server");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let _rd = Rd::start_env(&dir, "back", &["-c", "-r", "127.0.0.1", &ss, &port], &[], false);
    let (mut peer, _) = l.accept().expect("accept");
    peer.set_read_timeout(Some(secs(10))).expect("timeout");
    peer.write_all(b"IS").expect("ident");
    assert_eq!(read_n(&mut peer, 2), b"IC");
    // Our HELLO: remusockd connects to the service and says CONNECT.
    peer.write_all(b"H\x00\x07").expect("hello");
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'C', 7));
    peer.write_all(b"D\x00\x07\x00\x05echo\n").expect("data");
    let (cmd, id, data) = next_frame(&mut peer);
    assert_eq!((cmd, id, data.as_slice()), (b'D', 7, &b"echo\n"[..]));
    // BYE from us: the service connection is closed, no acknowledgement.
    peer.write_all(b"B\x00\x07?").expect("bye");
    assert_eq!(original_frame(&mut peer).expect("pong").0, b'!', "nothing but the PING's answer");
}

#[test]
fn bad_input_closes_the_tunnel_with_one_line_and_the_daemon_stays_up() {
    let dir = TestDir::new("remusockd_bad_input");
    let port = free_port();
    let fs = dir.join("front.sock");
    let rd = Rd::start(&dir, "front", &["-b", "127.0.0.1", &fs.display().to_string(), &port.to_string()]);
    let cases: &[(&[u8], &str)] = &[
        (b"XX", "bad IDENT"),
        (b"IS", "bad IDENT"),
        (b"ICZ", "unknown command byte 0x5a"),
        (b"ICD\x00\x01\x00\x00", "DATA length 0"),
        (b"ICD\x00\x01\x40\x01", "DATA length 16385"),
        (b"ICH\x00\x01", "wrong role"),
        (b"ICE\x00\x01", "unknown command byte 0x45"),
    ];
    for (n, (bytes, reason)) in cases.iter().enumerate() {
        let mut peer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        peer.set_read_timeout(Some(secs(10))).expect("timeout");
        assert_eq!(read_n(&mut peer, 2), b"IS");
        peer.write_all(bytes).expect("write");
        let mut rest = Vec::new();
        let _ = peer.read_to_end(&mut rest);
        wait_for(reason, secs(10), || rd.log().matches("closed:").count() == n + 1);
        let last = rd.log().lines().rfind(|l| l.contains("closed:")).unwrap_or_default().to_owned();
        assert!(last.contains(reason), "{last}");
    }
    // Still serving.
    let mut peer = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    peer.set_read_timeout(Some(secs(10))).expect("timeout");
    assert_eq!(read_n(&mut peer, 2), b"IS");
}

#[test]
fn a_socket_server_listener_serves_one_tunnel_at_a_time() {
    let dir = TestDir::new("remusockd_one_tunnel");
    let port = free_port();
    let fs = dir.join("front.sock");
    let _rd = Rd::start(&dir, "front", &["-b", "127.0.0.1", &fs.display().to_string(), &port.to_string()]);
    let mut first = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    first.set_read_timeout(Some(secs(10))).expect("timeout");
    assert_eq!(read_n(&mut first, 2), b"IS");
    first.write_all(b"IC").expect("ident");
    let mut second = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    second.set_read_timeout(Some(secs(10))).expect("timeout");
    let mut b = Vec::new();
    let _ = second.read_to_end(&mut b);
    assert!(b.is_empty(), "the second link is closed at once: {b:?}");
}

#[test]
fn a_dialer_redials_within_a_second_after_bad_input() {
    let dir = TestDir::new("remusockd_redial");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let rd = Rd::start_env(&dir, "back", &["-c", "-r", "127.0.0.1", &ss, &port], &[], false);
    let (mut first, _) = l.accept().expect("accept");
    first.write_all(b"XY").expect("garbage IDENT");
    let closed = Instant::now();
    let mut rest = Vec::new();
    first.set_read_timeout(Some(secs(10))).expect("timeout");
    let _ = first.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing answered to a bad IDENT: {rest:?}");
    l.set_nonblocking(false).expect("blocking");
    let (_second, _) = l.accept().expect("the dialer comes back");
    // The first retry comes within 1 s (the backoff's unit test); 3 s leaves
    // room for a loaded machine.
    assert!(closed.elapsed() < secs(3), "{:?}", closed.elapsed());
    rd.wait_log("bad IDENT");
}

#[test]
fn the_ident_exchange_times_out() {
    let dir = TestDir::new("remusockd_handshake_timeout");
    let port = free_port();
    let fs = dir.join("front.sock");
    let rd = Rd::start(&dir, "front", &["-b", "127.0.0.1", &fs.display().to_string(), &port.to_string()]);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent.set_read_timeout(Some(secs(30))).expect("timeout");
    let start = Instant::now();
    let mut got = Vec::new();
    let _ = silent.read_to_end(&mut got);
    assert_eq!(got, b"IS!!");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_secs(9) && waited < secs(20), "{waited:?}");
    rd.wait_log("handshake timed out");
}

#[test]
fn held_clients_are_reset_after_w_seconds() {
    let dir = TestDir::new("remusockd_w1");
    let port = free_port().to_string();
    let fs = dir.join("front.sock").display().to_string();
    let _front = Rd::start(&dir, "front", &["-w", "1", "-b", "127.0.0.1", &fs, &port]);
    let mut s = connect(&dir.join("front.sock"));
    let start = Instant::now();
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < secs(5), "{waited:?}");
}

#[test]
fn ucspi_mode_on_fds_6_and_7_under_tcpclient() {
    let dir = TestDir::new("remusockd_tcpclient");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let port = free_port().to_string();
    let front = dir.join("front.sock");
    let rd = Rd::start(&dir, "front", &["-b", "127.0.0.1", &front.display().to_string(), &port]);
    // tcpclient connects and runs the socket client side with the
    // connection on fds 6 (read) and 7 (write).
    let mut cmd = Command::new(find_program("tcpclient"));
    cmd.args(["-H", "-R", "127.0.0.1", &port]).arg(bin("remusockd")).args([
        "-f",
        "-U",
        "-c",
        &dir.join("svc.sock").display().to_string(),
    ]);
    let (_client, _) = Peer::spawn(cmd, dir.join("tcpclient.log"), "tcpclient");
    rd.wait_log(" up");
    assert_eq!(socat_half_close(&front, b"via tcpclient\n"), b"via tcpclient\n");
}

#[test]
fn a_socket_client_listener_serves_many_original_socket_servers_each_with_its_ids() {
    let dir = TestDir::new("remusockd_many_tunnels");
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let port = free_port();
    let ss = dir.join("svc.sock").display().to_string();
    let _rd = Rd::start(&dir, "back", &["-c", "-b", "127.0.0.1", &ss, &port.to_string()]);
    let mut peers: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut p = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            p.set_read_timeout(Some(secs(10))).expect("timeout");
            assert_eq!(read_n(&mut p, 4), b"IC!!");
            p.write_all(b"IS").expect("ident");
            p
        })
        .collect();
    // Each original socket server uses id 1: separate id spaces.
    for (i, p) in peers.iter_mut().enumerate() {
        p.write_all(b"H\x00\x01").expect("hello");
        assert_eq!(next_frame(p).0, b'C', "peer {i}");
        let msg = format!("tunnel {i}\n");
        let mut d = b"D\x00\x01\x00".to_vec();
        d.push(msg.len() as u8);
        d.extend_from_slice(msg.as_bytes());
        p.write_all(&d).expect("data");
    }
    for (i, p) in peers.iter_mut().enumerate() {
        let (cmd, id, data) = next_frame(p);
        assert_eq!((cmd, id, data), (b'D', 1, format!("tunnel {i}\n").into_bytes()));
    }
}

#[test]
fn a_socket_server_dialing_an_original_socket_client() {
    let dir = TestDir::new("remusockd_dial_original_client");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port().to_string();
    let fs = dir.join("front.sock");
    let _rd = Rd::start_env(&dir, "front", &["-r", "127.0.0.1", &fs.display().to_string(), &port], &[], false);
    let (mut peer, _) = l.accept().expect("accept");
    peer.set_read_timeout(Some(secs(10))).expect("timeout");
    peer.write_all(b"IC").expect("ident");
    assert_eq!(read_n(&mut peer, 4), b"IS!!");
    wait_for("the socket", secs(10), || fs.exists());
    let mut local = connect(&fs);
    local.write_all(b"req\n").expect("write");
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'H', 1));
    // Nothing is read from the local client before CONNECT.
    peer.write_all(b"C\x00\x01").expect("connect");
    let (cmd, id, data) = next_frame(&mut peer);
    assert_eq!((cmd, id, data.as_slice()), (b'D', 1, &b"req\n"[..]));
    peer.write_all(b"D\x00\x01\x00\x04rep\n").expect("data");
    let mut got = [0u8; 4];
    local.read_exact(&mut got).expect("reply");
    assert_eq!(&got, b"rep\n");
    drop(local);
    let (cmd, id, _) = next_frame(&mut peer);
    assert_eq!((cmd, id), (b'B', 1));
}

#[test]
fn the_dialer_sends_the_host_name_as_sni() {
    let dir = TestDir::new("remusockd_sni");
    let certs = dir.certs();
    let port = free_port().to_string();
    let mut cmd = Command::new(find_program("openssl"));
    cmd.args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-tlsextdebug", "-naccept", "1", "-cert"])
        .arg(&certs.mx().cert)
        .arg("-key")
        .arg(&certs.mx().key);
    let (_server, stdout) = Peer::spawn(cmd, dir.join("s_server.log"), "openssl s_server");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = stdout.expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| rx.recv_timeout(secs(20)).unwrap_or_else(|_| panic!("no {what} from s_server"));
    while next("ACCEPT") != "ACCEPT" {}
    let ss = dir.join("svc.sock").display().to_string();
    let _rd = Rd::start_env(&dir, "back", &["-V", "-c", "-r", "localhost", &ss, &port], &[], false);
    loop {
        let line = next("server name extension");
        if line.contains("\"server name\"") {
            assert!(next("its bytes").ends_with("localhost"), "SNI is the name given to -r");
            break;
        }
    }
}

/// Echoes `size` bytes of the pattern through `path` with a writer thread,
/// then half-closes; checks every byte and the EOF after them.
fn echo_bulk(path: &Path, size: u64) {
    let s = connect(path);
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 48 << 10];
        let mut off = 0u64;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            pattern(off, &mut buf[..n]);
            w.write_all(&buf[..n]).expect("write");
            off += n as u64;
        }
        w.shutdown(std::net::Shutdown::Write).expect("shutdown");
    });
    let mut r = s;
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    let mut off = 0u64;
    loop {
        let n = r.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        pattern(off, &mut want[..n]);
        assert!(buf[..n] == want[..n], "corrupt at {off}");
        off += n as u64;
    }
    writer.join().expect("writer");
    assert_eq!(off, size);
}

#[test]
fn tls_carries_bulk_data_and_many_channels_both_ways() {
    let dir = TestDir::new("remusockd_tls_bulk");
    let certs = dir.certs();
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let port = free_port().to_string();
    let fs = dir.join("front.sock");
    let ss = dir.join("svc.sock").display().to_string();
    let (ca, mx, client) = (certs.ca().display().to_string(), certs.mx(), certs.client());
    let front = Rd::start(
        &dir,
        "front",
        &[
            "-C",
            &ca,
            "-b",
            "127.0.0.1",
            &fs.display().to_string(),
            &port,
            &mx.cert.display().to_string(),
            &mx.key.display().to_string(),
        ],
    );
    let _back = Rd::start(
        &dir,
        "back",
        &[
            "-C",
            &ca,
            "-c",
            "-r",
            "127.0.0.1",
            &ss,
            &port,
            &client.cert.display().to_string(),
            &client.key.display().to_string(),
        ],
    );
    front.wait_log(" up");
    // Bulk on one channel while small ones come and go.
    let path = fs.clone();
    let bulk = std::thread::spawn(move || echo_bulk(&path, 48 << 20));
    for i in 0..50 {
        let line = format!("small {i}\n");
        assert_eq!(socat_half_close(&fs, line.as_bytes()), line.as_bytes());
    }
    bulk.join().expect("bulk");
}

#[test]
fn sighup_reloads_the_dialers_client_certificate() {
    let dir = TestDir::new("remusockd_sighup_dialer");
    let certs = dir.certs();
    let _svc = echo_service(&dir, &dir.join("svc.sock"));
    let (cert, key) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::copy(&certs.rogue_client().cert, &cert).expect("copy");
    std::fs::copy(&certs.rogue_client().key, &key).expect("copy");
    let port = free_port().to_string();
    let fs = dir.join("front.sock").display().to_string();
    let ss = dir.join("svc.sock").display().to_string();
    let (ca, mx) = (certs.ca().display().to_string(), certs.mx());
    let front = Rd::start(
        &dir,
        "front",
        &["-C", &ca, "-b", "127.0.0.1", &fs, &port, &mx.cert.display().to_string(), &mx.key.display().to_string()],
    );
    let back = Rd::start_env(
        &dir,
        "back",
        &["-C", &ca, "-c", "-r", "127.0.0.1", &ss, &port, &cert.display().to_string(), &key.display().to_string()],
        &[],
        false,
    );
    front.wait_log("closed");
    assert!(!front.log().contains(" up"), "the rogue client certificate is refused");
    std::fs::copy(&certs.client().cert, &cert).expect("copy");
    std::fs::copy(&certs.client().key, &key).expect("copy");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(back.pid()), nix::sys::signal::Signal::SIGHUP).expect("HUP");
    back.wait_log("certificates reloaded");
    wait_for("the link with the new client certificate", secs(40), || front.log().contains(" up"));
    assert_eq!(echo_round(&dir.join("front.sock"), b"c\n"), b"c\n");
}
