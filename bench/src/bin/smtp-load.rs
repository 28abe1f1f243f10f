//! smtp-load: a load generator for STARTTLS SMTP servers (rustls client).
//!
//! ```text
//! smtp-load run  ADDR --ca CA [-c 16] [--duration 10s] [--warmup 1s] [common]
//! smtp-load bulk ADDR --ca CA [--size 256M] [--server-pid PID [--include-root] [--exclude-comm NAME]...] [common]
//! smtp-load idle ADDR --ca CA -k K --server-pid PID [--include-root] [--exclude-comm NAME]... [common]
//!
//! common: [--name mx.bench.test] [--nodelay] [--implicit-tls | --plaintext] [--tls any|1.2|1.3]
//!         [--kx default|x25519|p256] [--suite default|aes128|aes256|chacha20] [--body 1K] [--timeout 10s]
//! ```
//!
//! - `run`: `c` clients, each running full sessions one after the other
//!   (connect, greeting, EHLO, STARTTLS, handshake, EHLO, MAIL, RCPT, DATA
//!   with the body, QUIT, the 221, close) for the warm-up and then the
//!   duration. Sessions/s count the sessions completed within the measured
//!   window; latencies are those of these sessions, from the connect to
//!   the 221. Any session that does not end with its 221 is an error.
//! - `bulk`: one session sending one message of `size` bytes (generated,
//!   lines of 76 letters), timed from `DATA` to the `250`; with
//!   `--server-pid`, the CPU time of the server's processes during that
//!   time (the descendants of PID, and PID itself with `--include-root`,
//!   minus those named by `--exclude-comm`), from their schedstat.
//! - `idle`: opens `k` sessions up to the EHLO after the handshake, lets
//!   them idle for 2 s, and sums the PSS (`/proc/PID/smaps_rollup`) of the
//!   server's per-session processes (selected as for `bulk`); the
//!   processes' sum before the sessions opened is subtracted. Then every
//!   session quits and must get its 221.
//!
//! `--implicit-tls`: TLS from the first byte (SMTPS); `--plaintext`: a
//! client that never says STARTTLS (the session runs in plaintext; `--ca`
//! is still read). `--tls` and `--suite` restrict what the client offers.
//!
//! The last line on stdout is `RESULT key=value ...`; diagnostics and error
//! counts go to stderr. Exit 0 when every session ended with its 221, 1
//! otherwise, 100 on usage errors.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant};

use chainmail_bench::smtp::{self, Failure, Kx, SessionSpec, Suite, Transport, Version};
use chainmail_bench::stats::{ms, percentile};
use chainmail_bench::{parse_duration, parse_size, procs};
use nix::sys::resource::{UsageWho, getrusage};
use rustls::pki_types::ServerName;

const USAGE: &str = "smtp-load run|bulk|idle ADDR --ca CA [options] (see the top of bench/src/bin/smtp-load.rs)";

#[derive(Debug)]
struct Opts {
    mode: String,
    addr: SocketAddr,
    ca: PathBuf,
    name: String,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    size: u64,
    body: usize,
    k: usize,
    server_pid: Option<i32>,
    include_root: bool,
    exclude: Vec<String>,
    nodelay: bool,
    transport: Transport,
    version: Version,
    kx: Kx,
    suite: Suite,
    timeout: Duration,
    cpu_pids: Vec<i32>,
    cpu_files: Vec<PathBuf>,
}

fn blank_opts() -> Opts {
    Opts {
        mode: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        ca: PathBuf::new(),
        name: "mx.bench.test".into(),
        concurrency: 16,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        size: 256 << 20,
        body: 1024,
        k: 1,
        server_pid: None,
        include_root: false,
        exclude: Vec::new(),
        nodelay: false,
        transport: Transport::Starttls,
        version: Version::Any,
        kx: Kx::Default,
        suite: Suite::Default,
        timeout: Duration::from_secs(10),
        cpu_pids: Vec::new(),
        cpu_files: Vec::new(),
    }
}

fn parse() -> Result<Opts, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let bad = |e: lexopt::Error| e.to_string();
    let mut mode = None;
    let mut addr = None;
    let mut o = blank_opts();
    while let Some(arg) = p.next().map_err(bad)? {
        let val = |p: &mut lexopt::Parser| -> Result<String, String> { p.value().map_err(bad)?.string().map_err(bad) };
        match arg {
            Long("ca") => o.ca = PathBuf::from(val(&mut p)?),
            Long("name") => o.name = val(&mut p)?,
            Short('c') | Long("concurrency") => o.concurrency = val(&mut p)?.parse().map_err(|e| format!("-c: {e}"))?,
            Long("duration") => o.duration = parse_duration(&val(&mut p)?)?,
            Long("warmup") => o.warmup = parse_duration(&val(&mut p)?)?,
            Long("timeout") => o.timeout = parse_duration(&val(&mut p)?)?,
            Long("size") => o.size = parse_size(&val(&mut p)?)?,
            Long("body") => o.body = parse_size(&val(&mut p)?)? as usize,
            Short('k') => o.k = val(&mut p)?.parse().map_err(|e| format!("-k: {e}"))?,
            Long("server-pid") => o.server_pid = Some(val(&mut p)?.parse().map_err(|e| format!("--server-pid: {e}"))?),
            Long("include-root") => o.include_root = true,
            Long("exclude-comm") => o.exclude.push(val(&mut p)?),
            Long("cpu-pid") => o.cpu_pids.push(val(&mut p)?.parse().map_err(|e| format!("--cpu-pid: {e}"))?),
            Long("cpu-file") => o.cpu_files.push(PathBuf::from(val(&mut p)?)),
            Long("nodelay") => o.nodelay = true,
            Long("implicit-tls") => o.transport = Transport::Implicit,
            Long("plaintext") => o.transport = Transport::Plain,
            Long("tls") => o.version = Version::parse(&val(&mut p)?).ok_or("--tls: any, 1.2 or 1.3")?,
            Long("kx") => o.kx = Kx::parse(&val(&mut p)?).ok_or("--kx: default, x25519 or p256")?,
            Long("suite") => {
                o.suite = Suite::parse(&val(&mut p)?).ok_or("--suite: default, aes128, aes256 or chacha20")?
            }
            Value(v) if mode.is_none() => mode = Some(v.string().map_err(bad)?),
            Value(v) if addr.is_none() => {
                let s = v.string().map_err(bad)?;
                addr = Some(s.parse::<SocketAddr>().map_err(|e| format!("bad address {s:?}: {e}"))?);
            }
            _ => return Err(bad(arg.unexpected())),
        }
    }
    o.mode = mode.ok_or("missing mode")?;
    o.addr = addr.ok_or("missing address")?;
    if o.ca.as_os_str().is_empty() {
        return Err("--ca is required".into());
    }
    if o.body < 32 || o.concurrency == 0 || o.k == 0 {
        return Err("--body must be at least 32, -c and -k at least 1".into());
    }
    Ok(o)
}

fn spec(o: &Opts) -> Result<SessionSpec, String> {
    let tls = smtp::client_config(&o.ca, o.kx, o.suite, o.version)?;
    let name = ServerName::try_from(o.name.clone()).map_err(|e| format!("bad --name: {e}"))?;
    Ok(SessionSpec {
        addr: o.addr,
        tls,
        name,
        nodelay: o.nodelay,
        transport: o.transport,
        body: Arc::new(smtp::message(o.body)),
        timeout: o.timeout,
    })
}

fn client_cpu_secs() -> f64 {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// Failures by description, for the report.
#[derive(Debug, Default)]
struct Errors(Mutex<HashMap<String, u64>>);

impl Errors {
    fn add(&self, f: &Failure) {
        let mut text = f.to_string();
        text.truncate(160);
        if let Ok(mut m) = self.0.lock() {
            *m.entry(text).or_insert(0) += 1;
        }
    }

    /// Prints each kind on stderr; returns the total.
    fn report(&self) -> u64 {
        let m = self.0.lock().map(|m| m.clone()).unwrap_or_default();
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (what, n) in &v {
            eprintln!("smtp-load: error x{n}: {what}");
        }
        v.iter().map(|(_, n)| n).sum()
    }
}

/// The server's CPU seconds so far: for each `--cpu-pid`, its own time
/// and its waited-for children's; for each `--cpu-file` (written by
/// `bench-util reaper`), the time of the orphans it reaped. `None` without
/// any of them.
fn server_cpu(o: &Opts) -> Option<f64> {
    if o.cpu_pids.is_empty() && o.cpu_files.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for &pid in &o.cpu_pids {
        let (own, children) = procs::times(pid)?;
        total += own + children;
    }
    for f in &o.cpu_files {
        let s = std::fs::read_to_string(f).ok()?;
        total += s.trim().strip_prefix("children_cpu_s=")?.parse::<f64>().ok()?;
    }
    Some(total)
}

fn run(o: &Opts) -> Result<bool, String> {
    let spec = Arc::new(spec(o)?);
    let errors = Arc::new(Errors::default());
    let info = Arc::new(Mutex::new(String::new()));
    let start = Instant::now();
    let window_start = start + o.warmup;
    let window_end = window_start + o.duration;
    // The server's CPU time at the start and at the end of the window.
    let sampler = {
        let cpu = (o.cpu_pids.clone(), o.cpu_files.clone());
        std::thread::spawn(move || {
            let o2 = Opts { cpu_pids: cpu.0, cpu_files: cpu.1, ..blank_opts() };
            std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
            let a = server_cpu(&o2);
            std::thread::sleep(window_end.saturating_duration_since(Instant::now()));
            let b = server_cpu(&o2);
            match (a, b) {
                (Some(a), Some(b)) => b - a,
                _ => f64::NAN,
            }
        })
    };
    let mut handles = Vec::new();
    for _ in 0..o.concurrency {
        let (spec, errors, info) = (spec.clone(), errors.clone(), info.clone());
        handles.push(std::thread::spawn(move || {
            let mut lat: Vec<Duration> = Vec::new();
            let mut steps: BTreeMap<(usize, &'static str), Vec<Duration>> = BTreeMap::new();
            let mut marks: smtp::Marks = Vec::with_capacity(16);
            let mut ok_total = 0u64;
            while Instant::now() < window_end {
                let t0 = Instant::now();
                marks.clear();
                match smtp::full_session(&spec, Some(&mut marks)) {
                    Ok(i) => {
                        let t1 = Instant::now();
                        ok_total += 1;
                        if t1 >= window_start && t1 <= window_end {
                            lat.push(t1 - t0);
                            for (n, w) in marks.windows(2).enumerate() {
                                steps.entry((n, w[1].0)).or_default().push(w[1].1 - w[0].1);
                            }
                        }
                        if let Ok(mut g) = info.lock() {
                            if g.is_empty() {
                                *g = i;
                            }
                        }
                    }
                    Err(f) => {
                        errors.add(&f);
                        // Do not spin on a server that refuses connections.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            (lat, steps, ok_total)
        }));
    }
    let server_cpu_window = sampler.join().unwrap_or(f64::NAN);
    let mut lat: Vec<Duration> = Vec::new();
    let mut steps: BTreeMap<(usize, &'static str), Vec<Duration>> = BTreeMap::new();
    let mut ok_total = 0;
    for h in handles {
        let (l, st, n) = h.join().map_err(|_| "a client thread panicked")?;
        lat.extend(l);
        for (k, v) in st {
            steps.entry(k).or_default().extend(v);
        }
        ok_total += n;
    }
    // The median time of each step, for the analysis of the latency.
    let step_medians: Vec<String> = steps
        .into_iter()
        .map(|((_, name), mut v)| {
            v.sort_unstable();
            format!("{name}={:.2}", percentile(&v, 50.0).map(ms).unwrap_or(f64::NAN))
        })
        .collect();
    println!("STEPS median_ms {}", step_medians.join(" "));
    lat.sort_unstable();
    let errs = errors.report();
    let window = o.duration.as_secs_f64();
    let p = |q| percentile(&lat, q).map(ms).unwrap_or(f64::NAN);
    let mean = if lat.is_empty() { f64::NAN } else { lat.iter().map(|d| ms(*d)).sum::<f64>() / lat.len() as f64 };
    let info = info.lock().map(|g| g.clone()).unwrap_or_default();
    println!(
        "RESULT mode=run concurrency={} window_s={window:.2} sessions={} rate={:.1} errors={errs} ok_total={ok_total} \
         p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} mean_ms={mean:.2} client_cpu_s={:.2} \
         client_cpu_ms_per_session={:.2} server_cpu_ms_per_session={:.2} nodelay={} tls={info}",
        o.concurrency,
        lat.len(),
        lat.len() as f64 / window,
        p(50.0),
        p(90.0),
        p(99.0),
        p(100.0),
        client_cpu_secs(),
        client_cpu_secs() * 1000.0 / ok_total.max(1) as f64,
        server_cpu_window * 1000.0 / lat.len().max(1) as f64,
        o.nodelay,
    );
    Ok(errs == 0)
}

/// CPU nanoseconds of each process in `sel`.
fn cpu_snapshot(sel: &[procs::Proc]) -> HashMap<i32, u64> {
    sel.iter().filter_map(|p| Some((p.pid, procs::cpu_ns(p.pid)?))).collect()
}

fn bulk(o: &Opts) -> Result<bool, String> {
    let spec = spec(o)?;
    let fail = |f: Failure| format!("the bulk session failed: {f}");
    let mut c = smtp::open_tls_session(&spec).map_err(fail)?;
    let info = c.tls_info().unwrap_or_default();
    c.command("MAIL", "MAIL FROM:<bulk@client.bench.test>", 250).map_err(fail)?;
    c.command("RCPT", "RCPT TO:<sink@test.smtpd>", 250).map_err(fail)?;
    let sel = match o.server_pid {
        Some(pid) => procs::selection(pid, o.include_root, &o.exclude),
        None => Vec::new(),
    };
    // Lines of 76 letters; one block of whole lines is sent again and again.
    let line_len = 78u64;
    let mut block = Vec::with_capacity(65_520);
    for i in 0..840u32 {
        block.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 76));
        block.extend_from_slice(b"\r\n");
    }
    let lines = (o.size / line_len).max(1);
    let total = lines * line_len;
    let cpu_client0 = client_cpu_secs();
    let before = cpu_snapshot(&sel);
    let t0 = Instant::now();
    c.command("DATA", "DATA", 354).map_err(fail)?;
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        c.send("message", &block[..n]).map_err(fail)?;
        left -= n as u64;
    }
    c.send("end of data", b".\r\n").map_err(fail)?;
    c.expect("end of data", 250).map_err(fail)?;
    let secs = t0.elapsed().as_secs_f64();
    let after = cpu_snapshot(&sel);
    let cpu_client = client_cpu_secs() - cpu_client0;
    smtp::quit(c).map_err(fail)?;

    let mut by_comm: BTreeMap<String, f64> = BTreeMap::new();
    let mut server = 0.0;
    for p in &sel {
        if let (Some(a), Some(b)) = (before.get(&p.pid), after.get(&p.pid)) {
            let s = b.saturating_sub(*a) as f64 / 1e9;
            server += s;
            *by_comm.entry(p.comm.replace(' ', "_")).or_insert(0.0) += s;
        }
    }
    let gib = total as f64 / (1u64 << 30) as f64;
    let breakdown: Vec<String> = by_comm.iter().map(|(k, v)| format!("cpu[{k}]={v:.3}")).collect();
    println!(
        "RESULT mode=bulk bytes={total} secs={secs:.3} mb_s={:.1} server_cpu_s={server:.3} server_cpu_s_per_gib={:.3} \
         client_cpu_s={cpu_client:.3} procs={} {} tls={info}",
        total as f64 / secs / 1e6,
        server / gib,
        sel.len(),
        breakdown.join(" "),
    );
    Ok(true)
}

/// The summed memory of `sel`, and per `comm` the count of processes and
/// their summed memory.
fn memory_of(sel: &[procs::Proc]) -> (procs::Memory, BTreeMap<String, (usize, procs::Memory)>) {
    let mut m = procs::Memory::default();
    let mut comms: BTreeMap<String, (usize, procs::Memory)> = BTreeMap::new();
    for p in sel {
        if let Some(pm) = procs::memory(p.pid) {
            m.add(&pm);
            let e = comms.entry(p.comm.replace(' ', "_")).or_default();
            e.0 += 1;
            e.1.add(&pm);
        }
    }
    (m, comms)
}

fn idle(o: &Opts) -> Result<bool, String> {
    let pid = o.server_pid.ok_or("idle needs --server-pid")?;
    let spec = Arc::new(spec(o)?);
    // Sessions of earlier measurements must be gone.
    let settle = Instant::now() + Duration::from_secs(5);
    loop {
        let sel = procs::selection(pid, false, &o.exclude);
        if sel.is_empty() {
            break;
        }
        if Instant::now() > settle {
            eprintln!("smtp-load: warning: {} per-session processes left from earlier sessions", sel.len());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (base, _) = memory_of(&procs::selection(pid, o.include_root, &o.exclude));

    let gate = Arc::new(RwLock::new(()));
    let held = gate.write().map_err(|_| "lock")?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), Failure>>();
    let failed = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..o.k {
        let (spec, gate, ready_tx, failed) = (spec.clone(), gate.clone(), ready_tx.clone(), failed.clone());
        handles.push(std::thread::spawn(move || -> Result<(), Failure> {
            let c = match smtp::open_tls_session(&spec) {
                Ok(c) => c,
                Err(f) => {
                    failed.store(true, Ordering::Relaxed);
                    let _ = ready_tx.send(Err(f.clone()));
                    return Err(f);
                }
            };
            let _ = ready_tx.send(Ok(()));
            drop(gate.read());
            smtp::quit(c)
        }));
    }
    drop(ready_tx);
    let mut open = 0;
    for r in ready_rx.iter().take(o.k) {
        if r.is_ok() {
            open += 1;
        }
    }
    // Idle means idle: 2 s without traffic (the TLS engine and the relay
    // give their code pages back after 1 s, see ucspi-tlsd's
    // TRIM_AFTER).
    std::thread::sleep(Duration::from_secs(2));
    let sel = procs::selection(pid, o.include_root, &o.exclude);
    let (m, comms) = memory_of(&sel);
    drop(held);
    let errors = Errors::default();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(f)) => errors.add(&f),
            Err(_) => errors.add(&Failure { step: "thread", what: "panicked".into() }),
        }
    }
    let errs = errors.report();
    let per = |total: u64, base: u64| total.saturating_sub(base) as f64 / o.k as f64;
    // Per program: how many, and the average PSS (anonymous part) of one.
    let procs_list: Vec<String> = comms
        .iter()
        .map(|(k, (n, m))| format!("{k}x{n}:pss={}:anon={}", m.pss / *n as u64, m.pss_anon / *n as u64))
        .collect();
    println!(
        "RESULT mode=idle k={} open={open} errors={errs} procs={} pss_kib_per_session={:.1} pss_anon_kib_per_session={:.1} \
         pss_file_kib_per_session={:.1} rss_kib_per_session={:.1} private_kib_per_session={:.1} pss_kib_total={} \
         pss_kib_baseline={} counted={}",
        o.k,
        sel.len(),
        per(m.pss, base.pss),
        per(m.pss_anon, base.pss_anon),
        per(m.pss_file, base.pss_file),
        per(m.rss, base.rss),
        per(m.private, base.private),
        m.pss,
        base.pss,
        procs_list.join(","),
    );
    Ok(errs == 0 && !failed.load(Ordering::Relaxed))
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("smtp-load: fatal: {e}\nsmtp-load: usage: {USAGE}");
            return ExitCode::from(100);
        }
    };
    let r = match o.mode.as_str() {
        "run" => run(&o),
        "bulk" => bulk(&o),
        "idle" => idle(&o),
        m => Err(format!("unknown mode {m:?}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("smtp-load: fatal: {e}");
            ExitCode::from(111)
        }
    }
}
