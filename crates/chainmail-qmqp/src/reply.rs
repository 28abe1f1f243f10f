//! The server's reply: one netstring whose first byte is `K` (accepted for
//! every recipient), `Z` (temporary failure) or `D` (permanent failure),
//! followed by text.

use crate::netstring::{self, LengthDigits, LengthStep};

/// The longest reply text a [`ReplyParser`] takes (the original relays at
/// most 256 bytes of an upstream's reply).
pub const MAX_REPLY: usize = 256;

/// What a reply says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `K`: accepted.
    Accepted,
    /// `Z`: temporary failure.
    Temporary,
    /// `D`: permanent failure.
    Permanent,
}

impl Verdict {
    /// The reply's first byte.
    pub fn letter(self) -> u8 {
        match self {
            Verdict::Accepted => b'K',
            Verdict::Temporary => b'Z',
            Verdict::Permanent => b'D',
        }
    }

    /// The verdict of a reply's first byte.
    pub fn of_letter(b: u8) -> Option<Verdict> {
        match b {
            b'K' => Some(Verdict::Accepted),
            b'Z' => Some(Verdict::Temporary),
            b'D' => Some(Verdict::Permanent),
            _ => None,
        }
    }
}

/// A reply: its verdict and text (the netstring's content is the letter
/// followed by the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    content: Vec<u8>,
}

impl Reply {
    /// A reply of `verdict` with `text`.
    pub fn new(verdict: Verdict, text: impl AsRef<[u8]>) -> Reply {
        let mut content = vec![verdict.letter()];
        content.extend_from_slice(text.as_ref());
        Reply { content }
    }

    /// `K` with `text`.
    pub fn accepted(text: impl AsRef<[u8]>) -> Reply {
        Reply::new(Verdict::Accepted, text)
    }

    /// `Z` with `text`.
    pub fn temporary(text: impl AsRef<[u8]>) -> Reply {
        Reply::new(Verdict::Temporary, text)
    }

    /// `D` with `text`.
    pub fn permanent(text: impl AsRef<[u8]>) -> Reply {
        Reply::new(Verdict::Permanent, text)
    }

    /// A reply from a netstring's content, `None` unless it starts with
    /// `K`, `Z` or `D`.
    pub fn from_content(content: Vec<u8>) -> Option<Reply> {
        Verdict::of_letter(*content.first()?)?;
        Some(Reply { content })
    }

    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        // from_content and new guarantee the letter.
        Verdict::of_letter(self.content[0]).unwrap_or(Verdict::Temporary)
    }

    /// The text after the letter.
    pub fn text(&self) -> &[u8] {
        &self.content[1..]
    }

    /// The letter and the text.
    pub fn content(&self) -> &[u8] {
        &self.content
    }

    /// The reply on the wire.
    pub fn encode(&self) -> Vec<u8> {
        netstring::encode(&self.content)
    }
}

/// Why a reply could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Not a netstring, or longer than [`MAX_REPLY`].
    #[error("malformed reply")]
    Malformed,
    /// A netstring not starting with K, Z or D.
    #[error("reply is not K, Z or D")]
    NoVerdict,
}

/// What [`ReplyParser::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// Not complete yet.
    NeedMore,
    /// The reply (its final `,` was the last byte consumed).
    Done(Reply),
    /// Not a reply.
    Failed(ReplyError),
}

#[derive(Debug)]
enum ReplyState {
    Length(LengthDigits),
    Bytes(usize),
    Comma,
    Finished,
}

/// A resumable reader of one reply, at most [`MAX_REPLY`] bytes.
#[derive(Debug)]
pub struct ReplyParser {
    state: ReplyState,
    content: Vec<u8>,
}

impl Default for ReplyParser {
    fn default() -> ReplyParser {
        ReplyParser::new()
    }
}

impl ReplyParser {
    /// A parser for one reply.
    pub fn new() -> ReplyParser {
        ReplyParser { state: ReplyState::Length(LengthDigits::default()), content: Vec::new() }
    }

    /// Consumes bytes of `input`; returns how many and the status.
    pub fn feed(&mut self, input: &[u8]) -> (usize, ReplyStatus) {
        let mut used = 0;
        while used < input.len() {
            let byte = input[used];
            match self.state {
                ReplyState::Length(mut digits) => match digits.push(byte, MAX_REPLY as u64) {
                    LengthStep::Digit => self.state = ReplyState::Length(digits),
                    LengthStep::Done(0) => self.state = ReplyState::Comma,
                    LengthStep::Done(n) => self.state = ReplyState::Bytes(n as usize),
                    LengthStep::Malformed | LengthStep::TooLarge => return self.fail(used, ReplyError::Malformed),
                },
                ReplyState::Bytes(remaining) => {
                    let n = remaining.min(input.len() - used);
                    self.content.extend_from_slice(&input[used..used + n]);
                    used += n;
                    self.state = if n == remaining { ReplyState::Comma } else { ReplyState::Bytes(remaining - n) };
                    continue;
                }
                ReplyState::Comma => {
                    if byte != b',' {
                        return self.fail(used, ReplyError::Malformed);
                    }
                    self.state = ReplyState::Finished;
                    return match Reply::from_content(std::mem::take(&mut self.content)) {
                        Some(reply) => (used + 1, ReplyStatus::Done(reply)),
                        None => (used + 1, ReplyStatus::Failed(ReplyError::NoVerdict)),
                    };
                }
                ReplyState::Finished => return self.fail(used, ReplyError::Malformed),
            }
            used += 1;
        }
        (used, ReplyStatus::NeedMore)
    }

    fn fail(&mut self, used: usize, e: ReplyError) -> (usize, ReplyStatus) {
        self.state = ReplyState::Finished;
        (used, ReplyStatus::Failed(e))
    }
}

/// qmail-qmqpc's reading of a reply: the first `K`, `Z` or `D` byte
/// anywhere decides, without parsing the netstring.
pub fn first_verdict_byte(input: &[u8]) -> Option<Verdict> {
    input.iter().find_map(|&b| Verdict::of_letter(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(input: &[u8], size: usize) -> (usize, ReplyStatus) {
        let mut p = ReplyParser::new();
        let mut total = 0;
        for chunk in input.chunks(size) {
            let (n, status) = p.feed(chunk);
            total += n;
            if status != ReplyStatus::NeedMore {
                return (total, status);
            }
        }
        (total, ReplyStatus::NeedMore)
    }

    #[test]
    fn replies_in_every_chunk_size() {
        let long = format!("{}:K{},", MAX_REPLY + 1, "x".repeat(MAX_REPLY));
        let max = format!("{MAX_REPLY}:K{},", "x".repeat(MAX_REPLY - 1));
        let table: Vec<(&[u8], usize, ReplyStatus)> = vec![
            (b"3:KOk,", 6, ReplyStatus::Done(Reply::accepted("Ok"))),
            (b"3:KOk,trailing", 6, ReplyStatus::Done(Reply::accepted("Ok"))),
            (b"10:Ztry later,", 14, ReplyStatus::Done(Reply::temporary("try later"))),
            (b"1:D,", 4, ReplyStatus::Done(Reply::permanent(""))),
            (b"0:,", 3, ReplyStatus::Failed(ReplyError::NoVerdict)),
            (b"3:XOk,", 6, ReplyStatus::Failed(ReplyError::NoVerdict)),
            (b"03:KOk,", 1, ReplyStatus::Failed(ReplyError::Malformed)),
            (b"3:KOk;", 5, ReplyStatus::Failed(ReplyError::Malformed)),
            (b"KOk", 0, ReplyStatus::Failed(ReplyError::Malformed)),
            (b"3:KO", 4, ReplyStatus::NeedMore),
            (long.as_bytes(), 2, ReplyStatus::Failed(ReplyError::Malformed)),
            (max.as_bytes(), max.len(), ReplyStatus::Done(Reply::accepted("x".repeat(MAX_REPLY - 1)))),
        ];
        for (input, used, want) in &table {
            for size in 1..=64 {
                let (n, status) = chunked(input, size);
                assert_eq!((n, &status), (*used, want), "{} in chunks of {size}", input.escape_ascii());
            }
        }
    }

    #[test]
    fn encode_and_verdicts() {
        assert_eq!(Reply::accepted("ok").encode(), b"3:Kok,");
        assert_eq!(Reply::temporary("x").verdict(), Verdict::Temporary);
        assert_eq!(Reply::from_content(b"Dno".to_vec()).map(|r| r.text().to_vec()), Some(b"no".to_vec()));
        assert_eq!(Reply::from_content(Vec::new()), None);
        assert_eq!(first_verdict_byte(b"3:KOk,"), Some(Verdict::Accepted));
        assert_eq!(first_verdict_byte(b"12:Dsorry"), Some(Verdict::Permanent));
        assert_eq!(first_verdict_byte(b"123:"), None);
    }
}
