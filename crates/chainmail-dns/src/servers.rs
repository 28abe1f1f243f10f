//! Which DNS servers to ask: `DNSCACHEIP`, else `/etc/resolv.conf`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

/// The standard DNS port.
pub(crate) const DNS_PORT: u16 = 53;

/// The environment variable that overrides `/etc/resolv.conf` (djbdns).
pub const DNSCACHEIP: &str = "DNSCACHEIP";

/// The system resolver configuration.
pub(crate) const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A bad server list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServersError {
    /// An item of `DNSCACHEIP` is not `IP`, `IP:port`, `[IPv6]` or
    /// `[IPv6]:port`.
    #[error("DNSCACHEIP: bad address {item:?}: {reason}")]
    BadAddress {
        /// The offending item, as written.
        item: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `DNSCACHEIP` holds separators only.
    #[error("DNSCACHEIP: no address")]
    Empty,
}

/// The DNS servers to query, in the order given.
///
/// Built from `DNSCACHEIP` ([`Servers::from_dnscacheip`]) or from
/// `/etc/resolv.conf` (`Servers::from_resolv_conf`); [`Servers::from_env`]
/// picks one the way djbdns programs do. Only the server addresses are taken
/// from `resolv.conf`: `search`, `domain` and `options` are ignored on
/// purpose (mail domains are always fully qualified, and the timeouts are
/// `timeoutdns`'s business).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servers {
    addrs: Vec<SocketAddr>,
}

impl Servers {
    /// The servers at `addrs`, in that order.
    ///
    /// An empty list means `127.0.0.1:53`, as for an empty `resolv.conf`.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        if addrs.is_empty() {
            return Self::localhost();
        }
        Self { addrs }
    }

    /// `127.0.0.1:53`, what libc and djbdns use when nothing is configured.
    pub fn localhost() -> Self {
        Self { addrs: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT)] }
    }

    /// The addresses, in order.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Parses a `DNSCACHEIP` value: one or more `IP` or `IP:port`,
    /// separated by commas and/or white space; an IPv6 address with a port
    /// is written `[::1]:5353` (`::1` and `[::1]` alone mean port 53).
    ///
    /// Empty items (`a,,b`, a trailing comma) are skipped; a value with no
    /// address at all, an unparsable address, a port that is not a number
    /// in 1–65535, or an IPv6 zone (`fe80::1%eth0`) are errors.
    pub(crate) fn parse_dnscacheip(value: &str) -> Result<Vec<SocketAddr>, ServersError> {
        let addrs = value
            .split(|c: char| c == ',' || c.is_ascii_whitespace())
            .filter(|item| !item.is_empty())
            .map(parse_item)
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ServersError::Empty);
        }
        Ok(addrs)
    }

    /// `Servers::parse_dnscacheip` as a `Servers`.
    pub fn from_dnscacheip(value: &str) -> Result<Self, ServersError> {
        Ok(Self { addrs: Self::parse_dnscacheip(value)? })
    }

    /// The `nameserver` lines of a `resolv.conf` text, port 53 each.
    ///
    /// Like libc, this skips lines it cannot use (an unparsable address, or
    /// an IPv6 address with a `%zone`) instead of failing, and yields an
    /// empty list if there is no usable line.
    pub(crate) fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
        text.lines()
            .filter_map(|line| {
                let mut words = line.split_ascii_whitespace();
                if words.next()? != "nameserver" {
                    return None;
                }
                let ip: IpAddr = words.next()?.parse().ok()?;
                Some(SocketAddr::new(ip, DNS_PORT))
            })
            .collect()
    }

    /// The servers of the `resolv.conf` at `path`; `127.0.0.1:53` if it
    /// names none or does not exist (other read errors are returned).
    pub(crate) fn from_resolv_conf(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::new(Self::parse_resolv_conf(&text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::localhost()),
            Err(e) => Err(e),
        }
    }

    /// The servers from `dnscacheip` (the value of `DNSCACHEIP`, if set)
    /// or else from `RESOLV_CONF`: a `DNSCACHEIP` that is unset or holds
    /// only white space and commas means `resolv.conf`; one that holds a
    /// bad address is an error (better to defer than to query a server the
    /// administrator did not mean).
    pub fn choose(dnscacheip: Option<&str>, resolv_conf: &Path) -> Result<Self, FromEnvError> {
        match dnscacheip {
            Some(v) => match Self::from_dnscacheip(v) {
                Ok(s) => Ok(s),
                Err(ServersError::Empty) => Self::from_resolv_conf(resolv_conf).map_err(FromEnvError::ResolvConf),
                Err(e) => Err(FromEnvError::DnsCacheIp(e)),
            },
            None => Self::from_resolv_conf(resolv_conf).map_err(FromEnvError::ResolvConf),
        }
    }

    /// [`Servers::choose`] with the process's `DNSCACHEIP` and
    /// `/etc/resolv.conf`.
    pub fn from_env() -> Result<Self, FromEnvError> {
        let value = std::env::var_os(DNSCACHEIP);
        // A DNSCACHEIP that is not UTF-8 cannot hold an address.
        let value = match value {
            Some(v) => Some(v.into_string().map_err(|_| {
                FromEnvError::DnsCacheIp(ServersError::BadAddress { item: String::new(), reason: "not UTF-8" })
            })?),
            None => None,
        };
        Self::choose(value.as_deref(), Path::new(RESOLV_CONF))
    }
}

/// Why [`Servers::from_env`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FromEnvError {
    /// `DNSCACHEIP` is set but bad.
    #[error(transparent)]
    DnsCacheIp(ServersError),
    /// `/etc/resolv.conf` exists but cannot be read.
    #[error("unable to read {RESOLV_CONF}: {0}")]
    ResolvConf(std::io::Error),
}

fn parse_item(item: &str) -> Result<SocketAddr, ServersError> {
    let bad = |reason| ServersError::BadAddress { item: item.to_owned(), reason };
    if item.contains('%') {
        return Err(bad("IPv6 zones are not supported"));
    }
    // A bare address: 1.2.3.4, ::1 (an IPv6 address is never read as
    // address:port, so "::1:53" is the address ::1:53).
    if let Ok(ip) = item.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DNS_PORT));
    }
    // [::1] alone.
    if let Some(inner) = item.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return match inner.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => Ok(SocketAddr::new(IpAddr::V6(ip), DNS_PORT)),
            Ok(IpAddr::V4(_)) => Err(bad("brackets are for IPv6 addresses")),
            Err(_) => Err(bad("not an IPv6 address")),
        };
    }
    // 1.2.3.4:53 or [::1]:53.
    let (host, port) = item.rsplit_once(':').ok_or_else(|| bad("not an IP address"))?;
    let ip = match host.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => match inner.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => IpAddr::V6(ip),
            Ok(IpAddr::V4(_)) => return Err(bad("brackets are for IPv6 addresses")),
            Err(_) => return Err(bad("not an IPv6 address")),
        },
        None => match host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => IpAddr::V4(ip),
            Ok(IpAddr::V6(_)) => return Err(bad("an IPv6 address with a port is written [IPv6]:port")),
            Err(_) => return Err(bad("not an IP address")),
        },
    };
    // u16's parser takes a leading '+'; a port is digits only.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the port is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("the port is not in 1-65535")),
        Ok(port) => Ok(SocketAddr::new(ip, port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn dnscacheip_good() {
        let cases: &[(&str, &[&str])] = &[
            ("127.0.0.1", &["127.0.0.1:53"]),
            ("127.0.0.1:5353", &["127.0.0.1:5353"]),
            ("::1", &["[::1]:53"]),
            ("[::1]", &["[::1]:53"]),
            ("[::1]:5353", &["[::1]:5353"]),
            ("::1:53", &["[::1:53]:53"]),
            ("1.2.3.4,5.6.7.8", &["1.2.3.4:53", "5.6.7.8:53"]),
            ("1.2.3.4 5.6.7.8", &["1.2.3.4:53", "5.6.7.8:53"]),
            (" 1.2.3.4 ,\t5.6.7.8:54 ,, [2001:db8::1]:55,", &["1.2.3.4:53", "5.6.7.8:54", "[2001:db8::1]:55"]),
            ("10.0.0.1:65535", &["10.0.0.1:65535"]),
            ("1.1.1.1,1.1.1.1", &["1.1.1.1:53", "1.1.1.1:53"]),
        ];
        for (input, want) in cases {
            let want: Vec<SocketAddr> = want.iter().map(|s| sa(s)).collect();
            assert_eq!(Servers::parse_dnscacheip(input).as_ref(), Ok(&want), "{input:?}");
        }
    }

    #[test]
    fn dnscacheip_bad() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            (" , ,\t", ""),
            ("localhost", "localhost"),
            ("1.2.3", "1.2.3"),
            ("1.2.3.4.5", "1.2.3.4.5"),
            ("1.2.3.4:", "1.2.3.4:"),
            ("1.2.3.4:0", "1.2.3.4:0"),
            ("1.2.3.4:65536", "1.2.3.4:65536"),
            ("1.2.3.4:+53", "1.2.3.4:+53"),
            ("1.2.3.4:dns", "1.2.3.4:dns"),
            ("[1.2.3.4]", "[1.2.3.4]"),
            ("[1.2.3.4]:53", "[1.2.3.4]:53"),
            ("[::1", "[::1"),
            ("[::1]:", "[::1]:"),
            ("[::g]:53", "[::g]:53"),
            ("fe80::1%eth0", "fe80::1%eth0"),
            ("1.2.3.4;5.6.7.8", "1.2.3.4;5.6.7.8"),
            ("1.2.3.4,oops", "oops"),
        ];
        for (input, item) in cases {
            match Servers::parse_dnscacheip(input) {
                Err(ServersError::Empty) => assert!(item.is_empty(), "{input:?}: Empty"),
                Err(ServersError::BadAddress { item: got, reason }) => {
                    assert_eq!(&got, item, "{input:?}");
                    assert!(!reason.is_empty());
                    let msg = Servers::parse_dnscacheip(input).expect_err("bad").to_string();
                    assert!(msg.starts_with("DNSCACHEIP: bad address"), "{msg}");
                }
                Ok(v) => panic!("{input:?} accepted as {v:?}"),
            }
        }
        // "::1:5353" is an IPv6 address, not ::1 port 5353; with brackets
        // and a port it is the other one.
        assert_eq!(Servers::parse_dnscacheip("[::1]:5353"), Ok(vec![sa("[::1]:5353")]));
    }

    #[test]
    fn resolv_conf() {
        let text = "# comment\n; other comment\nsearch example.com\nnameserver 192.0.2.1\n\
                    nameserver\tfe80::1%eth0\nnameserver 2001:db8::53 # trailing\nnameserver bogus\n\
                    options timeout:1 attempts:5\n  nameserver 192.0.2.2\nnameservers 192.0.2.3\n";
        assert_eq!(
            Servers::parse_resolv_conf(text),
            vec![sa("192.0.2.1:53"), sa("[2001:db8::53]:53"), sa("192.0.2.2:53")]
        );
        assert_eq!(Servers::parse_resolv_conf("search x\n"), Vec::<SocketAddr>::new());
        assert_eq!(Servers::new(Vec::new()), Servers::localhost());
    }

    #[test]
    fn choose() {
        let missing = Path::new("/nonexistent/resolv.conf");
        let s = Servers::choose(Some("127.0.0.1:5300"), missing).expect("dnscacheip");
        assert_eq!(s.addrs(), &[sa("127.0.0.1:5300")]);
        // Unset or blank: resolv.conf, here missing, so localhost.
        assert_eq!(Servers::choose(None, missing).expect("default"), Servers::localhost());
        assert_eq!(Servers::choose(Some(" , "), missing).expect("blank"), Servers::localhost());
        assert!(matches!(Servers::choose(Some("nope"), missing), Err(FromEnvError::DnsCacheIp(_))));
        // An unreadable resolv.conf (a directory) is an error, not localhost.
        assert!(matches!(Servers::choose(None, Path::new("/")), Err(FromEnvError::ResolvConf(_))));
    }
}
