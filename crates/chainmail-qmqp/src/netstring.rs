//! Netstrings: `<len>:<bytes>,`, the length in decimal without leading
//! zeros (`0:,` is the empty string).

/// Appends the netstring of `data` to `out`.
pub fn encode_into(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(header(data.len()).as_bytes());
    out.extend_from_slice(data);
    out.push(b',');
}

/// The netstring of `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 22);
    encode_into(&mut out, data);
    out
}

/// `<len>:`, the part before the bytes.
pub fn header(len: usize) -> String {
    format!("{len}:")
}

/// The length of the netstring of `len` bytes.
pub fn encoded_len(len: usize) -> usize {
    header(len).len() + len + 1
}

/// A decimal length being read digit by digit, with no leading zeros and
/// an upper bound, as both parsers need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LengthDigits {
    value: u64,
    digits: u32,
}

/// What a byte did to a [`LengthDigits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LengthStep {
    /// A digit: more may come.
    Digit,
    /// The `:`: the length is complete.
    Done(u64),
    /// Not a length: a non-digit, no digits before `:`, or a leading zero.
    Malformed,
    /// More than `max`.
    TooLarge,
}

impl LengthDigits {
    pub(crate) fn push(&mut self, byte: u8, max: u64) -> LengthStep {
        match byte {
            b'0'..=b'9' => {
                if self.digits == 1 && self.value == 0 {
                    return LengthStep::Malformed;
                }
                self.digits += 1;
                match self.value.checked_mul(10).and_then(|v| v.checked_add(u64::from(byte - b'0'))) {
                    Some(v) if v <= max => {
                        self.value = v;
                        LengthStep::Digit
                    }
                    _ => LengthStep::TooLarge,
                }
            }
            b':' if self.digits > 0 => LengthStep::Done(self.value),
            _ => LengthStep::Malformed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(encode(b""), b"0:,");
        assert_eq!(encode(b"hello world!"), b"12:hello world!,");
        assert_eq!(encoded_len(12), 16);
        assert_eq!(encoded_len(0), 3);
    }

    #[test]
    fn lengths() {
        fn run(s: &[u8], max: u64) -> LengthStep {
            let mut l = LengthDigits::default();
            let mut last = LengthStep::Digit;
            for &b in s {
                last = l.push(b, max);
                if last != LengthStep::Digit {
                    break;
                }
            }
            last
        }
        for (input, max, want) in [
            (&b"0:"[..], 10, LengthStep::Done(0)),
            (b"10:", 10, LengthStep::Done(10)),
            (b"11:", 10, LengthStep::TooLarge),
            (b"01:", 10, LengthStep::Malformed),
            (b"00:", 10, LengthStep::Malformed),
            (b":", 10, LengthStep::Malformed),
            (b"1a", 10, LengthStep::Malformed),
            (b" 1:", 10, LengthStep::Malformed),
            (b"-1:", 10, LengthStep::Malformed),
            (b"99999999999999999999999999:", u64::MAX, LengthStep::TooLarge),
            (b"18446744073709551615:", u64::MAX, LengthStep::Done(u64::MAX)),
            (b"1073741824:", 1 << 30, LengthStep::Done(1 << 30)),
        ] {
            assert_eq!(run(input, max), want, "{}", input.escape_ascii());
        }
    }
}
