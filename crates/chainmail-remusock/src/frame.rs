//! Frames: encoding, and an incremental decoder with every bound.

use thiserror::Error;

/// The largest DATA payload: the original's buffer. A DATA frame carries
/// 1 to this many bytes; anything else received is a protocol error.
pub const MAX_DATA: usize = 16384;

/// PING.
pub const PING: u8 = b'?';
/// PONG.
pub const PONG: u8 = b'!';
/// HELLO: the socket server accepted a local connection.
pub const HELLO: u8 = b'H';
/// CONNECT: the socket client's `connect()` succeeded.
pub const CONNECT: u8 = b'C';
/// BYE: the local side closed, or the connect failed.
pub const BYE: u8 = b'B';
/// DATA.
pub const DATA: u8 = b'D';
/// EOF (capable links): shut down writing on the far side.
pub const EOF: u8 = b'E';
/// CREDIT (capable links): the receiver wrote this many more bytes.
pub const CREDIT: u8 = b'W';
/// BYE acknowledged (capable links): the id may be used again.
pub const BYE_ACK: u8 = b'A';

/// One frame after the IDENT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `?`
    Ping,
    /// `!`
    Pong,
    /// `H` id
    Hello(u16),
    /// `C` id
    Connect(u16),
    /// `B` id
    Bye(u16),
    /// `D` id len payload
    Data(u16, Vec<u8>),
    /// `E` id
    Eof(u16),
    /// `W` id bytes
    Credit(u16, u32),
    /// `A` id
    ByeAck(u16),
}

impl Frame {
    /// Appends the frame's bytes to `out`. A DATA payload must hold 1 to
    /// [`MAX_DATA`] bytes (the encoder of a broken caller panics in debug
    /// builds and truncates otherwise).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Ping => out.push(PING),
            Frame::Pong => out.push(PONG),
            Frame::Hello(id) => id_frame(out, HELLO, *id),
            Frame::Connect(id) => id_frame(out, CONNECT, *id),
            Frame::Bye(id) => id_frame(out, BYE, *id),
            Frame::Eof(id) => id_frame(out, EOF, *id),
            Frame::ByeAck(id) => id_frame(out, BYE_ACK, *id),
            Frame::Credit(id, n) => {
                id_frame(out, CREDIT, *id);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Frame::Data(id, payload) => encode_data(out, *id, payload),
        }
    }

    /// Whether only a capable peer may receive (and send) this frame.
    pub fn is_extension(&self) -> bool {
        matches!(self, Frame::Eof(_) | Frame::Credit(..) | Frame::ByeAck(_))
    }
}

fn id_frame(out: &mut Vec<u8>, cmd: u8, id: u16) {
    out.push(cmd);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Appends a DATA frame for `payload` (1 to [`MAX_DATA`] bytes).
pub fn encode_data(out: &mut Vec<u8>, id: u16, payload: &[u8]) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_DATA, "DATA of {} bytes", payload.len());
    let payload = &payload[..payload.len().min(MAX_DATA)];
    id_frame(out, DATA, id);
    // MAX_DATA fits in a u16.
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// What the decoder refuses.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum FrameError {
    /// A command byte the protocol does not have (or an extension before
    /// the peer showed it is capable).
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    /// A DATA length of 0 or over 16384.
    #[error("DATA length {0} outside 1..=16384")]
    BadLength(u16),
}

/// Reads frames from bytes cut anywhere. Holds at most one frame's header
/// and one payload ([`MAX_DATA`]).
#[derive(Debug, Default)]
pub struct Decoder {
    /// The command byte and the header read so far.
    header: [u8; 7],
    have: usize,
    /// The payload of a DATA frame, once its length is known.
    payload: Vec<u8>,
    want_payload: usize,
    extensions: bool,
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder for the original's frames only.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Accept the extension frames from now on (the peer is capable).
    pub fn accept_extensions(&mut self) {
        self.extensions = true;
    }

    fn header_len(&self, cmd: u8) -> Result<usize, FrameError> {
        match cmd {
            PING | PONG => Ok(1),
            HELLO | CONNECT | BYE => Ok(3),
            DATA => Ok(5),
            EOF | BYE_ACK if self.extensions => Ok(3),
            CREDIT if self.extensions => Ok(7),
            other => Err(FrameError::UnknownCommand(other)),
        }
    }

    /// Takes bytes from the front of `input` until one frame is complete
    /// and returns it, or `None` when `input` is used up first. An error
    /// is final: the decoder returns it again on every later call.
    pub fn next(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.step(input) {
            Err(e) => {
                self.failed = Some(e);
                Err(e)
            }
            ok => ok,
        }
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        loop {
            if self.want_payload > 0 {
                let take = (self.want_payload - self.payload.len()).min(input.len());
                self.payload.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if self.payload.len() < self.want_payload {
                    return Ok(None);
                }
                self.want_payload = 0;
                self.have = 0;
                let id = u16::from_be_bytes([self.header[1], self.header[2]]);
                return Ok(Some(Frame::Data(id, std::mem::take(&mut self.payload))));
            }
            let Some((&b, rest)) = input.split_first() else { return Ok(None) };
            if self.have == 0 {
                self.header_len(b)?;
            }
            self.header[self.have] = b;
            self.have += 1;
            *input = rest;
            let cmd = self.header[0];
            if self.have < self.header_len(cmd)? {
                continue;
            }
            let id = u16::from_be_bytes([self.header[1], self.header[2]]);
            let frame = match cmd {
                PING => Frame::Ping,
                PONG => Frame::Pong,
                HELLO => Frame::Hello(id),
                CONNECT => Frame::Connect(id),
                BYE => Frame::Bye(id),
                EOF => Frame::Eof(id),
                BYE_ACK => Frame::ByeAck(id),
                CREDIT => Frame::Credit(
                    id,
                    u32::from_be_bytes([self.header[3], self.header[4], self.header[5], self.header[6]]),
                ),
                _ => {
                    // DATA: the header is complete, the payload follows.
                    let len = u16::from_be_bytes([self.header[3], self.header[4]]);
                    if len == 0 || len as usize > MAX_DATA {
                        return Err(FrameError::BadLength(len));
                    }
                    self.want_payload = len as usize;
                    self.payload = Vec::with_capacity(len as usize);
                    continue;
                }
            };
            self.have = 0;
            return Ok(Some(frame));
        }
    }

    /// Bytes held for a frame not yet complete.
    pub fn buffered(&self) -> usize {
        self.have + self.payload.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::Ping,
            Frame::Pong,
            Frame::Hello(1),
            Frame::Hello(0xffff),
            Frame::Connect(0x1234),
            Frame::Bye(7),
            Frame::Data(3, vec![b'x']),
            Frame::Data(0xfffe, (0..MAX_DATA).map(|i| i as u8).collect()),
            Frame::Data(9, b"hello\n".to_vec()),
            Frame::Eof(5),
            Frame::Credit(5, 0x0102_0304),
            Frame::ByeAck(0x8000),
        ]
    }

    fn decode_chunked(bytes: &[u8], chunk: usize, extensions: bool) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::new();
        if extensions {
            d.accept_extensions();
        }
        let mut out = Vec::new();
        for mut piece in bytes.chunks(chunk) {
            while let Some(f) = d.next(&mut piece)? {
                out.push(f);
            }
            assert!(piece.is_empty());
        }
        assert_eq!(d.buffered(), 0, "a frame left incomplete");
        Ok(out)
    }

    #[test]
    fn wire_bytes_are_the_originals() {
        let cases: &[(Frame, &[u8])] = &[
            (Frame::Ping, b"?"),
            (Frame::Pong, b"!"),
            (Frame::Hello(0x0102), b"H\x01\x02"),
            (Frame::Connect(1), b"C\x00\x01"),
            (Frame::Bye(0xff00), b"B\xff\x00"),
            (Frame::Data(1, b"ab".to_vec()), b"D\x00\x01\x00\x02ab"),
            (Frame::Eof(2), b"E\x00\x02"),
            (Frame::Credit(2, 65536), b"W\x00\x02\x00\x01\x00\x00"),
            (Frame::ByeAck(3), b"A\x00\x03"),
        ];
        for (frame, bytes) in cases {
            let mut out = Vec::new();
            frame.encode(&mut out);
            assert_eq!(&out, bytes, "{frame:?}");
        }
    }

    #[test]
    fn every_frame_decodes_in_every_chunk_size() {
        let frames = all_frames();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes);
        }
        for chunk in 1..=64 {
            assert_eq!(decode_chunked(&bytes, chunk, true).expect("decodes"), frames, "chunk {chunk}");
        }
    }

    #[test]
    fn refused_input() {
        let cases: &[(&[u8], bool, FrameError)] = &[
            (b"x", true, FrameError::UnknownCommand(b'x')),
            (b"I", true, FrameError::UnknownCommand(b'I')),
            (b"\0", true, FrameError::UnknownCommand(0)),
            (b"?!H\x00\x01Z", true, FrameError::UnknownCommand(b'Z')),
            (b"D\x00\x01\x00\x00", true, FrameError::BadLength(0)),
            (b"D\x00\x01\x40\x01", true, FrameError::BadLength(16385)),
            (b"D\x00\x01\xff\xff", true, FrameError::BadLength(0xffff)),
            // The extensions, from a peer not known to be capable.
            (b"E\x00\x01", false, FrameError::UnknownCommand(b'E')),
            (b"W\x00\x01\x00\x00\x00\x01", false, FrameError::UnknownCommand(b'W')),
            (b"A\x00\x01", false, FrameError::UnknownCommand(b'A')),
        ];
        for (bytes, ext, want) in cases {
            for chunk in 1..=64 {
                assert_eq!(decode_chunked(bytes, chunk, *ext), Err(*want), "{bytes:?} chunk {chunk}");
            }
        }
    }

    #[test]
    fn an_error_is_final() {
        let mut d = Decoder::new();
        let mut input: &[u8] = b"x?";
        assert!(d.next(&mut input).is_err());
        let mut more: &[u8] = b"?";
        assert_eq!(d.next(&mut more), Err(FrameError::UnknownCommand(b'x')));
    }

    #[test]
    fn the_largest_payload_is_accepted_and_held_once() {
        let mut bytes = Vec::new();
        encode_data(&mut bytes, 1, &[7u8; MAX_DATA]);
        let mut d = Decoder::new();
        let mut input = &bytes[..bytes.len() - 1];
        assert_eq!(d.next(&mut input), Ok(None));
        assert_eq!(d.buffered(), 5 + MAX_DATA - 1);
    }
}
