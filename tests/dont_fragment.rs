//! DONT-FRAGMENT on a real link: a relay socket of an allocation made with DONT-FRAGMENT sends
//! with the DF bit, so a datagram larger than the link's MTU is not fragmented on the way to
//! the peer, while the same datagram from an allocation without it arrives in fragments. Two
//! network namespaces joined by a veth pair with a 1280-byte MTU; 198.18.0.0/15 only.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::lab::Lab;
use common::Turnd;
use turnd::proto::{AttrType, Method};
use turnd::server::testclient::TestClient;

const CONFIG: &str = r#"threads = 1
realm = "df.test"
[[listen]]
address = "127.0.0.1:3478"
protocols = ["udp"]
[relay]
addresses = ["198.18.0.1"]
[auth]
[[auth.users]]
name = "alice"
password = "secret"
[peers]
allow = ["198.18.0.0/15"]
"#;

fn ask(
    sock: &UdpSocket,
    c: &mut TestClient,
    build: impl Fn(&mut TestClient) -> Vec<u8>,
) -> turnd::server::testclient::Response {
    let mut buf = [0u8; 1500];
    for _ in 0..2 {
        sock.send(&build(c)).unwrap();
        let n = sock.recv(&mut buf).expect("an answer");
        let r = c.read(&buf[..n]);
        if r.error != Some(401) {
            return r;
        }
    }
    panic!("still challenged")
}

#[test]
fn dont_fragment_keeps_an_oversized_datagram_whole_or_not_at_all() {
    let mut lab = Lab::new();
    let server = lab.netns("srv");
    let peer_ns = lab.netns("peer");
    lab.link(&server, "s0", &["198.18.0.1/24"], &peer_ns, "p0", &["198.18.0.2/24"]);
    server.sh("ip link set s0 mtu 1280");
    peer_ns.sh("ip link set p0 mtu 1280");
    let _t = Turnd::start_in_netns(&server.name, CONFIG);
    let peer = peer_ns.enter(|| UdpSocket::bind("198.18.0.2:40000").unwrap());
    peer.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
    let peer_addr: SocketAddr = "198.18.0.2:40000".parse().unwrap();
    let payload = vec![0xAB; 1400];

    let mut relayed = Vec::new();
    for df in [false, true] {
        let sock = server.enter(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect("127.0.0.1:3478").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        });
        let mut c = TestClient::new("alice", "df.test", "secret");
        let r = ask(&sock, &mut c, |c| {
            c.request(Method::ALLOCATE, |w| {
                let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                if df {
                    let _ = w.attr(AttrType::DONT_FRAGMENT, &[]);
                }
            })
        });
        assert_eq!(r.error, None, "Allocate (DONT-FRAGMENT: {df})");
        relayed.push(r.relayed[0]);
        assert_eq!(ask(&sock, &mut c, |c| c.create_permission(&[peer_addr])).error, None);
        sock.send(&c.send(peer_addr, &payload)).unwrap();
        let mut buf = [0u8; 2048];
        let got = peer.recv_from(&mut buf);
        if df {
            assert!(
                got.is_err(),
                "a 1400-byte datagram with DF crossed a 1280-byte link: {got:?}"
            );
        } else {
            let (n, from) = got.expect("the fragmented datagram, reassembled");
            assert_eq!((n, from), (1400, relayed[0]));
        }
        // A datagram that fits passes either way.
        sock.send(&c.send(peer_addr, &payload[..1000])).unwrap();
        let (n, _) = peer.recv_from(&mut buf).expect("a datagram that fits");
        assert_eq!(n, 1000);
    }
}
