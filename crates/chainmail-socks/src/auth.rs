//! The `user:password` file of `rsockd -a`: one pair per line, the user
//! name up to the first `:`, the password the rest of the line. Empty
//! lines and lines starting with `#` are skipped.

/// The pairs of a password file.
#[derive(Clone, Default)]
pub struct Passwords {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwords({} users)", self.pairs.len())
    }
}

/// A line of the file that is not `user:password`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PasswordsError {
    /// The line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl Passwords {
    /// Parses the file's contents.
    pub fn parse(text: &[u8]) -> Result<Passwords, PasswordsError> {
        let mut pairs = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let err = |reason| PasswordsError { line: i + 1, reason };
            let colon = line.iter().position(|&b| b == b':').ok_or(err("no ':'"))?;
            let (user, password) = (&line[..colon], &line[colon + 1..]);
            if user.is_empty() || user.len() > 255 || password.len() > 255 {
                return Err(err("user name empty, or a field over 255 bytes"));
            }
            pairs.push((user.to_vec(), password.to_vec()));
        }
        Ok(Passwords { pairs })
    }

    /// Whether `user` has `password`. Every pair is compared, in time
    /// independent of where the bytes differ.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let mut found = false;
        for (u, p) in &self.pairs {
            found |= same(u, user) & same(p, password);
        }
        found
    }
}

fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        diff |= u64::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let p = Passwords::parse(b"# users\nalice:secret\n\nbob:with:colon\r\ncarol:\n").unwrap();
        for (u, pw, ok) in [
            ("alice", "secret", true),
            ("alice", "secreT", false),
            ("alice", "secret2", false),
            ("alice", "", false),
            ("bob", "with:colon", true),
            ("carol", "", true),
            ("dave", "", false),
            ("", "", false),
        ] {
            assert_eq!(p.check(u.as_bytes(), pw.as_bytes()), ok, "{u}:{pw}");
        }
        assert_eq!(Passwords::parse(b"a:b\nnocolon\n").unwrap_err(), PasswordsError { line: 2, reason: "no ':'" });
        assert!(Passwords::parse(b":x\n").is_err());
        assert!(Passwords::parse(format!("u:{}", "p".repeat(256)).as_bytes()).is_err());
    }
}
