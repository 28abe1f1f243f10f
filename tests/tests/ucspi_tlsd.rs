//! ucspi-tlsd on its own: a socket pair stands for the network on fds
//! 0/1, `tests/peers/ucspi-tlsd-app.py` is the application, and a rustls
//! client in the test talks to the engine. The certificates are the
//! harness's ([`chainmail_tests::certs`]): `a` is the default pair, `b` the
//! one named `mail.test`, `wild` the `*.wild.test` one.
//!
//! Every wait is bounded: socket timeouts for the client, a deadline for
//! the processes, which are killed by PID if they overstay.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chainmail_tests::peer::{PYTHON, peer_script};
use chainmail_tests::{TestDir, bin};
use chainmail_tls::rustls;
use chainmail_tls::verify::AnyServerCertificate;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------
// Certificates.

/// The path of the harness's certificate file `file` in `t`.
fn path(t: &TestDir, file: &str) -> String {
    t.certs().dir().join(file).to_str().expect("utf8 path").to_owned()
}

/// The DER of the (first) certificate in the harness's file `file`.
fn der(t: &TestDir, file: &str) -> Vec<u8> {
    let pem = std::fs::read(path(t, file)).expect("read cert");
    chainmail_tls::keys::parse_certificates(&pem).expect("parse cert")[0].as_ref().to_vec()
}

// ---------------------------------------------------------------------
// The client side.

struct ClientOpts<'a> {
    /// SNI; `None` connects to 127.0.0.1, which sends no SNI.
    sni: Option<&'a str>,
    /// Client certificate and key file names in the cert directory.
    cert: Option<&'a str>,
    tls12_only: bool,
}

const CLIENT: ClientOpts<'static> = ClientOpts { sni: Some("mail.test"), cert: None, tls12_only: false };

/// A client that accepts any server certificate (checking the handshake
/// signatures), so that tests can look at the one the server chose.
fn client_conn(t: &TestDir, opts: &ClientOpts<'_>) -> ClientConnection {
    let provider = Arc::new(chainmail_tls::provider());
    let verifier = AnyServerCertificate::new(&provider);
    let versions: &[&rustls::SupportedProtocolVersion] =
        if opts.tls12_only { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13, &rustls::version::TLS12] };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match opts.cert {
        Some(name) => {
            let chain = chainmail_tls::keys::load_certificates("cert", Path::new(&path(t, &format!("{name}.pem"))))
                .expect("client cert");
            let key: PrivateKeyDer<'static> =
                chainmail_tls::keys::load_private_key("key", Path::new(&path(t, &format!("{name}.key")))).expect("key");
            builder.with_client_auth_cert(chain, key).expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    let name = match opts.sni {
        Some(s) => ServerName::try_from(s.to_owned()).expect("name"),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    };
    ClientConnection::new(Arc::new(config), name).expect("client")
}

// ---------------------------------------------------------------------
// Running ucspi-tlsd.

struct Run {
    child: Child,
    net: Option<UnixStream>,
    result: PathBuf,
    stderr: PathBuf,
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn base_env(t: &TestDir) -> Vec<(String, String)> {
    vec![("CERTFILE".into(), path(t, "a.pem")), ("KEYFILE".into(), path(t, "a.key"))]
}

/// Starts `ucspi-tlsd ARGS -- python3 ucspi-tlsd-app.py MODE RESULT` with exactly
/// the environment `env` (plus PATH).
fn start(t: &TestDir, args: &[&str], mode: &str, env: &[(String, String)]) -> Run {
    let n = unique();
    let result = t.join(format!("result-{n}"));
    let stderr = t.join(format!("stderr-{n}"));
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    ours.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    ours.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let theirs_out = theirs.try_clone().expect("dup");
    let app = peer_script("ucspi-tlsd-app.py");
    let mut cmd = Command::new(bin("ucspi-tlsd"));
    cmd.args(args)
        .arg("--")
        .arg(PYTHON)
        .arg(app)
        .arg(mode)
        .arg(&result)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin")))
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(theirs_out)))
        .stderr(Stdio::from(std::fs::File::create(&stderr).expect("stderr file")));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn ucspi-tlsd");
    Run { child, net: Some(ours), result, stderr }
}

impl Run {
    fn net(&mut self) -> UnixStream {
        self.net.take().expect("network end")
    }

    /// Waits (bounded) for the application to exit; returns its status.
    fn wait_app(&mut self) -> i32 {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("application did not exit; stderr: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The engine's exit status, as the application reported it.
    fn engine_exit(&mut self) -> i32 {
        self.engine_exit_and_time().0
    }

    /// The engine's exit status, and how long it ran after the control
    /// byte, as the application measured it.
    fn engine_exit_and_time(&mut self) -> (i32, Duration) {
        let app = self.wait_app();
        assert_eq!(app, 0, "application failed; stderr: {}", self.stderr());
        let text = std::fs::read_to_string(&self.result).expect("result file");
        let mut words = text.split_whitespace();
        assert_eq!(words.next(), Some("exit"), "{text}");
        let code = words.next().and_then(|s| s.parse().ok()).expect("exit status");
        let ms: u64 = words.next().and_then(|s| s.parse().ok()).expect("milliseconds");
        (code, Duration::from_millis(ms))
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Kill the application by PID if a failed test left it running;
        // its engine then ends on EOF.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A TLS session over the network end: the report lines the application
/// sends first, then echo.
struct Tls {
    stream: StreamOwned<ClientConnection, UnixStream>,
    buf: Vec<u8>,
}

impl Tls {
    fn connect(t: &TestDir, net: UnixStream, opts: &ClientOpts<'_>) -> Result<Tls, io::Error> {
        let conn = client_conn(t, opts);
        let mut stream = StreamOwned::new(conn, net);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Tls { stream, buf: Vec::new() })
    }

    fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8(line).expect("utf8").trim_end().to_owned();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read line");
            assert!(n > 0, "EOF before a full line");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The three report lines: info record, environment, engine ids.
    fn report(&mut self) -> Report {
        let info = self.line();
        let env = self.line();
        let engine = self.line();
        let info = info.strip_prefix("INFO ").expect("INFO line").to_owned();
        let info = if info == "-" { None } else { Some(hex_decode(&info)) };
        let env = env.strip_prefix("ENV ").expect("ENV line").to_owned();
        let ids: Vec<u32> =
            engine.strip_prefix("ENGINE ").expect("ENGINE line").split(' ').map(|s| s.parse().expect("id")).collect();
        Report { info, env, engine_ids: (ids[0], ids[1]) }
    }

    fn leaf(&self) -> Vec<u8> {
        let chain = self.stream.conn.peer_certificates().expect("server certificate");
        chain[0].as_ref().to_vec()
    }

    fn echo(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("write");
        self.stream.flush().expect("flush");
        let mut got = vec![0u8; data.len()];
        let mut have = self.buf.len().min(data.len());
        got[..have].copy_from_slice(&self.buf[..have]);
        self.buf.drain(..have);
        while have < data.len() {
            let n = self.stream.read(&mut got[have..]).expect("read echo");
            assert!(n > 0, "EOF during echo");
            have += n;
        }
        assert!(got == data, "echo differs");
    }

    /// Sends close_notify and half-closes; returns whether the server's
    /// EOF came with close_notify.
    fn close(mut self) -> bool {
        self.stream.conn.send_close_notify();
        let _ = self.stream.conn.complete_io(&mut self.stream.sock);
        let _ = self.stream.sock.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => {
                assert!(rest.is_empty(), "unexpected data: {rest:?}");
                true
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => panic!("read at the end: {e}"),
        }
    }
}

struct Report {
    info: Option<Vec<u8>>,
    env: String,
    engine_ids: (u32, u32),
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// The information record as (name, value) pairs; `None` for unset.
fn parse_info(rec: &[u8]) -> Vec<(String, Option<String>)> {
    assert!(rec.ends_with(b"\0\0"), "record ends with two NULs: {rec:?}");
    let body = &rec[..rec.len() - 1];
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| {
            let f = String::from_utf8(f.to_vec()).expect("utf8");
            match f.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (f, None),
            }
        })
        .collect()
}

fn field<'a>(info: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == name).expect(name).1.as_deref()
}

/// A full TLS session with the `Y` application: handshake, report, one
/// echo, close. Returns the report and the server's leaf certificate.
fn session(t: &TestDir, args: &[&str], env: &[(String, String)], opts: &ClientOpts<'_>) -> (Report, Vec<u8>, Run) {
    let mut run = start(t, args, "Y", env);
    let mut tls = Tls::connect(t, run.net(), opts).expect("handshake");
    let report = tls.report();
    tls.echo(b"EHLO client.test\r\n");
    let leaf = tls.leaf();
    tls.close();
    assert_eq!(run.engine_exit(), 0, "stderr: {}", run.stderr());
    (report, leaf, run)
}

/// A session whose handshake must fail; returns the engine's status.
fn failed_handshake(t: &TestDir, args: &[&str], env: &[(String, String)], opts: &ClientOpts<'_>) -> (i32, Run) {
    let mut run = start(t, args, "Y", env);
    let r = Tls::connect(t, run.net(), opts);
    if let Ok(mut tls) = r {
        // TLS 1.3: the client finishes before the server checks its
        // certificate; the failure shows on the first read.
        let mut b = [0u8; 1];
        assert!(tls.stream.read(&mut b).is_err(), "session should have failed");
    }
    let code = run.engine_exit();
    (code, run)
}

// ---------------------------------------------------------------------
// The tests.

#[test]
fn declined_tls_leaves_plaintext_working() {
    let t = TestDir::new("tlsd_declined_tls_leaves_plaintext_working");
    let mut run = start(&t, &[], "decline", &base_env(&t));
    let mut net = run.net();
    net.write_all(b"hello\n").expect("write");
    let mut got = String::new();
    net.read_to_string(&mut got).expect("read");
    assert_eq!(got, "plain:hello\n");
    assert_eq!(run.engine_exit(), 0);
    assert_eq!(run.stderr(), "", "silent by default");

    let mut run = start(&t, &["-v2"], "decline", &base_env(&t));
    let mut net = run.net();
    net.write_all(b"x\n").expect("write");
    assert_eq!(run.engine_exit(), 0);
    assert!(run.stderr().contains("ucspi-tlsd: info: application declined TLS"), "{}", run.stderr());
}

#[test]
fn small_y_then_echo_and_silence() {
    let t = TestDir::new("tlsd_small_y_then_echo_and_silence");
    let mut run = start(&t, &[], "y", &base_env(&t));
    let mut tls = Tls::connect(&t, run.net(), &CLIENT).expect("handshake");
    let report = tls.report();
    assert!(report.info.is_none());
    tls.echo(b"EHLO x\r\n");
    // 1 MB through both directions, 32 KiB at a time (the echo cannot
    // buffer a whole megabyte: the pipes and sockets would fill up).
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in big.chunks(32 * 1024) {
        tls.echo(chunk);
    }
    assert!(!tls.close(), "-s: no close_notify from the server");
    assert_eq!(run.engine_exit(), 0);
    assert_eq!(run.stderr(), "", "a clean session prints nothing at -v1");
}

#[test]
fn capital_y_sends_the_connection_information() {
    let t = TestDir::new("tlsd_capital_y_sends_the_connection_information");
    let (report, leaf, run) = session(&t, &["-v2"], &base_env(&t), &CLIENT);
    let info = parse_info(report.info.as_deref().expect("info"));
    let names: Vec<&str> = info.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        ["SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI_SERVERNAME", "SSL_PEER_CERT_HASH", "SSL_PEER_CERT_SUBJECT"]
    );
    assert_eq!(field(&info, "SSL_PROTOCOL"), Some("TLSv1.3"));
    let cipher = field(&info, "SSL_CIPHER").expect("cipher");
    assert!(["TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"].contains(&cipher));
    assert_eq!(field(&info, "SSL_TLS_SNI_SERVERNAME"), Some("mail.test"));
    assert_eq!(field(&info, "SSL_PEER_CERT_HASH"), None);
    assert_eq!(field(&info, "SSL_PEER_CERT_SUBJECT"), None);
    // No CERTFILE:mail.test at level 0: the default certificate.
    assert_eq!(leaf, der(&t, "a.pem"));
    let err = run.stderr();
    assert!(err.contains("ucspi-tlsd: info: TLS handshake done: TLSv1.3 TLS_"), "{err}");
}

#[test]
fn tls12_client() {
    let t = TestDir::new("tlsd_tls12_client");
    let opts = ClientOpts { tls12_only: true, ..CLIENT };
    let (report, _, _) = session(&t, &[], &base_env(&t), &opts);
    let info = parse_info(report.info.as_deref().expect("info"));
    assert_eq!(field(&info, "SSL_PROTOCOL"), Some("TLSv1.2"));
    assert!(field(&info, "SSL_CIPHER").expect("cipher").starts_with("TLS_ECDHE_ECDSA_WITH_"));
}

#[test]
fn invalid_control_byte_exits_100() {
    let t = TestDir::new("tlsd_invalid_control_byte_exits_100");
    let mut run = start(&t, &[], "x", &base_env(&t));
    assert_eq!(run.engine_exit(), 100);
    assert!(run.stderr().contains("ucspi-tlsd: fatal: invalid control byte 0x78"), "{}", run.stderr());
}

fn sni_env(t: &TestDir) -> Vec<(String, String)> {
    let mut env = base_env(t);
    env.push(("CERTFILE:mail.test".into(), path(t, "b.pem")));
    env.push(("KEYFILE:mail.test".into(), path(t, "b.key")));
    env.push(("CERTFILE:*.wild.test".into(), path(t, "wild.pem")));
    env.push(("KEYFILE:*.wild.test".into(), path(t, "wild.key")));
    // An exact name beats the wildcard.
    env.push(("CERTFILE:exact.wild.test".into(), path(t, "b.pem")));
    env.push(("KEYFILE:exact.wild.test".into(), path(t, "b.key")));
    env
}

#[test]
fn sni_selects_the_certificate() {
    let t = TestDir::new("tlsd_sni_selects_the_certificate");
    for (sni, want) in [
        (Some("mail.test"), "b.pem"),
        (Some("MAIL.TEST"), "b.pem"),
        (Some("a.wild.test"), "wild.pem"),
        (Some("exact.wild.test"), "b.pem"),
        (Some("x.y.wild.test"), "a.pem"),
        (Some("other.test"), "a.pem"),
        (None, "a.pem"),
    ] {
        let opts = ClientOpts { sni, ..CLIENT };
        let (report, leaf, _) = session(&t, &["--sni"], &sni_env(&t), &opts);
        assert!(leaf == der(&t, want), "{sni:?} should get {want}");
        let info = parse_info(report.info.as_deref().expect("info"));
        assert_eq!(field(&info, "SSL_TLS_SNI_SERVERNAME"), sni.map(|s| s.to_ascii_lowercase()).as_deref());
    }
    // Level 0 ignores the named pairs.
    let (_, leaf, _) = session(&t, &[], &sni_env(&t), &CLIENT);
    assert!(leaf == der(&t, "a.pem"));
}

#[test]
fn mandatory_sni() {
    let t = TestDir::new("tlsd_mandatory_sni");
    // The default pair is not needed, and not used.
    let env: Vec<_> = sni_env(&t).into_iter().filter(|(k, _)| k.contains(':')).collect();
    let (_, leaf, _) = session(&t, &["--mandatory-sni"], &env, &ClientOpts { sni: Some("b.wild.test"), ..CLIENT });
    assert!(leaf == der(&t, "wild.pem"));
    for sni in [Some("other.test"), None] {
        let (code, run) = failed_handshake(&t, &["-k2"], &sni_env(&t), &ClientOpts { sni, ..CLIENT });
        assert_eq!(code, 98, "{sni:?}");
        assert!(run.stderr().contains("ucspi-tlsd: fatal: TLS handshake failed: "), "{}", run.stderr());
    }
}

fn ca_env(t: &TestDir, var: &str) -> Vec<(String, String)> {
    let mut env = base_env(t);
    match var {
        "CAFILE" => env.push(("CAFILE".into(), path(t, "ca.pem"))),
        _ => {
            let dir = t.join("cadir-with-readme");
            let _ = std::fs::create_dir(&dir);
            let _ = std::fs::copy(t.certs().ca(), dir.join("ca.pem"));
            let _ = std::fs::write(dir.join("README"), "not a certificate\n");
            env.push(("CADIR".into(), dir.to_str().expect("utf8").to_owned()));
        }
    }
    env
}

#[test]
fn optional_client_certificate() {
    let t = TestDir::new("tlsd_optional_client_certificate");
    // None sent: fine, the fields are unset.
    let (report, _, _) = session(&t, &["-Y"], &ca_env(&t, "CAFILE"), &CLIENT);
    let info = parse_info(report.info.as_deref().expect("info"));
    assert_eq!(field(&info, "SSL_PEER_CERT_HASH"), None);
    // One sent: hash and subject.
    let opts = ClientOpts { cert: Some("client"), ..CLIENT };
    for var in ["CAFILE", "CADIR"] {
        let (report, _, _) = session(&t, &["-Y"], &ca_env(&t, var), &opts);
        let info = parse_info(report.info.as_deref().expect("info"));
        let want_hash = chainmail_tls::certificate_hash(&der(&t, "client.pem"));
        assert_eq!(field(&info, "SSL_PEER_CERT_HASH"), Some(want_hash.as_str()));
        assert_eq!(field(&info, "SSL_PEER_CERT_SUBJECT"), Some("CN=client.test,O=Test"));
    }
    // An untrusted one fails even when optional.
    let (code, _) =
        failed_handshake(&t, &["-Y"], &ca_env(&t, "CAFILE"), &ClientOpts { cert: Some("rogue-client"), ..CLIENT });
    assert_eq!(code, 98);
}

#[test]
fn mandatory_client_certificate() {
    let t = TestDir::new("tlsd_mandatory_client_certificate");
    let (report, _, _) = session(&t, &["-y"], &ca_env(&t, "CADIR"), &ClientOpts { cert: Some("client"), ..CLIENT });
    let info = parse_info(report.info.as_deref().expect("info"));
    assert_eq!(field(&info, "SSL_PEER_CERT_SUBJECT"), Some("CN=client.test,O=Test"));
    for cert in [None, Some("rogue-client"), Some("expired")] {
        let (code, run) = failed_handshake(&t, &["-y"], &ca_env(&t, "CAFILE"), &ClientOpts { cert, ..CLIENT });
        assert_eq!(code, 98, "{cert:?}: {}", run.stderr());
    }
}

#[test]
fn handshake_timeout() {
    let t = TestDir::new("tlsd_handshake_timeout");
    let mut run = start(&t, &["-K", "300"], "hold", &base_env(&t));
    let _net = run.net(); // the peer sends nothing
    let (code, took) = run.engine_exit_and_time();
    assert_eq!(code, 98);
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(1300), "{took:?}");
    assert!(run.stderr().contains("ucspi-tlsd: fatal: TLS handshake failed: timed out"), "{}", run.stderr());
}

#[test]
fn environment_cleaning() {
    let t = TestDir::new("tlsd_environment_cleaning");
    let mut env = sni_env(&t);
    env.push(("CAFILE".into(), path(&t, "ca.pem")));
    env.push(("CADIR".into(), t.certs().dir().to_str().expect("utf8").to_owned()));
    env.push(("TLS_UID".into(), "0".into()));
    env.push(("TLS_GID".into(), "0".into()));
    env.push(("CAT".into(), "meow".into()));
    let (report, _, _) = session(&t, &[], &env, &CLIENT);
    let vars = |r: &Report| {
        let mut names: Vec<String> = r
            .env
            .trim_matches(|c| c == '{' || c == '}')
            .split(", ")
            .filter_map(|kv| kv.split_once(": ").map(|(k, _)| k.trim_matches('"').to_owned()))
            .collect();
        names.sort();
        names
    };
    assert_eq!(vars(&report), ["CAT", "SSLCTLFD", "SSLREADFD", "SSLWRITEFD"]);
    let (report, _, _) = session(&t, &["-Z"], &env, &CLIENT);
    let kept = vars(&report);
    for name in
        ["CADIR", "CAFILE", "CERTFILE", "KEYFILE", "CERTFILE:mail.test", "KEYFILE:*.wild.test", "TLS_UID", "TLS_GID"]
    {
        assert!(kept.iter().any(|k| k == name), "{name} kept with -Z: {kept:?}");
    }
    let (report, _, _) = session(&t, &["-Z", "-z"], &env, &CLIENT);
    assert_eq!(vars(&report), ["CAT", "SSLCTLFD", "SSLREADFD", "SSLWRITEFD"]);
}

#[test]
fn privileges_are_dropped_after_loading_keys() {
    let t = TestDir::new("tlsd_privileges_are_dropped_after_loading_keys");
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("not root: skipping the privilege test");
        return;
    }
    // The key is readable by root only; the engine reads it, then drops.
    let key = t.certs().dir().join("root-only.key");
    std::fs::copy(t.certs().dir().join("a.key"), &key).expect("copy");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let env = vec![
        ("CERTFILE".to_owned(), path(&t, "a.pem")),
        ("KEYFILE".to_owned(), key.to_str().expect("utf8").to_owned()),
        ("TLS_UID".to_owned(), "65534".to_owned()),
        ("TLS_GID".to_owned(), "65533".to_owned()),
    ];
    let (report, _, _) = session(&t, &[], &env, &CLIENT);
    assert_eq!(report.engine_ids, (65534, 65533));
    assert!(!report.env.contains("TLS_UID"));
    // Without the variables, the engine stays what it was.
    let (report, _, _) = session(&t, &[], &base_env(&t), &CLIENT);
    assert_eq!(report.engine_ids, (0, 0));
}

#[test]
fn close_notify_with_capital_s() {
    let t = TestDir::new("tlsd_close_notify_with_capital_s");
    let mut run = start(&t, &["-S"], "y", &base_env(&t));
    let mut tls = Tls::connect(&t, run.net(), &CLIENT).expect("handshake");
    tls.report();
    tls.echo(b"QUIT\r\n");
    assert!(tls.close(), "-S: the server's EOF comes with close_notify");
    assert_eq!(run.engine_exit(), 0);
}

#[test]
fn enforce_close_notify() {
    let t = TestDir::new("tlsd_enforce_close_notify");
    // -J: the client just closes the socket.
    let mut run = start(&t, &["-J"], "y", &base_env(&t));
    let mut tls = Tls::connect(&t, run.net(), &CLIENT).expect("handshake");
    tls.report();
    tls.stream.sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(run.engine_exit(), 98);
    assert!(run.stderr().contains("without close_notify"), "{}", run.stderr());
    // -j: the same is a normal end.
    let mut run = start(&t, &[], "y", &base_env(&t));
    let mut tls = Tls::connect(&t, run.net(), &CLIENT).expect("handshake");
    tls.report();
    tls.stream.sock.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(run.engine_exit(), 0);
    assert_eq!(run.stderr(), "");
}

#[test]
fn missing_key_material_exits_96_before_forking() {
    let t = TestDir::new("tlsd_missing_key_material_exits_96_before_forking");
    let mut run = start(&t, &[], "Y", &[]);
    assert_eq!(run.wait_app(), 96);
    assert!(run.stderr().contains("ucspi-tlsd: fatal: CERTFILE is not set"), "{}", run.stderr());
    assert!(!run.result.exists(), "prog never ran");

    let mut run = start(&t, &["-y"], "Y", &base_env(&t));
    assert_eq!(run.wait_app(), 96);
    assert!(run.stderr().contains("CAFILE or CADIR"), "{}", run.stderr());

    let mut run = start(&t, &["--mandatory-sni"], "Y", &base_env(&t));
    assert_eq!(run.wait_app(), 96);
}

#[test]
fn unreadable_key_material_exits_96_in_the_engine() {
    let t = TestDir::new("tlsd_unreadable_key_material_exits_96_in_the_engine");
    let env = vec![("CERTFILE".to_owned(), path(&t, "nonexistent.pem")), ("KEYFILE".to_owned(), path(&t, "a.key"))];
    let mut run = start(&t, &[], "Y", &env);
    let mut net = run.net();
    assert_eq!(run.engine_exit(), 96);
    assert!(run.stderr().contains("unable to read CERTFILE="), "{}", run.stderr());
    // The client sees the connection close (the application exited).
    let mut buf = Vec::new();
    let _ = net.read_to_end(&mut buf);
    // A key that does not match the certificate.
    let env = vec![("CERTFILE".to_owned(), path(&t, "a.pem")), ("KEYFILE".to_owned(), path(&t, "b.key"))];
    let mut run = start(&t, &[], "Y", &env);
    assert_eq!(run.engine_exit(), 96);
}

#[test]
fn usage_errors_exit_100() {
    for args in [&[][..], &["-q", "prog"], &["-v"], &["-K", "soon", "prog"]] {
        let out = Command::new(bin("ucspi-tlsd"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(100), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("ucspi-tlsd: usage: ucspi-tlsd "), "{err}");
    }
}

#[test]
fn exec_failure_exits_111() {
    let t = TestDir::new("tlsd_exec_failure_exits_111");
    let out = Command::new(bin("ucspi-tlsd"))
        .arg(t.certs().dir().join("no-such-program"))
        .env_clear()
        .envs(base_env(&t))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(111));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ucspi-tlsd: fatal: unable to exec "), "{err}");
}
