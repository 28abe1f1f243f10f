//! Test certificates, made with the `openssl` command once per test
//! process and written into each test's directory on demand.
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`/`ca.key` | the test CA (`CN=chainmail test CA`), EC P-256 |
//! | `mx.pem`/`mx.key` | server `mx.test`, SAN `DNS:mx.test, IP:127.0.0.1`, RSA 2048 |
//! | `a.pem`/`a.key`, `b.pem`/`b.key` | servers `a.test`, `b.test` (EC) |
//! | `wild.pem`/`wild.key` | server `*.wild.test` (EC) |
//! | `client.pem`/`client.key` | client `client.test` (subject `O=Test, CN=client.test`), signed by the test CA |
//! | `rogue-ca.pem` | another CA that nothing trusts |
//! | `rogue-client.pem`/`rogue-client.key` | client `rogue.test`, signed by the rogue CA |
//! | `expired.pem`/`expired.key` | `expired.test`, signed by the test CA, valid only on 2020-01-01 |
//!
//! The main server key is RSA and the others ECDSA so that both kinds of
//! key go through the TLS engine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The certificate chain (here: the leaf), PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8).
    pub key: PathBuf,
}

/// The test certificates written into one directory.
#[derive(Debug, Clone)]
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    /// Writes the (process-wide cached) certificates into `dir`.
    pub fn install(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        for (name, content) in generated() {
            let p = dir.join(name);
            std::fs::write(&p, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        }
        Certs { dir: dir.to_path_buf() }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pair(&self, stem: &str) -> KeyPair {
        KeyPair { cert: self.dir.join(format!("{stem}.pem")), key: self.dir.join(format!("{stem}.key")) }
    }

    /// The test CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA that nothing trusts.
    pub fn rogue_ca(&self) -> PathBuf {
        self.dir.join("rogue-ca.pem")
    }

    /// `mx.test` (and IP 127.0.0.1): the default server certificate.
    pub fn mx(&self) -> KeyPair {
        self.pair("mx")
    }

    /// `a.test`.
    pub fn a(&self) -> KeyPair {
        self.pair("a")
    }

    /// `b.test`.
    pub fn b(&self) -> KeyPair {
        self.pair("b")
    }

    /// `*.wild.test`.
    pub fn wild(&self) -> KeyPair {
        self.pair("wild")
    }

    /// A client certificate signed by the test CA.
    pub fn client(&self) -> KeyPair {
        self.pair("client")
    }

    /// A client certificate signed by the rogue CA.
    pub fn rogue_client(&self) -> KeyPair {
        self.pair("rogue-client")
    }

    /// An expired certificate signed by the test CA (server and client use).
    pub fn expired(&self) -> KeyPair {
        self.pair("expired")
    }

    /// A directory holding only the test CA, with its `openssl rehash`
    /// link, for `CADIR`.
    pub fn ca_dir(&self) -> PathBuf {
        let d = self.dir.join("cadir");
        if !d.is_dir() {
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
            std::fs::copy(self.ca(), d.join("ca.pem")).expect("copy ca.pem into cadir");
            let mut cmd = Command::new(crate::find_program("openssl"));
            cmd.arg("rehash").arg(&d);
            let out = crate::run::run(&mut cmd, b"", crate::secs(30));
            assert!(out.success(), "openssl rehash failed: {}", out.describe());
        }
        d
    }
}

/// The generated files, made on first use in this process.
fn generated() -> &'static [(&'static str, Vec<u8>)] {
    static FILES: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    FILES.get_or_init(generate)
}

const FILES: &[&str] = &[
    "ca.pem",
    "ca.key",
    "mx.pem",
    "mx.key",
    "a.pem",
    "a.key",
    "b.pem",
    "b.key",
    "wild.pem",
    "wild.key",
    "client.pem",
    "client.key",
    "rogue-ca.pem",
    "rogue-client.pem",
    "rogue-client.key",
    "expired.pem",
    "expired.key",
];

const REQ_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
";

fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new(crate::find_program("openssl"));
    cmd.current_dir(dir).args(args).env("OPENSSL_CONF", dir.join("req.cnf"));
    let out = crate::run::run(&mut cmd, b"", crate::secs(60));
    assert!(out.success(), "openssl {} failed: {}", args.join(" "), out.describe());
}

fn new_key(dir: &Path, key: &str, rsa: bool) {
    if rsa {
        openssl(dir, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", key]);
    } else {
        openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key]);
    }
}

fn make_ca(dir: &Path, stem: &str, cn: &str) {
    let key = format!("{stem}.key");
    new_key(dir, &key, false);
    let subj = format!("/CN={cn}");
    #[rustfmt::skip]
    openssl(dir, &[
        "req", "-config", "req.cnf", "-x509", "-new", "-key", &key, "-subj", &subj,
        "-days", "3650", "-extensions", "ca_ext", "-out", &format!("{stem}.pem"),
    ]);
}

/// Makes `stem.pem`/`stem.key` for the subject `subj` (`/CN=...`), signed
/// by `ca` with the extension lines `ext`.
fn make_leaf(dir: &Path, stem: &str, subj: &str, ca: &str, serial: u32, rsa: bool, ext: &str) {
    let key = format!("{stem}.key");
    new_key(dir, &key, rsa);
    let csr = format!("{stem}.csr");
    openssl(dir, &["req", "-config", "req.cnf", "-new", "-key", &key, "-subj", subj, "-out", &csr]);
    let extfile = format!("{stem}.ext");
    std::fs::write(dir.join(&extfile), ext).expect("write extension file");
    let serial = serial.to_string();
    #[rustfmt::skip]
    openssl(dir, &[
        "x509", "-req", "-in", &csr, "-CA", &format!("{ca}.pem"), "-CAkey", &format!("{ca}.key"),
        "-set_serial", &serial, "-days", "3650", "-sha256", "-extfile", &extfile, "-out", &format!("{stem}.pem"),
    ]);
}

fn server_ext(san: &str) -> String {
    format!(
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = {san}\nsubjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n"
    )
}

fn client_ext(san: &str) -> String {
    format!(
        "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth\nsubjectAltName = {san}\nsubjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n"
    )
}

/// The expired certificate: `openssl x509` cannot back-date, `openssl ca`
/// can, with a throw-away database.
fn make_expired(dir: &Path) {
    new_key(dir, "expired.key", false);
    #[rustfmt::skip]
    openssl(dir, &["req", "-config", "req.cnf", "-new", "-key", "expired.key", "-subj", "/CN=expired.test", "-out", "expired.csr"]);
    std::fs::create_dir_all(dir.join("cadb")).expect("create cadb");
    std::fs::write(dir.join("cadb/index.txt"), "").expect("write index");
    std::fs::write(dir.join("cadb/serial"), "1000\n").expect("write serial");
    let cnf = "\
[ca]
default_ca = testca
[testca]
database = cadb/index.txt
new_certs_dir = cadb
serial = cadb/serial
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
[anything]
commonName = supplied
[ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:expired.test
";
    std::fs::write(dir.join("ca.cnf"), cnf).expect("write ca.cnf");
    #[rustfmt::skip]
    openssl(dir, &[
        "ca", "-batch", "-config", "ca.cnf", "-cert", "ca.pem", "-keyfile", "ca.key", "-in", "expired.csr",
        "-out", "expired.pem", "-startdate", "20200101000000Z", "-enddate", "20200102000000Z",
        "-extensions", "ext", "-notext",
    ]);
}

fn generate() -> Vec<(&'static str, Vec<u8>)> {
    let scratch = crate::TestDir::new("certs-generation");
    let dir = scratch.path();
    std::fs::write(dir.join("req.cnf"), REQ_CNF).expect("write req.cnf");
    make_ca(dir, "ca", "chainmail test CA");
    make_ca(dir, "rogue-ca", "rogue test CA");
    make_leaf(dir, "mx", "/CN=mx.test", "ca", 2, true, &server_ext("DNS:mx.test, IP:127.0.0.1"));
    make_leaf(dir, "a", "/CN=a.test", "ca", 3, false, &server_ext("DNS:a.test"));
    make_leaf(dir, "b", "/CN=b.test", "ca", 4, false, &server_ext("DNS:b.test"));
    make_leaf(dir, "wild", "/CN=*.wild.test", "ca", 5, false, &server_ext("DNS:*.wild.test"));
    make_leaf(dir, "client", "/O=Test/CN=client.test", "ca", 6, false, &client_ext("DNS:client.test"));
    make_leaf(dir, "rogue-client", "/CN=rogue.test", "rogue-ca", 7, false, &client_ext("DNS:rogue.test"));
    make_expired(dir);
    FILES
        .iter()
        .map(|name| {
            let p = dir.join(name);
            (*name, std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display())))
        })
        .collect()
}
