//! The engine as a whole: a script of operations decoded from the input (authenticated
//! requests from a few clients, raw packets, peer datagrams, random time steps, TCP closes).
//! After every step: no panic, every answer well-formed, and the books balance — open relay
//! sockets, quota and gauges all agree with the allocation table. At the end, time runs out
//! and everything must be released.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use turnd::auth::{Credentials, NonceKey, RestSecrets, StaticUsers};
use turnd::metrics::Metrics;
use turnd::proto::{Class, Message};
use turnd::server::memory::MemoryRelay;
use turnd::server::testclient::TestClient;
use turnd::server::{AddressQuad, Engine, EngineConfig, FiveTuple, Output, PeerPolicy, PortRange, Shared, Transport, Epoch};

const REALM: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    let metrics = Arc::new(Metrics::new());
    let creds = Credentials {
        users: StaticUsers::new(REALM, [("u".to_string(), "p".to_string())]),
        secrets: RestSecrets::default(),
        file_users: Default::default(),
    };
    let shared = Arc::new(Shared::new(Arc::new(creds), NonceKey::from_bytes([1; 32])));
    let quad = AddressQuad {
        ips: [IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])],
        ports: [3478, 3479],
    };
    let config = EngineConfig {
        realm: REALM.into(),
        relay_addresses: vec![IpAddr::from([10, 0, 0, 1]), "fd00::1".parse().unwrap()],
        relay_ports: PortRange::new(40000, 40007).unwrap(),
        max_allocations_per_user: 6,
        max_allocations: 8,
        peers: PeerPolicy::new(vec!["10.0.0.0/8".parse().unwrap()]),
        software: None,
        // NAT behaviour discovery on the listener every client talks to.
        discovery: vec![quad],
        account_usage: true,
        // A kernel fast path: the driver below plays the BPF maps.
        fast_path: true,
        ..EngineConfig::default()
    };
    let relay = MemoryRelay::default();
    let start = Instant::now();
    let clock = Epoch { at: start, unix: Duration::from_secs(1_800_000_000) };
    // A fixed seed: the same input replays the same run, byte for byte.
    let mut engine = Engine::new(Arc::new(config), shared.clone(), relay.clone(), clock, [1; 32]);
    metrics.register(engine.stats().clone());
    let mut now = start;
    let mut out = vec![0u8; 70_000];
    let tuples: Vec<FiveTuple> = (0..4u16)
        .map(|i| FiveTuple {
            transport: if i % 2 == 0 { Transport::Udp } else { Transport::Tcp },
            client: SocketAddr::from(([10, 1, 0, 1], 5000 + i)),
            server: SocketAddr::from(([10, 0, 0, 1], 3478)),
        })
        .collect();
    let mut clients: Vec<TestClient> = (0..4).map(|_| TestClient::new("u", REALM, "p")).collect();
    let peers = [SocketAddr::from(([10, 9, 0, 1], 7000)), SocketAddr::from(([192, 168, 0, 1], 7000))];

    // The fast path's maps as a driver keeps them: what the engine installed and not removed.
    let mut offloaded: Vec<turnd::server::FastPathEntry> = Vec::new();
    // The last RESERVATION-TOKEN the engine handed out, to claim it.
    let mut last_token = [0u8; 8];
    let mut rest = data;
    while let [op, arg, tail @ ..] = rest {
        let (op, arg) = (*op, *arg);
        rest = tail;
        let i = usize::from(arg & 3);
        let t = tuples[i];
        let c = &mut clients[i];
        let peer = peers[usize::from((arg >> 2) & 1)];
        let packet: Vec<u8> = match op % 20 {
            0 => c.allocate(),
            1 => c.refresh(u32::from(arg >> 3) * 60),
            2 => c.create_permission(&[peer]),
            3 => c.channel_bind(0x4000 + u16::from(arg >> 3), peer),
            4 => c.send(peer, &[arg; 3]),
            5 => TestClient::channel_data(0x4000 + u16::from(arg >> 3), &[arg; 5], t.transport == Transport::Tcp),
            6 => {
                now += Duration::from_secs(u64::from(arg) * 7);
                engine.handle_timeout(now);
                Vec::new()
            }
            7 => {
                engine.handle_client_closed(now, &t);
                Vec::new()
            }
            8 => {
                // A datagram from a peer to whichever relay socket exists.
                let token = engine.allocations().find_map(|a| a.relays.iter().flatten().next().map(|r| r.socket.token));
                if let Some(token) = token {
                    match engine.handle_peer(now, token, peer, &[arg; 4], &mut out) {
                        Output::ToClient { len, .. } => assert!(len <= out.len()),
                        Output::None => {}
                        Output::ToPeer { .. } | Output::Joined { .. } => panic!("a peer's datagram went to a peer"),
                    }
                }
                Vec::new()
            }
            9 => {
                c.nonce.clear();
                Vec::new()
            }
            10 => {
                // A Binding request with RFC 5780 attributes picked by `arg`.
                c.request(turnd::proto::Method::BINDING, |w| {
                    if arg & 0x08 != 0 {
                        let _ = w.attr(turnd::proto::AttrType::CHANGE_REQUEST, &[0, 0, 0, arg & 0x06]);
                    }
                    if arg & 0x10 != 0 {
                        let _ = w.attr(turnd::proto::AttrType::RESPONSE_PORT, &[arg, 1, 0, 0]);
                    }
                    if arg & 0x20 != 0 {
                        let _ = w.attr(turnd::proto::AttrType::PADDING, &vec![0; usize::from(arg)]);
                    }
                })
            }
            11 => {
                // An RTP/RTCP pair: EVEN-PORT (R from `arg`), and DONT-FRAGMENT now and then.
                c.request(turnd::proto::Method::ALLOCATE, |w| {
                    let _ = w.attr(turnd::proto::AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                    let _ = w.attr(turnd::proto::AttrType::EVEN_PORT, &[arg & 0x80]);
                    if arg & 1 != 0 {
                        let _ = w.attr(turnd::proto::AttrType::DONT_FRAGMENT, &[]);
                    }
                })
            }
            12 => {
                // Claim the last token (or a corrupted one).
                let mut token = last_token;
                token[0] ^= arg & 0x01;
                c.request(turnd::proto::Method::ALLOCATE, |w| {
                    let _ = w.attr(turnd::proto::AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                    let _ = w.attr(turnd::proto::AttrType::RESERVATION_TOKEN, &token);
                    if arg & 0x02 != 0 {
                        let _ = w.attr(turnd::proto::AttrType::EVEN_PORT, &[0]);
                    }
                })
            }
            13 => {
                // A TCP allocation (refused over UDP), then Connect to a peer.
                c.request(turnd::proto::Method::ALLOCATE, |w| {
                    let _ = w.attr(turnd::proto::AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
                })
            }
            14 => c.request(turnd::proto::Method::CONNECT, |w| {
                let _ = w.xor_address(turnd::proto::AttrType::XOR_PEER_ADDRESS, peer);
            }),
            15 => {
                // Connections the engine started come up or fail.
                for (id, _, _) in relay.take_connecting() {
                    let _ = engine.handle_connected(now, id, arg & 1 == 0, &mut out);
                }
                // A peer connects to the last TCP listener.
                if let Some(token) = relay.listener_token() {
                    let _ = engine.handle_peer_connection(now, token, peer, relay.accepted(), &mut out);
                }
                Vec::new()
            }
            16 => {
                // ConnectionBind (on another client's 5-tuple) for a connection the engine has.
                let id = engine.connections().map(|(id, _)| id.0).nth(usize::from(arg >> 4)).unwrap_or(u32::from(arg));
                c.request(turnd::proto::Method::CONNECTION_BIND, |w| {
                    let _ = w.attr_u32(turnd::proto::AttrType::CONNECTION_ID, id);
                })
            }
            17 => {
                // A joined data connection ends.
                let id = engine.connections().map(|(id, _)| *id).nth(usize::from(arg));
                if let Some(id) = id {
                    engine.handle_connection_closed(id);
                }
                Vec::new()
            }
            18 => {
                // Usage for billing: never more allocation time than has passed per allocation.
                let open = engine.allocations().count() as u64;
                let elapsed = now.saturating_duration_since(start).as_millis() as u64;
                for (_, u) in engine.take_usage(now, arg & 1 == 0) {
                    assert!(u.allocation_ms <= elapsed * (open + 8));
                }
                Vec::new()
            }
            _ => {
                // Raw bytes from the input.
                let n = usize::from(arg).min(rest.len());
                let (raw, tail) = rest.split_at(n);
                rest = tail;
                raw.to_vec()
            }
        };
        if !packet.is_empty() {
            match engine.handle_client(now, &t, &packet, &mut out) {
                Output::ToClient { tuple, len: n } => {
                    if tuple != t {
                        // Only an RFC 5780 answer moves: over UDP, from one of the four
                        // addresses, to the requester's own IP.
                        assert_eq!(tuple.transport, Transport::Udp, "a TCP answer left its connection");
                        assert_eq!(tuple.client.ip(), t.client.ip(), "an answer went to another IP");
                        assert!(quad.all().contains(&tuple.server), "an answer from a foreign address");
                    }
                    let resp = Message::parse(&out[..n]).expect("engine wrote a malformed response");
                    assert!(matches!(resp.class(), Class::Success | Class::Error));
                    let req = Message::parse(&packet).expect("engine answered a malformed request");
                    assert_eq!(req.transaction_id(), resp.transaction_id());
                    if let Some(a) = resp.get(turnd::proto::AttrType::RESERVATION_TOKEN) {
                        if let Ok(t) = <[u8; 8]>::try_from(a.value) {
                            last_token = t;
                        }
                    }
                    c.read(&out[..n]);
                }
                Output::ToPeer { data, .. } => assert!(data.len() <= packet.len()),
                Output::Joined { tuple, .. } => assert_eq!(tuple, t, "joined another connection"),
                Output::None => {}
            }
        }
        // The driver applies the fast-path commands; a removal reports the entry's last counts.
        while let Some(cmd) = engine.poll_fast_path() {
            match cmd {
                turnd::server::FastPath::Install(e) => {
                    offloaded.retain(|o| (o.client, o.listener, o.channel) != (e.client, e.listener, e.channel));
                    offloaded.push(e);
                }
                turnd::server::FastPath::Remove(e) => {
                    let before = offloaded.len();
                    offloaded.retain(|o| *o != e);
                    assert_eq!(offloaded.len() + 1, before, "removed an entry that was not installed");
                    let t = turnd::server::Traffic { to_peer_packets: 1, to_peer_bytes: u64::from(arg), ..Default::default() };
                    engine.handle_fast_path_traffic(now, &e, t, true);
                }
            }
        }
        // Every entry is a live channel with a live permission on a UDP allocation.
        for e in &offloaded {
            let a = engine.allocations().find(|a| a.tuple.client == e.client).expect("an entry outlived its allocation");
            assert_eq!(a.tuple.transport, Transport::Udp);
            assert!(e.expires > now, "an entry past its deadline");
            assert_eq!(a.channel_peer(e.channel, now), Some(e.peer), "an entry for a channel that is not bound");
            assert!(a.has_permission(e.peer.ip(), now), "an entry without a permission");
        }
        // The books balance after every step.
        let allocations = engine.allocation_count();
        let sockets: usize = engine.allocations().map(|a| a.relays.iter().flatten().count()).sum();
        assert_eq!(relay.open_sockets(), sockets + engine.reserved_ports(), "a relay socket leaked");
        assert!(engine.reserved_ports() <= 8, "more reservations than allocations allowed");
        assert_eq!(shared.quota.total() as usize, allocations, "quota out of step");
        assert!(allocations <= 4, "more allocations than 5-tuples");
        let active = metrics.level(|s| &s.allocations_active[Transport::Udp as usize]) + metrics.level(|s| &s.allocations_active[Transport::Tcp as usize]);
        assert_eq!(active as usize, allocations);
        let perms: usize = engine.allocations().map(|a| a.permissions.len()).sum();
        assert_eq!(metrics.level(|s| &s.permissions_active) as usize, perms);
        // Every open peer connection is one the engine holds, and counted once it is up.
        let held = engine.connections().count();
        let up = engine
            .connections()
            .filter(|(_, c)| !matches!(c.state, turnd::server::ConnectionState::Connecting))
            .count();
        assert_eq!(relay.streams(), held, "a peer connection leaked");
        assert_eq!(metrics.level(|s| &s.tcp_connections_active) as usize, up);
    }
    // When time runs out, everything is released, fast-path entries too.
    now += Duration::from_secs(4 * 3600);
    engine.handle_timeout(now);
    while let Some(cmd) = engine.poll_fast_path() {
        if let turnd::server::FastPath::Remove(e) = cmd {
            offloaded.retain(|o| *o != e);
            engine.handle_fast_path_traffic(now, &e, Default::default(), true);
        }
    }
    assert!(offloaded.is_empty(), "a fast-path entry leaked");
    assert_eq!(engine.allocation_count(), 0);
    assert_eq!(relay.open_sockets(), 0);
    assert_eq!(engine.reserved_ports(), 0);
    assert_eq!((relay.streams(), relay.listeners()), (0, 0), "TCP relay sockets left");
    assert_eq!(shared.quota.total(), 0);
    assert_eq!(metrics.level(|s| &s.permissions_active), 0);
    assert_eq!(metrics.level(|s| &s.channels_active), 0);
});
