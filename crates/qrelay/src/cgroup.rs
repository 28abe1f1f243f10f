//! A client's cgroup: its path from `/proc/PID/cgroup` (the cgroup2 line,
//! `0::/path`), the directory under the cgroup2 mount found in
//! `/proc/self/mountinfo` (not always `/sys/fs/cgroup`), and that
//! directory's extended attributes.

use std::path::{Path, PathBuf};

/// The cgroup2 mount point from the text of `/proc/self/mountinfo`.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let (before, after) = line.split_once(" - ")?;
        if after.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mount = before.split(' ').nth(4)?;
        Some(PathBuf::from(unescape_mountinfo(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 path from the text of `/proc/PID/cgroup`.
pub fn cgroup2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_owned)
}

/// The parent of a cgroup path, `None` for the root.
pub fn parent(path: &str) -> Option<String> {
    if path == "/" || path.is_empty() {
        return None;
    }
    match path.rsplit_once('/') {
        Some(("", _)) => Some("/".to_owned()),
        Some((p, _)) => Some(p.to_owned()),
        None => None,
    }
}

/// The cgroup path of process `pid`, if it can be read.
pub fn of_pid(pid: i32) -> Option<String> {
    cgroup2_path(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

/// The extended attributes of the cgroup directory `path` under `mount`
/// (names and values as bytes; unreadable ones left out).
pub fn xattrs(mount: &Path, path: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = mount.join(path.trim_start_matches('/'));
    let Ok(names) = chainmail_sys::xattr::list(&dir) else { return Vec::new() };
    names
        .into_iter()
        .filter_map(|n| {
            let v = chainmail_sys::xattr::get(&dir, &n).ok()?;
            Some((n.as_bytes().to_vec(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let info = "22 28 0:21 / /proc rw,nosuid - proc proc rw\n\
                    30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup")));
        let info = "30 25 0:26 / /run/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/run/my cg")));
        assert_eq!(cgroup2_mount("30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup cgroup rw\n"), None);
        assert_eq!(cgroup2_mount(""), None);
    }

    #[test]
    fn paths() {
        assert_eq!(cgroup2_path("0::/user.slice/session-1.scope\n"), Some("/user.slice/session-1.scope".into()));
        assert_eq!(cgroup2_path("1:name=systemd:/x\n0::/\n"), Some("/".into()));
        assert_eq!(cgroup2_path("1:cpu:/x\n"), None);
        assert_eq!(parent("/user.slice/session-1.scope"), Some("/user.slice".into()));
        assert_eq!(parent("/user.slice"), Some("/".into()));
        assert_eq!(parent("/"), None);
    }
}
