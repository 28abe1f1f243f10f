//! The upstream forms of `socks.conf` (`sockd @=S1,S2`) and
//! `SOCKS_SERVER`: `host[:port]` (SOCKS4, port 1080, as the original),
//! `socks4://host[:port]`, `socks4a://host[:port]`,
//! `socks5://[user:password@]host[:port]`. The host is a name, an IPv4
//! address or `[IPv6]`. In the user and password, `%XX` stands for the
//! byte XX (so that `:`, `@` and `,` can be written).

use std::fmt;
use std::net::IpAddr;

use crate::client::{Credentials, Protocol};
use crate::wire::{self, Host};

/// The port of an upstream given without one.
pub const DEFAULT_PORT: u16 = 1080;

/// One upstream server of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// The protocol spoken to it.
    pub protocol: Protocol,
    /// Its host.
    pub host: Host,
    /// Its port.
    pub port: u16,
    /// The route's credentials (SOCKS5 only).
    pub credentials: Option<Credentials>,
}

/// An upstream that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid upstream {text:?}: {reason}")]
pub struct UpstreamError {
    /// The text.
    pub text: String,
    /// Why.
    pub reason: &'static str,
}

impl Upstream {
    /// Parses one upstream.
    pub fn parse(s: &str) -> Result<Upstream, UpstreamError> {
        let err = |reason| UpstreamError { text: redact(s), reason };
        let (protocol, rest) = if let Some(r) = s.strip_prefix("socks4://") {
            (Protocol::Socks4, r)
        } else if let Some(r) = s.strip_prefix("socks4a://") {
            (Protocol::Socks4a, r)
        } else if let Some(r) = s.strip_prefix("socks5://") {
            (Protocol::Socks5, r)
        } else if s.contains("://") {
            return Err(err("unknown scheme (socks4, socks4a, socks5)"));
        } else {
            (Protocol::Socks4, s)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (credentials, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hp)) => {
                if protocol != Protocol::Socks5 {
                    return Err(err("credentials need socks5://"));
                }
                let (u, p) = userinfo.split_once(':').ok_or(err("credentials without ':'"))?;
                let user = percent_decode(u).ok_or(err("bad %-escape in the user name"))?;
                let password = percent_decode(p).ok_or(err("bad %-escape in the password"))?;
                if user.is_empty() || user.len() > 255 || password.len() > 255 {
                    return Err(err("user name empty, or credentials over 255 bytes"));
                }
                (Some(Credentials { user, password }), hp)
            }
            None => (None, rest),
        };
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or(err("no ']'"))?;
            let ip: std::net::Ipv6Addr = h.parse().map_err(|_| err("bad IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(err("junk after ']'"))?),
            };
            (Host::ip(IpAddr::V6(ip)), port)
        } else {
            let (h, p) = match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            };
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::ip(ip),
                Err(_) if wire::valid_name(h.as_bytes()) => Host::Name(h.to_ascii_lowercase()),
                Err(_) => return Err(err("bad host")),
            };
            (host, p)
        };
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(err("bad port")),
            },
        };
        Ok(Upstream { protocol, host, port, credentials })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Upstream>, UpstreamError> {
        s.split(',').map(|x| Upstream::parse(x.trim())).collect()
    }

    /// A key naming this upstream in a file name: protocol, host and port,
    /// in letters, digits, `.`, `-` and `_` only.
    pub fn state_key(&self) -> String {
        let p = match self.protocol {
            Protocol::Socks4 => "socks4",
            Protocol::Socks4a => "socks4a",
            Protocol::Socks5 => "socks5",
        };
        let h: String = self
            .host
            .to_string()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
            .collect();
        format!("{p}_{h}_{}", self.port)
    }
}

/// The form without the password.
impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.protocol {
            Protocol::Socks4 => "socks4",
            Protocol::Socks4a => "socks4a",
            Protocol::Socks5 => "socks5",
        };
        match &self.credentials {
            Some(c) => write!(f, "{p}://{}@{}:{}", c.user.escape_default(), self.host, self.port),
            None => write!(f, "{p}://{}:{}", self.host, self.port),
        }
    }
}

fn redact(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((u, h)) => format!("{}:...@{h}", u.split(':').next().unwrap_or("")),
        None => s.to_owned(),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::type_complexity)]
    fn forms() {
        let ok: &[(&str, Protocol, &str, u16, Option<(&str, &str)>)] = &[
            ("proxy.example", Protocol::Socks4, "proxy.example", 1080, None),
            ("10.0.0.1:1081", Protocol::Socks4, "10.0.0.1", 1081, None),
            ("socks4://10.0.0.1:9", Protocol::Socks4, "10.0.0.1", 9, None),
            ("socks4a://h:9", Protocol::Socks4a, "h", 9, None),
            ("socks5://h", Protocol::Socks5, "h", 1080, None),
            ("socks5://[::1]:7/", Protocol::Socks5, "[::1]", 7, None),
            ("socks5://u:p@h:1", Protocol::Socks5, "h", 1, Some(("u", "p"))),
            ("socks5://u%40x:p%3A%2C@[::1]:1", Protocol::Socks5, "[::1]", 1, Some(("u@x", "p:,"))),
            ("socks5://u:@h:1", Protocol::Socks5, "h", 1, Some(("u", ""))),
        ];
        for (s, p, h, port, c) in ok {
            let u = Upstream::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((u.protocol, u.host.to_string().as_str(), u.port), (*p, *h, *port), "{s}");
            assert_eq!(u.credentials.as_ref().map(|c| (c.user.as_str(), c.password.as_str())), *c, "{s}");
        }
        for bad in [
            "http://h:1",
            "socks4://u:p@h:1",
            "socks5://u@h:1",
            "socks5://:p@h:1",
            "h:0",
            "h:65536",
            "h:+1",
            "h:",
            "[::1",
            "[::1]x",
            "a b",
            "",
            "socks5://u:%4@h",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad}");
        }
        let e = Upstream::parse("socks5://user:secret@h:x").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let u = Upstream::parse("socks5://user:secret@h:1").unwrap();
        assert_eq!(u.to_string(), "socks5://user@h:1");
        assert!(!format!("{u:?}").contains("secret"));
        assert_eq!(Upstream::parse_list("a, socks5://b:2").unwrap().len(), 2);
        assert_eq!(Upstream::parse("socks5://[::1]:1").unwrap().state_key(), "socks5____1__1");
    }
}
