//! The address rules of a QMQP server.
//!
//! qrelay's original accepts only `local@domain` with a local part of at
//! most 64 bytes and at most 254 bytes in all, which refuses the null
//! sender `<>` of every bounce and qmail's double-bounce sender `#@[]`.
//! [`AddressCheck`] chooses between that ([`AddressCheck::Strict`]), that
//! plus the two qmail forms ([`AddressCheck::Qmail`], the default), and
//! only the limits every QMQP server has ([`AddressCheck::Off`]: no NUL,
//! shorter than 1000 bytes, as qmail-qmqpd).

use thiserror::Error;

/// The longest address any mode accepts, plus one: qmail-qmqpd refuses
/// addresses of 1000 bytes or more.
pub const ADDRESS_LIMIT: usize = 1000;
/// The longest local part under [`AddressCheck::Strict`] and
/// [`AddressCheck::Qmail`] (RFC 5321 4.5.3.1.1).
pub const LOCAL_PART_MAX: usize = 64;
/// The longest address under [`AddressCheck::Strict`] and
/// [`AddressCheck::Qmail`] (a path of 256 minus the angle brackets).
pub const ADDRESS_MAX: usize = 254;
/// qmail's double-bounce sender.
pub const DOUBLE_BOUNCE_SENDER: &[u8] = b"#@[]";

/// Which addresses a server accepts (`address_check` in qrelay's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressCheck {
    /// The original's rules: `local@domain`, local part 1..=64 bytes,
    /// domain not empty, at most 254 bytes.
    Strict,
    /// [`AddressCheck::Strict`], plus the null sender (empty) and qmail's
    /// double-bounce sender `#@[]`.
    #[default]
    Qmail,
    /// Only no NUL and shorter than [`ADDRESS_LIMIT`].
    Off,
}

impl AddressCheck {
    /// From the config's value: `strict`, `qmail` or `off`.
    pub fn from_name(name: &str) -> Option<AddressCheck> {
        match name {
            "strict" => Some(AddressCheck::Strict),
            "qmail" => Some(AddressCheck::Qmail),
            "off" => Some(AddressCheck::Off),
            _ => None,
        }
    }
}

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AddressProblem {
    /// It contains a NUL byte.
    #[error("the address contains a NUL byte")]
    Nul,
    /// It is too long.
    #[error("the address is too long")]
    TooLong,
    /// It is not `local@domain`.
    #[error("the address is not local@domain")]
    NotQualified,
    /// The local part is empty or longer than 64 bytes.
    #[error("the local part is empty or too long")]
    LocalPart,
}

/// Checks `address` under `mode`.
pub fn check_address(address: &[u8], mode: AddressCheck) -> Result<(), AddressProblem> {
    if address.contains(&0) {
        return Err(AddressProblem::Nul);
    }
    if address.len() >= ADDRESS_LIMIT {
        return Err(AddressProblem::TooLong);
    }
    match mode {
        AddressCheck::Off => Ok(()),
        AddressCheck::Qmail if address.is_empty() || address == DOUBLE_BOUNCE_SENDER => Ok(()),
        AddressCheck::Qmail | AddressCheck::Strict => check_qualified(address),
    }
}

fn check_qualified(address: &[u8]) -> Result<(), AddressProblem> {
    if address.len() > ADDRESS_MAX {
        return Err(AddressProblem::TooLong);
    }
    let at = address.iter().rposition(|&b| b == b'@').ok_or(AddressProblem::NotQualified)?;
    let (local, domain) = (&address[..at], &address[at + 1..]);
    if domain.is_empty() {
        return Err(AddressProblem::NotQualified);
    }
    if local.is_empty() || local.len() > LOCAL_PART_MAX {
        return Err(AddressProblem::LocalPart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressCheck::*;
    use AddressProblem::*;

    #[test]
    fn rules() {
        let long_local = format!("{}@example.org", "a".repeat(65));
        let max_local = format!("{}@example.org", "a".repeat(64));
        let long = format!("a@{}", "d".repeat(253));
        let max = format!("a@{}", "d".repeat(252));
        let huge = "x".repeat(1000);
        let almost_huge = "x".repeat(999);
        // (address, strict, qmail, off)
        type Want = Result<(), AddressProblem>;
        let table: &[(&[u8], Want, Want, Want)] = &[
            (b"user@example.org", Ok(()), Ok(()), Ok(())),
            (b"", Err(NotQualified), Ok(()), Ok(())),
            (b"#@[]", Ok(()), Ok(()), Ok(())),
            (b"user", Err(NotQualified), Err(NotQualified), Ok(())),
            (b"user@", Err(NotQualified), Err(NotQualified), Ok(())),
            (b"@example.org", Err(LocalPart), Err(LocalPart), Ok(())),
            (b"\"a@b\"@example.org", Ok(()), Ok(()), Ok(())),
            (b"us\0er@example.org", Err(Nul), Err(Nul), Err(Nul)),
            (long_local.as_bytes(), Err(LocalPart), Err(LocalPart), Ok(())),
            (max_local.as_bytes(), Ok(()), Ok(()), Ok(())),
            (long.as_bytes(), Err(TooLong), Err(TooLong), Ok(())),
            (max.as_bytes(), Ok(()), Ok(()), Ok(())),
            (huge.as_bytes(), Err(TooLong), Err(TooLong), Err(TooLong)),
            (almost_huge.as_bytes(), Err(TooLong), Err(TooLong), Ok(())),
        ];
        for (address, strict, qmail, off) in table {
            let a = address.escape_ascii();
            assert_eq!(check_address(address, Strict), *strict, "strict {a}");
            assert_eq!(check_address(address, Qmail), *qmail, "qmail {a}");
            assert_eq!(check_address(address, Off), *off, "off {a}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(AddressCheck::from_name("strict"), Some(Strict));
        assert_eq!(AddressCheck::from_name("qmail"), Some(Qmail));
        assert_eq!(AddressCheck::from_name("off"), Some(Off));
        assert_eq!(AddressCheck::from_name("Off"), None);
        assert_eq!(AddressCheck::default(), Qmail);
    }
}
