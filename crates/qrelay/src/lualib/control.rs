//! `control_client`: a client for the beng-proxy control protocol.
//!
//! The wire format (CM4all beng-proxy's "Remote Control Protocol" and
//! libcommon's `net/control/Protocol.hxx`): a datagram is a 32-bit magic
//! number, then one or more commands; a command is a header of two 16-bit
//! integers, the payload length and the command number, then the payload,
//! padded with null bytes to a multiple of 4 bytes. All integers are
//! big-endian. The default port is 5478.
//!
//! [`Builder`] is the sans-IO encoder; the Lua objects around it open the
//! socket and send one datagram per `send`.

use mlua::{AnyUserData, Lua, MultiValue, UserData, Value};
use nix::sys::socket::SockType;

use super::{Counted, address_arg, failure, send_now, targets};
use crate::script::Module;

/// The magic number that starts every control datagram.
pub const MAGIC: u32 = 0x6304_6101;
/// The protocol's default port.
pub const DEFAULT_PORT: u16 = 5478;
/// The largest datagram a builder makes: the largest UDP payload over
/// IPv4 (the builder's memory is outside the Lua state's limit, so it is
/// bounded here).
pub const MAX_DATAGRAM: usize = 65507;

/// The command numbers the builder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Command {
    /// Fade out child processes with the tag.
    FadeChildren = 8,
    /// Flush the filter cache items with the tag.
    FlushFilterCache = 12,
    /// Discard the session with the id.
    DiscardSession = 14,
    /// Flush the HTTP cache items with the tag.
    FlushHttpCache = 15,
    /// Terminate child processes with the tag.
    TerminateChildren = 16,
    /// Disconnect the account's database connections.
    DisconnectDatabase = 20,
    /// Reset the account's limiter state.
    ResetLimiter = 22,
    /// Reject a client address.
    RejectClient = 23,
    /// Slow a client address down.
    TarpitClient = 24,
    /// Cancel a job: partition name, a null byte, the job id.
    CancelJob = 25,
}

/// Why a command cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The payload does not fit the 16-bit length.
    #[error("control payload too long ({0} bytes, at most 65535)")]
    TooLong(usize),
    /// The datagram would pass [`MAX_DATAGRAM`].
    #[error("control datagram too large (at most {MAX_DATAGRAM} bytes)")]
    DatagramTooLarge,
}

/// One control datagram under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builder {
    bytes: Vec<u8>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// A datagram with the magic and no command yet.
    pub fn new() -> Builder {
        Builder { bytes: MAGIC.to_be_bytes().to_vec() }
    }

    /// Appends one command with `payload`, padded to 4 bytes.
    pub fn add(&mut self, command: Command, payload: &[u8]) -> Result<(), BuildError> {
        let length = u16::try_from(payload.len()).map_err(|_| BuildError::TooLong(payload.len()))?;
        let padding = (4 - payload.len() % 4) % 4;
        if self.bytes.len() + 4 + payload.len() + padding > MAX_DATAGRAM {
            return Err(BuildError::DatagramTooLarge);
        }
        self.bytes.extend_from_slice(&length.to_be_bytes());
        self.bytes.extend_from_slice(&(command as u16).to_be_bytes());
        self.bytes.extend_from_slice(payload);
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
        Ok(())
    }

    /// `cancel_job`: the partition name, a null byte, the job id.
    pub fn cancel_job(&mut self, partition: &[u8], job: &[u8]) -> Result<(), BuildError> {
        let mut payload = Vec::with_capacity(partition.len() + 1 + job.len());
        payload.extend_from_slice(partition);
        payload.push(0);
        payload.extend_from_slice(job);
        self.add(Command::CancelJob, &payload)
    }

    /// The datagram.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The Lua builder object.
#[derive(Debug, Clone, Default)]
struct LuaBuilder(Builder);

/// The methods that take one string per command (several strings add
/// several commands, as the original does).
const SIMPLE: &[(&str, Command)] = &[
    ("discard_session", Command::DiscardSession),
    ("disconnect_database", Command::DisconnectDatabase),
    ("fade_children", Command::FadeChildren),
    ("flush_filter_cache", Command::FlushFilterCache),
    ("flush_http_cache", Command::FlushHttpCache),
    ("reject_client", Command::RejectClient),
    ("reset_limiter", Command::ResetLimiter),
    ("tarpit_client", Command::TarpitClient),
    ("terminate_children", Command::TerminateChildren),
];

fn string_arg(v: &Value, method: &str) -> mlua::Result<Vec<u8>> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(n) => Ok(n.to_string().into_bytes()),
        _ => Err(mlua::Error::runtime(format!("{method}: expected a string"))),
    }
}

impl UserData for LuaBuilder {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        for &(name, command) in SIMPLE {
            methods.add_function(name, move |_, (this, args): (AnyUserData, mlua::Variadic<Value>)| {
                if args.is_empty() {
                    return Err(mlua::Error::runtime(format!("{name}: not enough parameters")));
                }
                {
                    let mut b = this.borrow_mut::<LuaBuilder>()?;
                    for a in args.iter() {
                        b.0.add(command, &string_arg(a, name)?).map_err(mlua::Error::runtime)?;
                    }
                }
                Ok(this)
            });
        }
        methods.add_function("cancel_job", |_, (this, partition, job): (AnyUserData, Value, Value)| {
            let (partition, job) = (string_arg(&partition, "cancel_job")?, string_arg(&job, "cancel_job")?);
            this.borrow_mut::<LuaBuilder>()?.0.cancel_job(&partition, &job).map_err(mlua::Error::runtime)?;
            Ok(this)
        });
    }
}

/// A control client: a datagram socket connected to the server.
#[derive(Debug)]
struct ControlClient {
    socket: Counted,
}

impl UserData for ControlClient {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("build", |_, _, ()| Ok(LuaBuilder::default()));
        methods.add_method("send", |lua, this, builder: Value| -> mlua::Result<MultiValue> {
            let bytes = match &builder {
                Value::UserData(ud) if ud.is::<LuaBuilder>() => ud.borrow::<LuaBuilder>()?.0.bytes().to_vec(),
                _ => return failure(lua, "send: expected a builder from build()"),
            };
            match send_now(self_fd(this), &bytes) {
                Ok(_) => lua.pack_multi(true),
                Err(e) => failure(lua, e),
            }
        });
    }
}

fn self_fd(c: &ControlClient) -> &std::os::fd::OwnedFd {
    c.socket.fd()
}

/// `control_client:new(ADDRESS)` (or `control_client.new(ADDRESS)`).
fn new_client(lua: &Lua, args: MultiValue) -> mlua::Result<MultiValue> {
    let mut args: Vec<Value> = args.into_iter().collect();
    if matches!(args.first(), Some(Value::Table(_))) {
        args.remove(0);
    }
    let Some(address) = args.first().and_then(address_arg) else {
        return failure(lua, "control_client:new: ADDRESS must be a string");
    };
    let targets = match targets(&address, DEFAULT_PORT) {
        Ok(t) => t,
        Err(e) => return failure(lua, e),
    };
    match super::connect(lua, &targets, SockType::Datagram) {
        Ok(c) => lua.pack_multi(ControlClient { socket: c }),
        Err(e) => failure(lua, e),
    }
}

/// The module.
pub struct ControlLibrary;

impl Module for ControlLibrary {
    fn install(&self, lua: &Lua) -> mlua::Result<()> {
        let t = lua.create_table()?;
        t.set("new", lua.create_function(new_client)?)?;
        lua.globals().set("control_client", t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_padded_to_four_bytes() {
        let mut b = Builder::new();
        assert_eq!(b.bytes(), [0x63, 0x04, 0x61, 0x01]);
        b.add(Command::FadeChildren, b"").expect("add");
        b.add(Command::FlushHttpCache, b"a").expect("add");
        b.add(Command::TerminateChildren, b"abcd").expect("add");
        b.add(Command::ResetLimiter, b"abcde").expect("add");
        let want: &[u8] = b"\x63\x04\x61\x01\
            \x00\x00\x00\x08\
            \x00\x01\x00\x0fa\x00\x00\x00\
            \x00\x04\x00\x10abcd\
            \x00\x05\x00\x16abcde\x00\x00\x00";
        assert_eq!(b.bytes(), want);
        assert_eq!(b.bytes().len() % 4, 0);
    }

    #[test]
    fn cancel_job_separates_with_a_null_byte() {
        let mut b = Builder::new();
        b.cancel_job(b"part", b"42").expect("add");
        assert_eq!(&b.bytes()[4..], b"\x00\x07\x00\x19part\x0042\x00");
    }

    #[test]
    fn oversize_payloads_and_datagrams_are_refused() {
        let mut b = Builder::new();
        assert_eq!(b.add(Command::FadeChildren, &vec![b'x'; 65536]), Err(BuildError::TooLong(65536)));
        assert_eq!(b.add(Command::FadeChildren, &vec![b'x'; 65535]), Err(BuildError::DatagramTooLarge));
        // Up to the largest UDP payload (a multiple of 4 below it), and
        // not one command more.
        assert!(b.add(Command::FadeChildren, &vec![b'x'; MAX_DATAGRAM - 11]).is_ok());
        assert_eq!(b.bytes().len(), MAX_DATAGRAM - 3);
        assert_eq!(b.add(Command::FadeChildren, b""), Err(BuildError::DatagramTooLarge));
        let mut b = Builder::new();
        for _ in 0..(MAX_DATAGRAM - 4) / 8 {
            b.add(Command::FadeChildren, b"tag").expect("room");
        }
        assert_eq!(b.add(Command::FadeChildren, b"tag"), Err(BuildError::DatagramTooLarge));
        assert!(b.bytes().len() <= MAX_DATAGRAM);
    }
}
