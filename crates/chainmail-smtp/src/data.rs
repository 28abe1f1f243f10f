//! The DATA encoding of a message, and what a client must know about a
//! message before it offers it.
//!
//! A qmail queue file has LF line ends. SMTP wants CRLF, and a line that
//! starts with `.` doubled so that the end of data (`CRLF . CRLF`) cannot
//! appear inside the message. The encoder turns every line end of the
//! message into CRLF:
//!
//! * LF becomes CRLF; CRLF stays CRLF (not CRCRLF, as qmail 1.03 sent);
//! * a bare CR (not followed by LF) also becomes CRLF, since RFC 5321
//!   forbids bare CRs in the data and some servers end a line there;
//! * after *every* line end it emits, a `.` is doubled.
//!
//! The last rule is the fix for a smuggling bug of notqmail's client: it
//! turned a bare CR into CRLF but did not double the `.` that followed, so
//! `text\r.\nMAIL FROM:...` ended the data early and made the rest of the
//! message a new SMTP transaction on the server.
//!
//! Whatever the input, the encoded stream contains no bare CR, no bare LF,
//! and no line `.` before the terminator the encoder adds itself.

use thiserror::Error;

/// The message cannot be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DataError {
    /// The message does not end with a line end (stock qmail refuses it
    /// too: #5.6.2).
    #[error("partial final line")]
    PartialFinalLine,
}

/// A streaming DATA encoder. Feed the message in chunks of any size with
/// [`DataEncoder::encode`]; end with [`DataEncoder::finish`].
#[derive(Debug, Clone)]
pub struct DataEncoder {
    at_line_start: bool,
    /// The previous chunk ended with a CR whose fate depends on the next
    /// byte.
    pending_cr: bool,
    /// The last input byte was an LF. A message must end with one, as
    /// stock qmail demands.
    ended_with_lf: bool,
    any_input: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder::new()
    }
}

impl DataEncoder {
    /// An encoder at the start of a message.
    pub fn new() -> DataEncoder {
        DataEncoder { at_line_start: true, pending_cr: false, ended_with_lf: false, any_input: false }
    }

    /// Appends the encoding of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        self.any_input = true;
        self.ended_with_lf = input.last() == Some(&b'\n');
        out.reserve(input.len() + input.len() / 32 + 8);
        let mut i = 0;
        if self.pending_cr {
            // A CR at the end of the previous chunk: with an LF now it is
            // a CRLF; otherwise a bare CR. Either way, one line end.
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            if input[0] == b'\n' {
                i = 1;
            }
        }
        while i < input.len() {
            if self.at_line_start && input[i] == b'.' {
                out.push(b'.');
            }
            // Copy the run of ordinary bytes in one go.
            let run_end = input[i..].iter().position(|&b| b == b'\n' || b == b'\r').map_or(input.len(), |p| i + p);
            if run_end > i {
                out.extend_from_slice(&input[i..run_end]);
                self.at_line_start = false;
                i = run_end;
                continue;
            }
            match input[i] {
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    i += 1;
                }
                _ => {
                    // CR: look at the next byte, or wait for the next chunk.
                    if i + 1 == input.len() {
                        self.pending_cr = true;
                        return;
                    }
                    out.extend_from_slice(b"\r\n");
                    i += if input[i + 1] == b'\n' { 2 } else { 1 };
                }
            }
            self.at_line_start = true;
        }
    }

    /// Appends the end of data (`.\r\n`) to `out`. An empty message is
    /// allowed (just the terminator); a message whose last byte is not an
    /// LF is refused, and nothing is appended.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), DataError> {
        if self.any_input && !self.ended_with_lf {
            return Err(DataError::PartialFinalLine);
        }
        out.extend_from_slice(b".\r\n");
        Ok(())
    }
}

/// What a client needs to know about a message before it offers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageFacts {
    /// Size of the encoded data, terminator excluded: the `SIZE=` value.
    pub encoded_size: u64,
    /// Some byte has its high bit set (`BODY=8BITMIME` is wanted).
    pub eight_bit: bool,
    /// The last byte is not a line end.
    pub partial_final_line: bool,
}

/// Scans a message, chunk by chunk, for [`MessageFacts`].
#[derive(Debug, Default, Clone)]
pub struct MessageScanner {
    encoder: DataEncoder,
    facts: MessageFacts,
    scratch: Vec<u8>,
}

impl MessageScanner {
    /// A scanner at the start of a message.
    pub fn new() -> MessageScanner {
        MessageScanner::default()
    }

    /// Takes the next chunk.
    pub fn scan(&mut self, chunk: &[u8]) {
        if chunk.iter().any(|&b| b >= 0x80) {
            self.facts.eight_bit = true;
        }
        self.scratch.clear();
        self.encoder.encode(chunk, &mut self.scratch);
        self.facts.encoded_size += self.scratch.len() as u64;
    }

    /// The facts about the whole message.
    pub fn finish(mut self) -> MessageFacts {
        self.scratch.clear();
        match self.encoder.finish(&mut self.scratch) {
            Ok(()) => {
                // The terminator is not part of the size.
                self.facts.encoded_size += self.scratch.len() as u64 - 3;
            }
            Err(DataError::PartialFinalLine) => self.facts.partial_final_line = true,
        }
        self.facts
    }
}

/// What a message becomes on its way through SMTP: every line end (LF,
/// CRLF, or a bare CR) a CRLF. A strict server that undoes the DATA
/// encoding stores exactly this. A test oracle (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn with_crlf_line_ends(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 16);
    let mut i = 0;
    while i < msg.len() {
        match msg[i] {
            b'\r' if msg.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
                continue;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Undoes the DATA encoding the way a strict server does: lines end at
/// CRLF only, a leading `.` is removed, the line `.` ends the data.
/// Returns the message and whatever followed the end of data; `None` if
/// the end never came. For tests of servers and of the encoder (feature
/// `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn decode_strict(data: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if line == b"." {
            return Some((out, rest));
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
    }
}

/// Where a lenient server might see the end of data: `.` alone between
/// any two line ends, where a line end is CRLF, a bare LF or a bare CR.
/// The encoder's output must never give such a server an early end. A test
/// oracle (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub fn lenient_end_positions(data: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let is_eol = |i: usize| data[i] == b'\n' || data[i] == b'\r';
    for i in 0..data.len() {
        if data[i] != b'.' {
            continue;
        }
        let before = i == 0 || is_eol(i - 1);
        let after = i + 1 < data.len() && is_eol(i + 1);
        if before && after {
            ends.push(i);
        }
    }
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_in_chunks(input: &[u8], chunk: usize) -> Result<Vec<u8>, DataError> {
        let mut e = DataEncoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            e.encode(piece, &mut out);
        }
        e.finish(&mut out)?;
        Ok(out)
    }

    fn encode(input: &[u8]) -> Result<Vec<u8>, DataError> {
        let whole = encode_in_chunks(input, input.len().max(1));
        for chunk in 1..=input.len().min(16) {
            assert_eq!(encode_in_chunks(input, chunk), whole, "chunk {chunk} of {input:?}");
        }
        whole
    }

    #[test]
    fn vectors() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"\n", b"\r\n.\r\n"),
            (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
            (b".\n", b"..\r\n.\r\n"),
            (b"..x\n.\n", b"...x\r\n..\r\n.\r\n"),
            (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
            (b"a\rb\n", b"a\r\nb\r\n.\r\n"),
            // notqmail's smuggling bug: the dot after a bare CR.
            (b"smuggle\r.\nend\n", b"smuggle\r\n..\r\nend\r\n.\r\n"),
            (b"x\r\r\n.\n", b"x\r\n\r\n..\r\n.\r\n"),
            (b"a\n\r.\r\n", b"a\r\n\r\n..\r\n.\r\n"),
            (b"\xff\xfe\n", b"\xff\xfe\r\n.\r\n"),
        ];
        for &(input, want) in cases {
            assert_eq!(encode(input).as_deref(), Ok(want), "{input:?}");
        }
    }

    #[test]
    fn partial_final_line_is_refused() {
        for input in [&b"abc"[..], b"a\nb", b"a\n.", b"end\r", b"a\r\n\r"] {
            assert_eq!(encode(input), Err(DataError::PartialFinalLine), "{input:?}");
        }
    }

    #[test]
    fn scanner_facts() {
        let mut s = MessageScanner::new();
        s.scan(b"Subject: x\n\n.hi\r");
        s.scan(b"\nbody \xc3\xa9\n");
        let f = s.finish();
        assert!(f.eight_bit && !f.partial_final_line);
        assert_eq!(f.encoded_size, b"Subject: x\r\n\r\n..hi\r\nbody \xc3\xa9\r\n".len() as u64);
        let mut s = MessageScanner::new();
        s.scan(b"no end");
        assert!(s.finish().partial_final_line);
    }

    /// Random and adversarial messages: the encoded form has only CRLF
    /// line ends, no early end for a lenient server, and decodes (as a
    /// strict server does) to the message with its line ends normalised.
    #[test]
    fn adversarial_messages_round_trip() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: &[u8] = b"\r\n.\r\n.a.\x00\xff\r";
        for round in 0..3000 {
            let len = (rand() % 64) as usize;
            let mut msg: Vec<u8> = (0..len).map(|_| alphabet[(rand() as usize) % alphabet.len()]).collect();
            msg.push(b'\n');
            let chunk = 1 + (round % 7);
            let enc = encode_in_chunks(&msg, chunk).expect("complete message");
            // Line ends are CRLF only.
            for (i, &b) in enc.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(enc.get(i + 1), Some(&b'\n'), "bare CR in {enc:?} from {msg:?}");
                }
                if b == b'\n' {
                    assert!(i > 0 && enc[i - 1] == b'\r', "bare LF in {enc:?}");
                }
            }
            // The only place a lenient server could end is the real end.
            assert_eq!(lenient_end_positions(&enc), vec![enc.len() - 3], "{msg:?} -> {enc:?}");
            let (decoded, rest) = decode_strict(&enc).expect("terminated");
            assert!(rest.is_empty());
            assert_eq!(decoded, with_crlf_line_ends(&msg), "{msg:?}");
        }
    }
}
