//! The QMQP request parser: never panics, gives the same answer however
//! the bytes are cut, never accepts what breaks its limits, and accepts
//! again what it produced.
#![no_main]

use chainmail_qmqp::request::{Limits, Status, encode_request};
use chainmail_qmqp::{AddressCheck, RequestParser, check_address};
use libfuzzer_sys::fuzz_target;

fn parse(limits: Limits, data: &[u8], chunk: usize) -> (usize, Status) {
    let mut p = RequestParser::new(limits);
    let mut total = 0;
    for piece in data.chunks(chunk.max(1)) {
        let (n, status) = p.feed(piece);
        total += n;
        if status != Status::NeedMore {
            return (total, status);
        }
    }
    (total, Status::NeedMore)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    let mode = [AddressCheck::Strict, AddressCheck::Qmail, AddressCheck::Off][c as usize % 3];
    let limits = Limits { max_message: 4096, max_recipients: 8, address_check: mode };
    let whole = parse(limits, data, data.len());
    assert_eq!(parse(limits, data, 1 + (c as usize >> 2) % 17), whole);
    assert!(whole.0 <= data.len());
    if let (n, Status::Complete(r)) = whole {
        assert!(r.message.len() <= limits.max_message);
        assert!((1..=limits.max_recipients).contains(&r.recipients.len()));
        assert!(check_address(&r.sender, mode).is_ok());
        assert!(r.recipients.iter().all(|a| check_address(a, mode).is_ok()));
        let again = encode_request(&r.message, &r.sender, &r.recipients);
        assert_eq!(again, &data[..n]);
    }
});
