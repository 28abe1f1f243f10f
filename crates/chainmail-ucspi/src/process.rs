//! Forking, exec-ing into the next program of a chain, and dropping root.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};
use thiserror::Error;

/// Which side of a `fork` we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The original process; `child` is the new one.
    Parent {
        /// The new process.
        child: Pid,
    },
    /// The new process.
    Child,
}

/// `fork(2)`.
///
/// Must only be called while the process has a single thread, which is
/// the case for every chainmail binary: they fork at start-up, before
/// anything could start a thread. After a fork in a multi-threaded
/// process, locks held by other threads would stay locked in the child.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: chainmail binaries are single-threaded when they fork (see
    // above), so the child inherits no lock held by another thread.
    #[allow(unsafe_code)]
    let r = unsafe { nix::unistd::fork() };
    match r {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent { child }),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Changes to make to the environment of the program we exec into.
#[derive(Debug, Default, Clone)]
pub struct EnvChanges {
    remove: Vec<OsString>,
    set: Vec<(OsString, OsString)>,
}

impl EnvChanges {
    /// No changes.
    pub fn new() -> EnvChanges {
        EnvChanges::default()
    }

    /// Removes `name`.
    pub fn remove(&mut self, name: impl Into<OsString>) -> &mut Self {
        self.remove.push(name.into());
        self
    }

    /// Removes every variable of the current environment for which
    /// `pred` holds.
    pub fn remove_matching(&mut self, pred: impl Fn(&OsStr) -> bool) -> &mut Self {
        for (name, _) in std::env::vars_os() {
            if pred(&name) {
                self.remove.push(name);
            }
        }
        self
    }

    /// Sets `name` to `value`.
    pub fn set(&mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> &mut Self {
        self.set.push((name.into(), value.into()));
        self
    }
}

/// Replaces the process with `argv[0]` (searched in `PATH`), with the
/// environment changed as `env` says. Only returns on failure.
///
/// The standard library resets `SIGPIPE` to its default disposition and
/// clears the signal mask before the exec, so the next program starts as
/// if run from a shell even though Rust ignores `SIGPIPE` for itself.
pub fn exec(argv: &[OsString], env: &EnvChanges) -> io::Error {
    let Some((prog, args)) = argv.split_first() else {
        return io::Error::new(io::ErrorKind::InvalidInput, "empty command line");
    };
    let mut cmd = Command::new(prog);
    cmd.args(args);
    for name in &env.remove {
        cmd.env_remove(name);
    }
    for (name, value) in &env.set {
        cmd.env(name, value);
    }
    cmd.exec()
}

/// A problem with `TLS_UID` / `TLS_GID`.
#[derive(Debug, Error)]
pub enum PrivError {
    /// Not a decimal number.
    #[error("{name} is not a valid numeric id: {value:?}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// A system call failed.
    #[error("unable to {what}: {source}")]
    Sys {
        /// What we tried.
        what: &'static str,
        /// The cause.
        source: io::Error,
    },
}

fn id_var(name: &'static str) -> Result<Option<u32>, PrivError> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    let s = value.to_str().unwrap_or("");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PrivError::Invalid { name, value: value.to_string_lossy().into_owned() });
    }
    s.parse::<u32>().map(Some).map_err(|_| PrivError::Invalid { name, value: s.to_owned() })
}

/// Drops root privileges to `TLS_UID` / `TLS_GID` when they are set and
/// the process runs as root; does nothing otherwise. The supplementary
/// groups are reduced to the new group. Returns the ids now in force.
pub fn drop_to_tls_ids() -> Result<(Uid, Gid), PrivError> {
    let uid = id_var("TLS_UID")?;
    let gid = id_var("TLS_GID")?;
    if Uid::effective().is_root() {
        let sys = |what| move |e: nix::Error| PrivError::Sys { what, source: io::Error::from_raw_os_error(e as i32) };
        if let Some(g) = gid {
            let g = Gid::from_raw(g);
            nix::unistd::setgroups(&[g]).map_err(sys("set supplementary groups"))?;
            nix::unistd::setgid(g).map_err(sys("setgid"))?;
        }
        if let Some(u) = uid {
            nix::unistd::setuid(Uid::from_raw(u)).map_err(sys("setuid"))?;
            // A setuid that left a way back to root would be worse than
            // failing: check that it is really gone.
            if u != 0 && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
                return Err(PrivError::Sys {
                    what: "drop root privileges",
                    source: io::Error::from_raw_os_error(libc::EPERM),
                });
            }
        }
    }
    Ok((Uid::effective(), Gid::effective()))
}
