//! Processes from `/proc`: the tree under a server, their CPU time and
//! their memory.
//!
//! A UCSPI chain re-parents its processes as it goes (ucspi-tlsd's TLS
//! engine is the child of the process that becomes the smtpd), so the
//! per-session processes are found as the descendants of the server
//! (tcpserver, or stunnel), by `ppid`, at the moment of the measurement.

use std::collections::HashMap;
use std::fs;

pub use chainmail_tests::procs::{Proc, stat};

/// Every live (non-zombie) process.
pub fn all() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .filter(|p| p.state != 'Z' && p.state != 'X')
        .collect()
}

/// The live descendants of `root` (not `root` itself), sorted by pid.
pub fn descendants(root: i32) -> Vec<Proc> {
    let procs = all();
    let mut children: HashMap<i32, Vec<&Proc>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<Proc> = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for c in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            out.push((*c).clone());
            todo.push(c.pid);
        }
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// The processes a measurement covers: the descendants of `root` whose
/// `comm` is not in `exclude`, plus `root` itself when `include_root`.
pub fn selection(root: i32, include_root: bool, exclude: &[String]) -> Vec<Proc> {
    let mut v: Vec<Proc> = descendants(root).into_iter().filter(|p| !exclude.contains(&p.comm)).collect();
    if include_root {
        if let Some(p) = stat(root) {
            v.insert(0, p);
        }
    }
    v
}

/// CPU time from `/proc/PID/stat`, in seconds: the process's own (user +
/// system, all its threads), and that of its waited-for children (user +
/// system). The kernel counts in USER_HZ (100 per second on Linux).
pub fn times(pid: i32) -> Option<(f64, f64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // From the state (index 0): utime 11, stime 12, cutime 13, cstime 14.
    let tick = |i: usize| -> Option<f64> { Some(f.get(i)?.parse::<u64>().ok()? as f64 / 100.0) };
    Some((tick(11)? + tick(12)?, tick(13)? + tick(14)?))
}

/// Nanoseconds a process has run on a CPU (user and system), summed over
/// its live threads (`/proc/PID/task/TID/schedstat`, first field). More
/// precise than the clock ticks of `/proc/PID/stat`. `None` when the
/// process is gone.
pub fn cpu_ns(pid: i32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let Ok(s) = fs::read_to_string(t.path().join("schedstat")) else { continue };
        if let Some(ns) = s.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// The memory figures of `/proc/PID/smaps_rollup`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set.
    pub rss: u64,
    /// Proportional set: each resident page divided by the number of
    /// processes mapping it.
    pub pss: u64,
    /// The anonymous part of the PSS (heap, stacks, copied-on-write data).
    pub pss_anon: u64,
    /// The file-backed part of the PSS (code, read-only data).
    pub pss_file: u64,
    /// Pages mapped by this process only.
    pub private: u64,
}

impl Memory {
    /// Adds another process's figures.
    pub fn add(&mut self, o: &Memory) {
        self.rss += o.rss;
        self.pss += o.pss;
        self.pss_anon += o.pss_anon;
        self.pss_file += o.pss_file;
        self.private += o.private;
    }
}

/// Reads `/proc/PID/smaps_rollup`.
pub fn memory(pid: i32) -> Option<Memory> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut m = Memory::default();
    for line in s.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else { continue };
        let Ok(kib) = val.parse::<u64>() else { continue };
        match key {
            "Rss:" => m.rss = kib,
            "Pss:" => m.pss = kib,
            "Pss_Anon:" => m.pss_anon = kib,
            "Pss_File:" => m.pss_file = kib,
            "Private_Clean:" | "Private_Dirty:" => m.private += kib,
            _ => {}
        }
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let p = stat(me).expect("own stat");
        assert_eq!(p.pid, me);
        assert!(cpu_ns(me).is_some());
        let m = memory(me).expect("own smaps_rollup");
        assert!(m.pss > 0 && m.rss >= m.pss);
        assert!(descendants(p.ppid).iter().any(|c| c.pid == me));
    }
}
