//! `json`: `json.dump(VALUE)` and `json.parse(STRING)` (serde_json), and
//! `json.null`.
//!
//! Lua to JSON (`dump`):
//! - nil and `json.null` are `null`; booleans as they are; strings must be
//!   UTF-8 (JSON text is Unicode);
//! - an integer is written as one (`42`), a float as one (`42.0`, `0.5`):
//!   Lua's two number kinds survive a round trip; NaN and infinities have
//!   no JSON form and are refused;
//! - a table whose keys are exactly 1..n (n >= 1) is an array; any other
//!   table, the empty one included, is an object (`{}`): string keys as
//!   they are, integer keys as their decimal text, others refused, as are
//!   two keys with one text (`[1]` and `['1']`); object keys are sorted
//!   (bytewise), so equal tables give equal text;
//! - functions, userdata, threads are refused; so are cycles (a table
//!   inside itself), more than [`MAX_DEPTH`] nested tables and a text over
//!   [`MAX_BYTES`].
//!
//! JSON to Lua (`parse`): objects and arrays become tables (an array's
//! elements at 1..n), strings strings, `null` becomes `json.null` (a light
//! userdata, so `t.k == json.null` tells a null from a missing key, and an
//! array keeps its length); a number without fraction or exponent that
//! fits in 64 bits becomes an integer, any other a float. At most
//! [`MAX_BYTES`] of input and [`MAX_DEPTH`] levels; trailing text after
//! the value is an error. The tables are made in the Lua state as the
//! parse goes, so they count against its memory limit.
//!
//! Errors are returned as `nil, message`, never thrown.

use std::cell::RefCell;
use std::ffi::c_void;

use mlua::{LightUserData, Lua, MultiValue, Table, Value};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{self, Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::script::{Module, lua_error_text};

/// The most nested arrays/objects (tables), both ways.
pub const MAX_DEPTH: usize = 100;
/// The longest JSON text, both ways.
pub const MAX_BYTES: usize = 4 << 20;

/// `json.null`.
pub fn null() -> Value {
    Value::LightUserData(LightUserData(std::ptr::null_mut()))
}

fn is_null(v: &Value) -> bool {
    matches!(v, Value::LightUserData(LightUserData(p)) if p.is_null())
}

/// An `io::Write` into memory that refuses to grow past `max`.
struct Bounded {
    buf: Vec<u8>,
    max: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.max {
            self.over = true;
            return Err(std::io::Error::other("too long"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The JSON text of a Lua value, as the module documentation says.
pub fn dump(value: &Value) -> Result<String, String> {
    let mut out = Bounded { buf: Vec::new(), max: MAX_BYTES, over: false };
    let path = RefCell::new(Vec::new());
    let result = serde_json::to_writer(&mut out, &Dump { value, depth: 0, path: &path });
    if out.over {
        return Err(format!("the JSON text would be longer than {MAX_BYTES} bytes"));
    }
    result.map_err(|e| e.to_string())?;
    String::from_utf8(out.buf).map_err(|e| e.to_string())
}

/// A table key JSON can have.
enum Key {
    Int(i64),
    Str(String),
}

/// A Lua value being written: `depth` tables around it, `path` their
/// addresses (to see cycles).
struct Dump<'a> {
    value: &'a Value,
    depth: usize,
    path: &'a RefCell<Vec<*const c_void>>,
}

impl Dump<'_> {
    fn child<'b>(&'b self, value: &'b Value) -> Dump<'b> {
        Dump { value, depth: self.depth + 1, path: self.path }
    }

    fn table<S: Serializer>(&self, t: &Table, s: S) -> Result<S::Ok, S::Error> {
        if self.depth >= MAX_DEPTH {
            return Err(ser::Error::custom(format!("tables nested deeper than {MAX_DEPTH}")));
        }
        let ptr = t.to_pointer();
        if self.path.borrow().contains(&ptr) {
            return Err(ser::Error::custom("a table contains itself"));
        }
        // The keys only (no references to the values, which a big table
        // would pile up on mlua's reference stack); each key is at least
        // 2 bytes of output, so past MAX_BYTES / 2 of them the text is
        // too long whatever the values.
        let mut keys = Vec::new();
        let too_long = || ser::Error::custom(format!("the JSON text would be longer than {MAX_BYTES} bytes"));
        for pair in t.pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| ser::Error::custom(lua_error_text(&e)))?;
            keys.push(match k {
                Value::Integer(i) => Key::Int(i),
                Value::String(s) => {
                    Key::Str(s.to_str().map_err(|_| ser::Error::custom("a key is not UTF-8"))?.to_owned())
                }
                other => return Err(ser::Error::custom(format!("a {} key has no JSON form", other.type_name()))),
            });
            if keys.len() > MAX_BYTES / 2 {
                return Err(too_long());
            }
        }
        let n = keys.len() as i64;
        let is_array = n > 0 && keys.iter().all(|k| matches!(k, Key::Int(i) if (1..=n).contains(i)));
        let get = |k: &Key| match k {
            Key::Int(i) => t.raw_get::<Value>(*i),
            Key::Str(s) => t.raw_get::<Value>(s.as_str()),
        };
        let lua_failed = |e: mlua::Error| ser::Error::custom(lua_error_text(&e));
        self.path.borrow_mut().push(ptr);
        let result = if is_array {
            let mut seq = s.serialize_seq(Some(keys.len()))?;
            for i in 1..=n {
                seq.serialize_element(&self.child(&get(&Key::Int(i)).map_err(lua_failed)?))?;
            }
            seq.end()
        } else {
            let mut keyed: Vec<(String, Key)> = keys
                .into_iter()
                .map(|k| match k {
                    Key::Int(i) => (i.to_string(), k),
                    Key::Str(ref s) => (s.clone(), k),
                })
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            if let Some(w) = keyed.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(ser::Error::custom(format!("two keys are {:?}", w[0].0)));
            }
            if keyed.iter().map(|(text, _)| text.len()).sum::<usize>() > MAX_BYTES {
                return Err(too_long());
            }
            let mut map = s.serialize_map(Some(keyed.len()))?;
            for (text, k) in &keyed {
                map.serialize_entry(text, &self.child(&get(k).map_err(lua_failed)?))?;
            }
            map.end()
        };
        self.path.borrow_mut().pop();
        result
    }
}

impl Serialize for Dump<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            Value::Nil => s.serialize_unit(),
            v if is_null(v) => s.serialize_unit(),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::Integer(i) => s.serialize_i64(*i),
            Value::Number(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Number(f) => Err(ser::Error::custom(format!("{f} has no JSON form"))),
            Value::String(st) => {
                s.serialize_str(&st.to_str().map_err(|_| ser::Error::custom("a string is not UTF-8"))?)
            }
            Value::Table(t) => self.table(t, s),
            other => Err(ser::Error::custom(format!("a {} has no JSON form", other.type_name()))),
        }
    }
}

/// The Lua value of a JSON text, as the module documentation says.
pub fn parse(lua: &Lua, text: &[u8]) -> Result<Value, String> {
    if text.len() > MAX_BYTES {
        return Err(format!("the JSON text is longer than {MAX_BYTES} bytes"));
    }
    let mut de = serde_json::Deserializer::from_slice(text);
    let value = Load { lua, depth: 0 }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// A JSON value being read into Lua, inside `depth` arrays/objects.
struct Load<'a> {
    lua: &'a Lua,
    depth: usize,
}

fn lua_failed<E: de::Error>(e: mlua::Error) -> E {
    E::custom(lua_error_text(&e))
}

impl Load<'_> {
    fn container<E: de::Error>(&self) -> Result<Table, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format!("nested deeper than {MAX_DEPTH}")));
        }
        self.lua.create_table().map_err(lua_failed)
    }

    fn inner(&self) -> Load<'_> {
        Load { lua: self.lua, depth: self.depth + 1 }
    }
}

impl<'de> DeserializeSeed<'de> for Load<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Load<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(null())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Boolean(b))
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Integer(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Number(u as f64), Value::Integer))
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Number(f))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        self.lua.create_string(s).map(Value::String).map_err(lua_failed)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let t = self.container()?;
        let mut i = 0usize;
        while let Some(v) = seq.next_element_seed(self.inner())? {
            i += 1;
            t.raw_set(i, v).map_err(lua_failed)?;
        }
        Ok(Value::Table(t))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let t = self.container()?;
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let k = self.lua.create_string(k.as_bytes()).map_err(lua_failed)?;
            let v = map.next_value_seed(self.inner())?;
            t.raw_set(k, v).map_err(lua_failed)?;
        }
        Ok(Value::Table(t))
    }
}

/// `value` or `nil, message`.
fn value_or_message(lua: &Lua, r: Result<Value, String>, what: &str) -> mlua::Result<MultiValue> {
    Ok(match r {
        Ok(v) => MultiValue::from_iter([v]),
        Err(e) => MultiValue::from_iter([Value::Nil, Value::String(lua.create_string(format!("{what}: {e}"))?)]),
    })
}

/// The `json` table.
#[derive(Debug)]
pub struct Json;

impl Module for Json {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let t = lua.create_table()?;
        t.set(
            "dump",
            lua.create_function(|lua, v: Value| {
                let r = dump(&v).and_then(|s| lua.create_string(s).map(Value::String).map_err(|e| lua_error_text(&e)));
                value_or_message(lua, r, "json.dump")
            })?,
        )?;
        t.set(
            "parse",
            lua.create_function(|lua, v: Value| {
                let r = match &v {
                    Value::String(s) => parse(lua, &s.as_bytes()),
                    other => Err(format!("expected a string, got a {}", other.type_name())),
                };
                value_or_message(lua, r, "json.parse")
            })?,
        )?;
        t.set("null", null())?;
        lua.globals().set("json", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Lua {
        let lua = Lua::new();
        Json.install(&lua).expect("install");
        lua
    }

    fn dump_of(lua: &Lua, expr: &str) -> Result<String, String> {
        let v: Value = lua.load(expr).eval().expect("lua");
        dump(&v)
    }

    #[test]
    fn dumps() {
        let lua = state();
        for (expr, json) in [
            ("{x=42, y='z'}", r#"{"x":42,"y":"z"}"#),
            ("{}", "{}"),
            ("{1, 2, 'three'}", r#"[1,2,"three"]"#),
            ("{[2]='b', [1]='a'}", r#"["a","b"]"#),
            ("{[1]='a', [3]='c'}", r#"{"1":"a","3":"c"}"#),
            ("{[2]='b'}", r#"{"2":"b"}"#),
            ("{[0]='z', 'a'}", r#"{"0":"z","1":"a"}"#),
            ("{[-1]='m'}", r#"{"-1":"m"}"#),
            ("{1, x=2}", r#"{"1":1,"x":2}"#),
            ("{b=1, a=2, c={}}", r#"{"a":2,"b":1,"c":{}}"#),
            ("nil", "null"),
            ("json.null", "null"),
            ("{1, json.null, 3}", "[1,null,3]"),
            ("true", "true"),
            ("42", "42"),
            ("42.0", "42.0"),
            ("0.5", "0.5"),
            ("-0.0", "-0.0"),
            ("math.maxinteger", "9223372036854775807"),
            ("'é\\n\"\\0'", r#""é\n\"\u0000""#),
            ("{{{}}}", "[[{}]]"),
        ] {
            assert_eq!(dump_of(&lua, expr).as_deref(), Ok(json), "{expr}");
        }
    }

    #[test]
    fn dump_refuses() {
        let lua = state();
        for (expr, why) in [
            ("0/0", "no JSON form"),
            ("1/0", "no JSON form"),
            ("{x=-1/0}", "no JSON form"),
            ("print", "function"),
            ("{f=print}", "function"),
            ("coroutine.create(print)", "thread"),
            ("'\\xff'", "UTF-8"),
            ("{['\\xff']=1}", "UTF-8"),
            ("{[true]=1}", "boolean key"),
            ("{[1.5]=1}", "number key"),
            ("{[{}]=1}", "table key"),
            ("{[1]='a', ['1']='b'}", "two keys"),
            ("(function() local t = {} t.self = t return t end)()", "contains itself"),
            ("(function() local t = {} t[1] = {t} return t end)()", "contains itself"),
        ] {
            let e = dump_of(&lua, expr).expect_err(expr);
            assert!(e.contains(why), "{expr}: {e}");
        }
    }

    #[test]
    fn dump_bounds() {
        let lua = state();
        // A table used twice (not a cycle) is fine.
        assert_eq!(dump_of(&lua, "(function() local s = {1} return {s, s} end)()").as_deref(), Ok("[[1],[1]]"));
        // Nesting: MAX_DEPTH tables, not one more.
        let nest = |n: usize| format!("(function() local t = {{}} for i = 2, {n} do t = {{t}} end return t end)()");
        let deep = dump_of(&lua, &nest(MAX_DEPTH)).expect("at the limit");
        assert_eq!(deep, format!("{}{{}}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1)));
        assert!(dump_of(&lua, &nest(MAX_DEPTH + 1)).expect_err("deeper").contains("deeper than 100"));
        // A DAG that doubles at each level would be 2^60 long: stopped at
        // the size bound, quickly.
        let e = dump_of(&lua, "(function() local t = {'x'} for i = 1, 60 do t = {t, t} end return t end)()")
            .expect_err("huge");
        assert!(e.contains("longer than"), "{e}");
        // Big tables, within the size.
        let array = dump_of(&lua, "(function() local t = {} for i = 1, 300000 do t[i] = {} end return t end)()");
        assert_eq!(array.expect("big array").len(), 300000 * 3 + 1);
        let object = dump_of(&lua, "(function() local t = {} for i = 1, 100000 do t['k' .. i] = i end return t end)()");
        assert!(object.expect("big object").starts_with(r#"{"k1":1,"k10":10,"k100":100,"#));
        assert!(dump_of(&lua, &format!("string.rep('a', {})", MAX_BYTES - 2)).is_ok());
        assert!(dump_of(&lua, &format!("string.rep('a', {})", MAX_BYTES - 1)).is_err());
    }

    #[test]
    fn parses() {
        let lua = state();
        let f = lua.create_function(|lua, s: mlua::LuaString| parse(lua, &s.as_bytes()).map_err(mlua::Error::runtime));
        lua.globals().set("parse", f.expect("function")).expect("set");
        lua.load(
            r#"
            local v = parse('{"x":42,"y":"z","a":[1,2.5,null,true,false,{}],"n":null,"s":"\\u00e9\\n"}')
            assert(v.x == 42 and math.type(v.x) == 'integer' and v.y == 'z')
            assert(#v.a == 6 and v.a[2] == 2.5 and v.a[3] == json.null and v.a[4] == true and v.a[5] == false)
            assert(type(v.a[6]) == 'table' and next(v.a[6]) == nil)
            assert(v.n == json.null and v.missing == nil and v.n ~= nil)
            assert(v.s == "\xc3\xa9\n")
            assert(parse('null') == json.null)
            assert(math.type(parse('1.0')) == 'float' and math.type(parse('1e2')) == 'float' and parse('1e2') == 100)
            assert(parse('-9223372036854775808') == math.mininteger)
            assert(math.type(parse('9223372036854775808')) == 'float')
            assert(parse(' [] ')[1] == nil)
            local k = parse('{"1":"one"}')
            assert(k["1"] == "one" and k[1] == nil)
            assert(parse('{"a":1,"a":2}').a == 2)
            "#,
        )
        .exec()
        .expect("parse cases");
    }

    #[test]
    fn parse_refuses() {
        let lua = state();
        for (text, why) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("[1,]", "trailing comma"),
            ("{\"a\":1} x", "trailing"),
            ("NaN", "expected value"),
            ("'a'", "expected value"),
            ("\"\\ud800\"", "escape"),
            ("\"a\u{1}\"", "control character"),
        ] {
            let e = parse(&lua, text.as_bytes()).expect_err(text);
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(parse(&lua, b"\"\xff\"").is_err());
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&lua, nest(MAX_DEPTH).as_bytes()).is_ok());
        let e = parse(&lua, nest(MAX_DEPTH + 1).as_bytes()).expect_err("deeper");
        assert!(e.contains("nested deeper than 100"), "{e}");
        assert!(parse(&lua, nest(100_000).as_bytes()).is_err());
        let long = format!("\"{}\"", "a".repeat(MAX_BYTES - 1));
        assert!(parse(&lua, long.as_bytes()).expect_err("long").contains("longer than"));
    }

    /// A parse that does not fit in the state's memory limit fails with
    /// `nil, message`; the state goes on.
    #[test]
    fn parse_respects_the_memory_limit() {
        let lua = state();
        let big = format!("[{}1]", "[1,2,3],".repeat(200_000));
        lua.globals().set("big", lua.create_string(&big).expect("string")).expect("set");
        lua.set_memory_limit(lua.used_memory() + 512 * 1024).expect("limit");
        let e = parse(&lua, big.as_bytes()).expect_err("over the limit");
        assert!(e.contains("not enough memory"), "{e}");
        let (v, msg): (Value, Option<String>) = lua.load("return json.parse(big)").eval().expect("nil, message");
        assert!(v.is_nil() && msg.is_some_and(|m| m.starts_with("json.parse: ")));
        assert_eq!(lua.load("return json.dump({1})").eval::<String>().expect("still works"), "[1]");
    }

    #[test]
    fn round_trips_and_lua_api() {
        let lua = state();
        lua.load(
            r#"
            local t = {s = 'x', i = 1, f = 1.5, a = {1, 2, {b = false}}, n = json.null, e = {}}
            local text = assert(json.dump(t))
            assert(text == '{"a":[1,2,{"b":false}],"e":{},"f":1.5,"i":1,"n":null,"s":"x"}', text)
            assert(json.dump(json.parse(text)) == text)
            local v, err = json.parse('{')
            assert(v == nil and err:find('^json.parse: EOF'), err)
            v, err = json.parse(42)
            assert(v == nil and err == 'json.parse: expected a string, got a integer', err)
            v, err = json.dump({f = print})
            assert(v == nil and err == 'json.dump: a function has no JSON form', err)
            "#,
        )
        .exec()
        .expect("lua api");
    }

    /// The seed's examples, verbatim (with an `inspect` for the second).
    #[test]
    fn seed_examples_run() {
        let lua = state();
        let printed: std::rc::Rc<RefCell<Vec<String>>> = Default::default();
        let p = printed.clone();
        lua.globals()
            .set(
                "print",
                lua.create_function(move |_, s: String| {
                    p.borrow_mut().push(s);
                    Ok(())
                })
                .expect("print"),
            )
            .expect("set");
        lua.load("function inspect(t) return string.format('{ x = %d, y = %q }', t.x, t.y) end")
            .exec()
            .expect("inspect");
        lua.load(
            r#"
 print(json.dump{x=42, y="z"})
 print(inspect(json.parse('{"x":42,"y":"z"}')))
            "#,
        )
        .exec()
        .expect("the seed's examples");
        assert_eq!(*printed.borrow(), [r#"{"x":42,"y":"z"}"#, r#"{ x = 42, y = "z" }"#]);
    }
}
