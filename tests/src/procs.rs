//! The processes of a process group, read from `/proc`.

use std::time::{Duration, Instant};

/// One process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its id.
    pub pid: i32,
    /// Its parent.
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
    /// The kernel's name for it (`comm`, at most 15 bytes of the name of
    /// the program it last exec'd).
    pub comm: String,
    /// The state letter (`R`, `S`, `Z`…).
    pub state: char,
}

/// Reads `/proc/PID/stat`.
pub fn stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...; comm may contain spaces and parens.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(Proc { pid, ppid, pgrp, comm, state })
}

/// The live (non-zombie) members of process group `pgid`, except `pgid`
/// itself.
///
/// Zombies are left out: in a UCSPI chain a process that exits is reaped
/// by its parent only when the parent gets round to it (the TLS engine's
/// parent becomes the smtpd, which never waits), so a zombie holds nothing
/// but a process table slot.
pub fn group_members(pgid: i32) -> Vec<Proc> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut v: Vec<Proc> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != pgid)
        .filter_map(stat)
        .filter(|p| p.pgrp == pgid && p.state != 'Z' && p.state != 'X')
        .collect();
    v.sort_by_key(|p| p.pid);
    v
}

/// Waits until no member of `pgid` (other than itself) satisfies `pred`;
/// `Err` with those that still do after `limit`.
pub fn wait_until_none(pgid: i32, limit: Duration, pred: impl Fn(&Proc) -> bool) -> Result<(), Vec<Proc>> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<Proc> = group_members(pgid).into_iter().filter(|p| pred(p)).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(left);
        }
        // Bounded polling of /proc.
        std::thread::sleep(Duration::from_millis(10));
    }
}
