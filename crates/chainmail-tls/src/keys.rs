//! Certificates and private keys from files, PEM or DER.
//!
//! The format is sniffed: a file containing a `-----BEGIN ` line is PEM
//! (text before, between and after the sections is ignored, as OpenSSL
//! does), anything else is DER. DER certificate files may hold several
//! certificates back to back; a DER private key is recognised by its
//! structure as PKCS#8, PKCS#1 (RSA) or SEC1 (EC).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use x509_parser::asn1_rs::Tag;

use crate::error::ConfigError;
use crate::x509;

fn is_pem(data: &[u8]) -> bool {
    data.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Parses every certificate in `data` (PEM or DER), in order. Fails if
/// there is none or the data is malformed.
pub fn parse_certificates(data: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    if is_pem(data) {
        for c in CertificateDer::pem_slice_iter(data) {
            certs.push(c.map_err(|e| format!("invalid PEM: {e}"))?);
        }
    } else {
        let mut rest = data;
        while !rest.is_empty() {
            match x509::next_element(rest) {
                Some((Tag::Sequence, cert, after)) => {
                    certs.push(CertificateDer::from(cert.to_vec()));
                    rest = after;
                }
                _ => return Err("neither PEM nor DER certificates".to_owned()),
            }
        }
    }
    if certs.is_empty() {
        return Err("no certificate found".to_owned());
    }
    Ok(certs)
}

/// Parses the first private key in `data`: PEM (`PRIVATE KEY`,
/// `RSA PRIVATE KEY`, `EC PRIVATE KEY`) or DER (PKCS#8, PKCS#1, SEC1).
pub(crate) fn parse_private_key(data: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    if is_pem(data) {
        return PrivateKeyDer::from_pem_slice(data).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound if data.windows(9).any(|w| w == b"ENCRYPTED") => {
                "encrypted private keys are not supported".to_owned()
            }
            rustls_pki_types::pem::Error::NoItemsFound => "no private key found".to_owned(),
            e => format!("invalid PEM: {e}"),
        });
    }
    der_private_key(data).ok_or_else(|| "neither a PEM nor a DER private key".to_owned())
}

/// Tells the three DER key structures apart by their second element:
/// PKCS#8 has an AlgorithmIdentifier (SEQUENCE), PKCS#1 the modulus
/// (INTEGER), SEC1 the private key itself (OCTET STRING).
fn der_private_key(data: &[u8]) -> Option<PrivateKeyDer<'static>> {
    let contents = x509::sequence_contents(data)?;
    let (Tag::Integer, _, rest) = x509::next_element(contents)? else { return None };
    let (second, _, _) = x509::next_element(rest)?;
    let bytes = data.to_vec();
    Some(match second {
        Tag::Sequence => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bytes)),
        Tag::Integer => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(bytes)),
        Tag::OctetString => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(bytes)),
        _ => return None,
    })
}

fn read(var: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::Read { var: var.to_owned(), path: path.to_owned(), source })
}

/// Reads the certificate chain named by variable `var` (leaf first).
pub fn load_certificates(var: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let data = read(var, path)?;
    parse_certificates(&data).map_err(|reason| ConfigError::Parse {
        var: var.to_owned(),
        path: path.to_owned(),
        reason,
    })
}

/// Reads the private key named by variable `var`. The file's bytes are
/// overwritten before they are freed; the parsed key clears itself on drop.
pub fn load_private_key(var: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let mut data = read(var, path)?;
    let key = parse_private_key(&data);
    data.fill(0);
    std::hint::black_box(&data);
    key.map_err(|reason| ConfigError::Parse { var: var.to_owned(), path: path.to_owned(), reason })
}

/// The value of a trust anchor setting that names the Mozilla roots
/// compiled into the binary (webpki-roots).
pub const BUILTIN_TRUST_ANCHORS: &str = "builtin";

/// Where trust anchors come from: `control/trustanchors` and the
/// policy qmail-remote hands to qmail-remote-io, `CAFILE` and `CADIR` of
/// ucspi-tlsd. Read by [`TrustAnchors::parse`] and loaded by
/// [`TrustAnchors::load`], for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustAnchors {
    /// The Mozilla roots compiled in: the value [`BUILTIN_TRUST_ANCHORS`].
    BuiltIn,
    /// A bundle of certificates, PEM or DER (a path without a trailing
    /// slash).
    File(PathBuf),
    /// A directory of certificate files, PEM or DER (a path with a
    /// trailing slash, kept in the path).
    Dir(PathBuf),
}

impl TrustAnchors {
    /// Reads a setting: `builtin`, a directory (a path ending in `/`), or
    /// a file; a relative path is taken relative to `base`. `None` for an
    /// empty value.
    pub fn parse(value: &OsStr, base: &Path) -> Option<TrustAnchors> {
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            None
        } else if bytes == BUILTIN_TRUST_ANCHORS.as_bytes() {
            Some(TrustAnchors::BuiltIn)
        } else {
            let path = base.join(value);
            Some(if bytes.ends_with(b"/") { TrustAnchors::Dir(path) } else { TrustAnchors::File(path) })
        }
    }

    /// The setting as [`TrustAnchors::parse`] reads it back.
    pub fn encode(&self) -> OsString {
        match self {
            TrustAnchors::BuiltIn => BUILTIN_TRUST_ANCHORS.into(),
            TrustAnchors::File(p) => p.clone().into_os_string(),
            TrustAnchors::Dir(p) => {
                let mut bytes = p.clone().into_os_string().into_vec();
                if !bytes.ends_with(b"/") {
                    bytes.push(b'/');
                }
                OsString::from_vec(bytes)
            }
        }
    }

    /// Loads the anchors. A directory takes every file in it, PEM or
    /// DER, one or more certificates each, and skips the files it cannot
    /// read or parse (hash links to nowhere, CRLs); a file that turns out
    /// to be a directory is read as one. `setting` names the setting in
    /// errors.
    pub fn load(&self, setting: &'static str) -> Result<rustls::RootCertStore, ConfigError> {
        match self {
            TrustAnchors::BuiltIn => Ok(rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }),
            TrustAnchors::Dir(dir) => load_trust_anchor_files(setting, dir, true),
            TrustAnchors::File(file) => load_trust_anchor_files(setting, file, false),
        }
    }
}

/// The trust anchors of a directory (`dir`, or a "file" that is one) or
/// of a file: the part of [`TrustAnchors::load`] that a server's `CAFILE`
/// and `CADIR` use directly, so that a program without builtin roots does
/// not carry them.
pub(crate) fn load_trust_anchor_files(
    setting: &'static str,
    path: &Path,
    dir: bool,
) -> Result<rustls::RootCertStore, ConfigError> {
    if dir || path.is_dir() { trust_anchors_from_dir(setting, path) } else { trust_anchors_from_file(setting, path) }
}

fn trust_anchors_from_dir(var: &'static str, dir: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::Read {
        var: var.to_owned(),
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let Ok(data) = std::fs::read(entry.path()) else { continue };
        if let Ok(certs) = parse_certificates(&data) {
            roots.add_parsable_certificates(certs);
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::NoTrustAnchors { var, path: dir.to_owned() });
    }
    Ok(roots)
}

fn trust_anchors_from_file(var: &'static str, file: &Path) -> Result<rustls::RootCertStore, ConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(load_certificates(var, file)?);
    if roots.is_empty() {
        return Err(ConfigError::NoTrustAnchors { var, path: file.to_owned() });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN_PEM: &[u8] = include_bytes!("../testdata/server-ec.chain.pem");
    const CERT_DER: &[u8] = include_bytes!("../testdata/server-ec.der");

    #[test]
    fn certificates_pem_and_der() {
        let chain = parse_certificates(CHAIN_PEM).expect("pem chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), CERT_DER);
        let one = parse_certificates(CERT_DER).expect("der");
        assert_eq!(one.len(), 1);
        let mut two = CERT_DER.to_vec();
        two.extend_from_slice(CERT_DER);
        assert_eq!(parse_certificates(&two).expect("two der").len(), 2);
        // Text around PEM sections is ignored.
        let mut noisy = b"Bag Attributes\n  friendlyName: x\n".to_vec();
        noisy.extend_from_slice(CHAIN_PEM);
        assert_eq!(parse_certificates(&noisy).expect("noisy").len(), 2);
    }

    #[test]
    fn certificate_errors() {
        assert!(parse_certificates(b"").is_err());
        assert!(parse_certificates(b"hello").is_err());
        assert!(parse_certificates(&CERT_DER[..CERT_DER.len() - 1]).is_err());
        let key_only = include_bytes!("../testdata/server-ec.key");
        assert_eq!(parse_certificates(key_only).expect_err("key only"), "no certificate found");
        assert!(parse_certificates(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn every_key_encoding() {
        for (data, kind) in [
            (&include_bytes!("../testdata/server-ec.key")[..], "pkcs8"),
            (include_bytes!("../testdata/server-ec.pk8.der"), "pkcs8"),
            (include_bytes!("../testdata/server-ec.sec1.pem"), "sec1"),
            (include_bytes!("../testdata/server-ec.sec1.der"), "sec1"),
            (include_bytes!("../testdata/server-rsa.key"), "pkcs8"),
            (include_bytes!("../testdata/server-rsa.pkcs1.pem"), "pkcs1"),
            (include_bytes!("../testdata/server-rsa.pkcs1.der"), "pkcs1"),
        ] {
            let key = parse_private_key(data).expect(kind);
            let got = match key {
                PrivateKeyDer::Pkcs8(_) => "pkcs8",
                PrivateKeyDer::Pkcs1(_) => "pkcs1",
                PrivateKeyDer::Sec1(_) => "sec1",
                _ => "other",
            };
            assert_eq!(got, kind);
        }
    }

    #[test]
    fn key_errors() {
        assert!(parse_private_key(b"").is_err());
        assert!(parse_private_key(CERT_DER).is_err());
        assert_eq!(parse_private_key(CHAIN_PEM).expect_err("certs only"), "no private key found");
        let enc = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(parse_private_key(enc).expect_err("encrypted"), "encrypted private keys are not supported");
    }

    #[test]
    fn trust_anchor_settings() {
        let base = Path::new("/var/qmail");
        let cases: &[(&str, Option<TrustAnchors>)] = &[
            ("", None),
            ("builtin", Some(TrustAnchors::BuiltIn)),
            ("Builtin", Some(TrustAnchors::File("/var/qmail/Builtin".into()))),
            ("/etc/ssl/cert.pem", Some(TrustAnchors::File("/etc/ssl/cert.pem".into()))),
            ("/etc/ssl/certs/", Some(TrustAnchors::Dir("/etc/ssl/certs/".into()))),
            ("control/ca.pem", Some(TrustAnchors::File("/var/qmail/control/ca.pem".into()))),
            ("x:y", Some(TrustAnchors::File("/var/qmail/x:y".into()))),
        ];
        for (value, want) in cases {
            let got = TrustAnchors::parse(OsStr::new(value), base);
            assert_eq!(&got, want, "{value:?}");
            if let Some(a) = got {
                assert_eq!(TrustAnchors::parse(&a.encode(), Path::new("/elsewhere")), Some(a), "{value:?}");
            }
        }
        // A directory named without its slash still reads as one.
        assert_eq!(TrustAnchors::Dir("/etc".into()).encode(), OsString::from("/etc/"));
    }

    #[test]
    fn trust_anchors_load() {
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        assert!(TrustAnchors::BuiltIn.load("x").expect("builtin").len() > 100);
        assert_eq!(TrustAnchors::File(testdata.join("ca.pem")).load("x").expect("file").len(), 1);
        assert!(!TrustAnchors::Dir(testdata.clone()).load("x").expect("dir").is_empty());
        assert!(TrustAnchors::File(testdata.clone()).load("x").is_ok(), "a directory without its slash");
        let e = TrustAnchors::File("/nonexistent".into()).load("control/trustanchors").expect_err("missing");
        assert!(e.to_string().starts_with("unable to read control/trustanchors=/nonexistent"), "{e}");
        let e = TrustAnchors::File(testdata.join("server-ec.key")).load("CAFILE").expect_err("no certs");
        assert!(!e.is_engine_setup(), "{e}");
    }

    #[test]
    fn load_errors_name_the_variable_and_file() {
        let e = load_certificates("CERTFILE", Path::new("/nonexistent/cert.pem")).expect_err("missing");
        let msg = e.to_string();
        assert!(msg.starts_with("unable to read CERTFILE=/nonexistent/cert.pem: "), "{msg}");
        assert!(!e.is_engine_setup());
    }
}
