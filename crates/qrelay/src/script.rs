//! The Lua side: loading the configuration (the config-time API), the mail
//! object the handler inspects, the action objects it returns, and the
//! limits on a handler call (instructions, memory).
//!
//! A handler call is a coroutine (mlua's async calls): a library function
//! that waits (a database query) yields it, and the other sessions go on
//! meanwhile. Its instruction budget is its own and survives the yields:
//! [`call_limited`] swaps it in for each resumption.
//!
//! The Lua state is built from [`MODULES`]: each module installs its
//! globals. The core ones are here; the libraries the seed documents
//! beyond the core (`socket`, `control_client`, `sodium`, `json`, `jwt`,
//! `pg`, the Pond log datagram) are meant to plug in as further entries.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use chainmail_qmqp::{AddressCheck, ServerSpec, check_address};
use mlua::{
    FromLuaMulti, Function, HookTriggers, IntoLuaMulti, Lua, MetaMethod, RegistryKey, Table, UserData, Value, VmState,
};

use crate::cgroup;

/// The original's default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/cm4all/qrelay/config.lua";
/// `max_size`'s default and bounds.
pub const DEFAULT_MAX_SIZE: i64 = 16 * 1024 * 1024;
const MIN_MAX_SIZE: i64 = 1024;
const MAX_MAX_SIZE: i64 = 1024 * 1024 * 1024;
/// `handler_instruction_limit`'s default: instructions per handler call.
pub const DEFAULT_INSTRUCTION_LIMIT: i64 = 10_000_000;
/// `lua_memory_limit`'s default: bytes of the whole Lua state.
pub const DEFAULT_MEMORY_LIMIT: i64 = 64 * 1024 * 1024;
/// How often the instruction hook runs.
const HOOK_EVERY: u32 = 1000;
/// At most this many headers per message (the original's cap).
pub const MAX_HEADERS: usize = 16;
/// exec's caps (the original's).
const MAX_ARGS: usize = 32;
const MAX_ENV: usize = 32;
const MAX_EXEC_TIMEOUT: f64 = 3600.0;

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenTarget {
    /// A Unix socket file.
    Path(PathBuf),
    /// An abstract Unix socket (`@name`).
    Abstract(Vec<u8>),
    /// The sockets systemd (or anything speaking `LISTEN_FDS`) passed.
    Systemd,
}

impl std::fmt::Display for ListenTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenTarget::Path(p) => write!(f, "{}", p.display()),
            ListenTarget::Abstract(n) => write!(f, "@{}", n.escape_ascii()),
            ListenTarget::Systemd => write!(f, "systemd"),
        }
    }
}

/// One `qmqp_listen` call.
#[derive(Debug)]
pub struct ListenSpec {
    /// Where.
    pub target: ListenTarget,
    /// The handler, in the registry.
    pub handler: Rc<RegistryKey>,
    /// `max_size` when the call was made.
    pub max_size: usize,
}

/// A loaded configuration.
#[derive(Debug)]
pub struct Config {
    /// The listeners, in the order of the calls.
    pub listeners: Vec<ListenSpec>,
    /// `address_check`.
    pub address_check: AddressCheck,
}

/// Where `connect` sends a message: one or more addresses, tried in order
/// while the connect fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TCP.
    Inet(SocketAddr),
    /// A Unix socket file.
    Unix(PathBuf),
    /// An abstract Unix socket.
    Abstract(Vec<u8>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Inet(a) => write!(f, "{a}"),
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Abstract(n) => write!(f, "@{}", n.escape_ascii()),
        }
    }
}

/// An `address` object (`qmqp_resolve()`).
#[derive(Debug, Clone)]
pub struct Address(pub Vec<Target>);

impl UserData for Address {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(this.0.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(","))
        });
    }
}

/// The `systemd` global: a marker, not the string "systemd".
#[derive(Debug, Clone, Copy)]
struct SystemdMarker;
impl UserData for SystemdMarker {}

/// How to run a program (`exec`, `exec_raw`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// The program's full path.
    pub program: PathBuf,
    /// Its arguments (after argv\[0\], which is the program).
    pub args: Vec<OsString>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// The time limit (`None`: only the session's).
    pub timeout: Option<Duration>,
    /// `exec_raw`: the message only, the exit status decides.
    pub raw: bool,
}

/// What the handler decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Relay by QMQP to the first target that takes the connection.
    Connect(Vec<Target>),
    /// Run a program.
    Exec(ExecSpec),
    /// Pretend delivery: `Kdiscarded`.
    Discard,
    /// Refuse: `Drejected`.
    Reject,
}

impl UserData for Action {}

fn rt(msg: impl std::fmt::Display) -> mlua::Error {
    mlua::Error::runtime(msg)
}

/// A target from a string: a numeric IP (port 628), `ip:port`,
/// `[v6]:port`, `/path`, `@name`; no name resolution at run time.
fn target_of_str(s: &str) -> mlua::Result<Vec<Target>> {
    match ServerSpec::parse(s).map_err(rt)? {
        ServerSpec::Inet(a) => Ok(vec![Target::Inet(a)]),
        ServerSpec::Unix(p) => Ok(vec![Target::Unix(p)]),
        ServerSpec::Abstract(n) => Ok(vec![Target::Abstract(n)]),
        ServerSpec::Host(..) => Err(rt(format!("not a numeric address: {s:?} (use qmqp_resolve at startup)"))),
    }
}

fn targets_of(value: &Value) -> mlua::Result<Vec<Target>> {
    match value {
        Value::String(s) => target_of_str(&s.to_str()?),
        Value::UserData(ud) if ud.is::<Address>() => Ok(ud.borrow::<Address>()?.0.clone()),
        Value::Table(t) => {
            let mut all = Vec::new();
            for v in t.sequence_values::<Value>() {
                all.extend(targets_of(&v?)?);
            }
            if all.is_empty() {
                return Err(rt("connect: an empty list of addresses"));
            }
            Ok(all)
        }
        _ => Err(rt("connect: expected an address, a numeric IP string or a list of them")),
    }
}

/// `qmqp_resolve(S)`: the system resolver is asked for host names, once,
/// at startup.
fn resolve(s: &str) -> mlua::Result<Address> {
    match ServerSpec::parse(s).map_err(rt)? {
        ServerSpec::Host(host, port) => {
            let addrs: Vec<Target> = (host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| rt(format!("cannot resolve {host:?}: {e}")))?
                .map(Target::Inet)
                .collect();
            if addrs.is_empty() {
                return Err(rt(format!("cannot resolve {host:?}: no address")));
            }
            Ok(Address(addrs))
        }
        _ => Ok(Address(target_of_str(s)?)),
    }
}

fn int_global(lua: &Lua, name: &str, default: i64) -> Result<i64, String> {
    match lua.globals().get::<Value>(name) {
        Ok(Value::Nil) => Ok(default),
        Ok(Value::Integer(n)) => Ok(n),
        Ok(Value::Number(f)) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(f as i64),
        _ => Err(format!("{name} must be an integer")),
    }
}

/// A Lua module: installs its globals into a fresh state.
pub trait Module {
    /// Installs the module.
    fn install(&self, lua: &Lua) -> mlua::Result<()>;

    /// After the configuration ran: reads the globals it set.
    fn configured(&self, _lua: &Lua) -> mlua::Result<()> {
        Ok(())
    }

    /// Starts what the module does in the background (after the
    /// configuration ran, inside the runtime's `LocalSet`).
    fn start(&self, _lua: &Lua) {}
}

/// The core module: `systemd`, `max_size`, `qmqp_resolve`.
struct Core;
impl Module for Core {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let g = lua.globals();
        g.set("systemd", SystemdMarker)?;
        g.set("max_size", DEFAULT_MAX_SIZE)?;
        g.set("qmqp_resolve", lua.create_function(|_, s: String| resolve(&s))?)?;
        Ok(())
    }
}

/// The modules every state gets, in order.
pub const MODULES: &[&dyn Module] = &[
    &Core,
    &crate::lualib::sodium::Sodium, // sodium.*
    &crate::lualib::json::Json,     // json.*
    &crate::lualib::jwt::Jwt,       // jwt.sign
    &crate::lualib::socket::SocketLibrary,
    &crate::lualib::control::ControlLibrary,
    &crate::lualib::pond::PondLibrary,
    &crate::lualib::pg::Pg,
];

/// The functions that exist only while the configuration runs.
const CONFIG_TIME: &[&str] = &["qmqp_listen", "qmqp_resolve"];

/// The Lua state and what the configuration declared.
#[derive(Debug)]
pub struct Script {
    lua: Lua,
    /// The configuration.
    pub config: Config,
}

/// The instruction budget (app data of the state): what the running
/// handler call has left, and what each call gets.
#[derive(Debug)]
struct Budget {
    left: Rc<Cell<i64>>,
    per_call: i64,
}

/// Calls `f` as a coroutine with the limits of a handler call: its own
/// instruction budget, counted across its yields (each resumption swaps
/// it in and out of the hook's counter); after an error, collects the
/// garbage the call left. Without a budget in `lua` (no configuration
/// loaded), unlimited.
pub async fn call_limited<R: FromLuaMulti>(lua: &Lua, f: &Function, args: impl IntoLuaMulti) -> mlua::Result<R> {
    let (counter, mut left) = match lua.app_data_ref::<Budget>() {
        Some(b) => (Rc::clone(&b.left), b.per_call),
        None => (Rc::new(Cell::new(i64::MAX)), i64::MAX),
    };
    let mut call = std::pin::pin!(f.call_async::<R>(args));
    let r = std::future::poll_fn(|cx| {
        let outer = counter.replace(left);
        let r = call.as_mut().poll(cx);
        left = counter.replace(outer);
        r
    })
    .await;
    if r.is_err() {
        let _ = lua.gc_collect();
    }
    r
}

/// A configuration error: the Lua error (with file:line) or a bad value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Script {
    /// Runs the configuration file `path`.
    pub fn load(path: &std::path::Path) -> Result<Script, ConfigError> {
        let source = std::fs::read(path).map_err(|e| ConfigError(format!("unable to read {}: {e}", path.display())))?;
        let lua = Lua::new();
        let err = |e: mlua::Error| ConfigError(lua_error_text(&e));
        for m in MODULES {
            m.install(&lua).map_err(err)?;
        }
        let listeners: Rc<RefCell<Vec<ListenSpec>>> = Rc::default();
        let collected = Rc::clone(&listeners);
        let listen = lua
            .create_function(move |lua, (target, handler): (Value, Function)| {
                let target = match target {
                    Value::UserData(ud) if ud.is::<SystemdMarker>() => ListenTarget::Systemd,
                    Value::String(s) => {
                        let s = s.as_bytes().to_vec();
                        match s.strip_prefix(b"@") {
                            Some(n) if !n.is_empty() && n.len() <= 107 => ListenTarget::Abstract(n.to_vec()),
                            None if s.first() == Some(&b'/') || !s.is_empty() => {
                                ListenTarget::Path(PathBuf::from(OsString::from_vec(s)))
                            }
                            _ => return Err(rt("qmqp_listen: bad socket name")),
                        }
                    }
                    _ => return Err(rt("qmqp_listen: expected a socket path or systemd")),
                };
                let max_size = int_global(lua, "max_size", DEFAULT_MAX_SIZE).map_err(rt)?;
                if !(MIN_MAX_SIZE..=MAX_MAX_SIZE).contains(&max_size) {
                    return Err(rt(format!("max_size must be between {MIN_MAX_SIZE} and {MAX_MAX_SIZE}")));
                }
                let handler = Rc::new(lua.create_registry_value(handler)?);
                collected.borrow_mut().push(ListenSpec { target, handler, max_size: max_size as usize });
                Ok(())
            })
            .map_err(err)?;
        lua.globals().set("qmqp_listen", listen).map_err(err)?;
        lua.set_memory_limit(DEFAULT_MEMORY_LIMIT as usize).map_err(err)?;
        lua.load(&source[..]).set_name(format!("@{}", path.display())).exec().map_err(err)?;
        for m in MODULES {
            m.configured(&lua).map_err(err)?;
        }

        let bad = |m: String| ConfigError(format!("{}: {m}", path.display()));
        let address_check = match lua.globals().get::<Value>("address_check") {
            Ok(Value::Nil) => AddressCheck::default(),
            Ok(Value::String(s)) => AddressCheck::from_name(&s.to_string_lossy())
                .ok_or_else(|| bad("address_check must be 'strict', 'qmail' or 'off'".into()))?,
            _ => return Err(bad("address_check must be 'strict', 'qmail' or 'off'".into())),
        };
        let instruction_limit =
            int_global(&lua, "handler_instruction_limit", DEFAULT_INSTRUCTION_LIMIT).map_err(bad)?;
        if instruction_limit < 1000 {
            return Err(bad("handler_instruction_limit must be at least 1000".into()));
        }
        let memory_limit = int_global(&lua, "lua_memory_limit", DEFAULT_MEMORY_LIMIT).map_err(bad)?;
        if !(1024 * 1024..=1 << 40).contains(&memory_limit) {
            return Err(bad("lua_memory_limit must be between 1 MiB and 1 TiB".into()));
        }
        let listeners = std::mem::take(&mut *listeners.borrow_mut());
        if listeners.is_empty() {
            return Err(bad("no qmqp_listen() call".into()));
        }
        for name in CONFIG_TIME {
            lua.globals().set(*name, Value::Nil).map_err(err)?;
        }
        lua.set_memory_limit(memory_limit as usize).map_err(err)?;
        // Lua runs only inside a handler call (which swaps its own budget
        // in), so the counter outside one is never exhausted.
        let left = Rc::new(Cell::new(i64::MAX));
        let counter = Rc::clone(&left);
        // A global hook: the coroutines a handler creates inherit it.
        lua.set_global_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
            let left = counter.get().saturating_sub(i64::from(HOOK_EVERY));
            counter.set(left);
            if left < 0 { Err(rt("instruction limit exceeded")) } else { Ok(VmState::Continue) }
        })
        .map_err(err)?;
        lua.set_app_data(Budget { left, per_call: instruction_limit });
        Ok(Script { lua, config: Config { listeners, address_check } })
    }

    /// Starts the modules' background work; inside the runtime's `LocalSet`.
    pub fn start(&self) {
        for m in MODULES {
            m.start(&self.lua);
        }
    }

    /// The Lua state (for the libraries' state kept in it).
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Runs `handler` on `mail` (a coroutine: other sessions go on while it
    /// waits): the action, or the Lua error's text.
    pub async fn decide(&self, handler: &RegistryKey, mail: Mail) -> (Result<Action, String>, Mail) {
        let ud = match self.lua.create_userdata(mail.clone()) {
            Ok(ud) => ud,
            Err(e) => return (Err(lua_error_text(&e)), mail),
        };
        let result = match self.lua.registry_value::<Function>(handler) {
            Ok(f) => call_limited::<Value>(&self.lua, &f, ud.clone()).await,
            Err(e) => Err(e),
        };
        let mail = ud.take::<Mail>().unwrap_or(mail);
        let action = match result {
            Ok(Value::UserData(a)) if a.is::<Action>() => {
                a.borrow::<Action>().map(|a| a.clone()).map_err(|e| lua_error_text(&e))
            }
            Ok(other) => Err(format!("the handler returned {} instead of an action", other.type_name())),
            Err(e) => Err(lua_error_text(&e)),
        };
        (action, mail)
    }

    /// SIGHUP: calls `reload()` if the script defines one (with a
    /// handler's limits, as a coroutine).
    pub async fn reload(&self) -> Result<(), String> {
        let f: Option<Function> = self.lua.globals().get("reload").map_err(|e| lua_error_text(&e))?;
        let Some(f) = f else { return Ok(()) };
        call_limited::<()>(&self.lua, &f, ()).await.map_err(|e| lua_error_text(&e))
    }
}

/// The first line of a Lua error (file:line: message), without the
/// traceback.
pub fn lua_error_text(e: &mlua::Error) -> String {
    let text = match e {
        mlua::Error::CallbackError { cause, traceback } => {
            // An error raised by a Rust function: its message has no
            // position; the first Lua frame of the traceback has it.
            let msg = lua_error_text(cause);
            return match lua_position(traceback) {
                Some(pos) if !has_position(&msg) => format!("{pos}: {msg}"),
                _ => msg,
            };
        }
        mlua::Error::RuntimeError(msg) => msg.clone(),
        mlua::Error::MemoryError(_) => "not enough memory (lua_memory_limit)".to_owned(),
        other => other.to_string(),
    };
    text.lines().next().unwrap_or("").to_owned()
}

/// `file:line` of the first Lua frame of a traceback.
fn lua_position(traceback: &str) -> Option<String> {
    traceback.lines().map(str::trim).filter(|l| !l.starts_with("[C]")).find_map(|l| {
        let (file, rest) = l.split_once(':')?;
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!file.is_empty() && !line.is_empty() && rest[line.len()..].starts_with(':')).then(|| format!("{file}:{line}"))
    })
}

/// Whether a message starts with `file:line:`.
fn has_position(msg: &str) -> bool {
    lua_position(msg.lines().next().unwrap_or("")).is_some_and(|p| msg.starts_with(&p))
}

/// The client, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    /// Its process id (SO_PEERCRED).
    pub pid: Option<i32>,
    /// Its user id.
    pub uid: Option<u32>,
    /// Its group id.
    pub gid: Option<u32>,
    /// Its IP address, for a TCP client.
    pub ip: Option<IpAddr>,
}

/// The mail object the handler sees: the envelope, the client, and what
/// the handler set (sender, account, headers). The message itself stays
/// outside Lua.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender.
    pub sender: Vec<u8>,
    /// The envelope recipients.
    pub recipients: Vec<Vec<u8>>,
    /// The client.
    pub peer: Peer,
    /// `account`, for the log.
    pub account: Option<String>,
    /// Headers inserted, in the order of the calls.
    pub headers: Vec<(String, String)>,
    /// The address rules for a new sender.
    pub address_check: AddressCheck,
    /// The cgroup2 mount.
    pub cgroup_mount: Option<PathBuf>,
}

/// A cgroup object: `path`, `xattr`, `parent`.
#[derive(Debug, Clone)]
struct Cgroup {
    path: String,
    mount: Option<PathBuf>,
}

impl UserData for Cgroup {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("path", |_, this| Ok(this.path.clone()));
        fields.add_field_method_get("xattr", |lua, this| {
            let t = lua.create_table()?;
            if let Some(mount) = &this.mount {
                for (k, v) in cgroup::xattrs(mount, &this.path) {
                    t.set(lua.create_string(&k)?, lua.create_string(&v)?)?;
                }
            }
            Ok(t)
        });
        fields.add_field_method_get("parent", |_, this| {
            Ok(cgroup::parent(&this.path).map(|path| Cgroup { path, mount: this.mount.clone() }))
        });
    }

    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.path.clone()));
    }
}

/// RFC 2822 2.2: a field name is printable US-ASCII except `:`; a body is
/// printable US-ASCII, space and tab (no line ends: no folding here).
fn check_header(name: &[u8], value: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b) && b != b':') {
        return Err("insert_header: bad header name");
    }
    if !value.iter().all(|&b| (32..=126).contains(&b) || b == b'\t') {
        return Err("insert_header: bad header value");
    }
    Ok(())
}

fn header_value(v: &Value) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_str()?.to_owned()),
        Value::Integer(n) => Ok(n.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        Value::UserData(ud) if ud.is::<Cgroup>() => Ok(ud.borrow::<Cgroup>()?.path.clone()),
        _ => Err(rt("insert_header: the value must be a string")),
    }
}

/// exec's trailing options table: `env`, `timeout`.
fn exec_spec(raw: bool, args: mlua::Variadic<Value>) -> mlua::Result<ExecSpec> {
    let mut args: Vec<Value> = args.into_iter().collect();
    let options = match args.last() {
        Some(Value::Table(t)) => Some(t.clone()),
        _ => None,
    };
    if options.is_some() {
        args.pop();
    }
    let mut strings = Vec::with_capacity(args.len());
    for a in &args {
        match a {
            Value::String(s) => strings.push(OsString::from_vec(s.as_bytes().to_vec())),
            Value::Integer(n) => strings.push(OsString::from(n.to_string())),
            _ => return Err(rt("exec: the program and its arguments must be strings")),
        }
    }
    if strings.is_empty() {
        return Err(rt("exec: no program"));
    }
    let program = PathBuf::from(strings.remove(0));
    if !program.is_absolute() {
        return Err(rt("exec: the program must be a full path"));
    }
    if strings.len() > MAX_ARGS {
        return Err(rt("exec: too many arguments"));
    }
    let mut env = Vec::new();
    let mut timeout = None;
    if let Some(t) = options {
        if let Some(e) = t.get::<Option<Table>>("env")? {
            for pair in e.pairs::<mlua::LuaString, mlua::LuaString>() {
                let (k, v) = pair?;
                let (k, v) = (k.as_bytes().to_vec(), v.as_bytes().to_vec());
                if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
                    return Err(rt("exec: bad environment variable"));
                }
                env.push((OsString::from_vec(k), OsString::from_vec(v)));
            }
            if env.len() > MAX_ENV {
                return Err(rt("exec: too many environment variables"));
            }
            env.sort();
        }
        if let Some(secs) = t.get::<Option<f64>>("timeout")? {
            if !(0.0..=MAX_EXEC_TIMEOUT).contains(&secs) {
                return Err(rt("exec: timeout must be between 0 and 3600 seconds"));
            }
            timeout = (secs > 0.0).then(|| Duration::from_secs_f64(secs));
        }
    }
    Ok(ExecSpec { program, args: strings, env, timeout, raw })
}

impl UserData for Mail {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("sender", |lua, this| lua.create_string(&this.sender));
        fields.add_field_method_set("sender", |_, this, v: mlua::LuaString| {
            let v = v.as_bytes().to_vec();
            check_address(&v, this.address_check).map_err(|e| rt(format!("sender: {e}")))?;
            this.sender = v;
            Ok(())
        });
        fields.add_field_method_get("recipients", |lua, this| {
            let t = lua.create_table_with_capacity(this.recipients.len(), 0)?;
            for (i, r) in this.recipients.iter().enumerate() {
                t.raw_set(i + 1, lua.create_string(r)?)?;
            }
            Ok(t)
        });
        fields.add_field_method_get("pid", |_, this| Ok(this.peer.pid));
        fields.add_field_method_get("uid", |_, this| Ok(this.peer.uid));
        fields.add_field_method_get("gid", |_, this| Ok(this.peer.gid));
        fields.add_field_method_get("account", |_, this| Ok(this.account.clone()));
        fields.add_field_method_set("account", |_, this, v: Option<String>| {
            this.account = v;
            Ok(())
        });
        fields.add_field_method_get("cgroup", |_, this| {
            let path = this.peer.pid.and_then(cgroup::of_pid);
            Ok(path.map(|path| Cgroup { path, mount: this.cgroup_mount.clone() }))
        });
    }

    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("insert_header", |_, this, (name, value): (mlua::LuaString, Value)| {
            if this.headers.len() >= MAX_HEADERS {
                return Err(rt("insert_header: too many headers"));
            }
            let name = name.to_str()?.to_owned();
            let value = header_value(&value)?;
            check_header(name.as_bytes(), value.as_bytes()).map_err(rt)?;
            this.headers.push((name, value));
            Ok(())
        });
        methods.add_method("connect", |_, _, target: Value| Ok(Action::Connect(targets_of(&target)?)));
        methods.add_method("exec", |_, _, args: mlua::Variadic<Value>| Ok(Action::Exec(exec_spec(false, args)?)));
        methods.add_method("exec_raw", |_, _, args: mlua::Variadic<Value>| Ok(Action::Exec(exec_spec(true, args)?)));
        methods.add_method("discard", |_, _, ()| Ok(Action::Discard));
        methods.add_method("reject", |_, _, ()| Ok(Action::Reject));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert!(check_header(b"X-Test", b"a value\twith tab").is_ok());
        assert!(check_header(b"X:Test", b"v").is_err());
        assert!(check_header(b"X Test", b"v").is_err());
        assert!(check_header(b"", b"v").is_err());
        assert!(check_header(b"X", b"line\r\nInjected: yes").is_err());
        assert!(check_header(b"X", b"\x7f").is_err());
        assert!(check_header(b"X", b"").is_ok());
    }

    #[test]
    fn error_positions() {
        let tb = "stack traceback:\n\t[C]: in ?\n\t[C]: in function 'qmqp_resolve'\n\t/etc/q.lua:3: in main chunk\n\t[C]: in ?";
        assert_eq!(lua_position(tb), Some("/etc/q.lua:3".into()));
        assert_eq!(lua_position("stack traceback:\n\t[C]: in ?"), None);
        assert!(has_position("/etc/q.lua:3: boom"));
        assert!(!has_position("boom: bang"));
        let e = mlua::Error::CallbackError {
            traceback: tb.into(),
            #[allow(clippy::arc_with_non_send_sync)] // mlua's own type, as mlua builds it
            cause: std::sync::Arc::new(mlua::Error::runtime("not an address")),
        };
        assert_eq!(lua_error_text(&e), "/etc/q.lua:3: not an address");
    }

    #[test]
    fn connect_targets() {
        assert_eq!(target_of_str("127.0.0.1").ok(), Some(vec![Target::Inet("127.0.0.1:628".parse().expect("addr"))]));
        assert_eq!(target_of_str("@x").ok(), Some(vec![Target::Abstract(b"x".to_vec())]));
        assert!(target_of_str("localhost").is_err());
    }
}
