//! qmail-remote-io: the SMTP dialogue of one delivery attempt, on a socket
//! that is already connected (by qmail-remote, or by a UCSPI client such as
//! `tcpclient`), with STARTTLS.
//!
//! The message is on fd 0, the socket on fds 6 and 7 (or `-6`/`-7`), the
//! report records go to fd 1. The exit code tells qmail-remote whether the
//! records are final or whether it should try the next address; see
//! `chainmail_qmail::remote_io` for the contract and `doc/qmail-remote-io.md`.
#![forbid(unsafe_code)]

mod conn;

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chainmail_qmail::address::{encode_recipient, encode_sender};
use chainmail_qmail::remote_io;
use chainmail_qmail::report::fmt_ip;
use chainmail_qmail::{Disposition, Final, RemoteText, Report};
use chainmail_smtp::client::{Attempt, AttemptEnd, Client, MessageResult, RcptResult, Skip, Status, TlsWish};
use chainmail_smtp::data::{DataEncoder, MessageFacts};
use chainmail_smtp::reply::Reply;
use chainmail_sys::{cli, fd};
use chainmail_tls::TlsPolicy;
use chainmail_tls::client::server_name;

use crate::conn::{Conn, ConnError};

/// The command line.
#[derive(Debug)]
struct Options {
    timeout: Duration,
    handshake: Duration,
    helo: String,
    policy: TlsPolicy,
    name: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
    size: Option<u64>,
    eight_bit: bool,
    fdr: i32,
    fdw: i32,
    ip: std::net::IpAddr,
    sender: OsString,
    recipients: Vec<OsString>,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let bad = |e: lexopt::Error| e.to_string();
    let mut timeout = Duration::from_secs(1200);
    let mut handshake = Duration::from_secs(60);
    let mut helo = String::from("localhost");
    let mut policy = TlsPolicy::Off;
    let (mut name, mut cert, mut key, mut size) = (None, None, None, None);
    let mut eight_bit = false;
    let (mut fdr, mut fdw) = (6, 7);
    let mut rest: Vec<OsString> = Vec::new();
    // At least a second; absurd values are refused (a deadline must not
    // overflow).
    let secs = |v: OsString, what: &str| -> Result<Duration, String> {
        Ok(Duration::from_secs(cli::seconds(&v, what)?.max(1)))
    };
    while let Some(arg) = p.next().map_err(bad)? {
        match arg {
            Short('t') => timeout = secs(p.value().map_err(bad)?, "timeout")?,
            Short('K') => handshake = secs(p.value().map_err(bad)?, "handshake timeout")?,
            Short('h') => helo = p.value().map_err(bad)?.string().map_err(bad)?,
            Short('s') => policy = TlsPolicy::parse(&p.value().map_err(bad)?).map_err(|e| e.to_string())?,
            Short('n') => name = Some(p.value().map_err(bad)?.string().map_err(bad)?),
            Short('c') => cert = Some(PathBuf::from(p.value().map_err(bad)?)),
            Short('k') => key = Some(PathBuf::from(p.value().map_err(bad)?)),
            Short('z') => size = Some(p.value().map_err(bad)?.parse().map_err(bad)?),
            Short('8') => eight_bit = true,
            Short('6') => fdr = p.value().map_err(bad)?.parse().map_err(bad)?,
            Short('7') => fdw = p.value().map_err(bad)?.parse().map_err(bad)?,
            Value(v) => {
                rest.push(v);
                rest.extend(p.raw_args().map_err(bad)?);
            }
            _ => return Err(bad(arg.unexpected())),
        }
    }
    if rest.len() < 3 {
        return Err("need ip, sender and at least one recipient".into());
    }
    let ip = rest[0].to_str().and_then(|s| s.parse().ok()).ok_or("the first argument must be an IP address")?;
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (Some(c), None) => Some((c.clone(), c)),
        (None, Some(_)) => return Err("-k needs -c".into()),
        (None, None) => None,
    };
    let sender = rest[1].clone();
    Ok(Options {
        timeout,
        handshake,
        helo,
        policy,
        name,
        identity,
        size,
        eight_bit,
        fdr,
        fdw,
        ip,
        sender,
        recipients: rest[2..].to_vec(),
    })
}

/// A reply as it is quoted in a report: every line with its code.
fn remote_text(r: &Reply) -> RemoteText {
    let n = r.lines.len();
    RemoteText::from_lines(r.lines.iter().enumerate().map(|(i, l)| {
        let mut line = format!("{}{}", r.code, if i + 1 < n { '-' } else { ' ' }).into_bytes();
        line.extend_from_slice(l);
        line
    }))
}

/// The report and exit code of a finished attempt.
struct Ending {
    records: Vec<u8>,
    code: i32,
}

fn only(final_record: Final, code: i32) -> Ending {
    let mut r = Report::new();
    r.conclude(final_record);
    Ending { records: r.finish(), code }
}

fn temporary(text: String) -> Final {
    Final::custom(Disposition::Deferred, text.as_bytes())
}

/// Turns what became of the message in a committed attempt into the final record. Whether
/// it is a `D` or a `Z` comes from `MessageResult::is_permanent`, nowhere else.
fn final_record(ip: std::net::IpAddr, message: &MessageResult) -> Final {
    let permanent = message.is_permanent();
    let at = fmt_ip(ip);
    match message {
        MessageResult::Delivered(r) => Final::accepted(ip, &remote_text(r)),
        MessageResult::GreetingFailed(r) => Final::greeting_failed(ip, &remote_text(r)),
        MessageResult::HeloRejected(r) => Final::helo_rejected(ip, &remote_text(r)),
        MessageResult::SenderRejected(r) => Final::sender_rejected(ip, permanent, &remote_text(r)),
        MessageResult::NoRecipients { .. } => Final::giving_up(ip, permanent),
        MessageResult::DataRejected(r) => Final::data_failed(ip, permanent, &remote_text(r)),
        MessageResult::MessageRejected(r) => Final::message_failed(ip, permanent, &remote_text(r)),
        MessageResult::TooBig { size, limit } => Final::custom(
            Disposition::failure(permanent),
            format!("Sorry, the message is {size} bytes and {at} takes at most {limit}. (#5.3.4)\n").as_bytes(),
        ),
        MessageResult::NeedsSmtputf8 => Final::custom(
            Disposition::failure(permanent),
            format!("Sorry, an address of this message needs SMTPUTF8, which {at} does not offer. (#5.6.7)\n")
                .as_bytes(),
        ),
        MessageResult::ConnectionDied { after_dot, .. } => Final::connection_died(ip, *after_dot),
        MessageResult::Protocol { detail, after_dot } => {
            let dup = if *after_dot { "Possible duplicate! " } else { "" };
            Final::custom(
                Disposition::failure(permanent),
                format!("Connected to {at} but it broke the SMTP protocol: {detail}. {dup}(#4.4.2)\n").as_bytes(),
            )
        }
    }
}

/// Why a server was left, for qmail-remote's final message.
fn skip_text(ip: std::net::IpAddr, s: &Skip) -> String {
    let at = fmt_ip(ip);
    match s {
        Skip::Greeting(r) => {
            format!("Connected to {at} but greeting failed.\nRemote host said: {}", text_of(r))
        }
        Skip::Ehlo(r) => format!("Connected to {at} but my name was rejected.\nRemote host said: {}", text_of(r)),
        Skip::Died { during, timeout: true } => format!("Connected to {at} but it timed out during the {during}."),
        Skip::Died { during, timeout: false } => format!("Connected to {at} but connection died during the {during}."),
        Skip::Malformed(e) => format!("Connected to {at} but it does not speak SMTP: {e}."),
        Skip::Unexpected(r) => format!(
            "Connected to {at} but it broke the SMTP protocol: a {} reply came before the command it answers.",
            r.code
        ),
    }
}

fn text_of(r: &Reply) -> String {
    String::from_utf8_lossy(remote_text(r).as_bytes()).trim_end().to_owned()
}

/// The attempt's records, recipients in argument order. `valid[i]` is the
/// index among the recipients sent to the server, or the reason the
/// address could not be sent.
fn records(ip: std::net::IpAddr, valid: &[Result<usize, String>], results: &[RcptResult], last: Final) -> Vec<u8> {
    let mut r = Report::new();
    for v in valid {
        match v {
            Err(why) => r.recipient_invalid(why),
            Ok(i) => match results.get(*i) {
                Some(RcptResult::Accepted) => r.recipient_accepted(),
                Some(RcptResult::Refused(reply)) => r.recipient_refused(ip, true, &remote_text(reply)),
                Some(RcptResult::Deferred(reply)) => r.recipient_refused(ip, false, &remote_text(reply)),
                // The dialogue ended before this RCPT: no record, and none
                // for the recipients after it (stock qmail does the same).
                Some(RcptResult::NotTried) | None => break,
            },
        }
    }
    r.conclude(last);
    r.finish()
}

/// Streams the encoded message and its terminator.
fn send_message(conn: &mut Conn) -> Result<(), Result<ConnError, Final>> {
    let stdin = std::io::stdin();
    chainmail_qmail::message::rewind(&stdin).map_err(Err)?;
    let mut enc = DataEncoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(70 * 1024);
    loop {
        let n = fd::read(&stdin.as_fd(), &mut buf).map_err(|_| Err(Final::unreadable_message()))?;
        if n == 0 {
            break;
        }
        enc.encode(&buf[..n], &mut out);
        if out.len() >= 64 * 1024 {
            conn.write_all(&out).map_err(Ok)?;
            out.clear();
        }
    }
    // The last chunk and the terminator leave together.
    enc.finish(&mut out).map_err(|_| Err(Final::partial_line()))?;
    conn.write_all(&out).map_err(Ok)
}

/// Tells the dialogue how the connection failed.
fn lost(client: &mut Client, e: ConnError, tls_error: &mut Option<String>) {
    match e {
        ConnError::Timeout => client.timed_out(),
        ConnError::Closed(_) => client.server_closed(),
        ConnError::Tls(e) => {
            *tls_error = Some(e.to_string());
            client.server_closed();
        }
    }
}

fn adopt_socket(fdr: i32, fdw: i32) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let r = fd::adopt(fdr)?;
    let w = if fdw == fdr { r.try_clone()? } else { fd::adopt(fdw)? };
    Ok((r, w))
}

fn run(o: &Options) -> Ending {
    let ip = o.ip;
    // Addresses: the sender must be valid; an invalid recipient is refused
    // here, in its place among the others.
    let sender = match encode_sender(o.sender.as_bytes()) {
        Ok(s) => s,
        Err(e) => return only(Final::invalid_sender(&e.to_string()), remote_io::EXIT_FINAL),
    };
    let mut valid: Vec<Result<usize, String>> = Vec::new();
    let mut paths = Vec::new();
    for r in &o.recipients {
        match encode_recipient(r.as_bytes()) {
            Ok(p) => {
                valid.push(Ok(paths.len()));
                paths.push(p);
            }
            Err(e) => valid.push(Err(e.to_string())),
        }
    }
    if paths.is_empty() {
        return Ending { records: records(ip, &valid, &[], Final::no_valid_recipient()), code: remote_io::EXIT_FINAL };
    }
    let facts = match o.size {
        Some(size) => MessageFacts { encoded_size: size, eight_bit: o.eight_bit, partial_final_line: false },
        None => match chainmail_qmail::message::facts(std::io::stdin().as_fd()) {
            Ok(f) => f,
            Err(f) => return only(f, remote_io::EXIT_FINAL),
        },
    };
    let (rfd, wfd) = match adopt_socket(o.fdr, o.fdw) {
        Ok(p) => p,
        Err(e) => {
            return only(
                temporary(format!("Unable to use the connection to {}: {e}. (#4.3.0)\n", fmt_ip(ip))),
                remote_io::EXIT_SYSTEM,
            );
        }
    };
    let mut conn = match Conn::new(rfd, wfd, o.timeout) {
        Ok(c) => c,
        Err(e) => {
            return only(
                temporary(format!("Unable to use the connection to {}: {e}. (#4.3.0)\n", fmt_ip(ip))),
                remote_io::EXIT_SYSTEM,
            );
        }
    };
    let needs_smtputf8 = sender.needs_smtputf8() || paths.iter().any(|p| p.needs_smtputf8());
    let attempt = Attempt {
        helo: o.helo.clone(),
        sender: sender.as_bytes().to_vec(),
        recipients: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
        facts,
        needs_smtputf8,
        tls: match &o.policy {
            TlsPolicy::Off => TlsWish::Off,
            TlsPolicy::Opportunistic => TlsWish::Try,
            _ => TlsWish::Require,
        },
    };
    let mut client = Client::new(attempt);
    let mut tls_error: Option<String> = None;
    let outcome = loop {
        match client.status() {
            Status::Running => {
                if !client.output().is_empty() {
                    let out = client.output().to_vec();
                    match conn.write_all(&out) {
                        Ok(()) => client.consume_output(out.len()),
                        Err(e) => lost(&mut client, e, &mut tls_error),
                    }
                } else if client.wants_input() {
                    match conn.read() {
                        Ok(data) => client.server_data(&data),
                        Err(e) => lost(&mut client, e, &mut tls_error),
                    }
                }
            }
            Status::StartTls => {
                let identity = o.identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
                let config = match o.policy.client_config(identity) {
                    Ok(Some(c)) => c,
                    // The client asks for STARTTLS only under a policy
                    // that tries it; were it not so, TLS would just fail.
                    Ok(None) => {
                        client.tls_done(false);
                        continue;
                    }
                    Err(e) => {
                        let f = temporary(format!("Unable to set up TLS: {e}. (#4.3.0)\n"));
                        conn.close(b"QUIT\r\n", Duration::from_secs(5));
                        return only(f, remote_io::EXIT_FINAL);
                    }
                };
                match conn.start_tls(Arc::clone(&config), server_name(o.name.as_deref(), ip), o.handshake) {
                    Ok(()) => client.tls_done(true),
                    Err(e) => {
                        tls_error = Some(e.to_string());
                        client.tls_done(false);
                    }
                }
            }
            // The commands still queued go out before the first byte of
            // the message.
            Status::SendBody if !client.output().is_empty() => {
                let out = client.output().to_vec();
                match conn.write_all(&out) {
                    Ok(()) => client.consume_output(out.len()),
                    Err(e) => lost(&mut client, e, &mut tls_error),
                }
            }
            Status::SendBody => match send_message(&mut conn) {
                Ok(()) => client.body_sent(),
                Err(Ok(e)) => lost(&mut client, e, &mut tls_error),
                // The message cannot be read (or changed under us): stop
                // without the final dot, so that nothing is delivered.
                Err(Err(f)) => return only(f, remote_io::EXIT_FINAL),
            },
            Status::Done(outcome) => break outcome,
        }
    };
    let last = client.output().to_vec();
    let tls = conn.tls_summary();
    conn.close(&last, Duration::from_secs(5));
    let at = fmt_ip(ip);
    match outcome {
        AttemptEnd::Skip(s) => only(temporary(skip_text(ip, &s)), remote_io::EXIT_NEXT),
        AttemptEnd::NoStartTls => {
            only(temporary(format!("{at} does not offer STARTTLS.")), remote_io::EXIT_NO_STARTTLS)
        }
        AttemptEnd::TlsFailed(Some(r)) => only(
            temporary(format!("{at} refused STARTTLS.\nRemote host said: {}", text_of(&r))),
            remote_io::EXIT_TLS_FAILED,
        ),
        AttemptEnd::TlsFailed(None) => only(
            temporary(format!("TLS with {at} failed: {}.", tls_error.unwrap_or_else(|| "connection lost".into()))),
            remote_io::EXIT_TLS_FAILED,
        ),
        AttemptEnd::Final { recipients, message } => {
            let mut last = final_record(ip, &message);
            if let (true, Some(t)) = (message.is_delivered(), tls) {
                // Say how it was protected; qmail-send logs it.
                let mut text = last.text().to_vec();
                text.extend_from_slice(format!("TLS: {t}\n").as_bytes());
                last = Final::custom(Disposition::Delivered, &text);
            }
            Ending { records: records(ip, &valid, &recipients, last), code: remote_io::EXIT_FINAL }
        }
    }
}

fn main() -> ExitCode {
    // Nothing may reach stderr (qmail-remote discards it, but run by hand
    // under qmail-rspawn it would join the report): a panic aborts quietly.
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let ending = match parse_args(args) {
        Ok(o) => run(&o),
        Err(e) => {
            only(temporary(format!("qmail-remote-io was invoked improperly: {e}. (#4.3.5)\n")), remote_io::EXIT_USAGE)
        }
    };
    let _ = fd::write_all(&std::io::stdout().as_fd(), &ending.records);
    ExitCode::from(u8::try_from(ending.code).unwrap_or(111))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(|s| OsString::from_vec(s.as_bytes().to_vec())).collect()
    }

    #[test]
    fn options() {
        let o = parse_args(args(&[
            "-s",
            "verify:builtin",
            "-n",
            "mx.test",
            "-6",
            "3",
            "-7",
            "4",
            "--",
            "192.0.2.1",
            "a@b",
            "c@d",
            "e@f",
        ]))
        .expect("ok");
        assert_eq!(
            (&o.policy, o.fdr, o.fdw),
            (&TlsPolicy::RequireVerified(chainmail_tls::TrustAnchors::BuiltIn), 3, 4)
        );
        assert_eq!(o.recipients.len(), 2);
        assert!(parse_args(args(&["-s", "verify", "192.0.2.1", "a@b", "c@d"])).is_err());
        assert!(parse_args(args(&["192.0.2.1", "a@b"])).is_err());
        assert!(parse_args(args(&["mx.test", "a@b", "c@d"])).is_err());
        // Absurd timeouts are usage errors, not overflowing deadlines.
        for opt in ["-t", "-K"] {
            let e = parse_args(args(&[opt, "18446744073709551615", "192.0.2.1", "a@b", "c@d"])).expect_err(opt);
            assert!(e.contains("timeout"), "{e}");
        }
        assert_eq!(
            parse_args(args(&["-t", "0", "192.0.2.1", "a@b", "c@d"])).expect("0").timeout,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn reply_quoting_keeps_continuation_marks() {
        let r = Reply { code: 550, lines: vec![b"5.1.1 first".to_vec(), b"5.1.1 second".to_vec()] };
        assert_eq!(remote_text(&r).as_bytes(), b"550-5.1.1 first\n550 5.1.1 second\n");
    }

    #[test]
    fn records_follow_argument_order() {
        let ip = "192.0.2.1".parse().expect("ip");
        let valid = vec![Ok(0), Err("bad".to_owned()), Ok(1)];
        let results =
            vec![RcptResult::Accepted, RcptResult::Deferred(Reply { code: 451, lines: vec![b"later".to_vec()] })];
        let out = records(ip, &valid, &results, Final::accepted(ip, &RemoteText::from_raw(b"250 ok")));
        let parsed = chainmail_qmail::report::parse_records(&out).expect("well formed");
        let letters: Vec<u8> = parsed.iter().map(|(l, _)| *l).collect();
        assert_eq!(letters, b"rhsK");
        // Stops at the first recipient that was never tried.
        let out = records(
            ip,
            &[Ok(0), Ok(1)],
            &[RcptResult::NotTried, RcptResult::NotTried],
            Final::connection_died(ip, false),
        );
        assert_eq!(chainmail_qmail::report::parse_records(&out).expect("ok").len(), 1);
    }

    #[test]
    fn every_message_result_has_the_letter_its_classification_says() {
        let ip = "192.0.2.1".parse().expect("ip");
        let r = |c| Reply { code: c, lines: vec![b"x".to_vec()] };
        let messages = [
            MessageResult::Delivered(r(250)),
            MessageResult::GreetingFailed(r(554)),
            MessageResult::HeloRejected(r(550)),
            MessageResult::SenderRejected(r(550)),
            MessageResult::SenderRejected(r(451)),
            MessageResult::NoRecipients { any_temporary: true },
            MessageResult::NoRecipients { any_temporary: false },
            MessageResult::DataRejected(r(554)),
            MessageResult::DataRejected(r(250)),
            MessageResult::MessageRejected(r(552)),
            MessageResult::MessageRejected(r(451)),
            MessageResult::TooBig { size: 10, limit: 5 },
            MessageResult::NeedsSmtputf8,
            MessageResult::ConnectionDied { after_dot: true, timeout: false },
            MessageResult::Protocol { detail: "x".into(), after_dot: true },
        ];
        for v in messages {
            let f = final_record(ip, &v);
            let want = if v.is_delivered() {
                b'K'
            } else if v.is_permanent() {
                b'D'
            } else {
                b'Z'
            };
            assert_eq!(f.disposition().letter(), want, "{v:?}");
        }
    }
}
