//! qmail-qmqpc against real QMQP servers: postfix's qmqp-sink over TCP
//! and a Unix socket, and a scripted server for the replies qmqp-sink
//! never gives (Z, D, garbage, a silent close), the failover over servers
//! that refuse the connection, and the exit codes of every case.

mod qmqp_support;

use chainmail_qmqp::encode_request;
use qmqp_support::*;

use chainmail_tests::TestDir;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: test\n\nbody line\n";
const ENVELOPE: &[u8] = b"Fa@example.org\0Tb@example.org\0Tc@example.org\0\0";

#[test]
fn delivers_to_qmqp_sink_over_tcp_and_unix() {
    let dir = TestDir::new("qmqpc_sink");
    let tcp = QmqpSink::tcp(&dir);
    let unix = QmqpSink::unix(&dir, "sink.sock");
    let home = qmail_home(&dir, &[&format!("127.0.0.1:{}", tcp.port.expect("port"))]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    tcp.wait_count(1, chainmail_tests::secs(20));
    let home = qmail_home(&dir, &[&unix.path.as_ref().expect("path").display().to_string()]);
    let out = qmqpc(&dir, &home, MESSAGE, b"F\0Tb@example.org\0\0");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    unix.wait_count(1, chainmail_tests::secs(20));
}

#[test]
fn sends_exactly_the_request() {
    let dir = TestDir::new("qmqpc_bytes");
    let server = ScriptedServer::unix(&dir.join("s.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let home = qmail_home(&dir, &[&server.entry]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(server.request(), encode_request(MESSAGE, b"a@example.org", &[b"b@example.org", b"c@example.org"]));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{}", out.describe());
}

#[test]
fn exit_codes_of_the_replies() {
    let dir = TestDir::new("qmqpc_replies");
    for (script, code) in [
        (Script::Reply(b"3:Kok,".to_vec()), 0),
        (Script::Reply(b"4:Zbad,".to_vec()), 71),
        (Script::Reply(b"4:Dbad,".to_vec()), 31),
        // The first K, Z or D byte decides, as in the original.
        (Script::Reply(b"12:xyzDno".to_vec()), 31),
        (Script::Reply(b"3:xyz,".to_vec()), 74),
        (Script::Close, 74),
    ] {
        let server = ScriptedServer::tcp(vec![script.clone()]);
        let home = qmail_home(&dir, &[&server.entry]);
        let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
        assert_eq!(out.code(), Some(code), "{script:?}: {}", out.describe());
    }
}

#[test]
fn moves_on_only_when_the_connect_fails() {
    let dir = TestDir::new("qmqpc_failover");
    let refused = format!("127.0.0.1:{}", free_port());
    let missing = dir.join("nobody.sock").display().to_string();
    let second = ScriptedServer::tcp(vec![Script::Reply(b"4:Zbad,".to_vec())]);
    let third = ScriptedServer::tcp(vec![Script::Reply(b"3:Kok,".to_vec())]);
    // Skipped entries (not addresses) do not count; a connected server that
    // fails is final: the third server is never tried.
    let home = qmail_home(&dir, &["# a comment", "not an address!", &refused, &missing, &second.entry, &third.entry]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(71), "{}", out.describe());
    second.request();
    // All refused: 73, the last error.
    let home = qmail_home(&dir, &[&refused, &missing]);
    assert_eq!(qmqpc(&dir, &home, MESSAGE, ENVELOPE).code(), Some(73));
    // IPv6 and host names with a port.
    let v6 = ScriptedServer::tcp(vec![Script::Reply(b"3:Kok,".to_vec())]);
    let port = v6.entry.rsplit_once(':').expect("port").1.to_owned();
    let home = qmail_home(&dir, &[&format!("[::1]:{}", free_port()), &format!("localhost:{port}")]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[test]
fn connect_timeout_is_72() {
    // A listener whose accept queue is full: the kernel drops the SYNs,
    // and the connect times out after 10 s.
    let dir = TestDir::new("qmqpc_timeout");
    let (listener, port) = full_listener();
    let home = qmail_home(&dir, &[&format!("127.0.0.1:{port}")]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(72), "{}", out.describe());
    assert!(out.elapsed >= std::time::Duration::from_secs(9), "{}", out.describe());
    drop(listener);
}

#[test]
fn local_failures() {
    let dir = TestDir::new("qmqpc_local");
    let server = ScriptedServer::tcp(vec![]);
    let home = qmail_home(&dir, &[&server.entry]);
    for envelope in [&b"Xa@b\0Tc@d\0\0"[..], b"Fa@b\0Tc@d\0", b""] {
        let out = qmqpc(&dir, &home, MESSAGE, envelope);
        assert_eq!(out.code(), Some(91), "{}: {}", envelope.escape_ascii(), out.describe());
    }
    let empty = dir.join("empty");
    std::fs::create_dir_all(empty.join("control")).expect("mkdir");
    assert_eq!(qmqpc(&dir, &empty, MESSAGE, ENVELOPE).code(), Some(55), "no qmqpservers");
    std::fs::write(empty.join("control/qmqpservers"), "# nothing\n").expect("write");
    assert_eq!(qmqpc(&dir, &empty, MESSAGE, ENVELOPE).code(), Some(55), "no server in qmqpservers");
    assert_eq!(qmqpc(&dir, &dir.join("nohome"), MESSAGE, ENVELOPE).code(), Some(61), "no qmail home");
}

/// Without QMAILHOME the home is where the program lies (`<home>/bin`),
/// never a guess; QMAILHOME, when set, wins over it.
#[test]
fn home_from_the_program_location_unless_qmailhome() {
    let dir = TestDir::new("qmqpc_home");
    let accepting = ScriptedServer::tcp(vec![Script::Reply(b"3:Kok,".to_vec())]);
    let home = dir.join("installed");
    std::fs::create_dir_all(home.join("control")).expect("mkdir control");
    std::fs::create_dir_all(home.join("bin")).expect("mkdir bin");
    std::fs::write(home.join("control/qmqpservers"), format!("{}\n", accepting.entry)).expect("write");
    let program = home.join("bin/qmail-qmqpc");
    std::fs::copy(chainmail_tests::bin("qmail-qmqpc"), &program).expect("copy the program");
    let env_path = dir.join("envelope");
    std::fs::write(&env_path, ENVELOPE).expect("write envelope");
    let run_program = |qmailhome: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg("exec \"$0\" 1<\"$1\"").arg(&program).arg(&env_path).env_clear();
        if let Some(h) = qmailhome {
            cmd.env("QMAILHOME", h);
        }
        chainmail_tests::run::run(&mut cmd, MESSAGE, chainmail_tests::secs(60))
    };
    let out = run_program(None);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(accepting.request(), encode_request(MESSAGE, b"a@example.org", &[b"b@example.org", b"c@example.org"]));

    let refusing = ScriptedServer::tcp(vec![Script::Reply(b"4:Zbad,".to_vec())]);
    let other = qmail_home(&dir, &[&refusing.entry]);
    let out = run_program(Some(&other));
    assert_eq!(out.code(), Some(71), "QMAILHOME must win: {}", out.describe());
}
