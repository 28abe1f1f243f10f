//! The SMTP behaviour of smtpd-starttls-proxy-io, through the whole chain
//! (`tcpserver … ucspi-tlsd -- smtpd-starttls-proxy-io -- test-smtpd`),
//! driven by the test client so that every byte on the wire is checked.
//!
//! Replies the proxy makes itself are told apart from test-smtpd's by
//! their text: the proxy answers NOOP with `250 2.0.0 OK`, test-smtpd with
//! `250 2.0.0 Noop ok`.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use chainmail_tests::smtp::{Conn, ReadEnd, ReplyError, TlsStream};
use chainmail_tests::{Chain, Server, Smtp, TestDir, TlsClient, TlsVersion, contains, limit, secs, show};

const LOCAL_NOOP: &str = "250 2.0.0 OK";
const SMTPD_NOOP: &str = "250 2.0.0 Noop ok";
const MAIL_FIRST: &str = "503 5.5.1 MAIL first";
const NOT_RECOGNIZED: &str = "500 5.5.2 Command not recognized";
const BARE_CR_NUL: &str = "500 5.5.2 Syntax error: bare CR or NUL in command";
const TOO_LONG: &str = "500 5.5.2 Line too long";
const STARTTLS_PARAM: &str = "501 5.5.4 STARTTLS takes no parameters";
const MUST_STARTTLS: &str = "530 5.7.0 Must issue a STARTTLS command first";
const PIPELINED_STARTTLS: &str = "554 5.5.1 Commands pipelined after STARTTLS are not allowed; closing connection";
const NO_RESET: &str = "454 4.7.0 TLS not available: the server could not reset";
const TIMEOUT: &str = "421 4.4.2 Timeout; closing connection";
const LOCAL_ERROR: &str = "421 4.3.0 Local server error; closing connection";

/// test-smtpd's EHLO reply lines.
fn smtpd_ehlo(native_starttls: bool) -> Vec<String> {
    let mut v = vec!["250-test.smtpd", "250-PIPELINING"];
    if native_starttls {
        v.push("250-STARTTLS");
    }
    v.extend(["250-8BITMIME", "250 SIZE 100000000"]);
    v.into_iter().map(str::to_owned).collect()
}

/// Checks that `lines` is test-smtpd's EHLO reply with exactly one
/// `STARTTLS` line added (anywhere, with the continuation marks fixed).
fn assert_ehlo_with_one_starttls(r: &chainmail_tests::Reply) {
    assert_eq!(r.code, 250, "{r}");
    assert_eq!(r.count_text("STARTTLS"), 1, "STARTTLS must be advertised exactly once: {r}");
    let without: Vec<&str> = r.texts().into_iter().filter(|t| !t.eq_ignore_ascii_case("STARTTLS")).collect();
    let expected: Vec<String> = smtpd_ehlo(false).iter().map(|l| l[4..].to_owned()).collect();
    assert_eq!(without, expected, "the smtpd's EHLO lines must all pass, in order: {r}");
}

fn tls(dir: &TestDir) -> TlsClient {
    TlsClient::mx(dir.certs(), TlsVersion::Any)
}

/// A test directory, the default chain in it and a client that got the
/// greeting.
fn greeted_default_chain(name: &str) -> (TestDir, Server, Smtp<TcpStream>) {
    let dir = TestDir::new(name);
    let server = Chain::new(&dir).start();
    let c = server.connect_greeted();
    (dir, server, c)
}

/// A greeted session decided for plaintext: HELO sent and answered 250.
fn plaintext_session(server: &Server) -> Smtp<TcpStream> {
    let mut c = server.connect_greeted();
    c.cmd_expect("HELO client.test", 250);
    c
}

/// A greeted session in TLS: STARTTLS done, EHLO sent and answered 250.
fn tls_session(server: &Server, dir: &TestDir) -> Smtp<TlsStream> {
    let mut c = server.connect_greeted().starttls(&tls(dir));
    c.cmd_expect("EHLO client.test", 250);
    c
}

/// Waits for the session processes to end, then returns what test-smtpd
/// read in all sessions.
fn final_log(server: &Server) -> Vec<u8> {
    server.wait_sessions_gone(secs(30));
    server.smtpd_log()
}

fn assert_not_in_log(server: &Server, needle: &[u8]) {
    let log = final_log(server);
    assert!(!contains(&log, needle), "\"{}\" reached the smtpd:\n{}", show(needle), show(&log));
}

// ---------------------------------------------------------------- EHLO

#[test]
fn ehlo_gets_starttls_exactly_once() {
    let dir = TestDir::new("ehlo_once");
    let server = Chain::new(&dir).start();
    let mut c = server.connect();
    c.expect_line("220 test.smtpd ESMTP");
    let r = c.cmd("EHLO client.test");
    assert_ehlo_with_one_starttls(&r);
    // Every EHLO before the decision gets it, once.
    let r = c.cmd("ehlo client.test");
    assert_ehlo_with_one_starttls(&r);
    c.quit();
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn ehlo_of_a_server_with_native_starttls_is_not_doubled() {
    let dir = TestDir::new("ehlo_native");
    let server = Chain::new(&dir).env("TEST_SMTPD_STARTTLS", "1").start();
    let mut c = server.connect_greeted();
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.lines, smtpd_ehlo(true), "the reply must pass unchanged");
    // And the STARTTLS the client then sends is the proxy's business.
    let mut c = c.starttls(&tls(&dir));
    assert_eq!(c.cmd("EHLO client.test").lines, smtpd_ehlo(true));
    c.quit();
    server.assert_stderr_empty();
}

#[test]
fn failed_ehlo_gets_no_starttls() {
    let dir = TestDir::new("ehlo_failed");
    let server = Chain::new(&dir).env("TEST_SMTPD_REJECT", "EHLO").start();
    let mut c = server.connect_greeted();
    c.cmd_expect_line("EHLO client.test", "550 5.7.1 EHLO rejected by test-smtpd");
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.quit();

    let dir = TestDir::new("ehlo_failed_multiline");
    let server = Chain::new(&dir).env("TEST_SMTPD_REJECT", "EHLO").env("TEST_SMTPD_MULTILINE", "1").start();
    let mut c = server.connect_greeted();
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.code, 550, "{r}");
    assert_eq!(r.count_text("STARTTLS"), 0, "no STARTTLS in a failed EHLO reply: {r}");
    assert_eq!(r.lines.len(), 3, "{r}");
    c.quit();
}

#[test]
fn ehlo_after_tls_passes_unchanged() {
    let (dir, server, mut c) = greeted_default_chain("ehlo_after_tls");
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    let mut c = c.starttls(&tls(&dir));
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.lines, smtpd_ehlo(false), "after TLS the relay is transparent");
    // So is everything else: a second STARTTLS and NOOP go to the smtpd.
    c.cmd_expect_line("STARTTLS", "502 5.5.2 Command not implemented");
    c.cmd_expect_line("NOOP", SMTPD_NOOP);
    c.quit();
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn client_speaking_before_the_greeting() {
    let dir = TestDir::new("early_talker");
    let server = Chain::new(&dir).start();
    let mut c = server.connect();
    c.send(b"EHLO client.test\r\n");
    c.expect_line("220 test.smtpd ESMTP");
    assert_ehlo_with_one_starttls(&c.reply());
    c.quit();
    server.assert_stderr_empty();
}

#[test]
fn commands_arriving_byte_by_byte() {
    let (dir, server, mut c) = greeted_default_chain("byte_by_byte");
    let trickle = |c: &mut Smtp<TcpStream>, bytes: &[u8]| {
        for b in bytes {
            c.send(std::slice::from_ref(b));
        }
    };
    trickle(&mut c, b"EHLO client.test\r\n");
    assert_ehlo_with_one_starttls(&c.reply());
    trickle(&mut c, b"NOOP\r\n");
    c.expect_line(LOCAL_NOOP);
    trickle(&mut c, b"VRFY x\r\n");
    c.expect_line("252 2.5.2 Cannot VRFY user");
    // A CR at the end of one read and its LF in the next is no bare CR, and
    // nothing follows STARTTLS in the read that ends it.
    trickle(&mut c, b"starttls\r\n");
    c.expect_line("220 2.0.0 Ready to start TLS");
    let mut c = match c.tls_handshake(&tls(&dir)) {
        Ok(c) => c,
        Err((e, t)) => panic!("{e}\n{t}"),
    };
    c.cmd_expect("EHLO client.test", 250);
    c.quit();
    let log = final_log(&server);
    assert!(contains(&log, b"EHLO client.test\r\nVRFY x\r\nRSET\r\nEHLO client.test\r\nQUIT\r\n"), "{}", show(&log));
    server.assert_stderr_empty();
}

// ---------------------------------------------------- before the decision

#[test]
fn commands_answered_by_the_proxy_before_the_decision() {
    let (_dir, server, mut c) = greeted_default_chain("local_answers");
    for (cmd, reply) in [
        ("NOOP", LOCAL_NOOP),
        ("noop", LOCAL_NOOP),
        ("NOOP with an argument", LOCAL_NOOP),
        ("RCPT TO:<x@y.test>", MAIL_FIRST),
        ("DATA", MAIL_FIRST),
        ("BDAT 10 LAST", MAIL_FIRST),
        ("rcpt to:<x@y.test>", MAIL_FIRST),
        ("XYZZY", NOT_RECOGNIZED),
        ("FROBNICATE now", NOT_RECOGNIZED),
        ("STARTTLS x", STARTTLS_PARAM),
        ("NOOP", LOCAL_NOOP),
    ] {
        c.cmd_expect_line(cmd, reply);
    }
    c.quit();
    let log = final_log(&server);
    for word in [&b"NOOP"[..], b"noop", b"RCPT", b"rcpt", b"DATA", b"BDAT", b"XYZZY", b"FROBNICATE", b"STARTTLS"] {
        assert!(
            !contains(&log, word),
            "\"{}\" must be answered by the proxy, but reached the smtpd:\n{}",
            show(word),
            show(&log)
        );
    }
    server.assert_stderr_empty();
}

#[test]
fn commands_forwarded_before_the_decision() {
    let (dir, server, mut c) = greeted_default_chain("forwarded");
    c.cmd_expect("EHLO client.test", 250);
    c.cmd_expect_line("RSET", "250 2.0.0 Reset ok");
    c.cmd_expect_line("VRFY someone", "252 2.5.2 Cannot VRFY user");
    c.cmd_expect_line("EXPN list", "502 5.5.2 Command not implemented");
    let r = c.cmd("HELP");
    assert_eq!(r.lines, ["214-test-smtpd commands:", "214-HELO EHLO MAIL RCPT DATA", "214 RSET NOOP VRFY HELP QUIT"]);
    // Still undecided: NOOP is answered locally, STARTTLS still works.
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    let mut c = c.starttls(&tls(&dir));
    c.cmd_expect("EHLO client.test", 250);
    c.quit();
    let log = final_log(&server);
    for line in [&b"EHLO client.test\r\n"[..], b"RSET\r\n", b"VRFY someone\r\n", b"EXPN list\r\n", b"HELP\r\n"] {
        assert!(contains(&log, line), "\"{}\" was not forwarded:\n{}", show(line), show(&log));
    }
    server.assert_stderr_empty();
}

/// After HELO, MAIL or AUTH the session is a plaintext relay: everything
/// goes to the smtpd, STARTTLS included.
fn assert_plaintext_relay(c: &mut Smtp<TcpStream>) {
    c.cmd_expect_line("NOOP", SMTPD_NOOP);
    c.cmd_expect_line("STARTTLS", "502 5.5.2 Command not implemented");
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.lines, smtpd_ehlo(false), "no STARTTLS after TLS was declined");
}

#[test]
fn helo_declines_tls() {
    let (_dir, server, mut c) = greeted_default_chain("helo_declines");
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.cmd_expect_line("HELO client.test", "250 test.smtpd");
    assert_plaintext_relay(&mut c);
    c.quit();
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn mail_declines_tls_and_delivers() {
    let (_dir, server, mut c) = greeted_default_chain("mail_declines");
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.cmd_expect_line("MAIL FROM:<a@client.test>", "250 2.1.0 Sender ok");
    c.cmd_expect_line("RCPT TO:<b@test.smtpd>", "250 2.1.5 Recipient ok");
    c.cmd_expect("DATA", 354);
    c.send(b"Subject: plain\r\n\r\n..dot\r\n");
    c.cmd_expect(".", 250);
    assert_plaintext_relay(&mut c);
    c.quit();
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages(), vec![b"Subject: plain\r\n\r\n.dot\r\n".to_vec()]);
    server.assert_stderr_empty();
}

#[test]
fn auth_declines_tls() {
    let (_dir, server, mut c) = greeted_default_chain("auth_declines");
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.cmd_expect_line("AUTH PLAIN AHVzZXIAcGFzcw==", "502 5.5.2 Command not implemented");
    assert_plaintext_relay(&mut c);
    c.quit();
    let log = final_log(&server);
    assert!(contains(&log, b"AUTH PLAIN AHVzZXIAcGFzcw==\r\n"), "{}", show(&log));
    server.assert_stderr_empty();
}

#[test]
fn require_tls_refuses_mail_and_auth_until_starttls() {
    let dir = TestDir::new("require_tls");
    let server = Chain::new(&dir).proxy_args(["-R"]).start();
    let mut c = server.connect_greeted();
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    c.cmd_expect_line("MAIL FROM:<early@client.test>", MUST_STARTTLS);
    c.cmd_expect_line("AUTH PLAIN AGVhcmx5AHB3", MUST_STARTTLS);
    // HELO is forwarded but does not end the undecided phase.
    c.cmd_expect_line("HELO client.test", "250 test.smtpd");
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.cmd_expect_line("MAIL FROM:<early2@client.test>", MUST_STARTTLS);
    let mut c = c.starttls(&tls(&dir));
    c.cmd_expect("EHLO client.test", 250);
    c.send_mail("late@client.test", "b@test.smtpd", "Subject: required\r\n\r\nbody\r\n");
    c.quit();
    let log = final_log(&server);
    assert!(!contains(&log, b"early"), "a refused MAIL reached the smtpd:\n{}", show(&log));
    assert!(!contains(&log, b"AUTH"), "a refused AUTH reached the smtpd:\n{}", show(&log));
    assert!(contains(&log, b"HELO client.test\r\n"), "{}", show(&log));
    assert_eq!(server.messages().len(), 1);
    server.assert_stderr_empty();
}

#[test]
fn bare_cr_or_nul_in_a_command_is_refused() {
    let (_dir, server, mut c) = greeted_default_chain("bare_cr_nul");
    for bad in
        [&b"VRFY a\rb\r\n"[..], b"VRFY a\0b\r\n", b"NOOP\r\r\n", b"\0\r\n", b"HELO x\ry\r\n", b"MAIL FROM:<a\0@b>\r\n"]
    {
        c.send(bad);
        c.expect_line(BARE_CR_NUL);
    }
    // The session goes on, still undecided.
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.quit();
    let log = final_log(&server);
    for bad in [&b"a\rb"[..], b"a\0b", b"x\ry", b"a\0@"] {
        assert!(!contains(&log, bad), "\"{}\" reached the smtpd:\n{}", show(bad), show(&log));
    }
    server.assert_stderr_empty();
}

#[test]
fn long_lines_accepted_up_to_4k_and_refused_at_20k() {
    let (_dir, server, mut c) = greeted_default_chain("long_lines");
    // Exactly 4096 bytes with the CRLF.
    let mut line = b"VRFY ".to_vec();
    line.resize(4094, b'a');
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), 4096);
    c.send(&line);
    c.expect_line("252 2.5.2 Cannot VRFY user");

    let mut long = b"VRFY ".to_vec();
    long.resize(20 * 1024, b'b');
    long.extend_from_slice(b"\r\n");
    c.send(&long);
    c.expect_line(TOO_LONG);
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.cmd_expect_line("VRFY after", "252 2.5.2 Cannot VRFY user");
    c.quit();
    let log = final_log(&server);
    assert!(contains(&log, &line), "the 4 KiB line did not reach the smtpd intact:\n{}", show(&log));
    assert!(!contains(&log, &[b'b'; 64]), "part of the refused line reached the smtpd:\n{}", show(&log));
    assert!(contains(&log, b"VRFY after\r\n"));
    server.assert_stderr_empty();
}

#[test]
fn long_lines_after_tls_pass_through() {
    let dir = TestDir::new("long_after_tls");
    let server = Chain::new(&dir).start();
    let mut c = server.connect_greeted().starttls(&tls(&dir));
    let mut line = b"VRFY ".to_vec();
    line.resize(20 * 1024, b'c');
    line.extend_from_slice(b"\r\n");
    c.send(&line);
    c.expect_line("252 2.5.2 Cannot VRFY user");
    c.quit();
    let log = final_log(&server);
    assert!(contains(&log, &line), "after TLS the relay is transparent; the 20 KiB line did not arrive intact");
}

// ------------------------------------------------------------- STARTTLS

#[test]
fn starttls_with_a_parameter_is_refused_then_starttls_works() {
    let (dir, server, mut c) = greeted_default_chain("starttls_param");
    c.cmd_expect("EHLO client.test", 250);
    c.cmd_expect_line("STARTTLS now", STARTTLS_PARAM);
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    let mut c = c.starttls(&tls(&dir));
    c.cmd_expect("EHLO client.test", 250);
    c.send_mail("a@client.test", "b@test.smtpd", "Subject: tls\r\n\r\nbody\r\n");
    c.quit();
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages().len(), 1);
    server.assert_stderr_empty();
}

#[test]
fn starttls_sends_rset_and_does_not_forward_its_reply() {
    let (dir, server, mut c) = greeted_default_chain("starttls_rset");
    c.cmd_expect("EHLO client.test", 250);
    // starttls() checks that exactly the 220 arrives, nothing before or
    // after it (the RSET reply must be swallowed).
    let mut c = c.starttls(&tls(&dir));
    c.cmd_expect_line("NOOP", SMTPD_NOOP);
    c.quit();
    let log = final_log(&server);
    assert!(
        contains(&log, b"EHLO client.test\r\nRSET\r\n"),
        "the proxy must reset the smtpd before TLS:\n{}",
        show(&log)
    );
}

#[test]
fn starttls_when_the_reset_fails_gives_454_and_stays_in_plaintext() {
    let dir = TestDir::new("rset_fails");
    let server = Chain::new(&dir).env("TEST_SMTPD_RSET_FAIL", "1").start();
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    c.cmd_expect_line("STARTTLS", NO_RESET);
    // Still undecided.
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    c.send_mail("a@client.test", "b@test.smtpd", "Subject: no tls\r\n\r\nbody\r\n");
    c.quit();
    let log = final_log(&server);
    assert!(contains(&log, b"RSET\r\n"), "{}", show(&log));
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn starttls_at_the_end_of_a_pipelined_group_is_fine() {
    let (dir, server, mut c) = greeted_default_chain("starttls_last");
    c.send(b"EHLO client.test\r\nSTARTTLS\r\n");
    assert_ehlo_with_one_starttls(&c.reply());
    c.expect_line("220 2.0.0 Ready to start TLS");
    let mut c = match c.tls_handshake(&tls(&dir)) {
        Ok(c) => c,
        Err((e, t)) => panic!("{e}\n{t}"),
    };
    c.cmd_expect("EHLO client.test", 250);
    c.quit();
    server.assert_stderr_empty();
}

#[test]
fn injection_pipelined_after_starttls_is_refused() {
    for (name, prefix) in [("injection_direct", &b""[..]), ("injection_after_ehlo", b"EHLO client.test\r\n")] {
        let dir = TestDir::new(name);
        let server = Chain::new(&dir).start();
        let mut c = server.connect_greeted();
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(b"STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@test.smtpd>\r\n");
        c.send(&bytes);
        if !prefix.is_empty() {
            c.expect(250);
        }
        c.expect_line(PIPELINED_STARTTLS);
        c.expect_closed(secs(20));
        assert_not_in_log(&server, b"evil");
        assert_not_in_log(&server, b"victim");
    }
}

#[test]
fn injection_in_plaintext_after_the_220_never_reaches_the_smtpd() {
    let (_dir, server, mut c) = greeted_default_chain("injection_after_220");
    c.cmd_expect("EHLO client.test", 250);
    c.cmd_expect_line("STARTTLS", "220 2.0.0 Ready to start TLS");
    c.send(b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@test.smtpd>\r\nDATA\r\n");
    let (extra, end) = c.read_until_closed(secs(20));
    assert!(end.is_closed(), "the handshake must fail and the connection close");
    assert!(
        !extra.first().is_some_and(u8::is_ascii_digit),
        "no SMTP reply may follow plaintext after the 220: \"{}\"",
        show(&extra)
    );
    assert_not_in_log(&server, b"evil");
    assert_not_in_log(&server, b"victim");
}

// ------------------------------------------------------------ pipelining

#[test]
fn pipelined_rset_then_mail_gets_both_replies_promptly() {
    let (_dir, server, mut c) = greeted_default_chain("pipelined_rset_mail");
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    let start = Instant::now();
    c.send(b"RSET\r\nMAIL FROM:<a@b>\r\n");
    let first = c.try_reply_within(limit(Duration::from_secs(2)));
    let second = c.try_reply_within(limit(Duration::from_secs(2)).saturating_sub(start.elapsed()));
    let (first, second) = match (first, second) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => panic!("both replies must come within 2 s: {a:?} {b:?}\n{}", c.transcript_string()),
    };
    assert_eq!(first.lines, ["250 2.0.0 Reset ok"]);
    assert_eq!(second.lines, ["250 2.1.0 Sender ok"]);
    c.cmd_expect_line("RCPT TO:<c@d>", "250 2.1.5 Recipient ok");
    c.quit();
    server.assert_stderr_empty();
}

#[test]
fn long_pipelined_group_gets_every_reply_in_order() {
    let (_dir, server, mut c) = greeted_default_chain("pipelined_group");
    let group: &[(&str, &str)] = &[
        ("EHLO client.test", "EHLO"),
        ("NOOP", LOCAL_NOOP),
        ("XYZZY", NOT_RECOGNIZED),
        ("RSET", "250 2.0.0 Reset ok"),
        ("VRFY u", "252 2.5.2 Cannot VRFY user"),
        ("NOOP", LOCAL_NOOP),
        ("HELP", "214"),
        ("RCPT TO:<x@y>", MAIL_FIRST),
        ("DATA", MAIL_FIRST),
        ("STARTTLS please", STARTTLS_PARAM),
        ("EHLO again.test", "EHLO"),
        ("RSET", "250 2.0.0 Reset ok"),
        // The decision: from here on test-smtpd answers everything.
        ("MAIL FROM:<a@client.test>", "250 2.1.0 Sender ok"),
        ("RCPT TO:<b@test.smtpd>", "250 2.1.5 Recipient ok"),
        ("NOOP", SMTPD_NOOP),
        ("XYZZY", "502 5.5.2 Command not implemented"),
        ("RCPT TO:<c@test.smtpd>", "250 2.1.5 Recipient ok"),
        ("DATA", "354 End data with <CR><LF>.<CR><LF>"),
    ];
    let mut bytes = Vec::new();
    for (cmd, _) in group {
        bytes.extend_from_slice(cmd.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    let start = Instant::now();
    c.send(&bytes);
    for (i, (cmd, want)) in group.iter().enumerate() {
        let r = c.reply();
        match *want {
            "EHLO" => assert_ehlo_with_one_starttls(&r),
            "214" => assert_eq!(r.code, 214, "reply {i} to {cmd}: {r}"),
            line => assert_eq!(r.lines, [line], "reply {i} to {cmd}\n{}", c.transcript_string()),
        }
    }
    let took = start.elapsed();
    assert!(took <= limit(Duration::from_secs(5)), "the {} replies took {took:?}", group.len());
    c.send(b"Subject: group\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n");
    c.expect(250);
    c.expect_line(SMTPD_NOOP);
    c.expect(221);
    c.expect_closed(secs(20));
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages(), vec![b"Subject: group\r\n\r\nbody\r\n".to_vec()]);
    server.assert_stderr_empty();
}

// -------------------------------------------------------- multi-line

#[test]
fn multiline_replies_before_and_after_tls() {
    let dir = TestDir::new("multiline_tls");
    let server = Chain::new(&dir).env("TEST_SMTPD_MULTILINE", "1").start();
    let mut c = server.connect_greeted();
    assert_ehlo_with_one_starttls(&c.cmd("EHLO client.test"));
    for (cmd, code) in [("RSET", 250), ("VRFY u", 252), ("EXPN l", 502)] {
        let r = c.cmd(cmd);
        assert_eq!((r.code, r.lines.len()), (code, 3), "{cmd}: {r}");
    }
    c.cmd_expect_line("NOOP", LOCAL_NOOP);
    // The proxy's RSET gets a 3-line reply, which it must swallow whole.
    let mut c = c.starttls(&tls(&dir));
    let r = c.cmd("EHLO client.test");
    assert_eq!(r.lines, smtpd_ehlo(false));
    for (cmd, code) in [("MAIL FROM:<a@client.test>", 250), ("RCPT TO:<b@test.smtpd>", 250), ("DATA", 354)] {
        let r = c.cmd(cmd);
        assert_eq!((r.code, r.lines.len()), (code, 3), "{cmd}: {r}");
    }
    c.send(b"Subject: ml\r\n\r\nbody\r\n");
    let r = c.cmd(".");
    assert_eq!((r.code, r.lines.len()), (250, 3), "{r}");
    let r = c.cmd("QUIT");
    assert_eq!((r.code, r.lines.len()), (221, 3), "{r}");
    c.expect_closed(secs(20));
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages().len(), 1);
    server.assert_stderr_empty();
}

#[test]
fn multiline_replies_in_plaintext_and_pipelined() {
    let dir = TestDir::new("multiline_plain");
    let server = Chain::new(&dir).env("TEST_SMTPD_MULTILINE", "1").start();
    let mut c = server.connect_greeted();
    // Pipelined before the decision.
    c.send(b"EHLO client.test\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nEHLO again\r\nRSET\r\n");
    assert_ehlo_with_one_starttls(&c.reply());
    assert_eq!(c.reply().lines.len(), 3);
    assert_eq!(c.expect(252).lines.len(), 3);
    assert_eq!(c.expect(214).lines.len(), 3);
    c.expect_line(LOCAL_NOOP);
    assert_ehlo_with_one_starttls(&c.reply());
    assert_eq!(c.expect(250).lines.len(), 3);
    // The decision and the rest, pipelined too.
    c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@test.smtpd>\r\nVRFY y\r\nDATA\r\n");
    for code in [250, 250, 252, 354] {
        assert_eq!(c.expect(code).lines.len(), 3);
    }
    c.send(b"Subject: ml\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(c.expect(250).lines.len(), 3);
    assert_eq!(c.expect(221).lines.len(), 3);
    c.expect_closed(secs(20));
    server.wait_sessions_gone(secs(20));
    assert_eq!(server.messages().len(), 1);
    server.assert_stderr_empty();
}

// ------------------------------------------------------- smtpd errors

#[test]
fn malformed_reply_from_the_smtpd_gives_421() {
    for cmd in ["VRFY", "EHLO", "RSET"] {
        let dir = TestDir::new(&format!("malformed_{cmd}"));
        let server = Chain::new(&dir).env("TEST_SMTPD_MALFORMED", cmd).start();
        let mut c = server.connect_greeted();
        c.cmd_expect_line(&format!("{cmd} x"), LOCAL_ERROR);
        c.expect_closed(secs(20));
    }
}

#[test]
fn malformed_greeting_gives_421() {
    let dir = TestDir::new("malformed_greeting");
    let server = Chain::new(&dir).env("TEST_SMTPD_MALFORMED", "greeting").start();
    let mut c = server.connect();
    c.expect_line(LOCAL_ERROR);
    c.expect_closed(secs(20));
}

#[test]
fn malformed_reply_to_the_proxys_rset_gives_421() {
    let dir = TestDir::new("malformed_rset_starttls");
    let server = Chain::new(&dir).env("TEST_SMTPD_MALFORMED", "RSET").start();
    let mut c = server.connect_greeted();
    c.cmd_expect_line("STARTTLS", LOCAL_ERROR);
    c.expect_closed(secs(20));
}

// ------------------------------------------------------------- timeouts

#[test]
fn idle_timeout_before_the_decision() {
    let dir = TestDir::new("idle_before");
    let server = Chain::new(&dir).proxy_args(["-t", "1"]).start();
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    let start = Instant::now();
    let r = c.try_reply_within(secs(15));
    let waited = start.elapsed();
    match r {
        Ok(r) => assert_eq!(r.lines, [TIMEOUT]),
        Err(e) => panic!("no 421 within 15 s: {e}\n{}", c.transcript_string()),
    }
    assert!(waited >= Duration::from_millis(800), "the timeout fired after {waited:?}, before 1 s");
    c.expect_closed(secs(10));
    server.wait_sessions_gone(secs(20));
}

#[test]
fn idle_timeout_before_the_decision_does_not_apply_after_it() {
    let dir = TestDir::new("idle_before_only");
    let server = Chain::new(&dir).proxy_args(["-t", "1", "-T", "60"]).start();
    let mut c = server.connect_greeted();
    c.cmd_expect_line("HELO client.test", "250 test.smtpd");
    match c.try_reply_within(Duration::from_millis(2500)) {
        Err(ReplyError::Ended { end: ReadEnd::Timeout, partial }) if partial.is_empty() => {}
        other => panic!("after the decision -t must not apply: {other:?}"),
    }
    c.cmd_expect_line("NOOP", SMTPD_NOOP);
    c.quit();
}

#[test]
fn idle_timeout_after_the_decision_plaintext() {
    let dir = TestDir::new("idle_after_plain");
    let server = Chain::new(&dir).proxy_args(["-T", "1"]).start();
    let mut c = server.connect_greeted();
    c.cmd_expect_line("HELO client.test", "250 test.smtpd");
    let start = Instant::now();
    let (extra, end) = c.read_until_closed(secs(15));
    let waited = start.elapsed();
    assert!(end.is_closed(), "the relay did not time out within 15 s");
    assert!(waited >= Duration::from_millis(800), "the relay timed out after {waited:?}, before 1 s");
    assert!(extra.is_empty() || extra.starts_with(b"421"), "\"{}\"", show(&extra));
    server.wait_sessions_gone(secs(20));
}

#[test]
fn idle_timeout_after_the_decision_tls() {
    // With the handover the TLS engine keeps the proxy's -T; without it,
    // the proxy itself does.
    for handover in [true, false] {
        // 2 s rather than 1: the handshake and the first EHLO happen after
        // the decision, under the same timer, and must fit in it on a
        // loaded machine.
        let dir = TestDir::new("idle_after_tls");
        let chain = Chain::new(&dir).proxy_args(["-T", "2"]);
        let server = if handover { chain } else { chain.without_handover() }.start();
        let mut c = tls_session(&server, &dir);
        let start = Instant::now();
        let (_, end) = c.read_until_closed(secs(15));
        let waited = start.elapsed();
        assert!(end.is_closed(), "the relay did not time out within 15 s (handover {handover})");
        assert!(waited >= Duration::from_millis(1800), "the relay timed out after {waited:?}, before 2 s");
        server.wait_sessions_gone(secs(20));
    }
}

/// After STARTTLS the proxy hands the smtpd's pipes to the TLS engine and
/// leaves: the session is the engine and the smtpd.
#[test]
fn after_tls_the_proxy_hands_over_and_leaves() {
    let dir = TestDir::new("handover");
    let server = Chain::new(&dir).start();
    let mut c = tls_session(&server, &dir);
    let deadline = Instant::now() + secs(10);
    let names = loop {
        let names: Vec<String> = server.session_processes().into_iter().map(|p| p.comm).collect();
        if !names.iter().any(|n| n.starts_with("smtpd-starttls")) {
            break names;
        }
        assert!(Instant::now() < deadline, "the proxy is still there: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(names.iter().any(|n| n == "ucspi-tlsd") && names.iter().any(|n| n == "test-smtpd"), "{names:?}");
    let r = c.send_mail("a@x.test", "b@y.test", "through the engine alone\r\n");
    assert_eq!(r.code, 250, "{}", c.transcript_string());
    c.quit();
    assert_eq!(server.messages().len(), 1);
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

/// Under a UCSPI-TLS server without handovers (s6-ucspitlsd) the proxy
/// relays the TLS session itself, as before.
#[test]
fn tls_session_without_handover() {
    let dir = TestDir::new("no_handover");
    let server = Chain::new(&dir).without_handover().start();
    let mut c = server.connect_greeted().starttls(&tls(&dir));
    let ehlo = c.cmd_expect("EHLO client.test", 250);
    assert!(!ehlo.has_text("STARTTLS"));
    let names: Vec<String> = server.session_processes().into_iter().map(|p| p.comm).collect();
    assert!(names.iter().any(|n| n.starts_with("smtpd-starttls")), "the proxy left: {names:?}");
    c.send(b"NOOP\r\nRSET\r\nNOOP\r\n");
    for _ in 0..3 {
        c.expect(250);
    }
    let r = c.send_mail("a@x.test", "b@y.test", "through the proxy\r\n");
    assert_eq!(r.code, 250, "{}", c.transcript_string());
    c.quit();
    assert_eq!(server.messages().len(), 1);
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

// ------------------------------------------------ EOF and half-close

#[test]
fn half_close_after_quit_still_gets_221() {
    let dir = TestDir::new("half_close");
    let server = Chain::new(&dir).start();

    /// QUIT and a half-close: the 221 still comes, then EOF.
    fn quit_and_half_close<S: Conn>(mut c: Smtp<S>) {
        c.send(b"QUIT\r\n");
        c.close_write();
        c.expect(221);
        c.expect_closed(secs(20));
    }
    quit_and_half_close(server.connect_greeted()); // before the decision
    quit_and_half_close(plaintext_session(&server));
    quit_and_half_close(tls_session(&server, &dir));

    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}

#[test]
fn half_close_without_quit_gets_the_pending_reply() {
    let dir = TestDir::new("half_close_vrfy");
    let server = Chain::new(&dir).start();
    /// VRFY and a half-close: its reply still comes, then EOF.
    fn vrfy_and_half_close<S: Conn>(mut c: Smtp<S>, vrfy: &[u8]) {
        c.send(vrfy);
        c.close_write();
        c.expect_line("252 2.5.2 Cannot VRFY user");
        c.expect_closed(secs(20));
    }
    vrfy_and_half_close(server.connect_greeted(), b"VRFY x\r\n");
    vrfy_and_half_close(server.connect_greeted().starttls(&tls(&dir)), b"VRFY y\r\n");
    server.wait_sessions_gone(secs(20));
}

/// The smtpd half-closes (it closes its output after the 221 but reads on):
/// the client gets the 221 and EOF, and what it sends afterwards still
/// reaches the smtpd.
#[test]
fn half_close_from_the_smtpd_passes_to_the_client() {
    let dir = TestDir::new("half_close_smtpd");
    let server = Chain::new(&dir).env("TEST_SMTPD_LINGER", "1").start();

    // Before the decision: the 221 and the EOF arrive.
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    c.line("QUIT");
    c.expect(221);
    let (extra, end) = c.read_until_closed(secs(20));
    assert!(extra.is_empty() && end.is_closed(), "{end:?} \"{}\"\n{}", show(&extra), c.transcript_string());

    // After the plaintext decision the other direction stays open; after
    // TLS too.
    quit_read_eof_keep_writing(plaintext_session(&server), "late-bytes-plain");
    quit_read_eof_keep_writing(tls_session(&server, &dir), "late-bytes-tls");

    server.wait_sessions_gone(secs(20));
    let log = server.smtpd_log();
    for marker in ["late-bytes-plain", "late-bytes-tls"] {
        assert!(contains(&log, format!("QUIT\r\n{marker}\r\n").as_bytes()), "{marker}: {}", show(&log));
    }
    server.assert_stderr_empty();
}

/// Sends QUIT and expects the 221, waits for the server's EOF without
/// closing anything, then sends the line `marker` and half-closes.
fn quit_read_eof_keep_writing<S: Conn>(mut c: Smtp<S>, marker: &str) {
    c.line("QUIT");
    c.expect(221);
    match c.try_reply_within(secs(20)) {
        Err(ReplyError::Ended { end, partial }) if end.is_closed() && partial.is_empty() => c.line(marker),
        other => panic!("expected EOF after the 221, got {other:?}\n{}", c.transcript_string()),
    }
    c.close_write();
}

/// A client that pipelines commands and never reads the replies: the
/// proxy stops reading once its replies back up, TCP backpressure stops
/// the client, and the proxy's memory stays small.
#[test]
fn client_that_never_reads_is_held_back_by_backpressure() {
    use std::io::Write;
    let dir = TestDir::new("never_reads");
    let server = Chain::new(&dir).start();
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_write_timeout(Some(secs(3))).expect("timeout");
    let chunk = b"NOOP\r\n".repeat(10_000);
    let mut sent = 0usize;
    let started = Instant::now();
    loop {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("write failed after {sent} bytes: {e}\n{}", server.diagnostics()),
        }
        assert!(sent < 256 << 20, "the proxy never stopped reading ({sent} bytes sent)");
        assert!(started.elapsed() < secs(120), "no backpressure after {sent} bytes");
    }
    let proxy = server
        .session_processes()
        .into_iter()
        .find(|p| p.comm.starts_with("smtpd-starttls"))
        .unwrap_or_else(|| panic!("no proxy process\n{}", server.diagnostics()));
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid)).expect("status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    // Sockets hold megabytes of the stream; the proxy itself holds at most
    // one read and 64 KiB of replies.
    assert!(peak_kib < 8 * 1024, "the proxy grew to {peak_kib} KiB after {sent} bytes");
    drop(s);
    server.wait_sessions_gone(secs(30));
}

#[test]
fn client_disconnect_ends_every_session_process() {
    let (dir, server, mut c) = greeted_default_chain("disconnect");
    c.cmd_expect("EHLO client.test", 250);
    drop(c);
    server.wait_sessions_gone(secs(20));

    drop(plaintext_session(&server));
    server.wait_sessions_gone(secs(20));

    drop(tls_session(&server, &dir));
    server.wait_sessions_gone(secs(20));
}

// ---------------------------------------------------------- environment

#[test]
fn smtpd_environment_has_no_ucspi_tls_or_key_variables() {
    let dir = TestDir::new("env_clean");
    let certs = dir.certs();
    let server = Chain::new(&dir)
        .env("CERTFILE:a.test", certs.a().cert)
        .env("KEYFILE:a.test", certs.a().key)
        .env("SOME_VAR", "kept")
        .start();
    let mut c = server.connect_greeted();
    c.quit();
    server.wait_sessions_gone(secs(20));
    let env = server.smtpd_environment();
    for gone in ["SSLCTLFD", "SSLREADFD", "SSLWRITEFD", "CERTFILE", "KEYFILE", "CERTFILE:a.test", "KEYFILE:a.test"] {
        assert!(!env.contains_key(gone), "{gone} must not reach the smtpd: {env:?}");
    }
    assert_eq!(env.get("SOME_VAR").map(String::as_str), Some("kept"), "{env:?}");
    assert_eq!(env.get("TCPREMOTEIP").map(String::as_str), Some("127.0.0.1"), "tcpserver's variables stay: {env:?}");
}

#[test]
fn smtpd_environment_keeps_tls_variables_with_z() {
    let dir = TestDir::new("env_keep");
    let server = Chain::new(&dir).tlsd_args(["-Z"]).start();
    let mut c = server.connect_greeted().starttls(&tls(&dir));
    c.quit();
    server.wait_sessions_gone(secs(20));
    let env = server.smtpd_environment();
    for gone in ["SSLCTLFD", "SSLREADFD", "SSLWRITEFD"] {
        assert!(!env.contains_key(gone), "{gone} must not reach the smtpd: {env:?}");
    }
    let mx = dir.certs().mx();
    assert_eq!(env.get("CERTFILE").map(String::as_str), mx.cert.to_str(), "-Z keeps CERTFILE: {env:?}");
    assert_eq!(env.get("KEYFILE").map(String::as_str), mx.key.to_str(), "-Z keeps KEYFILE: {env:?}");
}

// --------------------------------------------------------- exit codes

#[test]
fn proxy_exits_100_without_valid_ssl_fds() {
    use chainmail_tests::run::run;
    let proxy = chainmail_tests::bin("smtpd-starttls-proxy-io");
    let smtpd = chainmail_tests::bin("test-smtpd");
    let dir = TestDir::new("proxy_exit_100");
    let log = dir.join("smtpd.log");
    for env in [
        vec![],
        vec![("SSLCTLFD", "x"), ("SSLREADFD", "0"), ("SSLWRITEFD", "1")],
        vec![("SSLCTLFD", "2"), ("SSLREADFD", "-1"), ("SSLWRITEFD", "1")],
        vec![("SSLCTLFD", "2"), ("SSLREADFD", "0")],
        vec![("SSLCTLFD", ""), ("SSLREADFD", "0"), ("SSLWRITEFD", "1")],
    ] {
        let mut cmd = std::process::Command::new(&proxy);
        cmd.arg("--").arg(&smtpd).env_clear().env("TEST_SMTPD_LOG", &log);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd, b"EHLO x\r\n", secs(20));
        assert_eq!(out.code(), Some(100), "with {env:?}: {}", out.describe());
        assert!(out.stdout.is_empty(), "with {env:?}: nothing may reach the client: {}", out.describe());
    }
    assert!(!log.exists(), "the smtpd must not have been started");
}
