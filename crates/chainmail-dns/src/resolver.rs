//! The I/O half: hickory's name server pool on a current-thread tokio
//! runtime, driven synchronously.

use std::cell::Cell;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{NameServerConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::xfer::{DnsHandle, FirstAnswer};
use hickory_resolver::proto::op::{DnsRequestOptions, Query};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{NameServerPool, PoolContext, TlsConfig};
use tokio::task::JoinSet;

use crate::answer::{self, Answer};
use crate::error::DnsError;
use crate::plan::{
    self, Addrs, Candidate, Cut, Exchanger, MAX_CONCURRENT_QUERIES, MxPlan, NoAddress, Outcome, Rng, Source,
};
use crate::servers::Servers;

/// How long one attempt of one query may take, UDP retransmissions (at
/// 333 ms and 666 ms, hickory's fixed schedule) and a TCP retry after a
/// truncated answer included. After that the query is sent again, until
/// the deadline.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Attempts per query when there is no deadline (`timeoutdns` 0): three
/// attempts of [`ATTEMPT_TIMEOUT`] bound a query to about 9 s, as libc's
/// two attempts of 5 s do, so that "no deadline" cannot mean "hang".
pub const ATTEMPTS_WITHOUT_DEADLINE: u32 = 3;

/// Attempts of a query never start closer together than this, so that a
/// server that fails at once (port unreachable) is not flooded until the
/// deadline.
const RETRY_PACE: Duration = Duration::from_millis(500);

/// CNAME rounds allowed for one query, for chains the server did not
/// follow itself.
const MAX_CHASES: u32 = 8;

/// How long the lookups of the other exchangers may go on once every
/// exchanger of the best preference has been looked up and at least one
/// has an address. A backup MX whose name servers do not answer must not
/// hold every delivery until `timeoutdns`: the best ones are known, the
/// backups are only a fallback.
pub const BACKUP_GRACE: Duration = Duration::from_secs(2);

type Pool = NameServerPool<TokioRuntimeProvider>;

/// A synchronous DNS client for one qmail-remote run.
///
/// It owns a current-thread tokio runtime (no threads are started) and
/// hickory's pool of the configured servers, each reached over UDP, with
/// TCP after a truncated answer. There is no cache (one lookup per
/// process), no search list (every name is fully qualified), and no
/// `/etc/hosts`: like stock qmail, which asks the DNS with `res_query`
/// only, the hosts file is never read, neither for MX nor for addresses
/// nor for smtproutes relays. Nothing is logged (hickory logs through
/// `tracing`, and no subscriber is installed), so stderr stays clean.
pub struct Resolver {
    runtime: tokio::runtime::Runtime,
    pool: Pool,
    rng: Cell<Rng>,
    cut: Cell<Cut>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver asking `servers`.
    ///
    /// Fails only if the runtime cannot be created (out of file
    /// descriptors for its event loop, for instance): a temporary failure.
    pub fn new(servers: &Servers) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // The pool reads few of these: `timeout` (one attempt, see
        // ATTEMPT_TIMEOUT), `num_concurrent_reqs` (2: with several servers,
        // two are asked at once) and the server ordering (by measured
        // round-trip time). Retries, the cache, search domains and
        // /etc/hosts belong to hickory's `Resolver`, which is not used.
        let mut options = ResolverOpts::default();
        options.timeout = ATTEMPT_TIMEOUT;
        let context = PoolContext::new(options, TlsConfig::new().map_err(std::io::Error::other)?);
        let configs = servers.addrs().iter().map(|&addr| name_server(addr));
        let pool = NameServerPool::from_config(configs, Arc::new(context), TokioRuntimeProvider::new());
        Ok(Self { runtime, pool, rng: Cell::new(Rng::from_time_and_pid()), cut: Cell::new(Cut::default()) })
    }

    /// Makes the order of equal preferences reproducible (tests; feature
    /// `test-support`).
    #[cfg(any(test, feature = "test-support"))]
    pub fn set_seed(&mut self, seed: u64) {
        self.rng.set(Rng::new(seed));
    }

    /// What the limits ([`MAX_EXCHANGERS`](crate::MAX_EXCHANGERS),
    /// [`MAX_ADDRESSES_PER_FAMILY`](crate::MAX_ADDRESSES_PER_FAMILY)) left
    /// out of the last [`plan_mx`](Self::plan_mx) or
    /// [`resolve_host`](Self::resolve_host).
    pub fn cut(&self) -> Cut {
        self.cut.get()
    }

    /// The delivery plan for mail to `host`: its exchangers, by preference,
    /// each with its addresses.
    ///
    /// Bounded whatever the answers: at most
    /// [`MAX_EXCHANGERS`](crate::MAX_EXCHANGERS) exchangers (the lowest
    /// preferences) are looked up, at most
    /// `MAX_CONCURRENT_QUERIES` queries
    /// are in flight, and each exchanger keeps at most
    /// [`MAX_ADDRESSES_PER_FAMILY`](crate::MAX_ADDRESSES_PER_FAMILY)
    /// addresses of each family; [`cut`](Self::cut) says what was left out.
    ///
    /// * An address literal (`1.2.3.4`, `[1.2.3.4]`, `[IPv6:…]`, see
    ///   [`parse_literal`](crate::parse_literal)) is the one exchanger, with
    ///   preference 0 and no DNS.
    /// * Otherwise one MX query, then the A and AAAA queries of every
    ///   exchanger at once: two rounds. Equal preferences come in random
    ///   order; each exchanger's addresses interleave IPv6 and IPv4.
    /// * No MX records (NODATA, or a CNAME to a name without MX): the
    ///   host's own addresses, as one exchanger of preference 0 (implicit
    ///   MX).
    /// * Null MX: [`DnsError::NullMx`]. NXDOMAIN for the MX query:
    ///   [`DnsError::NoSuchHost`]. SERVFAIL, REFUSED, timeouts, network
    ///   errors: [`DnsError::Temporary`].
    /// * An exchanger without addresses is dropped; if none is left, the
    ///   result is [`DnsError::Temporary`] if any drop was due to a
    ///   temporary failure, else [`DnsError::NoAddresses`]. One with
    ///   addresses of one family keeps them even if the other failed.
    ///
    /// `deadline` bounds all of it (`timeoutdns`); a query still pending
    /// then counts as a temporary failure, and what was found before is
    /// kept. `None`: no overall bound, but each query gives up after
    /// [`ATTEMPTS_WITHOUT_DEADLINE`] attempts.
    pub fn plan_mx(&self, host: &str, deadline: Option<Instant>) -> Result<Vec<Exchanger>, DnsError> {
        if let Some(literal) = Exchanger::literal(host) {
            self.cut.set(Cut::default());
            return Ok(vec![literal]);
        }
        let name = plan::to_fqdn(host)?;
        let pool = self.pool.clone();
        let mut rng = self.rng.replace(Rng::new(0));
        let mut cut = Cut::default();
        let result = self.runtime.block_on(plan_mx(pool, host, name, deadline, &mut rng, &mut cut));
        self.rng.set(rng);
        self.cut.set(cut);
        result
    }

    /// The addresses of `host` (an smtproutes relay): A and AAAA at once,
    /// interleaved IPv6 first. An address literal is answered without DNS.
    ///
    /// No addresses: [`DnsError::Temporary`] if a lookup failed
    /// temporarily, [`DnsError::NoSuchHost`] if both said NXDOMAIN, else
    /// [`DnsError::NoAddresses`]. `deadline` as for
    /// [`plan_mx`](Self::plan_mx).
    pub fn resolve_host(&self, host: &str, deadline: Option<Instant>) -> Result<Vec<IpAddr>, DnsError> {
        if let Some(ip) = plan::parse_literal(host) {
            return Ok(vec![ip]);
        }
        let name = plan::to_fqdn(host)?;
        let pool = self.pool.clone();
        let addrs = self.runtime.block_on(async move {
            let mut all = addresses(pool, vec![name], &[0], deadline).await;
            all.pop().unwrap_or(Addrs { v6: pending(), v4: pending() })
        });
        self.cut.set(Cut { exchangers: 0, addresses: plan::beyond_limit(&addrs) });
        match plan::combine(&addrs) {
            Ok(list) => Ok(list),
            Err(NoAddress::Temporary(detail)) => Err(DnsError::temporary(host, detail)),
            Err(NoAddress::NxDomain) => Err(DnsError::NoSuchHost { host: host.to_owned() }),
            Err(NoAddress::NoData) => Err(DnsError::NoAddresses { host: host.to_owned() }),
        }
    }
}

/// UDP, and TCP after a truncated answer, both on the server's port.
fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(addr.ip());
    for connection in &mut config.connections {
        connection.port = addr.port();
    }
    config
}

async fn plan_mx(
    pool: Pool,
    host: &str,
    name: Name,
    deadline: Option<Instant>,
    rng: &mut Rng,
    cut: &mut Cut,
) -> Result<Vec<Exchanger>, DnsError> {
    let mx = within(deadline, query(pool.clone(), name.clone(), RecordType::MX, deadline)).await;
    let mx = mx.map(|data| match data {
        RData::MX(mx) => Some((mx.preference, mx.exchange)),
        _ => None,
    });
    let (candidates, names): (Vec<Candidate>, Vec<Name>) = match plan::read_mx(host, mx)? {
        MxPlan::Null => return Err(DnsError::NullMx { host: host.to_owned() }),
        MxPlan::Implicit => {
            (vec![Candidate { name: plan::display_name(&name), pref: 0, source: Source::ImplicitMx }], vec![name])
        }
        MxPlan::Exchangers(list) => {
            let (list, beyond) = plan::select(list, rng);
            cut.exchangers = beyond;
            list.into_iter()
                .map(|(pref, exchange)| {
                    (Candidate { name: plan::display_name(&exchange), pref, source: Source::Mx }, exchange)
                })
                .unzip()
        }
    };
    let prefs: Vec<u16> = candidates.iter().map(|c| c.pref).collect();
    let addrs = addresses(pool, names, &prefs, deadline).await;
    cut.addresses = addrs.iter().map(plan::beyond_limit).sum();
    plan::assemble(host, candidates, &addrs, rng)
}

/// The AAAA and A outcomes of every name, queried at once, at most
/// [`MAX_CONCURRENT_QUERIES`] at a time (in the order of `names`). `prefs`
/// gives each name's MX preference: once the names of the lowest
/// preference are all done and one of them has an address, the others get
/// [`BACKUP_GRACE`] more, then count as temporary failures.
async fn addresses(pool: Pool, names: Vec<Name>, prefs: &[u16], deadline: Option<Instant>) -> Vec<Addrs> {
    let mut tasks = JoinSet::new();
    let mut queue =
        names.iter().enumerate().flat_map(|(i, name)| [(i, name, RecordType::AAAA), (i, name, RecordType::A)]);
    let mut spawn_more = |tasks: &mut JoinSet<(usize, RecordType, Outcome<RData>)>| {
        while tasks.len() < MAX_CONCURRENT_QUERIES {
            let Some((i, name, qtype)) = queue.next() else { break };
            let (pool, name) = (pool.clone(), name.clone());
            tasks.spawn(async move { (i, qtype, within(deadline, query(pool, name, qtype, deadline)).await) });
        }
    };
    spawn_more(&mut tasks);
    let mut out: Vec<Addrs> = names.iter().map(|_| Addrs { v6: pending(), v4: pending() }).collect();
    let mut done = vec![0u8; names.len()];
    let best = prefs.iter().copied().min().unwrap_or(0);
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let joined = match grace {
            None => tasks.join_next().await,
            Some(until) => match tokio::time::timeout_at(until, tasks.join_next()).await {
                Ok(j) => j,
                Err(_) => {
                    tasks.abort_all();
                    break;
                }
            },
        };
        let Some(joined) = joined else { break };
        if grace.is_none() {
            spawn_more(&mut tasks);
        }
        // A task cannot fail but by a panic; its slot stays "pending".
        let Ok((i, qtype, outcome)) = joined else { continue };
        let Some(slot) = out.get_mut(i) else { continue };
        if qtype == RecordType::AAAA {
            slot.v6 = outcome.map(|d| match d {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            });
        } else {
            slot.v4 = outcome.map(|d| match d {
                RData::A(a) => Some(a.0),
                _ => None,
            });
        }
        done[i] += 1;
        if grace.is_none() {
            let best_group = || (0..names.len()).filter(|&j| prefs.get(j) == Some(&best));
            let group_done = best_group().all(|j| done[j] == 2);
            let group_found = best_group().any(|j| plan::combine(&out[j]).is_ok());
            if group_done && group_found {
                grace = Some(tokio::time::Instant::now() + BACKUP_GRACE);
            }
        }
    }
    for a in &mut out {
        mark_cut(&mut a.v6);
        mark_cut(&mut a.v4);
    }
    out
}

/// A lookup that never completed because the grace period ended says so.
fn mark_cut<T>(o: &mut Outcome<T>) {
    if let Outcome::Temporary(d) = o {
        if d == PENDING {
            *d = "no answer while the better exchangers were ready".to_owned();
        }
    }
}

const PENDING: &str = "lookup did not complete";

fn pending<T>() -> Outcome<T> {
    Outcome::Temporary(PENDING.to_owned())
}

/// `f`, cut at `deadline`.
async fn within<T>(deadline: Option<Instant>, f: impl Future<Output = Outcome<T>>) -> Outcome<T> {
    match deadline {
        None => f.await,
        Some(d) => tokio::time::timeout_at(tokio::time::Instant::from_std(d), f)
            .await
            .unwrap_or_else(|_| Outcome::Temporary("no answer within the DNS deadline".to_owned())),
    }
}

/// One query, sent again after transport failures (until the deadline, or
/// [`ATTEMPTS_WITHOUT_DEADLINE`] times), and sent for the target of a CNAME
/// the server did not follow.
async fn query(pool: Pool, mut name: Name, qtype: RecordType, deadline: Option<Instant>) -> Outcome<RData> {
    let mut attempts = 0;
    let mut chases = 0;
    loop {
        attempts += 1;
        let started = tokio::time::Instant::now();
        let result = pool.lookup(Query::query(name.clone(), qtype), DnsRequestOptions::default()).first_answer().await;
        match answer::interpret(&name, qtype, &result) {
            Answer::Final(outcome) => return outcome,
            Answer::Chase(target) => {
                chases += 1;
                if chases > MAX_CHASES {
                    return Outcome::Temporary("CNAME chain too long".to_owned());
                }
                name = target;
                attempts = 0;
            }
            Answer::Retry(detail) => {
                if deadline.is_none() && attempts >= ATTEMPTS_WITHOUT_DEADLINE {
                    return Outcome::Temporary(detail);
                }
                tokio::time::sleep_until(started + RETRY_PACE).await;
            }
        }
    }
}
