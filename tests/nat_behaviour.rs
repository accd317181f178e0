//! Real NAT: a client namespace behind a router namespace that does NAT with nftables, and a
//! server namespace with turnd (or coturn) on two addresses. Both coturn's
//! `turnutils_natdiscovery -m -f` and `turnd nat-check` must report the behaviour the router
//! was given. Addresses from 198.18.0.0/15 only; each test builds and removes its own lab.
//!
//!   client 198.18.1.2 ── 198.18.1.1 router 198.18.0.254 ── 198.18.0.1 + 198.18.0.2 server

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::lab::{Lab, Ns};
use common::Turnd;

/// What the router does to the client's traffic.
#[derive(Clone, Copy, Debug)]
enum Router {
    /// Plain forwarding: the client reaches the server directly.
    NoNat,
    /// Endpoint-independent mapping, address- and port-dependent filtering.
    Masquerade,
    /// Address- and port-dependent mapping.
    FullyRandom,
}

struct Net {
    // Dropped last: the namespaces go after everything running in them.
    _lab: Lab,
    server: Ns,
    client: Ns,
    router: Ns,
}

fn build(router_mode: Router) -> Net {
    let mut lab = Lab::new();
    let server = lab.netns("srv");
    let router = lab.netns("rtr");
    let client = lab.netns("cli");
    lab.link(
        &server,
        "s0",
        &["198.18.0.1/24", "198.18.0.2/24"],
        &router,
        "r0",
        &["198.18.0.254/24"],
    );
    lab.link(&router, "r1", &["198.18.1.1/24"], &client, "c0", &["198.18.1.2/24"]);
    client.sh("ip route add default via 198.18.1.1");
    server.sh("ip route add 198.18.1.0/24 via 198.18.0.254");
    router.sh("sysctl -qw net.ipv4.ip_forward=1");
    let masquerade = match router_mode {
        Router::NoNat => None,
        Router::Masquerade => Some("masquerade"),
        Router::FullyRandom => Some("masquerade fully-random"),
    };
    if let Some(rule) = masquerade {
        router.sh(&format!(
            "nft add table ip nat && \
             nft 'add chain ip nat post {{ type nat hook postrouting priority 100 ; }}' && \
             nft add rule ip nat post oifname r0 {rule}"
        ));
    }
    Net {
        _lab: lab,
        server,
        client,
        router,
    }
}

const TURND: &str = r#"threads = 1
[[listen]]
address = "198.18.0.1:3478"
protocols = ["udp", "tcp"]

[nat_discovery]
alternate_addresses = ["198.18.0.2"]
"#;

/// `turnd nat-check --json` from the client namespace.
fn nat_check(net: &Net, extra: &[&str]) -> serde_json::Value {
    let out = net
        .client
        .cmd(common::BIN)
        .args([
            "nat-check",
            "stun:198.18.0.1:3478",
            "--json",
            "--rto",
            "100ms",
            "--rc",
            "3",
        ])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// coturn's `turnutils_natdiscovery -m -f` from the client namespace: its two findings.
fn natdiscovery(net: &Net) -> Vec<String> {
    let out = net
        .client
        .cmd("turnutils_natdiscovery")
        .args(["-m", "-f", "198.18.0.1"])
        .stdin(Stdio::null())
        .output()
        .expect("turnutils_natdiscovery (Debian's coturn package, from .ci/deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("NAT with") || l.starts_with("No NAT"))
        .map(str::to_string)
        .collect()
}

fn check(mode: Router, mapping: &str, filtering: &str, coturn_mapping: &str, coturn_filtering: &str) {
    let net = build(mode);
    let _turnd = Turnd::start_in_netns(&net.server.name, TURND);
    let r = nat_check(&net, &[]);
    assert_eq!(r["rfc5780"], true, "{r:#}");
    assert_eq!(r["mapping"], mapping, "{mode:?}: {r:#}");
    assert_eq!(r["filtering"], filtering, "{mode:?}: {r:#}");
    let public = r["public"].as_str().unwrap();
    match mode {
        Router::NoNat => assert!(public.starts_with("198.18.1.2:"), "{public}"),
        _ => assert!(public.starts_with("198.18.0.254:"), "{public}"),
    }
    let found = natdiscovery(&net);
    assert!(
        found.iter().any(|l| l.contains(coturn_mapping)),
        "{mode:?}: coturn says {found:?}"
    );
    assert!(
        found.iter().any(|l| l.contains(coturn_filtering)),
        "{mode:?}: coturn says {found:?}"
    );
}

#[test]
fn no_nat_is_reported_as_none() {
    check(
        Router::NoNat,
        "no-nat",
        "no-nat",
        "Endpoint Independent Mapping",
        "Endpoint Independent Filtering",
    );
}

#[test]
fn masquerade_maps_independently_and_filters_by_address_and_port() {
    check(
        Router::Masquerade,
        "endpoint-independent",
        "address-and-port-dependent",
        "Endpoint Independent Mapping",
        "Address and Port Dependent Filtering",
    );
}

#[test]
fn fully_random_masquerade_maps_by_address_and_port() {
    check(
        Router::FullyRandom,
        "address-and-port-dependent",
        "address-and-port-dependent",
        "Address and Port Dependent Mapping",
        "Address and Port Dependent Filtering",
    );
}

#[test]
fn masquerade_does_not_hairpin_and_its_mapping_lifetime_is_measured() {
    let net = build(Router::Masquerade);
    // The router forgets a UDP mapping 3 s after its last packet.
    net.router
        .sh("sysctl -qw net.netfilter.nf_conntrack_udp_timeout=3 net.netfilter.nf_conntrack_udp_timeout_stream=3");
    let _turnd = Turnd::start_in_netns(&net.server.name, TURND);
    let r = nat_check(&net, &["--lifetime", "6s"]);
    assert_eq!(r["hairpinning"], false, "{r:#}");
    let alive = r["lifetime"]["alive_after_s"].as_u64();
    let gone = r["lifetime"]["gone_after_s"].as_u64();
    assert!(matches!(alive, Some(1 | 2)), "{r:#}");
    assert!(matches!(gone, Some(4 | 6)), "{r:#}");
}

#[test]
fn nat_check_reads_coturn_as_well() {
    let net = build(Router::Masquerade);
    let mut coturn = net
        .server
        .cmd("turnserver")
        .args([
            "-n",
            "--listening-ip",
            "198.18.0.1",
            "--listening-ip",
            "198.18.0.2",
            "--listening-port",
            "3478",
            "--relay-ip",
            "198.18.0.1",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("turnserver (Debian's coturn package, from .ci/deps)");
    // Wait until coturn answers (bounded).
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = nat_check(&net, &[]);
        if r["public"].is_string() || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = coturn.kill();
    let _ = coturn.wait();
    assert_eq!(r["rfc5780"], true, "{r:#}");
    assert_eq!(r["other_address"], "198.18.0.2:3479", "{r:#}");
    assert_eq!(r["mapping"], "endpoint-independent", "{r:#}");
    assert_eq!(r["filtering"], "address-and-port-dependent", "{r:#}");
}
