//! Encodes STUN messages into a caller-owned buffer. Padding is always written as zeros
//! (CVE-2020-4067 leaked memory through uninitialised padding).

use std::net::{IpAddr, SocketAddr};

use super::attr::{xor_address, AttrType};
use super::error_code::ErrorCode;
use super::integrity::{self, SHA1_LEN, SHA256_LEN};
use super::message::{MessageType, TransactionId};
use super::{pad4, HEADER_LEN, MAGIC_COOKIE, MAX_MESSAGE_LEN};

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The caller's buffer is too small for the message.
    #[error("buffer too small")]
    BufferTooSmall,
    /// An attribute value is longer than 65535 bytes or the message longer than 65555.
    #[error("value too long")]
    TooLong,
    /// A key that HMAC cannot use (never happens for HMAC, kept for completeness of the API).
    #[error("invalid key")]
    InvalidKey,
}

/// Builds one STUN message in `buf`. Start with [`MessageWriter::new`], add attributes in
/// order, optionally finish with integrity and FINGERPRINT, then call [`MessageWriter::finish`]
/// for the encoded length.
pub struct MessageWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    tid: TransactionId,
}

impl<'b> MessageWriter<'b> {
    /// Writes the header of a message of type `typ` with transaction ID `tid`.
    pub fn new(buf: &'b mut [u8], typ: MessageType, tid: TransactionId) -> Result<Self, EncodeError> {
        let head = buf.get_mut(..HEADER_LEN).ok_or(EncodeError::BufferTooSmall)?;
        head[..2].copy_from_slice(&typ.to_u16().to_be_bytes());
        head[2..4].copy_from_slice(&[0, 0]);
        head[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        head[8..20].copy_from_slice(&tid.0);
        Ok(MessageWriter {
            buf,
            len: HEADER_LEN,
            tid,
        })
    }

    fn set_length(&mut self) {
        let body = (self.len - HEADER_LEN) as u16;
        self.buf[2..4].copy_from_slice(&body.to_be_bytes());
    }

    /// Reserves an attribute of `vlen` bytes (plus zeroed padding) and returns its value slot.
    fn reserve(&mut self, typ: AttrType, vlen: usize) -> Result<&mut [u8], EncodeError> {
        let vlen16 = u16::try_from(vlen).map_err(|_| EncodeError::TooLong)?;
        let end = self.len + 4 + pad4(vlen);
        if end > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLong);
        }
        let slot = self.buf.get_mut(self.len..end).ok_or(EncodeError::BufferTooSmall)?;
        slot[..2].copy_from_slice(&typ.0.to_be_bytes());
        slot[2..4].copy_from_slice(&vlen16.to_be_bytes());
        slot[4 + vlen..].fill(0);
        let start = self.len + 4;
        self.len = end;
        self.set_length();
        Ok(&mut self.buf[start..start + vlen])
    }

    /// Appends an attribute with a raw value.
    pub fn attr(&mut self, typ: AttrType, value: &[u8]) -> Result<(), EncodeError> {
        self.reserve(typ, value.len())?.copy_from_slice(value);
        Ok(())
    }

    /// Appends a 32-bit attribute (LIFETIME and friends).
    pub fn attr_u32(&mut self, typ: AttrType, v: u32) -> Result<(), EncodeError> {
        self.attr(typ, &v.to_be_bytes())
    }

    /// Appends an address attribute, XORed (for the XOR-* types) with this message's IDs.
    pub fn xor_address(&mut self, typ: AttrType, addr: SocketAddr) -> Result<(), EncodeError> {
        let x = xor_address(addr, &self.tid);
        self.plain_address(typ, x)
    }

    /// Appends an address attribute without XOR (MAPPED-ADDRESS, ALTERNATE-SERVER).
    pub fn plain_address(&mut self, typ: AttrType, addr: SocketAddr) -> Result<(), EncodeError> {
        match addr.ip() {
            IpAddr::V4(ip) => {
                let v = self.reserve(typ, 8)?;
                v[0] = 0;
                v[1] = 0x01;
                v[2..4].copy_from_slice(&addr.port().to_be_bytes());
                v[4..8].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                let v = self.reserve(typ, 20)?;
                v[0] = 0;
                v[1] = 0x02;
                v[2..4].copy_from_slice(&addr.port().to_be_bytes());
                v[4..20].copy_from_slice(&ip.octets());
            }
        }
        Ok(())
    }

    /// Appends ERROR-CODE with the code's standard reason phrase.
    pub fn error_code(&mut self, code: ErrorCode) -> Result<(), EncodeError> {
        let reason = code.reason().as_bytes();
        let v = self.reserve(AttrType::ERROR_CODE, 4 + reason.len())?;
        v[0] = 0;
        v[1] = 0;
        v[2] = code.class();
        v[3] = code.number();
        v[4..].copy_from_slice(reason);
        Ok(())
    }

    /// Appends ERROR-CODE with an empty reason phrase: the shortest form, for responses to
    /// unauthenticated requests, where every byte is a byte an attacker can reflect.
    pub fn error_code_bare(&mut self, code: ErrorCode) -> Result<(), EncodeError> {
        let v = self.reserve(AttrType::ERROR_CODE, 4)?;
        v.copy_from_slice(&[0, 0, code.class(), code.number()]);
        Ok(())
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types`.
    pub fn unknown_attributes(&mut self, types: &[AttrType]) -> Result<(), EncodeError> {
        let v = self.reserve(AttrType::UNKNOWN_ATTRIBUTES, types.len() * 2)?;
        for (slot, t) in v.chunks_exact_mut(2).zip(types) {
            slot.copy_from_slice(&t.0.to_be_bytes());
        }
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY (HMAC-SHA1 under `key`).
    pub fn message_integrity(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let off = self.len;
        self.reserve(AttrType::MESSAGE_INTEGRITY, SHA1_LEN)?;
        let mac = integrity::hmac_sha1(self.buf, off, key).ok_or(EncodeError::InvalidKey)?;
        self.buf[off + 4..off + 4 + SHA1_LEN].copy_from_slice(&mac);
        Ok(())
    }

    /// Appends MESSAGE-INTEGRITY-SHA256 (full 32 bytes, HMAC-SHA256 under `key`).
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> Result<(), EncodeError> {
        let off = self.len;
        self.reserve(AttrType::MESSAGE_INTEGRITY_SHA256, SHA256_LEN)?;
        let mac = integrity::hmac_sha256(self.buf, off, SHA256_LEN, key).ok_or(EncodeError::InvalidKey)?;
        self.buf[off + 4..off + 4 + SHA256_LEN].copy_from_slice(&mac);
        Ok(())
    }

    /// Appends FINGERPRINT. It must be the last attribute.
    pub fn fingerprint(&mut self) -> Result<(), EncodeError> {
        let off = self.len;
        self.reserve(AttrType::FINGERPRINT, 4)?;
        let crc = integrity::fingerprint(&self.buf[..off]);
        self.buf[off + 4..off + 8].copy_from_slice(&crc.to_be_bytes());
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a writer holds at least a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Finishes the message and returns its encoded length.
    pub fn finish(self) -> usize {
        self.len
    }
}
