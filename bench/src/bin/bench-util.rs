//! bench-util: small helpers for the benchmark scripts.
//!
//! ```text
//! bench-util free-port [IP]     a TCP port free on IP (default 127.0.0.1) right now
//! bench-util tree PID           the live descendants of PID: pid ppid comm
//! bench-util median X...        the median of the numbers (the lower middle for an even count)
//! bench-util reaper FILE -- CMD...
//!                                runs CMD as a child subreaper: orphans of CMD's process tree
//!                                (a UCSPI chain's TLS engine and proxy, once their smtpd has
//!                                exited) are reaped here, and after each reap FILE holds
//!                                `children_cpu_s=X` (user + system of everything reaped so far)
//! bench-util wait-port PORT [S]  waits (at most S seconds, default 10) until a TCP socket
//!                                listens on PORT (from /proc/net/tcp{,6}, without connecting)
//! ```
#![forbid(unsafe_code)]

use std::net::{IpAddr, TcpListener};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chainmail_bench::procs;
use chainmail_bench::stats::median;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("free-port") => {
            let ip: IpAddr = match args.get(1).map(|s| s.parse()) {
                None => IpAddr::from([127, 0, 0, 1]),
                Some(Ok(ip)) => ip,
                Some(Err(e)) => {
                    eprintln!("bench-util: fatal: bad address: {e}");
                    return ExitCode::from(100);
                }
            };
            match TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()) {
                Ok(a) => {
                    println!("{}", a.port());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench-util: fatal: unable to bind {ip}: {e}");
                    ExitCode::from(111)
                }
            }
        }
        Some("tree") => {
            let Some(pid) = args.get(1).and_then(|s| s.parse().ok()) else {
                eprintln!("bench-util: usage: bench-util tree PID");
                return ExitCode::from(100);
            };
            for p in procs::descendants(pid) {
                println!("{} {} {}", p.pid, p.ppid, p.comm);
            }
            ExitCode::SUCCESS
        }
        Some("median") => {
            let v: Vec<f64> = args[1..].iter().filter_map(|s| s.parse().ok()).collect();
            match median(&v) {
                Some(m) => {
                    println!("{m}");
                    ExitCode::SUCCESS
                }
                None => {
                    println!("nan");
                    ExitCode::from(1)
                }
            }
        }
        Some("reaper") => {
            let (Some(file), Some("--")) = (args.get(1), args.get(2).map(String::as_str)) else {
                eprintln!("bench-util: usage: bench-util reaper FILE -- CMD...");
                return ExitCode::from(100);
            };
            reaper(file, &args[3..])
        }
        Some("wait-port") => {
            let Some(port) = args.get(1).and_then(|s| s.parse::<u16>().ok()) else {
                eprintln!("bench-util: usage: bench-util wait-port PORT [SECONDS]");
                return ExitCode::from(100);
            };
            let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10.0);
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            while !listening(port) {
                if Instant::now() > deadline {
                    eprintln!("bench-util: fatal: nothing listens on port {port} after {secs} s");
                    return ExitCode::from(111);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("bench-util: usage: bench-util free-port [IP] | tree PID | median X... | wait-port PORT [S]");
            ExitCode::from(100)
        }
    }
}

/// Whether a TCP socket listens on `port` (any address), from
/// `/proc/net/tcp` and `/proc/net/tcp6`: `sl local_address rem_address st ...`
/// with the port in hex after the colon and state 0A for LISTEN.
fn listening(port: u16) -> bool {
    let want = format!("{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|s| {
            s.lines().skip(1).any(|l| {
                let mut it = l.split_whitespace();
                let local = it.nth(1).unwrap_or("");
                let state = it.nth(1).unwrap_or("");
                state == "0A" && local.rsplit(':').next() == Some(want.as_str())
            })
        })
    })
}

/// `bench-util reaper`: see the top of the file.
fn reaper(file: &str, cmd: &[String]) -> ExitCode {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::Pid;

    let Some((prog, args)) = cmd.split_first() else {
        eprintln!("bench-util: usage: bench-util reaper FILE -- CMD...");
        return ExitCode::from(100);
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("bench-util: fatal: unable to become a child subreaper: {e}");
        return ExitCode::from(111);
    }
    let write_status = || {
        let cpu = getrusage(UsageWho::RUSAGE_CHILDREN)
            .map(|u| {
                let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                tv(u.user_time()) + tv(u.system_time())
            })
            .unwrap_or(f64::NAN);
        let tmp = format!("{file}.tmp");
        if std::fs::write(&tmp, format!("children_cpu_s={cpu:.6}\n")).is_ok() {
            let _ = std::fs::rename(&tmp, file);
        }
    };
    write_status();
    let child = match std::process::Command::new(prog).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench-util: fatal: unable to run {prog}: {e}");
            return ExitCode::from(111);
        }
    };
    let child_pid = Pid::from_raw(child.id() as i32);
    let mut code = 111;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(st) => {
                write_status();
                match st {
                    WaitStatus::Exited(p, c) if p == child_pid => code = c,
                    WaitStatus::Signaled(p, sig, _) if p == child_pid => code = 128 + sig as i32,
                    _ => {}
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: everything is reaped
        }
    }
    ExitCode::from(u8::try_from(code).unwrap_or(111))
}
