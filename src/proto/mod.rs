//! STUN/TURN wire format (RFC 8489, RFC 8656): borrowed message views, typed attribute
//! decoders, an encoder that writes into a caller-owned buffer, MESSAGE-INTEGRITY(-SHA256),
//! FINGERPRINT, ChannelData and TCP stream framing.
//!
//! Nothing here allocates on the heap, touches a socket or reads a clock. Every parser
//! returns a small `Copy` error so that a flood of garbage costs nothing.

pub mod attr;
pub mod channel;
pub mod error_code;
pub mod framing;
pub mod integrity;
pub mod message;
pub mod proxy;
pub mod request;
pub mod writer;

pub use attr::{AttrError, AttrType, Attribute};
pub use channel::{ChannelData, ChannelNumber};
pub use error_code::ErrorCode;
pub use framing::{Frame, FrameError};
pub use message::{Class, Message, MessageType, Method, ParseError, TransactionId};
pub use request::{Change, DiscoveryAttributes, Family, Field, TurnAttributes};
pub use writer::{EncodeError, MessageWriter};

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Size of the STUN message header.
pub const HEADER_LEN: usize = 20;

/// Largest message we parse or build: the 16-bit length field plus the header.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + u16::MAX as usize;

/// Rounds `n` up to the next multiple of four (STUN and ChannelData padding).
#[inline]
pub const fn pad4(n: usize) -> usize {
    (n + 3) & !3
}
