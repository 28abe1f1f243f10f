//! The DATA encoding of any message: CRLF line ends only, no early end of
//! data for a strict or a lenient server, the message back when decoded,
//! the same output however the input is cut.
#![no_main]

use chainmail_smtp::data::{DataEncoder, decode_strict, lenient_end_positions, with_crlf_line_ends};
use libfuzzer_sys::fuzz_target;

fn encode(msg: &[u8], chunk: usize) -> Option<Vec<u8>> {
    let mut e = DataEncoder::new();
    let mut out = Vec::new();
    for piece in msg.chunks(chunk.max(1)) {
        e.encode(piece, &mut out);
    }
    e.finish(&mut out).ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, msg)) = data.split_first() else { return };
    let whole = encode(msg, msg.len());
    assert_eq!(encode(msg, 1 + c as usize % 13), whole);
    let Some(enc) = whole else {
        assert!(!msg.is_empty() && msg.last() != Some(&b'\n'));
        return;
    };
    for (i, &b) in enc.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(enc.get(i + 1), Some(&b'\n'));
        }
        if b == b'\n' {
            assert!(i > 0 && enc[i - 1] == b'\r');
        }
    }
    assert_eq!(lenient_end_positions(&enc), vec![enc.len() - 3]);
    let (decoded, rest) = decode_strict(&enc).expect("terminated");
    assert!(rest.is_empty());
    assert_eq!(decoded, with_crlf_line_ends(msg));
});
