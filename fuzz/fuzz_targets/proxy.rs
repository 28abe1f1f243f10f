//! The STARTTLS proxy core against arbitrary client and server bytes.
//! Input: a sequence of (tag, length, bytes) events. Invariants: no panic,
//! bounded output, and nothing the client sent after a STARTTLS line in
//! the same packet ever reaches the smtpd.
#![no_main]

use chainmail_smtp::proxy::{Config, OUTPUT_HIGH_WATER, Proxy, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut p = Proxy::new(Config { require_tls: flags & 1 == 1 });
    let mut to_server: Vec<u8> = Vec::new();
    while rest.len() >= 2 {
        let tag = rest[0];
        let len = (rest[1] as usize).min(rest.len() - 2);
        let chunk = &rest[2..2 + len];
        rest = &rest[2 + len..];
        match tag % 6 {
            0 if p.wants_client_input() => {
                let before = to_server.len() + p.server_output().len();
                p.client_data(chunk);
                // An injection: bytes after a STARTTLS line in this chunk.
                if let Some(pos) = find_starttls_line(chunk) {
                    if pos < chunk.len() && matches!(p.status(), Status::Finished(_)) {
                        let sent = &p.server_output()[before.saturating_sub(to_server.len())..];
                        assert!(!contains(sent, &chunk[pos..]) || chunk[pos..].is_empty());
                    }
                }
            }
            1 if p.wants_server_input() => p.server_data(chunk),
            2 => {
                let n = p.client_output().len().min(len + 1);
                p.consume_client_output(n);
            }
            3 => {
                to_server.extend_from_slice(p.server_output());
                let n = p.server_output().len();
                p.consume_server_output(n);
            }
            4 => match chunk.first().map(|b| b % 4) {
                Some(0) => p.client_closed(),
                Some(1) => p.server_closed(),
                Some(2) => p.timed_out(),
                _ => {}
            },
            _ => {}
        }
        if p.status() == Status::StartTls {
            if flags & 2 == 0 { p.tls_started() } else { p.tls_failed() }
        }
        assert!(p.client_output().len() <= 2 * OUTPUT_HIGH_WATER + 8192 * 4);
        assert!(p.server_output().len() <= 2 * OUTPUT_HIGH_WATER + 8192 * 4);
        if matches!(p.status(), Status::Relay(_)) {
            let _ = p.into_relay();
            return;
        }
    }
});

/// The end of a line that is exactly a STARTTLS command, if any.
fn find_starttls_line(chunk: &[u8]) -> Option<usize> {
    let mut start = 0;
    for (i, &b) in chunk.iter().enumerate() {
        if b == b'\n' {
            let line = &chunk[start..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.eq_ignore_ascii_case(b"STARTTLS") {
                return Some(i + 1);
            }
            start = i + 1;
        }
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 4 && hay.windows(needle.len()).any(|w| w == needle)
}
