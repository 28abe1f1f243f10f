//! Where a QMQP server is: the entries of qmail-qmqpc's
//! `control/qmqpservers` and the arguments of qrelay's `qmqp_resolve()`.
//!
//! * `1.2.3.4`, `::1`: a numeric address, port 628;
//! * `1.2.3.4:1234`, `[::1]:1234`: with a port;
//! * `host`, `host:1234`: a name for the system resolver;
//! * `/path`: a Unix socket;
//! * `@name`: an abstract Unix socket.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::QMQP_PORT;

/// A server's address as written, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSpec {
    /// A numeric IP address and port.
    Inet(SocketAddr),
    /// A host name and port, for the resolver.
    Host(String, u16),
    /// A Unix socket's path.
    Unix(PathBuf),
    /// An abstract Unix socket's name (without the leading NUL).
    Abstract(Vec<u8>),
}

/// Why an entry is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a QMQP server address: {0:?}")]
pub struct BadServer(pub String);

impl ServerSpec {
    /// Parses one entry; the port defaults to 628.
    pub fn parse(s: &str) -> Result<ServerSpec, BadServer> {
        ServerSpec::parse_with_port(s, QMQP_PORT)
    }

    /// Parses one entry of another protocol: the port defaults to
    /// `default_port` (0: none; the caller refuses it, as no explicit
    /// port is 0).
    pub fn parse_with_port(s: &str, default_port: u16) -> Result<ServerSpec, BadServer> {
        let bad = || BadServer(s.to_owned());
        if s.is_empty() || s.bytes().any(|b| b == 0 || b.is_ascii_whitespace()) {
            return Err(bad());
        }
        if s.starts_with('/') {
            return Ok(ServerSpec::Unix(PathBuf::from(s)));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() || name.len() > 107 {
                return Err(bad());
            }
            return Ok(ServerSpec::Abstract(name.as_bytes().to_vec()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(ServerSpec::Inet(SocketAddr::new(ip, default_port)));
        }
        if let Ok(sa) = s.parse::<SocketAddr>() {
            return Ok(ServerSpec::Inet(sa));
        }
        if let Some(rest) = s.strip_prefix('[') {
            // `[v6]` without a port.
            let ip = rest.strip_suffix(']').and_then(|v| v.parse::<std::net::Ipv6Addr>().ok()).ok_or_else(bad)?;
            return Ok(ServerSpec::Inet(SocketAddr::new(IpAddr::V6(ip), default_port)));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p).ok_or_else(bad)?),
            None => (s, default_port),
        };
        let hostname_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
        if host.is_empty() || host.len() > 253 || !host.bytes().all(hostname_byte) {
            return Err(bad());
        }
        Ok(ServerSpec::Host(host.to_owned(), port))
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let inet = |s: &str| Ok(ServerSpec::Inet(s.parse().expect("socket address")));
        let table = [
            ("192.168.1.99", inet("192.168.1.99:628")),
            ("127.0.0.1:6280", inet("127.0.0.1:6280")),
            ("::1", inet("[::1]:628")),
            ("[::1]", inet("[::1]:628")),
            ("[::1]:4321", inet("[::1]:4321")),
            ("localhost", Ok(ServerSpec::Host("localhost".into(), 628))),
            ("server1.local:1234", Ok(ServerSpec::Host("server1.local".into(), 1234))),
            ("/run/q.sock", Ok(ServerSpec::Unix("/run/q.sock".into()))),
            ("@server4", Ok(ServerSpec::Abstract(b"server4".to_vec()))),
            ("", Err(BadServer("".into()))),
            ("@", Err(BadServer("@".into()))),
            ("host:0", Err(BadServer("host:0".into()))),
            ("host:65536", Err(BadServer("host:65536".into()))),
            ("host:", Err(BadServer("host:".into()))),
            ("[::1", Err(BadServer("[::1".into()))),
            ("a b", Err(BadServer("a b".into()))),
            ("1.2.3.4:x", Err(BadServer("1.2.3.4:x".into()))),
            ("ho/st", Err(BadServer("ho/st".into()))),
        ];
        for (s, want) in table {
            assert_eq!(ServerSpec::parse(s), want, "{s:?}");
        }
    }

    #[test]
    fn other_default_ports() {
        let inet = |s: &str| Ok(ServerSpec::Inet(s.parse().expect("socket address")));
        for (s, port, want) in [
            ("224.0.0.42", 5478, inet("224.0.0.42:5478")),
            ("ff02::dead:beef", 5478, inet("[ff02::dead:beef]:5478")),
            ("[ff02::dead:beef]:1234", 5478, inet("[ff02::dead:beef]:1234")),
            ("127.0.0.1", 0, inet("127.0.0.1:0")),
            ("localhost", 5479, Ok(ServerSpec::Host("localhost".into(), 5479))),
            ("@bp-control", 5478, Ok(ServerSpec::Abstract(b"bp-control".to_vec()))),
        ] {
            assert_eq!(ServerSpec::parse_with_port(s, port), want, "{s:?}");
        }
    }
}
