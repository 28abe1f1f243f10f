//! Owned descriptors from inherited numbers, and descriptor flags.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Whether `n` names an open descriptor of this process.
pub fn is_open(n: RawFd) -> bool {
    if n < 0 {
        return false;
    }
    // SAFETY: F_GETFD only reads the descriptor table entry.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(n, libc::F_GETFD) };
    r != -1
}

/// How many descriptor numbers (from 0) the inherited set covers. An
/// inherited descriptor above is never adopted: UCSPI programs get small
/// numbers.
pub(crate) const INHERITED_LIMIT: usize = 1024;

/// One bit per descriptor number below [`INHERITED_LIMIT`]: set while the
/// number names a descriptor nothing in this process owns. Filled with the
/// descriptors open when the process started (before `main`, before the
/// standard library or anything else could open one), cleared when
/// [`adopt`] gives one an owner, set again by [`dup_onto`].
static UNOWNED: [AtomicU64; INHERITED_LIMIT / 64] = [const { AtomicU64::new(0) }; INHERITED_LIMIT / 64];

/// Runs from `.init_array`, before `main` and before the standard
/// library's start-up code (which opens `/dev/null` on a closed 0, 1 or 2:
/// such a descriptor is the library's, not inherited).
extern "C" fn record_inherited() {
    // One poll(2) with no events: the kernel flags every closed number
    // with POLLNVAL. A smaller table if the descriptor limit is lower.
    let mut table = [libc::pollfd { fd: 0, events: 0, revents: 0 }; INHERITED_LIMIT];
    for (n, p) in table.iter_mut().enumerate() {
        p.fd = n as RawFd;
    }
    for len in [INHERITED_LIMIT, 256, 64] {
        // SAFETY: poll reads and writes `len` entries of `table`, which has
        // at least that many; a timeout of 0 returns at once.
        #[allow(unsafe_code)]
        let r = unsafe { libc::poll(table.as_mut_ptr(), len as libc::nfds_t, 0) };
        if r >= 0 {
            for (n, p) in table[..len].iter().enumerate() {
                if p.revents & libc::POLLNVAL == 0 {
                    UNOWNED[n / 64].fetch_or(1 << (n % 64), Ordering::SeqCst);
                }
            }
            return;
        }
    }
}

#[used]
#[allow(unsafe_code)]
// SAFETY: the function takes no arguments, touches only its stack and the
// atomics above, and is what `.init_array` entries are for.
#[unsafe(link_section = ".init_array")]
static RECORD_INHERITED: extern "C" fn() = record_inherited;

/// Marks `n` as owned; returns whether it was unowned.
fn claim(n: RawFd) -> bool {
    let Ok(i) = usize::try_from(n) else { return false };
    if i >= INHERITED_LIMIT {
        return false;
    }
    let bit = 1u64 << (i % 64);
    UNOWNED[i / 64].fetch_and(!bit, Ordering::SeqCst) & bit != 0
}

/// Marks `n` as unowned again (after a `dup2` onto it).
fn release(n: RawFd) {
    if let Ok(i) = usize::try_from(n) {
        if i < INHERITED_LIMIT {
            UNOWNED[i / 64].fetch_or(1 << (i % 64), Ordering::SeqCst);
        }
    }
}

/// Whether `n` names an open descriptor that nothing in this process owns:
/// one inherited at start-up (or put there by [`dup_onto`]) and not
/// adopted yet. Unlike [`is_open`], false for a 0, 1 or 2 that the
/// standard library opened on `/dev/null` because the process started
/// without it.
pub fn is_inherited(n: RawFd) -> bool {
    let Ok(i) = usize::try_from(n) else { return false };
    i < INHERITED_LIMIT && UNOWNED[i / 64].load(Ordering::SeqCst) & (1 << (i % 64)) != 0 && is_open(n)
}

/// Takes ownership of an inherited descriptor number.
///
/// Sound by construction: only a number that was open when the process
/// started (or that [`dup_onto`] filled) and that nothing adopted yet is
/// taken, at most once; a second `adopt` of the same number, or of a
/// number the process opened itself, fails with `EBUSY`, and a closed
/// number with `EBADF`.
pub fn adopt(n: RawFd) -> io::Result<OwnedFd> {
    if !is_open(n) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    if !claim(n) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("descriptor {n} is not an inherited descriptor free to take over"),
        ));
    }
    // SAFETY: `n` is open and was unowned (the claim above succeeded, and
    // a claim succeeds once): nothing else in the process owns it.
    #[allow(unsafe_code)]
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Makes `fd` also available as descriptor number `target` (dup2), without
/// the close-on-exec flag, so that an exec'd program finds it there.
///
/// `dup2` closes what `target` named before, so `target` must be an
/// inherited descriptor that nothing adopted (0 and 1 before an exec, in a
/// process that never took them over); anything else is refused with
/// `EBUSY`, so that no owner is left holding a replaced number. (A closed
/// target is refused too: another thread could open it between a check
/// and the `dup2`.) The new descriptor at `target` is unowned again:
/// [`adopt`] may take it.
pub fn dup_onto(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        return set_cloexec(&fd, false);
    }
    if !is_open(target) || !claim(target) {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("descriptor {target} is not an inherited descriptor free to replace"),
        ));
    }
    // SAFETY: dup2 does not touch memory; `target` was open and unowned
    // (claimed above, and an open number cannot be handed out again), so
    // no owner is left with a replaced number.
    #[allow(unsafe_code)]
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    let result = if r == -1 { Err(io::Error::last_os_error()) } else { Ok(()) };
    // Either way `target` is open and owned by nothing.
    release(target);
    result
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: &impl AsFd, on: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD).map_err(errno)?);
    let new = if on { flags | FdFlag::FD_CLOEXEC } else { flags - FdFlag::FD_CLOEXEC };
    if new != flags {
        fcntl(fd, FcntlArg::F_SETFD(new)).map_err(errno)?;
    }
    Ok(())
}

/// Sets or clears `O_NONBLOCK` on the open file description.
///
/// Note that the flag belongs to the description, not to the descriptor:
/// every process holding a duplicate sees the change.
pub fn set_nonblocking(fd: &impl AsFd, on: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(errno)?);
    let new = if on { flags | OFlag::O_NONBLOCK } else { flags - OFlag::O_NONBLOCK };
    if new != flags {
        fcntl(fd, FcntlArg::F_SETFL(new)).map_err(errno)?;
    }
    Ok(())
}

/// The kind of object a descriptor refers to, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A pipe or FIFO: `splice(2)` works to and from it.
    Pipe,
    /// A socket: `shutdown(2)` passes EOF on without closing.
    Socket,
    /// Anything else (a file, a terminal).
    Other,
}

/// Finds out what `fd` refers to.
pub fn kind(fd: &impl AsFd) -> io::Result<Kind> {
    let st = fstat(fd.as_fd()).map_err(errno)?;
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    Ok(if fmt == SFlag::S_IFIFO {
        Kind::Pipe
    } else if fmt == SFlag::S_IFSOCK {
        Kind::Socket
    } else {
        Kind::Other
    })
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno)
}

/// A connected pair of Unix stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType};
    nix::sys::socket::socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(errno)
}

/// Grows a pipe's buffer (`F_SETPIPE_SZ`). Best effort: returns the size
/// the kernel granted, or an error that callers may ignore.
pub fn set_pipe_size(fd: &impl AsFd, size: usize) -> io::Result<usize> {
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    fcntl(fd.as_fd(), FcntlArg::F_SETPIPE_SZ(size)).map(|n| n as usize).map_err(errno)
}

/// `read(2)` that retries on `EINTR`.
pub fn read(fd: &impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// `write(2)` that retries on `EINTR`.
pub fn write(fd: &impl AsFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::write(fd.as_fd(), buf) {
            Ok(n) => return Ok(n),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// `writev(2)` that retries on `EINTR`: one system call for several
/// buffers, so that a TLS flight or a batch of replies leaves as one
/// segment instead of several small ones.
pub fn writev(fd: &impl AsFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match nix::sys::uio::writev(fd.as_fd(), bufs) {
            Ok(n) => return Ok(n),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// Writes all of `buf` to a blocking descriptor.
pub fn write_all(fd: &impl AsFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Sends `data` and the descriptors `fds` in one message on a Unix
/// socket (`SCM_RIGHTS`). The receiver gets its own copies of the
/// descriptors; the caller keeps (and should close) its own.
pub fn send_with_fds(sock: &impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    if data.is_empty() {
        // At least one byte must go with the descriptors.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no data to carry the descriptors"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let mut sent = loop {
        match sendmsg::<UnixAddr>(sock.as_fd().as_raw_fd(), &[io::IoSlice::new(data)], &cmsg, MsgFlags::empty(), None) {
            Ok(n) => break n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(errno(e)),
        }
    };
    // The descriptors went with the first byte; the rest is plain data.
    while sent < data.len() {
        sent += write(sock, &data[sent..])?;
    }
    Ok(())
}

/// Receives what [`send_with_fds`] sent: reads `sock` (blocking) up to EOF
/// or `max` bytes, and takes ownership of the descriptors that came with
/// the data. The descriptors are close-on-exec.
///
/// Every descriptor the kernel installed in this process is either
/// returned owned or closed before this function returns, whatever
/// happens. More than `max_fds` descriptors in all (including a control
/// message the kernel had to truncate, `MSG_CTRUNC`, whose surplus the
/// kernel itself discards) is an error (`InvalidData`), and then all of
/// them are closed: a sender that breaks the limit gets nothing through.
pub fn recv_with_fds(sock: &impl AsFd, max: usize, max_fds: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{MsgFlags, UnixAddr, recvmsg};
    let mut data = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Room for one descriptor more than allowed: a sender that breaks the
    // limit by one is seen without relying on the truncation flag alone.
    let mut cmsg_buf = vec![0u8; cmsg_space_for(max_fds.saturating_add(1))];
    let mut buf = vec![0u8; 4096];
    let mut too_many = false;
    while data.len() < max {
        // The parser below stops at the first zeroed header.
        cmsg_buf.fill(0);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let (n, truncated) = loop {
            match recvmsg::<UnixAddr>(
                sock.as_fd().as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => break (m.bytes, m.flags.contains(MsgFlags::MSG_CTRUNC)),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(errno(e)),
            }
        };
        // Own what the kernel installed before anything else can return:
        // nix's `cmsgs()` refuses a truncated buffer, which would leave the
        // installed descriptors open and unowned, so the buffer is read here.
        for raw in scm_rights_in(&cmsg_buf) {
            // SAFETY: the kernel just installed this descriptor in this
            // process for this message; nothing else knows its number.
            #[allow(unsafe_code)]
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            fds.push(owned);
        }
        too_many |= truncated || fds.len() > max_fds;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n.min(max - data.len())]);
    }
    if too_many {
        // Dropping `fds` closes every one of them.
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("more than {max_fds} descriptors received")));
    }
    Ok((data, fds))
}

/// `CMSG_SPACE(n * sizeof(int))`: room for a control message carrying `n`
/// descriptors.
fn cmsg_space_for(n: usize) -> usize {
    let payload = u32::try_from(n.saturating_mul(std::mem::size_of::<RawFd>())).unwrap_or(u32::MAX / 2);
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
    #[allow(unsafe_code)]
    let space = unsafe { libc::CMSG_SPACE(payload) };
    space as usize
}

/// The descriptor numbers of the `SCM_RIGHTS` messages in a control
/// buffer that was zeroed before `recvmsg` filled it (a zero length ends
/// the walk). Reads the Linux layout (`struct cmsghdr`: `cmsg_len`,
/// `cmsg_level`, `cmsg_type`, data aligned to `size_t`) from the bytes,
/// so that it also works on a buffer the kernel truncated.
fn scm_rights_in(buf: &[u8]) -> Vec<RawFd> {
    const WORD: usize = std::mem::size_of::<usize>();
    let align = |n: usize| n.div_ceil(WORD).saturating_mul(WORD);
    let header = std::mem::size_of::<libc::cmsghdr>();
    let int = std::mem::size_of::<libc::c_int>();
    let mut fds = Vec::new();
    let mut at = 0usize;
    while at.saturating_add(header) <= buf.len() {
        let field = |offset: usize, width: usize| &buf[at + offset..at + offset + width];
        let len_width = std::mem::size_of::<libc::size_t>();
        let len = match len_width {
            8 => field(0, 8).try_into().map(u64::from_ne_bytes).map(|v| v as usize),
            _ => field(0, 4).try_into().map(u32::from_ne_bytes).map(|v| v as usize),
        }
        .unwrap_or(0);
        if len < header {
            break;
        }
        let level = field(len_width, int).try_into().map(libc::c_int::from_ne_bytes).unwrap_or(-1);
        let kind = field(len_width + int, int).try_into().map(libc::c_int::from_ne_bytes).unwrap_or(-1);
        let end = at.saturating_add(len).min(buf.len());
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            let data = at.saturating_add(align(header)).min(end);
            for chunk in buf[data..end].chunks_exact(int) {
                if let Ok(b) = chunk.try_into() {
                    fds.push(RawFd::from_ne_bytes(b));
                }
            }
        }
        at = at.saturating_add(align(len));
    }
    fds
}

/// An `io::Read + io::Write` view of a borrowed descriptor, for libraries
/// (rustls) that want those traits. Writes with several buffers use
/// `writev(2)`.
#[derive(Debug, Clone, Copy)]
pub struct FdIo<'a>(pub BorrowedFd<'a>);

impl io::Read for FdIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.0, buf)
    }
}

impl io::Write for FdIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(&self.0, buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        writev(&self.0, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_kind_and_flags() {
        let (r, w) = pipe().expect("pipe");
        assert_eq!(kind(&r).expect("kind"), Kind::Pipe);
        set_nonblocking(&r, true).expect("nonblock");
        let mut buf = [0u8; 4];
        let e = read(&r, &mut buf).expect_err("empty nonblocking pipe");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        write_all(&w, b"ab").expect("write");
        assert_eq!(read(&r, &mut buf).expect("read"), 2);
        assert!(is_open(r.as_raw_fd()));
        let n = r.as_raw_fd();
        drop(r);
        assert!(!is_open(n));
        assert!(adopt(n).is_err());
    }

    /// `adopt` and `dup_onto` were safe functions whose soundness was the
    /// caller's duty: a second owner of one number closes it twice.
    #[test]
    fn no_second_owner() {
        let (r, w) = pipe().expect("pipe");
        let got = adopt(r.as_raw_fd());
        let refused = got.is_err();
        if let Ok(second) = got {
            // Old code: do not let the second owner close it.
            std::mem::forget(second);
        }
        assert!(refused, "adopted a descriptor this process owns");
        assert!(!is_inherited(r.as_raw_fd()));
        // dup2 onto an owned descriptor would close it under its owner.
        let (r2, _w2) = pipe().expect("pipe");
        assert!(dup_onto(w.as_fd(), r2.as_raw_fd()).is_err());
        assert_eq!(kind(&r2).expect("still a pipe"), Kind::Pipe);
        // Nor onto a closed number (another thread may open it meanwhile).
        let n = r2.as_raw_fd();
        drop(r2);
        assert!(dup_onto(w.as_fd(), n).is_err());
        drop(r);
    }

    #[test]
    fn descriptors_travel_with_data() {
        let (a, b) = socketpair().expect("socketpair");
        let (r, w) = pipe().expect("pipe");
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        send_with_fds(&a, &payload, &[r.as_fd(), w.as_fd()]).expect("send");
        drop(a);
        let (data, fds) = recv_with_fds(&b, 1 << 20, 2).expect("recv");
        assert_eq!(data, payload);
        assert_eq!(fds.len(), 2);
        // The received write end feeds the original read end.
        drop(w);
        write_all(&fds[1], b"through").expect("write");
        drop(fds);
        let mut buf = [0u8; 16];
        assert_eq!(read(&r, &mut buf).expect("read"), 7);
        assert_eq!(&buf[..7], b"through");
        // Nothing sent, nothing received: EOF at once.
        let (a, b) = socketpair().expect("socketpair");
        drop(a);
        let (data, fds) = recv_with_fds(&b, 100, 2).expect("recv");
        assert!(data.is_empty() && fds.is_empty());
    }

    #[test]
    fn socketpair_kind() {
        let (a, _b) = socketpair().expect("socketpair");
        assert_eq!(kind(&a).expect("kind"), Kind::Socket);
    }
}
