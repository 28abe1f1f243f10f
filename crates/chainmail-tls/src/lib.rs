//! TLS configuration and connection information for chainmail, on rustls.
#![forbid(unsafe_code)]
