//! qrelay's `pg` library against a real PostgreSQL (Debian's postgresql
//! package), started here with initdb in the test's directory, on a Unix
//! socket only, as `nobody` when the tests run as root; stopped by PID.
//! The handlers' decisions are seen through qmail-qmqpc's exit code and
//! the headers they insert (read by a scripted upstream).

mod qmqp_support;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainmail_tests::run::run;
use chainmail_tests::{TestDir, secs};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use qmqp_support::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: test\n\nbody line\n";

fn envelope(to: &str) -> Vec<u8> {
    format!("Fa@example.org\0T{to}\0\0").into_bytes()
}

/// The directory of the newest installed PostgreSQL's programs.
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install the Debian package postgresql (tests/run does it)")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, d)| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL server installed under /usr/lib/postgresql").1
}

/// A PostgreSQL server of the test's own: a fresh cluster in `dir/pg`,
/// listening on `dir/pg/sock/.s.PGSQL.5432` only, with trust
/// authentication for the user `postgres`. As root, its programs run as
/// `nobody`. Stopped (fast shutdown, then SIGKILL of its process group)
/// by PID on drop.
#[derive(Debug)]
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
}

impl Postgres {
    fn new(dir: &TestDir) -> Postgres {
        let root = dir.join("pg");
        let (data, sock) = (root.join("data"), root.join("sock"));
        for d in [&root, &data, &sock] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let user = nix::unistd::geteuid().is_root().then(|| {
            let nobody = nix::unistd::User::from_name("nobody").ok().flatten().expect("no user nobody");
            for d in [&data, &sock] {
                nix::unistd::chown(d.as_path(), Some(nobody.uid), Some(nobody.gid)).expect("chown to nobody");
            }
            (nobody.uid.as_raw(), nobody.gid.as_raw())
        });
        let mut pg = Postgres { bin: pg_bin_dir(), data, sock, log: root.join("server.log"), user, child: None };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(&pg.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let out = run(&mut initdb, b"", secs(120));
        assert_eq!(out.code(), Some(0), "initdb failed: {}", out.describe());
        pg.start();
        pg
    }

    /// One of its programs, as its user, with a clean environment.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.env_clear().env("LANG", "C").current_dir(self.data.parent().expect("pg dir"));
        if let Some((uid, gid)) = self.user {
            // As root, std also drops the supplementary groups.
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// Starts the server and waits (bounded, pg_isready) until it takes
    /// connections.
    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(&self.sock)
            .args(["-c", "listen_addresses=", "-c", "fsync=off", "-c", "max_connections=40"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        let deadline = Instant::now() + secs(60);
        loop {
            let mut ready = Command::new(self.bin.join("pg_isready"));
            ready.arg("-q").arg("-h").arg(&self.sock).env_clear();
            if run(&mut ready, b"", secs(10)).code() == Some(0) {
                return;
            }
            assert!(Instant::now() < deadline, "postgres did not get ready:\n{}", self.server_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT) by PID, waited for (bounded).
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).expect("signal postgres");
        let deadline = Instant::now() + secs(30);
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() >= deadline {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                panic!("postgres did not stop:\n{}", self.server_log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The connection string for qrelay.
    fn conninfo(&self) -> String {
        format!("host={} port=5432 user=postgres dbname=postgres", self.sock.display())
    }

    /// Runs `sql` with psql: its output (unaligned, tuples only).
    fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// Runs `sql` with psql in the database `db`.
    fn psql_in(&self, db: &str, sql: &str) -> String {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", db, "-h"])
            .arg(&self.sock)
            .arg("-c")
            .arg(sql)
            .env_clear();
        let out = run(&mut cmd, b"", secs(30));
        assert_eq!(out.code(), Some(0), "psql {sql}: {}", out.describe());
        out.stdout_str().trim().to_owned()
    }

    /// Waits (bounded, polling with psql) until `sql` prints `want`.
    fn wait_for(&self, sql: &str, want: &str) {
        let deadline = Instant::now() + secs(30);
        loop {
            let got = self.psql(sql);
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{sql} printed {got:?}, not {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // Immediate shutdown, then the whole group.
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}

/// A server with the schema `mail` and its tables.
fn postgres_with_tables(dir: &TestDir) -> Postgres {
    let pg = Postgres::new(dir);
    pg.psql(
        "CREATE SCHEMA mail;
         CREATE TABLE mail.users (address text PRIMARY KEY, action text NOT NULL, tags text[], note text, seen int NOT NULL DEFAULT 0);
         INSERT INTO mail.users (address, action, tags) VALUES
           ('b@example.org', 'relay', '{red,\"dark blue\"}'),
           ('c@example.org', 'reject', '{}');
         CREATE TABLE mail.seen (payload text);",
    );
    pg
}

fn sock(dir: &TestDir) -> String {
    dir.join("qrelay.sock").display().to_string()
}

fn send_to(dir: &TestDir, to: &str) -> chainmail_tests::run::Output {
    let home = qmail_home(dir, &[&sock(dir)]);
    qmqpc(dir, &home, MESSAGE, &envelope(to))
}

/// The header `name`'s value in a request the upstream got.
fn header(request: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(request);
    let needle = format!("{name}: ");
    let start = text.find(&needle).unwrap_or_else(|| panic!("no {name} in {text}")) + needle.len();
    text[start..].lines().next().unwrap_or("").to_owned()
}

#[test]
fn lookup_decides_with_parameters_arrays_and_affected_rows() {
    let dir = TestDir::new("qrelay_pg_lookup");
    let pg = postgres_with_tables(&dir);
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let config = format!(
        r#"
db = pg:new('{conninfo}', 'mail')
up = qmqp_resolve('{up}')
-- The configuration runs before the daemon: no query (nil, error; no crash).
local none, why = db:execute('SELECT 1')
assert(none == nil and why:find('before the daemon'), why)
qmqp_listen('{sock}', function(m)
  local to = m.recipients[1]
  if to == 'bad@example.org' then
    local r, err = db:execute('SELECT * FROM nosuchtable')
    if r == nil and err:find('nosuchtable') then return m:discard() end
    return m:reject()
  end
  local r = assert(db:execute('SELECT action, tags, note FROM users WHERE address = $1', {{to}}))
  local row = r:fetch({{}}, 'a')
  if not row or row.action ~= 'relay' then return m:reject() end
  m:insert_header('X-Cols', table.concat(r:getcolnames(), ',') .. ' ' .. r:numrows())
  m:insert_header('X-Tags', table.concat(pg:decode_array(row.tags), '|'))
  m:insert_header('X-Note', tostring(row.note))
  local n = r:fetch({{}}, 'n')
  m:insert_header('X-End', tostring(n) .. ' ' .. tostring(r:close()))
  local e = assert(db:execute('SELECT array_length($1::text[], 1), ($1::text[])[2], $1::text[], $2::int + 1, $3::text IS NULL',
                              {{pg:encode_array({{'x y', 'q"uote', 'back\\slash'}}), 41, n = 3}}))
  local len, second, literal, sum, isnull = e:fetch()
  m:insert_header('X-Array', len .. ' ' .. second .. ' ' .. literal .. ' ' .. sum .. ' ' .. isnull)
  local decoded = pg:decode_array(literal)
  m:insert_header('X-Back', decoded[3] .. ' ' .. #decoded)
  local count = assert(db:execute('UPDATE users SET seen = seen + 1 WHERE address = $1 OR address = $2', {{to, 'c@example.org'}}))
  m:insert_header('X-Updated', math.type(count) .. ' ' .. count)
  local q = assert(db:execute("SELECT 'it''s', $1::text", {{"it's \\ 'quoted'; --"}}))
  local a, b = q:fetch()
  m:insert_header('X-Quoted', a .. ' ' .. b)
  local rows = assert(db:execute('SELECT i, NULLIF(i % 3, 0) FROM generate_series(1, 1000) i'))
  local seen, nulls, last = 0, 0, nil
  while true do
    local i, rest = rows:fetch()
    if i == nil then break end
    seen, last = seen + 1, i
    if rest == nil then nulls = nulls + 1 end
  end
  m:insert_header('X-Rows', seen .. ' ' .. nulls .. ' ' .. last .. ' ' .. rows:numrows())
  local big, why = db:execute("SELECT repeat('x', 1000000) FROM generate_series(1, 20)")
  m:insert_header('X-Big', tostring(big) .. ' ' .. why)
  local two, err2 = db:execute('SELECT $1::int; SELECT 2', {{1}})
  m:insert_header('X-Two', tostring(two) .. ' ' .. err2)
  return m:connect(up)
end)
"#,
        conninfo = pg.conninfo(),
        up = up.entry,
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    let out = send_to(&dir, "b@example.org");
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), q.stderr());
    let got = up.request();
    assert_eq!(header(&got, "X-Cols"), "action,tags,note 1");
    assert_eq!(header(&got, "X-Tags"), "red|dark blue");
    assert_eq!(header(&got, "X-Note"), "nil", "SQL NULL is nil");
    assert_eq!(header(&got, "X-End"), "nil false", "the end of the rows closes the result");
    assert_eq!(header(&got, "X-Array"), r#"3 q"uote {"x y","q\"uote","back\\slash"} 42 t"#);
    assert_eq!(header(&got, "X-Back"), r"back\slash 3");
    assert_eq!(header(&got, "X-Updated"), "integer 2");
    assert_eq!(header(&got, "X-Quoted"), r"it's it's \ 'quoted'; --");
    assert_eq!(header(&got, "X-Rows"), "1000 333 1000 1000");
    assert_eq!(header(&got, "X-Big"), "nil result larger than 16777216 bytes");
    assert_eq!(header(&got, "X-Two"), "nil with parameters, the SQL must be one statement");
    assert_eq!(
        pg.psql("SELECT string_agg(address || '=' || seen, ',' ORDER BY address) FROM mail.users"),
        "b@example.org=1,c@example.org=1"
    );
    // The lookup decides: a rejecting row, no row, an SQL error.
    assert_eq!(send_to(&dir, "c@example.org").code(), Some(31), "{}", q.stderr());
    assert_eq!(send_to(&dir, "nobody@example.org").code(), Some(31), "{}", q.stderr());
    assert_eq!(send_to(&dir, "bad@example.org").code(), Some(0), "nil, error for an SQL error\n{}", q.stderr());
}

#[test]
fn notify_reaches_the_listen_callback() {
    let dir = TestDir::new("qrelay_pg_notify");
    let pg = postgres_with_tables(&dir);
    let config = format!(
        r#"
db = pg:new('{conninfo}', 'mail')
last = 'none'
db:listen('news', function(channel, payload)
  last = channel .. ':' .. payload
  assert(db:execute('INSERT INTO seen (payload) VALUES ($1)', {{payload}}))
end)
qmqp_listen('{sock}', function(m)
  if last == 'news:hello world' then return m:discard() end
  return m:reject()
end)
"#,
        conninfo = pg.conninfo(),
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    q.wait_log("pg: connected");
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(31));
    pg.psql("NOTIFY news, 'hello world'");
    // The callback's own query says it ran.
    pg.wait_for("SELECT string_agg(payload, ',') FROM mail.seen", "hello world");
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(0), "{}", q.stderr());
}

#[test]
fn a_slow_query_does_not_hold_up_other_clients() {
    let dir = TestDir::new("qrelay_pg_slow");
    let pg = postgres_with_tables(&dir);
    let config = format!(
        r#"
slow = pg:new('{conninfo}', 'mail')
quick = pg:new('{conninfo}', 'mail')
short = pg:new('{conninfo}', 'mail', {{timeout = 0.5}})
qmqp_listen('{sock}', function(m)
  local to = m.recipients[1]
  if to == 'slow@example.org' then
    assert(slow:execute('SELECT pg_sleep(2)'))
    return m:discard()
  end
  if to == 'short@example.org' then
    local r, err = short:execute('SELECT pg_sleep(5)')
    if r == nil and err:find('timeout') then return m:reject() end
    return m:discard()
  end
  local r = assert(quick:execute('SELECT count(*) FROM users'))
  if r:fetch() == '2' then return m:discard() end
  return m:reject()
end)
"#,
        conninfo = pg.conninfo(),
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    q.wait_log_count("pg: connected", 3);
    let started = Instant::now();
    let qrelay_sock = sock(&dir);
    let slow = std::thread::spawn(move || {
        let dir = TestDir::new("qrelay_pg_slow_client");
        let home = qmail_home(&dir, &[&qrelay_sock]);
        let out = qmqpc(&dir, &home, MESSAGE, &envelope("slow@example.org"));
        (out.code(), started.elapsed())
    });
    // The slow query is running on the server.
    pg.wait_for("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(2)' AND state = 'active'", "1");
    let out = send_to(&dir, "quick@example.org");
    let quick_done = started.elapsed();
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), q.stderr());
    let (slow_code, slow_done) = slow.join().expect("slow client");
    assert_eq!(slow_code, Some(0), "{}", q.stderr());
    assert!(slow_done >= Duration::from_secs(2), "the slow query took {slow_done:?}");
    assert!(quick_done < slow_done, "the quick client ({quick_done:?}) waited for the slow one ({slow_done:?})");
    // The query timeout: nil, error after 0.5 s, not the 5 s of the query.
    let t = Instant::now();
    assert_eq!(send_to(&dir, "short@example.org").code(), Some(31), "{}", q.stderr());
    assert!(t.elapsed() < Duration::from_secs(4), "the timeout took {:?}", t.elapsed());
}

#[test]
fn the_database_goes_away_and_comes_back() {
    let dir = TestDir::new("qrelay_pg_restart");
    let mut pg = postgres_with_tables(&dir);
    let config = format!(
        r#"
db = pg:new('{conninfo}', 'mail')
db:listen('news', function(channel, payload)
  assert(db:execute('INSERT INTO seen (payload) VALUES ($1)', {{payload}}))
end)
qmqp_listen('{sock}', function(m)
  local r, err = db:execute('SELECT count(*) FROM users')
  if r == nil then return m:reject() end
  return m:discard()
end)
"#,
        conninfo = pg.conninfo(),
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    q.wait_log("pg: connected");
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(0), "{}", q.stderr());
    pg.stop();
    // Down: the handler's fallback.
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(31), "{}", q.stderr());
    q.wait_log("connection lost");
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(31), "{}", q.stderr());
    pg.start();
    q.wait_log_count("pg: connected", 2);
    assert_eq!(send_to(&dir, "x@example.org").code(), Some(0), "{}", q.stderr());
    // The LISTEN was made again on the new connection.
    pg.psql("NOTIFY news, 'after'");
    pg.wait_for("SELECT string_agg(payload, ',') FROM mail.seen", "after");
    assert!(chainmail_tests::procs::stat(q.pid()).is_some(), "qrelay is gone");
}

#[test]
fn the_instruction_limit_counts_across_queries() {
    let dir = TestDir::new("qrelay_pg_limit");
    let pg = Postgres::new(&dir);
    // About 40 000 instructions per round: 2 rounds fit in the limit, 50
    // do not, though each stretch between two queries would.
    let config = format!(
        r#"
handler_instruction_limit = 200000
db = pg:new('{conninfo}')
qmqp_listen('{sock}', function(m)
  local to = m.recipients[1]
  if to == 'co@example.org' then coroutine.wrap(function() while true do end end)() end
  local rounds = to == 'many@example.org' and 50 or 2
  for i = 1, rounds do
    local x = 0
    for j = 1, 10000 do x = x + j end
    assert(db:execute('SELECT $1::int', {{i}}))
  end
  return m:discard()
end)
"#,
        conninfo = pg.conninfo(),
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    assert_eq!(send_to(&dir, "two@example.org").code(), Some(0), "{}", q.stderr());
    assert_eq!(send_to(&dir, "many@example.org").code(), Some(71), "{}", q.stderr());
    q.wait_log("instruction limit exceeded");
    // A coroutine the handler makes has the same limit.
    assert_eq!(send_to(&dir, "co@example.org").code(), Some(71), "{}", q.stderr());
    q.wait_log_count("instruction limit exceeded", 2);
    assert_eq!(send_to(&dir, "two@example.org").code(), Some(0), "{}", q.stderr());
}

#[test]
fn sixteen_clients_share_one_connection() {
    let dir = TestDir::new("qrelay_pg_load");
    let pg = postgres_with_tables(&dir);
    let sink = QmqpSink::unix(&dir, "sink.sock");
    // Every handler looks up and counts: the first queries of the same SQL
    // arrive together (the statement is prepared by the first, the others
    // are pipelined behind it).
    let config = format!(
        r#"
db = pg:new('{conninfo}', 'mail')
sink = qmqp_resolve('{sink}')
qmqp_listen('{sock}', function(m)
  local r = assert(db:execute('SELECT action FROM users WHERE address = $1', {{m.recipients[1]}}))
  local row = r:fetch({{}}, 'a')
  if not row or row.action ~= 'relay' then return m:reject() end
  assert(db:execute('UPDATE users SET seen = seen + 1 WHERE address = $1', {{m.recipients[1]}}) == 1)
  return m:connect(sink)
end)
"#,
        conninfo = pg.conninfo(),
        sink = sink.path.as_ref().expect("unix sink").display(),
        sock = sock(&dir),
    );
    let q = Qrelay::start(&dir, &config);
    let mut cmd = Command::new(chainmail_tests::find_program("qmqp-source"));
    cmd.args(["-m", "400", "-s", "16", "-f", "a@example.org", "-t", "b@example.org"])
        .arg(format!("unix:{}", sock(&dir)));
    let out = run(&mut cmd, b"", secs(120));
    assert!(out.success(), "{}\n{}", out.describe(), q.stderr());
    sink.wait_count(400, secs(30));
    assert_eq!(pg.psql("SELECT seen FROM mail.users WHERE address = 'b@example.org'"), "400");
}

/// The seed's `pg` snippets, verbatim (`pg:new('dbname=foo', 'schemaname')`
/// and the rest): the server is found as libpq finds it, through `PGHOST`,
/// `PGPORT` and `PGUSER` in qrelay's environment.
#[test]
fn seed_examples_verbatim_with_the_libpq_environment() {
    let dir = TestDir::new("qrelay_pg_seed");
    let pg = Postgres::new(&dir);
    pg.psql("CREATE DATABASE foo");
    pg.psql_in(
        "foo",
        "CREATE SCHEMA schemaname;
         CREATE TABLE schemaname.bar (id int PRIMARY KEY, name text);
         INSERT INTO schemaname.bar VALUES (42, 'forty-two');",
    );
    let up = ScriptedServer::unix(&dir.join("up.sock"), vec![Script::Reply(b"3:Kok,".to_vec())]);
    let config = format!(
        r#"
db = pg:new('dbname=foo', 'schemaname')
db:listen('bar', function() print("Received a PostgreSQL NOTIFY") end)
up = qmqp_resolve('{up}')
qmqp_listen('{sock}', function(m)
  local result = assert(db:execute('SELECT id, name FROM bar')) local row = result:fetch({{}}, "a") print(row.id, row.name)
  m:insert_header('X-Row', row.id .. ' ' .. row.name)
  local result = assert( db:execute('SELECT name FROM bar WHERE id=$1', {{42}}))
  m:insert_header('X-Name', result:fetch())
  return m:connect(up)
end)
"#,
        up = up.entry,
        sock = sock(&dir),
    );
    let env: Vec<std::ffi::OsString> =
        vec![format!("PGHOST={}", pg.sock.display()).into(), "PGPORT=5432".into(), "PGUSER=postgres".into()];
    let q = Qrelay::start_with(&dir, &config, |program, args| {
        let mut cmd = Command::new("/usr/bin/env");
        cmd.args(&env).arg(program).args(args);
        cmd
    });
    // The LISTEN is issued once the connection is up; a NOTIFY meanwhile
    // must not disturb anything.
    pg.psql_in("foo", "NOTIFY bar");
    let out = send_to(&dir, "b@example.org");
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), q.stderr());
    let got = up.request();
    assert_eq!(header(&got, "X-Row"), "42 forty-two", "values come back as strings, by column name");
    assert_eq!(header(&got, "X-Name"), "forty-two");
    assert!(q.stderr().contains("pg: connected"), "{}", q.stderr());
}
