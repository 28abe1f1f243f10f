//! `-s DIR`: upstreams that failed, shared by every instance. A failed
//! upstream is a file named after it in DIR; it is bad while the file is
//! younger than `-b` seconds, and its file is removed when it works again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use chainmail_socks::upstream::Upstream;

#[derive(Debug)]
pub struct BadMarks {
    dir: Option<PathBuf>,
    bad_for: Duration,
}

impl BadMarks {
    pub fn new(dir: Option<&Path>, bad_for: Duration) -> BadMarks {
        BadMarks { dir: dir.map(Path::to_owned), bad_for }
    }

    fn path(&self, u: &Upstream) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(u.state_key()))
    }

    pub fn is_bad(&self, u: &Upstream) -> bool {
        let Some(p) = self.path(u) else { return false };
        let Ok(m) = std::fs::metadata(&p).and_then(|m| m.modified()) else { return false };
        SystemTime::now().duration_since(m).map_or(true, |age| age < self.bad_for)
    }

    /// Good upstreams in their order, then the bad ones in theirs.
    pub fn order<'a>(&self, list: &'a [Upstream]) -> Vec<&'a Upstream> {
        let (mut good, bad): (Vec<&Upstream>, Vec<&Upstream>) = list.iter().partition(|u| !self.is_bad(u));
        good.extend(bad);
        good
    }

    pub fn mark_bad(&self, u: &Upstream) {
        if let Some(p) = self.path(u) {
            // Unique per process and per call: in listener mode several
            // sessions of one process may mark at the same time.
            static CALLS: AtomicU64 = AtomicU64::new(0);
            let n = CALLS.fetch_add(1, Ordering::Relaxed);
            let tmp = p.with_extension(format!("tmp{}.{n}", std::process::id()));
            if std::fs::write(&tmp, u.to_string()).is_ok() && std::fs::rename(&tmp, &p).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    pub fn mark_good(&self, u: &Upstream) {
        if let Some(p) = self.path(u) {
            let _ = std::fs::remove_file(p);
        }
    }
}
