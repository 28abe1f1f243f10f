//! Descriptor passing must never leave a received descriptor open and
//! unowned. This file holds one test so that no other test of the same
//! process opens or closes descriptors while it counts them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use chainmail_sys::fd;

fn open_descriptors() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn received_descriptors_are_owned_or_closed_whatever_the_count() {
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..5).map(|_| fd::pipe().expect("pipe")).collect();
    let all: Vec<BorrowedFd<'_>> = pipes.iter().flat_map(|(r, w)| [r.as_fd(), w.as_fd()]).collect();
    // (descriptors sent, allowed): 2 of 2 arrive; 3 of 2 fit the buffer
    // but break the limit; 9 of 2 make the kernel truncate the message.
    for (sent, allowed, ok) in [(2, 2, true), (3, 2, false), (9, 2, false), (9, 8, false), (1, 8, true)] {
        let (a, b) = fd::socketpair().expect("socketpair");
        let before = open_descriptors();
        fd::send_with_fds(&a, b"message", &all[..sent]).expect("send");
        drop(a);
        let got = fd::recv_with_fds(&b, 1024, allowed);
        let outcome = got.as_ref().map(|(data, fds)| (data.clone(), fds.len())).map_err(|e| e.kind());
        drop(got);
        // `a` is closed; nothing received may be left open.
        let after = open_descriptors();
        assert!(
            after.iter().all(|n| before.contains(n)),
            "{sent} of {allowed}: leaked: before {before:?}, after {after:?}"
        );
        if ok {
            assert_eq!(outcome, Ok((b"message".to_vec(), sent)), "{sent} of {allowed}");
        } else {
            assert_eq!(outcome, Err(std::io::ErrorKind::InvalidData), "{sent} of {allowed}");
        }
    }
}
