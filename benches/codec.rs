//! Codec and engine micro-benchmarks: parse a Binding request, build its response, and the
//! engine's whole request-to-response path.
//!
//! Run: `cargo bench --bench codec`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use turnd::auth::NonceKey;
use turnd::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};
use turnd::server::memory::MemoryRelay;
use turnd::server::{Engine, EngineConfig, Epoch, FiveTuple, Shared, Transport};

/// The engine's clock anchor, as a driver sets it at start.
fn epoch() -> Epoch {
    Epoch {
        at: Instant::now(),
        unix: std::time::Duration::from_secs(1_800_000_000),
    }
}

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
    let shared = Arc::new(Shared::stun_only(NonceKey::from_bytes([3; 32])));
    let mut engine = Engine::new(
        Arc::new(EngineConfig::default()),
        shared,
        MemoryRelay::default(),
        epoch(),
        [3; 32],
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
                turnd::server::Output::ToClient { .. }
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

/// An engine with one allocation whose channel 0x4000 is bound to a peer: (engine, the
/// client's 5-tuple, the relay socket's token, the peer).
fn bound_engine() -> (
    Engine<MemoryRelay>,
    FiveTuple,
    turnd::server::RelayToken,
    std::net::SocketAddr,
) {
    use turnd::auth::{Credentials, RestSecrets, StaticUsers};
    use turnd::server::testclient::TestClient;
    use turnd::server::{Output, PeerPolicy};

    let creds = Credentials {
        users: StaticUsers::new("bench", [("u".to_string(), "p".to_string())]),
        secrets: RestSecrets::default(),
        file_users: Default::default(),
    };
    let shared = Arc::new(Shared::new(Arc::new(creds), NonceKey::from_bytes([3; 32])));
    let config = EngineConfig {
        realm: "bench".into(),
        relay_addresses: vec!["10.0.0.1".parse().unwrap()],
        peers: PeerPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(Arc::new(config), shared, MemoryRelay::default(), epoch(), [3; 32]);
    let tuple = FiveTuple {
        transport: Transport::Udp,
        client: "203.0.113.9:54321".parse().unwrap(),
        server: "10.0.0.1:3478".parse().unwrap(),
    };
    let peer: std::net::SocketAddr = "10.9.9.9:40000".parse().unwrap();
    let now = Instant::now();
    let mut out = vec![0u8; 4096];
    let mut client = TestClient::new("u", "bench", "p");
    // Allocate twice (the first teaches the nonce), then bind the channel.
    for step in 0..3 {
        let req = match step {
            0 | 1 => client.allocate(),
            _ => client.channel_bind(0x4000, peer),
        };
        if let Output::ToClient { len: n, .. } = engine.handle_client(now, &tuple, &req, &mut out) {
            let bytes = out[..n].to_vec();
            client.read(&bytes);
        }
    }
    let token = engine
        .allocations()
        .next()
        .and_then(|a| a.relays[0].as_ref())
        .map(|r| r.socket.token)
        .unwrap();
    (engine, tuple, token, peer)
}

/// The relay hot path: a bound channel, then ChannelData client → peer (parse 4 bytes,
/// look up the 5-tuple, the channel and the permission) and peer → client (permission,
/// channel, frame).
fn channel_data(c: &mut Criterion) {
    use turnd::server::testclient::TestClient;
    use turnd::server::Output;

    let (mut engine, tuple, token, peer) = bound_engine();
    let now = Instant::now();
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    let packet = TestClient::channel_data(0x4000, &[7u8; 100], false);
    let mut out = vec![0u8; 4096];
    g.bench_function("channel_data_client_to_peer_100B", |b| {
        b.iter(|| {
            matches!(
                engine.handle_client(now, &tuple, black_box(&packet), &mut out),
                Output::ToPeer { .. }
            )
        })
    });
    let payload = [7u8; 100];
    g.bench_function("channel_data_peer_to_client_100B", |b| {
        b.iter(|| {
            engine
                .handle_peer(now, token, peer, black_box(&payload), &mut out)
                .is_some()
        })
    });
    g.finish();
}

/// Two shards relaying at once, each on its own thread with its own engine, as on a
/// two-core host: one iteration is one ChannelData each way on each shard. Counters that
/// every shard writes would bounce a cache line between the cores here.
fn two_shards(c: &mut Criterion) {
    use std::sync::Barrier;
    use turnd::server::testclient::TestClient;

    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(4));
    g.bench_function("channel_data_both_ways_two_shards_100B", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let (mut engine, tuple, token, peer) = bound_engine();
                        let packet = TestClient::channel_data(0x4000, &[7u8; 100], false);
                        let payload = [7u8; 100];
                        let mut out = vec![0u8; 4096];
                        let now = Instant::now();
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(matches!(
                                engine.handle_client(now, &tuple, black_box(&packet), &mut out),
                                turnd::server::Output::ToPeer { .. }
                            ));
                            black_box(
                                engine
                                    .handle_peer(now, token, peer, black_box(&payload), &mut out)
                                    .is_some(),
                            );
                        }
                        start.elapsed()
                    })
                })
                .collect();
            threads
                .into_iter()
                .filter_map(|t| t.join().ok())
                .max()
                .unwrap_or_default()
        })
    });
    g.finish();
}

criterion_group!(benches, codec, channel_data, two_shards);
criterion_main!(benches);
