//! The addresses of this machine, so that qmail-remote never delivers to
//! itself through an MX.
//!
//! `control/ipme`, when it exists, lists them: one IPv4 or IPv6 address per
//! line in text form (an IPv6 zone suffix such as `%eth0` is allowed and
//! ignored), blank lines and `#` comments ignored. When it does not exist the
//! addresses are detected with `getifaddrs(3)`: every IPv4 and IPv6 address
//! of every interface, loopback included (stock qmail detects IPv4 only;
//! skarnet requires the file).
//!
//! In both cases `0.0.0.0` and `::` are added, as stock qmail adds
//! `0.0.0.0`: a connection to the unspecified address reaches this machine.
//! Loopback addresses are not added to a list file, so that tests can point
//! an MX at `127.0.0.2` with an `ipme` that leaves it out. IPv4-mapped IPv6
//! addresses count as their IPv4 address.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::control;

/// `control/ipme`, relative to the qmail home.
pub(crate) const IPME_PATH: &str = "control/ipme";

/// A line of `ipme` that is not an address.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("line {line}: not an IP address: {content:?}")]
pub struct IpmeSyntaxError {
    /// The 1-based line number.
    pub line: usize,
    /// The line, lossily decoded.
    pub content: String,
}

/// The local addresses could not be found.
#[derive(Debug, Error)]
pub enum IpmeError {
    /// `control/ipme` exists but could not be read.
    #[error("unable to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `control/ipme` has a line that is not an address.
    #[error("syntax error in {}, {error}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line.
        #[source]
        error: IpmeSyntaxError,
    },
    /// `getifaddrs` failed.
    #[error("unable to list the network interfaces: {0}")]
    Detect(#[source] nix::Error),
}

/// Where the addresses come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpmeSource {
    /// `control/ipme`.
    File,
    /// The network interfaces.
    Detected,
}

/// The set of local addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipme {
    addrs: BTreeSet<IpAddr>,
    source: IpmeSource,
}

fn parse_addr(text: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(text).ok()?;
    let text = text.split_once('%').map_or(text, |(addr, _zone)| addr);
    text.parse().ok()
}

impl Ipme {
    fn with(addrs: impl IntoIterator<Item = IpAddr>, source: IpmeSource) -> Ipme {
        let mut set: BTreeSet<IpAddr> = addrs.into_iter().map(|a| a.to_canonical()).collect();
        set.insert(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        set.insert(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        Ipme { addrs: set, source }
    }

    /// The given addresses (plus the unspecified ones), for tests and tools.
    pub fn from_addrs(addrs: impl IntoIterator<Item = IpAddr>) -> Ipme {
        Ipme::with(addrs, IpmeSource::File)
    }

    /// Parses the content of `control/ipme`.
    pub fn parse(text: &[u8]) -> Result<Ipme, IpmeSyntaxError> {
        let addrs = control::lines(text)
            .map(|l| {
                parse_addr(l.text).ok_or_else(|| IpmeSyntaxError {
                    line: l.number,
                    content: String::from_utf8_lossy(l.text).into_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ipme::with(addrs, IpmeSource::File))
    }

    /// The addresses of the network interfaces.
    pub(crate) fn detect() -> Result<Ipme, IpmeError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(IpmeError::Detect)?.filter_map(|ifa| {
            let sa = ifa.address?;
            if let Some(v4) = sa.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        });
        Ok(Ipme::with(addrs, IpmeSource::Detected))
    }

    /// `control/ipme` of the qmail home `home` if it exists, otherwise the
    /// detected addresses.
    pub fn load(home: &Path) -> Result<Ipme, IpmeError> {
        let path = home.join(IPME_PATH);
        match std::fs::read(&path) {
            Ok(text) => Ipme::parse(&text).map_err(|error| IpmeError::Syntax { path, error }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ipme::detect(),
            Err(source) => Err(IpmeError::Read { path, source }),
        }
    }

    /// Whether `ip` is one of the local addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip.to_canonical())
    }

    /// The addresses, sorted.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.iter().copied()
    }

    /// Where they come from.
    pub fn source(&self) -> IpmeSource {
        self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn parse_list() {
        let ipme =
            Ipme::parse(b"# local\n192.0.2.1\n\n2001:DB8::1  \nfe80::1%eth0\r\n::ffff:198.51.100.7\n").expect("parses");
        let want: Vec<IpAddr> =
            ["0.0.0.0", "192.0.2.1", "198.51.100.7", "::", "2001:db8::1", "fe80::1"].iter().map(|s| ip(s)).collect();
        assert_eq!(ipme.addrs().collect::<Vec<_>>(), want);
        assert_eq!(ipme.source(), IpmeSource::File);
        for (addr, want) in [
            ("192.0.2.1", true),
            ("::ffff:192.0.2.1", true),
            ("198.51.100.7", true),
            ("0.0.0.0", true),
            ("::", true),
            ("127.0.0.1", false),
            ("192.0.2.2", false),
        ] {
            assert_eq!(ipme.contains(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn syntax_errors() {
        let cases: &[(&[u8], usize)] = &[
            (b"192.0.2.1\nlocalhost\n", 2),
            (b"192.0.2.1/24\n", 1),
            (b"\n\n[::1]\n", 3),
            (b"192.0.2.1 # home\n", 1),
            (b"\xff\n", 1),
        ];
        for (text, line) in cases {
            assert_eq!(Ipme::parse(text).expect_err("must fail").line, *line, "{text:?}");
        }
        assert_eq!(Ipme::parse(b"").expect("empty").addrs().count(), 2);
    }

    #[test]
    fn detects_loopback() {
        let ipme = Ipme::detect().expect("getifaddrs");
        assert_eq!(ipme.source(), IpmeSource::Detected);
        assert!(ipme.contains(ip("127.0.0.1")), "{ipme:?}");
        assert!(ipme.contains(ip("0.0.0.0")));
        assert!(ipme.contains(ip("::")));
    }

    #[test]
    fn load_file_or_detect() {
        let dir = TempDir::new("ipme");
        let detected = Ipme::load(dir.path()).expect("detect");
        assert_eq!(detected.source(), IpmeSource::Detected);

        dir.write(IPME_PATH, b"192.0.2.1\n");
        let listed = Ipme::load(dir.path()).expect("file");
        assert_eq!(listed.source(), IpmeSource::File);
        assert!(!listed.contains(ip("127.0.0.1")));

        dir.write(IPME_PATH, b"192.0.2.1\nnope\n");
        match Ipme::load(dir.path()) {
            Err(IpmeError::Syntax { path, error }) => {
                assert!(path.ends_with(IPME_PATH));
                assert_eq!(error.line, 2);
            }
            other => panic!("{other:?}"),
        }
    }
}
