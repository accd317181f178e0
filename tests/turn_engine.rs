//! TURN engine scenarios in memory, on a virtual clock: no sockets, no sleeps. Every expiry
//! is checked at its deadline and one tick before.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnd::auth::{Credentials, NonceKey, RestSecrets, StaticUsers};
use turnd::metrics::{AuthFailure, Direction, DropReason, Metrics, TurnMethod};
use turnd::proto::{AttrType, Class, Message, MessageWriter, Method};
use turnd::server::memory::MemoryRelay;
use turnd::server::testclient::{Response, TestClient};
use turnd::server::{
    Engine, EngineConfig, Epoch, FastPath, FastPathEntry, FiveTuple, Output, PeerPolicy, PortRange, RelayToken, Shared,
    Transport,
};

const REALM: &str = "test.realm";
const TICK: Duration = Duration::from_millis(1);

fn tuple(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        server: SocketAddr::from(([127, 0, 0, 1], 3478)),
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2], port))
}

fn config() -> EngineConfig {
    EngineConfig {
        realm: REALM.into(),
        relay_addresses: vec![IpAddr::from([127, 0, 0, 1])],
        peers: PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]),
        ..EngineConfig::default()
    }
}

fn credentials() -> Credentials {
    Credentials {
        users: StaticUsers::new(
            REALM,
            [
                ("alice".to_string(), "wonderland".to_string()),
                ("bob".to_string(), "builder".to_string()),
            ],
        ),
        secrets: RestSecrets::new(["rest-secret".to_string()]),
        file_users: Default::default(),
    }
}

enum Sent {
    None,
    Reply(Vec<u8>),
    Relay {
        from: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// ConnectionBind's answer, and the connection it joined.
    Joined(Vec<u8>, turnd::server::ConnectionId),
}

struct World {
    engine: Engine<MemoryRelay>,
    relay: MemoryRelay,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    now: Instant,
    start: Instant,
    out: Vec<u8>,
}

impl World {
    fn new(config: EngineConfig) -> World {
        Self::with(config, credentials())
    }

    fn with(config: EngineConfig, creds: Credentials) -> World {
        Self::seeded(config, creds, [9; 32])
    }

    fn seeded(config: EngineConfig, creds: Credentials, seed: [u8; 32]) -> World {
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(Shared::new(Arc::new(creds), NonceKey::from_bytes([9; 32])));
        let relay = MemoryRelay::default();
        let start = Instant::now();
        let clock = Epoch {
            at: start,
            unix: Duration::from_secs(1_800_000_000),
        };
        let engine = Engine::new(Arc::new(config), shared.clone(), relay.clone(), clock, seed);
        metrics.register(engine.stats().clone());
        World {
            engine,
            relay,
            metrics,
            shared,
            now: start,
            start,
            out: vec![0u8; 70_000],
        }
    }

    fn send(&mut self, t: &FiveTuple, bytes: &[u8]) -> Sent {
        match self.engine.handle_client(self.now, t, bytes, &mut self.out) {
            Output::None => Sent::None,
            Output::ToClient { tuple, len } => {
                assert_eq!(tuple, *t, "answers go back on the request's 5-tuple");
                Sent::Reply(self.out[..len].to_vec())
            }
            Output::ToPeer { socket, peer, data } => Sent::Relay {
                from: socket.addr,
                peer,
                data: data.to_vec(),
            },
            Output::Joined { tuple, len, connection } => {
                assert_eq!(tuple, *t, "a ConnectionBind is answered on its own connection");
                Sent::Joined(self.out[..len].to_vec(), connection)
            }
        }
    }

    /// Sends a request built by `build` once, and reads the answer.
    fn ask_once(
        &mut self,
        c: &mut TestClient,
        t: &FiveTuple,
        build: impl FnOnce(&mut TestClient) -> Vec<u8>,
    ) -> Response {
        let req = build(c);
        let Sent::Reply(bytes) = self.send(t, &req) else {
            panic!("request not answered")
        };
        c.read(&bytes)
    }

    /// Sends a request built by `build`; after a first 401 that teaches the nonce, or a 438
    /// that renews it, sends it again, as real clients do.
    fn ask(
        &mut self,
        c: &mut TestClient,
        t: &FiveTuple,
        mut build: impl FnMut(&mut TestClient) -> Vec<u8>,
    ) -> Response {
        let first = c.nonce.is_empty();
        let req = build(c);
        let Sent::Reply(bytes) = self.send(t, &req) else {
            panic!("request not answered")
        };
        let r = c.read(&bytes);
        if (first && r.error == Some(401)) || r.error == Some(438) {
            let req = build(c);
            let Sent::Reply(bytes) = self.send(t, &req) else {
                panic!("request not answered")
            };
            return c.read(&bytes);
        }
        r
    }

    fn allocate(&mut self, c: &mut TestClient, t: &FiveTuple) -> Response {
        self.ask(c, t, |c| c.allocate())
    }

    fn token(&self, t: &FiveTuple) -> RelayToken {
        let a = self.engine.allocations().find(|a| a.tuple == *t).expect("allocation");
        a.relays[0].as_ref().expect("IPv4 relay").socket.token
    }

    fn peer_sends(&mut self, token: RelayToken, from: SocketAddr, data: &[u8]) -> Option<(FiveTuple, Vec<u8>)> {
        match self.engine.handle_peer(self.now, token, from, data, &mut self.out) {
            Output::ToClient { tuple, len } => Some((tuple, self.out[..len].to_vec())),
            Output::None => None,
            Output::ToPeer { .. } | Output::Joined { .. } => panic!("a peer's datagram goes to the client"),
        }
    }

    /// Moves the clock to `start + at` and runs due timers.
    fn at(&mut self, at: Duration) {
        self.now = self.start + at;
        self.engine.handle_timeout(self.now);
    }

    /// Runs the engine as a driver would until `start + at`: jumps from one deadline that
    /// `poll_timeout` gives to the next, handling each at its moment. Returns how many
    /// wake-ups it took.
    fn run_until(&mut self, at: Duration) -> usize {
        let end = self.start + at;
        let mut wakeups = 0;
        while let Some(deadline) = self.engine.poll_timeout().filter(|d| *d <= end) {
            self.now = self.now.max(deadline);
            self.engine.handle_timeout(self.now);
            wakeups += 1;
            assert!(wakeups < 100_000, "the timer does not advance");
        }
        self.now = end;
        wakeups
    }
}

/// A datagram path between a client and the engine that loses, delays and reorders, driven
/// by a seeded generator so that every run is the same.
struct Link {
    state: u64,
    /// Out of 100.
    loss: u64,
    reorder: u64,
    held: Vec<Vec<u8>>,
}

impl Link {
    fn new(seed: u64, loss: u64, reorder: u64) -> Link {
        Link {
            state: seed | 1,
            loss,
            reorder,
            held: Vec::new(),
        }
    }

    fn roll(&mut self) -> u64 {
        // xorshift64: enough to decide fates.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % 100
    }

    /// What arrives after `packet` is sent: nothing (lost), nothing yet (held back, to arrive
    /// after a later one), or it and whatever was held.
    fn pass(&mut self, packet: Vec<u8>) -> Vec<Vec<u8>> {
        if self.roll() < self.loss {
            return vec![];
        }
        if self.roll() < self.reorder {
            self.held.push(packet);
            return vec![];
        }
        let mut out = vec![packet];
        out.append(&mut self.held);
        out
    }
}

fn alice() -> TestClient {
    TestClient::new("alice", REALM, "wonderland")
}

fn success(r: &Response) {
    assert_eq!(r.class, Some(Class::Success), "{r:?}");
    assert!(
        r.integrity || r.integrity_sha256,
        "success responses carry integrity: {r:?}"
    );
}

#[test]
fn allocate_needs_a_challenge_then_succeeds_with_integrity() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    let Sent::Reply(bytes) = w.send(&t, &c.allocate()) else {
        panic!()
    };
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.class(), Class::Error);
    assert!(m.get(AttrType::REALM).is_some() && m.get(AttrType::NONCE).is_some());
    // By default the challenge is as small as it can be: no PASSWORD-ALGORITHMS, a 16-byte
    // nonce without the RFC 8489 cookie, no reason phrase.
    assert!(m.get(AttrType::PASSWORD_ALGORITHMS).is_none());
    assert_eq!(m.get(AttrType::NONCE).unwrap().value.len(), 16);
    assert_eq!(bytes.len(), 20 + 8 + 4 + 12 + 4 + 16, "401 of {} bytes", bytes.len());
    assert!(!m.has_integrity(), "a 401 cannot be signed");
    assert_eq!(c.read(&bytes).error, Some(401));
    assert_eq!(w.engine.allocation_count(), 0, "a challenge allocates nothing");

    let r = w.ask(&mut c, &t, |c| c.allocate());
    success(&r);
    assert_eq!(r.lifetime, Some(600));
    assert_eq!(r.mapped, Some(t.client));
    let relay = r.relayed[0];
    assert_eq!(relay.ip(), IpAddr::from([127, 0, 0, 1]));
    assert!(relay.port() >= 49152);
    assert_eq!(w.relay.open_sockets(), 1);
    assert_eq!(w.metrics.level(|s| &s.allocations_active[Transport::Udp as usize]), 1);
    assert_eq!(
        w.metrics.total(|s| &s.turn_requests[TurnMethod::allocate as usize][0]),
        1
    );
}

#[test]
fn allocation_expires_at_its_deadline_and_not_a_tick_before() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    w.at(Duration::from_secs(600) - TICK);
    assert_eq!(w.engine.allocation_count(), 1);
    w.at(Duration::from_secs(600));
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.relay.open_sockets(), 0, "relay socket released");
    assert_eq!(w.shared.quota.total(), 0, "quota released");
    assert_eq!(w.metrics.level(|s| &s.allocations_active[Transport::Udp as usize]), 0);
    assert_eq!(w.ask(&mut c, &t, |c| c.refresh(600)).error, Some(437));
}

#[test]
fn refresh_extends_and_caps_lifetime_and_zero_deletes() {
    let mut cfg = config();
    cfg.max_lifetime = Duration::from_secs(1800);
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    w.at(Duration::from_secs(500));
    let r = w.ask(&mut c, &t, |c| c.refresh(99_999));
    success(&r);
    assert_eq!(r.lifetime, Some(1800), "capped at max_lifetime");
    let r = w.ask(&mut c, &t, |c| c.refresh(30));
    assert_eq!(r.lifetime, Some(600), "raised to the default");
    w.at(Duration::from_secs(500 + 600) - TICK);
    assert_eq!(w.engine.allocation_count(), 1);
    let r = w.ask(&mut c, &t, |c| c.refresh(0));
    success(&r);
    assert_eq!(r.lifetime, Some(0));
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.relay.open_sockets(), 0);
}

#[test]
fn permission_expires_at_five_minutes_and_gates_both_directions() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    let token = w.token(&t);
    // No permission yet: both directions drop.
    assert!(w.peer_sends(token, peer(7000), b"hi").is_none());
    assert!(matches!(w.send(&t, &c.send(peer(7000), b"hi")), Sent::None));
    assert_eq!(w.metrics.total(|s| &s.dropped[DropReason::no_permission as usize]), 2);

    let relay_addr = w.engine.allocations().next().unwrap().relays[0].as_ref().unwrap().bound;
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 1);
    // Permissions are per IP: any port of the peer may answer.
    let (to, bytes) = w.peer_sends(token, peer(7001), b"pong").unwrap();
    assert_eq!(to, t);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!((m.method(), m.class()), (Method::DATA, Class::Indication));
    assert_eq!(m.get(AttrType::DATA).unwrap().value, b"pong");
    let Sent::Relay { from, peer: p, data } = w.send(&t, &c.send(peer(7000), b"ping")) else {
        panic!()
    };
    assert_eq!((from, p, data.as_slice()), (relay_addr, peer(7000), &b"ping"[..]));

    w.at(Duration::from_secs(300) - TICK);
    assert!(w.peer_sends(token, peer(7000), b"x").is_some());
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 1);
    w.at(Duration::from_secs(300));
    assert!(w.peer_sends(token, peer(7000), b"x").is_none());
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 0);
    assert_eq!(
        w.metrics
            .total(|s| &s.relay_packets[Direction::peer_to_client as usize]),
        2
    );
    assert_eq!(
        w.metrics
            .total(|s| &s.relay_packets[Direction::client_to_peer as usize]),
        1
    );
}

#[test]
fn channel_binding_lasts_ten_minutes_then_cools_down_five() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.refresh(3600)));
    let token = w.token(&t);
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert_eq!(w.metrics.level(|s| &s.channels_active), 1);

    // Peer data arrives as ChannelData; client ChannelData reaches the peer.
    let (_, bytes) = w.peer_sends(token, peer(7000), b"abc").unwrap();
    assert_eq!(bytes, [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c']);
    let Sent::Relay { peer: p, data, .. } = w.send(&t, &TestClient::channel_data(0x4001, b"xyz", false)) else {
        panic!()
    };
    assert_eq!((p, data.as_slice()), (peer(7000), &b"xyz"[..]));

    // Rebinding rules: the number keeps its peer, the peer keeps its number.
    assert_eq!(
        w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7002))).error,
        Some(400)
    );
    assert_eq!(
        w.ask(&mut c, &t, |c| c.channel_bind(0x4002, peer(7000))).error,
        Some(400)
    );

    // Keep the permission alive with CreatePermission, so only the channel can expire.
    w.at(Duration::from_secs(280));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    w.at(Duration::from_secs(560));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    w.at(Duration::from_secs(600) - TICK);
    assert!(matches!(
        w.send(&t, &TestClient::channel_data(0x4001, b"1", false)),
        Sent::Relay { .. }
    ));
    w.at(Duration::from_secs(600));
    assert!(matches!(
        w.send(&t, &TestClient::channel_data(0x4001, b"1", false)),
        Sent::None
    ));
    assert_eq!(w.metrics.level(|s| &s.channels_active), 0);
    // Unbound, so peer data is a Data indication again.
    let (_, bytes) = w.peer_sends(token, peer(7000), b"abc").unwrap();
    assert_eq!(Message::parse(&bytes).unwrap().method(), Method::DATA);
    // During the cool-down the number cannot go to another peer...
    assert_eq!(
        w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7002))).error,
        Some(400)
    );
    // ...and after it, it can.
    w.at(Duration::from_secs(600 + 300));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7002))));
}

#[test]
fn channel_data_to_tcp_clients_is_padded() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = FiveTuple {
        transport: Transport::Tcp,
        ..tuple(5000)
    };
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4000, peer(7000))));
    let token = w.token(&t);
    let (_, bytes) = w.peer_sends(token, peer(7000), b"abcde").unwrap();
    assert_eq!(bytes.len(), 12, "4-byte header, 5 bytes, 3 of padding");
    assert_eq!(&bytes[9..], &[0, 0, 0]);
    // Closing the TCP connection frees the allocation at once.
    w.engine.handle_client_closed(w.now, &t);
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.relay.open_sockets(), 0);
}

#[test]
fn stale_nonce_gets_438_with_a_fresh_nonce() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    w.at(Duration::from_secs(599));
    success(&w.ask(&mut c, &t, |c| c.refresh(600)));
    w.at(Duration::from_secs(600));
    let old = c.nonce.clone();
    let r = w.ask_once(&mut c, &t, |c| c.refresh(600));
    assert_eq!(r.error, Some(438));
    assert_ne!(c.nonce, old, "a fresh nonce came with the 438");
    success(&w.ask(&mut c, &t, |c| c.refresh(600)));
    assert_eq!(
        w.metrics.total(|s| &s.auth_failures[AuthFailure::stale_nonce as usize]),
        1
    );
    // A nonce from another client is not accepted either (another IP: the nonce is bound
    // to the client's IP and transport, not its port).
    let mut other = c.clone();
    let mut elsewhere = tuple(5001);
    elsewhere.client = SocketAddr::from(([127, 0, 0, 9], 5001));
    let r = w.ask_once(&mut other, &elsewhere, |c| c.allocate());
    assert_eq!(r.error, Some(438));
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::invalid_nonce as usize]),
        1
    );
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 2;
    cfg.max_allocations = 3;
    let mut w = World::new(cfg);
    for port in [5000, 5001] {
        success(&w.allocate(&mut alice(), &tuple(port)));
    }
    assert_eq!(w.allocate(&mut alice(), &tuple(5002)).error, Some(486));
    let mut bob = TestClient::new("bob", REALM, "builder");
    success(&w.allocate(&mut bob, &tuple(6000)));
    assert_eq!(
        w.allocate(&mut TestClient::new("bob", REALM, "builder"), &tuple(6001))
            .error,
        Some(486)
    );
    // Freeing one gives the slot back.
    assert_eq!(w.ask(&mut bob, &tuple(6000), |c| c.refresh(0)).lifetime, Some(0));
    success(&w.allocate(&mut TestClient::new("bob", REALM, "builder"), &tuple(6002)));
}

#[test]
fn five_tuple_rules_437_and_retransmission() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    let Sent::Reply(challenge) = w.send(&t, &c.allocate()) else {
        panic!()
    };
    assert_eq!(c.read(&challenge).error, Some(401));
    let tid = turnd::proto::TransactionId([5; 12]);
    let req = c.request_with_tid(Method::ALLOCATE, tid, |w| {
        let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    let Sent::Reply(first) = w.send(&t, &req) else { panic!() };
    let first = c.read(&first);
    success(&first);
    // A retransmission (same transaction) gets the same relayed address again.
    let Sent::Reply(again) = w.send(&t, &req) else { panic!() };
    assert_eq!(c.read(&again).relayed, first.relayed);
    assert_eq!(w.relay.open_sockets(), 1);
    // A new Allocate on the same 5-tuple is a mismatch.
    assert_eq!(w.ask(&mut c, &t, |c| c.allocate()).error, Some(437));
    // Requests from a 5-tuple without an allocation are a mismatch too.
    let mut c2 = alice();
    assert_eq!(w.ask(&mut c2, &tuple(5001), |c| c.refresh(600)).error, Some(437));
    assert_eq!(
        w.ask(&mut c2, &tuple(5001), |c| c.create_permission(&[peer(1)])).error,
        Some(437)
    );
}

#[test]
fn other_credentials_on_an_allocation_get_441() {
    let mut w = World::new(config());
    let t = tuple(5000);
    success(&w.allocate(&mut alice(), &t));
    let mut bob = TestClient::new("bob", REALM, "builder");
    assert_eq!(
        w.ask(&mut bob, &t, |c| c.create_permission(&[peer(7000)])).error,
        Some(441)
    );
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::wrong_credentials as usize]),
        1
    );
}

#[test]
fn password_algorithms_are_offered_when_configured() {
    let mut cfg = config();
    cfg.password_algorithms = true;
    let mut w = World::new(cfg);
    let Sent::Reply(bytes) = w.send(&tuple(5000), &alice().allocate()) else {
        panic!()
    };
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(
        m.get(AttrType::PASSWORD_ALGORITHMS).unwrap().value,
        [0, 2, 0, 0, 0, 1, 0, 0]
    );
    assert!(m.get(AttrType::NONCE).unwrap().value.starts_with(b"obMatJos2gAAA"));
}

#[test]
fn message_integrity_sha256_round_trip() {
    let mut cfg = config();
    cfg.password_algorithms = true;
    let mut w = World::new(cfg);
    let mut c = alice();
    c.sha256 = true;
    let t = tuple(5000);
    let r = w.allocate(&mut c, &t);
    assert_eq!(r.class, Some(Class::Success));
    assert!(r.integrity_sha256, "the response is signed the way the request was");
    assert!(!r.integrity);
    // A wrong SHA-256 key fails.
    let mut bad = TestClient::new("alice", REALM, "nope");
    bad.sha256 = true;
    assert_eq!(w.allocate(&mut bad, &tuple(5001)).error, Some(401));
}

#[test]
fn authentication_failures_are_counted_by_reason() {
    let mut w = World::new(config());
    let r = w.allocate(&mut TestClient::new("alice", REALM, "wrong"), &tuple(1));
    assert_eq!(r.error, Some(401));
    let r = w.allocate(&mut TestClient::new("mallory", REALM, "x"), &tuple(2));
    assert_eq!(r.error, Some(401));
    // REST: a correctly signed but expired username.
    let secrets = RestSecrets::new(["rest-secret".to_string()]);
    let (user, pass) = secrets.mint(1_700_000_000, Some("carol")).unwrap();
    let r = w.allocate(&mut TestClient::new(&user, REALM, &pass), &tuple(3));
    assert_eq!(r.error, Some(401));
    // REST: valid.
    let (user, pass) = secrets.mint(1_900_000_000, Some("carol")).unwrap();
    success(&w.allocate(&mut TestClient::new(&user, REALM, &pass), &tuple(4)));
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::bad_integrity as usize]),
        1
    );
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::unknown_user as usize]),
        1
    );
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::expired_credential as usize]),
        1
    );
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    // A Refresh asking for 600 s, with LIFETIME 0 appended after MESSAGE-INTEGRITY.
    let mut req = c.refresh(600);
    let len = u16::from_be_bytes([req[2], req[3]]) + 8;
    req[2..4].copy_from_slice(&len.to_be_bytes());
    req.extend_from_slice(&[0x00, 0x0D, 0x00, 0x04, 0, 0, 0, 0]);
    let Sent::Reply(bytes) = w.send(&t, &req) else { panic!() };
    let r = c.read(&bytes);
    success(&r);
    assert_eq!(r.lifetime, Some(600));
    assert_eq!(w.engine.allocation_count(), 1, "the smuggled LIFETIME 0 had no effect");
}

#[test]
fn negative_cases_have_their_error_codes() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    // Missing REQUESTED-TRANSPORT: 400. A transport other than UDP or TCP: 442.
    let r = w.ask(&mut c, &t, |c| c.request(Method::ALLOCATE, |_| {}));
    assert_eq!(r.error, Some(400));
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
        })
    });
    assert_eq!(r.error, Some(442));
    // RESERVATION-TOKEN: unknown 508, with EVEN-PORT or a family 400, not eight bytes 400.
    fn token(extra: fn(&mut MessageWriter<'_>), value: Vec<u8>) -> impl FnMut(&mut TestClient) -> Vec<u8> {
        move |c: &mut TestClient| {
            c.request(Method::ALLOCATE, |w| {
                let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                let _ = w.attr(AttrType::RESERVATION_TOKEN, &value);
                extra(w);
            })
        }
    }
    assert_eq!(w.ask(&mut c, &t, token(|_| {}, vec![1; 8])).error, Some(508));
    assert_eq!(w.ask(&mut c, &t, token(|_| {}, vec![1; 7])).error, Some(400));
    let even = |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::EVEN_PORT, &[0x80]);
    };
    assert_eq!(w.ask(&mut c, &t, token(even, vec![1; 8])).error, Some(400));
    let family = |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
    };
    assert_eq!(w.ask(&mut c, &t, token(family, vec![1; 8])).error, Some(400));
    // EVEN-PORT with R on a dual-stack allocation: 400.
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            let _ = w.attr(AttrType::EVEN_PORT, &[0x80]);
        })
    });
    assert_eq!(r.error, Some(400));
    // An IPv6 relay where the server has none: 440.
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    });
    assert_eq!(r.error, Some(440));
    // EVEN-PORT without reservation gives an even port.
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::EVEN_PORT, &[0x00]);
        })
    });
    success(&r);
    assert_eq!(r.relayed[0].port() % 2, 0);
    // Peers: denied address 403, other family 443, channel number out of range 400.
    let denied: SocketAddr = "10.0.0.1:9".parse().unwrap();
    assert_eq!(w.ask(&mut c, &t, |c| c.create_permission(&[denied])).error, Some(403));
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    assert_eq!(w.ask(&mut c, &t, |c| c.create_permission(&[v6])).error, Some(443));
    assert_eq!(w.ask(&mut c, &t, |c| c.channel_bind(0x3FFF, peer(1))).error, Some(400));
    assert_eq!(w.ask(&mut c, &t, |c| c.channel_bind(0x5000, peer(1))).error, Some(400));
    // All-or-nothing: one denied peer means no permission at all.
    assert_eq!(
        w.ask(&mut c, &t, |c| c.create_permission(&[peer(1), denied])).error,
        Some(403)
    );
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 0);
    assert_eq!(
        w.metrics.total(|s| &s.turn_requests[TurnMethod::allocate as usize][1]),
        9,
        "the first 401, then eight refused Allocates"
    );
}

#[test]
fn legacy_channel_numbers_are_opt_in() {
    let mut cfg = config();
    cfg.max_channel = turnd::proto::ChannelNumber::RFC5766_MAX;
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x7000, peer(7000))));
    assert!(matches!(
        w.send(&t, &TestClient::channel_data(0x7000, b"x", false)),
        Sent::Relay { .. }
    ));
}

#[test]
fn peer_policy_refuses_loopback_and_mapped_forms_by_default() {
    let mut cfg = config();
    cfg.peers = PeerPolicy::default();
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    for p in ["127.0.0.1:9", "0.0.0.0:9", "192.168.1.1:9", "169.254.169.254:80"] {
        let p: SocketAddr = p.parse().unwrap();
        assert_eq!(w.ask(&mut c, &t, |c| c.create_permission(&[p])).error, Some(403), "{p}");
        assert_eq!(w.ask(&mut c, &t, |c| c.channel_bind(0x4000, p)).error, Some(403), "{p}");
        assert!(matches!(w.send(&t, &c.send(p, b"x")), Sent::None), "{p}");
    }
    // The v4-mapped loopback is judged as 127.0.0.1 (and as IPv4: 403 before 443).
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().unwrap();
    assert_eq!(w.ask(&mut c, &t, |c| c.create_permission(&[mapped])).error, Some(403));
}

#[test]
fn dual_allocation_with_additional_address_family() {
    let mut cfg = config();
    cfg.relay_addresses = vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()];
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    });
    success(&r);
    assert_eq!(r.relayed.len(), 2);
    assert!(r.relayed[0].is_ipv4() && r.relayed[1].is_ipv6());
    assert_eq!(w.relay.open_sockets(), 2);
    // Both families of peer are now acceptable.
    success(&w.ask(&mut c, &t, |c| {
        c.create_permission(&[peer(1), "[::1]:9".parse().unwrap()])
    }));
    // Both REQUESTED- and ADDITIONAL-ADDRESS-FAMILY: 400.
    let r = w.ask(&mut alice(), &tuple(5001), |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
            let _ = w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    });
    assert_eq!(r.error, Some(400));
}

#[test]
fn small_port_pool_is_exhausted_then_fully_reused() {
    let mut cfg = config();
    cfg.relay_ports = PortRange::new(50000, 50003).unwrap();
    assert_eq!(PortRange::new(50003, 50000), None, "a range cannot run backwards");
    cfg.max_allocations_per_user = 1000;
    let mut w = World::new(cfg);
    let mut clients: Vec<(TestClient, FiveTuple)> = Vec::new();
    for i in 0..4 {
        let mut c = alice();
        let t = tuple(6000 + i);
        success(&w.allocate(&mut c, &t));
        clients.push((c, t));
    }
    assert_eq!(w.allocate(&mut alice(), &tuple(7000)).error, Some(508));
    for (c, t) in &mut clients {
        assert_eq!(w.ask(c, t, |c| c.refresh(0)).lifetime, Some(0));
    }
    assert_eq!(w.relay.open_sockets(), 0);
    // Ten times the pool, allocated and freed, in every way an allocation can end.
    for round in 0..40u16 {
        let mut c = alice();
        let t = FiveTuple {
            transport: if round % 2 == 0 { Transport::Udp } else { Transport::Tcp },
            ..tuple(8000 + round)
        };
        success(&w.allocate(&mut c, &t));
        match round % 3 {
            0 => assert_eq!(w.ask(&mut c, &t, |c| c.refresh(0)).lifetime, Some(0)),
            1 => w.engine.handle_client_closed(w.now, &t),
            _ => {
                let at = w.now + Duration::from_secs(600);
                w.at(at - w.start);
            }
        }
        if round % 3 == 1 && t.transport == Transport::Udp {
            // A UDP "close" is not a thing: end it by refresh instead.
            assert_eq!(w.ask(&mut c, &t, |c| c.refresh(0)).lifetime, Some(0));
        }
        assert_eq!(w.relay.open_sockets(), 0, "round {round}");
    }
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.shared.quota.total(), 0);
    assert_eq!(
        w.metrics.level(|s| &s.allocations_active[Transport::Udp as usize])
            + w.metrics.level(|s| &s.allocations_active[Transport::Tcp as usize]),
        0
    );
    for i in 0..4 {
        success(&w.allocate(&mut alice(), &tuple(9000 + i)));
    }
    assert!(w.engine.timer_entries() < 200, "timer heap stays bounded");
}

#[test]
fn no_credentials_means_no_relay() {
    let mut w = World::with(config(), Credentials::default());
    let mut c = alice();
    let r = w.ask(&mut c, &tuple(5000), |c| c.allocate());
    assert_eq!(r.error, Some(403));
    assert_eq!(w.engine.allocation_count(), 0);
}

#[test]
fn relay_external_is_advertised_while_the_socket_binds_locally() {
    let mut cfg = config();
    cfg.relay_external = vec!["203.0.113.5".parse().unwrap()];
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    let r = w.allocate(&mut c, &t);
    success(&r);
    let a = w.engine.allocations().next().unwrap();
    let relay = a.relays[0].as_ref().unwrap();
    assert_eq!(
        r.relayed,
        vec![SocketAddr::new("203.0.113.5".parse().unwrap(), relay.bound.port())]
    );
    assert_eq!(relay.bound.ip(), IpAddr::from([127, 0, 0, 1]));
}

// ---- Regressions for each class of coturn's security history ----

/// CVE-2018-4058, CVE-2020-26262, CVE-2026-27624: peers in loopback and unspecified ranges,
/// in every spelling, refused on CreatePermission, ChannelBind and Send.
#[test]
fn peer_address_bypasses_are_refused_on_every_path() {
    let mut cfg = config();
    cfg.peers = PeerPolicy::default();
    cfg.relay_addresses = vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()];
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    });
    success(&r);
    assert_eq!(r.relayed.len(), 2, "dual allocation, so both families are reachable");
    let peers = [
        "127.0.0.1:9",
        "127.1.2.3:9",
        "0.0.0.0:9",
        "[::]:9",
        "[::1]:9",
        "[::ffff:127.0.0.1]:9",
        "[::ffff:0.0.0.0]:9",
        "[::127.0.0.1]:9",
        "[64:ff9b::7f00:1]:9",
        "[2002:7f00:1::]:9",
        "10.0.0.1:9",
        "192.168.0.1:9",
        "172.16.0.1:9",
        "169.254.169.254:80",
        "100.64.0.1:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
        "[fe80::1]:9",
        "[fd00::1]:9",
        "[ff02::1]:9",
        "[::ffff:169.254.169.254]:80",
    ];
    for (i, p) in peers.iter().enumerate() {
        let p: SocketAddr = p.parse().unwrap();
        assert_eq!(
            w.ask(&mut c, &t, |c| c.create_permission(&[p])).error,
            Some(403),
            "CreatePermission {p}"
        );
        assert_eq!(
            w.ask(&mut c, &t, |c| c.channel_bind(0x4000 + i as u16, p)).error,
            Some(403),
            "ChannelBind {p}"
        );
        assert!(matches!(w.send(&t, &c.send(p, b"x")), Sent::None), "Send {p}");
    }
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 0);
    assert_eq!(
        w.metrics
            .total(|s| &s.relay_packets[Direction::client_to_peer as usize]),
        0
    );
}

/// CVE-2020-4067: uninitialised padding leaked memory. Every response is written into a
/// poisoned buffer here, and every padding byte must come out zero.
#[test]
fn padding_bytes_are_zero_in_every_response() {
    fn assert_padding_zero(bytes: &[u8], what: &str) {
        if bytes.first().is_some_and(|b| b & 0xC0 == 0x40) {
            let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
            assert!(bytes[4 + len..].iter().all(|&b| b == 0), "{what}: ChannelData padding");
            return;
        }
        let mut off = 20;
        while off < bytes.len() {
            let vlen = u16::from_be_bytes([bytes[off + 2], bytes[off + 3]]) as usize;
            let padded = (vlen + 3) & !3;
            assert!(
                bytes[off + 4 + vlen..off + 4 + padded].iter().all(|&b| b == 0),
                "{what}: attribute at {off}"
            );
            off += 4 + padded;
        }
    }
    let mut cfg = config();
    cfg.realm = "odd.realm".into(); // 9 bytes: padded
    cfg.software = Some("turnd-x".into()); // 7 bytes: padded
    cfg.password_algorithms = true;
    let creds = Credentials {
        users: StaticUsers::new("odd.realm", [("alice".to_string(), "wonderland".to_string())]),
        ..Credentials::default()
    };
    let mut w = World::with(cfg, creds);
    let mut c = TestClient::new("alice", "odd.realm", "wonderland");
    c.fingerprint = true;
    let t = FiveTuple {
        transport: Transport::Tcp,
        ..tuple(5000)
    };
    let reply = |w: &mut World, req: &[u8], what: &str| -> Vec<u8> {
        w.out.fill(0xAA);
        let Sent::Reply(bytes) = w.send(&t, req) else {
            panic!("{what}: no reply")
        };
        assert_padding_zero(&bytes, what);
        bytes
    };
    let b = reply(&mut w, &c.allocate(), "401");
    c.read(&b);
    let b = reply(&mut w, &c.allocate(), "Allocate success");
    c.read(&b);
    // One unknown attribute: UNKNOWN-ATTRIBUTES of 2 bytes needs padding.
    let mut plain = TestClient::new("x", "y", "z");
    plain.fingerprint = true;
    let unknown = plain.request(Method::BINDING, |w| {
        let _ = w.attr(AttrType(0x7F7F), &[]);
    });
    reply(&mut w, &unknown, "420");
    reply(&mut w, &c.channel_bind(0x3000, peer(1)), "400 signed");
    reply(
        &mut w,
        &c.create_permission(&["10.0.0.1:1".parse().unwrap()]),
        "403 signed",
    );
    reply(&mut w, &c.channel_bind(0x4000, peer(7000)), "ChannelBind success");
    reply(&mut w, &binding_with_fingerprint(), "Binding success");
    // Peer data of odd length, as ChannelData and as a Data indication.
    let token = w.token(&t);
    w.out.fill(0xAA);
    let (_, bytes) = w.peer_sends(token, peer(7000), b"odd").unwrap();
    assert_padding_zero(&bytes, "ChannelData to a TCP client");
    w.out.fill(0xAA);
    let (_, bytes) = w.peer_sends(token, peer(7001), b"odd").unwrap();
    assert_padding_zero(&bytes, "Data indication");
}

fn binding_with_fingerprint() -> Vec<u8> {
    let mut c = TestClient::new("x", "y", "z");
    c.fingerprint = true;
    c.request(Method::BINDING, |w| {
        let _ = w.attr(AttrType::SOFTWARE, b"abc");
    })
}

/// CVE-2026-40613: misaligned and truncated input. Every prefix of real requests, and
/// attribute lengths that lie, go through the engine: no panic, and nothing malformed is
/// answered.
#[test]
fn truncated_and_misaligned_input_never_panics_and_is_never_answered() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    let samples = [
        c.refresh(600),
        c.create_permission(&[peer(1), peer(2)]),
        c.channel_bind(0x4001, peer(3)),
        c.send(peer(1), b"some data here"),
        TestClient::channel_data(0x4001, b"abcdefg", true),
        binding_with_fingerprint(),
    ];
    for s in &samples {
        for cut in 0..s.len() {
            let part = &s[..cut];
            let answered = matches!(w.send(&t, part), Sent::Reply(_));
            if cut >= 20 && turnd::proto::Message::parse(part).is_err() {
                assert!(!answered, "a truncated message was answered");
            }
        }
        // Lying attribute lengths at every attribute offset: what does not parse is never
        // answered and never relayed, and is counted as malformed.
        for off in (20..s.len().saturating_sub(4)).step_by(2) {
            for delta in [1u16, 3, 255, 0xFFFF] {
                let mut m = s.clone();
                let l = u16::from_be_bytes([m[off + 2], m[off + 3]]).wrapping_add(delta);
                m[off + 2..off + 4].copy_from_slice(&l.to_be_bytes());
                let drops = |w: &World| -> u64 {
                    DropReason::ALL
                        .iter()
                        .map(|r| w.metrics.total(|s| &s.dropped[*r as usize]))
                        .sum()
                };
                let before = drops(&w);
                let sent = w.send(&t, &m);
                if turnd::proto::Message::parse(&m).is_err() && m[0] & 0xC0 == 0 {
                    assert!(matches!(sent, Sent::None), "a lying length was answered or relayed");
                    assert_eq!(drops(&w), before + 1, "and counted");
                }
            }
        }
    }
    // Through all of it the allocation stayed, and still relays.
    assert_eq!(w.engine.allocation_count(), 1);
    assert!(w.ask(&mut c, &t, |c| c.create_permission(&[peer(1)])).error.is_none());
    assert!(matches!(w.send(&t, &c.send(peer(1), b"still here")), Sent::Relay { data, .. } if data == b"still here"));
}

/// CVE-2025-69217: predictable tokens. Relay ports are drawn from the OS CSPRNG, and so is
/// the nonce key, so two servers never agree on a nonce.
#[test]
fn relay_ports_and_nonces_are_unpredictable() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 1000;
    let mut w = World::new(cfg);
    let mut ports = Vec::new();
    for i in 0..200 {
        let r = w.allocate(&mut alice(), &tuple(10_000 + i));
        ports.push(r.relayed[0].port());
    }
    let distinct: std::collections::HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 200);
    let ascending = ports.windows(2).filter(|p| p[1] == p[0].wrapping_add(1)).count();
    assert!(ascending < 5, "ports look sequential: {ports:?}");
    let low = ports.iter().filter(|&&p| p < 57344).count();
    assert!(
        (40..160).contains(&low),
        "ports cover the whole range: {low} of 200 in the lower half"
    );
    // Two keys from the OS generator give different nonces for the same client and time.
    let a = NonceKey::random().unwrap().issue(2_000_000_000, &tuple(1), false);
    let b = NonceKey::random().unwrap().issue(2_000_000_000, &tuple(1), false);
    assert_ne!(a, b);
}

#[test]
fn bandwidth_caps_drop_and_count_the_excess() {
    let mut cfg = config();
    cfg.bandwidth_per_allocation = 1000;
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    let token = w.token(&t);
    // 1000 bytes per second, both directions together: ten 200-byte packets at once, five pass.
    let passed = (0..10)
        .filter(|i| {
            if i % 2 == 0 {
                matches!(w.send(&t, &c.send(peer(7000), &[0; 200])), Sent::Relay { .. })
            } else {
                w.peer_sends(token, peer(7000), &[0; 200]).is_some()
            }
        })
        .count();
    assert_eq!(passed, 5);
    assert_eq!(w.metrics.total(|s| &s.dropped[DropReason::bandwidth as usize]), 5);
    // A second later the budget is back.
    let at = w.now + Duration::from_secs(1) - w.start;
    w.at(at);
    assert!(w.peer_sends(token, peer(7000), &[0; 200]).is_some());
}

#[test]
fn permissions_per_allocation_are_capped() {
    let mut cfg = config();
    cfg.peers = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]);
    let mut w = World::new(cfg);
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    for i in 0..1024u32 {
        let p = SocketAddr::from((std::net::Ipv4Addr::from(0x0A00_0000 + i), 9));
        success(&w.ask(&mut c, &t, |c| c.create_permission(&[p])));
    }
    let over = SocketAddr::from(([10, 255, 0, 1], 9));
    assert_eq!(w.ask(&mut c, &t, |c| c.create_permission(&[over])).error, Some(508));
    assert_eq!(w.ask(&mut c, &t, |c| c.channel_bind(0x4000, over)).error, Some(508));
    // Refreshing an existing one is still fine.
    success(&w.ask(&mut c, &t, |c| c.create_permission(&["10.0.0.1:1".parse().unwrap()])));
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 1024);
}

#[test]
fn the_server_wide_bandwidth_cap_is_shared_by_all_allocations() {
    let mut cfg = config();
    cfg.bandwidth_total = 1000;
    let mut w = World::new(cfg);
    let (ta, tb) = (tuple(5000), tuple(5001));
    let (mut a, mut b) = (alice(), alice());
    success(&w.allocate(&mut a, &ta));
    success(&w.allocate(&mut b, &tb));
    success(&w.ask(&mut a, &ta, |c| c.create_permission(&[peer(7000)])));
    success(&w.ask(&mut b, &tb, |c| c.create_permission(&[peer(7000)])));
    // Each allocation alone is unlimited; together they get 1000 bytes a second.
    let passed = (0..10)
        .filter(|i| {
            let (t, c) = if i % 2 == 0 { (&ta, &mut a) } else { (&tb, &mut b) };
            matches!(w.send(t, &c.send(peer(7000), &[0; 200])), Sent::Relay { .. })
        })
        .count();
    assert_eq!(passed, 5);
    assert_eq!(w.metrics.total(|s| &s.dropped[DropReason::bandwidth as usize]), 5);
}

/// Every byte the engine gives out during one scripted session with `seed`: answers,
/// relayed data both ways, and what is left after expiry.
fn replay(seed: [u8; 32]) -> Vec<Vec<u8>> {
    let mut w = World::seeded(config(), credentials(), seed);
    let mut out = Vec::new();
    let mut c = alice();
    let t = tuple(5000);
    let mut record = |sent: Sent| match sent {
        Sent::None => out.push(vec![]),
        Sent::Reply(b) => out.push(b),
        Sent::Relay { from, peer, data } => {
            out.push(format!("{from}>{peer}").into_bytes());
            out.push(data);
        }
        Sent::Joined(b, id) => {
            out.push(b);
            out.push(id.0.to_be_bytes().to_vec());
        }
    };
    for _ in 0..2 {
        // The first is challenged (401); the second carries the nonce it taught.
        let sent = w.send(&t, &c.allocate());
        if let Sent::Reply(b) = &sent {
            c.read(b);
        }
        record(sent);
    }
    for req in [c.channel_bind(0x4000, peer(7000)), c.create_permission(&[peer(7001)])] {
        record(w.send(&t, &req));
    }
    record(w.send(&t, &TestClient::channel_data(0x4000, b"to the peer", false)));
    record(w.send(&t, &c.send(peer(7001), b"indicated")));
    let token = w.token(&t);
    for from in [peer(7000), peer(7001), peer(7002)] {
        record(match w.peer_sends(token, from, b"back") {
            Some((_, b)) => Sent::Reply(b),
            None => Sent::None,
        });
    }
    w.at(Duration::from_secs(3600));
    out.push(vec![w.engine.allocation_count() as u8, w.relay.open_sockets() as u8]);
    out
}

#[test]
fn the_same_seed_replays_the_same_bytes_and_another_seed_draws_other_ports() {
    let a = replay([1; 32]);
    assert_eq!(a, replay([1; 32]), "same seed, same inputs: same bytes out");
    assert_eq!(a.last(), Some(&vec![0, 0]), "everything released at the end");
    let b = replay([2; 32]);
    assert_ne!(a[1], b[1], "the relay port comes from the seed");
}

#[test]
fn refresh_and_allocate_read_requested_address_family_the_same_way() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5100);
    success(&w.allocate(&mut c, &t));
    // A family attribute is four bytes. Allocate always said so; Refresh now does too, with
    // the same answer (440), and the allocation stays.
    for value in [&[1u8][..], &[1, 0, 0, 0, 0, 0, 0, 0], &[3, 0, 0, 0]] {
        let r = w.ask(&mut c, &t, |c| {
            c.request(Method::REFRESH, |m| {
                let _ = m.attr(AttrType::REQUESTED_ADDRESS_FAMILY, value);
            })
        });
        assert_eq!(r.error, Some(440), "Refresh with family {value:?}");
        let mut fresh = alice();
        let r = w.ask(&mut fresh, &tuple(5101), |c| {
            c.request(Method::ALLOCATE, |m| {
                let _ = m.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                let _ = m.attr(AttrType::REQUESTED_ADDRESS_FAMILY, value);
            })
        });
        assert_eq!(r.error, Some(440), "Allocate with family {value:?}");
    }
    assert_eq!(w.engine.allocation_count(), 1);
    let r = w.ask(&mut c, &t, |c| {
        c.request(Method::REFRESH, |m| {
            let _ = m.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[1, 0, 0, 0]);
        })
    });
    success(&r);
}

#[test]
fn the_harness_jumps_to_each_deadline_and_nothing_expires_early() {
    let mut w = World::new(config());
    let mut c = alice();
    let t = tuple(5200);
    success(&w.allocate(&mut c, &t));
    assert!(w.ask(&mut c, &t, |c| c.create_permission(&[peer(1)])).error.is_none());
    // Permission at 5 minutes, allocation at 10: two wake-ups, each at its deadline.
    assert_eq!(w.run_until(Duration::from_secs(299)), 0);
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 1);
    assert_eq!(w.run_until(Duration::from_secs(300)), 1);
    assert_eq!(w.metrics.level(|s| &s.permissions_active), 0);
    assert_eq!(w.engine.allocation_count(), 1);
    assert_eq!(w.run_until(Duration::from_secs(3600)), 1);
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.relay.open_sockets(), 0);
    assert_eq!(w.engine.poll_timeout(), None, "nothing left to wake up for");
}

#[test]
fn over_a_lossy_reordering_link_retransmissions_get_the_same_answers() {
    // A client that retransmits each request until it hears an answer, through a link that
    // loses 30% and reorders 20% of what it carries, in both directions.
    let mut w = World::new(config());
    let mut up = Link::new(7, 30, 20);
    let mut down = Link::new(11, 30, 20);
    let mut c = alice();
    let t = tuple(5300);
    let mut exchange = |w: &mut World, c: &mut TestClient, req: Vec<u8>| -> Response {
        for _ in 0..50 {
            for arrived in up.pass(req.clone()) {
                if let Sent::Reply(bytes) = w.send(&t, &arrived) {
                    for back in down.pass(bytes) {
                        let r = c.read(&back);
                        if r.transaction_id == Message::parse(&req).ok().map(|m| m.transaction_id()) {
                            return r;
                        }
                    }
                }
            }
            w.now += Duration::from_millis(500);
        }
        panic!("no answer through the link");
    };
    // The first Allocate teaches the nonce; the second, retransmitted with the same
    // transaction ID, gets the same success every time it is answered.
    let req = c.allocate();
    let r = exchange(&mut w, &mut c, req);
    assert_eq!(r.error, Some(401));
    let req = c.allocate();
    let first = exchange(&mut w, &mut c, req.clone());
    success(&first);
    let again = exchange(&mut w, &mut c, req);
    assert_eq!(again.relayed, first.relayed, "a retransmission gets the same relay");
    assert_eq!(w.engine.allocation_count(), 1);
    // Permission, then data: whatever arrives late or not at all, the books balance.
    let req = c.create_permission(&[peer(9)]);
    let r = exchange(&mut w, &mut c, req);
    assert!(r.error.is_none(), "{r:?}");
    let mut relayed = 0;
    for i in 0..100u8 {
        for arrived in up.pass(c.send(peer(9), &[i; 8])) {
            if let Sent::Relay { data, .. } = w.send(&t, &arrived) {
                assert_eq!(data.len(), 8);
                relayed += 1;
            }
        }
    }
    assert_eq!(
        w.metrics
            .total(|s| &s.relay_packets[Direction::client_to_peer as usize]),
        relayed
    );
    assert!((40..=90).contains(&relayed), "{relayed} of 100 got through a 30% loss");
}

/// Runs `f` with the engine's log lines captured, as `turnd serve` would print them. One
/// global subscriber writes each thread's lines to that thread's buffer, so tests that run
/// at the same time never see each other's lines.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    use std::cell::RefCell;
    thread_local! {
        static CAPTURE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
    }
    struct ThreadBuf;
    impl std::io::Write for ThreadBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURE.with(|c| {
                if let Some(buf) = c.borrow_mut().as_mut() {
                    buf.extend_from_slice(b);
                }
            });
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThreadBuf)
            .with_ansi(false)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let r = f();
    let text = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    (r, String::from_utf8_lossy(&text).into_owned())
}

#[test]
fn auth_failure_logs_are_rate_limited_and_report_what_they_held_back() {
    let ((), log) = logged(|| {
        let mut w = World::new(config());
        let t = tuple(5400);
        let mut c = TestClient::new("alice", REALM, "wrong");
        // The opening exchange: the first request is only challenged, the second fails.
        assert_eq!(w.allocate(&mut c, &t).error, Some(401));
        // 300 failures at one instant: all answered, a burst of them logged.
        for _ in 0..300 {
            assert_eq!(w.ask_once(&mut c, &t, |c| c.allocate()).error, Some(401));
        }
        // 1.2 s later (on the engine's clock), one more gets through with the count.
        w.now += Duration::from_millis(1200);
        assert_eq!(w.ask_once(&mut c, &t, |c| c.allocate()).error, Some(401));
    });
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("authentication failed")).collect();
    assert_eq!(lines.len(), 21, "a burst of 20, then one after the pause:\n{log}");
    let last = lines.last().unwrap();
    assert!(last.contains("suppressed=281"), "{last}");
    assert!(last.contains("user=\"alice\"") || last.contains("user=alice"), "{last}");
}

#[test]
fn an_expired_rest_credential_is_refused_on_the_engines_clock() {
    let mut w = World::new(config());
    // The World's clock says 1_800_000_000 at start: this credential expires a second later.
    let (user, pass) = RestSecrets::new(["rest-secret".to_string()])
        .mint(1_800_000_001, Some("web"))
        .unwrap();
    success(&w.allocate(&mut TestClient::new(&user, REALM, &pass), &tuple(5500)));
    w.now += Duration::from_secs(2);
    let r = w.allocate(&mut TestClient::new(&user, REALM, &pass), &tuple(5501));
    assert_eq!(r.error, Some(401));
    assert_eq!(
        w.metrics
            .total(|s| &s.auth_failures[AuthFailure::expired_credential as usize]),
        1
    );
}

#[test]
fn unauthenticated_answers_are_limited_per_source_ip() {
    let mut cfg = config();
    cfg.unauthenticated_rate = 50;
    let mut w = World::new(cfg);
    let noisy = tuple(5600);
    let answered = |w: &mut World, t: &FiveTuple, n: u32| {
        (0..n)
            .filter(|i| {
                let mut tid = [0u8; 12];
                tid[..4].copy_from_slice(&i.to_be_bytes());
                let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
                req.extend_from_slice(&tid);
                matches!(w.send(t, &req), Sent::Reply(_))
            })
            .count()
    };
    // 500 at one instant: exactly a second's worth is answered.
    assert_eq!(answered(&mut w, &noisy, 500), 50);
    assert_eq!(w.metrics.total(|s| &s.dropped[DropReason::rate_limited as usize]), 450);
    // Another address is not affected.
    let quiet = FiveTuple {
        client: SocketAddr::from(([127, 0, 0, 2], 5601)),
        ..noisy
    };
    assert_eq!(answered(&mut w, &quiet, 10), 10);
    // 100 ms later, five more for the noisy one.
    w.now += Duration::from_millis(100);
    assert_eq!(answered(&mut w, &noisy, 500), 5);
}

/// Allocates with `extra` attributes and returns the raw answer's relayed port and
/// RESERVATION-TOKEN.
fn allocate_with(
    w: &mut World,
    c: &mut TestClient,
    t: &FiveTuple,
    extra: impl Fn(&mut MessageWriter<'_>),
) -> (Option<u16>, Option<Vec<u8>>, Option<u16>) {
    let r = w.ask(c, t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            extra(w);
        })
    });
    // Ask once more with the nonce the first answer taught: the engine treats it as a
    // retransmission when it succeeded, so the same answer comes back, token and all.
    let req = c.request_with_tid(Method::ALLOCATE, r.transaction_id.unwrap(), |w| {
        let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        extra(w);
    });
    let Sent::Reply(bytes) = w.send(t, &req) else {
        panic!("no answer")
    };
    let m = Message::parse(&bytes).unwrap();
    let token = m.get(AttrType::RESERVATION_TOKEN).map(|a| a.value.to_vec());
    (r.relayed.first().map(|a| a.port()), token, r.error)
}

#[test]
fn even_port_with_r_reserves_the_next_port_for_its_token_and_frees_it_at_the_deadline() {
    let mut w = World::new(config());
    let even_r = |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::EVEN_PORT, &[0x80]);
    };
    let (port, token, error) = allocate_with(&mut w, &mut alice(), &tuple(5000), even_r);
    assert_eq!(error, None);
    let port = port.unwrap();
    let token = token.expect("RESERVATION-TOKEN in the answer (and again on a retransmission)");
    assert_eq!((port % 2, token.len()), (0, 8));
    assert_eq!(
        (w.engine.reserved_ports(), w.relay.open_sockets()),
        (1, 2),
        "port + 1 is held"
    );
    // The token claims port + 1, once.
    let claim = |tok: Vec<u8>| {
        move |w: &mut MessageWriter<'_>| {
            let _ = w.attr(AttrType::RESERVATION_TOKEN, &tok);
        }
    };
    let (claimed, _, error) = allocate_with(&mut w, &mut alice(), &tuple(5001), claim(token.clone()));
    assert_eq!((claimed, error), (Some(port + 1), None));
    assert_eq!((w.engine.reserved_ports(), w.relay.open_sockets()), (0, 2));
    let (_, _, error) = allocate_with(&mut w, &mut alice(), &tuple(5002), claim(token));
    assert_eq!(error, Some(508), "a token is good once");

    // A reservation nobody claims is freed at its deadline, on the engine's timer.
    let (_, token, _) = allocate_with(&mut w, &mut alice(), &tuple(5003), even_r);
    let token = token.unwrap();
    assert_eq!((w.engine.reserved_ports(), w.relay.open_sockets()), (1, 4));
    let deadline = w.engine.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        w.now + Duration::from_secs(30),
        "the reservation is the next deadline"
    );
    w.at(Duration::from_secs(29));
    assert_eq!(w.engine.reserved_ports(), 1);
    w.at(Duration::from_secs(30));
    assert_eq!(
        (w.engine.reserved_ports(), w.relay.open_sockets()),
        (0, 3),
        "freed at 30 s"
    );
    let (_, _, error) = allocate_with(&mut w, &mut alice(), &tuple(5004), claim(token));
    assert_eq!(error, Some(508), "an expired token");
    // When time runs out, nothing is left.
    w.at(Duration::from_secs(4000));
    assert_eq!((w.engine.allocation_count(), w.relay.open_sockets()), (0, 0));
}

#[test]
fn dont_fragment_sets_the_df_bit_on_the_relay_socket() {
    let mut w = World::new(config());
    let df = |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::DONT_FRAGMENT, &[]);
    };
    let (port, _, error) = allocate_with(&mut w, &mut alice(), &tuple(5000), df);
    assert_eq!(error, None);
    let relayed = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port.unwrap());
    assert!(w.relay.dont_fragment(relayed));
    // Without it, no DF until a Send indication asks for it.
    let mut c = alice();
    let t = tuple(5001);
    let r = w.allocate(&mut c, &t);
    let plain = r.relayed[0];
    assert!(!w.relay.dont_fragment(plain));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(1)])));
    let mut send = c.send(peer(1), b"hello");
    // DONT-FRAGMENT before FINGERPRINT-less end: append it and fix the length.
    let len = u16::from_be_bytes([send[2], send[3]]) + 4;
    send[2..4].copy_from_slice(&len.to_be_bytes());
    send.extend_from_slice(&[0x00, 0x1A, 0x00, 0x00]);
    assert!(matches!(w.send(&t, &send), Sent::Relay { .. }));
    assert!(
        w.relay.dont_fragment(plain),
        "a Send indication with DONT-FRAGMENT turns DF on"
    );
}

#[test]
fn a_port_reserved_on_one_shard_is_claimed_on_another() {
    // Two shards: one Shared, one relay namespace; the RTCP Allocate lands on the second.
    let mut a = World::new(config());
    let mut b = World::new(config());
    b.shared = a.shared.clone();
    b.engine = Engine::new(
        Arc::new(config()),
        a.shared.clone(),
        a.relay.clone(),
        Epoch {
            at: a.start,
            unix: Duration::from_secs(1_800_000_000),
        },
        [8; 32],
    );
    b.now = a.now;
    let even_r = |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::EVEN_PORT, &[0x80]);
    };
    let (port, token, _) = allocate_with(&mut a, &mut alice(), &tuple(5000), even_r);
    let (port, token) = (port.unwrap(), token.unwrap());
    assert_eq!(b.engine.reserved_ports(), 1, "every shard sees the reservation");
    let claim = move |w: &mut MessageWriter<'_>| {
        let _ = w.attr(AttrType::RESERVATION_TOKEN, &token);
    };
    let (claimed, _, error) = allocate_with(&mut b, &mut alice(), &tuple(5001), claim);
    assert_eq!((claimed, error), (Some(port + 1), None));
    // The claimed socket delivers to the second shard's allocation.
    let t = b.token(&tuple(5001));
    let mut c = alice();
    success(&b.ask(&mut c, &tuple(5001), |c| c.create_permission(&[peer(7)])));
    assert!(b.peer_sends(t, peer(7), b"rtcp").is_some());
    // The first shard's deadline finds nothing left to free.
    a.at(Duration::from_secs(31));
    assert_eq!((a.relay.open_sockets(), a.engine.reserved_ports()), (2, 0));
}

fn tcp(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..tuple(port)
    }
}

fn tcp_allocate(c: &mut TestClient) -> impl FnMut(&mut TestClient) -> Vec<u8> {
    let _ = c;
    |c: &mut TestClient| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    }
}

fn connect_to(peer: SocketAddr) -> impl FnMut(&mut TestClient) -> Vec<u8> {
    move |c: &mut TestClient| {
        c.request(Method::CONNECT, |w| {
            let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
        })
    }
}

fn bind(id: u32) -> impl FnMut(&mut TestClient) -> Vec<u8> {
    move |c: &mut TestClient| {
        c.request(Method::CONNECTION_BIND, |w| {
            let _ = w.attr_u32(AttrType::CONNECTION_ID, id);
        })
    }
}

/// The CONNECTION-ID in a message.
fn connection_id(bytes: &[u8]) -> Option<u32> {
    let m = Message::parse(bytes).ok()?;
    let v = m.get(AttrType::CONNECTION_ID)?.value;
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

#[test]
fn tcp_allocations_follow_rfc_6062_section_5_1() {
    let mut w = World::new(config());
    let mut c = alice();
    // Over UDP: 400. With EVEN-PORT or DONT-FRAGMENT: 400.
    let mut over_udp = tcp_allocate(&mut c);
    assert_eq!(w.ask(&mut c, &tuple(5000), &mut over_udp).error, Some(400));
    for extra in [AttrType::EVEN_PORT, AttrType::DONT_FRAGMENT] {
        let r = w.ask(&mut c, &tcp(5000), |c| {
            c.request(Method::ALLOCATE, |w| {
                let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
                let _ = w.attr(extra, if extra == AttrType::EVEN_PORT { &[0][..] } else { &[] });
            })
        });
        assert_eq!(r.error, Some(400), "{extra:?}");
    }
    let r = w.ask(&mut c, &tcp(5000), tcp_allocate(&mut alice()));
    success(&r);
    assert_eq!(r.relayed.len(), 1);
    assert_eq!(
        (w.relay.listeners(), w.relay.open_sockets()),
        (1, 0),
        "a listener, no UDP socket"
    );
    // Connect on a UDP allocation: 400.
    let mut u = alice();
    success(&w.allocate(&mut u, &tuple(5001)));
    assert_eq!(w.ask(&mut u, &tuple(5001), connect_to(peer(1))).error, Some(400));
}

#[test]
fn connect_answers_when_the_connection_is_up_and_connection_bind_joins_it() {
    let mut w = World::new(EngineConfig {
        max_tcp_connections: 2,
        ..config()
    });
    let mut c = alice();
    let control = tcp(5000);
    let relayed = w.ask(&mut c, &control, tcp_allocate(&mut alice())).relayed[0];
    // No permission yet: 403.
    assert_eq!(w.ask(&mut c, &control, connect_to(peer(7))).error, Some(403));
    success(&w.ask(&mut c, &control, |c| c.create_permission(&[peer(7)])));
    // The answer waits for the connection.
    let req = connect_to(peer(7))(&mut c);
    assert!(matches!(w.send(&control, &req), Sent::None));
    let started = w.relay.take_connecting();
    assert_eq!(started.len(), 1);
    let (id, from, to) = started[0];
    assert_eq!((from, to), (relayed, peer(7)), "from the relayed address, to the peer");
    // A second Connect to the same peer: 446.
    assert_eq!(w.ask(&mut c, &control, connect_to(peer(7))).error, Some(446));
    let mut out = vec![0u8; 512];
    let Output::ToClient { tuple: to, len } = w.engine.handle_connected(w.now, id, true, &mut out) else {
        panic!("no answer to the Connect")
    };
    assert_eq!(to, control);
    let answer = c.read(&out[..len]);
    success(&answer);
    assert_eq!(connection_id(&out[..len]), Some(id.0));
    assert_eq!(
        answer.transaction_id,
        Message::parse(&req).ok().map(|m| m.transaction_id())
    );
    assert_eq!(w.metrics.level(|s| &s.tcp_connections_active), 1);

    // A connection that fails: 447.
    let req = connect_to(peer(8))(&mut c);
    let _ = w.send(&control, &req);
    let (failing, _, _) = w.relay.take_connecting()[0];
    let Output::ToClient { len, .. } = w.engine.handle_connected(w.now, failing, false, &mut out) else {
        panic!("no 447")
    };
    assert_eq!(c.read(&out[..len]).error, Some(447));
    // The cap: two connections (the failed one is gone), then 486.
    let _ = w.send(&control, &connect_to(peer(9))(&mut c));
    assert_eq!(w.relay.take_connecting().len(), 1);
    assert_eq!(w.ask(&mut c, &control, connect_to(peer(10))).error, Some(486));

    // ConnectionBind: over UDP 400, unknown ID 400, another user 441, then joined once.
    let mut data = alice();
    assert_eq!(w.ask(&mut data, &tuple(6000), bind(id.0)).error, Some(400));
    assert_eq!(w.ask(&mut data, &tcp(6000), bind(12345)).error, Some(400));
    let mut bob = TestClient::new("bob", REALM, "builder");
    assert_eq!(w.ask(&mut bob, &tcp(6001), bind(id.0)).error, Some(441));
    let first = data.request(Method::CONNECTION_BIND, |w| {
        let _ = w.attr_u32(AttrType::CONNECTION_ID, id.0);
    });
    let Sent::Joined(bytes, joined) = w.send(&tcp(6000), &first) else {
        panic!("ConnectionBind did not join")
    };
    success(&data.read(&bytes));
    assert_eq!(joined, id);
    assert_eq!(
        w.ask(&mut alice(), &tcp(6002), bind(id.0)).error,
        Some(400),
        "bound once"
    );
    // The allocation ends: its listener and every connection close.
    assert_eq!(w.relay.streams(), 2);
    w.engine.handle_client_closed(w.now, &control);
    assert_eq!((w.relay.listeners(), w.relay.streams()), (0, 0));
    assert_eq!(w.metrics.level(|s| &s.tcp_connections_active), 0);
}

#[test]
fn a_permitted_peer_is_announced_and_closed_if_not_bound_within_30_s() {
    let mut w = World::new(config());
    let mut c = alice();
    let control = tcp(5000);
    success(&w.ask(&mut c, &control, tcp_allocate(&mut alice())));
    let relay_token = w.relay.listener_token().expect("the TCP allocation listens");
    let mut out = vec![0u8; 512];
    // Without a permission the peer is turned away (its connection dropped).
    let stream = w.relay.accepted();
    assert!(matches!(
        w.engine
            .handle_peer_connection(w.now, relay_token, peer(3), stream, &mut out),
        Output::None
    ));
    assert_eq!(w.relay.streams(), 0);
    success(&w.ask(&mut c, &control, |c| c.create_permission(&[peer(3)])));
    let stream = w.relay.accepted();
    let Output::ToClient { tuple, len } =
        w.engine
            .handle_peer_connection(w.now, relay_token, peer(3), stream, &mut out)
    else {
        panic!("no ConnectionAttempt")
    };
    assert_eq!(tuple, control);
    let m = Message::parse(&out[..len]).unwrap();
    assert_eq!((m.method(), m.class()), (Method::CONNECTION_ATTEMPT, Class::Indication));
    assert!(connection_id(&out[..len]).is_some());
    let tid = m.transaction_id();
    let announced = m
        .get(AttrType::XOR_PEER_ADDRESS)
        .map(|a| turnd::proto::attr::decode_xor_address(a.value, &tid).unwrap());
    assert_eq!(announced, Some(peer(3)));
    assert_eq!(
        (w.relay.streams(), w.metrics.level(|s| &s.tcp_connections_active)),
        (1, 1)
    );
    // Nobody binds it: closed at 30 s, on the engine's timer.
    w.run_until(Duration::from_secs(29));
    assert_eq!(w.relay.streams(), 1);
    w.run_until(Duration::from_secs(31));
    assert_eq!(
        (w.relay.streams(), w.metrics.level(|s| &s.tcp_connections_active)),
        (0, 0)
    );
}

#[test]
fn other_nodes_allocations_count_against_the_per_user_quota() {
    let mut cfg = config();
    cfg.max_allocations_per_user = 3;
    let mut w = World::new(cfg);
    // The cluster says alice holds two allocations on other nodes.
    w.shared
        .quota
        .set_elsewhere([("alice".into(), 2)].into_iter().collect());
    success(&w.allocate(&mut alice(), &tuple(5000)));
    assert_eq!(w.allocate(&mut alice(), &tuple(5001)).error, Some(486));
    // Bob holds nothing elsewhere.
    success(&w.allocate(&mut TestClient::new("bob", REALM, "builder"), &tuple(6000)));
    // Those leases expire (or Redis is unreachable): local counts only.
    w.shared.quota.set_elsewhere(Default::default());
    success(&w.allocate(&mut alice(), &tuple(5002)));
    assert_eq!(
        w.shared.quota.per_user().into_iter().find(|(u, _)| u == "alice"),
        Some(("alice".to_string(), 2))
    );
}

#[test]
fn a_full_or_draining_engine_names_an_alternate_of_the_clients_family_and_transport() {
    let mut cfg = config();
    cfg.max_allocations = 1;
    let mut w = World::new(cfg.clone());
    success(&w.allocate(&mut alice(), &tuple(5000)));
    // No alternates (a single node): the quota's 486.
    assert_eq!(w.allocate(&mut alice(), &tuple(5001)).error, Some(486));
    let v6: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
    let v4: SocketAddr = "198.18.0.7:3478".parse().unwrap();
    w.shared.set_alternates(vec![
        turnd::server::Alternate {
            address: v6,
            tls_port: Some(5349),
            domain: Some("turn-b.example.org".into()),
        },
        turnd::server::Alternate {
            address: v4,
            tls_port: Some(5349),
            domain: Some("turn-b.example.org".into()),
        },
    ]);
    // An IPv4 client over UDP: the IPv4 address, no domain; signed like any answer after
    // authentication.
    let r = w.allocate(&mut alice(), &tuple(5002));
    assert_eq!(
        (r.error, r.alternate, r.alternate_domain.as_deref()),
        (Some(300), Some(v4), None)
    );
    assert!(r.integrity);
    // Over TLS: the TLS port and ALTERNATE-DOMAIN, for the certificate check.
    let tls = FiveTuple {
        transport: Transport::Tls,
        ..tuple(5003)
    };
    let r = w.allocate(&mut alice(), &tls);
    assert_eq!(
        (r.error, r.alternate, r.alternate_domain.as_deref()),
        (
            Some(300),
            Some("198.18.0.7:5349".parse().unwrap()),
            Some("turn-b.example.org")
        )
    );
    // An alternate without TLS is no target for a TLS client.
    w.shared.set_alternates(vec![turnd::server::Alternate {
        address: v4,
        tls_port: None,
        domain: None,
    }]);
    let tls = FiveTuple {
        transport: Transport::Tls,
        ..tuple(5004)
    };
    assert_eq!(w.allocate(&mut alice(), &tls).error, Some(486));
    // Other refusals are never redirected: a wrong password is 401 whatever the cluster.
    let r = w.allocate(&mut TestClient::new("alice", REALM, "wrong"), &tuple(5005));
    assert_eq!((r.error, r.alternate), (Some(401), None));
    // Draining, with room: redirected too.
    let mut draining = cfg;
    draining.max_allocations = 100;
    draining.draining = true;
    w.engine.set_config(w.now, Arc::new(draining));
    let r = w.allocate(&mut alice(), &tuple(5006));
    assert_eq!((r.error, r.alternate), (Some(300), Some(v4)));
}

#[test]
fn usage_is_handed_out_by_account_once() {
    let mut cfg = config();
    cfg.account_usage = true;
    let mut w = World::new(cfg);
    let mut a = alice();
    success(&w.allocate(&mut a, &tuple(5000)));
    w.ask(&mut a, &tuple(5000), |c| c.create_permission(&[peer(9000)]));
    for _ in 0..3 {
        let m = a.send(peer(9000), &[1u8; 40]);
        w.send(&tuple(5000), &m);
    }
    let token = w.token(&tuple(5000));
    w.peer_sends(token, peer(9000), &[2u8; 10]);
    w.at(Duration::from_secs(5));
    let now = w.now;
    let first = w.engine.take_usage(now, true);
    assert_eq!(first.len(), 1);
    let (account, u) = &first[0];
    assert_eq!(account, "alice");
    assert_eq!(
        (
            u.to_peer_packets,
            u.to_peer_bytes,
            u.to_client_packets,
            u.to_client_bytes
        ),
        (3, 120, 1, 10)
    );
    assert_eq!(u.allocation_ms, 5000);
    // Nothing twice: the next batch has only what came after.
    assert!(w.engine.take_usage(now, true).is_empty());
    // A REST credential bills to its id; an ended allocation's rest comes with the next batch
    // even when open ones are not asked for.
    let user = "1900000000:zed";
    let pw = turnd::auth::RestSecrets::password(b"rest-secret", user);
    let mut z = TestClient::new(user, REALM, &pw);
    success(&w.allocate(&mut z, &tuple(5001)));
    w.at(Duration::from_secs(7));
    w.ask(&mut z, &tuple(5001), |c| c.refresh(0));
    let now = w.now;
    let ended = w.engine.take_usage(now, false);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!((ended[0].0.as_str(), ended[0].1.allocation_ms), ("zed", 2000));
    // Time is billed in whole milliseconds without drift: fractions carry to the next bill,
    // and an allocation's last bill rounds up, so even a 0.4 ms allocation bills 1 ms.
    let mut y = TestClient::new(user, REALM, &pw);
    success(&w.allocate(&mut y, &tuple(5002)));
    let t0 = w.now;
    w.now = t0 + Duration::from_micros(1500);
    // alice's allocation is still open too, and the batch is in no particular order.
    let part = w.engine.take_usage(w.now, true);
    let zed = part.iter().find(|(account, _)| account == "zed");
    assert_eq!(zed.map(|(_, u)| u.allocation_ms), Some(1), "{part:?}");
    w.now = t0 + Duration::from_micros(3200);
    w.ask(&mut y, &tuple(5002), |c| c.refresh(0));
    let rest = w.engine.take_usage(w.now, false);
    assert_eq!(rest[0].1.allocation_ms, 3, "1 ms billed, 2.2 ms rounded up: {rest:?}");
    let mut x = TestClient::new(user, REALM, &pw);
    success(&w.allocate(&mut x, &tuple(5003)));
    w.now += Duration::from_micros(400);
    w.ask(&mut x, &tuple(5003), |c| c.refresh(0));
    let short = w.engine.take_usage(w.now, false);
    assert_eq!(short[0].1.allocation_ms, 1, "{short:?}");
    // Off (a single node): nothing is kept.
    let mut off = World::new(config());
    success(&off.allocate(&mut alice(), &tuple(5000)));
    off.at(Duration::from_secs(3));
    let now = off.now;
    assert!(off.engine.take_usage(now, true).is_empty());
}

// The kernel fast path's entries (issue 20): the engine says which channels the program may
// relay, and takes them back the moment its own state says so.

fn fast_config() -> EngineConfig {
    EngineConfig {
        fast_path: true,
        ..config()
    }
}

impl World {
    fn fast_path(&mut self) -> Vec<FastPath> {
        std::iter::from_fn(|| self.engine.poll_fast_path()).collect()
    }
}

fn installed(cmds: &[FastPath]) -> Vec<FastPathEntry> {
    cmds.iter()
        .filter_map(|c| match c {
            FastPath::Install(e) => Some(*e),
            FastPath::Remove(_) => None,
        })
        .collect()
}

fn removed(cmds: &[FastPath]) -> Vec<FastPathEntry> {
    cmds.iter()
        .filter_map(|c| match c {
            FastPath::Remove(e) => Some(*e),
            FastPath::Install(_) => None,
        })
        .collect()
}

#[test]
fn a_bound_channel_with_a_live_permission_is_offloaded_until_the_permission_expires() {
    let mut w = World::new(fast_config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.refresh(3600)));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    assert!(
        w.fast_path().is_empty(),
        "a permission without a channel is not offloaded"
    );
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    let cmds = w.fast_path();
    let relay = w.engine.allocations().next().unwrap().relays[0].as_ref().unwrap().bound;
    let e = installed(&cmds);
    assert_eq!(e.len(), 1, "{cmds:?}");
    assert_eq!(
        (e[0].client, e[0].listener, e[0].channel.get(), e[0].peer, e[0].relay),
        (t.client, t.server, 0x4001, peer(7000), relay)
    );
    // The permission (5 min) ends before the channel (10 min).
    assert_eq!(e[0].expires, w.start + Duration::from_secs(300));
    assert!(!e[0].dont_fragment);

    // A refreshed permission moves the deadline: the entry is written again.
    w.at(Duration::from_secs(200));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    let again = installed(&w.fast_path());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].expires, w.start + Duration::from_secs(500));

    // The permission expires: the entry goes at that moment, not a tick later.
    w.at(Duration::from_secs(500) - TICK);
    assert!(w.fast_path().is_empty());
    w.at(Duration::from_secs(500));
    let gone = removed(&w.fast_path());
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].channel.get(), gone[0].peer), (0x4001, peer(7000)));
    // The socket path then drops what the program passes up, counted with its reason.
    let token = w.token(&t);
    assert!(w.peer_sends(token, peer(7000), b"late").is_none());
    assert_eq!(w.metrics.total(|s| &s.dropped[DropReason::no_permission as usize]), 1);
}

#[test]
fn a_channel_that_expires_is_taken_back_and_a_rebind_offloads_it_again() {
    let mut w = World::new(fast_config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.refresh(3600)));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert_eq!(installed(&w.fast_path()).len(), 1);
    // Keep the permission alive so that only the channel expires.
    w.at(Duration::from_secs(280));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    w.at(Duration::from_secs(560));
    success(&w.ask(&mut c, &t, |c| c.create_permission(&[peer(7000)])));
    let moved = installed(&w.fast_path());
    assert_eq!(moved.last().unwrap().expires, w.start + Duration::from_secs(600));
    w.at(Duration::from_secs(600));
    assert_eq!(removed(&w.fast_path()).len(), 1, "the channel expired");
    // Rebinding during the cool-down brings the same channel back.
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert_eq!(installed(&w.fast_path()).len(), 1);
}

#[test]
fn refresh_zero_disconnect_and_shutdown_remove_every_entry_and_the_log_line_counts_the_programs_packets() {
    let mut w = World::new(fast_config());
    let t1 = tuple(5000);
    let t2 = tuple(5001);
    let t3 = tuple(5002);
    let mut clients = [alice(), alice(), alice()];
    for (c, t) in clients.iter_mut().zip([t1, t2, t3]) {
        success(&w.allocate(c, &t));
        success(&w.ask(c, &t, |c| c.channel_bind(0x4001, peer(7000))));
        success(&w.ask(c, &t, |c| c.channel_bind(0x4002, peer(7001))));
    }
    assert_eq!(installed(&w.fast_path()).len(), 6);

    // Refresh 0 on the first: both of its entries go, and its log line waits for their counts.
    let [c1, ..] = &mut clients;
    let (_, log) = logged(|| {
        success(&w.ask(c1, &t1, |c| c.refresh(0)));
    });
    assert!(!log.contains("allocation ended"), "{log}");
    let gone = removed(&w.fast_path());
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|e| e.client == t1.client));
    let counts = turnd::server::Traffic {
        to_peer_packets: 7,
        to_peer_bytes: 700,
        to_client_packets: 5,
        to_client_bytes: 500,
    };
    let (_, log) = logged(|| {
        w.engine.handle_fast_path_traffic(w.now, &gone[0], counts, true);
        assert_eq!(w.engine.allocation_count(), 2);
        w.engine.handle_fast_path_traffic(w.now, &gone[1], counts, true);
    });
    assert!(log.contains("reason=\"refresh 0\""), "{log}");
    assert!(
        log.contains("to_peer_packets=14") && log.contains("to_client_bytes=1000"),
        "{log}"
    );
    assert_eq!(
        w.metrics
            .total(|s| &s.relay_packets[Direction::client_to_peer as usize]),
        14
    );
    assert_eq!(
        w.metrics.total(|s| &s.fast_path[Direction::peer_to_client as usize]),
        10
    );
    assert_eq!(
        w.metrics.total(|s| &s.relay_bytes[Direction::peer_to_client as usize]),
        1000
    );

    // Disconnect removes the second allocation's entries.
    let n = w.engine.disconnect_user(w.now, "alice");
    assert_eq!(n, 2);
    let gone = removed(&w.fast_path());
    assert_eq!(gone.len(), 4);
    for e in &gone {
        w.engine.handle_fast_path_traffic(w.now, e, Default::default(), true);
    }
    assert_eq!(w.engine.allocation_count(), 0);
    assert_eq!(w.metrics.level(|s| &s.channels_active), 0);
}

#[test]
fn the_programs_counts_join_a_live_allocation_and_shutdown_takes_every_entry_back() {
    let mut w = World::new(fast_config());
    let mut c = alice();
    let t = tuple(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    let e = installed(&w.fast_path())[0];
    let counts = turnd::server::Traffic {
        to_peer_packets: 3,
        to_peer_bytes: 300,
        to_client_packets: 2,
        to_client_bytes: 200,
    };
    w.engine.handle_fast_path_traffic(w.now, &e, counts, false);
    let a = w.engine.allocations().next().unwrap();
    assert_eq!((a.traffic.to_peer_packets, a.traffic.to_client_bytes), (3, 200));
    assert_eq!(w.engine.end_all(w.now, turnd::server::EndReason::Shutdown), 1);
    assert_eq!(removed(&w.fast_path()), vec![e]);
}

#[test]
fn tcp_clients_capped_allocations_other_family_peers_and_a_server_without_the_program_offload_nothing() {
    // ChannelData over TCP stays in userspace.
    let mut w = World::new(fast_config());
    let mut c = alice();
    let t = tcp(5000);
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert!(w.fast_path().is_empty());
    // A bandwidth cap is enforced by the engine, so capped allocations stay on sockets.
    let mut w = World::new(EngineConfig {
        bandwidth_per_allocation: 1_000_000,
        ..fast_config()
    });
    let t = tuple(5000);
    let mut c = alice();
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert!(w.fast_path().is_empty());
    // A reload that adds a cap takes back what was offloaded; one that lifts it offloads.
    let mut w = World::new(fast_config());
    let mut c = alice();
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert_eq!(installed(&w.fast_path()).len(), 1);
    let capped = EngineConfig {
        bandwidth_total: 10_000_000,
        ..fast_config()
    };
    w.engine.set_config(w.now, Arc::new(capped));
    assert_eq!(removed(&w.fast_path()).len(), 1);
    w.engine.set_config(w.now, Arc::new(fast_config()));
    assert_eq!(installed(&w.fast_path()).len(), 1);
    // A peer of the other family (a dual allocation) stays on sockets: the program cannot
    // turn an IPv4 header into an IPv6 one.
    let mut cfg = fast_config();
    cfg.relay_addresses = vec![IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()];
    let mut w = World::new(cfg);
    let mut c = alice();
    success(&w.ask(&mut c, &t, |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            let _ = w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        })
    }));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, "[::1]:9".parse().unwrap())));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4002, peer(7000))));
    let e = installed(&w.fast_path());
    assert_eq!(e.len(), 1, "only the IPv4 peer: {e:?}");
    assert_eq!(e[0].peer, peer(7000));
    // Without the program, the engine queues nothing.
    let mut w = World::new(config());
    let mut c = alice();
    success(&w.allocate(&mut c, &t));
    success(&w.ask(&mut c, &t, |c| c.channel_bind(0x4001, peer(7000))));
    assert!(w.fast_path().is_empty());
}
