//! Stateless nonces (RFC 8489 §9.2): an expiry time and a MAC over it and the client's
//! transport and IP address under a per-process random key. Issuing one allocates nothing, so
//! unauthenticated traffic creates no server state. The port is left out: a client's TCP
//! relay data connections (RFC 6062) come from new ports with the nonce of its control
//! connection, as coturn's client does.
//!
//! Format: base64url of 4 bytes of expiry (unix seconds) and 8 bytes of HMAC-SHA256: 16
//! bytes, which keeps 401 responses small. When the server offers password algorithms
//! (RFC 8489 §9.2), the nonce starts with the cookie `obMatJos2` and the security feature
//! set `gAAA` (bit 0, password algorithms): 29 bytes.

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::types::{FiveTuple, Transport};

const PREFIX: &[u8] = b"obMatJos2gAAA";
const MAC_LEN: usize = 8;
const BODY_LEN: usize = 16; // base64url of 4 + MAC_LEN bytes

/// Longest nonce this server issues (with the RFC 8489 cookie).
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
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&full[..MAC_LEN]);
        out
    }

    /// Issues a nonce for `client` valid until `expiry` (unix seconds), with the RFC 8489
    /// cookie when `cookie` is set. Returns the buffer and the nonce's length in it.
    pub fn issue(&self, expiry: u64, client: &FiveTuple, cookie: bool) -> ([u8; NONCE_LEN], usize) {
        let expiry = u32::try_from(expiry).unwrap_or(u32::MAX);
        let mut raw = [0u8; 4 + MAC_LEN];
        raw[..4].copy_from_slice(&expiry.to_be_bytes());
        raw[4..].copy_from_slice(&self.mac(expiry, client));
        let mut out = [0u8; NONCE_LEN];
        let start = if cookie { PREFIX.len() } else { 0 };
        out[..start].copy_from_slice(&PREFIX[..start]);
        // 12 bytes always encode to exactly 16 characters.
        let _ = URL_SAFE_NO_PAD.encode_slice(raw, &mut out[start..]);
        (out, start + BODY_LEN)
    }

    /// Checks a nonce presented by `client` at `unix_now`.
    pub fn check(&self, nonce: &[u8], unix_now: u64, client: &FiveTuple) -> NonceCheck {
        let body = nonce.strip_prefix(PREFIX).unwrap_or(nonce);
        if body.len() != BODY_LEN {
            return NonceCheck::Invalid;
        }
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
        let (n, len) = k.issue(1000, &tuple(5000), true);
        let n = &n[..len];
        assert_eq!(len, NONCE_LEN);
        assert!(n.starts_with(b"obMatJos2gAAA"));
        assert_eq!(k.check(n, 999, &tuple(5000)), NonceCheck::Valid);
        assert_eq!(k.check(n, 1000, &tuple(5000)), NonceCheck::Expired);
        let (plain, len) = k.issue(1000, &tuple(5000), false);
        assert_eq!(len, 16, "without the cookie a nonce is 16 bytes");
        assert_eq!(k.check(&plain[..len], 999, &tuple(5000)), NonceCheck::Valid);
    }

    #[test]
    fn bound_to_client_and_key() {
        let k = NonceKey::from_bytes([1; 32]);
        let (n, _) = k.issue(1000, &tuple(5000), true);
        assert_eq!(
            k.check(&n, 0, &tuple(5001)),
            NonceCheck::Valid,
            "another port of the client's IP"
        );
        let mut elsewhere = tuple(5000);
        elsewhere.client = SocketAddr::from(([192, 0, 2, 2], 5000));
        assert_eq!(k.check(&n, 0, &elsewhere), NonceCheck::Invalid);
        let mut tcp = tuple(5000);
        tcp.transport = Transport::Tcp;
        assert_eq!(k.check(&n, 0, &tcp), NonceCheck::Invalid);
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
