//! The delivery dialogue against scripted servers, in memory.

use super::*;

fn attempt(rcpts: &[&str], tls: TlsWish) -> Attempt {
    Attempt {
        helo: "me.test".into(),
        sender: b"a@b.test".to_vec(),
        recipients: rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
        facts: MessageFacts { encoded_size: 1000, eight_bit: false, partial_final_line: false },
        needs_smtputf8: false,
        tls,
    }
}

/// A scripted server: maps each command line to its reply. `ehlo` is the
/// EHLO reply; `over` overrides replies by command prefix.
struct Script {
    greeting: &'static str,
    ehlo: &'static str,
    over: Vec<(&'static str, &'static str)>,
    final_reply: &'static str,
    /// What the server got, command lines and `<BODY>`.
    log: Vec<String>,
    /// Each write the client made, as one string.
    writes: Vec<String>,
}

impl Script {
    fn new(ehlo: &'static str) -> Script {
        Script {
            greeting: "220 mx.test ESMTP\r\n",
            ehlo,
            over: Vec::new(),
            final_reply: "250 2.0.0 queued as X\r\n",
            log: Vec::new(),
            writes: Vec::new(),
        }
    }
    fn with(mut self, prefix: &'static str, reply: &'static str) -> Script {
        self.over.push((prefix, reply));
        self
    }
    fn answer(&mut self, write: &[u8]) -> String {
        let text = String::from_utf8_lossy(write).into_owned();
        self.writes.push(text.clone());
        let mut out = String::new();
        for line in text.split_inclusive("\r\n") {
            let cmd = line.trim_end();
            self.log.push(cmd.to_owned());
            if let Some((_, r)) = self.over.iter().find(|(p, _)| cmd.starts_with(p)) {
                out.push_str(r);
                continue;
            }
            out.push_str(match cmd.split(' ').next().unwrap_or("") {
                "EHLO" => self.ehlo,
                "HELO" => "250 mx.test\r\n",
                "STARTTLS" => "220 2.0.0 go ahead\r\n",
                "MAIL" | "RCPT" => "250 2.1.0 ok\r\n",
                "DATA" => "354 go\r\n",
                "QUIT" => "221 bye\r\n",
                "." => "250 ok\r\n",
                _ => "502 what\r\n",
            });
        }
        out
    }
}

const EHLO_PIPE: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n";
const EHLO_PLAIN: &str = "250-mx.test\r\n250 8BITMIME\r\n";

/// Runs an attempt against a script, feeding replies in `chunk`-sized
/// pieces. `tls_ok` is the outcome of any handshake. Returns the outcome.
fn drive(mut client: Client, script: &mut Script, chunk: usize, tls_ok: bool) -> AttemptEnd {
    let mut inbox: Vec<u8> = script.greeting.as_bytes().to_vec();
    for _ in 0..10_000 {
        while !inbox.is_empty() && client.wants_input() {
            let n = chunk.min(inbox.len());
            let piece: Vec<u8> = inbox.drain(..n).collect();
            client.server_data(&piece);
        }
        let out = client.output().to_vec();
        if !out.is_empty() {
            client.consume_output(out.len());
            inbox.extend(script.answer(&out).into_bytes());
        }
        match client.status() {
            Status::Running => {
                if inbox.is_empty() && client.output().is_empty() {
                    client.server_closed();
                }
            }
            Status::StartTls => {
                assert!(client.output().is_empty());
                script.log.push("<TLS>".into());
                // Plaintext still on the wire would be read by the TLS
                // layer as a broken record: the handshake fails.
                let wire_clean = inbox.is_empty();
                client.tls_done(tls_ok && wire_clean);
            }
            Status::SendBody => {
                assert!(client.output().is_empty(), "commands must be out before the body");
                script.log.push("<BODY>".into());
                inbox.extend(script.final_reply.as_bytes());
                client.body_sent();
            }
            Status::Done(o) => {
                let out = client.output().to_vec();
                if !out.is_empty() {
                    script.answer(&out);
                }
                return o;
            }
        }
    }
    panic!("no outcome");
}

/// Runs in every chunk size 1..=40, checking they agree; returns the
/// outcome and the script of the whole-chunk run.
fn drive_all(make: impl Fn() -> (Client, Script), tls_ok: bool) -> (AttemptEnd, Script) {
    let (c, mut s) = make();
    let want = drive(c, &mut s, 1 << 20, tls_ok);
    for chunk in 1..=40 {
        let (c, mut s2) = make();
        assert_eq!(drive(c, &mut s2, chunk, tls_ok), want, "chunk {chunk}");
        assert_eq!(s2.log, s.log, "chunk {chunk}");
    }
    (want, s)
}

/// Feeds each reply after writing whatever the client has queued, as a
/// server that answers only what it got.
fn feed(c: &mut Client, replies: &[&[u8]]) {
    for r in replies {
        c.consume_output(usize::MAX);
        c.server_data(r);
    }
}

fn delivered(o: &AttemptEnd) -> bool {
    matches!(o, AttemptEnd::Final { message: MessageResult::Delivered(_), .. })
}

#[test]
fn pipelined_delivery_sends_the_transaction_in_one_write() {
    let (o, s) =
        drive_all(|| (Client::new(attempt(&["x@y.test", "z@y.test"], TlsWish::Off)), Script::new(EHLO_PIPE)), true);
    assert!(delivered(&o), "{o:?}");
    let AttemptEnd::Final { recipients, .. } = &o else { unreachable!() };
    assert_eq!(recipients, &vec![RcptResult::Accepted, RcptResult::Accepted]);
    assert!(
        s.writes.contains(
            &"MAIL FROM:<a@b.test> SIZE=1000\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n".to_owned()
        ),
        "{:?}",
        s.writes
    );
    assert_eq!(s.log.last().map(String::as_str), Some("QUIT"));
    assert!(s.log.iter().position(|l| l == "<BODY>") < s.log.iter().position(|l| l == "QUIT"));
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let (o, s) =
        drive_all(|| (Client::new(attempt(&["x@y.test", "z@y.test"], TlsWish::Off)), Script::new(EHLO_PLAIN)), true);
    assert!(delivered(&o));
    assert_eq!(
        s.writes,
        [
            "EHLO me.test\r\n",
            "MAIL FROM:<a@b.test>\r\n",
            "RCPT TO:<x@y.test>\r\n",
            "RCPT TO:<z@y.test>\r\n",
            "DATA\r\n",
            "QUIT\r\n"
        ]
    );
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let (o, s) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Try)), Script::new("502 no\r\n")), true);
    assert!(delivered(&o));
    assert_eq!(&s.log[..3], ["EHLO me.test", "HELO me.test", "MAIL FROM:<a@b.test>"]);
}

#[test]
fn helo_refused_is_final_and_temporary() {
    let (o, _) = drive_all(
        || (Client::new(attempt(&["x@y"], TlsWish::Off)), Script::new("500 no\r\n").with("HELO", "550 go away\r\n")),
        true,
    );
    let AttemptEnd::Final { message: v @ MessageResult::HeloRejected(_), .. } = &o else { panic!("{o:?}") };
    assert!(!v.is_permanent());
}

#[test]
fn greeting_4xx_skips_and_5xx_is_final_temporary() {
    let make = |g: &'static str| {
        move || {
            let mut s = Script::new(EHLO_PIPE);
            s.greeting = g;
            (Client::new(attempt(&["x@y"], TlsWish::Off)), s)
        }
    };
    let (o, s) = drive_all(make("421-busy\r\n421 try later\r\n"), true);
    assert!(matches!(&o, AttemptEnd::Skip(Skip::Greeting(r)) if r.code == 421 && r.lines.len() == 2), "{o:?}");
    assert_eq!(s.log, ["QUIT"]);
    let (o, _) = drive_all(make("554 no service\r\n"), true);
    let AttemptEnd::Final { message: v @ MessageResult::GreetingFailed(_), .. } = &o else { panic!("{o:?}") };
    assert!(!v.is_permanent());
}

#[test]
fn ehlo_4xx_skips() {
    let (o, _) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Off)), Script::new("421 later\r\n")), true);
    assert!(matches!(o, AttemptEnd::Skip(Skip::Ehlo(_))), "{o:?}");
}

#[test]
fn starttls_then_ehlo_again() {
    let (o, s) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Try)), Script::new(EHLO_PIPE)), true);
    assert!(delivered(&o));
    assert_eq!(&s.log[..4], ["EHLO me.test", "STARTTLS", "<TLS>", "EHLO me.test"]);
}

#[test]
fn plaintext_sent_by_the_server_after_its_220_is_discarded() {
    // A man in the middle appends a fake "250 ok" for the EHLO to come;
    // if it were kept, every later reply would be off by one.
    let make = || {
        (
            Client::new(attempt(&["x@y"], TlsWish::Try)),
            Script::new(EHLO_PIPE).with("STARTTLS", "220 go\r\n550 injected\r\n"),
        )
    };
    // Read together with the 220: discarded, the delivery goes through.
    let (c, mut s) = make();
    let o = drive(c, &mut s, 1 << 20, true);
    assert!(delivered(&o), "{o:?}");
    // Still on the wire when the handshake starts: the handshake fails.
    // Either way the injected reply is never taken for a real one.
    for chunk in 1..=40 {
        let (c, mut s) = make();
        let o = drive(c, &mut s, chunk, true);
        assert!(delivered(&o) || o == AttemptEnd::TlsFailed(None), "chunk {chunk}: {o:?}");
        assert!(!matches!(o, AttemptEnd::Final { message: MessageResult::DataRejected(_), .. }));
    }
}

#[test]
fn tls_wishes() {
    // Try, not offered: plaintext.
    let (o, s) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Try)), Script::new(EHLO_PLAIN)), true);
    assert!(delivered(&o) && !s.log.contains(&"STARTTLS".to_owned()));
    // Require, not offered.
    let (o, s) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Require)), Script::new(EHLO_PLAIN)), true);
    assert_eq!(o, AttemptEnd::NoStartTls);
    assert!(!s.log.iter().any(|l| l.starts_with("MAIL")));
    // Require, refused.
    let (o, _) = drive_all(
        || {
            (
                Client::new(attempt(&["x@y"], TlsWish::Require)),
                Script::new(EHLO_PIPE).with("STARTTLS", "454 4.7.0 not now\r\n"),
            )
        },
        true,
    );
    assert!(matches!(o, AttemptEnd::TlsFailed(Some(ref r)) if r.code == 454), "{o:?}");
    // Try, refused: goes on in plaintext on the same connection.
    let (o, s) = drive_all(
        || {
            (
                Client::new(attempt(&["x@y"], TlsWish::Try)),
                Script::new(EHLO_PIPE).with("STARTTLS", "454 4.7.0 not now\r\n"),
            )
        },
        true,
    );
    assert!(delivered(&o));
    assert!(!s.log.contains(&"<TLS>".to_owned()));
    // Handshake failure.
    let (o, _) = drive_all(|| (Client::new(attempt(&["x@y"], TlsWish::Try)), Script::new(EHLO_PIPE)), false);
    assert_eq!(o, AttemptEnd::TlsFailed(None));
}

#[test]
fn size_and_body_parameters() {
    let make = |size: u64, eight: bool, utf8: bool, ehlo: &'static str| {
        move || {
            let mut a = attempt(&["x@y"], TlsWish::Off);
            a.facts.encoded_size = size;
            a.facts.eight_bit = eight;
            a.needs_smtputf8 = utf8;
            (Client::new(a), Script::new(ehlo))
        }
    };
    let (o, s) = drive_all(make(500, true, true, EHLO_PIPE), true);
    assert!(delivered(&o));
    assert_eq!(s.log[1], "MAIL FROM:<a@b.test> SIZE=500 BODY=8BITMIME SMTPUTF8");
    let (o, s) = drive_all(make(100_001, false, false, EHLO_PIPE), true);
    let AttemptEnd::Final { message: v @ MessageResult::TooBig { size: 100_001, limit: 100_000 }, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(v.is_permanent());
    assert!(!s.log.iter().any(|l| l.starts_with("MAIL")));
    let (o, _) = drive_all(make(10, false, true, EHLO_PLAIN), true);
    assert!(matches!(&o, AttemptEnd::Final { message: MessageResult::NeedsSmtputf8, .. }));
    // 8-bit without 8BITMIME: sent anyway (as stock qmail), without BODY.
    let (o, s) = drive_all(make(10, true, false, "250-mx\r\n250 PIPELINING\r\n"), true);
    assert!(delivered(&o));
    assert_eq!(s.log[1], "MAIL FROM:<a@b.test>");
}

#[test]
fn sender_rejected() {
    for (ehlo, code, permanent) in [
        (EHLO_PIPE, "550 5.7.1 no\r\n", true),
        (EHLO_PLAIN, "451 4.3.0 later\r\n", false),
        (EHLO_PIPE, "451 later\r\n", false),
    ] {
        let (o, s) = drive_all(
            || {
                (
                    Client::new(attempt(&["x@y", "z@y"], TlsWish::Off)),
                    Script::new(ehlo)
                        .with("MAIL", code)
                        .with("RCPT", "503 need MAIL\r\n")
                        .with("DATA", "503 need RCPT\r\n"),
                )
            },
            true,
        );
        let AttemptEnd::Final { message: v @ MessageResult::SenderRejected(_), recipients } = &o else {
            panic!("{o:?}")
        };
        assert_eq!(v.is_permanent(), permanent);
        // The 503s the pipelined RCPTs got are not the recipients' fate.
        assert!(recipients.iter().all(|r| *r == RcptResult::NotTried), "{recipients:?}");
        assert!(!s.log.contains(&"<BODY>".to_owned()));
    }
}

#[test]
fn mixed_recipients() {
    for ehlo in [EHLO_PIPE, EHLO_PLAIN] {
        let (o, _) = drive_all(
            || {
                (
                    Client::new(attempt(&["good@y", "bad@y", "later@y"], TlsWish::Off)),
                    Script::new(ehlo)
                        .with("RCPT TO:<bad", "550 5.1.1 no such user\r\n")
                        .with("RCPT TO:<later", "452 4.2.2 full\r\n"),
                )
            },
            true,
        );
        let AttemptEnd::Final { recipients, message } = &o else { panic!("{o:?}") };
        assert!(message.is_delivered());
        assert!(
            matches!(&recipients[..], [RcptResult::Accepted, RcptResult::Refused(r), RcptResult::Deferred(d)] if r.code == 550 && d.code == 452)
        );
    }
}

#[test]
fn no_recipient_accepted() {
    // All permanent: permanent. One temporary: temporary.
    for (later, permanent) in [("550 no\r\n", true), ("451 later\r\n", false)] {
        for ehlo in [EHLO_PIPE, EHLO_PLAIN] {
            let (o, s) = drive_all(
                || {
                    (
                        Client::new(attempt(&["a@y", "b@y"], TlsWish::Off)),
                        Script::new(ehlo)
                            .with("RCPT TO:<a", "550 no\r\n")
                            .with("RCPT TO:<b", later)
                            .with("DATA", "554 no valid recipients\r\n"),
                    )
                },
                true,
            );
            let AttemptEnd::Final { message: v @ MessageResult::NoRecipients { .. }, .. } = &o else { panic!("{o:?}") };
            assert_eq!(v.is_permanent(), permanent);
            assert!(!s.log.contains(&"<BODY>".to_owned()));
            if ehlo == EHLO_PLAIN {
                assert!(!s.log.contains(&"DATA".to_owned()));
            }
        }
    }
}

#[test]
fn data_accepted_without_recipients_is_closed_with_a_dot() {
    let (o, s) = drive_all(
        || (Client::new(attempt(&["a@y"], TlsWish::Off)), Script::new(EHLO_PIPE).with("RCPT", "550 no\r\n")),
        true,
    );
    assert!(matches!(&o, AttemptEnd::Final { message: MessageResult::NoRecipients { any_temporary: false }, .. }));
    let tail: Vec<&str> = s.log.iter().rev().take(2).map(String::as_str).collect();
    assert_eq!(tail, ["QUIT", "."]);
}

#[test]
fn data_and_final_replies() {
    let cases: &[(&str, &str, bool, bool)] = &[
        ("554 no\r\n", "", false, true),
        ("451 later\r\n", "", false, false),
        ("250 what\r\n", "", false, false),
        ("354 go\r\n", "552 5.3.4 too big\r\n", false, true),
        ("354 go\r\n", "451 4.3.0 later\r\n", false, false),
        ("354 go\r\n", "250 2.0.0 ok\r\n", true, false),
    ];
    for &(data, fin, ok, permanent) in cases {
        for ehlo in [EHLO_PIPE, EHLO_PLAIN] {
            let (o, s) = drive_all(
                || {
                    let mut s = Script::new(ehlo).with("DATA", data);
                    if !fin.is_empty() {
                        s.final_reply = fin;
                    }
                    (Client::new(attempt(&["a@y"], TlsWish::Off)), s)
                },
                true,
            );
            let AttemptEnd::Final { message, .. } = &o else { panic!("{o:?}") };
            assert_eq!(message.is_delivered(), ok, "{data} {fin} {o:?}");
            assert_eq!(message.is_permanent(), permanent, "{data} {fin} {o:?}");
            assert_eq!(s.log.contains(&"<BODY>".to_owned()), data.starts_with("354"));
        }
    }
}

#[test]
fn garbage_after_the_dot_is_never_delivered() {
    let (o, _) = drive_all(
        || {
            let mut s = Script::new(EHLO_PIPE);
            s.final_reply = "2x0 whatever\r\n";
            (Client::new(attempt(&["a@y"], TlsWish::Off)), s)
        },
        true,
    );
    let AttemptEnd::Final { message: v @ MessageResult::Protocol { after_dot: true, .. }, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(!v.is_permanent() && !v.is_delivered());
}

#[test]
fn connection_lost_at_each_stage() {
    // Before the transaction: skip to the next server.
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
    c.server_closed();
    assert!(matches!(c.status(), Status::Done(AttemptEnd::Skip(Skip::Died { during: "greeting", timeout: false }))));
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
    c.server_data(b"220 hi\r\n");
    c.timed_out();
    assert!(matches!(c.status(), Status::Done(AttemptEnd::Skip(Skip::Died { during: "EHLO", timeout: true }))));
    // During the transaction: final, temporary.
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
    feed(&mut c, &[b"220 hi\r\n", b"250 mx\r\n"]);
    c.server_closed();
    let Status::Done(AttemptEnd::Final { message: v, .. }) = c.status() else { panic!() };
    assert_eq!(v, MessageResult::ConnectionDied { after_dot: false, timeout: false });
    assert!(!v.is_permanent());
    // After the dot: possible duplicate.
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
    feed(&mut c, &[b"220 hi\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]);
    assert_eq!(c.status(), Status::SendBody);
    c.body_sent();
    c.server_data(b"25");
    c.server_closed();
    let Status::Done(AttemptEnd::Final { message: v, .. }) = c.status() else { panic!() };
    assert_eq!(v, MessageResult::ConnectionDied { after_dot: true, timeout: false });
    assert!(!v.is_delivered() && !v.is_permanent());
}

#[test]
fn tls_breaking_after_the_handshake() {
    // Right after the handshake (TLS 1.3 client certificate refused): a
    // TLS failure, so that opportunistic TLS falls back to plaintext.
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Try));
    feed(&mut c, &[b"220 hi\r\n", b"250-mx\r\n250 STARTTLS\r\n", b"220 go\r\n"]);
    assert_eq!(c.status(), Status::StartTls);
    c.tls_done(true);
    c.server_closed();
    assert_eq!(c.status(), Status::Done(AttemptEnd::TlsFailed(None)));
    // During the transaction: the connection died.
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Try));
    feed(&mut c, &[b"220 hi\r\n", b"250-mx\r\n250 STARTTLS\r\n", b"220 go\r\n"]);
    c.tls_done(true);
    feed(&mut c, &[b"250 mx\r\n"]);
    c.server_closed();
    assert!(matches!(
        c.status(),
        Status::Done(AttemptEnd::Final { message: MessageResult::ConnectionDied { after_dot: false, .. }, .. })
    ));
}

#[test]
fn malformed_reply_before_the_transaction_skips() {
    let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
    c.server_data(b"SSH-2.0-OpenSSH_9.2\r\n");
    assert!(matches!(c.status(), Status::Done(AttemptEnd::Skip(Skip::Malformed(_)))));
}

#[test]
fn extensions_parse() {
    let r = Reply {
        code: 250,
        lines: vec![
            b"mx.test hello".to_vec(),
            b"pipelining".to_vec(),
            b"SIZE".to_vec(),
            b"StartTLS".to_vec(),
            b"8BITMIME".to_vec(),
            b"AUTH PLAIN".to_vec(),
        ],
    };
    let e = Extensions::from_ehlo(&r);
    assert!(e.pipelining && e.starttls && e.eight_bit_mime && !e.smtputf8);
    assert_eq!(e.size, Some(0));
    // The greeting line is not a keyword.
    let r = Reply { code: 250, lines: vec![b"STARTTLS".to_vec()] };
    assert!(!Extensions::from_ehlo(&r).starttls);
}

/// Replies sent ahead of the commands they answer, each with what the
/// server may have seen: nothing after the command whose reply was early.
#[test]
fn replies_ahead_of_their_commands_are_a_protocol_violation() {
    fn protocol(o: &AttemptEnd) -> bool {
        matches!(o, AttemptEnd::Final { message: MessageResult::Protocol { after_dot: false, .. }, .. })
    }
    // (EHLO reply, command prefix, its replies, what the server gets (no
    // QUIT either), the outcome test)
    type Case = (&'static str, &'static str, &'static str, &'static [&'static str], fn(&AttemptEnd) -> bool);
    let cases: &[Case] = &[
        // MAIL answered with its reply and those of RCPT and DATA, without
        // PIPELINING: neither RCPT nor DATA nor the body may follow.
        (EHLO_PLAIN, "MAIL", "250 ok\r\n250 ok\r\n354 go\r\n", &["EHLO me.test", "MAIL FROM:<a@b.test>"], protocol),
        // One reply too many after the first RCPT: it would be DATA's.
        (
            EHLO_PLAIN,
            "RCPT TO:<x@y.test>",
            "250 ok\r\n250 ok\r\n",
            &["EHLO me.test", "MAIL FROM:<a@b.test>", "RCPT TO:<x@y.test>"],
            protocol,
        ),
    ];
    for &(ehlo, prefix, replies, want_log, check) in cases {
        let (o, s) = drive_all(
            || (Client::new(attempt(&["x@y.test", "z@y.test"], TlsWish::Off)), Script::new(ehlo).with(prefix, replies)),
            true,
        );
        assert!(check(&o), "{prefix}: {o:?}");
        assert!(!s.log.iter().any(|l| l == "<BODY>"), "{prefix}: {:?}", s.log);
        assert_eq!(s.log, want_log, "{prefix}");
    }
    // A greeting followed at once by a reply to EHLO, which was not sent.
    let (o, s) = drive_all(
        || {
            let mut script = Script::new(EHLO_PLAIN);
            script.greeting = "220 mx.test\r\n250 mx.test\r\n";
            (Client::new(attempt(&["x@y.test"], TlsWish::Off)), script)
        },
        true,
    );
    assert!(matches!(o, AttemptEnd::Skip(Skip::Unexpected(_))), "{o:?}");
    assert!(s.log.is_empty(), "{:?}", s.log);
}

/// A reply that came in pieces, its command written in pieces too: due
/// only once the command's last byte is out.
#[test]
fn a_reply_is_due_only_after_its_command_is_written_whole() {
    let mut c = Client::new(attempt(&["x@y.test"], TlsWish::Off));
    c.server_data(b"220 mx.test\r\n");
    assert_eq!(c.output(), b"EHLO me.test\r\n");
    c.consume_output(5);
    c.server_data(b"250 mx.test\r\n");
    assert!(
        matches!(c.status(), Status::Done(AttemptEnd::Skip(Skip::Unexpected(_)))),
        "EHLO was half written: {:?}",
        c.status()
    );
    assert!(c.output().is_empty(), "nothing more is sent");

    let mut c = Client::new(attempt(&["x@y.test"], TlsWish::Off));
    c.server_data(b"220 mx.test\r\n");
    c.consume_output(5);
    c.consume_output(100);
    c.server_data(b"250 mx.test\r\n");
    assert_eq!(c.status(), Status::Running);
    assert_eq!(c.output(), b"MAIL FROM:<a@b.test>\r\n");
}

/// Bytes that came after DATA's 354, before the body was sent: the body is
/// not sent.
#[test]
fn bytes_after_the_354_stop_the_body() {
    for extra in [&b"250 ok\r\n"[..], b"2", b"354 again\r\n"] {
        let mut c = Client::new(attempt(&["a@y"], TlsWish::Off));
        feed(&mut c, &[b"220 hi\r\n", b"250 mx\r\n", b"250 ok\r\n", b"250 ok\r\n"]);
        c.consume_output(usize::MAX);
        let mut data = b"354 go\r\n".to_vec();
        data.extend_from_slice(extra);
        c.server_data(&data);
        assert!(
            matches!(
                c.status(),
                Status::Done(AttemptEnd::Final { message: MessageResult::Protocol { after_dot: false, .. }, .. })
            ),
            "{extra:?}: {:?}",
            c.status()
        );
        assert!(c.output().is_empty());
    }
}
