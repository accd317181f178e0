//! Property tests: encoding then parsing gives back what was written, and no parser (nor the
//! engine) panics on arbitrary bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use turnd::proto::attr::decode_xor_address;
use turnd::proto::{
    framing, AttrType, ChannelData, ChannelNumber, Class, Message, MessageType, MessageWriter, Method, TransactionId,
};
use turnd::server::memory::MemoryRelay;
use turnd::server::{Engine, EngineConfig, Epoch, FiveTuple, Output, Shared, Transport};

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error)
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
    ]
}

/// Attribute types that are plain values (not integrity or FINGERPRINT, which the writer
/// places itself).
fn plain_attr_type() -> impl Strategy<Value = AttrType> {
    any::<u16>()
        .prop_filter("not an integrity attribute", |t| {
            ![
                AttrType::MESSAGE_INTEGRITY,
                AttrType::MESSAGE_INTEGRITY_SHA256,
                AttrType::FINGERPRINT,
            ]
            .contains(&AttrType(*t))
        })
        .prop_map(AttrType)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn encode_then_parse_round_trips(
        method in 0u16..0x1000,
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec((plain_attr_type(), prop::collection::vec(any::<u8>(), 0..70)), 0..8),
        mapped in prop::option::of(socket_addr()),
        key in prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
        sha256 in any::<bool>(),
        fingerprint in any::<bool>(),
    ) {
        let mut buf = [0xEEu8; 2048];
        let tid = TransactionId(tid);
        let typ = MessageType::new(Method(method), class);
        let mut w = MessageWriter::new(&mut buf, typ, tid).unwrap();
        for (t, v) in &attrs {
            w.attr(*t, v).unwrap();
        }
        if let Some(a) = mapped {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, a).unwrap();
        }
        if let Some(k) = &key {
            w.message_integrity(k).unwrap();
            if sha256 {
                w.message_integrity_sha256(k).unwrap();
            }
        }
        if fingerprint {
            w.fingerprint().unwrap();
        }
        let len = w.finish();
        prop_assert_eq!(len % 4, 0);

        let m = Message::parse(&buf[..len]).unwrap();
        prop_assert_eq!(m.message_type(), typ);
        prop_assert_eq!(m.transaction_id(), tid);
        prop_assert_eq!(m.has_fingerprint(), fingerprint);
        let mut got: Vec<(AttrType, Vec<u8>)> = m.attributes().map(|a| (a.typ, a.value.to_vec())).collect();
        if let Some(a) = mapped {
            let (t, v) = got.pop().unwrap();
            prop_assert_eq!(t, AttrType::XOR_MAPPED_ADDRESS);
            prop_assert_eq!(decode_xor_address(&v, &tid).unwrap(), a);
        }
        let want = attrs.clone();
        prop_assert_eq!(got, want);
        if let Some(k) = &key {
            prop_assert!(m.verify_integrity(k));
            prop_assert_eq!(m.verify_integrity_sha256(k), sha256);
            let mut other = k.clone();
            other[0] ^= 1;
            prop_assert!(!m.verify_integrity(&other));
        }
        // Every padding byte is zero (CVE-2020-4067).
        let mut off = 20;
        while off < len {
            let vlen = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
            let padded = (vlen + 3) & !3;
            prop_assert!(buf[off + 4 + vlen..off + 4 + padded].iter().all(|&b| b == 0));
            off += 4 + padded;
        }
    }

    #[test]
    fn channel_data_round_trips(ch in 0x4000u16..=0x4FFF, data in prop::collection::vec(any::<u8>(), 0..300), pad in any::<bool>()) {
        let mut out = [0u8; 512];
        let ch = ChannelNumber::new(ch).unwrap();
        let n = ChannelData::encode(ch, &data, pad, &mut out).unwrap();
        let cd = ChannelData::parse(&out[..n]).unwrap();
        prop_assert_eq!(cd.channel, ch);
        prop_assert_eq!(cd.data, &data[..]);
        if pad {
            prop_assert_eq!(framing::next_frame(&out[..n]), Ok(Some(framing::Frame::ChannelData(n))));
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::parse(&bytes) {
            for a in m.attributes() {
                let _ = decode_xor_address(a.value, &m.transaction_id());
            }
            let _ = m.verify_integrity(b"k");
            let _ = m.verify_integrity_sha256(b"k");
        }
        let _ = ChannelData::parse(&bytes);
        let _ = framing::next_frame(&bytes);
    }

    #[test]
    fn stun_shaped_garbage_never_panics_the_engine(
        typ in any::<u16>(),
        body in prop::collection::vec(any::<u8>(), 0..400),
        fix_len in any::<bool>(),
    ) {
        // Start from a valid header so that the attribute walker is what gets exercised.
        let mut p = Vec::with_capacity(20 + body.len());
        p.extend_from_slice(&(typ & 0x3FFF).to_be_bytes());
        let len = if fix_len { body.len() as u16 } else { (body.len() as u16) & !3 };
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&0x2112_A442u32.to_be_bytes());
        p.extend_from_slice(&[9; 12]);
        p.extend_from_slice(&body);
        let config = EngineConfig { software: Some("x".into()), ..EngineConfig::default() };
        let shared = Arc::new(Shared::stun_only(turnd::auth::NonceKey::from_bytes([5; 32])));
        let clock = Epoch { at: std::time::Instant::now(), unix: std::time::Duration::from_secs(1_800_000_000) };
        let mut engine = Engine::new(Arc::new(config), shared, MemoryRelay::default(), clock, [5; 32]);
        let tuple = FiveTuple { transport: Transport::Udp, client: "192.0.2.1:5000".parse().unwrap(), server: "192.0.2.2:3478".parse().unwrap() };
        let mut out = [0u8; 1500];
        if let Output::ToClient { len: n, .. } = engine.handle_client(Instant::now(), &tuple, &p, &mut out) {
            // Whatever is answered is itself a well-formed response to this transaction.
            let r = Message::parse(&out[..n]).unwrap();
            prop_assert!(matches!(r.class(), Class::Success | Class::Error));
            prop_assert_eq!(&r.transaction_id().0, &[9u8; 12]);
        }
    }
}
