//! The remusock tunnel: whatever a peer sends, in whatever pieces, never
//! panics, never holds more than one frame undecoded, and answers at most
//! one byte per byte received (a PONG per PING, an acknowledgement per
//! BYE); the frame decoder gives the same frames however the bytes are cut.
#![no_main]

use std::time::Instant;

use chainmail_remusock::{Decoder, Role, Tunnel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    let role = if c & 1 == 0 { Role::SocketServer } else { Role::SocketClient };
    let chunk = 1 + (c as usize >> 2) % 17;
    let now = Instant::now();
    let mut t = Tunnel::new(role, c & 2 == 0, true, now);
    let mut sent = t.output().len();
    t.consume_output(sent);
    for piece in data.chunks(chunk) {
        if t.receive(now, piece).is_err() {
            break;
        }
        for e in t.take_events() {
            if let chainmail_remusock::Event::Connect(id) = e {
                let _ = t.local_connected(id);
            }
        }
        assert!(t.output().len() <= sent + piece.len() * 3 + 8);
        sent = 0;
        let n = t.output().len();
        t.consume_output(n);
    }
    let whole = frames(data, data.len().max(1));
    assert_eq!(frames(data, chunk), whole);
});

fn frames(data: &[u8], chunk: usize) -> (Vec<chainmail_remusock::Frame>, bool) {
    let mut d = Decoder::new();
    d.accept_extensions();
    let mut out = Vec::new();
    for mut piece in data.chunks(chunk) {
        loop {
            match d.next(&mut piece) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(d.buffered() <= 5 + chainmail_remusock::MAX_DATA);
    }
    (out, false)
}
