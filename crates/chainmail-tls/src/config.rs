//! The server configuration, from the environment variables of the s6
//! TLS tools: `CERTFILE`, `KEYFILE`, `CERTFILE:name`, `KEYFILE:name`,
//! `CAFILE` and `CADIR`.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::error::ConfigError;
use crate::keys;

/// How server names sent by clients (SNI) select the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SniLevel {
    /// `-k 0`: only `CERTFILE`/`KEYFILE`; named pairs are not even read.
    Off,
    /// `-k 1`, `--sni`: a named pair matching the client's SNI wins, the
    /// `CERTFILE`/`KEYFILE` pair is the fallback.
    Optional,
    /// `-k 2`, `--mandatory-sni`: only named pairs; a client whose SNI
    /// matches none (or who sends none) fails the handshake.
    Mandatory,
}

impl SniLevel {
    /// The level for a `-k` number: 0, 1, and 2 or more.
    pub fn from_number(n: u32) -> SniLevel {
        match n {
            0 => SniLevel::Off,
            1 => SniLevel::Optional,
            _ => SniLevel::Mandatory,
        }
    }
}

/// Whether clients are asked for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate request (the default).
    None,
    /// `-Y`: ask; a client may send none, but one it sends must verify.
    Optional,
    /// `-y`: a client without a valid certificate fails the handshake.
    Required,
}

/// One `CERTFILE:name` / `KEYFILE:name` pair as found in the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NamedPair {
    /// The name as written after the colon.
    name: String,
    cert: Option<OsString>,
    key: Option<OsString>,
}

/// The TLS engine's variables, captured from an environment.
///
/// Capturing only looks at names; no file is opened until
/// [`TlsEnv::server_config`].
#[derive(Debug, Clone, Default)]
pub struct TlsEnv {
    certfile: Option<OsString>,
    keyfile: Option<OsString>,
    cafile: Option<OsString>,
    cadir: Option<OsString>,
    named: Vec<NamedPair>,
}

fn nonempty(v: OsString) -> Option<OsString> {
    (!v.is_empty()).then_some(v)
}

impl TlsEnv {
    /// Captures the variables of this process's environment.
    pub fn from_env() -> TlsEnv {
        TlsEnv::from_vars(std::env::vars_os())
    }

    /// Captures the variables from `(name, value)` pairs. Empty values
    /// count as unset.
    pub(crate) fn from_vars<I: IntoIterator<Item = (OsString, OsString)>>(vars: I) -> TlsEnv {
        let mut env = TlsEnv::default();
        for (name, value) in vars {
            let Some(name) = name.to_str() else { continue };
            match name {
                "CERTFILE" => env.certfile = nonempty(value),
                "KEYFILE" => env.keyfile = nonempty(value),
                "CAFILE" => env.cafile = nonempty(value),
                "CADIR" => env.cadir = nonempty(value),
                _ => {
                    let (sni, is_cert) = if let Some(n) = name.strip_prefix("CERTFILE:") {
                        (n, true)
                    } else if let Some(n) = name.strip_prefix("KEYFILE:") {
                        (n, false)
                    } else {
                        continue;
                    };
                    let Some(value) = nonempty(value) else { continue };
                    let pos = match env.named.iter().position(|p| p.name == sni) {
                        Some(pos) => pos,
                        None => {
                            env.named.push(NamedPair { name: sni.to_owned(), cert: None, key: None });
                            env.named.len() - 1
                        }
                    };
                    let pair = &mut env.named[pos];
                    if is_cert {
                        pair.cert = Some(value);
                    } else {
                        pair.key = Some(value);
                    }
                }
            }
        }
        env
    }

    /// Checks that the variables needed for `sni` and `auth` are present,
    /// without reading any file: what a server can check before it forks
    /// its engine.
    pub fn check(&self, sni: SniLevel, auth: ClientAuth) -> Result<(), ConfigError> {
        let default = self.default_pair(sni)?;
        let named = self.named_pairs(sni)?;
        match sni {
            SniLevel::Off if default.is_none() => {
                return Err(ConfigError::Unset { var: "CERTFILE".to_owned() });
            }
            SniLevel::Optional if default.is_none() && named.is_empty() => {
                return Err(ConfigError::Unset { var: "CERTFILE".to_owned() });
            }
            SniLevel::Mandatory if named.is_empty() => return Err(ConfigError::NoNamedPair),
            _ => {}
        }
        if auth != ClientAuth::None && self.cafile.is_none() && self.cadir.is_none() {
            return Err(ConfigError::NoCa);
        }
        Ok(())
    }

    /// The `CERTFILE`/`KEYFILE` pair if this level uses it.
    fn default_pair(&self, sni: SniLevel) -> Result<Option<(&OsStr, &OsStr)>, ConfigError> {
        if sni == SniLevel::Mandatory {
            return Ok(None);
        }
        match (&self.certfile, &self.keyfile) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (Some(_), None) => Err(ConfigError::Unpaired { var: "CERTFILE".into(), missing: "KEYFILE".into() }),
            (None, Some(_)) => Err(ConfigError::Unpaired { var: "KEYFILE".into(), missing: "CERTFILE".into() }),
            (None, None) if sni == SniLevel::Off => Err(ConfigError::Unset { var: "CERTFILE".to_owned() }),
            (None, None) => Ok(None),
        }
    }

    /// The named pairs this level uses, checked: `(name, cert, key)`.
    fn named_pairs(&self, sni: SniLevel) -> Result<Vec<(&str, &OsStr, &OsStr)>, ConfigError> {
        if sni == SniLevel::Off {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(self.named.len());
        for p in &self.named {
            let (c, k) = match (&p.cert, &p.key) {
                (Some(c), Some(k)) => (c, k),
                (Some(_), None) => {
                    return Err(ConfigError::Unpaired {
                        var: format!("CERTFILE:{}", p.name),
                        missing: format!("KEYFILE:{}", p.name),
                    });
                }
                (None, _) => {
                    return Err(ConfigError::Unpaired {
                        var: format!("KEYFILE:{}", p.name),
                        missing: format!("CERTFILE:{}", p.name),
                    });
                }
            };
            if !valid_pattern(&p.name) {
                return Err(ConfigError::BadName { var: format!("CERTFILE:{}", p.name), name: p.name.clone() });
            }
            out.push((p.name.as_str(), c.as_os_str(), k.as_os_str()));
        }
        Ok(out)
    }

    /// Reads the key material and builds the server configuration.
    ///
    /// This is the part that runs in the TLS engine, before it drops its
    /// privileges: every file the configuration needs is read here, and
    /// no other.
    pub fn server_config(&self, sni: SniLevel, auth: ClientAuth) -> Result<Arc<ServerConfig>, ConfigError> {
        self.check(sni, auth)?;
        let provider = Arc::new(provider());

        let load = |cvar: &str, kvar: &str, c: &OsStr, k: &OsStr| -> Result<Arc<CertifiedKey>, ConfigError> {
            let chain = keys::load_certificates(cvar, Path::new(c))?;
            let key = keys::load_private_key(kvar, Path::new(k))?;
            CertifiedKey::from_der(chain, key, &provider).map(Arc::new).map_err(|source| ConfigError::Key {
                var: kvar.to_owned(),
                path: PathBuf::from(k),
                source,
            })
        };

        let mut resolver = SniResolver { default: None, exact: Vec::new(), wildcard: Vec::new() };
        if let Some((c, k)) = self.default_pair(sni)? {
            resolver.default = Some(load("CERTFILE", "KEYFILE", c, k)?);
        }
        for (name, c, k) in self.named_pairs(sni)? {
            let ck = load(&format!("CERTFILE:{name}"), &format!("KEYFILE:{name}"), c, k)?;
            let lower = name.to_ascii_lowercase();
            match lower.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.push((suffix.to_owned(), ck)),
                None => resolver.exact.push((lower, ck)),
            }
        }

        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(ConfigError::Setup)?;
        let builder = match auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let roots = self.trust_anchors()?;
                let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if auth == ClientAuth::Optional {
                    vb = vb.allow_unauthenticated();
                }
                builder.with_client_cert_verifier(vb.build().map_err(ConfigError::Verifier)?)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        // Every session is a process of its own: a session cache or
        // tickets could never be used again, they would only cost memory.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(Arc::new(config))
    }

    /// The trust anchors for client certificates: every file of `CADIR`
    /// (PEM or DER; unreadable or unparsable files are skipped), or else
    /// the PEM bundle `CAFILE`.
    fn trust_anchors(&self) -> Result<RootCertStore, ConfigError> {
        if let Some(dir) = &self.cadir {
            keys::load_trust_anchor_files("CADIR", Path::new(dir), true)
        } else if let Some(file) = &self.cafile {
            keys::load_trust_anchor_files("CAFILE", Path::new(file), false)
        } else {
            Err(ConfigError::NoCa)
        }
    }
}

/// The aws-lc-rs provider with its default suites, and the post-quantum
/// hybrid X25519MLKEM768 listed first among the key exchange groups.
/// (The server takes the first group of the client's list that it
/// supports, so this order only matters for what is offered at all.)
pub fn provider() -> CryptoProvider {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    let mut p = default_provider();
    p.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
    p
}

/// Whether `name` (after `CERTFILE:`) can match a server name: labels
/// without `*`, except for a first label that is exactly `*`.
fn valid_pattern(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty() && !rest.contains('*') && !rest.starts_with('.') && !rest.ends_with('.') && !rest.contains("..")
}

/// Chooses the certificate by SNI: an exact name first, then a wildcard
/// `*.rest` covering exactly one more label, then the default pair.
struct SniResolver {
    default: Option<Arc<CertifiedKey>>,
    /// Lower-case names.
    exact: Vec<(String, Arc<CertifiedKey>)>,
    /// Lower-case names without their `*.`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("default", &self.default.is_some())
            .field("exact", &self.exact.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .finish()
    }
}

impl SniResolver {
    fn lookup(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let by_name = sni.and_then(|name| {
            let name = name.strip_suffix('.').unwrap_or(name);
            if let Some((_, ck)) = self.exact.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                return Some(ck);
            }
            let (_, parent) = name.split_once('.')?;
            self.wildcard.iter().find(|(n, _)| n.eq_ignore_ascii_case(parent)).map(|(_, ck)| ck)
        });
        by_name.or(self.default.as_ref())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name()).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> TlsEnv {
        TlsEnv::from_vars(vars.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))))
    }

    fn testdata(name: &str) -> String {
        format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn presence_checks() {
        use ClientAuth as A;
        use SniLevel as S;
        let pair = [("CERTFILE", "c"), ("KEYFILE", "k")];
        let named = [("CERTFILE:a.test", "c"), ("KEYFILE:a.test", "k")];
        let both = [pair.as_slice(), named.as_slice()].concat();
        let ok = |v: &[(&str, &str)], s, a| env(v).check(s, a).map_err(|e| e.to_string());
        assert_eq!(ok(&pair, S::Off, A::None), Ok(()));
        assert_eq!(ok(&[], S::Off, A::None), Err("CERTFILE is not set".into()));
        assert_eq!(ok(&[("CERTFILE", "c")], S::Off, A::None), Err("CERTFILE is set but KEYFILE is not".into()));
        assert_eq!(ok(&[("KEYFILE", "k")], S::Optional, A::None), Err("KEYFILE is set but CERTFILE is not".into()));
        assert_eq!(ok(&[("CERTFILE", ""), ("KEYFILE", "")], S::Off, A::None), Err("CERTFILE is not set".into()));
        // Named pairs are ignored at level 0, enough at level 1, needed at 2.
        assert_eq!(ok(&named, S::Off, A::None), Err("CERTFILE is not set".into()));
        assert_eq!(ok(&named, S::Optional, A::None), Ok(()));
        assert_eq!(ok(&named, S::Mandatory, A::None), Ok(()));
        assert_eq!(ok(&pair, S::Mandatory, A::None).map_err(|_| ()), Err(()));
        assert_eq!(ok(&both, S::Mandatory, A::None), Ok(()));
        // A broken default pair does not matter at level 2.
        assert_eq!(ok(&[named[0], named[1], ("CERTFILE", "c")], S::Mandatory, A::None), Ok(()));
        assert_eq!(
            ok(&[("CERTFILE:b.test", "c")], S::Optional, A::None),
            Err("CERTFILE:b.test is set but KEYFILE:b.test is not".into())
        );
        assert_eq!(
            ok(&[pair[0], pair[1], ("KEYFILE:b.test", "k")], S::Optional, A::None),
            Err("KEYFILE:b.test is set but CERTFILE:b.test is not".into())
        );
        // ... but is ignored at level 0.
        assert_eq!(ok(&[pair[0], pair[1], ("KEYFILE:b.test", "k")], S::Off, A::None), Ok(()));
        assert!(ok(&[("CERTFILE:a*.test", "c"), ("KEYFILE:a*.test", "k")], S::Optional, A::None).is_err());
        assert!(ok(&[("CERTFILE:*.*.test", "c"), ("KEYFILE:*.*.test", "k")], S::Optional, A::None).is_err());
        assert!(ok(&[("CERTFILE:*.", "c"), ("KEYFILE:*.", "k")], S::Optional, A::None).is_err());
        // Client certificates need trust anchors.
        assert_eq!(ok(&pair, S::Off, A::Optional), Err("client certificates need CAFILE or CADIR".into()));
        assert_eq!(ok(&[pair[0], pair[1], ("CADIR", "/x")], S::Off, A::Required), Ok(()));
        assert_eq!(ok(&[pair[0], pair[1], ("CAFILE", "/x")], S::Off, A::Optional), Ok(()));
    }

    #[test]
    fn builds_and_reports_bad_files() {
        let cert = testdata("server-ec.pem");
        let key = testdata("server-ec.key");
        let rsa_key = testdata("server-rsa.key");
        env(&[("CERTFILE", &cert), ("KEYFILE", &key)]).server_config(SniLevel::Off, ClientAuth::None).expect("config");

        let e = env(&[("CERTFILE", &cert), ("KEYFILE", &rsa_key)])
            .server_config(SniLevel::Off, ClientAuth::None)
            .expect_err("mismatch");
        assert!(matches!(e, ConfigError::Key { .. }), "{e}");
        assert!(!e.is_engine_setup());

        let e = env(&[("CERTFILE", &key), ("KEYFILE", &key)])
            .server_config(SniLevel::Off, ClientAuth::None)
            .expect_err("key as cert");
        assert!(e.to_string().contains("CERTFILE="), "{e}");

        let e = env(&[("CERTFILE", &cert), ("KEYFILE", &cert)])
            .server_config(SniLevel::Off, ClientAuth::None)
            .expect_err("cert as key");
        assert_eq!(e.to_string(), format!("KEYFILE={cert}: no private key found"));

        let e = env(&[("CERTFILE", &cert), ("KEYFILE", &key), ("CAFILE", &key)])
            .server_config(SniLevel::Off, ClientAuth::Required)
            .expect_err("no CA");
        assert!(e.to_string().starts_with("CAFILE="), "{e}");

        let empty = std::env::temp_dir().join(format!("chainmail-tls-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("mkdir");
        std::fs::write(empty.join("junk"), b"junk").expect("write");
        let e = env(&[("CERTFILE", &cert), ("KEYFILE", &key), ("CADIR", empty.to_str().expect("utf8"))])
            .server_config(SniLevel::Off, ClientAuth::Required)
            .expect_err("empty CADIR");
        assert!(matches!(e, ConfigError::NoTrustAnchors { var: "CADIR", .. }), "{e}");
        std::fs::remove_dir_all(&empty).expect("rmdir");

        // CADIR wins over CAFILE, and skips what it cannot read.
        let dir = std::env::temp_dir().join(format!("chainmail-tls-cadir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("junk"), b"junk").expect("write");
        std::fs::copy(testdata("ca.pem"), dir.join("ca.pem")).expect("copy");
        std::fs::create_dir_all(dir.join("subdir")).expect("mkdir");
        env(&[
            ("CERTFILE", &cert),
            ("KEYFILE", &key),
            ("CADIR", dir.to_str().expect("utf8")),
            ("CAFILE", "/nonexistent"),
        ])
        .server_config(SniLevel::Off, ClientAuth::Required)
        .expect("CADIR");
        std::fs::remove_dir_all(&dir).expect("rmdir");
    }

    #[test]
    fn sni_selection() {
        let ck = |n: u8| {
            let key = keys::parse_private_key(include_bytes!("../testdata/server-ec.key")).expect("key");
            let signer = provider().key_provider.load_private_key(key).expect("signer");
            Arc::new(CertifiedKey::new(vec![vec![n].into()], signer))
        };
        let r = SniResolver {
            default: Some(ck(0)),
            exact: vec![("mail.example.org".into(), ck(1)), ("a.example.org".into(), ck(2))],
            wildcard: vec![("example.org".into(), ck(3)), ("sub.example.org".into(), ck(4))],
        };
        let which = |sni: Option<&str>| r.lookup(sni).map(|c| c.cert[0].as_ref()[0]);
        assert_eq!(which(None), Some(0));
        assert_eq!(which(Some("mail.example.org")), Some(1));
        assert_eq!(which(Some("MAIL.Example.ORG")), Some(1));
        assert_eq!(which(Some("mail.example.org.")), Some(1));
        assert_eq!(which(Some("a.example.org")), Some(2));
        assert_eq!(which(Some("b.example.org")), Some(3));
        assert_eq!(which(Some("x.sub.example.org")), Some(4));
        assert_eq!(which(Some("x.y.example.org")), Some(0), "a wildcard covers one label only");
        assert_eq!(which(Some("example.org")), Some(0));
        assert_eq!(which(Some("other.test")), Some(0));
        let strict = SniResolver { default: None, exact: r.exact.clone(), wildcard: r.wildcard.clone() };
        assert!(strict.lookup(None).is_none());
        assert!(strict.lookup(Some("other.test")).is_none());
        assert!(strict.lookup(Some("b.example.org")).is_some());
    }
}
