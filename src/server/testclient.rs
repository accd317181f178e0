//! A minimal TURN client that builds requests with long-term credentials, for driving the
//! engine in tests, benchmarks and fuzzing. It is not a general-purpose client.

use std::net::SocketAddr;

use crate::auth::Keys;
use crate::proto::attr::{decode_error_code, decode_xor_address};
use crate::proto::{
    AttrType, ChannelData, ChannelNumber, Class, Message, MessageType, MessageWriter, Method, TransactionId,
};

/// Builds requests for one 5-tuple and keeps the nonce the server last handed out.
#[derive(Debug, Clone)]
pub struct TestClient {
    pub username: String,
    pub realm: String,
    pub keys: Keys,
    pub nonce: Vec<u8>,
    /// Use PASSWORD-ALGORITHM SHA-256 and MESSAGE-INTEGRITY-SHA256.
    pub sha256: bool,
    /// Add FINGERPRINT to requests.
    pub fingerprint: bool,
    next_tid: u64,
}

/// The parts of a response tests look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    pub class: Option<Class>,
    pub error: Option<u16>,
    pub relayed: Vec<SocketAddr>,
    pub mapped: Option<SocketAddr>,
    pub lifetime: Option<u32>,
    pub integrity: bool,
    pub integrity_sha256: bool,
    pub transaction_id: Option<TransactionId>,
    /// ALTERNATE-SERVER and ALTERNATE-DOMAIN of a 300.
    pub alternate: Option<SocketAddr>,
    pub alternate_domain: Option<String>,
}

impl TestClient {
    pub fn new(username: &str, realm: &str, password: &str) -> Self {
        TestClient {
            username: username.into(),
            realm: realm.into(),
            keys: Keys::derive(username, realm, password),
            nonce: Vec::new(),
            sha256: false,
            fingerprint: false,
            next_tid: 1,
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.next_tid.to_be_bytes());
        t[8..].copy_from_slice(&[0x7e, 0x57, 0xc1, 0x1e]);
        TransactionId(t)
    }

    /// A request of `method` with the body from `body`, then USERNAME, REALM, NONCE and
    /// integrity when a nonce is known.
    pub fn request(&mut self, method: Method, body: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
        let tid = self.tid();
        self.request_with_tid(method, tid, body)
    }

    pub fn request_with_tid(
        &mut self,
        method: Method,
        tid: TransactionId,
        body: impl FnOnce(&mut MessageWriter<'_>),
    ) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = match MessageWriter::new(&mut buf, MessageType::new(method, Class::Request), tid) {
            Ok(w) => w,
            Err(_) => return Vec::new(),
        };
        body(&mut w);
        if !self.nonce.is_empty() {
            let _ = w.attr(AttrType::USERNAME, self.username.as_bytes());
            let _ = w.attr(AttrType::REALM, self.realm.as_bytes());
            let _ = w.attr(AttrType::NONCE, &self.nonce);
            if self.sha256 {
                let _ = w.attr(AttrType::PASSWORD_ALGORITHMS, &[0, 2, 0, 0, 0, 1, 0, 0]);
                let _ = w.attr(AttrType::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
                let _ = w.message_integrity_sha256(&self.keys.sha256);
            } else {
                let _ = w.message_integrity(&self.keys.md5);
            }
        }
        if self.fingerprint {
            let _ = w.fingerprint();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    pub fn allocate(&mut self) -> Vec<u8> {
        self.allocate_family(false)
    }

    /// An Allocate for an IPv6 relayed address when `v6` (REQUESTED-ADDRESS-FAMILY).
    pub fn allocate_family(&mut self, v6: bool) -> Vec<u8> {
        self.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            if v6 {
                let _ = w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            }
        })
    }

    pub fn refresh(&mut self, lifetime: u32) -> Vec<u8> {
        self.request(Method::REFRESH, |w| {
            let _ = w.attr_u32(AttrType::LIFETIME, lifetime);
        })
    }

    pub fn create_permission(&mut self, peers: &[SocketAddr]) -> Vec<u8> {
        self.request(Method::CREATE_PERMISSION, |w| {
            for p in peers {
                let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, *p);
            }
        })
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Vec<u8> {
        self.request(Method::CHANNEL_BIND, |w| {
            let _ = w.attr(AttrType::CHANNEL_NUMBER, &[(channel >> 8) as u8, channel as u8, 0, 0]);
            let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
        })
    }

    /// A Send indication (no credentials, as RFC 8656 §11 prescribes).
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid = self.tid();
        let mut buf = vec![0u8; data.len() + 64];
        let Ok(mut w) = MessageWriter::new(&mut buf, MessageType::new(Method::SEND, Class::Indication), tid) else {
            return Vec::new();
        };
        let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
        let _ = w.attr(AttrType::DATA, data);
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    /// A ChannelData message, padded as over TCP when `pad`.
    pub fn channel_data(channel: u16, data: &[u8], pad: bool) -> Vec<u8> {
        let mut buf = vec![0u8; data.len() + 8];
        let n = ChannelNumber::new(channel)
            .and_then(|c| ChannelData::encode(c, data, pad, &mut buf))
            .unwrap_or(0);
        buf.truncate(n);
        buf
    }

    /// Reads a response; a 401 or 438 teaches the client the server's realm and nonce.
    pub fn read(&mut self, bytes: &[u8]) -> Response {
        let Ok(m) = Message::parse(bytes) else {
            return Response::default();
        };
        let mut r = Response {
            class: Some(m.class()),
            integrity: m.has_integrity() && m.verify_integrity(self.key()),
            integrity_sha256: m.has_integrity_sha256() && m.verify_integrity_sha256(self.key()),
            transaction_id: Some(m.transaction_id()),
            ..Response::default()
        };
        let tid = m.transaction_id();
        for a in m.attributes() {
            match a.typ {
                AttrType::ERROR_CODE => r.error = decode_error_code(a.value).ok().map(|(c, _)| c.0),
                AttrType::XOR_RELAYED_ADDRESS => r.relayed.extend(decode_xor_address(a.value, &tid).ok()),
                AttrType::XOR_MAPPED_ADDRESS => r.mapped = decode_xor_address(a.value, &tid).ok(),
                AttrType::LIFETIME => r.lifetime = crate::proto::attr::decode_u32(a.value).ok(),
                AttrType::ALTERNATE_SERVER => r.alternate = crate::proto::attr::decode_address(a.value).ok(),
                AttrType::ALTERNATE_DOMAIN => {
                    r.alternate_domain = std::str::from_utf8(a.value).ok().map(str::to_string)
                }
                AttrType::NONCE => self.nonce = a.value.to_vec(),
                AttrType::REALM => {
                    if let Ok(s) = std::str::from_utf8(a.value) {
                        self.realm = s.to_string();
                    }
                }
                _ => {}
            }
        }
        r
    }

    fn key(&self) -> &[u8] {
        if self.sha256 {
            &self.keys.sha256
        } else {
            &self.keys.md5
        }
    }
}
