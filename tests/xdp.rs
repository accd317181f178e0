//! The XDP fast path (issue 20) on a real link: a "load" namespace (clients and peers) and a
//! "srv" namespace (turnd) joined by a veth pair, with the program attached in native mode to
//! the server's end. Addresses come from the benchmarking ranges only: 198.18.0.0/15 and, for
//! IPv6, 2001:2::/48. Needs root, clang (the pass program of the load side), bpftool (the
//! program's own counters and maps) and ethtool, which `.ci/deps` installs.
//!
//! The load side's veth sends full UDP checksums (`tx off`), as a NIC on a wire does, and
//! carries an XDP_PASS program, without which a veth drops what XDP_TX sends to it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::lab::{Lab, Ns};
use common::{uclient, Turnd, BIN};
use turnd::proto::{AttrType, Message, Method};
use turnd::server::testclient::{Response, TestClient};

const REALM: &str = "test.turnd";

/// The pass program for the load side's veth, built once with clang.
fn pass_object() -> &'static str {
    static OBJ: OnceLock<String> = OnceLock::new();
    OBJ.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("turnd-xdp-pass-{}.o", std::process::id()));
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/xdp_pass.c");
        let status = Command::new("clang")
            .args([
                "-O2",
                "-target",
                "bpf",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
                src,
                "-o",
            ])
            .arg(&out)
            .status()
            .expect("clang missing: install it (bash .ci/deps)");
        assert!(status.success(), "clang could not build {src}");
        out.display().to_string()
    })
}

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} missing ({e}): install it (bash .ci/deps)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Two namespaces, the link, and turnd with `[xdp]` on the server's end.
struct XdpLab {
    turnd: Turnd,
    load: Ns,
    server: Ns,
    v6: bool,
    _lab: Lab,
}

impl XdpLab {
    fn start(v6: bool, relay_extra: &str) -> XdpLab {
        let mut lab = Lab::new();
        let load = lab.netns("load");
        let server = lab.netns("srv");
        lab.link(
            &load,
            "l0",
            &["198.18.0.1/24", "198.18.0.3/24", "2001:2::1/64 nodad"],
            &server,
            "s0",
            &["198.18.0.2/24", "2001:2::2/64 nodad"],
        );
        server.sh("sysctl -qw net.ipv4.conf.s0.forwarding=1 net.ipv6.conf.s0.forwarding=1");
        load.sh("ethtool -K l0 tx off >/dev/null");
        load.sh(&format!("ip link set dev l0 xdpdrv obj {} sec xdp", pass_object()));
        let config = format!(
            r#"realm = "{REALM}"
shutdown_grace = "1s"
[[listen]]
address = "198.18.0.2:3478"
protocols = ["udp"]
[[listen]]
address = "[2001:2::2]:3478"
protocols = ["udp"]

[relay]
addresses = ["198.18.0.2", "2001:2::2"]
legacy_channel_numbers = true
{relay_extra}

[peers]
allow = ["198.18.0.0/15", "2001:2::/48"]

[auth]
[[auth.users]]
name = "alice"
password = "wonderland"

[xdp]
interfaces = ["s0"]
mode = "native"
"#
        );
        let turnd = Turnd::start_in_netns(&server.name, &config);
        assert!(
            turnd.startup.iter().any(|l| l.contains("XDP fast path attached")),
            "the program did not attach (it must load through the verifier): {:#?}",
            turnd.startup
        );
        XdpLab {
            turnd,
            load,
            server,
            v6,
            _lab: lab,
        }
    }

    fn server_addr(&self) -> SocketAddr {
        if self.v6 {
            "[2001:2::2]:3478".parse().unwrap()
        } else {
            "198.18.0.2:3478".parse().unwrap()
        }
    }

    fn load_ip(&self) -> &'static str {
        if self.v6 {
            "2001:2::1"
        } else {
            "198.18.0.1"
        }
    }

    fn metrics(&self) -> String {
        let http = self.turnd.http.expect("metrics listener");
        self.turnd.inside(|| {
            let mut s = TcpStream::connect(http).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            body
        })
    }

    fn metric(&self, name_and_labels: &str) -> u64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics:\n{text}")) as u64
    }

    /// The program attached to the server's veth: its id and its maps by name.
    fn program(&self) -> (u64, Vec<(String, u64)>) {
        let link = json(&self.server.sh("ip -j link show dev s0"));
        let id = link[0]["xdp"]["prog"]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no XDP program on s0: {link}"));
        let prog = json(&sh("bpftool", &["-j", "prog", "show", "id", &id.to_string()]));
        let maps = prog["map_ids"]
            .as_array()
            .expect("map_ids")
            .iter()
            .map(|m| {
                let m = m.as_u64().unwrap();
                let info = json(&sh("bpftool", &["-j", "map", "show", "id", &m.to_string()]));
                (info["name"].as_str().unwrap().to_string(), m)
            })
            .collect();
        (id, maps)
    }

    fn map_id(&self, name: &str) -> u64 {
        self.program()
            .1
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no map {name}"))
            .1
    }

    /// The program's own counters, summed over CPUs: to_peer, to_client, then what it
    /// passed up by reason (expired, length, route, checksum).
    fn program_stats(&self) -> Vec<u64> {
        let dump = json(&sh(
            "bpftool",
            &["-j", "map", "dump", "id", &self.map_id("turnd_stats").to_string()],
        ));
        dump.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["formatted"]["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["value"].as_u64().unwrap())
                    .sum()
            })
            .collect()
    }

    /// Entries in the program's client map now.
    fn entries(&self) -> usize {
        let dump = json(&sh(
            "bpftool",
            &["-j", "map", "dump", "id", &self.map_id("turnd_clients").to_string()],
        ));
        dump.as_array().unwrap().len()
    }

    /// Runs `f` in the load namespace.
    fn on_load<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.load.enter(f)
    }

    /// A peer and a client in the load namespace, an allocation with `channel` bound to the
    /// peer (offloaded), and `trips` round trips through it: (peer, client, relayed address).
    fn offloaded_channel(&self, channel: u16, trips: usize) -> (UdpSocket, Client, SocketAddr) {
        let (server, ip) = (self.server_addr(), self.load_ip());
        self.on_load(|| {
            let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
            let mut client = Client::new(server, ip);
            let relayed = client.channel(channel, peer.local_addr().unwrap());
            round_trips(&client, &peer, relayed, channel, trips);
            (peer, client, relayed)
        })
    }
}

/// A TURN client over a real UDP socket.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    c: TestClient,
}

impl Client {
    fn new(server: SocketAddr, local_ip: &str) -> Client {
        let sock = UdpSocket::bind(SocketAddr::new(local_ip.parse().unwrap(), 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        Client {
            sock,
            server,
            c: TestClient::new("alice", REALM, "wonderland"),
        }
    }

    /// Sends a request (again after a 401 or 438) and reads the answer.
    fn ask(&mut self, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> Response {
        for _ in 0..3 {
            self.sock.send_to(&build(&mut self.c), self.server).unwrap();
            let r = self.recv_response();
            if !matches!(r.error, Some(401) | Some(438)) {
                return r;
            }
        }
        panic!("still challenged after three tries")
    }

    fn recv_response(&mut self) -> Response {
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = self.sock.recv_from(&mut buf).expect("an answer");
            if Message::parse(&buf[..n]).is_ok() {
                return self.c.read(&buf[..n]);
            }
        }
    }

    /// Allocate, then bind `channel` to `peer`; returns the relayed address.
    fn channel(&mut self, channel: u16, peer: SocketAddr) -> SocketAddr {
        let v6 = peer.is_ipv6();
        let r = self.ask(|c| c.allocate_family(v6));
        assert_eq!(r.error, None, "Allocate");
        let relayed = r.relayed[0];
        let r = self.ask(|c| c.channel_bind(channel, peer));
        assert_eq!(r.error, None, "ChannelBind to {peer}");
        relayed
    }

    /// The next datagram, if one comes within `wait`.
    fn recv_within(&self, wait: Duration) -> Option<Vec<u8>> {
        recv_within(&self.sock, wait)
    }
}

fn recv_within(sock: &UdpSocket, wait: Duration) -> Option<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
}

/// A payload that differs packet by packet and byte by byte.
fn payload(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| (i * 31 + k * 7 + len) as u8).collect()
}

/// `n` round trips through channel `ch`: ChannelData (padded on every other one) to the peer,
/// a datagram back. Every payload must arrive byte for byte.
fn round_trips(client: &Client, peer: &UdpSocket, relayed: SocketAddr, ch: u16, n: usize) {
    for i in 0..n {
        let len = 1 + (i * 97) % 1200;
        let out = payload(i, len);
        let cd = TestClient::channel_data(ch, &out, i % 2 == 0);
        client.sock.send_to(&cd, client.server).unwrap();
        let got = recv_within(peer, Duration::from_secs(2)).unwrap_or_else(|| panic!("packet {i} lost"));
        assert_eq!(got, out, "packet {i} ({len} bytes) to the peer");
        let back = payload(i + 1000, len);
        peer.send_to(&back, relayed).unwrap();
        let got = client
            .recv_within(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("reply {i} lost"));
        let mut want = vec![(ch >> 8) as u8, ch as u8, (len >> 8) as u8, len as u8];
        want.extend_from_slice(&back);
        assert_eq!(got, want, "reply {i} ({len} bytes) to the client");
    }
}

fn relays_byte_exact_through_the_program(v6: bool) {
    let lab = XdpLab::start(v6, "");
    let server = lab.server_addr();
    let ip = lab.load_ip();
    let n = 300;
    lab.on_load(|| {
        let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        let mut client = Client::new(server, ip);
        let relayed = client.channel(0x4001, peer.local_addr().unwrap());
        round_trips(&client, &peer, relayed, 0x4001, n);
    });
    // The program relayed every one of them, both ways...
    let stats = lab.program_stats();
    assert_eq!((stats[0], stats[1]), (n as u64, n as u64), "program counters {stats:?}");
    // ...and turnd counts them as relayed, within a second (its counter read).
    std::thread::sleep(Duration::from_millis(1500));
    for d in ["client_to_peer", "peer_to_client"] {
        assert_eq!(
            lab.metric(&format!("turnd_relay_packets_total{{direction=\"{d}\"}}")),
            n as u64,
            "{d}"
        );
        assert_eq!(
            lab.metric(&format!("turnd_xdp_relayed_packets_total{{direction=\"{d}\"}}")),
            n as u64,
            "{d}"
        );
    }
    let bytes: u64 = (0..n).map(|i| (1 + (i * 97) % 1200) as u64).sum();
    assert_eq!(
        lab.metric("turnd_relay_bytes_total{direction=\"client_to_peer\"}"),
        bytes
    );
}

#[test]
fn ipv4_channel_data_is_relayed_byte_exact_by_the_program_and_counted() {
    relays_byte_exact_through_the_program(false);
}

#[test]
fn ipv6_channel_data_is_relayed_byte_exact_by_the_program_and_counted() {
    relays_byte_exact_through_the_program(true);
}

fn coturn_and_turnd_load_through_the_program(v6: bool) {
    let lab = XdpLab::start(v6, "");
    let server = lab.server_addr();
    let ip = lab.load_ip();
    // coturn's client with its echoing peer, both in the load namespace.
    let mut peer = lab
        .load
        .cmd("turnutils_peer")
        .args(["-L", ip, "-p", "3480"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("turnutils_peer (bash .ci/deps)");
    std::thread::sleep(Duration::from_millis(300));
    let server_ip = server.ip().to_string();
    let (messages, sessions, size) = (60u64, 4u64, 160u64);
    let (n, m, l) = (messages.to_string(), sessions.to_string(), size.to_string());
    let totals = uclient::run_in(
        &lab.load.name,
        &[
            "-c",
            "-e",
            ip,
            "-r",
            "3480",
            "-p",
            "3478",
            "-n",
            &n,
            "-m",
            &m,
            "-l",
            &l,
            "-u",
            "alice",
            "-w",
            "wonderland",
            &server_ip,
        ],
    );
    let _ = peer.kill();
    let _ = peer.wait();
    assert_eq!(totals.sent, messages * sessions);
    assert_eq!(totals.received, messages * sessions);
    assert_eq!(totals.received_bytes, messages * sessions * size);
    assert_eq!(totals.lost, 0);
    let stats = lab.program_stats();
    assert_eq!(
        (stats[0], stats[1]),
        (messages * sessions, messages * sessions),
        "every ChannelData went through the program: {stats:?}"
    );

    // turnd-load's channel mode: round trips for two seconds, none lost.
    let out = lab
        .load
        .cmd(&common::turnd_load().display().to_string())
        .args([
            "channel",
            "--server",
            &server.to_string(),
            "--user",
            "alice",
            "--password",
            "wonderland",
        ])
        .args(["--realm", REALM, "--duration", "2", "--warmup", "0.5", "--sockets", "4"])
        .output()
        .expect("turnd-load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let result = text.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("RESULT");
    let r = json(result);
    assert_eq!(r["lost"].as_u64(), Some(0), "{result}");
    assert_eq!(r["unexpected"].as_u64(), Some(0), "{result}");
    let received = r["received"].as_u64().unwrap();
    assert!(received > 1000, "{result}");
    let after = lab.program_stats();
    assert!(
        after[0] - stats[0] >= received && after[1] - stats[1] >= received,
        "turnd-load's packets went through the program: {after:?} after {stats:?}, {received} round trips"
    );
}

#[test]
fn ipv4_coturn_uclient_and_turnd_load_relay_through_the_program_without_loss() {
    coturn_and_turnd_load_through_the_program(false);
}

#[test]
fn ipv6_coturn_uclient_and_turnd_load_relay_through_the_program_without_loss() {
    coturn_and_turnd_load_through_the_program(true);
}

#[test]
fn an_expired_permission_ends_the_offload_at_once_and_turnd_drops_what_follows() {
    // Permissions last 2 s here; channels 10 min.
    let lab = XdpLab::start(false, "permission_lifetime = \"2s\"");
    let server = lab.server_addr();
    let (peer, client, relayed) = lab.offloaded_channel(0x4001, 5);
    assert_eq!(lab.entries(), 1);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(lab.entries(), 0, "the entry went with the permission");
    let before = lab.program_stats();
    let dropped = lab.metric("turnd_dropped_packets_total{reason=\"no_permission\"}");
    peer.send_to(b"after the permission", relayed).unwrap();
    assert_eq!(
        client.recv_within(Duration::from_millis(500)),
        None,
        "nothing reaches the client"
    );
    client
        .sock
        .send_to(&TestClient::channel_data(0x4001, b"nor the peer", false), server)
        .unwrap();
    assert_eq!(recv_within(&peer, Duration::from_millis(500)), None);
    assert_eq!(
        lab.program_stats()[..2],
        before[..2],
        "the program relayed nothing more"
    );
    assert_eq!(
        lab.metric("turnd_dropped_packets_total{reason=\"no_permission\"}"),
        dropped + 2,
        "turnd dropped both, counted with their reason"
    );
}

#[test]
fn an_expired_channel_is_taken_back_and_the_peer_is_heard_through_data_indications() {
    let lab = XdpLab::start(false, "channel_lifetime = \"2s\"");
    let (peer, client, relayed) = lab.offloaded_channel(0x4001, 5);
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(lab.entries(), 0, "the entry went with the channel");
    let before = lab.program_stats();
    peer.send_to(b"unbound now", relayed).unwrap();
    let got = client.recv_within(Duration::from_secs(1)).expect("a Data indication");
    let m = Message::parse(&got).expect("STUN, not ChannelData");
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.get(AttrType::DATA).unwrap().value, b"unbound now");
    assert_eq!(lab.program_stats()[..2], before[..2]);
}

#[test]
fn refresh_zero_disconnect_and_sigterm_take_every_entry_back() {
    let lab = XdpLab::start(false, "");
    let server = lab.server_addr();
    let ip = lab.load_ip();
    // Refresh 0: the entry goes before the answer leaves.
    let (peer, client, relayed) = lab.on_load(|| {
        let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        let mut client = Client::new(server, ip);
        let relayed = client.channel(0x4001, peer.local_addr().unwrap());
        round_trips(&client, &peer, relayed, 0x4001, 3);
        assert_eq!(client.ask(|c| c.refresh(0)).error, None);
        (peer, client, relayed)
    });
    assert_eq!(lab.entries(), 0, "Refresh 0");
    let before = lab.program_stats();
    peer.send_to(b"to a dead allocation", relayed).unwrap();
    assert_eq!(client.recv_within(Duration::from_millis(300)), None);
    assert_eq!(lab.program_stats()[..2], before[..2]);
    // The allocation's end line counts what the program relayed.
    let ended: Vec<String> = lab
        .turnd
        .log
        .try_iter()
        .filter(|l| l.contains("allocation ended"))
        .collect();
    assert!(
        ended
            .iter()
            .any(|l| l.contains("to_peer_packets=3") && l.contains("to_client_packets=3")),
        "{ended:?}"
    );

    // turnd disconnect: every entry of the user goes.
    lab.on_load(|| {
        for ch in [0x4001u16, 0x4002] {
            let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
            let mut client = Client::new(server, ip);
            client.channel(ch, peer.local_addr().unwrap());
        }
    });
    assert_eq!(lab.entries(), 2);
    let out = Command::new(BIN)
        .args(["disconnect", "alice", "--config"])
        .arg(&lab.turnd.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lab.entries(), 0, "disconnect");

    // SIGTERM: the program leaves the interface with the process.
    lab.on_load(|| {
        let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        Client::new(server, ip).channel(0x4003, peer.local_addr().unwrap());
    });
    assert_eq!(lab.entries(), 1);
    let XdpLab { turnd, server: srv, .. } = lab;
    let status = turnd.terminate();
    assert!(status.success());
    let link = srv.sh("ip -j link show dev s0");
    assert!(json(&link)[0].get("xdp").is_none(), "still attached after exit: {link}");
}

#[test]
fn a_crash_leaves_no_program_behind() {
    let lab = XdpLab::start(false, "");
    let XdpLab { turnd, server, .. } = lab;
    let _ = Command::new("kill").args(["-KILL", &turnd.pid().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let link = json(&server.sh("ip -j link show dev s0"));
        if link[0].get("xdp").is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "still attached after kill -9: {link}");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(turnd);
}

#[test]
fn nothing_gets_through_that_should_not() {
    let lab = XdpLab::start(false, "");
    let server = lab.server_addr();
    let ip = lab.load_ip();
    let dropped = |reason: &str| lab.metric(&format!("turnd_dropped_packets_total{{reason=\"{reason}\"}}"));
    let passed = |reason: &str| lab.metric(&format!("turnd_xdp_passed_packets_total{{reason=\"{reason}\"}}"));
    let passed_length = passed("length");
    let malformed = dropped("malformed");
    let no_allocation = dropped("no_allocation");
    let no_permission = dropped("no_permission");
    let (peer, client, relayed) = lab.on_load(|| {
        let peer = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        let mut client = Client::new(server, ip);
        let relayed = client.channel(0x4001, peer.local_addr().unwrap());
        round_trips(&client, &peer, relayed, 0x4001, 2);
        (peer, client, relayed)
    });
    let before = lab.program_stats();
    lab.on_load(|| {
        // A peer with no permission (another address of the load host): the program has no
        // entry for it, so turnd sees the datagram and drops it.
        let stranger = UdpSocket::bind("198.18.0.3:0").unwrap();
        stranger.send_to(b"injected", relayed).unwrap();
        assert_eq!(
            client.recv_within(Duration::from_millis(500)),
            None,
            "a stranger got through"
        );

        // ChannelData whose length says more than the datagram holds: passed up, dropped.
        let mut lying = TestClient::channel_data(0x4001, b"short", false);
        lying[3] = 200;
        client.sock.send_to(&lying, server).unwrap();
        assert_eq!(recv_within(&peer, Duration::from_millis(300)), None);

        // Another 5-tuple using this client's channel number: no entry, no allocation.
        let other = UdpSocket::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
        other
            .send_to(&TestClient::channel_data(0x4001, b"not mine", false), server)
            .unwrap();
        assert_eq!(recv_within(&peer, Duration::from_millis(300)), None);
    });
    let after = lab.program_stats();
    assert_eq!(after[..2], before[..2], "the program relayed none of them");
    assert_eq!(after[3], before[3] + 1, "the lying length was passed up: {after:?}");
    assert_eq!(passed("length"), passed_length + 1, "and /metrics says why");
    assert_eq!(dropped("malformed"), malformed + 1);
    assert_eq!(dropped("no_allocation"), no_allocation + 1);
    assert_eq!(dropped("no_permission"), no_permission + 1);
}

#[test]
fn an_interface_that_cannot_take_the_program_leaves_turnd_on_sockets_with_one_clear_line() {
    let mut lab = Lab::new();
    let ns = lab.netns("srv");
    let config = r#"realm = "test.turnd"
[[listen]]
address = "127.0.0.1:3478"
protocols = ["udp"]
[relay]
addresses = ["127.0.0.1"]
[auth]
[[auth.users]]
name = "alice"
password = "wonderland"
[xdp]
interfaces = ["nosuch0"]
"#;
    let t = Turnd::start_in_netns(&ns.name, config);
    let line = t
        .startup
        .iter()
        .find(|l| l.contains("XDP fast path off"))
        .unwrap_or_else(|| panic!("{:#?}", t.startup));
    assert!(
        line.contains("nosuch0") && line.contains("relaying on sockets"),
        "{line}"
    );
    assert!(t.startup.iter().any(|l| l.contains("turnd ready")));
}

/// Ethernet, IPv4 or IPv6, and UDP around `payload`, with both checksums right.
fn frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    fn sum(mut acc: u32, bytes: &[u8]) -> u32 {
        for pair in bytes.chunks(2) {
            acc += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
        acc
    }
    fn fold(mut acc: u32) -> u16 {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let (ethertype, ip, pseudo) = match (src.ip(), dst.ip()) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
            ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let check = fold(sum(0, &ip));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            let pseudo = [&s.octets()[..], &d.octets(), &[0, 17], &(udp_len as u16).to_be_bytes()].concat();
            (0x0800u16, ip, pseudo)
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let pseudo = [
                &s.octets()[..],
                &d.octets(),
                &(udp_len as u32).to_be_bytes(),
                &[0, 0, 0, 17],
            ]
            .concat();
            (0x86dd, ip, pseudo)
        }
        _ => panic!("mixed families"),
    };
    let check = match fold(sum(sum(0, &pseudo), &udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// The program's parser fed directly (BPF_PROG_TEST_RUN), in a network namespace of the
/// test thread's own with no routes: there the next-hop lookup always fails, so a frame the
/// program would relay ends as "route", and every frame must come back as XDP_PASS, byte for
/// byte as it went in (the program never passes a frame it has begun to rewrite). Known
/// frames land on the counter that says why; then random mutations of them (`XDP_FUZZ_RUNS`,
/// 30,000 by default; `XDP_FUZZ_SEED` replays a run) must never be changed, dropped or
/// counted twice.
#[test]
fn the_programs_parser_passes_every_frame_it_cannot_relay_unchanged_and_says_why() {
    let runs: usize = std::env::var("XDP_FUZZ_RUNS").map_or(30_000, |v| v.parse().expect("XDP_FUZZ_RUNS"));
    let seed: u64 = std::env::var("XDP_FUZZ_SEED").map_or_else(
        |_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            t.as_nanos() as u64 | 1
        },
        |v| v.parse().expect("XDP_FUZZ_SEED"),
    );
    std::thread::spawn(move || {
        // This thread's own namespace: it goes when the thread ends, test failed or not.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): run as root");
        let mut p = turnd::net::xdp::TestProgram::load().expect("load the program");
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let (client, listener) = (a("198.18.0.1:40000"), a("198.18.0.2:3478"));
        let (peer, relay) = (a("198.18.0.3:5000"), a("198.18.0.2:50000"));
        let (client6, listener6) = (a("[2001:2::1]:40000"), a("[2001:2::2]:3478"));
        let (peer6, relay6) = (a("[2001:2::3]:5000"), a("[2001:2::2]:50000"));
        let (late, late_peer, late_relay) = (a("198.18.0.1:40001"), a("198.18.0.4:5000"), a("198.18.0.2:50001"));
        let live = Duration::from_secs(600);
        p.install((client, listener), 0x4001, (peer, relay), live).unwrap();
        p.install((client6, listener6), 0x4002, (peer6, relay6), live).unwrap();
        p.install((late, listener), 0x4003, (late_peer, late_relay), Duration::ZERO)
            .unwrap();
        let cd = |ch: u16, data: &[u8], pad: usize| {
            [
                &ch.to_be_bytes()[..],
                &(data.len() as u16).to_be_bytes(),
                data,
                &vec![0; pad],
            ]
            .concat()
        };

        // (frame, the counter it must land on: 2 expired, 3 length, 4 route, 5 checksum)
        let mut bad_sum = frame(client, listener, &cd(0x4001, b"hello", 0));
        *bad_sum.last_mut().unwrap() ^= 1;
        let known: Vec<(&str, Vec<u8>, Option<usize>)> = vec![
            (
                "IPv4 ChannelData",
                frame(client, listener, &cd(0x4001, b"hello", 0)),
                Some(4),
            ),
            (
                "IPv4 ChannelData padded",
                frame(client, listener, &cd(0x4001, b"hello", 3)),
                Some(4),
            ),
            ("IPv4 from the peer", frame(peer, relay, b"from the peer"), Some(4)),
            (
                "IPv6 ChannelData",
                frame(client6, listener6, &cd(0x4002, b"hello", 0)),
                Some(4),
            ),
            ("IPv6 from the peer", frame(peer6, relay6, b"from the peer"), Some(4)),
            (
                "an expired entry",
                frame(late, listener, &cd(0x4003, b"late", 0)),
                Some(2),
            ),
            (
                "a lying length",
                frame(client, listener, &[0x40, 0x01, 0, 200, 1, 2, 3, 4]),
                Some(3),
            ),
            (
                "padding past 3 bytes",
                frame(client, listener, &cd(0x4001, b"hello", 4)),
                Some(3),
            ),
            ("a wrong UDP checksum", bad_sum, Some(5)),
            (
                "another client port",
                frame(late, listener, &cd(0x4001, b"hello", 0)),
                None,
            ),
            (
                "a STUN message",
                frame(client, listener, &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]),
                None,
            ),
            ("a stranger to the relay", frame(late_peer, relay, b"stranger"), None),
        ];
        for (what, f, lands) in &known {
            let before = p.stats();
            let (action, out) = p.run(f).expect("BPF_PROG_TEST_RUN");
            assert_eq!((action, &out), (2, f), "{what}: not passed unchanged");
            let after = p.stats();
            let moved: Vec<usize> = (0..6).filter(|&i| after[i] != before[i]).collect();
            assert_eq!(
                moved,
                lands.iter().copied().collect::<Vec<_>>(),
                "{what}: {before:?} -> {after:?}"
            );
        }

        // Random mutations of those frames: flipped bytes, cut or grown frames.
        let mut rng = seed;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (start, mut counted) = (p.stats(), 0u64);
        for _ in 0..runs {
            let mut f = known[next() as usize % known.len()].1.clone();
            for _ in 0..1 + next() % 4 {
                match next() % 8 {
                    0 => f.truncate(14 + next() as usize % (f.len() - 13)),
                    1 => f.extend((0..1 + next() % 8).map(|_| next() as u8)),
                    _ => {
                        let i = next() as usize % f.len();
                        f[i] ^= 1 << (next() % 8);
                    }
                }
            }
            let before: u64 = p.stats().iter().sum();
            let (action, out) = p.run(&f).expect("BPF_PROG_TEST_RUN");
            assert_eq!((action, &out), (2, &f), "changed or not passed (XDP_FUZZ_SEED={seed})");
            let after: u64 = p.stats().iter().sum();
            assert!(after - before <= 1, "counted twice (XDP_FUZZ_SEED={seed})");
            counted += after - before;
        }
        let end = p.stats();
        assert_eq!(end[..2], start[..2], "nothing relayed (XDP_FUZZ_SEED={seed})");
        eprintln!("{runs} mutated frames, {counted} reached an entry; XDP_FUZZ_SEED={seed}");
    })
    .join()
    .expect("the fuzz thread failed");
}
