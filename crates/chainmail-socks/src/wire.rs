//! What SOCKS puts on the wire: addresses, commands, reply codes, replies
//! and the UDP request header.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest host name either protocol carries: SOCKS5 has a one-byte
/// length, and rsockd holds SOCKS4a to the same bound.
pub const MAX_NAME: usize = 255;

/// The longest SOCKS4 USERID rsockd takes.
pub const MAX_USERID: usize = 255;

/// SOCKS4 reply: request granted.
pub const V4_GRANTED: u8 = 90;
/// SOCKS4 reply: rejected or failed.
pub const V4_REJECTED: u8 = 91;
/// SOCKS4 reply: rejected, the client runs no identd.
pub const V4_NO_IDENTD: u8 = 92;
/// SOCKS4 reply: rejected, identd and USERID disagree.
pub const V4_BAD_ID: u8 = 93;

/// SOCKS5 REP codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rep {
    /// 0: succeeded.
    Succeeded = 0,
    /// 1: general SOCKS server failure.
    GeneralFailure = 1,
    /// 2: connection not allowed by ruleset.
    NotAllowed = 2,
    /// 3: network unreachable.
    NetworkUnreachable = 3,
    /// 4: host unreachable.
    HostUnreachable = 4,
    /// 5: connection refused.
    ConnectionRefused = 5,
    /// 6: TTL expired.
    TtlExpired = 6,
    /// 7: command not supported.
    CommandNotSupported = 7,
    /// 8: address type not supported.
    AddressTypeNotSupported = 8,
}

impl Rep {
    /// The REP for a byte from an upstream (unknown codes are general
    /// failures).
    pub fn from_byte(b: u8) -> Rep {
        match b {
            0 => Rep::Succeeded,
            2 => Rep::NotAllowed,
            3 => Rep::NetworkUnreachable,
            4 => Rep::HostUnreachable,
            5 => Rep::ConnectionRefused,
            6 => Rep::TtlExpired,
            7 => Rep::CommandNotSupported,
            8 => Rep::AddressTypeNotSupported,
            _ => Rep::GeneralFailure,
        }
    }
}

/// The protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// SOCKS4 or 4a.
    V4,
    /// SOCKS5.
    V5,
}

/// What the client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// A TCP connection to the target.
    Connect,
    /// A listening socket for one connection from the target.
    Bind,
    /// A UDP relay (SOCKS5 only).
    UdpAssociate,
}

impl Command {
    /// The name used in logs and `SOCKD_COMMAND`.
    pub fn name(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp",
        }
    }

    /// The command byte (the same in SOCKS4 and 5).
    pub fn byte(self) -> u8 {
        match self {
            Command::Connect => 1,
            Command::Bind => 2,
            Command::UdpAssociate => 3,
        }
    }
}

/// A destination host: an address, or a name the proxy resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An address (IPv4-mapped IPv6 addresses are kept as IPv4).
    Ip(IpAddr),
    /// A host name, checked by [`valid_name`].
    Name(String),
}

impl Host {
    /// `Host::Ip`, with an IPv4-mapped IPv6 address turned into IPv4.
    pub fn ip(ip: IpAddr) -> Host {
        Host::Ip(canonical(ip))
    }
}

/// An IPv4-mapped IPv6 address as IPv4; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A host and a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The host.
    pub host: Host,
    /// The port.
    pub port: u16,
}

impl Target {
    /// The target of a socket address.
    pub fn from_socket(a: SocketAddr) -> Target {
        Target { host: Host::ip(a.ip()), port: a.port() }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Whether `name` is a host name rsockd passes on or resolves: 1 to 255
/// bytes of letters, digits, `-`, `_` and `.`. Anything else (spaces,
/// controls, `%`, `/`) is refused before it reaches a resolver or a log.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A SOCKS4 reply: `00 CD PORT IP`. An address that is not IPv4 is sent
/// as 0.0.0.0.
pub fn reply_v4(code: u8, bound: Option<SocketAddr>) -> [u8; 8] {
    let (ip, port) = match bound.map(|a| (canonical(a.ip()), a.port())) {
        Some((IpAddr::V4(ip), port)) => (ip, port),
        _ => (Ipv4Addr::UNSPECIFIED, 0),
    };
    let mut r = [0u8; 8];
    r[1] = code;
    r[2..4].copy_from_slice(&port.to_be_bytes());
    r[4..8].copy_from_slice(&ip.octets());
    r
}

/// A SOCKS5 reply: `05 REP 00 ATYP ADDR PORT`; no address is 0.0.0.0:0.
pub fn reply_v5(rep: Rep, bound: Option<&Target>) -> Vec<u8> {
    let mut r = vec![5, rep as u8, 0];
    let unspecified = Target { host: Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port: 0 };
    encode_address(&mut r, bound.unwrap_or(&unspecified));
    r
}

/// `ATYP ADDR PORT` as SOCKS5 writes it (names longer than 255 bytes are
/// cut; [`valid_name`] names never are).
pub fn encode_address(out: &mut Vec<u8>, t: &Target) {
    match &t.host {
        Host::Ip(IpAddr::V4(a)) => {
            out.push(1);
            out.extend_from_slice(&a.octets());
        }
        Host::Ip(IpAddr::V6(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Host::Name(n) => {
            let n = &n.as_bytes()[..n.len().min(MAX_NAME)];
            out.push(3);
            out.push(n.len() as u8);
            out.extend_from_slice(n);
        }
    }
    out.extend_from_slice(&t.port.to_be_bytes());
}

/// Why an address could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// More bytes are needed.
    #[error("truncated address")]
    Truncated,
    /// ATYP is not 1, 3 or 4.
    #[error("unknown address type {0}")]
    UnknownType(u8),
    /// A zero-length or malformed name.
    #[error("invalid host name")]
    BadName,
}

/// Reads `ATYP ADDR PORT` from the start of `b`: the target and the bytes
/// it took.
pub fn decode_address(b: &[u8]) -> Result<(Target, usize), AddressError> {
    let (&atyp, rest) = b.split_first().ok_or(AddressError::Truncated)?;
    let (host, len) = match atyp {
        1 => {
            let a: [u8; 4] =
                rest.get(..4).ok_or(AddressError::Truncated)?.try_into().map_err(|_| AddressError::Truncated)?;
            (Host::Ip(IpAddr::V4(Ipv4Addr::from(a))), 4)
        }
        4 => {
            let a: [u8; 16] =
                rest.get(..16).ok_or(AddressError::Truncated)?.try_into().map_err(|_| AddressError::Truncated)?;
            (Host::ip(IpAddr::V6(Ipv6Addr::from(a))), 16)
        }
        3 => {
            let (&n, name) = rest.split_first().ok_or(AddressError::Truncated)?;
            let name = name.get(..n as usize).ok_or(AddressError::Truncated)?;
            if !valid_name(name) {
                return Err(AddressError::BadName);
            }
            (Host::Name(String::from_utf8_lossy(name).into_owned()), 1 + n as usize)
        }
        t => return Err(AddressError::UnknownType(t)),
    };
    let p = rest.get(len..len + 2).ok_or(AddressError::Truncated)?;
    Ok((Target { host, port: u16::from_be_bytes([p[0], p[1]]) }, 1 + len + 2))
}

/// A SOCKS5 UDP datagram's header (`RSV(2) FRAG ATYP ADDR PORT`) decoded:
/// the target and where the payload starts. Fragments (FRAG ≠ 0) are
/// refused, as RFC 1928 allows.
pub fn decode_udp(b: &[u8]) -> Result<(Target, usize), UdpError> {
    if b.len() < 4 {
        return Err(UdpError::Truncated);
    }
    if b[0] != 0 || b[1] != 0 {
        return Err(UdpError::Reserved);
    }
    if b[2] != 0 {
        return Err(UdpError::Fragment);
    }
    let (t, n) = decode_address(&b[3..]).map_err(UdpError::Address)?;
    Ok((t, 3 + n))
}

/// The UDP header for a datagram from `from`.
pub fn encode_udp(from: &Target, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(22 + payload.len());
    v.extend_from_slice(&[0, 0, 0]);
    encode_address(&mut v, from);
    v.extend_from_slice(payload);
    v
}

/// Why a UDP datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// Shorter than its header.
    #[error("truncated datagram")]
    Truncated,
    /// RSV not zero.
    #[error("reserved bytes not zero")]
    Reserved,
    /// A fragment.
    #[error("fragments are not supported")]
    Fragment,
    /// A bad address.
    #[error(transparent)]
    Address(AddressError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip() {
        for t in [
            Target { host: Host::Ip("10.1.2.3".parse().unwrap()), port: 80 },
            Target { host: Host::Ip("2001:db8::1".parse().unwrap()), port: 443 },
            Target { host: Host::Name("example.org".into()), port: 65535 },
        ] {
            let mut v = Vec::new();
            encode_address(&mut v, &t);
            assert_eq!(decode_address(&v), Ok((t.clone(), v.len())));
            for cut in 0..v.len() {
                assert_eq!(decode_address(&v[..cut]), Err(AddressError::Truncated), "{t} cut {cut}");
            }
            let d = encode_udp(&t, b"payload");
            let (t2, off) = decode_udp(&d).unwrap();
            assert_eq!((t2, &d[off..]), (t, &b"payload"[..]));
        }
    }

    #[test]
    fn bad_addresses() {
        assert_eq!(decode_address(&[9, 0]), Err(AddressError::UnknownType(9)));
        assert_eq!(decode_address(&[3, 0, 0, 80]), Err(AddressError::BadName));
        assert_eq!(decode_address(b"\x03\x03a b\x00\x50"), Err(AddressError::BadName));
        assert_eq!(decode_udp(&[0, 0, 1, 1, 1, 2, 3, 4, 0, 1]), Err(UdpError::Fragment));
        assert_eq!(decode_udp(&[0, 1, 0, 1, 1, 2, 3, 4, 0, 1]), Err(UdpError::Reserved));
        assert_eq!(decode_udp(&[0, 0, 0]), Err(UdpError::Truncated));
    }

    #[test]
    fn names() {
        assert!(valid_name(b"a.example-1_x.org"));
        for bad in [&b""[..], b"a b", b"a;b", b"a\0", b"%U", b"a/b", &[b'a'; 256]] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&[b'a'; 255]));
    }

    #[test]
    fn replies() {
        assert_eq!(reply_v4(90, Some("1.2.3.4:258".parse().unwrap())), [0, 90, 1, 2, 1, 2, 3, 4]);
        assert_eq!(reply_v4(91, Some("[::1]:5".parse().unwrap())), [0, 91, 0, 0, 0, 0, 0, 0]);
        assert_eq!(reply_v4(90, Some("[::ffff:1.2.3.4]:1".parse().unwrap())), [0, 90, 0, 1, 1, 2, 3, 4]);
        assert_eq!(reply_v5(Rep::NotAllowed, None), [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]);
    }
}
