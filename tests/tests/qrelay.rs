//! qrelay against real peers: our qmail-qmqpc, postfix's qmqp-source and
//! qmqp-sink, nullmailer's qmqp client, a scripted upstream that records
//! the bytes it got, programs for exec/exec_raw, tcpserver and
//! s6-ipcserver for the UCSPI mode.

mod qmqp_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chainmail_qmqp::encode_request;
use chainmail_tests::run::run;
use chainmail_tests::{Server, TestDir, bin, find_program, secs};
use nix::sys::signal::Signal;
use qmqp_support::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: test\n\nbody line\n";
const ENVELOPE: &[u8] = b"Fa@example.org\0Tb@example.org\0\0";

fn sock(dir: &TestDir) -> String {
    dir.join("qrelay.sock").display().to_string()
}

/// A config with one listener on dir/qrelay.sock and `handler` as its body.
fn config(dir: &TestDir, globals: &str, handler: &str) -> String {
    format!("{globals}\nqmqp_listen('{}', function(m)\n{handler}\nend)\n", sock(dir))
}

fn send(dir: &TestDir, message: &[u8], envelope: &[u8]) -> chainmail_tests::run::Output {
    let home = qmail_home(dir, &[&sock(dir)]);
    qmqpc(dir, &home, message, envelope)
}

fn reply_of(dir: &TestDir, request: &[u8]) -> Vec<u8> {
    raw_client(&dir.join("qrelay.sock"), request, false)
}

#[test]
fn relays_byte_identical_after_the_inserted_headers() {
    let dir = TestDir::new("qrelay_bytes");
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"10:Kqueued 42,".to_vec())]);
    let q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!("up = qmqp_resolve('{}')", up.entry),
            "m:insert_header('X-First', 'one') m:insert_header('X-Second', 'two') m.account = 'acct' return m:connect(up)",
        ),
    );
    let out = send(&dir, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let got = up.request();
    let uid = nix::unistd::getuid();
    let mut message =
        format!("X-Second: two\nX-First: one\nReceived: from PID={} UID={uid} with QMQP\n", "PID").into_bytes();
    // The pid is qmail-qmqpc's: take it from the log.
    let log = q.wait_log("reply=Kqueued 42");
    let pid: String =
        log.split("pid=").nth(1).expect("pid in the log").chars().take_while(char::is_ascii_digit).collect();
    message = String::from_utf8(message).expect("utf-8").replace("PID=PID", &format!("PID={pid}")).into_bytes();
    message.extend_from_slice(MESSAGE);
    assert_eq!(
        got,
        encode_request(&message, b"a@example.org", &[b"b@example.org"]),
        "upstream got:\n{}",
        String::from_utf8_lossy(&got)
    );
    assert!(log.contains("account=acct from=<a@example.org> to=<b@example.org> size=45"), "{log}");
    // CRLF messages get CRLF headers.
    let crlf = b"Subject: x\r\n\r\nbody\r\n";
    let up2 = ScriptedServer::unix(&dir.join("up2.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    drop(q);
    let _q = Qrelay::start(&dir, &config(&dir, &format!("up = qmqp_resolve('{}')", up2.entry), "return m:connect(up)"));
    assert_eq!(send(&dir, crlf, ENVELOPE).code(), Some(0));
    let got = String::from_utf8(up2.request()).expect("utf-8");
    assert!(got.contains(&format!("UID={uid} with QMQP\r\nSubject: x\r\n")), "{got}");
}

#[test]
fn qmqpc_through_qrelay_to_qmqp_sink_and_qmqp_source_load() {
    let dir = TestDir::new("qrelay_sink");
    let sink = QmqpSink::unix(&dir, "sink.sock");
    let path = sink.path.as_ref().expect("path").display().to_string();
    let _q = Qrelay::start(&dir, &config(&dir, &format!("sink = qmqp_resolve('{path}')"), "return m:connect(sink)"));
    let out = send(&dir, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    sink.wait_count(1, secs(20));
    // qmqp-source: 50 messages over 5 concurrent sessions.
    let mut cmd = Command::new(find_program("qmqp-source"));
    cmd.args(["-m", "50", "-s", "5", "-f", "a@example.org", "-t", "b@example.org"]).arg(format!("unix:{}", sock(&dir)));
    let out = run(&mut cmd, b"", secs(60));
    assert!(out.success(), "{}", out.describe());
    sink.wait_count(51, secs(20));
}

#[test]
fn actions_discard_reject_and_failover() {
    let dir = TestDir::new("qrelay_actions");
    let good = ScriptedServer::unix(&dir.join("good.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let odd = ScriptedServer::unix(
        &dir.join("odd.sock"),
        vec![Script::Reply(b"3:Xok,".to_vec()), Script::Close, Script::Reply(b"300:Ktoo long".to_vec())],
    );
    let dead = dir.join("dead.sock").display().to_string();
    let globals = format!(
        "good = qmqp_resolve('{}') odd = qmqp_resolve('{}') dead = qmqp_resolve('{dead}')",
        good.entry, odd.entry
    );
    let handler = "local r = m.recipients[1]
        if r == 'odd@x' then return m:connect(odd) end
        local function n(k) local a = {} for i = 1, k do a[i] = 'x' end return a end
        local function env(k) local e = {} for i = 1, k do e['V' .. i] = 'x' end return e end
        if r == 'args32@x' then local a = n(32) a[#a + 1] = {env = env(32)} return m:exec('/bin/echo', table.unpack(a)) end
        if r == 'args@x' then return m:exec('/bin/echo', table.unpack(n(33))) end
        if r == 'env@x' then return m:exec('/bin/echo', {env = env(33)}) end
        if r == 'timeout@x' then return m:exec('/bin/true', {timeout = 3601}) end
        if r == 'relative@x' then return m:exec('true') end
        if r == 'discard@x' then return m:discard() end
        if r == 'reject@x' then return m:reject() end
        if r == 'dead@x' then return m:connect(dead) end
        if r == 'nothing@x' then return 42 end
        if r == 'throw@x' then error('boom') end
        return m:connect({dead, '127.0.0.1:1', good})";
    let q = Qrelay::start(&dir, &config(&dir, &globals, handler));
    let mut seen = std::collections::HashMap::new();
    for (rcpt, code, reply) in [
        ("discard@x", 0, "Kdiscarded"),
        ("reject@x", 31, "Drejected"),
        ("dead@x", 71, "Zconnect failed"),
        ("nothing@x", 71, "Zscript failed"),
        ("throw@x", 71, "Zscript failed"),
        ("failover@x", 0, "Kok"),
        ("odd@x", 71, "Zmalformed relay response"),
        ("odd@x", 71, "Zrelay failed"),
        ("odd@x", 71, "Zmalformed relay response"),
        ("args32@x", 71, "Zmalformed relay response"),
        ("args@x", 71, "Zscript failed"),
        ("env@x", 71, "Zscript failed"),
        ("timeout@x", 71, "Zscript failed"),
        ("relative@x", 71, "Zscript failed"),
    ] {
        let out = send(&dir, MESSAGE, format!("Fa@b\0T{rcpt}\0\0").as_bytes());
        assert_eq!(out.code(), Some(code), "{rcpt}: {}", out.describe());
        let line = format!("to=<{rcpt}> size=45 reply={reply}");
        let n = seen.entry(line.clone()).or_insert(0);
        *n += 1;
        q.wait_log_count(&line, *n);
    }
    good.request();
}

#[test]
fn exec_and_exec_raw() {
    let dir = TestDir::new("qrelay_exec");
    let qmqp_prog = dir.join("qmqp-prog");
    // Reads the request, records it and its environment, answers.
    std::fs::write(
        &qmqp_prog,
        format!("#!/bin/sh\ncat > {d}/exec.in\nenv > {d}/exec.env\nprintf '7:Kstored,'\n", d = dir.path().display()),
    )
    .expect("write");
    let raw_prog = dir.join("raw-prog");
    std::fs::write(
        &raw_prog,
        format!(
            "#!/bin/sh\ncat > {d}/raw.in\necho \"got $1\"\ncase $1 in\n  b@x) exit 0;;\n  usage@x) exit 64;;\n  osfile@x) exit 72;;\n  noperm@x) exit 77;;\n  config@x) exit 78;;\n  fail@x) exit 1;;\n  signal@x) kill -9 $$;;\n  slow@x) exec sleep 30;;\nesac\n",
            d = dir.path().display()
        ),
    )
    .expect("write");
    for p in [&qmqp_prog, &raw_prog] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let handler = format!(
        "local r = m.recipients[1]
        if r == 'qmqp@x' then return m:exec('{q}', {{env={{FOO='bar'}}}}) end
        if r == 'badqmqp@x' then return m:exec('/bin/echo', 'not qmqp') end
        if r == 'missing@x' then return m:exec('/nonexistent/prog') end
        if r == 'notimeout@x' then return m:exec_raw('{r}', 'b@x', {{timeout=0}}) end
        return m:exec_raw('{r}', r, {{timeout=1}})",
        q = qmqp_prog.display(),
        r = raw_prog.display()
    );
    let q = Qrelay::start(&dir, &config(&dir, "", &handler));
    let out = send(&dir, MESSAGE, b"Fa@b\0Tqmqp@x\0\0");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    q.wait_log("reply=Kstored");
    let got = std::fs::read(dir.join("exec.in")).expect("exec.in");
    assert!(got.starts_with(b"") && chainmail_tests::contains(&got, MESSAGE), "{}", String::from_utf8_lossy(&got));
    let env = std::fs::read_to_string(dir.join("exec.env")).expect("env");
    // Only the given environment (sh adds PWD, SHLVL and _ of its own).
    assert!(env.contains("FOO=bar") && !env.contains("NOTIFY_SOCKET") && !env.contains("PATH=/"), "{env}");
    for (rcpt, code, reply) in [
        ("b@x", 0, "Kgot b@x"),
        ("usage@x", 31, "Dgot usage@x"),
        ("osfile@x", 31, "Dgot osfile@x"),
        ("noperm@x", 31, "Dgot noperm@x"),
        ("config@x", 31, "Dgot config@x"),
        ("fail@x", 71, "Zgot fail@x"),
        ("signal@x", 71, "Zprogram killed by signal 9"),
        ("slow@x", 71, "Ztimeout"),
        ("badqmqp@x", 71, "Zmalformed relay response"),
        ("missing@x", 71, "Zexec failed"),
        // A timeout of 0 is none.
        ("notimeout@x", 0, "Kgot b@x"),
    ] {
        let start = Instant::now();
        let out = send(&dir, MESSAGE, format!("Fa@b\0T{rcpt}\0\0").as_bytes());
        assert_eq!(out.code(), Some(code), "{rcpt}: {}", out.describe());
        q.wait_log(&format!("to=<{rcpt}> size=45 reply={reply}"));
        if rcpt == "slow@x" {
            assert!(start.elapsed() < secs(10), "the timeout of 1 s took {:?}", start.elapsed());
        }
    }
    let raw = std::fs::read(dir.join("raw.in")).expect("raw.in");
    assert!(raw.starts_with(b"Received: from PID=") && raw.ends_with(MESSAGE), "{}", String::from_utf8_lossy(&raw));
}

#[test]
fn bad_input_is_answered_never_a_silent_close() {
    let dir = TestDir::new("qrelay_bad_input");
    let _q = Qrelay::start(&dir, &config(&dir, "max_size = 1024", "return m:discard()"));
    let ok = |n: usize| encode_request(&vec![b'x'; n], b"a@b", &[b"c@d"]);
    let many = |n: usize| {
        let r: Vec<Vec<u8>> = (0..n).map(|i| format!("r{i}@example.org").into_bytes()).collect();
        encode_request(b"m", b"", &r)
    };
    for (what, request, reply) in [
        ("garbage", b"garbage".to_vec(), &b"16:Dmalformed input,"[..]),
        ("leading zero", b"012:1:m,0:,3:c@d,,".to_vec(), b"16:Dmalformed input,"),
        ("no recipient", b"7:1:m,0:,,".to_vec(), b"16:Dmalformed input,"),
        ("trailing bytes", [ok(1), b"extra".to_vec()].concat(), b"16:Dmalformed input,"),
        ("max_size", ok(1024), b"10:Kdiscarded,"),
        ("max_size + 1", ok(1025), b"30:Dmessage is too large (#5.3.4),"),
        ("1024 recipients", many(1024), b"10:Kdiscarded,"),
        ("1025 recipients", many(1025), b"20:Dtoo many recipients,"),
        ("null sender", encode_request(b"m", b"", &[b"c@d"]), b"10:Kdiscarded,"),
        ("double bounce", encode_request(b"m", b"#@[]", &[b"c@d"]), b"10:Kdiscarded,"),
        ("unqualified", encode_request(b"m", b"a", &[b"c@d"]), b"12:Dbad address,"),
    ] {
        for half_close in [false, true] {
            let got = reply_of_maybe_half(&dir, &request, half_close);
            assert_eq!(got, reply, "{what} (half-close {half_close}): {}", got.escape_ascii());
        }
    }
}

fn reply_of_maybe_half(dir: &TestDir, request: &[u8], half_close: bool) -> Vec<u8> {
    raw_client(&dir.join("qrelay.sock"), request, half_close)
}

#[test]
fn oversize_while_the_client_is_still_writing() {
    // qmail-qmqpc writes everything before it reads: a 2 MiB message to a
    // 1 KiB limit must still get the D reply (exit 31), not a reset (74).
    let dir = TestDir::new("qrelay_oversize");
    let _q = Qrelay::start(&dir, &config(&dir, "max_size = 1024", "return m:discard()"));
    let out = send(&dir, &vec![b'x'; 2 << 20], ENVELOPE);
    assert_eq!(out.code(), Some(31), "{}", out.describe());
}

#[test]
fn address_check_modes() {
    let dir = TestDir::new("qrelay_address_check");
    let unqualified = encode_request(b"m", b"", &[b"postmaster"]);
    let bounce = encode_request(b"m", b"", &[b"c@d"]);
    for (mode, want_unqualified, want_bounce) in [
        ("strict", &b"12:Dbad address,"[..], &b"12:Dbad address,"[..]),
        ("qmail", b"12:Dbad address,", b"10:Kdiscarded,"),
        ("off", b"10:Kdiscarded,", b"10:Kdiscarded,"),
    ] {
        let q = Qrelay::start(&dir, &config(&dir, &format!("address_check = '{mode}'"), "return m:discard()"));
        assert_eq!(reply_of(&dir, &unqualified), want_unqualified, "{mode}");
        assert_eq!(reply_of(&dir, &bounce), want_bounce, "{mode}");
        drop(q);
    }
    // A bad sender set by the handler is a script failure.
    let _q = Qrelay::start(&dir, &config(&dir, "", "m.sender = 'no at sign' return m:discard()"));
    assert_eq!(reply_of(&dir, &bounce), b"14:Zscript failed,");
}

#[test]
fn idle_client_is_dropped_after_5_seconds() {
    let dir = TestDir::new("qrelay_idle");
    let _q = Qrelay::start(&dir, &config(&dir, "", "return m:discard()"));
    let start = Instant::now();
    let got = raw_client(&dir.join("qrelay.sock"), b"10:", false);
    let took = start.elapsed();
    assert!(got.is_empty(), "{}", got.escape_ascii());
    assert!(took >= Duration::from_secs(4) && took < secs(20), "{took:?}");
}

#[test]
fn slow_upstream_does_not_hold_up_others() {
    let dir = TestDir::new("qrelay_concurrency");
    let slow = ScriptedServer::unix(&dir.join("slow.sock"), vec![Script::Stall(Duration::from_secs(3))]);
    let q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!("slow = qmqp_resolve('{}')", slow.entry),
            "if m.recipients[1] == 'slow@x' then return m:connect(slow) end return m:discard()",
        ),
    );
    let path = dir.join("qrelay.sock");
    let stalled = std::thread::spawn(move || raw_client(&path, &encode_request(b"m", b"", &[b"slow@x"]), false));
    slow.request();
    let start = Instant::now();
    assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"fast@x"])), b"10:Kdiscarded,");
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(stalled.join().expect("join"), b"3:Kok,");
    drop(q);
}

#[test]
fn instruction_and_memory_caps() {
    let dir = TestDir::new("qrelay_caps");
    let handler = "local r = m.recipients[1]
        if r == 'loop@x' then while true do end end
        if r == 'eat@x' then local t = {} while true do t[#t + 1] = string.rep('x', 4096) .. #t end end
        return m:discard()";
    let q = Qrelay::start(
        &dir,
        &config(&dir, "handler_instruction_limit = 100000 lua_memory_limit = 8 * 1024 * 1024", handler),
    );
    for _ in 0..3 {
        assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"loop@x"])), b"14:Zscript failed,");
        assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"eat@x"])), b"14:Zscript failed,");
        assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"ok@x"])), b"10:Kdiscarded,");
    }
    let log = q.stderr();
    assert!(log.contains("instruction limit") && log.contains("lua_memory_limit"), "{log}");
}

#[test]
fn sighup_calls_reload_and_sigterm_drains() {
    let dir = TestDir::new("qrelay_signals");
    let slow = ScriptedServer::unix(&dir.join("slow.sock"), vec![Script::Stall(Duration::from_secs(2))]);
    let q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!(
                "slow = qmqp_resolve('{}') reloaded = 0 function reload() reloaded = reloaded + 1 end",
                slow.entry
            ),
            "if m.recipients[1] == 'slow@x' then return m:connect(slow) end
             if reloaded > 0 then return m:reject() end return m:discard()",
        ),
    );
    assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"c@d"])), b"10:Kdiscarded,");
    q.signal(Signal::SIGHUP);
    let deadline = Instant::now() + secs(20);
    while reply_of(&dir, &encode_request(b"m", b"", &[b"c@d"])) != b"9:Drejected," {
        assert!(Instant::now() < deadline, "reload() was not called");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM with a message in flight: it is finished, then exit 0.
    let path = dir.join("qrelay.sock");
    let in_flight = std::thread::spawn(move || raw_client(&path, &encode_request(b"m", b"", &[b"slow@x"]), true));
    slow.request();
    assert_eq!(q.terminate(), Some(0));
    assert_eq!(in_flight.join().expect("join"), b"3:Kok,");
    assert!(UnixStreamConnectFails(&dir.join("qrelay.sock")));
}

#[allow(non_snake_case)]
fn UnixStreamConnectFails(p: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(p).is_err()
}

#[test]
fn check_prints_listeners_or_the_lua_error() {
    let dir = TestDir::new("qrelay_check");
    let good = dir.join("good.lua");
    std::fs::write(
        &good,
        "a = qmqp_resolve('localhost:1234') b = qmqp_resolve('[::1]:4321') c = qmqp_resolve('192.0.2.1')\n\
         d = qmqp_resolve('/run/s.sock') e = qmqp_resolve('@s')\n\
         assert(tostring(a):find(':1234') and tostring(b) == '[::1]:4321' and tostring(c) == '192.0.2.1:628')\n\
         assert(tostring(d) == '/run/s.sock' and tostring(e) == '@s')\n\
         qmqp_listen('/run/x.sock', function(m) return m:discard() end)\nqmqp_listen('@abs', function(m) return m:reject() end)\n",
    )
    .expect("write");
    let out = run(Command::new(bin("qrelay")).arg("--config").arg(&good).arg("--check"), b"", secs(30));
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(out.stdout_str(), "listen /run/x.sock max_size=16777216\nlisten @abs max_size=16777216\n");
    for (text, needle) in [
        ("qmqp_listen('/x', function(m) end)\nerror('bad config')\n", "bad.lua:2:"),
        ("max_size = 10\nqmqp_listen('/x', function(m) end)\n", "max_size"),
        ("address_check = 'loose'\nqmqp_listen('/x', function(m) end)\n", "address_check"),
        ("x = 1\n", "no qmqp_listen"),
        ("qmqp_listen('/x', function(m) end\n", "bad.lua:"),
        ("a = qmqp_resolve('no such host.invalid')\nqmqp_listen('/x', function(m) end)\n", "bad.lua:1:"),
    ] {
        let bad = dir.join("bad.lua");
        std::fs::write(&bad, text).expect("write");
        let out = run(Command::new(bin("qrelay")).arg("--config").arg(&bad).arg("--check"), b"", secs(30));
        assert_eq!(out.code(), Some(100), "{text}: {}", out.describe());
        assert!(out.stderr_str().contains(needle), "{text}: {}", out.describe());
    }
    // Config-time functions are gone once startup is over.
    let _q = Qrelay::start(
        &dir,
        &config(
            &dir,
            "",
            "if qmqp_listen == nil and qmqp_resolve == nil then return m:discard() end return m:reject()",
        ),
    );
    assert_eq!(reply_of(&dir, &encode_request(b"m", b"", &[b"c@d"])), b"10:Kdiscarded,");
}

#[test]
fn systemd_socket_activation() {
    use std::os::fd::AsRawFd;
    let dir = TestDir::new("qrelay_systemd");
    let path = dir.join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let fd = listener.as_raw_fd();
    nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("inherit");
    let config = "qmqp_listen(systemd, function(m) return m:discard() end)";
    let _q = Qrelay::start_with(&dir, config, |program, args| {
        // bash: dash takes only one-digit descriptor numbers.
        let move_fd = if fd == 3 { String::new() } else { format!("3<&{fd} {fd}<&-") };
        let mut sh = Command::new("/bin/bash");
        sh.arg("-c")
            .arg(format!("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\" {move_fd}"))
            .arg(program)
            .args(args);
        sh
    });
    drop(listener);
    assert_eq!(raw_client(&path, &encode_request(b"m", b"", &[b"c@d"]), false), b"10:Kdiscarded,");
}

#[test]
fn ucspi_mode_under_tcpserver_with_nullmailer_and_s6_ipcserver() {
    let dir = TestDir::new("qrelay_ucspi");
    let up = ScriptedServer::unix(
        &dir.join("up.sock"),
        vec![Script::Reply(b"3:Kok,".to_vec()), Script::Reply(b"3:Kok,".to_vec())],
    );
    let config_path = dir.join("ucspi.lua");
    std::fs::write(
        &config_path,
        format!(
            "up = qmqp_resolve('{}')\nqmqp_listen('/unused', function(m) m:insert_header('X-Uid', tostring(m.uid)) return m:connect(up) end)\n",
            up.entry
        ),
    )
    .expect("write");
    let server = Server::start(
        &dir,
        &[bin("qrelay").into_os_string(), "--ucspi".into(), "--config".into(), config_path.clone().into_os_string()],
        &[],
    );
    // nullmailer's QMQP client, over TCP.
    let nullmailer = Path::new("/usr/local/lib/chainmail-tests/nullmailer/qmqp");
    assert!(nullmailer.is_file(), "nullmailer's qmqp is missing: tests/run unpacks it");
    // nullmailer 2's protocol modules: options on fd 0, the mail file
    // (sender, recipients, a blank line, the message) on fd 3.
    let mail = dir.join("nullmailer-mail");
    std::fs::write(&mail, b"a@example.org\nb@example.org\n\nSubject: nm\n\nhello\n").expect("write");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("exec \"$0\" 3<\"$1\"").arg(nullmailer).arg(&mail);
    let options = format!("host=127.0.0.1\nport={}\n", server.port());
    let out = run(&mut cmd, options.as_bytes(), secs(30));
    assert!(out.success(), "{}", out.describe());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains("Received: from [127.0.0.1] with QMQP\nSubject: nm\n"), "{got}");
    // s6-ipcserver on a Unix socket: the peer's uid from SO_PEERCRED on fd 0.
    let ipc = dir.join("ipc.sock");
    let mut s6 = Command::new(find_program("s6-ipcserver"));
    s6.arg(&ipc).arg(bin("qrelay")).arg("--ucspi").arg("--config").arg(&config_path);
    s6.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let mut child = std::os::unix::process::CommandExt::process_group(&mut s6, 0).spawn().expect("start s6-ipcserver");
    wait_unix(&ipc, secs(20));
    let home = qmail_home(&dir, &[&ipc.display().to_string()]);
    let out = qmqpc(&dir, &home, MESSAGE, ENVELOPE);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains(&format!("X-Uid: {}\n", nix::unistd::getuid())), "{got}");
}

#[test]
fn cgroup_attributes_of_a_client_in_its_own_cgroup() {
    let dir = TestDir::new("qrelay_cgroup");
    let Some(mount) = std::fs::read_to_string("/proc/self/mountinfo").ok().and_then(|m| {
        m.lines().find(|l| l.contains(" - cgroup2 ")).and_then(|l| l.split(' ').nth(4)).map(std::path::PathBuf::from)
    }) else {
        eprintln!("skipped: no cgroup2 mount");
        return;
    };
    let name = format!("chainmail-qrelay-test-{}", std::process::id());
    let cg = mount.join(&name);
    if std::fs::create_dir(&cg).is_err() {
        eprintln!("skipped: cannot create a cgroup under {}", mount.display());
        return;
    }
    let xattr_ok = Command::new("python3")
        .args(["-c", "import os, sys; os.setxattr(sys.argv[1], 'user.qrelay', b'tenant42')"])
        .arg(&cg)
        .status()
        .is_ok_and(|s| s.success());
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let _q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!("up = qmqp_resolve('{}')", up.entry),
            "local c = m.cgroup
             m:insert_header('X-Cgroup', c)
             m:insert_header('X-Parent', c.parent and c.parent.path or 'none')
             m:insert_header('X-Xattr', c.xattr['user.qrelay'] or 'none')
             return m:connect(up)",
        ),
    );
    // The client moves itself into the cgroup, then runs qmail-qmqpc.
    let home = qmail_home(&dir, &[&sock(&dir)]);
    let env_path = dir.join("cg-envelope");
    std::fs::write(&env_path, ENVELOPE).expect("write");
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$2/cgroup.procs\" && exec \"$0\" 1<\"$1\"")
        .arg(bin("qmail-qmqpc"))
        .arg(&env_path)
        .arg(&cg)
        .env_clear()
        .env("QMAILHOME", &home);
    let out = run(&mut cmd, MESSAGE, secs(30));
    let _ = std::fs::remove_dir(&cg);
    if out.code() != Some(0) && out.stderr_str().contains("cgroup.procs") {
        eprintln!("skipped: cannot move a process into {}: {}", cg.display(), out.stderr_str());
        return;
    }
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains(&format!("X-Cgroup: /{name}\n")), "{got}");
    assert!(got.contains("X-Parent: /\n"), "{got}");
    if xattr_ok {
        assert!(got.contains("X-Xattr: tenant42\n"), "{got}");
    } else {
        eprintln!("note: the cgroup fs refuses user xattrs here: xattr not checked");
    }
}

#[test]
fn notify_fd_and_abstract_sockets() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let dir = TestDir::new("qrelay_notify_fd");
    let name = format!("chainmail-qrelay-test-{}", std::process::id());
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    std::fs::write(
        dir.join("abstract.lua"),
        format!("up = qmqp_resolve('{}')\nqmqp_listen('@{name}', function(m) return m:connect(up) end)\n", up.entry),
    )
    .expect("write");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).expect("inherit");
    let w = write_end.as_raw_fd();
    let mut cmd = Command::new("/bin/bash");
    cmd.arg("-c")
        .arg(format!("exec \"$0\" --config \"$1\" --notify-fd 3 3>&{w} {w}>&-"))
        .arg(bin("qrelay"))
        .arg(dir.join("abstract.lua"))
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0).spawn().expect("start qrelay");
    drop(write_end);
    // The newline, then EOF (qrelay closed it): bounded by a reader thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(read_end);
        let mut got = Vec::new();
        let _ = f.read_to_end(&mut got);
        let _ = tx.send(got);
    });
    let got = rx.recv_timeout(secs(30));
    let ok = got.as_deref() == Ok(&b"\n"[..]);
    // The abstract listener works.
    let reply = if ok {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).expect("connect");
        s.set_read_timeout(Some(secs(30))).expect("timeout");
        std::io::Write::write_all(&mut s, &encode_request(b"m", b"", &[b"c@d"])).expect("write");
        let mut r = Vec::new();
        let _ = s.read_to_end(&mut r);
        r
    } else {
        Vec::new()
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "no readiness newline: {got:?}");
    assert_eq!(reply, b"3:Kok,");
    up.request();
}

#[test]
fn idle_connections_cost_little_memory() {
    // Regression: a session that had sent its first byte grew its read
    // buffer to 64 KiB; 300 such clients took 19 MiB.
    let dir = TestDir::new("qrelay_idle_memory");
    let q = Qrelay::start(&dir, &config(&dir, "", "return m:discard()"));
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", q.pid())).expect("status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("number")
    };
    let before = rss();
    let mut conns = Vec::new();
    for _ in 0..300 {
        let mut s = std::os::unix::net::UnixStream::connect(dir.join("qrelay.sock")).expect("connect");
        std::io::Write::write_all(&mut s, b"1").expect("write");
        conns.push(s);
    }
    // The highest RSS over 1.5 s (well inside the 5 s idle timeout): a
    // measurement window, not a wait for an event.
    let mut peak = 0;
    let end = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < end {
        peak = peak.max(rss());
        std::thread::sleep(Duration::from_millis(50));
    }
    let per_conn = (peak.saturating_sub(before)) / 300;
    assert!(per_conn < 32, "{per_conn} KiB per idle connection (RSS {before} -> {peak} KiB)");
    drop(conns);
}

/// Sends `request` to the Unix socket `path` and reads until EOF, for at
/// most `limit`: the reply bytes and how long it took.
fn timed_client(path: &Path, request: &[u8], limit: Duration) -> (Vec<u8>, Duration) {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("connect to qrelay");
    s.set_read_timeout(Some(limit)).expect("timeout");
    s.set_write_timeout(Some(limit)).expect("timeout");
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (out, start.elapsed())
}

/// Asserts that a discard request is answered at once (the daemon is not
/// held up by the sessions in flight).
fn assert_served_at_once(dir: &TestDir, what: &str) {
    let (got, took) = timed_client(&dir.join("qrelay.sock"), &encode_request(b"m", b"", &[b"fast@x"]), secs(30));
    assert_eq!(got, b"10:Kdiscarded,", "{what}: {}", got.escape_ascii());
    assert!(took < secs(2), "{what}: a discard took {took:?}");
}

#[test]
fn upstream_connect_timeout_of_20_seconds_and_failover() {
    // A listener with a full accept queue: the kernel drops the SYNs, and
    // without qrelay's 20 s bound the connect would last the kernel's SYN
    // retries (about 127 s).
    let dir = TestDir::new("qrelay_connect_timeout");
    let (listener, port) = full_listener();
    let good = ScriptedServer::unix(&dir.join("good.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!("full = qmqp_resolve('127.0.0.1:{port}') good = qmqp_resolve('{}')", good.entry),
            "local r = m.recipients[1]
             if r == 'full@x' then return m:connect(full) end
             if r == 'failover@x' then return m:connect({full, good}) end
             return m:discard()",
        ),
    );
    let client = |rcpt: &'static [u8]| {
        let path = dir.join("qrelay.sock");
        std::thread::spawn(move || timed_client(&path, &encode_request(b"m", b"", &[rcpt]), secs(90)))
    };
    let full = client(b"full@x");
    let failover = client(b"failover@x");
    // No signal says that qrelay has reached the connects: half a second
    // is far more than it needs; if it were too short, the check below
    // would only be weaker, never wrong.
    std::thread::sleep(Duration::from_millis(500));
    assert_served_at_once(&dir, "during the connects");
    let (got, took) = full.join().expect("join");
    assert_eq!(got, b"15:Zconnect failed,", "{}", got.escape_ascii());
    assert!(took >= Duration::from_secs(20) && took < Duration::from_secs(20) + secs(10), "{took:?}");
    let (got, took) = failover.join().expect("join");
    assert_eq!(got, b"3:Kok,", "{}", got.escape_ascii());
    assert!(took >= Duration::from_secs(20) && took < Duration::from_secs(20) + secs(10), "{took:?}");
    good.request();
    q.wait_log(&format!("to=<failover@x> size=1 reply=Kok relay={}", good.entry));
    drop(listener);
}

/// An upstream on the Unix socket `path` that reads one request, then
/// either says nothing (`trickle` false) or starts a 200-byte reply and
/// sends one byte of it a second, never finishing; it holds the
/// connection for at most `hold`. Each request read is sent on the channel.
fn unanswering_upstream(path: &Path, trickle: bool, hold: Duration) -> std::sync::mpsc::Receiver<()> {
    use std::io::{Read, Write};
    let l = std::os::unix::net::UnixListener::bind(path).expect("bind the upstream");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        s.set_read_timeout(Some(secs(30))).expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The request ends with the recipients' netstring and the outer comma.
        while !got.ends_with(b",,") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(());
        let end = Instant::now() + hold;
        if trickle && s.write_all(b"200:K").is_err() {
            return;
        }
        while Instant::now() < end {
            // The pace of the trickle, well inside qrelay's 5 s between reads.
            std::thread::sleep(Duration::from_secs(1));
            if trickle && s.write_all(b"x").is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn upstream_reply_timeouts_5_seconds_idle_and_60_seconds_in_all() {
    let dir = TestDir::new("qrelay_reply_timeout");
    let silent = dir.join("silent.sock");
    let trickle = dir.join("trickle.sock");
    let silent_got = unanswering_upstream(&silent, false, secs(100));
    let trickle_got = unanswering_upstream(&trickle, true, secs(100));
    let q = Qrelay::start(
        &dir,
        &config(
            &dir,
            &format!("silent = qmqp_resolve('{}') trickle = qmqp_resolve('{}')", silent.display(), trickle.display()),
            "local r = m.recipients[1]
             if r == 'silent@x' then return m:connect(silent) end
             if r == 'trickle@x' then return m:connect(trickle) end
             return m:discard()",
        ),
    );
    let client = |rcpt: &'static [u8]| {
        let path = dir.join("qrelay.sock");
        std::thread::spawn(move || timed_client(&path, &encode_request(b"m", b"", &[rcpt]), secs(150)))
    };
    let trickled = client(b"trickle@x");
    let silenced = client(b"silent@x");
    trickle_got.recv_timeout(secs(30)).expect("the trickling upstream got no request");
    silent_got.recv_timeout(secs(30)).expect("the silent upstream got no request");
    assert_served_at_once(&dir, "with two upstreams not answering");
    // An upstream that says nothing: 5 s between reads.
    let (got, took) = silenced.join().expect("join");
    assert_eq!(got, b"13:Zrelay failed,", "{}", got.escape_ascii());
    assert!(took >= Duration::from_secs(5) && took < Duration::from_secs(5) + secs(10), "{took:?}");
    // One that answers a byte a second but never finishes: 60 s in all.
    // Meanwhile, other clients are served as usual.
    while !trickled.is_finished() {
        assert_served_at_once(&dir, "while an upstream trickles its reply");
        std::thread::sleep(Duration::from_secs(5));
    }
    let (got, took) = trickled.join().expect("join");
    assert_eq!(got, b"13:Zrelay failed,", "{}", got.escape_ascii());
    assert!(took >= Duration::from_secs(60) && took < Duration::from_secs(60) + secs(10), "{took:?}");
    q.wait_log("to=<trickle@x> size=1 reply=Zrelay failed");
}

#[test]
fn ucspi_peer_from_the_environment_when_fd_0_is_not_a_unix_socket() {
    use std::io::{Read, Write};
    let dir = TestDir::new("qrelay_ucspi_env");
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"3:Kok,".to_vec()); 3]);
    let config_path = dir.join("ucspi.lua");
    std::fs::write(
        &config_path,
        format!(
            "up = qmqp_resolve('{}')\nqmqp_listen('/unused', function(m)\n\
             m:insert_header('X-Peer', tostring(m.uid) .. ' ' .. tostring(m.gid) .. ' ' .. tostring(m.pid))\n\
             return m:connect(up) end)\n",
            up.entry
        ),
    )
    .expect("write");
    let qrelay = || {
        let mut cmd = Command::new(bin("qrelay"));
        cmd.arg("--ucspi").arg("--config").arg(&config_path).env_clear();
        cmd
    };
    let ipc_env = [("IPCREMOTEEUID", "4242"), ("IPCREMOTEEGID", "4343"), ("IPCREMOTEPID", "4444")];
    let request = encode_request(MESSAGE, b"a@example.org", &[b"b@example.org"]);

    // fds 0 and 1 are pipes: s6-ipcserver's variables.
    let out = run(qrelay().envs(ipc_env), &request, secs(30));
    assert!(out.success() && out.stdout == b"3:Kok,", "{}", out.describe());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains("X-Peer: 4242 4343 4444\nReceived: from PID=4444 UID=4242 with QMQP\nFrom: "), "{got}");

    // Pipes and tcpserver's TCPREMOTEIP.
    let out = run(qrelay().env("TCPREMOTEIP", "192.0.2.7"), &request, secs(30));
    assert!(out.success() && out.stdout == b"3:Kok,", "{}", out.describe());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains("X-Peer: nil nil nil\nReceived: from [192.0.2.7] with QMQP\nFrom: "), "{got}");

    // fds 0 and 1 are a TCP socket, whose SO_PEERCRED (pid 0, uid -1)
    // must not count: the variables do.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (server, _) = l.accept().expect("accept");
    let mut cmd = qrelay();
    cmd.envs(ipc_env)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(server.try_clone().expect("dup"))))
        .stdout(std::process::Stdio::from(std::os::fd::OwnedFd::from(server)))
        .stderr(std::process::Stdio::null());
    let mut child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0).spawn().expect("start qrelay");
    // Our copy of the socket goes with the command: EOF comes when qrelay ends.
    drop(cmd);
    client.set_read_timeout(Some(secs(30))).expect("timeout");
    client.write_all(&request).expect("write");
    let mut reply = Vec::new();
    let _ = client.read_to_end(&mut reply);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(reply, b"3:Kok,", "{}", reply.escape_ascii());
    let got = String::from_utf8(up.request()).expect("utf-8");
    assert!(got.contains("X-Peer: 4242 4343 4444\nReceived: from PID=4444 UID=4242 with QMQP\nFrom: "), "{got}");
}
