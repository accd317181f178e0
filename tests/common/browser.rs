//! Headless Chromium (Debian's `chromium`, driven by playwright-core from tests/browser):
//! two RTCPeerConnections with `iceTransportPolicy: "relay"` open a data channel.

use std::process::Command;

/// Runs tests/browser/relay.mjs with `ice_server` and `messages`; returns its JSON line
/// (`ok`, `relayCandidates`, `received`, `pair` with the selected local candidate).
pub fn chromium(ice_server: serde_json::Value, messages: u32) -> serde_json::Value {
    chromium_in(None, ice_server, messages)
}

/// The same, with Chromium in the network namespace `netns`.
pub fn chromium_in(netns: Option<&str>, ice_server: serde_json::Value, messages: u32) -> serde_json::Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
    assert!(
        std::path::Path::new(dir).join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `bash .ci/deps` (npm ci in tests/browser)"
    );
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "timeout"]);
            c
        }
        None => Command::new("timeout"),
    };
    let out = cmd
        .args([
            "90",
            "node",
            "relay.mjs",
            &ice_server.to_string(),
            &messages.to_string(),
        ])
        .current_dir(dir)
        .output()
        .expect("node missing");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no output; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}
