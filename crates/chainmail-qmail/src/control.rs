//! `$QMAILHOME` and qmail's control files.
//!
//! The readers follow qmail's `control.c`:
//!
//! * A *line* file (`me`, `helohost`, `trustanchors`, …) is its first line
//!   with trailing whitespace stripped. A missing file is not an error: the
//!   caller's default applies. Any other failure to read is an error
//!   (qmail-remote answers `ZUnable to read control files. (#4.3.0)`).
//! * A *number* file (`timeoutconnect`, …) is a line file whose leading
//!   decimal digits are the value (`scan_ulong`: `"60s"` is 60, `" 60"` and
//!   `"abc"` are not numbers). A missing file or a line that does not start
//!   with a digit keeps the default.
//! * A *list* file (`smtproutes`, `ipme`) is every line, each with trailing
//!   whitespace stripped; blank lines and lines starting with `#` are
//!   ignored. [`lines`] gives them with their line numbers so that syntax
//!   errors can name the line.
//!
//! Whitespace here is space, tab and newline as in `control.c`, plus the
//! carriage return: a control file saved with CRLF line ends must not put a
//! CR into a `HELO` command or a path.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chainmail_tls::{TlsPolicy, TrustAnchors};
use thiserror::Error;

/// The compiled-in qmail home, used when `QMAILHOME` is unset or empty.
pub(crate) const DEFAULT_QMAILHOME: &str = "/var/qmail";
/// The environment variable that overrides [`DEFAULT_QMAILHOME`].
pub(crate) const QMAILHOME_VAR: &str = "QMAILHOME";
/// Directory of the control files, relative to the qmail home.
pub(crate) const CONTROL_DIR: &str = "control";

/// Default of `timeoutconnect`, in seconds (stock qmail).
pub(crate) const DEFAULT_TIMEOUT_CONNECT: u64 = 60;
/// Default of `timeoutremote`, in seconds (stock qmail).
pub(crate) const DEFAULT_TIMEOUT_REMOTE: u64 = 1200;
/// Default of `timeoutdns`, in seconds. skarnet's default of 0 means "wait
/// forever"; we never wait forever: 0 selects this value.
pub(crate) const DEFAULT_TIMEOUT_DNS: u64 = 60;
/// Upper bound of every timeout, in seconds (about 136 years). Larger values
/// saturate here, so that adding a timeout to a clock can never overflow.
pub(crate) const MAX_TIMEOUT: u64 = u32::MAX as u64;
/// The `trustanchors` value that selects the Mozilla root certificates
/// compiled into the binary (webpki-roots), so that a fresh installation
/// needs no CA bundle: `echo builtin > control/trustanchors`.
pub use chainmail_tls::BUILTIN_TRUST_ANCHORS;

/// How much of a line file is read at most. A longer first line is cut
/// there; no control value comes close.
const MAX_LINE: u64 = 64 * 1024;

/// A control file could not be used.
#[derive(Debug, Error)]
pub enum ControlError {
    /// The file exists (or may exist) but could not be read.
    #[error("unable to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Neither `me` nor `helohost` gives a name for `HELO`.
    #[error("unable to find a HELO name: {} and {} are both missing or empty", me.display(), helohost.display())]
    NoHelohost {
        /// `control/me`.
        me: PathBuf,
        /// `control/helohost`.
        helohost: PathBuf,
    },
    /// The value is unusable.
    #[error("{}: invalid value {value:?}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The value read, lossily decoded.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `clientkey` is set without `clientcert`.
    #[error("{} is set but {} is missing or empty", clientkey.display(), clientcert.display())]
    KeyWithoutCert {
        /// `control/clientkey`.
        clientkey: PathBuf,
        /// `control/clientcert`.
        clientcert: PathBuf,
    },
}

/// Strips trailing whitespace (space, tab, LF, CR) as `control.c` does.
pub(crate) fn strip_trailing_whitespace(line: &[u8]) -> &[u8] {
    let end = line.iter().rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r')).map_or(0, |i| i + 1);
    &line[..end]
}

/// The value of a line file with content `content`: its first line, with
/// trailing whitespace stripped.
pub(crate) fn first_line(content: &[u8]) -> &[u8] {
    let line = match content.iter().position(|&b| b == b'\n') {
        Some(i) => &content[..i],
        None => content,
    };
    strip_trailing_whitespace(line)
}

/// `scan_ulong`: the number made of the leading decimal digits of `line`,
/// or `None` when it does not start with a digit. Saturates instead of
/// wrapping around.
pub(crate) fn scan_number(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    Some(line[..digits].iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// One meaningful line of a list file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListLine<'a> {
    /// 1-based physical line number, counting blank and comment lines.
    pub number: usize,
    /// The line without its trailing whitespace.
    pub text: &'a [u8],
}

/// The meaningful lines of a list file: trailing whitespace stripped, blank
/// lines and lines starting with `#` left out.
pub fn lines(content: &[u8]) -> impl Iterator<Item = ListLine<'_>> {
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| ListLine { number: i + 1, text: strip_trailing_whitespace(raw) })
        .filter(|l| !l.text.is_empty() && l.text[0] != b'#')
}

fn read_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |source| ControlError::Read { path: path.to_path_buf(), source }
}

/// Reads a line file: `None` when it does not exist.
pub fn read_line(path: &Path) -> Result<Option<Vec<u8>>, ControlError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(path)(e)),
    };
    let mut buf = Vec::new();
    BufReader::new(file.take(MAX_LINE)).read_until(b'\n', &mut buf).map_err(read_err(path))?;
    Ok(Some(first_line(&buf).to_vec()))
}

/// Reads a number file: `None` when it does not exist or does not start
/// with a digit.
pub(crate) fn read_number(path: &Path) -> Result<Option<u64>, ControlError> {
    Ok(read_line(path)?.and_then(|l| scan_number(&l)))
}

/// `control/tlsstrictness`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsStrictness {
    /// 0: STARTTLS when trust anchors are configured and the server offers
    /// it; cleartext when it does not, or when STARTTLS fails.
    #[default]
    Opportunistic,
    /// 1: look for a server that does TLS; fall back to cleartext only if
    /// none can be found.
    Preferred,
    /// 2: never send in cleartext; verify the certificate.
    Required,
}

impl TlsStrictness {
    /// The level for the number in the file. skarnet masks the value with 3;
    /// for 0, 1 and 2 that is the identity and 3 means the strictest level.
    /// We map every value from 2 upward to [`TlsStrictness::Required`]
    /// instead of masking: a mask would turn 4 into 0 and silently downgrade
    /// a configuration that asked for more strictness, never for less.
    pub fn from_number(n: u64) -> TlsStrictness {
        match n {
            0 => TlsStrictness::Opportunistic,
            1 => TlsStrictness::Preferred,
            _ => TlsStrictness::Required,
        }
    }

    /// The number as written in the file.
    pub fn as_number(self) -> u8 {
        self as u8
    }
}

/// `control/tlsstrictness` asks for verified TLS, and `control/trustanchors`
/// names no trust anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("control/tlsstrictness asks for verified TLS but control/trustanchors is empty")]
pub struct NoTrustAnchors;

/// The client certificate sent when a server asks for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `control/clientcert`: the certificate chain (PEM).
    pub cert: PathBuf,
    /// `control/clientkey`: the private key (PEM). When `clientkey` is
    /// missing this is the certificate file itself, which then holds both
    /// (the convention of the qmail TLS patch's `clientcert.pem`).
    pub key: PathBuf,
}

/// The control files qmail-remote reads, loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct Control {
    /// The qmail home the files were read from.
    pub home: PathBuf,
    /// `control/me`, when present and non-empty.
    pub me: Option<String>,
    /// `control/helohost`, or `me` when it is missing or empty.
    pub helohost: String,
    /// `control/timeoutconnect` (default 60 s).
    pub timeout_connect: Duration,
    /// `control/timeoutremote` (default 1200 s): for each read and write.
    pub timeout_remote: Duration,
    /// `control/timeoutdns`: how long the DNS resolution of one delivery
    /// may take in all (MX, then the addresses of the exchangers or of the
    /// relay). 0, a missing file or a non-number selects
    /// `DEFAULT_TIMEOUT_DNS`.
    pub timeout_dns: Duration,
    /// `control/tlsstrictness` (default 0).
    pub tls_strictness: TlsStrictness,
    /// `control/trustanchors`: `None` when the file is missing, empty or
    /// a lone newline (STARTTLS is then not attempted).
    pub trust_anchors: Option<TrustAnchors>,
    /// `control/clientcert` and `control/clientkey`.
    pub client_identity: Option<ClientIdentity>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("home", &self.home)
            .field("me", &self.me)
            .field("helohost", &self.helohost)
            .field("timeout_connect", &self.timeout_connect)
            .field("timeout_remote", &self.timeout_remote)
            .field("timeout_dns", &self.timeout_dns)
            .field("tls_strictness", &self.tls_strictness)
            .field("trust_anchors", &self.trust_anchors)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

/// A timeout from a number file: missing, non-numeric and 0 keep the
/// default (stock qmail would time out at once on 0, skarnet would wait
/// forever; neither is useful), huge values saturate at [`MAX_TIMEOUT`].
fn timeout(path: &Path, default: u64) -> Result<Duration, ControlError> {
    let secs = match read_number(path)? {
        Some(0) | None => default,
        Some(n) => n.min(MAX_TIMEOUT),
    };
    Ok(Duration::from_secs(secs))
}

/// A line file whose empty value counts as missing.
fn non_empty_line(path: &Path) -> Result<Option<Vec<u8>>, ControlError> {
    Ok(read_line(path)?.filter(|v| !v.is_empty()))
}

/// Checks a `HELO` name: printable ASCII without spaces, so that it can
/// never break the command it goes into.
fn check_helohost(path: &Path, value: &[u8]) -> Result<String, ControlError> {
    if value.iter().all(|&b| b.is_ascii_graphic()) {
        // All bytes are ASCII, hence valid UTF-8.
        Ok(String::from_utf8_lossy(value).into_owned())
    } else {
        Err(ControlError::Invalid {
            path: path.to_path_buf(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason: "a HELO name must be printable ASCII without spaces",
        })
    }
}

impl Control {
    /// The TLS policy of each of qmail-remote's passes over the addresses,
    /// from `tlsstrictness` and `trustanchors`:
    ///
    /// * no trust anchors: no STARTTLS (and for strictness 2, no delivery:
    ///   never fall back to plaintext because a file is missing);
    /// * 0: opportunistic, any certificate;
    /// * 1: TLS with any certificate, then a plaintext pass over the
    ///   servers that could not do TLS;
    /// * 2: TLS verified against the trust anchors.
    pub fn tls_passes(&self) -> Result<Vec<TlsPolicy>, NoTrustAnchors> {
        let Some(anchors) = &self.trust_anchors else {
            return match self.tls_strictness {
                TlsStrictness::Required => Err(NoTrustAnchors),
                _ => Ok(vec![TlsPolicy::Off]),
            };
        };
        Ok(match self.tls_strictness {
            TlsStrictness::Opportunistic => vec![TlsPolicy::Opportunistic],
            TlsStrictness::Preferred => vec![TlsPolicy::RequireAnyCertificate, TlsPolicy::Off],
            TlsStrictness::Required => vec![TlsPolicy::RequireVerified(anchors.clone())],
        })
    }

    /// Loads the control files of the qmail home `home`.
    pub fn load(home: &Path) -> Result<Control, ControlError> {
        let dir = home.join(CONTROL_DIR);
        let path = |name: &str| dir.join(name);

        let me_path = path("me");
        let helo_path = path("helohost");
        let me = non_empty_line(&me_path)?;
        let helohost = match non_empty_line(&helo_path)? {
            Some(h) => check_helohost(&helo_path, &h)?,
            None => match &me {
                Some(m) => check_helohost(&me_path, m)?,
                None => {
                    return Err(ControlError::NoHelohost { me: me_path, helohost: helo_path });
                }
            },
        };
        let me = me.map(|m| String::from_utf8_lossy(&m).into_owned());

        let tls_strictness = read_number(&path("tlsstrictness"))?.map(TlsStrictness::from_number).unwrap_or_default();
        // Relative paths are taken relative to the home, where qmail-remote runs.
        let trust_anchors =
            read_line(&path("trustanchors"))?.and_then(|v| TrustAnchors::parse(OsStr::from_bytes(&v), home));

        let cert_path = path("clientcert");
        let key_path = path("clientkey");
        let cert = non_empty_line(&cert_path)?;
        let key = non_empty_line(&key_path)?;
        let client_identity = match (cert, key) {
            (Some(c), k) => {
                let cert = home.join(OsStr::from_bytes(&c));
                let key = match k {
                    Some(k) => home.join(OsStr::from_bytes(&k)),
                    None => cert.clone(),
                };
                Some(ClientIdentity { cert, key })
            }
            (None, Some(_)) => {
                return Err(ControlError::KeyWithoutCert { clientkey: key_path, clientcert: cert_path });
            }
            (None, None) => None,
        };

        Ok(Control {
            home: home.to_path_buf(),
            me,
            helohost,
            timeout_connect: timeout(&path("timeoutconnect"), DEFAULT_TIMEOUT_CONNECT)?,
            timeout_remote: timeout(&path("timeoutremote"), DEFAULT_TIMEOUT_REMOTE)?,
            timeout_dns: timeout(&path("timeoutdns"), DEFAULT_TIMEOUT_DNS)?,
            tls_strictness,
            trust_anchors,
            client_identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn first_line_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"\n", b""),
            (b"mx.example\n", b"mx.example"),
            (b"mx.example", b"mx.example"),
            (b"mx.example \t\r\nsecond\n", b"mx.example"),
            (b"  lead\n", b"  lead"),
            (b"a b \n", b"a b"),
        ];
        for (content, want) in cases {
            assert_eq!(first_line(content), *want, "{content:?}");
        }
    }

    #[test]
    fn scan_number_table() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"60", Some(60)),
            (b"0", Some(0)),
            (b"60s", Some(60)),
            (b"007", Some(7)),
            (b"", None),
            (b" 60", None),
            (b"-1", None),
            (b"abc", None),
            (b"99999999999999999999999", Some(u64::MAX)),
        ];
        for (line, want) in cases {
            assert_eq!(scan_number(line), *want, "{line:?}");
        }
    }

    #[test]
    fn list_lines_skip_blank_and_comments() {
        let text = b"# comment\n\na:b  \n  \n#x:y\nc:d\r\ne:f";
        let got: Vec<(usize, &[u8])> = lines(text).map(|l| (l.number, l.text)).collect();
        assert_eq!(got, vec![(3, &b"a:b"[..]), (6, &b"c:d"[..]), (7, &b"e:f"[..])]);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"\n\n").count(), 0);
    }

    #[test]
    fn tls_strictness_values() {
        let cases = [
            (0, TlsStrictness::Opportunistic),
            (1, TlsStrictness::Preferred),
            (2, TlsStrictness::Required),
            (3, TlsStrictness::Required),
            (4, TlsStrictness::Required),
            (u64::MAX, TlsStrictness::Required),
        ];
        for (n, want) in cases {
            assert_eq!(TlsStrictness::from_number(n), want, "{n}");
        }
        assert_eq!(TlsStrictness::Required.as_number(), 2);
    }

    #[test]
    fn trust_anchor_values() {
        let home = Path::new("/var/qmail");
        let cases: &[(&[u8], Option<TrustAnchors>)] = &[
            (b"", None),
            (b"builtin", Some(TrustAnchors::BuiltIn)),
            (b"Builtin", Some(TrustAnchors::File(PathBuf::from("/var/qmail/Builtin")))),
            (b"/etc/ssl/cert.pem", Some(TrustAnchors::File(PathBuf::from("/etc/ssl/cert.pem")))),
            (b"/etc/ssl/certs/", Some(TrustAnchors::Dir(PathBuf::from("/etc/ssl/certs/")))),
            (b"control/ca.pem", Some(TrustAnchors::File(PathBuf::from("/var/qmail/control/ca.pem")))),
        ];
        for (value, want) in cases {
            assert_eq!(TrustAnchors::parse(OsStr::from_bytes(value), home), *want, "{value:?}");
        }
    }

    /// Every strictness level with and without trust anchors.
    #[test]
    fn tls_passes_of_every_level() {
        let dir = home_with(&[("me", b"me\n")]);
        let mut c = Control::load(dir.path()).expect("load");
        let anchors = TrustAnchors::BuiltIn;
        let cases = [
            (TlsStrictness::Opportunistic, None, Ok(vec![TlsPolicy::Off])),
            (TlsStrictness::Preferred, None, Ok(vec![TlsPolicy::Off])),
            (TlsStrictness::Required, None, Err(NoTrustAnchors)),
            (TlsStrictness::Opportunistic, Some(anchors.clone()), Ok(vec![TlsPolicy::Opportunistic])),
            (
                TlsStrictness::Preferred,
                Some(anchors.clone()),
                Ok(vec![TlsPolicy::RequireAnyCertificate, TlsPolicy::Off]),
            ),
            (TlsStrictness::Required, Some(anchors.clone()), Ok(vec![TlsPolicy::RequireVerified(anchors.clone())])),
        ];
        for (strictness, trust_anchors, want) in cases {
            c.tls_strictness = strictness;
            c.trust_anchors = trust_anchors;
            assert_eq!(c.tls_passes(), want, "{strictness:?} {:?}", c.trust_anchors);
        }
    }

    fn home_with(files: &[(&str, &[u8])]) -> TempDir {
        let dir = TempDir::new("control");
        dir.mkdir("control");
        for (name, content) in files {
            dir.write(&format!("control/{name}"), content);
        }
        dir
    }

    #[test]
    fn defaults_with_only_me() {
        let dir = home_with(&[("me", b"mx.example.org\n")]);
        let c = Control::load(dir.path()).expect("load");
        assert_eq!(c.me.as_deref(), Some("mx.example.org"));
        assert_eq!(c.helohost, "mx.example.org");
        assert_eq!(c.timeout_connect, Duration::from_secs(60));
        assert_eq!(c.timeout_remote, Duration::from_secs(1200));
        assert_eq!(c.timeout_dns, Duration::from_secs(DEFAULT_TIMEOUT_DNS));
        assert_eq!(c.tls_strictness, TlsStrictness::Opportunistic);
        assert_eq!(c.trust_anchors, None);
        assert_eq!(c.client_identity, None);
        assert_eq!(c.home, dir.path());
    }

    #[test]
    fn helohost_overrides_me_and_me_may_be_missing() {
        let dir = home_with(&[("me", b"me.example\n"), ("helohost", b"helo.example \n")]);
        assert_eq!(Control::load(dir.path()).expect("load").helohost, "helo.example");
        let dir = home_with(&[("helohost", b"helo.example\n")]);
        let c = Control::load(dir.path()).expect("load");
        assert_eq!(c.helohost, "helo.example");
        assert_eq!(c.me, None);
        // An empty helohost falls back to me.
        let dir = home_with(&[("me", b"me.example\n"), ("helohost", b"\n")]);
        assert_eq!(Control::load(dir.path()).expect("load").helohost, "me.example");
    }

    #[test]
    fn no_helo_name_is_an_error() {
        for files in [&[][..], &[("me", &b"\n"[..])][..], &[("helohost", &b""[..])][..]] {
            let dir = home_with(files);
            match Control::load(dir.path()) {
                Err(ControlError::NoHelohost { .. }) => {}
                other => panic!("{files:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn helohost_with_space_is_invalid() {
        let dir = home_with(&[("helohost", b"my host\n")]);
        match Control::load(dir.path()) {
            Err(ControlError::Invalid { path, .. }) => assert!(path.ends_with("helohost")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreadable_control_file_is_an_error() {
        // A directory where a file is expected: reading it fails with EISDIR.
        let dir = home_with(&[("me", b"me.example\n")]);
        dir.mkdir("control/timeoutremote");
        match Control::load(dir.path()) {
            Err(ControlError::Read { path, .. }) => assert!(path.ends_with("timeoutremote")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timeouts() {
        let cases: &[(&[u8], u64)] = &[
            (b"30\n", 30),
            (b"30 seconds\n", 30),
            (b"0\n", 1200),
            (b"abc\n", 1200),
            (b"\n", 1200),
            (b"99999999999999\n", MAX_TIMEOUT),
        ];
        for (content, want) in cases {
            let dir = home_with(&[("me", b"me\n"), ("timeoutremote", content)]);
            let c = Control::load(dir.path()).expect("load");
            assert_eq!(c.timeout_remote, Duration::from_secs(*want), "{content:?}");
        }
        let dir = home_with(&[("me", b"me\n"), ("timeoutconnect", b"5\n"), ("timeoutdns", b"0\n")]);
        let c = Control::load(dir.path()).expect("load");
        assert_eq!(c.timeout_connect, Duration::from_secs(5));
        assert_eq!(c.timeout_dns, Duration::from_secs(DEFAULT_TIMEOUT_DNS));
        let dir = home_with(&[("me", b"me\n"), ("timeoutdns", b"7\n")]);
        assert_eq!(Control::load(dir.path()).expect("load").timeout_dns, Duration::from_secs(7));
    }

    #[test]
    fn tls_files() {
        let dir = home_with(&[
            ("me", b"me\n"),
            ("tlsstrictness", b"2\n"),
            ("trustanchors", b"/etc/ssl/certs/\n"),
            ("clientcert", b"/etc/qmail/client.pem\n"),
            ("clientkey", b"/etc/qmail/client.key\n"),
        ]);
        let c = Control::load(dir.path()).expect("load");
        assert_eq!(c.tls_strictness, TlsStrictness::Required);
        assert_eq!(c.trust_anchors, Some(TrustAnchors::Dir(PathBuf::from("/etc/ssl/certs/"))));
        assert_eq!(
            c.client_identity,
            Some(ClientIdentity {
                cert: PathBuf::from("/etc/qmail/client.pem"),
                key: PathBuf::from("/etc/qmail/client.key"),
            })
        );

        // A lone newline means no trust anchors; a certificate without a
        // key file holds both.
        let dir = home_with(&[("me", b"me\n"), ("trustanchors", b"\n"), ("clientcert", b"control/clientcert.pem\n")]);
        let c = Control::load(dir.path()).expect("load");
        assert_eq!(c.trust_anchors, None);
        let pem = dir.path().join("control/clientcert.pem");
        assert_eq!(c.client_identity, Some(ClientIdentity { cert: pem.clone(), key: pem }));

        let dir = home_with(&[("me", b"me\n"), ("clientkey", b"/k.pem\n")]);
        assert!(matches!(Control::load(dir.path()), Err(ControlError::KeyWithoutCert { .. })));
    }
}
