//! What chainmail reads from certificates, through RustCrypto's
//! `x509-cert` (and its `der`): the subject and the SubjectPublicKeyInfo.

use x509_cert::Certificate;
use x509_cert::der::{Decode, Encode};
use x509_cert::name::Name;

/// The certificate `der`, decoded; `None` if it is not a DER X.509
/// certificate.
fn decode(der: &[u8]) -> Option<Certificate> {
    Certificate::from_der(der).ok()
}

/// The DER of the certificate's SubjectPublicKeyInfo.
pub fn subject_public_key_info(der: &[u8]) -> Option<Vec<u8>> {
    decode(der)?.tbs_certificate.subject_public_key_info.to_der().ok()
}

/// The certificate's subject.
pub fn subject(der: &[u8]) -> Option<Name> {
    Some(decode(der)?.tbs_certificate.subject)
}
