//! Benchmark drivers for chainmail: the helpers shared by the binaries.
//!
//! - `procs`: the process tree under a server, CPU time and PSS from
//!   `/proc`.
//! - `smtp`: a small blocking SMTP client with STARTTLS (rustls), the
//!   load generator's session.
//! - `stats`: percentiles.
//!
//! The binaries (`src/bin/`) are `smtp-load` (issue A: the STARTTLS
//! server chain against stunnel), `qmail-remote-bench` (issue B) and
//! `bench-util` (free ports); the scripts `bench/server-chain.sh` and
//! `bench/qmail-remote.sh` run them. Figures are in `bench/RESULTS.md`.
#![forbid(unsafe_code)]

pub mod procs;
pub mod smtp;
pub mod stats;

use std::time::Duration;

/// Parses a duration such as `10s`, `500ms`, `2m` or `3` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size such as `256M` (MiB), `1K` (KiB), `1G` or `1000` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3h").is_err());
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("17"), Ok(17));
    }
}
