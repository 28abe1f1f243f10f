//! The message qmail-rspawn gives qmail-remote on fd 0: a file of the
//! queue, read once for what the dialogue needs to know, then rewound for
//! each attempt.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};

use chainmail_smtp::data::{MessageFacts, MessageScanner};

use crate::report::Final;

/// Reads `fd` to its end for its [`MessageFacts`], then rewinds it. A
/// message whose last line has no LF is refused as stock qmail refuses it
/// (#5.6.2); a read error is `Unable to read message`.
pub fn facts(fd: BorrowedFd<'_>) -> Result<MessageFacts, Final> {
    let mut file = std::fs::File::from(fd.try_clone_to_owned().map_err(|_| Final::unreadable_message())?);
    let mut scanner = MessageScanner::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => scanner.scan(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(Final::unreadable_message()),
        }
    }
    rewind(fd)?;
    let facts = scanner.finish();
    if facts.partial_final_line {
        return Err(Final::partial_line());
    }
    Ok(facts)
}

/// Puts `fd` back at the start of the message.
pub fn rewind(fd: impl AsFd) -> Result<(), Final> {
    nix::unistd::lseek(fd.as_fd(), 0, nix::unistd::Whence::SeekSet).map(|_| ()).map_err(|_| Final::unreadable_message())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::fd::AsFd;

    fn file_with(content: &[u8]) -> std::fs::File {
        let dir = crate::testutil::TempDir::new("message");
        let path = dir.path().join("m");
        let mut f =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).expect("open");
        f.write_all(content).expect("write");
        f.rewind().expect("rewind");
        f
    }

    #[test]
    fn facts_then_rewound() {
        let mut f = file_with(b"Subject: x\n\n.dot \xc3\xa9\n");
        let facts = facts(f.as_fd()).expect("facts");
        assert!(facts.eight_bit && !facts.partial_final_line);
        assert_eq!(facts.encoded_size, b"Subject: x\r\n\r\n..dot \xc3\xa9\r\n".len() as u64);
        let mut again = Vec::new();
        f.read_to_end(&mut again).expect("read");
        assert_eq!(again, b"Subject: x\n\n.dot \xc3\xa9\n");
    }

    #[test]
    fn partial_final_line_is_refused() {
        let f = file_with(b"no end");
        let e = facts(f.as_fd()).expect_err("partial");
        assert!(String::from_utf8_lossy(e.text()).contains("#5.6.2"));
    }
}
