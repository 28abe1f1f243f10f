//! The `socket` library: `socket:connect(ADDRESS, {type=...})` and socket
//! objects with `send(DATA, [START], [END])` and `close()`.
//!
//! Every socket is non-blocking. A send that the kernel cannot take at
//! once returns `nil, 'would block'` (nothing is queued in qrelay); so
//! does a send on a TCP socket whose connect is still under way (the
//! connect completes in the background; a later send goes through).
//! Errors are `nil, message`, never a thrown error.

use mlua::{Lua, MultiValue, Table, UserData, Value};
use nix::sys::socket::SockType;

use super::{Counted, address_arg, failure, send_now, targets};
use crate::script::Module;

/// The module.
pub struct SocketLibrary;

/// The socket types a script may ask for.
fn sock_type(name: &str) -> Option<SockType> {
    match name {
        "stream" => Some(SockType::Stream),
        "dgram" => Some(SockType::Datagram),
        "seqpacket" => Some(SockType::SeqPacket),
        _ => None,
    }
}

/// The byte range `string.sub(s, start, end)` takes, for a string of
/// `len` bytes: `start` and `end` count from 1, negatives from the end.
pub fn sub_range(len: usize, start: Option<i64>, end: Option<i64>) -> std::ops::Range<usize> {
    let len_i = i64::try_from(len).unwrap_or(i64::MAX);
    let start = match start.unwrap_or(1) {
        s if s > 0 => s,
        0 => 1,
        s if s < -len_i => 1,
        s => len_i + s + 1,
    };
    let end = match end.unwrap_or(-1) {
        e if e > len_i => len_i,
        e if e >= 0 => e,
        e if e < -len_i => 0,
        e => len_i + e + 1,
    };
    if start > end {
        return 0..0;
    }
    // 1 <= start <= end <= len here.
    (start - 1) as usize..end as usize
}

/// A socket object.
#[derive(Debug)]
struct LuaSocket {
    socket: Option<Counted>,
}

fn integer_arg(v: &Value, what: &str) -> Result<Option<i64>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::Integer(n) => Ok(Some(*n)),
        Value::Number(f) if f.fract() == 0.0 && f.abs() < 9e15 => Ok(Some(*f as i64)),
        _ => Err(format!("send: {what} must be an integer")),
    }
}

impl UserData for LuaSocket {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method(
            "send",
            |lua, this, (data, start, end): (Value, Value, Value)| -> mlua::Result<MultiValue> {
                let Some(socket) = &this.socket else { return failure(lua, "socket is closed") };
                // A string is sent from Lua's own copy; a number as Lua
                // would print it.
                let number;
                let string;
                let data: &[u8] = match &data {
                    Value::String(s) => {
                        string = s.as_bytes();
                        &string
                    }
                    Value::Integer(_) | Value::Number(_) => {
                        number = data.to_string()?;
                        number.as_bytes()
                    }
                    _ => return failure(lua, "send: DATA must be a string"),
                };
                let (start, end) = match (integer_arg(&start, "START"), integer_arg(&end, "END")) {
                    (Ok(s), Ok(e)) => (s, e),
                    (Err(e), _) | (_, Err(e)) => return failure(lua, e),
                };
                let range = sub_range(data.len(), start, end);
                match send_now(socket.fd(), &data[range]) {
                    Ok(n) => lua.pack_multi(n as i64),
                    Err(e) => failure(lua, e),
                }
            },
        );
        methods.add_method_mut("close", |_, this, ()| {
            this.socket = None;
            Ok(true)
        });
        methods.add_meta_method(mlua::MetaMethod::ToString, |_, this, ()| {
            Ok(if this.socket.is_some() { "socket" } else { "socket (closed)" })
        });
    }
}

/// `connect(ADDRESS, [OPTIONS])`, called as `socket:connect(...)` or
/// `socket.connect(...)`.
fn connect(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let mut args: Vec<Value> = args.into_iter().collect();
    if matches!(args.first(), Some(Value::Table(_))) {
        args.remove(0);
    }
    let Some(address) = args.first().and_then(address_arg) else {
        return failure(lua, "connect: ADDRESS must be a string");
    };
    let ty = match args.get(1) {
        None | Some(Value::Nil) => SockType::Stream,
        Some(Value::Table(options)) => match options.get::<Value>("type")? {
            Value::Nil => SockType::Stream,
            Value::String(s) => match sock_type(&s.to_string_lossy()) {
                Some(t) => t,
                None => return failure(lua, format!("connect: unknown socket type {:?}", s.to_string_lossy())),
            },
            _ => return failure(lua, "connect: type must be a string"),
        },
        Some(_) => return failure(lua, "connect: OPTIONS must be a table"),
    };
    let targets = match targets(&address, 0) {
        Ok(t) => t,
        Err(e) => return failure(lua, e),
    };
    match super::connect(lua, &targets, ty) {
        Ok(c) => lua.pack_multi(LuaSocket { socket: Some(c) }),
        Err(e) => failure(lua, e),
    }
}

impl Module for SocketLibrary {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let t: Table = lua.create_table()?;
        t.set("connect", lua.create_function(connect)?)?;
        lua.globals().set("socket", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_string_sub() {
        // Checked against Lua's own string.sub on "hello" (5 bytes).
        let lua = Lua::new();
        let cases: &[(Option<i64>, Option<i64>)] = &[
            (None, None),
            (Some(1), None),
            (Some(2), None),
            (Some(2), Some(3)),
            (Some(-3), None),
            (Some(-3), Some(-2)),
            (Some(0), None),
            (Some(-100), Some(2)),
            (Some(4), Some(100)),
            (Some(4), Some(2)),
            (Some(6), None),
            (Some(1), Some(0)),
            (Some(1), Some(-6)),
            (Some(-1), Some(-1)),
            (Some(i64::MIN), Some(i64::MAX)),
            (Some(i64::MAX), None),
        ];
        for &(s, e) in cases {
            let want: String = lua
                .load("local s, e = ... return string.sub('hello', s or 1, e or -1)")
                .call((s, e))
                .expect("string.sub");
            let got = &"hello"[sub_range(5, s, e)];
            assert_eq!(got, want, "{s:?} {e:?}");
        }
        assert_eq!(sub_range(0, None, None), 0..0);
    }

    #[test]
    fn errors_are_returned_never_thrown() {
        let lua = Lua::new();
        SocketLibrary.install(&lua).expect("install");
        let dir = std::env::temp_dir().join(format!("qrelay-socket-{}", std::process::id()));
        let script = format!(
            "local out = {{}}
            for _, a in ipairs({{{{'127.0.0.1'}}, {{'nonsense here'}}, {{'{dir}/none'}},
                    {{'127.0.0.1:1', {{type='bogus'}}}}, {{'@x', 5}}, {{42}}}}) do
                local s, e = socket:connect(a[1], a[2])
                out[#out + 1] = tostring(s) .. ':' .. tostring(e)
            end
            return table.concat(out, '|')",
            dir = dir.display()
        );
        let got: String = lua.load(&script).eval().expect("no error thrown");
        let parts: Vec<&str> = got.split('|').collect();
        assert_eq!(parts.len(), 6, "{got}");
        assert!(parts.iter().all(|p| p.starts_with("nil:")), "{got}");
        assert!(parts[0].contains("no port"), "{got}");
        assert!(parts[3].contains("unknown socket type"), "{got}");
    }

    #[test]
    fn sockets_dropped_without_close_are_collected_at_the_bound() {
        let lua = Lua::new();
        SocketLibrary.install(&lua).expect("install");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = peer.local_addr().expect("addr").port();
        // Twice the bound, none closed: the garbage is collected when the
        // bound is reached; kept ones count.
        let (made, kept_err): (i64, String) = lua
            .load(format!(
                "local made = 0
                for i = 1, 2 * {max} do
                    if socket:connect('127.0.0.1:{port}', {{type='dgram'}}) then made = made + 1 end
                end
                kept = {{}}
                local err
                for i = 1, {max} + 1 do
                    local s, e = socket:connect('127.0.0.1:{port}', {{type='dgram'}})
                    if not s then err = e break end
                    kept[i] = s
                end
                return made, err",
                max = super::super::MAX_OPEN_SOCKETS
            ))
            .eval()
            .expect("run");
        assert_eq!(made, 2 * super::super::MAX_OPEN_SOCKETS as i64);
        assert!(kept_err.contains("too many open sockets"), "{kept_err}");
    }

    #[test]
    fn datagram_send_and_close() {
        let lua = Lua::new();
        SocketLibrary.install(&lua).expect("install");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = peer.local_addr().expect("addr").port();
        let (n, closed): (i64, String) = lua
            .load(format!(
                "local s = assert(socket:connect('127.0.0.1:{port}', {{type='dgram'}}))
                local n = s:send('hello world', 7, -2)
                s:close()
                local x, e = s:send('again')
                return n, tostring(x) .. ':' .. e"
            ))
            .eval()
            .expect("run");
        assert_eq!(n, 4);
        assert_eq!(closed, "nil:socket is closed");
        let mut buf = [0u8; 64];
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5))).expect("timeout");
        let got = peer.recv(&mut buf).expect("datagram");
        assert_eq!(&buf[..got], b"worl");
    }
}
