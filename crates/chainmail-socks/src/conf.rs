//! The CSTC configuration grammars and their matcher.
//!
//! `sockd.conf` (may the client be served?):
//!
//! ```text
//! permit|deny [?=I|i|n] [*=users] src_addr src_mask [dst_addr dst_mask] [op port] [: command]
//! #NO_IDENTD: command
//! #BAD_ID: command
//! ```
//!
//! `socks.conf` (how is the destination reached?):
//!
//! ```text
//! deny|direct [*=users] dst_addr dst_mask [op port] [: command]
//! sockd [@=server,server...] [*=users] dst_addr dst_mask [op port] [: command]
//! ```
//!
//! An address is the old `addr mask` pair (a 0 bit in the mask means
//! "ignore"), `ALL`, a CIDR `addr/len`, a domain suffix `.example.org`
//! (destinations only), or a host name (destinations only, matched as a
//! name). `op` is `eq`, `neq`, `lt`, `gt`, `le` or `ge`; the port is a
//! number, a service name, or for `eq`/`neq` a range `8000-8100`. Users
//! are names or `/file` references (names separated by blanks, commas or
//! lines). A line is at most 1023 characters. The first matching line
//! decides; no match is deny in `sockd.conf` and refused in `socks.conf`.
//!
//! A mask of all zero bits matches every destination, a name too. A name
//! destination is matched by suffix and host rules as a name, and by
//! address rules through its addresses (resolved by the caller, once): a
//! rule that lets the request through matches when every address does,
//! one that refuses when any does, so a name with several addresses never
//! slips past a deny.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::upstream::Upstream;
use crate::wire::{self, Host, canonical};

/// The longest line, as in the original.
pub const MAX_LINE: usize = 1023;

/// `/etc/services`: TCP service names to ports.
#[derive(Debug, Clone, Default)]
pub struct Services {
    tcp: HashMap<String, u16>,
}

impl Services {
    /// Reads the text of `/etc/services` (`name port/proto aliases...`).
    pub fn parse(text: &str) -> Services {
        let mut tcp = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut f = line.split_whitespace();
            let (Some(name), Some(pp)) = (f.next(), f.next()) else { continue };
            let Some((port, proto)) = pp.split_once('/') else { continue };
            let (Ok(port), "tcp") = (port.parse::<u16>(), proto) else { continue };
            for n in std::iter::once(name).chain(f) {
                tcp.entry(n.to_owned()).or_insert(port);
            }
        }
        Services { tcp }
    }

    /// The port of a service.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.tcp.get(name).copied()
    }
}

/// What a `?=` says about identd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentMode {
    /// `I`: refuse when identd fails or disagrees.
    Strict,
    /// `i`: refuse only when identd disagrees.
    Lenient,
    /// `n`: do not ask.
    Off,
}

/// An address pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrMatch {
    /// `ALL`, or a mask of zero bits: everything.
    Any,
    /// `addr mask` or `addr/len`.
    Mask {
        /// The address.
        addr: IpAddr,
        /// The mask (same family).
        mask: IpAddr,
    },
    /// `.example.org`: names ending so, and `example.org` itself.
    Suffix(String),
    /// `host.example.org`: that name.
    Host(String),
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl AddrMatch {
    fn matches_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self {
            AddrMatch::Any => true,
            AddrMatch::Mask { addr, mask } => {
                ip.is_ipv4() == addr.is_ipv4() && bits(ip) & bits(*mask) == bits(*addr) & bits(*mask)
            }
            AddrMatch::Suffix(_) | AddrMatch::Host(_) => false,
        }
    }

    fn matches_dest(&self, host: &Host, addrs: &mut dyn FnMut() -> Vec<IpAddr>, lets_through: bool) -> bool {
        match (self, host) {
            (AddrMatch::Any, _) => true,
            (_, Host::Ip(ip)) => self.matches_ip(*ip),
            (AddrMatch::Suffix(s), Host::Name(n)) => {
                let n = n.to_ascii_lowercase();
                n.ends_with(s.as_str()) || n == s[1..]
            }
            (AddrMatch::Host(h), Host::Name(n)) => n.eq_ignore_ascii_case(h),
            (AddrMatch::Mask { .. }, Host::Name(_)) => {
                let a = addrs();
                if lets_through {
                    !a.is_empty() && a.iter().all(|ip| self.matches_ip(*ip))
                } else {
                    a.iter().any(|ip| self.matches_ip(*ip))
                }
            }
        }
    }
}

/// A port comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortOp {
    /// `eq`.
    Eq,
    /// `neq`.
    Neq,
    /// `lt`.
    Lt,
    /// `gt`.
    Gt,
    /// `le`.
    Le,
    /// `ge`.
    Ge,
}

/// `op port` or `eq|neq lo-hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMatch {
    /// The operator.
    pub op: PortOp,
    /// The port, or the start of the range.
    pub lo: u16,
    /// The end of the range (`lo` for a single port).
    pub hi: u16,
}

impl PortMatch {
    fn matches(&self, p: u16) -> bool {
        match self.op {
            PortOp::Eq => (self.lo..=self.hi).contains(&p),
            PortOp::Neq => !(self.lo..=self.hi).contains(&p),
            PortOp::Lt => p < self.lo,
            PortOp::Gt => p > self.lo,
            PortOp::Le => p <= self.lo,
            PortOp::Ge => p >= self.lo,
        }
    }
}

/// The verdict of a `sockd.conf` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerAction {
    /// `permit`.
    Permit,
    /// `deny`.
    Deny,
}

/// The route of a `socks.conf` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// `deny`.
    Deny,
    /// `direct`.
    Direct,
    /// `sockd`: the listed servers, or `SOCKS_SERVER` when `None`.
    Sockd(Option<Vec<Upstream>>),
}

/// One line of either file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<A> {
    /// Its line number, from 1.
    pub line: usize,
    /// What it decides.
    pub action: A,
    /// `?=` (sockd.conf only).
    pub ident: Option<IdentMode>,
    /// `*=`: the users it applies to (all when `None`).
    pub users: Option<Vec<String>>,
    /// The client address (sockd.conf only; `Any` in socks.conf).
    pub src: AddrMatch,
    /// The destination.
    pub dst: AddrMatch,
    /// The port condition.
    pub port: Option<PortMatch>,
    /// `: command`, split at blanks.
    pub command: Option<Vec<String>>,
}

/// A parsed `sockd.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SockdConf {
    /// The rules in order.
    pub rules: Vec<Rule<ServerAction>>,
    /// `#NO_IDENTD:`.
    pub no_identd: Option<Vec<String>>,
    /// `#BAD_ID:`.
    pub bad_id: Option<Vec<String>>,
}

/// A parsed `socks.conf`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocksConf {
    /// The rules in order.
    pub rules: Vec<Rule<ClientAction>>,
}

/// A line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {reason}")]
pub struct ConfError {
    /// Its number, from 1.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// What a request looks like to the matcher.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The user (SOCKS4 USERID, or the RFC 1929 name).
    pub user: Option<&'a str>,
    /// The destination.
    pub dest: &'a Host,
    /// The destination port.
    pub port: u16,
}

impl<A> Rule<A> {
    fn matches(&self, q: &Query<'_>, addrs: &mut dyn FnMut() -> Vec<IpAddr>, lets_through: bool) -> bool {
        if let Some(users) = &self.users {
            match q.user {
                Some(u) if users.iter().any(|x| x == u) => {}
                _ => return false,
            }
        }
        self.src.matches_ip(q.client)
            && self.port.is_none_or(|p| p.matches(q.port))
            && self.dst.matches_dest(q.dest, addrs, lets_through)
    }
}

impl SockdConf {
    /// Parses the file. `read_file` gives the contents of `/file` user
    /// lists; `services` names ports.
    pub fn parse(
        text: &str,
        services: &Services,
        read_file: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<SockdConf, ConfError> {
        let mut conf = SockdConf::default();
        for (n, line) in lines(text)? {
            let err = |reason: String| ConfError { line: n, reason };
            for (prefix, slot) in [("#NO_IDENTD:", &mut conf.no_identd), ("#BAD_ID:", &mut conf.bad_id)] {
                if let Some(cmd) = line.strip_prefix(prefix) {
                    let argv: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
                    if argv.is_empty() {
                        return Err(err(format!("empty {prefix} command")));
                    }
                    *slot = Some(argv);
                }
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (words, command) = split_command(line).map_err(err)?;
            let mut w = words.iter().copied().peekable();
            let action = match w.next() {
                Some("permit") => ServerAction::Permit,
                Some("deny") => ServerAction::Deny,
                Some(x) => return Err(err(format!("unknown action {x:?} (permit, deny)"))),
                None => continue,
            };
            let opts = options(&mut w, services, read_file, true, false).map_err(err)?;
            let src = address(&mut w, false).map_err(err)?.ok_or_else(|| err("no source address".into()))?;
            let dst = match w.peek() {
                Some(t) if !is_op(t) => address(&mut w, true).map_err(err)?.unwrap_or(AddrMatch::Any),
                _ => AddrMatch::Any,
            };
            let port = port(&mut w, services).map_err(err)?;
            if let Some(t) = w.next() {
                return Err(err(format!("unexpected {t:?}")));
            }
            conf.rules.push(Rule { line: n, action, ident: opts.ident, users: opts.users, src, dst, port, command });
        }
        Ok(conf)
    }

    /// The first rule that matches; `None` means deny. `addrs` resolves
    /// a name destination (called at most once per rule that needs it;
    /// the caller caches).
    pub fn first_match(&self, q: &Query<'_>, addrs: &mut dyn FnMut() -> Vec<IpAddr>) -> Option<&Rule<ServerAction>> {
        self.rules.iter().find(|r| r.matches(q, addrs, r.action == ServerAction::Permit))
    }
}

impl SocksConf {
    /// Parses the file.
    pub fn parse(
        text: &str,
        services: &Services,
        read_file: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<SocksConf, ConfError> {
        let mut conf = SocksConf::default();
        for (n, line) in lines(text)? {
            let err = |reason: String| ConfError { line: n, reason };
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (words, command) = split_command(line).map_err(err)?;
            let mut w = words.iter().copied().peekable();
            let kind = match w.next() {
                Some(k @ ("deny" | "direct" | "sockd")) => k,
                Some(x) => return Err(err(format!("unknown action {x:?} (deny, direct, sockd)"))),
                None => continue,
            };
            let opts = options(&mut w, services, read_file, false, kind == "sockd").map_err(err)?;
            let action = match kind {
                "deny" => ClientAction::Deny,
                "direct" => ClientAction::Direct,
                _ => ClientAction::Sockd(opts.servers),
            };
            let dst = address(&mut w, true).map_err(err)?.ok_or_else(|| err("no destination address".into()))?;
            let port = port(&mut w, services).map_err(err)?;
            if let Some(t) = w.next() {
                return Err(err(format!("unexpected {t:?}")));
            }
            conf.rules.push(Rule {
                line: n,
                action,
                ident: None,
                users: opts.users,
                src: AddrMatch::Any,
                dst,
                port,
                command,
            });
        }
        Ok(conf)
    }

    /// The first rule that matches; `None` means refused.
    pub fn first_match(&self, q: &Query<'_>, addrs: &mut dyn FnMut() -> Vec<IpAddr>) -> Option<&Rule<ClientAction>> {
        self.rules.iter().find(|r| r.matches(q, addrs, r.action != ClientAction::Deny))
    }
}

/// The numbered lines, each at most [`MAX_LINE`] characters.
fn lines(text: &str) -> Result<Vec<(usize, &str)>, ConfError> {
    let mut v = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.chars().count() > MAX_LINE {
            return Err(ConfError { line: i + 1, reason: format!("line longer than {MAX_LINE} characters") });
        }
        v.push((i + 1, line));
    }
    Ok(v)
}

/// The words before the command, and the command.
#[allow(clippy::type_complexity)]
fn split_command(line: &str) -> Result<(Vec<&str>, Option<Vec<String>>), String> {
    let mut words = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok((words, None));
        }
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with(':') && word.parse::<IpAddr>().is_err() && !is_cidr(word) {
            let argv: Vec<String> = rest[1..].split_whitespace().map(str::to_owned).collect();
            if argv.is_empty() {
                return Err("empty command after ':'".into());
            }
            return Ok((words, Some(argv)));
        }
        words.push(word);
        rest = &rest[end..];
    }
}

fn is_cidr(w: &str) -> bool {
    w.split_once('/').is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok())
}

fn is_op(w: &str) -> bool {
    matches!(w, "eq" | "neq" | "lt" | "gt" | "le" | "ge")
}

#[derive(Default)]
struct Options {
    ident: Option<IdentMode>,
    users: Option<Vec<String>>,
    servers: Option<Vec<Upstream>>,
}

fn options<'a>(
    w: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
    _services: &Services,
    read_file: &mut dyn FnMut(&str) -> Result<String, String>,
    ident_allowed: bool,
    servers_allowed: bool,
) -> Result<Options, String> {
    let mut o = Options::default();
    while let Some(t) = w.peek().copied() {
        if let Some(m) = t.strip_prefix("?=") {
            if !ident_allowed || o.ident.is_some() {
                return Err(format!("misplaced {t:?}"));
            }
            o.ident = Some(match m {
                "I" => IdentMode::Strict,
                "i" => IdentMode::Lenient,
                "n" => IdentMode::Off,
                _ => return Err(format!("unknown identd mode {m:?} (I, i, n)")),
            });
        } else if let Some(list) = t.strip_prefix("*=") {
            if o.users.is_some() {
                return Err("two *= lists".into());
            }
            let mut users = Vec::new();
            for item in list.split(',') {
                if item.starts_with('/') {
                    let text = read_file(item).map_err(|e| format!("unable to read {item}: {e}"))?;
                    users.extend(
                        text.split(|c: char| c.is_whitespace() || c == ',')
                            .filter(|u| !u.is_empty())
                            .map(str::to_owned),
                    );
                } else if !item.is_empty() {
                    users.push(item.to_owned());
                } else {
                    return Err("empty user in *= list".into());
                }
            }
            o.users = Some(users);
        } else if let Some(list) = t.strip_prefix("@=") {
            if !servers_allowed || o.servers.is_some() {
                return Err(format!("misplaced {t:?}"));
            }
            o.servers = Some(Upstream::parse_list(list).map_err(|e| e.to_string())?);
        } else {
            break;
        }
        w.next();
    }
    Ok(o)
}

fn address<'a>(
    w: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
    destination: bool,
) -> Result<Option<AddrMatch>, String> {
    let Some(t) = w.next() else { return Ok(None) };
    if t.eq_ignore_ascii_case("ALL") {
        return Ok(Some(AddrMatch::Any));
    }
    if let Some((a, len)) = t.split_once('/') {
        let addr: IpAddr = a.parse().map_err(|_| format!("bad address in {t:?}"))?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u32 = match len.parse() {
            Ok(l) if l <= max && len.bytes().all(|b| b.is_ascii_digit()) => l,
            _ => return Err(format!("bad prefix length in {t:?}")),
        };
        return Ok(Some(masked(addr, len)));
    }
    if let Ok(addr) = t.parse::<IpAddr>() {
        let addr = canonical(addr);
        let m = w.next().ok_or_else(|| format!("no mask after {t:?}"))?;
        let mask: IpAddr = m.parse().map_err(|_| format!("bad mask {m:?} after {t:?}"))?;
        let mask = if addr.is_ipv4() { canonical(mask) } else { mask };
        if mask.is_ipv4() != addr.is_ipv4() {
            return Err(format!("mask {m:?} not of the family of {t:?}"));
        }
        if bits(mask) == 0 {
            return Ok(Some(AddrMatch::Any));
        }
        return Ok(Some(AddrMatch::Mask { addr, mask }));
    }
    if !destination {
        return Err(format!("bad address {t:?}"));
    }
    if let Some(s) = t.strip_prefix('.') {
        if !wire::valid_name(s.as_bytes()) || s.starts_with('.') {
            return Err(format!("bad domain suffix {t:?}"));
        }
        return Ok(Some(AddrMatch::Suffix(t.to_ascii_lowercase())));
    }
    if wire::valid_name(t.as_bytes()) && !is_op(t) {
        return Ok(Some(AddrMatch::Host(t.to_ascii_lowercase())));
    }
    Err(format!("bad address {t:?}"))
}

fn masked(addr: IpAddr, len: u32) -> AddrMatch {
    if len == 0 {
        return AddrMatch::Any;
    }
    let mask = match addr {
        IpAddr::V4(_) => IpAddr::V4((u32::MAX << (32 - len)).into()),
        IpAddr::V6(_) => IpAddr::V6((u128::MAX << (128 - len)).into()),
    };
    AddrMatch::Mask { addr, mask }
}

fn port<'a>(
    w: &mut std::iter::Peekable<impl Iterator<Item = &'a str>>,
    services: &Services,
) -> Result<Option<PortMatch>, String> {
    let Some(op) = w.peek().copied() else { return Ok(None) };
    let op = match op {
        "eq" => PortOp::Eq,
        "neq" => PortOp::Neq,
        "lt" => PortOp::Lt,
        "gt" => PortOp::Gt,
        "le" => PortOp::Le,
        "ge" => PortOp::Ge,
        _ => return Ok(None),
    };
    w.next();
    let t = w.next().ok_or("no port after the operator")?;
    let one = |s: &str| -> Result<u16, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u16>().map_err(|_| format!("bad port {s:?}"))
        } else {
            services.port(s).ok_or_else(|| format!("unknown service {s:?}"))
        }
    };
    let (lo, hi) = match t.split_once('-') {
        Some((a, b)) if a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit()) => {
            if !matches!(op, PortOp::Eq | PortOp::Neq) {
                return Err("a port range needs eq or neq".into());
            }
            let (lo, hi) = (one(a)?, one(b)?);
            if lo > hi {
                return Err(format!("empty port range {t:?}"));
            }
            (lo, hi)
        }
        _ => {
            let p = one(t)?;
            (p, p)
        }
    };
    Ok(Some(PortMatch { op, lo, hi }))
}

/// The property the fuzz target checks: parsing any text never panics,
/// and matching what parsed never panics either.
#[cfg(any(test, feature = "test-support"))]
pub fn check_properties(text: &str) {
    let services = Services::parse("http 80/tcp www\nftp 21/tcp\n");
    let mut files = |p: &str| if p == "/users" { Ok("a b,c\n".to_owned()) } else { Err("no such file".to_owned()) };
    let host = Host::Name("a.example.org".into());
    let q = Query { client: "10.1.2.3".parse().expect("ip"), user: Some("a"), dest: &host, port: 80 };
    let mut addrs = || vec!["10.0.0.1".parse().expect("ip"), "::1".parse().expect("ip")];
    if let Ok(c) = SockdConf::parse(text, &services, &mut files) {
        let _ = c.first_match(&q, &mut addrs);
    }
    if let Ok(c) = SocksConf::parse(text, &services, &mut files) {
        let _ = c.first_match(&q, &mut addrs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services() -> Services {
        Services::parse("# comment\nftp 21/tcp\nhttp 80/tcp www # web\nhttp 80/udp\ndomain 53/udp\n")
    }

    fn files(p: &str) -> Result<String, String> {
        match p {
            "/etc/staff" => Ok("carol dave,\nerin\n".into()),
            _ => Err("No such file or directory".into()),
        }
    }

    fn sockd(text: &str) -> SockdConf {
        SockdConf::parse(text, &services(), &mut files).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// (client, user, dest, port) -> the line that matched, or 0.
    fn verdict(c: &SockdConf, client: &str, user: Option<&str>, dest: &str, port: u16) -> usize {
        let host = dest.parse().map(Host::ip).unwrap_or_else(|_| Host::Name(dest.into()));
        let q = Query { client: ip(client), user, dest: &host, port };
        let mut addrs = || match dest {
            "multi.example" => vec![ip("10.0.0.1"), ip("192.168.0.1")],
            "inside.example" => vec![ip("10.9.9.9")],
            _ => vec![],
        };
        c.first_match(&q, &mut addrs).map_or(0, |r| r.line)
    }

    #[test]
    fn services_file() {
        let s = services();
        assert_eq!((s.port("ftp"), s.port("www"), s.port("domain")), (Some(21), Some(80), None));
    }

    #[test]
    fn rule_order_and_default_deny() {
        let c = sockd("deny 10.0.0.5 255.255.255.255\npermit 10.0.0.0 255.0.0.0\n");
        assert_eq!(verdict(&c, "10.0.0.5", None, "1.2.3.4", 80), 1);
        assert_eq!(c.rules[0].action, ServerAction::Deny);
        assert_eq!(verdict(&c, "10.0.0.6", None, "1.2.3.4", 80), 2);
        assert_eq!(verdict(&c, "11.0.0.6", None, "1.2.3.4", 80), 0);
        let c = sockd("permit 10.0.0.0 255.0.0.0\ndeny 10.0.0.5 255.255.255.255\n");
        assert_eq!(verdict(&c, "10.0.0.5", None, "1.2.3.4", 80), 1);
    }

    #[test]
    fn operators() {
        let cases: &[(&str, &[(u16, bool)])] = &[
            ("eq 80", &[(79, false), (80, true), (81, false)]),
            ("eq http", &[(80, true), (21, false)]),
            ("eq www", &[(80, true)]),
            ("neq 80", &[(79, true), (80, false)]),
            ("lt 1024", &[(1023, true), (1024, false)]),
            ("gt 1023", &[(1023, false), (1024, true)]),
            ("le ftp", &[(21, true), (22, false)]),
            ("ge 21", &[(20, false), (21, true)]),
            ("eq 8000-8100", &[(7999, false), (8000, true), (8100, true), (8101, false)]),
            ("neq 8000-8100", &[(7999, true), (8000, false), (8100, false), (8101, true)]),
        ];
        for (op, probes) in cases {
            let c = sockd(&format!("permit 0.0.0.0 0.0.0.0 0.0.0.0 0.0.0.0 {op}"));
            for (p, want) in *probes {
                assert_eq!(verdict(&c, "1.1.1.1", None, "2.2.2.2", *p) == 1, *want, "{op} {p}");
            }
        }
    }

    #[test]
    fn masks_and_cidr() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.1.0.0 255.255.0.0", "10.1.200.3", true),
            ("10.1.0.0 255.255.0.0", "10.2.0.3", false),
            ("10.0.0.1 255.0.0.255", "10.99.99.1", true),
            ("10.0.0.1 255.0.0.255", "10.99.99.2", false),
            ("10.0.0.0/8", "10.200.0.1", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("2001:db8::/32", "2001:db8:1::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("10.0.0.0/8", "2001:db8::1", false),
            ("2001:db8:: ffff:ffff::", "2001:db8::5", true),
            ("ALL", "2001:db8::1", true),
            ("0.0.0.0 0.0.0.0", "2001:db8::1", true),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
        ];
        for (pattern, client, want) in cases {
            let c = sockd(&format!("permit {pattern}"));
            assert_eq!(verdict(&c, client, None, "1.1.1.1", 1) == 1, *want, "src {pattern} {client}");
            let c = sockd(&format!("permit ALL {pattern}"));
            assert_eq!(verdict(&c, "1.1.1.1", None, client, 1) == 1, *want, "dst {pattern} {client}");
        }
    }

    #[test]
    fn names_suffixes_and_resolution() {
        let c = sockd(
            "permit ALL .example.org\npermit ALL exact.example\ndeny ALL 192.168.0.0/16\npermit ALL 10.0.0.0/8\n",
        );
        assert_eq!(verdict(&c, "1.1.1.1", None, "www.Example.ORG", 80), 1);
        assert_eq!(verdict(&c, "1.1.1.1", None, "example.org", 80), 1);
        assert_eq!(verdict(&c, "1.1.1.1", None, "badexample.org", 80), 0);
        assert_eq!(verdict(&c, "1.1.1.1", None, "exact.example", 80), 2);
        assert_eq!(verdict(&c, "1.1.1.1", None, "sub.exact.example", 80), 0);
        // Addresses: the name matches the permit only if all its
        // addresses do, and the deny if any does.
        assert_eq!(verdict(&c, "1.1.1.1", None, "inside.example", 80), 4);
        assert_eq!(verdict(&c, "1.1.1.1", None, "multi.example", 80), 3);
        assert_eq!(verdict(&c, "1.1.1.1", None, "unresolvable.example", 80), 0);
        // An IP destination never matches a suffix.
        assert_eq!(verdict(&c, "1.1.1.1", None, "10.0.0.1", 80), 4);
    }

    #[test]
    fn users() {
        let c = sockd("permit *=alice,bob ALL\npermit *=/etc/staff,frank ALL eq 80\n");
        assert_eq!(verdict(&c, "1.1.1.1", Some("alice"), "1.1.1.1", 1), 1);
        assert_eq!(verdict(&c, "1.1.1.1", Some("bob"), "1.1.1.1", 1), 1);
        assert_eq!(verdict(&c, "1.1.1.1", Some("carol"), "1.1.1.1", 80), 2);
        assert_eq!(verdict(&c, "1.1.1.1", Some("erin"), "1.1.1.1", 80), 2);
        assert_eq!(verdict(&c, "1.1.1.1", Some("frank"), "1.1.1.1", 80), 2);
        assert_eq!(verdict(&c, "1.1.1.1", Some("frank"), "1.1.1.1", 81), 0);
        assert_eq!(verdict(&c, "1.1.1.1", Some("mallory"), "1.1.1.1", 80), 0);
        assert_eq!(verdict(&c, "1.1.1.1", None, "1.1.1.1", 80), 0);
        assert_eq!(verdict(&c, "1.1.1.1", Some("alic"), "1.1.1.1", 1), 0);
    }

    #[test]
    fn commands_identd_and_special_lines() {
        let c = sockd(
            "#NO_IDENTD: /usr/bin/logger no identd\n#BAD_ID: /bin/badid\n# a comment\n\n\
             deny ?=I 10.0.0.0 255.0.0.0 : /usr/bin/logger -t x %U\npermit ?=i *=a ::1/128 eq 22 :/bin/true\n\
             permit ?=n ::/0\n",
        );
        assert_eq!(c.no_identd, Some(vec!["/usr/bin/logger".to_owned(), "no".into(), "identd".into()]));
        assert_eq!(c.bad_id, Some(vec!["/bin/badid".to_owned()]));
        assert_eq!(c.rules[0].ident, Some(IdentMode::Strict));
        assert_eq!(c.rules[0].command.as_deref().unwrap(), ["/usr/bin/logger", "-t", "x", "%U"]);
        assert_eq!(c.rules[1].ident, Some(IdentMode::Lenient));
        assert_eq!(
            c.rules[1].src,
            AddrMatch::Mask { addr: ip("::1"), mask: ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") }
        );
        assert_eq!(c.rules[1].command.as_deref().unwrap(), ["/bin/true"]);
        assert_eq!(c.rules[2].ident, Some(IdentMode::Off));
        assert_eq!(c.rules[2].src, AddrMatch::Any);
        assert_eq!(c.rules[2].line, 7);
        // An IPv6 source starting with ':' is an address, not a command.
        let c = sockd("permit ::1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(verdict(&c, "::1", None, "1.1.1.1", 1), 1);
    }

    #[test]
    fn errors() {
        let long = format!("permit ALL {}", " ".repeat(1024));
        let cases: &[(&str, usize, &str)] = &[
            ("allow ALL", 1, "unknown action"),
            ("\npermit", 2, "no source address"),
            ("permit 10.0.0.1", 1, "no mask"),
            ("permit 10.0.0.1 eq 80", 1, "bad mask"),
            ("permit 10.0.0.1 ffff::", 1, "not of the family"),
            ("permit 10.0.0.0/33", 1, "bad prefix length"),
            ("permit 10.0.0.0/-1", 1, "bad prefix length"),
            ("permit .example.org", 1, "bad address"),
            ("permit ALL ALL eq", 1, "no port"),
            ("permit ALL ALL eq gopher", 1, "unknown service"),
            ("permit ALL ALL eq 65536", 1, "bad port"),
            ("permit ALL ALL lt 1-2", 1, "range needs eq"),
            ("permit ALL ALL eq 9-2", 1, "empty port range"),
            ("permit ALL ALL eq 80 junk", 1, "unexpected"),
            ("permit ?=x ALL", 1, "unknown identd mode"),
            ("permit *=/nonexistent ALL", 1, "unable to read /nonexistent"),
            ("permit *=a,,b ALL", 1, "empty user"),
            ("permit ALL :", 1, "empty command"),
            ("#NO_IDENTD:", 1, "empty #NO_IDENTD"),
            ("permit @=h ALL", 1, "misplaced"),
            (&long, 1, "longer than 1023"),
        ];
        for (text, line, reason) in cases {
            let e = SockdConf::parse(text, &services(), &mut files).expect_err(text);
            assert_eq!(e.line, *line, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
        }
        let ok_1023 = format!("permit ALL{}", " ".repeat(1023 - 10));
        assert!(SockdConf::parse(&ok_1023, &services(), &mut files).is_ok());
    }

    #[test]
    fn socks_conf() {
        let text = "# routes\ndeny 10.0.0.66/32\ndirect 10.0.0.0 255.0.0.0\n\
                    sockd @=socks5://u:p@127.0.0.1:1081,127.0.0.1:1082 .example.org eq 80\n\
                    sockd *=alice ALL : /bin/echo routed\n";
        let c = SocksConf::parse(text, &services(), &mut files).unwrap();
        let route = |dest: &str, user: Option<&str>, port: u16| {
            let host = dest.parse().map(Host::Ip).unwrap_or_else(|_| Host::Name(dest.into()));
            let q = Query { client: ip("1.1.1.1"), user, dest: &host, port };
            c.first_match(&q, &mut Vec::new).map(|r| (r.line, r.action.clone()))
        };
        assert_eq!(route("10.0.0.66", None, 80), Some((2, ClientAction::Deny)));
        assert_eq!(route("10.0.0.67", None, 80), Some((3, ClientAction::Direct)));
        let (line, ClientAction::Sockd(Some(servers))) = route("www.example.org", None, 80).unwrap() else {
            panic!("no sockd route")
        };
        assert_eq!(line, 4);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].credentials.as_ref().unwrap().user, "u");
        assert_eq!(route("www.example.org", None, 81), None);
        assert_eq!(route("anything", Some("alice"), 81), Some((5, ClientAction::Sockd(None))));
        for bad in ["permit ALL", "sockd @=http://x ALL", "direct ?=I ALL", "sockd @=a @=b ALL", "direct"] {
            assert!(SocksConf::parse(bad, &services(), &mut files).is_err(), "{bad}");
        }
        // The CSTC example: `sockd ALL` with no list.
        let c = SocksConf::parse("sockd ALL\n", &services(), &mut files).unwrap();
        assert_eq!(c.rules[0].action, ClientAction::Sockd(None));
    }

    #[test]
    fn anything_parses_without_panic() {
        for text in ["permit", "permit ::", "deny : ", "sockd @=", "permit ALL ALL eq -", "permit 1.2.3.4/", "\u{e9}"] {
            check_properties(text);
        }
    }
}
