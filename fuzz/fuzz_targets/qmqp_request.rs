//! The QMQP request parser: never panics, gives the same answer however
//! the bytes are cut, never accepts what breaks its limits, and accepts
//! again what it produced (`check_parser_properties`, which the unit tests
//! also run on mutated requests).
#![no_main]

use chainmail_qmqp::AddressCheck;
use chainmail_qmqp::request::{Limits, check_parser_properties};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    let mode = [AddressCheck::Strict, AddressCheck::Qmail, AddressCheck::Off][c as usize % 3];
    let limits = Limits { max_message: 4096, max_recipients: 8, address_check: mode };
    check_parser_properties(data, limits, 1 + (c as usize >> 2) % 17);
});
