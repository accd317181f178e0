//! The message header and a zero-copy view over a whole STUN message.

use super::attr::{AttrType, Attribute, Attributes};
use super::integrity;
use super::{pad4, HEADER_LEN, MAGIC_COOKIE};

/// Why a datagram or frame is not a well-formed STUN message. Small and `Copy`: a flood of
/// garbage must cost nothing to reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer than 20 bytes.
    #[error("shorter than a STUN header")]
    TooShort,
    /// One of the two most significant bits of the message type is set.
    #[error("not a STUN message (leading bits)")]
    NotStun,
    /// Bytes 4..8 are not 0x2112A442 (RFC 3489 messages are refused too).
    #[error("bad magic cookie")]
    BadMagicCookie,
    /// The length field is not a multiple of four.
    #[error("message length not a multiple of 4")]
    UnalignedLength,
    /// The length field disagrees with the number of bytes received.
    #[error("message length does not match the packet")]
    LengthMismatch,
    /// An attribute header or value runs past the end of the message.
    #[error("truncated attribute")]
    TruncatedAttribute,
    /// An attribute follows FINGERPRINT, or FINGERPRINT has the wrong size.
    #[error("misplaced or malformed FINGERPRINT")]
    BadFingerprintPlacement,
    /// The FINGERPRINT CRC does not match.
    #[error("FINGERPRINT mismatch")]
    FingerprintMismatch,
}

/// The four STUN message classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(b: u16) -> Class {
        match b & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// A 12-bit STUN method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    // RFC 6062 (TCP relays)
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// Method and class, as packed into the first 16 bits of the header (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType {
    pub method: Method,
    pub class: Class,
}

impl MessageType {
    pub const fn new(method: Method, class: Class) -> Self {
        MessageType { method, class }
    }

    /// Encodes to the on-wire 14-bit value: M11..M7 C1 M6..M4 C0 M3..M0.
    pub fn to_u16(self) -> u16 {
        let m = self.method.0 & 0x0FFF;
        let c = self.class.bits();
        (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
    }

    /// Decodes the on-wire value; the two leading bits must already be known to be zero.
    pub fn from_u16(v: u16) -> Self {
        let method = (v & 0x000F) | ((v >> 1) & 0x0070) | ((v >> 2) & 0x0F80);
        let class = ((v >> 4) & 1) | ((v >> 7) & 2);
        MessageType {
            method: Method(method),
            class: Class::from_bits(class),
        }
    }
}

/// The 96-bit transaction ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// A parsed STUN message that borrows the packet it came from.
///
/// Parsing checks the header, walks every attribute once, and verifies FINGERPRINT when it is
/// present. It records where MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 sit so that they
/// can be verified later, once the key is known. Attributes that follow an integrity
/// attribute (other than the integrity attributes and FINGERPRINT) are not visible through
/// [`Message::attributes`], as RFC 8489 §14.5 requires.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
    typ: MessageType,
    tid: TransactionId,
    /// End of the attributes that count: the first integrity attribute or FINGERPRINT.
    attrs_end: usize,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

impl<'a> Message<'a> {
    /// Parses a message that must fill `buf` exactly (one UDP datagram or one TCP frame).
    pub fn parse(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = buf.get(..HEADER_LEN).ok_or(ParseError::TooShort)?;
        let raw_type = u16::from_be_bytes([header[0], header[1]]);
        if raw_type & 0xC000 != 0 {
            return Err(ParseError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
            return Err(ParseError::BadMagicCookie);
        }
        if len % 4 != 0 {
            return Err(ParseError::UnalignedLength);
        }
        if HEADER_LEN + len != buf.len() {
            return Err(ParseError::LengthMismatch);
        }
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&header[8..20]);

        let mut msg = Message {
            buf,
            typ: MessageType::from_u16(raw_type),
            tid: TransactionId(tid),
            attrs_end: buf.len(),
            integrity: None,
            integrity_sha256: None,
            fingerprint: None,
        };

        let mut off = HEADER_LEN;
        let mut counted_end: Option<usize> = None;
        while off < buf.len() {
            let h = buf.get(off..off + 4).ok_or(ParseError::TruncatedAttribute)?;
            if msg.fingerprint.is_some() {
                return Err(ParseError::BadFingerprintPlacement);
            }
            let typ = u16::from_be_bytes([h[0], h[1]]);
            let vlen = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let next = off + 4 + pad4(vlen);
            if next > buf.len() {
                return Err(ParseError::TruncatedAttribute);
            }
            match AttrType(typ) {
                AttrType::MESSAGE_INTEGRITY if msg.integrity.is_none() && counted_end.is_none() => {
                    counted_end = Some(off);
                    msg.integrity = Some(off);
                }
                AttrType::MESSAGE_INTEGRITY_SHA256 if msg.integrity_sha256.is_none() => {
                    counted_end.get_or_insert(off);
                    msg.integrity_sha256 = Some(off);
                }
                AttrType::FINGERPRINT => {
                    if vlen != 4 {
                        return Err(ParseError::BadFingerprintPlacement);
                    }
                    counted_end.get_or_insert(off);
                    msg.fingerprint = Some(off);
                }
                _ => {}
            }
            off = next;
        }
        msg.attrs_end = counted_end.unwrap_or(buf.len());

        if let Some(fp) = msg.fingerprint {
            let got = buf.get(fp + 4..fp + 8).ok_or(ParseError::TruncatedAttribute)?;
            let want = integrity::fingerprint(&buf[..fp]);
            if got != want.to_be_bytes() {
                return Err(ParseError::FingerprintMismatch);
            }
        }
        Ok(msg)
    }

    /// The whole message, header included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    pub fn message_type(&self) -> MessageType {
        self.typ
    }

    pub fn method(&self) -> Method {
        self.typ.method
    }

    pub fn class(&self) -> Class {
        self.typ.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// True when the message carried a (valid) FINGERPRINT.
    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// True when the message carries MESSAGE-INTEGRITY.
    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    /// True when the message carries MESSAGE-INTEGRITY-SHA256.
    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    /// The attributes that count: everything before the first integrity attribute (or
    /// FINGERPRINT). Attributes smuggled in after MESSAGE-INTEGRITY are never seen here.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes::new(self.buf.get(HEADER_LEN..self.attrs_end).unwrap_or(&[]))
    }

    /// The first counted attribute of type `t`.
    pub fn get(&self, t: AttrType) -> Option<Attribute<'a>> {
        self.attributes().find(|a| a.typ == t)
    }

    /// Verifies MESSAGE-INTEGRITY (HMAC-SHA1) with `key`, in constant time. False when the
    /// attribute is absent.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        match self.integrity {
            Some(off) => integrity::verify_sha1(self.buf, off, key),
            None => false,
        }
    }

    /// Verifies MESSAGE-INTEGRITY-SHA256 with `key`, in constant time. False when absent.
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> bool {
        match self.integrity_sha256 {
            Some(off) => integrity::verify_sha256(self.buf, off, key),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_all_methods_and_classes() {
        for m in 0..0x1000u16 {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                let t = MessageType::new(Method(m), c);
                let v = t.to_u16();
                assert_eq!(v & 0xC000, 0);
                assert_eq!(MessageType::from_u16(v), t);
            }
        }
    }

    #[test]
    fn known_type_values() {
        assert_eq!(MessageType::new(Method::BINDING, Class::Request).to_u16(), 0x0001);
        assert_eq!(MessageType::new(Method::BINDING, Class::Success).to_u16(), 0x0101);
        assert_eq!(MessageType::new(Method::BINDING, Class::Error).to_u16(), 0x0111);
        assert_eq!(MessageType::new(Method::ALLOCATE, Class::Request).to_u16(), 0x0003);
        assert_eq!(MessageType::new(Method::SEND, Class::Indication).to_u16(), 0x0016);
        assert_eq!(MessageType::new(Method::DATA, Class::Indication).to_u16(), 0x0017);
    }
}
