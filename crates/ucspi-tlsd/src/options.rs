//! The command line: parsed into [`RawArgs`] as written, then checked
//! into a [`Config`] with the defaults filled in.

use std::ffi::OsString;

use chainmail_sys::cli;
use chainmail_tls::{ClientAuth, Policy, SniLevel};

/// The usage line, after `ucspi-tlsd: usage: `.
pub const USAGE: &str = "ucspi-tlsd [ -v verbosity ] [ -K timeout ] [ -Z | -z ] [ -Y | -y ] [ -S | -s ] \
[ -J | -j ] [ -k snilevel ] [ --sni | --mandatory-sni ] [ -- ] prog...";

/// Default handshake timeout in milliseconds (`-K`).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;

/// The options as given; `None` for those not given. When an option is
/// repeated, or two exclusive ones are given, the last one wins.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RawArgs {
    pub verbosity: Option<u32>,
    pub handshake_timeout_ms: Option<u64>,
    pub keep_env: Option<bool>,
    pub client_auth: Option<ClientAuth>,
    pub send_close_notify: Option<bool>,
    pub enforce_close_notify: Option<bool>,
    pub sni_level: Option<u32>,
    pub prog: Vec<OsString>,
}

/// What to run and how.
#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    /// 0: silent; 1: errors; 2: also notices.
    pub verbosity: u32,
    /// 0: no limit.
    pub handshake_timeout_ms: u64,
    /// `-Z`: leave the engine's variables in prog's environment.
    pub keep_env: bool,
    pub client_auth: ClientAuth,
    pub sni: SniLevel,
    pub policy: Policy,
    pub prog: Vec<OsString>,
}

/// Parses the arguments (without `argv[0]`). Options end at `--` or at the
/// first argument that is not an option: everything from there on is prog
/// and its own arguments, untouched.
pub fn parse_raw(args: impl IntoIterator<Item = OsString>) -> Result<RawArgs, lexopt::Error> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut raw = RawArgs::default();
    while let Some(arg) = p.next()? {
        match arg {
            Short('v') | Long("verbosity") => raw.verbosity = Some(p.value()?.parse()?),
            Short('K') | Long("handshake-timeout") => {
                raw.handshake_timeout_ms = Some(cli::milliseconds(&p.value()?, "handshake timeout")?)
            }
            Short('Z') | Long("keep") => raw.keep_env = Some(true),
            Short('z') | Long("no-keep") => raw.keep_env = Some(false),
            Short('Y') | Long("client-cert") => raw.client_auth = Some(ClientAuth::Optional),
            Short('y') | Long("mandatory-client-cert") => raw.client_auth = Some(ClientAuth::Required),
            Short('S') | Long("send-close-notify") => raw.send_close_notify = Some(true),
            Short('s') | Long("no-send-close-notify") => raw.send_close_notify = Some(false),
            Short('J') | Long("enforce-close-notify") => raw.enforce_close_notify = Some(true),
            Short('j') | Long("no-enforce-close-notify") => raw.enforce_close_notify = Some(false),
            Short('k') | Long("sni-level") => raw.sni_level = Some(p.value()?.parse()?),
            Long("sni") => raw.sni_level = Some(1),
            Long("mandatory-sni") => raw.sni_level = Some(2),
            Value(v) => {
                raw.prog.push(v);
                raw.prog.extend(p.raw_args()?);
                break;
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(raw)
}

impl RawArgs {
    /// Fills in the defaults; fails without a prog.
    pub fn check(self) -> Result<Config, String> {
        if self.prog.is_empty() {
            return Err("no program to run".to_owned());
        }
        Ok(Config {
            verbosity: self.verbosity.unwrap_or(1),
            handshake_timeout_ms: self.handshake_timeout_ms.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            keep_env: self.keep_env.unwrap_or(false),
            client_auth: self.client_auth.unwrap_or(ClientAuth::None),
            sni: SniLevel::from_number(self.sni_level.unwrap_or(0)),
            policy: Policy {
                close_notify_on_app_eof: self.send_close_notify.unwrap_or(false),
                require_close_notify: self.enforce_close_notify.unwrap_or(false),
            },
            prog: self.prog,
        })
    }
}

/// Parses and checks in one go; the error is the reason for the usage
/// message.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Config, String> {
    parse_raw(args).map_err(|e| e.to_string())?.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn ok(s: &[&str]) -> Config {
        parse(args(s)).expect("parse")
    }

    #[test]
    fn defaults() {
        let c = ok(&["prog"]);
        assert_eq!(
            c,
            Config {
                verbosity: 1,
                handshake_timeout_ms: 60_000,
                keep_env: false,
                client_auth: ClientAuth::None,
                sni: SniLevel::Off,
                policy: Policy { close_notify_on_app_eof: false, require_close_notify: false },
                prog: args(&["prog"]),
            }
        );
    }

    #[test]
    fn short_options_bundle_like_s6() {
        let c = ok(&["-SJZYv2", "-K300", "-k", "1", "prog", "-x"]);
        assert_eq!(c.verbosity, 2);
        assert_eq!(c.handshake_timeout_ms, 300);
        assert!(c.keep_env);
        assert_eq!(c.client_auth, ClientAuth::Optional);
        assert_eq!(c.sni, SniLevel::Optional);
        assert_eq!(c.policy, Policy { close_notify_on_app_eof: true, require_close_notify: true });
        assert_eq!(c.prog, args(&["prog", "-x"]));
    }

    #[test]
    fn last_one_wins() {
        let c = ok(&["-Z", "-z", "-Y", "-y", "-S", "-s", "-J", "-j", "-k2", "-k0", "prog"]);
        assert!(!c.keep_env);
        assert_eq!(c.client_auth, ClientAuth::Required);
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.sni, SniLevel::Off);
    }

    #[test]
    fn long_options() {
        let c = ok(&[
            "--verbosity=0",
            "--handshake-timeout",
            "0",
            "--keep",
            "--mandatory-client-cert",
            "--enforce-close-notify",
            "--send-close-notify",
            "--mandatory-sni",
            "--",
            "prog",
        ]);
        assert_eq!(c.verbosity, 0);
        assert_eq!(c.handshake_timeout_ms, 0);
        assert!(c.keep_env);
        assert_eq!(c.client_auth, ClientAuth::Required);
        assert_eq!(c.sni, SniLevel::Mandatory);
        assert_eq!(c.policy, Policy { close_notify_on_app_eof: true, require_close_notify: true });
        assert_eq!(ok(&["--sni", "p"]).sni, SniLevel::Optional);
        assert_eq!(ok(&["--sni-level=2", "p"]).sni, SniLevel::Mandatory);
        assert_eq!(ok(&["-k", "7", "p"]).sni, SniLevel::Mandatory);
        let c = ok(&["--no-keep", "--client-cert", "--no-enforce-close-notify", "--no-send-close-notify", "p"]);
        assert!(!c.keep_env);
        assert_eq!(c.client_auth, ClientAuth::Optional);
        assert_eq!(c.policy, Policy::default());
    }

    #[test]
    fn prog_options_are_not_parsed() {
        assert_eq!(ok(&["prog", "-v", "9", "--", "x"]).prog, args(&["prog", "-v", "9", "--", "x"]));
        assert_eq!(ok(&["--", "-v"]).prog, args(&["-v"]));
        assert_eq!(ok(&["-v2", "--", "--", "x"]).prog, args(&["--", "x"]));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["-v"],
            &["-v", "x", "prog"],
            &["-K", "-5", "prog"],
            // Absurd timeouts are refused, not overflowed.
            &["-K", "18446744073709551615", "prog"],
            &["-K", "604800001", "prog"],
            &["-k", "one", "prog"],
            &["-q", "prog"],
            &["--what", "prog"],
            &["--sni=3", "prog"],
            &["-v2"],
            &["--"],
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
    }
}
