//! Connection-timeout history: which addresses recently timed out, so that
//! qmail-remote does not wait on them again for every message.
//!
//! The rules are stock qmail's `tcpto.c`, as pure functions over a record
//! array ([`should_skip`], `update`) plus thin file I/O ([`Tcpto`]):
//!
//! * An address is skipped when its error count is at least 2 and its last
//!   error is less than `(60 + (pid & 31)) << 6` seconds old (3840 to 5824
//!   s; the pid spreads the retries of concurrent deliveries).
//! * After a connection attempt: a success or a failure other than a timeout
//!   resets the count of a known address to 0. A timeout less than 120 s
//!   after the last recorded one (while the count is not 0) is ignored;
//!   otherwise the count goes up by one (at most 10) and the time becomes
//!   now. An unknown address is only added on a timeout: into the first
//!   record whose count is 0, or else over the record with the smallest
//!   `when + (count << 10)`.
//!
//! Unlike skarnet's version, a missing file means "no history", never "skip
//! every address", and the times are plain Unix seconds, so that skipping
//! does happen.
//!
//! # Files
//!
//! IPv4: stock `$QMAILHOME/queue/lock/tcpto`, which qmail-rspawn creates
//! and clears at startup and `qmail-tcpto`/`qmail-tcpok` read and clear: 64
//! records of 16 bytes. Bytes 0–3: the address; byte 4: the error count;
//! bytes 8–11: the time of the last error, Unix seconds, 32-bit
//! little-endian; the rest is unused (written as 0). Like stock qmail we
//! only use the records the file holds (its length / 16, at most 64) and
//! never create or grow it: it belongs to the queue.
//!
//! IPv6: our own `$QMAILHOME/run/qmail-remote/tcpto6`, created on the first
//! timeout to record: 64 records of 32 bytes. Bytes 0–15: the address;
//! byte 16: the error count; bytes 17–23: unused (0); bytes 24–31: the time
//! of the last error, Unix seconds, 64-bit little-endian. A short or missing
//! file reads as if padded with empty records.
//!
//! An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) is an IPv4 address
//! here. Both files are locked with an exclusive `flock` on a descriptor
//! opened for reading and writing, like stock qmail's `lock_ex` on its write
//! descriptor. Only the changed record is written back.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

/// The IPv4 file, relative to the qmail home.
pub(crate) const TCPTO_PATH: &str = "queue/lock/tcpto";
/// The IPv6 file, in [`crate::RUN_DIR`].
pub(crate) const TCPTO6_NAME: &str = "tcpto6";
/// Records in each file.
pub(crate) const RECORDS: usize = 64;
/// Bytes per IPv4 record.
pub(crate) const RECORD4_LEN: usize = 16;
/// Bytes per IPv6 record.
pub(crate) const RECORD6_LEN: usize = 32;
/// The highest error count.
pub(crate) const MAX_COUNT: u8 = 10;
/// Timeouts closer than this to the last recorded one are not counted.
pub(crate) const DEDUP_SECONDS: u64 = 120;

/// One address's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record<A> {
    /// The address.
    pub ip: A,
    /// Consecutive timeouts, 0 to 10. A record with count 0 is free.
    pub count: u8,
    /// Unix time of the last counted timeout.
    pub when: u64,
}

/// How long an address with two or more timeouts is skipped, for a process
/// with id `pid`: `(60 + (pid & 31)) << 6` seconds.
pub(crate) fn skip_window(pid: u32) -> u64 {
    (60 + u64::from(pid & 31)) << 6
}

/// Whether to skip `ip` at time `now` in process `pid`. Only the first
/// record with the address counts. A last error in the future (the clock
/// went back) does not skip, as stock qmail's unsigned arithmetic does not.
pub fn should_skip<A: PartialEq>(records: &[Record<A>], ip: &A, now: u64, pid: u32) -> bool {
    match records.iter().find(|r| r.ip == *ip) {
        Some(r) if r.count >= 2 => now.checked_sub(r.when).is_some_and(|age| age < skip_window(pid)),
        _ => false,
    }
}

/// Records the result of a connection attempt to `ip` at time `now`:
/// `timed_out` is true only for a connect timeout. Returns the index of the
/// record to write back, if any changed.
pub(crate) fn update<A: PartialEq + Copy>(
    records: &mut [Record<A>],
    ip: A,
    now: u64,
    timed_out: bool,
) -> Option<usize> {
    if let Some(i) = records.iter().position(|r| r.ip == ip) {
        let r = &mut records[i];
        if !timed_out {
            r.count = 0;
        } else {
            if r.count != 0 && now < DEDUP_SECONDS.saturating_add(r.when) {
                return None;
            }
            r.count = r.count.saturating_add(1).min(MAX_COUNT);
            r.when = now;
        }
        return Some(i);
    }
    if !timed_out {
        return None;
    }
    let slot = records.iter().position(|r| r.count == 0).or_else(|| {
        // The first record with the smallest when + (count << 10).
        let mut best: Option<(usize, u64)> = None;
        for (i, r) in records.iter().enumerate() {
            let key = r.when.saturating_add(u64::from(r.count) << 10);
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((i, key));
            }
        }
        best.map(|(i, _)| i)
    })?;
    records[slot] = Record { ip, count: 1, when: now };
    Some(slot)
}

/// Decodes an IPv4 file: one record per whole 16 bytes, at most 64.
pub(crate) fn decode4(buf: &[u8]) -> Vec<Record<Ipv4Addr>> {
    buf.chunks_exact(RECORD4_LEN)
        .take(RECORDS)
        .map(|r| Record {
            ip: Ipv4Addr::new(r[0], r[1], r[2], r[3]),
            count: r[4],
            when: u64::from(u32::from_le_bytes([r[8], r[9], r[10], r[11]])),
        })
        .collect()
}

/// Encodes an IPv4 record. The time is truncated to 32 bits, as in stock
/// qmail.
pub(crate) fn encode4(r: &Record<Ipv4Addr>) -> [u8; RECORD4_LEN] {
    let mut b = [0; RECORD4_LEN];
    b[..4].copy_from_slice(&r.ip.octets());
    b[4] = r.count;
    b[8..12].copy_from_slice(&(r.when as u32).to_le_bytes());
    b
}

/// Decodes an IPv6 file, padded with empty records to 64.
pub(crate) fn decode6(buf: &[u8]) -> Vec<Record<Ipv6Addr>> {
    let mut records: Vec<_> = buf
        .chunks_exact(RECORD6_LEN)
        .take(RECORDS)
        .map(|r| {
            let mut ip = [0; 16];
            ip.copy_from_slice(&r[..16]);
            let mut when = [0; 8];
            when.copy_from_slice(&r[24..32]);
            Record { ip: Ipv6Addr::from(ip), count: r[16], when: u64::from_le_bytes(when) }
        })
        .collect();
    records.resize(RECORDS, Record::default_v6());
    records
}

/// Encodes an IPv6 record.
pub(crate) fn encode6(r: &Record<Ipv6Addr>) -> [u8; RECORD6_LEN] {
    let mut b = [0; RECORD6_LEN];
    b[..16].copy_from_slice(&r.ip.octets());
    b[16] = r.count;
    b[24..32].copy_from_slice(&r.when.to_le_bytes());
    b
}

impl Record<Ipv6Addr> {
    fn default_v6() -> Self {
        Record { ip: Ipv6Addr::UNSPECIFIED, count: 0, when: 0 }
    }
}

/// A tcpto file could not be used. qmail-remote goes on regardless: not
/// skipping, not recording.
#[derive(Debug, Error)]
pub enum TcptoError {
    /// Opening, locking, reading or writing the file failed.
    #[error("unable to {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The two history files of a qmail home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tcpto {
    v4: PathBuf,
    v6: PathBuf,
}

/// The current Unix time in seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

enum Family {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

fn family(ip: IpAddr) -> Family {
    match ip.to_canonical() {
        IpAddr::V4(a) => Family::V4(a),
        IpAddr::V6(a) => Family::V6(a),
    }
}

/// An open, locked history file and its content.
struct Locked {
    file: Flock<File>,
    content: Vec<u8>,
}

impl Tcpto {
    /// The files of the qmail home `home`.
    pub fn new(home: &Path) -> Tcpto {
        Tcpto { v4: home.join(TCPTO_PATH), v6: home.join(crate::RUN_DIR).join(TCPTO6_NAME) }
    }

    /// The IPv4 file.
    #[cfg(test)]
    pub(crate) fn v4_path(&self) -> &Path {
        &self.v4
    }

    /// The IPv6 file.
    #[cfg(test)]
    pub(crate) fn v6_path(&self) -> &Path {
        &self.v6
    }

    /// Opens and locks `path`; `Ok(None)` when it does not exist and is not
    /// to be created.
    fn open(path: &Path, create: bool) -> Result<Option<Locked>, TcptoError> {
        let err = |action| move |source| TcptoError::Io { action, path: path.to_path_buf(), source };
        let file = match OpenOptions::new().read(true).write(true).create(create).truncate(false).mode(0o644).open(path)
        {
            Ok(f) => f,
            Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err("open")(e)),
        };
        let mut file =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| err("lock")(io::Error::from(errno)))?;
        let mut content = Vec::new();
        (&mut *file).take((RECORDS * RECORD6_LEN) as u64).read_to_end(&mut content).map_err(err("read"))?;
        Ok(Some(Locked { file, content }))
    }

    fn write_back(&self, path: &Path, locked: &Locked, record: &[u8], index: usize) -> Result<(), TcptoError> {
        locked.file.write_all_at(record, (index * record.len()) as u64).map_err(|source| TcptoError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
    }

    /// Whether to skip `ip` now (see [`should_skip`]). A missing file means
    /// no history: `Ok(false)`.
    pub fn should_skip(&self, ip: IpAddr, now: u64, pid: u32) -> Result<bool, TcptoError> {
        match family(ip) {
            Family::V4(a) => {
                Ok(Self::open(&self.v4, false)?.is_some_and(|l| should_skip(&decode4(&l.content), &a, now, pid)))
            }
            Family::V6(a) => {
                Ok(Self::open(&self.v6, false)?.is_some_and(|l| should_skip(&decode6(&l.content), &a, now, pid)))
            }
        }
    }

    /// Records the result of a connection attempt (see `update`). A
    /// missing IPv4 file is left missing; the IPv6 file is created when a
    /// timeout is to be recorded.
    pub fn record(&self, ip: IpAddr, now: u64, timed_out: bool) -> Result<(), TcptoError> {
        match family(ip) {
            Family::V4(a) => {
                let Some(locked) = Self::open(&self.v4, false)? else {
                    return Ok(());
                };
                let mut records = decode4(&locked.content);
                if let Some(i) = update(&mut records, a, now, timed_out) {
                    self.write_back(&self.v4, &locked, &encode4(&records[i]), i)?;
                }
            }
            Family::V6(a) => {
                let Some(locked) = Self::open(&self.v6, timed_out)? else {
                    return Ok(());
                };
                let mut records = decode6(&locked.content);
                if let Some(i) = update(&mut records, a, now, timed_out) {
                    self.write_back(&self.v6, &locked, &encode6(&records[i]), i)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    type R = Record<u8>;

    fn rec(ip: u8, count: u8, when: u64) -> R {
        Record { ip, count, when }
    }

    #[test]
    fn window_by_pid() {
        assert_eq!(skip_window(0), 3840);
        assert_eq!(skip_window(31), 5824);
        assert_eq!(skip_window(32), 3840);
        assert_eq!(skip_window(12345), (60 + (12345 & 31)) << 6);
    }

    #[test]
    fn skip_table() {
        let now = 1_000_000;
        // (records, ip, pid, want)
        let cases: &[(&[R], u8, u32, bool)] = &[
            (&[], 1, 0, false),
            (&[rec(1, 1, now)], 1, 0, false),
            (&[rec(1, 2, now)], 1, 0, true),
            (&[rec(1, 10, now - 3839)], 1, 0, true),
            (&[rec(1, 10, now - 3840)], 1, 0, false),
            (&[rec(1, 2, now - 5823)], 1, 31, true),
            (&[rec(1, 2, now - 5824)], 1, 31, false),
            // Last error in the future: not skipped.
            (&[rec(1, 5, now + 10)], 1, 0, false),
            (&[rec(2, 5, now)], 1, 0, false),
            // The first record with the address decides.
            (&[rec(1, 0, now), rec(1, 5, now)], 1, 0, false),
        ];
        for (records, ip, pid, want) in cases {
            assert_eq!(should_skip(records, ip, now, *pid), *want, "{records:?} {ip} {pid}");
        }
    }

    #[test]
    fn update_known_address() {
        let now = 1_000_000;
        // (before, timed_out, want index, after)
        let cases: &[(R, bool, Option<usize>, R)] = &[
            // Success or another error resets the count, keeps the time.
            (rec(1, 5, 10), false, Some(0), rec(1, 0, 10)),
            (rec(1, 0, 10), false, Some(0), rec(1, 0, 10)),
            // A timeout within 120 s of the last is ignored...
            (rec(1, 3, now - 119), true, None, rec(1, 3, now - 119)),
            // ...unless the count is 0.
            (rec(1, 0, now - 1), true, Some(0), rec(1, 1, now)),
            (rec(1, 3, now - 120), true, Some(0), rec(1, 4, now)),
            (rec(1, 10, now - 500), true, Some(0), rec(1, 10, now)),
            // A last error in the future: ignored, as in stock qmail.
            (rec(1, 2, now + 50), true, None, rec(1, 2, now + 50)),
        ];
        for (before, timed_out, want, after) in cases {
            let mut records = [rec(9, 1, 0), *before];
            let got = update(&mut records, 1, now, *timed_out);
            assert_eq!(got, want.map(|i| i + 1), "{before:?} {timed_out}");
            assert_eq!(records[1], *after, "{before:?} {timed_out}");
            assert_eq!(records[0], rec(9, 1, 0));
        }
    }

    #[test]
    fn update_new_address() {
        let now = 5000;
        // Success for an unknown address changes nothing.
        let mut records = [rec(2, 0, 0), rec(3, 1, 0)];
        assert_eq!(update(&mut records, 1, now, false), None);
        assert_eq!(records, [rec(2, 0, 0), rec(3, 1, 0)]);

        // A timeout takes the first free record.
        let mut records = [rec(2, 1, 0), rec(3, 0, 7), rec(4, 0, 0)];
        assert_eq!(update(&mut records, 1, now, true), Some(1));
        assert_eq!(records[1], rec(1, 1, now));

        // No free record: the smallest when + (count << 10) goes, the first
        // one on ties.
        let mut records = [
            rec(2, 1, 3000), // 4024
            rec(3, 2, 1000), // 3048
            rec(4, 1, 2024), // 3048
            rec(5, 10, 0),   // 10240
        ];
        assert_eq!(update(&mut records, 1, now, true), Some(1));
        assert_eq!(records[1], rec(1, 1, now));

        // Nothing to evict in an empty table.
        let mut records: [R; 0] = [];
        assert_eq!(update(&mut records, 1, now, true), None);
    }

    #[test]
    fn record_formats_round_trip() {
        let r4 = Record { ip: Ipv4Addr::new(192, 0, 2, 1), count: 3, when: 0x6543_2100 };
        let b = encode4(&r4);
        assert_eq!(b, [192, 0, 2, 1, 3, 0, 0, 0, 0x00, 0x21, 0x43, 0x65, 0, 0, 0, 0]);
        assert_eq!(decode4(&b), vec![r4]);
        // Partial records are ignored, as in stock qmail.
        assert_eq!(decode4(&b[..15]), vec![]);
        assert_eq!(decode4(&[0; 2000]).len(), RECORDS);

        let r6 = Record { ip: "2001:db8::1".parse().expect("address"), count: 10, when: 1_700_000_000 };
        let b = encode6(&r6);
        assert_eq!(&b[..16], &r6.ip.octets());
        assert_eq!(b[16], 10);
        assert_eq!(&b[17..24], &[0; 7]);
        assert_eq!(&b[24..], &1_700_000_000u64.to_le_bytes());
        let decoded = decode6(&b);
        assert_eq!(decoded.len(), RECORDS);
        assert_eq!(decoded[0], r6);
        assert_eq!(decoded[1].count, 0);
    }

    fn home() -> (TempDir, Tcpto) {
        let dir = TempDir::new("tcpto");
        let t = Tcpto::new(dir.path());
        (dir, t)
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn absent_files_mean_no_history() {
        let (dir, t) = home();
        for ip in ["192.0.2.1", "2001:db8::1"] {
            assert!(!t.should_skip(v4(ip), 1000, 1).expect("skip"));
        }
        // Recording into an absent IPv4 file does not create it; neither
        // does a success for IPv6.
        t.record(v4("192.0.2.1"), 1000, true).expect("record");
        t.record(v4("2001:db8::1"), 1000, false).expect("record");
        assert!(!t.v4_path().exists());
        assert!(!t.v6_path().exists());
        // A missing run directory is an error the caller ignores.
        assert!(t.record(v4("2001:db8::1"), 1000, true).is_err());
        drop(dir);
    }

    #[test]
    fn stock_file_round_trip() {
        let (dir, t) = home();
        dir.write(TCPTO_PATH, &[0; 1024]);
        let ip = v4("192.0.2.1");
        let pid = 0;
        t.record(ip, 10_000, true).expect("record");
        assert!(!t.should_skip(ip, 10_001, pid).expect("skip"), "one timeout");
        // Within 120 s: ignored.
        t.record(ip, 10_100, true).expect("record");
        assert!(!t.should_skip(ip, 10_101, pid).expect("skip"));
        t.record(ip, 10_120, true).expect("record");
        assert!(t.should_skip(ip, 10_121, pid).expect("skip"), "two timeouts");
        assert!(t.should_skip(ip, 10_120 + 3839, pid).expect("skip"));
        assert!(!t.should_skip(ip, 10_120 + 3840, pid).expect("skip"));

        let content = std::fs::read(t.v4_path()).expect("read");
        assert_eq!(content.len(), 1024);
        assert_eq!(&content[..16], &encode4(&Record { ip: Ipv4Addr::new(192, 0, 2, 1), count: 2, when: 10_120 }));
        assert!(content[16..].iter().all(|&b| b == 0));

        // A success resets it.
        t.record(ip, 10_200, false).expect("record");
        assert!(!t.should_skip(ip, 10_201, pid).expect("skip"));
        assert_eq!(std::fs::read(t.v4_path()).expect("read")[4], 0);

        // IPv4-mapped addresses use the IPv4 file.
        let mapped = v4("::ffff:192.0.2.1");
        t.record(mapped, 20_000, true).expect("record");
        t.record(mapped, 20_200, true).expect("record");
        assert!(t.should_skip(ip, 20_201, pid).expect("skip"));
        assert!(!t.v6_path().exists());
    }

    #[test]
    fn stock_file_eviction() {
        let (dir, t) = home();
        // A full file: every record busy, record 17 the cheapest to evict.
        let mut content = Vec::new();
        for i in 0..RECORDS {
            let when = if i == 17 { 100 } else { 50_000 };
            content.extend_from_slice(&encode4(&Record { ip: Ipv4Addr::new(10, 0, 0, i as u8), count: 1, when }));
        }
        dir.write(TCPTO_PATH, &content);
        let ip = v4("192.0.2.99");
        t.record(ip, 60_000, true).expect("record");
        let after = decode4(&std::fs::read(t.v4_path()).expect("read"));
        assert_eq!(after[17], Record { ip: Ipv4Addr::new(192, 0, 2, 99), count: 1, when: 60_000 });
        assert_eq!(after.iter().filter(|r| r.ip.octets()[0] == 10).count(), 63);
    }

    #[test]
    fn empty_stock_file_records_nothing() {
        let (dir, t) = home();
        dir.write(TCPTO_PATH, b"");
        t.record(v4("192.0.2.1"), 1000, true).expect("record");
        assert_eq!(std::fs::read(t.v4_path()).expect("read"), b"");
    }

    #[test]
    fn ipv6_file_is_created_and_used() {
        let (dir, t) = home();
        dir.mkdir(crate::RUN_DIR);
        let a = v4("2001:db8::25");
        let b = v4("2001:db8::26");
        t.record(a, 1000, true).expect("record");
        t.record(b, 1000, true).expect("record");
        t.record(a, 1200, true).expect("record");
        assert!(t.should_skip(a, 1201, 7).expect("skip"));
        assert!(!t.should_skip(b, 1201, 7).expect("skip"));
        let content = std::fs::read(t.v6_path()).expect("read");
        assert_eq!(content.len(), 2 * RECORD6_LEN);
        let records = decode6(&content);
        assert_eq!(records[0].count, 2);
        assert_eq!(records[1].count, 1);
        t.record(a, 1300, false).expect("record");
        assert!(!t.should_skip(a, 1301, 7).expect("skip"));
    }
}
