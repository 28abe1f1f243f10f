//! `exim4 -bs` as the SMTP server behind the chain.
//!
//! The configuration comes from `peers/exim4.conf.in`: spool, logs and
//! mailbox in a directory of the test, every sender and recipient
//! accepted, every message appended to one mailbox file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::{Group, Uid, User, chown};

use crate::{TestDir, find_program};

const TEMPLATE: &str = include_str!("../peers/exim4.conf.in");

/// An exim set up in a test directory.
#[derive(Debug)]
pub struct Exim {
    /// The configuration file.
    pub config: PathBuf,
    /// The mailbox every message goes to.
    pub mailbox: PathBuf,
    /// Exim's own directory (spool, logs, mailbox).
    pub dir: PathBuf,
}

impl Exim {
    /// Prepares `exim/` in `dir`. As root, exim runs as `Debian-exim`, which
    /// then owns the directory; otherwise as the user running the tests.
    pub fn setup(dir: &TestDir) -> Exim {
        let root = dir.join("exim");
        for sub in ["", "spool", "log"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
        }
        let (user, group) = if Uid::effective().is_root() {
            let u = User::from_name("Debian-exim")
                .ok()
                .flatten()
                .expect("user Debian-exim not found: install exim4-daemon-light (tests/run does it)");
            let g = Group::from_gid(u.gid).ok().flatten().expect("the group of Debian-exim");
            for sub in ["", "spool", "log"] {
                chown(&root.join(sub), Some(u.uid), Some(u.gid)).expect("chown the exim directories");
            }
            (u.name, g.name)
        } else {
            let u = User::from_uid(Uid::effective()).ok().flatten().expect("the current user");
            let g = Group::from_gid(u.gid).ok().flatten().expect("the current group");
            (u.name, g.name)
        };
        let text = TEMPLATE
            .replace("@DIR@", root.to_str().expect("test directory path is UTF-8"))
            .replace("@USER@", &user)
            .replace("@GROUP@", &group);
        // Outside exim's directory: exim insists that only root (or its own
        // user) can write its configuration.
        let config = dir.join("exim4.conf");
        std::fs::write(&config, text).expect("write the exim configuration");
        Exim { config, mailbox: root.join("mailbox"), dir: root }
    }

    /// The command line of an SMTP session on stdin/stdout.
    pub fn argv(&self) -> Vec<OsString> {
        vec![
            find_program("exim4").into_os_string(),
            "-C".into(),
            self.config.clone().into_os_string(),
            "-bs".into(),
            "-odi".into(),
            "-oMa".into(),
            "127.0.0.1".into(),
            "-oMs".into(),
            "client.test".into(),
        ]
    }

    /// The mailbox so far (empty when nothing was delivered).
    pub fn mailbox_content(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.mailbox).unwrap_or_default()).into_owned()
    }

    /// Exim's main log and panic log, for messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.join("log").join(n)).unwrap_or_default();
        format!("--- mainlog ---\n{}--- paniclog ---\n{}", read("mainlog"), read("paniclog"))
    }

    /// Waits until the mailbox contains `needle` (delivery may finish just
    /// after the 250); panics with the logs after `limit`.
    pub fn wait_delivered(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.mailbox_content();
            if m.contains(needle) {
                return m;
            }
            if Instant::now() >= deadline {
                panic!("{needle:?} not delivered within {limit:?}\n--- mailbox ---\n{m}\n{}", self.logs());
            }
            // Bounded polling of the mailbox.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
