//! TURN against the real binary over real loopback sockets, with turnd's own request builder
//! (the interop tests use other people's clients): negative cases each answered with their
//! error code and logged with the reason, the wildcard-listener address rules, and an
//! allocation relaying to a UDP peer.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{turn_config, Turnd};
use turnd::proto::{AttrType, Method};
use turnd::server::testclient::{Response, TestClient};

struct Udp {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Udp {
    fn new(server: SocketAddr) -> Udp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Udp { sock, server }
    }

    fn once(&self, c: &mut TestClient, req: &[u8]) -> Response {
        self.sock.send_to(req, self.server).unwrap();
        let mut buf = [0u8; 2048];
        let n = self.sock.recv(&mut buf).unwrap();
        c.read(&buf[..n])
    }

    /// Sends a request; after a first 401 that teaches the nonce, sends it again.
    fn ask(&self, c: &mut TestClient, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> Response {
        let first = c.nonce.is_empty();
        let req = build(c);
        let r = self.once(c, &req);
        if first && r.error == Some(401) {
            let req = build(c);
            return self.once(c, &req);
        }
        r
    }
}

/// Waits until the turnd log shows a line containing every one of `needles`.
fn wait_for_log(t: &Turnd, seen: &mut Vec<String>, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = seen.iter().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.clone();
        }
        match t.log.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => seen.push(l),
            Err(_) if Instant::now() > deadline => panic!("no log line with {needles:?} in:\n{}", seen.join("\n")),
            Err(_) => {}
        }
    }
}

#[test]
fn negative_cases_answer_their_code_and_log_why() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let udp = Udp::new(t.udp[0]);
    let mut log = Vec::new();

    let r = udp.ask(&mut TestClient::new("alice", "test.turnd", "wrong"), |c| c.allocate());
    assert_eq!(r.error, Some(401));
    wait_for_log(&t, &mut log, &["authentication failed", "bad_integrity", "alice"]);

    let r = udp.ask(&mut TestClient::new("mallory", "test.turnd", "x"), |c| c.allocate());
    assert_eq!(r.error, Some(401));
    wait_for_log(&t, &mut log, &["authentication failed", "unknown_user", "mallory"]);

    let (user, pass) = turnd::auth::RestSecrets::new(["rest-secret".to_string()])
        .mint(1_000_000_000, Some("old"))
        .unwrap();
    let r = udp.ask(&mut TestClient::new(&user, "test.turnd", &pass), |c| c.allocate());
    assert_eq!(r.error, Some(401));
    wait_for_log(&t, &mut log, &["authentication failed", "expired_credential"]);

    let mut alice = TestClient::new("alice", "test.turnd", "wonderland");
    let r = udp.ask(&mut alice, |c| c.request(Method::ALLOCATE, |_| {}));
    assert_eq!(r.error, Some(400));
    wait_for_log(&t, &mut log, &["request refused", "missing REQUESTED-TRANSPORT"]);

    let r = udp.ask(&mut alice, |c| c.allocate());
    assert_eq!(r.class, Some(turnd::proto::Class::Success), "{r:?}");
    let denied: SocketAddr = "192.168.1.1:9".parse().unwrap();
    assert_eq!(udp.ask(&mut alice, |c| c.create_permission(&[denied])).error, Some(403));
    wait_for_log(&t, &mut log, &["request refused", "denied by policy", "code=403"]);

    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(udp.ask(&mut alice, |c| c.channel_bind(0x5000, peer)).error, Some(400));
    wait_for_log(&t, &mut log, &["request refused", "channel number out of range"]);
}

#[test]
fn wildcard_listener_and_relay_advertise_the_address_the_request_arrived_on() {
    let cfg = r#"
threads = 1
realm = "test.turnd"
[[listen]]
address = "0.0.0.0:0"
protocols = ["udp"]
[relay]
addresses = ["0.0.0.0"]
[[auth.users]]
name = "alice"
password = "wonderland"
[peers]
allow = ["127.0.0.0/8"]
"#;
    let t = Turnd::start(cfg);
    // Reach the wildcard listener through 127.0.0.2: the answer must come from 127.0.0.2 and
    // the relayed address must be 127.0.0.2 too.
    let server = SocketAddr::from(([127, 0, 0, 2], t.udp[0].port()));
    let udp = Udp::new(server);
    let mut alice = TestClient::new("alice", "test.turnd", "wonderland");
    let r = udp.ask(&mut alice, |c| c.allocate());
    assert_eq!(r.class, Some(turnd::proto::Class::Success), "{r:?}");
    assert_eq!(r.relayed[0].ip(), server.ip(), "{r:?}");

    // And the relay works: a UDP peer reaches the client through it, and back.
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert_eq!(
        udp.ask(&mut alice, |c| c.create_permission(&[peer_addr])).class,
        Some(turnd::proto::Class::Success)
    );
    udp.sock
        .send_to(&alice.send(peer_addr, b"to the peer"), server)
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"to the peer");
    assert_eq!(from.port(), r.relayed[0].port(), "sent from the relayed port");
    peer.send_to(b"to the client", r.relayed[0]).unwrap();
    let (n, from) = udp.sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, server, "answered from the address the client used");
    let m = turnd::proto::Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.get(AttrType::DATA).unwrap().value, b"to the client");
}

/// The real server logs authentication failures to stderr, a bounded burst of them; the
/// limiter's arithmetic is checked on the engine's clock in turn_engine.rs.
#[test]
fn auth_failure_logs_reach_stderr_in_a_bounded_burst() {
    // The request limiter would drop most of this burst; the log limiter is what is tested.
    let t = Turnd::start(&turn_config("threads = 1\n[limits]\nunauthenticated_rate = 0"));
    let udp = Udp::new(t.udp[0]);
    let mut c = TestClient::new("alice", "test.turnd", "wrong");
    let _ = udp.ask(&mut c, |c| c.allocate());
    for _ in 0..300 {
        let req = c.allocate();
        assert_eq!(udp.once(&mut c, &req).error, Some(401));
    }
    // Stopping the server flushes everything it logged.
    let log = t.log_until_exit();
    let logged = log.iter().filter(|l| l.contains("authentication failed")).count();
    assert!((1..=30).contains(&logged), "{logged} lines logged for 301 failures");
    assert!(log
        .iter()
        .any(|l| l.contains("authentication failed") && l.contains("user=\"alice\"")));
}

#[test]
fn a_peer_burst_is_relayed_whole_and_a_released_relay_port_is_closed() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let server = t.udp[0];
    let udp = Udp::new(server);
    let mut alice = TestClient::new("alice", "test.turnd", "wonderland");
    let r = udp.ask(&mut alice, |c| c.allocate());
    let relay = r.relayed[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(udp
        .ask(&mut alice, |c| c.channel_bind(0x4000, peer_addr))
        .error
        .is_none());

    // 100 datagrams at once: more than a relay socket is read in one turn (32), so what a
    // turn leaves behind must be read without waiting for another datagram to arrive.
    let reader = {
        let sock = udp.sock.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(5);
            while got.len() < 100 && Instant::now() < deadline {
                if let Ok(n) = sock.recv(&mut buf) {
                    got.push(buf[..n].to_vec());
                }
            }
            got
        })
    };
    for i in 0..100u8 {
        peer.send_to(&[i; 40], relay).unwrap();
    }
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 100, "every datagram of the burst arrives");
    for (i, d) in got.iter().enumerate() {
        assert_eq!(&d[..4], &[0x40, 0x00, 0, 40], "ChannelData on channel 0x4000");
        assert_eq!(&d[4..], &[i as u8; 40][..], "in order");
    }

    // Refresh 0 ends the allocation and closes its relay socket: the port is free again.
    assert!(udp.ask(&mut alice, |c| c.refresh(0)).error.is_none());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match UdpSocket::bind(relay) {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "{relay} still bound after release: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
