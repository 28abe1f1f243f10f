//! Client command lines: the verb and what follows it.

/// A command line split into its verb and its argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommandLine<'a> {
    /// The verb as sent (compare with [`CommandLine::is`]).
    pub verb: &'a [u8],
    /// What follows the verb and one space, without CR/LF; `None` when the
    /// verb ends the line.
    pub arg: Option<&'a [u8]>,
}

impl<'a> CommandLine<'a> {
    /// Splits a line (terminator included or not). The verb ends at the
    /// first space; a line that is only a verb has no argument.
    pub fn parse(line: &'a [u8]) -> CommandLine<'a> {
        let body = crate::reply::strip_eol(line);
        match body.iter().position(|&b| b == b' ') {
            Some(i) => CommandLine { verb: &body[..i], arg: Some(&body[i + 1..]) },
            None => CommandLine { verb: body, arg: None },
        }
    }

    /// Whether the verb is `name`, ignoring ASCII case.
    pub fn is(&self, name: &str) -> bool {
        self.verb.eq_ignore_ascii_case(name.as_bytes())
    }

    /// Whether an argument other than spaces follows the verb.
    pub(crate) fn has_arg(&self) -> bool {
        self.arg.is_some_and(|a| a.iter().any(|&b| b != b' '))
    }
}

/// Whether a command line carries a CR that does not end it, or a NUL:
/// bytes no honest client puts in a command, and which some servers read
/// as line ends (the raw material of command injection and smuggling).
pub(crate) fn has_bare_cr_or_nul(line: &[u8]) -> bool {
    let body = crate::reply::strip_eol(line);
    body.iter().any(|&b| b == b'\r' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        let c = CommandLine::parse(b"ehlo client.test\r\n");
        assert!(c.is("EHLO") && c.arg == Some(&b"client.test"[..]) && c.has_arg());
        let c = CommandLine::parse(b"STARTTLS\r\n");
        assert!(c.is("starttls") && c.arg.is_none() && !c.has_arg());
        let c = CommandLine::parse(b"STARTTLS \r\n");
        assert!(c.is("STARTTLS") && !c.has_arg());
        let c = CommandLine::parse(b"STARTTLSX\n");
        assert!(!c.is("STARTTLS"));
        let c = CommandLine::parse(b"MAIL FROM:<a@b>\n");
        assert!(c.is("MAIL") && c.arg == Some(&b"FROM:<a@b>"[..]));
        let c = CommandLine::parse(b"\r\n");
        assert!(c.verb.is_empty() && c.arg.is_none());
    }

    #[test]
    fn bare_cr_and_nul() {
        assert!(!has_bare_cr_or_nul(b"MAIL FROM:<a@b>\r\n"));
        assert!(!has_bare_cr_or_nul(b"MAIL FROM:<a@b>\n"));
        assert!(has_bare_cr_or_nul(b"STARTTLS\rMAIL FROM:<a@b>\r\n"));
        assert!(has_bare_cr_or_nul(b"NOOP\0\r\n"));
        assert!(has_bare_cr_or_nul(b"NOOP\r\r\n"));
    }
}
