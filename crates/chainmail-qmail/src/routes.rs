//! `control/smtproutes`: artificial SMTP routes.
//!
//! # Syntax (stock qmail's, checked more strictly)
//!
//! One route per line, `domain:relay[:port]`. Blank lines and lines starting
//! with `#` are ignored and trailing whitespace is stripped.
//!
//! * `domain` is a host name (`example.com`), a suffix starting with a dot
//!   (`.example.com` matches `a.example.com` and `b.a.example.com`, not
//!   `example.com`), or empty for the default route (`:relay`). Keys are
//!   compared without regard to ASCII case.
//! * `relay` is a host name (resolved to its addresses, no MX lookup), an
//!   IPv4 address (`192.0.2.1` or `[192.0.2.1]`) or an IPv6 address in
//!   brackets (`[2001:db8::1]`, also `[IPv6:2001:db8::1]`); the port
//!   follows the relay after a colon (`[::1]:2525`) and defaults to 25.
//! * An empty relay (`domain:`) means "look up the MX records as usual"; it
//!   overrides the default route for that domain.
//! * When a domain appears twice, the last line wins.
//!
//! Lookup tries the host itself, then each suffix that starts at a dot, from
//! the longest to the shortest, then the default route.
//!
//! Stock qmail silently ignores a line without a colon, takes any garbage as
//! a relay name and bounces mail for `domain::26` with `Sorry, I couldn't
//! find any host named .`. Here every line that is not a valid route is a
//! [`SyntaxError`] naming the line, which qmail-remote turns into a deferral
//! (`Unable to read control files`) until the file is fixed.
//!
//! # The compiled form
//!
//! [`Routes::open`] compiles the text to `$QMAILHOME/run/qmail-remote/
//! smtproutes.cdb` and answers lookups from the cdb. The cdb is rebuilt
//! whenever the text file is not the one it was built from: each cdb records
//! the identity of its source (device, inode, size, modification and change
//! times in nanoseconds), so an edit, a replacement by `mv`, even by an older
//! file, or a `touch` all trigger a rebuild, without relying on one file
//! being strictly newer than the other. The rebuild:
//!
//! 1. parses the text; a syntax error returns the error and creates nothing;
//! 2. takes an exclusive `flock` on `smtproutes.lock` in the same directory
//!    (created if needed), then checks again whether another process has
//!    just built a fresh cdb;
//! 3. writes `smtproutes.cdb.tmp` (a stale one is removed first), fsyncs it,
//!    renames it to `smtproutes.cdb` and fsyncs the directory; on any failure
//!    the temporary file is removed.
//!
//! Readers take no lock: the cdb is only ever replaced by a rename, so an
//! open cdb stays whole. When the directory is missing or not writable, or
//! the rebuild fails in any other way, the parsed text is used directly
//! ([`RoutesSource::Text`] says why); a stale cdb is never used.
//!
//! Records of the cdb (all keys are lowercased):
//!
//! | key | value |
//! |---|---|
//! | `\0format` | `chainmail-smtproutes 1` |
//! | `\0source` | the source identity, `dev ino size mtime_s mtime_ns ctime_s ctime_ns` in decimal |
//! | `domain` (the default route: the empty key) | the route in canonical text: empty for "use MX", otherwise `host:port`, `[ipv4]:port` or `[ipv6]:port` |
//!
//! A domain can never contain a NUL byte, so the two metadata keys cannot
//! collide with a route. Each key appears once (duplicates are resolved
//! before writing) and the metadata records keep the file non-empty, which
//! the `cdb` crate's reader requires.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use thiserror::Error;

use crate::control;

/// The default SMTP port.
pub(crate) const SMTP_PORT: u16 = 25;
/// `control/smtproutes`, relative to the qmail home.
pub(crate) const SMTPROUTES: &str = "control/smtproutes";
/// The compiled routes, in [`crate::RUN_DIR`].
pub(crate) const CDB_NAME: &str = "smtproutes.cdb";
/// The lock serialising rebuilds, in [`crate::RUN_DIR`].
pub(crate) const LOCK_NAME: &str = "smtproutes.lock";
/// The temporary file a rebuild writes, in [`crate::RUN_DIR`].
pub(crate) const TMP_NAME: &str = "smtproutes.cdb.tmp";

const FORMAT_KEY: &[u8] = b"\0format";
const FORMAT_VALUE: &[u8] = b"chainmail-smtproutes 1";
const SOURCE_KEY: &[u8] = b"\0source";

/// Longest accepted domain key (a DNS name is at most 253 bytes; one more
/// for a leading dot, one for a trailing one).
const MAX_DOMAIN: usize = 255;

/// Where a route sends the mail.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RelayHost {
    /// A host name, lowercased: connect to its addresses (no MX lookup).
    Name(String),
    /// An address literal.
    Ip(IpAddr),
}

/// A relay and its port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The relay.
    pub relay: RelayHost,
    /// The port, 25 unless given.
    pub port: u16,
}

impl fmt::Display for Route {
    /// The canonical text, which re-parses to the same route.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.relay {
            RelayHost::Name(h) => write!(f, "{h}:{}", self.port),
            RelayHost::Ip(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// A line of `smtproutes` that is not a valid route.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("line {line}: {reason}: {content:?}")]
pub struct SyntaxError {
    /// The 1-based line number.
    pub line: usize,
    /// The line, lossily decoded.
    pub content: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses the value of a route (after the first colon): `None` for an empty
/// value, which means "use MX".
pub fn parse_relay(value: &[u8]) -> Result<Option<Route>, &'static str> {
    if value.is_empty() {
        return Ok(None);
    }
    let (relay, port) = if value[0] == b'[' {
        let close = value.iter().position(|&b| b == b']').ok_or("unterminated address literal")?;
        let ip = parse_literal(&value[1..close])?;
        let port = match &value[close + 1..] {
            [] => SMTP_PORT,
            [b':', port @ ..] => parse_port(port)?,
            _ => return Err("unexpected text after the address literal"),
        };
        (RelayHost::Ip(ip), port)
    } else {
        let (host, port) = match value.iter().position(|&b| b == b':') {
            Some(i) => (&value[..i], parse_port(&value[i + 1..])?),
            None => (value, SMTP_PORT),
        };
        if host.is_empty() {
            return Err("a port without a relay (IPv6 addresses need brackets)");
        }
        (parse_host(host)?, port)
    };
    Ok(Some(Route { relay, port }))
}

fn parse_literal(inside: &[u8]) -> Result<IpAddr, &'static str> {
    let text = std::str::from_utf8(inside).map_err(|_| "invalid address literal")?;
    let (text, v6_only) = match text.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("ipv6:") => (&text[5..], true),
        _ => (text, false),
    };
    if !v6_only {
        if let Ok(v4) = text.parse::<Ipv4Addr>() {
            return Ok(IpAddr::V4(v4));
        }
    }
    text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| "invalid address literal")
}

fn parse_port(digits: &[u8]) -> Result<u16, &'static str> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("invalid port");
    }
    match control::scan_number(digits) {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err("invalid port"),
    }
}

fn parse_host(host: &[u8]) -> Result<RelayHost, &'static str> {
    if host.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
        return std::str::from_utf8(host)
            .ok()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(|v4| RelayHost::Ip(IpAddr::V4(v4)))
            .ok_or("invalid IPv4 address");
    }
    if host.len() > MAX_DOMAIN {
        return Err("relay name too long");
    }
    let name = host.strip_suffix(b".").unwrap_or(host);
    let labels_ok = name.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    });
    if !labels_ok {
        return Err("invalid relay host name");
    }
    Ok(RelayHost::Name(String::from_utf8_lossy(host).to_ascii_lowercase()))
}

/// Checks a domain key and returns it lowercased.
fn parse_domain(key: &[u8]) -> Result<Vec<u8>, &'static str> {
    if key.len() > MAX_DOMAIN {
        return Err("domain too long");
    }
    if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err("space or control character in the domain");
    }
    Ok(key.to_ascii_lowercase())
}

/// The keys to try for `host`, in order: the host, each suffix starting at a
/// dot (longest first), the default route `""`. The host must be lowercased.
pub(crate) fn lookup_keys(host: &[u8]) -> impl Iterator<Item = &[u8]> {
    let suffixes = (1..host.len()).filter(move |&i| host[i] == b'.').map(move |i| &host[i..]);
    let first = (!host.is_empty()).then_some(host);
    first.into_iter().chain(suffixes).chain(std::iter::once(&b""[..]))
}

/// The routes of a `smtproutes` text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// Lowercased domain key → route, `None` meaning "use MX".
    map: HashMap<Vec<u8>, Option<Route>>,
}

impl RouteTable {
    /// Parses a `smtproutes` text.
    pub fn parse(text: &[u8]) -> Result<RouteTable, SyntaxError> {
        let mut map = HashMap::new();
        for line in control::lines(text) {
            let err = |reason| SyntaxError {
                line: line.number,
                content: String::from_utf8_lossy(line.text).into_owned(),
                reason,
            };
            let colon = line.text.iter().position(|&b| b == b':').ok_or_else(|| err("no colon"))?;
            let domain = parse_domain(&line.text[..colon]).map_err(err)?;
            let route = parse_relay(&line.text[colon + 1..]).map_err(err)?;
            map.insert(domain, route);
        }
        Ok(RouteTable { map })
    }

    /// The route for `host` (any case): `None` means "look up the MX records
    /// of the host".
    pub fn lookup(&self, host: &[u8]) -> Option<&Route> {
        let host = host.to_ascii_lowercase();
        lookup_keys(&host).find_map(|k| self.map.get(k)).and_then(Option::as_ref)
    }

    /// Number of distinct domain keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there is no route at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The entries, sorted by key: `(domain, route)`.
    pub fn entries(&self) -> Vec<(&[u8], Option<&Route>)> {
        let mut v: Vec<_> = self.map.iter().map(|(k, r)| (k.as_slice(), r.as_ref())).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// A problem with the routes that makes them unusable.
#[derive(Debug, Error)]
pub enum RoutesError {
    /// `smtproutes` exists but could not be read.
    #[error("unable to read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// `smtproutes` has a line that is not a route.
    #[error("syntax error in {}, {error}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line and what is wrong with it.
        #[source]
        error: SyntaxError,
    },
    /// The cdb could not be read during a lookup.
    #[error("unable to read {}: {source}", path.display())]
    CdbRead {
        /// The cdb.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The cdb holds a value that is not a route.
    #[error("{}: invalid record for {key:?}: {value:?}", path.display())]
    Corrupt {
        /// The cdb.
        path: PathBuf,
        /// The key, lossily decoded.
        key: String,
        /// The value, lossily decoded.
        value: String,
    },
}

/// Why a compiled cdb could not be made.
#[derive(Debug, Error)]
pub enum CompileError {
    /// The run directory or the lock file is not usable (missing, read-only,
    /// a path through a regular file, …).
    #[error("unable to lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Writing or syncing the new cdb failed.
    #[error("unable to write {}: {source}", path.display())]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Renaming the new cdb into place failed.
    #[error("unable to rename {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The temporary file.
        from: PathBuf,
        /// The cdb.
        to: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The new cdb could not be opened again.
    #[error("unable to open {}: {source}", path.display())]
    Reopen {
        /// The cdb.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Where the routes in use come from.
#[derive(Debug)]
pub enum RoutesSource {
    /// There is no `smtproutes`: every host uses MX.
    NoFile,
    /// An existing cdb that matches the text.
    Cdb,
    /// A cdb this call just built.
    Compiled,
    /// The parsed text, because no cdb could be built.
    Text(CompileError),
}

/// The identity of a source text, recorded in the cdb built from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SourceStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

impl SourceStamp {
    fn of(meta: &fs::Metadata) -> SourceStamp {
        SourceStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {} {} {} {}",
            self.dev, self.ino, self.size, self.mtime, self.mtime_ns, self.ctime, self.ctime_ns
        )
        .into_bytes()
    }
}

enum Lookup {
    Empty,
    Table(RouteTable),
    Cdb(cdb::CDB),
}

/// The routes in force, from the cdb or, failing that, from the text.
pub struct Routes {
    lookup: Lookup,
    cdb_path: PathBuf,
    source: RoutesSource,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.lookup {
            Lookup::Empty => "empty",
            Lookup::Table(_) => "table",
            Lookup::Cdb(_) => "cdb",
        };
        f.debug_struct("Routes")
            .field("lookup", &kind)
            .field("cdb_path", &self.cdb_path)
            .field("source", &self.source)
            .finish()
    }
}

/// Opens the cdb at `path` if it was built from the text with `stamp`.
fn open_fresh(path: &Path, stamp: &SourceStamp) -> Option<cdb::CDB> {
    let db = cdb::CDB::open(path).ok()?;
    let format = db.get(FORMAT_KEY)?.ok()?;
    let source = db.get(SOURCE_KEY)?.ok()?;
    (format == FORMAT_VALUE && source == stamp.encode()).then_some(db)
}

/// Removes the temporary file unless disarmed.
struct TempGuard<'a>(Option<&'a Path>);

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn write_cdb(tmp: &Path, table: &RouteTable, stamp: &SourceStamp) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(tmp)?;
    // CDBMake consumes its file and drops it in finish(); the clone shares
    // the open file description, so syncing it syncs what CDBMake wrote.
    let mut maker = cdb::CDBMake::new(file.try_clone()?)?;
    maker.add(FORMAT_KEY, FORMAT_VALUE)?;
    maker.add(SOURCE_KEY, &stamp.encode())?;
    for (key, route) in table.entries() {
        let value = route.map(|r| r.to_string()).unwrap_or_default();
        maker.add(key, value.as_bytes())?;
    }
    maker.finish()?;
    file.sync_all()
}

fn compile_locked(run_dir: &Path, table: &RouteTable, stamp: &SourceStamp) -> Result<(cdb::CDB, bool), CompileError> {
    let lock_path = run_dir.join(LOCK_NAME);
    let lock_err = |source| CompileError::Lock { path: lock_path.clone(), source };
    let lock_file =
        OpenOptions::new().write(true).create(true).truncate(false).mode(0o644).open(&lock_path).map_err(lock_err)?;
    let _lock =
        Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| lock_err(io::Error::from(errno)))?;

    let cdb_path = run_dir.join(CDB_NAME);
    if let Some(db) = open_fresh(&cdb_path, stamp) {
        // Built by another qmail-remote while we waited for the lock.
        return Ok((db, false));
    }

    let tmp = run_dir.join(TMP_NAME);
    let mut guard = TempGuard(Some(&tmp));
    write_cdb(&tmp, table, stamp).map_err(|source| CompileError::Write { path: tmp.clone(), source })?;
    fs::rename(&tmp, &cdb_path).map_err(|source| CompileError::Rename {
        from: tmp.clone(),
        to: cdb_path.clone(),
        source,
    })?;
    guard.0 = None;
    // The cdb is in place; if the directory cannot be synced, it may come
    // back as the old one after a crash, which only means another rebuild.
    if let Ok(dir) = File::open(run_dir) {
        let _ = dir.sync_all();
    }
    let db = cdb::CDB::open(&cdb_path).map_err(|source| CompileError::Reopen { path: cdb_path.clone(), source })?;
    Ok((db, true))
}

impl Routes {
    /// The routes of the qmail home `home`: `control/smtproutes`, compiled
    /// under [`crate::RUN_DIR`].
    pub fn open(home: &Path) -> Result<Routes, RoutesError> {
        Routes::open_at(&home.join(SMTPROUTES), &home.join(crate::RUN_DIR))
    }

    /// The routes of the text file `text_path`, compiled in `run_dir`.
    pub(crate) fn open_at(text_path: &Path, run_dir: &Path) -> Result<Routes, RoutesError> {
        let cdb_path = run_dir.join(CDB_NAME);
        let read_err = |source| RoutesError::Read { path: text_path.to_path_buf(), source };
        let mut file = match File::open(text_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Routes { lookup: Lookup::Empty, cdb_path, source: RoutesSource::NoFile });
            }
            Err(e) => return Err(read_err(e)),
        };
        let stamp = SourceStamp::of(&file.metadata().map_err(read_err)?);
        if let Some(db) = open_fresh(&cdb_path, &stamp) {
            return Ok(Routes { lookup: Lookup::Cdb(db), cdb_path, source: RoutesSource::Cdb });
        }

        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(read_err)?;
        let table =
            RouteTable::parse(&text).map_err(|error| RoutesError::Syntax { path: text_path.to_path_buf(), error })?;
        let (lookup, source) = match compile_locked(run_dir, &table, &stamp) {
            Ok((db, true)) => (Lookup::Cdb(db), RoutesSource::Compiled),
            Ok((db, false)) => (Lookup::Cdb(db), RoutesSource::Cdb),
            Err(e) => (Lookup::Table(table), RoutesSource::Text(e)),
        };
        Ok(Routes { lookup, cdb_path, source })
    }

    /// Where the routes come from.
    pub fn source(&self) -> &RoutesSource {
        &self.source
    }

    /// The route for `host` (any case): `Ok(None)` means "look up the MX
    /// records of the host". A relay route also means that qmail-remote
    /// skips its "is this MX me?" check, as stock qmail does.
    pub fn lookup(&self, host: &[u8]) -> Result<Option<Route>, RoutesError> {
        let host = host.to_ascii_lowercase();
        match &self.lookup {
            Lookup::Empty => Ok(None),
            Lookup::Table(t) => Ok(t.lookup(&host).cloned()),
            Lookup::Cdb(db) => {
                for key in lookup_keys(&host) {
                    match db.get(key) {
                        None => continue,
                        Some(Err(source)) => {
                            return Err(RoutesError::CdbRead { path: self.cdb_path.clone(), source });
                        }
                        Some(Ok(value)) => {
                            return parse_relay(&value).map_err(|_| RoutesError::Corrupt {
                                path: self.cdb_path.clone(),
                                key: String::from_utf8_lossy(key).into_owned(),
                                value: String::from_utf8_lossy(&value).into_owned(),
                            });
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::time::{Duration, SystemTime};

    fn host(h: &str, port: u16) -> Option<Route> {
        Some(Route { relay: RelayHost::Name(h.to_string()), port })
    }

    fn ip(a: &str, port: u16) -> Option<Route> {
        Some(Route { relay: RelayHost::Ip(a.parse().expect("test address")), port })
    }

    #[test]
    fn relay_values() {
        let cases: &[(&str, Option<Route>)] = &[
            ("", None),
            ("relay.example", host("relay.example", 25)),
            ("Relay.Example.", host("relay.example.", 25)),
            ("relay.example:2525", host("relay.example", 2525)),
            ("relay_1.example:1", host("relay_1.example", 1)),
            ("192.0.2.1", ip("192.0.2.1", 25)),
            ("192.0.2.1:26", ip("192.0.2.1", 26)),
            ("[192.0.2.1]", ip("192.0.2.1", 25)),
            ("[192.0.2.1]:587", ip("192.0.2.1", 587)),
            ("[::1]", ip("::1", 25)),
            ("[::1]:2525", ip("::1", 2525)),
            ("[2001:db8::25]:65535", ip("2001:db8::25", 65535)),
            ("[IPv6:2001:db8::1]", ip("2001:db8::1", 25)),
            ("[ipv6:::ffff:192.0.2.1]", ip("::ffff:192.0.2.1", 25)),
        ];
        for (value, want) in cases {
            assert_eq!(parse_relay(value.as_bytes()).as_ref(), Ok(want), "{value}");
        }
    }

    #[test]
    fn invalid_relay_values() {
        let cases = [
            ":26",
            "::1",
            "relay:",
            "relay:0",
            "relay:65536",
            "relay:25x",
            "relay:+25",
            "relay:25:26",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[192.0.2.300]",
            "[IPv6:192.0.2.1]",
            "[relay.example]",
            "1.2.3",
            "192.0.2.256",
            "01.2.3.4",
            "relay..example",
            ".relay",
            "re lay",
            "relay/x",
            "relay|user|pass",
            "réseau.example",
        ];
        for value in cases {
            assert!(parse_relay(value.as_bytes()).is_err(), "{value} accepted");
        }
        let long = "a".repeat(64) + ".example";
        assert!(parse_relay(long.as_bytes()).is_err());
    }

    #[test]
    fn route_text_round_trips() {
        for value in [
            "relay.example",
            "relay.example:2525",
            "[192.0.2.1]",
            "192.0.2.1:26",
            "[::1]:2525",
            "[IPv6:2001:db8::1]:26",
        ] {
            let route = parse_relay(value.as_bytes()).expect("valid").expect("a relay");
            let again = parse_relay(route.to_string().as_bytes()).expect("canonical re-parses");
            assert_eq!(again, Some(route), "{value}");
        }
    }

    #[test]
    fn lookup_key_order() {
        let keys: Vec<&[u8]> = lookup_keys(b"a.b.example.com").collect();
        assert_eq!(keys, vec![&b"a.b.example.com"[..], b".b.example.com", b".example.com", b".com", b""]);
        let keys: Vec<&[u8]> = lookup_keys(b"").collect();
        assert_eq!(keys, vec![&b""[..]]);
        let keys: Vec<&[u8]> = lookup_keys(b".x").collect();
        assert_eq!(keys, vec![&b".x"[..], b""]);
    }

    const TEXT: &[u8] = b"# routes\n\
        :smarthost.example:2525\n\
        example.com:exact.example\n\
        .example.com:[192.0.2.7]\n\
        Local.Example.COM:\n\
        .sub.example.net:[::1]:26   \n\
        \n\
        dup.example:first.example\n\
        dup.example:second.example\n\
        [192.0.2.9]:literal-relay.example\n";

    fn check_lookups(lookup: impl Fn(&str) -> Option<Route>) {
        let cases: &[(&str, Option<Route>)] = &[
            ("example.com", host("exact.example", 25)),
            ("EXAMPLE.com", host("exact.example", 25)),
            ("a.example.com", ip("192.0.2.7", 25)),
            ("a.b.Example.Com", ip("192.0.2.7", 25)),
            // The empty relay overrides the suffix and the default route.
            ("local.example.com", None),
            ("x.local.example.com", ip("192.0.2.7", 25)),
            ("sub.example.net", host("smarthost.example", 2525)),
            ("a.sub.example.net", ip("::1", 26)),
            ("other.org", host("smarthost.example", 2525)),
            ("", host("smarthost.example", 2525)),
            ("dup.example", host("second.example", 25)),
            ("[192.0.2.9]", host("literal-relay.example", 25)),
        ];
        for (h, want) in cases {
            assert_eq!(lookup(h), *want, "{h}");
        }
    }

    #[test]
    fn table_lookup() {
        let table = RouteTable::parse(TEXT).expect("parses");
        assert_eq!(table.len(), 7);
        check_lookups(|h| table.lookup(h.as_bytes()).cloned());
        // Without a default route, unknown hosts use MX.
        let table = RouteTable::parse(b"example.com:relay.example\n").expect("parses");
        assert_eq!(table.lookup(b"example.org"), None);
        assert_eq!(table.lookup(b"a.example.com"), None);
        assert!(RouteTable::parse(b"").expect("empty").is_empty());
        assert!(RouteTable::parse(b"# only\n\n").expect("comments").is_empty());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"nocolon\n", 1, "no colon"),
            (b"# c\n\nok.example:relay\nbad.example:relay:\n", 4, "invalid port"),
            (b"a b:relay\n", 1, "space or control character in the domain"),
            (b"a\tb:relay\n", 1, "space or control character in the domain"),
            (b"x::26\n", 1, "a port without a relay (IPv6 addresses need brackets)"),
            (b"ok:relay\r\nx:[::1\n", 2, "unterminated address literal"),
        ];
        for (text, line, reason) in cases {
            let e = RouteTable::parse(text).expect_err("must fail");
            assert_eq!((e.line, e.reason), (*line, *reason), "{text:?}");
        }
        let e = RouteTable::parse(b"\n\nbad.example:re lay\n").expect_err("must fail");
        assert_eq!(e.to_string(), "line 3: invalid relay host name: \"bad.example:re lay\"");
    }

    #[test]
    fn parse_is_independent_of_line_ends_and_order_of_comments() {
        // Re-feeding the same routes with CRLF ends and interleaved comments
        // gives the same table.
        let crlf: Vec<u8> = TEXT.split(|&b| b == b'\n').flat_map(|l| [l, b"\r\n# note\r\n"].concat()).collect();
        assert_eq!(RouteTable::parse(&crlf).expect("crlf"), RouteTable::parse(TEXT).expect("lf"));
    }

    #[test]
    fn table_text_round_trips() {
        // Re-feeding the table as canonical text gives the same table.
        let table = RouteTable::parse(TEXT).expect("parses");
        let mut text = Vec::new();
        for (key, route) in table.entries() {
            text.extend_from_slice(key);
            text.push(b':');
            if let Some(r) = route {
                text.extend_from_slice(r.to_string().as_bytes());
            }
            text.push(b'\n');
        }
        assert_eq!(RouteTable::parse(&text).expect("re-parses"), table);
    }

    fn home_with_routes(text: &[u8]) -> TempDir {
        let dir = TempDir::new("routes");
        dir.write(SMTPROUTES, text);
        dir.mkdir(crate::RUN_DIR);
        dir
    }

    fn lookup_fn(routes: &Routes) -> impl Fn(&str) -> Option<Route> + '_ {
        move |h| routes.lookup(h.as_bytes()).expect("lookup")
    }

    #[test]
    fn compiles_then_reuses_the_cdb() {
        let dir = home_with_routes(TEXT);
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled), "{routes:?}");
        check_lookups(lookup_fn(&routes));
        assert_eq!(dir.list(crate::RUN_DIR), vec![CDB_NAME.to_string(), LOCK_NAME.to_string()]);

        let again = Routes::open(dir.path()).expect("open");
        assert!(matches!(again.source(), RoutesSource::Cdb), "{again:?}");
        check_lookups(lookup_fn(&again));
    }

    #[test]
    fn edited_text_is_recompiled() {
        let dir = home_with_routes(b":old.example\n");
        let routes = Routes::open(dir.path()).expect("open");
        assert_eq!(routes.lookup(b"x").expect("lookup"), host("old.example", 25));

        dir.write(SMTPROUTES, b":new.example\n");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled), "{routes:?}");
        assert_eq!(routes.lookup(b"x").expect("lookup"), host("new.example", 25));
    }

    #[test]
    fn older_replacement_text_is_recompiled() {
        // A text that is older than the cdb but not its source (restored
        // from a backup with its old mtime) still triggers a rebuild.
        let dir = home_with_routes(b":old.example\n");
        Routes::open(dir.path()).expect("open");
        let other = dir.write("smtproutes.new", b":restored.example\n");
        let old = SystemTime::now() - Duration::from_secs(86400);
        File::options().write(true).open(&other).and_then(|f| f.set_modified(old)).expect("set mtime");
        fs::rename(&other, dir.path().join(SMTPROUTES)).expect("rename");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled), "{routes:?}");
        assert_eq!(routes.lookup(b"x").expect("lookup"), host("restored.example", 25));
    }

    #[test]
    fn empty_text_compiles() {
        let dir = home_with_routes(b"");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled), "{routes:?}");
        assert_eq!(routes.lookup(b"example.com").expect("lookup"), None);
        let again = Routes::open(dir.path()).expect("open");
        assert!(matches!(again.source(), RoutesSource::Cdb), "{again:?}");
    }

    #[test]
    fn missing_text_means_mx_even_with_a_stale_cdb() {
        let dir = home_with_routes(b":relay.example\n");
        Routes::open(dir.path()).expect("open");
        fs::remove_file(dir.path().join(SMTPROUTES)).expect("remove");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::NoFile));
        assert_eq!(routes.lookup(b"example.com").expect("lookup"), None);
    }

    #[test]
    fn syntax_error_leaves_nothing_behind() {
        let dir = home_with_routes(b"ok.example:relay\nbad\n");
        // A stale temporary from a crashed run is not the issue here; the
        // parse fails before anything is created.
        match Routes::open(dir.path()) {
            Err(RoutesError::Syntax { path, error }) => {
                assert!(path.ends_with("control/smtproutes"));
                assert_eq!(error.line, 2);
                assert_eq!(error.content, "bad");
            }
            other => panic!("{other:?}"),
        }
        assert!(dir.list(crate::RUN_DIR).is_empty(), "{:?}", dir.list(crate::RUN_DIR));

        // An existing cdb stays, but is not used for the broken text.
        dir.write(SMTPROUTES, b":relay.example\n");
        Routes::open(dir.path()).expect("open");
        dir.write(SMTPROUTES, b":relay.example\nbad\n");
        assert!(matches!(Routes::open(dir.path()), Err(RoutesError::Syntax { .. })));
        assert_eq!(dir.list(crate::RUN_DIR), vec![CDB_NAME.to_string(), LOCK_NAME.to_string()]);
    }

    #[test]
    fn stale_temporary_is_replaced() {
        let dir = home_with_routes(TEXT);
        dir.write(&format!("{}/{TMP_NAME}", crate::RUN_DIR), b"garbage");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled));
        check_lookups(lookup_fn(&routes));
        assert!(!dir.list(crate::RUN_DIR).contains(&TMP_NAME.to_string()));
    }

    #[test]
    fn missing_run_dir_falls_back_to_text() {
        let dir = TempDir::new("routes");
        dir.write(SMTPROUTES, TEXT);
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Text(CompileError::Lock { .. })), "{routes:?}");
        check_lookups(lookup_fn(&routes));
        assert!(!dir.path().join("run").exists());
    }

    #[test]
    fn run_path_through_a_file_falls_back_to_text() {
        // As root, permissions do not stop writes; a path component that is
        // a regular file does (ENOTDIR).
        let dir = TempDir::new("routes");
        dir.write(SMTPROUTES, TEXT);
        dir.write("run", b"not a directory");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Text(_)), "{routes:?}");
        check_lookups(lookup_fn(&routes));
    }

    #[test]
    fn corrupt_cdb_is_rebuilt() {
        let dir = home_with_routes(TEXT);
        dir.write(&format!("{}/{CDB_NAME}", crate::RUN_DIR), b"not a cdb");
        let routes = Routes::open(dir.path()).expect("open");
        assert!(matches!(routes.source(), RoutesSource::Compiled), "{routes:?}");
        check_lookups(lookup_fn(&routes));
    }

    #[test]
    fn waits_for_the_lock() {
        let dir = home_with_routes(TEXT);
        let lock_path = dir.path().join(crate::RUN_DIR).join(LOCK_NAME);
        let lock_file =
            OpenOptions::new().write(true).create(true).truncate(false).open(&lock_path).expect("lock file");
        let held = Flock::lock(lock_file, FlockArg::LockExclusive).expect("lock");

        let home = dir.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let routes = Routes::open(&home).expect("open");
            tx.send(()).expect("send");
            matches!(routes.source(), RoutesSource::Compiled)
        });
        // While the lock is held, the compile cannot finish.
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert!(!dir.path().join(crate::RUN_DIR).join(CDB_NAME).exists());
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).expect("finished after unlock");
        assert!(worker.join().expect("thread"));
    }

    #[test]
    fn concurrent_opens_agree() {
        let dir = home_with_routes(TEXT);
        let home = dir.path().to_path_buf();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let home = home.clone();
                std::thread::spawn(move || {
                    let routes = Routes::open(&home).expect("open");
                    routes.lookup(b"a.example.com").expect("lookup")
                })
            })
            .collect();
        for w in workers {
            assert_eq!(w.join().expect("thread"), ip("192.0.2.7", 25));
        }
        assert_eq!(dir.list(crate::RUN_DIR), vec![CDB_NAME.to_string(), LOCK_NAME.to_string()]);
    }
}
