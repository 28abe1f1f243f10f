//! smtpd-starttls-proxy-io's plaintext relay turns the relay's idle hook
//! on: idle for a second, the proxy gives back the code pages it ran (they
//! stay in the page cache), and the session goes on as if nothing
//! happened. Measured as resident file pages (`Rss` less `Anonymous`), which,
//! unlike `Pss_File`, do not move when other processes map the same
//! libraries.

use std::time::{Duration, Instant};

use chainmail_tests::{Chain, TestDir, secs};

#[test]
fn an_idle_plaintext_relay_gives_back_its_code_pages_and_keeps_working() {
    let dir = TestDir::new("proxy_idle_trim");
    let server = Chain::new(&dir).start();
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    // MAIL without STARTTLS: the client chose plaintext, the proxy now
    // relays.
    c.cmd_expect("MAIL FROM:<a@x.test>", 250);
    let proxy = server
        .session_processes()
        .into_iter()
        .find(|p| p.comm.starts_with("smtpd-starttls"))
        .unwrap_or_else(|| panic!("no proxy\n{}", server.diagnostics()));
    // Resident pages that are not anonymous: the file mappings.
    let rss_file = || -> u64 {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", proxy.pid)).expect("smaps_rollup");
        let field = |name: &str| -> u64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{rollup}"))
        };
        field("Rss:").saturating_sub(field("Anonymous:"))
    };
    let before = rss_file();
    let deadline = Instant::now() + secs(10);
    let after = loop {
        let now = rss_file();
        if now * 4 < before * 3 {
            break now;
        }
        assert!(Instant::now() < deadline, "still {now} KiB of file pages (from {before} KiB)");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(after * 4 < before * 3);
    c.cmd_expect("RSET", 250);
    let r = c.send_mail("a@x.test", "b@y.test", "after the trim\r\n");
    assert_eq!(r.code, 250, "{}", c.transcript_string());
    c.quit();
    assert_eq!(server.messages().len(), 1);
    server.wait_sessions_gone(secs(20));
    server.assert_stderr_empty();
}
