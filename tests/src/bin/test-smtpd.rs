//! test-smtpd: a scripted SMTP server on stdin/stdout, for tests and
//! benchmarks.
//!
//! It speaks enough SMTP to receive mail behind a UCSPI chain, quickly:
//! input is read in 64 KiB chunks, replies are buffered and written only
//! when it is about to wait for input, and message data moves from the
//! input buffer to the message file without a copy per line.
//!
//! # Environment
//!
//! | variable | effect |
//! |---|---|
//! | `TEST_SMTPD_LOG=path` | append every byte read from stdin to `path`, raw, as it arrives |
//! | `TEST_SMTPD_MAILDIR=dir` | store each accepted message as `dir/<pid>.<n>` (written as `dir/.tmp.<pid>.<n>`, then renamed): the bytes between the `354` and the final dot, dot-unstuffed, CRLFs kept |
//! | `TEST_SMTPD_ENV=path` | write the environment at start to `path` as `NAME=value\0` records (via a rename) |
//! | `TEST_SMTPD_MULTILINE=1` | every reply except the greeting has 3 lines with the same code |
//! | `TEST_SMTPD_STARTTLS=1` | the EHLO reply advertises `STARTTLS` (a `STARTTLS` command then gets `454`) |
//! | `TEST_SMTPD_RSET_FAIL=1` | `RSET` gets `451 4.3.0 Reset failed` |
//! | `TEST_SMTPD_MALFORMED=cmd` | the reply to command `cmd` (any case; `greeting` for the greeting) is the malformed line `2x0 malformed reply from test-smtpd` |
//! | `TEST_SMTPD_REJECT=cmd` | the reply to command `cmd` (any case) is `550 5.7.1 <CMD> rejected by test-smtpd` (3 lines with `TEST_SMTPD_MULTILINE`) |
//! | `TEST_SMTPD_LINGER=1` | after the reply to `QUIT`, close stdout but go on reading (and logging) stdin until EOF, then exit 0: a half-close from the server side |
//! | `TEST_SMTPD_NAME=name` | the host name in the greeting and EHLO reply (default `test.smtpd`) |
//!
//! # Replies
//!
//! | command | reply |
//! |---|---|
//! | (greeting) | `220 <name> ESMTP` |
//! | `EHLO` | `250-<name>`, `250-PIPELINING`, `250-STARTTLS` (only with `TEST_SMTPD_STARTTLS`), `250-8BITMIME`, `250 SIZE 100000000` |
//! | `HELO` | `250 <name>` |
//! | `MAIL` | `250 2.1.0 Sender ok` (starts a new transaction) |
//! | `RCPT` | `250 2.1.5 Recipient ok`; `503 5.5.1 Need MAIL before RCPT` without MAIL |
//! | `DATA` | `354 End data with <CR><LF>.<CR><LF>`; `503 5.5.1 Need RCPT before DATA` without RCPT |
//! | end of data | `250 2.0.0 Ok: queued as <pid>.<n>` |
//! | `RSET` | `250 2.0.0 Reset ok` |
//! | `NOOP` | `250 2.0.0 Noop ok` |
//! | `VRFY` | `252 2.5.2 Cannot VRFY user` |
//! | `HELP` | `214-test-smtpd commands:`, `214-HELO EHLO MAIL RCPT DATA`, `214 RSET NOOP VRFY HELP QUIT` |
//! | `QUIT` | `221 2.0.0 <name> closing connection`, then exit 0 |
//! | line over 64 KiB | `500 5.5.2 Line too long` |
//! | anything else | `502 5.5.2 Command not implemented` |
//!
//! Command lines end at LF (a CR before it is not part of the command).
//! Message data ends at a line `.` CRLF that follows a CRLF (or comes
//! first); a line starting with a dot loses that dot. A line `.` that
//! follows a bare LF is data, and is stored as its CRLF.
//!
//! Exits 0 on EOF and after QUIT; after 60 s without input it replies
//! `421 4.4.2 test.smtpd idle timeout` and exits 1; exits 111 on an I/O
//! error.
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chainmail_sys::poll::{self, Interest};
use chainmail_sys::{Deadline, cli, diag};

const BUF_SIZE: usize = 64 * 1024;
const IDLE: Duration = Duration::from_secs(60);

/// The behaviour chosen by the environment.
struct Config {
    name: String,
    multiline: bool,
    starttls: bool,
    rset_fail: bool,
    linger: bool,
    malformed: Option<String>,
    reject: Option<String>,
    maildir: Option<PathBuf>,
}

/// Buffered output, written out only before waiting for input.
struct Output {
    file: File,
    buf: Vec<u8>,
}

impl Output {
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// A reply of one line, made into three when `multiline`.
    fn reply(&mut self, multiline: bool, code: &str, text: &str) {
        if multiline {
            for (sep, suffix) in [("-", ""), ("-", " (2 of 3)"), (" ", " (3 of 3)")] {
                self.buf.extend_from_slice(code.as_bytes());
                self.buf.extend_from_slice(sep.as_bytes());
                self.buf.extend_from_slice(text.as_bytes());
                self.buf.extend_from_slice(suffix.as_bytes());
                self.buf.extend_from_slice(b"\r\n");
            }
        } else {
            self.lines(code, &[text]);
        }
    }

    /// A reply with the given lines.
    fn lines(&mut self, code: &str, texts: &[&str]) {
        for (i, t) in texts.iter().enumerate() {
            self.buf.extend_from_slice(code.as_bytes());
            self.buf.push(if i + 1 == texts.len() { b' ' } else { b'-' });
            self.buf.extend_from_slice(t.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        }
    }

    fn malformed(&mut self) {
        self.buf.extend_from_slice(b"2x0 malformed reply from test-smtpd\r\n");
    }
}

/// Buffered input from stdin.
struct Input {
    file: File,
    log: Option<File>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

enum Fill {
    Data,
    Eof,
}

impl Input {
    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more input after what is buffered, flushing `out` first (this
    /// is the only place where the program waits).
    fn fill(&mut self, out: &mut Output) -> io::Result<Fill> {
        out.flush()?;
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Err(io::Error::other("input buffer full"));
        }
        if poll::wait_one(self.file.as_fd(), Interest::Read, Deadline::after(IDLE))?.is_none() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
        }
        let n = loop {
            match io::Read::read(&mut self.file, &mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return Ok(Fill::Eof);
        }
        if let Some(log) = &mut self.log {
            log.write_all(&self.buf[self.end..self.end + n])?;
        }
        self.end += n;
        Ok(Fill::Data)
    }
}

/// One command line: its length in the buffer (LF included), or a line
/// that was too long and has been skipped.
enum Line {
    Complete(usize),
    TooLong,
    Eof,
}

fn next_line(input: &mut Input, out: &mut Output) -> io::Result<Line> {
    let mut scanned = 0;
    let mut too_long = false;
    loop {
        let avail = input.available();
        if let Some(i) = avail[scanned..].iter().position(|&b| b == b'\n') {
            if too_long {
                input.consume(scanned + i + 1);
                return Ok(Line::TooLong);
            }
            return Ok(Line::Complete(scanned + i + 1));
        }
        scanned = avail.len();
        if input.start == 0 && input.end == input.buf.len() {
            // Over the buffer size: throw it away up to its end.
            too_long = true;
            input.consume(scanned);
            scanned = 0;
        }
        if let Fill::Eof = input.fill(out)? {
            return Ok(Line::Eof);
        }
    }
}

/// The dot-unstuffing state machine of the DATA phase.
///
/// It is fed what is in the input buffer and emits message bytes as
/// slices of it; it never needs more than three bytes of look-ahead (to
/// tell `.` CRLF from a stuffed line).
#[derive(Debug, Clone)]
struct Unstuffer {
    /// The next byte starts a line.
    line_start: bool,
    /// The previous line ended in CRLF (true at the start of the data).
    prev_crlf: bool,
    /// The last byte emitted in the current line was a CR.
    last_cr: bool,
}

/// What [`Unstuffer::feed`] found.
#[derive(Debug, PartialEq, Eq)]
enum Fed {
    /// Consumed this many bytes; the data goes on.
    More(usize),
    /// The end of the data: consumed this many bytes, the final dot line
    /// included.
    End(usize),
}

impl Unstuffer {
    fn new() -> Unstuffer {
        Unstuffer { line_start: true, prev_crlf: true, last_cr: false }
    }

    /// Processes a prefix of `buf`, calling `emit` with message bytes.
    /// Stops early (with `More`) only when `buf` ends inside a possible
    /// final dot line; the caller then supplies more bytes.
    fn feed(&mut self, buf: &[u8], emit: &mut impl FnMut(&[u8])) -> Fed {
        let mut pos = 0;
        while pos < buf.len() {
            let rest = &buf[pos..];
            if self.line_start && rest[0] == b'.' {
                if self.prev_crlf {
                    if rest.starts_with(b".\r\n") {
                        return Fed::End(pos + 3);
                    }
                    if b".\r\n".starts_with(rest) {
                        // "." or ".\r" at the end of what we have.
                        return Fed::More(pos);
                    }
                }
                // A stuffed dot (or a dot line after a bare LF): drop it.
                pos += 1;
                self.line_start = false;
                self.last_cr = false;
                continue;
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    emit(&rest[..=i]);
                    self.prev_crlf = if i > 0 { rest[i - 1] == b'\r' } else { self.last_cr };
                    self.line_start = true;
                    self.last_cr = false;
                    pos += i + 1;
                }
                None => {
                    emit(rest);
                    self.line_start = false;
                    self.last_cr = rest.last() == Some(&b'\r');
                    pos = buf.len();
                }
            }
        }
        Fed::More(pos)
    }
}

/// Where a message goes.
struct Sink {
    tmp: PathBuf,
    dst: PathBuf,
    w: io::BufWriter<File>,
}

enum DataEnd {
    Done,
    Eof,
}

fn receive_data(input: &mut Input, out: &mut Output, mut sink: Option<&mut Sink>) -> io::Result<DataEnd> {
    let mut st = Unstuffer::new();
    let mut err = None;
    loop {
        let fed = {
            let avail = &input.buf[input.start..input.end];
            let mut emit = |b: &[u8]| {
                if let Some(s) = sink.as_deref_mut() {
                    if let Err(e) = s.w.write_all(b) {
                        err.get_or_insert(e);
                    }
                }
            };
            st.feed(avail, &mut emit)
        };
        if let Some(e) = err.take() {
            return Err(e);
        }
        match fed {
            Fed::End(n) => {
                input.consume(n);
                return Ok(DataEnd::Done);
            }
            Fed::More(n) => {
                input.consume(n);
                if let Fill::Eof = input.fill(out)? {
                    return Ok(DataEnd::Eof);
                }
            }
        }
    }
}

fn verb(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(line.len());
    &line[..end]
}

fn write_environment(path: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut v = Vec::new();
    for (k, val) in std::env::vars_os() {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    let tmp = format!("{path}.tmp.{}", std::process::id());
    std::fs::write(&tmp, &v)?;
    std::fs::rename(&tmp, path)
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

fn serve() -> io::Result<i32> {
    let cfg = Config {
        name: std::env::var("TEST_SMTPD_NAME").unwrap_or_else(|_| "test.smtpd".to_owned()),
        multiline: env_flag("TEST_SMTPD_MULTILINE"),
        starttls: env_flag("TEST_SMTPD_STARTTLS"),
        rset_fail: env_flag("TEST_SMTPD_RSET_FAIL"),
        linger: env_flag("TEST_SMTPD_LINGER"),
        malformed: std::env::var("TEST_SMTPD_MALFORMED").ok().filter(|s| !s.is_empty()),
        reject: std::env::var("TEST_SMTPD_REJECT").ok().filter(|s| !s.is_empty()),
        maildir: std::env::var_os("TEST_SMTPD_MAILDIR").map(PathBuf::from),
    };
    if let Ok(p) = std::env::var("TEST_SMTPD_ENV") {
        write_environment(&p)?;
    }
    let log = match std::env::var_os("TEST_SMTPD_LOG") {
        Some(p) => Some(OpenOptions::new().create(true).append(true).open(p)?),
        None => None,
    };
    let mut input = Input {
        file: File::from(io::stdin().as_fd().try_clone_to_owned()?),
        log,
        buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    let mut out =
        Output { file: File::from(io::stdout().as_fd().try_clone_to_owned()?), buf: Vec::with_capacity(8192) };

    let is_malformed = |cmd: &str| cfg.malformed.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(cmd));
    let ml = cfg.multiline;
    if is_malformed("greeting") {
        out.malformed();
    } else {
        out.lines("220", &[&format!("{} ESMTP", cfg.name)]);
    }

    let pid = std::process::id();
    let mut queued = 0u64;
    let mut has_mail = false;
    let mut has_rcpt = false;
    loop {
        let len = match next_line(&mut input, &mut out)? {
            Line::Eof => {
                out.flush()?;
                return Ok(0);
            }
            Line::TooLong => {
                out.reply(ml, "500", "5.5.2 Line too long");
                continue;
            }
            Line::Complete(len) => len,
        };
        let line = &input.buf[input.start..input.start + len];
        let v = verb(line).to_ascii_uppercase();
        let v = String::from_utf8_lossy(&v).into_owned();
        input.consume(len);
        if is_malformed(&v) {
            out.malformed();
            continue;
        }
        if cfg.reject.as_deref().is_some_and(|r| r.eq_ignore_ascii_case(&v)) {
            out.reply(ml, "550", &format!("5.7.1 {v} rejected by test-smtpd"));
            continue;
        }
        match v.as_str() {
            "EHLO" => {
                let name = cfg.name.as_str();
                if cfg.starttls {
                    out.lines("250", &[name, "PIPELINING", "STARTTLS", "8BITMIME", "SIZE 100000000"]);
                } else {
                    out.lines("250", &[name, "PIPELINING", "8BITMIME", "SIZE 100000000"]);
                }
                has_mail = false;
                has_rcpt = false;
            }
            "HELO" => {
                out.reply(ml, "250", &cfg.name);
                has_mail = false;
                has_rcpt = false;
            }
            "MAIL" => {
                has_mail = true;
                has_rcpt = false;
                out.reply(ml, "250", "2.1.0 Sender ok");
            }
            "RCPT" if !has_mail => out.reply(ml, "503", "5.5.1 Need MAIL before RCPT"),
            "RCPT" => {
                has_rcpt = true;
                out.reply(ml, "250", "2.1.5 Recipient ok");
            }
            "DATA" if !has_rcpt => out.reply(ml, "503", "5.5.1 Need RCPT before DATA"),
            "DATA" => {
                out.reply(ml, "354", "End data with <CR><LF>.<CR><LF>");
                queued += 1;
                let mut sink = match &cfg.maildir {
                    Some(dir) => {
                        let tmp = dir.join(format!(".tmp.{pid}.{queued}"));
                        let dst = dir.join(format!("{pid}.{queued}"));
                        let w = io::BufWriter::with_capacity(BUF_SIZE, File::create(&tmp)?);
                        Some(Sink { tmp, dst, w })
                    }
                    None => None,
                };
                let end = receive_data(&mut input, &mut out, sink.as_mut())?;
                has_mail = false;
                has_rcpt = false;
                match (end, sink) {
                    (DataEnd::Eof, Some(s)) => {
                        drop(s.w);
                        let _ = std::fs::remove_file(&s.tmp);
                        return Ok(0);
                    }
                    (DataEnd::Eof, None) => return Ok(0),
                    (DataEnd::Done, Some(s)) => {
                        s.w.into_inner().map_err(|e| e.into_error())?;
                        std::fs::rename(&s.tmp, &s.dst)?;
                    }
                    (DataEnd::Done, None) => {}
                }
                if is_malformed(".") {
                    out.malformed();
                } else {
                    out.reply(ml, "250", &format!("2.0.0 Ok: queued as {pid}.{queued}"));
                }
            }
            "RSET" if cfg.rset_fail => out.reply(ml, "451", "4.3.0 Reset failed"),
            "RSET" => {
                has_mail = false;
                has_rcpt = false;
                out.reply(ml, "250", "2.0.0 Reset ok");
            }
            "NOOP" => out.reply(ml, "250", "2.0.0 Noop ok"),
            "VRFY" => out.reply(ml, "252", "2.5.2 Cannot VRFY user"),
            "HELP" => {
                out.lines("214", &["test-smtpd commands:", "HELO EHLO MAIL RCPT DATA", "RSET NOOP VRFY HELP QUIT"])
            }
            "STARTTLS" if cfg.starttls => out.reply(ml, "454", "4.7.0 TLS not available"),
            "QUIT" => {
                out.reply(ml, "221", &format!("2.0.0 {} closing connection", cfg.name));
                out.flush()?;
                if cfg.linger {
                    return linger(input, out);
                }
                return Ok(0);
            }
            _ => out.reply(ml, "502", "5.5.2 Command not implemented"),
        }
    }
}

/// `TEST_SMTPD_LINGER`: closes stdout (both our copy and descriptor 1,
/// which now names /dev/null) and reads stdin to its end.
fn linger(mut input: Input, out: Output) -> io::Result<i32> {
    drop(out);
    let null = File::open("/dev/null")?;
    nix::unistd::dup2_stdout(&null).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let mut sink = Output { file: null, buf: Vec::new() };
    loop {
        input.consume(input.end - input.start);
        if let Fill::Eof = input.fill(&mut sink)? {
            return Ok(0);
        }
    }
}

/// An I/O error that ends the session (exit 111).
#[derive(Debug)]
struct Fatal(io::Error);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unable to serve the session: {}", self.0)
    }
}

impl cli::Failure for Fatal {
    fn exit_code(&self) -> u8 {
        cli::EXIT_TEMPORARY
    }
}

fn main() -> ExitCode {
    diag::set_program("test-smtpd");
    let result = match serve() {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let mut o = io::stdout().lock();
            let _ = o.write_all(b"421 4.4.2 test.smtpd idle timeout\r\n");
            let _ = o.flush();
            Ok(1)
        }
        Ok(code) => Ok(u8::try_from(code).unwrap_or(cli::EXIT_TEMPORARY)),
        Err(e) => Err(Fatal(e)),
    };
    cli::finish(result, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in chunks of `chunk` bytes, as the DATA loop does
    /// (unconsumed bytes are kept and more appended); returns the message
    /// and what follows the final dot, or `None` without a final dot.
    fn unstuff(input: &[u8], chunk: usize) -> Option<(Vec<u8>, Vec<u8>)> {
        let mut st = Unstuffer::new();
        let mut msg = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed_upto = 0;
        loop {
            let take = chunk.min(input.len() - fed_upto);
            pending.extend_from_slice(&input[fed_upto..fed_upto + take]);
            fed_upto += take;
            match st.feed(&pending, &mut |b| msg.extend_from_slice(b)) {
                Fed::End(n) => {
                    let mut rest = pending[n..].to_vec();
                    rest.extend_from_slice(&input[fed_upto..]);
                    return Some((msg, rest));
                }
                Fed::More(n) => {
                    pending.drain(..n);
                }
            }
            if fed_upto == input.len() {
                return None;
            }
        }
    }

    fn check(input: &[u8], msg: &[u8], rest: &[u8]) {
        for chunk in [1, 2, 3, 4, 5, 7, 64, input.len().max(1)] {
            let got = unstuff(input, chunk);
            assert_eq!(
                got.as_ref().map(|(m, r)| (m.as_slice(), r.as_slice())),
                Some((msg, rest)),
                "input {:?} in chunks of {chunk}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unstuffing_table() {
        // (input, the message, what follows the end of data)
        let cases: &[(&[u8], &[u8], &[u8])] = &[
            // An empty message.
            (b".\r\nQUIT\r\n", b"", b"QUIT\r\n"),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n", b""),
            // Stuffed dots are removed.
            (b"..\r\n..x\r\n...\r\n.y\r\n.\r\n", b".\r\n.x\r\n..\r\ny\r\n", b""),
            // A dot not at the start of a line stays.
            (b"a.\r\nb .\r\n.\r\n", b"a.\r\nb .\r\n", b""),
            // The end needs a CRLF before it: after a bare-LF line, ".\r\n"
            // is data (stored as its CRLF); the real end comes later.
            (b"a\n.\r\nb\r\n.\r\n", b"a\n\r\nb\r\n", b""),
            // CR and LF split over two reads count as CRLF.
            (b"a\r\n.\r\nafter", b"a\r\n", b"after"),
            // ".\n" is not the end.
            (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n", b""),
            // ".\rx" is data.
            (b".\rx\r\n.\r\n", b"\rx\r\n", b""),
        ];
        for (input, msg, rest) in cases {
            check(input, msg, rest);
        }
    }

    #[test]
    fn long_lines_and_bytes_after_the_end() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\r\n.\r\nMAIL FROM:<a@b>\r\n");
        let mut msg = vec![b'x'; 100_000];
        msg.extend_from_slice(b"\r\n");
        check(&input, &msg, b"MAIL FROM:<a@b>\r\n");
    }

    #[test]
    fn no_end() {
        for chunk in [1, 3, 100] {
            assert_eq!(unstuff(b"a\r\n.\r", chunk), None);
            assert_eq!(unstuff(b"a\r\n..\r\n", chunk), None);
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(verb(b"MAIL FROM:<a>\r\n"), b"MAIL");
        assert_eq!(verb(b"QUIT\r\n"), b"QUIT");
        assert_eq!(verb(b"QUIT\n"), b"QUIT");
        assert_eq!(verb(b"\r\n"), b"");
    }
}
