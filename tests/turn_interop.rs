//! TURN interop with clients nobody here wrote, over real loopback sockets: the webrtc-rs
//! `turn` client (in process, so the test can read turnd's counters) and coturn's
//! `turnutils_uclient` with `turnutils_peer` (against the real binary).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{turn_config, uclient, InProcess, Turnd};
use turnd::metrics::{Direction, Framing, TurnMethod};
use turnd::server::Transport;
use webrtc_util::Conn;

async fn echo_peer(v6: bool) -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })
        .await
        .unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn round_trip(relay: &impl Conn, peer: SocketAddr, payload: &[u8]) {
    relay.send_to(payload, peer).await.unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf))
        .await
        .expect("echo did not come back through the relay")
        .unwrap();
    assert_eq!(from, peer);
    assert_eq!(&buf[..n], payload);
}

async fn webrtc_client(server: SocketAddr, v6: bool) -> turn::client::Client {
    let conn = tokio::net::UdpSocket::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })
        .await
        .unwrap();
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: "alice".into(),
        password: "wonderland".into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    };
    let client = turn::client::Client::new(cfg).await.unwrap();
    client.listen().await.unwrap();
    client
}

/// `v6` picks the client's transport to turnd. The relay is IPv4 either way: without
/// REQUESTED-ADDRESS-FAMILY, RFC 8656 §7.2 allocates IPv4.
async fn webrtc_send_then_channel(v6: bool) {
    let turnd = InProcess::start(&turn_config("threads = 1"));
    let m = turnd.metrics.clone();
    let peer = echo_peer(false).await;
    let client = webrtc_client(turnd.addr(Transport::Udp, v6), v6).await;
    let relay = client.allocate().await.expect("allocate");
    let relayed = relay.local_addr().unwrap();
    assert!(relayed.is_ipv4() && relayed.ip().is_loopback(), "{relayed}");
    assert_eq!(m.level(|s| &s.allocations_active[Transport::Udp as usize]), 1);

    // The first packet goes out as a Send indication while the client binds a channel.
    round_trip(&relay, peer, b"first, by Send indication").await;
    assert!(m.total(|s| &s.framing[Framing::send_indication as usize]) >= 1);

    // Once the client has its channel, it switches to ChannelData.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "the client never switched to ChannelData");
        let sends = m.total(|s| &s.framing[Framing::send_indication as usize]);
        round_trip(&relay, peer, b"warming up").await;
        if m.total(|s| &s.framing[Framing::send_indication as usize]) == sends {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(m.total(|s| &s.turn_requests[TurnMethod::channel_bind as usize][0]), 1);
    let before = m.total(|s| &s.framing[Framing::channel_data as usize]);
    let sends_before = m.total(|s| &s.framing[Framing::send_indication as usize]);
    for i in 0..20u8 {
        round_trip(&relay, peer, &[i; 100]).await;
    }
    let sent = m.total(|s| &s.framing[Framing::channel_data as usize]) - before;
    assert_eq!(sent, 40, "20 each way as ChannelData");
    assert_eq!(m.total(|s| &s.framing[Framing::send_indication as usize]), sends_before);
    assert!(m.total(|s| &s.relay_packets[Direction::client_to_peer as usize]) >= 21);
    assert!(m.total(|s| &s.relay_packets[Direction::peer_to_client as usize]) >= 21);
    relay.close().await.unwrap();
    client.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_over_udp_ipv4() {
    webrtc_send_then_channel(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_over_udp_ipv6() {
    webrtc_send_then_channel(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_turn_client_with_a_wrong_password_gets_no_allocation() {
    let turnd = InProcess::start(&turn_config("threads = 1"));
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = turnd.addr(Transport::Udp, false).to_string();
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: server.clone(),
        turn_serv_addr: server,
        username: "alice".into(),
        password: "not-the-password".into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    };
    let client = turn::client::Client::new(cfg).await.unwrap();
    client.listen().await.unwrap();
    assert!(client.allocate().await.is_err());
    assert_eq!(
        turnd.metrics.level(|s| &s.allocations_active[Transport::Udp as usize]),
        0
    );
    assert_eq!(
        turnd
            .metrics
            .total(|s| &s.auth_failures[turnd::metrics::AuthFailure::bad_integrity as usize]),
        1
    );
    client.close().await.unwrap();
}

struct Peer(std::process::Child, u16);

impl Peer {
    fn start() -> Peer {
        // turnutils_peer echoes on the port it is given; pick a free one.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("turnutils_peer")
            .args(["-L", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("turnutils_peer missing: install Debian's coturn package (bash .ci/deps)");
        std::thread::sleep(Duration::from_millis(200));
        Peer(child, port)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// coturn's client picks channel numbers from RFC 5766's wider range, so these runs turn on
/// `relay.legacy_channel_numbers`. With no other flag it asks for RTP/RTCP port pairs.
fn coturn_run(flags: &[&str], rest: bool) {
    coturn_run_sharded(flags, rest, 2);
}

fn coturn_run_sharded(flags: &[&str], rest: bool, threads: u32) -> (u64, u64) {
    let t = Turnd::start(
        &turn_config(&format!("threads = {threads}")).replace("[relay]\n", "[relay]\nlegacy_channel_numbers = true\n"),
    );
    let peer = Peer::start();
    let tcp = flags.contains(&"-t");
    let server = if tcp { t.tcp[0] } else { t.udp[0] };
    let port = server.port().to_string();
    let peer_port = peer.1.to_string();
    let (messages, clients, size) = (40u64, 3u64, 120u64);
    let mut args: Vec<&str> = flags.to_vec();
    let n = messages.to_string();
    let m = clients.to_string();
    let l = size.to_string();
    // No -c: the client asks for RTP/RTCP port pairs (EVEN-PORT with R, then the token).
    args.extend([
        "-e",
        "127.0.0.1",
        "-r",
        &peer_port,
        "-p",
        &port,
        "-n",
        &n,
        "-m",
        &m,
        "-l",
        &l,
    ]);
    if rest {
        args.extend(["-W", "rest-secret"]);
    } else {
        args.extend(["-u", "alice", "-w", "wonderland"]);
    }
    args.push("127.0.0.1");
    let totals = uclient::run(&args);
    // RTP and RTCP sessions: more than one per client.
    let sessions = totals.sessions;
    assert!(sessions > clients, "{flags:?}: {sessions} sessions");
    assert_eq!(totals.sent, messages * sessions, "{flags:?}");
    assert_eq!(totals.received, messages * sessions, "{flags:?}");
    assert_eq!(totals.sent_bytes, messages * sessions * size, "{flags:?}");
    assert_eq!(totals.received_bytes, messages * sessions * size, "{flags:?}");
    assert_eq!(totals.lost, 0, "{flags:?}");
    // Each RTCP allocation got the odd port its RTP allocation reserved.
    let ports: Vec<u16> = t
        .log
        .try_iter()
        .filter(|l| l.contains("allocation created"))
        .filter_map(|l| {
            l.split("relay_v4=127.0.0.1:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let pairs = ports
        .iter()
        .filter(|&&p| p % 2 == 0 && ports.contains(&(p + 1)))
        .count();
    assert!(pairs >= 1, "{flags:?}: no RTP/RTCP pair among {ports:?}");
    (totals.received, totals.received_bytes)
}

#[test]
fn one_shard_and_two_shards_behave_the_same() {
    // Three clients on one address: with two shards, SO_REUSEPORT spreads them.
    let one = coturn_run_sharded(&[], false, 1);
    let two = coturn_run_sharded(&[], false, 2);
    assert_eq!(one, two);
    let one = coturn_run_sharded(&["-t", "-s"], false, 1);
    let two = coturn_run_sharded(&["-t", "-s"], false, 2);
    assert_eq!(one, two);
}

#[test]
fn coturn_uclient_udp_channels() {
    coturn_run(&[], false);
}

#[test]
fn coturn_uclient_tcp_channels() {
    coturn_run(&["-t"], false);
}

#[test]
fn coturn_uclient_send_indications() {
    coturn_run(&["-s"], false);
}

#[test]
fn coturn_uclient_tcp_send_indications() {
    coturn_run(&["-t", "-s"], false);
}

#[test]
fn coturn_uclient_rest_credentials() {
    coturn_run(&[], true);
}

/// What coturn's tutorial command meets without the settings it needs: each refusal's log
/// line says what to change.
#[test]
fn coturn_uclient_refusals_name_what_to_change() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let peer = Peer::start();
    let port = t.udp[0].port().to_string();
    let peer_port = peer.1.to_string();
    let run = || {
        let mut args = vec!["-e", "127.0.0.1", "-r", &peer_port, "-p", &port, "-n", "2", "-m", "1"];
        args.extend(["-u", "alice", "-w", "wonderland", "127.0.0.1"]);
        let _ = Command::new("timeout")
            .arg("20")
            .arg("turnutils_uclient")
            .args(&args)
            .output()
            .expect("turnutils_uclient missing: install Debian's coturn package (bash .ci/deps)");
    };
    let wait_for = |needle: &str, within: Duration| {
        let deadline = std::time::Instant::now() + within;
        while let Ok(line) = t
            .log
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    };
    // coturn's clients before 4.16 pick channel numbers at random in 0x4000..=0x7FFF, so a
    // quarter of their picks fall inside RFC 8656's range and succeed. Each run has at least
    // a 3 in 4 chance of a refusal; ten runs without one would mean turnd accepted them.
    let line = (0..10)
        .find_map(|_| {
            run();
            wait_for("channel number out of range", Duration::from_secs(3))
        })
        .expect("ten runs of coturn's client and no log line with \"channel number out of range\"");
    assert!(line.contains("(setting: relay.legacy_channel_numbers)"), "{line}");
}
