//! The reply reader gives the same replies however the bytes are cut.
#![no_main]

use chainmail_smtp::reply::ReplyReader;
use libfuzzer_sys::fuzz_target;

fn read_all(data: &[u8], chunk: usize) -> Vec<Result<(u16, Vec<Vec<u8>>), String>> {
    let mut r = ReplyReader::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        r.push(piece);
        while let Some(x) = r.next_reply() {
            let stop = x.is_err();
            out.push(x.map(|rep| (rep.code, rep.lines)).map_err(|e| e.to_string()));
            if stop {
                return out;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, data)) = data.split_first() else { return };
    let whole = read_all(data, data.len());
    assert_eq!(read_all(data, 1 + c as usize % 17), whole);
    for rep in whole.iter().flatten() {
        assert!((200..600).contains(&rep.0));
    }
});
