//! The whole STARTTLS server chain against real clients and a real MTA:
//! `tcpserver … ucspi-tlsd -- smtpd-starttls-proxy-io -- (exim4 -bs | test-smtpd)`
//! with `swaks` and `openssl s_client`, plus SNI, client certificates and
//! the TLS handshake timeout.

use std::time::{Duration, Instant};

use chainmail_tests::clients::{Brief, s_client, swaks};
use chainmail_tests::exim::Exim;
use chainmail_tests::run::Output;
use chainmail_tests::{Chain, Server, TestDir, TlsClient, TlsVersion, secs};

/// Checks that s_client negotiated TLS and that the SMTP session went on
/// over it: an EHLO reply without STARTTLS, then the 221. (s_client's
/// stdout holds only what came after the handshake.)
fn assert_session_continued(out: &Output, brief: &Brief) {
    let stdout = out.stdout_str();
    assert!(brief.protocol.is_some(), "no TLS session: {}", out.describe());
    assert!(
        stdout.contains("250-test.smtpd\r\n") || stdout.contains("250-test.smtpd\n"),
        "no EHLO reply after TLS: {}",
        out.describe()
    );
    assert!(stdout.contains("221 2.0.0 test.smtpd closing connection"), "no 221 after TLS: {}", out.describe());
    assert!(!stdout.contains("STARTTLS"), "STARTTLS advertised after TLS: {}", out.describe());
}

// ----------------------------------------------------------- delivery

/// swaks' envelope and HELO for a delivery into exim.
const EXIM_ENVELOPE: [&str; 6] = ["-f", "sender@client.test", "-t", "rcpt@exim.test", "--helo", "client.test"];

#[test]
fn swaks_delivers_over_starttls_into_exim() {
    let dir = TestDir::new("swaks_tls_exim");
    let exim = Exim::setup(&dir);
    let server = Chain::new(&dir).smtpd(exim.argv()).start();
    let ca = dir.certs().ca();
    let tls = ["--tls", "--tls-verify", "--tls-ca-path", ca.to_str().expect("utf-8 path"), "--tls-sni", "mx.test"];
    let message = ["--header", "Subject: chainmail starttls delivery", "--body", "chain-tls-token-7431"];
    let out = swaks(&server, &[&tls[..], &EXIM_ENVELOPE, &message].concat());
    assert!(out.success(), "{}\n{}", out.describe(), exim.logs());
    let transcript = out.stdout_str();
    let has = |line: &str| transcript.lines().any(|l| l.trim_start().starts_with(line));
    assert!(has("=== TLS started with cipher"), "swaks did not start TLS:\n{transcript}");
    assert!(has("~> MAIL FROM:<sender@client.test>"), "MAIL was not sent over TLS:\n{transcript}");
    assert!(has("<~  221 "), "no 221 over TLS:\n{transcript}");
    assert!(!has("<~  250-STARTTLS") && !has("<~  250 STARTTLS"), "STARTTLS offered after TLS:\n{transcript}");
    let mbox = exim.wait_delivered("chain-tls-token-7431", secs(30));
    assert!(mbox.contains("Subject: chainmail starttls delivery"), "{mbox}");
    assert!(mbox.contains("Envelope-to: rcpt@exim.test"), "{mbox}");
    server.wait_sessions_gone(secs(30));
    server.assert_stderr_empty();
}

#[test]
fn swaks_delivers_in_plaintext_into_exim_and_the_engine_goes_away() {
    let dir = TestDir::new("swaks_plain_exim");
    let exim = Exim::setup(&dir);
    let server = Chain::new(&dir).smtpd(exim.argv()).start();
    let out = swaks(&server, &[&EXIM_ENVELOPE[..], &["--body", "chain-plain-token-2209"]].concat());
    assert!(out.success(), "{}\n{}", out.describe(), exim.logs());
    let transcript = out.stdout_str();
    let has = |line: &str| transcript.lines().any(|l| l.trim_start().starts_with(line));
    assert!(!has("=== TLS started"), "{transcript}");
    assert!(has("<-  250-STARTTLS") || has("<-  250 STARTTLS"), "STARTTLS not offered:\n{transcript}");
    assert!(has("<-  221 "), "no 221:\n{transcript}");
    exim.wait_delivered("chain-plain-token-2209", secs(30));
    // No TLS engine (nor anything else) of that session may stay behind.
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn declined_tls_engine_exits_at_the_decision() {
    let dir = TestDir::new("engine_exits");
    let server = Chain::new(&dir).start();
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    // Before the decision the engine waits for its orders: it is there.
    let engines: Vec<_> = server.session_processes().into_iter().filter(|p| p.comm == "ucspi-tlsd").collect();
    assert_eq!(
        engines.len(),
        1,
        "expected one ucspi-tlsd engine before the decision: {:?}",
        server.session_processes()
    );
    c.cmd_expect("MAIL FROM:<a@client.test>", 250);
    if let Err(left) = server.wait_no_process_named("ucspi-tlsd", secs(20)) {
        panic!("the TLS engine is still running after TLS was declined: {left:?}");
    }
    c.cmd_expect("RCPT TO:<b@test.smtpd>", 250);
    c.quit();
    server.wait_sessions_gone(secs(20));
}

// ---------------------------------------------------------- s_client

fn s_client_version(flag: &str, expected: &str) {
    let dir = TestDir::new(&format!("s_client{flag}"));
    let server = Chain::new(&dir).start();
    let (out, brief) = s_client(
        &server,
        &dir.certs().ca(),
        &[flag, "-verify_return_error", "-verify_hostname", "mx.test"],
        "EHLO client.test\nQUIT\n",
    );
    assert!(!out.timed_out, "{}", out.describe());
    assert_eq!(brief.protocol.as_deref(), Some(expected), "{}", out.describe());
    assert_eq!(brief.verification.as_deref(), Some("OK"), "{}", out.describe());
    assert_eq!(brief.peer.as_deref(), Some("CN = mx.test"), "{}", out.describe());
    assert_session_continued(&out, &brief);
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn s_client_tls12() {
    s_client_version("-tls1_2", "TLSv1.2");
}

#[test]
fn s_client_tls13() {
    s_client_version("-tls1_3", "TLSv1.3");
}

#[test]
fn rustls_client_gets_the_version_it_asks_for() {
    let dir = TestDir::new("rustls_versions");
    let server = Chain::new(&dir).start();
    for (v, want) in [
        (TlsVersion::Tls12, rustls::ProtocolVersion::TLSv1_2),
        (TlsVersion::Tls13, rustls::ProtocolVersion::TLSv1_3),
        (TlsVersion::Any, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut c = server.connect_greeted();
        c.cmd_expect("EHLO client.test", 250);
        let mut c = c.starttls(&TlsClient::mx(dir.certs(), v));
        assert_eq!(c.tls_version(), Some(want));
        c.cmd_expect("EHLO client.test", 250);
        c.send_mail("a@client.test", "b@test.smtpd", "Subject: v\r\n\r\nbody\r\n");
        c.quit();
    }
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages().len(), 3);
    server.assert_stderr_empty();
}

/// With `-S` the engine ends the TLS session with close_notify when the
/// smtpd closes. (The default, `-s` as in s6-tlsd, only half-closes TCP;
/// OpenSSL 3 clients then report "unexpected eof" and exit 1.)
#[test]
fn tls_sessions_end_with_close_notify_under_s() {
    let dir = TestDir::new("close_notify");
    let server = Chain::new(&dir).tlsd_args(["-S"]).start();
    for v in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let mut c = server.connect_greeted().starttls(&TlsClient::mx(dir.certs(), v));
        c.cmd_expect("EHLO client.test", 250);
        c.cmd_expect("QUIT", 221);
        let (extra, end) = c.read_until_closed(secs(20));
        assert!(extra.is_empty(), "{}", chainmail_tests::show(&extra));
        assert_eq!(
            end,
            chainmail_tests::smtp::ReadEnd::Eof,
            "{v:?}: with -S, when the smtpd closes, the TLS engine must send close_notify"
        );
    }
    // OpenSSL 3 would report a missing close_notify as an error (exit 1).
    let (out, _) = s_client(&server, &dir.certs().ca(), &[], "EHLO client.test\nQUIT\n");
    assert!(out.success(), "{}", out.describe());
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

/// OpenSSL 3 answers a TLS session that ends without close_notify (the
/// default `-s`) with a fatal decode_error alert. That is the client's
/// view of a normal SMTP ending, not an error of the server: the engine
/// must not print it. The smtpd here keeps reading after its 221 (it
/// half-closes), so the engine is certainly still there when the alert
/// comes; with an smtpd that exits at once, whether the engine sees the
/// alert depends on timing.
#[test]
fn openssl_alert_after_a_half_close_is_not_reported() {
    let dir = TestDir::new("alert_after_end");
    let server = Chain::new(&dir).env("TEST_SMTPD_LINGER", "1").start();
    for version in ["-tls1_2", "-tls1_3"] {
        let (out, brief) = s_client(&server, &dir.certs().ca(), &[version], "EHLO client.test\nQUIT\n");
        assert!(!out.timed_out, "{}", out.describe());
        assert_session_continued(&out, &brief);
    }
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

// ------------------------------------------------------------------ SNI

fn sni_chain<'a>(dir: &'a TestDir, sni_opt: &[&str]) -> Chain<'a> {
    let c = dir.certs();
    Chain::new(dir)
        .tlsd_args(sni_opt)
        .env("CERTFILE:a.test", c.a().cert)
        .env("KEYFILE:a.test", c.a().key)
        .env("CERTFILE:b.test", c.b().cert)
        .env("KEYFILE:b.test", c.b().key)
        .env("CERTFILE:*.wild.test", c.wild().cert)
        .env("KEYFILE:*.wild.test", c.wild().key)
}

fn presented_certificate(server: &Server, dir: &TestDir, sni: Option<&str>) -> String {
    let mut args = vec![];
    match sni {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    let (out, brief) = s_client(server, &dir.certs().ca(), &args, "EHLO client.test\nQUIT\n");
    assert!(!out.timed_out, "{}", out.describe());
    assert_session_continued(&out, &brief);
    assert_eq!(brief.verification.as_deref(), Some("OK"), "{}", out.describe());
    brief.peer.unwrap_or_else(|| panic!("no peer certificate: {}", out.describe()))
}

#[test]
fn sni_selects_the_certificate() {
    for opt in [&["-k", "1"][..], &["--sni"][..]] {
        let dir = TestDir::new("sni");
        let server = sni_chain(&dir, opt).start();
        for (sni, cn) in [
            (Some("a.test"), "CN = a.test"),
            (Some("b.test"), "CN = b.test"),
            (Some("host.wild.test"), "CN = *.wild.test"),
            (Some("A.TEST"), "CN = a.test"),
            (Some("unknown.test"), "CN = mx.test"),
            (Some("wild.test"), "CN = mx.test"),
            (None, "CN = mx.test"),
        ] {
            assert_eq!(presented_certificate(&server, &dir, sni), cn, "with {opt:?}, SNI {sni:?}");
        }
        server.wait_sessions_gone(secs(20));
        server.assert_stderr_empty();
    }
}

#[test]
fn sni_with_rustls_verifies_against_the_name() {
    let dir = TestDir::new("sni_rustls");
    let server = sni_chain(&dir, &["-k", "1"]).start();
    for name in ["a.test", "b.test", "x.wild.test", "mx.test"] {
        let tls = TlsClient::new(&dir.certs().ca(), TlsVersion::Any, name, None);
        let mut c = server.connect_greeted().starttls(&tls);
        c.cmd_expect("EHLO client.test", 250);
        c.quit();
    }
    server.assert_stderr_empty();
}

// --------------------------------------------------- client certificates

fn client_cert_chain<'a>(dir: &'a TestDir, opt: &str) -> Chain<'a> {
    Chain::new(dir).tlsd_args([opt]).env("CAFILE", dir.certs().ca())
}

/// Runs s_client with `extra` and says whether the SMTP session went on
/// after the handshake (an EHLO reply and the 221 came).
fn session_with(server: &Server, dir: &TestDir, extra: &[&str]) -> (bool, Output) {
    let (out, brief) = s_client(server, &dir.certs().ca(), extra, "EHLO client.test\nQUIT\n");
    let stdout = out.stdout_str();
    let ok = brief.protocol.is_some() && stdout.contains("250-test.smtpd") && stdout.contains("221 ");
    assert!(!out.timed_out, "{}", out.describe());
    (ok, out)
}

fn cert_args(pair: &chainmail_tests::KeyPair) -> Vec<String> {
    vec![
        "-cert".to_owned(),
        pair.cert.to_string_lossy().into_owned(),
        "-key".to_owned(),
        pair.key.to_string_lossy().into_owned(),
    ]
}

#[test]
fn required_client_certificate() {
    let dir = TestDir::new("client_cert_required");
    let server = client_cert_chain(&dir, "-y").start();
    let c = dir.certs();
    for version in ["-tls1_2", "-tls1_3"] {
        let mut args = cert_args(&c.client());
        args.push(version.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = session_with(&server, &dir, &args);
        assert!(ok, "a valid client certificate must be accepted ({version}): {}", out.describe());

        let (ok, out) = session_with(&server, &dir, &[version]);
        assert!(!ok, "-y without a client certificate must fail ({version}): {}", out.describe());

        for bad in [c.rogue_client(), c.expired()] {
            let mut args = cert_args(&bad);
            args.push(version.to_owned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (ok, out) = session_with(&server, &dir, &args);
            assert!(!ok, "{} must be refused ({version}): {}", bad.cert.display(), out.describe());
        }
    }
    server.wait_sessions_gone(secs(20));
}

#[test]
fn required_client_certificate_with_rustls() {
    let dir = TestDir::new("client_cert_rustls");
    let server = client_cert_chain(&dir, "-y").start();
    let c = dir.certs();
    for v in [TlsVersion::Tls12, TlsVersion::Tls13] {
        let mut s = server.connect_greeted();
        s.cmd_expect("EHLO client.test", 250);
        let mut s = s.starttls(&TlsClient::new(&c.ca(), v, "mx.test", Some(&c.client())));
        s.cmd_expect("EHLO client.test", 250);
        s.send_mail("a@client.test", "b@test.smtpd", "Subject: cert\r\n\r\nbody\r\n");
        s.quit();

        // Without a certificate: TLS 1.2 fails in the handshake, TLS 1.3
        // right after it (the server checks the client's last flight);
        // either way no SMTP reply comes over TLS.
        let mut s = server.connect_greeted();
        s.cmd_expect_line("STARTTLS", "220 2.0.0 Ready to start TLS");
        if let Ok(mut t) = s.tls_handshake(&TlsClient::new(&c.ca(), v, "mx.test", None)) {
            let _ = t.try_send(b"EHLO client.test\r\n");
            let r = t.try_reply();
            assert!(r.is_err(), "{v:?} without a client certificate got a reply: {r:?}");
        }
    }
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages().len(), 2);
}

#[test]
fn optional_client_certificate() {
    let dir = TestDir::new("client_cert_optional");
    let server = client_cert_chain(&dir, "-Y").start();
    let c = dir.certs();
    let (ok, out) = session_with(&server, &dir, &[]);
    assert!(ok, "-Y without a client certificate must work: {}", out.describe());
    let args = cert_args(&c.client());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = session_with(&server, &dir, &args);
    assert!(ok, "-Y with a valid client certificate must work: {}", out.describe());
    let args = cert_args(&c.rogue_client());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = session_with(&server, &dir, &args);
    assert!(!ok, "-Y with a certificate from an unknown CA must fail: {}", out.describe());
    server.wait_sessions_gone(secs(20));
}

#[test]
fn client_certificate_with_cadir() {
    let dir = TestDir::new("client_cert_cadir");
    let server = Chain::new(&dir).tlsd_args(["-y"]).env("CADIR", dir.certs().ca_dir()).start();
    let c = dir.certs();
    let args = cert_args(&c.client());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = session_with(&server, &dir, &args);
    assert!(ok, "a client certificate of the CA in CADIR must be accepted: {}", out.describe());
    let args = cert_args(&c.rogue_client());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = session_with(&server, &dir, &args);
    assert!(!ok, "{}", out.describe());
    server.wait_sessions_gone(secs(20));
}

// ----------------------------------------------------- handshake timeout

#[test]
fn handshake_timeout_closes_the_connection() {
    let dir = TestDir::new("handshake_timeout");
    let server = Chain::new(&dir).tlsd_args(["-K", "500"]).start();
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    c.cmd_expect_line("STARTTLS", "220 2.0.0 Ready to start TLS");
    let start = Instant::now();
    let (extra, end) = c.read_until_closed(secs(15));
    let waited = start.elapsed();
    assert!(end.is_closed(), "no close within 15 s of a silent handshake (got \"{}\")", chainmail_tests::show(&extra));
    assert!(waited >= Duration::from_millis(400), "closed after {waited:?}, before the 500 ms timeout");
    server.wait_sessions_gone(secs(20));
}

#[test]
fn handshake_timeout_does_not_cut_a_session() {
    let dir = TestDir::new("handshake_timeout_session");
    let server = Chain::new(&dir).tlsd_args(["-K", "500"]).start();
    let mut c = server.connect_greeted().starttls(&TlsClient::mx(dir.certs(), TlsVersion::Any));
    c.cmd_expect("EHLO client.test", 250);
    // Idle for longer than -K after the handshake: the session stays.
    match c.try_reply_within(Duration::from_millis(1500)) {
        Err(chainmail_tests::smtp::ReplyError::Ended { end: chainmail_tests::smtp::ReadEnd::Timeout, .. }) => {}
        other => panic!("-K must only limit the handshake: {other:?}"),
    }
    c.cmd_expect("NOOP", 250);
    c.quit();
}

#[test]
fn garbage_instead_of_a_client_hello_closes_the_connection() {
    let dir = TestDir::new("garbage_hello");
    let server = Chain::new(&dir).start();
    let mut c = server.connect_greeted();
    c.cmd_expect_line("STARTTLS", "220 2.0.0 Ready to start TLS");
    c.send(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let (_, end) = c.read_until_closed(secs(15));
    assert!(end.is_closed());
    server.wait_sessions_gone(secs(20));
}

/// An engine idle for a second gives back the code pages its handshake
/// touched (they stay in the page cache), and its session goes on as if
/// nothing happened.
#[test]
fn an_idle_engine_gives_back_its_code_pages_and_keeps_working() {
    let dir = TestDir::new("idle_trim");
    let server = Chain::new(&dir).start();
    let ca = dir.certs().ca();
    let client = TlsClient::new(&ca, TlsVersion::Tls13, "mx.test", None);
    let mut c = server.connect_greeted().starttls(&client);
    c.cmd_expect("EHLO client.test", 250);
    let engine = server
        .session_processes()
        .into_iter()
        .find(|p| p.comm == "ucspi-tlsd")
        .unwrap_or_else(|| panic!("no engine\n{}", server.diagnostics()));
    let pss_file = || -> u64 {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", engine.pid)).expect("smaps_rollup");
        rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss_File:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("Pss_File")
    };
    let before = pss_file();
    let deadline = Instant::now() + secs(10);
    let after = loop {
        let now = pss_file();
        if now * 2 < before {
            break now;
        }
        assert!(Instant::now() < deadline, "still {now} KiB of file pages (from {before} KiB)");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(after < before / 2);
    let r = c.send_mail("a@x.test", "b@y.test", "after the trim\r\n");
    assert_eq!(r.code, 250, "{}", c.transcript_string());
    c.quit();
    assert_eq!(server.messages().len(), 1);
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}
