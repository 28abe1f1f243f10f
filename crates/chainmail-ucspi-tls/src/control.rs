//! The control protocol on `SSLCTLFD`, both sides.
//!
//! The application writes one command byte when it wants TLS:
//!
//! * `y`: start TLS; nothing comes back.
//! * `Y`: start TLS, and send the connection information ([`InfoRecord`])
//!   back on the control socket once the handshake is done, then EOF.
//! * `H` (chainmail's extension, offered by an engine that sets
//!   [`HANDOVER_VAR`](crate::env::HANDOVER_VAR)): what `Y` does, but the
//!   socket stays open after the record, and the application then sends
//!   one handover message ([`Handover`]) with two descriptors: where to
//!   write the client's plaintext from now on, and where to read the
//!   plaintext for the client. The application (a proxy) then leaves and
//!   the engine relays with whatever is behind those descriptors. An
//!   application that closes the socket without a message keeps the
//!   ordinary `SSLREADFD`/`SSLWRITEFD` relay.
//!
//! Closing the control socket without a command declines TLS.
//!
//! The engine side is [`EngineControl`]; the application side is
//! [`request_tls`] and [`send_handover`].

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use chainmail_sys::cli::{SysError, sys};
use chainmail_sys::poll::{self, Deadline, Interest};
use chainmail_sys::{fd, net};
use thiserror::Error;

use crate::info::{InfoRecord, MAX_RECORD};

/// What the application asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `y`: TLS, no information back.
    Tls,
    /// `Y`: TLS and the connection information.
    TlsWithInfo,
    /// `H`: TLS, the connection information, then a handover.
    TlsWithHandover,
}

impl Command {
    /// The byte on the wire.
    pub const fn byte(self) -> u8 {
        match self {
            Command::Tls => b'y',
            Command::TlsWithInfo => b'Y',
            Command::TlsWithHandover => b'H',
        }
    }

    /// The command a byte stands for.
    pub(crate) const fn from_byte(b: u8) -> Option<Command> {
        match b {
            b'y' => Some(Command::Tls),
            b'Y' => Some(Command::TlsWithInfo),
            b'H' => Some(Command::TlsWithHandover),
            _ => None,
        }
    }

    /// Whether the engine sends the connection information back.
    pub(crate) const fn wants_info(self) -> bool {
        !matches!(self, Command::Tls)
    }
}

/// Most bytes of a handover message (the idle timeout and what the engine
/// must send to the client first).
pub(crate) const MAX_HANDOVER: usize = 1 << 20;

/// How long an engine waits for the handover message after the record.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// A problem on the control socket.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The application wrote a byte that is not a command.
    #[error("invalid control byte {0:#04x} (expected y, Y or H)")]
    UnknownCommand(u8),
    /// The engine closed the socket without the connection information:
    /// the handshake failed.
    #[error("the TLS engine sent no connection information (the handshake failed)")]
    NoRecord,
    /// The engine did not answer in time.
    #[error("timed out waiting for the TLS engine")]
    Timeout,
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// What an application hands over after `H`: the relay's idle timeout, the
/// bytes the engine must send to the client before anything else, and the
/// two descriptors (owned on the engine side once received).
#[derive(Debug)]
pub struct Handover {
    /// The relay's idle timeout; `None` for none.
    pub idle: Option<Duration>,
    /// Plaintext for the client that the application still owed it.
    pub to_client: Vec<u8>,
    /// Where the client's plaintext goes from now on.
    pub to_app: OwnedFd,
    /// Where the plaintext for the client comes from from now on.
    pub from_app: OwnedFd,
}

/// The handover message: the idle timeout in milliseconds (0 for none,
/// 8 bytes big-endian), then the bytes for the client.
pub(crate) fn encode_handover(idle: Option<Duration>, to_client: &[u8]) -> Vec<u8> {
    let idle_ms = idle.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    let mut m = idle_ms.to_be_bytes().to_vec();
    m.extend_from_slice(to_client);
    m
}

/// Reads a handover message: `(idle timeout, bytes for the client)`.
pub(crate) fn decode_handover(message: &[u8]) -> Option<(Option<Duration>, &[u8])> {
    let (head, rest) = message.split_first_chunk::<8>()?;
    let idle_ms = u64::from_be_bytes(*head);
    Some(((idle_ms > 0).then(|| Duration::from_millis(idle_ms)), rest))
}

/// The engine's end of the control socket, once the application has
/// asked for TLS.
#[derive(Debug)]
pub struct EngineControl {
    command: Command,
    /// `None` once nothing more goes over it (`y`).
    ctl: Option<OwnedFd>,
}

impl EngineControl {
    /// Waits for the application's command. `Ok(None)` when it closes the
    /// socket instead: it declines TLS. The read is bounded by the
    /// application's life (the other end closes when it exits).
    pub fn read_command(ctl: OwnedFd) -> Result<Option<EngineControl>, ControlError> {
        let mut byte = [0u8; 1];
        if fd::read(&ctl, &mut byte).map_err(sys("read from the control socket"))? == 0 {
            return Ok(None);
        }
        let command = Command::from_byte(byte[0]).ok_or(ControlError::UnknownCommand(byte[0]))?;
        let ctl = match command {
            // Nothing goes back: the socket is done with.
            Command::Tls => None,
            // Only the record goes back, and nothing more is read.
            Command::TlsWithInfo => {
                net::shutdown_read(&ctl).map_err(sys("shut down the control socket"))?;
                Some(ctl)
            }
            Command::TlsWithHandover => Some(ctl),
        };
        Ok(Some(EngineControl { command, ctl }))
    }

    /// The command the application sent.
    pub fn command(&self) -> Command {
        self.command
    }

    /// After the handshake: sends the connection information (for `Y` and
    /// `H`) and, for `H`, waits up to `wait` for the handover message.
    /// `Ok(None)`: no handover (not asked for, or the application closed
    /// the socket without one, sent a malformed one, or took too long):
    /// the ordinary relay goes on. The socket is closed on return.
    pub fn finish(self, info: &InfoRecord, wait: Duration) -> Result<Option<Handover>, ControlError> {
        let Some(ctl) = self.ctl else {
            return Ok(None);
        };
        fd::write_all(&ctl, &info.encode()).map_err(sys("write to the control socket"))?;
        if self.command != Command::TlsWithHandover {
            return Ok(None);
        }
        Ok(receive_handover(&ctl, wait))
    }
}

fn receive_handover(ctl: &OwnedFd, wait: Duration) -> Option<Handover> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    use nix::sys::time::TimeVal;
    let wait = TimeVal::new(
        i64::try_from(wait.as_secs()).unwrap_or(i64::MAX).max(0) as _,
        i64::from(wait.subsec_micros()) as _,
    );
    setsockopt(ctl, ReceiveTimeout, &wait).ok()?;
    // Exactly two descriptors; anything else is refused (and closed).
    let (message, mut fds) = fd::recv_with_fds(ctl, MAX_HANDOVER, 2).ok()?;
    if fds.len() != 2 {
        return None;
    }
    let (idle, to_client) = decode_handover(&message)?;
    let to_client = to_client.to_vec();
    let from_app = fds.pop()?;
    let to_app = fds.pop()?;
    Some(Handover { idle, to_client, to_app, from_app })
}

/// Application side: asks for TLS with `command` and waits until
/// `deadline` for the engine's answer. For `y` there is none (`Ok(None)`
/// at once); for `Y` and `H` the record comes back once the handshake is
/// done (after `H`, the socket stays open for [`send_handover`]).
/// [`ControlError::NoRecord`] means the handshake failed.
pub fn request_tls(ctl: &impl AsFd, command: Command, deadline: Deadline) -> Result<Option<InfoRecord>, ControlError> {
    fd::write_all(ctl, &[command.byte()]).map_err(sys("write to the control socket"))?;
    if !command.wants_info() {
        return Ok(None);
    }
    let record = read_record(ctl.as_fd(), deadline, command == Command::TlsWithHandover)?;
    InfoRecord::decode(&record).map(Some).ok_or(ControlError::NoRecord)
}

/// Reads the record up to EOF or, when the engine keeps the socket open
/// for a handover, up to the two NULs that end it. At most
/// [`MAX_RECORD`] bytes are kept.
fn read_record(ctl: BorrowedFd<'_>, deadline: Deadline, until_end_mark: bool) -> Result<Vec<u8>, ControlError> {
    let mut record = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if poll::wait_one(ctl, Interest::Read, deadline).map_err(sys("poll"))?.is_none() {
            return Err(ControlError::Timeout);
        }
        match fd::read(&ctl, &mut buf) {
            Ok(0) => return Ok(record),
            Ok(n) => {
                let room = MAX_RECORD - record.len();
                record.extend_from_slice(&buf[..n.min(room)]);
                if until_end_mark && record.ends_with(b"\0\0") {
                    return Ok(record);
                }
                if record.len() >= MAX_RECORD {
                    return Ok(record);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A reset: whatever came so far is all there is.
            Err(_) => return Ok(record),
        }
    }
}

/// Application side, after `H` and the record: hands `to_app` (where the
/// engine writes the client's plaintext) and `from_app` (where it reads
/// the plaintext for the client) over, with the relay's idle timeout and
/// the bytes the engine must send to the client first.
pub fn send_handover(
    ctl: &impl AsFd,
    idle: Option<Duration>,
    to_client: &[u8],
    to_app: BorrowedFd<'_>,
    from_app: BorrowedFd<'_>,
) -> io::Result<()> {
    fd::send_with_fds(ctl, &encode_handover(idle, to_client), &[to_app, from_app])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InfoRecord {
        InfoRecord {
            protocol: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_128_GCM_SHA256".into()),
            ..InfoRecord::default()
        }
    }

    fn soon() -> Deadline {
        Deadline::after(Duration::from_secs(5))
    }

    #[test]
    fn command_bytes() {
        for c in [Command::Tls, Command::TlsWithInfo, Command::TlsWithHandover] {
            assert_eq!(Command::from_byte(c.byte()), Some(c));
        }
        assert_eq!(Command::from_byte(b'n'), None);
        assert!(!Command::Tls.wants_info());
    }

    #[test]
    fn handover_messages() {
        let idle = Some(Duration::from_millis(1_200_000));
        let m = encode_handover(idle, b"250 leftover\r\n");
        assert_eq!(decode_handover(&m), Some((idle, &b"250 leftover\r\n"[..])));
        assert_eq!(decode_handover(&encode_handover(None, b"")), Some((None, &b""[..])));
        // A sub-millisecond timeout is not "none".
        assert_eq!(
            decode_handover(&encode_handover(Some(Duration::from_micros(5)), b"")).map(|m| m.0.is_some()),
            Some(true)
        );
        assert_eq!(decode_handover(&encode_handover(Some(Duration::MAX), b"")).map(|m| m.0.is_some()), Some(true));
        assert_eq!(decode_handover(b"short"), None);
    }

    /// Runs the engine side in a thread: reads the command, "handshakes",
    /// finishes with `record()`.
    /// What the engine side saw: `None` if declined, else the command and
    /// the handover, if any.
    type EngineSaw = Result<Option<(Command, Option<Handover>)>, String>;

    fn engine(ctl: OwnedFd) -> std::thread::JoinHandle<EngineSaw> {
        std::thread::spawn(move || {
            let Some(control) = EngineControl::read_command(ctl).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let command = control.command();
            let handover = control.finish(&record(), Duration::from_secs(5)).map_err(|e| e.to_string())?;
            Ok(Some((command, handover)))
        })
    }

    #[test]
    fn y_gets_nothing_back() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        let e = engine(eng);
        assert_eq!(request_tls(&app, Command::Tls, soon()).expect("y"), None);
        let (command, handover) = e.join().expect("join").expect("engine").expect("asked");
        assert_eq!(command, Command::Tls);
        assert!(handover.is_none());
    }

    #[test]
    fn capital_y_gets_the_record_then_eof() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        let e = engine(eng);
        assert_eq!(request_tls(&app, Command::TlsWithInfo, soon()).expect("Y"), Some(record()));
        let (command, handover) = e.join().expect("join").expect("engine").expect("asked");
        assert_eq!(command, Command::TlsWithInfo);
        assert!(handover.is_none());
        let mut buf = [0u8; 1];
        assert_eq!(fd::read(&app, &mut buf).expect("eof"), 0);
    }

    #[test]
    fn h_hands_descriptors_over() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        let e = engine(eng);
        assert_eq!(request_tls(&app, Command::TlsWithHandover, soon()).expect("H"), Some(record()));
        let (to_app_r, to_app_w) = fd::pipe().expect("pipe");
        let (from_app_r, from_app_w) = fd::pipe().expect("pipe");
        let idle = Some(Duration::from_secs(1200));
        send_handover(&app, idle, b"250 owed\r\n", to_app_w.as_fd(), from_app_r.as_fd()).expect("send");
        drop((app, to_app_w, from_app_r));
        let (command, handover) = e.join().expect("join").expect("engine").expect("asked");
        assert_eq!(command, Command::TlsWithHandover);
        let h = handover.expect("handover");
        assert_eq!(h.idle, idle);
        assert_eq!(h.to_client, b"250 owed\r\n");
        // The engine's descriptors reach what the application kept.
        fd::write_all(&h.to_app, b"client says").expect("write");
        drop(h.to_app);
        let mut buf = [0u8; 32];
        assert_eq!(fd::read(&to_app_r, &mut buf).expect("read"), 11);
        fd::write_all(&from_app_w, b"for client").expect("write");
        assert_eq!(fd::read(&h.from_app, &mut buf).expect("read"), 10);
    }

    #[test]
    fn h_without_a_handover_message_keeps_the_ordinary_relay() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        let e = engine(eng);
        assert!(request_tls(&app, Command::TlsWithHandover, soon()).expect("H").is_some());
        drop(app);
        let (_, handover) = e.join().expect("join").expect("engine").expect("asked");
        assert!(handover.is_none());
    }

    #[test]
    fn a_handover_with_the_wrong_number_of_descriptors_is_refused() {
        for count in [1, 3] {
            let (app, eng) = fd::socketpair().expect("socketpair");
            let e = engine(eng);
            assert!(request_tls(&app, Command::TlsWithHandover, soon()).expect("H").is_some());
            let (r, w) = fd::pipe().expect("pipe");
            let fds = [r.as_fd(), w.as_fd(), r.as_fd()];
            fd::send_with_fds(&app, &encode_handover(None, b""), &fds[..count]).expect("send");
            drop(app);
            let (_, handover) = e.join().expect("join").expect("engine").expect("asked");
            assert!(handover.is_none(), "{count} descriptors");
        }
    }

    #[test]
    fn closing_declines_and_unknown_bytes_are_refused() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        drop(app);
        assert!(EngineControl::read_command(eng).expect("declined").is_none());
        let (app, eng) = fd::socketpair().expect("socketpair");
        fd::write_all(&app, b"n").expect("write");
        assert!(matches!(EngineControl::read_command(eng), Err(ControlError::UnknownCommand(b'n'))));
    }

    #[test]
    fn a_failed_handshake_is_no_record_and_a_silent_engine_a_timeout() {
        let (app, eng) = fd::socketpair().expect("socketpair");
        let e = std::thread::spawn(move || {
            let control = EngineControl::read_command(eng).expect("read").expect("asked");
            // The handshake fails: the engine exits without a record.
            drop(control);
        });
        assert!(matches!(request_tls(&app, Command::TlsWithInfo, soon()), Err(ControlError::NoRecord)));
        e.join().expect("join");
        let (app, _eng) = fd::socketpair().expect("socketpair");
        let r = request_tls(&app, Command::TlsWithInfo, Deadline::after(Duration::from_millis(20)));
        assert!(matches!(r, Err(ControlError::Timeout)));
    }

    #[test]
    fn the_record_is_read_in_any_chunking() {
        let bytes = record().encode();
        for chunk in 1..=64 {
            let (app, eng) = fd::socketpair().expect("socketpair");
            let sender = {
                let bytes = bytes.clone();
                std::thread::spawn(move || {
                    let mut one = [0u8; 1];
                    fd::read(&eng, &mut one).expect("command");
                    for piece in bytes.chunks(chunk) {
                        fd::write_all(&eng, piece).expect("write");
                    }
                    // Kept open: the reader must stop at the end mark.
                    eng
                })
            };
            let got = request_tls(&app, Command::TlsWithHandover, soon()).expect("record");
            assert_eq!(got, Some(record()), "chunk {chunk}");
            drop(sender.join().expect("join"));
        }
    }
}
