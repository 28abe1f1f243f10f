//! Which qmail home qmail-remote serves.
//!
//! Stock qmail-remote has its home compiled in. A drop-in cannot know it at
//! build time, and a wrong guess is dangerous: with another `/var/qmail` on
//! the machine, it would read that installation's control files (its
//! routes, its TLS policy) without a word. So the home comes from, in
//! order:
//!
//! 1. `QMAILHOME`, when set and not empty (the administrator said so);
//! 2. the working directory qmail-rspawn gives: `<home>/queue/mess`;
//! 3. where the program lies: `<home>/bin`, when `<home>/control` is a
//!    directory (so that `/usr/local/bin/qmail-remote` does not make
//!    `/usr/local` a qmail home);
//! 4. `DEFAULT_QMAILHOME`, when neither 2 nor 3 says anything (run by
//!    hand from elsewhere).
//!
//! When 2 and 3 both name a home and they differ, there is no safe choice:
//! [`HomeError::Disagree`], a deferral.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::control::{CONTROL_DIR, DEFAULT_QMAILHOME};

/// The working directory and the program's location name different homes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HomeError {
    /// Both name a home, not the same one.
    #[error(
        "the working directory is in the qmail home {}, but this program lies in {}/bin; set QMAILHOME",
        from_cwd.display(),
        from_program.display()
    )]
    Disagree {
        /// The home the working directory gives.
        from_cwd: PathBuf,
        /// The home the program's location gives.
        from_program: PathBuf,
    },
}

/// The home for a working directory `<home>/queue/mess`, if it is one.
pub(crate) fn home_of_cwd(cwd: &Path) -> Option<PathBuf> {
    let mess = cwd.file_name()?;
    let queue = cwd.parent()?;
    (mess == "mess" && queue.file_name()? == "queue").then(|| queue.parent().map(Path::to_path_buf))?
}

/// The home for a program at `<home>/bin/<name>`, if its parent is `bin`
/// (whether `<home>/control` exists is checked by the caller).
pub(crate) fn home_of_program(program: &Path) -> Option<PathBuf> {
    let bin = program.parent()?;
    (bin.file_name()? == "bin").then(|| bin.parent().map(Path::to_path_buf))?
}

/// Decides the home from `QMAILHOME`'s value and the two candidates (both
/// canonical paths, so that equal homes compare equal).
pub fn choose(
    env: Option<&OsStr>,
    from_cwd: Option<PathBuf>,
    from_program: Option<PathBuf>,
) -> Result<PathBuf, HomeError> {
    if let Some(v) = env.filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(v));
    }
    match (from_cwd, from_program) {
        (Some(c), Some(p)) if c != p => Err(HomeError::Disagree { from_cwd: c, from_program: p }),
        (Some(c), _) => Ok(c),
        (None, Some(p)) => Ok(p),
        (None, None) => Ok(PathBuf::from(DEFAULT_QMAILHOME)),
    }
}

/// [`choose`] for this process: `QMAILHOME`, the working directory, and
/// the program's location (`/proc/self/exe`, symbolic links resolved).
pub fn qmail_home_of_process() -> Result<PathBuf, HomeError> {
    let env = std::env::var_os(crate::control::QMAILHOME_VAR);
    if env.as_ref().is_some_and(|v| !v.is_empty()) {
        return choose(env.as_deref(), None, None);
    }
    let from_cwd = std::env::current_dir().ok().as_deref().and_then(home_of_cwd).map(canonical);
    choose(None, from_cwd, home_of_this_program())
}

/// A path with its symbolic links resolved, or as it is when that fails.
fn canonical(p: PathBuf) -> PathBuf {
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// The home this program lies in (`/proc/self/exe` is `<home>/bin/...` and
/// `<home>/control` is a directory), canonical.
fn home_of_this_program() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(home_of_program)
        .filter(|h| h.join(CONTROL_DIR).is_dir())
        .map(canonical)
}

/// The home of a program that qmail does not start from its queue
/// (qmail-qmqpc, which qmail-queue's callers run from anywhere):
/// `QMAILHOME`, else the program's location (`<home>/bin`, when
/// `<home>/control` is a directory), else `DEFAULT_QMAILHOME`.
pub fn qmail_home_of_program() -> PathBuf {
    let env = std::env::var_os(crate::control::QMAILHOME_VAR);
    // Without a working-directory candidate the choice cannot disagree.
    choose(env.as_deref(), None, home_of_this_program()).unwrap_or_else(|_| PathBuf::from(DEFAULT_QMAILHOME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn candidates() {
        assert_eq!(home_of_cwd(Path::new("/opt/notqmail/queue/mess")), Some(p("/opt/notqmail")));
        assert_eq!(home_of_cwd(Path::new("/queue/mess")), Some(p("/")));
        for cwd in ["/", "/opt/notqmail", "/opt/notqmail/queue", "/opt/notqmail/mess", "/x/queue/mess/1", "mess"] {
            assert_eq!(home_of_cwd(Path::new(cwd)), None, "{cwd}");
        }
        assert_eq!(home_of_program(Path::new("/opt/notqmail/bin/qmail-remote")), Some(p("/opt/notqmail")));
        for prog in ["/opt/notqmail/qmail-remote", "/target/debug/qmail-remote", "qmail-remote"] {
            assert_eq!(home_of_program(Path::new(prog)), None, "{prog}");
        }
    }

    #[test]
    fn choice() {
        let (a, b) = (Some(p("/a")), Some(p("/b")));
        type Case = (Option<&'static str>, Option<PathBuf>, Option<PathBuf>, Result<PathBuf, HomeError>);
        let cases: &[Case] = &[
            (Some("/env"), a.clone(), b.clone(), Ok(p("/env"))),
            (Some(""), None, None, Ok(p("/var/qmail"))),
            (None, None, None, Ok(p("/var/qmail"))),
            (None, a.clone(), None, Ok(p("/a"))),
            (None, None, b.clone(), Ok(p("/b"))),
            (None, a.clone(), a.clone(), Ok(p("/a"))),
            (None, a.clone(), b.clone(), Err(HomeError::Disagree { from_cwd: p("/a"), from_program: p("/b") })),
        ];
        for (env, c, prog, want) in cases {
            assert_eq!(&choose(env.map(OsStr::new), c.clone(), prog.clone()), want, "{env:?} {c:?} {prog:?}");
        }
    }
}
