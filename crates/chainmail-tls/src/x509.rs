//! What chainmail reads from certificates and keys, through x509-parser
//! (and the asn1-rs it is built on): the SubjectPublicKeyInfo, and the
//! DER elements of certificate and key files.

use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::prelude::X509Certificate;

/// The DER of the certificate's SubjectPublicKeyInfo.
pub fn subject_public_key_info(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// The next DER element of `data`: its tag, its whole encoding, and
/// what follows it.
pub fn next_element(data: &[u8]) -> Option<(Tag, &[u8], &[u8])> {
    let (rest, any) = Any::from_der(data).ok()?;
    let len = data.len() - rest.len();
    Some((any.tag(), &data[..len], rest))
}

/// The contents of `data` if it is exactly one SEQUENCE.
pub fn sequence_contents(data: &[u8]) -> Option<&[u8]> {
    let (rest, any) = Any::from_der(data).ok()?;
    (rest.is_empty() && any.tag() == Tag::Sequence).then_some(any.data)
}
