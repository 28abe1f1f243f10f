//! smtproutes parsing: no panic, and every route that parses prints back
//! to text that parses to the same route.
#![no_main]

use chainmail_qmail::routes::{RouteTable, parse_relay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(table) = RouteTable::parse(data) {
        for (_, route) in table.entries() {
            if let Some(route) = route {
                let text = route.to_string();
                assert_eq!(parse_relay(text.as_bytes()).ok().flatten().as_ref(), Some(route));
            }
        }
    }
    let _ = parse_relay(data);
});
