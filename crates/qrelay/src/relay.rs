//! Carrying out an action: relaying by QMQP (with failover over the
//! targets), running a program (`exec`, `exec_raw`), discarding,
//! rejecting. Every wait is bounded; the reply texts and timeouts are the
//! original's.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use chainmail_qmqp::reply::{MAX_REPLY, ReplyParser, ReplyStatus};
use chainmail_qmqp::{Reply, request};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

use crate::script::{ExecSpec, Target};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request up to this size is copied into one buffer and sent in one
/// write; a larger one is sent from where it is.
const COALESCE_LIMIT: usize = 64 * 1024;
/// How much of a program's output becomes the reply text.
const MAX_OUTPUT: usize = 256;
/// sysexits.h: these exit codes make a permanent failure.
const EX_USAGE: i32 = 64;
const EX_OSFILE: i32 = 72;
const EX_NOPERM: i32 = 77;
const EX_CONFIG: i32 = 78;

/// What goes upstream: the headers in front of the message, the message,
/// the envelope.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Inserted headers and the Received line, in their final order.
    pub prefix: &'a [u8],
    /// The message as received.
    pub message: &'a [u8],
    /// The envelope sender.
    pub sender: &'a [u8],
    /// The envelope recipients.
    pub recipients: &'a [Vec<u8>],
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

async fn connect_one(t: &Target) -> std::io::Result<Box<dyn Stream>> {
    Ok(match t {
        Target::Inet(a) => Box::new(tokio::net::TcpStream::connect(a).await?),
        Target::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
        Target::Abstract(n) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(n)?;
            let s = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            s.set_nonblocking(true)?;
            Box::new(tokio::net::UnixStream::from_std(s)?)
        }
    })
}

/// Writes `data` in pieces, each within `SEND_TIMEOUT`.
async fn send(w: &mut (impl AsyncWrite + Unpin + ?Sized), data: &[u8]) -> std::io::Result<()> {
    for piece in data.chunks(256 * 1024) {
        timeout(SEND_TIMEOUT, w.write_all(piece)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    }
    Ok(())
}

async fn send_request(
    w: &mut (impl AsyncWrite + Unpin + ?Sized),
    out: &Outgoing<'_>,
    with_envelope: bool,
) -> std::io::Result<()> {
    if with_envelope {
        let (before, after) = request::frame(out.prefix.len() + out.message.len(), out.sender, out.recipients);
        let total = before.len() + out.prefix.len() + out.message.len() + after.len();
        if total <= COALESCE_LIMIT {
            // One write for a small request instead of four.
            let mut all = Vec::with_capacity(total);
            for piece in [&before[..], out.prefix, out.message, &after[..]] {
                all.extend_from_slice(piece);
            }
            send(w, &all).await?;
        } else {
            send(w, &before).await?;
            send(w, out.prefix).await?;
            send(w, out.message).await?;
            send(w, &after).await?;
        }
    } else {
        send(w, out.prefix).await?;
        send(w, out.message).await?;
    }
    timeout(SEND_TIMEOUT, w.flush()).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(())
}

/// Reads one reply: 60 s in all, 5 s between reads. `Err` with the
/// reply to give when there is none.
async fn read_reply(r: &mut (impl AsyncRead + Unpin + ?Sized)) -> Result<Reply, Reply> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut parser = ReplyParser::new();
    let mut buf = [0u8; 512];
    loop {
        let limit = (Instant::now() + IDLE_TIMEOUT).min(deadline);
        let n = match timeout_at(limit, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(Reply::temporary("relay failed")),
            Ok(Ok(n)) => n,
        };
        match parser.feed(&buf[..n]).1 {
            ReplyStatus::NeedMore => {}
            ReplyStatus::Done(reply) => return Ok(reply),
            ReplyStatus::Failed(_) => return Err(Reply::temporary("malformed relay response")),
        }
    }
}

/// `connect`: the first target that takes the connection gets the message.
pub async fn relay(targets: &[Target], out: &Outgoing<'_>) -> (Reply, Option<String>) {
    let mut conn = None;
    for t in targets {
        if let Ok(Ok(s)) = timeout(CONNECT_TIMEOUT, connect_one(t)).await {
            conn = Some((s, t.to_string()));
            break;
        }
    }
    let Some((mut s, used)) = conn else { return (Reply::temporary("connect failed"), None) };
    if send_request(&mut *s, out, true).await.is_err() {
        return (Reply::temporary("relay failed"), Some(used));
    }
    let reply = read_reply(&mut *s).await.unwrap_or_else(|r| r);
    (reply, Some(used))
}

fn permanent_exit(code: i32) -> bool {
    matches!(code, EX_USAGE | EX_OSFILE | EX_NOPERM | EX_CONFIG)
}

fn exit_reply(status: ExitStatus, output: &[u8]) -> Reply {
    use std::os::unix::process::ExitStatusExt;
    let text = String::from_utf8_lossy(output);
    let text = text.trim_end();
    match (status.code(), status.signal()) {
        (Some(0), _) => Reply::accepted(if text.is_empty() { "ok" } else { text }),
        (Some(code), _) if permanent_exit(code) => Reply::permanent(if text.is_empty() {
            format!("program failed with exit status {code}")
        } else {
            text.to_owned()
        }),
        (Some(code), _) => Reply::temporary(if text.is_empty() {
            format!("program failed with exit status {code}")
        } else {
            text.to_owned()
        }),
        (None, Some(sig)) => Reply::temporary(format!("program killed by signal {sig}")),
        (None, None) => Reply::temporary("program failed"),
    }
}

/// Reads at most `MAX_OUTPUT` bytes of `r` (the rest is read and dropped).
async fn collect(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// `exec` and `exec_raw`.
pub async fn exec(spec: &ExecSpec, out: &Outgoing<'_>) -> Reply {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if spec.raw { Stdio::piped() } else { Stdio::null() })
        .kill_on_drop(false);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(_) => return Reply::temporary("exec failed"),
    };
    let pid = child.id();
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Reply::temporary("exec failed");
    };
    let stderr = child.stderr.take();
    let work = async {
        let writer = async {
            let _ = send_request(&mut stdin, out, !spec.raw).await;
            drop(stdin);
        };
        if spec.raw {
            let errs = async {
                match stderr {
                    Some(e) => collect(e).await,
                    None => Vec::new(),
                }
            };
            let ((), mut text, errs, status) = tokio::join!(writer, collect(stdout), errs, child.wait());
            text.extend_from_slice(&errs);
            text.truncate(MAX_OUTPUT);
            match status {
                Ok(s) => exit_reply(s, &text),
                Err(_) => Reply::temporary("exec failed"),
            }
        } else {
            let reader = async {
                let mut stdout = stdout;
                let mut all = Vec::new();
                let mut buf = [0u8; 512];
                // The reply, then whatever follows, dropped.
                loop {
                    match stdout.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if all.len() < MAX_REPLY + 16 => all.extend_from_slice(&buf[..n]),
                        Ok(_) => {}
                    }
                }
                all
            };
            let ((), output, status) = tokio::join!(writer, reader, child.wait());
            match status {
                Ok(s) if s.success() => match ReplyParser::new().feed(&output).1 {
                    ReplyStatus::Done(reply) => reply,
                    _ => Reply::temporary("malformed relay response"),
                },
                Ok(s) => exit_reply(s, b""),
                Err(_) => Reply::temporary("exec failed"),
            }
        }
    };
    match spec.timeout {
        None => work.await,
        Some(t) => match timeout(t, work).await {
            Ok(reply) => reply,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
                }
                Reply::temporary("timeout")
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_statuses() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        for (status, output, want) in [
            (code(0), &b""[..], Reply::accepted("ok")),
            (code(0), b"queued\n", Reply::accepted("queued")),
            (code(64), b"", Reply::permanent("program failed with exit status 64")),
            (code(72), b"", Reply::permanent("program failed with exit status 72")),
            (code(77), b"no", Reply::permanent("no")),
            (code(78), b"", Reply::permanent("program failed with exit status 78")),
            (code(75), b"", Reply::temporary("program failed with exit status 75")),
            (code(1), b"", Reply::temporary("program failed with exit status 1")),
            (ExitStatus::from_raw(9), b"", Reply::temporary("program killed by signal 9")),
        ] {
            assert_eq!(exit_reply(status, output), want, "{status:?}");
        }
    }
}
