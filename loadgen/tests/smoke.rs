//! turnd-load against a real turnd and its own minimal responder and relay, briefly: every mode runs,
//! measures something, and reports no loss where there is none. The figures themselves are
//! for benches/compare.sh; these tests keep the tool honest.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn load_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_turnd-load"))
}

fn turnd_bin() -> PathBuf {
    let p = load_bin().with_file_name("turnd");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test` from the workspace root, which builds turnd too",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something answers a Binding request on `addr`.
fn wait_ready(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = Command::new(load_bin())
            .args([
                "binding",
                "--sockets",
                "1",
                "--window",
                "1",
                "--warmup",
                "0",
                "--duration",
                "0.05",
            ])
            .args(["--server", &addr.to_string()])
            .output()
            .expect("run turnd-load");
        if String::from_utf8_lossy(&out.stdout).contains("\"received\":")
            && !String::from_utf8_lossy(&out.stdout).contains("\"received\":0,")
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing answers on {addr}");
}

fn start_turnd(dir: &std::path::Path) -> (Server, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let cfg = dir.join("turnd.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"threads = 1
realm = "bench"
[[listen]]
address = "{addr}"
protocols = ["udp", "tcp"]
[relay]
addresses = ["127.0.0.1"]
max_allocations_per_user = 1000
[limits]
unauthenticated_rate = 0
[auth]
users = [{{ name = "bench", password = "bench" }}]
users_file = "{}"
[peers]
allow = ["127.0.0.0/8"]
[admin]
socket = "{}"
[metrics]
listen = "off"
[log]
level = "warn"
"#,
            dir.join("users.toml").display(),
            dir.join("admin.sock").display()
        ),
    )
    .expect("write config");
    let child = Command::new(turnd_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start turnd");
    let server = Server(child);
    wait_ready(addr);
    (server, addr)
}

/// Runs turnd-load and returns its RESULT line.
fn run(server: SocketAddr, args: &[&str]) -> Value {
    let out = Command::new(load_bin())
        .args(args)
        .args(["--server", &server.to_string()])
        .output()
        .expect("run turnd-load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "turnd-load {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in {stdout}"));
    serde_json::from_str(line).expect("RESULT is JSON")
}

const SHORT: [&str; 4] = ["--warmup", "0.2", "--duration", "0.5"];

#[test]
fn every_mode_measures_turnd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr) = start_turnd(dir.path());

    let b = run(addr, &[&["binding", "--sockets", "8"][..], &SHORT[..]].concat());
    assert!(b["rate"].as_f64().unwrap_or(0.0) > 0.0, "{b}");
    assert_eq!(b["lost"], 0, "{b}");
    assert_eq!(b["unexpected"], 0, "{b}");
    assert!(
        b["p99_us"].as_f64().unwrap_or(0.0) >= b["p50_us"].as_f64().unwrap_or(0.0),
        "{b}"
    );

    for mode in ["channel", "send"] {
        let r = run(addr, &[&[mode, "--sockets", "4"][..], &SHORT[..]].concat());
        assert!(r["rate"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: {r}");
        assert_eq!(r["lost"], 0, "{mode}: {r}");
        assert_eq!(r["unexpected"], 0, "{mode}: {r}");
    }

    let a = run(addr, &[&["alloc", "--sockets", "4"][..], &SHORT[..]].concat());
    assert!(a["rate"].as_f64().unwrap_or(0.0) > 0.0, "{a}");
    assert_eq!(a["errors"], 0, "{a}");

    // Held allocations show in the server's resident memory.
    let pid = server.0.id().to_string();
    let h = run(addr, &["hold", "--sockets", "300", "--pid", &pid]);
    assert_eq!(h["held"], 300, "{h}");
    assert!(h["rss_held_kib"].as_u64() > h["rss_before_kib"].as_u64(), "{h}");
    assert!(h["bytes_per_allocation"].as_f64().unwrap_or(0.0) > 0.0, "{h}");
    assert_eq!(h["errors"], 0, "{h}");

    // Bytes flow through TCP relays (RFC 6062).
    let t = run(addr, &[&["tcprelay", "--sockets", "3"][..], &SHORT[..]].concat());
    assert_eq!(t["connections"], 3, "{t}");
    assert!(t["mb_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{t}");

    // An open-loop run sends at the rate asked for.
    let o = run(
        addr,
        &[&["channel", "--sockets", "4", "--rate", "2000"][..], &SHORT[..]].concat(),
    );
    let rt = o["rate"].as_f64().unwrap_or(0.0) / 2.0;
    assert!((1500.0..2500.0).contains(&rt), "{o}");
    assert_eq!(o["lost"], 0, "{o}");
}

#[test]
fn the_minimal_responder_answers_binding() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(load_bin())
        .args(["responder", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start responder");
    let _server = Server(child);
    wait_ready(addr);
    let b = run(addr, &[&["binding", "--sockets", "8"][..], &SHORT[..]].concat());
    assert!(b["rate"].as_f64().unwrap_or(0.0) > 0.0, "{b}");
    assert_eq!(b["lost"], 0, "{b}");
}

#[test]
fn the_minimal_relay_relays_channel_data_and_send_indications() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let child = Command::new(load_bin())
        .args(["relay", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start relay");
    let _server = Server(child);
    wait_ready(addr);
    for mode in ["channel", "send"] {
        let r = run(addr, &[&[mode, "--sockets", "4"][..], &SHORT[..]].concat());
        assert!(r["rate"].as_f64().unwrap_or(0.0) > 0.0, "{mode}: {r}");
        assert_eq!(r["lost"], 0, "{mode}: {r}");
        assert_eq!(r["unexpected"], 0, "{mode}: {r}");
    }
    // Allocations are released (Refresh 0) and made again, many times over.
    let a = run(addr, &[&["alloc", "--sockets", "4"][..], &SHORT[..]].concat());
    assert!(a["rate"].as_f64().unwrap_or(0.0) > 0.0, "{a}");
    assert_eq!(a["errors"], 0, "{a}");
}

#[test]
fn only_loopback_is_loaded() {
    let out = Command::new(load_bin())
        .args(["binding", "--server", "192.0.2.1:3478", "--duration", "0.1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = Command::new(load_bin())
        .args(["channel", "--payload", "5000"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--payload must be 12 to 1200"));
    let out = Command::new(load_bin()).args(["warp"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
}
