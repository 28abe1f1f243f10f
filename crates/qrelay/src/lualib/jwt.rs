//! `jwt.sign(SECRET_KEY, HEADER, PAYLOAD)`: a JSON Web Token in the JWS
//! compact serialisation (RFC 7515 7.1), signed with Ed25519 (`alg`
//! `EdDSA`, RFC 8037): `BASE64URL(header) . BASE64URL(payload) .
//! BASE64URL(signature of the first two parts)`, base64url without
//! padding.
//!
//! SECRET_KEY is a libsodium signing key (`sodium.crypto_sign_keypair()`'s
//! second value, 64 bytes). HEADER is a table (or nil) and becomes a JSON
//! object with `alg` set to `EdDSA` (whatever was given: the key decides)
//! and `typ` `JWT` unless the table has a `typ`. PAYLOAD is a table that
//! dumps as a JSON object (the claims; an empty table is `{}`). Both are
//! written by `json.dump`'s rules (keys sorted). A bad key or a header or
//! payload without a JSON object form is a Lua error.

use base64ct::{Base64UrlUnpadded, Encoding};
use ed25519_dalek::{Signer, SigningKey};
use mlua::{LuaString, Value};

use crate::lualib::{json, sodium};
use crate::script::Module;

/// The compact serialisation of a JWS over `header` and `payload` (the
/// exact bytes), signed with `key`.
pub fn sign_compact(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let mut token = Base64UrlUnpadded::encode_string(header);
    token.push('.');
    token.push_str(&Base64UrlUnpadded::encode_string(payload));
    let signature = key.sign(token.as_bytes());
    token.push('.');
    token.push_str(&Base64UrlUnpadded::encode_string(&signature.to_bytes()));
    token
}

/// The header's JSON: the table's object with `alg` and `typ` set.
fn header_json(header: &Value) -> Result<String, String> {
    let text = match header {
        Value::Nil => "{}".to_owned(),
        Value::Table(_) => json::dump(header)?,
        other => return Err(format!("the header must be a table, not a {}", other.type_name())),
    };
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|_| "the header must be a table with string keys".to_owned())?;
    object.insert("alg".into(), "EdDSA".into());
    object.entry("typ").or_insert_with(|| "JWT".into());
    serde_json::to_string(&object).map_err(|e| e.to_string())
}

/// The payload's JSON, which must be an object.
fn payload_json(payload: &Value) -> Result<String, String> {
    let Value::Table(_) = payload else {
        return Err(format!("the payload must be a table, not a {}", payload.type_name()));
    };
    let text = json::dump(payload)?;
    if !text.starts_with('{') {
        return Err("the payload must be a table with string keys (a JSON object)".into());
    }
    Ok(text)
}

/// `jwt.sign`, outside Lua.
pub fn sign(sk: &[u8], header: &Value, payload: &Value) -> Result<String, String> {
    let key = sodium::signing_key(sk).map_err(|e| e.to_string())?;
    Ok(sign_compact(&key, header_json(header)?.as_bytes(), payload_json(payload)?.as_bytes()))
}

/// The `jwt` table.
#[derive(Debug)]
pub struct Jwt;

impl Module for Jwt {
    fn install(&self, lua: &mlua::Lua) -> mlua::Result<()> {
        let t = lua.create_table()?;
        t.set(
            "sign",
            lua.create_function(|_, (sk, header, payload): (LuaString, Value, Value)| {
                sign(&sk.as_bytes(), &header, &payload).map_err(|e| mlua::Error::runtime(format!("jwt.sign: {e}")))
            })?,
        )?;
        lua.globals().set("jwt", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::Lua;

    fn b64(s: &str) -> Vec<u8> {
        Base64UrlUnpadded::decode_vec(s).expect("base64url")
    }

    /// RFC 8037 A.4: the key of A.1, `{"alg":"EdDSA"}` over "Example of
    /// Ed25519 signing".
    #[test]
    fn rfc8037_a4() {
        let d = b64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
        let x = b64("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let key = sodium::signing_key(&[d, x].concat()).expect("the RFC's key pair");
        assert_eq!(
            sign_compact(&key, br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing"),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    fn state() -> Lua {
        let lua = Lua::new();
        for m in [&sodium::Sodium as &dyn Module, &json::Json, &Jwt] {
            m.install(&lua).expect("install");
        }
        lua
    }

    fn parts(token: &str) -> (String, String, Vec<u8>) {
        let p: Vec<&str> = token.split('.').collect();
        assert_eq!(p.len(), 3, "{token}");
        assert!(!token.contains('='), "no padding: {token}");
        let text = |s| String::from_utf8(b64(s)).expect("utf-8");
        (text(p[0]), text(p[1]), b64(p[2]))
    }

    /// The seed's example, verbatim; the token verifies with the public key
    /// over the first two parts.
    #[test]
    fn seed_example_and_header_rules() {
        let lua = state();
        lua.load(
            r#"
 pk, sk = sodium.crypto_sign_keypair()
 header = {kid='foo'}
 payload = {iss="joe",exp=1300819380}
 token = jwt.sign(sk, header, payload)
            "#,
        )
        .exec()
        .expect("the seed's example");
        let token: String = lua.globals().get("token").expect("token");
        let pk: LuaString = lua.globals().get("pk").expect("pk");
        let (header, payload, sig) = parts(&token);
        assert_eq!(header, r#"{"alg":"EdDSA","kid":"foo","typ":"JWT"}"#);
        assert_eq!(payload, r#"{"exp":1300819380,"iss":"joe"}"#);
        let signed = &token[..token.rfind('.').expect("dot")];
        assert!(sodium::verify_detached(&sig, signed.as_bytes(), &pk.as_bytes()).expect("verify"));
        // The caller's header table is not changed.
        assert!(lua.load("return header.alg == nil and header.typ == nil").eval::<bool>().expect("eval"));

        for (h, want) in [
            ("nil", r#"{"alg":"EdDSA","typ":"JWT"}"#),
            ("{}", r#"{"alg":"EdDSA","typ":"JWT"}"#),
            ("{alg='HS256', typ='at+jwt'}", r#"{"alg":"EdDSA","typ":"at+jwt"}"#),
        ] {
            let token: String = lua.load(format!("return jwt.sign(sk, {h}, {{}})")).eval().expect(h);
            let (header, payload, _) = parts(&token);
            assert_eq!((header.as_str(), payload.as_str()), (want, "{}"), "{h}");
        }
    }

    #[test]
    fn refuses() {
        let lua = state();
        lua.load("pk, sk = sodium.crypto_sign_keypair()").exec().expect("keys");
        for (args, why) in [
            ("pk, {}, {}", "malformed secret key (64 bytes expected, got 32)"),
            ("sk:sub(1, 32) .. sk:sub(1, 32), {}, {}", "public half does not match"),
            ("sk, {}, {1, 2}", "JSON object"),
            ("sk, {}, 'claims'", "payload must be a table"),
            ("sk, {}, nil", "payload must be a table"),
            ("sk, {1}, {}", "header must be a table with string keys"),
            ("sk, 'x', {}", "header must be a table, not a string"),
            ("sk, {}, {f=print}", "function has no JSON form"),
            ("sk, {}, {x=0/0}", "no JSON form"),
        ] {
            let e = lua.load(format!("return jwt.sign({args})")).eval::<String>().expect_err(args);
            let text = crate::script::lua_error_text(&e);
            assert!(text.contains("jwt.sign: ") && text.contains(why), "{args}: {text}");
        }
    }
}
