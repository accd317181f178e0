//! The protocol engine: decides what to answer to each packet a client sends. It owns no
//! sockets and reads no clock; every entry point takes `now` and the caller's buffers.
//!
//! Call order (per shard): for each packet that arrives on a listener, call
//! [`Engine::handle_client`] with the 5-tuple it arrived on; if it returns a length, send
//! that many bytes of `out` back on the same 5-tuple.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{DropReason, Metrics};
use crate::proto::{AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method, ParseError};

/// The client-side transport a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The 5-tuple a client packet arrived on: transport, client address, server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// What the engine needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Value of the SOFTWARE attribute; `None` omits it, keeping responses small.
    pub software: Option<String>,
}

/// Comprehension-required attributes this server understands in a request. Anything else
/// below 0x8000 gets 420 (RFC 8489 §6.3.1). CHANGE-REQUEST, RESPONSE-PORT and PADDING (RFC
/// 5780) are deliberately absent: a server that does not implement them must say so.
const KNOWN_REQUIRED: &[AttrType] = &[
    AttrType::MAPPED_ADDRESS,
    AttrType::USERNAME,
    AttrType::MESSAGE_INTEGRITY,
    AttrType::ERROR_CODE,
    AttrType::UNKNOWN_ATTRIBUTES,
    AttrType::REALM,
    AttrType::NONCE,
    AttrType::MESSAGE_INTEGRITY_SHA256,
    AttrType::PASSWORD_ALGORITHM,
    AttrType::USERHASH,
    AttrType::XOR_MAPPED_ADDRESS,
    AttrType::CHANNEL_NUMBER,
    AttrType::LIFETIME,
    AttrType::XOR_PEER_ADDRESS,
    AttrType::DATA,
    AttrType::XOR_RELAYED_ADDRESS,
    AttrType::REQUESTED_ADDRESS_FAMILY,
    AttrType::EVEN_PORT,
    AttrType::REQUESTED_TRANSPORT,
    AttrType::DONT_FRAGMENT,
    AttrType::RESERVATION_TOKEN,
    AttrType::PRIORITY,
    AttrType::USE_CANDIDATE,
];

/// At most this many unknown attributes are listed in a 420, bounding the response size.
const MAX_UNKNOWN_LISTED: usize = 8;

/// The engine of one shard.
pub struct Engine {
    config: EngineConfig,
    metrics: Arc<Metrics>,
}

impl Engine {
    pub fn new(config: EngineConfig, metrics: Arc<Metrics>) -> Self {
        Engine { config, metrics }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Handles one packet a client sent to a listener: one UDP datagram, or one frame cut
    /// from a TCP stream. Writes the answer into `out` and returns its length, or returns
    /// `None` when the packet is dropped (malformed input is never answered, only counted).
    pub fn handle_client(&mut self, _now: Instant, tuple: &FiveTuple, packet: &[u8], out: &mut [u8]) -> Option<usize> {
        if packet.first().is_some_and(|b| b & 0xC0 == 0x40) {
            // ChannelData: no channel can be bound until the relay exists.
            self.metrics.dropped(DropReason::channel_unbound);
            return None;
        }
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.dropped(match e {
                    ParseError::FingerprintMismatch => DropReason::bad_fingerprint,
                    _ => DropReason::malformed,
                });
                return None;
            }
        };
        if msg.class() != Class::Request {
            self.metrics.dropped(DropReason::unexpected_class);
            return None;
        }

        let mut unknown = [AttrType(0); MAX_UNKNOWN_LISTED];
        let mut n_unknown = 0;
        for a in msg.attributes() {
            if a.typ.is_comprehension_required()
                && !KNOWN_REQUIRED.contains(&a.typ)
                && n_unknown < MAX_UNKNOWN_LISTED
                && !unknown[..n_unknown].contains(&a.typ)
            {
                unknown[n_unknown] = a.typ;
                n_unknown += 1;
            }
        }
        if n_unknown > 0 {
            return self.error(&msg, ErrorCode::UNKNOWN_ATTRIBUTE, &unknown[..n_unknown], out);
        }

        match msg.method() {
            Method::BINDING => self.binding(&msg, tuple, out),
            _ => self.error(&msg, ErrorCode::BAD_REQUEST, &[], out),
        }
    }

    fn binding(&mut self, msg: &Message<'_>, tuple: &FiveTuple, out: &mut [u8]) -> Option<usize> {
        let typ = MessageType::new(Method::BINDING, Class::Success);
        let len = self.respond(msg, typ, out, |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client)
        })?;
        self.metrics.binding_request(tuple.transport);
        Some(len)
    }

    fn error(&mut self, msg: &Message<'_>, code: ErrorCode, unknown: &[AttrType], out: &mut [u8]) -> Option<usize> {
        let typ = MessageType::new(msg.method(), Class::Error);
        self.respond(msg, typ, out, |w| {
            w.error_code(code)?;
            if !unknown.is_empty() {
                w.unknown_attributes(unknown)?;
            }
            Ok(())
        })
    }

    /// Writes a response to `msg`: the body from `body`, then SOFTWARE when configured, then
    /// FINGERPRINT when the request carried one.
    fn respond(
        &self,
        msg: &Message<'_>,
        typ: MessageType,
        out: &mut [u8],
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), crate::proto::EncodeError>,
    ) -> Option<usize> {
        let mut w = MessageWriter::new(out, typ, msg.transaction_id()).ok()?;
        body(&mut w).ok()?;
        if let Some(s) = &self.config.software {
            w.attr(AttrType::SOFTWARE, s.as_bytes()).ok()?;
        }
        if msg.has_fingerprint() {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }
}
