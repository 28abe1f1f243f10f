//! One client connection: read the request (5 s idle between reads, the
//! session at most an hour), ask the handler, carry out its action, reply,
//! log one line.
//!
//! Fixes over the original: bad framing, an oversize message and bytes
//! after the request get a `D` reply (the rest of the input read and
//! dropped, bounded) instead of a silent close; a client that half-closes
//! after its request still gets its reply (nothing is read after the
//! request, so its EOF changes nothing).

use std::rc::Rc;
use std::time::Duration;

use chainmail_qmqp::request::{Limits, MAX_RECIPIENTS, Rejection, Request, RequestParser, Status};
use chainmail_qmqp::{AddressCheck, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::relay::{self, Outgoing};
use crate::script::{Action, Mail, Peer, Script};

/// The most time between two reads of the request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest session.
pub const SESSION_LIMIT: Duration = Duration::from_secs(3600);
/// The reply must be written within this.
const REPLY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a refused request, at most this much more input is read and
/// dropped (so that a client still writing sees the reply, not a reset).
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// The read buffer of a session, and what it grows to for a large message.
const SMALL_BUFFER: usize = 4096;
const LARGE_BUFFER: usize = 65536;

/// What a listener gives each of its sessions.
#[derive(Debug)]
pub struct Listener {
    /// The handler's registry key.
    pub handler: Rc<mlua::RegistryKey>,
    /// The request limits.
    pub limits: Limits,
}

impl Listener {
    /// The limits of a listener with `max_size` under `check`.
    pub fn new(handler: Rc<mlua::RegistryKey>, max_size: usize, check: AddressCheck) -> Listener {
        Listener {
            handler,
            limits: Limits { max_message: max_size, max_recipients: MAX_RECIPIENTS, address_check: check },
        }
    }
}

/// What the daemon shares with every session.
#[derive(Debug)]
pub struct Shared {
    /// The Lua state.
    pub script: Script,
    /// The cgroup2 mount, found once.
    pub cgroup_mount: Option<std::path::PathBuf>,
}

/// How reading the request ended.
enum Read {
    Request(Request),
    Refused(Rejection),
    /// EOF, a read error or a timeout before the request was complete.
    Gone(&'static str),
}

async fn read_request(r: &mut (impl AsyncRead + Unpin), limits: Limits, deadline: Instant) -> Read {
    let mut parser = RequestParser::new(limits);
    // Small for idle clients and small messages (a thousand idle
    // connections must not cost 64 KiB each); larger once a client has
    // sent that much, for the copies of a large message.
    let mut buf = vec![0u8; SMALL_BUFFER];
    let mut total = 0usize;
    loop {
        let limit = (Instant::now() + IDLE_TIMEOUT).min(deadline);
        let n = match timeout_at(limit, r.read(&mut buf)).await {
            Err(_) => return Read::Gone("timeout"),
            Ok(Err(_)) => return Read::Gone("read error"),
            Ok(Ok(0)) => return Read::Gone("client closed before the end of the request"),
            Ok(Ok(n)) => n,
        };
        match parser.feed(&buf[..n]) {
            (_, Status::NeedMore) => {}
            (used, Status::Complete(request)) if used == n => return Read::Request(request),
            (_, Status::Complete(_)) => return Read::Refused(Rejection::Malformed),
            (_, Status::Rejected(why)) => return Read::Refused(why),
        }
        total += n;
        if buf.len() < LARGE_BUFFER && total >= LARGE_BUFFER {
            buf.resize(LARGE_BUFFER, 0);
        }
    }
}

/// Reads and drops input until EOF, a pause of [`IDLE_TIMEOUT`], the
/// deadline or [`DRAIN_LIMIT`] bytes.
async fn drain(r: &mut (impl AsyncRead + Unpin), deadline: Instant) {
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    while total < DRAIN_LIMIT {
        let limit = (Instant::now() + IDLE_TIMEOUT).min(deadline);
        match timeout_at(limit, r.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n as u64,
            _ => return,
        }
    }
}

/// The line end of `message`: CRLF if its first line ends so, else LF.
fn line_end(message: &[u8]) -> &'static [u8] {
    match message.iter().position(|&b| b == b'\n') {
        Some(i) if i > 0 && message[i - 1] == b'\r' => b"\r\n",
        _ => b"\n",
    }
}

/// The inserted headers (the last inserted first), then qrelay's
/// Received line, with the message's own line ends.
pub fn prefix(mail: &Mail, message: &[u8]) -> Vec<u8> {
    let eol = line_end(message);
    let mut out = Vec::new();
    for (name, value) in mail.headers.iter().rev() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(b"Received: from ");
    let from = match (&mail.peer.ip, mail.peer.pid, mail.peer.uid) {
        (Some(ip), _, _) => format!("[{ip}]"),
        (None, pid, uid) => format!(
            "PID={} UID={}",
            pid.map_or("unknown".to_owned(), |p| p.to_string()),
            uid.map_or("unknown".to_owned(), |u| u.to_string())
        ),
    };
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(b" with QMQP");
    out.extend_from_slice(eol);
    out
}

async fn act(shared: &Shared, listener: &Listener, request: &Request, peer: &Peer) -> (Reply, Mail, Option<String>) {
    let mail = Mail {
        sender: request.sender.clone(),
        recipients: request.recipients.clone(),
        peer: peer.clone(),
        account: None,
        headers: Vec::new(),
        address_check: listener.limits.address_check,
        cgroup_mount: shared.cgroup_mount.clone(),
    };
    let (action, mail) = shared.script.decide(&listener.handler, mail).await;
    let action = match action {
        Ok(a) => a,
        Err(e) => return (Reply::temporary("script failed"), mail, Some(format!("script: {e}"))),
    };
    let prefix = prefix(&mail, &request.message);
    let out =
        Outgoing { prefix: &prefix, message: &request.message, sender: &mail.sender, recipients: &mail.recipients };
    let reply = match &action {
        Action::Discard => Reply::accepted("discarded"),
        Action::Reject => Reply::permanent("rejected"),
        Action::Connect(targets) => {
            let (reply, used) = relay::relay(targets, &out).await;
            return (reply, mail, used.map(|u| format!("relay={u}")));
        }
        Action::Exec(spec) => relay::exec(spec, &out).await,
    };
    (reply, mail, None)
}

/// One line for the log: the client, the envelope, the size, the reply,
/// the duration.
fn log_line(
    peer: &Peer,
    mail: Option<&Mail>,
    size: Option<usize>,
    reply: &Reply,
    note: Option<&str>,
    started: Instant,
) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut line = format!("pid={} uid={}", opt(peer.pid.map(|p| p.to_string())), opt(peer.uid.map(|u| u.to_string())));
    if let Some(ip) = peer.ip {
        line.push_str(&format!(" ip={ip}"));
    }
    if let Some(m) = mail {
        line.push_str(&format!(" account={}", opt(m.account.clone())));
        line.push_str(&format!(" from=<{}>", m.sender.escape_ascii()));
        let to: Vec<String> = m.recipients.iter().map(|r| format!("<{}>", r.escape_ascii())).collect();
        line.push_str(&format!(" to={}", to.join(",")));
    }
    if let Some(size) = size {
        line.push_str(&format!(" size={size}"));
    }
    line.push_str(&format!(" reply={}", reply.content().escape_ascii()));
    if let Some(n) = note {
        line.push_str(&format!(" {n}"));
    }
    line.push_str(&format!(" time={:.6}", started.elapsed().as_secs_f64()));
    chainmail_sys::diag::info(format_args!("{line}"));
}

async fn write_reply(w: &mut (impl AsyncWrite + Unpin), reply: &Reply) {
    let bytes = reply.encode();
    let _ = timeout(REPLY_WRITE_TIMEOUT, async {
        // The connection is closed when the session ends.
        w.write_all(&bytes).await?;
        w.flush().await
    })
    .await;
}

/// Serves one connection: `r` and `w` are its two directions.
pub async fn serve(
    shared: &Shared,
    listener: &Listener,
    mut r: impl AsyncRead + Unpin,
    mut w: impl AsyncWrite + Unpin,
    peer: Peer,
) {
    let started = Instant::now();
    let deadline = started + SESSION_LIMIT;
    let work = async {
        match read_request(&mut r, listener.limits, deadline).await {
            // Nothing to answer: the client is gone or silent.
            Read::Gone(why) => log_gone(&peer, why, started),
            Read::Refused(why) => {
                let reply = why.reply();
                write_reply(&mut w, &reply).await;
                drain(&mut r, deadline).await;
                log_line(&peer, None, None, &reply, Some(&format!("refused={why}")), started);
            }
            Read::Request(request) => {
                let (reply, mail, note) = act(shared, listener, &request, &peer).await;
                write_reply(&mut w, &reply).await;
                log_line(&peer, Some(&mail), Some(request.message.len()), &reply, note.as_deref(), started);
                let acted = !note.as_deref().is_some_and(|n| n.starts_with("script: "));
                let prefix_len = prefix(&mail, &request.message).len();
                let took = started.elapsed();
                crate::lualib::pond::log_message(shared.script.lua(), &request, &mail, &reply, prefix_len, acted, took);
            }
        }
    };
    if timeout_at(deadline, work).await.is_err() {
        log_gone(&peer, "session time limit", started);
    }
}

fn log_gone(peer: &Peer, why: &str, started: Instant) {
    chainmail_sys::diag::info(format_args!(
        "pid={} uid={} no request: {why} time={:.6}",
        peer.pid.map_or("-".to_owned(), |p| p.to_string()),
        peer.uid.map_or("-".to_owned(), |u| u.to_string()),
        started.elapsed().as_secs_f64()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(headers: &[(&str, &str)], peer: Peer) -> Mail {
        Mail {
            sender: Vec::new(),
            recipients: Vec::new(),
            peer,
            account: None,
            headers: headers.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            address_check: AddressCheck::Qmail,
            cgroup_mount: None,
        }
    }

    #[test]
    fn prefix_uses_the_message_line_ends_and_reverses_headers() {
        let peer = Peer { pid: Some(12), uid: Some(34), gid: Some(5), ip: None };
        let m = mail(&[("X-A", "1"), ("X-B", "2")], peer);
        assert_eq!(prefix(&m, b"Subject: x\n\nbody\n"), b"X-B: 2\nX-A: 1\nReceived: from PID=12 UID=34 with QMQP\n");
        assert_eq!(
            prefix(&m, b"Subject: x\r\n\r\nbody\r\n"),
            b"X-B: 2\r\nX-A: 1\r\nReceived: from PID=12 UID=34 with QMQP\r\n"
        );
        let tcp = mail(&[], Peer { ip: Some("127.0.0.1".parse().expect("ip")), ..Peer::default() });
        assert_eq!(prefix(&tcp, b""), b"Received: from [127.0.0.1] with QMQP\n");
        let unknown = mail(&[], Peer::default());
        assert_eq!(prefix(&unknown, b"x"), b"Received: from PID=unknown UID=unknown with QMQP\n");
    }
}
