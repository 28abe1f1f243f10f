//! The proxy's I/O: one poll loop that drives [`chainmail_smtp::proxy`]
//! until the client decides, then the TLS hand-over or the plaintext
//! relay.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use chainmail_smtp::proxy::{End, Proxy, RelayParts, Status, Transport};
use chainmail_sys::fd;
use chainmail_sys::net;
use chainmail_sys::poll::{self, Deadline, Interest, PollSet};
use chainmail_sys::relay::{ByteRelay, LegSpec, RelayEnd};
use chainmail_sys::{cli, diag};
use chainmail_ucspi_tls::SslFds;
use chainmail_ucspi_tls::control::{self, Command};

use crate::Options;

/// Size asked for the pipes to and from the smtpd.
pub const PIPE_SIZE: usize = 256 * 1024;

/// How long the last reply may take to leave once the proxy has decided to
/// close, and how long a closing connection is drained for the client's
/// EOF.
const CLOSE_FLUSH: Duration = Duration::from_secs(10);
const CLOSE_DRAIN: Duration = Duration::from_secs(5);

/// How long the relay must be idle before the process gives its code
/// pages back, once per idle period: a process serves one session, so
/// while it waits the code it ran is better left to the page cache.
const TRIM_AFTER: Duration = Duration::from_secs(1);

fn give_back_code_pages() {
    let _ = chainmail_sys::process::release_clean_file_pages();
}

/// The descriptors of a session.
#[derive(Debug)]
pub struct Fds {
    /// The network, read side (fd 0).
    pub net_in: OwnedFd,
    /// The network, write side (fd 1).
    pub net_out: OwnedFd,
    /// The UCSPI-TLS descriptors.
    pub ssl: SslFds,
    /// The smtpd's standard input.
    pub smtpd_in: OwnedFd,
    /// The smtpd's standard output.
    pub smtpd_out: OwnedFd,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Relayed to the end.
    Relayed,
    /// The relay was idle for too long.
    RelayIdle,
    /// The proxy ended it, for this reason.
    Proxy(End),
}

/// The TLS handshake failed (the engine answered with EOF).
pub const EXIT_TLS_FAILED: u8 = 1;
/// A timeout (`-t` or `-T`).
pub const EXIT_TIMEOUT: u8 = 99;
/// The smtpd broke the protocol (not a reply, or gone with replies owed).
pub const EXIT_SMTPD_ERROR: u8 = 101;

impl Ended {
    /// The process exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Ended::Relayed | Ended::Proxy(End::Closed | End::ClientGone | End::Injection) => cli::EXIT_OK,
            Ended::Proxy(End::TlsFailed) => EXIT_TLS_FAILED,
            Ended::RelayIdle | Ended::Proxy(End::Timeout) => EXIT_TIMEOUT,
            Ended::Proxy(End::ServerError) => EXIT_SMTPD_ERROR,
        }
    }
}

fn remote() -> String {
    match std::env::var("TCPREMOTEIP") {
        Ok(ip) => format!(" (client {ip})"),
        Err(_) => String::new(),
    }
}

/// Writes as much of the client's output as the socket takes now.
/// Returns false when the client is gone.
fn flush_client(p: &mut Proxy, net_out: &OwnedFd) -> bool {
    while !p.client_output().is_empty() {
        match fd::write(net_out, p.client_output()) {
            Ok(n) => p.consume_client_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Writes as much of the smtpd's input as the pipe takes now. Returns
/// false when the smtpd is gone.
fn flush_server(p: &mut Proxy, smtpd_in: &OwnedFd) -> bool {
    while !p.server_output().is_empty() {
        match fd::write(smtpd_in, p.server_output()) {
            Ok(n) => p.consume_server_output(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

fn idle_deadline(timeout: Option<Duration>) -> Deadline {
    timeout.map_or(Deadline::NEVER, Deadline::after)
}

/// Runs a session to its end.
pub fn run(opts: &Options, fds: Fds) -> io::Result<Ended> {
    let Fds { net_in, net_out, ssl, smtpd_in, smtpd_out } = fds;
    for f in [&net_in, &net_out, &smtpd_in, &smtpd_out] {
        fd::set_nonblocking(f, true)?;
    }
    net::set_nodelay(&net_out);
    let mut smtpd_in = Some(smtpd_in);
    let mut p = Proxy::new(opts.proxy);
    let mut deadline = idle_deadline(opts.timeout);
    let mut buf = vec![0u8; 16 * 1024];
    let mut poll_set = PollSet::with_capacity(4);
    loop {
        if !flush_client(&mut p, &net_out) {
            return Ok(close(opts, End::ClientGone, p, net_in, net_out));
        }
        if let Some(w) = &smtpd_in {
            if !flush_server(&mut p, w) {
                p.server_closed();
            }
        }
        if p.should_close_server_input() {
            smtpd_in = None;
        }
        match p.status() {
            Status::Running => {}
            Status::StartTls => {
                let Some(smtpd_in) = smtpd_in else {
                    return Ok(close(opts, End::Closed, p, net_in, net_out));
                };
                return start_tls(opts, p, net_in, net_out, ssl, smtpd_in, smtpd_out);
            }
            Status::Relay(_) => {
                let Some(smtpd_in) = smtpd_in else {
                    return Ok(close(opts, End::Closed, p, net_in, net_out));
                };
                if opts.verbosity >= 2 {
                    diag::info(format_args!("client chose plaintext{}", remote()));
                }
                // Closing the control socket declines TLS: the UCSPI-TLS
                // engine exits now instead of waiting for the session end.
                drop(ssl);
                let parts = p.into_relay();
                let relay = ByteRelay::new(
                    LegSpec { src: net_in, dst: smtpd_in, leftover: parts.to_server },
                    LegSpec { src: smtpd_out, dst: net_out, leftover: parts.to_client },
                )?
                .idle_timeout(opts.relay_timeout)
                .on_idle(TRIM_AFTER, give_back_code_pages);
                return Ok(relay_outcome(relay.run()?.outcome));
            }
            Status::Finished(end) => return Ok(close(opts, end, p, net_in, net_out)),
        }

        let mut round = poll_set.round();
        if p.wants_client_input() {
            round.register(net_in.as_fd(), Interest::Read, Slot::ClientIn);
        }
        if !p.client_output().is_empty() {
            round.register(net_out.as_fd(), Interest::Write, Slot::ClientOut);
        }
        if p.wants_server_input() {
            round.register(smtpd_out.as_fd(), Interest::Read, Slot::ServerIn);
        }
        if let Some(w) = &smtpd_in {
            if !p.server_output().is_empty() {
                round.register(w.as_fd(), Interest::Write, Slot::ServerOut);
            }
        }
        if round.is_empty() {
            // Nothing can move any more: the session is over.
            return Ok(close(opts, End::Closed, p, net_in, net_out));
        }
        let ready = round.wait(deadline)?;
        if ready.is_empty() {
            if opts.verbosity >= 2 {
                diag::info(format_args!("timed out{}", remote()));
            }
            p.timed_out();
            continue;
        }
        for &(slot, _) in ready {
            let (source, from_client) = match slot {
                Slot::ClientIn => (&net_in, true),
                Slot::ServerIn => (&smtpd_out, false),
                // Writable: the flush at the top of the loop does it.
                Slot::ClientOut | Slot::ServerOut => continue,
            };
            match fd::read(source, &mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) if from_client => p.client_closed(),
                Ok(0) | Err(_) => p.server_closed(),
                Ok(n) => {
                    if from_client {
                        p.client_data(&buf[..n]);
                    } else {
                        p.server_data(&buf[..n]);
                    }
                    deadline = idle_deadline(opts.timeout);
                }
            }
        }
    }
}

/// What a descriptor of the proxy's poll set stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// The client's commands (network input).
    ClientIn,
    /// Replies to the client (network output).
    ClientOut,
    /// The smtpd's replies.
    ServerIn,
    /// Commands to the smtpd.
    ServerOut,
}

fn relay_outcome(end: RelayEnd) -> Ended {
    match end {
        RelayEnd::Finished => Ended::Relayed,
        RelayEnd::IdleTimeout => Ended::RelayIdle,
    }
}

/// Writes all of the client's output, waiting at most until `deadline`.
fn flush_client_fully(p: &mut Proxy, net_out: &OwnedFd, deadline: Deadline) -> bool {
    loop {
        if !flush_client(p, net_out) {
            return false;
        }
        if p.client_output().is_empty() {
            return true;
        }
        match poll::wait_one(net_out.as_fd(), Interest::Write, deadline) {
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
}

/// Ends a session the proxy decided to end: the last reply goes out, the
/// smtpd gets EOF, and the client's input is drained until it closes so
/// that the closing does not reset the connection under the last reply.
fn close(opts: &Options, end: End, mut p: Proxy, net_in: OwnedFd, net_out: OwnedFd) -> Ended {
    if opts.verbosity >= 1 {
        match end {
            End::Injection => {
                diag::warn(format_args!("client sent commands pipelined after STARTTLS; connection closed{}", remote()))
            }
            End::ServerError => diag::warn(format_args!(
                "the smtpd sent a malformed reply or closed with replies owed; connection closed{}",
                remote()
            )),
            _ => {}
        }
    }
    if end == End::TlsFailed {
        // The TLS engine owns the connection now and has closed it.
        return Ended::Proxy(end);
    }
    flush_client_fully(&mut p, &net_out, Deadline::after(CLOSE_FLUSH));
    let _ = net::shutdown_write(&net_out);
    drop(net_out);
    if end != End::ClientGone {
        net::drain(&net_in, Deadline::after(CLOSE_DRAIN));
    }
    Ended::Proxy(end)
}

/// Sends the `220`, asks the UCSPI-TLS server for TLS, waits for the
/// handshake's outcome, and relays the TLS plaintext pipes to the smtpd.
fn start_tls(
    opts: &Options,
    mut p: Proxy,
    net_in: OwnedFd,
    net_out: OwnedFd,
    ssl: SslFds,
    smtpd_in: OwnedFd,
    smtpd_out: OwnedFd,
) -> io::Result<Ended> {
    let deadline = idle_deadline(opts.timeout);
    // The 220 must be out before the engine starts reading the handshake.
    if !flush_client_fully(&mut p, &net_out, deadline) {
        return Ok(Ended::Proxy(End::ClientGone));
    }
    // From here on the network belongs to the TLS engine.
    drop(net_in);
    drop(net_out);
    let SslFds { ctl, read: tls_read, write: tls_write } = ssl;
    // With a UCSPI-TLS server that takes handovers, the proxy leaves once
    // TLS is up and the engine relays with the smtpd directly: one process
    // and one copy less per byte.
    let handover = opts.handover;
    let command = if handover { Command::TlsWithHandover } else { Command::TlsWithInfo };
    let info = match control::request_tls(&ctl, command, deadline) {
        Ok(Some(info)) => info,
        Ok(None) | Err(_) => {
            p.tls_failed();
            if opts.verbosity >= 2 {
                diag::info(format_args!("TLS handshake failed{}", remote()));
            }
            return Ok(Ended::Proxy(End::TlsFailed));
        }
    };
    p.tls_started();
    if opts.verbosity >= 2 {
        let protocol = info.protocol.as_deref().unwrap_or("?");
        let cipher = info.cipher.as_deref().unwrap_or("?");
        diag::info(format_args!("TLS started: SSL_PROTOCOL={protocol} SSL_CIPHER={cipher}{}", remote()));
    }
    debug_assert_eq!(p.status(), Status::Relay(Transport::Tls));
    let parts = p.into_relay();
    if handover {
        match hand_over(opts, &ctl, &parts, &smtpd_in, &smtpd_out) {
            Ok(()) => return Ok(Ended::Relayed),
            Err(e) => {
                // The engine goes on with the ordinary relay when it gets
                // no handover; so does the proxy.
                if opts.verbosity >= 1 {
                    diag::warn(format_args!("unable to hand the session over to the TLS engine: {e}{}", remote()));
                }
            }
        }
    }
    drop(ctl);
    let relay = ByteRelay::new(
        LegSpec { src: tls_read, dst: smtpd_in, leftover: parts.to_server },
        LegSpec { src: smtpd_out, dst: tls_write, leftover: parts.to_client },
    )?
    .idle_timeout(opts.relay_timeout)
    .on_idle(TRIM_AFTER, give_back_code_pages);
    Ok(relay_outcome(relay.run()?.outcome))
}

/// Hands the smtpd's pipes over to the TLS engine: what the proxy still
/// owes the smtpd is written first; what it owes the client goes in the
/// message, for the engine to send before anything else.
fn hand_over(
    opts: &Options,
    ctl: &OwnedFd,
    parts: &RelayParts,
    smtpd_in: &OwnedFd,
    smtpd_out: &OwnedFd,
) -> io::Result<()> {
    if !parts.to_server.is_empty() {
        fd::set_nonblocking(smtpd_in, false)?;
        fd::write_all(smtpd_in, &parts.to_server)?;
    }
    control::send_handover(ctl, opts.relay_timeout, &parts.to_client, smtpd_in.as_fd(), smtpd_out.as_fd())
}
