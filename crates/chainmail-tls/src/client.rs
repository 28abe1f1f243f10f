//! The TLS policy of an SMTP client connection (qmail-remote-io), and
//! the rustls configuration it turns into.
//!
//! A [`TlsPolicy`] is decided once from the control files (see
//! `chainmail_qmail::control::Control::tls_passes`), written on
//! qmail-remote-io's command line by [`TlsPolicy::encode`], read back by
//! [`TlsPolicy::parse`], and turned into a rustls configuration by
//! [`TlsPolicy::client_config`]: one type from the control file to the
//! verifier.
//!
//! * **Opportunistic** (RFC 7435): any certificate is accepted, so that
//!   TLS protects against passive eavesdropping even with servers whose
//!   certificates do not verify (most MX hosts). The handshake signatures
//!   are still checked against the certificate presented. skarnet's
//!   client verified the host name even in this mode and so deferred mail
//!   to every MX whose certificate did not carry the MX name; this one
//!   does not.
//! * **Verified**: the chain must lead to one of the trust anchors and
//!   the certificate must carry the server's name (the MX name, or the
//!   relay's name or address).
//! * **Pinned**: the server's certificate must match one of the pins
//!   ([`crate::verify`]); chain and names are not looked at.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::pki_types::ServerName;

use crate::error::ConfigError;
use crate::keys::{self, TrustAnchors};
use crate::verify::{AnyServerCertificate, PinnedCertificate, Pins};

/// What a client does about TLS on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No STARTTLS.
    Off,
    /// STARTTLS when offered, any certificate accepted; plaintext when
    /// it is not offered or refused.
    Opportunistic,
    /// STARTTLS or nothing, any certificate accepted.
    RequireAnyCertificate,
    /// STARTTLS or nothing; the certificate must verify against the
    /// trust anchors for the server's name.
    RequireVerified(TrustAnchors),
    /// STARTTLS or nothing; the certificate must match one of the pins.
    RequirePinned(Pins),
}

/// A policy that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub OsString);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown TLS policy {:?} (off, try, require, verify:TRUSTANCHORS or pin:PIN[:PIN...])",
            self.0.to_string_lossy()
        )
    }
}

impl std::error::Error for PolicyError {}

const VERIFY: &[u8] = b"verify:";
const PIN: &[u8] = b"pin:";

impl TlsPolicy {
    /// The policy as one argument: `off`, `try`, `require`,
    /// `verify:TRUSTANCHORS` (`builtin`, a file, or a directory with its
    /// trailing slash), or `pin:PIN[:PIN...]`.
    pub fn encode(&self) -> OsString {
        let tagged = |tag: &[u8], value: &OsStr| {
            let mut v = tag.to_vec();
            v.extend_from_slice(value.as_bytes());
            OsString::from_vec(v)
        };
        match self {
            TlsPolicy::Off => "off".into(),
            TlsPolicy::Opportunistic => "try".into(),
            TlsPolicy::RequireAnyCertificate => "require".into(),
            TlsPolicy::RequireVerified(anchors) => tagged(VERIFY, &anchors.encode()),
            TlsPolicy::RequirePinned(pins) => tagged(PIN, OsStr::new(&pins.to_string())),
        }
    }

    /// Reads what [`TlsPolicy::encode`] wrote. A relative trust anchor
    /// path stays relative (to the current directory).
    pub fn parse(arg: &OsStr) -> Result<TlsPolicy, PolicyError> {
        let bad = || PolicyError(arg.to_owned());
        let bytes = arg.as_bytes();
        Ok(match bytes {
            b"off" => TlsPolicy::Off,
            b"try" => TlsPolicy::Opportunistic,
            b"require" => TlsPolicy::RequireAnyCertificate,
            _ if bytes.starts_with(VERIFY) => {
                let value = OsStr::from_bytes(&bytes[VERIFY.len()..]);
                TlsPolicy::RequireVerified(TrustAnchors::parse(value, Path::new("")).ok_or_else(bad)?)
            }
            _ if bytes.starts_with(PIN) => {
                let value = std::str::from_utf8(&bytes[PIN.len()..]).map_err(|_| bad())?;
                TlsPolicy::RequirePinned(Pins::parse(value).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        })
    }

    /// Builds the client configuration: TLS 1.2 and 1.3 with the aws-lc-rs
    /// provider, no session resumption (one delivery per process), the
    /// verifier of the policy, and `identity` (certificate chain and key
    /// files) to send when the server asks. `None` for [`TlsPolicy::Off`].
    pub fn client_config(&self, identity: Option<(&Path, &Path)>) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
        let provider = Arc::new(crate::provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(ConfigError::Setup)?;
        let builder = match self {
            TlsPolicy::Off => return Ok(None),
            TlsPolicy::Opportunistic | TlsPolicy::RequireAnyCertificate => {
                builder.dangerous().with_custom_certificate_verifier(AnyServerCertificate::new(&provider))
            }
            TlsPolicy::RequirePinned(pins) => {
                builder.dangerous().with_custom_certificate_verifier(PinnedCertificate::new(pins.clone(), &provider))
            }
            TlsPolicy::RequireVerified(anchors) => {
                let roots = anchors.load("control/trustanchors")?;
                let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ConfigError::Setup(rustls::Error::General(e.to_string())))?;
                builder.with_webpki_verifier(verifier)
            }
        };
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = keys::load_certificates("control/clientcert", cert)?;
                let key_der = keys::load_private_key("control/clientkey", key)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|source| ConfigError::Key {
                    var: "control/clientkey".to_owned(),
                    path: PathBuf::from(key),
                    source,
                })?
            }
        };
        config.resumption = rustls::client::Resumption::disabled();
        config.enable_early_data = false;
        Ok(Some(Arc::new(config)))
    }
}

/// The name to send as SNI and to verify: a DNS name, or an address.
pub fn server_name(name: Option<&str>, ip: std::net::IpAddr) -> ServerName<'static> {
    name.and_then(|n| ServerName::try_from(n.trim_end_matches('.').to_owned()).ok())
        .unwrap_or(ServerName::IpAddress(ip.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Pin;

    #[test]
    fn names() {
        let ip: std::net::IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(matches!(server_name(Some("mx.example.org."), ip), ServerName::DnsName(_)));
        assert!(matches!(server_name(None, ip), ServerName::IpAddress(_)));
        assert!(matches!(server_name(Some("not a name"), ip), ServerName::IpAddress(_)));
    }

    fn pins() -> Pins {
        let cert = include_bytes!("../testdata/server-ec.der");
        Pins::new(vec![Pin::certificate_sha512(cert), Pin::spki_sha256(cert).expect("spki")]).expect("pins")
    }

    #[test]
    fn policies_round_trip_through_one_argument() {
        let policies = [
            TlsPolicy::Off,
            TlsPolicy::Opportunistic,
            TlsPolicy::RequireAnyCertificate,
            TlsPolicy::RequireVerified(TrustAnchors::BuiltIn),
            TlsPolicy::RequireVerified(TrustAnchors::File("/etc/ssl/cert.pem".into())),
            TlsPolicy::RequireVerified(TrustAnchors::File("/odd:name, with spaces".into())),
            TlsPolicy::RequireVerified(TrustAnchors::Dir("/etc/ssl/certs/".into())),
            TlsPolicy::RequireVerified(TrustAnchors::File(PathBuf::from(OsStr::from_bytes(b"/not/utf-8/\xff")))),
            TlsPolicy::RequirePinned(pins()),
        ];
        for p in policies {
            assert_eq!(TlsPolicy::parse(&p.encode()), Ok(p.clone()), "{:?}", p.encode());
        }
        assert_eq!(TlsPolicy::parse(OsStr::new("verify")), Err(PolicyError("verify".into())));
        for bad in ["", "on", "verify:", "pin:", "pin:abc", "Try", "off "] {
            assert!(TlsPolicy::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_policy_builds_a_configuration() {
        assert!(TlsPolicy::Off.client_config(None).expect("off").is_none());
        for p in [
            TlsPolicy::Opportunistic,
            TlsPolicy::RequireAnyCertificate,
            TlsPolicy::RequireVerified(TrustAnchors::BuiltIn),
            TlsPolicy::RequirePinned(pins()),
        ] {
            assert!(p.client_config(None).expect("config").is_some(), "{p:?}");
        }
        let missing = TlsPolicy::RequireVerified(TrustAnchors::File("/nonexistent".into()));
        assert!(missing.client_config(None).is_err());
    }
}
