//! The remusock 2.0 protocol without I/O: what `remusockd` speaks over
//! its TCP (or TLS, or UCSPI) link, and what the tests feed directly.
//!
//! * [`frame`]: the frames, their encoder and an incremental decoder that
//!   enforces every bound (DATA of 1 to 16384 bytes, known command bytes).
//! * [`tunnel`]: one link: the IDENT handshake, the channel table, the
//!   timers as inputs (50 s PING, 60 s drop, the handshake timeout), and
//!   the capability probe that turns on the frames the original does not
//!   know (half-close, credit windows, BYE acknowledgement).
//!
//! The wire format, big-endian throughout:
//!
//! | byte | frame | body | who |
//! |---|---|---|---|
//! | `I` | IDENT | role `S` or `C` | both, first |
//! | `?` / `!` | PING / PONG | – | both |
//! | `H` | HELLO | id:u16 | socket server |
//! | `C` | CONNECT | id:u16 | socket client |
//! | `B` | BYE | id:u16 | both |
//! | `D` | DATA | id:u16 len:u16 payload | both |
//! | `E` | EOF (half-close) | id:u16 | both, capable links only |
//! | `W` | CREDIT | id:u16 bytes:u32 | both, capable links only |
//! | `A` | BYE acknowledged | id:u16 | both, capable links only |
#![forbid(unsafe_code)]

pub mod frame;
pub mod tunnel;

pub use frame::{Decoder, Frame, FrameError, MAX_DATA};
pub use tunnel::{Capability, ChannelId, Event, Role, Tunnel, TunnelError};
