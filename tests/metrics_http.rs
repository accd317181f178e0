//! The metrics endpoint of the real binary: counters are live and exact, gauges rise and
//! fall, the exposition passes `promtool check metrics`, and hostile HTTP input gets the
//! right status without taking the endpoint down.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{turn_config, Turnd};
use turnd::server::testclient::TestClient;

fn start() -> Turnd {
    let cfg = turn_config("threads = 2\n[metrics]\nlisten = \"127.0.0.1:0\"");
    let t = Turnd::start(&cfg);
    assert!(t.http.is_some(), "metrics listener logged");
    t
}

/// Sends raw bytes, returns (status, body) of the answer.
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn scrape(t: &Turnd) -> String {
    let (status, body) = http(t.http.unwrap(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    body
}

/// The value of the sample whose line starts with `series ` (name plus labels).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
}

struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    c: TestClient,
}

impl Client {
    fn new(server: SocketAddr, user: &str, password: &str) -> Client {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Client {
            sock,
            server,
            c: TestClient::new(user, "test.turnd", password),
        }
    }

    fn ask(&mut self, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> turnd::server::testclient::Response {
        for attempt in 0..2 {
            self.sock.send_to(&build(&mut self.c), self.server).unwrap();
            let mut buf = [0u8; 2048];
            let n = self.sock.recv(&mut buf).unwrap();
            let r = self.c.read(&buf[..n]);
            if !(attempt == 0 && r.error == Some(401)) {
                return r;
            }
        }
        unreachable!()
    }
}

#[test]
fn relay_counters_move_by_exactly_n_while_the_allocation_is_open() {
    let t = start();
    let before = scrape(&t);
    let mut alice = Client::new(t.udp[0], "alice", "wonderland");
    let r = alice.ask(|c| c.allocate());
    let relay = r.relayed[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(alice.ask(|c| c.create_permission(&[peer_addr])).error.is_none());
    let after_alloc = scrape(&t);
    assert_eq!(value(&after_alloc, "turnd_allocations_active{transport=\"udp\"}"), 1.0);
    assert_eq!(value(&after_alloc, "turnd_permissions_active"), 1.0);

    const N: usize = 25;
    let mut buf = [0u8; 2048];
    for i in 0..N {
        alice
            .sock
            .send_to(&alice.c.send(peer_addr, &[i as u8; 50]), alice.server)
            .unwrap();
        let (n, _) = peer.recv_from(&mut buf).unwrap();
        assert_eq!(n, 50);
        peer.send_to(&[i as u8; 70], relay).unwrap();
        alice.sock.recv(&mut buf).unwrap();
    }
    let during = scrape(&t);
    let moved = |text: &str, series: &str| value(text, series) - value(&before, series);
    assert_eq!(
        moved(&during, "turnd_relay_packets_total{direction=\"client_to_peer\"}"),
        N as f64
    );
    assert_eq!(
        moved(&during, "turnd_relay_packets_total{direction=\"peer_to_client\"}"),
        N as f64
    );
    assert_eq!(
        moved(&during, "turnd_relay_bytes_total{direction=\"client_to_peer\"}"),
        (N * 50) as f64
    );
    assert_eq!(
        moved(&during, "turnd_relay_bytes_total{direction=\"peer_to_client\"}"),
        (N * 70) as f64
    );
    assert_eq!(value(&during, "turnd_allocation_duration_seconds_count"), 0.0);

    // Ending the allocation: the gauge falls and the histogram gets its sample.
    assert_eq!(alice.ask(|c| c.refresh(0)).lifetime, Some(0));
    let after = scrape(&t);
    assert_eq!(value(&after, "turnd_allocations_active{transport=\"udp\"}"), 0.0);
    assert_eq!(value(&after, "turnd_permissions_active"), 0.0);
    assert_eq!(value(&after, "turnd_allocation_duration_seconds_count"), 1.0);
    assert_eq!(value(&after, "turnd_allocations_total{transport=\"udp\"}"), 1.0);
    assert_eq!(
        value(
            &after,
            "turnd_turn_requests_total{method=\"refresh\",result=\"success\"}"
        ),
        1.0
    );
}

#[test]
fn auth_failures_are_counted_by_reason_and_process_metrics_are_there() {
    let t = start();
    let r = Client::new(t.udp[0], "alice", "wrong").ask(|c| c.allocate());
    assert_eq!(r.error, Some(401));
    let r = Client::new(t.udp[0], "mallory", "x").ask(|c| c.allocate());
    assert_eq!(r.error, Some(401));
    let m = scrape(&t);
    assert_eq!(value(&m, "turnd_auth_failures_total{reason=\"bad_integrity\"}"), 1.0);
    assert_eq!(value(&m, "turnd_auth_failures_total{reason=\"unknown_user\"}"), 1.0);
    assert_eq!(value(&m, "turnd_auth_failures_total{reason=\"stale_nonce\"}"), 0.0);
    assert!(value(&m, "process_resident_memory_bytes") > 1e6);
    assert!(value(&m, "process_open_fds") >= 5.0);
    assert!(value(&m, "process_start_time_seconds") > 1.7e9);
    assert!(
        m.contains(&format!(
            "turnd_build_info{{version=\"{}\",revision=",
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    for name in [
        "turnd_stun_binding_requests_total",
        "turnd_turn_requests_total",
        "turnd_auth_failures_total",
        "turnd_allocations_active",
        "turnd_allocations_total",
        "turnd_permissions_active",
        "turnd_channels_active",
        "turnd_relay_packets_total",
        "turnd_relay_bytes_total",
        "turnd_dropped_packets_total",
        "turnd_allocation_duration_seconds_bucket",
        "process_cpu_seconds_total",
    ] {
        assert!(m.contains(name), "{name} missing");
    }
}

#[test]
fn promtool_accepts_the_exposition() {
    let t = start();
    // Some traffic first, so that every family has samples.
    let _ = Client::new(t.udp[0], "alice", "wonderland").ask(|c| c.allocate());
    let text = scrape(&t);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool missing: install Debian's prometheus package (bash .ci/deps)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(
        !text.contains("# EOF"),
        "classic text format unless OpenMetrics is asked for"
    );
    let (status, om) = http(
        t.http.unwrap(),
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert!(om.ends_with("# EOF\n"), "OpenMetrics when asked for");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hostile_http_gets_the_right_status_and_the_endpoint_stays_up() {
    let t = start();
    let addr = t.http.unwrap();
    assert_eq!(http(addr, b"GET /healthz HTTP/1.1\r\n\r\n"), (200, "ok\n".into()));
    assert_eq!(
        http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
        405
    );
    assert_eq!(http(addr, b"DELETE /healthz HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http(addr, b"GET /nope HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(
        http(addr, b"GET /metrics HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789").0,
        413
    );
    // Oversized head, and a flood of small headers.
    let big = format!("GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(http(addr, big.as_bytes()).0, 431);
    let flood = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(500));
    assert_eq!(http(addr, flood.as_bytes()).0, 431);
    // Garbage.
    assert_eq!(
        http(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n").0,
        400
    );
    let (status, _) = http(addr, &[0xffu8; 3000]);
    assert!(status == 400 || status == 0, "{status}");
    // A slowloris: a byte every half second never completes a head; the server gives up.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let start = Instant::now();
    let mut closed_after = None;
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle().take(40) {
        let mut sink = [0u8; 256];
        match slow.read(&mut sink) {
            Ok(0) | Ok(_) => {
                closed_after = Some(start.elapsed());
                break;
            }
            Err(_) => {}
        }
        if slow.write_all(&[*b]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let closed_after = closed_after.expect("slowloris connection never closed");
    assert!(closed_after < Duration::from_secs(8), "{closed_after:?}");
    // Still serving.
    assert_eq!(http(addr, b"GET /healthz HTTP/1.0\r\n\r\n"), (200, "ok\n".into()));
    assert!(scrape(&t).contains("turnd_build_info"));
}

#[test]
fn grafana_dashboard_queries_parse_and_name_real_metrics() {
    let t = start();
    let _ = Client::new(t.udp[0], "alice", "wonderland").ask(|c| c.allocate());
    let exposition = scrape(&t);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10);
    // Every metric a query names is one turnd exports.
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("turnd_") || word.starts_with("process_") {
                assert!(
                    exposition.contains(word),
                    "dashboard names {word}, which turnd does not export"
                );
            }
        }
    }
    // Every query is valid PromQL: promtool checks them as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let mut yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        yaml.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    std::fs::write(&rules, yaml).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool missing");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
