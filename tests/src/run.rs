//! External programs with a time limit and captured output.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What a program did.
#[derive(Debug)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// How it ended (after being killed, when `timed_out`).
    pub status: ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr.
    pub stderr: Vec<u8>,
    /// Whether it was killed for running past the limit.
    pub timed_out: bool,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Output {
    /// Exited 0 within the limit.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }

    /// The exit code, `None` when killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// stdout and stderr together, for searching.
    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout_str(), self.stderr_str())
    }

    /// Everything about the run, for assertion messages.
    pub fn describe(&self) -> String {
        let how = if self.timed_out {
            format!("killed after the time limit ({:?})", self.elapsed)
        } else if let Some(sig) = self.status.signal() {
            format!("killed by signal {sig} after {:?}", self.elapsed)
        } else {
            format!("exit {} after {:?}", self.status.code().unwrap_or(-1), self.elapsed)
        };
        format!(
            "`{}`: {how}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            crate::show(&self.stdout),
            crate::show(&self.stderr)
        )
    }
}

/// Runs `cmd` with `stdin` as its input (then EOF), capturing stdout and
/// stderr, and kills it (its whole process group) if it runs longer than
/// `limit`. Panics only when the program cannot be started.
pub fn run(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Output {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let pid = Pid::from_raw(child.id() as i32);

    let mut input = child.stdin.take().expect("stdin is piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The program may exit without reading everything: not our problem.
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut err = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });

    let deadline = start + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => panic!("cannot wait for {command}: {e}"),
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = killpg(pid, Signal::SIGKILL);
            break child.wait().unwrap_or_else(|e| panic!("cannot wait for {command}: {e}"));
        }
        // Bounded polling of the exit status, not a synchronisation sleep.
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    // Children the program left behind in its group would keep the pipes
    // open: end them too, so that the readers finish.
    let _ = killpg(pid, Signal::SIGKILL);
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Output { command, status, stdout, stderr, timed_out, elapsed }
}
