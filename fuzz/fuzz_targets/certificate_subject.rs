//! x509-parser and the RFC 4514 formatter on arbitrary bytes: no panic,
//! and the output never contains a NUL (it goes into a NUL-separated
//! record).
#![no_main]

use chainmail_tls::dn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for s in [dn::certificate_subject(data), dn::format_name(data)].into_iter().flatten() {
        assert!(!s.contains('\0'));
    }
});
