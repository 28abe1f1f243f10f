//! qmail-remote: qmail's remote delivery program, for qmail, netqmail and
//! notqmail (`/var/qmail/bin/qmail-remote`, or through `QMAILREMOTE`).
//!
//! `qmail-remote host sender recip...` with the message on fd 0. It plans
//! the delivery (control files, smtproutes, DNS, this host's addresses),
//! connects to one address after another, and runs qmail-remote-io on each
//! connected socket to hold the SMTP dialogue. Its standard output carries
//! only the report records qmail-rspawn reads; it always exits 0, and it
//! never writes to stderr (qmail-rspawn reads that too).
#![forbid(unsafe_code)]

mod attempt;
mod connect;
mod plan;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use chainmail_dns::Cut;
use chainmail_qmail::address::{encode_recipient, encode_sender};
use chainmail_qmail::control::Control;
use chainmail_qmail::tcpto::{Tcpto, unix_now};
use chainmail_qmail::{Disposition, Final, Report};
use chainmail_smtp::data::MessageFacts;
use chainmail_tls::TlsPolicy;

use crate::attempt::{Attempted, Job};
use crate::connect::{ConnectError, connect_within};
use crate::plan::Target;

fn report_of(f: Final) -> Vec<u8> {
    let mut r = Report::new();
    r.conclude(f);
    r.finish()
}

/// qmail-rspawn gives the message as a file. Run by hand, fd 0 may be a
/// pipe, which cannot be read twice: copy it into a memory file first.
fn make_message_seekable() -> Result<(), Final> {
    let stdin = std::io::stdin();
    let fd0 = stdin.as_fd();
    match nix::unistd::lseek(fd0, 0, nix::unistd::Whence::SeekCur) {
        Ok(_) => return Ok(()),
        Err(nix::Error::ESPIPE) => {}
        Err(_) => return Err(Final::unreadable_message()),
    }
    let copy = nix::sys::memfd::memfd_create("message", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|_| Final::system_resources())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match chainmail_sys::fd::read(&fd0, &mut buf) {
            Ok(0) => break,
            Ok(n) => chainmail_sys::fd::write_all(&copy, &buf[..n]).map_err(|_| Final::system_resources())?,
            Err(_) => return Err(Final::unreadable_message()),
        }
    }
    chainmail_sys::fd::dup_onto(copy.as_fd(), 0).map_err(|_| Final::system_resources())?;
    nix::unistd::lseek(fd0, 0, nix::unistd::Whence::SeekSet).map_err(|_| Final::unreadable_message())?;
    Ok(())
}

/// Reads the whole message once (`chainmail_qmail::message::facts`), after
/// making sure it can be read again.
fn scan_message() -> Result<MessageFacts, Final> {
    make_message_seekable()?;
    chainmail_qmail::message::facts(std::io::stdin().as_fd())
}

/// The TLS policies of the passes over the addresses, from
/// `control/tlsstrictness` and `control/trustanchors`.
fn passes(control: &Control) -> Result<Vec<TlsPolicy>, Final> {
    control.tls_passes().map_err(|e| Final::custom(Disposition::Deferred, format!("{e}. (#4.3.0)\n").as_bytes()))
}

/// The most connections one delivery opens (refused and timed-out ones
/// included; addresses skipped for tcpto are not counted). With
/// `timeoutconnect` 60 that bounds the connecting to ten minutes, however
/// many addresses the DNS gives; see doc/qmail-remote.md, Limits.
pub const MAX_CONNECTION_ATTEMPTS: usize = 10;

fn describe(t: &Target) -> String {
    chainmail_qmail::report::fmt_ip(t.ip)
}

/// Tries the targets, pass after pass, until one gives a final report, or
/// until [`MAX_CONNECTION_ATTEMPTS`] connections were made.
fn deliver(job: &Job<'_>, targets: &[Target], cut: Cut) -> Vec<u8> {
    let passes = match passes(job.control) {
        Ok(p) => p,
        Err(f) => return report_of(f),
    };
    let tcpto = Tcpto::new(&job.control.home);
    let pid = std::process::id();
    let mut notes: Vec<String> = Vec::new();
    // Targets that talked SMTP but not TLS, for the plaintext pass of
    // tlsstrictness 1.
    let mut without_tls: Vec<&Target> = Vec::new();
    let mut attempts = 0usize;
    let mut not_tried = 0usize;
    for (pass, policy) in passes.iter().enumerate() {
        let list: Vec<&Target> = if pass == 0 { targets.iter().collect() } else { std::mem::take(&mut without_tls) };
        for target in list {
            if pass == 0 && tcpto.should_skip(target.ip, unix_now(), pid).unwrap_or(false) {
                notes.push(format!("{}: skipped, it timed out recently", describe(target)));
                continue;
            }
            let mut policy = policy.clone();
            // At most two dialogues per address: a failed opportunistic
            // handshake is retried once in plaintext.
            for _ in 0..2 {
                if attempts == MAX_CONNECTION_ATTEMPTS {
                    not_tried += 1;
                    break;
                }
                attempts += 1;
                let sock = match connect_within(target.ip, target.port, job.control.timeout_connect) {
                    Ok(s) => {
                        let _ = tcpto.record(target.ip, unix_now(), false);
                        s
                    }
                    Err(e) => {
                        let _ = tcpto.record(target.ip, unix_now(), matches!(e, ConnectError::TimedOut));
                        notes.push(format!("{}: {e}", describe(target)));
                        break;
                    }
                };
                match attempt::run(job, target, &policy, sock) {
                    Attempted::Final(out) => return out,
                    Attempted::Next(why) => notes.push(why),
                    Attempted::NoStartTls(why) => {
                        notes.push(why);
                        without_tls.push(target);
                    }
                    Attempted::TlsFailed(why) => {
                        notes.push(why);
                        if policy == TlsPolicy::Opportunistic {
                            // tlsstrictness 0: a failed handshake falls back
                            // to plaintext, not to a deferral.
                            policy = TlsPolicy::Off;
                            continue;
                        }
                        without_tls.push(target);
                    }
                }
                break;
            }
        }
    }
    let mut text = String::from("Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n");
    if matches!(passes.as_slice(), [TlsPolicy::RequireVerified(_)]) && !notes.is_empty() {
        text.push_str("(tlsstrictness 2: only servers with verified TLS are used)\n");
    }
    for n in notes.iter().take(12) {
        text.push_str(n);
        text.push('\n');
    }
    if not_tried > 0 {
        text.push_str(&format!(
            "{not_tried} more addresses were not tried: qmail-remote makes at most {MAX_CONNECTION_ATTEMPTS} connections per delivery.\n"
        ));
    }
    if cut.exchangers > 0 {
        text.push_str(&format!(
            "{} more mail exchangers were ignored: qmail-remote uses at most {} per domain.\n",
            cut.exchangers,
            chainmail_dns::MAX_EXCHANGERS
        ));
    }
    if cut.addresses > 0 {
        text.push_str(&format!(
            "{} more addresses were ignored: qmail-remote uses at most {} of each family per exchanger.\n",
            cut.addresses,
            chainmail_dns::MAX_ADDRESSES_PER_FAMILY
        ));
    }
    report_of(Final::custom(Disposition::Deferred, text.as_bytes()))
}

/// Refuses, before any connection, an envelope that cannot be sent: a
/// sender or every recipient with bytes that would break an SMTP command.
/// (qmail-remote-io refuses single invalid recipients in their place.)
fn check_envelope(sender: &OsString, recipients: &[OsString]) -> Result<(), Vec<u8>> {
    if let Err(e) = encode_sender(sender.as_bytes()) {
        return Err(report_of(Final::invalid_sender(&e.to_string())));
    }
    let invalid: Vec<String> =
        recipients.iter().filter_map(|r| encode_recipient(r.as_bytes()).err()).map(|e| e.to_string()).collect();
    if invalid.len() == recipients.len() {
        let mut r = Report::new();
        for why in &invalid {
            r.recipient_invalid(why);
        }
        r.conclude(Final::no_valid_recipient());
        return Err(r.finish());
    }
    Ok(())
}

fn run(args: &[OsString]) -> Vec<u8> {
    let [host, sender, recipients @ ..] = args else {
        return report_of(Final::usage());
    };
    if recipients.is_empty() {
        return report_of(Final::usage());
    }
    if let Err(report) = check_envelope(sender, recipients) {
        return report;
    }
    let home = match chainmail_qmail::home::qmail_home_of_process() {
        Ok(h) => h,
        Err(e) => {
            return report_of(Final::custom(
                Disposition::Deferred,
                format!("Unable to find the qmail home: {e}. (#4.3.0)\n").as_bytes(),
            ));
        }
    };
    if std::env::set_current_dir(&home).is_err() {
        return report_of(Final::no_home());
    }
    // Before any DNS query or connection.
    let program = match attempt::io_program() {
        Ok(p) => p,
        Err(why) => {
            let text = format!("Unable to run qmail-remote-io: {why}; nothing was sent. (#4.3.0)\n");
            return report_of(Final::custom(Disposition::Deferred, text.as_bytes()));
        }
    };
    let control = match Control::load(&home) {
        Ok(c) => c,
        Err(_) => return report_of(Final::unreadable_control()),
    };
    let facts = match scan_message() {
        Ok(f) => f,
        Err(f) => return report_of(f),
    };
    let (targets, cut) = match plan::plan(host.as_bytes(), &control) {
        Ok(t) => t,
        Err(f) => return report_of(f),
    };
    let job = Job { control: &control, facts, sender, recipients, program: &program };
    deliver(&job, &targets, cut)
}

fn main() -> ExitCode {
    // qmail-rspawn reads fd 2 as part of the report: a panic must not print
    // anything. The abort (a signal) makes qmail-rspawn report
    // "Zqmail-remote crashed."
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let out = run(&args);
    // One write(2) on fd 1 (std's stdout is line-buffered and would cut
    // the report at its newlines): the report is complete or absent.
    let _ = chainmail_sys::fd::write_all(&std::io::stdout().as_fd(), &out);
    ExitCode::SUCCESS
}
