//! The delivery dialogue against arbitrary server bytes: no panic, and
//! never "delivered" unless the body was sent and a 2xx came after it.
#![no_main]

use chainmail_smtp::client::{Attempt, AttemptEnd, Client, MessageResult, Status, TlsWish};
use chainmail_smtp::data::MessageFacts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let attempt = Attempt {
        helo: "me.test".into(),
        sender: b"a@b.test".to_vec(),
        recipients: (0..1 + flags % 4).map(|i| format!("r{i}@c.test").into_bytes()).collect(),
        facts: MessageFacts { encoded_size: 1000, eight_bit: flags & 8 != 0, partial_final_line: false },
        needs_smtputf8: flags & 16 != 0,
        tls: [TlsWish::Off, TlsWish::Try, TlsWish::Require][(flags as usize / 32) % 3],
    };
    let mut c = Client::new(attempt);
    let mut body_sent = false;
    let mut replies_after_body = 0usize;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        match c.status() {
            Status::Running => {
                let n = c.output().len();
                c.consume_output(n);
                if c.wants_input() {
                    if body_sent && chunk.contains(&b'\n') {
                        replies_after_body += 1;
                    }
                    c.server_data(chunk);
                } else if chunk.is_empty() {
                    c.server_closed();
                }
            }
            Status::StartTls => c.tls_done(len % 2 == 0),
            Status::SendBody => {
                let n = c.output().len();
                c.consume_output(n);
                body_sent = true;
                c.body_sent();
            }
            Status::Done(outcome) => {
                if let AttemptEnd::Final { message: MessageResult::Delivered(r), .. } = outcome {
                    assert!(body_sent && replies_after_body > 0 && r.is_positive());
                }
                return;
            }
        }
    }
    c.server_closed();
    if let Status::Done(AttemptEnd::Final { message: MessageResult::Delivered(_), .. }) = c.status() {
        assert!(body_sent);
    }
});
