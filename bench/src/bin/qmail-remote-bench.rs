//! qmail-remote-bench: runs qmail-remote as qmail-rspawn would, many times,
//! and measures it (issue B).
//!
//! ```text
//! qmail-remote-bench deliver QMAIL-REMOTE --message FILE [-n 300] [-j 1] [--warmup 5] [--host example.test]
//! qmail-remote-bench slowdns QMAIL-REMOTE --message FILE --listen ADDR... [--runs 7] [--host example.test]
//! ```
//!
//! The environment (`QMAILHOME`, `DNSCACHEIP`) is passed on to qmail-remote.
//! Each run is `QMAIL-REMOTE HOST a@x b@y` with FILE on its standard input.
//!
//! - `deliver`: `n` deliveries, `j` at a time (each of `j` threads runs its
//!   share one after the other), after `warmup` sequential ones. Reports the
//!   deliveries per second (wall clock), the CPU time per delivery (user +
//!   system of qmail-remote and qmail-remote-io: `getrusage(RUSAGE_CHILDREN)`
//!   of this process around the measured runs; this process starts nothing
//!   else), and the peak RSS (`ru_maxrss` of RUSAGE_CHILDREN: the largest
//!   single process among all the runs' trees). Every report must be a `K`
//!   with an `r` for the recipient; the others are counted and one is shown.
//! - `slowdns`: listens on each ADDR (`127.0.0.92:25`, `[::1]:25`), then
//!   `runs` times: spawns qmail-remote and measures the time until one of
//!   the listeners accepts a connection. The listener then answers
//!   `554` so that the delivery ends there (a `Z`), and the next run starts
//!   once qmail-remote has exited. Reports min/median/max. While it listens
//!   it holds the lock the integration tests take for `[::1]:25`
//!   (`flock` on `$TMPDIR/chainmail-qmail-remote-ipv6-port25.lock`), so
//!   that the two never fight over the port.
//!
//! The last line on stdout is `RESULT key=value ...`.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chainmail_bench::stats::{median, ms};
use nix::sys::resource::{UsageWho, getrusage};

const USAGE: &str = "qmail-remote-bench deliver|slowdns QMAIL-REMOTE --message FILE [options] \
                     (see the top of bench/src/bin/qmail-remote-bench.rs)";

#[derive(Debug)]
struct Opts {
    mode: String,
    program: PathBuf,
    message: PathBuf,
    host: String,
    n: usize,
    j: usize,
    warmup: usize,
    listen: Vec<SocketAddr>,
    runs: usize,
}

fn parse() -> Result<Opts, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let bad = |e: lexopt::Error| e.to_string();
    let mut o = Opts {
        mode: String::new(),
        program: PathBuf::new(),
        message: PathBuf::new(),
        host: "example.test".into(),
        n: 300,
        j: 1,
        warmup: 5,
        listen: Vec::new(),
        runs: 7,
    };
    let mut positional: Vec<String> = Vec::new();
    while let Some(arg) = p.next().map_err(bad)? {
        let val = |p: &mut lexopt::Parser| -> Result<String, String> { p.value().map_err(bad)?.string().map_err(bad) };
        let num = |p: &mut lexopt::Parser, what: &str| -> Result<usize, String> {
            val(p)?.parse().map_err(|e| format!("{what}: {e}"))
        };
        match arg {
            Long("message") => o.message = PathBuf::from(val(&mut p)?),
            Long("host") => o.host = val(&mut p)?,
            Short('n') => o.n = num(&mut p, "-n")?,
            Short('j') => o.j = num(&mut p, "-j")?,
            Long("warmup") => o.warmup = num(&mut p, "--warmup")?,
            Long("runs") => o.runs = num(&mut p, "--runs")?,
            Long("listen") => {
                let s = val(&mut p)?;
                o.listen.push(s.parse().map_err(|e| format!("--listen {s:?}: {e}"))?);
            }
            Value(v) => positional.push(v.string().map_err(bad)?),
            _ => return Err(bad(arg.unexpected())),
        }
    }
    let [mode, program] = positional.as_slice() else {
        return Err("need a mode and the qmail-remote program".into());
    };
    o.mode = mode.clone();
    o.program = PathBuf::from(program);
    if o.message.as_os_str().is_empty() {
        return Err("--message is required".into());
    }
    if o.j == 0 || o.n == 0 || o.runs == 0 {
        return Err("-n, -j and --runs must be at least 1".into());
    }
    Ok(o)
}

/// One qmail-remote run: its report.
fn deliver_once(o: &Opts) -> Result<Vec<u8>, String> {
    let msg = File::open(&o.message).map_err(|e| format!("cannot open {}: {e}", o.message.display()))?;
    let mut child = Command::new(&o.program)
        .args([OsString::from(&o.host), "a@x".into(), "b@y".into()])
        .stdin(msg)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", o.program.display()))?;
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_end(&mut out);
    }
    let mut err = Vec::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_end(&mut err);
    }
    let st = child.wait().map_err(|e| format!("wait: {e}"))?;
    if !st.success() {
        return Err(format!("qmail-remote exited {st}: {}", String::from_utf8_lossy(&out)));
    }
    if !err.is_empty() {
        return Err(format!("qmail-remote wrote on stderr: {}", String::from_utf8_lossy(&err)));
    }
    Ok(out)
}

/// Whether a report says: the recipient accepted, the message delivered.
fn is_delivered(report: &[u8]) -> bool {
    let records: Vec<&[u8]> = report.split(|&b| b == 0).filter(|r| !r.is_empty()).collect();
    matches!(records.as_slice(), [r, k] if r == b"r" && k.first() == Some(&b'K'))
}

fn printable(report: &[u8]) -> String {
    String::from_utf8_lossy(report).replace('\0', "\\0").replace('\n', "/")
}

fn children_usage() -> (f64, i64) {
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (tv(u.user_time()) + tv(u.system_time()), u.max_rss())
        }
        Err(_) => (f64::NAN, 0),
    }
}

fn deliver(o: &Opts) -> Result<bool, String> {
    let mut bad: Vec<String> = Vec::new();
    for _ in 0..o.warmup {
        let r = deliver_once(o)?;
        if !is_delivered(&r) {
            bad.push(printable(&r));
        }
    }
    let (cpu0, _) = children_usage();
    let t0 = Instant::now();
    let results: Vec<Result<Vec<u8>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..o.j)
            .map(|t| {
                let share = o.n / o.j + usize::from(t < o.n % o.j);
                s.spawn(move || (0..share).map(|_| deliver_once(o)).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec![Err("thread panicked".into())])).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, maxrss) = children_usage();
    let mut ok = 0;
    for r in &results {
        match r {
            Ok(rep) if is_delivered(rep) => ok += 1,
            Ok(rep) => bad.push(printable(rep)),
            Err(e) => bad.push(e.clone()),
        }
    }
    if let Some(first) = bad.first() {
        eprintln!("qmail-remote-bench: {} reports were not K; the first: {first}", bad.len());
    }
    let tls = results
        .iter()
        .flatten()
        .find_map(|r| {
            String::from_utf8_lossy(r)
                .split("TLS: ")
                .nth(1)
                .map(|t| t.split('\n').next().unwrap_or("").replace(' ', "/"))
        })
        .unwrap_or_else(|| "none".into());
    println!(
        "RESULT mode=deliver n={} j={} secs={secs:.3} rate={:.1} cpu_ms_per_delivery={:.2} maxrss_kib={maxrss} ok={ok} not_k={} tls={tls}",
        o.n,
        o.j,
        o.n as f64 / secs,
        (cpu1 - cpu0) * 1000.0 / o.n as f64,
        bad.len(),
    );
    Ok(bad.is_empty())
}

/// The integration tests' lock on `[::1]:25` (see
/// `tests/tests/qmail_remote_support`), waited for at most 120 s.
fn lock_v6_port25() -> Result<nix::fcntl::Flock<File>, String> {
    let path = std::env::temp_dir().join("chainmail-qmail-remote-ipv6-port25.lock");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let f = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
}

fn slowdns(o: &Opts) -> Result<bool, String> {
    if o.listen.is_empty() {
        return Err("slowdns needs --listen".into());
    }
    let _port25 = lock_v6_port25()?;
    let (tx, rx) = mpsc::channel::<(Instant, SocketAddr)>();
    for addr in &o.listen {
        let l = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let (tx, addr) = (tx.clone(), *addr);
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let at = Instant::now();
                let _ = tx.send((at, addr));
                if let Ok(mut c) = conn {
                    // A permanent refusal ends the delivery here.
                    let _ = c.write_all(b"554 5.7.1 bench sink: connection recorded\r\n");
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 512];
                    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
                }
            }
        });
    }
    drop(tx);
    let mut times: Vec<f64> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    for run in 0..o.runs {
        while rx.try_recv().is_ok() {}
        let msg = File::open(&o.message).map_err(|e| format!("cannot open {}: {e}", o.message.display()))?;
        let t0 = Instant::now();
        let mut child = Command::new(&o.program)
            .args([OsString::from(&o.host), "a@x".into(), "b@y".into()])
            .stdin(msg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", o.program.display()))?;
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok((at, addr)) => {
                let t = ms(at - t0);
                times.push(t);
                notes.push(format!("{t:.0}ms@{addr}"));
            }
            Err(_) => notes.push("none".into()),
        }
        let mut out = Vec::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_end(&mut out);
        }
        let _ = child.wait();
        if run == 0 {
            eprintln!("qmail-remote-bench: first report: {}", printable(&out));
        }
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    println!(
        "RESULT mode=slowdns runs={} connected={} min_ms={min:.1} median_ms={:.1} max_ms={max:.1} each={}",
        o.runs,
        times.len(),
        median(&times).unwrap_or(f64::NAN),
        notes.join(","),
    );
    Ok(times.len() == o.runs)
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("qmail-remote-bench: fatal: {e}\nqmail-remote-bench: usage: {USAGE}");
            return ExitCode::from(100);
        }
    };
    let r = match o.mode.as_str() {
        "deliver" => deliver(&o),
        "slowdns" => slowdns(&o),
        m => Err(format!("unknown mode {m:?}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("qmail-remote-bench: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_reports() {
        assert!(is_delivered(b"r\0K127.0.0.1 accepted message./Remote host said: 250 ok\n\0"));
        assert!(!is_delivered(b"r\0Zsorry\0"));
        assert!(!is_delivered(b"h\0Dno\0"));
        assert!(!is_delivered(b"K\0"));
    }
}
