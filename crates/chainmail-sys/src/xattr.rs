//! Extended attributes of a file (qrelay reads those of a client's cgroup
//! directory). Bounded: at most [`MAX_LIST`] bytes of names and
//! [`MAX_VALUE`] bytes per value; larger ones fail with `ERANGE`.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The most bytes of attribute names read.
pub const MAX_LIST: usize = 64 * 1024;
/// The most bytes of one value read.
pub const MAX_VALUE: usize = 64 * 1024;

fn c_path(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The names of `path`'s extended attributes (following symlinks).
pub fn list(path: &Path) -> io::Result<Vec<OsString>> {
    let p = c_path(path.as_os_str().as_bytes())?;
    let mut buf = vec![0u8; MAX_LIST];
    // SAFETY: `p` is a NUL-terminated string and `buf` is writable for
    // `buf.len()` bytes, which is the size passed; the kernel writes at
    // most that many.
    #[allow(unsafe_code)]
    let n = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(n);
    Ok(buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| OsString::from_vec(s.to_vec())).collect())
}

/// The value of `path`'s extended attribute `name`.
pub fn get(path: &Path, name: &OsStr) -> io::Result<Vec<u8>> {
    let p = c_path(path.as_os_str().as_bytes())?;
    let n = c_path(name.as_bytes())?;
    let mut buf = vec![0u8; MAX_VALUE];
    // SAFETY: `p` and `n` are NUL-terminated strings and `buf` is writable
    // for `buf.len()` bytes, the size passed.
    #[allow(unsafe_code)]
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_bad_names_fail() {
        assert!(list(Path::new("/nonexistent/chainmail")).is_err());
        assert!(get(Path::new("/"), OsStr::new("user.chainmail.none")).is_err());
        assert!(list(Path::new("/a\0b")).is_err());
        // Whatever / has, listing it works or is unsupported, never panics.
        let _ = list(Path::new("/"));
    }
}
