//! Attribute types, the attribute iterator, and typed decoders for attribute values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error_code::ErrorCode;
use super::message::TransactionId;
use super::{pad4, MAGIC_COOKIE};

/// A STUN attribute type. Values below 0x8000 are comprehension-required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrType(pub u16);

impl AttrType {
    // RFC 8489
    pub const MAPPED_ADDRESS: AttrType = AttrType(0x0001);
    pub const USERNAME: AttrType = AttrType(0x0006);
    pub const MESSAGE_INTEGRITY: AttrType = AttrType(0x0008);
    pub const ERROR_CODE: AttrType = AttrType(0x0009);
    pub const UNKNOWN_ATTRIBUTES: AttrType = AttrType(0x000A);
    pub const REALM: AttrType = AttrType(0x0014);
    pub const NONCE: AttrType = AttrType(0x0015);
    pub const MESSAGE_INTEGRITY_SHA256: AttrType = AttrType(0x001C);
    pub const PASSWORD_ALGORITHM: AttrType = AttrType(0x001D);
    pub const USERHASH: AttrType = AttrType(0x001E);
    pub const XOR_MAPPED_ADDRESS: AttrType = AttrType(0x0020);
    pub const PASSWORD_ALGORITHMS: AttrType = AttrType(0x8002);
    pub const ALTERNATE_DOMAIN: AttrType = AttrType(0x8003);
    pub const SOFTWARE: AttrType = AttrType(0x8022);
    pub const ALTERNATE_SERVER: AttrType = AttrType(0x8023);
    pub const FINGERPRINT: AttrType = AttrType(0x8028);
    // RFC 8656 (TURN)
    pub const CHANNEL_NUMBER: AttrType = AttrType(0x000C);
    pub const LIFETIME: AttrType = AttrType(0x000D);
    pub const XOR_PEER_ADDRESS: AttrType = AttrType(0x0012);
    pub const DATA: AttrType = AttrType(0x0013);
    pub const XOR_RELAYED_ADDRESS: AttrType = AttrType(0x0016);
    pub const REQUESTED_ADDRESS_FAMILY: AttrType = AttrType(0x0017);
    pub const EVEN_PORT: AttrType = AttrType(0x0018);
    pub const REQUESTED_TRANSPORT: AttrType = AttrType(0x0019);
    pub const DONT_FRAGMENT: AttrType = AttrType(0x001A);
    pub const RESERVATION_TOKEN: AttrType = AttrType(0x0022);
    pub const ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
    pub const ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);
    pub const ICMP: AttrType = AttrType(0x8004);
    // RFC 6062 (TCP relays)
    pub const CONNECTION_ID: AttrType = AttrType(0x002A);
    // RFC 8445 (ICE), which browsers put in Binding requests
    pub const PRIORITY: AttrType = AttrType(0x0024);
    pub const USE_CANDIDATE: AttrType = AttrType(0x0025);
    pub const ICE_CONTROLLED: AttrType = AttrType(0x8029);
    pub const ICE_CONTROLLING: AttrType = AttrType(0x802A);
    // RFC 5780 (NAT behaviour discovery), understood only where `[nat_discovery]` is on
    pub const CHANGE_REQUEST: AttrType = AttrType(0x0003);
    pub const PADDING: AttrType = AttrType(0x0026);
    pub const RESPONSE_PORT: AttrType = AttrType(0x0027);
    pub const RESPONSE_ORIGIN: AttrType = AttrType(0x802B);
    pub const OTHER_ADDRESS: AttrType = AttrType(0x802C);

    /// Comprehension-required attributes (0x0000–0x7FFF) must be understood or the request
    /// is answered with 420.
    pub fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }
}

/// Why an attribute value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AttrError {
    /// The value has the wrong length for its type.
    #[error("attribute value has the wrong length")]
    BadLength,
    /// An address family other than 0x01 (IPv4) or 0x02 (IPv6).
    #[error("unknown address family")]
    BadFamily,
    /// A text value is not UTF-8 or is longer than its type allows.
    #[error("bad text value")]
    BadText,
    /// An ERROR-CODE with a class outside 3..=6 or a number above 99.
    #[error("bad error code")]
    BadErrorCode,
}

/// One attribute: its type and its value (without padding), borrowed from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub typ: AttrType,
    pub value: &'a [u8],
}

/// Iterator over the attributes of a message body that has already been validated by
/// [`super::Message::parse`]. It still checks bounds, and stops at the first inconsistency.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Attributes<'a> {
    pub(crate) fn new(body: &'a [u8]) -> Self {
        Attributes { rest: body }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Attribute<'a>> {
        let h = self.rest.get(..4)?;
        let typ = AttrType(u16::from_be_bytes([h[0], h[1]]));
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let value = self.rest.get(4..4 + len)?;
        self.rest = self.rest.get(4 + pad4(len)..).unwrap_or(&[]);
        Some(Attribute { typ, value })
    }
}

const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Decodes a MAPPED-ADDRESS-style value (family, port, address).
pub fn decode_address(value: &[u8]) -> Result<SocketAddr, AttrError> {
    match (value.get(1), value.len()) {
        (Some(&FAMILY_V4), 8) => {
            let port = u16::from_be_bytes([value[2], value[3]]);
            let ip = Ipv4Addr::new(value[4], value[5], value[6], value[7]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (Some(&FAMILY_V6), 20) => {
            let port = u16::from_be_bytes([value[2], value[3]]);
            let mut o = [0u8; 16];
            o.copy_from_slice(&value[4..20]);
            Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        (Some(&FAMILY_V4) | Some(&FAMILY_V6), _) => Err(AttrError::BadLength),
        (Some(_), _) => Err(AttrError::BadFamily),
        (None, _) => Err(AttrError::BadLength),
    }
}

/// Decodes an XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS or XOR-RELAYED-ADDRESS value.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, AttrError> {
    let plain = decode_address(value)?;
    Ok(xor_address(plain, tid))
}

/// XORs an address with the magic cookie and transaction ID (the operation is its own
/// inverse, so it both encodes and decodes).
pub fn xor_address(addr: SocketAddr, tid: &TransactionId) -> SocketAddr {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            let x = [o[0] ^ cookie[0], o[1] ^ cookie[1], o[2] ^ cookie[2], o[3] ^ cookie[3]];
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(x)), port)
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&cookie);
            key[4..].copy_from_slice(&tid.0);
            for (b, k) in o.iter_mut().zip(key) {
                *b ^= k;
            }
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)
        }
    }
}

/// Decodes an ERROR-CODE value into the code and its reason phrase.
pub fn decode_error_code(value: &[u8]) -> Result<(ErrorCode, &str), AttrError> {
    if value.len() < 4 {
        return Err(AttrError::BadLength);
    }
    let class = u16::from(value[2] & 0x07);
    let number = u16::from(value[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(AttrError::BadErrorCode);
    }
    let reason = std::str::from_utf8(&value[4..]).map_err(|_| AttrError::BadText)?;
    Ok((ErrorCode(class * 100 + number), reason))
}

/// Decodes a UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE) of at most `max` bytes.
pub fn decode_text(value: &[u8], max: usize) -> Result<&str, AttrError> {
    if value.len() > max {
        return Err(AttrError::BadText);
    }
    std::str::from_utf8(value).map_err(|_| AttrError::BadText)
}

/// Decodes a 32-bit value (LIFETIME, PRIORITY).
pub fn decode_u32(value: &[u8]) -> Result<u32, AttrError> {
    let b: [u8; 4] = value.try_into().map_err(|_| AttrError::BadLength)?;
    Ok(u32::from_be_bytes(b))
}

/// Decodes an UNKNOWN-ATTRIBUTES value into its list of types.
pub fn decode_unknown_attributes(value: &[u8]) -> Result<impl Iterator<Item = AttrType> + '_, AttrError> {
    if !value.len().is_multiple_of(2) {
        return Err(AttrError::BadLength);
    }
    Ok(value
        .chunks_exact(2)
        .map(|c| AttrType(u16::from_be_bytes([c[0], c[1]]))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_is_an_involution_for_both_families() {
        let tid = TransactionId([7; 12]);
        for a in ["192.0.2.1:32853", "[2001:db8::1]:3478"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_ne!(xor_address(a, &tid), a);
            assert_eq!(xor_address(xor_address(a, &tid), &tid), a);
        }
    }

    #[test]
    fn address_decoder_rejects_bad_family_and_length() {
        assert_eq!(decode_address(&[0, 3, 0, 0, 1, 2, 3, 4]), Err(AttrError::BadFamily));
        assert_eq!(decode_address(&[0, 1, 0, 0, 1, 2, 3]), Err(AttrError::BadLength));
        assert_eq!(decode_address(&[0, 2, 0, 0, 1, 2, 3, 4]), Err(AttrError::BadLength));
        assert_eq!(decode_address(&[]), Err(AttrError::BadLength));
    }

    #[test]
    fn error_code_decoder_checks_class_and_number() {
        let (c, r) = decode_error_code(&[0, 0, 4, 20, b'x']).unwrap();
        assert_eq!((c, r), (ErrorCode(420), "x"));
        assert_eq!(decode_error_code(&[0, 0, 7, 0]), Err(AttrError::BadErrorCode));
        assert_eq!(decode_error_code(&[0, 0, 4, 100]), Err(AttrError::BadErrorCode));
        assert_eq!(decode_error_code(&[0, 0, 4]), Err(AttrError::BadLength));
    }
}
