//! Adopting and replacing inherited descriptors. One test in this file:
//! it replaces this process's fd 0.

use std::os::fd::{AsFd, AsRawFd};

use chainmail_sys::fd;

#[test]
fn an_inherited_descriptor_has_at_most_one_owner() {
    // The harness starts with 0 open and nobody in the process owns it.
    assert!(fd::is_inherited(0), "fd 0 is inherited");
    let (r, w) = fd::pipe().expect("pipe");
    assert!(!fd::is_inherited(w.as_raw_fd()), "a pipe of our own is not inherited");
    fd::dup_onto(w.as_fd(), 0).expect("replace fd 0");
    // Still unowned after the dup2: one adoption, and only one.
    assert!(fd::is_inherited(0));
    let zero = fd::adopt(0).expect("adopt fd 0");
    assert!(fd::adopt(0).is_err(), "adopted twice");
    assert!(fd::dup_onto(r.as_fd(), 0).is_err(), "replaced an adopted descriptor");
    fd::write_all(&zero, b"x").expect("write through fd 0");
    let mut buf = [0u8; 1];
    assert_eq!(fd::read(&r, &mut buf).expect("read"), 1);
}
