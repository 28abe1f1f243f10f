//! A rustls client against the engine, through in-memory pipes that move
//! at most `chunk` bytes per read, for every chunk size from 1 to 64.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::*;
use crate::{ClientAuth, SniLevel, TlsEnv, keys};

/// One direction of a byte stream.
#[derive(Debug, Default)]
struct Pipe {
    data: VecDeque<u8>,
    /// The writer closed: a reader gets EOF once the data is gone.
    eof: bool,
    /// The reader closed: writes fail with EPIPE.
    broken: bool,
    /// Most bytes one read returns.
    chunk: usize,
    /// Most bytes the pipe holds (0: unlimited).
    capacity: usize,
    /// Total bytes ever written.
    written: usize,
}

impl Pipe {
    fn new(chunk: usize) -> Pipe {
        Pipe { chunk, ..Pipe::default() }
    }
}

struct Src<'a>(&'a mut Pipe);
struct Sink<'a>(&'a mut Pipe);

impl Read for Src<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let p = &mut *self.0;
        if p.data.is_empty() {
            return if p.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(p.chunk).min(p.data.len());
        for (i, b) in p.data.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
}

impl Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let p = &mut *self.0;
        if p.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = if p.capacity == 0 { usize::MAX } else { p.capacity.saturating_sub(p.data.len()) };
        let n = buf.len().min(room);
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        p.data.extend(&buf[..n]);
        p.written += n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn testdata(name: &str) -> OsString {
    format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR")).into()
}

fn server_config() -> Arc<rustls::ServerConfig> {
    TlsEnv::from_vars([
        ("CERTFILE".into(), testdata("server-ec.chain.pem")),
        ("KEYFILE".into(), testdata("server-ec.key")),
    ])
    .server_config(SniLevel::Off, ClientAuth::None)
    .expect("server config")
}

fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> ClientConnection {
    let mut roots = RootCertStore::empty();
    let ca = keys::parse_certificates(include_bytes!("../../testdata/ca.pem")).expect("ca");
    roots.add_parsable_certificates(ca);
    let config = ClientConfig::builder_with_provider(Arc::new(crate::provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    ClientConnection::new(Arc::new(config), ServerName::try_from("mail.test").expect("name")).expect("client")
}

const BOTH: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The whole setup: a client, the engine, and the four pipes.
struct Rig {
    client: ClientConnection,
    engine: ServerEngine,
    c2s: Pipe,
    s2c: Pipe,
    /// Application to engine.
    app_in: Pipe,
    /// Engine to application.
    app_out: Pipe,
    /// Plaintext the client received.
    got: Vec<u8>,
    client_eof: bool,
    client_clean_eof: bool,
    client_error: Option<rustls::Error>,
    engine_error: Option<EngineError>,
}

impl Rig {
    fn new(chunk: usize, policy: Policy) -> Rig {
        Rig::with_client(chunk, policy, client(BOTH))
    }

    fn with_client(chunk: usize, policy: Policy, client: ClientConnection) -> Rig {
        Rig {
            client,
            engine: ServerEngine::new(server_config(), policy).expect("engine"),
            c2s: Pipe::new(chunk),
            s2c: Pipe::new(chunk),
            app_in: Pipe::new(chunk),
            app_out: Pipe { chunk, ..Pipe::default() },
            got: Vec::new(),
            client_eof: false,
            client_clean_eof: false,
            client_error: None,
            engine_error: None,
        }
    }

    /// One round of the client, then one of the engine, as the binary's
    /// poll loop would run it. Returns whether anything happened.
    fn round(&mut self) -> bool {
        let mut moved = false;
        // Client.
        while self.client.wants_write() {
            match self.client.write_tls(&mut Sink(&mut self.c2s)) {
                Ok(n) if n > 0 => moved = true,
                _ => break,
            }
        }
        if !self.client_eof && self.client_error.is_none() {
            match self.client.read_tls(&mut Src(&mut self.s2c)) {
                Ok(0) => {
                    self.client_eof = true;
                    moved = true;
                }
                Ok(_) => moved = true,
                Err(_) => {}
            }
            match self.client.process_new_packets() {
                Ok(_) => {}
                Err(e) => {
                    self.client_error = Some(e);
                    moved = true;
                }
            }
            let mut buf = [0u8; 4096];
            loop {
                match self.client.reader().read(&mut buf) {
                    Ok(0) => {
                        self.client_clean_eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.got.extend_from_slice(&buf[..n]);
                        moved = true;
                    }
                    Err(_) => break,
                }
            }
        }
        // Engine.
        if self.engine_error.is_some() || self.engine.is_finished() {
            return moved;
        }
        let result = (|| -> Result<bool, EngineError> {
            let mut moved = false;
            let w = self.engine.wants();
            if w.net_read {
                moved |= matches!(self.engine.read_net(&mut Src(&mut self.c2s))?, Step::Moved(_) | Step::Closed);
            }
            if self.engine.wants().app_write {
                moved |= matches!(self.engine.write_app(&mut Sink(&mut self.app_out))?, Step::Moved(_) | Step::Closed);
            }
            if self.engine.wants().app_read {
                moved |= matches!(self.engine.read_app(&mut Src(&mut self.app_in))?, Step::Moved(_) | Step::Closed);
            }
            if self.engine.wants().net_write {
                moved |= matches!(self.engine.write_net(&mut Sink(&mut self.s2c))?, Step::Moved(n) if n > 0);
            }
            if self.engine.wants_net_shutdown() {
                self.s2c.eof = true;
                self.engine.net_shutdown_done();
                moved = true;
            }
            if !self.engine.app_output_open() && !self.app_out.eof {
                self.app_out.eof = true;
                moved = true;
            }
            Ok(moved)
        })();
        match result {
            Ok(m) => moved | m,
            Err(e) => {
                // Flush the alert rustls queued, once.
                let _ = self.engine.write_net(&mut Sink(&mut self.s2c));
                self.engine_error = Some(e);
                true
            }
        }
    }

    /// Runs rounds until nothing moves any more.
    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            if !self.round() {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn handshake(&mut self) {
        self.settle();
        assert!(!self.client.is_handshaking(), "client still handshaking");
        assert!(!self.engine.is_handshaking(), "engine still handshaking");
    }

    fn client_send(&mut self, data: &[u8]) {
        self.client.writer().write_all(data).expect("client write");
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn handshake_and_data_both_ways_in_every_chunk_size() {
    for chunk in 1..=64 {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        let up = pattern(3000 + chunk * 7, 1);
        let down = pattern(2500 + chunk * 5, 2);
        rig.client_send(&up);
        rig.app_in.data.extend(&down);
        rig.settle();
        assert_eq!(rig.app_out.data.iter().copied().collect::<Vec<u8>>(), up, "chunk {chunk}");
        assert_eq!(rig.got, down, "chunk {chunk}");
        assert!(rig.engine_error.is_none());
        assert!(!rig.engine.is_finished());
        let info = crate::ConnectionInfo::of(&rig.engine);
        assert_eq!(info.protocol, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(info.server_name, Some("mail.test"));
        assert!(info.peer_certificate.is_none());
    }
}

#[test]
fn queued_data_goes_out_before_the_application_data() {
    for chunk in [1, 7, 64] {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        rig.app_in.data.extend(b" and then the application");
        rig.engine.queue_app_data(b"250 left over by a proxy\r\n");
        rig.settle();
        assert_eq!(rig.got, b"250 left over by a proxy\r\n and then the application", "chunk {chunk}");
        // Nothing queued: nothing happens.
        rig.engine.queue_app_data(b"");
        rig.settle();
        assert!(rig.engine_error.is_none());
    }
}

#[test]
fn tls12_handshake_and_data() {
    for chunk in [1, 7, 64] {
        let mut rig = Rig::with_client(chunk, Policy::default(), client(&[&rustls::version::TLS12]));
        rig.handshake();
        rig.client_send(b"EHLO x\r\n");
        rig.app_in.data.extend(b"250 ok\r\n");
        rig.settle();
        assert_eq!(rig.app_out.data.make_contiguous(), b"EHLO x\r\n");
        assert_eq!(rig.got, b"250 ok\r\n");
        let info = crate::ConnectionInfo::of(&rig.engine);
        assert_eq!(info.protocol, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(
            info.cipher.map(crate::cipher_suite_name).as_deref(),
            Some("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")
        );
    }
}

/// The SMTP ending: QUIT, 221, the application exits, the client sends
/// close_notify. With `-s` the engine half-closes without close_notify.
#[test]
fn close_notify_from_client_and_app_eof() {
    for chunk in 1..=64 {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        rig.client_send(b"QUIT\r\n");
        rig.settle();
        assert_eq!(rig.app_out.data.make_contiguous(), b"QUIT\r\n");
        rig.app_in.data.extend(b"221 bye\r\n");
        rig.app_in.eof = true;
        rig.settle();
        assert_eq!(rig.got, b"221 bye\r\n", "chunk {chunk}");
        assert!(rig.s2c.eof, "network half-closed");
        assert!(rig.client_eof && !rig.client_clean_eof, "no close_notify with -s");
        assert!(!rig.engine.is_finished(), "input still open");
        rig.client.send_close_notify();
        rig.settle();
        assert!(rig.app_out.eof, "application sees EOF");
        assert!(rig.engine.peer_sent_close_notify());
        assert!(rig.engine.is_finished(), "chunk {chunk}: {:?}", rig.engine);
        assert!(rig.engine_error.is_none());
    }
}

/// The client closes first; its last data still reaches the application
/// before the EOF, and the engine keeps sending until the app is done.
#[test]
fn close_notify_first_then_app_keeps_writing() {
    for chunk in 1..=64 {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        let up = pattern(20_000, 3);
        rig.client_send(&up);
        rig.client.send_close_notify();
        rig.settle();
        assert_eq!(rig.app_out.data.len(), up.len());
        assert!(rig.app_out.eof);
        let down = pattern(5000, 4);
        rig.app_in.data.extend(&down);
        rig.app_in.eof = true;
        rig.settle();
        assert_eq!(rig.got, down);
        assert!(rig.engine.is_finished());
    }
}

#[test]
fn eof_without_close_notify() {
    for chunk in 1..=64 {
        // -j: an EOF like any other.
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        rig.client_send(b"data");
        rig.round();
        rig.c2s.eof = true;
        rig.settle();
        assert_eq!(rig.app_out.data.make_contiguous(), b"data");
        assert!(rig.app_out.eof);
        assert!(rig.engine_error.is_none());
        assert!(!rig.engine.peer_sent_close_notify());

        // -J: an error.
        let mut rig = Rig::new(chunk, Policy { require_close_notify: true, ..Policy::default() });
        rig.handshake();
        rig.c2s.eof = true;
        rig.settle();
        let e = rig.engine_error.expect("error");
        assert!(matches!(e, EngineError::UncleanEof) && e.is_tls(), "{e}");
    }
}

#[test]
fn eof_during_handshake() {
    for chunk in [1, 5, 64] {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.round();
        rig.c2s.data.truncate(20);
        rig.c2s.eof = true;
        rig.settle();
        assert!(matches!(rig.engine_error, Some(EngineError::HandshakeEof)), "{:?}", rig.engine_error);
    }
}

#[test]
fn corrupted_record_sends_an_alert() {
    for chunk in 1..=64 {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        rig.client_send(b"hello, engine");
        // Let the client encrypt, then flip a bit inside the ciphertext.
        while rig.client.wants_write() {
            rig.client.write_tls(&mut Sink(&mut rig.c2s)).expect("client write");
        }
        let at = rig.c2s.data.len() - 3;
        rig.c2s.data[at] ^= 0x40;
        rig.settle();
        match &rig.engine_error {
            Some(EngineError::Tls(rustls::Error::DecryptError)) => {}
            other => panic!("chunk {chunk}: {other:?}"),
        }
        assert!(rig.app_out.data.is_empty());
        // The client got the bad_record_mac alert.
        match &rig.client_error {
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)) => {}
            other => panic!("chunk {chunk}: client saw {other:?}"),
        }
    }
}

#[test]
fn garbage_instead_of_a_client_hello() {
    for chunk in [1, 3, 64] {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.c2s.data.extend(b"EHLO mail.test\r\n");
        rig.settle();
        let e = rig.engine_error.expect("error");
        assert!(e.is_tls(), "{e}");
        assert!(
            matches!(rig.client_error, Some(rustls::Error::AlertReceived(rustls::AlertDescription::DecodeError))),
            "an alert was sent: {e:?}, client saw {:?}",
            rig.client_error
        );
    }
}

/// `-S`: application EOF sends close_notify and ends the session even
/// though the client has not closed.
#[test]
fn close_notify_on_app_eof() {
    for chunk in 1..=64 {
        let mut rig = Rig::new(chunk, Policy { close_notify_on_app_eof: true, ..Policy::default() });
        rig.handshake();
        rig.app_in.data.extend(b"221 bye\r\n");
        rig.app_in.eof = true;
        rig.settle();
        assert_eq!(rig.got, b"221 bye\r\n");
        assert!(rig.client_clean_eof, "chunk {chunk}: close_notify received");
        assert!(rig.engine.is_finished());
    }
}

/// A client that sends but never reads, and an application that never
/// reads: the engine stops reading, its buffers stay bounded.
#[test]
fn backpressure_bounds_memory() {
    // Network to application: the client writes 1 MiB, as fast as the
    // engine lets it, into an application that reads nothing.
    let mut rig = Rig::new(64, Policy::default());
    rig.handshake();
    rig.app_out.capacity = 1000;
    rig.c2s.chunk = 1 << 20;
    let up = pattern(1 << 20, 5);
    let mut sent = 0;
    let feed = |rig: &mut Rig, sent: &mut usize| {
        while *sent < up.len() {
            match rig.client.writer().write(&up[*sent..]) {
                Ok(n) if n > 0 => *sent += n,
                _ => break,
            }
        }
        while rig.client.wants_write() {
            rig.client.write_tls(&mut Sink(&mut rig.c2s)).expect("client write");
        }
    };
    for _ in 0..100 {
        feed(&mut rig, &mut sent);
        rig.settle();
    }
    assert_eq!(rig.app_out.data.len(), 1000);
    let held = rig.engine.plain.len() + rig.engine.net_in.len();
    assert!(held <= PLAINTEXT_INPUT_LIMIT + NET_CHUNK, "{held}");
    assert!(!rig.engine.wants().net_read);
    assert_eq!(sent, up.len());
    assert!(rig.c2s.data.len() > (1 << 20) - 64 * 1024, "the engine stopped reading: {}", rig.c2s.data.len());
    // Drain the application side: everything arrives, in order.
    let mut got: Vec<u8> = Vec::new();
    for _ in 0..100_000 {
        got.extend(rig.app_out.data.drain(..));
        if got.len() == up.len() {
            break;
        }
        rig.round();
    }
    assert!(got == up);

    // Application to network.
    let mut rig = Rig::new(64, Policy::default());
    rig.handshake();
    rig.s2c.capacity = 1000;
    rig.app_in.chunk = 1 << 20;
    let down = pattern(1 << 20, 6);
    rig.app_in.data.extend(&down);
    for _ in 0..10 {
        // The client does not read: only the engine runs.
        for _ in 0..100 {
            rig.engine.read_app(&mut Src(&mut rig.app_in)).expect("read app");
            rig.engine.write_net(&mut Sink(&mut rig.s2c)).expect("write net");
        }
    }
    let taken = down.len() - rig.app_in.data.len();
    assert!(taken <= TLS_OUTPUT_LIMIT + 2 * APP_CHUNK + 1000, "engine took {taken} bytes");
    assert!(!rig.engine.wants().app_read);
    rig.s2c.capacity = 0;
    rig.settle();
    assert!(rig.got == down);
}

/// The application stops reading (EPIPE): input is discarded, output and
/// the end of the session still work.
#[test]
fn application_gone() {
    for chunk in [1, 2, 13, 64] {
        let mut rig = Rig::new(chunk, Policy::default());
        rig.handshake();
        rig.app_out.broken = true;
        rig.client_send(&pattern(50_000, 7));
        rig.settle();
        assert!(!rig.engine.app_output_open());
        assert!(rig.engine.wants().net_read, "still reading the network");
        assert!(rig.c2s.data.is_empty(), "input was drained");
        rig.app_in.data.extend(b"221 bye\r\n");
        rig.app_in.eof = true;
        rig.settle();
        assert_eq!(rig.got, b"221 bye\r\n");
        assert!(rig.engine.is_finished());
        assert!(rig.engine_error.is_none());
    }
}

/// Nothing is read from the application before the handshake completes,
/// and data written early goes out after it.
#[test]
fn application_data_waits_for_the_handshake() {
    let mut rig = Rig::new(5, Policy::default());
    rig.app_in.data.extend(b"early");
    assert!(!rig.engine.wants().app_read);
    rig.handshake();
    rig.settle();
    assert_eq!(rig.got, b"early");
}

/// Read buffers start small and grow only when a read fills them.
#[test]
fn buffers_grow_for_bulk_only() {
    let mut rig = Rig::new(64, Policy::default());
    rig.handshake();
    rig.client_send(b"EHLO x\r\n");
    rig.app_in.data.extend(b"250 ok\r\n");
    rig.settle();
    assert_eq!(rig.engine.net_in.data.len(), SMALL_CHUNK);
    assert_eq!(rig.engine.app_in.data.len(), SMALL_CHUNK);
    rig.c2s.chunk = 1 << 20;
    rig.app_in.chunk = 1 << 20;
    rig.client_send(&pattern(60_000, 8));
    rig.app_in.data.extend(pattern(60_000, 9));
    rig.settle();
    let net = rig.engine.net_in.data.len();
    assert!((NET_CHUNK..=NET_CHUNK + MAX_RECORD).contains(&net), "{net}");
    assert_eq!(rig.engine.app_in.data.len(), APP_CHUNK);
    assert_eq!(rig.app_out.data.len(), 60_008);
    assert_eq!(rig.got.len(), 60_008);
}

/// One engine with its four pipes, stepped as a poll loop would.
struct Peer<S: Side> {
    engine: Engine<S>,
    /// Application to engine.
    app_in: Pipe,
    /// Engine to application.
    app_out: Pipe,
    error: Option<EngineError>,
}

impl<S: Side> Peer<S> {
    fn new(engine: Engine<S>, chunk: usize) -> Peer<S> {
        // The network is cut in small chunks; the applications write in
        // larger ones (one byte per record would only test patience).
        Peer { engine, app_in: Pipe::new(chunk * 256), app_out: Pipe::new(chunk), error: None }
    }

    /// One round against the network pipes `rx` (from the peer) and `tx`
    /// (to it). Returns whether anything happened.
    fn round(&mut self, rx: &mut Pipe, tx: &mut Pipe) -> bool {
        if self.error.is_some() || self.engine.is_finished() {
            return false;
        }
        let engine = &mut self.engine;
        let (app_in, app_out) = (&mut self.app_in, &mut self.app_out);
        let result = (|| -> Result<bool, EngineError> {
            let mut moved = false;
            if engine.wants().net_read {
                moved |= matches!(engine.read_net(&mut Src(rx))?, Step::Moved(_) | Step::Closed);
            }
            if engine.wants().app_write {
                moved |= matches!(engine.write_app(&mut Sink(app_out))?, Step::Moved(_) | Step::Closed);
            }
            if engine.wants().app_read {
                moved |= matches!(engine.read_app(&mut Src(app_in))?, Step::Moved(_) | Step::Closed);
            }
            if engine.wants().net_write {
                moved |= matches!(engine.write_net(&mut Sink(tx))?, Step::Moved(n) if n > 0);
            }
            if engine.wants_net_shutdown() {
                tx.eof = true;
                engine.net_shutdown_done();
                moved = true;
            }
            if !engine.app_output_open() && !app_out.eof {
                app_out.eof = true;
                moved = true;
            }
            Ok(moved)
        })();
        match result {
            Ok(moved) => moved,
            Err(e) => {
                let _ = self.engine.write_net(&mut Sink(tx));
                self.error = Some(e);
                true
            }
        }
    }
}

/// A client engine and a server engine connected in memory.
struct Pair {
    client: Peer<rustls::client::UnbufferedClientConnection>,
    server: Peer<rustls::server::UnbufferedServerConnection>,
    c2s: Pipe,
    s2c: Pipe,
}

impl Pair {
    fn new(chunk: usize, client_config: Arc<ClientConfig>, server_config: Arc<rustls::ServerConfig>) -> Pair {
        let name = ServerName::try_from("mail.test").expect("name");
        let client_policy = Policy { close_notify_on_app_eof: true, require_close_notify: false };
        Pair {
            client: Peer::new(ClientEngine::new_client(client_config, name, client_policy).expect("client"), chunk),
            server: Peer::new(ServerEngine::new(server_config, Policy::default()).expect("server"), chunk),
            c2s: Pipe::new(chunk),
            s2c: Pipe::new(chunk),
        }
    }

    fn settle(&mut self) {
        for _ in 0..1_000_000 {
            let c = self.client.round(&mut self.s2c, &mut self.c2s);
            let s = self.server.round(&mut self.c2s, &mut self.s2c);
            if !c && !s {
                return;
            }
        }
        panic!(
            "no quiescence: {:?} {:?} {:?} {:?}",
            self.client.engine, self.server.engine, self.client.error, self.server.error
        );
    }
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(keys::parse_certificates(include_bytes!("../../testdata/ca.pem")).expect("ca"));
    let config = ClientConfig::builder_with_provider(Arc::new(crate::provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The client core against the server core, fed in every chunk size:
/// handshake, bulk both ways, and the SMTP ending (the server half-closes
/// after its last reply, the client sends close_notify).
#[test]
fn client_engine_against_server_engine_in_every_chunk_size() {
    for versions in [BOTH, &[&rustls::version::TLS12][..]] {
        for chunk in 1..=64 {
            let mut pair = Pair::new(chunk, client_config(versions), server_config());
            pair.settle();
            assert!(!pair.client.engine.is_handshaking() && !pair.server.engine.is_handshaking(), "chunk {chunk}");
            let up = pattern(40_000 + chunk, 10);
            let down = pattern(30_000 + chunk, 11);
            pair.client.app_in.data.extend(&up);
            pair.server.app_in.data.extend(&down);
            pair.settle();
            assert!(pair.server.app_out.data.iter().eq(up.iter()), "chunk {chunk}");
            assert!(pair.client.app_out.data.iter().eq(down.iter()), "chunk {chunk}");
            // The server's last reply, and its half-close (-s).
            pair.server.app_in.data.extend(b"221 bye\r\n");
            pair.server.app_in.eof = true;
            pair.settle();
            assert!(pair.client.app_out.data.iter().copied().eq(down.iter().copied().chain(*b"221 bye\r\n")));
            assert!(pair.client.app_out.eof, "chunk {chunk}: the client application sees EOF");
            // The client is done: close_notify.
            pair.client.app_in.eof = true;
            pair.settle();
            assert!(pair.server.engine.peer_sent_close_notify(), "chunk {chunk}");
            assert!(pair.server.app_out.eof);
            assert!(pair.server.engine.is_finished(), "chunk {chunk}: {:?}", pair.server.engine);
            assert!(pair.client.engine.is_finished(), "chunk {chunk}: {:?}", pair.client.engine);
            assert!(pair.client.error.is_none() && pair.server.error.is_none());
        }
    }
}

/// A client that does not trust the server's certificate fails the
/// handshake, and its alert reaches the server.
#[test]
fn client_engine_refuses_an_untrusted_server_and_sends_its_alert() {
    for chunk in [1, 9, 64] {
        let untrusting = ClientConfig::builder_with_provider(Arc::new(crate::provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
            .with_no_client_auth();
        let mut pair = Pair::new(chunk, Arc::new(untrusting), server_config());
        pair.settle();
        assert!(
            matches!(pair.client.error, Some(EngineError::Tls(rustls::Error::InvalidCertificate(_)))),
            "{:?}",
            pair.client.error
        );
        assert!(
            matches!(
                pair.server.error,
                Some(EngineError::Tls(rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)))
            ),
            "chunk {chunk}: {:?}",
            pair.server.error
        );
    }
}

/// An idle engine gives its buffers back.
#[test]
fn trim_gives_idle_buffers_back() {
    let mut rig = Rig::new(64, Policy::default());
    rig.handshake();
    rig.client_send(&pattern(50_000, 12));
    rig.settle();
    assert!(rig.engine.buffer_capacity() > 0);
    rig.engine.trim();
    assert_eq!(rig.engine.buffer_capacity(), 0);
    rig.client_send(b"still working\r\n");
    rig.settle();
    assert!(rig.app_out.data.iter().rev().take(15).eq(b"still working\r\n".iter().rev()));
}

/// An in-process application that offers data to a failed or closed
/// session gets an error, never a "0 taken" it would retry forever.
#[test]
fn send_after_failure_or_close_is_an_error() {
    let untrusting = ClientConfig::builder_with_provider(Arc::new(crate::provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() })
        .with_no_client_auth();
    let mut pair = Pair::new(64, Arc::new(untrusting), server_config());
    pair.settle();
    assert!(pair.client.error.is_some());
    assert!(matches!(pair.client.engine.send(b"QUIT\r\n"), Err(EngineError::SessionClosed)));

    let mut pair = Pair::new(64, client_config(BOTH), server_config());
    pair.settle();
    assert_eq!(pair.client.engine.send(b"EHLO x\r\n").expect("send"), 8);
    pair.client.engine.close_app_input().expect("close");
    assert!(matches!(pair.client.engine.send(b"QUIT\r\n"), Err(EngineError::SessionClosed)));
    pair.settle();
    assert!(pair.server.app_out.data.iter().eq(b"EHLO x\r\n".iter()));
    assert!(pair.server.engine.peer_sent_close_notify());
}
