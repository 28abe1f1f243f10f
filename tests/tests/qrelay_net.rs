//! qrelay's network libraries against peers in the test: the `socket`
//! library (TCP, Unix stream, UDP over IPv4 and IPv6, seqpacket and
//! datagram on abstract names, multicast in a network namespace of its
//! own, a peer that never reads, a TCP connect that never completes),
//! `control_client` (the datagrams decoded field by field from the
//! beng-proxy control protocol's description) and the Pond log datagram
//! (decoded from libcommon's log protocol description, CRC included).

mod qmqp_support;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram, UnixListener};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use chainmail_qmqp::encode_request;
use chainmail_tests::{TestDir, secs};
use qmqp_support::*;

fn sock(dir: &TestDir) -> String {
    dir.join("qrelay.sock").display().to_string()
}

/// A config with one listener on dir/qrelay.sock and `handler` as its body.
fn config(dir: &TestDir, globals: &str, handler: &str) -> String {
    format!("{globals}\nqmqp_listen('{}', function(m)\n{handler}\nend)\n", sock(dir))
}

/// Sends one message to `rcpt` straight from this process: the reply.
fn submit(dir: &TestDir, message: &[u8], rcpt: &str) -> Vec<u8> {
    raw_client(&dir.join("qrelay.sock"), &encode_request(message, b"a@example.org", &[rcpt.as_bytes()]), false)
}

/// An abstract socket name of this test run.
fn abstract_name(what: &str) -> String {
    format!("chainmail-qrelay-net-{}-{what}", std::process::id())
}

fn udp(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind(addr).expect("bind a UDP socket");
    s.set_read_timeout(Some(secs(30))).expect("timeout");
    s
}

fn recv_udp(s: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let n = s.recv(&mut buf).expect("a datagram within 30 s");
    buf.truncate(n);
    buf
}

fn recv_unix(s: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; 70000];
    let n = s.recv(&mut buf).expect("a datagram within 30 s");
    buf.truncate(n);
    buf
}

/// Accepts one stream connection on another thread and sends what it read
/// until EOF (or a pause of 30 s).
fn collect_stream<S: Read + Send + 'static>(accept: impl FnOnce() -> S + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = accept();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let _ = tx.send(all);
    });
    rx
}

/// A seqpacket peer on an abstract name (python3's socket module: the
/// standard library has no seqpacket listener): every message of the
/// first connection, in order, once it closes.
struct SeqpacketPeer {
    peer: chainmail_tests::peer::Peer,
    out: std::path::PathBuf,
}

impl SeqpacketPeer {
    fn start(dir: &TestDir, name: &str) -> SeqpacketPeer {
        let out = dir.join("seqpacket.got");
        let script = "import socket, sys, os\n\
            name, out = sys.argv[1], sys.argv[2]\n\
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
            s.bind('\\0' + name)\n\
            s.listen(4)\n\
            s.settimeout(60)\n\
            print('ready', flush=True)\n\
            c, _ = s.accept()\n\
            c.settimeout(60)\n\
            got = b''\n\
            while True:\n\
            \x20   d = c.recv(65536)\n\
            \x20   if not d: break\n\
            \x20   got += len(d).to_bytes(4, 'big') + d\n\
            open(out + '.tmp', 'wb').write(got)\n\
            os.rename(out + '.tmp', out)\n";
        let mut cmd = Command::new(chainmail_tests::find_program("python3"));
        cmd.arg("-c").arg(script).arg(name).arg(&out);
        let (peer, stdout) =
            chainmail_tests::peer::Peer::spawn(cmd, dir.join("seqpacket.stderr"), "the seqpacket peer");
        let line = chainmail_tests::peer::first_line(stdout.expect("stdout"), secs(30));
        assert_eq!(line.as_deref(), Some("ready\n"), "{}", peer.stderr());
        SeqpacketPeer { peer, out }
    }

    /// The messages, once the connection closed (bounded wait).
    fn messages(mut self) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + secs(30);
        while self.peer.exited().is_none() {
            assert!(Instant::now() < deadline, "the seqpacket peer did not finish: {}", self.peer.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        let all = std::fs::read(&self.out).unwrap_or_else(|e| panic!("{e}: {}", self.peer.stderr()));
        length_prefixed(&all)
    }
}

/// Splits records of a 32-bit big-endian length and that many bytes.
fn length_prefixed(mut rest: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().expect("4")) as usize;
        out.push(rest[4..4 + n].to_vec());
        rest = &rest[4 + n..];
    }
    out
}

#[test]
fn socket_library_with_stream_datagram_and_seqpacket_peers() {
    let dir = TestDir::new("qrelay_net_socket");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp_port = tcp.local_addr().expect("addr").port();
    let tcp_got = collect_stream(move || tcp.accept().expect("accept").0);
    let named = TcpListener::bind("127.0.0.1:0").expect("bind");
    let named_port = named.local_addr().expect("addr").port();
    let named_got = collect_stream(move || named.accept().expect("accept").0);
    let stream_path = dir.join("stream.sock");
    let unix = UnixListener::bind(&stream_path).expect("bind");
    let unix_got = collect_stream(move || unix.accept().expect("accept").0);
    let udp4 = udp("127.0.0.1:0");
    let udp6 = udp("[::1]:0");
    let seq_name = abstract_name("seq");
    let seq_peer = SeqpacketPeer::start(&dir, &seq_name);
    let dgram_name = abstract_name("dgram");
    let dgram = UnixDatagram::bind_addr(&UnixSocketAddr::from_abstract_name(&dgram_name).expect("name")).expect("bind");
    dgram.set_read_timeout(Some(secs(30))).expect("timeout");
    let globals = format!(
        "tcp = assert(socket:connect('127.0.0.1:{tcp_port}'))
        named = assert(socket:connect('localhost:{named_port}', {{type='stream'}}))
        unix = assert(socket:connect('{stream}'))
        udp = assert(socket:connect('127.0.0.1:{u4}', {{type='dgram'}}))
        seq = assert(socket:connect('@{seq_name}', {{type='seqpacket'}}))
        dg = assert(socket:connect('@{dgram_name}', {{type='dgram'}}))
        local x, e = socket:connect('{dir}/nothing-here.sock')
        startup_error = tostring(x) .. ':' .. tostring(e)",
        stream = stream_path.display(),
        u4 = udp4.local_addr().expect("addr").port(),
        dir = dir.path().display(),
    );
    let handler = format!(
        "local r = m.recipients[1]
        local out = {{}}
        local function note(a, b) out[#out + 1] = tostring(a) .. '/' .. tostring(b) end
        note(tcp:send('tcp ' .. r .. '\\n'))
        note(named:send('named ' .. r .. '\\n'))
        note(unix:send('[unix ' .. r .. ']', 2, -2))
        note(udp:send('xxudp ' .. r, 3))
        note(seq:send('seq one'))
        note(seq:send('seq two', -3))
        note(dg:send('dgram ' .. r, 1, 5))
        local v6 = socket:connect('[::1]:{u6}', {{type='dgram'}})
        note(v6:send('v6 ' .. r))
        v6:close()
        note(v6:send('after close'))
        note(socket:connect('localhost:{named_port}'))
        note(socket:connect('127.0.0.1:{named_port}', {{type='raw'}}))
        m.account = startup_error .. ';' .. table.concat(out, ';')
        if r == 'last@x' then tcp:close() named:close() unix:close() seq:close() end
        return m:discard()",
        u6 = udp6.local_addr().expect("addr").port(),
    );
    let q = Qrelay::start(&dir, &config(&dir, &globals, &handler));
    assert_eq!(submit(&dir, b"m\n", "first@x"), b"10:Kdiscarded,");
    assert_eq!(submit(&dir, b"m\n", "last@x"), b"10:Kdiscarded,");
    let log = q.wait_log_count("reply=Kdiscarded", 2);
    let first = log.lines().find(|l| l.contains("to=<first@x>")).expect("the first message's line");
    let account = first.split("account=").nth(1).expect("account").split(" from=").next().expect("account");
    let want = "nil:connect to {DIR}/nothing-here.sock: No such file or directory;\
        12/nil;14/nil;12/nil;11/nil;7/nil;3/nil;5/nil;10/nil;nil/socket is closed;\
        nil/\"localhost\" is not a numeric address (names are resolved only at startup);\
        nil/connect: unknown socket type \"raw\""
        .replace("{DIR}", &dir.path().display().to_string());
    assert_eq!(account, want, "{log}");
    assert_eq!(tcp_got.recv_timeout(secs(30)).expect("tcp"), b"tcp first@x\ntcp last@x\n");
    assert_eq!(named_got.recv_timeout(secs(30)).expect("named"), b"named first@x\nnamed last@x\n");
    assert_eq!(unix_got.recv_timeout(secs(30)).expect("unix"), b"unix first@xunix last@x");
    assert_eq!(recv_udp(&udp4), b"udp first@x");
    assert_eq!(recv_udp(&udp4), b"udp last@x");
    assert_eq!(recv_udp(&udp6), b"v6 first@x");
    assert_eq!(recv_unix(&dgram), b"dgram");
    // Seqpacket keeps the message boundaries.
    let seq = seq_peer.messages();
    assert_eq!(seq, [&b"seq one"[..], b"two", b"seq one", b"two"].map(|s| s.to_vec()).to_vec());
}

#[test]
fn a_peer_that_never_reads_and_a_connect_that_never_completes_do_not_hold_up_the_daemon() {
    let dir = TestDir::new("qrelay_net_stuck");
    let path = dir.join("stuck.sock");
    let stuck = UnixListener::bind(&path).expect("bind");
    // Accepts and keeps the connection, never reading.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(stuck.accept().expect("accept").0);
    });
    let ((_full, _fillers), full_port) = full_listener();
    let globals = format!("stuck = assert(socket:connect('{}'))", path.display());
    let handler = format!(
        "local r = m.recipients[1]
        if r == 'fill@x' then
            local chunk = string.rep('x', 65536)
            local total, n, e = 0, 0, nil
            repeat
                n, e = stuck:send(chunk)
                if n then total = total + n end
            until not n or total > 64 * 1024 * 1024
            m.account = 'sent ' .. tostring(total > 0) .. ' then ' .. tostring(e)
        elseif r == 'syn@x' then
            local s, e = socket:connect('127.0.0.1:{full_port}')
            local n, e2 = s:send('hello')
            m.account = tostring(e) .. ' then ' .. tostring(n) .. ' ' .. tostring(e2)
        end
        return m:discard()"
    );
    let q = Qrelay::start(&dir, &config(&dir, &globals, &handler));
    // Kept, never read, until the test ends.
    let _conn = rx.recv_timeout(secs(30)).expect("qrelay connected at startup");
    for rcpt in ["fill@x", "fill@x", "syn@x", "other@x"] {
        let start = Instant::now();
        assert_eq!(submit(&dir, b"m\n", rcpt), b"10:Kdiscarded,", "{rcpt}");
        assert!(start.elapsed() < secs(3), "{rcpt} took {:?}", start.elapsed());
    }
    let log = q.wait_log_count("reply=Kdiscarded", 4);
    // The first fill sent until the buffer was full, the second could
    // send nothing.
    assert_eq!(log.matches("account=sent true then would block").count(), 1, "{log}");
    assert_eq!(log.matches("account=sent false then would block").count(), 1, "{log}");
    assert!(log.contains("account=nil then nil would block"), "{log}");
}

/// One command of a control datagram.
#[derive(Debug, PartialEq, Eq)]
struct ControlCommand {
    command: u16,
    payload: Vec<u8>,
}

/// Decodes a control datagram as the beng-proxy documentation describes
/// it: the magic 0x63046101, then commands, each a big-endian 16-bit
/// length and 16-bit command, the payload, and null bytes up to the next
/// multiple of 4.
fn decode_control(d: &[u8]) -> Vec<ControlCommand> {
    assert!(d.len() >= 4 && d.len() % 4 == 0, "length {}: {}", d.len(), d.escape_ascii());
    assert_eq!(u32::from_be_bytes(d[..4].try_into().expect("4")), 0x6304_6101, "magic");
    let mut rest = &d[4..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 4, "a truncated header");
        let length = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let command = u16::from_be_bytes([rest[2], rest[3]]);
        let padded = length.div_ceil(4) * 4;
        assert!(rest.len() >= 4 + padded, "a truncated payload");
        let payload = rest[4..4 + length].to_vec();
        assert!(rest[4 + length..4 + padded].iter().all(|&b| b == 0), "padding is null bytes");
        out.push(ControlCommand { command, payload });
        rest = &rest[4 + padded..];
    }
    out
}

#[test]
fn control_client_datagrams_decoded_field_by_field() {
    let dir = TestDir::new("qrelay_net_control");
    let v4 = udp("127.0.0.1:0");
    let v6 = udp("[::1]:0");
    let path = dir.join("control.sock");
    let local = UnixDatagram::bind(&path).expect("bind");
    local.set_read_timeout(Some(secs(30))).expect("timeout");
    let name = abstract_name("control");
    let abs = UnixDatagram::bind_addr(&UnixSocketAddr::from_abstract_name(&name).expect("name")).expect("bind");
    abs.set_read_timeout(Some(secs(30))).expect("timeout");
    let globals = format!(
        "c = assert(control_client:new('127.0.0.1:{p4}'))
        c6 = assert(control_client:new('[::1]:{p6}'))
        cl = assert(control_client:new('{path}'))
        ca = assert(control_client:new('@{name}'))
        -- IPv4 and IPv6 without a port take the default (5478).
        assert(control_client:new('127.0.0.1'))
        assert(control_client:new('::1'))
        local x, e = control_client:new('not an address')
        assert(x == nil and e:find('bad address'), e)",
        p4 = v4.local_addr().expect("addr").port(),
        p6 = v6.local_addr().expect("addr").port(),
        path = path.display(),
    );
    let handler = "local b = c:build()
        local same = b:cancel_job('part', 'job42') == b
        b:discard_session('sess'):disconnect_database('acct'):fade_children('tag1')
            :flush_filter_cache('ftag'):flush_http_cache('htag'):reject_client('192.0.2.1')
            :reset_limiter('acct22'):tarpit_client('2001:db8::1'):terminate_children('tag2', 'tag3')
        local ok = c:send(b)
        c6:send(c6:build():fade_children('v6'))
        cl:send(cl:build():flush_http_cache('local'))
        ca:send(ca:build():terminate_children(''))
        local x, e = c:send('not a builder')
        m.account = tostring(same) .. ' ' .. tostring(ok) .. ' ' .. tostring(x) .. ' ' .. e
        return m:discard()";
    let q = Qrelay::start(&dir, &config(&dir, &globals, handler));
    assert_eq!(submit(&dir, b"m\n", "b@x"), b"10:Kdiscarded,");
    let cmd = |command: u16, payload: &[u8]| ControlCommand { command, payload: payload.to_vec() };
    assert_eq!(
        decode_control(&recv_udp(&v4)),
        vec![
            cmd(25, b"part\0job42"),
            cmd(14, b"sess"),
            cmd(20, b"acct"),
            cmd(8, b"tag1"),
            cmd(12, b"ftag"),
            cmd(15, b"htag"),
            cmd(23, b"192.0.2.1"),
            cmd(22, b"acct22"),
            cmd(24, b"2001:db8::1"),
            cmd(16, b"tag2"),
            cmd(16, b"tag3"),
        ]
    );
    assert_eq!(decode_control(&recv_udp(&v6)), vec![cmd(8, b"v6")]);
    assert_eq!(decode_control(&recv_unix(&local)), vec![cmd(15, b"local")]);
    assert_eq!(decode_control(&recv_unix(&abs)), vec![cmd(16, b"")]);
    q.wait_log("account=true true nil send: expected a builder from build()");
}

/// The Pond attributes qrelay sends, decoded.
#[derive(Debug, Default)]
struct PondRecord {
    timestamp_us: u64,
    site: Option<Vec<u8>>,
    message: Vec<u8>,
    length: u64,
    traffic: (u64, u64),
    duration_us: u64,
    kind: u8,
}

fn crc32_iso_hdlc(bytes: &[u8]) -> u32 {
    // Table-free, bit by bit, from the polynomial's definition.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let low = crc & 1;
            crc >>= 1;
            if low == 1 {
                crc ^= 0xedb8_8320;
            }
        }
    }
    !crc
}

/// Decodes a log datagram as libcommon's protocol description says: the
/// magic 0x63046103, attributes (a code byte and its payload; integers
/// big-endian, strings null-terminated), then a CRC-32 of what follows
/// the magic.
fn decode_pond(d: &[u8]) -> PondRecord {
    assert!(d.len() >= 8, "too short: {}", d.escape_ascii());
    assert_eq!(u32::from_be_bytes(d[..4].try_into().expect("4")), 0x6304_6103, "magic");
    let (body, crc) = d[4..].split_at(d.len() - 8);
    assert_eq!(u32::from_be_bytes(crc.try_into().expect("4")), crc32_iso_hdlc(body), "CRC");
    let mut r = PondRecord::default();
    let mut rest = body;
    let u64_at = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let mut last_code = 0u8;
    while let Some((&code, tail)) = rest.split_first() {
        assert!(code > last_code, "attributes sorted by code, each once: {code} after {last_code}");
        last_code = code;
        rest = match code {
            1 => {
                r.timestamp_us = u64_at(tail);
                &tail[8..]
            }
            3 | 13 => {
                let end = tail.iter().position(|&b| b == 0).expect("a null-terminated string");
                if code == 3 {
                    r.site = Some(tail[..end].to_vec());
                } else {
                    r.message = tail[..end].to_vec();
                }
                &tail[end + 1..]
            }
            9 => {
                r.length = u64_at(tail);
                &tail[8..]
            }
            10 => {
                r.traffic = (u64_at(tail), u64_at(&tail[8..]));
                &tail[16..]
            }
            11 => {
                r.duration_us = u64_at(tail);
                &tail[8..]
            }
            15 => {
                r.kind = tail[0];
                &tail[1..]
            }
            other => panic!("unexpected attribute {other}"),
        };
    }
    r
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("time").as_micros() as u64
}

#[test]
fn pond_datagrams_decoded_field_by_field() {
    let dir = TestDir::new("qrelay_net_pond");
    let pond = udp("127.0.0.1:0");
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"10:Kqueued 42,".to_vec())]);
    let globals = format!(
        "up = qmqp_resolve('{}')\nlog_server = log_resolve('127.0.0.1:{}')",
        up.entry,
        pond.local_addr().expect("addr").port()
    );
    let handler = "local r = m.recipients[1]
        if r == 'reject@x' then return m:reject() end
        if r == 'throw@x' then error('boom') end
        m.account = 'acct'
        m:insert_header('X-A', '1')
        return m:connect(up)";
    let q = Qrelay::start(&dir, &config(&dir, &globals, handler));
    let message = b"Subject: t\n\nbody\n";
    let uid = nix::unistd::getuid();
    let prefix = format!("X-A: 1\nReceived: from PID={} UID={uid} with QMQP\n", std::process::id());
    let request_bytes = |rcpt: &str| (encode_request(message, b"a@example.org", &[rcpt.as_bytes()]).len() - 4) as u64;

    let before = now_us();
    assert_eq!(submit(&dir, message, "relay@x"), b"10:Kqueued 42,");
    let r = decode_pond(&recv_udp(&pond));
    let after = now_us();
    assert!((before..=after).contains(&r.timestamp_us), "{before} <= {} <= {after}", r.timestamp_us);
    assert_eq!(r.site.as_deref(), Some(&b"acct"[..]));
    assert_eq!(r.message, b"from=<a@example.org> to=<relay@x> queued 42", "{}", r.message.escape_ascii());
    assert_eq!(r.length, (message.len() + prefix.len()) as u64);
    let received = request_bytes("relay@x");
    assert_eq!(r.traffic, (received, received + prefix.len() as u64));
    assert!(r.duration_us < after - before + 1, "{} us", r.duration_us);
    assert_eq!(r.kind, 3, "submission");
    let mut forwarded = prefix.as_bytes().to_vec();
    forwarded.extend_from_slice(message);
    assert_eq!(up.request(), encode_request(&forwarded, b"a@example.org", &[b"relay@x"]));

    assert_eq!(submit(&dir, message, "reject@x"), b"9:Drejected,");
    let r = decode_pond(&recv_udp(&pond));
    assert_eq!(r.site, None, "no account, no site");
    assert_eq!(r.message, b"from=<a@example.org> to=<reject@x> rejected");
    let short_prefix = format!("Received: from PID={} UID={uid} with QMQP\n", std::process::id());
    assert_eq!(r.length, (message.len() + short_prefix.len()) as u64);
    let received = request_bytes("reject@x");
    assert_eq!(r.traffic, (received, received + short_prefix.len() as u64));
    assert_eq!(r.kind, 3);

    // A script that fails forwards nothing.
    assert_eq!(submit(&dir, message, "throw@x"), b"14:Zscript failed,");
    let r = decode_pond(&recv_udp(&pond));
    assert_eq!(r.message, b"from=<a@example.org> to=<throw@x> script failed");
    assert_eq!(r.traffic, (request_bytes("throw@x"), 0));
    // The stderr line is still written.
    q.wait_log("to=<throw@x> size=17 reply=Zscript failed");
}

#[test]
fn a_bad_log_server_is_a_configuration_error() {
    let dir = TestDir::new("qrelay_net_bad_pond");
    for (value, want) in [
        ("'not an address'", "log_server: bad address"),
        ("42", "log_server must be an address string"),
        ("log_resolve('a b')", "bad address"),
    ] {
        let path = dir.join("config.lua");
        std::fs::write(&path, config(&dir, &format!("log_server = {value}"), "return m:discard()")).expect("write");
        let mut cmd = Command::new(chainmail_tests::bin("qrelay"));
        cmd.arg("--check").arg("--config").arg(&path).env_clear();
        let out = chainmail_tests::run::run(&mut cmd, b"", secs(30));
        assert_eq!(out.code(), Some(100), "{value}: {}", out.describe());
        assert!(out.stderr_str().contains(want), "{value}: {}", out.describe());
    }
}

/// Multicast needs a multicast route; the tests do not touch the host's
/// network, so qrelay runs in a network namespace of its own
/// (`unshare --net`, as root) with loopback up, multicast on and a route
/// for 239.0.0.0/8 there, and a receiver (python3) that joined the group
/// in the same namespace. The test talks to qrelay over its Unix socket
/// (a path: Unix sockets are not bound to a network namespace).
#[test]
fn multicast_in_a_network_namespace() {
    let unshare_works = Command::new(chainmail_tests::find_program("unshare"))
        .args(["--net", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let (Some(ip), Some(python), true) = (
        chainmail_tests::bins::try_find_program("ip"),
        chainmail_tests::bins::try_find_program("python3"),
        unshare_works,
    ) else {
        eprintln!("multicast_in_a_network_namespace: skipped (needs root for unshare --net and iproute2's ip)");
        return;
    };
    let dir = TestDir::new("qrelay_net_multicast");
    let got = dir.join("multicast.got");
    let receiver = dir.join("receiver.py");
    // Joins the group, then forks: the parent becomes qrelay (so that
    // the group is joined before qrelay runs), the child receives.
    std::fs::write(
        &receiver,
        format!(
            "import socket, struct, sys, os\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('239.1.2.3', 4555))\n\
             s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack('4s4s', socket.inet_aton('239.1.2.3'), socket.inet_aton('127.0.0.1')))\n\
             if os.fork() != 0:\n\
             \x20   s.close()\n\
             \x20   os.execv(sys.argv[1], sys.argv[1:])\n\
             s.settimeout(30)\n\
             got = b''\n\
             for i in range(3):\n\
             \x20   d = s.recv(70000)\n\
             \x20   got += struct.pack('>I', len(d)) + d\n\
             open('{got}.tmp', 'wb').write(got)\n\
             os.rename('{got}.tmp', '{got}')\n",
            got = got.display()
        ),
    )
    .expect("write the receiver");
    let globals = "mc = assert(socket:connect('239.1.2.3:4555', {type='dgram'}))
        cc = assert(control_client:new('239.1.2.3:4555'))
        log_server = '239.1.2.3:4555'";
    let handler = "mc:send('hello group') cc:send(cc:build():fade_children('all')) return m:discard()";
    let shell = format!(
        "{ip} link set lo up && {ip} link set lo multicast on && {ip} route add 239.0.0.0/8 dev lo || exit 111
        exec {python} {receiver} \"$@\"",
        ip = ip.display(),
        python = python.display(),
        receiver = receiver.display(),
    );
    let _q = Qrelay::start_with(&dir, &config(&dir, globals, handler), |program, args| {
        let mut cmd = Command::new(chainmail_tests::find_program("unshare"));
        cmd.args(["--net", "--", "/bin/sh", "-c", &shell, "sh"]).arg(program).args(args);
        cmd
    });
    assert_eq!(submit(&dir, b"m\n", "b@x"), b"10:Kdiscarded,");
    let deadline = Instant::now() + secs(30);
    while !got.exists() {
        assert!(Instant::now() < deadline, "the receiver got no 3 datagrams");
        std::thread::sleep(Duration::from_millis(20));
    }
    let datagrams = length_prefixed(&std::fs::read(&got).expect("read"));
    assert_eq!(datagrams.len(), 3);
    assert_eq!(datagrams[0], b"hello group");
    assert_eq!(decode_control(&datagrams[1]), vec![ControlCommand { command: 8, payload: b"all".to_vec() }]);
    let r = decode_pond(&datagrams[2]);
    assert_eq!(r.message, b"from=<a@example.org> to=<b@x> discarded");
}

/// The seed's `socket` and `control_client` examples, as written (the
/// seed's `[ff02:dead:beef]` is its rendering of `[ff02::dead:beef]`),
/// load: a connect that fails returns `nil, message` and the loading goes
/// on. They run in a network namespace of their own, where `@test` is a
/// seqpacket listener (python3's, handed to qrelay across exec) and no
/// other test's abstract names or ports are in the way.
#[test]
fn the_seed_examples_load() {
    let unshare_works = Command::new(chainmail_tests::find_program("unshare"))
        .args(["--net", "--", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let Some(python) = chainmail_tests::bins::try_find_program("python3").filter(|_| unshare_works) else {
        eprintln!("the_seed_examples_load: skipped (needs root for unshare --net)");
        return;
    };
    let dir = TestDir::new("qrelay_net_seed");
    let path = dir.join("config.lua");
    std::fs::write(
        &path,
        format!(
            "tcp = socket:connect('localhost:1234')
udp = socket:connect('localhost:4321', {{type='dgram'}})
multicast = socket:connect('[ff02::dead:beef]:2345', {{type='dgram'}})
unix = socket:connect('/run/test.socket')
abstract = socket:connect('@test', {{type='seqpacket'}})
abstract:send('hello world')
-- IPv4 (default port)
c = control_client:new('224.0.0.42')
-- IPv6 on default port
c = control_client:new('ff02::dead:beef')
-- IPv6 on non-default port (requires square brackets)
c = control_client:new('[ff02::dead:beef]:1234')
-- local socket
c = control_client:new('/run/cm4all/workshop/control')
-- abstract socket
c = control_client:new('@bp-control')
qmqp_listen('{sock}', function(m)
  c:send(c:build():fade_children('foo'):flush_http_cache('bar'))
  return m:discard()
end)
",
            sock = sock(&dir)
        ),
    )
    .expect("write");
    let script = "import socket, os, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
        s.bind('\\0test')\n\
        s.listen(4)\n\
        s.set_inheritable(True)\n\
        os.execv(sys.argv[1], sys.argv[1:])\n";
    let mut cmd = Command::new(chainmail_tests::find_program("unshare"));
    cmd.args(["--net", "--"])
        .arg(python)
        .arg("-c")
        .arg(script)
        .arg(chainmail_tests::bin("qrelay"))
        .args(["--check", "--config"])
        .arg(&path)
        .env_clear();
    let out = chainmail_tests::run::run(&mut cmd, b"", secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout_str(), format!("listen {} max_size=16777216\n", sock(&dir)));
}
