//! The sans-IO half of MX planning: which names to look up, and how the
//! answers become an ordered list of exchangers.
//!
//! Nothing in here does I/O or reads the clock (the PRNG is seeded by the
//! caller), so every rule is tested with plain values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_resolver::proto::rr::Name;

use crate::error::DnsError;

/// The most exchangers of one domain that are looked up and tried: the
/// lowest preferences, and at the preference where the cut falls, a random
/// choice among the equals. Every real domain has fewer (large providers
/// publish 1 to 5); a domain with thousands must not cost thousands of
/// queries and connections.
pub const MAX_EXCHANGERS: usize = 10;

/// The most addresses kept per exchanger and per family (IPv6, IPv4), the
/// first ones in answer order: a name with a thousand addresses is one
/// host or a trap, and four of each is more than any real exchanger needs
/// for redundancy.
pub const MAX_ADDRESSES_PER_FAMILY: usize = 4;

/// The most DNS queries in flight at once: the A and AAAA queries of
/// [`MAX_EXCHANGERS`] exchangers, so that the limit bounds the load without
/// adding a round trip to an ordinary plan.
pub(crate) const MAX_CONCURRENT_QUERIES: usize = 2 * MAX_EXCHANGERS;

/// What the limits left out of the last plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cut {
    /// Exchangers beyond [`MAX_EXCHANGERS`], never looked up.
    pub exchangers: usize,
    /// Addresses beyond [`MAX_ADDRESSES_PER_FAMILY`], dropped.
    pub addresses: usize,
}

/// One mail exchanger of a plan, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanger {
    /// Its name, without the final dot (IDNA names in their `xn--` form);
    /// for an address literal, the literal as given.
    pub name: String,
    /// Its MX preference; 0 for an implicit MX and for a literal.
    pub pref: u16,
    /// Its addresses, IPv6 and IPv4 interleaved (IPv6 first), each family
    /// in answer order, without duplicates; never empty.
    pub addrs: Vec<IpAddr>,
    /// Where it comes from.
    pub source: Source,
}

impl Exchanger {
    /// The one exchanger of an address literal (`1.2.3.4`, `[1.2.3.4]`,
    /// `[IPv6:…]`, see [`parse_literal`]): preference 0, no DNS. `None` if
    /// `host` is not a literal.
    pub fn literal(host: &str) -> Option<Exchanger> {
        let ip = parse_literal(host)?;
        Some(Exchanger { name: host.to_owned(), pref: 0, addrs: vec![ip], source: Source::Literal })
    }
}

/// Where an [`Exchanger`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An MX record.
    Mx,
    /// The domain has no MX records: the domain itself (RFC 5321 §5.1).
    ImplicitMx,
    /// The domain is an address literal (`1.2.3.4`, `[1.2.3.4]`,
    /// `[IPv6:2001:db8::1]`); no DNS was done.
    Literal,
}

/// The outcome of one query, after any CNAME chasing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome<T> {
    /// Records of the type asked for (at least one).
    Found(Vec<T>),
    /// The name exists, without records of that type.
    NoData,
    /// The name does not exist.
    NxDomain,
    /// No usable answer; the detail says why.
    Temporary(String),
}

impl<T> Outcome<T> {
    pub(crate) fn map<U>(self, f: impl FnMut(T) -> Option<U>) -> Outcome<U> {
        match self {
            Self::Found(v) => {
                let v: Vec<U> = v.into_iter().filter_map(f).collect();
                if v.is_empty() { Outcome::NoData } else { Outcome::Found(v) }
            }
            Self::NoData => Outcome::NoData,
            Self::NxDomain => Outcome::NxDomain,
            Self::Temporary(d) => Outcome::Temporary(d),
        }
    }
}

/// What the MX answer asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MxPlan {
    /// Look up these exchangers (preference, name), duplicates removed.
    Exchangers(Vec<(u16, Name)>),
    /// No MX records: look up the domain itself.
    Implicit,
    /// Null MX (RFC 7505).
    Null,
}

/// Reads an MX outcome. `Err` ends the plan there.
///
/// * Records whose exchanges are all `.` are a Null MX (RFC 7505 asks for
///   exactly one such record with preference 0; any preference, and
///   several of them, are read the same way). A `.` next to real
///   exchangers is ignored.
/// * An exchanger listed twice is kept once, with its lowest preference.
pub(crate) fn read_mx(host: &str, mx: Outcome<(u16, Name)>) -> Result<MxPlan, DnsError> {
    match mx {
        Outcome::Found(records) => {
            if records.iter().all(|(_, exchange)| exchange.is_root()) {
                return Ok(MxPlan::Null);
            }
            // Names compare without regard to case; a map keeps this linear
            // for answers with thousands of records.
            let mut list: Vec<(u16, Name)> = Vec::with_capacity(records.len());
            let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            for (pref, exchange) in records.into_iter().filter(|(_, e)| !e.is_root()) {
                match seen.entry(exchange.to_lowercase().to_ascii()) {
                    std::collections::hash_map::Entry::Occupied(i) => {
                        let kept = &mut list[*i.get()];
                        kept.0 = kept.0.min(pref);
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(list.len());
                        list.push((pref, exchange));
                    }
                }
            }
            Ok(MxPlan::Exchangers(list))
        }
        Outcome::NoData => Ok(MxPlan::Implicit),
        Outcome::NxDomain => Err(DnsError::NoSuchHost { host: host.to_owned() }),
        Outcome::Temporary(detail) => Err(DnsError::temporary(host, format!("MX lookup: {detail}"))),
    }
}

/// The exchangers to look up: at most [`MAX_EXCHANGERS`], the lowest
/// preferences first, equal preferences in random order (so that the ones
/// cut at the last preference kept are a random choice). Returns them, in
/// that order, and how many were left out.
pub(crate) fn select<T>(mut list: Vec<(u16, T)>, rng: &mut Rng) -> (Vec<(u16, T)>, usize) {
    for i in (1..list.len()).rev() {
        list.swap(i, rng.below(i + 1));
    }
    list.sort_by_key(|(pref, _)| *pref);
    let cut = list.len().saturating_sub(MAX_EXCHANGERS);
    list.truncate(MAX_EXCHANGERS);
    (list, cut)
}

/// An exchanger waiting for its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) name: String,
    pub(crate) pref: u16,
    pub(crate) source: Source,
}

/// The AAAA and A outcomes of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addrs {
    pub(crate) v6: Outcome<Ipv6Addr>,
    pub(crate) v4: Outcome<Ipv4Addr>,
}

/// Why a name has no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoAddress {
    /// Both A and AAAA said NXDOMAIN.
    NxDomain,
    /// Both answered, without addresses (NODATA, or NODATA and NXDOMAIN).
    NoData,
    /// At least one failed temporarily.
    Temporary(String),
}

/// The addresses of one name: `Ok` with at least one address (a
/// temporary failure of the other family is then ignored), or why there
/// is none.
pub(crate) fn combine(addrs: &Addrs) -> Result<Vec<IpAddr>, NoAddress> {
    fn found<T>(o: &Outcome<T>) -> &[T] {
        match o {
            Outcome::Found(v) => v,
            _ => &[],
        }
    }
    let v6 = first_distinct(found(&addrs.v6));
    let v4 = first_distinct(found(&addrs.v4));
    let list = interleave(&v6, &v4);
    if !list.is_empty() {
        return Ok(list);
    }
    match (&addrs.v6, &addrs.v4) {
        (Outcome::Temporary(a), Outcome::Temporary(b)) if a == b => Err(NoAddress::Temporary(a.clone())),
        (Outcome::Temporary(a), Outcome::Temporary(b)) => Err(NoAddress::Temporary(format!("AAAA: {a}, A: {b}"))),
        (Outcome::Temporary(a), _) => Err(NoAddress::Temporary(format!("AAAA: {a}"))),
        (_, Outcome::Temporary(b)) => Err(NoAddress::Temporary(format!("A: {b}"))),
        (Outcome::NxDomain, Outcome::NxDomain) => Err(NoAddress::NxDomain),
        _ => Err(NoAddress::NoData),
    }
}

/// The first [`MAX_ADDRESSES_PER_FAMILY`] distinct addresses of `list`.
fn first_distinct<T: PartialEq + Copy>(list: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(MAX_ADDRESSES_PER_FAMILY);
    for &a in list {
        if out.len() == MAX_ADDRESSES_PER_FAMILY {
            break;
        }
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// How many distinct addresses of `addrs` [`combine`] leaves out.
pub(crate) fn beyond_limit(addrs: &Addrs) -> usize {
    fn cut<T: PartialEq + Copy + Eq + std::hash::Hash>(o: &Outcome<T>) -> usize {
        match o {
            Outcome::Found(v) => {
                let distinct: std::collections::HashSet<T> = v.iter().copied().collect();
                distinct.len().saturating_sub(MAX_ADDRESSES_PER_FAMILY)
            }
            _ => 0,
        }
    }
    cut(&addrs.v6) + cut(&addrs.v4)
}

/// IPv6 and IPv4 in turn, IPv6 first, each family in its own order, the
/// rest of the longer list at the end; duplicates dropped.
pub(crate) fn interleave(v6: &[Ipv6Addr], v4: &[Ipv4Addr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::with_capacity(v6.len() + v4.len());
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for i in 0..v6.len().max(v4.len()) {
        if let Some(&a) = v6.get(i) {
            push(IpAddr::V6(a));
        }
        if let Some(&a) = v4.get(i) {
            push(IpAddr::V4(a));
        }
    }
    out
}

/// The final list from the candidates and their address outcomes (same
/// order, same length).
///
/// A candidate without addresses is dropped; if none is left, the result
/// is [`DnsError::Temporary`] if any drop was temporary (naming each
/// cause), else [`DnsError::NoAddresses`]. The survivors are put in
/// preference order, equal preferences in random order.
pub(crate) fn assemble(
    host: &str,
    candidates: Vec<Candidate>,
    addrs: &[Addrs],
    rng: &mut Rng,
) -> Result<Vec<Exchanger>, DnsError> {
    debug_assert_eq!(candidates.len(), addrs.len());
    let mut kept = Vec::with_capacity(candidates.len());
    let mut temporary: Vec<String> = Vec::new();
    for (c, a) in candidates.into_iter().zip(addrs) {
        match combine(a) {
            Ok(list) => kept.push(Exchanger { name: c.name, pref: c.pref, addrs: list, source: c.source }),
            Err(NoAddress::Temporary(detail)) => temporary.push(format!("{}: {detail}", c.name)),
            Err(_) => {}
        }
    }
    if kept.is_empty() {
        if temporary.is_empty() {
            return Err(DnsError::NoAddresses { host: host.to_owned() });
        }
        return Err(DnsError::temporary(host, format!("no address found: {}", temporary.join("; "))));
    }
    order(&mut kept, rng);
    Ok(kept)
}

/// Sorts by preference, equal preferences in random order: a shuffle,
/// then a stable sort.
pub(crate) fn order(list: &mut [Exchanger], rng: &mut Rng) {
    for i in (1..list.len()).rev() {
        list.swap(i, rng.below(i + 1));
    }
    list.sort_by_key(|e| e.pref);
}

/// An address literal used as a mail domain or relay: `1.2.3.4`,
/// `[1.2.3.4]`, `[IPv6:2001:db8::1]` (RFC 5321, any case), and also a bare
/// or bracketed IPv6 address (`::1`, `[::1]`), which cannot be a host name.
pub fn parse_literal(host: &str) -> Option<IpAddr> {
    let inner = match host.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        Some(inner) => match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => {
                return inner[5..].parse::<Ipv6Addr>().ok().map(IpAddr::V6);
            }
            _ => inner,
        },
        None => host,
    };
    inner.parse().ok()
}

/// `host` as a fully qualified DNS name: no search list, ever. Non-ASCII
/// names go through IDNA.
pub(crate) fn to_fqdn(host: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName { name: host.to_owned(), reason };
    if host.is_empty() || host == "." {
        return Err(invalid("empty name".to_owned()));
    }
    if host.starts_with('.') || host.contains("..") {
        return Err(invalid("empty label".to_owned()));
    }
    let parsed = if host.is_ascii() { Name::from_ascii(host) } else { Name::from_utf8(host) };
    let mut name = parsed.map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name)
}

/// A name for display: ASCII form, no final dot.
pub(crate) fn display_name(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s
}

/// A small PRNG (SplitMix64) for the order of equal preferences. Not for
/// anything secret: it only spreads the load over equal MXes, as qmail's
/// LCG does.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Seeded from the time and the process id, like qmail's
    /// `now() + (getpid() << 16)`, but with the nanoseconds too.
    pub(crate) fn from_time_and_pid() -> Self {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let pid = u64::from(std::process::id());
        Self::new(now.as_secs() ^ (u64::from(now.subsec_nanos()) << 20) ^ (pid << 16) ^ (pid << 48))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift; the bias is below
    /// 2^-50 for the list sizes seen here.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }
    fn v4(s: &str) -> Ipv4Addr {
        s.parse().expect("test v4")
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("test v6")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }
    fn ex(n: &str, pref: u16) -> Exchanger {
        Exchanger { name: n.to_owned(), pref, addrs: vec![ip("192.0.2.1")], source: Source::Mx }
    }
    fn cand(n: &str, pref: u16) -> Candidate {
        Candidate { name: n.to_owned(), pref, source: Source::Mx }
    }
    fn names(list: &[Exchanger]) -> Vec<&str> {
        list.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        let mut r = Rng::new(7);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[r.below(3)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }

    #[test]
    fn order_sorts_by_preference_stably_for_a_fixed_seed() {
        let list = vec![ex("c", 20), ex("a", 10), ex("d", 30), ex("b", 10), ex("e", 20)];
        let mut x = list.clone();
        order(&mut x, &mut Rng::new(1));
        let mut y = list.clone();
        order(&mut y, &mut Rng::new(1));
        assert_eq!(x, y, "same seed, same order");
        let prefs: Vec<u16> = x.iter().map(|e| e.pref).collect();
        assert_eq!(prefs, [10, 10, 20, 20, 30]);
        assert_eq!(x[4].name, "d");
    }

    #[test]
    fn order_shuffles_equal_preferences() {
        // Over many seeds, each of the three equal-preference exchangers
        // comes first, and the preference-5 one is always first.
        let list = vec![ex("a", 10), ex("b", 10), ex("c", 10), ex("best", 5), ex("worst", 90)];
        let mut first = std::collections::BTreeMap::new();
        let mut rng = Rng::from_time_and_pid();
        for _ in 0..300 {
            let mut x = list.clone();
            order(&mut x, &mut rng);
            assert_eq!(x[0].name, "best");
            assert_eq!(x[4].name, "worst");
            *first.entry(x[1].name.clone()).or_insert(0) += 1;
        }
        assert_eq!(first.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "c"], "{first:?}");
        assert!(first.values().all(|&n| n > 50), "{first:?}");
    }

    #[test]
    fn order_both_orders_of_a_pair_appear() {
        let list = vec![ex("x", 10), ex("y", 10)];
        let (mut xy, mut yx) = (0, 0);
        for seed in 0..200 {
            let mut l = list.clone();
            order(&mut l, &mut Rng::new(seed));
            if names(&l) == ["x", "y"] { xy += 1 } else { yx += 1 }
        }
        assert!(xy > 50 && yx > 50, "xy={xy} yx={yx}");
    }

    #[test]
    fn interleaving() {
        let cases: &[(&[&str], &[&str], &[&str])] = &[
            (&[], &[], &[]),
            (&["2001:db8::1"], &[], &["2001:db8::1"]),
            (&[], &["192.0.2.1", "192.0.2.2"], &["192.0.2.1", "192.0.2.2"]),
            (
                &["2001:db8::1", "2001:db8::2"],
                &["192.0.2.1", "192.0.2.2"],
                &["2001:db8::1", "192.0.2.1", "2001:db8::2", "192.0.2.2"],
            ),
            (
                &["2001:db8::1"],
                &["192.0.2.9", "192.0.2.1", "192.0.2.5"],
                &["2001:db8::1", "192.0.2.9", "192.0.2.1", "192.0.2.5"],
            ),
            (
                &["2001:db8::3", "2001:db8::2", "2001:db8::1"],
                &["192.0.2.1"],
                &["2001:db8::3", "192.0.2.1", "2001:db8::2", "2001:db8::1"],
            ),
            (&["2001:db8::1", "2001:db8::1"], &["192.0.2.1", "192.0.2.1"], &["2001:db8::1", "192.0.2.1"]),
        ];
        for (a6, a4, want) in cases {
            let a6: Vec<Ipv6Addr> = a6.iter().map(|s| v6(s)).collect();
            let a4: Vec<Ipv4Addr> = a4.iter().map(|s| v4(s)).collect();
            let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(interleave(&a6, &a4), want);
        }
    }

    #[test]
    fn mx_reading() {
        let host = "example.test";
        let found = |v: &[(u16, &str)]| Outcome::Found(v.iter().map(|&(p, n)| (p, name(n))).collect());
        assert_eq!(read_mx(host, found(&[(0, ".")])), Ok(MxPlan::Null));
        assert_eq!(read_mx(host, found(&[(10, ".")])), Ok(MxPlan::Null));
        assert_eq!(read_mx(host, found(&[(0, "."), (5, ".")])), Ok(MxPlan::Null));
        assert_eq!(
            read_mx(host, found(&[(0, "."), (10, "mx.example.test.")])),
            Ok(MxPlan::Exchangers(vec![(10, name("mx.example.test."))]))
        );
        assert_eq!(
            read_mx(host, found(&[(20, "b.test."), (10, "a.test."), (5, "B.test.")])),
            Ok(MxPlan::Exchangers(vec![(5, name("b.test.")), (10, name("a.test."))]))
        );
        assert_eq!(read_mx(host, Outcome::NoData), Ok(MxPlan::Implicit));
        assert_eq!(read_mx(host, Outcome::NxDomain), Err(DnsError::NoSuchHost { host: host.into() }));
        let e = read_mx(host, Outcome::Temporary("SERVFAIL".into())).expect_err("temporary");
        assert!(!e.is_permanent());
        assert!(e.to_string().contains("SERVFAIL"), "{e}");
    }

    #[test]
    fn combining_families() {
        let a = |v6: Outcome<Ipv6Addr>, v4: Outcome<Ipv4Addr>| combine(&Addrs { v6, v4 });
        fn t<T>(s: &str) -> Outcome<T> {
            Outcome::Temporary(s.to_owned())
        }
        let e = |s: &str| NoAddress::Temporary(s.to_owned());
        let f6 = || Outcome::Found(vec![v6("2001:db8::1")]);
        let f4 = || Outcome::Found(vec![v4("192.0.2.1")]);
        assert_eq!(a(f6(), f4()), Ok(vec![ip("2001:db8::1"), ip("192.0.2.1")]));
        // Some addresses and a temporary failure of the other family: keep.
        assert_eq!(a(f6(), t("timed out")), Ok(vec![ip("2001:db8::1")]));
        assert_eq!(a(t("SERVFAIL"), f4()), Ok(vec![ip("192.0.2.1")]));
        assert_eq!(a(f6(), Outcome::NxDomain), Ok(vec![ip("2001:db8::1")]));
        assert_eq!(a(Outcome::NoData, f4()), Ok(vec![ip("192.0.2.1")]));
        assert_eq!(a(Outcome::NxDomain, Outcome::NxDomain), Err(NoAddress::NxDomain));
        assert_eq!(a(Outcome::NoData, Outcome::NoData), Err(NoAddress::NoData));
        assert_eq!(a(Outcome::NoData, Outcome::NxDomain), Err(NoAddress::NoData));
        assert_eq!(a(t("x"), t("x")), Err(e("x")));
        assert_eq!(a(t("x"), t("y")), Err(e("AAAA: x, A: y")));
        assert_eq!(a(t("x"), Outcome::NxDomain), Err(e("AAAA: x")));
        assert_eq!(a(Outcome::NoData, t("y")), Err(e("A: y")));
    }

    #[test]
    fn assembling() {
        let host = "example.test";
        let ok4 = |s: &str| Addrs { v6: Outcome::NoData, v4: Outcome::Found(vec![v4(s)]) };
        let nx = || Addrs { v6: Outcome::NxDomain, v4: Outcome::NxDomain };
        let nodata = || Addrs { v6: Outcome::NoData, v4: Outcome::NoData };
        let temp = |s: &str| Addrs { v6: Outcome::Temporary(s.into()), v4: Outcome::Temporary(s.into()) };
        let mut rng = Rng::new(3);

        // One NXDOMAIN exchanger dropped, the other kept.
        let r = assemble(host, vec![cand("a", 10), cand("b", 20)], &[nx(), ok4("192.0.2.2")], &mut rng);
        assert_eq!(r.as_ref().map(|l| names(l)), Ok(vec!["b"]));
        // A temporary drop next to a survivor: the survivor.
        let r = assemble(host, vec![cand("a", 10), cand("b", 20)], &[temp("timed out"), ok4("192.0.2.2")], &mut rng);
        assert_eq!(r.as_ref().map(|l| names(l)), Ok(vec!["b"]));
        // All dropped, permanently: NoAddresses.
        let r = assemble(host, vec![cand("a", 10), cand("b", 20)], &[nx(), nodata()], &mut rng);
        assert_eq!(r, Err(DnsError::NoAddresses { host: host.into() }));
        // All dropped, one temporarily: Temporary, naming it.
        let r = assemble(host, vec![cand("a", 10), cand("b", 20)], &[nx(), temp("SERVFAIL")], &mut rng);
        match r {
            Err(e @ DnsError::Temporary { .. }) => {
                assert!(!e.is_permanent());
                assert!(e.to_string().contains("b: SERVFAIL"), "{e}");
                assert!(!e.to_string().contains("a:"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Sorted by preference.
        let r = assemble(
            host,
            vec![cand("c", 30), cand("a", 10), cand("b", 20)],
            &[ok4("192.0.2.3"), ok4("192.0.2.1"), ok4("192.0.2.2")],
            &mut rng,
        );
        assert_eq!(r.as_ref().map(|l| names(l)), Ok(vec!["a", "b", "c"]));
        let l = r.unwrap_or_default();
        assert_eq!(l[0].addrs, [ip("192.0.2.1")]);
        // Nothing at all (no candidates) is NoAddresses too.
        assert_eq!(assemble(host, vec![], &[], &mut rng), Err(DnsError::NoAddresses { host: host.into() }));
    }

    #[test]
    fn literals() {
        let cases: &[(&str, Option<&str>)] = &[
            ("192.0.2.1", Some("192.0.2.1")),
            ("[192.0.2.1]", Some("192.0.2.1")),
            ("[IPv6:2001:db8::1]", Some("2001:db8::1")),
            ("[ipv6:2001:db8::1]", Some("2001:db8::1")),
            ("[IPV6:::1]", Some("::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[IPv6:192.0.2.1]", None),
            ("[IPv6:]", None),
            ("[IPv6", None),
            ("[192.0.2.1", None),
            ("192.0.2.1]", None),
            ("192.0.2", None),
            ("192.0.2.1.example", None),
            ("example.test", None),
            ("", None),
            ("[]", None),
        ];
        for (host, want) in cases {
            assert_eq!(parse_literal(host), want.map(ip), "{host:?}");
        }
    }

    #[test]
    fn names_are_fully_qualified() {
        let n = to_fqdn("Example.TEST").expect("name");
        assert!(n.is_fqdn());
        assert_eq!(n, name("example.test."));
        assert_eq!(display_name(&n), "Example.TEST");
        assert!(to_fqdn("example.test.").expect("name").is_fqdn());
        assert_eq!(display_name(&to_fqdn("bücher.example").expect("idna")), "xn--bcher-kva.example");
        for bad in ["", ".", ".example", "a..b", &format!("{}.test", "x".repeat(64)), &"abcdefghi.".repeat(30)] {
            match to_fqdn(bad) {
                Err(e @ DnsError::InvalidName { .. }) => assert!(e.is_permanent()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(display_name(&Name::root()), ".");
    }

    #[test]
    fn outcome_map_drops_other_types() {
        let o: Outcome<u8> = Outcome::Found(vec![1, 2, 3]);
        assert_eq!(o.clone().map(|x| (x != 2).then_some(x)), Outcome::Found(vec![1, 3]));
        assert_eq!(o.map(|_| None::<u8>), Outcome::NoData);
        assert_eq!(Outcome::<u8>::NxDomain.map(Some), Outcome::NxDomain);
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn select_keeps_the_lowest_preferences_and_draws_among_ties() {
        // 3000 exchangers: the ten of preference 0..=9 are kept, in order.
        let list: Vec<(u16, usize)> = (0..3000).rev().map(|i| ((i % 3000) as u16, i)).collect();
        let (kept, cut) = select(list, &mut Rng::new(1));
        assert_eq!(cut, 2990);
        assert_eq!(kept.iter().map(|(p, _)| *p).collect::<Vec<_>>(), (0..10).collect::<Vec<u16>>());
        // Fewer than the limit: all kept, nothing cut.
        let (kept, cut) = select(vec![(20, 'b'), (10, 'a')], &mut Rng::new(1));
        assert_eq!((kept, cut), (vec![(10, 'a'), (20, 'b')], 0));
        // 5 better ones, then 60 at one preference: 5 of those 60 make the
        // cut, a different choice for different seeds, each of the 60 kept
        // sometimes.
        let list: Vec<(u16, usize)> = (0..60).map(|i| (20, i)).chain((60..65).map(|i| (10, i))).collect();
        let mut kept_ever = std::collections::BTreeSet::new();
        for seed in 0..400 {
            let (kept, cut) = select(list.clone(), &mut Rng::new(seed));
            assert_eq!(cut, 55);
            assert_eq!(kept.len(), MAX_EXCHANGERS);
            let mut best: Vec<usize> = kept[..5].iter().map(|(_, i)| *i).collect();
            best.sort();
            assert_eq!(best, [60, 61, 62, 63, 64]);
            kept_ever.extend(kept[5..].iter().map(|(_, i)| *i));
        }
        assert_eq!(kept_ever.len(), 60, "{kept_ever:?}");
    }

    #[test]
    fn addresses_are_capped_per_family_in_answer_order() {
        let v4: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(192, 0, 2, i)).collect();
        let v6: Vec<Ipv6Addr> = (1..=3).map(|i| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)).collect();
        let a = Addrs { v6: Outcome::Found(v6.clone()), v4: Outcome::Found(v4.clone()) };
        let list = combine(&a).expect("addresses");
        let want: Vec<IpAddr> =
            vec![v6[0].into(), v4[0].into(), v6[1].into(), v4[1].into(), v6[2].into(), v4[2].into(), v4[3].into()];
        assert_eq!(list, want);
        assert_eq!(beyond_limit(&a), 196);
        // Duplicates do not use up the limit.
        let dup = Addrs { v6: Outcome::NoData, v4: Outcome::Found(vec![v4[0]; 1000]) };
        assert_eq!(combine(&dup).expect("one"), vec![IpAddr::V4(v4[0])]);
        assert_eq!(beyond_limit(&dup), 0);
    }

    #[test]
    fn thousands_of_mx_records_are_read_in_linear_time_and_deduplicated() {
        let mut records: Vec<(u16, Name)> = (0..5000u16)
            .map(|i| (i % 100, Name::from_ascii(format!("mx{}.example.test.", i % 2500)).expect("name")))
            .collect();
        records.push((0, Name::from_ascii("MX7.Example.Test.").expect("name")));
        let start = std::time::Instant::now();
        let Ok(MxPlan::Exchangers(list)) = read_mx("example.test", Outcome::Found(records)) else { panic!() };
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(list.len(), 2500);
        assert_eq!(list[7].0, 0, "the lowest preference of a name listed thrice, case-insensitively");
    }
}
