//! What can go wrong while turning the environment into a TLS configuration.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A problem with the key material or the TLS configuration.
///
/// Every variant but [`ConfigError::Setup`] and [`ConfigError::Verifier`]
/// is about the files and variables the administrator provided (the s6
/// tools exit 96 for those); the two others are failures to build the
/// engine from material that was fine (exit 97). See
/// [`ConfigError::is_engine_setup`].
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A required variable is not set (or empty).
    #[error("{var} is not set")]
    Unset {
        /// The variable.
        var: String,
    },
    /// One half of a certificate/key pair is set, the other is not.
    #[error("{var} is set but {missing} is not")]
    Unpaired {
        /// The variable that is set.
        var: String,
        /// The one that is missing.
        missing: String,
    },
    /// Mandatory SNI without any `CERTFILE:name`/`KEYFILE:name` pair.
    #[error("mandatory SNI needs at least one CERTFILE:name and KEYFILE:name pair")]
    NoNamedPair,
    /// A `CERTFILE:name` whose name cannot match a server name.
    #[error(
        "{var}: invalid server name {name:?} (a wildcard is only allowed as a whole first label, as in *.example.org)"
    )]
    BadName {
        /// The variable.
        var: String,
        /// The name part.
        name: String,
    },
    /// Client certificates were requested but no trust anchors given.
    #[error("client certificates need CAFILE or CADIR")]
    NoCa,
    /// A file could not be read.
    #[error("unable to read {var}={path}: {source}", path = path.display())]
    Read {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A file was read but does not contain what it should.
    #[error("{var}={path}: {reason}", path = path.display())]
    Parse {
        /// The variable naming the file.
        var: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is unusable, or does not match the certificate.
    #[error("{var}={path}: {source}", path = path.display())]
    Key {
        /// The variable naming the key file.
        var: String,
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// No certificate of `CAFILE`/`CADIR` could be used as a trust anchor.
    #[error("no usable trust anchor in {var}={path}", path = path.display())]
    NoTrustAnchors {
        /// `CAFILE` or `CADIR`.
        var: &'static str,
        /// Its value.
        path: PathBuf,
    },
    /// rustls refused the configuration.
    #[error("unable to set up the TLS engine: {0}")]
    Setup(#[source] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("unable to set up client certificate verification: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl ConfigError {
    /// Whether this is a failure to set up the engine (exit 97) rather
    /// than a problem with the key material or its variables (exit 96).
    pub fn is_engine_setup(&self) -> bool {
        matches!(self, ConfigError::Setup(_) | ConfigError::Verifier(_))
    }
}
