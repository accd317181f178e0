//! STUN end to end against the real `turnd` binary on loopback (IPv4 and IPv6, UDP and TCP),
//! with clients nobody here wrote: the webrtc-rs `stun` crate and coturn's
//! `turnutils_stunclient`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{binding_request, client_for, loopback_config, malformed_table, Turnd};
use stun::message::{Getter, Setter};
use turnd::proto::attr::decode_xor_address;
use turnd::proto::{AttrType, Class, Message, Method};

fn v4(addrs: &[SocketAddr]) -> SocketAddr {
    *addrs.iter().find(|a| a.is_ipv4()).unwrap()
}
fn v6(addrs: &[SocketAddr]) -> SocketAddr {
    *addrs.iter().find(|a| a.is_ipv6()).unwrap()
}

/// Sends a Binding request built by the webrtc-rs `stun` crate and decodes the answer with it.
fn webrtc_binding(server: SocketAddr, fingerprint: bool) {
    let sock = client_for(server);
    let mut req = stun::message::Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(stun::message::BINDING_REQUEST),
    ];
    if fingerprint {
        setters.push(Box::new(stun::fingerprint::FINGERPRINT));
    }
    req.build(&setters).unwrap();
    sock.send_to(&req.raw, server).unwrap();

    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(from, server);
    let mut resp = stun::message::Message::new();
    resp.unmarshal_binary(&buf[..n]).unwrap();
    assert_eq!(resp.typ, stun::message::BINDING_SUCCESS);
    assert_eq!(resp.transaction_id, req.transaction_id);
    let mut xma = stun::xoraddr::XorMappedAddress::default();
    xma.get_from(&resp).unwrap();
    assert_eq!(
        SocketAddr::new(xma.ip, xma.port),
        sock.local_addr().unwrap(),
        "reflexive address"
    );
    assert_eq!(
        resp.contains(stun::attributes::ATTR_FINGERPRINT),
        fingerprint,
        "FINGERPRINT only when asked"
    );
    if fingerprint {
        stun::fingerprint::FINGERPRINT.check(&resp).unwrap();
    }
    assert!(
        !resp.contains(stun::attributes::ATTR_SOFTWARE),
        "no SOFTWARE unless configured"
    );
}

#[test]
fn webrtc_stun_client_over_udp_ipv4_and_ipv6() {
    let t = Turnd::start(&loopback_config(""));
    for fp in [false, true] {
        webrtc_binding(v4(&t.udp), fp);
        webrtc_binding(v6(&t.udp), fp);
    }
}

#[test]
fn software_attribute_appears_only_when_configured() {
    let t = Turnd::start(&loopback_config("software = \"turnd-test\""));
    let server = v4(&t.udp);
    let sock = client_for(server);
    sock.send_to(&binding_request([1; 12]), server).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).unwrap();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.get(AttrType::SOFTWARE).unwrap().value, b"turnd-test");
}

fn stunclient(args: &[&str]) -> String {
    let out = Command::new("turnutils_stunclient")
        .args(args)
        .output()
        .expect("turnutils_stunclient missing: install Debian's coturn package (bash .ci/deps)");
    assert!(out.status.success(), "turnutils_stunclient failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn coturn_stunclient_sees_its_reflexive_address() {
    let t = Turnd::start(&loopback_config(""));
    let p4 = v4(&t.udp).port().to_string();
    // Bind the client to 127.0.0.2 so that a correct answer cannot be a coincidence.
    let out = stunclient(&["-p", &p4, "-L", "127.0.0.2", "127.0.0.1"]);
    assert!(out.contains("UDP reflexive addr: 127.0.0.2:"), "{out}");
    let p6 = v6(&t.udp).port().to_string();
    let out = stunclient(&["-p", &p6, "::1"]);
    assert!(out.contains("IPv6. UDP reflexive addr: ::1:"), "{out}");
}

fn read_response(s: &mut TcpStream) -> Vec<u8> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).unwrap();
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut m = head.to_vec();
    m.resize(20 + len, 0);
    s.read_exact(&mut m[20..]).unwrap();
    m
}

fn assert_binding_success(bytes: &[u8], tid: [u8; 12], client: SocketAddr) {
    let m = Message::parse(bytes).unwrap();
    assert_eq!((m.method(), m.class()), (Method::BINDING, Class::Success));
    assert_eq!(m.transaction_id().0, tid);
    let x = m.get(AttrType::XOR_MAPPED_ADDRESS).unwrap();
    assert_eq!(decode_xor_address(x.value, &m.transaction_id()).unwrap(), client);
}

fn tcp_framing(server: SocketAddr) {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = s.local_addr().unwrap();
    // One request split across two writes.
    let req = binding_request([1; 12]);
    s.write_all(&req[..7]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&req[7..]).unwrap();
    assert_binding_success(&read_response(&mut s), [1; 12], me);
    // Two requests in one write.
    let mut two = binding_request([2; 12]);
    two.extend_from_slice(&binding_request([3; 12]));
    s.write_all(&two).unwrap();
    assert_binding_success(&read_response(&mut s), [2; 12], me);
    assert_binding_success(&read_response(&mut s), [3; 12], me);
    // A message dribbled one byte at a time.
    for b in binding_request([4; 12]) {
        s.write_all(&[b]).unwrap();
    }
    assert_binding_success(&read_response(&mut s), [4; 12], me);
}

#[test]
fn tcp_stream_framing_ipv4_and_ipv6() {
    let t = Turnd::start(&loopback_config(""));
    tcp_framing(v4(&t.tcp));
    tcp_framing(v6(&t.tcp));
}

#[test]
fn malformed_datagrams_are_never_answered() {
    let t = Turnd::start(&loopback_config(""));
    for server in [v4(&t.udp), v6(&t.udp)] {
        let sock = client_for(server);
        sock.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        for (i, (name, bytes)) in malformed_table().into_iter().enumerate() {
            sock.send_to(&bytes, server).unwrap();
            // Loopback keeps order: an answer to the malformed datagram would arrive first.
            let tid = [i as u8; 12];
            sock.send_to(&binding_request(tid), server).unwrap();
            let mut buf = [0u8; 1500];
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{name}: good request unanswered: {e}"));
            let m = Message::parse(&buf[..n]).unwrap();
            assert_eq!(m.transaction_id().0, tid, "{name} was answered");
        }
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let t = Turnd::start(&loopback_config(""));
    let server = v4(&t.udp);
    let sock = client_for(server);
    let mut req = binding_request([5; 12]);
    req[3] = 16;
    req.extend_from_slice(&[0x7F, 0x01, 0, 0]); // unknown, comprehension-required
    req.extend_from_slice(&[0xC0, 0x01, 0, 0]); // unknown, optional: ignored
    req.extend_from_slice(&[0x00, 0x03, 0, 4, 0, 0, 0, 6]); // CHANGE-REQUEST (RFC 5780): unsupported
    sock.send_to(&req, server).unwrap();
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).unwrap();
    let m = Message::parse(&buf[..n]).unwrap();
    assert_eq!(m.class(), Class::Error);
    let (code, _) = turnd::proto::attr::decode_error_code(m.get(AttrType::ERROR_CODE).unwrap().value).unwrap();
    assert_eq!(code.0, 420);
    let listed: Vec<u16> =
        turnd::proto::attr::decode_unknown_attributes(m.get(AttrType::UNKNOWN_ATTRIBUTES).unwrap().value)
            .unwrap()
            .map(|t| t.0)
            .collect();
    assert_eq!(listed, [0x7F01, 0x0003]);
}

#[test]
fn tcp_garbage_disconnects_only_the_offender() {
    let t = Turnd::start(&loopback_config(""));
    let server = v4(&t.tcp);
    let mut good = TcpStream::connect(server).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let me = good.local_addr().unwrap();
    good.write_all(&binding_request([1; 12])).unwrap();
    assert_binding_success(&read_response(&mut good), [1; 12], me);

    let mut bad = TcpStream::connect(server).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    bad.write_all(b"\xff\xff\xff\xff not stun at all").unwrap();
    let mut sink = [0u8; 64];
    let n = bad.read(&mut sink).unwrap_or(0);
    assert_eq!(n, 0, "the garbage connection is closed without an answer");

    good.write_all(&binding_request([2; 12])).unwrap();
    assert_binding_success(&read_response(&mut good), [2; 12], me);
}

#[test]
fn idle_tcp_connections_are_closed() {
    let cfg = "[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"tcp\"]\nidle_timeout = \"1s\"\n";
    let t = Turnd::start(cfg);
    let mut s = TcpStream::connect(t.tcp[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut b = [0u8; 8];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

#[test]
fn tcp_connection_cap_per_listener() {
    let cfg = "threads = 2\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"tcp\"]\nmax_connections = 2\n";
    let t = Turnd::start(cfg);
    let server = t.tcp[0];
    let open = |tid: u8| {
        let mut s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(&binding_request([tid; 12])).unwrap();
        let resp = read_response(&mut s);
        (s, resp)
    };
    let (a, _) = open(1);
    let (_b, _) = open(2);
    // The third is accepted by the kernel, then closed by turnd without an answer.
    let mut c = TcpStream::connect(server).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c.write_all(&binding_request([3; 12]));
    let mut b = [0u8; 64];
    assert_eq!(c.read(&mut b).unwrap_or(0), 0, "over the cap: closed");
    // Freeing a slot lets a new client in.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = s.write_all(&binding_request([4; 12]));
        let mut head = [0u8; 20];
        if s.read_exact(&mut head).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sharded_server_answers_every_client() {
    // With threads = 2 the kernel spreads clients over two shards by SO_REUSEPORT.
    let t = Turnd::start(&loopback_config("threads = 2"));
    let server = v4(&t.udp);
    for i in 0..50u8 {
        let sock = client_for(server);
        sock.send_to(&binding_request([i; 12]), server).unwrap();
        let mut buf = [0u8; 1500];
        let n = sock.recv(&mut buf).unwrap();
        assert_binding_success(&buf[..n], [i; 12], sock.local_addr().unwrap());
    }
}

#[test]
fn sigterm_exits_cleanly() {
    let t = Turnd::start(&loopback_config(""));
    let status = t.terminate();
    assert!(status.success(), "{status:?}");
}
