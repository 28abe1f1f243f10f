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

/// Gives back the pages of this process's read-only file mappings (its
/// code, its libraries' code, their constant data) that it has not
/// modified. Returns how many bytes of mappings were released.
///
/// A TLS engine touches a lot of code once (the handshake; with the
/// kernel's fault-around, every 64 KiB block near the code it runs) and
/// then, once its session is idle, needs none of it. The released pages
/// stay in the page cache, shared with every other process: what runs
/// again is mapped again by a minor fault. Meant for a process that has
/// been idle for a while, not for a hot path: it reads `/proc/self/smaps`,
/// which costs the kernel a walk of the page tables.
///
/// Only mappings that are private, not writable, backed by a file and
/// without a single copied-on-write page ("Anonymous: 0 kB") are dropped,
/// so that no modified page (relocations) can be lost: for those the
/// kernel's `MADV_DONTNEED` only removes the page table entries.
pub fn release_clean_file_pages() -> io::Result<usize> {
    use std::io::BufRead;
    let file = std::fs::File::open("/proc/self/smaps")?;
    // A small buffer and one reused line: reading the whole file into a
    // string would leave its size in the heap.
    let mut reader = std::io::BufReader::with_capacity(4096, file);
    let mut line = String::with_capacity(128);
    let mut found: Vec<(usize, usize)> = Vec::with_capacity(16);
    let mut parser = SmapsParser::default();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(m) = parser.line(&line) {
            found.push(m);
        }
    }
    drop(reader);
    let mut released = 0;
    for (start, len) in found {
        let Some(addr) = std::ptr::NonNull::new(start as *mut std::ffi::c_void) else { continue };
        // SAFETY: the range is a whole mapping of this process whose pages
        // are all identical to the file they map (no anonymous pages) and
        // which cannot be written; dropping its page table entries only
        // makes the next access fault the same bytes back in.
        #[allow(unsafe_code)]
        let r = unsafe { nix::sys::mman::madvise(addr, len, nix::sys::mman::MmapAdvise::MADV_DONTNEED) };
        if r.is_ok() {
            released += len;
        }
    }
    Ok(released)
}

/// Picks, line by line, the mappings of a `/proc/PID/smaps` text that
/// [`release_clean_file_pages`] may drop.
#[derive(Debug, Default)]
struct SmapsParser {
    /// The current mapping, if it is a candidate: `(start, length)`.
    current: Option<(usize, usize)>,
}

impl SmapsParser {
    /// Takes one line; returns a mapping once it is known to qualify.
    fn line(&mut self, line: &str) -> Option<(usize, usize)> {
        let mut fields = line.split_ascii_whitespace();
        let first = fields.next()?;
        if first == "Anonymous:" {
            let anon: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            let m = self.current.take()?;
            return (anon == 0).then_some(m);
        }
        // A mapping's header: "start-end perms offset dev inode [path]".
        let (a, b) = first.split_once('-')?;
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            return None;
        };
        let perms = fields.next().unwrap_or("").as_bytes();
        let inode = fields.nth(2).unwrap_or("0");
        let path = fields.next().unwrap_or("");
        let eligible =
            perms.len() == 4 && perms[1] == b'-' && perms[3] == b'p' && inode != "0" && path.starts_with('/');
        self.current = eligible.then_some((start, end - start));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_read_only_file_mappings() {
        let smaps = "\
55c258f2c000-55c259009000 r--p 00000000 fe:00 5374646 /usr/bin/prog
Rss:                 320 kB
Anonymous:             0 kB
55c259009000-55c25929a000 r-xp 000dc000 fe:00 5374646 /usr/bin/prog
Anonymous:             0 kB
55c25929a000-55c2592ac000 r--p 0036c000 fe:00 5374646 /usr/bin/prog
Anonymous:            72 kB
55c2592ac000-55c2592ad000 rw-p 0037e000 fe:00 5374646 /usr/bin/prog
Anonymous:             4 kB
55c2889b0000-55c2889d1000 rw-p 00000000 00:00 0 [heap]
Anonymous:           132 kB
7f48e74ad000-7f48e7603000 r-xp 00026000 fe:00 326279 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7ffc027de000-7ffc027ff000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f48e7700000-7f48e7701000 r--s 00000000 fe:00 1234 /some/shared
Anonymous:             0 kB
";
        let mut p = SmapsParser::default();
        let got: Vec<(usize, usize)> = smaps.lines().filter_map(|l| p.line(l)).collect();
        assert_eq!(
            got,
            vec![
                (0x55c2_58f2_c000, 0x55c2_5900_9000 - 0x55c2_58f2_c000),
                (0x55c2_5900_9000, 0x55c2_5929_a000 - 0x55c2_5900_9000),
                (0x7f48_e74a_d000, 0x7f48_e760_3000 - 0x7f48_e74a_d000),
            ]
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        // After dropping every clean file page, code and constants are
        // faulted back in transparently.
        let released = release_clean_file_pages().expect("smaps");
        assert!(released > 0);
        let text = format!("{:?}", (1..100).map(|i| i * 3).collect::<Vec<u32>>());
        assert!(text.starts_with("[3, 6, 9"));
    }
}
