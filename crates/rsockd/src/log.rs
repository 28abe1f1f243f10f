//! One line per request: client, user, identd's user, command,
//! destination, the sockd.conf rule, the route, the upstream used, the
//! outcome, bytes each way and the duration. On stderr (for s6-log or
//! multilog), and with `-l` to syslog too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Instant;

#[derive(Debug)]
pub struct Record {
    pub start: Instant,
    pub client: String,
    pub user: Option<Vec<u8>>,
    pub ident: Option<String>,
    pub command: &'static str,
    pub dest: String,
    pub rule: String,
    pub route: String,
    pub via: String,
    pub outcome: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl Record {
    pub fn new(client: String) -> Record {
        Record {
            start: Instant::now(),
            client,
            user: None,
            ident: None,
            command: "-",
            dest: "-".into(),
            rule: "-".into(),
            route: "-".into(),
            via: "-".into(),
            outcome: "-".into(),
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    pub fn line(&self) -> String {
        let user = self.user.as_deref().map_or_else(|| "-".to_owned(), clean);
        let ident = self.ident.as_deref().map_or_else(|| "-".to_owned(), |s| clean(s.as_bytes()));
        format!(
            "client={} user={} ident={} cmd={} dest={} rule={} route={} via={} outcome={} out={} in={} ms={}",
            self.client,
            user,
            ident,
            self.command,
            clean(self.dest.as_bytes()),
            self.rule,
            clean(self.route.as_bytes()),
            clean(self.via.as_bytes()),
            clean(self.outcome.as_bytes()),
            self.bytes_out,
            self.bytes_in,
            self.start.elapsed().as_millis()
        )
    }

    pub fn emit(&self, syslog: bool) {
        let line = self.line();
        let _ = std::io::stderr().lock().write_all(format!("rsockd: {line}\n").as_bytes());
        if syslog {
            // LOG_DAEMON | LOG_INFO, to the local syslog socket.
            if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
                let _ = s.send_to(format!("<30>rsockd[{}]: {line}", std::process::id()).as_bytes(), "/dev/log");
            }
        }
    }
}

/// Printable, without blanks: other bytes as `\xNN`, so one field stays
/// one word and a client cannot forge log lines.
pub fn clean(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c.is_ascii_graphic() && c != b'\\' {
            s.push(c as char);
        } else {
            let _ = write!(s, "\\x{c:02x}");
        }
    }
    if s.is_empty() { "\"\"".into() } else { s }
}
