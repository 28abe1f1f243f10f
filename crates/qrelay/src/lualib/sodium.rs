//! `sodium`: the libsodium functions the original binds, with its names,
//! arguments and key formats, so that keys, sealed boxes and signatures
//! pass between a script and libsodium unchanged:
//!
//! - box keys (X25519) are 32 bytes each; a sealed box is the ephemeral
//!   public key, then `crypto_box` (XSalsa20-Poly1305) of the message under
//!   the nonce BLAKE2b-24(ephemeral pk || recipient pk) (crate `crypto_box`);
//! - a signing secret key is libsodium's 64 bytes, the seed then the public
//!   key; signatures are Ed25519 (RFC 8032), 64 bytes (crate
//!   `ed25519-dalek`); verification is strict as libsodium's (canonical S,
//!   no small-order key or R).
//!
//! Errors follow the original: an argument of the wrong length is a Lua
//! error; a box that does not open gives nil, a signature that does not
//! verify false; `hex2bin` of something that is not hex gives nil.

use crypto_box::aead::OsRng;
use crypto_box::aead::rand_core::RngCore;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use mlua::{Lua, LuaString};

use crate::script::Module;

/// The most `randombytes` gives in one call.
pub const MAX_RANDOMBYTES: i64 = 1 << 20;
/// Box key sizes (`crypto_box_PUBLICKEYBYTES`, `crypto_box_SECRETKEYBYTES`).
pub const BOX_KEY_BYTES: usize = 32;
/// What sealing adds (`crypto_box_SEALBYTES`): the ephemeral key and the tag.
pub const SEAL_BYTES: usize = crypto_box::SEALBYTES;
/// `crypto_sign_PUBLICKEYBYTES`.
pub const SIGN_PUBLIC_KEY_BYTES: usize = 32;
/// `crypto_sign_SECRETKEYBYTES`: seed || public key.
pub const SIGN_SECRET_KEY_BYTES: usize = 64;
/// `crypto_sign_BYTES`.
pub const SIGNATURE_BYTES: usize = 64;

/// What the library functions refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SodiumError {
    /// A key or a ciphertext of the wrong length.
    #[error("malformed {what} ({expected} bytes expected, got {got})")]
    Length {
        /// Which argument.
        what: &'static str,
        /// The length libsodium wants.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A signing secret key whose second half is not the public key of
    /// its first half (libsodium would make signatures nobody can verify).
    #[error("malformed secret key (its public half does not match its seed)")]
    KeyMismatch,
    /// A size out of bounds.
    #[error("randombytes: size must be between 0 and {MAX_RANDOMBYTES}")]
    Size,
    /// The system's random source failed.
    #[error("no random bytes: {0}")]
    Random(String),
    /// Encryption failed (never happens for messages in memory).
    #[error("encryption failed")]
    Encrypt,
}

fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], SodiumError> {
    bytes.try_into().map_err(|_| SodiumError::Length { what, expected: N, got: bytes.len() })
}

/// `sodium_hex2bin` without ignored characters: pairs of hex digits of
/// either case, nothing else; `None` otherwise (an odd count too).
pub fn hex2bin(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    fn digit(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    hex.chunks_exact(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// `sodium_bin2hex`: lower-case hex.
pub fn bin2hex(bin: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bin.len() * 2);
    for b in bin {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `randombytes_buf`: `n` bytes from the operating system's generator.
pub fn randombytes(n: i64) -> Result<Vec<u8>, SodiumError> {
    if !(0..=MAX_RANDOMBYTES).contains(&n) {
        return Err(SodiumError::Size);
    }
    let mut buf = vec![0u8; n as usize];
    OsRng.try_fill_bytes(&mut buf).map_err(|e| SodiumError::Random(e.to_string()))?;
    Ok(buf)
}

fn random32() -> Result<[u8; 32], SodiumError> {
    let mut b = [0u8; 32];
    OsRng.try_fill_bytes(&mut b).map_err(|e| SodiumError::Random(e.to_string()))?;
    Ok(b)
}

/// `crypto_box_keypair`: (public key, secret key).
pub fn box_keypair() -> Result<([u8; 32], [u8; 32]), SodiumError> {
    let sk = crypto_box::SecretKey::from(random32()?);
    Ok((sk.public_key().to_bytes(), sk.to_bytes()))
}

/// `crypto_box_seal`.
pub fn box_seal(message: &[u8], pk: &[u8]) -> Result<Vec<u8>, SodiumError> {
    let pk = crypto_box::PublicKey::from(fixed::<BOX_KEY_BYTES>(pk, "public key")?);
    pk.seal(&mut OsRng, message).map_err(|_| SodiumError::Encrypt)
}

/// `crypto_box_seal_open`: `Ok(None)` when the box does not open, which
/// includes a public key that is not the secret key's (libsodium derives
/// the nonce from the public key given, so it fails there too).
pub fn box_seal_open(ciphertext: &[u8], pk: &[u8], sk: &[u8]) -> Result<Option<Vec<u8>>, SodiumError> {
    if ciphertext.len() < SEAL_BYTES {
        return Err(SodiumError::Length { what: "ciphertext", expected: SEAL_BYTES, got: ciphertext.len() });
    }
    let pk = fixed::<BOX_KEY_BYTES>(pk, "public key")?;
    let sk = crypto_box::SecretKey::from(fixed::<BOX_KEY_BYTES>(sk, "secret key")?);
    if sk.public_key().as_bytes() != &pk {
        return Ok(None);
    }
    Ok(sk.unseal(ciphertext).ok())
}

/// `crypto_sign_keypair`: (public key, secret key = seed || public key).
pub fn sign_keypair() -> Result<([u8; 32], [u8; 64]), SodiumError> {
    let key = SigningKey::from_bytes(&random32()?);
    Ok((key.verifying_key().to_bytes(), key.to_keypair_bytes()))
}

/// A libsodium signing secret key: 64 bytes, the seed and its public key.
pub fn signing_key(sk: &[u8]) -> Result<SigningKey, SodiumError> {
    SigningKey::from_keypair_bytes(&fixed::<SIGN_SECRET_KEY_BYTES>(sk, "secret key")?)
        .map_err(|_| SodiumError::KeyMismatch)
}

/// `crypto_sign_detached`.
pub fn sign_detached(message: &[u8], sk: &[u8]) -> Result<[u8; 64], SodiumError> {
    Ok(signing_key(sk)?.sign(message).to_bytes())
}

/// `crypto_sign_verify_detached`: a signature of another length, or a
/// public key that is no curve point, does not verify.
pub fn verify_detached(signature: &[u8], message: &[u8], pk: &[u8]) -> Result<bool, SodiumError> {
    let pk = fixed::<SIGN_PUBLIC_KEY_BYTES>(pk, "public key")?;
    let Ok(signature) = <[u8; SIGNATURE_BYTES]>::try_from(signature) else { return Ok(false) };
    let Ok(pk) = VerifyingKey::from_bytes(&pk) else { return Ok(false) };
    Ok(pk.verify_strict(message, &Signature::from_bytes(&signature)).is_ok())
}

/// `crypto_scalarmult_base`: X25519 of the (clamped) scalar and the base
/// point, i.e. a box secret key's public key.
pub fn scalarmult_base(n: &[u8]) -> Result<[u8; 32], SodiumError> {
    let sk = crypto_box::SecretKey::from(fixed::<BOX_KEY_BYTES>(n, "scalar")?);
    Ok(sk.public_key().to_bytes())
}

fn lua_err(name: &str) -> impl Fn(SodiumError) -> mlua::Error + '_ {
    move |e| mlua::Error::runtime(format!("sodium.{name}: {e}"))
}

/// The `sodium` table.
#[derive(Debug)]
pub struct Sodium;

impl Module for Sodium {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let t = lua.create_table()?;
        t.set(
            "hex2bin",
            lua.create_function(|lua, hex: LuaString| {
                hex2bin(&hex.as_bytes()).map(|b| lua.create_string(b)).transpose()
            })?,
        )?;
        t.set("bin2hex", lua.create_function(|_, bin: LuaString| Ok(bin2hex(&bin.as_bytes())))?)?;
        t.set(
            "randombytes",
            lua.create_function(|lua, n: i64| lua.create_string(randombytes(n).map_err(lua_err("randombytes"))?))?,
        )?;
        t.set(
            "crypto_box_keypair",
            lua.create_function(|lua, ()| {
                let (pk, sk) = box_keypair().map_err(lua_err("crypto_box_keypair"))?;
                Ok((lua.create_string(pk)?, lua.create_string(sk)?))
            })?,
        )?;
        t.set(
            "crypto_box_seal",
            lua.create_function(|lua, (m, pk): (LuaString, LuaString)| {
                lua.create_string(box_seal(&m.as_bytes(), &pk.as_bytes()).map_err(lua_err("crypto_box_seal"))?)
            })?,
        )?;
        t.set(
            "crypto_box_seal_open",
            lua.create_function(|lua, (c, pk, sk): (LuaString, LuaString, LuaString)| {
                box_seal_open(&c.as_bytes(), &pk.as_bytes(), &sk.as_bytes())
                    .map_err(lua_err("crypto_box_seal_open"))?
                    .map(|m| lua.create_string(m))
                    .transpose()
            })?,
        )?;
        t.set(
            "crypto_sign_keypair",
            lua.create_function(|lua, ()| {
                let (pk, sk) = sign_keypair().map_err(lua_err("crypto_sign_keypair"))?;
                Ok((lua.create_string(pk)?, lua.create_string(sk)?))
            })?,
        )?;
        t.set(
            "crypto_sign_detached",
            lua.create_function(|lua, (m, sk): (LuaString, LuaString)| {
                lua.create_string(
                    sign_detached(&m.as_bytes(), &sk.as_bytes()).map_err(lua_err("crypto_sign_detached"))?,
                )
            })?,
        )?;
        t.set(
            "crypto_sign_verify_detached",
            lua.create_function(|_, (sig, m, pk): (LuaString, LuaString, LuaString)| {
                verify_detached(&sig.as_bytes(), &m.as_bytes(), &pk.as_bytes())
                    .map_err(lua_err("crypto_sign_verify_detached"))
            })?,
        )?;
        t.set(
            "crypto_scalarmult_base",
            lua.create_function(|lua, n: LuaString| {
                lua.create_string(scalarmult_base(&n.as_bytes()).map_err(lua_err("crypto_scalarmult_base"))?)
            })?,
        )?;
        lua.globals().set("sodium", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex2bin(s.as_bytes()).expect("hex")
    }

    #[test]
    fn hex_both_ways() {
        for (hex, bin) in [
            ("", Some(&b""[..])),
            ("deadbeef", Some(&b"\xde\xad\xbe\xef"[..])),
            ("DEADbeef", Some(&b"\xde\xad\xbe\xef"[..])),
            ("4100ff", Some(&b"A\0\xff"[..])),
            ("abc", None),
            ("zz", None),
            ("0x00", None),
            ("de ad", None),
            ("dé", None),
        ] {
            assert_eq!(hex2bin(hex.as_bytes()).as_deref(), bin, "{hex:?}");
        }
        assert_eq!(bin2hex(b"A\0\xff"), "4100ff");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(hex2bin(bin2hex(&all).as_bytes()), Some(all));
    }

    #[test]
    fn randombytes_sizes() {
        assert_eq!(randombytes(0).expect("0"), b"");
        assert_eq!(randombytes(32).expect("32").len(), 32);
        assert_ne!(randombytes(32).expect("32"), randombytes(32).expect("32"));
        assert_eq!(randombytes(MAX_RANDOMBYTES).expect("max").len(), MAX_RANDOMBYTES as usize);
        assert_eq!(randombytes(-1), Err(SodiumError::Size));
        assert_eq!(randombytes(MAX_RANDOMBYTES + 1), Err(SodiumError::Size));
    }

    /// RFC 8032 7.1, TESTs 1 to 3 (libsodium gives the same: checked with
    /// python3-nacl's crypto_sign_seed_keypair and crypto_sign).
    #[test]
    fn ed25519_rfc8032_vectors() {
        for (seed, pk, msg, sig) in [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
            (
                "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
                "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
                "af82",
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
        ] {
            let sk = [h(seed), h(pk)].concat();
            assert_eq!(bin2hex(&sign_detached(&h(msg), &sk).expect("sign")), sig);
            assert!(verify_detached(&h(sig), &h(msg), &h(pk)).expect("verify"));
            // Any change breaks it.
            let mut bad = h(sig);
            bad[0] ^= 1;
            assert!(!verify_detached(&bad, &h(msg), &h(pk)).expect("verify"));
            assert!(!verify_detached(&h(sig), b"other", &h(pk)).expect("verify"));
            assert!(!verify_detached(&h(sig)[..63], &h(msg), &h(pk)).expect("short signature"));
        }
    }

    #[test]
    fn signing_keys_are_libsodiums() {
        let (pk, sk) = sign_keypair().expect("keypair");
        assert_eq!(sk[32..], pk);
        assert!(verify_detached(&sign_detached(b"m", &sk).expect("sign"), b"m", &pk).expect("verify"));
        // A secret key whose halves do not belong together, or of another
        // length, is an error; so is a public key of another length.
        let (other_pk, _) = sign_keypair().expect("keypair");
        let mixed = [&sk[..32], &other_pk[..]].concat();
        assert_eq!(sign_detached(b"m", &mixed), Err(SodiumError::KeyMismatch));
        assert!(matches!(sign_detached(b"m", &sk[..32]), Err(SodiumError::Length { expected: 64, got: 32, .. })));
        assert!(matches!(verify_detached(&[0; 64], b"m", &pk[..31]), Err(SodiumError::Length { .. })));
        // A small-order public key (the identity) never verifies (strict,
        // as libsodium).
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(!verify_detached(&[0; 64], b"", &identity).expect("verify"));
    }

    /// RFC 7748 6.1: Alice's and Bob's public keys from their private ones.
    #[test]
    fn scalarmult_base_rfc7748() {
        for (n, q) in [
            (
                "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
                "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
            ),
            (
                "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
                "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
            ),
        ] {
            assert_eq!(bin2hex(&scalarmult_base(&h(n)).expect("scalarmult")), q);
        }
        assert!(scalarmult_base(b"short").is_err());
        let (pk, sk) = box_keypair().expect("keypair");
        assert_eq!(scalarmult_base(&sk).expect("scalarmult"), pk);
    }

    /// A box sealed by libsodium 1.0.18 (python3-nacl 1.5.0:
    /// `crypto_box_seal(b"sealed by libsodium", crypto_scalarmult_base(bytes(range(1, 33))))`).
    #[test]
    fn opens_a_box_libsodium_sealed() {
        let sk: Vec<u8> = (1..=32).collect();
        let pk = h("07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c");
        assert_eq!(scalarmult_base(&sk).expect("pk").to_vec(), pk);
        let c = h(
            "5160b16235af54b70a3f7133189b77e5e27cbe85fc5df669b18bfcd59e3e27253688b71c57a37b625b10342e3d4acb69a5d6c4e304a72c248bb6cb85daa2e5dad100ae",
        );
        assert_eq!(box_seal_open(&c, &pk, &sk).expect("args").as_deref(), Some(&b"sealed by libsodium"[..]));
        // Any flipped bit, a truncation or the wrong key: nil.
        for i in [0, 31, 32, 47, 48, c.len() - 1] {
            let mut bad = c.clone();
            bad[i] ^= 0x40;
            assert_eq!(box_seal_open(&bad, &pk, &sk).expect("args"), None, "byte {i}");
        }
        assert_eq!(box_seal_open(&c[..c.len() - 1], &pk, &sk).expect("args"), None);
        let (other_pk, other_sk) = box_keypair().expect("keypair");
        assert_eq!(box_seal_open(&c, &other_pk, &other_sk).expect("args"), None);
        assert_eq!(box_seal_open(&c, &other_pk, &sk).expect("args"), None, "a public key not the secret key's");
    }

    #[test]
    fn seal_round_trip_and_lengths() {
        let (pk, sk) = box_keypair().expect("keypair");
        for m in [&b""[..], b"x", &[7u8; 10000][..]] {
            let c = box_seal(m, &pk).expect("seal");
            assert_eq!(c.len(), m.len() + SEAL_BYTES);
            assert_eq!(box_seal_open(&c, &pk, &sk).expect("args").as_deref(), Some(m));
        }
        // Two seals of one message differ (a fresh ephemeral key each).
        assert_ne!(box_seal(b"m", &pk).expect("seal"), box_seal(b"m", &pk).expect("seal"));
        assert!(matches!(box_seal(b"m", &pk[..31]), Err(SodiumError::Length { what: "public key", .. })));
        assert!(matches!(box_seal_open(&[0; 47], &pk, &sk), Err(SodiumError::Length { what: "ciphertext", .. })));
        assert!(matches!(box_seal_open(&[0; 48], &pk, &sk[..1]), Err(SodiumError::Length { what: "secret key", .. })));
        assert_eq!(box_seal_open(&[0; 48], &pk, &sk).expect("args"), None);
    }

    /// Results are Lua strings, under the state's memory limit: past it, a
    /// Lua error the script can catch, and the state goes on.
    #[test]
    fn within_the_memory_limit() {
        let lua = Lua::new();
        Sodium.install(&lua).expect("install");
        lua.load("big = string.rep('x', 3 * 1024 * 1024)").exec().expect("big");
        lua.set_memory_limit(lua.used_memory() + 4 * 1024 * 1024).expect("limit");
        lua.load(
            r#"
            local ok, err = pcall(sodium.bin2hex, big)
            assert(not ok and tostring(err):find('not enough memory'), tostring(err))
            assert(#sodium.crypto_box_seal(big:sub(1, 1024 * 1024), (sodium.crypto_box_keypair())) == 1024 * 1024 + 48)
            assert(sodium.bin2hex('ok') == '6f6b')
            "#,
        )
        .exec()
        .expect("within the limit");
    }

    /// The seed's examples, verbatim, in a Lua state with the module.
    #[test]
    fn seed_examples_run() {
        let lua = Lua::new();
        Sodium.install(&lua).expect("install");
        lua.load(
            r#"
            bin = sodium.hex2bin("deadbeef") -- returns "\xde\xad\xbe\ef"
            hex = sodium.bin2hex("A\0\xff") -- returns "4100ff"
            key = sodium.randombytes(32)
            pk, sk = sodium.crypto_box_keypair()
            ciphertext = sodium.crypto_box_seal('hello world', pk)
            message = sodium.crypto_box_seal_open(ciphertext, pk, sk)
            assert(bin == "\xde\xad\xbe\xef" and hex == "4100ff" and #key == 32 and message == 'hello world')
            box_pk = pk
            pk = sodium.crypto_scalarmult_base(sk)
            assert(pk == box_pk)
            pk, sk = sodium.crypto_sign_keypair()
            m = 'hello world'
            sig = sodium.crypto_sign_detached(m, sk)
            valid = sodium.crypto_sign_verify_detached(sig, m, pk)
            assert(valid == true and #sig == 64 and #sk == 64)
            assert(sodium.crypto_sign_verify_detached(sig, 'other', pk) == false)
            assert(sodium.hex2bin("xyz") == nil)
            assert(sodium.crypto_box_seal_open(string.rep('\0', 48), box_pk, sk:sub(1, 32)) == nil)
            local ok, err = pcall(sodium.crypto_box_seal, 'm', 'short')
            assert(not ok and tostring(err):find('malformed public key %(32 bytes expected, got 5%)'), tostring(err))
            ok, err = pcall(sodium.randombytes, 1e9)
            assert(not ok and tostring(err):find('randombytes'), tostring(err))
            "#,
        )
        .exec()
        .expect("the seed's examples");
    }
}
