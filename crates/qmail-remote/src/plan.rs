//! Where to deliver: the route or the MX records of the host, the
//! addresses of each exchanger, without this host's own addresses.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chainmail_dns::{Cut, DnsError, Exchanger, Resolver, Servers};
use chainmail_qmail::Final;
use chainmail_qmail::control::Control;
use chainmail_qmail::ipme::Ipme;
use chainmail_qmail::report::Disposition;
use chainmail_qmail::routes::{RelayHost, Routes};

/// One address to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address.
    pub ip: IpAddr,
    /// The SMTP port.
    pub port: u16,
    /// The name the certificate must carry and the SNI: the exchanger's or
    /// the relay's name; `None` for an address literal.
    pub name: Option<String>,
}

fn temporary(text: String) -> Final {
    Final::custom(Disposition::Deferred, text.as_bytes())
}

/// The report for a DNS failure.
pub fn dns_failure(host: &str, e: &DnsError) -> Final {
    match e {
        DnsError::NoSuchHost { host } | DnsError::InvalidName { name: host, .. } => {
            Final::host_not_found(host.as_bytes())
        }
        DnsError::NullMx { .. } => Final::custom(
            Disposition::Failed,
            format!("Sorry, {host} does not accept mail (it publishes a null MX). (#5.1.10)\n").as_bytes(),
        ),
        DnsError::NoAddresses { .. } => Final::no_mx(),
        DnsError::Temporary { detail, .. } => {
            debug_assert!(!e.is_permanent());
            temporary(format!("Sorry, I couldn't find any host by that name. (#4.1.2)\n{detail}\n"))
        }
    }
}

/// Keeps the exchangers that are better than this host, as stock qmail
/// does: if an address of an exchanger is one of ours, only exchangers
/// with a lower preference are tried; if none is left, the mail would loop
/// and bounces (#5.4.6).
pub fn without_me(exchangers: Vec<Exchanger>, ipme: &Ipme) -> Result<Vec<Exchanger>, Final> {
    let prefme = exchangers.iter().filter(|e| e.addrs.iter().any(|&a| ipme.contains(a))).map(|e| e.pref).min();
    match prefme {
        None => Ok(exchangers),
        Some(p) => {
            let kept: Vec<Exchanger> = exchangers.into_iter().filter(|e| e.pref < p).collect();
            if kept.is_empty() { Err(Final::ambiguous_mx()) } else { Ok(kept) }
        }
    }
}

/// Flattens exchangers into addresses, in order, each address once.
pub fn targets_of(exchangers: &[Exchanger], port: u16, literal: bool) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    for e in exchangers {
        for &ip in &e.addrs {
            if out.iter().any(|t| t.ip == ip) {
                continue;
            }
            let name = (!literal && e.source != chainmail_dns::Source::Literal).then(|| e.name.clone());
            out.push(Target { ip, port, name });
        }
    }
    out
}

/// The addresses to try for `host`, best first, and what the DNS limits
/// left out.
pub fn plan(host: &[u8], control: &Control) -> Result<(Vec<Target>, Cut), Final> {
    let routes = Routes::open(&control.home)
        .map_err(|e| temporary(format!("Unable to read control/smtproutes: {e}. (#4.3.0)\n")))?;
    let route =
        routes.lookup(host).map_err(|e| temporary(format!("Unable to read control/smtproutes: {e}. (#4.3.0)\n")))?;
    let host_str = std::str::from_utf8(host).map_err(|_| Final::host_not_found(host))?;
    let deadline = Some(Instant::now() + control.timeout_dns.max(Duration::from_secs(1)));
    let resolver = || -> Result<Resolver, Final> {
        let servers =
            Servers::from_env().map_err(|e| temporary(format!("Unable to find the DNS servers: {e}. (#4.3.0)\n")))?;
        Resolver::new(&servers).map_err(|e| temporary(format!("Unable to start the DNS resolver: {e}. (#4.3.0)\n")))
    };
    match route {
        // A route to a relay: no MX lookup, and no check for this host's
        // own addresses (the administrator asked for it).
        Some(route) => {
            let (addrs, name, cut) = match &route.relay {
                RelayHost::Ip(ip) => (vec![*ip], None, Cut::default()),
                RelayHost::Name(name) => {
                    let resolver = resolver()?;
                    let addrs = resolver.resolve_host(name, deadline).map_err(|e| dns_failure(name, &e))?;
                    (addrs, Some(name.clone()), resolver.cut())
                }
            };
            let mut out: Vec<Target> = Vec::new();
            for ip in addrs {
                if !out.iter().any(|t| t.ip == ip) {
                    out.push(Target { ip, port: route.port, name: name.clone() });
                }
            }
            Ok((out, cut))
        }
        None => {
            // An address literal needs no DNS, not even a resolver.
            let (exchangers, cut) = match Exchanger::literal(host_str) {
                Some(literal) => (vec![literal], Cut::default()),
                None => {
                    let resolver = resolver()?;
                    let exchangers = resolver.plan_mx(host_str, deadline).map_err(|e| dns_failure(host_str, &e))?;
                    (exchangers, resolver.cut())
                }
            };
            let ipme = Ipme::load(&control.home).map_err(|_| Final::unreadable_control())?;
            let exchangers = without_me(exchangers, &ipme)?;
            Ok((targets_of(&exchangers, 25, false), cut))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainmail_dns::Source;

    fn ex(name: &str, pref: u16, addrs: &[&str]) -> Exchanger {
        Exchanger {
            name: name.into(),
            pref,
            addrs: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
            source: Source::Mx,
        }
    }

    #[test]
    fn my_own_addresses_are_never_tried() {
        let ipme = Ipme::from_addrs(["192.0.2.7".parse().expect("ip")]);
        let list = vec![ex("a", 10, &["192.0.2.1"]), ex("me", 20, &["192.0.2.7"]), ex("c", 30, &["192.0.2.3"])];
        let kept = without_me(list, &ipme).expect("some left");
        assert_eq!(kept.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["a"]);
        // Best MX is me: the mail would loop.
        let list = vec![ex("me", 5, &["2001:db8::1", "192.0.2.7"]), ex("c", 30, &["192.0.2.3"])];
        let e = without_me(list, &ipme).expect_err("loop");
        assert_eq!(e.disposition(), Disposition::Failed);
        assert!(String::from_utf8_lossy(e.text()).contains("#5.4.6"));
        // Not listed: everything stays.
        let list = vec![ex("a", 10, &["192.0.2.1"])];
        assert_eq!(without_me(list.clone(), &ipme).expect("all"), list);
    }

    #[test]
    fn targets_are_unique_and_ordered() {
        let list = vec![ex("a.test", 10, &["2001:db8::1", "192.0.2.1"]), ex("b.test", 20, &["192.0.2.1", "192.0.2.2"])];
        let t = targets_of(&list, 25, false);
        let ips: Vec<String> = t.iter().map(|t| t.ip.to_string()).collect();
        assert_eq!(ips, ["2001:db8::1", "192.0.2.1", "192.0.2.2"]);
        assert_eq!(t[2].name.as_deref(), Some("b.test"));
        let mut lit = ex("[192.0.2.9]", 0, &["192.0.2.9"]);
        lit.source = Source::Literal;
        assert_eq!(targets_of(&[lit], 25, false)[0].name, None);
    }

    #[test]
    fn dns_failures_are_worded_and_classified() {
        let cases = [
            (DnsError::NoSuchHost { host: "nx.test".into() }, b'D', "couldn't find any host named nx.test"),
            (DnsError::NullMx { host: "null.test".into() }, b'D', "null MX"),
            (DnsError::NoAddresses { host: "x.test".into() }, b'D', "#5.4.4"),
            (DnsError::Temporary { host: "x.test".into(), detail: "SERVFAIL".into() }, b'Z', "#4.1.2"),
        ];
        for (e, letter, text) in cases {
            let f = dns_failure("null.test", &e);
            assert_eq!(f.disposition().letter(), letter, "{e:?}");
            assert_eq!(e.is_permanent(), letter == b'D');
            assert!(String::from_utf8_lossy(f.text()).contains(text), "{e:?}");
        }
    }
}
