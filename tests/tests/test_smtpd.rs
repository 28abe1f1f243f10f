//! test-smtpd on its own, over pipes: the scripted server the other tests
//! rely on must itself be right.

use std::path::Path;
use std::process::Command;

use chainmail_tests::run::{Output, run};
use chainmail_tests::{TestDir, bin, secs};

fn smtpd(dir: &TestDir, env: &[(&str, &str)], input: &[u8]) -> Output {
    let mut cmd = Command::new(bin("test-smtpd"));
    cmd.env_clear()
        .env("TEST_SMTPD_LOG", dir.join("log"))
        .env("TEST_SMTPD_MAILDIR", dir.join("mail"))
        .env("TEST_SMTPD_ENV", dir.join("env"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    std::fs::create_dir_all(dir.join("mail")).expect("mkdir mail");
    run(&mut cmd, input, secs(30))
}

fn messages(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir).expect("read maildir").map(|e| e.expect("entry").path()).collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).expect("read message")).collect()
}

const SESSION: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n\
Subject: s\r\n\r\n..stuffed\r\nnot the end.\r\n.\r\nNOOP\r\nVRFY u\r\nHELP\r\nRSET\r\nBOGUS\r\nQUIT\r\nNOOP\r\n";

#[test]
fn pipelined_session_replies_stores_and_logs() {
    let dir = TestDir::new("test_smtpd_session");
    let out = smtpd(&dir, &[], SESSION);
    assert!(out.success(), "{}", out.describe());
    let pid = out.stdout_str().lines().find_map(|l| l.strip_prefix("250 2.0.0 Ok: queued as ").map(str::to_owned));
    let queued = pid.unwrap_or_else(|| panic!("no queue id: {}", out.describe()));
    let expected = format!(
        "220 test.smtpd ESMTP\r\n\
         250-test.smtpd\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n\
         250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n\
         250 2.0.0 Ok: queued as {queued}\r\n\
         250 2.0.0 Noop ok\r\n252 2.5.2 Cannot VRFY user\r\n\
         214-test-smtpd commands:\r\n214-HELO EHLO MAIL RCPT DATA\r\n214 RSET NOOP VRFY HELP QUIT\r\n\
         250 2.0.0 Reset ok\r\n502 5.5.2 Command not implemented\r\n221 2.0.0 test.smtpd closing connection\r\n"
    );
    assert_eq!(out.stdout_str(), expected);
    assert_eq!(out.stderr_str(), "");
    assert_eq!(messages(&dir.join("mail")), vec![b"Subject: s\r\n\r\n.stuffed\r\nnot the end.\r\n".to_vec()]);
    let stored = std::fs::read_dir(dir.join("mail")).expect("maildir").next().expect("one file").expect("entry");
    assert_eq!(stored.file_name().to_string_lossy(), queued, "the file is named by the queue id");
    // Everything read is logged raw; it may have read past QUIT.
    let log = std::fs::read(dir.join("log")).expect("log");
    assert!(SESSION.starts_with(&log) || log == SESSION, "log: {}", chainmail_tests::show(&log));
    assert!(log.len() >= SESSION.len() - b"NOOP\r\n".len());
}

#[test]
fn environment_file() {
    let dir = TestDir::new("test_smtpd_env");
    let mut cmd = Command::new(bin("test-smtpd"));
    cmd.env_clear().env("TEST_SMTPD_ENV", dir.join("env")).env("SOME_VAR", "a b=c");
    let out = run(&mut cmd, b"QUIT\r\n", secs(30));
    assert!(out.success(), "{}", out.describe());
    let env = std::fs::read(dir.join("env")).expect("env file");
    let recs: Vec<&[u8]> = env.split(|&b| b == 0).filter(|r| !r.is_empty()).collect();
    assert!(recs.contains(&&b"SOME_VAR=a b=c"[..]), "{}", chainmail_tests::show(&env));
    assert!(recs.iter().any(|r| r.starts_with(b"TEST_SMTPD_ENV=")));
}

#[test]
fn multiline_replies() {
    let dir = TestDir::new("test_smtpd_multiline");
    let out = smtpd(&dir, &[("TEST_SMTPD_MULTILINE", "1")], b"NOOP\r\nQUIT\r\n");
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout_str(),
        "220 test.smtpd ESMTP\r\n\
         250-2.0.0 Noop ok\r\n250-2.0.0 Noop ok (2 of 3)\r\n250 2.0.0 Noop ok (3 of 3)\r\n\
         221-2.0.0 test.smtpd closing connection\r\n221-2.0.0 test.smtpd closing connection (2 of 3)\r\n\
         221 2.0.0 test.smtpd closing connection (3 of 3)\r\n"
    );
}

#[test]
fn native_starttls_rset_failure_malformed_and_name() {
    let dir = TestDir::new("test_smtpd_options");
    let env = [
        ("TEST_SMTPD_STARTTLS", "1"),
        ("TEST_SMTPD_RSET_FAIL", "1"),
        ("TEST_SMTPD_MALFORMED", "vrfy"),
        ("TEST_SMTPD_NAME", "other.name"),
    ];
    let out = smtpd(&dir, &env, b"EHLO c\r\nRSET\r\nVrfy x\r\nSTARTTLS\r\nQUIT\r\n");
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout_str(),
        "220 other.name ESMTP\r\n\
         250-other.name\r\n250-PIPELINING\r\n250-STARTTLS\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n\
         451 4.3.0 Reset failed\r\n2x0 malformed reply from test-smtpd\r\n454 4.7.0 TLS not available\r\n\
         221 2.0.0 other.name closing connection\r\n"
    );
    let out = smtpd(&dir, &[("TEST_SMTPD_REJECT", "ehlo")], b"EHLO c\r\nQUIT\r\n");
    assert_eq!(
        out.stdout_str(),
        "220 test.smtpd ESMTP\r\n550 5.7.1 EHLO rejected by test-smtpd\r\n221 2.0.0 test.smtpd closing connection\r\n"
    );
    let out = smtpd(&dir, &[("TEST_SMTPD_MALFORMED", "greeting")], b"QUIT\r\n");
    assert!(out.stdout_str().starts_with("2x0 malformed reply from test-smtpd\r\n"), "{}", out.describe());
}

#[test]
fn sequence_errors_and_eof_inside_data() {
    let dir = TestDir::new("test_smtpd_sequence");
    let out =
        smtpd(&dir, &[], b"RCPT TO:<b@y>\r\nDATA\r\nMAIL FROM:<a@x>\r\nDATA\r\nRCPT TO:<b@y>\r\nDATA\r\nunfinished");
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout_str(),
        "220 test.smtpd ESMTP\r\n503 5.5.1 Need MAIL before RCPT\r\n503 5.5.1 Need RCPT before DATA\r\n\
         250 2.1.0 Sender ok\r\n503 5.5.1 Need RCPT before DATA\r\n250 2.1.5 Recipient ok\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert!(messages(&dir.join("mail")).is_empty(), "an unfinished message must not be stored");
}

#[test]
fn overlong_line_is_refused_and_the_session_goes_on() {
    let dir = TestDir::new("test_smtpd_long");
    let mut input = b"VRFY ".to_vec();
    input.extend(std::iter::repeat_n(b'z', 200_000));
    input.extend_from_slice(b"\r\nNOOP\r\nQUIT\r\n");
    let out = smtpd(&dir, &[], &input);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(
        out.stdout_str(),
        "220 test.smtpd ESMTP\r\n500 5.5.2 Line too long\r\n250 2.0.0 Noop ok\r\n\
         221 2.0.0 test.smtpd closing connection\r\n"
    );
}

#[test]
fn large_message_is_stored_exactly() {
    let dir = TestDir::new("test_smtpd_large");
    let mut body = Vec::new();
    for i in 0..20_000 {
        body.extend_from_slice(format!("line {i} ").as_bytes());
        if i % 7 == 0 {
            body.extend_from_slice(b"\r\n.");
        }
        body.extend_from_slice(b"\r\n");
    }
    // Dot-stuff it for the wire.
    let mut wire = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
    }
    let mut input = b"MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&wire);
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let out = smtpd(&dir, &[], &input);
    assert!(out.success(), "{}", out.describe());
    let msgs = messages(&dir.join("mail"));
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0] == body, "stored message differs from the original ({} vs {} bytes)", msgs[0].len(), body.len());
}

#[test]
fn linger_closes_stdout_and_reads_to_the_end() {
    let dir = TestDir::new("test_smtpd_linger");
    let out = smtpd(&dir, &[("TEST_SMTPD_LINGER", "1")], b"QUIT\r\nafter quit\r\nmore");
    assert!(out.success(), "{}", out.describe());
    assert_eq!(out.stdout_str(), "220 test.smtpd ESMTP\r\n221 2.0.0 test.smtpd closing connection\r\n");
    assert_eq!(std::fs::read(dir.join("log")).expect("log"), b"QUIT\r\nafter quit\r\nmore");
}
