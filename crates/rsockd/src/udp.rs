//! UDP ASSOCIATE: datagrams between the client and the destinations its
//! headers name, for as long as the control connection stays open.
//!
//! Two sockets: one facing the client (its datagrams must come from its
//! address, and from the port it named or, when it named 0, from the port
//! of its first datagram), one per family facing the destinations (only
//! datagrams from addresses the client wrote to come back). Each new
//! destination is checked against both files once (the caller's
//! `permitted`): dropped, sent direct, or sent through the association
//! rsockd holds with a SOCKS5 upstream, header and all (the name in it
//! unresolved), whose datagrams come back to the client as they are.
//! Fragments are dropped.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use chainmail_socks::wire::{canonical, decode_udp, encode_udp};
use chainmail_socks::{Host, Target};
use chainmail_sys::Deadline;
use chainmail_sys::fd;
use chainmail_sys::poll::{Interest, PollSet};

use crate::config::resolve;

/// Destinations and peers remembered, at most.
const MAX_REMEMBERED: usize = 1024;
/// Datagrams taken from one socket per wake-up, at most.
const BATCH: usize = 64;

/// Where the client's datagrams come from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Default)]
pub struct UdpReport {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Control,
    UpstreamControl,
    Client,
    Out4,
    Out6,
}

/// What to do with datagrams to a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Drop them.
    Drop,
    /// Send them to the destination.
    Direct,
    /// Send them through the upstream's association.
    Upstream,
}

/// An association with a SOCKS5 upstream: its control connection and its
/// relay address.
#[derive(Debug)]
pub struct UpstreamAssociation<'a> {
    pub control: &'a TcpStream,
    pub relay: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Direct(SocketAddr),
    Upstream,
}

pub fn associate(
    control: &TcpStream,
    relay: &UdpSocket,
    client: Peer,
    idle: Duration,
    permitted: &mut dyn FnMut(&Target) -> Verdict,
    upstream: Option<UpstreamAssociation<'_>>,
) -> io::Result<UdpReport> {
    let out4 = UdpSocket::bind("0.0.0.0:0")?;
    let out6 = UdpSocket::bind("[::]:0").ok();
    relay.set_nonblocking(true)?;
    out4.set_nonblocking(true)?;
    if let Some(o) = &out6 {
        o.set_nonblocking(true)?;
    }
    control.set_nonblocking(true)?;
    let client_ip = canonical(client.ip);
    let mut client_port = (client.port != 0).then_some(client.port);
    let mut client_addr: Option<SocketAddr> = None;
    let mut peers: HashSet<SocketAddr> = HashSet::new();
    let mut verdicts: HashMap<Target, Option<Route>> = HashMap::new();
    if let Some(u) = &upstream {
        u.control.set_nonblocking(true)?;
    }
    let mut report = UdpReport::default();
    let mut poll = PollSet::with_capacity(5);
    let mut buf = vec![0u8; 65536];
    let mut deadline = Deadline::after(idle);
    loop {
        let mut round = poll.round();
        round.register(control.as_fd(), Interest::Read, Slot::Control);
        round.register(relay.as_fd(), Interest::Read, Slot::Client);
        round.register(out4.as_fd(), Interest::Read, Slot::Out4);
        if let Some(o) = &out6 {
            round.register(o.as_fd(), Interest::Read, Slot::Out6);
        }
        if let Some(u) = &upstream {
            round.register(u.control.as_fd(), Interest::Read, Slot::UpstreamControl);
        }
        let ready: Vec<Slot> = round.wait(deadline)?.iter().map(|(t, _)| *t).collect();
        if ready.is_empty() && deadline.expired() {
            return Ok(report);
        }
        for slot in ready {
            match slot {
                Slot::UpstreamControl => {
                    let Some(u) = &upstream else { continue };
                    match fd::read(u.control, &mut buf) {
                        Ok(0) => return Ok(report),
                        Ok(_) => {}
                        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                        Err(_) => return Ok(report),
                    }
                }
                Slot::Control => match fd::read(control, &mut buf) {
                    Ok(0) => return Ok(report),
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(_) => return Ok(report),
                },
                Slot::Client => {
                    for _ in 0..BATCH {
                        let (n, from) = match relay.recv_from(&mut buf) {
                            Ok(x) => x,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        };
                        if canonical(from.ip()) != client_ip || client_port.is_some_and(|p| p != from.port()) {
                            report.dropped += 1;
                            continue;
                        }
                        client_port = Some(from.port());
                        client_addr = Some(from);
                        let Ok((target, off)) = decode_udp(&buf[..n]) else {
                            report.dropped += 1;
                            continue;
                        };
                        let route = match verdicts.get(&target) {
                            Some(d) => *d,
                            None => {
                                let d = match permitted(&target) {
                                    Verdict::Drop => None,
                                    Verdict::Upstream => upstream.as_ref().map(|_| Route::Upstream),
                                    Verdict::Direct => {
                                        let ip = match &target.host {
                                            Host::Ip(ip) => Some(*ip),
                                            Host::Name(n) => resolve(n).first().copied(),
                                        };
                                        ip.map(|ip| Route::Direct(SocketAddr::new(ip, target.port)))
                                    }
                                };
                                if verdicts.len() < MAX_REMEMBERED {
                                    verdicts.insert(target.clone(), d);
                                }
                                d
                            }
                        };
                        // Through the upstream the datagram goes as it came,
                        // header included.
                        let (dest, datagram) = match (route, &upstream) {
                            (Some(Route::Direct(d)), _) => (d, &buf[off..n]),
                            (Some(Route::Upstream), Some(u)) => (u.relay, &buf[..n]),
                            _ => {
                                report.dropped += 1;
                                continue;
                            }
                        };
                        let sock = if dest.is_ipv4() { Some(&out4) } else { out6.as_ref() };
                        match sock.map(|s| s.send_to(datagram, dest)) {
                            Some(Ok(_)) => {
                                report.bytes_out += (n - off) as u64;
                                if peers.len() < MAX_REMEMBERED {
                                    peers.insert(dest);
                                }
                                deadline = Deadline::after(idle);
                            }
                            _ => report.dropped += 1,
                        }
                    }
                }
                Slot::Out4 | Slot::Out6 => {
                    let sock = if slot == Slot::Out4 { Some(&out4) } else { out6.as_ref() };
                    let Some(sock) = sock else { continue };
                    for _ in 0..BATCH {
                        let (n, from) = match sock.recv_from(&mut buf) {
                            Ok(x) => x,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        };
                        let (Some(to), true) = (client_addr, peers.contains(&from)) else {
                            report.dropped += 1;
                            continue;
                        };
                        // From the upstream's relay: already with its header.
                        let from_upstream = upstream.as_ref().is_some_and(|u| u.relay == from);
                        let d = if from_upstream {
                            buf[..n].to_vec()
                        } else {
                            encode_udp(&Target::from_socket(from), &buf[..n])
                        };
                        if relay.send_to(&d, to).is_ok() {
                            report.bytes_in += n as u64;
                            deadline = Deadline::after(idle);
                        } else {
                            report.dropped += 1;
                        }
                    }
                }
            }
        }
    }
}
