//! TLS for chainmail, on rustls with the aws-lc-rs provider.
//!
//! * [`TlsEnv`]: the server configuration from the s6 variables
//!   (`CERTFILE`, `KEYFILE`, `CERTFILE:name`, `KEYFILE:name`, `CAFILE`,
//!   `CADIR`), with SNI selection and optional client certificates.
//! * [`keys`]: certificates, private keys and trust anchors from PEM or
//!   DER files.
//! * [`TlsPolicy`] ([`client`]): what an SMTP client does about TLS
//!   (off, opportunistic, required with any certificate, verified against
//!   [`TrustAnchors`], pinned), from the control files to the rustls
//!   configuration.
//! * [`verify`]: the certificate verifiers beside WebPKI: any
//!   certificate, and pins.
//! * [`Engine`]: one TLS session between a network and an application,
//!   server side ([`ServerEngine`]) or client side ([`ClientEngine`]),
//!   without I/O, so that it can be tested in memory.
//! * [`ConnectionInfo`]: the `SSL_*` record a UCSPI-TLS server sends back
//!   after `Y`, with [`dn`] writing the peer's subject per RFC 4514.
#![forbid(unsafe_code)]

pub mod client;
mod config;
pub mod dn;
pub mod engine;
mod error;
mod info;
pub mod keys;
pub mod verify;
mod x509;

pub use client::{PolicyError, TlsPolicy};
pub use config::{ClientAuth, SniLevel, TlsEnv, provider};
pub use engine::{ClientEngine, Engine, EngineError, Policy, ServerEngine, Side, Step, Wants};
pub use error::ConfigError;
pub use info::{ConnectionInfo, certificate_hash, cipher_suite_name, protocol_name};
pub use keys::{BUILTIN_TRUST_ANCHORS, TrustAnchors};
pub use rustls;
