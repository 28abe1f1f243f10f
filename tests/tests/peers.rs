//! The test infrastructure on its own, without the binaries under test:
//! certificates, tcpserver with test-smtpd, exim4 -bs, swaks. When one of
//! these fails, the chain tests cannot be trusted either.

use std::process::Command;

use chainmail_tests::clients::swaks;
use chainmail_tests::exim::Exim;
use chainmail_tests::run::run;
use chainmail_tests::{Server, TestDir, bin, find_program, secs};

fn verify(ca: &std::path::Path, cert: &std::path::Path, purpose: &str) -> chainmail_tests::run::Output {
    let mut cmd = Command::new(find_program("openssl"));
    cmd.arg("verify").arg("-purpose").arg(purpose).arg("-CAfile").arg(ca).arg(cert);
    run(&mut cmd, b"", secs(30))
}

#[test]
fn certificates_verify_as_intended() {
    let dir = TestDir::new("peers_certs");
    let c = dir.certs();
    for pair in [c.mx(), c.a(), c.b(), c.wild()] {
        let out = verify(&c.ca(), &pair.cert, "sslserver");
        assert!(out.success(), "{}", out.describe());
    }
    let out = verify(&c.ca(), &c.client().cert, "sslclient");
    assert!(out.success(), "{}", out.describe());
    let out = verify(&c.ca(), &c.rogue_client().cert, "sslclient");
    assert!(!out.success(), "the rogue client must not verify against the test CA: {}", out.describe());
    let out = verify(&c.rogue_ca(), &c.rogue_client().cert, "sslclient");
    assert!(out.success(), "{}", out.describe());
    let out = verify(&c.ca(), &c.expired().cert, "sslclient");
    assert!(!out.success() && out.all_output().contains("expired"), "{}", out.describe());
    assert!(c.ca_dir().join("ca.pem").is_file());
}

#[test]
fn tcpserver_runs_test_smtpd() {
    let dir = TestDir::new("peers_tcpserver");
    let smtpd_log = dir.join("log");
    let maildir = dir.join("mail");
    std::fs::create_dir_all(&maildir).expect("mkdir");
    let server = Server::start(
        &dir,
        &[bin("test-smtpd").into_os_string()],
        &[("TEST_SMTPD_LOG".into(), smtpd_log.clone().into()), ("TEST_SMTPD_MAILDIR".into(), maildir.into())],
    );
    let mut c = server.connect();
    c.expect_line("220 test.smtpd ESMTP");
    c.cmd_expect("EHLO client.test", 250);
    c.send_mail("a@client.test", "b@test.smtpd", "Subject: t\r\n\r\nhello\r\n");
    c.quit();
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
    let log = std::fs::read(&smtpd_log).expect("log");
    assert!(chainmail_tests::contains(&log, b"hello\r\n.\r\nQUIT\r\n"));
}

#[test]
fn exim_bs_delivers_to_its_mailbox() {
    let dir = TestDir::new("peers_exim");
    let exim = Exim::setup(&dir);
    let server = Server::start(&dir, &exim.argv(), &[]);
    let out = swaks(
        &server,
        &["-f", "sender@client.test", "-t", "rcpt@exim.test", "--helo", "client.test", "--body", "peers-exim-token"],
    );
    assert!(out.success(), "{}\n{}", out.describe(), exim.logs());
    let mbox = exim.wait_delivered("peers-exim-token", secs(30));
    assert!(mbox.contains("Envelope-to: rcpt@exim.test"), "{mbox}");
    server.assert_stderr_empty();
}
