//! One QMQP request: `ns( ns(message) ns(sender) ns(recipient)... )`.
//!
//! [`RequestParser`] reads it from bytes as they come, enforcing every
//! limit before it allocates: the message at most [`Limits::max_message`]
//! bytes (the only large buffer, allocated once at its announced length),
//! addresses shorter than [`ADDRESS_LIMIT`], at most
//! [`Limits::max_recipients`] recipients, no leading zeros, every inner
//! netstring inside the outer one. Whatever is wrong ends in a
//! [`Rejection`] the server answers with a `D` reply: the original closes
//! without a reply on bad framing, which a client takes as a temporary
//! failure and retries forever.

use crate::address::{ADDRESS_LIMIT, AddressCheck, AddressProblem, check_address};
use crate::netstring::{self, LengthDigits, LengthStep};
use crate::reply::Reply;

/// The recipient cap of the original.
pub const MAX_RECIPIENTS: usize = 1024;
/// `max_size`'s default: 16 MiB.
pub const DEFAULT_MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest message (without the envelope), in bytes.
    pub max_message: usize,
    /// The most recipients.
    pub max_recipients: usize,
    /// The address rules.
    pub address_check: AddressCheck,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_message: DEFAULT_MAX_MESSAGE, max_recipients: MAX_RECIPIENTS, address_check: AddressCheck::Qmail }
    }
}

impl Limits {
    /// The longest outer netstring these limits can accept: the message's
    /// netstring and `max_recipients + 1` addresses of the longest length.
    pub fn max_outer(&self) -> u64 {
        let address = netstring::encoded_len(ADDRESS_LIMIT - 1) as u64;
        (netstring::encoded_len(self.max_message) as u64)
            .saturating_add(address.saturating_mul(self.max_recipients as u64 + 1))
    }
}

/// A request as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The message (headers and body; QMQP messages use LF line ends).
    pub message: Vec<u8>,
    /// The envelope sender (empty for the null sender).
    pub sender: Vec<u8>,
    /// The envelope recipients, at least one.
    pub recipients: Vec<Vec<u8>>,
}

/// Why a request is refused: each is answered with a `D` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a QMQP request: bad framing, a leading zero, an inner netstring
    /// that overruns the outer one, no recipient, bytes after the request.
    #[error("malformed input")]
    Malformed,
    /// The message is longer than `max_message`, or the request longer
    /// than any request within the limits can be.
    #[error("message too large")]
    TooLarge,
    /// More than `max_recipients` recipients.
    #[error("too many recipients")]
    TooManyRecipients,
    /// An address the rules refuse.
    #[error("bad address: {0}")]
    BadAddress(AddressProblem),
}

impl Rejection {
    /// The reply: the original's texts, and the size as qmail-smtpd says it.
    pub fn reply(&self) -> Reply {
        Reply::permanent(match self {
            Rejection::Malformed => "malformed input",
            Rejection::TooLarge => "message is too large (#5.3.4)",
            Rejection::TooManyRecipients => "too many recipients",
            Rejection::BadAddress(_) => "bad address",
        })
    }
}

/// What [`RequestParser::feed`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// The request is not complete yet.
    NeedMore,
    /// The request is complete (the final `,` was the last byte consumed).
    Complete(Request),
    /// The request is refused.
    Rejected(Rejection),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    OuterLength(LengthDigits),
    ItemLength(LengthDigits),
    ItemBytes { remaining: usize },
    ItemComma,
    OuterComma,
    Finished,
}

/// A resumable parser of one request; see the module's documentation.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    state: State,
    /// Bytes of the outer netstring not consumed yet.
    outer_remaining: u64,
    /// Which inner netstring: 0 the message, 1 the sender, then recipients.
    item: usize,
    address: Vec<u8>,
    request: Request,
}

impl RequestParser {
    /// A parser for one request under `limits`.
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            state: State::OuterLength(LengthDigits::default()),
            outer_remaining: 0,
            item: 0,
            address: Vec::new(),
            request: Request::default(),
        }
    }

    /// Whether any byte was consumed yet.
    pub fn started(&self) -> bool {
        self.state != State::OuterLength(LengthDigits::default())
    }

    /// Consumes bytes from `input`; returns how many, and the status. It
    /// stops after the request's last byte ([`Status::Complete`]: anything
    /// left in `input` follows the request) or at the first refused byte.
    /// Once it has answered `Complete` or `Rejected`, it refuses any more
    /// input as [`Rejection::Malformed`].
    pub fn feed(&mut self, input: &[u8]) -> (usize, Status) {
        let mut used = 0;
        while used < input.len() {
            match self.step(&input[used..]) {
                Ok((n, None)) => used += n,
                Ok((n, Some(request))) => return (used + n, Status::Complete(request)),
                Err(rejection) => {
                    self.state = State::Finished;
                    return (used, Status::Rejected(rejection));
                }
            }
        }
        (used, Status::NeedMore)
    }

    /// One step on a non-empty `input`.
    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Request>), Rejection> {
        let byte = input[0];
        match self.state {
            State::OuterLength(mut digits) => match digits.push(byte, self.limits.max_outer()) {
                LengthStep::Digit => self.state = State::OuterLength(digits),
                LengthStep::Done(len) => {
                    self.outer_remaining = len;
                    self.state = State::ItemLength(LengthDigits::default());
                }
                LengthStep::Malformed => return Err(Rejection::Malformed),
                LengthStep::TooLarge => return Err(Rejection::TooLarge),
            },
            State::ItemLength(digits) if self.outer_remaining == 0 => {
                if digits != LengthDigits::default() {
                    return Err(Rejection::Malformed);
                }
                self.state = State::OuterComma;
                return Ok((0, None));
            }
            State::ItemLength(mut digits) => {
                self.outer_remaining -= 1;
                let max = if self.item == 0 { self.limits.max_message } else { ADDRESS_LIMIT - 1 };
                match digits.push(byte, max as u64) {
                    LengthStep::Digit => self.state = State::ItemLength(digits),
                    LengthStep::Done(len) => self.start_item(len)?,
                    LengthStep::Malformed => return Err(Rejection::Malformed),
                    LengthStep::TooLarge if self.item == 0 => return Err(Rejection::TooLarge),
                    LengthStep::TooLarge => return Err(Rejection::BadAddress(AddressProblem::TooLong)),
                }
            }
            State::ItemBytes { remaining } => {
                let n = remaining.min(input.len());
                let chunk = &input[..n];
                if self.item == 0 {
                    self.request.message.extend_from_slice(chunk);
                } else {
                    self.address.extend_from_slice(chunk);
                }
                self.outer_remaining -= n as u64;
                self.state =
                    if n == remaining { State::ItemComma } else { State::ItemBytes { remaining: remaining - n } };
                return Ok((n, None));
            }
            State::ItemComma => {
                if byte != b',' {
                    return Err(Rejection::Malformed);
                }
                self.outer_remaining -= 1;
                self.finish_item()?;
                self.state = State::ItemLength(LengthDigits::default());
            }
            State::OuterComma => {
                if byte != b',' {
                    return Err(Rejection::Malformed);
                }
                self.state = State::Finished;
                if self.request.recipients.is_empty() {
                    return Err(Rejection::Malformed);
                }
                return Ok((1, Some(std::mem::take(&mut self.request))));
            }
            State::Finished => return Err(Rejection::Malformed),
        }
        Ok((1, None))
    }

    /// After an inner length of `len`: its bytes and comma must fit.
    fn start_item(&mut self, len: u64) -> Result<(), Rejection> {
        if len >= self.outer_remaining {
            return Err(Rejection::Malformed);
        }
        if self.item >= 2 + self.limits.max_recipients {
            return Err(Rejection::TooManyRecipients);
        }
        // Bounded above: max_message or ADDRESS_LIMIT.
        let len = len as usize;
        if self.item == 0 {
            self.request.message = Vec::with_capacity(len);
        } else {
            self.address = Vec::with_capacity(len);
        }
        self.state = if len == 0 { State::ItemComma } else { State::ItemBytes { remaining: len } };
        Ok(())
    }

    fn finish_item(&mut self) -> Result<(), Rejection> {
        if self.item > 0 {
            let address = std::mem::take(&mut self.address);
            check_address(&address, self.limits.address_check).map_err(Rejection::BadAddress)?;
            if self.item == 1 {
                self.request.sender = address;
            } else {
                self.request.recipients.push(address);
            }
        }
        self.item += 1;
        Ok(())
    }
}

/// The framing around a message of `message_len` bytes: what goes before
/// it (the outer length and the message's length) and after it (the
/// envelope and both commas), so that a client can send a large message
/// (or one with headers in front, counted in `message_len`) without
/// copying it.
pub fn frame(message_len: usize, sender: &[u8], recipients: &[impl AsRef<[u8]>]) -> (Vec<u8>, Vec<u8>) {
    let mut after = vec![b','];
    netstring::encode_into(&mut after, sender);
    for r in recipients {
        netstring::encode_into(&mut after, r.as_ref());
    }
    let inner_header = netstring::header(message_len);
    let outer_len = inner_header.len() + message_len + after.len();
    let mut before = netstring::header(outer_len).into_bytes();
    before.extend_from_slice(inner_header.as_bytes());
    after.push(b',');
    (before, after)
}

/// The whole request for `message`, `sender` and `recipients`.
pub fn encode_request(message: &[u8], sender: &[u8], recipients: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let (before, after) = frame(message.len(), sender, recipients);
    let mut out = Vec::with_capacity(before.len() + message.len() + after.len());
    out.extend_from_slice(&before);
    out.extend_from_slice(message);
    out.extend_from_slice(&after);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressProblem;

    fn small() -> Limits {
        Limits { max_message: 2048, max_recipients: 3, address_check: AddressCheck::Qmail }
    }

    /// Feeds `input` in chunks of `size`, as a server would; returns the
    /// bytes consumed and the first status other than NeedMore.
    fn chunked(limits: Limits, input: &[u8], size: usize) -> (usize, Status) {
        let mut p = RequestParser::new(limits);
        let mut total = 0;
        for chunk in input.chunks(size) {
            let (n, status) = p.feed(chunk);
            total += n;
            if status != Status::NeedMore {
                return (total, status);
            }
        }
        (total, Status::NeedMore)
    }

    fn req(message: &[u8], sender: &[u8], rcpts: &[&[u8]]) -> Request {
        Request {
            message: message.to_vec(),
            sender: sender.to_vec(),
            recipients: rcpts.iter().map(|r| r.to_vec()).collect(),
        }
    }

    fn check(limits: Limits, input: &[u8], want: (usize, Status)) {
        for size in 1..=64 {
            assert_eq!(chunked(limits, input, size), want, "{} in chunks of {size}", input.escape_ascii());
        }
    }

    #[test]
    fn the_spec_example() {
        let input = b"64:16:A simple message,19:sender@example.org,17:rcpt@example.org,,";
        let want = req(b"A simple message", b"sender@example.org", &[b"rcpt@example.org"]);
        // 19 for an 18-byte sender: the comma is not where it should be.
        check(small(), input, (45, Status::Rejected(Rejection::Malformed)));
        let good = encode_request(b"A simple message", b"sender@example.org", &[b"rcpt@example.org"]);
        check(small(), &good, (good.len(), Status::Complete(want)));
    }

    #[test]
    fn requests_in_every_chunk_size() {
        let ok = |m: &[u8], s: &[u8], r: &[&[u8]]| {
            let bytes = encode_request(m, s, r);
            let n = bytes.len();
            (bytes, (n, Status::Complete(req(m, s, r))))
        };
        let rejected = |bytes: &[u8], at: usize, why: Rejection| (bytes.to_vec(), (at, Status::Rejected(why)));
        let mut table = vec![
            ok(b"Subject: x\n\nbody\n", b"a@b", &[b"c@d"]),
            ok(b"", b"", &[b"c@d"]),
            ok(b"m", b"#@[]", &[b"c@d", b"e@f", b"g@h"]),
            ok(&[b'x'; 2048], b"a@b", &[b"c@d"]),
            // The outer netstring alone.
            rejected(b"abc", 0, Rejection::Malformed),
            rejected(b":", 0, Rejection::Malformed),
            rejected(b"012:", 1, Rejection::Malformed),
            rejected(b"99999999999999999999:", 3, Rejection::TooLarge),
            rejected(b"0:,", 2, Rejection::Malformed),
            // Inner netstrings.
            rejected(b"12:01:m,3:a@b,,", 4, Rejection::Malformed),
            // No recipient.
            rejected(b"10:1:m,3:a@b,,", 13, Rejection::Malformed),
            rejected(b"5:1:m,,", 6, Rejection::Malformed),
            rejected(b"6:1:m,0:,", 7, Rejection::Malformed),
            rejected(b"13:1:m;0:,3:c@d,,", 6, Rejection::Malformed),
            rejected(b"13:1:m,0:,3:c@d,;", 16, Rejection::Malformed),
            rejected(b"8:9:mmmmmmmmm,", 3, Rejection::Malformed),
            rejected(b"3:1:m", 3, Rejection::Malformed),
            // Bytes after the request are the caller's to refuse.
            (b"13:1:m,0:,3:c@d,,more".to_vec(), (17, Status::Complete(req(b"m", b"", &[b"c@d"])))),
            // Limits.
            rejected(b"3000:2049:", 8, Rejection::TooLarge),
            rejected(b"3000:20490", 8, Rejection::TooLarge),
            rejected(b"3000:1:m,1000:", 12, Rejection::BadAddress(AddressProblem::TooLong)),
            rejected(b"15:1:m,1:a,3:c@d,,", 10, Rejection::BadAddress(AddressProblem::NotQualified)),
            rejected(b"15:1:m,0:,3:c\0d,,", 15, Rejection::BadAddress(AddressProblem::Nul)),
        ];
        let four = encode_request(b"m", b"a@b", &[b"c@d", b"e@f", b"g@h", b"i@j"]);
        let at = four.len() - 6;
        table.push(rejected(&four, at, Rejection::TooManyRecipients));
        for (input, want) in table {
            check(small(), &input, want);
        }
    }

    #[test]
    fn recipient_cap_is_1024() {
        let rcpts: Vec<Vec<u8>> = (0..1025).map(|i| format!("r{i}@example.org").into_bytes()).collect();
        let exactly = encode_request(b"m", b"", &rcpts[..1024]);
        let (n, status) = RequestParser::new(Limits::default()).feed(&exactly);
        assert_eq!(n, exactly.len());
        assert!(matches!(status, Status::Complete(r) if r.recipients.len() == 1024));
        let over = encode_request(b"m", b"", &rcpts);
        let (_, status) = RequestParser::new(Limits::default()).feed(&over);
        assert_eq!(status, Status::Rejected(Rejection::TooManyRecipients));
    }

    #[test]
    fn max_message_plus_and_minus_one() {
        let limits = Limits { max_message: 1024, ..Limits::default() };
        for (len, fits) in [(1023, true), (1024, true), (1025, false)] {
            let input = encode_request(&vec![b'x'; len], b"a@b", &[b"c@d"]);
            let (_, status) = RequestParser::new(limits).feed(&input);
            match status {
                Status::Complete(r) => assert!(fits && r.message.len() == len, "{len}"),
                Status::Rejected(Rejection::TooLarge) => assert!(!fits, "{len}"),
                other => panic!("{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn address_modes() {
        let input = encode_request(b"m", b"", &[b"postmaster"]);
        for (mode, want) in [
            (AddressCheck::Strict, Status::Rejected(Rejection::BadAddress(AddressProblem::NotQualified))),
            (AddressCheck::Qmail, Status::Rejected(Rejection::BadAddress(AddressProblem::NotQualified))),
            (AddressCheck::Off, Status::Complete(req(b"m", b"", &[b"postmaster"]))),
        ] {
            let (_, status) = RequestParser::new(Limits { address_check: mode, ..small() }).feed(&input);
            assert_eq!(status, want, "{mode:?}");
        }
        let bounce = encode_request(b"m", b"", &[b"a@b"]);
        let (_, status) = RequestParser::new(Limits { address_check: AddressCheck::Strict, ..small() }).feed(&bounce);
        assert_eq!(status, Status::Rejected(Rejection::BadAddress(AddressProblem::NotQualified)));
    }

    #[test]
    fn no_more_input_after_the_end() {
        let mut p = RequestParser::new(small());
        assert!(!p.started());
        let input = encode_request(b"m", b"a@b", &[b"c@d"]);
        assert!(matches!(p.feed(&input), (_, Status::Complete(_))));
        assert!(p.started());
        assert_eq!(p.feed(b"x"), (0, Status::Rejected(Rejection::Malformed)));
    }

    #[test]
    fn replies_of_rejections() {
        assert_eq!(Rejection::Malformed.reply().encode(), b"16:Dmalformed input,");
        assert_eq!(Rejection::TooManyRecipients.reply().encode(), b"20:Dtoo many recipients,");
        assert_eq!(Rejection::BadAddress(AddressProblem::Nul).reply().encode(), b"12:Dbad address,");
        assert_eq!(Rejection::TooLarge.reply().content(), b"Dmessage is too large (#5.3.4)");
    }

    #[test]
    fn frame_counts_a_prefix() {
        let (before, after) = frame(5, b"a@b", &[b"c@d"]);
        let mut whole = before.clone();
        whole.extend_from_slice(b"X: 1\n");
        whole.extend_from_slice(&after);
        assert_eq!(whole, encode_request(b"X: 1\n", b"a@b", &[b"c@d"]));
    }
}

/// The parser's properties on any input, the oracle of the fuzz target and
/// of the unit tests: it never panics, gives the same answer however the
/// bytes are cut (`chunk`), never consumes more than it was given, never
/// accepts what breaks its limits or its address rules, and what it
/// accepts encodes back to exactly the bytes it consumed.
#[cfg(any(test, feature = "test-support"))]
pub fn check_parser_properties(data: &[u8], limits: Limits, chunk: usize) {
    let whole = parse_in_chunks(limits, data, data.len());
    assert_eq!(parse_in_chunks(limits, data, chunk), whole, "{}", data.escape_ascii());
    assert!(whole.0 <= data.len());
    if let (n, Status::Complete(r)) = whole {
        assert!(r.message.len() <= limits.max_message);
        assert!((1..=limits.max_recipients).contains(&r.recipients.len()));
        assert!(crate::check_address(&r.sender, limits.address_check).is_ok());
        assert!(r.recipients.iter().all(|a| crate::check_address(a, limits.address_check).is_ok()));
        assert_eq!(encode_request(&r.message, &r.sender, &r.recipients), &data[..n]);
    }
}

/// Feeds `data` to a new parser `chunk` bytes at a time: the bytes
/// consumed and the status at the first answer that is not `NeedMore`.
#[cfg(any(test, feature = "test-support"))]
fn parse_in_chunks(limits: Limits, data: &[u8], chunk: usize) -> (usize, Status) {
    let mut p = RequestParser::new(limits);
    let mut total = 0;
    for piece in data.chunks(chunk.max(1)) {
        let (n, status) = p.feed(piece);
        total += n;
        if status != Status::NeedMore {
            return (total, status);
        }
    }
    (total, Status::NeedMore)
}

/// The fuzz target's properties on deterministic pseudo-random inputs
/// (valid requests with bytes changed, cut or inserted), so that they run
/// with the unit tests too.
#[cfg(test)]
mod mutations {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn mutated_requests_keep_the_invariants() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let seeds = [
            encode_request(b"Subject: x\n\nbody\n", b"a@b", &[b"c@d", b"e@f"]),
            encode_request(b"", b"", &[b"c@d"]),
            encode_request(&[b'x'; 300], b"#@[]", &[b"c@d"; 8]),
        ];
        let alphabet = b"0123456789:,@x\0";
        for round in 0..20_000 {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                match rng.below(3) {
                    0 => data[at] = alphabet[rng.below(alphabet.len())],
                    1 => {
                        data.remove(at);
                    }
                    _ => data.insert(at, alphabet[rng.below(alphabet.len())]),
                }
            }
            let mode = [AddressCheck::Strict, AddressCheck::Qmail, AddressCheck::Off][rng.below(3)];
            let limits = Limits { max_message: 1024, max_recipients: 8, address_check: mode };
            check_parser_properties(&data, limits, 1 + rng.below(17));
        }
    }
}
