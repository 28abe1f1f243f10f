//! A resumable line splitter with a bound on line length.
//!
//! Bytes arrive in arbitrary chunks; complete lines (ending in LF, the CR
//! before it kept) come out. A line longer than the bound is not kept in
//! memory: the splitter reports it once as [`Line::TooLong`] when its LF
//! finally arrives, having thrown its bytes away.

/// What `LineBuffer::next_line` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, with its LF (and CR if any).
    Complete(&'a [u8]),
    /// A line that exceeded the bound; its bytes were discarded.
    TooLong,
}

/// Accumulates bytes and hands out lines.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    max: usize,
    /// Inside an overlong line: discard until LF.
    skipping: bool,
}

impl LineBuffer {
    /// A splitter for lines of at most `max` bytes, terminator included.
    pub fn new(max: usize) -> LineBuffer {
        LineBuffer { buf: Vec::new(), start: 0, max: max.max(2), skipping: false }
    }

    /// Appends bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// The next line, if a complete one (or the end of an overlong one) is
    /// buffered.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        let pending = &self.buf[self.start..];
        match pending.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let too_long = std::mem::take(&mut self.skipping) || i + 1 > self.max;
                let line = self.start..self.start + i + 1;
                self.start += i + 1;
                if too_long { Some(Line::TooLong) } else { Some(Line::Complete(&self.buf[line])) }
            }
            None => {
                if !self.skipping && pending.len() >= self.max {
                    self.skipping = true;
                }
                if self.skipping {
                    // Throw the partial overlong line away.
                    self.start = self.buf.len();
                    self.compact();
                }
                None
            }
        }
    }

    /// Bytes buffered but not yet returned as a line.
    #[cfg(test)]
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// Takes the buffered bytes out, leaving the splitter empty.
    pub(crate) fn take_buffered(&mut self) -> Vec<u8> {
        self.compact();
        self.skipping = false;
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(input: &[u8], max: usize, chunk: usize) -> Vec<Result<Vec<u8>, ()>> {
        let mut lb = LineBuffer::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            lb.push(piece);
            while let Some(l) = lb.next_line() {
                out.push(match l {
                    Line::Complete(b) => Ok(b.to_vec()),
                    Line::TooLong => Err(()),
                });
            }
        }
        out
    }

    #[test]
    fn lines_in_every_chunking() {
        let mut input = b"EHLO a\r\nNOOP\n\r\nX".to_vec();
        input.extend(std::iter::repeat_n(b'y', 40));
        input.extend_from_slice(b"\r\nlast\r\nunterminated");
        let want = vec![
            Ok(b"EHLO a\r\n".to_vec()),
            Ok(b"NOOP\n".to_vec()),
            Ok(b"\r\n".to_vec()),
            Err(()),
            Ok(b"last\r\n".to_vec()),
        ];
        for chunk in 1..=input.len() {
            assert_eq!(split(&input, 16, chunk), want, "chunk {chunk}");
        }
    }

    #[test]
    fn bound_is_inclusive_of_terminator() {
        assert_eq!(split(b"abcd\r\n", 6, 1), vec![Ok(b"abcd\r\n".to_vec())]);
        assert_eq!(split(b"abcde\r\n", 6, 1), vec![Err(())]);
        assert_eq!(split(b"abcde\r\n", 6, 7), vec![Err(())]);
    }

    #[test]
    fn overlong_line_uses_bounded_memory() {
        let mut lb = LineBuffer::new(100);
        for _ in 0..10_000 {
            lb.push(&[b'z'; 1000]);
            assert!(lb.next_line().is_none());
            assert!(lb.buffered().len() < 2000);
        }
        lb.push(b"\nok\n");
        assert_eq!(lb.next_line(), Some(Line::TooLong));
        assert_eq!(lb.next_line(), Some(Line::Complete(b"ok\n")));
    }
}
