//! Malformed input is dropped *and counted*: the in-process server on real loopback sockets,
//! with its metric handles read directly (the same counters `/metrics` will export).

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use common::{binding_request, malformed_table};
use turnd::config::{Config, Source};
use turnd::metrics::{DropReason, Metrics};
use turnd::net::Server;
use turnd::server::{Shared, Transport};

#[test]
fn every_malformed_datagram_is_counted_by_reason() {
    let config = Config::parse(
        "threads = 1\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"udp\"]\n",
        Source::Embedded,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared::stun_only(turnd::auth::NonceKey::from_bytes([5; 32])));
    let server = Server::start(
        &config,
        turnd::cli::engine_config(&config),
        shared,
        metrics.clone(),
        None,
    )
    .unwrap();
    let addr = server.bound()[0].address;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();

    let table = malformed_table();
    for (_, bytes) in &table {
        sock.send_to(bytes, addr).unwrap();
    }
    // A good request after the batch; once it is answered, every datagram before it was seen.
    sock.send_to(&binding_request([7; 12]), addr).unwrap();
    let mut buf = [0u8; 1500];
    sock.recv(&mut buf).unwrap();

    let total: u64 = DropReason::ALL
        .iter()
        .map(|r| metrics.total(|s| &s.dropped[*r as usize]))
        .sum();
    assert_eq!(total, table.len() as u64, "each malformed datagram counted once");
    assert_eq!(metrics.total(|s| &s.dropped[DropReason::bad_fingerprint as usize]), 1);
    assert_eq!(metrics.total(|s| &s.dropped[DropReason::unexpected_class as usize]), 3);
    assert_eq!(metrics.total(|s| &s.dropped[DropReason::no_allocation as usize]), 1);
    assert_eq!(metrics.total(|s| &s.binding[Transport::Udp as usize]), 1);

    let text = metrics.encode();
    assert!(
        text.contains("turnd_dropped_packets_total{reason=\"bad_fingerprint\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("turnd_stun_binding_requests_total{transport=\"udp\"} 1"),
        "{text}"
    );
    server.stop();
}
