//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256, FINGERPRINT (CRC-32) and the
//! RFC 8489 long-term key derivations.
//!
//! The HMACs are computed over the message as if its length field ended just after the
//! integrity attribute, without copying the message: the adjusted header is fed in pieces.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::HEADER_LEN;

/// XORed into the CRC-32 to make FINGERPRINT differ from other protocols' CRCs.
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Length of the MESSAGE-INTEGRITY value.
pub const SHA1_LEN: usize = 20;
/// Full length of the MESSAGE-INTEGRITY-SHA256 value.
pub const SHA256_LEN: usize = 32;

/// FINGERPRINT value for `prefix`: every byte of the message before the FINGERPRINT
/// attribute, with the header's length field already covering FINGERPRINT.
pub fn fingerprint(prefix: &[u8]) -> u32 {
    crc32fast::hash(prefix) ^ FINGERPRINT_XOR
}

/// Feeds `msg[..off]` into `mac`, with the header length rewritten to `adjusted_len`.
fn feed<M: Mac>(mac: &mut M, msg: &[u8], off: usize, adjusted_len: usize) -> Option<()> {
    let head = msg.get(..HEADER_LEN)?;
    let body = msg.get(HEADER_LEN..off)?;
    let len = u16::try_from(adjusted_len).ok()?;
    mac.update(&head[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&head[4..]);
    mac.update(body);
    Some(())
}

/// HMAC-SHA1 of `msg[..off]` as MESSAGE-INTEGRITY at offset `off` would cover it.
pub fn hmac_sha1(msg: &[u8], off: usize, key: &[u8]) -> Option<[u8; SHA1_LEN]> {
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key).ok()?;
    feed(&mut mac, msg, off, (off + 4 + SHA1_LEN).checked_sub(HEADER_LEN)?)?;
    Some(mac.finalize().into_bytes().into())
}

/// HMAC-SHA256 of `msg[..off]` as a MESSAGE-INTEGRITY-SHA256 of `value_len` bytes at `off`
/// would cover it.
pub fn hmac_sha256(msg: &[u8], off: usize, value_len: usize, key: &[u8]) -> Option<[u8; SHA256_LEN]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
    feed(&mut mac, msg, off, (off + 4 + value_len).checked_sub(HEADER_LEN)?)?;
    Some(mac.finalize().into_bytes().into())
}

/// Verifies the MESSAGE-INTEGRITY attribute at `off`, in constant time.
pub fn verify_sha1(msg: &[u8], off: usize, key: &[u8]) -> bool {
    let Some(h) = msg.get(off..off + 4) else { return false };
    if u16::from_be_bytes([h[2], h[3]]) as usize != SHA1_LEN {
        return false;
    }
    let (Some(got), Some(want)) = (msg.get(off + 4..off + 4 + SHA1_LEN), hmac_sha1(msg, off, key)) else {
        return false;
    };
    got.ct_eq(&want).into()
}

/// Verifies the MESSAGE-INTEGRITY-SHA256 attribute at `off`, in constant time. The value may
/// be truncated to 16..=32 bytes in steps of four (RFC 8489 §14.6).
pub fn verify_sha256(msg: &[u8], off: usize, key: &[u8]) -> bool {
    let Some(h) = msg.get(off..off + 4) else { return false };
    let vlen = u16::from_be_bytes([h[2], h[3]]) as usize;
    if !(16..=SHA256_LEN).contains(&vlen) || !vlen.is_multiple_of(4) {
        return false;
    }
    let (Some(got), Some(want)) = (msg.get(off + 4..off + 4 + vlen), hmac_sha256(msg, off, vlen, key)) else {
        return false;
    };
    got.ct_eq(&want[..vlen]).into()
}

/// The long-term key for MESSAGE-INTEGRITY with PASSWORD-ALGORITHM MD5 (the RFC 5389
/// default): MD5(username ":" realm ":" password).
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// The long-term key with PASSWORD-ALGORITHM SHA-256: SHA-256(username ":" realm ":" password).
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}
