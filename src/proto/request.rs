//! A typed view of a TURN request's attributes, decoded in one pass (str0m's `Attributes<'a>`
//! is the model). Handlers read fields, never attribute bytes. Each field records whether its
//! attribute was absent, malformed or well-formed, so a handler still answers each case in
//! the order the RFC gives, after authentication.

use std::net::SocketAddr;

use arrayvec::ArrayVec;

use super::attr::{decode_text, decode_u32, decode_xor_address};
use super::{AttrType, Message};

/// USERNAME is limited to 513 bytes, REALM and NONCE to 763 (RFC 8489 §14).
pub const MAX_USERNAME: usize = 513;
pub const MAX_REALM: usize = 763;
/// XOR-PEER-ADDRESS attributes one CreatePermission may carry.
pub const MAX_PEERS: usize = 16;

/// One attribute of a request: the first of its type that counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    /// Present, but its value does not decode.
    Malformed,
    Present(T),
}

impl<T> Field<T> {
    /// True when the attribute is there, well-formed or not.
    pub fn is_given(&self) -> bool {
        !matches!(self, Field::Absent)
    }

    /// The value, if present and well-formed.
    pub fn ok(self) -> Option<T> {
        match self {
            Field::Present(v) => Some(v),
            _ => None,
        }
    }

    fn set(&mut self, decoded: Option<T>) {
        if let Field::Absent = self {
            *self = decoded.map_or(Field::Malformed, Field::Present);
        }
    }
}

/// Address families as REQUESTED-ADDRESS-FAMILY names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Index into per-family arrays: 0 for IPv4, 1 for IPv6.
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// Decodes a 4-byte family attribute (RFC 8656 §18.6 and §18.12).
fn family(value: &[u8]) -> Option<Family> {
    match value {
        [0x01, _, _, _] => Some(Family::V4),
        [0x02, _, _, _] => Some(Family::V6),
        _ => None,
    }
}

/// Why the XOR-PEER-ADDRESS list stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeersError {
    /// The next one did not decode.
    Malformed,
    /// There were more than [`MAX_PEERS`].
    TooMany,
}

/// The attributes of a TURN request or indication, decoded.
#[derive(Debug, Clone, Default)]
pub struct TurnAttributes<'a> {
    pub username: Field<&'a str>,
    pub realm: Field<&'a str>,
    pub nonce: Field<&'a [u8]>,
    pub password_algorithms: Field<&'a [u8]>,
    pub password_algorithm: Field<u16>,
    pub lifetime: Field<u32>,
    /// The protocol number of REQUESTED-TRANSPORT.
    pub requested_transport: Field<u8>,
    pub requested_family: Field<Family>,
    pub additional_family: Field<Family>,
    /// EVEN-PORT, with its R (reserve the next port) bit.
    pub even_port: Field<bool>,
    /// RESERVATION-TOKEN: eight bytes (RFC 8656 §18.9).
    pub reservation_token: Field<[u8; 8]>,
    /// DONT-FRAGMENT, which has no value (RFC 8656 §18.8).
    pub dont_fragment: bool,
    pub channel_number: Field<u16>,
    /// CONNECTION-ID (RFC 6062 §6.2.1): four bytes.
    pub connection_id: Field<u32>,
    /// XOR-PEER-ADDRESS values in order, as far as they decoded.
    pub peers: ArrayVec<SocketAddr, MAX_PEERS>,
    /// What ended the list early, if anything did: it comes right after the last decoded one.
    pub peers_error: Option<PeersError>,
    pub data: Field<&'a [u8]>,
}

impl<'a> TurnAttributes<'a> {
    /// Walks the attributes of `msg` once.
    pub fn decode(msg: &Message<'a>) -> Self {
        let tid = msg.transaction_id();
        let mut v = TurnAttributes::default();
        for a in msg.attributes() {
            let value = a.value;
            match a.typ {
                AttrType::USERNAME => v.username.set(decode_text(value, MAX_USERNAME).ok()),
                AttrType::REALM => v.realm.set(decode_text(value, MAX_REALM).ok()),
                AttrType::NONCE => v.nonce.set(Some(value)),
                AttrType::PASSWORD_ALGORITHMS => v.password_algorithms.set(Some(value)),
                AttrType::PASSWORD_ALGORITHM => v
                    .password_algorithm
                    .set(value.get(..4).map(|b| u16::from_be_bytes([b[0], b[1]]))),
                AttrType::LIFETIME => v.lifetime.set(decode_u32(value).ok()),
                AttrType::REQUESTED_TRANSPORT => v
                    .requested_transport
                    .set(matches!(value, [_, _, _, _]).then(|| value[0])),
                AttrType::REQUESTED_ADDRESS_FAMILY => v.requested_family.set(family(value)),
                AttrType::ADDITIONAL_ADDRESS_FAMILY => v.additional_family.set(family(value)),
                AttrType::EVEN_PORT => v.even_port.set(value.first().map(|b| b & 0x80 != 0)),
                AttrType::RESERVATION_TOKEN => v.reservation_token.set(value.try_into().ok()),
                AttrType::DONT_FRAGMENT => v.dont_fragment = true,
                AttrType::CHANNEL_NUMBER => v
                    .channel_number
                    .set(matches!(value, [_, _, _, _]).then(|| u16::from_be_bytes([value[0], value[1]]))),
                AttrType::DATA => v.data.set(Some(value)),
                AttrType::CONNECTION_ID => v.connection_id.set(decode_u32(value).ok()),
                AttrType::XOR_PEER_ADDRESS if v.peers_error.is_none() => match decode_xor_address(value, &tid) {
                    Err(_) => v.peers_error = Some(PeersError::Malformed),
                    Ok(peer) => {
                        if v.peers.try_push(peer).is_err() {
                            v.peers_error = Some(PeersError::TooMany);
                        }
                    }
                },
                _ => {}
            }
        }
        v
    }

    /// The first XOR-PEER-ADDRESS, if it decoded.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peers.first().copied()
    }
}

/// CHANGE-REQUEST's two flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    pub ip: bool,
    pub port: bool,
}

/// The RFC 5780 attributes of a Binding request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiscoveryAttributes {
    pub change: Field<Change>,
    /// RESPONSE-PORT: answer to this port of the requester's own IP.
    pub response_port: Field<u16>,
    /// The length of PADDING's value.
    pub padding: Field<usize>,
}

impl DiscoveryAttributes {
    pub fn decode(msg: &Message<'_>) -> Self {
        let mut v = DiscoveryAttributes::default();
        for a in msg.attributes() {
            match (a.typ, a.value) {
                (AttrType::CHANGE_REQUEST, &[_, _, _, flags]) => v.change.set(Some(Change {
                    ip: flags & 0x04 != 0,
                    port: flags & 0x02 != 0,
                })),
                (AttrType::CHANGE_REQUEST, _) => v.change.set(None),
                (AttrType::RESPONSE_PORT, &[hi, lo, _, _]) => v.response_port.set(Some(u16::from_be_bytes([hi, lo]))),
                (AttrType::RESPONSE_PORT, _) => v.response_port.set(None),
                (AttrType::PADDING, value) => v.padding.set(Some(value.len())),
                _ => {}
            }
        }
        v
    }

    /// True when any RFC 5780 attribute is there.
    pub fn any(&self) -> bool {
        self.change.is_given() || self.response_port.is_given() || self.padding.is_given()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Class, MessageType, MessageWriter, Method, TransactionId};

    fn request(body: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let typ = MessageType::new(Method::ALLOCATE, Class::Request);
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([4; 12])).unwrap();
        body(&mut w);
        let n = w.finish();
        buf[..n].to_vec()
    }

    #[test]
    fn each_field_is_absent_malformed_or_present_and_the_first_one_counts() {
        let bytes = request(|w| {
            w.attr_u32(AttrType::LIFETIME, 900).unwrap();
            w.attr_u32(AttrType::LIFETIME, 5).unwrap();
            w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0]).unwrap();
            w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[0x02, 0, 0, 0]).unwrap();
            w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[0x02]).unwrap();
            w.attr(AttrType::EVEN_PORT, &[0x80]).unwrap();
        });
        let msg = Message::parse(&bytes).unwrap();
        let v = TurnAttributes::decode(&msg);
        assert_eq!(v.lifetime, Field::Present(900));
        assert_eq!(v.requested_transport, Field::Malformed, "three bytes");
        assert_eq!(v.requested_family, Field::Present(Family::V6));
        assert_eq!(v.additional_family, Field::Malformed, "a family is four bytes");
        assert_eq!(v.even_port, Field::Present(true));
        assert_eq!(v.channel_number, Field::Absent);
        assert!(!v.username.is_given());
    }

    #[test]
    fn discovery_attributes_decode_flags_port_and_padding_length() {
        let typ = MessageType::new(Method::BINDING, Class::Request);
        let mut buf = [0u8; 256];
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([1; 12])).unwrap();
        w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0x06]).unwrap();
        w.attr(AttrType::RESPONSE_PORT, &[0x12, 0x34]).unwrap();
        w.attr(AttrType::PADDING, &[0; 37]).unwrap();
        let n = w.finish();
        let v = DiscoveryAttributes::decode(&Message::parse(&buf[..n]).unwrap());
        assert_eq!(v.change, Field::Present(Change { ip: true, port: true }));
        assert_eq!(v.response_port, Field::Malformed, "RESPONSE-PORT is four bytes");
        assert_eq!(v.padding, Field::Present(37));
        assert!(v.any());
        let mut buf = [0u8; 64];
        let mut w = MessageWriter::new(&mut buf, typ, TransactionId([1; 12])).unwrap();
        w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0x02]).unwrap();
        w.attr(AttrType::RESPONSE_PORT, &[0x12, 0x34, 0, 0]).unwrap();
        let n = w.finish();
        let v = DiscoveryAttributes::decode(&Message::parse(&buf[..n]).unwrap());
        assert_eq!(v.change, Field::Present(Change { ip: false, port: true }));
        assert_eq!(v.response_port, Field::Present(0x1234));
        assert_eq!(v.padding, Field::Absent);
    }

    #[test]
    fn peers_decode_in_order_up_to_the_first_bad_one() {
        let a: SocketAddr = "198.18.0.1:1000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:2000".parse().unwrap();
        let bytes = request(|w| {
            w.xor_address(AttrType::XOR_PEER_ADDRESS, a).unwrap();
            w.xor_address(AttrType::XOR_PEER_ADDRESS, b).unwrap();
            w.attr(AttrType::XOR_PEER_ADDRESS, &[0, 1, 2]).unwrap();
            w.xor_address(AttrType::XOR_PEER_ADDRESS, a).unwrap();
        });
        let v = TurnAttributes::decode(&Message::parse(&bytes).unwrap());
        assert_eq!(v.peers.as_slice(), &[a, b]);
        assert_eq!(v.peers_error, Some(PeersError::Malformed));
        assert_eq!(v.peer(), Some(a));
    }
}
