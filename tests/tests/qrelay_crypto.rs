//! qrelay's `sodium`, `json` and `jwt` Lua libraries against real peers:
//! libsodium itself (Debian's python3-nacl wraps it) and PyJWT (with
//! python3-cryptography), through tests/peers/libsodium-peer.py.
//!
//! Data goes into qrelay written into its configuration; it comes out in
//! headers the handler inserts (`X-Out-NAME: value`, hex or base64url),
//! read from the request a scripted upstream recorded.

mod qmqp_support;

use std::collections::HashMap;
use std::process::Command;

use chainmail_tests::peer::{PYTHON, peer_script};
use chainmail_tests::run::run;
use chainmail_tests::{TestDir, secs};
use qmqp_support::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: crypto\n\nbody\n";
const ENVELOPE: &[u8] = b"Fa@example.org\0Tb@example.org\0\0";

/// libsodium-peer.py COMMAND ARGS: its stdout's words.
fn peer(args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(peer_script("libsodium-peer.py")).args(args);
    let out = run(&mut cmd, b"", secs(60));
    assert!(out.success(), "{}", out.describe());
    out.stdout_str().split_whitespace().map(str::to_owned).collect()
}

/// libsodium-peer.py's output lines.
fn peer_lines(args: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(peer_script("libsodium-peer.py")).args(args);
    let out = run(&mut cmd, b"", secs(60));
    assert!(out.success(), "{}", out.describe());
    out.stdout_str().lines().map(str::to_owned).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs qrelay with `globals` at startup and a handler that runs `body`,
/// then relays to a scripted upstream; sends one message through it and
/// returns the `X-Out-*` headers the upstream got (name without the
/// prefix, value).
fn outputs(dir: &TestDir, globals: &str, body: &str) -> HashMap<String, String> {
    let up_path = dir.join(format!("up-{}.sock", next_number()));
    let up = ScriptedServer::unix(&up_path, vec![Script::Reply(b"3:Kok,".to_vec())]);
    let sock = dir.join("qrelay.sock").display().to_string();
    let _ = std::fs::remove_file(&sock);
    let config = format!(
        "up = qmqp_resolve('{}')\n{globals}\nqmqp_listen('{sock}', function(m)\n{body}\nreturn m:connect(up)\nend)\n",
        up.entry
    );
    let q = Qrelay::start(dir, &config);
    let home = qmail_home(dir, &[&sock]);
    let out = qmqpc(dir, &home, MESSAGE, ENVELOPE);
    assert_eq!(out.code(), Some(0), "{}\n{}", out.describe(), q.stderr());
    let request = String::from_utf8_lossy(&up.request()).into_owned();
    request
        .lines()
        .filter_map(|l| l.split_once("X-Out-"))
        .filter_map(|(_, rest)| rest.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn next_number() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn get<'a>(out: &'a HashMap<String, String>, k: &str) -> &'a str {
    out.get(k).unwrap_or_else(|| panic!("no X-Out-{k} in {out:?}"))
}

#[test]
fn sealed_boxes_both_ways_with_libsodium() {
    let dir = TestDir::new("qrelay_crypto_box");
    // libsodium's key pair and a box it sealed for it.
    let k = peer(&["box-keypair"]);
    let (pk, sk) = (&k[0], &k[1]);
    let from_libsodium = hex(b"sealed by libsodium");
    let boxed = &peer(&["seal", pk, &from_libsodium])[0];
    let mut tampered = boxed.clone().into_bytes();
    tampered[100] = if tampered[100] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).expect("hex");
    let globals = format!("pk = sodium.hex2bin('{pk}') sk = sodium.hex2bin('{sk}')");
    let body = format!(
        "local h = sodium.bin2hex
        m:insert_header('X-Out-Opened', h(sodium.crypto_box_seal_open(sodium.hex2bin('{boxed}'), pk, sk)))
        m:insert_header('X-Out-Tampered', tostring(sodium.crypto_box_seal_open(sodium.hex2bin('{tampered}'), pk, sk)))
        m:insert_header('X-Out-Sealed', h(sodium.crypto_box_seal('sealed by qrelay', pk)))
        local mypk, mysk = sodium.crypto_box_keypair()
        m:insert_header('X-Out-MyPk', h(mypk))
        m:insert_header('X-Out-MySk', h(mysk))
        m:insert_header('X-Out-MySealed', h(sodium.crypto_box_seal('to myself', mypk)))"
    );
    let out = outputs(&dir, &globals, &body);
    // libsodium's box opened here; a changed one did not.
    assert_eq!(get(&out, "Opened"), from_libsodium);
    assert_eq!(get(&out, "Tampered"), "nil");
    // qrelay's box opens in libsodium.
    assert_eq!(peer(&["open", pk, sk, get(&out, "Sealed")]), [hex(b"sealed by qrelay")]);
    // qrelay's key pair is one for libsodium: its box opens there, and its
    // public key is libsodium's scalarmult of its secret key.
    assert_eq!(peer(&["open", get(&out, "MyPk"), get(&out, "MySk"), get(&out, "MySealed")]), [hex(b"to myself")]);
    assert_eq!(peer(&["scalarmult-base", get(&out, "MySk")]), [get(&out, "MyPk")]);
    // A box for another key does not open there.
    assert_eq!(peer(&["open", pk, sk, get(&out, "MySealed")]), ["FAIL"]);
}

#[test]
fn signatures_both_ways_with_libsodium() {
    let dir = TestDir::new("qrelay_crypto_sign");
    let k = peer(&["sign-keypair"]);
    let (pk, sk) = (&k[0], &k[1]);
    let message = hex(b"signed message\0with a NUL");
    let sig = &peer(&["sign", sk, &message])[0];
    let globals = format!(
        "pk = sodium.hex2bin('{pk}') sk = sodium.hex2bin('{sk}') msg = sodium.hex2bin('{message}') sig = sodium.hex2bin('{sig}')"
    );
    let body = "local h = sodium.bin2hex
        m:insert_header('X-Out-Verified', tostring(sodium.crypto_sign_verify_detached(sig, msg, pk)))
        m:insert_header('X-Out-OtherMessage', tostring(sodium.crypto_sign_verify_detached(sig, msg .. 'x', pk)))
        local bad = string.char(sig:byte(1) ~ 1) .. sig:sub(2)
        m:insert_header('X-Out-BadSig', tostring(sodium.crypto_sign_verify_detached(bad, msg, pk)))
        m:insert_header('X-Out-MySig', h(sodium.crypto_sign_detached(msg, sk)))
        local mypk, mysk = sodium.crypto_sign_keypair()
        m:insert_header('X-Out-MyPk', h(mypk))
        m:insert_header('X-Out-MySk', h(mysk))
        m:insert_header('X-Out-MySig2', h(sodium.crypto_sign_detached(msg, mysk)))";
    let out = outputs(&dir, &globals, body);
    // libsodium's signature verifies here, and nothing else does.
    assert_eq!(get(&out, "Verified"), "true");
    assert_eq!(get(&out, "OtherMessage"), "false");
    assert_eq!(get(&out, "BadSig"), "false");
    // Ed25519 is deterministic: with libsodium's key, qrelay's signature is
    // libsodium's, byte for byte.
    assert_eq!(get(&out, "MySig"), sig);
    // qrelay's key pair is libsodium's format (seed || pk), and its
    // signature verifies there.
    let my_sk = get(&out, "MySk");
    assert_eq!(peer(&["seed-keypair", &my_sk[..64]]), [get(&out, "MyPk"), my_sk]);
    assert_eq!(peer(&["verify", get(&out, "MyPk"), get(&out, "MySig2"), &message]), ["ok"]);
    assert_eq!(peer(&["verify", get(&out, "MyPk"), get(&out, "MySig2"), &hex(b"other")]), ["FAIL"]);
}

#[test]
fn scalarmult_base_as_libsodiums() {
    let dir = TestDir::new("qrelay_crypto_scalarmult");
    let scalars = [
        "0000000000000000000000000000000000000000000000000000000000000000".to_owned(),
        "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff".to_owned(),
        "0900000000000000000000000000000000000000000000000000000000000000".to_owned(),
        peer(&["box-keypair"])[1].clone(),
        peer(&["box-keypair"])[1].clone(),
    ];
    let body: String = scalars
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "m:insert_header('X-Out-Q{i}', sodium.bin2hex(sodium.crypto_scalarmult_base(sodium.hex2bin('{n}'))))\n"
            )
        })
        .collect();
    let out = outputs(&dir, "", &body);
    for (i, n) in scalars.iter().enumerate() {
        assert_eq!(get(&out, &format!("Q{i}")), peer(&["scalarmult-base", n])[0], "scalar {n}");
    }
}

#[test]
fn jwt_tokens_verified_by_pyjwt() {
    let dir = TestDir::new("qrelay_crypto_jwt");
    let k = peer(&["sign-keypair"]);
    let (pk, sk) = (&k[0], &k[1]);
    let globals = format!("sk = sodium.hex2bin('{sk}')");
    let body = "m:insert_header('X-Out-Token', jwt.sign(sk, {kid='foo'}, {iss='joe', exp=4102444800}))
        m:insert_header('X-Out-Rich', jwt.sign(sk, {typ='at+jwt', alg='none'},
            {sub='b@example.org', n=42, f=0.5, ok=true, none=json.null, list={1, 'two', {three=3}}, empty={}}))
        local mypk, mysk = sodium.crypto_sign_keypair()
        m:insert_header('X-Out-MyPk', sodium.bin2hex(mypk))
        m:insert_header('X-Out-Mine', jwt.sign(mysk, nil, {iss='qrelay'}))
        m:insert_header('X-Out-Expired', jwt.sign(sk, {kid='foo'}, {iss='joe', exp=1300819380}))";
    let out = outputs(&dir, &globals, body);
    let token = get(&out, "Token");
    assert_eq!(
        peer_lines(&["jwt-verify", pk, token]),
        [r#"{"alg": "EdDSA", "kid": "foo", "typ": "JWT"}"#, r#"{"exp": 4102444800, "iss": "joe"}"#]
    );
    // PyJWT makes the very same token from the same key and claims.
    assert_eq!(peer(&["jwt-encode", sk, r#"{"kid":"foo"}"#, r#"{"exp":4102444800,"iss":"joe"}"#]), [token]);
    assert_eq!(
        peer_lines(&["jwt-verify", pk, get(&out, "Rich")]),
        [
            r#"{"alg": "EdDSA", "typ": "at+jwt"}"#,
            r#"{"empty": {}, "f": 0.5, "list": [1, "two", {"three": 3}], "n": 42, "none": null, "ok": true, "sub": "b@example.org"}"#
        ]
    );
    assert_eq!(peer_lines(&["jwt-verify", get(&out, "MyPk"), get(&out, "Mine")])[1], r#"{"iss": "qrelay"}"#);
    // The wrong key, a changed payload, an expired token: refused.
    assert_eq!(peer(&["jwt-verify", get(&out, "MyPk"), token]), ["InvalidSignatureError"]);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!("{}.eyJpc3MiOiJldmUifQ.{}", parts[0], parts[2]);
    assert_eq!(peer(&["jwt-verify", pk, &forged]), ["InvalidSignatureError"]);
    assert_eq!(peer(&["jwt-verify", pk, get(&out, "Expired")]), ["ExpiredSignatureError"]);
}

/// The seed's examples for sodium, json and jwt, verbatim, at startup and
/// in a handler. Each snippet stands alone in the seed; run one after the
/// other, the scalar multiplication (of a box secret key) comes right after
/// the sealed boxes, before the signatures replace `sk` by a signing key.
/// `inspect` is not part of qrelay: the script defines a small one, as a
/// script written for the original would load one.
#[test]
fn seed_examples_verbatim() {
    let dir = TestDir::new("qrelay_crypto_seed");
    let examples = r#"
 bin = sodium.hex2bin("deadbeef") -- returns "\xde\xad\xbe\ef"
 hex = sodium.bin2hex("A\0\xff") -- returns "4100ff"
 key = sodium.randombytes(32)
 pk, sk = sodium.crypto_box_keypair()
 ciphertext = sodium.crypto_box_seal('hello world', pk)
 message = sodium.crypto_box_seal_open(ciphertext, pk, sk)
 box_pk = pk
 pk = sodium.crypto_scalarmult_base(sk)
 scalarmult_ok = pk == box_pk
 pk, sk = sodium.crypto_sign_keypair()
 m = 'hello world'
 sig = sodium.crypto_sign_detached(m, sk)
 valid = sodium.crypto_sign_verify_detached(sig, m, pk)
 print(json.dump{x=42, y="z"})
 print(inspect(json.parse('{"x":42,"y":"z"}')))
 pk, sk = sodium.crypto_sign_keypair()
 header = {kid='foo'}
 payload = {iss="joe",exp=1300819380}
 token = jwt.sign(sk, header, payload)
"#;
    let globals = format!(
        "function inspect(t) local k = {{}} for n, v in pairs(t) do k[#k + 1] = n .. ' = ' .. string.format('%q', v) end table.sort(k) return '{{ ' .. table.concat(k, ', ') .. ' }}' end\n{examples}\nstartup_token = token"
    );
    // The handler gets its own `m` as a parameter; the example's
    // `m = 'hello world'` assigns to it, so the handler keeps it aside.
    let body = format!(
        "local mail = m\n{examples}\nm = mail
        m:insert_header('X-Out-Bin', sodium.bin2hex(bin))
        m:insert_header('X-Out-Hex', hex)
        m:insert_header('X-Out-Key', tostring(#key))
        m:insert_header('X-Out-Message', message)
        m:insert_header('X-Out-Scalarmult', tostring(scalarmult_ok))
        m:insert_header('X-Out-Valid', tostring(valid))
        m:insert_header('X-Out-Json', json.dump{{x=42, y='z'}})
        m:insert_header('X-Out-Token', token)
        m:insert_header('X-Out-Pk', sodium.bin2hex(pk))
        m:insert_header('X-Out-StartupToken', tostring(startup_token ~= nil))"
    );
    let out = outputs(&dir, &globals, &body);
    assert_eq!(get(&out, "Bin"), "deadbeef");
    assert_eq!(get(&out, "Hex"), "4100ff");
    assert_eq!(get(&out, "Key"), "32");
    assert_eq!(get(&out, "Message"), "hello world");
    assert_eq!(get(&out, "Scalarmult"), "true");
    assert_eq!(get(&out, "Valid"), "true");
    assert_eq!(get(&out, "Json"), r#"{"x":42,"y":"z"}"#);
    assert_eq!(get(&out, "StartupToken"), "true");
    // The example's token verifies with the key pair's public key: PyJWT
    // checks the signature first, then finds the claims' exp (2011) past.
    assert_eq!(peer(&["jwt-verify", get(&out, "Pk"), get(&out, "Token")]), ["ExpiredSignatureError"]);
    assert_eq!(peer(&["jwt-verify", &peer(&["sign-keypair"])[0], get(&out, "Token")]), ["InvalidSignatureError"]);
}

/// A parse that does not fit in `lua_memory_limit` is `nil, message` for
/// the script; the daemon goes on with the next message.
#[test]
fn json_within_the_memory_limit() {
    let dir = TestDir::new("qrelay_crypto_memory");
    let globals = "lua_memory_limit = 4 * 1024 * 1024";
    let body = "local big = '[' .. string.rep('[1,2,3],', 200000) .. '1]'
        local v, err = json.parse(big)
        big = nil
        m:insert_header('X-Out-Value', tostring(v))
        m:insert_header('X-Out-Error', err)
        local ok, e = pcall(sodium.randombytes, 2 * 1024 * 1024)
        m:insert_header('X-Out-Random', tostring(ok) .. ' ' .. tostring(e):match('[^\\n]*'))
        m:insert_header('X-Out-Small', json.dump(json.parse('[1,{\"a\":null}]')))";
    let out = outputs(&dir, globals, body);
    assert_eq!(get(&out, "Value"), "nil");
    assert!(get(&out, "Error").starts_with("json.parse: not enough memory"), "{out:?}");
    assert!(get(&out, "Random").starts_with("false ") && get(&out, "Random").contains("randombytes"), "{out:?}");
    assert_eq!(get(&out, "Small"), r#"[1,{"a":null}]"#);
}
