//! The one DNS error type, and its permanent/temporary classification.

/// Why [`Resolver::plan_mx`](crate::Resolver::plan_mx) or
/// [`Resolver::resolve_host`](crate::Resolver::resolve_host) found nothing
/// to connect to.
///
/// [`DnsError::is_permanent`] is the one place that decides bounce (`D`) or
/// retry later (`Z`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN for the MX query, or for both the
    /// A and AAAA queries of a host). Permanent; qmail's `#5.1.2`.
    #[error("no such host: {host} (NXDOMAIN)")]
    NoSuchHost {
        /// The name looked up.
        host: String,
    },
    /// The domain publishes a Null MX (RFC 7505): it accepts no mail.
    /// Permanent; `#5.1.10`.
    #[error("{host} does not accept mail (null MX)")]
    NullMx {
        /// The mail domain.
        host: String,
    },
    /// Every exchanger (or the host) was looked up and none has an
    /// address, without any temporary failure. Permanent; qmail's `#5.4.4`.
    #[error("no mail exchanger or IP address found for {host}")]
    NoAddresses {
        /// The mail domain or host.
        host: String,
    },
    /// The name cannot be a DNS name (empty, a label over 63 bytes, over
    /// 255 bytes in all…). Permanent: asking again will not help; qmail's
    /// `#5.1.2`.
    #[error("bad host name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// SERVFAIL, REFUSED or another error code, a timeout, a network error,
    /// a malformed answer, or the overall deadline: asking later may work.
    /// Temporary; qmail's `#4.1.2`.
    #[error("temporary DNS failure for {host}: {detail}")]
    Temporary {
        /// The name whose lookup failed.
        host: String,
        /// What went wrong, for the report.
        detail: String,
    },
}

impl DnsError {
    /// `true` if the mail should bounce (`D`), `false` if the delivery
    /// should be retried later (`Z`).
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::NoSuchHost { .. } | Self::NullMx { .. } | Self::NoAddresses { .. } | Self::InvalidName { .. } => true,
            Self::Temporary { .. } => false,
        }
    }

    /// The enhanced status code qmail-remote reports for this error, the
    /// ones stock qmail uses where it has the case (`5.1.2`, `5.4.4`,
    /// `4.1.2`) and RFC 7505's `5.1.10` for a Null MX.
    pub fn status(&self) -> &'static str {
        match self {
            Self::NoSuchHost { .. } | Self::InvalidName { .. } => "5.1.2",
            Self::NullMx { .. } => "5.1.10",
            Self::NoAddresses { .. } => "5.4.4",
            Self::Temporary { .. } => "4.1.2",
        }
    }

    pub(crate) fn temporary(host: &str, detail: impl Into<String>) -> Self {
        Self::Temporary { host: host.to_owned(), detail: detail.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_classified() {
        let h = || "example.test".to_owned();
        let cases = [
            (DnsError::NoSuchHost { host: h() }, true, "5.1.2"),
            (DnsError::NullMx { host: h() }, true, "5.1.10"),
            (DnsError::NoAddresses { host: h() }, true, "5.4.4"),
            (DnsError::InvalidName { name: "a..b".into(), reason: "empty label".into() }, true, "5.1.2"),
            (DnsError::temporary("example.test", "SERVFAIL"), false, "4.1.2"),
            (DnsError::temporary("example.test", "no answer within the DNS deadline"), false, "4.1.2"),
        ];
        for (e, permanent, status) in cases {
            assert_eq!(e.is_permanent(), permanent, "{e:?}");
            assert_eq!(e.status(), status, "{e:?}");
            // The status class agrees with the classification.
            assert_eq!(e.status().starts_with('5'), permanent, "{e:?}");
            assert!(e.to_string().contains("example.test") || e.to_string().contains("a..b"), "{e}");
        }
    }
}
