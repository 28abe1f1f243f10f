//! qmail-remote (and qmail-remote-io) against real peers on loopback.
//!
//! Each test runs the real `qmail-remote host sender recip... < queuefile`
//! with a temporary `QMAILHOME` (see `qmail_remote_support::Home`) and
//! checks its report byte for byte where stock qmail's wording is fixed,
//! always as qmail-rspawn reads it, and what the server got:
//!
//! * postfix `smtp-sink` for the per-stage failures (`-f` 5xx, `-r` 4xx,
//!   `-q` disconnect, `-W` delay, `-e` no ESMTP);
//! * `peers/qmail/smtpd.py` (aiosmtpd) for STARTTLS, client certificates,
//!   per-address behaviour (`reject…` 550, `defer…` 451) and the exact
//!   bytes of each message;
//! * `peers/dnsserver.py` through `DNSCACHEIP` for MX, A and AAAA records;
//!   MX delivery goes to port 25, so those peers listen on random
//!   127.0.0.0/8 addresses (and `[::1]`, under a lock shared by the test
//!   processes), with `control/ipme` naming only 192.0.2.254;
//! * our own chain (tcpserver, ucspi-tlsd, smtpd-starttls-proxy-io,
//!   test-smtpd) as another STARTTLS server;
//! * `peers/qmail/backlog.py`, a listener with a full backlog, for
//!   connection timeouts.

mod qmail_remote_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use chainmail_tests::peer::DnsServer;
use chainmail_tests::{Chain, TestDir, contains, secs, show};
use qmail_remote_support::*;

const MSG: &[u8] = b"From: a@sender.test\nTo: b@example.test\nSubject: qmail-remote test\n\nHello.\n";
const SENDER: &str = "a@sender.test";
const RCPT: &str = "b@example.test";
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// smtp-sink's replies to a command refused with `-f` and `-r`.
const SINK_5XX: &str = "500 5.3.0 Error: command failed";
const SINK_4XX: &str = "450 4.3.0 Error: command failed";

const NO_CONNECTION: &str = "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n";

fn setup(name: &str) -> (TestDir, Home) {
    let dir = TestDir::new(name);
    let home = Home::new(&dir);
    (dir, home)
}

/// Delivers [`MSG`] from [`SENDER`] to `recips` through `smtp-sink args`
/// (routed with `control/smtproutes`).
fn through_sink(
    name: &str,
    args: &[&str],
    recips: &[&str],
    tune: impl FnOnce(&Home),
) -> (TestDir, Home, SmtpSink, Report) {
    let (dir, home) = setup(name);
    let sink = SmtpSink::start(&dir, args);
    home.route_to(sink.ip, sink.port);
    tune(&home);
    let mut argv = vec!["example.test", SENDER];
    argv.extend_from_slice(recips);
    let r = home.deliver(&[], &argv, MSG);
    (dir, home, sink, r)
}

fn report_bytes(parts: &[&str]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_bytes());
        v.push(0);
    }
    v
}

// ===================================================== per-stage table

#[test]
fn stage_2xx_after_the_dot_is_k_with_stock_wording() {
    let (_dir, _home, sink, r) = through_sink("stage_k", &[], &[RCPT], |_| {});
    r.expect("rK", 'K')
        .expect_exact(&report_bytes(&["r", "K127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok\n"]));
    assert_eq!(show(&r.rspawn_text), show(b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok\n"));
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "one message at the sink\n{}", r.describe());
    let d = &dumps[0];
    assert_eq!(SmtpSink::dump_header(d, "X-Helo-Args").as_deref(), Some("me.test"));
    assert_eq!(SmtpSink::dump_header(d, "X-Client-Proto").as_deref(), Some("ESMTP"));
    // smtp-sink does not announce SIZE and the message is 7-bit: no parameters.
    assert_eq!(SmtpSink::dump_header(d, "X-Mail-Args").as_deref(), Some("<a@sender.test>"));
    assert_eq!(SmtpSink::dump_header(d, "X-Rcpt-Args").as_deref(), Some("<b@example.test>"));
    assert!(contains(d, b"\nSubject: qmail-remote test\n\nHello.\n"), "{}", show(d));
}

#[test]
fn stage_greeting_5xx_is_z_and_final() {
    let (_dir, _home, sink, r) = through_sink("stage_greeting_5xx", &["-f", "connect"], &[RCPT], |_| {});
    r.expect("Z", 'Z').expect_exact(&report_bytes(&[&format!(
        "ZConnected to 127.0.0.1 but greeting failed.\nRemote host said: {SINK_5XX}\n"
    )]));
    assert!(sink.dumps().is_empty());
}

#[test]
fn stage_greeting_4xx_goes_on_and_ends_in_z_without_another_address() {
    let (_dir, _home, sink, r) = through_sink("stage_greeting_4xx", &["-r", "connect"], &[RCPT], |_| {});
    r.expect("Z", 'Z')
        .expect_text_starts(NO_CONNECTION)
        .expect_text_contains("127.0.0.1 but greeting failed")
        .expect_text_contains(SINK_4XX);
    assert!(sink.dumps().is_empty());
}

#[test]
fn stage_ehlo_5xx_falls_back_to_helo() {
    let (_dir, _home, sink, r) = through_sink("stage_helo_fallback", &["-e"], &[RCPT], |_| {});
    r.expect("rK", 'K').expect_text_starts("127.0.0.1 accepted message.\n");
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1);
    assert_eq!(SmtpSink::dump_header(&dumps[0], "X-Client-Proto").as_deref(), Some("SMTP"), "HELO, not EHLO");
    assert_eq!(SmtpSink::dump_header(&dumps[0], "X-Helo-Args").as_deref(), Some("me.test"));
}

#[test]
fn stage_ehlo_4xx_goes_on_to_the_next_address() {
    let (_dir, _home, sink, r) = through_sink("stage_ehlo_4xx", &["-r", "ehlo"], &[RCPT], |_| {});
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains(SINK_4XX);
    assert!(sink.dumps().is_empty());
}

/// A refusal (or a hang-up) at one stage, and the exact report it gives:
/// (test directory, smtp-sink's options, the report's letters, qmail-rspawn's
/// letter, the records, whether the sink must have stored nothing).
type StageCase = (&'static str, &'static [&'static str], &'static str, char, Vec<String>, bool);

#[test]
fn stage_refusals_give_exact_reports() {
    let said = |reply: &str| format!("Remote host said: {reply}\n");
    let data = "127.0.0.1 failed on DATA command.\n";
    let dot = "127.0.0.1 failed after I sent the message.\n";
    let cases: Vec<StageCase> = vec![
        (
            "stage_helo_5xx",
            &["-e", "-f", "helo"],
            "Z",
            'Z',
            vec![format!("ZConnected to 127.0.0.1 but my name was rejected.\n{}", said(SINK_5XX))],
            true,
        ),
        (
            "stage_mail_5xx",
            &["-f", "mail"],
            "D",
            'D',
            vec![format!("DConnected to 127.0.0.1 but sender was rejected.\n{}", said(SINK_5XX))],
            true,
        ),
        (
            "stage_mail_4xx",
            &["-r", "mail"],
            "Z",
            'Z',
            vec![format!("ZConnected to 127.0.0.1 but sender was rejected.\n{}", said(SINK_4XX))],
            true,
        ),
        (
            "stage_rcpt_4xx",
            &["-r", "rcpt"],
            "sZ",
            'Z',
            vec![
                format!("s127.0.0.1 does not like recipient.\n{}", said(SINK_4XX)),
                "ZGiving up on 127.0.0.1.\n".to_owned(),
            ],
            true,
        ),
        (
            "stage_data_5xx",
            &["-f", "data"],
            "rD",
            'D',
            vec!["r".to_owned(), format!("D{data}{}", said(SINK_5XX))],
            true,
        ),
        (
            "stage_data_4xx",
            &["-r", "data"],
            "rZ",
            'Z',
            vec!["r".to_owned(), format!("Z{data}{}", said(SINK_4XX))],
            true,
        ),
        ("stage_dot_5xx", &["-f", "."], "rD", 'D', vec!["r".to_owned(), format!("D{dot}{}", said(SINK_5XX))], false),
        ("stage_dot_4xx", &["-r", "."], "rZ", 'Z', vec!["r".to_owned(), format!("Z{dot}{}", said(SINK_4XX))], false),
        (
            "stage_drop_mail",
            &["-q", "mail"],
            "Z",
            'Z',
            vec!["ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n".to_owned()],
            true,
        ),
        (
            "stage_drop_dot",
            &["-q", "."],
            "rZ",
            'Z',
            vec![
                "r".to_owned(),
                "ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n".to_owned(),
            ],
            false,
        ),
    ];
    for (name, args, letters, letter, records, nothing_stored) in cases {
        let (_dir, _home, sink, r) = through_sink(name, args, &[RCPT], |_| {});
        let records: Vec<&str> = records.iter().map(String::as_str).collect();
        r.expect(letters, letter).expect_exact(&report_bytes(&records));
        if nothing_stored {
            assert!(sink.dumps().is_empty(), "{name}: the sink stored a message");
        }
    }
}

#[test]
fn stage_rcpt_5xx_is_h_then_d_giving_up() {
    let (_dir, _home, sink, r) = through_sink("stage_rcpt_5xx", &["-f", "rcpt"], &[RCPT], |_| {});
    let h = format!("h127.0.0.1 does not like recipient.\nRemote host said: {SINK_5XX}\n");
    r.expect("hD", 'D').expect_exact(&report_bytes(&[&h, "DGiving up on 127.0.0.1.\n"]));
    assert_eq!(show(&r.rspawn_text), show(format!("{}Giving up on 127.0.0.1.\n", &h[1..]).as_bytes()));
    assert!(sink.dumps().is_empty());
}

#[test]
fn stage_connection_dropped_after_data_is_z_without_duplicate_warning() {
    let (_dir, _home, sink, r) = through_sink("stage_drop_data", &["-q", "data"], &[RCPT], |_| {});
    // With PIPELINING the RCPT's 250 may or may not have left before the
    // sink hung up; either way the message is deferred, no duplicate.
    assert!(matches!(r.letters().as_str(), "Z" | "rZ"), "{}", r.describe());
    assert_eq!(r.rspawn_letter, b'Z', "{}", r.describe());
    assert_eq!(r.text(), "Connected to 127.0.0.1 but connection died. (#4.4.2)\n", "{}", r.describe());
    assert!(sink.dumps().is_empty());
}

/// A reply delayed past `control/timeoutremote` (1 s) gives Z well before
/// the delay is over.
///
/// smtp-sink answers pipelined commands out of order while it delays one
/// (`-W mail` with PIPELINING sends the 503s of RCPT and DATA at once and
/// MAIL's 250 later), so `-p` turns PIPELINING off for these.
fn timeout_case(name: &str, delayed: &str) -> Report {
    let (_dir, _home, _sink, r) = through_sink(name, &["-p", "-W", &format!("{delayed}:15")], &[RCPT], |h| {
        h.control("timeoutremote", "1\n");
    });
    assert!(
        r.out.elapsed < Duration::from_secs(10),
        "took {:?}, the delay is 15 s and the timeout 1 s\n{}",
        r.out.elapsed,
        r.describe()
    );
    assert!(
        r.out.elapsed >= Duration::from_millis(900),
        "gave up before the 1 s timeout: {:?}\n{}",
        r.out.elapsed,
        r.describe()
    );
    r
}

#[test]
fn stage_timeout_during_the_transaction_is_z() {
    let r = timeout_case("stage_timeout_mail", "mail");
    r.expect("Z", 'Z').expect_exact(&report_bytes(&["ZConnected to 127.0.0.1 but connection died. (#4.4.2)\n"]));
}

#[test]
fn stage_timeout_after_the_dot_is_z_possible_duplicate() {
    let r = timeout_case("stage_timeout_dot", ".");
    r.expect("rZ", 'Z').expect_exact(&report_bytes(&[
        "r",
        "ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n",
    ]));
}

#[test]
fn stage_timeout_of_the_greeting_goes_on_and_ends_in_z() {
    let r = timeout_case("stage_timeout_greeting", "connect");
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("127.0.0.1");
}

/// test-smtpd alone under tcpserver, with a malformed reply (`2x0 ...`)
/// at `cmd`.
fn malformed_at(name: &str, cmd: &str) -> (TestDir, Home, chainmail_tests::Server, Report) {
    let (dir, home) = setup(name);
    let maildir = dir.join("mail");
    std::fs::create_dir_all(&maildir).expect("create the maildir");
    let server = chainmail_tests::Server::start(
        &dir,
        &[chainmail_tests::bin("test-smtpd").into()],
        &[("TEST_SMTPD_MALFORMED".into(), cmd.into()), ("TEST_SMTPD_MAILDIR".into(), maildir.clone().into())],
    );
    home.route_to(LO, server.port());
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    (dir, home, server, r)
}

#[test]
fn stage_malformed_reply_in_the_transaction_is_z_protocol() {
    let (dir, _home, _server, r) = malformed_at("stage_malformed_mail", "mail");
    r.expect("Z", 'Z')
        .expect_text_starts("Connected to 127.0.0.1 but it broke the SMTP protocol: ")
        .expect_text_contains("(#4.4.2)");
    assert_eq!(std::fs::read_dir(dir.join("mail")).map(|d| d.count()).unwrap_or(0), 0);
    let (_dir, _home, _server, r) = malformed_at("stage_malformed_dot", ".");
    r.expect("rZ", 'Z')
        .expect_text_contains("but it broke the SMTP protocol: ")
        .expect_text_contains("Possible duplicate!");
}

#[test]
fn stage_malformed_greeting_goes_on_to_the_next_address() {
    let (_dir, _home, _server, r) = malformed_at("stage_malformed_greeting", "greeting");
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("127.0.0.1");
}

// ------------------------------------------- recipients, with aiosmtpd

fn aio_routed(name: &str, o: &AioOpts) -> (TestDir, Home, Aiosmtpd) {
    let (dir, home) = setup(name);
    let peer = Aiosmtpd::start(&dir, o);
    home.route_to(peer.ip, peer.port);
    (dir, home, peer)
}

fn mixed_recipients(name: &str, pipelining: bool) {
    let (_dir, home, peer) = aio_routed(name, &AioOpts { pipelining, ..AioOpts::default() });
    let r = home.deliver(
        &[],
        &[
            "example.test",
            SENDER,
            "ok1@example.test",
            "reject1@example.test",
            "defer1@example.test",
            "ok2@example.test",
        ],
        MSG,
    );
    r.expect("rhsrK", 'K')
        .expect_text_starts("127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok: queued as ");
    assert_eq!(r.text_of(1), "127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user here\n");
    assert_eq!(
        r.text_of(2),
        "127.0.0.1 does not like recipient.\nRemote host said: 451 4.2.0 mailbox busy, try later\n"
    );
    let m = peer.messages();
    assert_eq!(m.len(), 1, "{}", peer.describe());
    assert_eq!(m[0].all("rcpt"), ["ok1@example.test", "ok2@example.test"]);
    assert_eq!(m[0].content, normalized(MSG));
    // Every recipient was tried, in argument order, once.
    let rcpts = peer.commands("RCPT");
    assert_eq!(
        rcpts,
        [
            "RCPT TO:<ok1@example.test>",
            "RCPT TO:<reject1@example.test>",
            "RCPT TO:<defer1@example.test>",
            "RCPT TO:<ok2@example.test>"
        ],
        "{}",
        peer.describe()
    );

    // None accepted: D when every refusal is permanent, Z when one is not.
    let r = home.deliver(&[], &["example.test", SENDER, "reject1@example.test", "reject2@example.test"], MSG);
    r.expect("hhD", 'D').expect_exact(&report_bytes(&[
        "h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user here\n",
        "h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user here\n",
        "DGiving up on 127.0.0.1.\n",
    ]));
    let r = home.deliver(&[], &["example.test", SENDER, "defer1@example.test", "reject1@example.test"], MSG);
    r.expect("shZ", 'Z').expect_text_starts("Giving up on 127.0.0.1.\n");
    let r = home.deliver(&[], &["example.test", SENDER, "reject1@example.test", "defer1@example.test"], MSG);
    // qmail-rspawn takes the first recipient's fate (h: D).
    r.expect("hsZ", 'D').expect_text_starts("Giving up on 127.0.0.1.\n");
    assert_eq!(peer.messages().len(), 1, "nothing more was delivered\n{}", peer.describe());
    if !pipelining {
        assert_eq!(peer.commands("DATA").len(), 1, "no DATA without a recipient\n{}", peer.describe());
    }
}

#[test]
fn stage_mixed_recipients_in_argument_order() {
    mixed_recipients("stage_mixed", false);
}

#[test]
fn stage_mixed_recipients_in_argument_order_pipelined() {
    mixed_recipients("stage_mixed_pipelined", true);
}

/// MAIL refused while RCPT and DATA were pipelined behind it: the server
/// answers those with 503 ("need MAIL", as postfix does). Those 503s say
/// nothing about the recipients: the report must be the sender's verdict
/// alone (Z for 4xx, D for 5xx), as stock qmail's, which never sends RCPT
/// after a refused MAIL; otherwise qmail-rspawn takes the first record, a
/// recipient `h`, and bounces.
fn pipelined_mail_refusal(name: &str, sender: &str, letter: char, reply: &str) {
    let (_dir, home, peer) = aio_routed(name, &AioOpts { pipelining: true, ..AioOpts::default() });
    let r = home.deliver(&[], &["example.test", sender, RCPT], MSG);
    let text = format!("Connected to 127.0.0.1 but sender was rejected.\nRemote host said: {reply}\n");
    assert_eq!(r.text(), text, "{}", r.describe());
    assert_eq!(r.verdict() as char, letter, "{}", r.describe());
    assert_eq!(r.rspawn_letter as char, letter, "what qmail-send is told\n{}", r.describe());
    assert_eq!(
        show(&r.rspawn_text),
        show(text.as_bytes()),
        "the text qmail-send logs (and bounces with)\n{}",
        r.describe()
    );
    assert_eq!(r.letters(), letter.to_string(), "no recipient records\n{}", r.describe());
    assert!(peer.messages().is_empty());
}

#[test]
fn stage_pipelined_mail_4xx_is_z() {
    pipelined_mail_refusal(
        "stage_pipelined_mail_4xx",
        "defer@sender.test",
        'Z',
        "451 4.3.0 sender deferred by the test peer",
    );
}

#[test]
fn stage_pipelined_mail_5xx_is_d() {
    pipelined_mail_refusal(
        "stage_pipelined_mail_5xx",
        "reject@sender.test",
        'D',
        "550 5.7.1 sender rejected by the test peer",
    );
}

#[test]
fn stage_after_the_dot_per_aiosmtpd() {
    let (_dir, home, peer) = aio_routed("stage_dot_aiosmtpd", &AioOpts { pipelining: true, ..AioOpts::default() });
    let r = home.deliver(&[], &["example.test", SENDER, "dotreject@example.test"], MSG);
    r.expect("rD", 'D').expect_exact(&report_bytes(&[
        "r",
        "D127.0.0.1 failed after I sent the message.\nRemote host said: 554 5.6.0 message refused by the test peer\n",
    ]));
    let r = home.deliver(&[], &["example.test", SENDER, "dotdefer@example.test"], MSG);
    r.expect("rZ", 'Z').expect_text_starts("127.0.0.1 failed after I sent the message.\n");
    assert!(peer.messages().is_empty());
}

// ============================================================ routes

#[test]
fn routes_suffix_case_default_and_ipv6_relay() {
    let (dir, home) = setup("routes");
    home.control("timeoutdns", "1\n");
    let v4 = Aiosmtpd::start(&dir, &AioOpts::default());
    let v6 = Aiosmtpd::try_start_at(&dir, "::1".parse().expect("ip"), 0, &AioOpts::default());
    let closed = closed_port();
    home.control(
        "smtproutes",
        &format!(
            "# comment\n\n:127.0.0.1:{closed}\n.EXAMPLE.test:127.0.0.1:{}\nv6.TEST:[::1]:{}\nmx.test:\n.example.test:[127.0.0.1]:{}\n",
            v4.port, v6.port, v4.port
        ),
    );
    // A suffix matches subdomains, in any case; the last duplicate wins.
    home.deliver(&[], &["Sub.Example.Test", SENDER, "b@Sub.Example.Test"], MSG).expect("rK", 'K');
    assert_eq!(v4.messages().len(), 1);
    // It does not match the domain itself: the default route (closed).
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("Z", 'Z').expect_text_starts(NO_CONNECTION);
    // An IPv6 relay in brackets.
    home.deliver(&[], &["v6.test", SENDER, "b@v6.test"], MSG)
        .expect("rK", 'K')
        .expect_text_starts("::1 accepted message.\n");
    assert_eq!(v6.messages().len(), 1);
    // An empty relay means MX, overriding the default route: DNS (here
    // unreachable), not the closed default port.
    home.deliver(&[], &["mx.test", SENDER, "b@mx.test"], MSG)
        .expect("Z", 'Z')
        .expect_text_starts("Sorry, I couldn't find any host by that name. (#4.1.2)\n");
    assert_eq!(v4.messages().len(), 1);
}

// ================================================ connection failures

#[test]
fn connect_refused_everywhere_is_z_4_4_1() {
    let (_dir, home) = setup("connect_refused");
    home.route_to(LO, closed_port());
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("127.0.0.1");
    assert_eq!(r.rspawn_text, r.records[0].1);
}

/// Writes `queue/lock/tcpto` with one record per `(ip, count, age)`.
fn tcpto_with(home: &Home, records: &[(Ipv4Addr, u8, u64)]) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let mut buf = vec![0u8; 1024];
    for (i, (ip, count, age)) in records.iter().enumerate() {
        let r = &mut buf[i * 16..i * 16 + 16];
        r[..4].copy_from_slice(&ip.octets());
        r[4] = *count;
        r[8..12].copy_from_slice(&((now - age) as u32).to_le_bytes());
    }
    home.write_tcpto(&buf);
}

/// The record of `ip` in `queue/lock/tcpto`: (count, when).
fn tcpto_record(home: &Home, ip: Ipv4Addr) -> Option<(u8, u32)> {
    let buf = read_file(&home.tcpto_path());
    buf.chunks_exact(16).find(|r| r[..4] == ip.octets()).map(|r| (r[4], u32::from_le_bytes([r[8], r[9], r[10], r[11]])))
}

#[test]
fn tcpto_skips_an_address_with_recent_timeouts() {
    let (_dir, home, peer) = aio_routed("tcpto_skip", &AioOpts::default());
    tcpto_with(&home, &[(Ipv4Addr::LOCALHOST, 2, 10)]);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("127.0.0.1");
    assert_eq!(peer.connects(), 0, "a skipped address is not connected to\n{}", peer.describe());
    let content = read_file(&home.tcpto_path());
    assert_eq!(content.len(), 1024, "the file keeps its size");
    assert_eq!(tcpto_record(&home, Ipv4Addr::LOCALHOST).map(|r| r.0), Some(2));
}

#[test]
fn tcpto6_skips_an_ipv6_address_with_recent_timeouts() {
    let (dir, home) = setup("tcpto6_skip");
    let peer = Aiosmtpd::try_start_at(&dir, "::1".parse().expect("ip"), 0, &AioOpts::default());
    home.route_to(peer.ip, peer.port);
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K');
    // run/qmail-remote/tcpto6: 32-byte records, address, count at 16, time
    // (u64 little-endian) at 24.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let mut rec = vec![0u8; 32];
    rec[..16].copy_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    rec[16] = 3;
    rec[24..].copy_from_slice(&(now - 5).to_le_bytes());
    write_file(&home.path.join("run/qmail-remote/tcpto6"), &rec);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("::1");
    assert_eq!(peer.connects(), 1, "{}", peer.describe());
}

#[test]
fn tcpto_does_not_skip_without_reason() {
    let (_dir, home, peer) = aio_routed("tcpto_no_skip", &AioOpts::default());
    type History<'a> = Option<&'a [(Ipv4Addr, u8, u64)]>;
    let cases: [(&str, History<'_>); 5] = [
        ("a missing tcpto file", None),
        ("an empty history", Some(&[])),
        ("one timeout only", Some(&[(Ipv4Addr::LOCALHOST, 1, 10)])),
        ("two timeouts long ago (more than 5824 s)", Some(&[(Ipv4Addr::LOCALHOST, 2, 7000)])),
        ("timeouts of another address", Some(&[(Ipv4Addr::new(127, 0, 0, 2), 5, 10)])),
    ];
    for (i, (what, records)) in cases.into_iter().enumerate() {
        match records {
            None => {
                let _ = std::fs::remove_file(home.tcpto_path());
            }
            Some(rs) => tcpto_with(&home, rs),
        }
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
        assert_eq!(r.letters(), "rK", "with {what}\n{}", r.describe());
        assert_eq!(peer.messages().len(), i + 1, "with {what}");
        if records.is_none() {
            assert!(!home.tcpto_path().exists(), "qmail-remote must not create queue/lock/tcpto");
        }
    }
    // A successful connection resets the count of a known address.
    tcpto_with(&home, &[(Ipv4Addr::LOCALHOST, 1, 10)]);
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K');
    assert_eq!(tcpto_record(&home, Ipv4Addr::LOCALHOST).map(|r| r.0), Some(0), "count reset after a success");
}

#[test]
fn connect_timeout_is_recorded_in_tcpto() {
    let (dir, home) = setup("connect_timeout");
    let hole = FullBacklog::start(&dir);
    home.route_to(hole.ip, hole.port);
    home.control("timeoutconnect", "1\n");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as u32;
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains("timed out");
    assert!(
        r.out.elapsed >= Duration::from_millis(900),
        "the connection cannot time out before 1 s: {:?}",
        r.out.elapsed
    );
    assert!(r.out.elapsed < Duration::from_secs(8), "timeoutconnect is 1 s: {:?}", r.out.elapsed);
    let rec = tcpto_record(&home, Ipv4Addr::LOCALHOST);
    assert!(
        matches!(rec, Some((1, when)) if when >= before && when <= before + 30),
        "tcpto record after a timeout: {rec:?}"
    );
}

// ================================================================ DNS

fn dns_env(dns: &DnsServer) -> [(&'static str, &str); 1] {
    [("DNSCACHEIP", dns.dnscacheip.as_str())]
}

#[test]
fn dns_mx_lowest_preference_first_and_sender_domain_not_looked_up() {
    let (dir, home) = setup("dns_mx_order");
    let a = SmtpSink::start_25(&dir, &[]);
    let b = SmtpSink::start_25(&dir, &[]);
    let c = SmtpSink::start_25(&dir, &[]);
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 30 c.example.test\nexample.test MX 10 a.example.test\nexample.test MX 20 b.example.test\n\
         a.example.test A {}\nb.example.test A {}\nc.example.test A {}\n",
            a.ip, b.ip, c.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", "x@sender.test", RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", a.ip));
    assert_eq!((a.dumps().len(), b.dumps().len(), c.dumps().len()), (1, 0, 0));
    let q = dns.queries();
    assert!(q.contains("MX example.test."), "{q}");
    assert!(!q.contains("sender.test"), "the sender's domain must not be looked up:\n{q}");
}

#[test]
fn dns_next_mx_after_refusal_4xx_greeting_or_4xx_ehlo() {
    let (dir, home) = setup("dns_mx_fallback");
    let good = SmtpSink::start_25(&dir, &[]);
    let greet4 = SmtpSink::start_25(&dir, &["-r", "connect"]);
    let ehlo4 = SmtpSink::start_25(&dir, &["-r", "ehlo"]);
    let refused = random_loopback();
    let dns = DnsServer::start(
        &dir,
        &format!(
            "refused.test MX 10 mx1.refused.test\nrefused.test MX 20 good.test\nmx1.refused.test A {refused}\n\
         greet.test MX 10 mx1.greet.test\ngreet.test MX 20 good.test\nmx1.greet.test A {}\n\
         ehlo.test MX 10 mx1.ehlo.test\nehlo.test MX 20 good.test\nmx1.ehlo.test A {}\n\
         good.test A {}\n",
            greet4.ip, ehlo4.ip, good.ip
        ),
    );
    for (n, host) in ["refused.test", "greet.test", "ehlo.test"].into_iter().enumerate() {
        let r = home.deliver(&dns_env(&dns), &[host, SENDER, &format!("b@{host}")], MSG);
        r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", good.ip));
        assert_eq!(good.dumps().len(), n + 1, "{host}");
    }
    assert!(greet4.dumps().is_empty() && ehlo4.dumps().is_empty());
}

#[test]
fn dns_5xx_greeting_does_not_go_on_to_the_next_mx() {
    let (dir, home) = setup("dns_greeting_5xx");
    let bad = SmtpSink::start_25(&dir, &["-f", "connect"]);
    let good = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 bad.test\nexample.test MX 20 good.test\nbad.test A {}\ngood.test A {}\n",
            bad.ip, good.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(&format!("Connected to {} but greeting failed.\n", bad.ip));
    assert_eq!(good.connects(), 0, "{}", good.describe());
}

#[test]
fn dns_equal_preferences_are_tried_in_both_orders() {
    let (dir, home) = setup("dns_equal_prefs");
    let a = SmtpSink::start_25(&dir, &[]);
    let b = SmtpSink::start_25(&dir, &[]);
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 a.example.test\nexample.test MX 10 b.example.test\na.example.test A {}\nb.example.test A {}\n",
            a.ip, b.ip
        ),
    );
    // With a fair coin, 40 runs all on one side happen with probability
    // 2^-39.
    let mut runs = 0;
    while runs < 40 && (a.dumps().is_empty() || b.dumps().is_empty()) {
        home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG).expect("rK", 'K');
        runs += 1;
    }
    assert_eq!(a.dumps().len() + b.dumps().len(), runs);
    assert!(
        !a.dumps().is_empty() && !b.dumps().is_empty(),
        "after {runs} runs: a got {}, b got {}",
        a.dumps().len(),
        b.dumps().len()
    );
}

#[test]
fn dns_implicit_mx_uses_the_hosts_address() {
    let (dir, home) = setup("dns_implicit_mx");
    let peer = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(&dir, &format!("example.test A {}\nexample.test TXT v=spf1 -all\n", peer.ip));
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", peer.ip));
    assert_eq!(peer.messages().len(), 1);
}

#[test]
fn dns_null_mx_is_d() {
    let (dir, home) = setup("dns_null_mx");
    let peer = Aiosmtpd::start_25(&dir, &AioOpts::default());
    // An A record too: a Null MX must win over the implicit MX.
    let dns = DnsServer::start(&dir, &format!("example.test MX 0 .\nexample.test A {}\n", peer.ip));
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("D", 'D').expect_exact(&report_bytes(&[
        "DSorry, example.test does not accept mail (it publishes a null MX). (#5.1.10)\n",
    ]));
    assert_eq!(peer.connects(), 0);
}

#[test]
fn dns_nxdomain_is_d_servfail_and_silence_are_z() {
    let (dir, home) = setup("dns_failures");
    home.control("timeoutdns", "2\n");
    let dns = DnsServer::start(&dir, "other.test A 127.0.0.1\nsf.test SERVFAIL\ndrop.test DROP\n");
    let r = home.deliver(&dns_env(&dns), &["nx.test", SENDER, "b@nx.test"], MSG);
    r.expect("D", 'D').expect_exact(&report_bytes(&["DSorry, I couldn't find any host named nx.test. (#5.1.2)\n"]));

    let r = home.deliver(&dns_env(&dns), &["sf.test", SENDER, "b@sf.test"], MSG);
    r.expect("Z", 'Z').expect_text_starts("Sorry, I couldn't find any host by that name. (#4.1.2)\n");

    let r = home.deliver(&dns_env(&dns), &["drop.test", SENDER, "b@drop.test"], MSG);
    r.expect("Z", 'Z').expect_text_starts("Sorry, I couldn't find any host by that name. (#4.1.2)\n");
    assert!(r.out.elapsed >= Duration::from_millis(1500), "gave up before timeoutdns (2 s): {:?}", r.out.elapsed);
    assert!(r.out.elapsed < Duration::from_secs(9), "timeoutdns is 2 s, took {:?}", r.out.elapsed);

    // An unreachable DNS server is a temporary failure too.
    let r =
        home.deliver(&[("DNSCACHEIP", &format!("127.0.0.1:{}", closed_port()))], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts("Sorry, I couldn't find any host by that name. (#4.1.2)\n");
}

#[test]
fn dns_exchangers_of_this_host_and_worse_are_never_tried() {
    let (dir, home) = setup("dns_ipme");
    let me = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let worse = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let better_refused = random_loopback();
    home.control("ipme", &format!("192.0.2.254\n{}\n", me.ip));
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 better.test\nexample.test MX 20 me.test\nexample.test MX 30 worse.test\n\
         better.test A {better_refused}\nme.test A {}\nworse.test A {}\n\
         loop.test MX 10 me.test\nloop.test MX 20 worse.test\n",
            me.ip, worse.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_text_starts(NO_CONNECTION).expect_text_contains(&better_refused.to_string());
    assert_eq!((me.connects(), worse.connects()), (0, 0), "{}\n{}", me.describe(), worse.describe());

    // The best MX is this host: the mail would loop.
    let r = home.deliver(&dns_env(&dns), &["loop.test", SENDER, "b@loop.test"], MSG);
    r.expect("D", 'D')
        .expect_exact(&report_bytes(&["DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
         it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n"]));
    assert_eq!((me.connects(), worse.connects()), (0, 0));
}

#[test]
fn dns_ipv6_and_ipv4_exchangers() {
    let (dir, home) = setup("dns_ipv6");
    let lock = V6Port25::lock();
    let v4 = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(
        &dir,
        &format!(
            "v6.test MX 10 mx.v6.test\nmx.v6.test AAAA ::1\n\
         both.test MX 10 mx.both.test\nmx.both.test AAAA ::1\nmx.both.test A {}\n",
            v4.ip
        ),
    );
    {
        let v6 = Aiosmtpd::start_v6_25(&dir, &lock, &AioOpts::default());
        let r = home.deliver(&dns_env(&dns), &["v6.test", SENDER, "b@v6.test"], MSG);
        r.expect("rK", 'K').expect_text_starts("::1 accepted message.\n");
        // IPv6 first when an exchanger has both.
        let r = home.deliver(&dns_env(&dns), &["both.test", SENDER, "b@both.test"], MSG);
        r.expect("rK", 'K').expect_text_starts("::1 accepted message.\n");
        assert_eq!(v6.messages().len(), 2, "{}", v6.describe());
        assert_eq!(v4.connects(), 0);
    }
    // Nothing on [::1]:25 any more (we still hold the lock): IPv4 it is.
    let r = home.deliver(&dns_env(&dns), &["both.test", SENDER, "b@both.test"], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", v4.ip));
    assert_eq!(v4.messages().len(), 1);
    drop(lock);
}

#[test]
fn dns_route_to_a_relay_name_uses_its_address_and_port_and_skips_ipme() {
    let (dir, home) = setup("dns_route_relay");
    let peer = Aiosmtpd::start(&dir, &AioOpts::default());
    home.control("smtproutes", &format!("example.test:relay.test:{}\n", peer.port));
    // A route to a relay is not checked against this host's addresses.
    home.control("ipme", "127.0.0.1\n");
    let dns = DnsServer::start(
        &dir,
        "relay.test A 127.0.0.1\nexample.test MX 10 elsewhere.test\nelsewhere.test A 192.0.2.253\n",
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts("127.0.0.1 accepted message.\n");
    assert_eq!(peer.messages().len(), 1);
    let q = dns.queries();
    assert!(!q.contains("MX example.test"), "a routed domain's MX is not looked up:\n{q}");
}

#[test]
fn dns_a_silent_or_failing_backup_exchanger_does_not_hold_the_delivery() {
    // "Once the best-preference exchangers have addresses, the lookups of
    // the others get at most 2 more seconds"; a soft failure of one
    // exchanger's addresses is tolerated when others have some.
    let (dir, home) = setup("dns_slow_backup");
    home.control("timeoutdns", "20\n");
    let best = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 best.test\nexample.test MX 20 silent.test\nexample.test MX 30 broken.test\n\
         best.test A {}\nsilent.test DROP\nbroken.test SERVFAIL\n",
            best.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", best.ip));
    assert!(
        r.out.elapsed < Duration::from_secs(10),
        "held {:?} by a silent backup MX (timeoutdns 20 s)",
        r.out.elapsed
    );
}

#[test]
fn connect_timeout_goes_on_to_the_next_mx() {
    let (dir, home) = setup("connect_timeout_next_mx");
    home.control("timeoutconnect", "1\n");
    let hole = FullBacklog::start_25(&dir);
    let good = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 hole.test\nexample.test MX 20 good.test\nhole.test A {}\ngood.test A {}\n",
            hole.ip, good.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", good.ip));
    assert!(r.out.elapsed >= Duration::from_millis(900), "{:?}", r.out.elapsed);
    let IpAddr::V4(hole_ip) = hole.ip else { unreachable!() };
    assert_eq!(tcpto_record(&home, hole_ip).map(|r| r.0), Some(1), "the timeout is recorded");
}

// ================================================================ TLS

/// The four server certificates of the matrix: (case, server key pair,
/// trust anchors, the relay name the route uses).
fn tls_cases(dir: &TestDir) -> Vec<(&'static str, chainmail_tests::KeyPair, std::path::PathBuf, &'static str)> {
    let c = dir.certs();
    vec![
        ("valid", c.mx(), c.ca(), "mx.test"),
        ("unknown CA", c.mx(), c.rogue_ca(), "mx.test"),
        ("expired", c.expired(), c.ca(), "expired.test"),
        ("wrong name", c.a(), c.ca(), "mx.test"),
    ]
}

fn tls_zone() -> &'static str {
    "mx.test A 127.0.0.1\nexpired.test A 127.0.0.1\n"
}

/// Runs one delivery per certificate case at `level`; `check` sees the
/// case, the report and the server.
fn tls_matrix(name: &str, level: &str, check: impl Fn(&str, &Report, &Aiosmtpd)) {
    let (dir, home) = setup(name);
    let dns = DnsServer::start(&dir, tls_zone());
    home.control("tlsstrictness", &format!("{level}\n"));
    for (case, cert, anchors, relay) in tls_cases(&dir) {
        let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(cert), pipelining: true, ..AioOpts::default() });
        home.control("smtproutes", &format!("example.test:{relay}:{}\n", peer.port));
        home.control("trustanchors", &format!("{}\n", anchors.display()));
        let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
        check(case, &r, &peer);
    }
}

fn assert_delivered_over_tls(case: &str, r: &Report, peer: &Aiosmtpd) {
    assert_eq!(r.letters(), "rK", "{case}\n{}", r.describe());
    assert!(r.text().contains("\nTLS: TLSv1."), "{case}: the K text has a TLS: line\n{}", r.describe());
    let m = peer.messages();
    assert_eq!(m.len(), 1, "{case}\n{}", peer.describe());
    assert!(m[0].get("tls").starts_with("TLSv1."), "{case}: the server saw TLS: {:?}", m[0].env);
    assert_eq!(m[0].content, normalized(MSG));
}

fn assert_nothing_sent(case: &str, r: &Report, peer: &Aiosmtpd) {
    assert_eq!(r.letters(), "Z", "{case}\n{}", r.describe());
    assert!(peer.messages().is_empty(), "{case}: delivered anyway\n{}", peer.describe());
    assert!(peer.commands("MAIL").is_empty(), "{case}: a transaction was started\n{}", peer.describe());
}

#[test]
fn tls_level_0_delivers_over_tls_whatever_the_certificate() {
    tls_matrix("tls_level0", "0", |case, r, peer| {
        assert_delivered_over_tls(case, r, peer);
        assert_eq!(peer.connects(), 1, "{case}: one connection\n{}", peer.describe());
    });
}

#[test]
fn tls_level_1_delivers_over_tls_whatever_the_certificate() {
    tls_matrix("tls_level1", "1", |case, r, peer| {
        assert_delivered_over_tls(case, r, peer);
        assert_eq!(peer.connects(), 1, "{case}: one connection\n{}", peer.describe());
    });
}

#[test]
fn tls_level_2_delivers_only_with_a_valid_certificate_for_the_name() {
    tls_matrix("tls_level2", "2", |case, r, peer| {
        if case == "valid" {
            assert_delivered_over_tls(case, r, peer);
        } else {
            assert_nothing_sent(case, r, peer);
            assert!(r.text().starts_with(NO_CONNECTION), "{case}\n{}", r.describe());
            assert_eq!(peer.handshakes(), 0, "{case}: no TLS session was completed\n{}", peer.describe());
        }
    });
}

#[test]
fn tls_level_2_against_the_route_address_and_a_plaintext_server() {
    let (dir, home) = setup("tls_level2_ip");
    home.control("tlsstrictness", "2\n");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    // The route is an address: the certificate must carry it (mx.pem has
    // IP:127.0.0.1; a.pem does not).
    for (cert, ok) in [(dir.certs().mx(), true), (dir.certs().a(), false)] {
        let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(cert.clone()), ..AioOpts::default() });
        home.route_to(peer.ip, peer.port);
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
        if ok {
            assert_delivered_over_tls("IP in the certificate", &r, &peer);
        } else {
            assert_nothing_sent("IP not in the certificate", &r, &peer);
        }
    }
    // A server without STARTTLS never gets the message.
    let plain = Aiosmtpd::start(&dir, &AioOpts::default());
    home.route_to(plain.ip, plain.port);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_nothing_sent("no STARTTLS", &r, &plain);
    r.expect_text_starts(NO_CONNECTION);
}

#[test]
fn tls_level_2_verifies_the_mx_name_and_goes_on_to_the_next_mx() {
    let (dir, home) = setup("tls_level2_mx");
    home.control("tlsstrictness", "2\n");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    // Both present mx.pem (mx.test); only the second MX is named mx.test.
    let o = AioOpts { tls: Some(dir.certs().mx()), ..AioOpts::default() };
    let misnamed = Aiosmtpd::start_25(&dir, &o);
    let right = Aiosmtpd::start_25(&dir, &o);
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 other.test\nexample.test MX 20 mx.test\nother.test A {}\nmx.test A {}\n",
            misnamed.ip, right.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", right.ip));
    assert_delivered_over_tls("the MX named in the certificate", &r, &right);
    assert!(misnamed.commands("MAIL").is_empty() && misnamed.messages().is_empty(), "{}", misnamed.describe());
}

#[test]
fn tls_trust_anchors_file_directory_and_builtin() {
    let (dir, home) = setup("tls_anchors");
    home.control("tlsstrictness", "2\n");
    let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(dir.certs().mx()), ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);
    let cadir = format!("{}/", dir.certs().ca_dir().display());
    for (anchors, delivered) in
        [(dir.certs().ca().display().to_string(), true), (cadir, true), ("builtin".to_owned(), false)]
    {
        home.control("trustanchors", &format!("{anchors}\n"));
        let before = peer.messages().len();
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
        if delivered {
            assert_eq!(r.letters(), "rK", "trustanchors {anchors}\n{}", r.describe());
            assert_eq!(peer.messages().len(), before + 1);
        } else {
            assert_eq!(r.letters(), "Z", "trustanchors {anchors} does not hold the test CA\n{}", r.describe());
            assert_eq!(peer.messages().len(), before);
        }
    }
    // Values above 2 count as 2.
    home.control("tlsstrictness", "9\n");
    let before = peer.messages().len();
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("Z", 'Z');
    assert_eq!(peer.messages().len(), before);
    home.control("tlsstrictness", "2\n");

    // Level 2 without trust anchors defers, without connecting at all.
    home.remove_control("trustanchors");
    let connects = peer.connects();
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("Z", 'Z').expect_exact(&report_bytes(&[
        "Zcontrol/tlsstrictness asks for verified TLS but control/trustanchors is empty. (#4.3.0)\n",
    ]));
    assert_eq!(peer.connects(), connects);
}

#[test]
fn tls_without_trust_anchors_no_starttls_at_all() {
    let (dir, home) = setup("tls_no_anchors");
    let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(dir.certs().mx()), ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_lacks("TLS:");
    assert!(peer.commands("STARTTLS").is_empty(), "{}", peer.describe());
    assert_eq!(peer.messages()[0].get("tls"), "none");
}

#[test]
fn tls_level_1_prefers_a_tls_server_listed_after_a_plaintext_one() {
    let (dir, home) = setup("tls_level1_prefers");
    home.control("tlsstrictness", "1\n");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    let plain = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let tls = Aiosmtpd::start_25(&dir, &AioOpts { tls: Some(dir.certs().mx()), ..AioOpts::default() });
    let dns = DnsServer::start(
        &dir,
        &format!(
            "example.test MX 10 plain.test\nexample.test MX 20 tls.test\nplain.test A {}\ntls.test A {}\n",
            plain.ip, tls.ip
        ),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", tls.ip)).expect_text_contains("\nTLS: ");
    assert_eq!(tls.messages().len(), 1);
    assert!(plain.commands("MAIL").is_empty(), "{}", plain.describe());
}

#[test]
fn tls_level_1_falls_back_to_plaintext_when_nobody_does_tls() {
    let (dir, home) = setup("tls_level1_fallback");
    home.control("tlsstrictness", "1\n");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    let a = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let b = Aiosmtpd::start_25(&dir, &AioOpts::default());
    let dns = DnsServer::start(
        &dir,
        &format!("example.test MX 10 a.test\nexample.test MX 20 b.test\na.test A {}\nb.test A {}\n", a.ip, b.ip),
    );
    let r = home.deliver(&dns_env(&dns), &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", a.ip)).expect_text_lacks("TLS:");
    assert_eq!(a.messages().len(), 1);
    assert_eq!(a.messages()[0].get("tls"), "none");
    // Pass 1 (TLS required) saw both, pass 2 (plaintext) delivered at a.
    assert_eq!((a.connects(), b.connects()), (2, 1), "{}\n{}", a.describe(), b.describe());
    assert!(b.commands("MAIL").is_empty());
}

#[test]
fn tls_starttls_454_by_level() {
    let (dir, home) = setup("tls_454");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    let o = AioOpts { tls: Some(dir.certs().mx()), starttls_454: true, ..AioOpts::default() };
    // Level 0: plaintext on the same connection.
    let peer = Aiosmtpd::start(&dir, &o);
    home.route_to(peer.ip, peer.port);
    home.control("tlsstrictness", "0\n");
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K').expect_text_lacks("TLS:");
    assert_eq!(peer.connects(), 1, "{}", peer.describe());
    assert_eq!(peer.commands("STARTTLS").len(), 1);
    assert_eq!(peer.messages()[0].get("tls"), "none");
    // Level 1: a second pass in plaintext.
    let peer = Aiosmtpd::start(&dir, &o);
    home.route_to(peer.ip, peer.port);
    home.control("tlsstrictness", "1\n");
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K').expect_text_lacks("TLS:");
    assert_eq!(peer.messages().len(), 1);
    assert_eq!(peer.connects(), 2, "{}", peer.describe());
    // Level 2: nothing.
    let peer = Aiosmtpd::start(&dir, &o);
    home.route_to(peer.ip, peer.port);
    home.control("tlsstrictness", "2\n");
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_nothing_sent("454 at level 2", &r, &peer);
    r.expect_text_contains("454 4.7.0");
}

#[test]
fn tls_plaintext_injected_after_the_220_is_discarded() {
    let (dir, home) = setup("tls_injection");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    home.control("tlsstrictness", "2\n");
    let peer =
        Aiosmtpd::start(&dir, &AioOpts { tls: Some(dir.certs().mx()), inject_after_220: true, ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_contains("Remote host said: 250 2.0.0 Ok: queued as ");
    assert_delivered_over_tls("injection", &r, &peer);
}

#[test]
fn tls_our_chain_as_the_server() {
    let (dir, home) = setup("tls_chain");
    home.control("tlsstrictness", "2\n");
    home.control("trustanchors", &format!("{}\n", dir.certs().ca().display()));
    let server = Chain::new(&dir).start();
    home.route_to(LO, server.port());
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_contains("\nTLS: TLSv1.");
    assert_eq!(server.messages(), vec![normalized(MSG)]);
    // The wrong certificate: nothing delivered (a directory of its own:
    // a chain keeps its maildir and log in its test directory).
    let a = dir.certs().a();
    let wrong_dir = TestDir::new("tls_chain_wrong_name");
    let wrong = Chain::new(&wrong_dir).no_default_certs().env("CERTFILE", &a.cert).env("KEYFILE", &a.key).start();
    home.route_to(LO, wrong.port());
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("Z", 'Z').expect_text_starts(NO_CONNECTION);
    assert!(wrong.messages().is_empty());
    assert!(!contains(&wrong.smtpd_log(), b"MAIL FROM"), "{}", show(&wrong.smtpd_log()));
}

// ================================================ client certificates

#[test]
fn clientcert_is_sent_when_the_server_requires_one() {
    let (dir, home) = setup("clientcert_aiosmtpd");
    let c = dir.certs().clone();
    home.control("tlsstrictness", "2\n");
    home.control("trustanchors", &format!("{}\n", c.ca().display()));
    let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(c.mx()), client_ca: Some(c.ca()), ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);

    // Without one: the handshake fails, nothing is sent.
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_nothing_sent("no client certificate", &r, &peer);

    // control/clientcert and control/clientkey.
    home.control("clientcert", &format!("{}\n", c.client().cert.display()));
    home.control("clientkey", &format!("{}\n", c.client().key.display()));
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_delivered_over_tls("clientcert + clientkey", &r, &peer);
    assert_eq!(peer.messages()[0].get("client_cert"), "client.test");

    // One file holding both.
    let both = dir.join("client-both.pem");
    let mut pem = read_file(&c.client().cert);
    pem.extend_from_slice(&read_file(&c.client().key));
    write_file(&both, &pem);
    home.control("clientcert", &format!("{}\n", both.display()));
    home.remove_control("clientkey");
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_eq!(r.letters(), "rK", "clientcert holding the key\n{}", r.describe());
    assert_eq!(peer.messages().len(), 2);
    assert_eq!(peer.messages()[1].get("client_cert"), "client.test");

    // A certificate of another CA is refused.
    home.control("clientcert", &format!("{}\n", c.rogue_client().cert.display()));
    home.control("clientkey", &format!("{}\n", c.rogue_client().key.display()));
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_eq!(r.letters(), "Z", "rogue client certificate\n{}", r.describe());
    assert_eq!(peer.messages().len(), 2);
}

/// tlsstrictness 0: "a failed handshake is retried at once in plaintext
/// on a new connection to the same address, never deferred". A server
/// that requires a client certificate we do not have fails the handshake.
fn clientcert_missing_at_level_0(name: &str, tls12: bool) {
    let (dir, home) = setup(name);
    let c = dir.certs().clone();
    home.control("trustanchors", &format!("{}\n", c.ca().display()));
    let peer =
        Aiosmtpd::start(&dir, &AioOpts { tls: Some(c.mx()), client_ca: Some(c.ca()), tls12, ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_eq!(r.letters(), "rK", "{}\n{}", r.describe(), peer.describe());
    let m = peer.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].get("tls"), "none");
    assert_eq!(peer.connects(), 2, "{}", peer.describe());
}

#[test]
fn clientcert_missing_at_level_0_falls_back_to_plaintext_tls12() {
    clientcert_missing_at_level_0("clientcert_level0_tls12", true);
}

#[test]
fn clientcert_missing_at_level_0_falls_back_to_plaintext_tls13() {
    // In TLS 1.3 the server refuses the missing certificate after the
    // client has finished its side of the handshake: the alert comes with
    // the first read (the reply to the second EHLO).
    clientcert_missing_at_level_0("clientcert_level0_tls13", false);
}

#[test]
fn clientcert_with_ucspi_tlsd_requiring_one() {
    let (dir, home) = setup("clientcert_chain");
    let c = dir.certs().clone();
    home.control("tlsstrictness", "2\n");
    home.control("trustanchors", &format!("{}\n", c.ca().display()));
    let server = Chain::new(&dir).tlsd_args(["-y"]).env("CAFILE", c.ca()).start();
    home.route_to(LO, server.port());
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    assert_eq!(r.letters(), "Z", "without a client certificate\n{}", r.describe());
    assert!(server.messages().is_empty());
    home.control("clientcert", &format!("{}\n", c.client().cert.display()));
    home.control("clientkey", &format!("{}\n", c.client().key.display()));
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], MSG);
    r.expect("rK", 'K').expect_text_contains("\nTLS: TLSv1.");
    assert_eq!(server.messages(), vec![normalized(MSG)]);
}

// ====================================================== transparency

/// Delivers each message to one aiosmtpd peer (SIZE and 8BITMIME
/// announced, PIPELINING on) and checks what it stored, the envelope
/// parameters, and that every run made exactly one transaction.
fn deliver_each_and_compare(name: &str, messages: &[Vec<u8>]) {
    let (_dir, home, peer) = aio_routed(name, &AioOpts { pipelining: true, size: 100_000_000, ..AioOpts::default() });
    for (i, m) in messages.iter().enumerate() {
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], m);
        assert_eq!(r.letters(), "rK", "message {i} \"{}\"\n{}", show(m), r.describe());
        let stored = peer.messages();
        assert_eq!(stored.len(), i + 1, "message {i} \"{}\"\n{}", show(m), peer.describe());
        let got = &stored[i];
        assert!(
            got.content == normalized(m),
            "message {i}: the server stored\n\"{}\"\ninstead of\n\"{}\"\nfor the queue file\n\"{}\"\n{}",
            show(&got.content),
            show(&normalized(m)),
            show(m),
            r.describe()
        );
        let mut options = vec![format!("SIZE={}", encoded_size(m))];
        if m.iter().any(|&b| b >= 0x80) {
            options.push("BODY=8BITMIME".to_owned());
        }
        assert_eq!(got.all("mail_option"), options, "message {i}: MAIL parameters\n{}", r.describe());
        assert_eq!(peer.commands("MAIL").len(), i + 1, "message {i}: no second transaction\n{}", peer.describe());
        assert_eq!(peer.commands("DATA").len(), i + 1, "message {i}\n{}", peer.describe());
    }
    // Nothing the server read was an unknown command.
    let log = peer.log();
    assert!(!log.contains("< 500") && !log.contains("< 502") && !log.contains("< 503"), "{}", peer.describe());
}

fn random_message(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&[u8]] = &[
        b".",
        b"\r",
        b"\n",
        b"\r\n",
        b"\0",
        b"..",
        b"\n.\n",
        b"\r.\r",
        b".\r\n",
        b"MAIL FROM:<x@y>",
        b"\xff",
        b"\x80",
        b"\xe9t\xe9",
    ];
    let len = rng.below(400) as usize;
    let mut m = Vec::with_capacity(len + 16);
    while m.len() < len {
        match rng.below(4) {
            0 => m.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize]),
            1 => m.push(0x80 + rng.below(128) as u8),
            _ => m.push(b"abc xyz:<>"[rng.below(10) as usize]),
        }
    }
    // A queue file ends with LF.
    m.push(b'\n');
    m
}

#[test]
fn transparency_random_messages() {
    let mut rng = Rng::new(0x5eed_cafe_f00d);
    let messages: Vec<Vec<u8>> = (0..40).map(|_| random_message(&mut rng)).collect();
    deliver_each_and_compare("transparency_random", &messages);
}

fn adversarial() -> Vec<Vec<u8>> {
    let mut long_lines = Vec::new();
    for c in [b'a', b'.', b'\xe9'] {
        long_lines.extend(std::iter::repeat_n(c, 10 * 1024));
        long_lines.push(b'\n');
    }
    vec![
        b"smuggle\r.\nMAIL FROM:<x>\n".to_vec(),
        b"smuggle\r.\r\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<y@evil.test>\r\nDATA\r\nevil\r\n.\r\n".to_vec(),
        b"\n.\n".to_vec(),
        b".\n".to_vec(),
        b"x\r\r\n.\r\n".to_vec(),
        b"a\n.\nb\r\n.\r\nc\r.\rd\n..\n...\n".to_vec(),
        b"\r\n.\r\n".to_vec(),
        b"\r".to_vec().into_iter().chain(b".\n".iter().copied()).collect(),
        long_lines,
        Vec::new(),
    ]
}

#[test]
fn transparency_adversarial_messages() {
    deliver_each_and_compare("transparency_adversarial", &adversarial());
}

#[test]
fn transparency_adversarial_messages_to_smtp_sink() {
    // smtp-sink makes one dump per transaction: a message that ended the
    // data early would show as a second one.
    let (dir, home) = setup("transparency_sink");
    let sink = SmtpSink::start(&dir, &[]);
    home.route_to(sink.ip, sink.port);
    let messages = adversarial();
    for (i, m) in messages.iter().enumerate() {
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], m);
        assert_eq!(r.letters(), "rK", "message {i} \"{}\"\n{}", show(m), r.describe());
        assert_eq!(sink.dumps().len(), i + 1, "message {i} \"{}\" made more than one transaction", show(m));
    }
}

#[test]
fn transparency_5_mib_message() {
    let mut rng = Rng::new(42);
    let mut m = Vec::with_capacity(5 * 1024 * 1024 + 100);
    while m.len() < 5 * 1024 * 1024 {
        let len = rng.below(1200) as usize;
        if rng.below(5) == 0 {
            m.push(b'.');
        }
        m.extend((0..len).map(|_| b"abcdefghij .:\x80\xfe"[rng.below(14) as usize]));
        m.extend_from_slice(if rng.below(7) == 0 { b"\r\n" } else { b"\n" });
    }
    let start = Instant::now();
    deliver_each_and_compare("transparency_5mib", &[m]);
    assert!(start.elapsed() < secs(60), "5 MiB took {:?}", start.elapsed());
}

#[test]
fn transparency_partial_final_line_is_d_and_nothing_is_delivered() {
    let (_dir, home, peer) = aio_routed("transparency_partial", &AioOpts { pipelining: true, ..AioOpts::default() });
    for m in [&b"no newline"[..], b"Subject: x\n\nbody\n.", b"ends with CR\r", b"a\nb"] {
        let r = home.deliver(&[], &["example.test", SENDER, RCPT], m);
        r.expect("D", 'D')
            .expect_exact(&report_bytes(&["DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"]));
    }
    assert!(peer.messages().is_empty());
    assert!(peer.commands("DATA").is_empty(), "{}", peer.describe());
}

// ========================================================== envelope

#[test]
fn envelope_null_senders_and_quoting() {
    let (_dir, home, peer) = aio_routed("envelope", &AioOpts::default());
    for sender in ["", "#@[]"] {
        home.deliver(&[], &["example.test", sender, RCPT], MSG).expect("rK", 'K');
    }
    home.deliver(&[], &["example.test", "we ird@sender.test", "b c@example.test"], MSG).expect("rK", 'K');
    assert_eq!(
        peer.commands("MAIL"),
        ["MAIL FROM:<>", "MAIL FROM:<>", "MAIL FROM:<\"we ird\"@sender.test>"],
        "{}",
        peer.describe()
    );
    assert_eq!(peer.commands("RCPT").last().map(String::as_str), Some("RCPT TO:<\"b c\"@example.test>"));
    assert_eq!(peer.commands("EHLO").first().map(String::as_str), Some("EHLO me.test"));
}

#[test]
fn envelope_helohost_wins_over_me() {
    let (_dir, home, peer) = aio_routed("envelope_helohost", &AioOpts::default());
    home.control("helohost", "helo.test\n");
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K');
    assert_eq!(peer.commands("EHLO"), ["EHLO helo.test"]);
}

const CRLF_RCPT: &[u8] = b"evil@example.test>\r\nRSET\r\nRCPT TO:<x@example.test";

#[test]
fn envelope_recipient_with_a_line_break_is_refused_and_never_sent() {
    let (_dir, home, peer) = aio_routed("envelope_crlf", &AioOpts { pipelining: true, ..AioOpts::default() });
    let args: [&[u8]; 4] = [b"example.test", SENDER.as_bytes(), RCPT.as_bytes(), CRLF_RCPT];
    let r = home.run(&[], &args, MSG, secs(60));
    r.expect("rhK", 'K');
    assert!(r.text_of(1).ends_with("(#5.1.3)\n"), "{}", r.describe());
    assert_eq!(peer.commands("RCPT"), ["RCPT TO:<b@example.test>"], "{}", peer.describe());
    assert!(peer.commands("RSET").is_empty());
    assert_eq!(peer.messages()[0].all("rcpt"), [RCPT]);
}

#[test]
fn envelope_invalid_recipient_text_is_the_documented_one() {
    // doc/qmail-remote.md, Texts: `h` `Sorry, this recipient address is
    // invalid: ... (#5.1.3)`, for an address never sent: the remote host
    // said nothing about it.
    let (_dir, home, _peer) = aio_routed("envelope_crlf_text", &AioOpts::default());
    let args: [&[u8]; 3] = [b"example.test", SENDER.as_bytes(), CRLF_RCPT];
    let r = home.run(&[], &args, MSG, secs(60));
    r.expect("hD", 'D');
    assert!(r.text_of(0).starts_with("Sorry, this recipient address is invalid: "), "{}", r.describe());
    assert!(!r.text_of(0).contains("Remote host said"), "{}", r.describe());
}

#[test]
fn envelope_size_and_8bitmime() {
    let (dir, home) = setup("envelope_size");
    let peer = Aiosmtpd::start(&dir, &AioOpts { size: 1000, ..AioOpts::default() });
    home.route_to(peer.ip, peer.port);
    let eight = b"Subject: caf\xc3\xa9\n\n\xe9t\xe9\n".to_vec();
    home.deliver(&[], &["example.test", SENDER, RCPT], &eight).expect("rK", 'K');
    home.deliver(&[], &["example.test", SENDER, RCPT], MSG).expect("rK", 'K');
    assert_eq!(
        peer.commands("MAIL"),
        [
            format!("MAIL FROM:<a@sender.test> SIZE={} BODY=8BITMIME", encoded_size(&eight)),
            format!("MAIL FROM:<a@sender.test> SIZE={}", encoded_size(MSG)),
        ]
    );
    assert_eq!(peer.messages()[0].content, normalized(&eight));

    // Over the announced SIZE: a permanent failure, without MAIL.
    let big: Vec<u8> = b"x\n".repeat(2000);
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], &big);
    r.expect("D", 'D').expect_exact(&report_bytes(&[&format!(
        "DSorry, the message is {} bytes and 127.0.0.1 takes at most 1000. (#5.3.4)\n",
        encoded_size(&big)
    )]));
    assert_eq!(peer.commands("MAIL").len(), 2, "{}", peer.describe());

    // Without 8BITMIME: no BODY=, the message as it is.
    let no8 = Aiosmtpd::start(&dir, &AioOpts { no_8bitmime: true, ..AioOpts::default() });
    home.route_to(no8.ip, no8.port);
    home.deliver(&[], &["example.test", SENDER, RCPT], &eight).expect("rK", 'K');
    assert_eq!(no8.commands("MAIL"), ["MAIL FROM:<a@sender.test>"]);
    assert_eq!(no8.messages()[0].content, normalized(&eight));

    // Without SIZE announced (smtp-sink): no SIZE=; 8BITMIME offered.
    let sink = SmtpSink::start(&dir, &[]);
    home.route_to(sink.ip, sink.port);
    home.deliver(&[], &["example.test", SENDER, RCPT], &eight).expect("rK", 'K');
    let dumps = sink.dumps();
    assert_eq!(SmtpSink::dump_header(&dumps[0], "X-Mail-Args").as_deref(), Some("<a@sender.test> BODY=8BITMIME"));
}

#[test]
fn envelope_smtputf8_only_when_offered() {
    let (dir, home) = setup("envelope_smtputf8");
    let rcpt = "j\u{f6}rg@example.test";
    let plain = Aiosmtpd::start(&dir, &AioOpts::default());
    home.route_to(plain.ip, plain.port);
    let r = home.deliver(&[], &["example.test", SENDER, rcpt], MSG);
    r.expect("D", 'D').expect_exact(&report_bytes(&[
        "DSorry, an address of this message needs SMTPUTF8, which 127.0.0.1 does not offer. (#5.6.7)\n",
    ]));
    assert!(plain.commands("MAIL").is_empty(), "{}", plain.describe());

    let utf8 = Aiosmtpd::start(&dir, &AioOpts { smtputf8: true, ..AioOpts::default() });
    home.route_to(utf8.ip, utf8.port);
    home.deliver(&[], &["example.test", SENDER, rcpt], MSG).expect("rK", 'K');
    assert_eq!(utf8.commands("MAIL"), ["MAIL FROM:<a@sender.test> SMTPUTF8"], "{}", utf8.describe());
    assert_eq!(utf8.messages()[0].all("rcpt"), [rcpt]);
}

// ===================================================== report format

#[test]
fn report_usage_errors() {
    let (_dir, home) = setup("report_usage");
    let usage = report_bytes(&["DI (qmail-remote) was invoked improperly. (#5.3.5)\n"]);
    for args in [&[][..], &["example.test"][..], &["example.test", SENDER][..]] {
        home.deliver(&[], args, MSG).expect("D", 'D').expect_exact(&usage);
    }
}

#[test]
fn report_local_failures_are_z() {
    let (dir, home) = setup("report_local");
    let peer = Aiosmtpd::start(&dir, &AioOpts::default());
    home.route_to(peer.ip, peer.port);
    let args = ["example.test", SENDER, RCPT];

    let missing = dir.join("no-such-home").display().to_string();
    home.deliver(&[("QMAILHOME", &missing)], &args, MSG)
        .expect("Z", 'Z')
        .expect_exact(&report_bytes(&["ZUnable to switch to home directory. (#4.3.0)\n"]));

    home.remove_control("me");
    home.deliver(&[], &args, MSG)
        .expect("Z", 'Z')
        .expect_exact(&report_bytes(&["ZUnable to read control files. (#4.3.0)\n"]));
    home.control("me", "me.test\n");

    home.control("smtproutes", "this is not a route\n");
    home.deliver(&[], &args, MSG).expect("Z", 'Z').expect_text_starts("Unable to read control/smtproutes");
    assert_eq!(peer.connects(), 0);
}

#[test]
fn report_rspawn_reading_matches_the_stock_examples() {
    // The examples of the spec, read the way qmail-rspawn reads them.
    assert_eq!(
        rspawn(b"r\0K127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 queued\n\0"),
        (b'K', b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 queued\n".to_vec())
    );
    assert_eq!(
        rspawn(b"h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\0DGiving up on 127.0.0.1.\n\0"),
        (b'D', b"127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\nGiving up on 127.0.0.1.\n".to_vec())
    );
    assert_eq!(rspawn(b"s451 later\n\0DGiving up on 127.0.0.1.\n\0").0, b'Z');
    assert_eq!(rspawn(b"r\0"), (b'D', Vec::new()));
    assert_eq!(rspawn(b""), (b'Z', b"qmail-remote produced no output.\n".to_vec()));
    assert!(parse_records(b"r\0K\0").is_ok());
    assert!(parse_records(b"r\0").is_err());
    assert!(parse_records(b"K\0K\0").is_err());
    assert!(parse_records(b"rx\0K\0").is_err());
}

// ============================================ qmail-remote-io alone

fn remote_io(home: &Home, port: u16, opts: &[&str], message: &[u8]) -> chainmail_tests::run::Output {
    let msg = home.message_file(message);
    let mut argv: Vec<std::ffi::OsString> = vec![
        chainmail_tests::find_program("tcpclient").into(),
        "-RHl0".into(),
        "127.0.0.1".into(),
        port.to_string().into(),
        chainmail_tests::bin("qmail-remote-io").into(),
        "-h".into(),
        "me.test".into(),
    ];
    argv.extend(opts.iter().map(|o| std::ffi::OsString::from(*o)));
    argv.extend(["--", "127.0.0.1", SENDER, RCPT].map(std::ffi::OsString::from));
    let (out, repro) = run_with_stdin_file(&argv, &[], &msg, secs(60));
    assert!(!out.timed_out && out.stderr.is_empty(), "{repro}\n{}", out.describe());
    assert!(parse_records(&out.stdout).is_ok(), "{repro}\n{}", out.describe());
    out
}

#[test]
fn remote_io_under_tcpclient() {
    let (dir, home) = setup("remote_io");
    let peer = Aiosmtpd::start(&dir, &AioOpts { tls: Some(dir.certs().mx()), ..AioOpts::default() });
    let out = remote_io(&home, peer.port, &[], MSG);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with(b"r\0K127.0.0.1 accepted message.\n"), "{}", out.describe());
    assert_eq!(peer.messages()[0].get("tls"), "none", "-s off by default");

    let ca = dir.certs().ca().display().to_string();
    let out = remote_io(&home, peer.port, &["-s", &format!("verify:{ca}"), "-n", "mx.test"], MSG);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(contains(&out.stdout, b"\nTLS: TLSv1."), "{}", out.describe());
    let out = remote_io(&home, peer.port, &["-s", &format!("verify:{ca}"), "-n", "b.test"], MSG);
    assert_eq!(out.code(), Some(12), "wrong name under verify\n{}", out.describe());
    assert_eq!(peer.messages().len(), 2);

    let plain = Aiosmtpd::start(&dir, &AioOpts::default());
    let out = remote_io(&home, plain.port, &["-s", "require"], MSG);
    assert_eq!(out.code(), Some(11), "no STARTTLS under require\n{}", out.describe());
    assert!(plain.messages().is_empty());

    let sink = SmtpSink::start(&dir, &["-r", "connect"]);
    let out = remote_io(&home, sink.port, &[], MSG);
    assert_eq!(out.code(), Some(10), "4xx greeting: next address\n{}", out.describe());
    assert_eq!(parse_records(&out.stdout).map(|r| r.len()).ok(), Some(1));
}

// ============================================ replies ahead of commands

/// A one-connection server on 127.0.0.1 that follows `script`: for each
/// entry it reads one command line (none for the first, the greeting) and
/// writes the reply bytes as they are. Then it reads until EOF. The thread
/// returns every line it got. Every read is bounded (30 s).
fn scripted_server(script: Vec<&'static str>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().expect("accept");
        sock.set_read_timeout(Some(secs(30))).expect("timeout");
        let mut writer = sock.try_clone().expect("clone");
        let mut reader = BufReader::new(sock);
        let mut got = Vec::new();
        let mut read_line = |got: &mut Vec<String>| -> bool {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => false,
                Ok(_) => {
                    got.push(line.trim_end().to_owned());
                    true
                }
            }
        };
        for (i, reply) in script.iter().enumerate() {
            if i > 0 && !read_line(&mut got) {
                return got;
            }
            if writer.write_all(reply.as_bytes()).is_err() {
                return got;
            }
        }
        while read_line(&mut got) {}
        got
    });
    (port, handle)
}

#[test]
fn replies_ahead_of_commands_are_z_and_the_body_is_never_sent() {
    let (_dir, home) = setup("early_replies");
    // Without PIPELINING, MAIL is answered with its reply and those of the
    // RCPT and DATA not sent yet.
    let (port, server) =
        scripted_server(vec!["220 early.test ESMTP\r\n", "250 early.test\r\n", "250 ok\r\n250 ok\r\n354 go ahead\r\n"]);
    home.route_to(LO, port);
    let message = b"Subject: early\n\nRCPT TO:<smuggled@evil.test>\nQUIT\n";
    let r = home.deliver(&[], &["example.test", SENDER, RCPT], message);
    r.expect("Z", 'Z').expect_text_contains("broke the SMTP protocol").expect_text_lacks("Possible duplicate");
    let got = server.join().expect("server thread");
    assert_eq!(got, ["EHLO me.test", "MAIL FROM:<a@sender.test>"], "the server got more than MAIL\n{}", r.describe());
}

// ============================ ESMTP parameters smuggled through a domain

#[test]
fn envelope_parameters_smuggled_through_a_domain_are_refused() {
    let (_dir, home, peer) = aio_routed("envelope_smuggled", &AioOpts { pipelining: true, ..AioOpts::default() });
    // A bad sender: D, and nothing reaches the server (not even a
    // connection).
    for sender in ["x@evil.example> AUTH=<>", "x@evil.example> SIZE=1", "x@[192.0.2.1] AUTH=<>", "x@a b"] {
        let r = home.deliver(&[], &["example.test", sender, RCPT], MSG);
        r.expect("D", 'D')
            .expect_text_starts("Sorry, the sender address is invalid: ")
            .expect_text_contains("neither a domain name nor an address literal")
            .expect_text_contains("(#5.1.7)");
    }
    assert_eq!(peer.connects(), 0, "{}", peer.describe());
    assert!(peer.commands("MAIL").is_empty());

    // A bad recipient among good ones: h in its place, the others
    // delivered, and no RCPT for it.
    let bad = "y@evil.example> NOTIFY=NEVER ORCPT=rfc822;y";
    let r = home.deliver(&[], &["example.test", SENDER, RCPT, bad, "c@example.test"], MSG);
    r.expect("rhrK", 'K');
    assert!(r.text_of(1).starts_with("Sorry, this recipient address is invalid: "), "{}", r.describe());
    assert!(r.text_of(1).ends_with("(#5.1.3)\n"), "{}", r.describe());
    assert_eq!(peer.commands("RCPT"), ["RCPT TO:<b@example.test>", "RCPT TO:<c@example.test>"], "{}", peer.describe());
    assert_eq!(peer.messages()[0].all("rcpt"), [RCPT, "c@example.test"]);

    // As qmail-rspawn calls it, one recipient: hD, a bounce for it, and
    // no transaction.
    let r = home.deliver(&[], &["example.test", SENDER, bad], MSG);
    r.expect("hD", 'D');
    assert_eq!(peer.commands("MAIL").len(), 1, "{}", peer.describe());
    assert_eq!(peer.commands("RCPT").len(), 2, "{}", peer.describe());
}

// ================================================ which qmail home

/// Installs copies of qmail-remote (and of qmail-remote-io when `io`) in
/// `<home>/bin`, as `install.sh --qmail` does; returns qmail-remote's path.
fn install_into(home: &Home, io: bool) -> std::path::PathBuf {
    let bin_dir = home.path.join("bin");
    std::fs::create_dir_all(&bin_dir).expect("create bin");
    let mut names = vec!["qmail-remote"];
    if io {
        names.push("qmail-remote-io");
    }
    for name in names {
        std::fs::copy(chainmail_tests::bin(name), bin_dir.join(name)).expect("copy the program");
    }
    bin_dir.join("qmail-remote")
}

/// `<home>/queue/mess`, where qmail-rspawn runs qmail-remote.
fn queue_mess(home: &Home) -> std::path::PathBuf {
    let d = home.path.join("queue/mess");
    std::fs::create_dir_all(&d).expect("create queue/mess");
    d
}

fn args3() -> [&'static [u8]; 3] {
    [b"example.test", SENDER.as_bytes(), RCPT.as_bytes()]
}

#[test]
fn home_from_the_working_directory_or_the_program_and_never_a_guess() {
    let (dir, home) = setup("home_a");
    let peer = Aiosmtpd::start(&dir, &AioOpts::default());
    home.route_to(peer.ip, peer.port);
    let (dir_b, other) = setup("home_b");
    let other_peer = Aiosmtpd::start(&dir_b, &AioOpts::default());
    other.route_to(other_peer.ip, other_peer.port);
    let copy = install_into(&home, true);
    let built = chainmail_tests::bin("qmail-remote");
    let root = std::path::Path::new("/");
    let run = |program: &std::path::Path, cwd: &std::path::Path, env: &[(&str, &str)]| {
        home.run_program(program, cwd, env, &args3(), MSG, secs(60))
    };

    // The working directory qmail-rspawn gives, the program elsewhere
    // (target/debug: not a qmail home).
    run(&built, &queue_mess(&home), &[]).expect("rK", 'K');
    assert_eq!(peer.messages().len(), 1, "cwd only");
    // The program in <home>/bin, run from /.
    run(&copy, root, &[]).expect("rK", 'K');
    assert_eq!(peer.messages().len(), 2, "program only");
    // Both, agreeing.
    run(&copy, &queue_mess(&home), &[]).expect("rK", 'K');
    assert_eq!(peer.messages().len(), 3, "both");
    // QMAILHOME wins over both.
    let other_home = other.path.display().to_string();
    run(&copy, &queue_mess(&home), &[("QMAILHOME", &other_home)]).expect("rK", 'K');
    assert_eq!((peer.messages().len(), other_peer.messages().len()), (3, 1), "QMAILHOME");

    // Disagreeing: the program of one home run in the queue of another.
    // Neither home's routes are used, nothing is sent.
    let r = run(&copy, &queue_mess(&other), &[]);
    r.expect("Z", 'Z')
        .expect_text_starts("Unable to find the qmail home: ")
        .expect_text_contains(&other.path.canonicalize().expect("canonical").display().to_string())
        .expect_text_contains("(#4.3.0)");
    assert_eq!((peer.connects(), other_peer.connects()), (3, 1), "{}\n{}", peer.describe(), other_peer.describe());
}

#[test]
fn a_missing_or_unusable_qmail_remote_io_is_z_before_any_connection() {
    let (dir, home) = setup("io_missing");
    let peer = Aiosmtpd::start(&dir, &AioOpts::default());
    home.route_to(peer.ip, peer.port);
    let copy = install_into(&home, false);
    let io = home.path.join("bin/qmail-remote-io");
    let cases: [(&str, Option<u32>); 3] =
        [("missing", None), ("not executable", Some(0o644)), ("a directory", Some(0))];
    for (what, mode) in cases {
        let _ = std::fs::remove_file(&io);
        let _ = std::fs::remove_dir(&io);
        match mode {
            None => {}
            Some(0) => std::fs::create_dir(&io).expect("mkdir"),
            Some(m) => {
                std::fs::copy(chainmail_tests::bin("qmail-remote-io"), &io).expect("copy");
                std::fs::set_permissions(&io, std::os::unix::fs::PermissionsExt::from_mode(m)).expect("chmod");
            }
        }
        let r = home.run_program(&copy, &queue_mess(&home), &[], &args3(), MSG, secs(60));
        r.expect("Z", 'Z')
            .expect_text_starts("Unable to run qmail-remote-io: ")
            .expect_text_contains("nothing was sent")
            .expect_text_lacks("may have been delivered");
        assert_eq!(peer.connects(), 0, "{what}: {}", peer.describe());
    }
}

// ============================================ DNS and connection limits

/// Listeners on port 25 of `n` random 127.0.0.0/8 addresses that answer
/// every connection with a 421 greeting (qmail-remote goes on to the next
/// address) and count them.
struct CountingListeners {
    addrs: Vec<Ipv4Addr>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CountingListeners {
    fn start(n: usize) -> CountingListeners {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        while listeners.len() < n {
            let ip = random_loopback();
            if addrs.contains(&ip) {
                continue;
            }
            // Another test may hold this address's port 25: take another.
            if let Ok(l) = std::net::TcpListener::bind((ip, 25)) {
                l.set_nonblocking(true).expect("nonblocking");
                listeners.push(l);
                addrs.push(ip);
            }
        }
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((mut sock, _)) = l.accept() {
                        idle = false;
                        c.fetch_add(1, Ordering::SeqCst);
                        let _ = std::io::Write::write_all(&mut sock, b"421 4.3.2 busy\r\n");
                    }
                }
                if idle {
                    // Polling the nonblocking listeners; qmail-remote waits
                    // for the greeting, so nothing is missed.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        CountingListeners { addrs, count, stop, thread: Some(thread) }
    }

    fn connections(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingListeners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The queries the DNS server got, without the TCP repetitions of
/// truncated UDP answers.
fn udp_queries(dns: &DnsServer) -> usize {
    dns.queries().lines().filter(|l| l.starts_with("udp ")).count()
}

/// Runs qmail-remote under `/usr/bin/time`; returns the report and the
/// peak RSS in KiB.
fn deliver_measured(home: &Home, env: &[(&str, &str)], args: &[&str]) -> (Report, u64) {
    let rss_file = home.path.join("rss");
    let qmail_home = home.path.display().to_string();
    let program = chainmail_tests::bin("qmail-remote");
    let mut argv: Vec<&[u8]> = vec![b"-f", b"%M", b"-o", rss_file.as_os_str().as_encoded_bytes()];
    argv.push(program.as_os_str().as_encoded_bytes());
    argv.extend(args.iter().map(|a| a.as_bytes()));
    let mut env = env.to_vec();
    env.push(("QMAILHOME", &qmail_home));
    let r =
        home.run_program(std::path::Path::new("/usr/bin/time"), std::path::Path::new("/"), &env, &argv, MSG, secs(60));
    let rss = std::fs::read_to_string(&rss_file).expect("time's output");
    (r, rss.trim().parse().unwrap_or_else(|_| panic!("time said {rss:?}")))
}

#[test]
fn limits_thousands_of_mx_records_cost_a_bounded_number_of_queries() {
    let (dir, home) = setup("limits_many_mx");
    let sink = SmtpSink::start_25(&dir, &[]);
    // 2500 exchangers (about what fits in one DNS message), the best one the
    // sink; the others with addresses where nothing listens.
    let mut zone = String::new();
    for i in 0..2500 {
        zone.push_str(&format!("big.test MX {} m{i}.big.test\n", 10 + i));
        zone.push_str(&format!("m{i}.big.test A 192.0.2.{}\n", 1 + i % 250));
    }
    zone.push_str(&format!("m0.big.test A {}\n", sink.ip));
    let zone = zone.replacen("m0.big.test A 192.0.2.1\n", "", 1);
    let dns = DnsServer::start(&dir, &zone);
    let (r, rss_kib) = deliver_measured(&home, &dns_env(&dns), &["big.test", SENDER, "b@big.test"]);
    r.expect("rK", 'K').expect_text_starts(&format!("{} accepted message.\n", sink.ip));
    let queries = udp_queries(&dns);
    // One MX query, then A and AAAA for at most 10 exchangers.
    assert!(queries <= 1 + 2 * 10, "{queries} queries:\n{}", dns.queries());
    assert!(rss_kib < 24 * 1024, "peak RSS {rss_kib} KiB");
}

#[test]
fn limits_many_addresses_per_mx_bounded_connection_attempts() {
    let (dir, home) = setup("limits_many_addresses");
    let listeners = CountingListeners::start(64);
    // 60 exchangers of one preference, each with 1000 A records drawn from
    // the 64 listeners (in a different order for each).
    let mut zone = String::new();
    for i in 0..60 {
        zone.push_str(&format!("many.test MX 10 m{i}.many.test\n"));
        for j in 0..1000 {
            zone.push_str(&format!("m{i}.many.test A {}\n", listeners.addrs[(i * 7 + j) % 64]));
        }
    }
    for j in 0..1000 {
        zone.push_str(&format!("relay.test A {}\n", listeners.addrs[j % 64]));
    }
    let dns = DnsServer::start(&dir, &zone);
    let r = home.deliver(&dns_env(&dns), &["many.test", SENDER, "b@many.test"], MSG);
    r.expect("Z", 'Z')
        .expect_text_starts(NO_CONNECTION)
        .expect_text_contains("more addresses were not tried: qmail-remote makes at most 10 connections per delivery")
        .expect_text_contains("50 more mail exchangers were ignored");
    assert_eq!(listeners.connections(), 10, "connection attempts");
    let queries = udp_queries(&dns);
    assert!(queries <= 1 + 2 * 10, "{queries} queries:\n{}", dns.queries());

    // A relay with 1000 addresses: the first 4 are tried.
    home.control("smtproutes", ":relay.test:25\n");
    let r = home.deliver(&dns_env(&dns), &["many.test", SENDER, "b@many.test"], MSG);
    r.expect("Z", 'Z')
        .expect_text_contains("60 more addresses were ignored: qmail-remote uses at most 4 of each family");
    assert_eq!(listeners.connections(), 10 + 4, "connection attempts to the relay");
}

#[test]
fn literal_destination_needs_no_dns_at_all() {
    let (dir, home) = setup("literal_no_dns");
    let peer = Aiosmtpd::start_25(&dir, &AioOpts::default());
    // A DNSCACHEIP that no resolver could be built from: a literal host
    // must not need one.
    let host = format!("[{}]", peer.ip);
    let r = home.deliver(&[("DNSCACHEIP", "not-an-address")], &[&host, SENDER, &format!("b@{host}")], MSG);
    r.expect("rK", 'K');
    assert_eq!(peer.messages().len(), 1);
}
