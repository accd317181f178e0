//! The engine as a whole: a sequence of packets from a few clients over UDP and TCP. It
//! never panics, and every answer is a well-formed response to the packet's transaction.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use turnd::metrics::Metrics;
use turnd::proto::{Class, Message};
use turnd::server::{Engine, EngineConfig, FiveTuple, Transport};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(EngineConfig { software: Some("fuzz".into()) }, Arc::new(Metrics::new()));
    let start = Instant::now();
    let mut out = [0u8; 2048];
    // Input: repeated [selector, len_hi, len_lo, packet...].
    let mut rest = data;
    let mut now = start;
    while let [sel, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (packet, next) = tail.split_at(len);
        rest = next;
        now += Duration::from_millis(u64::from(sel >> 4) * 250);
        let tuple = FiveTuple {
            transport: if sel & 1 == 0 { Transport::Udp } else { Transport::Tcp },
            client: if sel & 2 == 0 { "192.0.2.1:5000".parse().unwrap() } else { "[2001:db8::1]:6000".parse().unwrap() },
            server: "198.51.100.1:3478".parse().unwrap(),
        };
        if let Some(n) = engine.handle_client(now, &tuple, packet, &mut out) {
            let resp = Message::parse(&out[..n]).expect("engine wrote a malformed response");
            assert!(matches!(resp.class(), Class::Success | Class::Error));
            let req = Message::parse(packet).expect("engine answered a malformed request");
            assert_eq!(req.transaction_id(), resp.transaction_id());
        }
    }
});
