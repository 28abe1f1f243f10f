//! Just enough DER to walk a certificate: read one tag-length-value at a
//! time, never allocate, never panic on malformed input.

/// Universal and context tags used in this crate.
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const NUMERIC_STRING: u8 = 0x12;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const TELETEX_STRING: u8 = 0x14;
    pub const IA5_STRING: u8 = 0x16;
    pub const VISIBLE_STRING: u8 = 0x1a;
    pub const UNIVERSAL_STRING: u8 = 0x1c;
    pub const BMP_STRING: u8 = 0x1e;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0] EXPLICIT`, constructed: the certificate version.
    pub const CONTEXT_0: u8 = 0xa0;
}

/// One element: its first identifier octet, its contents, and the whole
/// encoding (identifier, length and contents).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads consecutive elements from a byte string.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { rest: data }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next element, or `None` at the end or on malformed input.
    pub fn next_tlv(&mut self) -> Option<Tlv<'a>> {
        let data = self.rest;
        let first = *data.first()?;
        let mut pos = 1;
        if first & 0x1f == 0x1f {
            // High tag number form: base-128 digits, the last without the
            // top bit. Nothing here needs them, but they must be skipped.
            loop {
                let b = *data.get(pos)?;
                pos += 1;
                if b & 0x80 == 0 {
                    break;
                }
                if pos > 6 {
                    return None;
                }
            }
        }
        let l0 = *data.get(pos)?;
        pos += 1;
        let len = if l0 < 0x80 {
            usize::from(l0)
        } else {
            // Long form; 0x80 (indefinite) is not DER. Four octets are
            // more than any certificate needs.
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(*data.get(pos)?);
                pos += 1;
            }
            len
        };
        let end = pos.checked_add(len)?;
        if end > data.len() {
            return None;
        }
        self.rest = &data[end..];
        Some(Tlv { tag: first, value: &data[pos..end], raw: &data[..end] })
    }

    /// The next element if it has tag `t`.
    pub fn expect(&mut self, t: u8) -> Option<Tlv<'a>> {
        let tlv = self.next_tlv()?;
        (tlv.tag == t).then_some(tlv)
    }
}

/// Writes an OBJECT IDENTIFIER's contents in dotted-decimal form.
/// Returns `false` (having written nothing useful) if it is malformed.
pub(crate) fn write_oid(out: &mut String, oid: &[u8]) -> bool {
    use std::fmt::Write;
    if oid.is_empty() || oid.last().is_some_and(|b| b & 0x80 != 0) {
        return false;
    }
    let mut first = true;
    let mut acc: u64 = 0;
    for &b in oid {
        if acc == 0 && b == 0x80 {
            return false; // non-minimal encoding
        }
        if acc > (u64::MAX >> 7) {
            return false;
        }
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 != 0 {
            continue;
        }
        if first {
            let (x, y) = match acc {
                0..40 => (0, acc),
                40..80 => (1, acc - 40),
                _ => (2, acc - 80),
            };
            let _ = write!(out, "{x}.{y}");
            first = false;
        } else {
            let _ = write!(out, ".{acc}");
        }
        acc = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_lengths() {
        let mut data = vec![0x04, 0x03, 1, 2, 3, 0x04, 0x81, 0x80];
        data.extend(std::iter::repeat_n(7u8, 0x80));
        let mut r = Reader::new(&data);
        let a = r.next_tlv().expect("first");
        assert_eq!((a.tag, a.value, a.raw.len()), (0x04, &[1u8, 2, 3][..], 5));
        let b = r.next_tlv().expect("second");
        assert_eq!(b.value.len(), 0x80);
        assert!(r.is_empty());
        assert!(r.next_tlv().is_none());
    }

    #[test]
    fn malformed_is_none() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 1, 2],
            &[0x30, 0x80, 0, 0],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x82, 0x01],
            &[0x1f, 0x81],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(Reader::new(bad).next_tlv().is_none(), "{bad:?}");
        }
    }

    #[test]
    fn high_tag_numbers_are_skipped() {
        let data = [0x9f, 0x81, 0x01, 0x01, 0xaa, 0x05, 0x00];
        let mut r = Reader::new(&data);
        let t = r.next_tlv().expect("high tag");
        assert_eq!(t.value, &[0xaa]);
        assert_eq!(r.next_tlv().expect("null").tag, 0x05);
    }

    #[test]
    fn oids() {
        for (der, want) in [
            (&[0x55, 0x04, 0x03][..], Some("2.5.4.3")),
            (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01], Some("1.2.840.113549.1.9.1")),
            (&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19], Some("0.9.2342.19200300.100.1.25")),
            (&[0x88, 0x37, 0x01], Some("2.999.1")),
            (&[0x55, 0x84], None),
            (&[0x55, 0x80, 0x01], None),
            (&[], None),
        ] {
            let mut s = String::new();
            let ok = write_oid(&mut s, der);
            assert_eq!(ok.then_some(s.as_str()), want, "{der:02x?}");
        }
    }
}
