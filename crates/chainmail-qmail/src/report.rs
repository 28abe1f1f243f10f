//! qmail-remote's report records, with stock qmail's wording.
//!
//! qmail-remote tells qmail-rspawn what happened on its standard output:
//! one record per recipient, in argument order (`r` accepted, `h` refused
//! permanently, `s` refused temporarily), possibly fewer than the recipients
//! when the delivery stops early, then exactly one message record (`K`
//! delivered, `Z` temporary failure, `D` permanent failure). A record is its
//! letter, a human-readable text and a NUL. Texts end with a newline and
//! quote the remote host's reply after `Remote host said: `, every line of
//! it, carriage returns removed, NULs shown as `?`, at most 5000 bytes.
//!
//! [`Report`] collects the records in memory and produces them all at once,
//! always with exactly one final record, so that an early return or a failed
//! write can never leave qmail-rspawn a half report (which it would read as
//! a permanent failure with no text). [`Final`] has a constructor for every
//! message qmail-remote sends, byte for byte as stock qmail-remote's. Whether a failure is
//! temporary or permanent is decided by the caller (the SMTP dialogue's
//! `MessageResult::is_permanent`, the DNS error's `is_permanent`), never here:
//!
//! ```text
//! r\0K127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 queued\n\0
//! h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\0DGiving up on 127.0.0.1.\n\0
//! ```
//!
//! `parse_report` and `rspawn_report` read a report back the way
//! qmail-rspawn's `report()` does: test oracles, built only for the crate's
//! tests and with the `test-support` feature.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// The most bytes of a remote reply that are quoted, as stock qmail's
/// `HUGESMTPTEXT`.
pub(crate) const REPLY_TEXT_MAX: usize = 5000;

/// The text of an SMTP reply as it is quoted in a report.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RemoteText(Vec<u8>);

impl fmt::Debug for RemoteText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteText({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl RemoteText {
    /// The reply as received, all its lines with their codes (`250-first\r\n
    /// 250 last\r\n`): every CR is removed, NULs become `?`, the text is cut
    /// after `REPLY_TEXT_MAX` bytes and always ends with a newline (stock
    /// qmail loses the final newline of a reply it cuts; we add one).
    pub fn from_raw(raw: &[u8]) -> RemoteText {
        let mut text: Vec<u8> =
            raw.iter().filter(|&&b| b != b'\r').take(REPLY_TEXT_MAX).map(|&b| if b == 0 { b'?' } else { b }).collect();
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        RemoteText(text)
    }

    /// The reply from its lines, each without its line end (`250-first`,
    /// `250 last`).
    pub fn from_lines<I, L>(lines: I) -> RemoteText
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        let mut raw = Vec::new();
        for line in lines {
            raw.extend_from_slice(line.as_ref());
            raw.push(b'\n');
        }
        RemoteText::from_raw(&raw)
    }

    /// The text as it goes into the report.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True when there is nothing to quote.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What qmail-send is to do with the whole message: the letter of the final
/// record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// `K`: the remote host has taken responsibility for the message.
    Delivered,
    /// `Z`: temporary failure; qmail-send tries again later.
    Deferred,
    /// `D`: permanent failure; qmail-send bounces.
    Failed,
}

impl Disposition {
    /// The record letter.
    pub fn letter(self) -> u8 {
        match self {
            Disposition::Delivered => b'K',
            Disposition::Deferred => b'Z',
            Disposition::Failed => b'D',
        }
    }

    /// `Failed` for a permanent problem, `Deferred` otherwise.
    pub fn failure(permanent: bool) -> Disposition {
        if permanent { Disposition::Failed } else { Disposition::Deferred }
    }
}

/// The message record: a disposition and its text.
#[derive(Clone, PartialEq, Eq)]
pub struct Final {
    disposition: Disposition,
    text: Vec<u8>,
}

impl fmt::Debug for Final {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Final")
            .field("disposition", &self.disposition)
            .field("text", &String::from_utf8_lossy(&self.text))
            .finish()
    }
}

/// An address as stock qmail-remote writes it (`ip_fmt`); IPv6 in its
/// RFC 5952 form, IPv4-mapped IPv6 as IPv4.
pub fn fmt_ip(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

/// NULs become `?` and the text ends with a newline.
fn sanitize(text: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = text.iter().map(|&b| if b == 0 { b'?' } else { b }).collect();
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

/// Stock qmail's `outsafe`: bytes outside `!`..`~` become `?`.
fn outsafe(text: &[u8]) -> Vec<u8> {
    text.iter().map(|&b| if (33..=126).contains(&b) { b } else { b'?' }).collect()
}

/// `<prefix><ip><suffix>.\n` then `Remote host said: <reply>` if any, as
/// stock qmail's `quit()`.
fn about_ip(prefix: &str, ip: IpAddr, suffix: &str, reply: Option<&RemoteText>) -> Vec<u8> {
    let mut v = format!("{prefix}{}{suffix}.\n", fmt_ip(ip)).into_bytes();
    if let Some(r) = reply.filter(|r| !r.is_empty()) {
        v.extend_from_slice(b"Remote host said: ");
        v.extend_from_slice(r.as_bytes());
    }
    v
}

impl Final {
    fn new(disposition: Disposition, text: Vec<u8>) -> Final {
        Final { disposition, text: sanitize(&text) }
    }

    fn fixed(disposition: Disposition, text: &str) -> Final {
        Final::new(disposition, text.as_bytes().to_vec())
    }

    /// A final record with our own text (NULs become `?`, a newline is
    /// added if missing), for failures stock qmail does not have (TLS).
    pub fn custom(disposition: Disposition, text: &[u8]) -> Final {
        Final::new(disposition, text.to_vec())
    }

    /// The disposition.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// The text, ending with a newline.
    pub fn text(&self) -> &[u8] {
        &self.text
    }

    /// `ZConnected to IP but greeting failed.`
    pub fn greeting_failed(ip: IpAddr, reply: &RemoteText) -> Final {
        Final::new(Disposition::Deferred, about_ip("Connected to ", ip, " but greeting failed", Some(reply)))
    }

    /// `ZConnected to IP but my name was rejected.`
    pub fn helo_rejected(ip: IpAddr, reply: &RemoteText) -> Final {
        Final::new(Disposition::Deferred, about_ip("Connected to ", ip, " but my name was rejected", Some(reply)))
    }

    /// `D` or `ZConnected to IP but sender was rejected.`
    pub fn sender_rejected(ip: IpAddr, permanent: bool, reply: &RemoteText) -> Final {
        Final::new(
            Disposition::failure(permanent),
            about_ip("Connected to ", ip, " but sender was rejected", Some(reply)),
        )
    }

    /// `DGiving up on IP.`: every recipient was refused; `Z` when one of
    /// the refusals was temporary (stock qmail always says `D` and relies
    /// on qmail-rspawn to look at the first recipient record; with several
    /// recipients that is not enough).
    pub fn giving_up(ip: IpAddr, permanent: bool) -> Final {
        Final::new(Disposition::failure(permanent), about_ip("Giving up on ", ip, "", None))
    }

    /// `D` or `ZIP failed on DATA command.`
    pub fn data_failed(ip: IpAddr, permanent: bool, reply: &RemoteText) -> Final {
        Final::new(Disposition::failure(permanent), about_ip("", ip, " failed on DATA command", Some(reply)))
    }

    /// `D` or `ZIP failed after I sent the message.`
    pub fn message_failed(ip: IpAddr, permanent: bool, reply: &RemoteText) -> Final {
        Final::new(Disposition::failure(permanent), about_ip("", ip, " failed after I sent the message", Some(reply)))
    }

    /// `KIP accepted message.`
    pub fn accepted(ip: IpAddr, reply: &RemoteText) -> Final {
        Final::new(Disposition::Delivered, about_ip("", ip, " accepted message", Some(reply)))
    }

    /// `DSorry, the sender address is invalid: REASON. (#5.1.7)`: it would
    /// break the `MAIL` command.
    pub fn invalid_sender(reason: &str) -> Final {
        Final::new(
            Disposition::Failed,
            format!("Sorry, the sender address is invalid: {reason}. (#5.1.7)\n").into_bytes(),
        )
    }

    /// `DSorry, none of the recipient addresses is valid. (#5.1.3)`
    pub fn no_valid_recipient() -> Final {
        Final::fixed(Disposition::Failed, "Sorry, none of the recipient addresses is valid. (#5.1.3)\n")
    }

    /// `ZConnected to IP but connection died. (#4.4.2)`, with `Possible
    /// duplicate! ` before the code once the final dot has been sent.
    pub fn connection_died(ip: IpAddr, possible_duplicate: bool) -> Final {
        let dup = if possible_duplicate { "Possible duplicate! " } else { "" };
        Final::new(
            Disposition::Deferred,
            format!("Connected to {} but connection died. {dup}(#4.4.2)\n", fmt_ip(ip)).into_bytes(),
        )
    }

    /// `DSorry, I couldn't find any host named HOST. (#5.1.2)`; bytes of
    /// the host outside `!`..`~` are shown as `?`.
    pub fn host_not_found(host: &[u8]) -> Final {
        let mut text = b"Sorry, I couldn't find any host named ".to_vec();
        text.extend_from_slice(&outsafe(host));
        text.extend_from_slice(b". (#5.1.2)\n");
        Final::new(Disposition::Failed, text)
    }

    /// `DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)`
    pub fn no_mx() -> Final {
        Final::fixed(Disposition::Failed, "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n")
    }

    /// `DSorry. Although I'm listed as a best-preference MX or A for that
    /// host,\nit isn't in my control/locals file, so I don't treat it as
    /// local. (#5.4.6)`
    pub fn ambiguous_mx() -> Final {
        Final::fixed(
            Disposition::Failed,
            "Sorry. Although I'm listed as a best-preference MX or A for that host,\n\
             it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n",
        )
    }

    /// `DSMTP cannot transfer messages with partial final lines. (#5.6.2)`
    pub fn partial_line() -> Final {
        Final::fixed(Disposition::Failed, "SMTP cannot transfer messages with partial final lines. (#5.6.2)\n")
    }

    /// `ZUnable to read message. (#4.3.0)`
    pub fn unreadable_message() -> Final {
        Final::fixed(Disposition::Deferred, "Unable to read message. (#4.3.0)\n")
    }

    /// `ZUnable to read control files. (#4.3.0)`
    pub fn unreadable_control() -> Final {
        Final::fixed(Disposition::Deferred, "Unable to read control files. (#4.3.0)\n")
    }

    /// `ZUnable to switch to home directory. (#4.3.0)`
    pub fn no_home() -> Final {
        Final::fixed(Disposition::Deferred, "Unable to switch to home directory. (#4.3.0)\n")
    }

    /// `DI (qmail-remote) was invoked improperly. (#5.3.5)`
    pub fn usage() -> Final {
        Final::fixed(Disposition::Failed, "I (qmail-remote) was invoked improperly. (#5.3.5)\n")
    }

    /// `ZSystem resources temporarily unavailable. (#4.3.0)`
    pub fn system_resources() -> Final {
        Final::fixed(Disposition::Deferred, "System resources temporarily unavailable. (#4.3.0)\n")
    }

    /// `Zqmail-remote ended without a result. (#4.3.0)`: what
    /// [`Report::finish`] writes when no final record was set (a bug).
    pub(crate) fn no_result() -> Final {
        Final::fixed(Disposition::Deferred, "qmail-remote ended without a result. (#4.3.0)\n")
    }
}

/// The report of one qmail-remote run, collected in memory.
#[derive(Clone, Debug, Default)]
pub struct Report {
    records: Vec<u8>,
    recipients: usize,
    accepted: usize,
    last: Option<Final>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Report {
        Report::default()
    }

    /// Adds `r` for the next recipient.
    pub fn recipient_accepted(&mut self) {
        if self.push(b'r', b"") {
            self.accepted += 1;
        }
    }

    /// Adds `h` (permanent) or `s` for the next recipient: `IP does not like
    /// recipient.` and the reply.
    pub fn recipient_refused(&mut self, ip: IpAddr, permanent: bool, reply: &RemoteText) {
        let letter = if permanent { b'h' } else { b's' };
        self.push(letter, &about_ip("", ip, " does not like recipient", Some(reply)));
    }

    /// Adds `h` for the next recipient, whose address cannot be sent at
    /// all (it would break the SMTP command): `Sorry, this recipient
    /// address is invalid: REASON. (#5.1.3)`.
    pub fn recipient_invalid(&mut self, reason: &str) {
        let text = sanitize(format!("Sorry, this recipient address is invalid: {reason}. (#5.1.3)").as_bytes());
        self.push(b'h', &text);
    }

    fn push(&mut self, letter: u8, text: &[u8]) -> bool {
        if self.last.is_some() {
            return false;
        }
        self.records.push(letter);
        self.records.extend_from_slice(text);
        self.records.push(0);
        self.recipients += 1;
        true
    }

    /// Recipient records so far.
    pub fn recipients(&self) -> usize {
        self.recipients
    }

    /// Recipients accepted so far (`r` records); when it is 0 after the last
    /// `RCPT TO`, the delivery ends with [`Final::giving_up`].
    pub fn accepted(&self) -> usize {
        self.accepted
    }

    /// Sets the final record. Only the first call counts: it returns true,
    /// later calls return false and change nothing.
    pub fn conclude(&mut self, last: Final) -> bool {
        if self.last.is_some() {
            return false;
        }
        self.last = Some(last);
        true
    }

    /// The final record, if set.
    pub fn outcome(&self) -> Option<&Final> {
        self.last.as_ref()
    }

    /// The complete report: the recipient records, then exactly one final
    /// record (`Final::no_result` if none was set).
    pub fn finish(self) -> Vec<u8> {
        let last = self.last.unwrap_or_else(Final::no_result);
        let mut out = self.records;
        out.push(last.disposition.letter());
        out.extend_from_slice(&last.text);
        out.push(0);
        out
    }
}

/// How qmail-remote ended, as qmail-rspawn sees it.
#[cfg(any(test, feature = "test-support"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RspawnStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by a signal.
    Crashed,
}

/// What qmail-rspawn's `report()` passes on to qmail-send for the output
/// of a qmail-remote that exited 0: the letter (`K`, `Z` or `D`) and the
/// text.
#[cfg(any(test, feature = "test-support"))]
pub fn parse_report(output: &[u8]) -> (u8, Vec<u8>) {
    rspawn_report(RspawnStatus::Exited(0), output)
}

/// What qmail-rspawn's `report()` passes on for `output` and `status`.
///
/// * A crash gives `Zqmail-remote crashed.`, exit 111 `ZUnable to run
///   qmail-remote.`, any other non-zero exit `DUnable to run qmail-remote.`
///   and no output `Zqmail-remote produced no output.`
/// * The disposition is that of the first NUL-terminated record starting with
///   `K`, `Z` or `D` (`D` when there is none), overridden by a first record
///   `s` (to `Z`) or `h` (to `D`).
/// * The text is the first record's, followed by the second record's if
///   that one starts with `K`, `Z` or `D` and the disposition was not made
///   milder by the override.
#[cfg(any(test, feature = "test-support"))]
pub fn rspawn_report(status: RspawnStatus, s: &[u8]) -> (u8, Vec<u8>) {
    let fixed = |letter: u8, text: &str| (letter, text.as_bytes().to_vec());
    match status {
        RspawnStatus::Crashed => return fixed(b'Z', "qmail-remote crashed.\n"),
        RspawnStatus::Exited(0) => {}
        RspawnStatus::Exited(111) => return fixed(b'Z', "Unable to run qmail-remote.\n"),
        RspawnStatus::Exited(_) => return fixed(b'D', "Unable to run qmail-remote.\n"),
    }
    if s.is_empty() {
        return fixed(b'Z', "qmail-remote produced no output.\n");
    }

    let mut result = -1;
    let mut start = 0;
    for (k, &b) in s.iter().enumerate() {
        if b == 0 {
            match s[start] {
                b'K' => {
                    result = 1;
                    break;
                }
                b'Z' => {
                    result = 0;
                    break;
                }
                b'D' => break,
                _ => start = k + 1,
            }
        }
    }
    let orr = match s[0] {
        b's' => 0,
        b'h' => -1,
        _ => result,
    };
    let letter = match orr {
        1 => b'K',
        0 => b'Z',
        _ => b'D',
    };

    let until_nul = |from: usize| -> &[u8] {
        let rest = s.get(from..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    };
    let mut text = Vec::new();
    if let Some(p) = s.iter().skip(1).position(|&b| b == 0).map(|p| p + 1) {
        text.extend_from_slice(&s[1..p]);
        let k = p + 1;
        if result <= orr && k < s.len() && matches!(s[k], b'K' | b'Z' | b'D') {
            text.extend_from_slice(until_nul(k + 1));
        }
    }
    (letter, text)
}

/// A report that does not follow the format [`Report`] writes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("malformed report at byte {offset}: {reason}")]
pub struct ReportFormatError {
    /// Where the offending record starts.
    pub offset: usize,
    /// What is wrong.
    pub reason: &'static str,
}

/// Splits a report into its records, checking the format strictly: `r`
/// (without text), `h` and `s` records, then exactly one `K`, `Z` or `D`
/// record, each ending with a NUL, and nothing after. For tests of
/// qmail-remote's output.
pub fn parse_records(output: &[u8]) -> Result<Vec<(u8, &[u8])>, ReportFormatError> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < output.len() {
        let err = |reason| ReportFormatError { offset, reason };
        if records.last().is_some_and(|(l, _): &(u8, &[u8])| matches!(l, b'K' | b'Z' | b'D')) {
            return Err(err("data after the final record"));
        }
        let rest = &output[offset..];
        let end = rest.iter().position(|&b| b == 0).ok_or_else(|| err("record without its NUL"))?;
        let (letter, text) = match rest[..end].split_first() {
            Some((&l, t)) => (l, t),
            None => return Err(err("empty record")),
        };
        match letter {
            b'r' if !text.is_empty() => return Err(err("text after r")),
            b'r' | b'h' | b's' | b'K' | b'Z' | b'D' => {}
            _ => return Err(err("unknown record letter")),
        }
        records.push((letter, text));
        offset += end + 1;
    }
    match records.last() {
        Some((b'K' | b'Z' | b'D', _)) => Ok(records),
        _ => Err(ReportFormatError { offset, reason: "no final record" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn reply(s: &str) -> RemoteText {
        RemoteText::from_raw(s.as_bytes())
    }

    fn finished(report: Report) -> String {
        String::from_utf8(report.finish()).expect("utf-8")
    }

    #[test]
    fn stock_success_example() {
        let lo = ip("127.0.0.1");
        let mut r = Report::new();
        r.recipient_accepted();
        assert!(r.conclude(Final::accepted(lo, &reply("250 2.0.0 queued\r\n"))));
        assert_eq!(finished(r), "r\0K127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 queued\n\0");
    }

    #[test]
    fn stock_rcpt_rejected_example() {
        let lo = ip("127.0.0.1");
        let mut r = Report::new();
        r.recipient_refused(lo, true, &reply("550 5.1.1 no such user\r\n"));
        assert_eq!(r.accepted(), 0);
        r.conclude(Final::giving_up(lo, true));
        let out = r.finish();
        assert_eq!(
            out,
            b"h127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\0\
              DGiving up on 127.0.0.1.\n\0"
        );
        assert_eq!(
            parse_report(&out),
            (
                b'D',
                b"127.0.0.1 does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\
                  Giving up on 127.0.0.1.\n"
                    .to_vec()
            )
        );
    }

    #[test]
    fn recipient_records() {
        let a = ip("2001:db8::1");
        let mut r = Report::new();
        r.recipient_accepted();
        r.recipient_refused(a, false, &reply("451 later\r\n"));
        r.recipient_refused(a, true, &reply("550-no\r\n550 really\r\n"));
        assert_eq!((r.recipients(), r.accepted()), (3, 1));
        r.conclude(Final::accepted(a, &reply("250 ok\r\n")));
        // Records after the final one are ignored.
        r.recipient_accepted();
        assert_eq!(r.recipients(), 3);
        assert_eq!(
            finished(r),
            "r\0\
             s2001:db8::1 does not like recipient.\nRemote host said: 451 later\n\0\
             h2001:db8::1 does not like recipient.\nRemote host said: 550-no\n550 really\n\0\
             K2001:db8::1 accepted message.\nRemote host said: 250 ok\n\0"
        );
    }

    #[test]
    fn fixed_messages() {
        let a = ip("::ffff:192.0.2.9");
        let cases: Vec<(Final, &str)> = vec![
            (Final::connection_died(a, false), "ZConnected to 192.0.2.9 but connection died. (#4.4.2)\n"),
            (
                Final::connection_died(a, true),
                "ZConnected to 192.0.2.9 but connection died. Possible duplicate! (#4.4.2)\n",
            ),
            (Final::giving_up(a, true), "DGiving up on 192.0.2.9.\n"),
            (Final::giving_up(a, false), "ZGiving up on 192.0.2.9.\n"),
            (
                Final::host_not_found(b"ex ample.\x01com\xc3\xa9"),
                "DSorry, I couldn't find any host named ex?ample.?com??. (#5.1.2)\n",
            ),
            (Final::host_not_found(b""), "DSorry, I couldn't find any host named . (#5.1.2)\n"),
            (Final::no_mx(), "DSorry, I couldn't find a mail exchanger or IP address. (#5.4.4)\n"),
            (
                Final::ambiguous_mx(),
                "DSorry. Although I'm listed as a best-preference MX or A for that host,\n\
                 it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)\n",
            ),
            (Final::partial_line(), "DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"),
            (Final::unreadable_message(), "ZUnable to read message. (#4.3.0)\n"),
            (Final::unreadable_control(), "ZUnable to read control files. (#4.3.0)\n"),
            (Final::no_home(), "ZUnable to switch to home directory. (#4.3.0)\n"),
            (Final::usage(), "DI (qmail-remote) was invoked improperly. (#5.3.5)\n"),
            (Final::system_resources(), "ZSystem resources temporarily unavailable. (#4.3.0)\n"),
            (Final::custom(Disposition::Deferred, b"TLS\0failed"), "ZTLS?failed\n"),
            (
                Final::sender_rejected(a, true, &reply("553 no\r\n")),
                "DConnected to 192.0.2.9 but sender was rejected.\nRemote host said: 553 no\n",
            ),
            (
                Final::data_failed(a, false, &reply("451 busy\r\n")),
                "Z192.0.2.9 failed on DATA command.\nRemote host said: 451 busy\n",
            ),
            (
                Final::message_failed(a, true, &reply("554 spam\r\n")),
                "D192.0.2.9 failed after I sent the message.\nRemote host said: 554 spam\n",
            ),
            (Final::greeting_failed(a, &RemoteText::default()), "ZConnected to 192.0.2.9 but greeting failed.\n"),
        ];
        for (f, want) in cases {
            let mut r = Report::new();
            r.conclude(f);
            let out = r.finish();
            let mut expect = want.as_bytes().to_vec();
            expect.push(0);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expect));
        }
    }

    #[test]
    fn remote_text_sanitising() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"250 ok\r\n", b"250 ok\n"),
            (b"250 ok", b"250 ok\n"),
            (b"250-a\r\n250 b\r\n", b"250-a\n250 b\n"),
            (b"250 a\rb\0c\r\n", b"250 ab?c\n"),
        ];
        for (raw, want) in cases {
            assert_eq!(RemoteText::from_raw(raw).as_bytes(), *want, "{raw:?}");
        }
        assert_eq!(RemoteText::from_lines(["250-first", "250 last"]).as_bytes(), b"250-first\n250 last\n");
        let long = vec![b'x'; 6000];
        let t = RemoteText::from_raw(&long);
        assert_eq!(t.as_bytes().len(), REPLY_TEXT_MAX + 1);
        assert!(t.as_bytes().ends_with(b"x\n"));
        // CRs do not count towards the limit.
        let crs: Vec<u8> = std::iter::repeat_n(&b"a\r"[..], 5000).flatten().copied().collect();
        assert_eq!(RemoteText::from_raw(&crs).as_bytes().len(), 5001);
    }

    #[test]
    fn exactly_one_final_record() {
        // No final record set: a deferral, never a bare recipient list.
        let mut r = Report::new();
        r.recipient_accepted();
        let out = r.finish();
        assert_eq!(out, b"r\0Zqmail-remote ended without a result. (#4.3.0)\n\0");
        assert_eq!(parse_report(&out).0, b'Z');

        // Only the first final record counts.
        let mut r = Report::new();
        assert!(r.conclude(Final::connection_died(ip("192.0.2.1"), false)));
        assert!(!r.conclude(Final::accepted(ip("192.0.2.1"), &reply("250 ok"))));
        assert_eq!(r.outcome().map(Final::disposition), Some(Disposition::Deferred));
        let out = r.finish();
        assert_eq!(parse_records(&out).expect("well formed").len(), 1);
    }

    #[test]
    fn written_reports_read_back() {
        // Every report the writer produces is well formed, and qmail-rspawn
        // reads the disposition the writer meant (with one recipient, as
        // qmail-rspawn always passes).
        let a = ip("192.0.2.1");
        let ok = reply("250 ok\r\n");
        let scenarios: Vec<(Option<u16>, Final, u8)> = vec![
            (Some(250), Final::accepted(a, &ok), b'K'),
            (Some(250), Final::message_failed(a, false, &reply("451 x")), b'Z'),
            (Some(250), Final::message_failed(a, true, &reply("554 x")), b'D'),
            (Some(250), Final::connection_died(a, true), b'Z'),
            (Some(451), Final::giving_up(a, false), b'Z'),
            (Some(550), Final::giving_up(a, true), b'D'),
            (None, Final::greeting_failed(a, &reply("554 go away")), b'Z'),
            (None, Final::sender_rejected(a, true, &reply("553 no")), b'D'),
            (None, Final::system_resources(), b'Z'),
            (None, Final::host_not_found(b"nx.example"), b'D'),
        ];
        for (rcpt, last, want) in scenarios {
            let mut r = Report::new();
            match rcpt {
                Some(code) if code >= 500 => r.recipient_refused(a, true, &reply("xxx reply")),
                Some(code) if code >= 400 => r.recipient_refused(a, false, &reply("xxx reply")),
                Some(_) => r.recipient_accepted(),
                None => {}
            }
            let text = last.text().to_vec();
            r.conclude(last);
            let out = r.finish();
            let records = parse_records(&out).expect("well formed");
            assert_eq!(records.len(), 1 + usize::from(rcpt.is_some()));
            let (letter, seen) = parse_report(&out);
            assert_eq!(letter, want, "{rcpt:?} {:?}", String::from_utf8_lossy(&text));
            assert!(seen.ends_with(&text), "{:?}", String::from_utf8_lossy(&seen));
        }
    }

    #[test]
    fn rspawn_reading() {
        let cases: &[(RspawnStatus, &[u8], u8, &[u8])] = &[
            (RspawnStatus::Crashed, b"r\0K...\0", b'Z', b"qmail-remote crashed.\n"),
            (RspawnStatus::Exited(111), b"", b'Z', b"Unable to run qmail-remote.\n"),
            (RspawnStatus::Exited(100), b"", b'D', b"Unable to run qmail-remote.\n"),
            (RspawnStatus::Exited(1), b"r\0Kok\n\0", b'D', b"Unable to run qmail-remote.\n"),
            (RspawnStatus::Exited(0), b"", b'Z', b"qmail-remote produced no output.\n"),
            // A recipient record and nothing else: a bounce with no text.
            (RspawnStatus::Exited(0), b"r\0", b'D', b""),
            (RspawnStatus::Exited(0), b"r\0Kok\n\0", b'K', b"ok\n"),
            (RspawnStatus::Exited(0), b"Kok\n\0", b'K', b"ok\n"),
            (RspawnStatus::Exited(0), b"Zlater\n\0", b'Z', b"later\n"),
            // s then D: deferred, both texts.
            (RspawnStatus::Exited(0), b"sno\n\0DGiving up\n\0", b'Z', b"no\nGiving up\n"),
            (RspawnStatus::Exited(0), b"hno\n\0DGiving up\n\0", b'D', b"no\nGiving up\n"),
            // h then K (a second recipient was accepted, but rspawn only
            // sends one): D, the K text is not appended.
            (RspawnStatus::Exited(0), b"hno\n\0r\0Kok\n\0", b'D', b"no\n"),
            // s then Z: the Z text follows.
            (RspawnStatus::Exited(0), b"sno\n\0Zdied\n\0", b'Z', b"no\ndied\n"),
            // s then K: Z (milder disposition is not allowed to hide the s).
            (RspawnStatus::Exited(0), b"sno\n\0Kok\n\0", b'Z', b"no\n"),
            // Without the final NUL the last record is not seen as final...
            (RspawnStatus::Exited(0), b"Kok", b'D', b""),
            // ...but its text is still appended after a first record.
            (RspawnStatus::Exited(0), b"r\0Kok", b'D', b"ok"),
            // An unknown letter counts as D (skarnet's \x01).
            (RspawnStatus::Exited(0), b"\x01failed\n\0", b'D', b"failed\n"),
        ];
        for (status, out, letter, text) in cases {
            let got = rspawn_report(*status, out);
            assert_eq!(
                (got.0 as char, String::from_utf8_lossy(&got.1)),
                (*letter as char, String::from_utf8_lossy(text)),
                "{status:?} {out:?}"
            );
        }
    }

    #[test]
    fn strict_record_split() {
        assert_eq!(
            parse_records(b"r\0hx\n\0Kok\n\0").expect("valid"),
            vec![(b'r', &b""[..]), (b'h', &b"x\n"[..]), (b'K', &b"ok\n"[..])]
        );
        let bad: &[(&[u8], &str)] = &[
            (b"", "no final record"),
            (b"r\0", "no final record"),
            (b"Kok", "record without its NUL"),
            (b"Kok\0Zx\0", "data after the final record"),
            (b"Kok\0r\0", "data after the final record"),
            (b"rx\0Kok\0", "text after r"),
            (b"\0Kok\0", "empty record"),
            (b"xhi\0Kok\0", "unknown record letter"),
        ];
        for (out, reason) in bad {
            assert_eq!(parse_records(out).expect_err("invalid").reason, *reason, "{out:?}");
        }
    }
}
