//! The SOCKS server handshake never panics and reaches the same outcome
//! however its input is cut; the configuration grammars and the matcher
//! never panic on any text; the upstream forms never panic.
#![no_main]

use chainmail_socks::{conf, server, upstream::Upstream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    server::check_properties(data, 1 + (c as usize) % 64);
    if let Ok(text) = std::str::from_utf8(data) {
        conf::check_properties(text);
        let _ = Upstream::parse_list(text);
    }
});
