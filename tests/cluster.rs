//! The cluster on a real Redis: three turnd nodes on 127.0.0.2, 127.0.0.3 and 127.0.0.4
//! sharing one `redis-server`. Users added through one node allocate on another, quotas hold
//! across nodes, sessions, disconnect and usage span the cluster, draining or full nodes send
//! clients elsewhere (300), and Redis restarting, stopping or missing at start never stops a
//! node from serving.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::{free_port, Redis};
use common::{Turnd, BIN};
use turnd::server::testclient::{Response, TestClient};

const REALM: &str = "test.turnd";

struct Node {
    t: Turnd,
    name: String,
    /// UDP and TCP on this address; advertised to the others.
    addr: SocketAddr,
}

impl Node {
    /// A node on `ip` named `name`, `extra` going in at the top of its config and `relay`
    /// into its [relay] section.
    fn start(name: &str, ip: [u8; 4], redis: &str, extra: &str, relay: &str) -> Node {
        Self::start_with(name, ip, redis, extra, relay, "")
    }

    /// The same, with `cluster` in its [cluster] section too.
    fn start_with(name: &str, ip: [u8; 4], redis: &str, extra: &str, relay: &str, cluster: &str) -> Node {
        let port = free_port_on(ip);
        let addr = SocketAddr::from((ip, port));
        let config = format!(
            r#"realm = "{REALM}"
{extra}
[[listen]]
address = "{addr}"
protocols = ["udp", "tcp"]

[relay]
addresses = ["{ip}"]
{relay}

[auth]
secrets = ["rest-secret"]

[peers]
allow = ["127.0.0.0/8"]

[metrics]
listen = "{ip}:0"

[cluster]
redis = "{redis}"
node = "{name}"
advertise = ["{addr}"]
lease_ttl = "3s"
{cluster}
"#,
            ip = std::net::Ipv4Addr::from(ip)
        );
        Node {
            t: Turnd::start(&config),
            name: name.to_string(),
            addr,
        }
    }

    /// Runs `turnd ARGS` with this node's config; returns (exit code, stdout, stderr).
    fn cli(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(&self.t.config_path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn metrics(&self) -> String {
        let http = self.t.http.expect("metrics listener");
        let mut s = std::net::TcpStream::connect(http).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text
    }
}

/// A port free for UDP and TCP on `ip` right now.
fn free_port_on(ip: [u8; 4]) -> u16 {
    loop {
        let t = std::net::TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(SocketAddr::from((ip, port))).is_ok() {
            return port;
        }
    }
}

/// A TURN client on UDP with its own socket.
struct Client {
    s: UdpSocket,
    c: TestClient,
    server: SocketAddr,
}

impl Client {
    fn new(server: SocketAddr, user: &str, password: &str) -> Client {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Client {
            s,
            c: TestClient::new(user, REALM, password),
            server,
        }
    }

    fn exchange(&mut self, req: &[u8]) -> Response {
        self.s.send_to(req, self.server).unwrap();
        let mut buf = [0u8; 1500];
        match self.s.recv_from(&mut buf) {
            Ok((n, _)) => self.c.read(&buf[..n]),
            Err(_) => Response::default(),
        }
    }

    /// Allocate, answering the 401 challenge first if there is one.
    fn allocate(&mut self) -> Response {
        let req = self.c.allocate();
        let r = self.exchange(&req);
        if matches!(r.error, Some(401) | Some(438)) {
            let req = self.c.allocate();
            return self.exchange(&req);
        }
        r
    }

    fn release(&mut self) -> Response {
        let req = self.c.refresh(0);
        self.exchange(&req)
    }
}

/// Retries `f` every 100 ms until it returns Some or `within` passes.
fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn three(redis: &Redis, relay: &str) -> [Node; 3] {
    let url = redis.url();
    [
        Node::start("node-a", [127, 0, 0, 2], &url, "", relay),
        Node::start("node-b", [127, 0, 0, 3], &url, "", relay),
        Node::start("node-c", [127, 0, 0, 4], &url, "", relay),
    ]
}

fn add_user(node: &Node, name: &str, password: &str) {
    let (code, _, err) = node.cli(&["user", "add", name, "--password-stdin"], &format!("{password}\n"));
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("cluster"), "{err}");
}

#[test]
fn users_added_on_one_node_allocate_on_another_within_two_seconds_and_removed_ones_are_refused_everywhere() {
    let redis = Redis::start();
    let [a, b, c] = three(&redis, "");
    add_user(&a, "alice", "wonderland");
    let added = Instant::now();
    let r = eventually(Duration::from_secs(3), || {
        let r = Client::new(c.addr, "alice", "wonderland").allocate();
        (r.relayed.len() == 1).then_some(r)
    })
    .expect("alice never allocated on node C");
    assert!(added.elapsed() < Duration::from_secs(2), "took {:?}", added.elapsed());
    assert_eq!(r.relayed[0].ip(), c.addr.ip());
    // Keys only: Redis holds no password.
    let stored = redis.cli(&["HGETALL", "turnd:users"]);
    assert!(stored.contains("alice") && !stored.contains("wonderland"), "{stored}");
    // `turnd user list` through another node shows the cluster's user.
    let (_, listed, _) = b.cli(&["user", "list"], "");
    assert!(listed.contains("alice\ttest.turnd\tcluster"), "{listed}");

    let (code, _, err) = b.cli(&["user", "remove", "alice"], "");
    assert_eq!(code, 0, "{err}");
    let removed = Instant::now();
    for node in [&a, &b, &c] {
        eventually(Duration::from_secs(3), || {
            let r = Client::new(node.addr, "alice", "wonderland").allocate();
            (r.error == Some(401)).then_some(())
        })
        .unwrap_or_else(|| panic!("alice still allocates on {}", node.name));
    }
    assert!(
        removed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        removed.elapsed()
    );
}

#[test]
fn the_per_user_quota_holds_across_nodes_and_a_killed_node_releases_its_share_within_its_lease() {
    let redis = Redis::start();
    let [a, b, c] = three(&redis, "max_allocations_per_user = 2");
    add_user(&a, "bob", "builder");
    std::thread::sleep(Duration::from_millis(500));
    let mut on_a = Client::new(a.addr, "bob", "builder");
    let mut on_b = Client::new(b.addr, "bob", "builder");
    assert_eq!(on_a.allocate().relayed.len(), 1);
    assert_eq!(on_b.allocate().relayed.len(), 1);
    // Leases travel with the next heartbeats (one a second on each node).
    std::thread::sleep(Duration::from_millis(2500));
    let r = Client::new(c.addr, "bob", "builder").allocate();
    assert_eq!(r.error, Some(486), "node C let bob past his cluster-wide quota: {r:?}");

    // kill -9 node B: its lease expires (lease_ttl = 3s), and C counts only A's.
    let killed = Instant::now();
    drop(b);
    let mut on_c = Client::new(c.addr, "bob", "builder");
    eventually(Duration::from_secs(8), || {
        (on_c.allocate().relayed.len() == 1).then_some(())
    })
    .expect("node B's lease never expired");
    let released = killed.elapsed();
    // The lease TTL, plus one heartbeat of each node, plus this loop's step.
    assert!(released < Duration::from_secs(6), "released after {released:?}");
    let status = eventually(Duration::from_secs(3), || {
        let (_, out, _) = c.cli(&["cluster", "status"], "");
        out.lines()
            .any(|l| l.starts_with("node-b") && l.contains("dead"))
            .then_some(out)
    })
    .expect("cluster status never showed node-b dead");
    assert!(
        status.lines().any(|l| l.starts_with("node-a") && l.contains(" live ")),
        "{status}"
    );
    drop(on_a);
}

#[test]
fn sessions_and_disconnect_span_every_node() {
    let redis = Redis::start();
    let nodes = three(&redis, "");
    add_user(&nodes[0], "alice", "wonderland");
    std::thread::sleep(Duration::from_millis(500));
    let mut clients: Vec<Client> = nodes
        .iter()
        .map(|n| {
            let mut c = Client::new(n.addr, "alice", "wonderland");
            assert_eq!(c.allocate().relayed.len(), 1, "on {}", n.name);
            c
        })
        .collect();
    let (code, out, err) = nodes[1].cli(&["sessions"], "");
    assert_eq!(code, 0, "{err}");
    for n in &nodes {
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with(&n.name) && l.contains("alice"))
                .count(),
            1,
            "{out}"
        );
    }
    assert!(err.contains("3 allocation(s)"), "{err}");
    let (_, local, err) = nodes[1].cli(&["sessions", "--local"], "");
    assert!(err.contains("1 allocation(s)"), "{local}{err}");
    let (code, out, err) = nodes[2].cli(&["disconnect", "alice"], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ended 3 allocation(s) of \"alice\" on 3 node(s)"), "{out}");
    let (_, _, err) = nodes[0].cli(&["sessions"], "");
    assert!(err.contains("0 allocation(s)"), "{err}");
    // The allocations are gone, not just unlisted: a Refresh gets 437.
    for c in &mut clients {
        let r = c.release();
        assert_eq!(r.error, Some(437), "{r:?}");
    }
}

/// Relays `n` Send indications of `size` bytes to `peer`, and has the peer send `back`
/// packets of `back_size` to the relayed address; returns what the peer received.
fn traffic(
    c: &mut Client,
    relayed: SocketAddr,
    peer: &UdpSocket,
    n: usize,
    size: usize,
    back: usize,
    back_size: usize,
) -> usize {
    let peer_addr = peer.local_addr().unwrap();
    let req = c.c.create_permission(&[peer_addr]);
    assert_eq!(c.exchange(&req).class, Some(turnd::proto::Class::Success));
    for _ in 0..n {
        let m = c.c.send(peer_addr, &vec![7u8; size]);
        c.s.send_to(&m, c.server).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 2048];
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while got < n {
        match peer.recv_from(&mut buf) {
            Ok((len, _)) if len == size => got += 1,
            _ => break,
        }
    }
    for _ in 0..back {
        peer.send_to(&vec![9u8; back_size], relayed).unwrap();
    }
    // The Data indications arrive at the client.
    let mut seen = 0;
    while seen < back {
        match c.s.recv_from(&mut buf) {
            Ok(_) => seen += 1,
            Err(_) => break,
        }
    }
    assert_eq!(seen, back);
    got
}

#[test]
fn usage_adds_up_what_every_node_relayed_by_account() {
    let redis = Redis::start();
    let nodes = three(&redis, "");
    add_user(&nodes[0], "carol", "secret");
    std::thread::sleep(Duration::from_millis(500));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    // A TURN REST credential bills to its id, "dave".
    let rest_user = "4000000000:dave";
    let rest_password = turnd::auth::RestSecrets::password(b"rest-secret", rest_user);
    let started = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        for (user, password) in [("carol", "secret"), (rest_user, rest_password.as_str())] {
            let mut c = Client::new(n.addr, user, password);
            let r = c.allocate();
            assert_eq!(r.relayed.len(), 1, "{user} on {}: {r:?}", n.name);
            let got = traffic(&mut c, r.relayed[0], &peer, 10 + i, 100, 5, 50);
            assert_eq!(got, 10 + i);
            c.release();
        }
    }
    let held_at_most = started.elapsed().as_secs_f64();
    // Ended allocations are added within a second.
    let read = |account: &str| -> Option<serde_json::Value> {
        let (code, out, err) = nodes[1].cli(&["usage", "--user", account, "--format", "json"], "");
        assert_eq!(code, 0, "{err}");
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let sum = |k: &str| rows.iter().map(|r| r[k].as_f64().unwrap_or(0.0)).sum::<f64>();
        // 10 + 11 + 12 Send indications of 100 bytes, 3 x 5 Data of 50 bytes.
        (sum("to_peer_packets") == 33.0 && sum("to_client_packets") == 15.0).then(|| {
            serde_json::json!({
                "to_peer_bytes": sum("to_peer_bytes"),
                "to_client_bytes": sum("to_client_bytes"),
                "allocation_seconds": sum("allocation_seconds"),
                "accounts": rows.iter().map(|r| r["account"].clone()).collect::<Vec<_>>(),
            })
        })
    };
    for account in ["carol", "dave"] {
        let totals = eventually(Duration::from_secs(3), || read(account))
            .unwrap_or_else(|| panic!("usage of {account} never added up"));
        assert_eq!(totals["to_peer_bytes"], 3300.0, "{totals}");
        assert_eq!(totals["to_client_bytes"], 750.0, "{totals}");
        let secs = totals["allocation_seconds"].as_f64().unwrap();
        assert!(secs > 0.0 && secs <= held_at_most * 3.0, "{secs} of {held_at_most}");
        assert!(
            totals["accounts"].as_array().unwrap().iter().all(|a| a == account),
            "{totals}"
        );
    }
    let (_, csv, _) = nodes[0].cli(&["usage", "--format", "csv"], "");
    assert!(csv.starts_with("hour,account,to_peer_bytes"), "{csv}");
    assert!(csv.lines().any(|l| l.contains(",dave,")), "{csv}");
}

#[test]
fn a_draining_or_full_node_sends_new_allocations_to_a_live_node_that_can_serve() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Node::start(
        "node-a",
        [127, 0, 0, 2],
        &url,
        "shutdown_grace = \"30s\"",
        "max_allocations = 1",
    );
    let b = Node::start("node-b", [127, 0, 0, 3], &url, "", "max_allocations = 1");
    add_user(&a, "alice", "wonderland");
    std::thread::sleep(Duration::from_millis(500));
    let mut first = Client::new(a.addr, "alice", "wonderland");
    assert_eq!(first.allocate().relayed.len(), 1);
    // Full: the next Allocate is sent to B, signed, with B's advertised address.
    let r = eventually(Duration::from_secs(3), || {
        let r = Client::new(a.addr, "alice", "wonderland").allocate();
        (r.error == Some(300)).then_some(r)
    })
    .expect("node A never redirected");
    assert_eq!(r.alternate, Some(b.addr), "{r:?}");
    assert!(r.integrity, "the 300 is signed: {r:?}");
    assert_eq!(r.alternate_domain, None, "no ALTERNATE-DOMAIN over UDP");
    // B can serve: the redirected client is served there, not sent on.
    let mut second = Client::new(b.addr, "alice", "wonderland");
    assert_eq!(second.allocate().relayed.len(), 1);
    // Both full: nobody to send to, so no redirect (no loop), the quota's 486.
    std::thread::sleep(Duration::from_millis(2500));
    for n in [&a, &b] {
        let r = Client::new(n.addr, "alice", "wonderland").allocate();
        assert_eq!((r.error, r.alternate), (Some(486), None), "{}: {r:?}", n.name);
    }
    // B frees its slot; A, full, sends to B again.
    second.release();
    std::thread::sleep(Duration::from_millis(2500));
    let r = Client::new(a.addr, "alice", "wonderland").allocate();
    assert_eq!((r.error, r.alternate), (Some(300), Some(b.addr)), "{r:?}");
    // A draining node (SIGTERM, with an allocation left) sends to B too.
    first.release();
    let mut keep = Client::new(a.addr, "alice", "wonderland");
    assert_eq!(keep.allocate().relayed.len(), 1);
    let _ = Command::new("kill").args(["-TERM", &a.t.pid().to_string()]).status();
    std::thread::sleep(Duration::from_millis(300));
    let r = Client::new(a.addr, "alice", "wonderland").allocate();
    assert_eq!((r.error, r.alternate), (Some(300), Some(b.addr)), "{r:?}");
    // B sees A draining in the cluster's status and metrics.
    let seen = eventually(Duration::from_secs(3), || {
        let m = b.metrics();
        m.contains("turnd_cluster_nodes{state=\"draining\"} 1").then_some(m)
    });
    assert!(seen.is_some(), "{}", b.metrics());
    let (_, status, _) = b.cli(&["cluster", "status"], "");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("node-a") && l.contains("draining")),
        "{status}"
    );
    // Dead nodes are never a target: with B gone, A refuses with 508 (draining) instead.
    drop(b);
    std::thread::sleep(Duration::from_millis(4500));
    let r = Client::new(a.addr, "alice", "wonderland").allocate();
    assert_eq!((r.error, r.alternate), (Some(508), None), "{r:?}");
}

/// Sends a ChannelData packet every 5 ms for `run` through `c`'s channel to `peer`, and
/// returns (sent, received at the peer).
fn steady_stream(c: &mut Client, peer: &UdpSocket, run: Duration, during: impl FnOnce() + Send) -> (usize, usize) {
    let peer_addr = peer.local_addr().unwrap();
    let req = c.c.channel_bind(0x4000, peer_addr);
    assert_eq!(c.exchange(&req).class, Some(turnd::proto::Class::Success));
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let receiver = peer.try_clone().unwrap();
    let counted = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut n = 0;
        while receiver.recv_from(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let (sock, server) = (c.s.try_clone().unwrap(), c.server);
    let sender = std::thread::spawn(move || {
        let end = Instant::now() + run;
        let mut sent = 0;
        // Bounded in count and in time.
        while Instant::now() < end && sent < 10_000 {
            sock.send_to(&TestClient::channel_data(0x4000, b"steady", false), server)
                .unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    during();
    let sent = sender.join().unwrap();
    (sent, counted.join().unwrap())
}

#[test]
fn relaying_and_stun_go_on_while_redis_restarts_or_stops_and_nodes_catch_up_after() {
    let mut redis = Redis::start();
    let url = redis.url();
    let a = Node::start("node-a", [127, 0, 0, 2], &url, "", "");
    let b = Node::start("node-b", [127, 0, 0, 3], &url, "", "");
    add_user(&a, "alice", "wonderland");
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Client::new(a.addr, "alice", "wonderland");
    assert_eq!(c.allocate().relayed.len(), 1);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();

    // Redis restarts under relay traffic: not a packet lost.
    let (sent, received) = steady_stream(&mut c, &peer, Duration::from_secs(3), || {
        std::thread::sleep(Duration::from_millis(800));
        redis.restart();
    });
    assert!(sent > 100, "{sent}");
    assert_eq!(received, sent, "packets lost while Redis restarted");
    // Every node converges: a user added now allocates on B, and both heartbeats are back.
    add_user(&a, "erin", "restarted");
    eventually(Duration::from_secs(4), || {
        (Client::new(b.addr, "erin", "restarted").allocate().relayed.len() == 1).then_some(())
    })
    .expect("node B never caught up after the restart");
    let status = eventually(Duration::from_secs(3), || {
        let (_, out, _) = b.cli(&["cluster", "status"], "");
        (out.matches(" live ").count() == 2).then_some(out)
    });
    assert!(status.is_some(), "nodes did not both come back");

    // Redis stopped (SIGSTOP) for 5 s: relaying, STUN and allocations for known users go on.
    redis.pause();
    let paused = Instant::now();
    let (sent, received) = steady_stream(&mut c, &peer, Duration::from_secs(2), || {
        let stun = common::client_for(a.addr);
        stun.send_to(&common::binding_request([5; 12]), a.addr).unwrap();
        let mut buf = [0u8; 128];
        assert!(
            stun.recv_from(&mut buf).is_ok(),
            "no STUN answer while Redis is stopped"
        );
        let started = Instant::now();
        let r = Client::new(b.addr, "alice", "wonderland").allocate();
        assert_eq!(r.relayed.len(), 1, "{r:?}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "an Allocate waited on Redis"
        );
    });
    assert_eq!(received, sent, "packets lost while Redis was stopped");
    std::thread::sleep(Duration::from_secs(5).saturating_sub(paused.elapsed()));
    redis.resume();
    // They catch up: a user added after the pause allocates on both.
    add_user(&b, "frank", "after");
    for n in [&a, &b] {
        eventually(Duration::from_secs(4), || {
            (Client::new(n.addr, "frank", "after").allocate().relayed.len() == 1).then_some(())
        })
        .unwrap_or_else(|| panic!("{} never caught up after SIGSTOP", n.name));
    }
    let log: Vec<String> = a.t.log.try_iter().collect();
    assert!(
        log.iter().any(|l| l.contains("Redis answers again")),
        "no recovery line: {log:#?}"
    );
}

#[test]
fn a_node_starts_and_serves_without_redis_then_joins_when_redis_appears() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let a = Node::start("node-a", [127, 0, 0, 2], &url, "", "");
    // Serving STUN at once.
    let stun = common::client_for(a.addr);
    stun.send_to(&common::binding_request([6; 12]), a.addr).unwrap();
    let mut buf = [0u8; 128];
    assert!(stun.recv_from(&mut buf).is_ok());
    // One clear line, not one per retry.
    std::thread::sleep(Duration::from_millis(2500));
    let log: Vec<String> = a.t.log.try_iter().collect();
    let errors: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("ERROR") && l.contains("cluster"))
        .collect();
    assert_eq!(errors.len(), 1, "{log:#?}");
    assert!(
        errors[0].contains(&format!("127.0.0.1:{port}")) && errors[0].contains("retrying"),
        "{}",
        errors[0]
    );
    // The CLI says what is wrong, and fails.
    let (code, _, err) = a.cli(&["user", "add", "gina", "--password-stdin"], "pw\n");
    assert_eq!(code, 1);
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");

    let redis = redis_on(port);
    add_user(&a, "gina", "late");
    eventually(Duration::from_secs(4), || {
        (Client::new(a.addr, "gina", "late").allocate().relayed.len() == 1).then_some(())
    })
    .expect("the node never joined once Redis was up");
    drop(redis);
}

/// A Redis on a given port (the tests above pick theirs).
fn redis_on(port: u16) -> Redis {
    // Redis::start picks a free port; bind this one instead through a restart of the same
    // kind of server.
    let mut r = Redis::start();
    r.move_to(port);
    r
}

#[test]
fn redis_with_a_password_and_over_tls() {
    let redis = Redis::with_password("s3cret pass");
    let a = Node::start("node-a", [127, 0, 0, 2], &redis.url(), "", "");
    add_user(&a, "hana", "pw");
    eventually(Duration::from_secs(3), || {
        (Client::new(a.addr, "hana", "pw").allocate().relayed.len() == 1).then_some(())
    })
    .expect("no allocation with a password-protected Redis");
    // The password never shows: not in check-config, not in the log.
    let (_, shown, _) = a.cli(&["check-config"], "");
    assert!(
        shown.contains("redis://:<redacted>@127.0.0.1") && !shown.contains("s3cret"),
        "{shown}"
    );
    let log: Vec<String> = a.t.log.try_iter().collect();
    assert!(log.iter().all(|l| !l.contains("s3cret")), "{log:#?}");
    // A wrong password is an error that says so.
    let wrong = redis.url().replace("s3cret pass", "wrong");
    let cfg = std::fs::read_to_string(&a.t.config_path)
        .unwrap()
        .replace(&redis.url(), &wrong);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrong.toml");
    std::fs::write(&path, cfg).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .args(["cluster", "status"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("Password authentication failed"), "{err}");

    let tls = Redis::with_tls();
    let ca = tls.ca.clone().unwrap();
    let b = Node::start_with(
        "node-b",
        [127, 0, 0, 3],
        &tls.url(),
        "",
        "",
        &format!("tls_ca = \"{}\"", ca.display()),
    );
    assert!(tls.url().starts_with("rediss://"));
    add_user(&b, "ivan", "tls");
    eventually(Duration::from_secs(3), || {
        (Client::new(b.addr, "ivan", "tls").allocate().relayed.len() == 1).then_some(())
    })
    .expect("no allocation with Redis over TLS");
    let (_, status, _) = b.cli(&["cluster", "status"], "");
    assert!(
        status.lines().any(|l| l.starts_with("node-b") && l.contains(" live ")),
        "{status}"
    );
}

#[test]
fn chromium_sent_from_a_full_node_relays_through_the_alternate() {
    // Chromium refuses redirects to loopback addresses (crbug.com/649118), so this cluster
    // lives in a namespace of its own, on 198.18.0.2 and 198.18.0.3, with Redis on the
    // namespace's loopback.
    let mut lab = common::lab::Lab::new();
    let ns = lab.netns("cluster");
    ns.sh("ip link add d0 type veth peer name d1 && ip addr add 198.18.0.2/24 dev d0 && ip addr add 198.18.0.3/24 dev d0 && ip link set d0 up && ip link set d1 up");
    let redis = Redis::start_in_netns(&ns.name);
    let node = |name: &str, ip: &str, relay: &str| -> Turnd {
        Turnd::start_in_netns(
            &ns.name,
            &format!(
                r#"realm = "{REALM}"
[[listen]]
address = "{ip}:3478"
protocols = ["udp"]
[relay]
addresses = ["{ip}"]
{relay}
[peers]
allow = ["198.18.0.0/15"]
[cluster]
redis = "{}"
node = "{name}"
advertise = ["{ip}:3478"]
"#,
                redis.url()
            ),
        )
    };
    let a = node("node-a", "198.18.0.2", "max_allocations = 1");
    let b = node("node-b", "198.18.0.3", "");
    let out = ns
        .cmd(BIN)
        .arg("--config")
        .arg(&a.config_path)
        .args(["user", "add", "alice", "--password-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"wonderland\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
    // Fill A from inside the namespace, and let the heartbeats tell each node the other's load.
    let a_addr: SocketAddr = "198.18.0.2:3478".parse().unwrap();
    let filled = ns.enter(|| {
        let mut c = Client::new(a_addr, "alice", "wonderland");
        c.s = UdpSocket::bind("198.18.0.2:0").unwrap();
        c.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.allocate().relayed.len()
    });
    assert_eq!(filled, 1);
    std::thread::sleep(Duration::from_millis(2500));
    let ice = serde_json::json!({
        "urls": format!("turn:{a_addr}?transport=udp"),
        "username": "alice",
        "credential": "wonderland",
    });
    let r = common::browser::chromium_in(Some(&ns.name), ice, 5);
    let logs = || -> String {
        [("node-a", &a), ("node-b", &b)]
            .iter()
            .map(|(n, t)| format!("{n}:\n{}\n", t.log.try_iter().collect::<Vec<_>>().join("\n")))
            .collect()
    };
    assert_eq!(r["ok"], true, "{r}\n{}", logs());
    assert_eq!(r["pair"]["localType"], "relay", "{r}");
    // The relay candidate Chromium used is B's: it followed ALTERNATE-SERVER.
    assert_eq!(r["pair"]["address"], "198.18.0.3", "{r}");
    for c in r["relayCandidates"]["a"].as_array().unwrap() {
        assert!(c.as_str().unwrap().contains(" 198.18.0.3 "), "{r}");
    }
    drop((a, b, redis));
}

#[test]
fn coturn_uclient_follows_a_300_to_the_alternate() {
    // coturn's turnutils_uclient (4.6.1) sends a first "probe" Allocate; on a 300 it takes
    // ALTERNATE-SERVER as its server for the rest of the run. Its channel numbers need
    // legacy_channel_numbers.
    let redis = Redis::start();
    let url = redis.url();
    let legacy = "legacy_channel_numbers = true";
    let a = Node::start(
        "node-a",
        [127, 0, 0, 2],
        &url,
        "",
        &format!("{legacy}\nmax_allocations = 1"),
    );
    let b = Node::start("node-b", [127, 0, 0, 3], &url, "", legacy);
    add_user(&a, "alice", "wonderland");
    std::thread::sleep(Duration::from_millis(500));
    let mut filler = Client::new(a.addr, "alice", "wonderland");
    assert_eq!(filler.allocate().relayed.len(), 1);
    std::thread::sleep(Duration::from_millis(2500));
    let port = a.addr.port().to_string();
    let totals = common::uclient::run(&[
        "-y",
        "-c",
        "-n",
        "10",
        "-m",
        "1",
        "-l",
        "100",
        "-u",
        "alice",
        "-w",
        "wonderland",
        "-p",
        &port,
        "127.0.0.2",
    ]);
    assert!(totals.text.contains("error 300 (Try Alternate)"), "{}", totals.text);
    assert_eq!(
        (totals.sent, totals.received, totals.lost),
        (20, 20, 0),
        "{}",
        totals.text
    );
    // Its allocations are on B; A holds only the filler.
    let created = |n: &Node| n.t.log.try_iter().filter(|l| l.contains("allocation created")).count();
    assert_eq!(created(&a), 1);
    assert!(created(&b) >= 2, "the client's allocations were not made on B");
    drop(filler);
}

#[test]
fn a_crashed_node_loses_at_most_the_last_ten_seconds_of_usage() {
    let redis = Redis::start();
    let url = redis.url();
    let a = Node::start("node-a", [127, 0, 0, 2], &url, "", "");
    add_user(&a, "kim", "pw");
    std::thread::sleep(Duration::from_millis(500));
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = Client::new(a.addr, "kim", "pw");
    let r = c.allocate();
    assert_eq!(r.relayed.len(), 1);
    assert_eq!(traffic(&mut c, r.relayed[0], &peer, 20, 100, 0, 0), 20);
    // Open allocations are added at least every 10 s.
    std::thread::sleep(Duration::from_millis(10_500));
    // Then more, and kill -9 before the next addition.
    assert_eq!(traffic(&mut c, r.relayed[0], &peer, 7, 100, 0, 0), 7);
    let b = Node::start("node-b", [127, 0, 0, 3], &url, "", "");
    drop(a);
    std::thread::sleep(Duration::from_millis(1500));
    let (code, out, err) = b.cli(&["usage", "--user", "kim", "--format", "json"], "");
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let packets: f64 = rows.iter().map(|r| r["to_peer_packets"].as_f64().unwrap()).sum();
    let secs: f64 = rows.iter().map(|r| r["allocation_seconds"].as_f64().unwrap()).sum();
    // Everything up to the last addition is there; what came after it is the loss.
    assert_eq!(packets, 20.0, "{out}");
    assert!((7.0..=11.0).contains(&secs), "{secs} allocation-seconds: {out}");
}
