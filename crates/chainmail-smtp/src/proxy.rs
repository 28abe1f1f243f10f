//! The STARTTLS proxy: what sits between an SMTP client and a plain smtpd
//! (qmail-smtpd) and adds STARTTLS to it, under a UCSPI-TLS server.
//!
//! The proxy reads the client's commands and the smtpd's replies until the
//! client decides: `STARTTLS` (TLS, then a transparent relay), or `HELO`,
//! `MAIL` or `AUTH` (a plaintext relay). Until then it answers a few
//! commands itself and passes the rest on, adding `STARTTLS` to the EHLO
//! reply.
//!
//! Every command gets exactly one reply, in order, however the client
//! pipelines: the proxy keeps a queue with one entry per command, either a
//! reply it makes itself or a reply it waits for from the smtpd, and only
//! ever emits the head of the queue. The original C proxy had no such
//! queue; that is why it stalled on `RSET` pipelined with `MAIL` and died
//! on multi-line replies.
//!
//! This is a sans-IO state machine. The caller feeds it bytes and events,
//! writes what [`Proxy::client_output`] and [`Proxy::server_output`] hold,
//! and acts on [`Proxy::status`].

use std::collections::VecDeque;

use crate::command::{CommandLine, has_bare_cr_or_nul};
use crate::line::{Line, LineBuffer};
use crate::reply::{MAX_REPLY_LINE, parse_line};

/// Longest command line accepted before the decision, terminator included.
/// RFC 5321 allows 512 bytes; extensions (AUTH, long parameter lists) need
/// more. Longer lines get `500 5.5.2 Line too long`.
pub(crate) const MAX_COMMAND_LINE: usize = 8192;

/// Output waiting in either direction beyond which the proxy stops reading
/// new commands, so that a client that does not read its replies cannot
/// make the proxy's memory grow.
pub const OUTPUT_HIGH_WATER: usize = 64 * 1024;

/// Commands awaiting their reply beyond which the proxy stops reading.
pub(crate) const MAX_OUTSTANDING: usize = 256;

/// The replies the proxy makes itself.
pub mod replies {
    /// STARTTLS accepted; the handshake comes next.
    pub(crate) const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
    /// NOOP before the decision.
    pub const NOOP: &[u8] = b"250 2.0.0 OK\r\n";
    /// RCPT, DATA or BDAT before MAIL.
    pub const MAIL_FIRST: &[u8] = b"503 5.5.1 MAIL first\r\n";
    /// A verb the proxy does not pass on before the decision.
    pub(crate) const UNRECOGNIZED: &[u8] = b"500 5.5.2 Command not recognized\r\n";
    /// A command line over `super::MAX_COMMAND_LINE`.
    pub const TOO_LONG: &[u8] = b"500 5.5.2 Line too long\r\n";
    /// A CR inside a command line, or a NUL.
    pub(crate) const BARE_CR: &[u8] = b"500 5.5.2 Syntax error: bare CR or NUL in command\r\n";
    /// `STARTTLS` with something after it.
    pub(crate) const STARTTLS_ARG: &[u8] = b"501 5.5.4 STARTTLS takes no parameters\r\n";
    /// Bytes after `STARTTLS` in the same packet (CVE-2011-0411).
    pub const PIPELINED_STARTTLS: &[u8] =
        b"554 5.5.1 Commands pipelined after STARTTLS are not allowed; closing connection\r\n";
    /// The smtpd did not accept the RSET that precedes TLS.
    pub(crate) const RESET_FAILED: &[u8] = b"454 4.7.0 TLS not available: the server could not reset\r\n";
    /// MAIL or AUTH before STARTTLS when TLS is required.
    pub const MUST_STARTTLS: &[u8] = b"530 5.7.0 Must issue a STARTTLS command first\r\n";
    /// The idle timeout passed.
    pub const TIMEOUT: &[u8] = b"421 4.4.2 Timeout; closing connection\r\n";
    /// The smtpd sent something that is not a reply, or went away while
    /// commands were waiting for their replies.
    pub(crate) const SERVER_ERROR: &[u8] = b"421 4.3.0 Local server error; closing connection\r\n";
}

/// How the proxy is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Config {
    /// Refuse MAIL and AUTH before TLS (`530 5.7.0`), for submission ports.
    pub require_tls: bool,
}

/// The transport of the relay that follows the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The client declined TLS: relay the network as it is.
    Plain,
    /// TLS is up: relay the UCSPI-TLS server's plaintext pipes.
    Tls,
}

/// Why the session ended without a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed in an orderly way.
    Closed,
    /// The client went away in the middle of a STARTTLS.
    ClientGone,
    /// The idle timeout passed.
    Timeout,
    /// Bytes followed STARTTLS in one packet.
    Injection,
    /// The smtpd sent garbage or closed with replies outstanding.
    ServerError,
    /// The UCSPI-TLS server reported no handshake.
    TlsFailed,
}

/// What the caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep moving bytes: read where `wants_*_input` says, write the
    /// outputs.
    Running,
    /// Write all of [`Proxy::client_output`] (the `220`), then ask the
    /// UCSPI-TLS server to start TLS, then call [`Proxy::tls_started`] or
    /// [`Proxy::tls_failed`].
    StartTls,
    /// Decided: call [`Proxy::into_relay`] and relay bytes both ways.
    Relay(Transport),
    /// Write what is left of [`Proxy::client_output`], close both sides.
    Finished(End),
}

/// One command waiting for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// The smtpd's reply goes to the client as it is.
    Forward,
    /// The smtpd's EHLO reply: `STARTTLS` is added.
    Ehlo,
    /// The RSET the proxy sent before TLS: the reply is for the proxy.
    Reset,
    /// The proxy's own reply, emitted when it reaches the head.
    Local(&'static [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading commands.
    Negotiating,
    /// STARTTLS received, RSET sent: waiting for the replies up to it.
    AwaitingReset,
    /// The 220 is queued: the caller starts TLS.
    StartTls,
    /// HELO, MAIL or AUTH was seen: client bytes go to the smtpd raw; the
    /// replies of earlier commands are still sorted out.
    Draining,
    /// Closing once the outstanding replies are out.
    Closing(End),
    /// Relay decided.
    Relay(Transport),
    /// Done.
    Finished(End),
}

/// The reply of the head of the queue, while its lines arrive.
#[derive(Debug, Clone, Copy)]
struct InReply {
    code: u16,
    starttls_seen: bool,
}

/// The STARTTLS proxy state machine.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    mode: Mode,
    client_in: LineBuffer,
    server_in: LineBuffer,
    client_out: Vec<u8>,
    server_out: Vec<u8>,
    pending: VecDeque<Pending>,
    in_reply: Option<InReply>,
    client_eof: bool,
    server_eof: bool,
    /// The last complete reply from the smtpd was a 221.
    saw_goodbye: bool,
}

/// What is left in the buffers when the relay takes over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RelayParts {
    /// Bytes for the smtpd, to write before relaying the client.
    pub to_server: Vec<u8>,
    /// Bytes for the client, to write before relaying the smtpd.
    pub to_client: Vec<u8>,
}

impl Proxy {
    /// A proxy at the start of a session; the smtpd's greeting is the
    /// first reply it expects.
    pub fn new(config: Config) -> Proxy {
        let mut pending = VecDeque::new();
        pending.push_back(Pending::Forward);
        Proxy {
            config,
            mode: Mode::Negotiating,
            client_in: LineBuffer::new(MAX_COMMAND_LINE),
            server_in: LineBuffer::new(MAX_REPLY_LINE),
            client_out: Vec::new(),
            server_out: Vec::new(),
            pending,
            in_reply: None,
            client_eof: false,
            server_eof: false,
            saw_goodbye: false,
        }
    }

    /// What the caller must do next.
    pub fn status(&self) -> Status {
        match self.mode {
            Mode::Negotiating | Mode::AwaitingReset | Mode::Draining | Mode::Closing(_) => Status::Running,
            Mode::StartTls => Status::StartTls,
            Mode::Relay(t) => Status::Relay(t),
            Mode::Finished(e) => Status::Finished(e),
        }
    }

    /// Whether the caller should read from the client now.
    pub fn wants_client_input(&self) -> bool {
        matches!(self.mode, Mode::Negotiating | Mode::Draining)
            && !self.client_eof
            && self.client_out.len() < OUTPUT_HIGH_WATER
            && self.server_out.len() < OUTPUT_HIGH_WATER
            && self.pending.len() < MAX_OUTSTANDING
    }

    /// Whether the caller should read from the smtpd now.
    pub fn wants_server_input(&self) -> bool {
        matches!(self.mode, Mode::Negotiating | Mode::AwaitingReset | Mode::Draining | Mode::Closing(_))
            && !self.server_eof
            && self.client_out.len() < OUTPUT_HIGH_WATER
    }

    /// Bytes to write to the client.
    pub fn client_output(&self) -> &[u8] {
        &self.client_out
    }

    /// Records that `n` bytes of [`Proxy::client_output`] were written.
    pub fn consume_client_output(&mut self, n: usize) {
        self.client_out.drain(..n.min(self.client_out.len()));
    }

    /// Bytes to write to the smtpd.
    pub fn server_output(&self) -> &[u8] {
        &self.server_out
    }

    /// Records that `n` bytes of [`Proxy::server_output`] were written.
    pub fn consume_server_output(&mut self, n: usize) {
        self.server_out.drain(..n.min(self.server_out.len()));
    }

    /// Whether the caller should now close the smtpd's input: the client
    /// sent EOF and everything for the smtpd has been written. Never once
    /// the client has chosen plaintext: the relay that follows passes the
    /// EOF on itself.
    pub fn should_close_server_input(&self) -> bool {
        self.client_eof && self.server_out.is_empty() && !matches!(self.mode, Mode::Draining | Mode::Relay(_))
    }

    /// Bytes from the client.
    pub fn client_data(&mut self, data: &[u8]) {
        match self.mode {
            Mode::Negotiating => {
                self.client_in.push(data);
                self.read_commands();
            }
            Mode::Draining => self.server_out.extend_from_slice(data),
            // Input is not wanted in the other modes; drop it.
            _ => {}
        }
        self.advance();
    }

    /// The client closed its side.
    pub fn client_closed(&mut self) {
        self.client_eof = true;
        match self.mode {
            Mode::AwaitingReset | Mode::StartTls => self.mode = Mode::Finished(End::ClientGone),
            // A partial command line without its LF is not a command.
            Mode::Negotiating => drop(self.client_in.take_buffered()),
            _ => {}
        }
        self.advance();
    }

    /// Bytes from the smtpd.
    pub fn server_data(&mut self, data: &[u8]) {
        if !matches!(self.mode, Mode::Negotiating | Mode::AwaitingReset | Mode::Draining | Mode::Closing(_)) {
            return;
        }
        self.server_in.push(data);
        self.read_replies();
        self.advance();
    }

    /// The smtpd closed its output.
    pub fn server_closed(&mut self) {
        self.server_eof = true;
        if matches!(self.mode, Mode::Negotiating | Mode::AwaitingReset | Mode::Draining | Mode::Closing(_)) {
            let waiting = self.in_reply.is_some() || self.pending.iter().any(|p| !matches!(p, Pending::Local(_)));
            if waiting && !self.saw_goodbye {
                self.client_out.extend_from_slice(replies::SERVER_ERROR);
                self.mode = Mode::Finished(End::ServerError);
            } else {
                self.mode = Mode::Finished(End::Closed);
            }
        }
    }

    /// The idle timeout passed.
    pub fn timed_out(&mut self) {
        if !matches!(self.mode, Mode::Finished(_) | Mode::Relay(_)) {
            self.client_out.extend_from_slice(replies::TIMEOUT);
            self.mode = Mode::Finished(End::Timeout);
        }
    }

    /// The UCSPI-TLS server reported a completed handshake.
    pub fn tls_started(&mut self) {
        if self.mode == Mode::StartTls {
            self.mode = Mode::Relay(Transport::Tls);
        }
    }

    /// The UCSPI-TLS server reported no handshake.
    pub fn tls_failed(&mut self) {
        if self.mode == Mode::StartTls {
            self.mode = Mode::Finished(End::TlsFailed);
        }
    }

    /// Hands over what is buffered, once [`Proxy::status`] is
    /// [`Status::Relay`]. Bytes for the client are the unsent replies
    /// followed by whatever the smtpd sent after the last reply the proxy
    /// had to look at.
    pub fn into_relay(mut self) -> RelayParts {
        let mut to_client = std::mem::take(&mut self.client_out);
        to_client.extend_from_slice(&self.server_in.take_buffered());
        RelayParts { to_server: std::mem::take(&mut self.server_out), to_client }
    }

    fn read_commands(&mut self) {
        while self.mode == Mode::Negotiating {
            let line = match self.client_in.next_line() {
                None => return,
                Some(Line::TooLong) => {
                    self.pending.push_back(Pending::Local(replies::TOO_LONG));
                    continue;
                }
                Some(Line::Complete(l)) => l.to_vec(),
            };
            self.command(&line);
        }
    }

    fn forward(&mut self, line: &[u8], kind: Pending) {
        self.server_out.extend_from_slice(line);
        self.pending.push_back(kind);
    }

    fn local(&mut self, reply: &'static [u8]) {
        self.pending.push_back(Pending::Local(reply));
    }

    /// The client chose plaintext: the command and everything after it go
    /// to the smtpd unparsed.
    fn decide_plaintext(&mut self, line: &[u8]) {
        self.server_out.extend_from_slice(line);
        let rest = self.client_in.take_buffered();
        self.server_out.extend_from_slice(&rest);
        self.mode = Mode::Draining;
    }

    fn command(&mut self, line: &[u8]) {
        if has_bare_cr_or_nul(line) {
            return self.local(replies::BARE_CR);
        }
        let cmd = CommandLine::parse(line);
        let is = |v: &str| cmd.is(v);
        if is("EHLO") {
            self.forward(line, Pending::Ehlo);
        } else if is("HELO") {
            if self.config.require_tls {
                self.forward(line, Pending::Forward);
            } else {
                self.decide_plaintext(line);
            }
        } else if is("MAIL") || is("AUTH") {
            if self.config.require_tls {
                self.local(replies::MUST_STARTTLS);
            } else {
                self.decide_plaintext(line);
            }
        } else if is("STARTTLS") {
            if cmd.has_arg() {
                self.local(replies::STARTTLS_ARG);
            } else if !self.client_in.is_empty() {
                // Something came with STARTTLS in the same packet: a
                // client that does not wait for the 220, or an attacker
                // injecting plaintext to be read as if it were encrypted.
                // None of it may reach the smtpd.
                drop(self.client_in.take_buffered());
                self.local(replies::PIPELINED_STARTTLS);
                self.mode = Mode::Closing(End::Injection);
            } else {
                self.forward(b"RSET\r\n", Pending::Reset);
                self.mode = Mode::AwaitingReset;
            }
        } else if is("RSET") || is("QUIT") || is("VRFY") || is("EXPN") || is("HELP") {
            self.forward(line, Pending::Forward);
        } else if is("NOOP") {
            self.local(replies::NOOP);
        } else if is("RCPT") || is("DATA") || is("BDAT") {
            self.local(replies::MAIL_FIRST);
        } else {
            self.local(replies::UNRECOGNIZED);
        }
    }

    fn read_replies(&mut self) {
        // In Draining mode only the replies still owed to earlier commands
        // are parsed; once they are out, the rest is the relay's.
        while !matches!(self.mode, Mode::Finished(_) | Mode::StartTls | Mode::Relay(_)) {
            if self.mode == Mode::Draining && self.pending.is_empty() {
                return;
            }
            let line = match self.server_in.next_line() {
                None => return,
                Some(Line::TooLong) => return self.server_error(),
                Some(Line::Complete(l)) => l.to_vec(),
            };
            self.reply_line(&line);
        }
    }

    fn server_error(&mut self) {
        self.client_out.extend_from_slice(replies::SERVER_ERROR);
        self.mode = Mode::Finished(End::ServerError);
    }

    fn reply_line(&mut self, line: &[u8]) {
        self.emit_local();
        let Ok(parsed) = parse_line(line) else {
            return self.server_error();
        };
        let head = self.pending.front().copied();
        let state = self.in_reply.get_or_insert(InReply { code: parsed.code, starttls_seen: false });
        if state.code != parsed.code {
            return self.server_error();
        }
        match head {
            // A reply nobody asked for (qmail-smtpd's own timeout message,
            // say): pass it on.
            None | Some(Pending::Forward) => self.client_out.extend_from_slice(line),
            Some(Pending::Ehlo) => {
                // Whether to advertise was settled when the EHLO was read
                // (before any decision), not when its reply arrives: the
                // reply must not depend on how packets were cut.
                let advertise = (200..300).contains(&parsed.code);
                if advertise {
                    let first_word = parsed.text.split(|&b| b == b' ').next().unwrap_or(&[]);
                    if first_word.eq_ignore_ascii_case(b"STARTTLS") {
                        state.starttls_seen = true;
                    }
                }
                if advertise && parsed.last && !state.starttls_seen {
                    // `250 last` becomes `250-last`, then `250 STARTTLS`
                    // follows; a bare `250` becomes `250-`.
                    let rest = if line.get(3) == Some(&b' ') { &line[4..] } else { &line[3..] };
                    self.client_out.extend_from_slice(&line[..3]);
                    self.client_out.push(b'-');
                    self.client_out.extend_from_slice(rest);
                    self.client_out.extend_from_slice(&line[..3]);
                    self.client_out.extend_from_slice(b" STARTTLS\r\n");
                } else {
                    self.client_out.extend_from_slice(line);
                }
            }
            Some(Pending::Reset) => {}
            // Cannot happen: local replies leave the queue as soon as they
            // reach its head (see the top of this function).
            Some(Pending::Local(_)) => self.client_out.extend_from_slice(line),
        }
        if !parsed.last {
            return;
        }
        self.in_reply = None;
        self.saw_goodbye = parsed.code == 221;
        if head.is_some() {
            self.pending.pop_front();
        }
        if head == Some(Pending::Reset) {
            if (200..300).contains(&parsed.code) {
                self.pending.push_front(Pending::Local(replies::READY));
                self.emit_local();
                self.mode = Mode::StartTls;
            } else {
                self.pending.push_front(Pending::Local(replies::RESET_FAILED));
                self.mode = Mode::Negotiating;
            }
        }
        self.emit_local();
    }

    /// Moves the proxy's own replies at the head of the queue to the
    /// client's output.
    fn emit_local(&mut self) {
        while let Some(&Pending::Local(r)) = self.pending.front() {
            self.client_out.extend_from_slice(r);
            self.pending.pop_front();
        }
    }

    fn advance(&mut self) {
        self.emit_local();
        // A reset that failed put the proxy back to reading commands, and
        // commands may already be waiting.
        if self.mode == Mode::Negotiating && !self.client_in.is_empty() {
            self.read_commands();
            self.emit_local();
        }
        match self.mode {
            Mode::Draining if self.pending.is_empty() && self.in_reply.is_none() => {
                self.mode = Mode::Relay(Transport::Plain);
            }
            Mode::Closing(end) if self.pending.is_empty() && self.in_reply.is_none() => {
                self.mode = Mode::Finished(end);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
