//! Finding the binaries under test and the external programs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The directory holding the workspace's binaries.
///
/// `CHAINMAIL_BIN_DIR` when set; otherwise the cargo target directory of
/// the running test executable. A test executable lives in
/// `target/<profile>/deps/`, so the binaries are one level up.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAINMAIL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot find the path of the running test executable");
    let parent = exe.parent().expect("test executable has no parent directory");
    if parent.file_name() == Some(OsStr::new("deps")) {
        parent.parent().expect("deps directory has no parent").to_path_buf()
    } else {
        parent.to_path_buf()
    }
}

/// The path of the workspace binary `name`; panics with instructions when
/// it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let dir = bin_dir();
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found in {}: run `cargo build --workspace --bins` first \
             (or point CHAINMAIL_BIN_DIR at the directory holding it)",
            dir.display()
        );
    }
    path
}

/// Searches `PATH`, then the usual system directories, for an external
/// program; panics naming the package to install when it is missing.
pub fn find_program(name: &str) -> PathBuf {
    try_find_program(name).unwrap_or_else(|| {
        let package = match name {
            "tcpserver" => "ucspi-tcp",
            "swaks" => "swaks (with libnet-ssleay-perl and libio-socket-ssl-perl)",
            "exim4" => "exim4-daemon-light",
            "openssl" => "openssl",
            other => other,
        };
        panic!("program {name} not found: install the Debian package {package} (tests/run does it)")
    })
}

/// Like [`find_program`], but `None` when it is missing.
pub fn try_find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let system = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
    std::env::split_paths(&path)
        .chain(system.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The `PATH` given to the programs the tests start.
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
