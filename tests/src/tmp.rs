//! A scratch directory per test.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::certs::Certs;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory of its own for one test, under `CHAINMAIL_TEST_TMPDIR` or
/// the system's temporary directory. Removed on drop when the test passed;
/// kept (and its path printed) when the test is panicking, for inspection.
///
/// The directory is mode 0755 so that peers which drop privileges (exim's
/// delivery process) can reach what the test puts inside.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    certs: OnceCell<Certs>,
}

impl TestDir {
    /// Creates a fresh directory named after `name` (the test's name).
    pub fn new(name: &str) -> TestDir {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let base = std::env::var_os("CHAINMAIL_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("chainmail-tests"));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&base)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
        let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{name}-{}-{n}", std::process::id()));
            match std::fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {
                    // The umask may have removed bits; the mode matters here.
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
                    return TestDir { path, certs: OnceCell::new() };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// The test certificates, written into `certs/` on first use.
    pub fn certs(&self) -> &Certs {
        self.certs.get_or_init(|| Certs::install(&self.path.join("certs")))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping {} for inspection", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: cannot remove {}: {e}", self.path.display());
        }
    }
}
