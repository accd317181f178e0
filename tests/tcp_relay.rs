//! TCP relays (RFC 6062) on the real binary: coturn's `turnutils_uclient -T` against a TCP
//! echo peer and between its own clients (Connect and peer-initiated), over TCP,
//! with several shards; half-close passed on; and teardown: every socket and port freed.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{turn_config, uclient, Turnd};
use turnd::proto::{AttrType, Class, Message, Method};
use turnd::server::testclient::TestClient;

const REALM: &str = "test.turnd";

/// A TCP echo peer on loopback, one thread per connection, for the whole test.
fn echo_peer() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 16384];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn tcp_relay_config(threads: u32) -> String {
    turn_config(&format!("threads = {threads}"))
}

#[test]
fn coturn_client_relays_over_tcp_to_an_echo_peer_and_frees_everything() {
    let t = Turnd::start(&tcp_relay_config(2));
    let peer = echo_peer();
    let (port, peer_port) = (t.tcp[0].port().to_string(), peer.port().to_string());
    let run = || {
        uclient::run(&[
            "-t",
            "-T",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-p",
            &port,
            "-n",
            "40",
            "-m",
            "1",
            "-l",
            "400",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "127.0.0.1",
        ])
    };
    // A first run, then the count of descriptors once the shards have settled (their
    // runtimes open theirs as they start).
    let _ = run();
    let settled = || {
        let mut last = open_fds(t.pid());
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = open_fds(t.pid());
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let baseline = settled();
    let totals = run();
    let expected = 40 * totals.sessions;
    assert!(expected > 0, "{}", totals.text);
    assert_eq!(
        (totals.sent, totals.received, totals.lost),
        (expected, expected, 0),
        "{}",
        totals.text
    );
    // Every socket of the run is closed again (the client closed its connections).
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds(t.pid()) > baseline {
        assert!(
            Instant::now() < deadline,
            "{} descriptors open, {baseline} before",
            open_fds(t.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn coturn_clients_relay_to_each_other_over_tcp() {
    // Four clients, each connecting to the others' relayed addresses: every pair has one
    // connection made by Connect and one announced by ConnectionAttempt. Two shards, so
    // ConnectionBinds land on the other shard too.
    let t = Turnd::start(&tcp_relay_config(2));
    let peer = echo_peer();
    let (port, peer_port) = (t.tcp[0].port().to_string(), peer.port().to_string());
    let totals = uclient::run(&[
        "-t",
        "-T",
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-p",
        &port,
        "-n",
        "20",
        "-m",
        "4",
        "-l",
        "300",
        "-u",
        "alice",
        "-w",
        "wonderland",
        "127.0.0.1",
    ]);
    let expected = 20 * totals.sessions;
    assert!(totals.sessions >= 4, "{}", totals.text);
    assert_eq!(
        (totals.sent, totals.received, totals.lost),
        (expected, expected, 0),
        "{}",
        totals.text
    );
}

/// A TURN client over one TCP connection, reading whole STUN messages.
struct Control {
    s: TcpStream,
    c: TestClient,
}

impl Control {
    fn new(server: SocketAddr, c: TestClient) -> Control {
        let s = TcpStream::connect(server).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Control { s, c }
    }

    fn read_message(&mut self) -> Vec<u8> {
        let mut head = [0u8; 20];
        self.s.read_exact(&mut head).unwrap();
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).unwrap();
        [head.to_vec(), body].concat()
    }

    /// Sends a request (again after a 401 or 438) and returns the answer's bytes.
    fn ask(&mut self, build: impl Fn(&mut TestClient) -> Vec<u8>) -> Vec<u8> {
        for _ in 0..3 {
            let req = build(&mut self.c);
            self.s.write_all(&req).unwrap();
            let answer = self.read_message();
            let r = self.c.read(&answer);
            if !matches!(r.error, Some(401 | 438)) {
                return answer;
            }
        }
        panic!("still challenged");
    }
}

fn class_and_code(bytes: &[u8], c: &mut TestClient) -> (Class, Option<u16>) {
    let r = c.read(bytes);
    (r.class.unwrap(), r.error)
}

fn connection_id(bytes: &[u8]) -> u32 {
    let m = Message::parse(bytes).unwrap();
    u32::from_be_bytes(m.get(AttrType::CONNECTION_ID).unwrap().value.try_into().unwrap())
}

fn allocate_tcp(server: SocketAddr) -> (Control, SocketAddr) {
    let mut control = Control::new(server, TestClient::new("alice", REALM, "wonderland"));
    let answer = control.ask(|c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    });
    let relayed = control.c.read(&answer).relayed[0];
    (control, relayed)
}

/// A new data connection, bound to `id`.
fn bind(server: SocketAddr, control: &Control, id: u32) -> TcpStream {
    let mut data = Control::new(server, control.c.clone());
    let answer = data.ask(|c| {
        c.request(Method::CONNECTION_BIND, |w| {
            let _ = w.attr_u32(AttrType::CONNECTION_ID, id);
        })
    });
    assert_eq!(class_and_code(&answer, &mut data.c), (Class::Success, None));
    data.s
}

#[test]
fn connect_and_peer_initiated_connections_carry_bytes_and_pass_half_close_on() {
    let t = Turnd::start(&tcp_relay_config(2));
    let server = t.tcp[0];
    let (mut control, relayed) = allocate_tcp(server);
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let answer = control.ask(|c| c.create_permission(&[peer_addr]));
    assert_eq!(class_and_code(&answer, &mut control.c), (Class::Success, None));

    // Connect: the peer sees a connection from the relay's IP.
    let answer = control.ask(|c| {
        c.request(Method::CONNECT, |w| {
            let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer_addr);
        })
    });
    assert_eq!(class_and_code(&answer, &mut control.c), (Class::Success, None));
    let (mut at_peer, from) = peer.accept().unwrap();
    assert_eq!(from.ip(), relayed.ip());
    at_peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut data = bind(server, &control, connection_id(&answer));
    data.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Bytes pass unchanged both ways, 1 MiB of them.
    let blob: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut data = data.try_clone().unwrap();
        let blob = blob.clone();
        std::thread::spawn(move || data.write_all(&blob).unwrap())
    };
    let mut got = vec![0u8; blob.len()];
    at_peer.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == blob, "the bytes changed on the way");
    at_peer.write_all(b"and back").unwrap();
    let mut back = [0u8; 8];
    data.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"and back");
    // Half-close: the client's FIN reaches the peer, which can still answer.
    data.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    at_peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    at_peer.write_all(b"last words").unwrap();
    drop(at_peer);
    let mut tail = Vec::new();
    data.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, b"last words");

    // Peer-initiated: the peer connects to the relayed address; the client hears of it.
    let mut incoming = TcpStream::connect(relayed).unwrap();
    let indication = control.read_message();
    let m = Message::parse(&indication).unwrap();
    assert_eq!((m.method(), m.class()), (Method::CONNECTION_ATTEMPT, Class::Indication));
    let mut data = bind(server, &control, connection_id(&indication));
    incoming.write_all(b"hello client").unwrap();
    let mut hello = [0u8; 12];
    data.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello client");

    // Closing the control connection ends the allocation: its data connection closes and
    // the relayed port is free again.
    drop(control);
    let mut eof = Vec::new();
    incoming.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        incoming.read_to_end(&mut eof).ok(),
        Some(0),
        "the peer connection closed"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpListener::bind(relayed).is_err() {
        assert!(Instant::now() < deadline, "relayed port {relayed} still taken");
        std::thread::sleep(Duration::from_millis(50));
    }
}
