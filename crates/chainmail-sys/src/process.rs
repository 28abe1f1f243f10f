//! Forking, exec-ing into the next program of a chain, and dropping root.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::unistd::{Gid, Pid, Uid};
use thiserror::Error;

use crate::cli::{SysError, sys};

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

/// `fork(2)`, refused (an error) unless this process has a single thread.
///
/// After a fork in a multi-threaded process, locks held by other threads
/// (the allocator's, stdout's) would stay locked forever in the child;
/// every chainmail binary forks at start-up, before anything could start a
/// thread. The check reads `Threads:` in `/proc/self/status`; only this
/// thread could start another one, so it cannot change before the fork.
pub fn fork() -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!("refusing to fork a process with {threads} threads")));
    }
    // SAFETY: the process has one thread (checked above, and only this
    // thread could start another), so the child inherits no lock held by
    // another thread.
    #[allow(unsafe_code)]
    let r = unsafe { nix::unistd::fork() };
    match r {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent { child }),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// The number of threads of this process, from `/proc/self/status`.
fn thread_count() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no thread count in /proc/self/status"))
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
    /// One of the two is set without the other: a drop to a user that
    /// keeps group 0 (or to a group that keeps uid 0) is no drop.
    #[error("{set} is set but {missing} is not: set both (or neither) to drop privileges")]
    HalfConfigured {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl PrivError {
    /// Whether the configuration is wrong (exit 100), as opposed to a
    /// system call that failed (111).
    pub fn is_config(&self) -> bool {
        !matches!(self, PrivError::Sys(_))
    }
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

/// The ids a TLS engine drops to, from `TLS_UID` and `TLS_GID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsIds {
    /// The user.
    pub uid: Uid,
    /// The group, which is also the only supplementary group.
    pub gid: Gid,
}

impl TlsIds {
    /// Reads `TLS_UID` and `TLS_GID`: `None` when neither is set; an error
    /// when one is set without the other, or either is not a number. Meant
    /// for start-up, so that a bad configuration stops the program before
    /// any session.
    pub fn from_env() -> Result<Option<TlsIds>, PrivError> {
        TlsIds::from_values(id_var("TLS_UID")?, id_var("TLS_GID")?)
    }

    fn from_values(uid: Option<u32>, gid: Option<u32>) -> Result<Option<TlsIds>, PrivError> {
        match (uid, gid) {
            (None, None) => Ok(None),
            (Some(u), Some(g)) => Ok(Some(TlsIds { uid: Uid::from_raw(u), gid: Gid::from_raw(g) })),
            (Some(_), None) => Err(PrivError::HalfConfigured { set: "TLS_UID", missing: "TLS_GID" }),
            (None, Some(_)) => Err(PrivError::HalfConfigured { set: "TLS_GID", missing: "TLS_UID" }),
        }
    }

    /// Drops root privileges completely: the supplementary groups become
    /// the gid alone, then the real, effective and saved gid and uid are
    /// set; then it checks that there is no way back. Does nothing when
    /// the process does not run as root (it has nothing to drop).
    pub fn drop_privileges(self) -> Result<(), PrivError> {
        if !Uid::effective().is_root() {
            return Ok(());
        }
        let failed = |what| move |e: nix::Error| PrivError::from(sys(what)(io::Error::from_raw_os_error(e as i32)));
        nix::unistd::setgroups(&[self.gid]).map_err(failed("set the supplementary groups"))?;
        nix::unistd::setgid(self.gid).map_err(failed("setgid"))?;
        nix::unistd::setuid(self.uid).map_err(failed("setuid"))?;
        // A drop that left a way back, or an id behind, would be worse
        // than failing: check that it is complete.
        let groups = nix::unistd::getgroups().map_err(failed("read the supplementary groups"))?;
        let complete = Uid::current() == self.uid
            && Uid::effective() == self.uid
            && Gid::current() == self.gid
            && Gid::effective() == self.gid
            && groups.iter().all(|&g| g == self.gid)
            && (self.uid.is_root() || nix::unistd::setuid(Uid::from_raw(0)).is_err());
        if !complete {
            return Err(sys("drop root privileges")(io::Error::from_raw_os_error(libc::EPERM)).into());
        }
        Ok(())
    }
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
    fn half_a_drop_is_refused() {
        let ids = |u: Option<u32>, g: Option<u32>| TlsIds::from_values(u, g);
        assert!(matches!(ids(None, None), Ok(None)));
        assert_eq!(
            ids(Some(7), Some(8)).expect("both").expect("some"),
            TlsIds { uid: Uid::from_raw(7), gid: Gid::from_raw(8) }
        );
        for (u, g) in [(Some(7), None), (None, Some(8))] {
            let e = ids(u, g).expect_err("half");
            assert!(e.is_config());
            assert!(e.to_string().contains("set both"), "{e}");
        }
    }

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

    /// `fork` was a safe function whose soundness was the caller's duty
    /// (a single thread): it is refused with a second thread.
    #[test]
    fn no_fork_with_two_threads() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        match fork() {
            Err(e) => assert!(e.to_string().contains("threads"), "{e}"),
            Ok(Forked::Child) => std::process::exit(0),
            Ok(Forked::Parent { child }) => {
                let _ = nix::sys::wait::waitpid(child, None);
                panic!("forked with two threads");
            }
        }
        drop(tx);
        let _ = other.join();
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
