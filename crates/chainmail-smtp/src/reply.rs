//! SMTP replies: `Reply-code [ ("-" / SP) textstring ] CRLF` (RFC 5321
//! §4.2), single lines and whole multi-line replies.
//!
//! Parsing is strict where laxness has bitten others: the code must be
//! three digits with a first digit of 2 to 5, followed by SP, `-` or the
//! end of the line; every line of a multi-line reply must carry the same
//! code. Anything else is a [`ReplyError`], never a guess.

use thiserror::Error;

use crate::line::{Line, LineBuffer};

/// One parsed reply line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyLine<'a> {
    /// The three-digit code.
    pub code: u16,
    /// False for a continuation line (`250-`), true for the final line.
    pub last: bool,
    /// The text after the separator, without CR/LF.
    pub text: &'a [u8],
}

/// A reply that does not follow the grammar.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplyError {
    /// The line does not start with a valid code and separator.
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    /// A continuation line changed the code.
    #[error("reply code changed inside a multi-line reply: {first} then {then}")]
    CodeChanged {
        /// The code of the first line.
        first: u16,
        /// The code that followed.
        then: u16,
    },
    /// A line or the whole reply exceeded the bounds.
    #[error("reply too long")]
    TooLong,
}

fn show(line: &[u8]) -> String {
    let cut = &line[..line.len().min(80)];
    String::from_utf8_lossy(cut).trim_end().to_owned()
}

/// Strips a trailing LF and, before it, a CR.
pub(crate) fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one reply line (with or without its terminator).
pub(crate) fn parse_line(line: &[u8]) -> Result<ReplyLine<'_>, ReplyError> {
    let body = strip_eol(line);
    let malformed = || ReplyError::Malformed(show(line));
    if body.len() < 3 {
        return Err(malformed());
    }
    let (d0, d1, d2) = (body[0], body[1], body[2]);
    if !(b'2'..=b'5').contains(&d0) || !d1.is_ascii_digit() || !d2.is_ascii_digit() {
        return Err(malformed());
    }
    let code = u16::from(d0 - b'0') * 100 + u16::from(d1 - b'0') * 10 + u16::from(d2 - b'0');
    match body.get(3) {
        None => Ok(ReplyLine { code, last: true, text: &body[3..] }),
        Some(b' ') => Ok(ReplyLine { code, last: true, text: &body[4..] }),
        Some(b'-') => Ok(ReplyLine { code, last: false, text: &body[4..] }),
        Some(_) => Err(malformed()),
    }
}

/// A complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The code shared by all lines.
    pub code: u16,
    /// The text of each line, without code, separator or CRLF.
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 4xx.
    pub(crate) fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The reply as the server sent it, one `code text` per line joined by
    /// `\n`, for reports and logs.
    #[cfg(test)]
    pub(crate) fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&self.code.to_string());
            if !l.is_empty() {
                out.push(' ');
                out.push_str(&String::from_utf8_lossy(l));
            }
        }
        out
    }
}

/// Assembles whole replies from bytes that arrive in any chunking.
///
/// The state (a partial line, the lines of a reply in progress) belongs to
/// the reader, which lives as long as the connection: feeding the same
/// bytes in chunks of any size gives the same replies.
#[derive(Debug)]
pub struct ReplyReader {
    lines: LineBuffer,
    current: Option<Reply>,
    current_bytes: usize,
    max_reply: usize,
    max_lines: usize,
}

/// Longest reply line accepted (RFC 5321 says 512; servers exceed it).
pub(crate) const MAX_REPLY_LINE: usize = 8192;

impl Default for ReplyReader {
    fn default() -> Self {
        ReplyReader::new()
    }
}

impl ReplyReader {
    /// A reader with the default bounds: lines of 8 KiB, 64 KiB and 256
    /// lines per reply.
    pub fn new() -> ReplyReader {
        ReplyReader {
            lines: LineBuffer::new(MAX_REPLY_LINE),
            current: None,
            current_bytes: 0,
            max_reply: 64 * 1024,
            max_lines: 256,
        }
    }

    /// Appends bytes from the server.
    pub fn push(&mut self, data: &[u8]) {
        self.lines.push(data);
    }

    /// Whether bytes are buffered that do not yet form a reply.
    pub(crate) fn has_partial(&self) -> bool {
        self.current.is_some() || !self.lines.is_empty()
    }

    /// The next complete reply, an error, or `None` if more bytes are
    /// needed. After an error the reader should not be used again.
    pub fn next_reply(&mut self) -> Option<Result<Reply, ReplyError>> {
        loop {
            let line = match self.lines.next_line()? {
                Line::TooLong => return Some(Err(ReplyError::TooLong)),
                Line::Complete(l) => l,
            };
            let parsed = match parse_line(line) {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            let reply = self.current.get_or_insert_with(|| Reply { code: parsed.code, lines: Vec::new() });
            if reply.code != parsed.code {
                return Some(Err(ReplyError::CodeChanged { first: reply.code, then: parsed.code }));
            }
            self.current_bytes += line.len();
            reply.lines.push(parsed.text.to_vec());
            if self.current_bytes > self.max_reply || reply.lines.len() > self.max_lines {
                return Some(Err(ReplyError::TooLong));
            }
            if parsed.last {
                self.current_bytes = 0;
                return self.current.take().map(Ok);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_lines() {
        let ok: &[(&[u8], u16, bool, &[u8])] = &[
            (b"250 ok\r\n", 250, true, b"ok"),
            (b"250-first\r\n", 250, false, b"first"),
            (b"220\r\n", 220, true, b""),
            (b"250 \r\n", 250, true, b""),
            (b"554 5.7.1 no\n", 554, true, b"5.7.1 no"),
            (b"250-\r\n", 250, false, b""),
            (b"421 a\rb\r\n", 421, true, b"a\rb"),
        ];
        for &(line, code, last, text) in ok {
            assert_eq!(parse_line(line), Ok(ReplyLine { code, last, text }), "{line:?}");
        }
        // The vectors of notqmail's unmerged smtpcode tests, and more.
        for bad in [
            &b"250.\r\n"[..],
            b"180 x\r\n",
            b"1000\r\n",
            b"250x\r\n",
            b"2X0 x\r\n",
            b"25\r\n",
            b"\r\n",
            b"650 x\r\n",
            b" 250 x\r\n",
            b"250\tx\r\n",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }

    fn replies(input: &[u8], chunk: usize) -> Vec<Result<Reply, ReplyError>> {
        let mut rr = ReplyReader::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            rr.push(piece);
            while let Some(r) = rr.next_reply() {
                let stop = r.is_err();
                out.push(r);
                if stop {
                    return out;
                }
            }
        }
        out
    }

    #[test]
    fn whole_replies_in_every_chunking() {
        let input = b"220 hi\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n354 go\r\n";
        let want = vec![
            Ok(Reply { code: 220, lines: vec![b"hi".to_vec()] }),
            Ok(Reply { code: 250, lines: vec![b"mx".to_vec(), b"PIPELINING".to_vec(), b"SIZE 10".to_vec()] }),
            Ok(Reply { code: 354, lines: vec![b"go".to_vec()] }),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(replies(input, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn code_change_is_an_error() {
        for chunk in 1..20 {
            let got = replies(b"250-\r\n251 x\r\n", chunk);
            assert_eq!(got, vec![Err(ReplyError::CodeChanged { first: 250, then: 251 })]);
        }
    }

    #[test]
    fn bounds() {
        let mut long = b"250 ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REPLY_LINE));
        long.extend_from_slice(b"\r\n");
        assert_eq!(replies(&long, 100), vec![Err(ReplyError::TooLong)]);
        let many: Vec<u8> = std::iter::repeat_n(&b"250-x\r\n"[..], 300).flatten().copied().collect();
        assert_eq!(replies(&many, 64), vec![Err(ReplyError::TooLong)]);
    }

    #[test]
    fn text_for_reports() {
        let r = Reply { code: 550, lines: vec![b"5.1.1 no such".to_vec(), b"user".to_vec()] };
        assert_eq!(r.to_text(), "550 5.1.1 no such\n550 user");
        assert!(r.is_permanent() && !r.is_transient());
    }
}
