//! chainmail-dns's `Resolver` against a real DNS server on loopback
//! (`tests/peers/dnsserver.py`, [`chainmail_tests::peer::DnsServer`]).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use chainmail_dns::{ATTEMPT_TIMEOUT, ATTEMPTS_WITHOUT_DEADLINE, DnsError, Exchanger, Resolver, Servers, Source};
use chainmail_tests::TestDir;
use chainmail_tests::peer::DnsServer;

/// The timing test runs alone (write lock); the others share (read lock),
/// so that their servers starting up do not eat its CPU.
static TIMING: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    TIMING.read().unwrap_or_else(|e| e.into_inner())
}

fn resolver_for(addrs: Vec<SocketAddr>) -> Resolver {
    Resolver::new(&Servers::new(addrs)).expect("a resolver")
}

fn resolver(server: &DnsServer) -> Resolver {
    resolver_for(vec![server.addr])
}

/// The value of a lookup that must succeed.
fn ok<T>(r: Result<T, DnsError>) -> T {
    r.unwrap_or_else(|e| panic!("lookup failed: {e}"))
}

/// A UDP port where nothing ever answers (kept open, never read).
fn black_hole() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket")
}

fn addr_of(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local address")
}

fn within(ms: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_millis(ms))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an IP address")
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn names(list: &[Exchanger]) -> Vec<&str> {
    list.iter().map(|e| e.name.as_str()).collect()
}

fn plan(server: &DnsServer, host: &str) -> Result<Vec<Exchanger>, DnsError> {
    resolver(server).plan_mx(host, within(5000))
}

/// `plan_mx` of `host` by a new resolver for `server`, with a deadline `ms`
/// milliseconds from now (`None`: no deadline), and how long it took.
fn timed_plan(server: &DnsServer, host: &str, ms: Option<u64>) -> (Result<Vec<Exchanger>, DnsError>, Duration) {
    let t0 = Instant::now();
    let r = resolver(server).plan_mx(host, ms.and_then(within));
    (r, t0.elapsed())
}

fn expect_temporary(r: Result<Vec<Exchanger>, DnsError>, needle: &str) -> DnsError {
    match r {
        Err(e @ DnsError::Temporary { .. }) => {
            assert!(!e.is_permanent());
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
            e
        }
        other => panic!("expected a temporary failure, got {other:?}"),
    }
}

const ORDER_ZONE: &str = "
example.test MX 20 c.example.test
example.test MX 10 a.example.test
example.test MX 10 b.example.test
example.test MX 30 d.example.test
a.example.test AAAA 2001:db8::a1
a.example.test A 192.0.2.1
a.example.test AAAA 2001:db8::a2
a.example.test A 192.0.2.2
a.example.test A 192.0.2.3
b.example.test A 192.0.2.11
c.example.test A 192.0.2.21
d.example.test AAAA 2001:db8::d1
";

#[test]
fn mx_order_preference_ties_and_interleaving() {
    let dir = TestDir::new("dns_mx_order_preference_ties_and_interleaving");
    let _shared = shared();
    let server = DnsServer::start(&dir, ORDER_ZONE);
    let mut r = resolver(&server);
    let mut seen_ab = false;
    let mut seen_ba = false;
    for seed in 0..40 {
        r.set_seed(seed);
        let list = ok(r.plan_mx("example.test", within(5000)));
        let n = names(&list);
        assert_eq!(n[2..], ["c.example.test", "d.example.test"]);
        match n[..2] {
            ["a.example.test", "b.example.test"] => seen_ab = true,
            ["b.example.test", "a.example.test"] => seen_ba = true,
            _ => panic!("{n:?}"),
        }
        let prefs: Vec<u16> = list.iter().map(|e| e.pref).collect();
        assert_eq!(prefs, [10, 10, 20, 30]);
        assert!(list.iter().all(|e| e.source == Source::Mx));
        let a = list.iter().find(|e| e.name == "a.example.test").expect("a is listed");
        assert_eq!(a.addrs, ips(&["2001:db8::a1", "192.0.2.1", "2001:db8::a2", "192.0.2.2", "192.0.2.3"]));
        // An IPv4-only and an IPv6-only exchanger.
        assert_eq!(list[2].addrs, ips(&["192.0.2.21"]));
        assert_eq!(list[3].addrs, ips(&["2001:db8::d1"]));
    }
    assert!(seen_ab && seen_ba, "both orders of the tie: ab {seen_ab}, ba {seen_ba}");

    // A fixed seed gives a fixed order.
    r.set_seed(7);
    let first = ok(r.plan_mx("example.test", within(5000)));
    r.set_seed(7);
    assert_eq!(ok(r.plan_mx("example.test", within(5000))), first);
}

#[test]
fn implicit_mx() {
    let dir = TestDir::new("dns_implicit_mx");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
plain.test A 192.0.2.5
plain.test AAAA 2001:db8::5
plain.test TXT v=spf1 -all
alias.test CNAME target.test
target.test A 192.0.2.6
",
    );
    let list = ok(plan(&server, "plain.test"));
    assert_eq!(
        list,
        [Exchanger {
            name: "plain.test".into(),
            pref: 0,
            addrs: ips(&["2001:db8::5", "192.0.2.5"]),
            source: Source::ImplicitMx,
        }]
    );
    // A CNAME to a name without MX: the host's own addresses (through the
    // CNAME again for A).
    let list = ok(plan(&server, "alias.test"));
    assert_eq!(names(&list), ["alias.test"]);
    assert_eq!(list[0].addrs, ips(&["192.0.2.6"]));
    assert_eq!(list[0].source, Source::ImplicitMx);
    // An existing name without MX and without addresses: #5.4.4.
    let server2 = DnsServer::start(&dir, "bare.test TXT nothing here\n");
    match plan(&server2, "bare.test") {
        Err(e @ DnsError::NoAddresses { .. }) => assert!(e.is_permanent()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn null_mx_and_nxdomain_are_permanent() {
    let dir = TestDir::new("dns_null_mx_and_nxdomain_are_permanent");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
nomail.test MX 0 .
nomail.test A 192.0.2.1
exists.test A 192.0.2.1
",
    );
    match plan(&server, "nomail.test") {
        Err(e @ DnsError::NullMx { .. }) => {
            assert!(e.is_permanent());
            assert_eq!(e.status(), "5.1.10");
        }
        other => panic!("{other:?}"),
    }
    match plan(&server, "missing.test") {
        Err(e @ DnsError::NoSuchHost { .. }) => {
            assert!(e.is_permanent());
            assert_eq!(e.status(), "5.1.2");
        }
        other => panic!("{other:?}"),
    }
    let log = {
        let mut s = server;
        s.stop()
    };
    // No search list, no A fallback after NXDOMAIN or Null MX.
    assert_eq!(log, ["udp MX nomail.test.", "udp MX missing.test."]);
}

#[test]
fn servfail_and_refused_are_temporary() {
    let dir = TestDir::new("dns_servfail_and_refused_are_temporary");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
broken.test SERVFAIL
shut.test REFUSED
",
    );
    let t0 = Instant::now();
    expect_temporary(plan(&server, "broken.test"), "SERVFAIL");
    expect_temporary(plan(&server, "shut.test"), "REFUSED");
    assert!(t0.elapsed() < Duration::from_secs(1), "error codes are not retried: {:?}", t0.elapsed());
}

#[test]
fn a_server_that_never_answers() {
    let dir = TestDir::new("dns_a_server_that_never_answers");
    let _shared = shared();
    let server = DnsServer::start(&dir, "hole.test DROP\n");
    let (r, took) = timed_plan(&server, "hole.test", Some(1200));
    let e = expect_temporary(r, "deadline");
    println!("never answers, deadline 1.2 s: {took:?}: {e}");
    assert!(took >= Duration::from_millis(1150) && took < Duration::from_millis(1700), "{took:?}");
    let log = {
        let mut s = server;
        s.stop()
    };
    // hickory sent it again after 333 ms, and again after 666 ms.
    assert!(log.len() >= 3, "the lost query was sent again: {log:?}");
    assert!(log.iter().all(|l| l == "udp MX hole.test."), "{log:?}");
}

#[test]
fn a_server_that_never_answers_without_deadline() {
    let dir = TestDir::new("dns_a_server_that_never_answers_without_deadline");
    let _shared = shared();
    let server = DnsServer::start(&dir, "hole.test DROP\n");
    let (r, took) = timed_plan(&server, "hole.test", None);
    let e = expect_temporary(r, "timed out");
    println!("never answers, no deadline: {took:?}: {e}");
    let bound = ATTEMPT_TIMEOUT * ATTEMPTS_WITHOUT_DEADLINE + Duration::from_secs(2);
    assert!(took < bound, "{took:?}");
}

#[test]
fn dead_exchangers_are_dropped() {
    let dir = TestDir::new("dns_dead_exchangers_are_dropped");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
one.test MX 10 gone.one.test
one.test MX 20 ok.one.test
ok.one.test A 192.0.2.7
gone.one.test NXDOMAIN
allgone.test MX 10 gone1.allgone.test
allgone.test MX 20 gone2.allgone.test
gone1.allgone.test NXDOMAIN
half.test MX 10 gone.half.test
half.test MX 20 sick.half.test
gone.half.test NXDOMAIN
sick.half.test SERVFAIL
mixed.test MX 10 mx.mixed.test
mx.mixed.test A 192.0.2.8
mx.mixed.test AAAA SERVFAIL
",
    );
    // An exchanger whose A is NXDOMAIN, next to one that works.
    let list = ok(plan(&server, "one.test"));
    assert_eq!(names(&list), ["ok.one.test"]);
    assert_eq!(list[0].pref, 20);
    // All gone, permanently: #5.4.4 (gone2 does not exist either).
    match plan(&server, "allgone.test") {
        Err(e @ DnsError::NoAddresses { .. }) => {
            assert!(e.is_permanent());
            assert_eq!(e.status(), "5.4.4");
        }
        other => panic!("{other:?}"),
    }
    // All gone, one temporarily: try again later.
    expect_temporary(plan(&server, "half.test"), "sick.half.test: SERVFAIL");
    // A works, AAAA fails: keep the A.
    let list = ok(plan(&server, "mixed.test"));
    assert_eq!(list[0].addrs, ips(&["192.0.2.8"]));
}

#[test]
fn truncated_answer_is_retried_over_tcp() {
    let dir = TestDir::new("dns_truncated_answer_is_retried_over_tcp");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
big.test TRUNCATE
big.test MX 10 mx.big.test
mx.big.test A 192.0.2.9
",
    );
    let list = ok(plan(&server, "big.test"));
    assert_eq!(names(&list), ["mx.big.test"]);
    let log = {
        let mut s = server;
        s.stop()
    };
    assert_eq!(log[..2], ["udp MX big.test.", "tcp MX big.test."], "{log:?}");
}

#[test]
fn cnames() {
    let dir = TestDir::new("dns_cnames");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
alias.test CNAME real.test
real.test MX 10 mxalias.real.test
mxalias.real.test CNAME mx.real.test
mx.real.test A 192.0.2.10
mx.real.test AAAA 2001:db8::10
outside.test CNAME elsewhere.example
outside.test NOCHASE
elsewhere.example MX 5 mx.elsewhere.example
mx.elsewhere.example A 192.0.2.11
",
    );
    // A chain the server followed: two rounds, no CNAME round.
    let list = ok(plan(&server, "alias.test"));
    assert_eq!(names(&list), ["mxalias.real.test"]);
    assert_eq!(list[0].addrs, ips(&["2001:db8::10", "192.0.2.10"]));
    // A chain the server left to us: one more round for the target.
    let list = ok(plan(&server, "outside.test"));
    assert_eq!(names(&list), ["mx.elsewhere.example"]);
    let log = {
        let mut s = server;
        s.stop()
    };
    let mx: Vec<&String> = log.iter().filter(|l| l.contains(" MX ")).collect();
    assert_eq!(mx, ["udp MX alias.test.", "udp MX outside.test.", "udp MX elsewhere.example."]);
    assert_eq!(log.len(), 3 + 2 + 2, "{log:?}");
}

#[test]
fn slow_dns_two_rounds_not_three() {
    let dir = TestDir::new("dns_slow_dns_two_rounds_not_three");
    let _alone = TIMING.write().unwrap_or_else(|e| e.into_inner());
    let server = DnsServer::start_delayed(
        &dir,
        "
slow.test MX 10 mx1.slow.test
slow.test MX 20 mx2.slow.test
slow.test MX 30 mx3.slow.test
mx1.slow.test A 127.0.0.1
mx1.slow.test AAAA ::1
mx2.slow.test A 127.0.0.2
mx2.slow.test AAAA ::2
mx3.slow.test A 127.0.0.3
mx3.slow.test AAAA ::3
",
        200,
    );
    let t0 = Instant::now();
    let r = resolver(&server);
    let list = ok(r.plan_mx("slow.test", within(5000)));
    let took = t0.elapsed();
    println!("slow DNS (200 ms per answer, MX + 3 exchangers with A and AAAA): plan_mx took {took:?}");
    assert_eq!(names(&list), ["mx1.slow.test", "mx2.slow.test", "mx3.slow.test"]);
    assert_eq!(list[0].addrs, ips(&["::1", "127.0.0.1"]));
    // Two rounds (the MX query, then the six address queries at once) take
    // 400 ms; anything less parallel takes at least three (600 ms). The
    // bound sits between them, not just above 400 ms: a loaded machine
    // adds tens of milliseconds, and the test is about the rounds.
    assert!(took < Duration::from_millis(590), "{took:?}: more than two rounds of 200 ms");
    let mut log = {
        let mut s = server;
        s.stop()
    };
    log.sort();
    let mut want = vec!["udp MX slow.test.".to_owned()];
    for n in 1..=3 {
        want.push(format!("udp A mx{n}.slow.test."));
        want.push(format!("udp AAAA mx{n}.slow.test."));
    }
    want.sort();
    assert_eq!(log, want, "one MX query and six address queries, nothing else");
}

#[test]
fn resolve_host_for_relays() {
    let dir = TestDir::new("dns_resolve_host_for_relays");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
relay.test A 192.0.2.20
relay.test AAAA 2001:db8::20
relay.test AAAA 2001:db8::21
v4.test A 192.0.2.22
txt.test TXT no addresses
sick.test AAAA SERVFAIL
sick.test A SERVFAIL
",
    );
    let r = resolver(&server);
    assert_eq!(r.resolve_host("relay.test", within(5000)), Ok(ips(&["2001:db8::20", "192.0.2.20", "2001:db8::21"])));
    assert_eq!(r.resolve_host("v4.test", within(5000)), Ok(ips(&["192.0.2.22"])));
    assert_eq!(r.resolve_host("missing.test", within(5000)), Err(DnsError::NoSuchHost { host: "missing.test".into() }));
    assert_eq!(r.resolve_host("txt.test", within(5000)), Err(DnsError::NoAddresses { host: "txt.test".into() }));
    match r.resolve_host("sick.test", within(5000)) {
        Err(e @ DnsError::Temporary { .. }) => assert!(e.to_string().contains("SERVFAIL"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Literals need no DNS.
    for (lit, want) in
        [("192.0.2.99", "192.0.2.99"), ("[192.0.2.99]", "192.0.2.99"), ("[IPv6:2001:db8::99]", "2001:db8::99")]
    {
        assert_eq!(r.resolve_host(lit, within(5000)), Ok(vec![ip(want)]));
    }
    let log = {
        let mut s = server;
        s.stop()
    };
    assert_eq!(log.len(), 10, "two queries per name, none for literals: {log:?}");
}

#[test]
fn literals_need_no_dns() {
    let _shared = shared();
    // A server address where nothing answers.
    let hole = black_hole();
    let r = resolver_for(vec![addr_of(&hole)]);
    let list = ok(r.plan_mx("[192.0.2.1]", within(100)));
    assert_eq!(
        list,
        [Exchanger { name: "[192.0.2.1]".into(), pref: 0, addrs: ips(&["192.0.2.1"]), source: Source::Literal }]
    );
    assert_eq!(ok(r.plan_mx("[IPv6:2001:db8::1]", within(100)))[0].addrs, ips(&["2001:db8::1"]));
    match r.plan_mx("bad..name", within(100)) {
        Err(e @ DnsError::InvalidName { .. }) => assert!(e.is_permanent()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_dead_server_next_to_a_live_one() {
    let dir = TestDir::new("dns_a_dead_server_next_to_a_live_one");
    let _shared = shared();
    let server = DnsServer::start(&dir, "ok.test MX 10 mx.ok.test\nmx.ok.test A 192.0.2.30\n");
    let hole = black_hole();
    let r = resolver_for(vec![addr_of(&hole), server.addr]);
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(names(&ok(r.plan_mx("ok.test", within(5000)))), ["mx.ok.test"]);
    }
    println!("three plans with a dead first server: {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn a_closed_port_is_temporary_and_bounded() {
    let _shared = shared();
    // The socket is closed again: the port is unreachable.
    let port = addr_of(&black_hole());
    let r = resolver_for(vec![port]);
    let t0 = Instant::now();
    let e = r.plan_mx("example.test", within(1500)).expect_err("nothing answers");
    println!("closed port: {:?}: {e}", t0.elapsed());
    assert!(!e.is_permanent());
    assert!(t0.elapsed() < Duration::from_millis(2000), "{:?}", t0.elapsed());
}

#[test]
fn dnscacheip_with_a_port() {
    let dir = TestDir::new("dns_dnscacheip_with_a_port");
    let _shared = shared();
    let server = DnsServer::start(&dir, "ok.test MX 10 mx.ok.test\nmx.ok.test A 192.0.2.31\n");
    let value = format!("127.0.0.1:{}", server.addr.port());
    let servers = Servers::from_dnscacheip(&value).expect("DNSCACHEIP");
    assert_eq!(servers.addrs(), [server.addr]);
    let r = Resolver::new(&servers).expect("a resolver");
    assert_eq!(names(&ok(r.plan_mx("ok.test", within(5000)))), ["mx.ok.test"]);
}

#[test]
fn the_deadline_keeps_what_was_found() {
    let dir = TestDir::new("dns_the_deadline_keeps_what_was_found");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
part.test MX 10 fast.part.test
part.test MX 20 stuck.part.test
fast.part.test A 192.0.2.40
stuck.part.test DROP
",
    );
    let (r, took) = timed_plan(&server, "part.test", Some(1000));
    let list = ok(r);
    assert_eq!(names(&list), ["fast.part.test"]);
    assert!(took >= Duration::from_millis(950) && took < Duration::from_millis(1500), "{took:?}");
    // Nothing found before the deadline: temporary.
    let server = DnsServer::start(&dir, "part.test MX 10 stuck.part.test\nstuck.part.test DROP\n");
    expect_temporary(
        resolver(&server).plan_mx("part.test", within(800)),
        "stuck.part.test: no answer within the DNS deadline",
    );
}

#[test]
fn a_silent_backup_exchanger_does_not_hold_the_delivery() {
    let dir = TestDir::new("dns_a_silent_backup_exchanger_does_not_hold_the_delivery");
    let _shared = shared();
    let server = DnsServer::start(
        &dir,
        "
slowbackup.test MX 10 good.slowbackup.test
slowbackup.test MX 20 silent.slowbackup.test
good.slowbackup.test A 192.0.2.50
good.slowbackup.test AAAA 2001:db8::50
silent.slowbackup.test DROP
",
    );
    let (r, took) = timed_plan(&server, "slowbackup.test", Some(30_000));
    let list = ok(r);
    assert_eq!(names(&list), ["good.slowbackup.test"]);
    assert!(took < chainmail_dns::BACKUP_GRACE + Duration::from_millis(1500), "{took:?}");
    // When the best exchanger has no address yet, the backup is waited
    // for (here: until the deadline, as nothing answers for it).
    let server = DnsServer::start(
        &dir,
        "
slowbest.test MX 10 silent.slowbest.test
slowbest.test MX 20 good.slowbest.test
good.slowbest.test A 192.0.2.51
silent.slowbest.test DROP
",
    );
    let t0 = Instant::now();
    let list = ok(resolver(&server).plan_mx("slowbest.test", within(1500)));
    assert_eq!(names(&list), ["good.slowbest.test"]);
    assert!(t0.elapsed() >= Duration::from_millis(1400), "{:?}", t0.elapsed());
}
