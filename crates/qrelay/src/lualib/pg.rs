//! `pg`: a PostgreSQL client for the scripts (tokio-postgres), with
//! LuaSQL's PostgreSQL conventions.
//!
//! - `db = pg:new(CONNINFO, SCHEMA [, {timeout=SECONDS}])` at startup: one
//!   connection, made in the background once the daemon runs and remade
//!   after a loss (with a backoff, the `listen` channels listened to
//!   again); `search_path` is set to SCHEMA on each connection.
//! - `db:execute(SQL [, {PARAMS}])` (in a handler, a `listen` callback or
//!   `reload()`: it yields while the query runs) returns a result object
//!   for a statement with rows, the number of affected rows for one
//!   without, and `nil, error` for every failure (the database down, the
//!   query failing, the timeout). Values are strings (the server's text
//!   form), SQL NULL is nil.
//! - `result:fetch([TABLE [, MODE]])`, `numrows()`, `getcolnames()`,
//!   `close()` as LuaSQL's cursor.
//! - `pg:encode_array(TABLE)`, `pg:decode_array(STRING)`.
//! - `db:listen(CHANNEL, CALLBACK)`: each NOTIFY on CHANNEL calls
//!   `CALLBACK(CHANNEL, PAYLOAD)` with a handler's limits.
//!
//! Queries go as simple queries, so that results come back in the text
//! form; a query with parameters is prepared (`PREPARE` with the SQL as
//! given, once per connection and SQL text: [`MAX_CACHED_STATEMENTS`]) and
//! run with `EXECUTE` with the parameters as quoted literals of unknown
//! type, which the server converts as it does text parameters.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;
use mlua::{AnyUserData, Function, Lua, MultiValue, Table, UserData, UserDataRef, Value, Variadic};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, SimpleColumn, SimpleQueryMessage};

use super::pg_array::{self, Element};
use crate::script::{Module, call_limited, lua_error_text};

/// How long a query may take (from the call, waiting for the connection
/// included) unless `pg:new`'s `timeout` says otherwise; the server is
/// told the same as `statement_timeout`.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout` a script may set.
const MAX_QUERY_TIMEOUT: f64 = 3600.0;
/// Connecting (and the setup after it) may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before the first reconnection attempt, doubled after each
/// failure up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The most bytes a result may hold (outside the Lua state's memory limit).
const MAX_RESULT_BYTES: usize = 16 * 1024 * 1024;
/// Notifications waiting for their callbacks; more are dropped (with a
/// warning).
const MAX_PENDING_NOTIFICATIONS: usize = 1024;
/// The most `listen` callbacks per database.
const MAX_LISTENS: usize = 256;
/// The most prepared statements kept per connection; past that, a new SQL
/// text is prepared, run and deallocated each time.
const MAX_CACHED_STATEMENTS: usize = 256;
/// Where libpq (as Debian builds it) looks for the server without a host.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// The `pg` table in the registry (whatever the global `pg` becomes).
const PG_TABLE: &str = "qrelay.pg";

fn rt(msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(msg)
}

/// The `pg` module.
#[derive(Debug)]
pub struct Pg;

/// The databases `pg:new` made (app data), started with the daemon.
#[derive(Debug, Default)]
struct Databases {
    all: RefCell<Vec<Rc<Database>>>,
    started: Cell<bool>,
}

impl Module for Pg {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        lua.set_app_data(Databases::default());
        let pg = lua.create_table()?;
        pg.set("new", lua.create_function(|lua, args: Variadic<Value>| new_database(lua, args))?)?;
        pg.set(
            "encode_array",
            lua.create_function(|lua, args: Variadic<Value>| {
                let value = without_self(lua, args).into_iter().next().unwrap_or(Value::Nil);
                Ok(match encode_array(lua, &value) {
                    Ok(s) => (Some(lua.create_string(&s)?), None),
                    Err(e) => (None, Some(e)),
                })
            })?,
        )?;
        pg.set(
            "decode_array",
            lua.create_function(|lua, args: Variadic<Value>| {
                let Some(Value::String(s)) = without_self(lua, args).into_iter().next() else {
                    return Ok((None, Some("decode_array: expected a string".to_owned())));
                };
                Ok(match pg_array::decode(&s.as_bytes()) {
                    Ok(elements) => (Some(array_table(lua, &elements)?), None),
                    Err(e) => (None, Some(format!("decode_array: {e}"))),
                })
            })?,
        )?;
        lua.set_named_registry_value(PG_TABLE, &pg)?;
        lua.globals().set("pg", pg)
    }

    fn start(&self, lua: &Lua) {
        let Some(dbs) = lua.app_data_ref::<Databases>() else { return };
        dbs.started.set(true);
        for db in dbs.all.borrow().iter() {
            let (tx, rx) = mpsc::channel(MAX_PENDING_NOTIFICATIONS);
            tokio::task::spawn_local(maintain(Rc::clone(db), tx));
            tokio::task::spawn_local(dispatch(lua.clone(), Rc::clone(db), rx));
        }
    }
}

/// The arguments of a `pg` function without the `pg` table itself (so
/// that `pg:f(x)` and `pg.f(x)` both work).
fn without_self(lua: &Lua, args: Variadic<Value>) -> Vec<Value> {
    let mut args: Vec<Value> = args.into_iter().collect();
    let pg: Option<Table> = lua.named_registry_value(PG_TABLE).ok();
    if let (Some(Value::Table(first)), Some(pg)) = (args.first(), pg) {
        if *first == pg {
            args.remove(0);
        }
    }
    args
}

/// `pg:new(CONNINFO, SCHEMA [, {timeout=SECONDS}])`.
fn new_database(lua: &Lua, args: Variadic<Value>) -> mlua::Result<Db> {
    let dbs = lua.app_data_ref::<Databases>().ok_or_else(|| rt("pg: not installed"))?;
    if dbs.started.get() {
        return Err(rt("pg:new: only at startup (in the configuration)"));
    }
    let mut args = without_self(lua, args).into_iter();
    let conninfo = match args.next() {
        Some(Value::String(s)) => s.to_str()?.to_owned(),
        _ => return Err(rt("pg:new: expected a connection string")),
    };
    let schema = match args.next() {
        None | Some(Value::Nil) => None,
        Some(Value::String(s)) if s.as_bytes().is_empty() => None,
        Some(Value::String(s)) => Some(s.to_str()?.to_owned()),
        Some(_) => return Err(rt("pg:new: the schema must be a string")),
    };
    let mut timeout = DEFAULT_QUERY_TIMEOUT;
    match args.next() {
        None | Some(Value::Nil) => {}
        Some(Value::Table(t)) => {
            if let Some(secs) = t.get::<Option<f64>>("timeout")? {
                if !(secs > 0.0 && secs <= MAX_QUERY_TIMEOUT) {
                    return Err(rt("pg:new: timeout must be more than 0 and at most 3600 seconds"));
                }
                timeout = Duration::from_secs_f64(secs);
            }
        }
        Some(_) => return Err(rt("pg:new: the options must be a table")),
    }
    let mut config = Config::from_str(&conninfo).map_err(|e| rt(format!("pg:new: bad connection string: {e}")))?;
    libpq_environment(&mut config, |name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .map_err(|e| rt(format!("pg:new: {e}")))?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        config.host_path(DEFAULT_SOCKET_DIR);
    }
    if config.get_user().is_none() {
        // libpq's default: the name of the user we run as.
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten();
        config.user(user.map_or_else(|| "postgres".to_owned(), |u| u.name));
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err(rt("pg:new: sslmode=require: TLS to the database is not supported"));
    }
    if config.get_connect_timeout().is_none_or(|t| *t > CONNECT_TIMEOUT) {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("qrelay");
    }
    let db = Rc::new(Database {
        config,
        schema,
        timeout,
        state: RefCell::new(State::Connecting),
        changed: Notify::new(),
        channels: RefCell::default(),
    });
    dbs.all.borrow_mut().push(Rc::clone(&db));
    Ok(Db(db))
}

/// What libpq takes from the environment for what CONNINFO leaves out, so
/// that a script written for the original (`pg:new('dbname=foo', ...)`)
/// reaches the same server: `PGHOST` (a directory for a Unix socket, or
/// host names, comma-separated), `PGPORT`, `PGUSER`, `PGDATABASE`,
/// `PGPASSWORD`.
fn libpq_environment(config: &mut Config, var: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        if let Some(hosts) = var("PGHOST") {
            for host in hosts.split(',') {
                if host.starts_with('/') {
                    config.host_path(host);
                } else {
                    config.host(host);
                }
            }
        }
    }
    if config.get_ports().is_empty() {
        if let Some(port) = var("PGPORT") {
            config.port(port.parse().map_err(|_| format!("PGPORT is not a port number: {port:?}"))?);
        }
    }
    if config.get_user().is_none() {
        if let Some(user) = var("PGUSER") {
            config.user(user);
        }
    }
    if config.get_dbname().is_none() {
        if let Some(db) = var("PGDATABASE") {
            config.dbname(db);
        }
    }
    if config.get_password().is_none() {
        if let Some(pw) = var("PGPASSWORD") {
            config.password(pw);
        }
    }
    Ok(())
}

/// Where a database's connection is.
enum State {
    /// The first connection is being made.
    Connecting,
    /// Connected.
    Up(Rc<Connection>),
    /// Not connected (being remade in the background): why.
    Down(String),
}

/// One `pg:new` database: its configuration and its connection.
struct Database {
    config: Config,
    schema: Option<String>,
    timeout: Duration,
    state: RefCell<State>,
    /// Woken when `state` changes.
    changed: Notify,
    /// The `listen` channels and their callbacks.
    channels: RefCell<Vec<(String, Function)>>,
}

/// A connection and what was prepared on it.
struct Connection {
    client: Client,
    /// SQL text -> the name of its prepared statement.
    statements: RefCell<HashMap<String, Rc<str>>>,
    next_statement: Cell<u64>,
}

impl Connection {
    fn new_name(&self) -> Rc<str> {
        let n = self.next_statement.get();
        self.next_statement.set(n + 1);
        format!("qrelay_{n}").into()
    }

    /// Forgets `name` (after an error) and deallocates it in the
    /// background: the queries already sent with it come first.
    fn forget(self: &Rc<Self>, sql: &str, name: Rc<str>) {
        let mut statements = self.statements.borrow_mut();
        if statements.get(sql) == Some(&name) {
            statements.remove(sql);
        }
        let c = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, c.client.batch_execute(&format!("DEALLOCATE {name}"))).await;
        });
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("hosts", &self.config.get_hosts()).finish_non_exhaustive()
    }
}

impl Database {
    fn set_state(&self, state: State) {
        *self.state.borrow_mut() = state;
        self.changed.notify_waiters();
    }

    /// The client, waiting until `deadline` while the first connection is
    /// being made.
    async fn connection(&self, deadline: tokio::time::Instant) -> Result<Rc<Connection>, String> {
        loop {
            let changed = self.changed.notified();
            match &*self.state.borrow() {
                State::Up(c) => return Ok(Rc::clone(c)),
                State::Down(why) => return Err(format!("database unavailable: {why}")),
                State::Connecting => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err("database unavailable: timeout while connecting".to_owned());
            }
        }
    }

    /// Where it is, for the log.
    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!("{} database {}", hosts.join(","), self.config.get_dbname().unwrap_or("(default)"))
    }
}

fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// An SQL identifier, quoted.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal (escape syntax, so that it means the same whatever
/// `standard_conforming_strings` says).
fn quote_literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// After a connection is made: the search path, the statement timeout,
/// the LISTENs.
async fn setup(db: &Database, client: &Client) -> Result<(), tokio_postgres::Error> {
    let mut sql = format!("SET statement_timeout = {};", db.timeout.as_millis());
    if let Some(schema) = &db.schema {
        sql.push_str(&format!("SELECT set_config('search_path', {}, false);", quote_literal(schema)));
    }
    let mut seen = Vec::new();
    for (channel, _) in db.channels.borrow().iter() {
        if !seen.contains(channel) {
            sql.push_str(&format!("LISTEN {};", quote_identifier(channel)));
            seen.push(channel.clone());
        }
    }
    client.batch_execute(&sql).await
}

/// Keeps the connection of `db` up: connects, drives the connection
/// (notifications go to `notifications`), and after a failure or a loss
/// connects again after a pause that doubles up to [`BACKOFF_MAX`].
async fn maintain(db: Rc<Database>, notifications: mpsc::Sender<(String, String)>) {
    let mut backoff = BACKOFF_FIRST;
    let mut last_error = String::new();
    loop {
        let why = match tokio::time::timeout(CONNECT_TIMEOUT, db.config.connect(NoTls)).await {
            Err(_) => "connect timeout".to_owned(),
            Ok(Err(e)) => error_text(&e),
            Ok(Ok((client, mut connection))) => {
                let driver = async {
                    loop {
                        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                let note = (n.channel().to_owned(), n.payload().to_owned());
                                if notifications.try_send(note).is_err() {
                                    chainmail_sys::diag::warn(format_args!(
                                        "pg: too many notifications waiting: one on {} dropped",
                                        n.channel()
                                    ));
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return error_text(&e),
                            None => return "the server closed the connection".to_owned(),
                        }
                    }
                };
                let mut driver = std::pin::pin!(driver);
                let ready = tokio::select! {
                    r = tokio::time::timeout(CONNECT_TIMEOUT, setup(&db, &client)) => match r {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(format!("setting up the connection: {}", error_text(&e))),
                        Err(_) => Err("timeout setting up the connection".to_owned()),
                    },
                    why = &mut driver => Err(why),
                };
                match ready {
                    Err(why) => why,
                    Ok(()) => {
                        chainmail_sys::diag::info(format_args!("pg: connected to {}", db.describe()));
                        db.set_state(State::Up(Rc::new(Connection {
                            client,
                            statements: RefCell::default(),
                            next_statement: Cell::new(0),
                        })));
                        backoff = BACKOFF_FIRST;
                        last_error.clear();
                        let why = driver.await;
                        format!("connection lost: {why}")
                    }
                }
            }
        };
        if why != last_error {
            chainmail_sys::diag::warn(format_args!("pg: {}: {why} (retrying)", db.describe()));
            last_error = why.clone();
        }
        db.set_state(State::Down(why));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Calls the `listen` callbacks of each notification, one at a time, with
/// a handler's limits.
async fn dispatch(lua: Lua, db: Rc<Database>, mut notifications: mpsc::Receiver<(String, String)>) {
    while let Some((channel, payload)) = notifications.recv().await {
        let callbacks: Vec<Function> =
            db.channels.borrow().iter().filter(|(c, _)| *c == channel).map(|(_, f)| f.clone()).collect();
        for f in callbacks {
            if let Err(e) = call_limited::<()>(&lua, &f, (channel.as_str(), payload.as_str())).await {
                chainmail_sys::diag::warn(format_args!(
                    "pg: listen callback for {channel} failed: {}",
                    lua_error_text(&e)
                ));
            }
        }
    }
}

/// What a statement gave.
enum Outcome {
    Rows(Arc<[SimpleColumn]>, Vec<Vec<Option<String>>>),
    Count(u64),
}

/// Which statement's outcome a query returns.
#[derive(Clone, Copy)]
enum Pick {
    /// The last (LuaSQL: the last statement of several).
    Last,
    /// The `n`th from 0 (the EXECUTE after the PREPARE) of exactly
    /// `of` statements (more: the SQL given with parameters held several,
    /// which libpq refuses too).
    Nth { n: usize, of: usize },
}

/// Runs `sql` as one simple query; the outcome `pick` says.
async fn simple_query(client: &Client, sql: &str, pick: Pick) -> Result<Outcome, String> {
    let stream = client.simple_query_raw(sql).await.map_err(|e| error_text(&e))?;
    let mut stream = std::pin::pin!(stream);
    let mut done = 0usize;
    let mut chosen = None;
    let mut columns: Option<Arc<[SimpleColumn]>> = None;
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let wanted = |done: usize| match pick {
        Pick::Last => true,
        Pick::Nth { n, .. } => done == n,
    };
    while let Some(message) = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await {
        match message.map_err(|e| error_text(&e))? {
            SimpleQueryMessage::RowDescription(c) => {
                bytes = 0;
                rows.clear();
                columns = Some(c);
            }
            SimpleQueryMessage::Row(row) if wanted(done) => {
                let mut values = Vec::with_capacity(row.len());
                for i in 0..row.len() {
                    let v = row.try_get(i).map_err(|e| error_text(&e))?;
                    bytes += 16 + v.map_or(0, str::len);
                    values.push(v.map(str::to_owned));
                }
                if bytes > MAX_RESULT_BYTES {
                    return Err(format!("result larger than {MAX_RESULT_BYTES} bytes"));
                }
                rows.push(values);
            }
            SimpleQueryMessage::Row(_) => {}
            SimpleQueryMessage::CommandComplete(n) => {
                if wanted(done) {
                    chosen = Some(match columns.take() {
                        Some(c) => Outcome::Rows(c, std::mem::take(&mut rows)),
                        None => Outcome::Count(n),
                    });
                }
                columns = None;
                rows.clear();
                done += 1;
            }
            _ => {}
        }
    }
    if let Pick::Nth { of, .. } = pick {
        if done != of {
            return Err("with parameters, the SQL must be one statement".to_owned());
        }
    }
    chosen.ok_or_else(|| "no result".to_owned())
}

/// A parameter's text form (None: NULL).
fn param_text(lua: &Lua, v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::Boolean(b) => Ok(Some(b.to_string())),
        Value::Integer(_) | Value::Number(_) | Value::String(_) => {
            let s = lua.coerce_string(v.clone()).ok().flatten().ok_or("a parameter cannot be converted to text")?;
            let s = s.to_str().map_err(|_| "a parameter is not UTF-8")?.to_owned();
            if s.contains('\0') {
                return Err("a parameter contains a NUL byte".to_owned());
            }
            Ok(Some(s))
        }
        other => Err(format!("a parameter cannot be a {}", other.type_name())),
    }
}

/// `db:execute(SQL, PARAMS)`.
async fn execute(lua: &Lua, db: &Database, sql: &[u8], params: Option<Table>) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + db.timeout;
    let sql = std::str::from_utf8(sql).map_err(|_| "the SQL is not UTF-8".to_owned())?;
    if sql.contains('\0') {
        return Err("the SQL contains a NUL byte".to_owned());
    }
    let mut values = Vec::new();
    if let Some(t) = &params {
        let n = match t.raw_get::<Value>("n").map_err(|e| e.to_string())? {
            Value::Integer(n) if (0..=65535).contains(&n) => n as usize,
            _ => t.raw_len(),
        };
        if n > 65535 {
            return Err("too many parameters".to_owned());
        }
        for i in 1..=n {
            values.push(param_text(lua, &t.raw_get::<Value>(i).map_err(|e| e.to_string())?)?);
        }
    }
    let conn = db.connection(deadline).await?;
    let query = async {
        if values.is_empty() {
            return simple_query(&conn.client, sql, Pick::Last).await;
        }
        let literals: Vec<String> =
            values.iter().map(|v| v.as_deref().map_or("NULL".to_owned(), quote_literal)).collect();
        let execute = |name: &str| format!("EXECUTE {name}({})", literals.join(","));
        // Prepared already (perhaps by a query still in flight: the server
        // gets them in order); or prepared now, and kept while there is
        // room. The newline ends a trailing `--` comment of the SQL.
        let cached = conn.statements.borrow().get(sql).cloned();
        let (name, text, pick) = match cached {
            Some(name) => (Rc::clone(&name), execute(&name), Pick::Nth { n: 0, of: 1 }),
            None => {
                let name = conn.new_name();
                let prepare = format!("PREPARE {name} AS {sql}\n;{}", execute(&name));
                if conn.statements.borrow().len() < MAX_CACHED_STATEMENTS {
                    conn.statements.borrow_mut().insert(sql.to_owned(), Rc::clone(&name));
                    (name, prepare, Pick::Nth { n: 1, of: 2 })
                } else {
                    (Rc::clone(&name), format!("{prepare};DEALLOCATE {name}"), Pick::Nth { n: 1, of: 3 })
                }
            }
        };
        let r = simple_query(&conn.client, &text, pick).await;
        if r.is_err() {
            // The statement may be broken (or was never made): made anew
            // next time.
            conn.forget(sql, name);
        }
        r
    };
    let outcome = match tokio::time::timeout_at(deadline, query).await {
        Ok(r) => r?,
        Err(_) => return Err("query timeout".to_owned()),
    };
    Ok(match outcome {
        Outcome::Count(n) => Value::Integer(n as i64),
        Outcome::Rows(columns, rows) => Value::UserData(cursor(lua, &columns, rows).map_err(|e| lua_error_text(&e))?),
    })
}

/// A cursor over `rows`: they move into the Lua state (a table of row
/// tables, the userdata's user value), where its memory limit counts them.
fn cursor(lua: &Lua, columns: &[SimpleColumn], rows: Vec<Vec<Option<String>>>) -> mlua::Result<AnyUserData> {
    let t = lua.create_table_with_capacity(rows.len(), 0)?;
    for (i, row) in rows.into_iter().enumerate() {
        let r = lua.create_table_with_capacity(row.len(), 0)?;
        for (j, v) in row.into_iter().enumerate() {
            if let Some(v) = v {
                r.raw_set(j + 1, lua.create_string(v)?)?;
            }
        }
        t.raw_set(i + 1, r)?;
    }
    let columns: Vec<String> = columns.iter().map(|c| c.name().to_owned()).collect();
    let ud = lua.create_userdata(Cursor { columns, next: 1, total: t.raw_len(), closed: false })?;
    ud.set_user_value(t)?;
    Ok(ud)
}

/// A `pg:new` object.
#[derive(Debug, Clone)]
struct Db(Rc<Database>);

impl UserData for Db {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method(
            "execute",
            |lua, this: UserDataRef<Db>, (sql, params): (mlua::LuaString, Option<Table>)| {
                let db = Rc::clone(&this.0);
                let sql = sql.as_bytes().to_vec();
                // The configuration runs before the daemon (and its
                // runtime): no query there.
                let running = lua.app_data_ref::<Databases>().is_some_and(|d| d.started.get());
                async move {
                    if !running {
                        return Ok((Value::Nil, Some("pg: no queries before the daemon runs".to_owned())));
                    }
                    Ok(match execute(&lua, &db, &sql, params).await {
                        Ok(v) => (v, None),
                        Err(e) => (Value::Nil, Some(e)),
                    })
                }
            },
        );
        methods.add_method("listen", |_, this, (channel, callback): (String, Function)| {
            if channel.is_empty() || channel.contains('\0') {
                return Err(rt("listen: bad channel name"));
            }
            if this.0.channels.borrow().len() >= MAX_LISTENS {
                return Err(rt(format!("listen: more than {MAX_LISTENS} callbacks")));
            }
            let new = !this.0.channels.borrow().iter().any(|(c, _)| *c == channel);
            this.0.channels.borrow_mut().push((channel.clone(), callback));
            // Connected already (a listen after startup): LISTEN now; a
            // reconnection does it for all channels.
            if let (true, State::Up(conn)) = (new, &*this.0.state.borrow()) {
                let conn = Rc::clone(conn);
                tokio::task::spawn_local(async move {
                    let sql = format!("LISTEN {}", quote_identifier(&channel));
                    if let Err(e) = conn.client.batch_execute(&sql).await {
                        chainmail_sys::diag::warn(format_args!("pg: LISTEN {channel}: {}", error_text(&e)));
                    }
                });
            }
            Ok(true)
        });
        methods.add_method("escape", |_, _, s: String| Ok(s.replace('\'', "''")));
    }
}

/// A result with rows: LuaSQL's cursor.
#[derive(Debug)]
struct Cursor {
    columns: Vec<String>,
    /// The index of the next row in the user value.
    next: usize,
    total: usize,
    closed: bool,
}

impl UserData for Cursor {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_function("fetch", |_, (ud, table, mode): (AnyUserData, Option<Table>, Option<String>)| {
            let mut this = ud.borrow_mut::<Cursor>()?;
            if this.closed {
                return Err(rt("fetch: the result is closed"));
            }
            if this.next > this.total {
                // LuaSQL: the end closes the cursor.
                this.closed = true;
                ud.set_user_value(Value::Nil)?;
                return Ok(MultiValue::from_vec(vec![Value::Nil]));
            }
            let row: Table = ud.user_value::<Table>()?.raw_get(this.next)?;
            this.next += 1;
            let values = (1..=this.columns.len()).map(|j| row.raw_get::<Value>(j)).collect::<mlua::Result<Vec<_>>>()?;
            let Some(t) = table else { return Ok(MultiValue::from_vec(values)) };
            let mode = mode.unwrap_or_else(|| "n".to_owned());
            for (j, value) in values.into_iter().enumerate() {
                if mode.contains('n') {
                    t.raw_set(j + 1, value.clone())?;
                }
                if mode.contains('a') {
                    t.raw_set(this.columns[j].as_str(), value)?;
                }
            }
            Ok(MultiValue::from_vec(vec![Value::Table(t)]))
        });
        methods.add_method("numrows", |_, this, ()| Ok(this.total));
        methods.add_method("getcolnames", |lua, this, ()| {
            lua.create_sequence_from(this.columns.iter().map(String::as_str))
        });
        methods.add_function("close", |_, ud: AnyUserData| {
            let mut this = ud.borrow_mut::<Cursor>()?;
            let was_open = !this.closed;
            this.closed = true;
            ud.set_user_value(Value::Nil)?;
            Ok(was_open)
        });
    }
}

/// A Lua value as an array element.
fn element_of(lua: &Lua, v: &Value, depth: usize) -> Result<Element, String> {
    match v {
        Value::Nil => Ok(Element::Null),
        Value::Boolean(b) => Ok(Element::Text(b.to_string().into_bytes())),
        Value::Integer(_) | Value::Number(_) | Value::String(_) => {
            let s = lua.coerce_string(v.clone()).ok().flatten().ok_or("encode_array: a value cannot be text")?;
            Ok(Element::Text(s.as_bytes().to_vec()))
        }
        Value::Table(t) => Ok(Element::Array(elements_of(lua, t, depth + 1)?)),
        other => Err(format!("encode_array: cannot encode a {}", other.type_name())),
    }
}

/// The elements of the array `t` at nesting `depth` (from 1).
fn elements_of(lua: &Lua, t: &Table, depth: usize) -> Result<Vec<Element>, String> {
    if depth > pg_array::MAX_DEPTH {
        return Err(format!("encode_array: nested deeper than {} levels", pg_array::MAX_DEPTH));
    }
    let mut out = Vec::new();
    for i in 1..=t.raw_len() {
        out.push(element_of(lua, &t.raw_get::<Value>(i).map_err(|e| e.to_string())?, depth)?);
    }
    Ok(out)
}

/// `pg:encode_array(TABLE)`.
fn encode_array(lua: &Lua, v: &Value) -> Result<Vec<u8>, String> {
    let Value::Table(t) = v else { return Err("encode_array: expected a table".to_owned()) };
    pg_array::encode(&elements_of(lua, t, 1)?).map_err(|e| format!("encode_array: {e}"))
}

/// A decoded array as a Lua table (NULL: no value at its index).
fn array_table(lua: &Lua, elements: &[Element]) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(elements.len(), 0)?;
    for (i, e) in elements.iter().enumerate() {
        match e {
            Element::Null => {}
            Element::Text(s) => t.raw_set(i + 1, lua.create_string(s)?)?,
            Element::Array(inner) => t.raw_set(i + 1, array_table(lua, inner)?)?,
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's a \\ test"), "E'it''s a \\\\ test'");
        assert_eq!(quote_identifier("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn the_environment_fills_in_what_conninfo_leaves_out() {
        let env = |name: &str| {
            let v = match name {
                "PGHOST" => "/run/pg,db.example",
                "PGPORT" => "5433",
                "PGUSER" => "relay",
                "PGDATABASE" => "mail",
                "PGPASSWORD" => "secret",
                _ => return None,
            };
            Some(v.to_owned())
        };
        let mut c = Config::from_str("dbname=foo").expect("conninfo");
        libpq_environment(&mut c, env).expect("environment");
        assert_eq!(
            c.get_hosts(),
            [
                tokio_postgres::config::Host::Unix("/run/pg".into()),
                tokio_postgres::config::Host::Tcp("db.example".into())
            ]
        );
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_user(), Some("relay"));
        assert_eq!(c.get_dbname(), Some("foo"), "CONNINFO wins over PGDATABASE");
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        // What CONNINFO gives is kept.
        let mut c = Config::from_str("host=/tmp port=1 user=u password=p").expect("conninfo");
        libpq_environment(&mut c, env).expect("environment");
        assert_eq!(c.get_hosts(), [tokio_postgres::config::Host::Unix("/tmp".into())]);
        assert_eq!((c.get_ports(), c.get_user(), c.get_dbname()), (&[1][..], Some("u"), Some("mail")));
        assert_eq!(c.get_password(), Some(&b"p"[..]));
        // Nothing set: nothing changes; a bad port is an error.
        let mut c = Config::from_str("dbname=foo").expect("conninfo");
        libpq_environment(&mut c, |_| None).expect("environment");
        assert!(c.get_hosts().is_empty() && c.get_ports().is_empty() && c.get_user().is_none());
        let bad = |name: &str| (name == "PGPORT").then(|| "x".to_owned());
        assert!(libpq_environment(&mut c, bad).is_err_and(|e| e.contains("PGPORT")));
    }

    #[test]
    fn arrays_from_and_to_lua() {
        let lua = Lua::new();
        Pg.install(&lua).expect("install");
        let (ok, err): (Option<String>, Option<String>) =
            lua.load("return pg:encode_array({'a', 1, 2.5, true, {'x\"y'}})").eval().expect("eval");
        assert_eq!((ok.as_deref(), err), (Some("{\"a\",\"1\",\"2.5\",\"true\",{\"x\\\"y\"}}"), None));
        let (n, second, nested): (i64, Option<String>, String) = lua
            .load("local t = pg.decode_array('{a,NULL,{\"b c\"}}') return #t[3], t[2], t[3][1]")
            .eval()
            .expect("eval");
        assert_eq!((n, second, nested.as_str()), (1, None, "b c"));
        let (none, err): (Option<Table>, Option<String>) =
            lua.load("return pg:decode_array('{a')").eval().expect("eval");
        assert!(none.is_none() && err.is_some_and(|e| e.contains("malformed")));
        let (none, err): (Option<String>, Option<String>) =
            lua.load("local t = {} t[1] = t return pg:encode_array(t)").eval().expect("eval");
        assert!(none.is_none() && err.is_some_and(|e| e.contains("deeper")));
        let (none, err): (Option<String>, Option<String>) =
            lua.load("return pg:encode_array({print})").eval().expect("eval");
        assert!(none.is_none() && err.is_some_and(|e| e.contains("function")));
    }

    #[test]
    fn the_seeds_examples_load() {
        // Verbatim from the original's documentation (config-time part).
        let lua = Lua::new();
        Pg.install(&lua).expect("install");
        let seed = r#"
db = pg:new('dbname=foo', 'schemaname')
db:listen('bar', function() print("Received a PostgreSQL NOTIFY") end)
function handler(m)
  local result = assert(db:execute('SELECT id, name FROM bar'))
  local row = result:fetch({}, "a")
  print(row.id, row.name)
  local result = assert(
    db:execute('SELECT name FROM bar WHERE id=$1', {42}))
end
"#;
        lua.load(seed).exec().expect("the seed's example loads");
        let dbs = lua.app_data_ref::<Databases>().expect("databases");
        assert_eq!(dbs.all.borrow().len(), 1);
        let db = &dbs.all.borrow()[0];
        assert_eq!(db.schema.as_deref(), Some("schemaname"));
        assert_eq!(db.config.get_dbname(), Some("foo"));
        assert_eq!(db.channels.borrow().len(), 1);
        assert_eq!(db.timeout, DEFAULT_QUERY_TIMEOUT);
    }

    #[test]
    fn new_checks_its_arguments() {
        let lua = Lua::new();
        Pg.install(&lua).expect("install");
        assert!(lua.load("return pg:new('host=/tmp dbname=x user=u', 's')").exec().is_ok());
        assert!(lua.load("return pg:new('host=/tmp dbname=x', 's', {timeout=0.5})").exec().is_ok());
        for bad in [
            "pg:new('host=/tmp sslmode=require')",
            "pg:new('bad=option')",
            "pg:new(42)",
            "pg:new('host=/tmp', {})",
            "pg:new('host=/tmp', 's', {timeout=-1})",
        ] {
            assert!(lua.load(bad).exec().is_err(), "{bad}");
        }
    }
}
