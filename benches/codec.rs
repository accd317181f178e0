//! Codec and engine micro-benchmarks: parse a Binding request, build its response, and the
//! engine's whole request-to-response path.
//!
//! Run: `cargo bench --bench codec`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use turnd::metrics::Metrics;
use turnd::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};
use turnd::server::memory::MemoryRelay;
use turnd::server::{Engine, EngineConfig, FiveTuple, Shared, Transport, WallClock};

/// A Binding request as browsers send it to a STUN server: header only.
fn bare_request() -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&[7; 12]);
    m
}

/// A Binding request with SOFTWARE and FINGERPRINT, as many native clients send it.
fn request_with_fingerprint() -> Vec<u8> {
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::new(
        &mut buf,
        MessageType::new(Method::BINDING, Class::Request),
        TransactionId([7; 12]),
    )
    .unwrap();
    w.attr(AttrType::SOFTWARE, b"bench client").unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();
    buf[..n].to_vec()
}

fn codec(c: &mut Criterion) {
    let bare = bare_request();
    let fp = request_with_fingerprint();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_binding_request", |b| {
        b.iter(|| Message::parse(black_box(&bare)).is_ok())
    });
    g.bench_function("parse_binding_request_fingerprint", |b| {
        b.iter(|| Message::parse(black_box(&fp)).is_ok())
    });
    let client = "203.0.113.9:54321".parse().unwrap();
    let mut out = [0u8; 256];
    g.bench_function("build_binding_response", |b| {
        b.iter(|| {
            let typ = MessageType::new(Method::BINDING, Class::Success);
            let mut w = MessageWriter::new(&mut out, typ, TransactionId([7; 12])).unwrap();
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, black_box(client)).unwrap();
            w.finish()
        })
    });
    g.bench_function("build_binding_response_fingerprint", |b| {
        b.iter(|| {
            let typ = MessageType::new(Method::BINDING, Class::Success);
            let mut w = MessageWriter::new(&mut out, typ, TransactionId([7; 12])).unwrap();
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, black_box(client)).unwrap();
            w.fingerprint().unwrap();
            w.finish()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let shared = Arc::new(Shared::stun_only(Arc::new(Metrics::new())));
    let mut engine = Engine::new(
        Arc::new(EngineConfig::default()),
        shared,
        MemoryRelay::default(),
        WallClock::now(),
    );
    let tuple = FiveTuple {
        transport: Transport::Udp,
        client,
        server: "198.51.100.1:3478".parse().unwrap(),
    };
    let now = Instant::now();
    g.bench_function("binding_request_to_response", |b| {
        b.iter(|| {
            matches!(
                engine.handle_client(now, &tuple, black_box(&bare), &mut out),
                turnd::server::Output::Reply(_)
            )
        })
    });
    g.bench_function("malformed_drop", |b| {
        let garbage = [0xFFu8; 64];
        b.iter(|| {
            matches!(
                engine.handle_client(now, &tuple, black_box(&garbage), &mut out),
                turnd::server::Output::None
            )
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
