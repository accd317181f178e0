//! STUN message parsing: any bytes, never a panic; whatever parses re-verifies consistently,
//! and decodes into the typed TURN and RFC 5780 views.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd::proto::attr::{decode_address, decode_error_code, decode_text, decode_u32, decode_unknown_attributes, decode_xor_address};
use turnd::proto::{DiscoveryAttributes, Message, TurnAttributes};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let tid = m.transaction_id();
        for a in m.attributes() {
            let _ = decode_address(a.value);
            let _ = decode_xor_address(a.value, &tid);
            let _ = decode_error_code(a.value);
            let _ = decode_text(a.value, 763);
            let _ = decode_u32(a.value);
            if let Ok(it) = decode_unknown_attributes(a.value) {
                it.for_each(drop);
            }
        }
        // The typed view keeps peers in order and never more than it has room for.
        let view = TurnAttributes::decode(&m);
        assert!(view.peers.len() <= turnd::proto::request::MAX_PEERS);
        let d = DiscoveryAttributes::decode(&m);
        if let turnd::proto::Field::Present(n) = d.padding {
            assert!(n <= data.len(), "PADDING longer than the message");
        }
        let _ = m.verify_integrity(b"key");
        let _ = m.verify_integrity_sha256(b"key");
    }
});
