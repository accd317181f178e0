//! The browser path: headless Chromium (Debian's `chromium`, driven by playwright-core from
//! tests/browser) opens a data channel between two RTCPeerConnections with
//! `iceTransportPolicy: "relay"` through the real `turnd` binary.

mod common;

use std::process::Command;

use common::browser::chromium;
use common::{turn_config, Turnd};

fn relay_through(transport: &str) {
    let t = Turnd::start(&turn_config("threads = 2"));
    let port = if transport == "tcp" {
        t.tcp[0].port()
    } else {
        t.udp[0].port()
    };
    let ice = serde_json::json!({
        "urls": format!("turn:127.0.0.1:{port}?transport={transport}"),
        "username": "alice",
        "credential": "wonderland",
    });
    let r = chromium(ice, 10);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["received"].as_array().map(Vec::len), Some(10), "{r}");
    assert!(!r["relayCandidates"]["a"].as_array().unwrap().is_empty(), "{r}");
    assert_eq!(r["pair"]["localType"], "relay", "{r}");
    assert_eq!(r["pair"]["relayProtocol"], transport, "{r}");
}

#[test]
fn chromium_data_channel_through_turn_over_udp() {
    relay_through("udp");
}

#[test]
fn chromium_data_channel_through_turn_over_tcp() {
    relay_through("tcp");
}

#[test]
fn chromium_with_a_wrong_password_gets_no_relay_candidate() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let ice = serde_json::json!({
        "urls": format!("turn:127.0.0.1:{}?transport=udp", t.udp[0].port()),
        "username": "alice",
        "credential": "not-the-password",
    });
    let r = chromium(ice, 0);
    assert_eq!(r["relayCandidates"]["a"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(r["relayCandidates"]["b"].as_array().map(Vec::len), Some(0), "{r}");
}

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn chromium_connects_with_the_ice_output_of_turnd_credential() {
    let port = free_port();
    let cfg = turn_config("threads = 2").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let t = Turnd::start(&cfg);
    let out = Command::new(common::BIN)
        .args([
            "credential",
            "--user",
            "browser",
            "--ttl",
            "10m",
            "--format",
            "ice",
            "--config",
        ])
        .arg(&t.config_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ice: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=udp").as_str()),
        "{ice}"
    );
    assert!(
        urls.contains(&format!("turn:127.0.0.1:{port}?transport=tcp").as_str()),
        "{ice}"
    );
    assert_eq!(
        urls.len(),
        2,
        "the [::1]:0 listener has no usable port and is left out: {ice}"
    );
    // Handed to the browser exactly as printed.
    let r = chromium(ice, 5);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["pair"]["localType"], "relay", "{r}");
}
