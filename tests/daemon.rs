//! Running as a daemon: TLS listeners (`turns:`) with coturn's client and Chromium,
//! certificate reload without dropping open connections, graceful drain on SIGTERM, and the
//! systemd notification protocol.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{read_frame, tls_connect, write_cert, Tls};
use common::{turn_config, Turnd};
use turnd::proto::{AttrType, Message};
use turnd::server::testclient::{Response, TestClient};

const REALM: &str = "test.turnd";

fn tls_config(dir: &Path, extra: &str) -> String {
    let base = turn_config(extra).replace(
        "[[listen]]\naddress = \"[::1]:0\"\nprotocols = [\"udp\", \"tcp\"]",
        "[[listen]]\naddress = \"127.0.0.2:0\"\nprotocols = [\"tls\"]",
    );
    format!(
        "{base}\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn tls_addr(t: &Turnd) -> SocketAddr {
    *t.tcp
        .iter()
        .find(|a| a.ip() == std::net::IpAddr::from([127, 0, 0, 2]))
        .expect("TLS listener")
}

fn tls_ask(s: &mut Tls, c: &mut TestClient, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> Response {
    let first = c.nonce.is_empty();
    s.write_all(&build(c)).unwrap();
    let r = c.read(&read_frame(s));
    if first && r.error == Some(401) {
        s.write_all(&build(c)).unwrap();
        return c.read(&read_frame(s));
    }
    r
}

/// Sums the samples of a metric family in a Prometheus text exposition.
fn metric(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut m = String::new();
    let _ = s.read_to_string(&mut m);
    m
}

#[test]
fn coturn_uclient_relays_over_tls_with_no_loss() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let cfg = tls_config(dir.path(), "threads = 2").replace("[relay]\n", "[relay]\nlegacy_channel_numbers = true\n");
    let t = Turnd::start_in(&cfg, dir);
    let port = tls_addr(&t).port().to_string();
    // The client's leg to turnd is TLS, so reliable; the peer's legs are UDP on loopback,
    // where a machine starved of CPU may drop datagrams before turnd ever sees them. One run
    // may be repeated, and only when turnd itself lost nothing: it relayed all 160 messages
    // to the peer and dropped nothing. Three clients ask for RTP/RTCP pairs: four sessions
    // of 40 messages.
    let mut last = String::new();
    for attempt in 0..2 {
        let before = scrape(t.http.unwrap());
        let text = uclient_over_tls(&port);
        for line in text.lines().filter(|l| l.contains("cannot connect")) {
            // coturn 4.6.1's client picks one of four TLS contexts at random for each
            // connection: any version (ctx 0), TLS 1.0 only (1), TLS 1.1 only (2), TLS 1.2
            // only (3). rustls speaks TLS 1.2 and 1.3, so ctx 1 and 2 end in "sslv3 alert
            // handshake failure" and the client tries again. No other handshake may fail.
            assert!(
                line.contains("ctx=1") || line.contains("ctx=2"),
                "a handshake failed: {line}\n{text}"
            );
        }
        if text.contains("tot_send_msgs=160, tot_recv_msgs=160") && text.contains("Total lost packets 0 (0.000000%)") {
            return;
        }
        let after = scrape(t.http.unwrap());
        let delta = |family: &str| metric(&after, family) - metric(&before, family);
        let to_peer = delta("turnd_relay_packets_total{direction=\"client_to_peer\"}");
        let dropped = delta("turnd_dropped_packets_total");
        assert!(
            attempt == 0 && to_peer == 160 && dropped == 0,
            "turnd relayed {to_peer} of 160 to the peer and dropped {dropped}:\n{text}"
        );
        eprintln!("the UDP legs to the peer lost datagrams outside turnd; once more:\n{text}");
        last = text;
    }
    panic!("lost twice:\n{last}");
}

/// One run of coturn's client over TLS to turnd on `port`, through an echo peer; its output.
fn uclient_over_tls(port: &str) -> String {
    let peer_port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut peer = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_peer (bash .ci/deps)");
    std::thread::sleep(Duration::from_millis(200));
    let out = Command::new("timeout")
        .args(["60", "turnutils_uclient", "-t", "-S", "-u", "alice", "-w", "wonderland"])
        .args([
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port.to_string(),
            "-p",
            port,
            "-n",
            "40",
            "-m",
            "3",
            "-l",
            "120",
            "127.0.0.2",
        ])
        .output()
        .expect("turnutils_uclient (bash .ci/deps)");
    let _ = peer.kill();
    let _ = peer.wait();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn chromium_connects_over_turns_relay_only() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let t = Turnd::start_in(&tls_config(dir.path(), "threads = 2"), dir);
    let ice = serde_json::json!({
        "urls": format!("turns:127.0.0.2:{}?transport=tcp", tls_addr(&t).port()),
        "username": "alice",
        "credential": "wonderland",
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let out = Command::new("timeout")
        .args(["90", "node", "relay.mjs", &ice.to_string(), "5"])
        .current_dir(script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(r["ok"], true, "{r} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(r["pair"]["localType"], "relay", "{r}");
    assert_eq!(r["pair"]["relayProtocol"], "tls", "{r}");
}

#[test]
fn certificate_reload_serves_new_connections_and_keeps_old_ones_relaying() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let certs = dir.path().to_path_buf();
    let t = Turnd::start_in(&tls_config(dir.path(), "threads = 1"), dir);
    let addr = tls_addr(&t);

    // An allocation on a TLS connection, relaying to a UDP peer.
    let (mut old, seen) = tls_connect(addr);
    assert_eq!(seen, first);
    let mut alice = TestClient::new("alice", REALM, "wonderland");
    let r = tls_ask(&mut old, &mut alice, |c| c.allocate());
    assert!(r.error.is_none(), "{r:?}");
    let relay = r.relayed[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(tls_ask(&mut old, &mut alice, |c| c.create_permission(&[peer_addr]))
        .error
        .is_none());

    // A broken certificate at reload: logged, and the old one stays.
    std::fs::write(certs.join("cert.pem"), "not a certificate\n").unwrap();
    let _ = Command::new("kill").args(["-HUP", &t.pid().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(l) = t.log.recv_timeout(Duration::from_millis(100)) {
            if l.contains("TLS certificate reload failed") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no log line for the failed reload");
    }
    assert_eq!(tls_connect(addr).1, first);

    // A renewed certificate: picked up on SIGHUP.
    let second = write_cert(&certs);
    let _ = Command::new("kill").args(["-HUP", &t.pid().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(addr).1 != second {
        assert!(Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The old connection still relays, both ways.
    old.write_all(&alice.send(peer_addr, b"after the renewal")).unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after the renewal");
    peer.send_to(b"back to you", relay).unwrap();
    let m = read_frame(&mut old);
    assert_eq!(
        Message::parse(&m).unwrap().get(AttrType::DATA).unwrap().value,
        b"back to you"
    );

    // A renewal by replacing the files alone (no signal) is picked up too.
    let third = write_cert(&certs);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tls_connect(addr).1 != third {
        assert!(Instant::now() < deadline, "the file change was never noticed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ice_credentials_name_turns_urls_after_the_certificate_or_server_name() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let cfg_path = dir.path().join("turnd.toml");
    let ice = |server_name: &str| {
        let cfg = format!(
            "{server_name}\n[[listen]]\naddress = \"0.0.0.0:5349\"\nprotocols = [\"tls\"]\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n[auth]\nsecrets = [\"s\"]\n",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display()
        );
        std::fs::write(&cfg_path, cfg).unwrap();
        let o = Command::new(common::BIN)
            .args(["credential", "--format", "ice", "--config"])
            .arg(&cfg_path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["urls"].clone()
    };
    // Only a TLS listener: one turns: URL, named as the certificate's first DNS name.
    assert_eq!(ice(""), serde_json::json!(["turns:localhost:5349?transport=tcp"]));
    assert_eq!(
        ice("server_name = \"turn.example.org\""),
        serde_json::json!(["turns:turn.example.org:5349?transport=tcp"])
    );
}

#[test]
fn a_bad_certificate_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    // A key that does not belong to the certificate.
    let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
    std::fs::write(dir.path().join("key.pem"), other.key_pair.serialize_pem()).unwrap();
    let cfg_path = dir.path().join("turnd.toml");
    std::fs::write(
        &cfg_path,
        common::isolate(&tls_config(dir.path(), "threads = 1"), dir.path()),
    )
    .unwrap();
    let o = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("does not belong to the certificate").count(),
        1,
        "said once: {err}"
    );
    // check-config loads them exactly as serve does: the same message, exit 1.
    let check = |what: &str| {
        let o = Command::new(common::BIN)
            .args(["check-config", "--config"])
            .arg(&cfg_path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "check-config with {what}: {err}");
        err
    };
    let key_path = dir.path().join("key.pem").display().to_string();
    let msg = err[err.find(&key_path).unwrap()..].lines().next().unwrap();
    let checked = check("a foreign key");
    assert!(
        checked.contains(msg),
        "check-config said {checked:?}, serve said {msg:?}"
    );
    std::fs::remove_file(dir.path().join("key.pem")).unwrap();
    assert!(check("no key file").contains("key.pem: cannot read a PEM private key"));
    std::fs::remove_file(dir.path().join("cert.pem")).unwrap();
    assert!(check("no certificate file").contains("cert.pem: cannot read the certificate"));
    std::fs::write(dir.path().join("key.pem"), other.key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("cert.pem"), "garbage").unwrap();
    let o = Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cert.pem"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

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
    fn ask(&self, c: &mut TestClient, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> Response {
        let first = c.nonce.is_empty();
        for attempt in 0..2 {
            self.sock.send_to(&build(c), self.server).unwrap();
            let mut buf = [0u8; 2048];
            let n = self.sock.recv(&mut buf).unwrap();
            let r = c.read(&buf[..n]);
            if !(attempt == 0 && first && r.error == Some(401)) {
                return r;
            }
        }
        unreachable!()
    }
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn wait_exit(t: &mut Turnd, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = t.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_drains_then_exits_when_the_last_allocation_ends() {
    let mut t = Turnd::start(&turn_config(
        "threads = 2\nshutdown_grace = \"60s\"\n[metrics]\nlisten = \"127.0.0.1:0\"",
    ));
    let http = t.http.unwrap();
    let udp = Udp::new(t.udp[0]);
    let mut alice = TestClient::new("alice", REALM, "wonderland");
    let r = udp.ask(&mut alice, |c| c.allocate());
    let relay = r.relayed[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(udp
        .ask(&mut alice, |c| c.create_permission(&[peer_addr]))
        .error
        .is_none());
    assert_eq!(http_status(http, "/healthz"), 200);

    let _ = Command::new("kill").args(["-TERM", &t.pid().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_status(http, "/healthz") != 503 {
        assert!(Instant::now() < deadline, "/healthz never turned 503");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Open allocations keep relaying, with no loss.
    let mut buf = [0u8; 2048];
    for i in 0..50u8 {
        udp.sock.send_to(&alice.send(peer_addr, &[i; 40]), udp.server).unwrap();
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[i; 40]);
        peer.send_to(&[i; 30], relay).unwrap();
        let n = udp.sock.recv(&mut buf).unwrap();
        assert_eq!(
            Message::parse(&buf[..n]).unwrap().get(AttrType::DATA).unwrap().value,
            &[i; 30]
        );
    }
    // New allocations are refused.
    let fresh = Udp::new(t.udp[0]);
    assert_eq!(
        fresh
            .ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate())
            .error,
        Some(508)
    );
    assert!(t.try_wait().is_none(), "still running while an allocation is open");
    // The last allocation ends: the process exits 0.
    assert_eq!(udp.ask(&mut alice, |c| c.refresh(0)).lifetime, Some(0));
    let status = wait_exit(&mut t, Duration::from_secs(3)).expect("did not exit after the last allocation ended");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_sigterm_exits_at_once_and_grace_is_bounded() {
    let mut t = Turnd::start(&turn_config("threads = 1\nshutdown_grace = \"60s\""));
    let udp = Udp::new(t.udp[0]);
    assert!(udp
        .ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate())
        .error
        .is_none());
    let _ = Command::new("kill").args(["-TERM", &t.pid().to_string()]).status();
    std::thread::sleep(Duration::from_millis(300));
    assert!(t.try_wait().is_none(), "draining, not gone");
    let _ = Command::new("kill").args(["-TERM", &t.pid().to_string()]).status();
    let status = wait_exit(&mut t, Duration::from_secs(2)).expect("a second SIGTERM must exit at once");
    assert!(status.success(), "{status:?}");
    // The log names what happened: the relay address as an address (no `Some(..)`, no empty
    // family), and an end by shutdown, which is not an admin's disconnect.
    let log: Vec<String> = std::iter::from_fn(|| t.log.recv_timeout(Duration::from_secs(2)).ok()).collect();
    let created = log
        .iter()
        .find(|l| l.contains("allocation created"))
        .expect("created line");
    assert!(
        created.contains("relay_v4=127.0.0.1:") && !created.contains("Some(") && !created.contains("relay_v6"),
        "{created}"
    );
    let ended = log.iter().find(|l| l.contains("allocation ended")).expect("ended line");
    assert!(ended.contains("reason=\"shutdown\""), "{ended}");

    let mut t = Turnd::start(&turn_config("threads = 1\nshutdown_grace = \"1s\""));
    let udp = Udp::new(t.udp[0]);
    assert!(udp
        .ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate())
        .error
        .is_none());
    let start = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &t.pid().to_string()]).status();
    let status = wait_exit(&mut t, Duration::from_secs(5)).expect("shutdown_grace must bound the drain");
    assert!(status.success());
    assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
}

#[test]
fn systemd_notify_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Turnd::start_with_env(
        &turn_config("threads = 2"),
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // READY means every listener is bound: the UDP listener answers.
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    u.send_to(&common::binding_request([1; 12]), t.udp[0]).unwrap();
    assert!(u.recv(&mut buf).is_ok());
    let _ = Command::new("kill").args(["-TERM", &t.pid().to_string()]).status();
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/turnd.service")).unwrap();
    for line in [
        "Type=notify",
        "User=turnd",
        "StateDirectory=turnd",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=1048576",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing from the unit");
    }
    // systemd's own checks, on a copy that points at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("turnd.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/turnd", common::BIN)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (bash .ci/deps)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25"])
        .arg(&copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let level: f64 = text
        .split("Overall exposure level for turnd.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(level <= 2.5, "exposure {level}");
}

/// Sends a request over TLS (again after a 401 or 438) and returns the answer's bytes.
fn tls_ask_bytes(s: &mut Tls, c: &mut TestClient, build: impl Fn(&mut TestClient) -> Vec<u8>) -> Vec<u8> {
    for _ in 0..3 {
        s.write_all(&build(c)).unwrap();
        let answer = read_frame(s);
        if !matches!(c.read(&answer).error, Some(401 | 438)) {
            return answer;
        }
    }
    panic!("still challenged")
}

#[test]
fn tcp_relays_work_over_tls_control_and_data_connections() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let t = Turnd::start_in(&tls_config(dir.path(), "threads = 2"), dir);
    let server = tls_addr(&t);
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let (mut control, _) = tls_connect(server);
    let mut c = TestClient::new("alice", "test.turnd", "wonderland");
    let answer = tls_ask_bytes(&mut control, &mut c, |c| {
        c.request(turnd::proto::Method::ALLOCATE, |w| {
            let _ = w.attr(turnd::proto::AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    });
    assert_eq!(c.read(&answer).error, None, "TCP Allocate over TLS");
    let answer = tls_ask_bytes(&mut control, &mut c, |c| c.create_permission(&[peer_addr]));
    assert_eq!(c.read(&answer).error, None);
    let answer = tls_ask_bytes(&mut control, &mut c, |c| {
        c.request(turnd::proto::Method::CONNECT, |w| {
            let _ = w.xor_address(turnd::proto::AttrType::XOR_PEER_ADDRESS, peer_addr);
        })
    });
    assert_eq!(c.read(&answer).error, None, "Connect over TLS");
    let m = turnd::proto::Message::parse(&answer).unwrap();
    let id = m.get(turnd::proto::AttrType::CONNECTION_ID).unwrap().value.to_vec();
    let (mut at_peer, _) = peer.accept().unwrap();
    at_peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut data, _) = tls_connect(server);
    let answer = tls_ask_bytes(&mut data, &mut c.clone(), |c| {
        c.request(turnd::proto::Method::CONNECTION_BIND, |w| {
            let _ = w.attr(turnd::proto::AttrType::CONNECTION_ID, &id);
        })
    });
    assert_eq!(c.read(&answer).error, None, "ConnectionBind over TLS");
    // Plaintext at the peer, TLS at the client, unchanged both ways.
    data.write_all(b"through TLS").unwrap();
    let mut got = [0u8; 11];
    at_peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"through TLS");
    at_peer.write_all(b"and back").unwrap();
    let mut back = [0u8; 8];
    data.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"and back");
}
