//! Real handshakes in memory with the verifiers: a rustls client and
//! server moving their records through two buffers.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use super::*;
use crate::keys;

const SERVER_CHAIN: &[u8] = include_bytes!("../../testdata/server-ec.chain.pem");
const SERVER_KEY: &[u8] = include_bytes!("../../testdata/server-ec.key");
const CLIENT_CERT: &[u8] = include_bytes!("../../testdata/client.pem");
const CLIENT_KEY: &[u8] = include_bytes!("../../testdata/client.key");
const OTHER_KEY: &[u8] = include_bytes!("../../testdata/odd.key");

fn provider() -> Arc<CryptoProvider> {
    Arc::new(crate::provider())
}

fn chain(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    keys::parse_certificates(pem).expect("certificates")
}

fn key(pem: &[u8]) -> PrivateKeyDer<'static> {
    keys::parse_private_key(pem).expect("key")
}

/// Serves one fixed certificate and key, matching or not.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server(client_verifier: Option<Arc<dyn ClientCertVerifier>>, signing_key: &[u8]) -> Arc<ServerConfig> {
    let p = provider();
    let signer = p.key_provider.load_private_key(key(signing_key)).expect("signing key");
    let certified = Arc::new(CertifiedKey::new(chain(SERVER_CHAIN), signer));
    let builder = ServerConfig::builder_with_provider(p).with_safe_default_protocol_versions().expect("versions");
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_cert_resolver(Arc::new(Fixed(certified))))
}

fn client(verifier: Arc<dyn ServerCertVerifier>, with_cert: bool, tls12: bool) -> Arc<ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] =
        if tls12 { &[&rustls::version::TLS12] } else { &[&rustls::version::TLS13] };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    Arc::new(if with_cert {
        builder.with_client_auth_cert(chain(CLIENT_CERT), key(CLIENT_KEY)).expect("client cert")
    } else {
        builder.with_no_client_auth()
    })
}

/// Runs a handshake; `Err` carries the first error, client's or server's.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), (String, rustls::Error)> {
    let name = ServerName::try_from("mail.test").expect("name");
    let mut c = ClientConnection::new(client, name).expect("client");
    let mut s = ServerConnection::new(server).expect("server");
    for _ in 0..100 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).expect("server read");
            s.process_new_packets().map_err(|e| ("server".to_owned(), e))?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).expect("client read");
            c.process_new_packets().map_err(|e| ("client".to_owned(), e))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn flip_one_bit(pin: &Pin) -> Pin {
    match pin {
        Pin::CertificateSha512(h) => {
            let mut h = *h;
            h[17] ^= 0x04;
            Pin::CertificateSha512(h)
        }
        Pin::SpkiSha256(h) => {
            let mut h = *h;
            h[31] ^= 0x01;
            Pin::SpkiSha256(h)
        }
    }
}

fn server_leaf() -> Vec<u8> {
    chain(SERVER_CHAIN)[0].as_ref().to_vec()
}

fn client_leaf() -> Vec<u8> {
    chain(CLIENT_CERT)[0].as_ref().to_vec()
}

fn refused(result: Result<(), (String, rustls::Error)>, by: &str) -> bool {
    matches!(
        result,
        Err((who, rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))) if who == by
    )
}

#[test]
fn client_pins_the_server() {
    let leaf = server_leaf();
    let cert = Pin::certificate_sha512(&leaf);
    let spki = Pin::spki_sha256(&leaf).expect("spki");
    for tls12 in [false, true] {
        for pin in [&cert, &spki] {
            let ok = PinnedCertificate::new(Pins(vec![pin.clone()]), &provider());
            assert_eq!(handshake(client(ok, false, tls12), server(None, SERVER_KEY)), Ok(()), "{pin:?}");
            let wrong = PinnedCertificate::new(Pins(vec![flip_one_bit(pin)]), &provider());
            assert!(refused(handshake(client(wrong, false, tls12), server(None, SERVER_KEY)), "client"), "{pin:?}");
        }
        // Any of a list.
        let list = Pins(vec![flip_one_bit(&cert), flip_one_bit(&spki), spki.clone()]);
        let v = PinnedCertificate::new(list, &provider());
        assert_eq!(handshake(client(v, false, tls12), server(None, SERVER_KEY)), Ok(()));
    }
}

/// A pinned certificate does not excuse a handshake signed by another
/// key: the signatures are still checked.
#[test]
fn pins_still_check_the_handshake_signature() {
    let pin = Pin::certificate_sha512(&server_leaf());
    for tls12 in [false, true] {
        for verifier in [
            PinnedCertificate::new(Pins(vec![pin.clone()]), &provider()) as Arc<dyn ServerCertVerifier>,
            AnyServerCertificate::new(&provider()),
        ] {
            let result = handshake(client(verifier.clone(), false, tls12), server(None, OTHER_KEY));
            assert!(
                matches!(&result, Err((who, rustls::Error::InvalidCertificate(CertificateError::BadSignature))) if who == "client"),
                "{result:?}"
            );
            // With the right key, the same verifier accepts.
            assert_eq!(handshake(client(verifier, false, tls12), server(None, SERVER_KEY)), Ok(()));
        }
    }
}

#[test]
fn server_pins_the_client() {
    let leaf = client_leaf();
    let any = || AnyServerCertificate::new(&provider()) as Arc<dyn ServerCertVerifier>;
    for pin in [Pin::certificate_sha512(&leaf), Pin::spki_sha256(&leaf).expect("spki")] {
        for tls12 in [false, true] {
            let ok = PinnedCertificate::new(Pins(vec![flip_one_bit(&pin), pin.clone()]), &provider());
            assert_eq!(handshake(client(any(), true, tls12), server(Some(ok), SERVER_KEY)), Ok(()), "{pin:?}");
            let wrong = PinnedCertificate::new(Pins(vec![flip_one_bit(&pin)]), &provider());
            let result = handshake(client(any(), true, tls12), server(Some(wrong.clone()), SERVER_KEY));
            assert!(refused(result, "server"), "{pin:?}");
            // A client without a certificate is refused too.
            let result = handshake(client(any(), false, tls12), server(Some(wrong), SERVER_KEY));
            assert!(matches!(&result, Err((who, _)) if who == "server"), "{result:?}");
        }
    }
}

#[test]
fn pin_forms() {
    let leaf = server_leaf();
    let cert = Pin::certificate_sha512(&leaf);
    let spki = Pin::spki_sha256(&leaf).expect("spki");
    // Hex round trips, in either case.
    assert_eq!(Pin::parse(&cert.to_string()), Ok(cert.clone()));
    assert_eq!(Pin::parse(&cert.to_string().to_uppercase()), Ok(cert.clone()));
    assert_eq!(Pin::parse(&spki.to_string()), Ok(spki.clone()));
    // Base64 (HPKP) of the same SPKI hash.
    let Pin::SpkiSha256(raw) = &spki else { panic!("spki") };
    let mut out = [0u8; 44];
    let b64 = Base64::encode(raw, &mut out).expect("base64").to_owned();
    assert_eq!(b64.len(), 44);
    assert_eq!(Pin::parse(&b64), Ok(spki.clone()));
    // Lists.
    let list = format!("{}:{b64}", flip_one_bit(&cert));
    let pins = Pins::parse(&list).expect("list");
    assert_eq!(pins.as_slice().len(), 2);
    assert!(pins.matches(&leaf));
    assert!(!Pins::parse(&flip_one_bit(&cert).to_string()).expect("one").matches(&leaf));
    assert_eq!(Pins::parse(&pins.to_string()), Ok(pins));
    // Not pins.
    for bad in ["", "abc", &"g".repeat(128), &"0".repeat(127), &format!("{cert}:"), &"!".repeat(44), "::"] {
        assert!(Pins::parse(bad).is_err(), "{bad:?}");
    }
    // A pin never matches what is not a certificate.
    assert!(!spki.matches(b"not a certificate"));
}
