//! One connection: the handshake with the client, the decision
//! (sockd.conf, identd, socks.conf), reaching the destination directly
//! or through an upstream, and the relay.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use chainmail_socks::auth::Passwords;
use chainmail_socks::client::{ClientError, ClientHandshake, ClientStep, Protocol};
use chainmail_socks::conf::{ClientAction, IdentMode, Query, ServerAction};
use chainmail_socks::server::{METHOD_NONE, METHOD_NONE_ACCEPTABLE, METHOD_PASSWORD, Request, ServerHandshake, Step};
use chainmail_socks::upstream::Upstream;
use chainmail_socks::wire::{self, Rep, V4_BAD_ID, V4_GRANTED, V4_NO_IDENTD, V4_REJECTED, Version, canonical};
use chainmail_socks::{Command, Host, Target};
use chainmail_sys::cli::MAX_TIMEOUT_SECS;
use chainmail_sys::fd;
use chainmail_sys::poll::{Interest, wait_one};
use chainmail_sys::relay::{ByteRelay, LegSpec, RelayEnd};
use chainmail_sys::{Deadline, diag};

use crate::config::{Config, ConfigError, resolve, resolve_cached, route_text};
use crate::io::{read_some, write_all};
use crate::log::Record;
use crate::state::BadMarks;
use crate::{Options, ident, udp};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unable to {0}: {1}")]
    Sys(&'static str, io::Error),
    #[error("{0}")]
    Config(ConfigError),
    #[error("unable to find the client's address (no TCPREMOTEIP, and fd 0 is not a connected socket)")]
    NoClient,
}

impl SessionError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SessionError::Sys(..) => crate::TEMPORARY,
            SessionError::Config(e) if e.system => crate::TEMPORARY,
            SessionError::Config(_) | SessionError::NoClient => chainmail_sys::cli::EXIT_USAGE,
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(io::Error) -> SessionError {
    move |e| SessionError::Sys(what, e)
}

fn env_addr(ip: &str, port: &str) -> Option<SocketAddr> {
    let ip: IpAddr = std::env::var(ip).ok()?.parse().ok()?;
    let port: u16 = std::env::var(port).ok()?.parse().ok()?;
    Some(SocketAddr::new(canonical(ip), port))
}

fn nonzero(d: Duration) -> Duration {
    if d.is_zero() { Duration::from_secs(MAX_TIMEOUT_SECS) } else { d }
}

/// One client connection, however it came: the socket (read side and a
/// descriptor to write to), who is at the other end, and this end.
pub struct Connection {
    pub input: TcpStream,
    pub output: OwnedFd,
    pub client: SocketAddr,
    pub local: Option<SocketAddr>,
    /// What identd said about the client, when the UCSPI server already
    /// asked (`TCPREMOTEINFO`).
    pub remote_info: Option<String>,
}

impl Connection {
    /// The UCSPI connection: the client on fds 0 and 1, its address from
    /// `TCPREMOTEIP`/`TCPREMOTEPORT` (else `getpeername`), ours from
    /// `TCPLOCALIP`/`TCPLOCALPORT` (else `getsockname`).
    pub fn from_stdio() -> Result<Connection, SessionError> {
        let input = TcpStream::from(fd::adopt(0).map_err(sys("take descriptor 0"))?);
        let output = fd::adopt(1).map_err(sys("take descriptor 1"))?;
        let client = env_addr("TCPREMOTEIP", "TCPREMOTEPORT")
            .or_else(|| input.peer_addr().ok().map(canonical_socket))
            .ok_or(SessionError::NoClient)?;
        let local = env_addr("TCPLOCALIP", "TCPLOCALPORT").or_else(|| input.local_addr().ok().map(canonical_socket));
        let remote_info = std::env::var("TCPREMOTEINFO").ok().filter(|u| !u.is_empty());
        Ok(Connection { input, output, client, local, remote_info })
    }

    /// A connection accepted by the listener mode: the addresses are the
    /// socket's.
    pub fn accepted(input: TcpStream) -> Result<Connection, SessionError> {
        input.set_nonblocking(false).map_err(sys("make the socket blocking"))?;
        chainmail_sys::net::set_nodelay(&input);
        let output: OwnedFd = input.try_clone().map_err(sys("duplicate a socket"))?.into();
        let client = input.peer_addr().map(canonical_socket).map_err(|_| SessionError::NoClient)?;
        let local = input.local_addr().ok().map(canonical_socket);
        Ok(Connection { input, output, client, local, remote_info: None })
    }
}

fn canonical_socket(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// UCSPI mode: serves the connection on fds 0 and 1 with the files read
/// now.
pub fn serve_stdio(opts: &Options) -> Result<u8, SessionError> {
    let conn = Connection::from_stdio()?;
    match Config::load(opts) {
        Ok(config) => serve(opts, &config, conn).map(|()| 0),
        Err(e) => {
            let mut rec = Record::new(conn.client.to_string());
            rec.outcome = "config-error".into();
            rec.emit(opts.syslog);
            Err(SessionError::Config(e))
        }
    }
}

/// Serves one connection with `config`, and writes its log line. The
/// same code for both modes: nothing in it depends on process-wide state
/// that differs from one connection to the next.
pub fn serve(opts: &Options, config: &Config, conn: Connection) -> Result<(), SessionError> {
    let Connection { input, output, client, local, remote_info } = conn;
    let mut rec = Record::new(client.to_string());
    let mut s =
        Session { opts, input: Some(input), output: Some(output), client, local, remote_info, version: Version::V4 };
    let r = s.run(config, &mut rec);
    if let Err(e) = &r {
        if rec.outcome == "-" {
            rec.outcome = format!("error:{e}");
        }
    }
    rec.emit(opts.syslog);
    r
}

struct Session<'o> {
    opts: &'o Options,
    input: Option<TcpStream>,
    output: Option<OwnedFd>,
    client: SocketAddr,
    local: Option<SocketAddr>,
    remote_info: Option<String>,
    version: Version,
}

/// What went wrong with one upstream.
enum UpstreamFailure {
    Connect(io::Error),
    Protocol(ClientError),
}

/// The context the `: command`s get.
struct CommandEnv {
    vars: Vec<(&'static str, OsString)>,
}

impl Session<'_> {
    fn send(&self, bytes: &[u8]) {
        if let Some(o) = &self.output {
            let _ = write_all(o, bytes, Deadline::after(nonzero(self.opts.connect_timeout)));
        }
    }

    /// A refusal: the reply, and the outcome for the log.
    fn refuse(&self, rec: &mut Record, v4: u8, v5: Rep, outcome: &str) {
        match self.version {
            Version::V4 => self.send(&wire::reply_v4(v4, None)),
            Version::V5 => self.send(&wire::reply_v5(v5, None)),
        }
        rec.outcome = outcome.replace(' ', "_");
    }

    fn grant(&self, bound: &Target) {
        match self.version {
            Version::V4 => self.send(&wire::reply_v4(V4_GRANTED, v4_address(bound))),
            Version::V5 => self.send(&wire::reply_v5(Rep::Succeeded, Some(bound))),
        }
    }

    fn run(&mut self, config: &Config, rec: &mut Record) -> Result<(), SessionError> {
        let Some((req, user)) = self.handshake(config.passwords.as_ref(), rec)? else { return Ok(()) };
        rec.command = req.command.name();
        rec.dest = req.target.to_string();
        rec.user = user.clone();
        let user_text = user.as_ref().map(|u| String::from_utf8_lossy(u).into_owned());
        let q = Query {
            client: self.client.ip(),
            user: user_text.as_deref(),
            dest: &req.target.host,
            port: req.target.port,
        };
        let mut cache: Option<Vec<IpAddr>> = None;

        // sockd.conf: may this client be served?
        let host = req.target.host.clone();
        let rule = config.sockd.first_match(&q, &mut || resolve_cached(&mut cache, &host)).cloned();
        let Some(rule) = rule else {
            self.refuse(rec, V4_REJECTED, Rep::NotAllowed, "refused:no-sockd-rule");
            return Ok(());
        };
        rec.rule = format!("{}:{}", rule.line, if rule.action == ServerAction::Permit { "permit" } else { "deny" });
        let mut env = self.command_env(&req, user.as_deref(), None, &cache);
        if rule.action == ServerAction::Deny {
            run_command(rule.command.as_deref(), &env);
            self.refuse(rec, V4_REJECTED, Rep::NotAllowed, "refused:sockd-deny");
            return Ok(());
        }
        let mode = rule.ident.unwrap_or(self.opts.ident);
        if mode != IdentMode::Off {
            let answer = match &self.remote_info {
                Some(u) => Ok(u.clone()),
                None => match self.local {
                    Some(local) => {
                        ident::query(self.client, local, ident::IDENT_TIMEOUT.min(nonzero(self.opts.connect_timeout)))
                    }
                    None => Err("no local address".into()),
                },
            };
            rec.ident = answer.as_ref().ok().cloned();
            env = self.command_env(&req, user.as_deref(), rec.ident.as_deref(), &cache);
            match (&answer, user_text.as_deref()) {
                (Err(e), _) if mode == IdentMode::Strict => {
                    run_command(config.sockd.no_identd.as_deref(), &env);
                    self.refuse(rec, V4_NO_IDENTD, Rep::NotAllowed, &format!("refused:no-identd:{e}"));
                    return Ok(());
                }
                (Ok(who), Some(claimed)) if who != claimed => {
                    run_command(config.sockd.bad_id.as_deref(), &env);
                    self.refuse(rec, V4_BAD_ID, Rep::NotAllowed, "refused:identd-mismatch");
                    return Ok(());
                }
                _ => {}
            }
        }
        run_command(rule.command.as_deref(), &env);

        // socks.conf: how is the destination reached?
        let action = match &config.socks {
            None => {
                rec.route = "direct".into();
                ClientAction::Direct
            }
            Some(s) => match s.first_match(&q, &mut || resolve_cached(&mut cache, &host)) {
                None => {
                    self.refuse(rec, V4_REJECTED, Rep::NotAllowed, "refused:no-route");
                    return Ok(());
                }
                Some(r) => {
                    rec.route = format!("{}:{}", r.line, route_text(&r.action).replacen(' ', "@=", 1));
                    run_command(r.command.as_deref(), &env);
                    r.action.clone()
                }
            },
        };
        match action {
            ClientAction::Deny => {
                self.refuse(rec, V4_REJECTED, Rep::NotAllowed, "refused:route-deny");
                Ok(())
            }
            ClientAction::Direct => match req.command {
                Command::Connect => self.direct_connect(&req, &mut cache, rec),
                Command::Bind => self.direct_bind(&req, &mut cache, rec),
                Command::UdpAssociate => self.udp(&req, config, user_text.as_deref(), rec, None),
            },
            ClientAction::Sockd(list) => {
                let list = match list {
                    Some(l) => l,
                    None => match std::env::var("SOCKS_SERVER").map(|s| Upstream::parse_list(&s)) {
                        Ok(Ok(l)) => l,
                        Ok(Err(e)) => {
                            self.refuse(rec, V4_REJECTED, Rep::GeneralFailure, &format!("error:SOCKS_SERVER:{e}"));
                            return Ok(());
                        }
                        Err(_) => {
                            self.refuse(rec, V4_REJECTED, Rep::GeneralFailure, "error:no-SOCKS_SERVER");
                            return Ok(());
                        }
                    },
                };
                if self.refuse_loop(&list, rec) {
                    return Ok(());
                }
                if req.command == Command::UdpAssociate {
                    return self.udp_via_upstreams(&list, &req, config, user_text.as_deref(), rec);
                }
                self.via_upstreams(&list, &req, &mut cache, rec)
            }
        }
    }

    /// Reads the request; `None` when the client was refused or went away
    /// (the outcome is in `rec`).
    #[allow(clippy::type_complexity)]
    fn handshake(
        &mut self,
        passwords: Option<&Passwords>,
        rec: &mut Record,
    ) -> Result<Option<(Request, Option<Vec<u8>>)>, SessionError> {
        let deadline = Deadline::after(nonzero(self.opts.connect_timeout));
        let mut h = ServerHandshake::new();
        let mut incoming = Vec::new();
        let mut buf = [0u8; 1024];
        let mut user5 = None;
        loop {
            let step = h.push(&std::mem::take(&mut incoming));
            match step {
                Ok(Step::NeedMore) => {
                    let Some(input) = &self.input else { return Ok(None) };
                    match read_some(input, &mut buf, deadline) {
                        Ok(0) => {
                            let e = h.eof();
                            if let Some(r) = e.reply() {
                                self.send(&r);
                            }
                            rec.outcome = format!("bad-request:{e}").replace(' ', "_");
                            return Ok(None);
                        }
                        Ok(n) => incoming.extend_from_slice(&buf[..n]),
                        Err(e) => {
                            rec.outcome = format!("client-read:{e}").replace(' ', "_");
                            return Ok(None);
                        }
                    }
                }
                Err(e) => {
                    if let Some(r) = e.reply() {
                        self.send(&r);
                    }
                    rec.outcome = format!("bad-request:{e}").replace(' ', "_");
                    return Ok(None);
                }
                Ok(Step::Methods(m)) => {
                    self.version = Version::V5;
                    let want = if passwords.is_some() { METHOD_PASSWORD } else { METHOD_NONE };
                    let chosen = if m.contains(&want) { want } else { METHOD_NONE_ACCEPTABLE };
                    let reply = h.choose_method(chosen);
                    self.send(&reply);
                    if chosen == METHOD_NONE_ACCEPTABLE {
                        rec.outcome = "refused:no-acceptable-method".into();
                        return Ok(None);
                    }
                }
                Ok(Step::Credentials { user, password }) => {
                    let ok = passwords.is_some_and(|p| p.check(&user, &password));
                    let reply = h.credentials_checked(ok);
                    self.send(&reply);
                    rec.user = Some(user.clone());
                    if !ok {
                        rec.outcome = "refused:authentication-failed".into();
                        return Ok(None);
                    }
                    user5 = Some(user);
                }
                Ok(Step::Request(r)) => {
                    self.version = r.version;
                    let user = match r.version {
                        Version::V4 => r.userid.clone(),
                        Version::V5 => user5,
                    };
                    return Ok(Some((r, user)));
                }
            }
        }
    }

    fn command_env(
        &self,
        req: &Request,
        user: Option<&[u8]>,
        ident: Option<&str>,
        cache: &Option<Vec<IpAddr>>,
    ) -> CommandEnv {
        let dest_addr = match (&req.target.host, cache) {
            (Host::Ip(ip), _) => ip.to_string(),
            (Host::Name(_), Some(a)) => a.first().map(|ip| ip.to_string()).unwrap_or_default(),
            (Host::Name(_), None) => String::new(),
        };
        let dest_host = match &req.target.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        };
        CommandEnv {
            vars: vec![
                ("SOCKD_CLIENT_ADDR", self.client.ip().to_string().into()),
                ("SOCKD_CLIENT_PORT", self.client.port().to_string().into()),
                ("SOCKD_USER", OsString::from_vec(user.unwrap_or_default().to_vec())),
                ("SOCKD_IDENT_USER", ident.unwrap_or_default().into()),
                ("SOCKD_DEST_ADDR", dest_addr.into()),
                ("SOCKD_DEST_HOST", dest_host.into()),
                ("SOCKD_DEST_PORT", req.target.port.to_string().into()),
                ("SOCKD_COMMAND", req.command.name().into()),
            ],
        }
    }

    fn direct_connect(
        &mut self,
        req: &Request,
        cache: &mut Option<Vec<IpAddr>>,
        rec: &mut Record,
    ) -> Result<(), SessionError> {
        let addrs: Vec<SocketAddr> = resolve_cached(cache, &req.target.host)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, req.target.port))
            .collect();
        if addrs.is_empty() {
            self.refuse(rec, V4_REJECTED, Rep::HostUnreachable, "failed:unresolvable");
            return Ok(());
        }
        match connect_any(&addrs, nonzero(self.opts.connect_timeout)) {
            Ok(s) => {
                let bound = s.local_addr().map(Target::from_socket).unwrap_or_else(|_| unspecified());
                self.grant(&bound);
                self.relay(s, Vec::new(), rec)
            }
            Err(e) => {
                self.refuse(rec, V4_REJECTED, rep_of(&e), &format!("failed:connect:{e}"));
                Ok(())
            }
        }
    }

    fn direct_bind(
        &mut self,
        req: &Request,
        cache: &mut Option<Vec<IpAddr>>,
        rec: &mut Record,
    ) -> Result<(), SessionError> {
        let peers = resolve_cached(cache, &req.target.host);
        let Some(&toward) = peers.first() else {
            self.refuse(rec, V4_REJECTED, Rep::HostUnreachable, "failed:unresolvable");
            return Ok(());
        };
        // Listen on the address this host uses toward the destination.
        let any: IpAddr = if toward.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let listen_ip = UdpSocket::bind((any, 0))
            .and_then(|u| u.connect((toward, req.target.port.max(1))).map(|()| u))
            .and_then(|u| u.local_addr())
            .map(|a| a.ip())
            .or_else(|e| self.local.map(|l| l.ip()).ok_or(e));
        let listener = match listen_ip.and_then(|ip| TcpListener::bind((ip, 0))) {
            Ok(l) => l,
            Err(e) => {
                self.refuse(rec, V4_REJECTED, Rep::GeneralFailure, &format!("failed:bind:{e}"));
                return Ok(());
            }
        };
        let bound = listener.local_addr().map(Target::from_socket).map_err(sys("find the listening address"))?;
        self.grant(&bound);
        listener.set_nonblocking(true).map_err(sys("make the listener non-blocking"))?;
        let deadline = Deadline::after(nonzero(self.opts.connect_timeout));
        let accepted = loop {
            match wait_one(listener.as_fd(), Interest::Read, deadline) {
                Ok(None) => break Err(io::Error::new(io::ErrorKind::TimedOut, "nobody connected")),
                Err(e) => break Err(e),
                Ok(Some(_)) => match listener.accept() {
                    Ok(x) => break Ok(x),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => break Err(e),
                },
            }
        };
        let (s, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                self.refuse(rec, V4_REJECTED, Rep::TtlExpired, &format!("failed:bind-wait:{e}"));
                return Ok(());
            }
        };
        let peer_ip = canonical(peer.ip());
        if !toward.is_unspecified() && !peers.contains(&peer_ip) {
            self.refuse(rec, V4_REJECTED, Rep::NotAllowed, &format!("refused:bind-peer:{peer}"));
            return Ok(());
        }
        s.set_nonblocking(false).map_err(sys("make the socket blocking"))?;
        self.grant(&Target::from_socket(peer));
        self.relay(s, Vec::new(), rec)
    }

    fn udp(
        &mut self,
        req: &Request,
        config: &Config,
        user: Option<&str>,
        rec: &mut Record,
        upstream: Option<(TcpStream, SocketAddr)>,
    ) -> Result<(), SessionError> {
        let control = self.input.take().ok_or(SessionError::NoClient)?;
        let local_ip = self.local.map(|l| l.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let relay = match UdpSocket::bind((local_ip, 0)) {
            Ok(u) => u,
            Err(e) => {
                self.refuse(rec, V4_REJECTED, Rep::GeneralFailure, &format!("failed:udp-bind:{e}"));
                return Ok(());
            }
        };
        let bound = relay.local_addr().map(Target::from_socket).map_err(sys("find the UDP address"))?;
        self.grant(&bound);
        // The client's datagrams come from its address, and from the port
        // it named (0: any, fixed by its first datagram).
        let expected = match &req.target.host {
            Host::Ip(ip) if !ip.is_unspecified() => Some(*ip),
            _ => None,
        };
        let client_ip = self.client.ip();
        let mut permitted = |t: &Target| {
            let q = Query { client: client_ip, user, dest: &t.host, port: t.port };
            let mut cache = None;
            let mut addrs = || resolve_cached(&mut cache, &t.host);
            if !config.sockd.first_match(&q, &mut addrs).is_some_and(|r| r.action == ServerAction::Permit) {
                return udp::Verdict::Drop;
            }
            match &config.socks {
                None => udp::Verdict::Direct,
                Some(s) => match s.first_match(&q, &mut addrs).map(|r| &r.action) {
                    Some(ClientAction::Direct) => udp::Verdict::Direct,
                    Some(ClientAction::Sockd(_)) => udp::Verdict::Upstream,
                    Some(ClientAction::Deny) | None => udp::Verdict::Drop,
                },
            }
        };
        let report = udp::associate(
            &control,
            &relay,
            udp::Peer { ip: expected.unwrap_or(client_ip), port: req.target.port },
            nonzero(self.opts.idle_timeout),
            &mut permitted,
            upstream.as_ref().map(|(control, relay)| udp::UpstreamAssociation { control, relay: *relay }),
        )
        .map_err(sys("relay UDP"))?;
        rec.bytes_out = report.bytes_out;
        rec.bytes_in = report.bytes_in;
        rec.outcome = format!("ok:udp:{}-datagrams-dropped", report.dropped);
        Ok(())
    }

    /// Refuses a route through this server itself; whether it did.
    fn refuse_loop(&self, list: &[Upstream], rec: &mut Record) -> bool {
        let Some(local) = self.local else { return false };
        for u in list {
            let ips = match &u.host {
                Host::Ip(ip) => vec![*ip],
                Host::Name(n) => resolve(n),
            };
            if u.port == local.port() && ips.contains(&local.ip()) {
                self.refuse(rec, V4_REJECTED, Rep::NotAllowed, &format!("refused:loop:{u}"));
                return true;
            }
        }
        false
    }

    /// UDP ASSOCIATE through the first SOCKS5 upstream that grants one.
    fn udp_via_upstreams(
        &mut self,
        list: &[Upstream],
        req: &Request,
        config: &Config,
        user: Option<&str>,
        rec: &mut Record,
    ) -> Result<(), SessionError> {
        let marks = BadMarks::new(self.opts.state_dir.as_deref(), self.opts.bad_for);
        // We do not know our UDP address toward the upstream yet: 0.0.0.0:0
        // (RFC 1928: the upstream then takes the TCP peer's address).
        let zero = Target { host: Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port: 0 };
        let mut last = (Rep::CommandNotSupported, "failed:no-socks5-upstream-for-udp".to_owned());
        for u in marks.order(list) {
            if u.protocol != Protocol::Socks5 {
                continue;
            }
            rec.via = u.to_string();
            match self.upstream_handshake(u, Command::UdpAssociate, &zero, &[]) {
                Ok((stream, _, bound)) => {
                    marks.mark_good(u);
                    let peer = stream.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    let ip = match &bound.host {
                        Host::Ip(ip) if !ip.is_unspecified() => *ip,
                        Host::Ip(_) => peer,
                        Host::Name(n) => resolve(n).first().copied().unwrap_or(peer),
                    };
                    return self.udp(req, config, user, rec, Some((stream, SocketAddr::new(ip, bound.port))));
                }
                Err(failure) => last = upstream_failed(&marks, u, failure),
            }
        }
        self.refuse(rec, V4_REJECTED, last.0, &last.1);
        Ok(())
    }

    fn via_upstreams(
        &mut self,
        list: &[Upstream],
        req: &Request,
        cache: &mut Option<Vec<IpAddr>>,
        rec: &mut Record,
    ) -> Result<(), SessionError> {
        let marks = BadMarks::new(self.opts.state_dir.as_deref(), self.opts.bad_for);
        // A SOCKS4 client's USERID goes on (the original did); a SOCKS5
        // client's RFC 1929 name and password never do.
        let userid = match self.version {
            Version::V4 => rec.user.clone().unwrap_or_default(),
            Version::V5 => Vec::new(),
        };
        let mut last = (Rep::GeneralFailure, "failed:no-usable-upstream".to_owned());
        for u in marks.order(list) {
            rec.via = u.to_string();
            let target = match (&req.target.host, u.protocol) {
                (Host::Name(_), Protocol::Socks4) => {
                    // Plain SOCKS4 takes addresses only: resolve here.
                    match resolve_cached(cache, &req.target.host).into_iter().find(IpAddr::is_ipv4) {
                        Some(ip) => Target { host: Host::Ip(ip), port: req.target.port },
                        None => {
                            last = (Rep::HostUnreachable, "failed:unresolvable".into());
                            continue;
                        }
                    }
                }
                _ => req.target.clone(),
            };
            match self.upstream_handshake(u, req.command, &target, &userid) {
                Ok((stream, hs, bound)) => {
                    marks.mark_good(u);
                    return self.through(stream, hs, bound, req, rec);
                }
                Err(failure) => last = upstream_failed(&marks, u, failure),
            }
        }
        self.refuse(rec, V4_REJECTED, last.0, &last.1);
        Ok(())
    }

    fn upstream_handshake(
        &self,
        u: &Upstream,
        command: Command,
        target: &Target,
        userid: &[u8],
    ) -> Result<(TcpStream, ClientHandshake, Target), UpstreamFailure> {
        let (mut hs, first) = ClientHandshake::new(u.protocol, command, target, userid, u.credentials.as_ref())
            .map_err(UpstreamFailure::Protocol)?;
        let timeout = nonzero(self.opts.connect_timeout);
        let deadline = Deadline::after(timeout);
        let addrs: Vec<SocketAddr> = match &u.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, u.port)],
            Host::Name(n) => resolve(n).into_iter().map(|ip| SocketAddr::new(ip, u.port)).collect(),
        };
        let s = connect_any(&addrs, timeout).map_err(UpstreamFailure::Connect)?;
        write_all(&s, &first, deadline).map_err(UpstreamFailure::Connect)?;
        let bound = wait_granted(&s, &mut hs, deadline)?;
        Ok((s, hs, bound))
    }

    /// After the upstream granted the request: BIND's second reply, then
    /// the relay.
    fn through(
        &mut self,
        s: TcpStream,
        mut hs: ClientHandshake,
        bound: Target,
        req: &Request,
        rec: &mut Record,
    ) -> Result<(), SessionError> {
        let mut bound = bound;
        if let Host::Ip(ip) = bound.host {
            // 0.0.0.0: the upstream's own address.
            if ip.is_unspecified() {
                if let Ok(p) = s.peer_addr() {
                    bound.host = Host::ip(p.ip());
                }
            }
        }
        self.grant(&bound);
        if req.command == Command::Bind {
            hs.expect_second_reply();
            let deadline = Deadline::after(nonzero(self.opts.connect_timeout));
            match wait_granted(&s, &mut hs, deadline) {
                Ok(peer) => self.grant(&peer),
                Err(UpstreamFailure::Protocol(e)) => {
                    self.refuse(rec, V4_REJECTED, e.rep(), &format!("failed:upstream-bind:{e}"));
                    return Ok(());
                }
                Err(UpstreamFailure::Connect(e)) => {
                    self.refuse(rec, V4_REJECTED, rep_of(&e), &format!("failed:upstream-bind:{e}"));
                    return Ok(());
                }
            }
        }
        let leftover = hs.take_leftover();
        self.relay(s, leftover, rec)
    }

    fn relay(&mut self, server: TcpStream, leftover: Vec<u8>, rec: &mut Record) -> Result<(), SessionError> {
        let (Some(input), Some(output)) = (self.input.take(), self.output.take()) else {
            return Err(SessionError::NoClient);
        };
        let server_out: OwnedFd = server.try_clone().map_err(sys("duplicate a socket"))?.into();
        let server_in: OwnedFd = server.into();
        let report = ByteRelay::new(
            LegSpec { src: input.into(), dst: server_out, leftover: Vec::new() },
            LegSpec { src: server_in, dst: output, leftover },
        )
        .map_err(sys("set up the relay"))?
        .idle_timeout(Some(nonzero(self.opts.idle_timeout)))
        .run()
        .map_err(sys("relay"))?;
        rec.bytes_out = report.legs[0].moved;
        rec.bytes_in = report.legs[1].moved;
        rec.outcome = match report.outcome {
            RelayEnd::Finished => "ok".into(),
            RelayEnd::IdleTimeout => "ok:idle-timeout".into(),
        };
        Ok(())
    }
}

fn wait_granted(s: &TcpStream, hs: &mut ClientHandshake, deadline: Deadline) -> Result<Target, UpstreamFailure> {
    let mut buf = [0u8; 1024];
    let mut data: Vec<u8> = Vec::new();
    loop {
        match hs.push(&std::mem::take(&mut data)).map_err(UpstreamFailure::Protocol)? {
            ClientStep::Granted(t) => return Ok(t),
            ClientStep::Send(v) => write_all(s, &v, deadline).map_err(UpstreamFailure::Connect)?,
            ClientStep::NeedMore => match read_some(s, &mut buf, deadline) {
                Ok(0) => return Err(UpstreamFailure::Protocol(hs.eof())),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) => return Err(UpstreamFailure::Connect(e)),
            },
        }
    }
}

fn unspecified() -> Target {
    Target { host: Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port: 0 }
}

/// The address a SOCKS4 reply can carry.
fn v4_address(t: &Target) -> Option<SocketAddr> {
    match &t.host {
        Host::Ip(ip) => Some(SocketAddr::new(*ip, t.port)),
        Host::Name(n) => resolve(n).into_iter().find(IpAddr::is_ipv4).map(|ip| SocketAddr::new(ip, t.port)),
    }
}

/// Tries each address in turn, each for at most `timeout`.
/// What a failed upstream means for the next ones: it is marked bad when
/// it could not be reached or broke the protocol, and the reply and log
/// outcome to give if no later one does better.
fn upstream_failed(marks: &BadMarks, u: &Upstream, failure: UpstreamFailure) -> (Rep, String) {
    match failure {
        UpstreamFailure::Connect(e) => {
            marks.mark_bad(u);
            (rep_of(&e), format!("failed:upstream-connect:{e}"))
        }
        UpstreamFailure::Protocol(e) => {
            if e.upstream_broken() {
                marks.mark_bad(u);
            }
            (e.rep(), format!("failed:upstream:{e}"))
        }
    }
}

fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => {
                chainmail_sys::net::set_nodelay(&s);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn rep_of(e: &io::Error) -> Rep {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Rep::ConnectionRefused,
        io::ErrorKind::HostUnreachable | io::ErrorKind::TimedOut => Rep::HostUnreachable,
        io::ErrorKind::NetworkUnreachable => Rep::NetworkUnreachable,
        _ => Rep::GeneralFailure,
    }
}

/// The stack of a thread that only waits for a child.
const REAPER_STACK: usize = 64 * 1024;

/// Starts a rule's `: command`, without a shell: the program is exec'd
/// with its arguments as written, the request's values in `SOCKD_*`
/// variables, stdin from /dev/null and stdout to our stderr (the log), so
/// nothing of it reaches the client. rsockd does not wait for it.
fn run_command(argv: Option<&[String]>, env: &CommandEnv) {
    let Some((prog, args)) = argv.and_then(|a| a.split_first()) else { return };
    let stdout = std::io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or_else(|_| Stdio::null());
    let r = Process::new(prog)
        .args(args)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn();
    match r {
        // Reaped by a thread of its own, so that a long relay leaves no
        // zombie behind.
        // (A thread that cannot be started leaves a zombie, not a panic.)
        Ok(mut child) => {
            let reaper = std::thread::Builder::new().name("reaper".into()).stack_size(REAPER_STACK);
            if let Err(e) = reaper.spawn(move || child.wait()) {
                diag::warn(format_args!("unable to start a thread to wait for {prog}: {e}"));
            }
        }
        Err(e) => diag::warn(format_args!("unable to run {prog}: {e}")),
    }
}
