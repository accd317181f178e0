//! The status and self-test page (`GET /`): headless Chromium watches its numbers move while
//! turnd-load relays traffic, runs "Test from this browser" against UDP, TCP and TLS
//! listeners, and a page bound off loopback needs its token.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::tls::write_cert;
use common::{turnd_load, Turnd};

fn candidates_of(r: &serde_json::Value) -> &serde_json::Map<String, serde_json::Value> {
    r["selfTest"]["candidates"].as_object().unwrap()
}

fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

#[test]
fn the_page_shows_traffic_and_the_self_test_finds_candidates_and_a_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let t = Turnd::start(&format!(
        r#"realm = "bench"
threads = 2
server_name = "localhost"
[[listen]]
address = "127.0.0.1:0"
protocols = ["udp", "tcp"]
[[listen]]
address = "127.0.0.1:{tls_port}"
protocols = ["tls"]
[relay]
addresses = ["127.0.0.1"]
[auth]
[[auth.users]]
name = "bench"
password = "bench"
[peers]
allow = ["127.0.0.0/8"]
[tls]
certificate = "{}"
private_key = "{}"
"#,
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        tls_port = common::redis::free_port(),
    ));
    let http = t.http.unwrap();
    // Traffic while the page watches: turnd-load relays ChannelData through 8 allocations.
    let load = Command::new(turnd_load())
        .args([
            "channel",
            "--server",
            &t.udp[0].to_string(),
            "--sockets",
            "8",
            "--rate",
            "2000",
        ])
        .args(["--duration", "15", "--warmup", "1", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let dir_browser = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    let out = Command::new("timeout")
        .args([
            "150",
            "node",
            "status.mjs",
            &format!("http://{http}/"),
            &shot.display().to_string(),
        ])
        .current_dir(dir_browser)
        .output()
        .expect("node (from .ci/deps)");
    let mut load = load;
    let _ = load.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["status"], 200, "{r}");
    // The numbers moved while turnd-load relayed.
    assert!(r["maxPacketsPerSecond"].as_f64().unwrap_or(0.0) > 100.0, "{r}");
    // STUN on the UDP listener gave a server-reflexive candidate, and every TURN URL (UDP,
    // TCP, TLS) a relay candidate.
    let stun: Vec<&String> = candidates_of(&r).keys().filter(|u| u.starts_with("stun:")).collect();
    assert_eq!(stun.len(), 1, "{r}");
    assert!(
        candidates_of(&r)[stun[0]]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "srflx"),
        "{r}"
    );
    let candidates = r["selfTest"]["candidates"].as_object().unwrap();
    let turn_urls: Vec<&String> = candidates.keys().filter(|u| !u.starts_with("stun:")).collect();
    assert_eq!(turn_urls.len(), 3, "{r}");
    for url in turn_urls {
        let found = candidates[url].as_array().unwrap();
        assert!(
            found.iter().any(|c| c["type"] == "relay"),
            "{url}: no relay candidate: {r}"
        );
    }
    assert!(candidates.keys().any(|u| u.starts_with("turns:localhost:")), "{r}");
    // The relay-only data channel through turnd reports a round trip.
    let channel = &r["selfTest"]["channel"];
    assert_eq!(channel["ok"], true, "{r}");
    assert!(channel["rtt_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(channel["throughput_bps"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["text"].as_str().unwrap().contains("round trip"), "{r}");
    assert!(shot.exists());
}

#[test]
fn a_page_with_a_token_refuses_without_it_and_metrics_stay_open() {
    let t = Turnd::start(&common::turn_config(
        "[metrics]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef-token\"\n",
    ));
    let http = t.http.unwrap();
    for path in ["/", "/status.json"] {
        assert_eq!(get(http, path, "").0, 401, "{path}");
        assert_eq!(
            get(http, path, "Authorization: Bearer wrong-but-long-enough\r\n").0,
            401
        );
        assert_eq!(
            get(http, path, "Authorization: Bearer 0123456789abcdef-token\r\n").0,
            200
        );
        assert_eq!(
            get(http, path, "Cookie: a=b; turnd_token=0123456789abcdef-token\r\n").0,
            200
        );
    }
    // A ?token= link sets the cookie and sends the browser to the page without it.
    let (code, text) = get(http, "/?token=0123456789abcdef-token", "");
    assert_eq!(code, 303, "{text}");
    assert!(text.contains("Set-Cookie: turnd_token=0123456789abcdef-token; Path=/; HttpOnly; SameSite=Strict"));
    assert!(text.contains("Location: /\r\n"));
    // Minting needs the token too, and then answers with a five-minute REST credential that
    // never shows the secret.
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "POST /test-credential HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "POST /test-credential HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0123456789abcdef-token\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(":status-page") && text.contains("\"ttl\":300"), "{text}");
    assert!(!text.contains("rest-secret"), "{text}");
    // At most 20 a minute: the 21st is refused.
    let codes: Vec<u16> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(http).unwrap();
            write!(
                s,
                "POST /test-credential HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0123456789abcdef-token\r\n\r\n"
            )
            .unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
        })
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 19, "{codes:?}");
    assert_eq!(codes.last(), Some(&429), "{codes:?}");
    // Scrapers and probes need no token.
    assert_eq!(get(http, "/metrics", "").0, 200);
    assert_eq!(get(http, "/healthz", "").0, 200);
}

#[test]
fn off_loopback_a_token_is_made_at_start_and_required() {
    let mut lab = common::lab::Lab::new();
    let ns = lab.netns("page");
    let peer = lab.netns("viewer");
    lab.link(&ns, "p0", &["198.18.0.1/24"], &peer, "v0", &["198.18.0.2/24"]);
    let t = Turnd::start_in_netns(
        &ns.name,
        "[[listen]]\naddress = \"127.0.0.1:3478\"\nprotocols = [\"udp\"]\n[metrics]\nlisten = \"198.18.0.1:9641\"\n",
    );
    let log = &t.startup;
    let line = log
        .iter()
        .find(|l| l.contains("status page: http://198.18.0.1:9641/?token="))
        .unwrap_or_else(|| panic!("no token link in the log: {log:#?}"));
    let token = line
        .split("?token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(token.len() >= 20, "{token}");
    let addr: SocketAddr = "198.18.0.1:9641".parse().unwrap();
    let (without, with, metrics) = peer.enter(|| {
        (
            get(addr, "/", "").0,
            get(addr, "/", &format!("Authorization: Bearer {token}\r\n")).0,
            get(addr, "/metrics", "").0,
        )
    });
    assert_eq!((without, with, metrics), (401, 200, 200));
}
