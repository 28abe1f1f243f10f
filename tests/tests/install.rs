//! `install.sh`: what it installs, what it refuses to overwrite, and the
//! qmail integration with its undo. Runs the real script with `--no-build`
//! on stand-in binaries, so that no release build is needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chainmail_tests::run::run;
use chainmail_tests::tmp::TestDir;

const BINARIES: [&str; 8] = [
    "ucspi-tlsd",
    "smtpd-starttls-proxy-io",
    "qrelay",
    "remusockd",
    "rsockd",
    "qmail-remote",
    "qmail-remote-io",
    "qmail-qmqpc",
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../install.sh")
}

/// A fake cargo target dir with stand-in binaries whose content says
/// which version they are.
fn fake_build(dir: &TestDir, version: &str) -> PathBuf {
    let target = dir.join(format!("target-{version}"));
    for b in BINARIES {
        // The qmail side is built with the release-small profile.
        let profile = if b.starts_with("qmail-") { "release-small" } else { "release" };
        fs::create_dir_all(target.join(profile)).expect("mkdir");
        let p = target.join(profile).join(b);
        fs::write(&p, format!("#!/bin/sh\necho {b} {version}\n")).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    target
}

fn install(target: &Path, args: &[&str]) -> chainmail_tests::run::Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script()).arg("--no-build").args(args).env("CARGO_TARGET_DIR", target);
    run(&mut cmd, b"", Duration::from_secs(60))
}

fn content(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn installs_and_refuses_to_overwrite_what_it_did_not_install() {
    let dir = TestDir::new("install-prefix");
    let prefix = dir.join("prefix");
    let prefix_s = prefix.to_str().expect("utf-8");
    let v1 = fake_build(&dir, "v1");
    let v2 = fake_build(&dir, "v2");

    let out = install(&v1, &["--prefix", prefix_s]);
    assert!(out.success(), "{}", out.describe());
    for b in BINARIES {
        let p = prefix.join("bin").join(b);
        assert_eq!(content(&p), format!("#!/bin/sh\necho {b} v1\n"));
        assert_eq!(fs::metadata(&p).expect("stat").permissions().mode() & 0o777, 0o755);
    }
    // Its own files are upgraded without --force.
    let out = install(&v2, &["--prefix", prefix_s]);
    assert!(out.success(), "{}", out.describe());
    assert!(content(&prefix.join("bin/qmail-remote")).contains("v2"));

    // A file changed since it was installed is left alone.
    fs::write(prefix.join("bin/ucspi-tlsd"), "edited by hand\n").expect("write");
    let out = install(&v1, &["--prefix", prefix_s]);
    assert!(!out.success());
    assert!(out.stderr_str().contains("was changed since chainmail installed it"), "{}", out.describe());
    assert_eq!(content(&prefix.join("bin/ucspi-tlsd")), "edited by hand\n");

    // So is a file it never installed.
    let other = dir.join("other");
    let other_s = other.to_str().expect("utf-8");
    fs::create_dir_all(other.join("bin")).expect("mkdir");
    fs::write(other.join("bin/qmail-remote-io"), "someone else's\n").expect("write");
    let out = install(&v1, &["--prefix", other_s]);
    assert!(!out.success());
    assert!(out.stderr_str().contains("was not installed by chainmail"), "{}", out.describe());
    assert_eq!(content(&other.join("bin/qmail-remote-io")), "someone else's\n");

    // Unless asked.
    let out = install(&v1, &["--prefix", other_s, "--force"]);
    assert!(out.success(), "{}", out.describe());
    assert!(content(&other.join("bin/qmail-remote-io")).contains("v1"));
}

#[test]
fn qmail_install_keeps_the_stock_binary_and_undoes() {
    let dir = TestDir::new("install-qmail");
    let home = dir.join("var-qmail");
    let home_s = home.to_str().expect("utf-8");
    fs::create_dir_all(home.join("bin")).expect("mkdir");
    let stock = "#!/bin/sh\necho stock qmail-remote\n";
    fs::write(home.join("bin/qmail-remote"), stock).expect("write");
    let stock_qmqpc = "#!/bin/sh\necho stock qmail-qmqpc\n";
    fs::write(home.join("bin/qmail-qmqpc"), stock_qmqpc).expect("write");
    let v1 = fake_build(&dir, "v1");
    let prefix = dir.join("manifest-prefix");
    let prefix_s = prefix.to_str().expect("utf-8");

    let out = install(&v1, &["--prefix", prefix_s, "--qmail", home_s]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(content(&home.join("bin/qmail-remote.orig")), stock);
    assert!(content(&home.join("bin/qmail-remote")).contains("qmail-remote v1"));
    // qmail-remote finds qmail-remote-io beside itself.
    assert!(content(&home.join("bin/qmail-remote-io")).contains("qmail-remote-io v1"));
    assert!(home.join("run/qmail-remote").is_dir());
    // qmail-qmqpc beside it, the stock one saved.
    assert_eq!(content(&home.join("bin/qmail-qmqpc.orig")), stock_qmqpc);
    assert!(content(&home.join("bin/qmail-qmqpc")).contains("qmail-qmqpc v1"));
    // It says that qmail's own `make setup` would silently undo it, and
    // what to prefer.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("'make setup'") && said.contains("puts the stock"), "{}", out.describe());
    assert!(said.contains("QMAILREMOTE") && said.contains("--qmail-beside"), "{}", out.describe());

    // Installing again keeps the saved stock binary, and upgrades.
    let v2 = fake_build(&dir, "v2");
    let out = install(&v2, &["--prefix", prefix_s, "--qmail", home_s]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(content(&home.join("bin/qmail-remote.orig")), stock);
    assert!(content(&home.join("bin/qmail-remote")).contains("v2"));

    let out = install(&v2, &["--prefix", prefix_s, "--qmail-undo", home_s]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(content(&home.join("bin/qmail-remote")), stock);
    assert!(!home.join("bin/qmail-remote.orig").exists());
    assert!(!home.join("bin/qmail-remote-io").exists());
    assert_eq!(content(&home.join("bin/qmail-qmqpc")), stock_qmqpc);

    // Nothing to undo any more.
    let out = install(&v2, &["--prefix", prefix_s, "--qmail-undo", home_s]);
    assert!(!out.success());
}

#[test]
fn qmail_beside_installs_under_another_name() {
    let dir = TestDir::new("install-beside");
    let home = dir.join("var-qmail");
    fs::create_dir_all(home.join("bin")).expect("mkdir");
    let stock = "#!/bin/sh\necho stock\n";
    fs::write(home.join("bin/qmail-remote"), stock).expect("write");
    let stock_qmqpc = "#!/bin/sh\necho stock qmail-qmqpc\n";
    fs::write(home.join("bin/qmail-qmqpc"), stock_qmqpc).expect("write");
    let v1 = fake_build(&dir, "v1");
    let prefix = dir.join("manifest-prefix");
    let out =
        install(&v1, &["--prefix", prefix.to_str().expect("utf-8"), "--qmail-beside", home.to_str().expect("utf-8")]);
    assert!(out.success(), "{}", out.describe());
    assert_eq!(content(&home.join("bin/qmail-remote")), stock);
    assert!(content(&home.join("bin/qmail-remote-chainmail")).contains("qmail-remote v1"));
    assert!(out.stdout_str().contains("QMAILREMOTE="));
}
