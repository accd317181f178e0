//! Stateless nonces (RFC 8489 §9.2): an expiry time and a MAC over it and the client's
//! 5-tuple under a per-process random key. Issuing one allocates nothing, so unauthenticated
//! traffic creates no server state.
//!
//! Format: the RFC 8489 nonce cookie `obMatJos2`, the security feature set `gAAA` (bit 0,
//! password algorithms), then base64url of 4 bytes of expiry (unix seconds) and 8 bytes of
//! HMAC-SHA256. 29 bytes in all, which keeps 401 responses small.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::server::{FiveTuple, Transport};

const PREFIX: &[u8] = b"obMatJos2gAAA";
const MAC_LEN: usize = 8;
const BODY_LEN: usize = 16; // base64url of 4 + MAC_LEN bytes

/// Length of every nonce this server issues.
pub const NONCE_LEN: usize = PREFIX.len() + BODY_LEN;

/// What a nonce presented by a client turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by this process for this client, and not expired.
    Valid,
    /// Issued by this process for this client, but expired: answer 438.
    Expired,
    /// Not one of ours (another process, another client, or forged): answer 438 too, so the
    /// client recovers after a restart.
    Invalid,
}

/// The per-process nonce key, drawn from the OS CSPRNG.
#[derive(Clone)]
pub struct NonceKey([u8; 32]);

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

impl NonceKey {
    /// A fresh key from the OS CSPRNG.
    pub fn random() -> std::io::Result<Self> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(NonceKey(k))
    }

    /// A fixed key, for tests.
    pub fn from_bytes(k: [u8; 32]) -> Self {
        NonceKey(k)
    }

    fn mac(&self, expiry: u32, client: &FiveTuple) -> [u8; MAC_LEN] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(&expiry.to_be_bytes());
        mac.update(&[match client.transport {
            Transport::Udp => 17,
            Transport::Tcp => 6,
            Transport::Tls => 56,
        }]);
        match client.client {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.client.port().to_be_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Issues a nonce for `client` valid until `expiry` (unix seconds).
    pub fn issue(&self, expiry: u64, client: &FiveTuple) -> [u8; NONCE_LEN] {
        let expiry = u32::try_from(expiry).unwrap_or(u32::MAX);
        let mut raw = [0u8; 4 + MAC_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(expiry, client));
        let mut out = [0u8; NONCE_LEN];
        out[..PREFIX.len()].copy_from_slice(PREFIX);
        // 12 bytes always encode to exactly 16 characters.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut out[PREFIX.len()..]);
        out
    }

    /// Checks a nonce presented by `client` at `unix_now`.
    pub fn check(&self, nonce: &[u8], unix_now: u64, client: &FiveTuple) -> NonceCheck {
        let Some(body) = nonce.strip_prefix(PREFIX).filter(|b| b.len() == BODY_LEN) else {
            return NonceCheck::Invalid;
        };
        let mut raw = [0u8; 4 + MAC_LEN];
        if URL_SAFE_NO_PAD.decode_slice(body, &mut raw) != Ok(raw.len()) {
            return NonceCheck::Invalid;
        }
        let expiry = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if !bool::from(raw[4..].ct_eq(&self.mac(expiry, client))) {
            return NonceCheck::Invalid;
        }
        if u64::from(expiry) <= unix_now {
            NonceCheck::Expired
        } else {
            NonceCheck::Valid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: SocketAddr::from(([192, 0, 2, 1], port)),
            server: SocketAddr::from(([192, 0, 2, 2], 3478)),
        }
    }

    #[test]
    fn valid_until_expiry_then_stale() {
        let k = NonceKey::from_bytes([1; 32]);
        let n = k.issue(1000, &tuple(5000));
        assert_eq!(n.len(), NONCE_LEN);
        assert!(n.starts_with(b"obMatJos2gAAA"));
        assert_eq!(k.check(&n, 999, &tuple(5000)), NonceCheck::Valid);
        assert_eq!(k.check(&n, 1000, &tuple(5000)), NonceCheck::Expired);
    }

    #[test]
    fn bound_to_client_and_key() {
        let k = NonceKey::from_bytes([1; 32]);
        let n = k.issue(1000, &tuple(5000));
        assert_eq!(k.check(&n, 0, &tuple(5001)), NonceCheck::Invalid);
        assert_eq!(
            NonceKey::from_bytes([2; 32]).check(&n, 0, &tuple(5000)),
            NonceCheck::Invalid
        );
        let mut forged = n;
        forged[NONCE_LEN - 1] ^= 1;
        assert_eq!(k.check(&forged, 0, &tuple(5000)), NonceCheck::Invalid);
        assert_eq!(k.check(b"garbage", 0, &tuple(5000)), NonceCheck::Invalid);
    }
}
