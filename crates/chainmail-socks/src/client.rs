//! The client side of a SOCKS handshake, for talking to an upstream.
//!
//! [`ClientHandshake::new`] gives the first bytes to send; [`push`]
//! takes what the upstream answers and says what to send next, until the
//! reply. A BIND has a second reply ([`expect_second_reply`]).
//!
//! [`push`]: ClientHandshake::push
//! [`expect_second_reply`]: ClientHandshake::expect_second_reply

use std::net::{IpAddr, Ipv4Addr};

use crate::wire::{self, AddressError, Command, Host, Rep, Target, V4_GRANTED};

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SOCKS4: addresses only; a name is resolved before.
    Socks4,
    /// SOCKS4a: names go to the upstream unresolved.
    Socks4a,
    /// SOCKS5: names go unresolved, IPv6, UDP, RFC 1929.
    Socks5,
}

impl Protocol {
    /// Whether the upstream takes names (no local resolution, no DNS leak).
    pub fn takes_names(self) -> bool {
        !matches!(self, Protocol::Socks4)
    }
}

/// RFC 1929 credentials of a route.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The user name (1 to 255 bytes).
    pub user: String,
    /// The password (0 to 255 bytes).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.user)
    }
}

/// What the upstream said or did wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request cannot be put in this protocol (IPv6 or UDP in
    /// SOCKS4, a name in plain SOCKS4).
    #[error("{0} cannot be sent in this protocol")]
    Unsupported(&'static str),
    /// A SOCKS4 reply other than 90.
    #[error("upstream rejected the request (SOCKS4 code {0})")]
    Rejected(u8),
    /// A SOCKS5 reply other than success.
    #[error("upstream failed the request (REP {})", *.0 as u8)]
    Failed(Rep),
    /// The upstream accepted none of our methods.
    #[error("upstream accepts none of our authentication methods")]
    NoMethod,
    /// The upstream refused the route's credentials.
    #[error("upstream refused the credentials")]
    AuthRefused,
    /// Bytes that are not the protocol.
    #[error("protocol error from upstream: {0}")]
    Protocol(&'static str),
    /// The upstream closed before its reply.
    #[error("upstream closed the connection")]
    Closed,
}

impl ClientError {
    /// Whether the upstream itself is at fault (to be marked bad), rather
    /// than having answered the request.
    pub fn upstream_broken(&self) -> bool {
        matches!(
            self,
            ClientError::NoMethod | ClientError::AuthRefused | ClientError::Protocol(_) | ClientError::Closed
        )
    }

    /// The SOCKS5 REP to pass on to our client.
    pub fn rep(&self) -> Rep {
        match self {
            ClientError::Failed(r) => *r,
            ClientError::Unsupported(_) => Rep::AddressTypeNotSupported,
            ClientError::Rejected(_) => Rep::ConnectionRefused,
            _ => Rep::GeneralFailure,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    V4Reply,
    V5Method,
    V5Auth,
    V5Reply,
    Done,
}

/// The client side of one handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    phase: Phase,
    buf: Vec<u8>,
    request: Vec<u8>,
    credentials: Option<Credentials>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Read more.
    NeedMore,
    /// Send these bytes, then read more.
    Send(Vec<u8>),
    /// The request was granted; the bound address (for BIND, the listening
    /// address, then the peer's).
    Granted(Target),
}

impl ClientHandshake {
    /// A handshake asking for `command` to `target`, with `userid` as the
    /// SOCKS4 USERID and `credentials` offered to a SOCKS5 upstream. The
    /// bytes to send first.
    pub fn new(
        protocol: Protocol,
        command: Command,
        target: &Target,
        userid: &[u8],
        credentials: Option<&Credentials>,
    ) -> Result<(ClientHandshake, Vec<u8>), ClientError> {
        let userid = &userid[..userid.len().min(wire::MAX_USERID)];
        let mut h = ClientHandshake {
            phase: Phase::V4Reply,
            buf: Vec::new(),
            request: Vec::new(),
            credentials: credentials.cloned(),
        };
        match protocol {
            Protocol::Socks4 | Protocol::Socks4a => {
                if command == Command::UdpAssociate {
                    return Err(ClientError::Unsupported("UDP ASSOCIATE"));
                }
                let mut v = vec![4, command.byte()];
                v.extend_from_slice(&target.port.to_be_bytes());
                match &target.host {
                    Host::Ip(IpAddr::V4(a)) => {
                        v.extend_from_slice(&a.octets());
                        v.extend_from_slice(userid);
                        v.push(0);
                    }
                    Host::Ip(IpAddr::V6(_)) => return Err(ClientError::Unsupported("an IPv6 address")),
                    Host::Name(_) if protocol == Protocol::Socks4 => {
                        return Err(ClientError::Unsupported("a host name"));
                    }
                    Host::Name(n) => {
                        v.extend_from_slice(&[0, 0, 0, 1]);
                        v.extend_from_slice(userid);
                        v.push(0);
                        v.extend_from_slice(n.as_bytes());
                        v.push(0);
                    }
                }
                Ok((h, v))
            }
            Protocol::Socks5 => {
                h.phase = Phase::V5Method;
                h.request = vec![5, command.byte(), 0];
                wire::encode_address(&mut h.request, target);
                let greeting = if h.credentials.is_some() { vec![5, 1, 2] } else { vec![5, 1, 0] };
                Ok((h, greeting))
            }
        }
    }

    /// After the first reply to a BIND: wait for the second.
    pub fn expect_second_reply(&mut self) {
        if self.phase == Phase::Done {
            self.phase = if self.request.is_empty() { Phase::V4Reply } else { Phase::V5Reply };
        }
    }

    /// Bytes received after the reply: the first bytes of the relayed
    /// stream, or the start of a BIND's second reply.
    pub fn take_leftover(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// The connection closed: the error to report.
    pub fn eof(&self) -> ClientError {
        ClientError::Closed
    }

    /// Takes bytes from the upstream.
    pub fn push(&mut self, data: &[u8]) -> Result<ClientStep, ClientError> {
        if self.buf.len() + data.len() > 1024 {
            return Err(ClientError::Protocol("oversize reply"));
        }
        self.buf.extend_from_slice(data);
        match self.phase {
            Phase::Done => Ok(ClientStep::NeedMore),
            Phase::V4Reply => {
                if self.buf.len() < 8 {
                    return Ok(ClientStep::NeedMore);
                }
                let r: Vec<u8> = self.buf.drain(..8).collect();
                if r[0] != 0 {
                    return Err(ClientError::Protocol("SOCKS4 reply version not 0"));
                }
                if r[1] != V4_GRANTED {
                    return Err(ClientError::Rejected(r[1]));
                }
                self.phase = Phase::Done;
                let ip = Ipv4Addr::new(r[4], r[5], r[6], r[7]);
                Ok(ClientStep::Granted(Target {
                    host: Host::Ip(IpAddr::V4(ip)),
                    port: u16::from_be_bytes([r[2], r[3]]),
                }))
            }
            Phase::V5Method => {
                if self.buf.len() < 2 {
                    return Ok(ClientStep::NeedMore);
                }
                let r: Vec<u8> = self.buf.drain(..2).collect();
                if r[0] != 5 {
                    return Err(ClientError::Protocol("SOCKS5 method reply version not 5"));
                }
                match (r[1], &self.credentials) {
                    (0, _) => {
                        self.phase = Phase::V5Reply;
                        Ok(ClientStep::Send(self.request.clone()))
                    }
                    (2, Some(c)) => {
                        let (u, p) = (c.user.as_bytes(), c.password.as_bytes());
                        let (u, p) = (&u[..u.len().min(255)], &p[..p.len().min(255)]);
                        let mut v = vec![1, u.len() as u8];
                        v.extend_from_slice(u);
                        v.push(p.len() as u8);
                        v.extend_from_slice(p);
                        self.phase = Phase::V5Auth;
                        Ok(ClientStep::Send(v))
                    }
                    (0xff, _) => Err(ClientError::NoMethod),
                    _ => Err(ClientError::Protocol("SOCKS5 method we did not offer")),
                }
            }
            Phase::V5Auth => {
                if self.buf.len() < 2 {
                    return Ok(ClientStep::NeedMore);
                }
                let r: Vec<u8> = self.buf.drain(..2).collect();
                if r[1] != 0 {
                    return Err(ClientError::AuthRefused);
                }
                self.phase = Phase::V5Reply;
                Ok(ClientStep::Send(self.request.clone()))
            }
            Phase::V5Reply => {
                if self.buf.len() < 4 {
                    return Ok(ClientStep::NeedMore);
                }
                if self.buf[0] != 5 {
                    return Err(ClientError::Protocol("SOCKS5 reply version not 5"));
                }
                if self.buf[1] != 0 {
                    return Err(ClientError::Failed(Rep::from_byte(self.buf[1])));
                }
                match wire::decode_address(&self.buf[3..]) {
                    Ok((t, n)) => {
                        self.buf.drain(..3 + n);
                        self.phase = Phase::Done;
                        Ok(ClientStep::Granted(t))
                    }
                    Err(AddressError::Truncated) => Ok(ClientStep::NeedMore),
                    Err(_) => Err(ClientError::Protocol("bad address in SOCKS5 reply")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut ClientHandshake, answers: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Result<Target, ClientError>) {
        let mut sent = Vec::new();
        for piece in answers.chunks(chunk) {
            let mut data = piece;
            loop {
                match h.push(data) {
                    Ok(ClientStep::NeedMore) => break,
                    Ok(ClientStep::Send(v)) => sent.push(v),
                    Ok(ClientStep::Granted(t)) => return (sent, Ok(t)),
                    Err(e) => return (sent, Err(e)),
                }
                data = &[];
            }
        }
        (sent, Err(ClientError::Closed))
    }

    fn name(n: &str, port: u16) -> Target {
        Target { host: Host::Name(n.into()), port }
    }

    #[test]
    fn requests() {
        let t4 = Target { host: Host::Ip("1.2.3.4".parse().unwrap()), port: 80 };
        let (_, v) = ClientHandshake::new(Protocol::Socks4, Command::Connect, &t4, b"me", None).unwrap();
        assert_eq!(v, [4, 1, 0, 80, 1, 2, 3, 4, b'm', b'e', 0]);
        let (_, v) = ClientHandshake::new(Protocol::Socks4a, Command::Bind, &name("a.b", 21), b"", None).unwrap();
        assert_eq!(v, [4, 2, 0, 21, 0, 0, 0, 1, 0, b'a', b'.', b'b', 0]);
        assert_eq!(
            ClientHandshake::new(Protocol::Socks4, Command::Connect, &name("a.b", 1), b"", None).unwrap_err(),
            ClientError::Unsupported("a host name")
        );
        let t6 = Target { host: Host::Ip("::1".parse().unwrap()), port: 80 };
        assert!(ClientHandshake::new(Protocol::Socks4a, Command::Connect, &t6, b"", None).is_err());
        assert!(ClientHandshake::new(Protocol::Socks4, Command::UdpAssociate, &t4, b"", None).is_err());
    }

    #[test]
    fn socks5_with_credentials_in_chunks() {
        let creds = Credentials { user: "route".into(), password: "pw".into() };
        let answers = [&[5u8, 2][..], &[1, 0], &[5, 0, 0, 3, 3], b"x.y", &[0, 7], b"DATA"].concat();
        for chunk in 1..=64 {
            let (mut h, greeting) =
                ClientHandshake::new(Protocol::Socks5, Command::Connect, &name("a.b", 80), b"", Some(&creds)).unwrap();
            assert_eq!(greeting, [5, 1, 2]);
            let (sent, r) = run(&mut h, &answers, chunk);
            assert_eq!(r, Ok(name("x.y", 7)), "chunk {chunk}");
            assert_eq!(sent[0], [&[1u8, 5][..], b"route", &[2], b"pw"].concat());
            assert_eq!(sent[1], [&[5u8, 1, 0, 3, 3][..], b"a.b", &[0, 80]].concat());
            let mut rest = h.take_leftover();
            // What the chunked run had not fed yet.
            let fed = answers.len() - 4;
            let consumed_upto = fed.div_ceil(chunk) * chunk;
            rest.extend_from_slice(&answers[consumed_upto.min(answers.len())..]);
            assert_eq!(rest, b"DATA", "chunk {chunk}");
        }
    }

    #[test]
    fn failures() {
        let t = name("a.b", 80);
        let cases: Vec<(Protocol, Option<Credentials>, Vec<u8>, ClientError)> = vec![
            (Protocol::Socks4a, None, vec![0, 91, 0, 0, 0, 0, 0, 0], ClientError::Rejected(91)),
            (
                Protocol::Socks4a,
                None,
                vec![5, 90, 0, 0, 0, 0, 0, 0],
                ClientError::Protocol("SOCKS4 reply version not 0"),
            ),
            (Protocol::Socks5, None, vec![5, 0xff], ClientError::NoMethod),
            (Protocol::Socks5, None, vec![5, 2], ClientError::Protocol("SOCKS5 method we did not offer")),
            (
                Protocol::Socks5,
                Some(Credentials { user: "u".into(), password: "p".into() }),
                vec![5, 2, 1, 1],
                ClientError::AuthRefused,
            ),
            (Protocol::Socks5, None, vec![5, 0, 5, 5, 0, 1], ClientError::Failed(Rep::ConnectionRefused)),
            (
                Protocol::Socks5,
                None,
                vec![5, 0, 5, 0, 0, 9, 0, 0],
                ClientError::Protocol("bad address in SOCKS5 reply"),
            ),
            (Protocol::Socks5, None, vec![5, 0, 5, 0, 0, 1, 0], ClientError::Closed),
        ];
        for (p, c, answers, want) in cases {
            for chunk in 1..=8 {
                let (mut h, _) = ClientHandshake::new(p, Command::Connect, &t, b"", c.as_ref()).unwrap();
                assert_eq!(run(&mut h, &answers, chunk).1, Err(want.clone()), "{answers:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn bind_has_two_replies() {
        let (mut h, _) = ClientHandshake::new(Protocol::Socks4a, Command::Bind, &name("a.b", 21), b"", None).unwrap();
        let both = [0, 90, 0x10, 0, 127, 0, 0, 1, 0, 90, 0, 9, 10, 0, 0, 2];
        assert_eq!(
            h.push(&both),
            Ok(ClientStep::Granted(Target { host: Host::Ip("127.0.0.1".parse().unwrap()), port: 4096 }))
        );
        h.expect_second_reply();
        assert_eq!(
            h.push(&[]),
            Ok(ClientStep::Granted(Target { host: Host::Ip("10.0.0.2".parse().unwrap()), port: 9 }))
        );
    }
}
