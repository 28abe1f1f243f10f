//! The configuration of one run: sockd.conf, socks.conf (absent: every
//! destination direct), the password file of `-a`, `/etc/services`.

use std::fmt;
use std::io::Read;
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use chainmail_socks::Host;
use chainmail_socks::auth::Passwords;
use chainmail_socks::conf::{ClientAction, Query, Services, SockdConf, SocksConf};

use crate::Options;

/// The largest configuration file read (the user-list files too).
const MAX_FILE: u64 = 1 << 20;

/// A file that cannot be used: `FILE:LINE: reason` (line 0: the file as
/// a whole).
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
    /// A read error other than a bad line (temporary).
    pub system: bool,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

#[derive(Debug)]
pub struct Config {
    pub sockd: SockdConf,
    pub socks: Option<SocksConf>,
    pub passwords: Option<Passwords>,
}

/// Reads at most `MAX_FILE` bytes of a file.
pub fn read_bounded(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut s = String::new();
    f.take(MAX_FILE + 1).read_to_string(&mut s)?;
    if s.len() as u64 > MAX_FILE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "file over 1 MiB"));
    }
    Ok(s)
}

impl Config {
    pub fn load(o: &Options) -> Result<Config, ConfigError> {
        // /etc/services is read only when a file names a service: a
        // process per connection should not parse it for nothing.
        match Config::load_with(o, &Services::default()) {
            Err(e) if e.reason.contains("unknown service") => {
                let services = Services::parse(&read_bounded(Path::new("/etc/services")).unwrap_or_default());
                Config::load_with(o, &services)
            }
            r => r,
        }
    }

    fn load_with(o: &Options, services: &Services) -> Result<Config, ConfigError> {
        let mut files = |p: &str| read_bounded(Path::new(p)).map_err(|e| e.to_string());
        let whole = |file: &Path, e: std::io::Error| ConfigError {
            file: file.to_owned(),
            line: 0,
            reason: format!("unable to read: {e}"),
            system: e.kind() != std::io::ErrorKind::InvalidData,
        };
        let bad_line = |file: &Path, e: chainmail_socks::conf::ConfError| ConfigError {
            file: file.to_owned(),
            line: e.line,
            reason: e.reason,
            system: false,
        };
        let text = read_bounded(&o.sockd_conf).map_err(|e| whole(&o.sockd_conf, e))?;
        let sockd = SockdConf::parse(&text, services, &mut files).map_err(|e| bad_line(&o.sockd_conf, e))?;
        let socks = match read_bounded(&o.socks_conf) {
            Ok(text) => Some(SocksConf::parse(&text, services, &mut files).map_err(|e| bad_line(&o.socks_conf, e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(whole(&o.socks_conf, e)),
        };
        let passwords = match &o.passwords {
            None => None,
            Some(p) => {
                let meta = std::fs::metadata(p).map_err(|e| whole(p, e))?;
                if meta.mode() & 0o077 != 0 {
                    return Err(ConfigError {
                        file: p.clone(),
                        line: 0,
                        reason: "readable or writable by group or others (chmod 600)".into(),
                        system: false,
                    });
                }
                let text = read_bounded(p).map_err(|e| whole(p, e))?;
                Some(Passwords::parse(text.as_bytes()).map_err(|e| ConfigError {
                    file: p.clone(),
                    line: e.line,
                    reason: e.reason.into(),
                    system: false,
                })?)
            }
        };
        Ok(Config { sockd, socks, passwords })
    }

    /// `-T dest port [user]`: which lines decide, on one line.
    pub fn explain(&self, dest: &str, port: &str, user: Option<&str>) -> Result<String, String> {
        let host = match dest.parse::<IpAddr>() {
            Ok(ip) => Host::ip(ip),
            Err(_) if chainmail_socks::wire::valid_name(dest.as_bytes()) => Host::Name(dest.to_ascii_lowercase()),
            Err(_) => return Err(format!("invalid destination {dest:?}")),
        };
        let services = Services::parse(&read_bounded(Path::new("/etc/services")).unwrap_or_default());
        let port = match port.parse::<u16>() {
            Ok(p) => p,
            Err(_) => services.port(port).ok_or_else(|| format!("invalid port {port:?}"))?,
        };
        let client =
            std::env::var("TCPREMOTEIP").ok().and_then(|s| s.parse().ok()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let q = Query { client, user, dest: &host, port };
        let mut cache = None;
        let mut addrs = || resolve_cached(&mut cache, &host);
        let (sline, verdict) = match self.sockd.first_match(&q, &mut addrs) {
            Some(r) => (r.line.to_string(), format!("{:?}", r.action).to_ascii_lowercase()),
            None => ("-".into(), "deny".into()),
        };
        let (rline, route) = match &self.socks {
            None => ("-".into(), "direct".into()),
            Some(s) => match s.first_match(&q, &mut addrs) {
                Some(r) => (r.line.to_string(), route_text(&r.action)),
                None => ("-".into(), "deny".into()),
            },
        };
        Ok(format!("sockd.conf:{sline} {verdict} socks.conf:{rline} {route}"))
    }
}

/// A route as logs and `-T` show it.
pub fn route_text(a: &ClientAction) -> String {
    match a {
        ClientAction::Deny => "deny".into(),
        ClientAction::Direct => "direct".into(),
        ClientAction::Sockd(None) => "sockd SOCKS_SERVER".into(),
        ClientAction::Sockd(Some(l)) => {
            format!("sockd {}", l.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(","))
        }
    }
}

/// The addresses of a destination, resolved once.
pub fn resolve_cached(cache: &mut Option<Vec<IpAddr>>, host: &Host) -> Vec<IpAddr> {
    cache
        .get_or_insert_with(|| match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(n) => resolve(n),
        })
        .clone()
}

/// How long a name lookup may take (`-c`, set once at startup; 30 s
/// until then).
static RESOLVE_TIMEOUT: OnceLock<Duration> = OnceLock::new();

/// Bounds every later name lookup by `timeout` (the connect timeout).
pub fn set_resolve_timeout(timeout: Duration) {
    let _ = RESOLVE_TIMEOUT.set(timeout);
}

/// The addresses of a name (the system resolver: /etc/hosts, DNS), or none
/// when the lookup fails or takes longer than the connect timeout: the
/// system resolver has no deadline of its own that we set, so it runs on a
/// thread of its own, left to finish alone if it is late.
pub fn resolve(name: &str) -> Vec<IpAddr> {
    // `-c 0` is no limit of ours (as for the connects): the resolver's own.
    let timeout = RESOLVE_TIMEOUT.get().copied().unwrap_or(Duration::from_secs(30));
    let timeout = if timeout.is_zero() { Duration::from_secs(chainmail_sys::cli::MAX_TIMEOUT_SECS) } else { timeout };
    resolve_within(name, timeout, |n| {
        (n, 0u16).to_socket_addrs().map(|it| it.map(|a| a.ip()).collect()).unwrap_or_default()
    })
}

fn resolve_within(name: &str, timeout: Duration, lookup: fn(&str) -> Vec<IpAddr>) -> Vec<IpAddr> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = name.to_owned();
    let started = std::thread::Builder::new().name("resolve".into()).stack_size(128 * 1024).spawn(move || {
        let _ = tx.send(lookup(&owned));
    });
    if started.is_err() {
        return Vec::new();
    }
    let mut v: Vec<IpAddr> =
        rx.recv_timeout(timeout).unwrap_or_default().into_iter().map(chainmail_socks::wire::canonical).collect();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_lookup_gives_no_address_within_the_timeout() {
        fn slow(_: &str) -> Vec<IpAddr> {
            std::thread::sleep(Duration::from_secs(3));
            vec![IpAddr::from([192, 0, 2, 1])]
        }
        fn quick(_: &str) -> Vec<IpAddr> {
            vec![IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 1]), "::ffff:192.0.2.2".parse().expect("ip")]
        }
        let t0 = std::time::Instant::now();
        assert_eq!(resolve_within("slow.example", Duration::from_millis(200), slow), Vec::<IpAddr>::new());
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(2), "waited {took:?} for a lookup bounded at 200 ms");
        // In time: the addresses, canonical (mapped IPv4 as IPv4), duplicates dropped.
        assert_eq!(
            resolve_within("quick.example", Duration::from_secs(5), quick),
            [IpAddr::from([192, 0, 2, 1]), IpAddr::from([192, 0, 2, 2])]
        );
    }
}
