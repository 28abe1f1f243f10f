//! qmail-queue's envelope on fd 1: `F<sender>\0`, then `T<recipient>\0`
//! for each recipient, then `\0`.

/// The envelope is not in qmail-queue's format (exit 91).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the envelope is not F<sender>\\0 T<recipient>\\0 ... \\0")]
pub struct BadEnvelope;

/// A parsed envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sender (empty for bounces).
    pub sender: Vec<u8>,
    /// The recipients (qmail-qmqpc sends none on as the original: the
    /// server decides).
    pub recipients: Vec<Vec<u8>>,
}

/// Parses the envelope as qmail-qmqpc does: the first field must be
/// `F...`, the others `T...` until an empty field; a missing final NUL or
/// another letter is [`BadEnvelope`]. Bytes after the empty field are
/// ignored.
pub fn parse(input: &[u8]) -> Result<Envelope, BadEnvelope> {
    let mut fields = input.split_inclusive(|&b| b == 0);
    let mut next = || -> Result<&[u8], BadEnvelope> {
        let f = fields.next().ok_or(BadEnvelope)?;
        f.strip_suffix(b"\0").ok_or(BadEnvelope)
    };
    let sender = next()?.strip_prefix(b"F").ok_or(BadEnvelope)?.to_vec();
    let mut recipients = Vec::new();
    loop {
        let f = next()?;
        if f.is_empty() {
            break;
        }
        recipients.push(f.strip_prefix(b"T").ok_or(BadEnvelope)?.to_vec());
    }
    Ok(Envelope { sender, recipients })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes() {
        let env = |s: &[u8], r: &[&[u8]]| {
            Ok(Envelope { sender: s.to_vec(), recipients: r.iter().map(|x| x.to_vec()).collect() })
        };
        let table: &[(&[u8], Result<Envelope, BadEnvelope>)] = &[
            (b"Fa@b\0Tc@d\0\0", env(b"a@b", &[b"c@d"])),
            (b"F\0Tc@d\0Te@f\0\0", env(b"", &[b"c@d", b"e@f"])),
            (b"Fa@b\0\0", env(b"a@b", &[])),
            (b"Fa@b\0Tc@d\0\0garbage", env(b"a@b", &[b"c@d"])),
            (b"", Err(BadEnvelope)),
            (b"Fa@b", Err(BadEnvelope)),
            (b"Fa@b\0", Err(BadEnvelope)),
            (b"Fa@b\0Tc@d\0", Err(BadEnvelope)),
            (b"Fa@b\0Tc@d", Err(BadEnvelope)),
            (b"Xa@b\0Tc@d\0\0", Err(BadEnvelope)),
            (b"Fa@b\0Xc@d\0\0", Err(BadEnvelope)),
            (b"\0", Err(BadEnvelope)),
        ];
        for (input, want) in table {
            assert_eq!(&parse(input), want, "{}", input.escape_ascii());
        }
    }
}
