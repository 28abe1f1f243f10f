//! The command line of remusock 2.0, with its quirks, and ours.
//!
//! `remusockd [-UVcfntv] [-C CAfile] [-H hash[:hash...]] [-N fd] [-b address]
//! [-g group] [-m mode] [-p pidfile] [-r remotehost] [-u user] [-w seconds]
//! socket port [cert key]` (with `-U`: `socket` alone).
//!
//! The original's parsing, which lexopt does not do:
//! * each flag may appear once, except `-b`;
//! * flags that take an argument may be bundled, and take their arguments
//!   from the following words in letter order (`-pu FILE USER`), or
//!   attached (`-p/x.pid`): the rest of a word is an attached argument
//!   unless it is made of option letters only;
//! * the first positional argument, or `--`, ends the options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// Flags without an argument.
const FLAGS: &[u8] = b"UVcfntv";
/// Flags with an argument.
const WITH_ARG: &[u8] = b"CHNbgmpruw";

/// The default pidfile.
pub const DEFAULT_PIDFILE: &str = "/var/run/remusockd.pid";
/// How long local clients are held while the link is down, by default.
pub const DEFAULT_HOLD_SECS: u64 = 30;

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `-c`: this side connects to the socket.
    pub socket_client: bool,
    /// `-r`: dial this host.
    pub remote: Option<String>,
    /// `-b`: bind addresses (no cap).
    pub bind: Vec<String>,
    /// `-n`: numeric hosts (we never resolve peers for the logs anyway).
    pub numeric: bool,
    /// `-u`.
    pub user: Option<String>,
    /// `-g`.
    pub group: Option<String>,
    /// `-m`, octal; 0600 by default.
    pub mode: u32,
    /// `-p`.
    pub pidfile: Option<OsString>,
    /// `-f`.
    pub foreground: bool,
    /// `-v`.
    pub verbose: bool,
    /// `-t`, or implied.
    pub tls: bool,
    /// `-C`.
    pub ca_file: Option<OsString>,
    /// `-H`, as given.
    pub pins: Option<String>,
    /// `-V`.
    pub no_verify: bool,
    /// `-w`: seconds local clients wait for the link.
    pub hold_secs: u64,
    /// `-N`: readiness descriptor.
    pub notify_fd: Option<i32>,
    /// `-U`: UCSPI mode.
    pub ucspi: bool,
    /// `socket`.
    pub socket: OsString,
    /// `port` (not with `-U`).
    pub port: u16,
    /// `cert key`.
    pub cert_key: Option<(OsString, OsString)>,
}

fn value_str(v: &OsStr, what: &str) -> Result<String, String> {
    v.to_str().map(str::to_owned).ok_or_else(|| format!("invalid {what} {:?}", v.to_string_lossy()))
}

fn set_once(seen: &mut Vec<u8>, letter: u8) -> Result<(), String> {
    if letter != b'b' && seen.contains(&letter) {
        return Err(format!("option -{} given twice", letter as char));
    }
    seen.push(letter);
    Ok(())
}

fn apply_value(o: &mut Options, letter: u8, v: OsString) -> Result<(), String> {
    match letter {
        b'C' => o.ca_file = Some(v),
        b'H' => o.pins = Some(value_str(&v, "-H")?),
        b'N' => {
            let s = value_str(&v, "-N")?;
            o.notify_fd = Some(s.parse::<i32>().ok().filter(|n| *n >= 3).ok_or(format!("invalid -N {s:?}"))?);
        }
        b'b' => o.bind.push(value_str(&v, "-b")?),
        b'g' => o.group = Some(value_str(&v, "-g")?),
        b'm' => {
            let s = value_str(&v, "-m")?;
            o.mode = u32::from_str_radix(&s, 8).ok().filter(|m| *m <= 0o7777).ok_or(format!("invalid mode {s:?}"))?;
        }
        b'p' => o.pidfile = Some(v),
        b'r' => o.remote = Some(value_str(&v, "-r")?),
        b'u' => o.user = Some(value_str(&v, "-u")?),
        b'w' => o.hold_secs = chainmail_sys::cli::seconds(&v, "-w")?,
        _ => unreachable!("not an option with a value"),
    }
    Ok(())
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    let mut o = Options { mode: 0o600, hold_secs: DEFAULT_HOLD_SECS, ..Options::default() };
    let mut words = args.into_iter();
    let mut seen = Vec::new();
    // Options whose values come from the following words, in order.
    let mut waiting: Vec<u8> = Vec::new();
    let mut positional: Vec<OsString> = Vec::new();
    for w in words.by_ref() {
        if let Some(&letter) = waiting.first() {
            waiting.remove(0);
            apply_value(&mut o, letter, w)?;
            continue;
        }
        let bytes = w.as_bytes();
        if bytes == b"--" {
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            positional.push(w);
            break;
        }
        let mut i = 1;
        while i < bytes.len() {
            let letter = bytes[i];
            i += 1;
            if FLAGS.contains(&letter) {
                set_once(&mut seen, letter)?;
                match letter {
                    b'U' => o.ucspi = true,
                    b'V' => o.no_verify = true,
                    b'c' => o.socket_client = true,
                    b'f' => o.foreground = true,
                    b'n' => o.numeric = true,
                    b't' => o.tls = true,
                    _ => o.verbose = true,
                }
            } else if WITH_ARG.contains(&letter) {
                set_once(&mut seen, letter)?;
                let rest = &bytes[i..];
                let only_letters = rest.iter().all(|c| FLAGS.contains(c) || WITH_ARG.contains(c));
                if !rest.is_empty() && !only_letters {
                    apply_value(&mut o, letter, OsStr::from_bytes(rest).to_owned())?;
                    break;
                }
                waiting.push(letter);
            } else {
                return Err(format!("unknown option -{}", letter as char));
            }
        }
    }
    if let Some(letter) = waiting.first() {
        return Err(format!("option -{} needs a value", *letter as char));
    }
    positional.extend(words);
    let mut positional = positional.into_iter();
    o.socket = positional.next().ok_or("missing socket")?;
    if o.socket.is_empty() {
        return Err("empty socket path".into());
    }
    if !o.ucspi {
        let port = positional.next().ok_or("missing port")?;
        let p = value_str(&port, "port")?;
        o.port = p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("invalid port {p:?}"))?;
    }
    let rest: Vec<OsString> = positional.collect();
    match rest.len() {
        0 => {}
        2 if !o.ucspi => {
            let mut r = rest.into_iter();
            if let (Some(c), Some(k)) = (r.next(), r.next()) {
                o.cert_key = Some((c, k));
            }
        }
        _ => return Err("expected socket port [cert key] (with -U: socket)".into()),
    }
    if o.cert_key.is_some() || o.ca_file.is_some() || o.pins.is_some() || o.no_verify {
        o.tls = true;
    }
    if o.remote.is_some() && !o.bind.is_empty() {
        return Err("-b is for listening, not with -r".into());
    }
    if o.ucspi && (o.remote.is_some() || !o.bind.is_empty() || o.tls) {
        return Err("-U takes its transport from its descriptors: no -r, -b or TLS".into());
    }
    if o.tls && o.remote.is_none() && !o.ucspi && o.cert_key.is_none() {
        return Err("a TLS listener needs cert and key".into());
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Result<Options, String> {
        parse(line.split_whitespace().map(OsString::from))
    }

    fn base() -> Options {
        Options { mode: 0o600, hold_secs: DEFAULT_HOLD_SECS, socket: "/s".into(), port: 7, ..Options::default() }
    }

    #[test]
    fn accepted_lines() {
        let pin = "ab".repeat(64);
        let cases: Vec<(String, Options)> = vec![
            ("/s 7".into(), base()),
            ("-c /s 7".into(), Options { socket_client: true, ..base() }),
            (
                "-cfv -r host /s 7".into(),
                Options { socket_client: true, foreground: true, verbose: true, remote: Some("host".into()), ..base() },
            ),
            // Bundled options take the following words in letter order.
            (
                "-pu /x.pid nobody /s 7".into(),
                Options { pidfile: Some("/x.pid".into()), user: Some("nobody".into()), ..base() },
            ),
            (
                "-up nobody /x.pid /s 7".into(),
                Options { pidfile: Some("/x.pid".into()), user: Some("nobody".into()), ..base() },
            ),
            // Attached values.
            ("-p/x.pid -m644 /s 7".into(), Options { pidfile: Some("/x.pid".into()), mode: 0o644, ..base() }),
            ("-fp/x.pid /s 7".into(), Options { foreground: true, pidfile: Some("/x.pid".into()), ..base() }),
            // -b any number of times.
            (
                "-b 127.0.0.1 -b ::1 -b a -b b -b c /s 7".into(),
                Options { bind: vec!["127.0.0.1".into(), "::1".into(), "a".into(), "b".into(), "c".into()], ..base() },
            ),
            // TLS implied by cert key, -C, -H, -V.
            (
                "/s 7 c.pem k.pem".into(),
                Options { tls: true, cert_key: Some(("c.pem".into(), "k.pem".into())), ..base() },
            ),
            (
                format!("-r h -H {pin} /s 7"),
                Options { tls: true, remote: Some("h".into()), pins: Some(pin.clone()), ..base() },
            ),
            ("-r h -V /s 7".into(), Options { tls: true, no_verify: true, remote: Some("h".into()), ..base() }),
            ("-t -r h /s 7".into(), Options { tls: true, remote: Some("h".into()), ..base() }),
            // The first positional argument, or --, ends the options.
            ("-- -s 7".into(), Options { socket: "-s".into(), ..base() }),
            ("-w 0 -N 3 /s 7".into(), Options { hold_secs: 0, notify_fd: Some(3), ..base() }),
            ("-U -c /s".into(), Options { ucspi: true, socket_client: true, port: 0, ..base() }),
            ("-g mail -u 0 /s 7".into(), Options { group: Some("mail".into()), user: Some("0".into()), ..base() }),
        ];
        for (line, want) in cases {
            assert_eq!(p(&line), Ok(want), "{line}");
        }
    }

    #[test]
    fn refused_lines() {
        for line in [
            "",
            "/s",
            "/s 0",
            "/s 65536",
            "/s port",
            "/s 7 cert",
            "/s 7 c k extra",
            "-f -f /s 7",
            "-pp a b /s 7",
            "-x /s 7",
            "-p",
            "-m 999 /s 7",
            "-m 17777 /s 7",
            "-r h -b 1.2.3.4 /s 7",
            "-t /s 7",
            "-C ca.pem /s 7",
            "-N 1 /s 7",
            "-w 9999999 /s 7",
            "-U /s 7",
            "-U -r h /s",
        ] {
            assert!(p(line).is_err(), "{line:?} accepted: {:?}", p(line));
        }
    }
}
