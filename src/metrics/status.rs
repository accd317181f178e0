//! The status and self-test page (`GET /`), its data (`GET /status.json`) and the
//! short-lived credential its "Test from this browser" button uses (`POST /test-credential`).
//! The numbers come from the same per-shard counters as `/metrics`; once a second a sample
//! goes into a fixed ring of the last ten minutes, for the page's charts. Nothing per user.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{DropReason, Metrics};
use crate::sys::Locked;
use crate::types::Transport;

/// Samples kept: ten minutes at one a second.
pub const HISTORY: usize = 600;
/// How long a self-test credential lasts.
pub const TEST_CREDENTIAL_TTL: Duration = Duration::from_secs(300);
/// Self-test credentials minted per minute, at most (across all viewers).
const CREDENTIALS_PER_MINUTE: u32 = 20;

/// One second of the server, as the charts draw it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    pub unix_s: u64,
    pub allocations: i64,
    pub permissions: i64,
    pub channels: i64,
    /// Per second, client to peer and peer to client.
    pub packets_per_s: [u64; 2],
    pub bytes_per_s: [u64; 2],
}

/// Cumulative counters at one instant, to take rates from.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    packets: [u64; 2],
    bytes: [u64; 2],
}

/// A listener, as the page lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListenerInfo {
    pub transport: &'static str,
    pub address: String,
    /// Its ICE server URLs; `HOST` stands for the name the page was loaded from (a wildcard
    /// listener has no address of its own to name).
    pub urls: Vec<String>,
}

impl ListenerInfo {
    /// A bound listener and its URLs; `tls_name` is what `turns:` URLs name.
    pub fn new(transport: Transport, address: std::net::SocketAddr, tls_name: Option<&str>) -> ListenerInfo {
        let host = match address.ip() {
            ip if ip.is_unspecified() => "HOST".to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        };
        let port = address.port();
        let urls = match transport {
            Transport::Udp => vec![
                format!("stun:{host}:{port}"),
                format!("turn:{host}:{port}?transport=udp"),
            ],
            Transport::Tcp => vec![format!("turn:{host}:{port}?transport=tcp")],
            Transport::Tls => vec![format!("turns:{}:{port}?transport=tcp", tls_name.unwrap_or(&host))],
        };
        ListenerInfo {
            transport: transport.as_str(),
            address: address.to_string(),
            urls,
        }
    }
}

/// How the self-test gets a credential: a TURN REST secret (the config's first), or one made
/// for this process only, which no one else knows.
pub struct TestCredentials {
    secret: Vec<u8>,
    /// The ICE server URLs to test (stun:, turn: over UDP and TCP, turns:).
    pub urls: Vec<String>,
    /// Relaying is on (credentials are configured): otherwise the self-test tests STUN only.
    pub relaying: bool,
    minted: Mutex<(Instant, u32)>,
}

impl TestCredentials {
    pub fn new(secret: Vec<u8>, urls: Vec<String>, relaying: bool) -> TestCredentials {
        TestCredentials {
            secret,
            urls,
            relaying,
            minted: Mutex::new((Instant::now(), 0)),
        }
    }

    /// A credential good for [`TEST_CREDENTIAL_TTL`], as an `RTCIceServer` list; `None` when
    /// the minute's allowance is spent.
    pub fn mint(&self, unix_now: u64) -> Option<serde_json::Value> {
        {
            let mut m = self.minted.locked();
            if m.0.elapsed() >= Duration::from_secs(60) {
                *m = (Instant::now(), 0);
            }
            if m.1 >= CREDENTIALS_PER_MINUTE {
                return None;
            }
            m.1 += 1;
        }
        let username = format!("{}:status-page", unix_now + TEST_CREDENTIAL_TTL.as_secs());
        let credential = crate::auth::RestSecrets::password(&self.secret, &username);
        Some(serde_json::json!({
            "urls": self.urls,
            "username": username,
            "credential": credential,
            "ttl": TEST_CREDENTIAL_TTL.as_secs(),
            "relaying": self.relaying,
        }))
    }
}

/// The page's state: the ring of samples and what the page shows besides.
pub struct Status {
    started: Instant,
    pub listeners: Vec<ListenerInfo>,
    ring: Mutex<(VecDeque<Sample>, Totals, Instant)>,
    pub test: Option<TestCredentials>,
}

fn totals(metrics: &Metrics) -> Totals {
    Totals {
        packets: [0, 1].map(|d| metrics.total(|s| &s.relay_packets[d])),
        bytes: [0, 1].map(|d| metrics.total(|s| &s.relay_bytes[d])),
    }
}

impl Status {
    pub fn new(listeners: Vec<ListenerInfo>, test: Option<TestCredentials>) -> Status {
        Status {
            started: Instant::now(),
            listeners,
            ring: Mutex::new((VecDeque::with_capacity(HISTORY), Totals::default(), Instant::now())),
            test,
        }
    }

    /// Takes this second's sample (the caller ticks once a second).
    pub fn sample(&self, metrics: &Metrics) {
        let now = totals(metrics);
        let mut ring = self.ring.locked();
        let (samples, last, at) = &mut *ring;
        let secs = at.elapsed().as_secs_f64().max(0.001);
        let rate = |n: u64, before: u64| (n.wrapping_sub(before) as f64 / secs).round() as u64;
        let s = Sample {
            unix_s: crate::sys::unix_time().as_secs(),
            allocations: Transport::ALL
                .map(|t| metrics.level(|s| &s.allocations_active[t as usize]))
                .iter()
                .sum(),
            permissions: metrics.level(|s| &s.permissions_active),
            channels: metrics.level(|s| &s.channels_active),
            packets_per_s: [0, 1].map(|d| rate(now.packets[d], last.packets[d])),
            bytes_per_s: [0, 1].map(|d| rate(now.bytes[d], last.bytes[d])),
        };
        if samples.len() == HISTORY {
            samples.pop_front();
        }
        samples.push_back(s);
        *last = now;
        *at = Instant::now();
    }

    /// What `/status.json` answers.
    pub fn json(&self, metrics: &Metrics, draining: bool) -> String {
        let history: Vec<Sample> = {
            let ring = self.ring.locked();
            ring.0.iter().copied().collect()
        };
        let now = history.last().copied().unwrap_or_default();
        let drops: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|&r| (r.as_str().into(), metrics.total(|s| &s.dropped[r as usize]).into()))
            .collect();
        let t = totals(metrics);
        serde_json::json!({
            "version": super::VERSION,
            "uptime_s": self.started.elapsed().as_secs(),
            "draining": draining,
            "listeners": self.listeners,
            "urls": self.test.as_ref().map(|t| t.urls.clone()).unwrap_or_default(),
            "relaying": self.test.as_ref().is_some_and(|t| t.relaying),
            "now": now,
            "totals": {
                "packets": t.packets,
                "bytes": t.bytes,
            },
            "drops": drops,
            "history": history,
        })
        .to_string()
    }
}

/// The page itself: plain HTML, CSS, SVG and a little JS, nothing fetched from elsewhere.
pub const PAGE: &str = include_str!("status.html");
