//! The proxy against a fake smtpd, in memory, in every chunking.

use super::*;

/// A small scripted smtpd: replies to whole lines, records what it got.
#[derive(Debug, Default, Clone)]
struct FakeSmtpd {
    multiline: bool,
    native_starttls: bool,
    single_line_ehlo: bool,
    ehlo_code: u16,
    rset_fails: bool,
    malformed_on: Option<&'static str>,
    in_data: bool,
    partial: Vec<u8>,
    received: Vec<u8>,
    lines: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    current: Vec<u8>,
    quit: bool,
}

impl FakeSmtpd {
    fn new() -> FakeSmtpd {
        FakeSmtpd { ehlo_code: 250, ..FakeSmtpd::default() }
    }

    fn reply(&self, code: u16, text: &str) -> Vec<u8> {
        if self.multiline {
            format!("{code}-{text} (1)\r\n{code}-{text} (2)\r\n{code} {text} (3)\r\n").into_bytes()
        } else {
            format!("{code} {text}\r\n").into_bytes()
        }
    }

    fn greeting(&self) -> Vec<u8> {
        b"220 fake.test ESMTP\r\n".to_vec()
    }

    /// Takes bytes written to the smtpd, returns its replies.
    fn input(&mut self, data: &[u8]) -> Vec<u8> {
        self.received.extend_from_slice(data);
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.extend(self.line(&line));
        }
        out
    }

    fn line(&mut self, line: &[u8]) -> Vec<u8> {
        if self.quit {
            return Vec::new();
        }
        if self.in_data {
            if line == b".\r\n" {
                self.in_data = false;
                self.messages.push(std::mem::take(&mut self.current));
                return self.reply(250, "2.0.0 queued");
            }
            let l = line.strip_prefix(b".").unwrap_or(line);
            self.current.extend_from_slice(l);
            return Vec::new();
        }
        self.lines.push(line.to_vec());
        let cmd = CommandLine::parse(line);
        let verb = String::from_utf8_lossy(cmd.verb).to_ascii_uppercase();
        if self.malformed_on == Some(verb.as_str()) {
            return b"2x0 nonsense\r\n".to_vec();
        }
        match verb.as_str() {
            "EHLO" if self.ehlo_code != 250 => self.reply(self.ehlo_code, "no EHLO here"),
            "EHLO" if self.single_line_ehlo => b"250 fake.test\r\n".to_vec(),
            "EHLO" => {
                let mut r = b"250-fake.test\r\n250-PIPELINING\r\n".to_vec();
                if self.native_starttls {
                    r.extend_from_slice(b"250-STARTTLS\r\n");
                }
                r.extend_from_slice(b"250 8BITMIME\r\n");
                r
            }
            "HELO" => self.reply(250, "fake.test"),
            "MAIL" | "RCPT" => self.reply(250, "2.1.0 ok"),
            "RSET" if self.rset_fails => self.reply(451, "cannot reset"),
            "RSET" => self.reply(250, "2.0.0 reset"),
            "DATA" => {
                self.in_data = true;
                self.reply(354, "go ahead")
            }
            "VRFY" => self.reply(252, "maybe"),
            "HELP" => b"214-help line one\r\n214-help line two\r\n214 end of help\r\n".to_vec(),
            "AUTH" => self.reply(334, "VXNlcm5hbWU6"),
            "QUIT" => {
                self.quit = true;
                self.reply(221, "bye")
            }
            _ => self.reply(502, "unimplemented"),
        }
    }
}

/// What a session looked like from both ends.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    to_client: Vec<u8>,
    smtpd_received: Vec<u8>,
    end: Status,
}

/// Runs `client` (bytes sent by the client, in order, as fast as the proxy
/// takes them) against `smtpd`, feeding both directions in `chunk`-sized
/// pieces. When the proxy hands over to a relay, the relay is modelled as
/// transparent: the rest of the client's bytes go to the smtpd and its
/// replies straight to the client. A STARTTLS is answered with success.
fn run(config: Config, mut smtpd: FakeSmtpd, client: &[u8], chunk: usize, client_eof: bool) -> (Transcript, FakeSmtpd) {
    let mut proxy = Proxy::new(config);
    let mut to_client = Vec::new();
    let mut server_queue = smtpd.greeting();
    let mut client_pos = 0;
    let mut eof_sent = false;
    for _round in 0..100_000 {
        let mut progress = false;
        if proxy.wants_client_input() && client_pos < client.len() {
            let end = (client_pos + chunk).min(client.len());
            proxy.client_data(&client[client_pos..end]);
            client_pos = end;
            progress = true;
        } else if client_eof && client_pos == client.len() && !eof_sent && proxy.wants_client_input() {
            proxy.client_closed();
            eof_sent = true;
            progress = true;
        }
        let out = proxy.server_output().to_vec();
        if !out.is_empty() {
            proxy.consume_server_output(out.len());
            server_queue.extend(smtpd.input(&out));
            progress = true;
        }
        if proxy.wants_server_input() && !server_queue.is_empty() {
            let n = chunk.min(server_queue.len());
            let piece: Vec<u8> = server_queue.drain(..n).collect();
            proxy.server_data(&piece);
            progress = true;
        } else if proxy.wants_server_input() && server_queue.is_empty() && smtpd.quit {
            proxy.server_closed();
            progress = true;
        }
        let out = proxy.client_output().to_vec();
        if !out.is_empty() {
            proxy.consume_client_output(out.len());
            to_client.extend_from_slice(&out);
            progress = true;
        }
        match proxy.status() {
            Status::Running => {}
            Status::StartTls => {
                proxy.tls_started();
                progress = true;
            }
            Status::Relay(t) => {
                let parts = proxy.into_relay();
                to_client.extend_from_slice(&parts.to_client);
                to_client.extend_from_slice(&server_queue);
                to_client.extend(smtpd.input(&parts.to_server));
                to_client.extend(smtpd.input(&client[client_pos..]));
                return (
                    Transcript { to_client, smtpd_received: smtpd.received.clone(), end: Status::Relay(t) },
                    smtpd,
                );
            }
            Status::Finished(e) => {
                return (
                    Transcript { to_client, smtpd_received: smtpd.received.clone(), end: Status::Finished(e) },
                    smtpd,
                );
            }
        }
        if !progress {
            return (Transcript { to_client, smtpd_received: smtpd.received.clone(), end: Status::Running }, smtpd);
        }
    }
    panic!("the session did not settle");
}

/// Runs in every chunk size from 1 to 64 and the whole input at once, and
/// checks that every run gives the same transcript. Returns it.
fn run_all(config: Config, smtpd: &FakeSmtpd, client: &[u8], client_eof: bool) -> (Transcript, FakeSmtpd) {
    let (first, first_smtpd) = run(config, smtpd.clone(), client, 1 << 20, client_eof);
    for chunk in 1..=64 {
        let (t, _) = run(config, smtpd.clone(), client, chunk, client_eof);
        assert_eq!(
            String::from_utf8_lossy(&t.to_client),
            String::from_utf8_lossy(&first.to_client),
            "client transcript differs at chunk {chunk}"
        );
        assert_eq!(t, first, "transcript differs at chunk {chunk}");
    }
    (first, first_smtpd)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ehlo_gets_starttls_once_before_the_last_line() {
    let (t, _) = run_all(Config::default(), &FakeSmtpd::new(), b"EHLO client.test\r\n", false);
    assert_eq!(
        text(&t.to_client),
        "220 fake.test ESMTP\r\n250-fake.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 STARTTLS\r\n"
    );
    assert_eq!(t.end, Status::Running);
}

#[test]
fn native_starttls_is_not_doubled() {
    let smtpd = FakeSmtpd { native_starttls: true, ..FakeSmtpd::new() };
    let (t, _) = run_all(Config::default(), &smtpd, b"EHLO client.test\r\n", false);
    assert_eq!(text(&t.to_client).matches("STARTTLS").count(), 1, "{}", text(&t.to_client));
}

#[test]
fn single_line_ehlo_reply_becomes_two_lines() {
    let smtpd = FakeSmtpd { single_line_ehlo: true, ..FakeSmtpd::new() };
    let (t, _) = run_all(Config::default(), &smtpd, b"ehlo x\r\n", false);
    assert_eq!(text(&t.to_client), "220 fake.test ESMTP\r\n250-fake.test\r\n250 STARTTLS\r\n");
}

#[test]
fn failed_ehlo_is_not_touched() {
    let smtpd = FakeSmtpd { ehlo_code: 502, multiline: true, ..FakeSmtpd::new() };
    let (t, _) = run_all(Config::default(), &smtpd, b"EHLO x\r\n", false);
    assert!(!text(&t.to_client).contains("STARTTLS"), "{}", text(&t.to_client));
    assert!(text(&t.to_client).ends_with("502 no EHLO here (3)\r\n"));
}

#[test]
fn pipelined_rset_then_mail_gets_every_reply() {
    // The original proxy stalled for 300 s on exactly this.
    let client =
        b"EHLO x\r\nRSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n";
    let (t, smtpd) = run_all(Config::default(), &FakeSmtpd::new(), client, false);
    assert_eq!(t.end, Status::Relay(Transport::Plain));
    let got = text(&t.to_client);
    let codes: Vec<&str> = got.lines().map(|l| &l[..4]).collect();
    assert_eq!(
        codes,
        ["220 ", "250-", "250-", "250-", "250 ", "250 ", "250 ", "250 ", "354 ", "250 ", "221 "],
        "{got}"
    );
    assert!(got.contains("250 STARTTLS"));
    assert_eq!(smtpd.messages, vec![b"hello\r\n.dot\r\n".to_vec()]);
}

#[test]
fn local_and_forwarded_replies_keep_their_order() {
    let client =
        b"NOOP\r\nEHLO x\r\nNOOP\r\nFOO bar\r\nVRFY u\r\nRCPT TO:<x@y>\r\nHELP\r\nDATA\r\nRSET\r\n\r\nNOOP\r\n";
    let (t, smtpd) = run_all(Config { require_tls: false }, &FakeSmtpd::new(), client, false);
    let got = text(&t.to_client);
    let want = [
        "220 fake.test ESMTP",
        "250 2.0.0 OK",
        "250-fake.test",
        "250-PIPELINING",
        "250-8BITMIME",
        "250 STARTTLS",
        "250 2.0.0 OK",
        "500 5.5.2 Command not recognized",
        "252 maybe",
        "503 5.5.1 MAIL first",
        "214-help line one",
        "214-help line two",
        "214 end of help",
        "503 5.5.1 MAIL first",
        "250 2.0.0 reset",
        "500 5.5.2 Command not recognized",
        "250 2.0.0 OK",
    ];
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    // Only the forwarded commands reached the smtpd.
    assert_eq!(text(&smtpd.received), "EHLO x\r\nVRFY u\r\nHELP\r\nRSET\r\n");
}

#[test]
fn multiline_replies_of_every_command_pass_through() {
    let smtpd = FakeSmtpd { multiline: true, ..FakeSmtpd::new() };
    let client = b"HELP\r\nRSET\r\nVRFY x\r\nRSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nQUIT\r\n";
    let (t, _) = run_all(Config::default(), &smtpd, client, false);
    let got = text(&t.to_client);
    for code in ["250-2.0.0 reset (1)", "252 maybe (3)", "250 2.1.0 ok (3)", "221 bye (3)"] {
        assert!(got.contains(code), "{code} missing from {got}");
    }
    assert_eq!(got.matches("250 2.0.0 reset (3)").count(), 2);
    assert_eq!(got.matches("250 2.1.0 ok (3)").count(), 2);
}

#[test]
fn starttls_resets_the_smtpd_and_answers_220() {
    let (t, smtpd) = run_all(Config::default(), &FakeSmtpd::new(), b"EHLO x\r\nSTARTTLS\r\n", false);
    assert_eq!(t.end, Status::Relay(Transport::Tls));
    assert!(text(&t.to_client).ends_with("250 STARTTLS\r\n220 2.0.0 Ready to start TLS\r\n"));
    // The RSET's own reply went to the proxy, not the client.
    assert!(!text(&t.to_client).contains("reset"));
    assert_eq!(text(&smtpd.received), "EHLO x\r\nRSET\r\n");
}

#[test]
fn starttls_case_and_lf_only() {
    let (t, _) = run_all(Config::default(), &FakeSmtpd::new(), b"starttls\n", false);
    assert_eq!(t.end, Status::Relay(Transport::Tls));
}

#[test]
fn starttls_failure_to_reset_gives_454_and_the_session_goes_on() {
    let smtpd = FakeSmtpd { rset_fails: true, ..FakeSmtpd::new() };
    let (t, _) = run(Config::default(), smtpd, b"EHLO x\r\nSTARTTLS\r\n", 1 << 20, false);
    assert!(text(&t.to_client).ends_with("454 4.7.0 TLS not available: the server could not reset\r\n"));
    assert_eq!(t.end, Status::Running);
    let smtpd = FakeSmtpd { rset_fails: true, ..FakeSmtpd::new() };
    let (t, _) = run(Config::default(), smtpd, b"STARTTLS\r\nNOOP\r\n", 1, false);
    // NOOP was not read before the RSET reply (STARTTLS stops reading),
    // so it is not an injection; afterwards it is answered.
    assert!(
        text(&t.to_client).ends_with("454 4.7.0 TLS not available: the server could not reset\r\n250 2.0.0 OK\r\n"),
        "{}",
        text(&t.to_client)
    );
}

#[test]
fn plaintext_pipelined_after_starttls_never_reaches_the_smtpd() {
    let client = b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\n";
    let (t, smtpd) = run(Config::default(), FakeSmtpd::new(), client, 1 << 20, false);
    assert_eq!(t.end, Status::Finished(End::Injection));
    assert!(text(&t.to_client).ends_with(
        "250 STARTTLS\r\n554 5.5.1 Commands pipelined after STARTTLS are not allowed; closing connection\r\n"
    ));
    assert!(!text(&smtpd.received).contains("evil"));
    assert_eq!(text(&smtpd.received), "EHLO x\r\n");
    // Even a single byte after STARTTLS counts.
    let (t, smtpd) = run(Config::default(), FakeSmtpd::new(), b"STARTTLS\r\nX", 1 << 20, false);
    assert_eq!(t.end, Status::Finished(End::Injection));
    assert!(smtpd.received.is_empty());
}

#[test]
fn starttls_with_an_argument_is_refused() {
    let (t, smtpd) = run_all(Config::default(), &FakeSmtpd::new(), b"STARTTLS now\r\nSTARTTLS\trx\r\n", false);
    assert_eq!(
        text(&t.to_client),
        "220 fake.test ESMTP\r\n501 5.5.4 STARTTLS takes no parameters\r\n500 5.5.2 Command not recognized\r\n"
    );
    assert!(smtpd.received.is_empty());
}

#[test]
fn bare_cr_and_nul_in_commands_are_refused() {
    let (t, smtpd) =
        run_all(Config::default(), &FakeSmtpd::new(), b"STARTTLS\rMAIL FROM:<a@b>\r\nMAIL FROM:<a\0b>\r\n", false);
    assert_eq!(t.to_client.windows(9).filter(|w| w == b"bare CR o").count(), 2, "{}", text(&t.to_client));
    assert!(smtpd.received.is_empty());
    assert_eq!(t.end, Status::Running);
}

#[test]
fn long_lines() {
    let mut client = b"VRFY ".to_vec();
    client.extend(std::iter::repeat_n(b'a', 4096 - 7));
    client.extend_from_slice(b"\r\n");
    assert_eq!(client.len(), 4096);
    let mut overlong = b"VRFY ".to_vec();
    overlong.extend(std::iter::repeat_n(b'b', 20_000));
    overlong.extend_from_slice(b"\r\nNOOP\r\n");
    client.extend_from_slice(&overlong);
    let (t, smtpd) = run_all(Config::default(), &FakeSmtpd::new(), &client, false);
    assert_eq!(text(&t.to_client), "220 fake.test ESMTP\r\n252 maybe\r\n500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
    assert_eq!(smtpd.received.len(), 4096);
    assert!(!smtpd.received.contains(&b'b'));
}

#[test]
fn helo_mail_and_auth_choose_plaintext() {
    for (cmd, reply) in
        [("HELO x", "250 fake.test"), ("MAIL FROM:<a@b>", "250 2.1.0 ok"), ("AUTH PLAIN", "334 VXNlcm5hbWU6")]
    {
        let client = format!("{cmd}\r\nSTARTTLS\r\nRCPT TO:<c@d>\r\n");
        let (t, smtpd) = run_all(Config::default(), &FakeSmtpd::new(), client.as_bytes(), false);
        assert_eq!(t.end, Status::Relay(Transport::Plain));
        // After the decision the proxy is transparent: STARTTLS goes to
        // the smtpd, which does not know it.
        assert_eq!(text(&smtpd.received), client);
        let got = text(&t.to_client);
        assert!(got.starts_with(&format!("220 fake.test ESMTP\r\n{reply}\r\n502 unimplemented\r\n")), "{got}");
    }
}

#[test]
fn ehlo_pipelined_with_mail_still_advertises() {
    let (t, _) = run_all(Config::default(), &FakeSmtpd::new(), b"EHLO x\r\nMAIL FROM:<a@b>\r\n", false);
    assert_eq!(text(&t.to_client).matches("STARTTLS").count(), 1);
    assert_eq!(t.end, Status::Relay(Transport::Plain));
}

#[test]
fn require_tls_refuses_mail_and_auth_until_starttls() {
    let cfg = Config { require_tls: true };
    let (t, smtpd) = run_all(cfg, &FakeSmtpd::new(), b"HELO x\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN\r\nSTARTTLS\r\n", false);
    assert_eq!(
        text(&t.to_client),
        "220 fake.test ESMTP\r\n250 fake.test\r\n530 5.7.0 Must issue a STARTTLS command first\r\n\
         530 5.7.0 Must issue a STARTTLS command first\r\n220 2.0.0 Ready to start TLS\r\n"
    );
    assert_eq!(text(&smtpd.received), "HELO x\r\nRSET\r\n");
    assert_eq!(t.end, Status::Relay(Transport::Tls));
}

#[test]
fn malformed_smtpd_reply_closes_with_421() {
    let smtpd = FakeSmtpd { malformed_on: Some("VRFY"), ..FakeSmtpd::new() };
    let (t, _) = run_all(Config::default(), &smtpd, b"VRFY x\r\nNOOP\r\n", false);
    assert_eq!(t.end, Status::Finished(End::ServerError));
    assert!(text(&t.to_client).ends_with("421 4.3.0 Local server error; closing connection\r\n"));
    assert!(!text(&t.to_client).contains("nonsense"));
}

#[test]
fn client_eof_after_quit_still_gets_221() {
    let (t, _) = run_all(Config::default(), &FakeSmtpd::new(), b"EHLO x\r\nQUIT\r\n", true);
    assert!(text(&t.to_client).ends_with("221 bye\r\n"));
    assert_eq!(t.end, Status::Finished(End::Closed));
}

#[test]
fn client_eof_while_draining_leaves_the_eof_to_the_relay() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n");
    p.client_data(b"RSET\r\nMAIL FROM:<a@b>\r\nQUIT\r\n");
    p.client_closed();
    let n = p.server_output().len();
    p.consume_server_output(n);
    assert!(!p.should_close_server_input());
    p.server_data(b"250 reset\r\n250 ok\r\n");
    assert_eq!(p.status(), Status::Relay(Transport::Plain));
    assert!(!p.should_close_server_input());
    // Before any decision, the client's EOF does reach the smtpd.
    let mut p = Proxy::new(Config::default());
    p.client_data(b"QUIT\r\n");
    p.client_closed();
    assert!(!p.should_close_server_input());
    let n = p.server_output().len();
    p.consume_server_output(n);
    assert!(p.should_close_server_input());
}

#[test]
fn smtpd_dying_with_replies_owed_gives_421() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n");
    p.client_data(b"VRFY x\r\n");
    p.server_data(b"252-partial\r\n");
    p.server_closed();
    assert_eq!(p.status(), Status::Finished(End::ServerError));
    assert!(text(p.client_output()).ends_with("252-partial\r\n421 4.3.0 Local server error; closing connection\r\n"));
}

#[test]
fn timeout_says_421() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n");
    p.timed_out();
    assert_eq!(p.status(), Status::Finished(End::Timeout));
    assert_eq!(text(p.client_output()), "220 hi\r\n421 4.4.2 Timeout; closing connection\r\n");
}

#[test]
fn client_that_does_not_read_is_throttled() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n");
    let mut fed = 0;
    while p.wants_client_input() {
        p.client_data(&b"NOOP\r\n".repeat(1000));
        fed += 1;
        assert!(fed < 1000, "never throttled");
    }
    assert!(p.client_output().len() >= OUTPUT_HIGH_WATER);
    assert!(p.client_output().len() < OUTPUT_HIGH_WATER + 6 * 1000 * 15);
}

#[test]
fn unsolicited_reply_passes_through() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n451 timeout (#4.4.2)\r\n");
    assert_eq!(text(p.client_output()), "220 hi\r\n451 timeout (#4.4.2)\r\n");
    p.server_closed();
    assert_eq!(p.status(), Status::Finished(End::Closed));
}

#[test]
fn relay_leftovers_keep_order() {
    let mut p = Proxy::new(Config::default());
    p.server_data(b"220 hi\r\n");
    p.client_data(b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    assert_eq!(p.status(), Status::Running);
    p.server_data(b"250 reset\r\n250 mail ok\r\n250 rc");
    assert_eq!(p.status(), Status::Relay(Transport::Plain));
    let parts = p.into_relay();
    assert_eq!(text(&parts.to_server), "RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    assert_eq!(text(&parts.to_client), "220 hi\r\n250 reset\r\n250 mail ok\r\n250 rc");
}

/// Random bytes from both sides in random chunks: no panic, bounded
/// output, and a relay or an end is always reachable.
#[test]
fn garbage_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet: &[u8] = b"EHLO STARTTLS MAIL RSET NOOP 250-220 354\r\n\n\r\0-. 5xz";
    for _ in 0..300 {
        let mut p = Proxy::new(Config { require_tls: rand() % 2 == 0 });
        for _ in 0..200 {
            let n = (rand() % 40) as usize;
            let bytes: Vec<u8> = (0..n).map(|_| alphabet[(rand() as usize) % alphabet.len()]).collect();
            match rand() % 6 {
                0 | 1 if p.wants_client_input() => p.client_data(&bytes),
                2 | 3 if p.wants_server_input() => p.server_data(&bytes),
                4 => {
                    let n = p.client_output().len();
                    p.consume_client_output(n);
                    let n = p.server_output().len();
                    p.consume_server_output(n);
                }
                _ => {}
            }
            if p.status() == Status::StartTls {
                p.tls_started();
            }
            if !matches!(p.status(), Status::Running) {
                break;
            }
            assert!(p.client_output().len() < 4 * OUTPUT_HIGH_WATER);
        }
    }
}
