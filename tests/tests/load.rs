//! Many STARTTLS sessions through the chain, one after the other and at
//! the same time: every session delivers, every client gets its 221, and
//! nothing of ours prints anything.

use std::net::TcpStream;
use std::sync::{Arc, Barrier};

use chainmail_tests::{Chain, Server, Smtp, TestDir, TlsClient, TlsVersion, secs};

/// One complete session after the greeting: EHLO, STARTTLS, EHLO, one
/// message, QUIT, 221, close. The message names the session.
fn session(mut c: Smtp<TcpStream>, tls: &TlsClient, id: usize) {
    c.cmd_expect("EHLO client.test", 250);
    let mut c = c.starttls(tls);
    c.cmd_expect("EHLO client.test", 250);
    let body = format!("Subject: session {id}\r\n\r\nsession-{id}-body\r\n..stuffed\r\n");
    c.send_mail(&format!("s{id}@client.test"), "rcpt@test.smtpd", &body);
    c.quit();
}

fn check_delivered(server: &Server, n: usize) {
    server.wait_sessions_gone(secs(60));
    let msgs = server.messages();
    assert_eq!(msgs.len(), n, "every session must deliver one message");
    let mut ids: Vec<usize> = msgs
        .iter()
        .map(|m| {
            let s = String::from_utf8_lossy(m);
            let id = s
                .strip_prefix("Subject: session ")
                .and_then(|r| r.split("\r\n").next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected message: {s:?}"));
            assert_eq!(s, format!("Subject: session {id}\r\n\r\nsession-{id}-body\r\n.stuffed\r\n"));
            id
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..n).collect::<Vec<_>>(), "each session's message exactly once");
    server.assert_stderr_empty();
}

#[test]
fn sequential_starttls_sessions() {
    const N: usize = 200;
    let dir = TestDir::new("load_sequential");
    let server = Chain::new(&dir).start();
    let tls12 = TlsClient::mx(dir.certs(), TlsVersion::Tls12);
    let tls13 = TlsClient::mx(dir.certs(), TlsVersion::Tls13);
    for id in 0..N {
        session(server.connect_greeted(), if id % 2 == 0 { &tls13 } else { &tls12 }, id);
    }
    check_delivered(&server, N);
}

#[test]
fn concurrent_starttls_sessions() {
    const N: usize = 50;
    let dir = TestDir::new("load_concurrent");
    let server = Chain::new(&dir).start();
    let tls = TlsClient::mx(dir.certs(), TlsVersion::Any);
    // Open the connections one by one, each up to its greeting, so that
    // all N sessions exist at once. (Opening them all in the same instant
    // overflows tcpserver's listen backlog of 20: the kernel then answers
    // with SYN cookies and drops the handshake's last ACK, and an SMTP
    // client, which waits for the server to speak first, hangs until it
    // sends something. That is the kernel's and tcpserver's doing.)
    let conns: Vec<Smtp<TcpStream>> = (0..N).map(|_| server.connect_greeted()).collect();
    assert_eq!(
        server.session_processes().iter().filter(|p| p.comm == "ucspi-tlsd").count(),
        N,
        "every session has its TLS engine waiting\n{}",
        server.diagnostics()
    );
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, c)| {
            let (tls, barrier) = (tls.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                session(c, &tls, id);
            })
        })
        .collect();
    let failures: Vec<String> = threads
        .into_iter()
        .enumerate()
        .filter_map(|(id, t)| {
            t.join().err().map(|e| {
                let msg =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()));
                format!("session {id}: {}", msg.unwrap_or_default())
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {N} sessions failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        server.diagnostics()
    );
    check_delivered(&server, N);
}
