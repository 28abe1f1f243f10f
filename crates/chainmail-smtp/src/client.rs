//! The client side of one SMTP delivery attempt, as a state machine.
//!
//! The caller has a connected socket. It feeds the machine the server's
//! bytes ([`Client::server_data`]) and events (EOF, timeout, the outcome
//! of a TLS handshake, the end of the message body), writes what
//! [`Client::output`] holds, and acts on [`Client::status`]: start TLS,
//! stream the message, or stop with an [`AttemptEnd`].
//!
//! The outcome says either that this server should be left for the next
//! one (nothing was committed: a `4xx` greeting, a failed EHLO, a
//! connection lost before `MAIL`), or that the attempt is final, with one
//! result per recipient and a [`MessageResult`]. [`MessageResult::is_permanent`] is the
//! one place that decides between a bounce and a retry.

use crate::data::MessageFacts;
use crate::reply::{Reply, ReplyError, ReplyReader};

/// What the caller wants from TLS on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsWish {
    /// Never send STARTTLS.
    Off,
    /// STARTTLS when offered; if it is not offered or the server refuses
    /// it, go on in plaintext on the same connection.
    Try,
    /// STARTTLS or nothing: a server that does not offer it, or refuses it,
    /// ends the attempt with [`AttemptEnd::NoStartTls`] or
    /// [`AttemptEnd::TlsFailed`].
    Require,
}

/// The attempt's parameters.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The name for EHLO/HELO.
    pub helo: String,
    /// The sender, encoded for `MAIL FROM:<...>` (empty for `<>`).
    pub sender: Vec<u8>,
    /// The recipients, encoded for `RCPT TO:<...>`.
    pub recipients: Vec<Vec<u8>>,
    /// What the message needs.
    pub facts: MessageFacts,
    /// An address needs SMTPUTF8 (RFC 6531).
    pub needs_smtputf8: bool,
    /// TLS wanted?
    pub tls: TlsWish,
}

/// The extensions a server announced in its EHLO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 1870: `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
}

impl Extensions {
    /// Reads the keywords of an EHLO reply (its first line is the server's
    /// name and is skipped).
    pub(crate) fn from_ehlo(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let text = String::from_utf8_lossy(line);
            let mut words = text.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        ext
    }
}

/// Why a server is left for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The greeting was a 4xx.
    Greeting(Reply),
    /// EHLO got a 4xx.
    Ehlo(Reply),
    /// The connection ended or timed out before the transaction.
    Died {
        /// What the client was waiting for.
        during: &'static str,
        /// Timeout rather than EOF or error.
        timeout: bool,
    },
    /// The server sent something that is not a reply before the
    /// transaction.
    Malformed(ReplyError),
    /// Before the transaction, the server sent a reply to a command that
    /// had not been sent yet (or to none at all).
    Unexpected(Reply),
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// 2xx.
    Accepted,
    /// 5xx: bounce this recipient.
    Refused(Reply),
    /// 4xx (or a reply that makes no sense): retry this recipient.
    Deferred(Reply),
    /// The transaction ended before its RCPT was answered.
    NotTried,
}

/// What became of the message in a committed attempt (the counterpart of
/// [`RcptResult`] for the whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageResult {
    /// 2xx after the final dot: the server took the message.
    Delivered(Reply),
    /// The greeting was not 220 nor 4xx.
    GreetingFailed(Reply),
    /// HELO (after a refused EHLO) was not answered with 250.
    HeloRejected(Reply),
    /// MAIL was not accepted.
    SenderRejected(Reply),
    /// No recipient was accepted.
    NoRecipients {
        /// At least one refusal was temporary.
        any_temporary: bool,
    },
    /// DATA was not answered with 354.
    DataRejected(Reply),
    /// The reply after the final dot was not 2xx.
    MessageRejected(Reply),
    /// The message is larger than the server's SIZE.
    TooBig {
        /// Our size.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
    /// An address needs SMTPUTF8 and the server does not offer it.
    NeedsSmtputf8,
    /// The connection ended or timed out during the transaction.
    ConnectionDied {
        /// The final dot had been sent: the server may have the message.
        after_dot: bool,
        /// A timeout rather than EOF or an error.
        timeout: bool,
    },
    /// The server broke the protocol during the transaction.
    Protocol {
        /// What was wrong.
        detail: String,
        /// The final dot had been sent: the server may have the message.
        after_dot: bool,
    },
}

impl MessageResult {
    /// Whether this ends the delivery for good (a bounce). Everything not
    /// provably permanent is temporary: a temporary problem must never be
    /// reported as a permanent one.
    pub fn is_permanent(&self) -> bool {
        match self {
            MessageResult::Delivered(_) => false,
            MessageResult::SenderRejected(r) | MessageResult::DataRejected(r) | MessageResult::MessageRejected(r) => {
                r.is_permanent()
            }
            MessageResult::NoRecipients { any_temporary } => !any_temporary,
            MessageResult::TooBig { .. } | MessageResult::NeedsSmtputf8 => true,
            // Stock qmail defers these whatever the code.
            MessageResult::GreetingFailed(_) | MessageResult::HeloRejected(_) => false,
            MessageResult::ConnectionDied { .. } | MessageResult::Protocol { .. } => false,
        }
    }

    /// Whether the message was delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, MessageResult::Delivered(_))
    }
}

/// The end of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Nothing committed: try the next server.
    Skip(Skip),
    /// TLS was required and the server does not offer STARTTLS.
    NoStartTls,
    /// TLS was required and failed: STARTTLS refused (`Some(reply)`) or the
    /// handshake failed (`None`).
    TlsFailed(Option<Reply>),
    /// The attempt is over.
    Final {
        /// One result per recipient, in order.
        recipients: Vec<RcptResult>,
        /// What became of the message.
        message: MessageResult,
    },
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Write [`Client::output`], read the server.
    Running,
    /// [`Client::output`] is empty: do the TLS handshake now, then call
    /// [`Client::tls_done`].
    StartTls,
    /// Write [`Client::output`] (the last commands), then stream the
    /// encoded message and its terminator, then call
    /// [`Client::body_sent`].
    SendBody,
    /// Write what is left of [`Client::output`] (a `QUIT`) if the
    /// connection still works, and close.
    Done(AttemptEnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Ehlo {
        after_tls: bool,
    },
    Helo,
    StartTls,
    Handshake,
    /// Waiting for the replies of MAIL, the RCPTs and DATA; `next` counts
    /// the replies received so far (0 = MAIL's).
    Transaction {
        next: usize,
    },
    Body,
    FinalReply,
    Done,
}

/// One delivery attempt on one connection.
///
/// Every command that expects a reply is recorded with the position of its
/// last byte in the stream of everything [`Client::output`] ever held. A
/// reply is matched to the oldest command not yet answered, and only if the
/// caller has written that command whole ([`Client::consume_output`]): a
/// reply that comes before its command (a server answering `MAIL` with
/// `250`, `250`, `354` at once, without PIPELINING), or with no command
/// left to answer, is a protocol violation. So the dialogue never moves on
/// (to the next command, or to the body) on a reply the server could not
/// have meant for what we sent.
#[derive(Debug)]
pub struct Client {
    attempt: Attempt,
    state: State,
    replies: ReplyReader,
    out: Vec<u8>,
    /// Bytes ever queued in `out`.
    queued: u64,
    /// Bytes of `out` the caller has written.
    written: u64,
    /// The end positions (in `queued` terms) of the commands sent and not
    /// yet answered, oldest first.
    awaiting: std::collections::VecDeque<u64>,
    ext: Extensions,
    tls_active: bool,
    pipelined: bool,
    mail_reply: Option<Reply>,
    rcpt: Vec<RcptResult>,
    outcome: Option<AttemptEnd>,
}

impl Client {
    /// A client that has just connected and waits for the greeting.
    pub fn new(attempt: Attempt) -> Client {
        let n = attempt.recipients.len();
        Client {
            attempt,
            state: State::Greeting,
            replies: ReplyReader::new(),
            out: Vec::new(),
            queued: 0,
            written: 0,
            awaiting: std::collections::VecDeque::new(),
            ext: Extensions::default(),
            tls_active: false,
            pipelined: false,
            mail_reply: None,
            rcpt: vec![RcptResult::NotTried; n],
            outcome: None,
        }
    }

    /// What the caller must do next.
    pub fn status(&self) -> Status {
        match (&self.outcome, self.state) {
            (Some(o), _) => Status::Done(o.clone()),
            (None, State::Handshake) => Status::StartTls,
            (None, State::Body) => Status::SendBody,
            _ => Status::Running,
        }
    }

    /// Bytes to send.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Records that `n` bytes of [`Client::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        let n = n.min(self.out.len());
        self.out.drain(..n);
        self.written += n as u64;
    }

    /// Whether the caller should read the server now.
    pub fn wants_input(&self) -> bool {
        self.outcome.is_none() && !matches!(self.state, State::Handshake | State::Body | State::Done)
    }

    /// Queues a command line that expects a reply.
    fn send(&mut self, parts: &[&[u8]]) {
        for p in parts {
            self.queue(p);
        }
        self.queue(b"\r\n");
        self.awaiting.push_back(self.queued);
    }

    /// Queues bytes that expect no reply of their own.
    fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
        self.queued += bytes.len() as u64;
    }

    /// Matches a reply to the oldest unanswered command: `false` if there
    /// is none, or if the caller has not written it whole yet.
    fn reply_is_due(&mut self) -> bool {
        if self.state == State::Greeting {
            return true;
        }
        match self.awaiting.pop_front() {
            Some(end) => end <= self.written,
            None => false,
        }
    }

    /// A reply ahead of its command: the server does not follow the
    /// dialogue, so nothing more is sent (not even the commands queued and
    /// not yet written, nor QUIT: only the close tells it we are gone).
    fn unexpected(&mut self, reply: Reply) {
        self.out.clear();
        if self.before_transaction() {
            self.finish(AttemptEnd::Skip(Skip::Unexpected(reply)), false);
        } else {
            let detail = format!("a {} reply came before the command it answers", reply.code);
            let after_dot = self.state == State::FinalReply;
            self.conclude(MessageResult::Protocol { detail, after_dot }, false);
        }
    }

    fn before_transaction(&self) -> bool {
        matches!(self.state, State::Greeting | State::Ehlo { .. } | State::Helo | State::StartTls | State::Handshake)
    }

    fn finish(&mut self, outcome: AttemptEnd, quit: bool) {
        if quit {
            self.queue(b"QUIT\r\n");
        }
        self.state = State::Done;
        self.outcome = Some(outcome);
    }

    fn conclude(&mut self, message: MessageResult, quit: bool) {
        let recipients = std::mem::take(&mut self.rcpt);
        self.finish(AttemptEnd::Final { recipients, message }, quit);
    }

    /// Bytes from the server.
    pub fn server_data(&mut self, data: &[u8]) {
        if self.outcome.is_some() {
            return;
        }
        self.replies.push(data);
        while self.outcome.is_none()
            && matches!(
                self.state,
                State::Greeting
                    | State::Ehlo { .. }
                    | State::Helo
                    | State::StartTls
                    | State::Transaction { .. }
                    | State::FinalReply
            )
        {
            match self.replies.next_reply() {
                None => return,
                Some(Ok(reply)) if self.reply_is_due() => self.reply(reply),
                Some(Ok(reply)) => self.unexpected(reply),
                Some(Err(e)) => self.malformed(e),
            }
        }
    }

    /// The connection ended (EOF or an error).
    pub fn server_closed(&mut self) {
        self.died(false);
    }

    /// The server did not answer (or take our bytes) in time.
    pub fn timed_out(&mut self) {
        self.died(true);
    }

    fn died(&mut self, timeout: bool) {
        if self.outcome.is_some() {
            return;
        }
        let during = match self.state {
            State::Greeting => "greeting",
            State::Ehlo { .. } | State::Helo => "EHLO",
            State::StartTls | State::Handshake => "STARTTLS",
            _ => "",
        };
        if self.state == State::Handshake && self.attempt.tls == TlsWish::Require {
            return self.finish(AttemptEnd::TlsFailed(None), false);
        }
        // The handshake completed and the connection ended before the
        // first reply through TLS: the server rejected our side of TLS. A
        // TLS 1.3 server that refuses the client's certificate (or has none
        // it wants) only says so after the client has finished its side of
        // the handshake, with an alert or by hanging up. A TLS failure, so
        // that opportunistic TLS falls back to plaintext.
        if self.tls_active && matches!(self.state, State::Ehlo { after_tls: true } | State::Helo) {
            return self.finish(AttemptEnd::TlsFailed(None), false);
        }
        if self.before_transaction() {
            return self.finish(AttemptEnd::Skip(Skip::Died { during, timeout }), false);
        }
        let after_dot = self.state == State::FinalReply;
        self.conclude(MessageResult::ConnectionDied { after_dot, timeout }, false);
    }

    fn malformed(&mut self, e: ReplyError) {
        if self.before_transaction() {
            self.finish(AttemptEnd::Skip(Skip::Malformed(e)), true);
        } else {
            // After the final dot a garbled reply is not a 2xx: the
            // message may or may not have been taken. Defer.
            let after_dot = self.state == State::FinalReply;
            self.conclude(MessageResult::Protocol { detail: e.to_string(), after_dot }, true);
        }
    }

    /// The TLS handshake the caller ran after [`Status::StartTls`] ended.
    pub fn tls_done(&mut self, ok: bool) {
        if self.state != State::Handshake || self.outcome.is_some() {
            return;
        }
        if ok {
            self.tls_active = true;
            self.ext = Extensions::default();
            // Anything the server sent in plaintext after its 220 could be
            // an attacker's reply waiting to be read as if it came through
            // TLS (the client side of STARTTLS injection): forget it.
            self.replies = ReplyReader::new();
            self.awaiting.clear();
            let helo = self.attempt.helo.clone();
            self.send(&[b"EHLO ", helo.as_bytes()]);
            self.state = State::Ehlo { after_tls: true };
        } else {
            // The connection is unusable after a failed handshake.
            self.finish(AttemptEnd::TlsFailed(None), false);
        }
    }

    /// The caller has sent the whole encoded message and its terminator.
    pub fn body_sent(&mut self) {
        if self.state == State::Body && self.outcome.is_none() {
            self.state = State::FinalReply;
            // The body and its dot are the command the next reply answers;
            // the caller wrote them itself, so they count as written.
            self.awaiting.push_back(self.written);
            // The reply may already be buffered.
            self.server_data(&[]);
        }
    }

    fn reply(&mut self, reply: Reply) {
        match self.state {
            State::Greeting => self.greeting(reply),
            State::Ehlo { after_tls } => self.ehlo(reply, after_tls),
            State::Helo => {
                if reply.code == 250 {
                    self.ext = Extensions::default();
                    self.after_hello();
                } else {
                    self.conclude(MessageResult::HeloRejected(reply), true);
                }
            }
            State::StartTls => {
                if reply.code == 220 {
                    self.state = State::Handshake;
                } else if self.attempt.tls == TlsWish::Require {
                    self.finish(AttemptEnd::TlsFailed(Some(reply)), true);
                } else {
                    // Opportunistic: the server stays in plaintext.
                    self.transaction();
                }
            }
            State::Transaction { next } => self.transaction_reply(reply, next),
            State::FinalReply => {
                let message = if reply.is_positive() {
                    MessageResult::Delivered(reply)
                } else {
                    MessageResult::MessageRejected(reply)
                };
                self.conclude(message, true);
            }
            State::Handshake | State::Body | State::Done => {}
        }
    }

    fn greeting(&mut self, reply: Reply) {
        if reply.code == 220 {
            let helo = self.attempt.helo.clone();
            self.send(&[b"EHLO ", helo.as_bytes()]);
            self.state = State::Ehlo { after_tls: false };
        } else if reply.is_transient() {
            self.finish(AttemptEnd::Skip(Skip::Greeting(reply)), true);
        } else {
            self.conclude(MessageResult::GreetingFailed(reply), true);
        }
    }

    fn ehlo(&mut self, reply: Reply, after_tls: bool) {
        if reply.is_positive() {
            self.ext = Extensions::from_ehlo(&reply);
            if after_tls {
                self.transaction();
            } else {
                self.after_hello();
            }
        } else if reply.is_transient() && !after_tls {
            self.finish(AttemptEnd::Skip(Skip::Ehlo(reply)), true);
        } else {
            // No ESMTP here (or a refusal after TLS): fall back to HELO.
            let helo = self.attempt.helo.clone();
            self.send(&[b"HELO ", helo.as_bytes()]);
            self.state = State::Helo;
        }
    }

    /// After the first EHLO (or HELO): STARTTLS if wanted and possible.
    fn after_hello(&mut self) {
        if self.tls_active || self.attempt.tls == TlsWish::Off {
            return self.transaction();
        }
        if self.ext.starttls {
            self.send(&[b"STARTTLS"]);
            self.state = State::StartTls;
        } else if self.attempt.tls == TlsWish::Require {
            self.finish(AttemptEnd::NoStartTls, true);
        } else {
            self.transaction();
        }
    }

    /// Sends MAIL, and with PIPELINING also every RCPT and DATA.
    fn transaction(&mut self) {
        let facts = self.attempt.facts;
        if let Some(limit) = self.ext.size {
            if limit > 0 && facts.encoded_size > limit {
                return self.conclude(MessageResult::TooBig { size: facts.encoded_size, limit }, true);
            }
        }
        if self.attempt.needs_smtputf8 && !self.ext.smtputf8 {
            return self.conclude(MessageResult::NeedsSmtputf8, true);
        }
        let mut mail = b"MAIL FROM:<".to_vec();
        mail.extend_from_slice(&self.attempt.sender);
        mail.push(b'>');
        if self.ext.size.is_some() {
            mail.extend_from_slice(format!(" SIZE={}", facts.encoded_size).as_bytes());
        }
        if facts.eight_bit && self.ext.eight_bit_mime {
            mail.extend_from_slice(b" BODY=8BITMIME");
        }
        if self.attempt.needs_smtputf8 {
            mail.extend_from_slice(b" SMTPUTF8");
        }
        self.send(&[&mail]);
        self.pipelined = self.ext.pipelining;
        if self.pipelined {
            for i in 0..self.attempt.recipients.len() {
                self.send_rcpt(i);
            }
            self.send(&[b"DATA"]);
        }
        self.state = State::Transaction { next: 0 };
    }

    fn send_rcpt(&mut self, i: usize) {
        let mut line = b"RCPT TO:<".to_vec();
        line.extend_from_slice(&self.attempt.recipients[i]);
        line.push(b'>');
        self.send(&[&line]);
    }

    fn accepted_any(&self) -> bool {
        self.rcpt.contains(&RcptResult::Accepted)
    }

    /// The replies to MAIL (`next` = 0), the RCPTs (1..=n) and DATA (n+1).
    fn transaction_reply(&mut self, reply: Reply, next: usize) {
        let n = self.attempt.recipients.len();
        self.state = State::Transaction { next: next + 1 };
        if next == 0 {
            let ok = reply.is_positive();
            self.mail_reply = Some(reply);
            if !ok && !self.pipelined {
                let r = self.mail_reply.take().expect("just set");
                return self.conclude(MessageResult::SenderRejected(r), true);
            }
            if ok && !self.pipelined {
                if n == 0 {
                    return self.conclude(MessageResult::NoRecipients { any_temporary: false }, true);
                }
                self.send_rcpt(0);
            }
            return;
        }
        if next <= n {
            let i = next - 1;
            // With PIPELINING the RCPTs went out before MAIL's reply came:
            // when MAIL failed, their replies (`503 need MAIL`) say nothing
            // about the recipients and must not become recipient results.
            if self.pipelined && !self.mail_reply.as_ref().is_some_and(Reply::is_positive) {
                return;
            }
            self.rcpt[i] = if reply.is_positive() {
                RcptResult::Accepted
            } else if reply.is_permanent() {
                RcptResult::Refused(reply)
            } else {
                RcptResult::Deferred(reply)
            };
            if !self.pipelined {
                if i + 1 < n {
                    self.send_rcpt(i + 1);
                } else if self.accepted_any() {
                    self.send(&[b"DATA"]);
                } else {
                    let any_temporary = self.rcpt.iter().any(|r| matches!(r, RcptResult::Deferred(_)));
                    self.conclude(MessageResult::NoRecipients { any_temporary }, true);
                }
            }
            return;
        }
        // DATA's reply: with PIPELINING, only now is everything known.
        let mail_ok = self.mail_reply.as_ref().is_some_and(Reply::is_positive);
        let go_ahead = reply.code == 354;
        if go_ahead && mail_ok && self.accepted_any() {
            if self.replies.has_partial() {
                // The server said more after its 354, before it had a byte
                // of the message: it does not follow the dialogue.
                self.out.clear();
                let detail = "it sent more after its 354 before the message was sent".to_owned();
                return self.conclude(MessageResult::Protocol { detail, after_dot: false }, false);
            }
            self.state = State::Body;
            return;
        }
        if go_ahead {
            // A server that says 354 to a transaction with no sender or no
            // recipient: end the (empty) data before leaving, as RFC 2920
            // asks, so that QUIT is not read as message text.
            self.queue(b".\r\n");
        }
        if !mail_ok {
            let r = self.mail_reply.take().expect("MAIL replied first");
            return self.conclude(MessageResult::SenderRejected(r), true);
        }
        if !self.accepted_any() {
            let any_temporary = self.rcpt.iter().any(|r| matches!(r, RcptResult::Deferred(_)));
            return self.conclude(MessageResult::NoRecipients { any_temporary }, true);
        }
        self.conclude(MessageResult::DataRejected(reply), true);
    }
}

#[cfg(test)]
mod tests;
