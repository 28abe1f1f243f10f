//! Prints the delivery plan of one mail domain, or the addresses of one
//! relay with `-r`: `resolve [-r] HOST [TIMEOUT_SECONDS]`.
//!
//! The servers come from `DNSCACHEIP` or `/etc/resolv.conf`. Also the
//! program used to measure what the resolver costs in size and memory.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chainmail_dns::{Resolver, Servers};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let relay = args.first().is_some_and(|a| a == "-r");
    if relay {
        args.remove(0);
    }
    let (host, secs) = match args.as_slice() {
        [host] => (host.clone(), 10),
        [host, secs] => match secs.parse::<u64>() {
            Ok(s) => (host.clone(), s),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let servers = match Servers::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("resolve: fatal: {e}");
            return ExitCode::from(100);
        }
    };
    let resolver = match Resolver::new(&servers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("resolve: fatal: unable to start the resolver: {e}");
            return ExitCode::from(111);
        }
    };
    let deadline = (secs > 0).then(|| Instant::now() + Duration::from_secs(secs));
    let result = if relay {
        resolver.resolve_host(&host, deadline).map(|addrs| {
            for a in addrs {
                println!("{a}");
            }
        })
    } else {
        resolver.plan_mx(&host, deadline).map(|list| {
            for e in list {
                let addrs: Vec<String> = e.addrs.iter().map(ToString::to_string).collect();
                println!("{} {} {}", e.pref, e.name, addrs.join(" "));
            }
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = if e.is_permanent() { "permanent" } else { "temporary" };
            eprintln!("resolve: {kind} failure (#{}): {e}", e.status());
            ExitCode::from(if e.is_permanent() { 100 } else { 111 })
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: resolve [-r] HOST [TIMEOUT_SECONDS]");
    ExitCode::from(100)
}
