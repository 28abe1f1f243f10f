//! Diagnostics in the skarnet form: `prog: fatal: unable to X: cause`.
//!
//! Every binary sets its name once with [`set_program`]; messages then go
//! to stderr as one `write(2)` each, so that lines from several processes
//! of one chain never interleave inside a line.

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

static PROGRAM: OnceLock<&'static str> = OnceLock::new();

/// Records the program name used as the prefix of every message.
pub fn set_program(name: &'static str) {
    let _ = PROGRAM.set(name);
}

/// The program name given to [`set_program`], or `chainmail`.
pub fn program() -> &'static str {
    PROGRAM.get().copied().unwrap_or("chainmail")
}

fn emit(level: &str, args: fmt::Arguments<'_>) {
    let line = format!("{}: {}: {}\n", program(), level, args);
    // One write: a short line to stderr is atomic for pipes.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints `prog: fatal: ...`.
pub fn fatal(args: fmt::Arguments<'_>) {
    emit("fatal", args);
}

/// Prints `prog: usage: ...`.
pub fn usage(args: fmt::Arguments<'_>) {
    emit("usage", args);
}

/// Prints `prog: warning: ...`.
pub fn warn(args: fmt::Arguments<'_>) {
    emit("warning", args);
}

/// Prints `prog: info: ...`.
pub fn info(args: fmt::Arguments<'_>) {
    emit("info", args);
}

/// Makes a panic end the process at once with a one-line message.
///
/// With `panic = "abort"` in the profiles this is what happens anyway;
/// the hook keeps the message short and guarantees the abort for the test
/// profile too. An aborted process closes all its descriptors, so the peer
/// sees the connection end instead of a half-open session.
pub fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_owned());
        fatal(format_args!("internal error{location}: {payload}"));
        std::process::abort();
    }));
}
