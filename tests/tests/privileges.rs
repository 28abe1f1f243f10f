//! The TLS engine's privilege drop (`TLS_UID`/`TLS_GID`), run as root:
//! a drop is complete (uid, gid and the supplementary groups), and a
//! half-configured drop is refused at start-up with exit 100.

use std::ffi::OsString;
use std::process::Command;

use chainmail_tests::run::run;
use chainmail_tests::{Chain, Server, TestDir, TlsClient, TlsVersion, bin, secs};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `Uid:`, `Gid:` and `Groups:` of `/proc/PID/status`.
fn ids_of(pid: i32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

#[test]
fn the_engine_drops_uid_gid_and_every_supplementary_group() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let dir = TestDir::new("privdrop");
    // tcpserver (and so the engine before its drop) runs with supplementary
    // groups, which the drop must not keep.
    let mut argv: Vec<OsString> = ["setpriv", "--groups", "4,24,27", "--"].map(OsString::from).to_vec();
    argv.extend(Chain::new(&dir).argv());
    let mx = dir.certs().mx();
    let env: Vec<(OsString, OsString)> = vec![
        ("CERTFILE".into(), mx.cert.into()),
        ("KEYFILE".into(), mx.key.into()),
        ("TLS_UID".into(), "65534".into()),
        ("TLS_GID".into(), "65533".into()),
        ("TEST_SMTPD_LOG".into(), dir.join("smtpd.log").into()),
        ("TEST_SMTPD_MAILDIR".into(), dir.join("mail").into()),
        ("TEST_SMTPD_ENV".into(), dir.join("smtpd.env").into()),
    ];
    std::fs::create_dir_all(dir.join("mail")).expect("maildir");
    let server = Server::start(&dir, &argv, &env);
    let mut c = server.connect_greeted();
    c.cmd_expect("EHLO client.test", 250);
    // The engine dropped its privileges before it read the command, so
    // once TLS is up the drop is done.
    let mut c = c.starttls(&TlsClient::mx(dir.certs(), TlsVersion::Any));
    c.cmd_expect("EHLO client.test", 250);
    let engines: Vec<_> = server.session_processes().into_iter().filter(|p| p.comm == "ucspi-tlsd").collect();
    assert_eq!(engines.len(), 1, "one engine: {:?}", server.session_processes());
    let (uid, gid, groups) = ids_of(engines[0].pid);
    assert_eq!(uid, "65534 65534 65534 65534");
    assert_eq!(gid, "65533 65533 65533 65533");
    assert_eq!(groups, "65533", "supplementary groups left after the drop");
    c.quit();
    server.wait_sessions_gone(secs(20));
}

#[test]
fn half_a_drop_is_refused_at_start_up() {
    let dir = TestDir::new("privhalf");
    let mx = dir.certs().mx();
    for (set, missing) in [("TLS_UID", "TLS_GID"), ("TLS_GID", "TLS_UID")] {
        let out = run(
            Command::new(bin("ucspi-tlsd"))
                .arg("true")
                .env_clear()
                .env("CERTFILE", &mx.cert)
                .env("KEYFILE", &mx.key)
                .env(set, "65534"),
            b"",
            secs(10),
        );
        assert_eq!(out.code(), Some(100), "{}", out.describe());
        let err = out.stderr_str();
        assert!(err.starts_with("ucspi-tlsd: fatal: ") && err.contains(set) && err.contains(missing), "{err}");
    }
}
