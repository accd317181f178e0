//! Behind a load balancer: HAProxy (Debian's package) in front of a turnd TCP and a TLS
//! listener, sending the PROXY protocol v1 and v2. The client HAProxy accepted is the one
//! turnd sees everywhere (XOR-MAPPED-ADDRESS, per-IP limits, sessions); connections from
//! outside `proxy_from`, or without a header, are closed.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::free_port;
use common::tls::{read_frame, tls_over, write_cert};
use common::Turnd;
use turnd::server::testclient::TestClient;

const REALM: &str = "test.turnd";
/// HAProxy connects to turnd from this address; turnd trusts only it.
const BALANCER: [u8; 4] = [127, 0, 0, 5];

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Frontends on free ports: (v1 to the TCP listener, v2 to the TCP listener, v2 to TLS).
fn haproxy(dir: &std::path::Path, tcp: SocketAddr, tls: SocketAddr) -> (Haproxy, [SocketAddr; 3]) {
    let ports = [free_port(), free_port(), free_port()];
    let fronts = ports.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let config = format!(
        r#"defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend v1
    bind {f1}
    default_backend v1
backend v1
    source 127.0.0.5
    server turnd {tcp} send-proxy

frontend v2
    bind {f2}
    default_backend v2
backend v2
    source 127.0.0.5
    server turnd {tcp} send-proxy-v2

frontend tls
    bind {f3}
    default_backend tls
backend tls
    source 127.0.0.5
    server turnd {tls} send-proxy-v2
"#,
        f1 = fronts[0],
        f2 = fronts[1],
        f3 = fronts[2],
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy missing: install Debian's haproxy package (bash .ci/deps)");
    let h = Haproxy(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    for f in fronts {
        while TcpStream::connect(f).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (h, fronts)
}

fn config(dir: &std::path::Path) -> String {
    format!(
        r#"realm = "{REALM}"

[[listen]]
address = "127.0.0.1:0"
protocols = ["tcp"]
max_connections_per_ip = 1
proxy_protocol = true
proxy_from = ["127.0.0.5"]

[[listen]]
address = "127.0.0.2:0"
protocols = ["tls"]
proxy_protocol = true
proxy_from = ["127.0.0.5/32"]

[relay]
addresses = ["127.0.0.1"]

[auth]
[[auth.users]]
name = "alice"
password = "wonderland"

[tls]
certificate = "{cert}"
private_key = "{key}"
"#,
        cert = dir.join("cert.pem").display(),
        key = dir.join("key.pem").display(),
    )
}

/// A TCP connection to `to` from `from` (any port).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn stun_frame(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).ok()?;
    Some([head.to_vec(), rest].concat())
}

/// XOR-MAPPED-ADDRESS of a Binding over `s`, or None if the connection gave nothing back.
fn mapped(s: &mut (impl Read + Write)) -> Option<SocketAddr> {
    let mut c = TestClient::new("x", REALM, "x");
    s.write_all(&c.request(turnd::proto::Method::BINDING, |_| {})).ok()?;
    c.read(&stun_frame(s)?).mapped
}

#[test]
fn haproxy_in_front_names_the_client_over_tcp_and_tls_with_v1_and_v2() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let t = Turnd::start(&config(dir.path()));
    let tcp = t.tcp[0];
    let tls = *t.tcp.iter().find(|a| a.ip() == IpAddr::from([127, 0, 0, 2])).unwrap();
    let (_h, [v1, v2, over_tls]) = haproxy(dir.path(), tcp, tls);

    // The client HAProxy accepted, not HAProxy's own address, is the mapped address.
    // (From two client addresses: max_connections_per_ip is 1, and the first connection's
    // slot is free only once its close has come through HAProxy.)
    for (front, from) in [(v1, [127, 0, 0, 9]), (v2, [127, 0, 0, 11])] {
        let mut s = connect_from(from, front);
        let me = s.local_addr().unwrap();
        assert_eq!(mapped(&mut s), Some(me), "through {front}");
    }
    // TLS: the header comes before the ClientHello, and the handshake is untouched.
    let s = connect_from([127, 0, 0, 10], over_tls);
    let me = s.local_addr().unwrap();
    let (mut tls_stream, _) = tls_over(s);
    let mut c = TestClient::new("alice", REALM, "wonderland");
    tls_stream.write_all(&c.allocate()).unwrap();
    c.read(&read_frame(&mut tls_stream));
    tls_stream.write_all(&c.allocate()).unwrap();
    let r = c.read(&read_frame(&mut tls_stream));
    assert_eq!((r.relayed.len(), r.mapped), (1, Some(me)), "{r:?}");
    // `turnd sessions` shows the client, not the balancer.
    let out = Command::new(common::BIN)
        .arg("--config")
        .arg(&t.config_path)
        .args(["sessions", "--user", "alice"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&me.to_string()), "{listed}");
    assert!(!listed.contains("127.0.0.5"), "{listed}");
}

#[test]
fn per_ip_limits_count_the_named_client_and_strangers_or_bare_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let t = Turnd::start(&config(dir.path()));
    let tcp = t.tcp[0];
    let tls = *t.tcp.iter().find(|a| a.ip() == IpAddr::from([127, 0, 0, 2])).unwrap();
    let (_h, [_, v2, _]) = haproxy(dir.path(), tcp, tls);

    // max_connections_per_ip = 1 counts clients, not the balancer: one from each of two
    // clients is fine, a second from the same client is closed.
    let mut first = connect_from([127, 0, 0, 9], v2);
    assert!(mapped(&mut first).is_some());
    let mut other = connect_from([127, 0, 0, 10], v2);
    assert!(
        mapped(&mut other).is_some(),
        "a second client was refused: the limit counted the balancer"
    );
    let mut again = connect_from([127, 0, 0, 9], v2);
    assert_eq!(
        mapped(&mut again),
        None,
        "a second connection from one client got through"
    );

    // Straight to turnd from an address outside proxy_from: closed, nothing answered.
    let mut stranger = connect_from([127, 0, 0, 1], tcp);
    assert_eq!(mapped(&mut stranger), None);
    // From the balancer's address, but with no header: closed too.
    let mut bare = connect_from(BALANCER, tcp);
    assert_eq!(mapped(&mut bare), None);
    // A forged header from outside proxy_from names nobody.
    let mut forged = connect_from([127, 0, 0, 1], tcp);
    forged
        .write_all(b"PROXY TCP4 198.18.0.1 127.0.0.1 1234 3478\r\n")
        .unwrap();
    assert_eq!(mapped(&mut forged), None);
    // The refusals are counted.
    let http = t.http.unwrap();
    let mut s = TcpStream::connect(http).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let refused: u64 = text
        .lines()
        .find(|l| l.starts_with("turnd_tcp_connections_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 4, "{refused}\n{text}");
}

#[test]
fn proxy_protocol_config_errors_name_the_key() {
    let check = |listen: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, format!("[[listen]]\naddress = \"127.0.0.1:3478\"\n{listen}")).unwrap();
        let out = Command::new(common::BIN)
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{listen}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(check("protocols = [\"tcp\"]\nproxy_protocol = true\n").contains("proxy_protocol needs proxy_from"));
    assert!(
        check("protocols = [\"udp\"]\nproxy_protocol = true\nproxy_from = [\"10.0.0.1\"]\n").contains("not to UDP")
    );
    assert!(
        check("protocols = [\"udp\", \"tcp\"]\nproxy_protocol = true\nproxy_from = [\"10.0.0.1\"]\n")
            .contains("give UDP a [[listen]] of its own")
    );
    assert!(check("protocols = [\"tcp\"]\nproxy_from = [\"10.0.0.1\"]\n").contains("needs proxy_protocol = true"));
    assert!(
        check("protocols = [\"tcp\"]\nproxy_protocol = true\nproxy_from = [\"lb\"]\n")
            .contains("invalid CIDR \"lb\" in proxy_from")
    );
}
