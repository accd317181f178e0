//! Usage accounting for billing: what each account relayed, and for how long it held
//! allocations, handed to the driver in batches (a cluster node adds them to Redis). Off
//! unless [`super::EngineConfig::account_usage`]; nothing here runs per packet: the packet
//! path already counts each allocation's traffic, and a batch takes what moved since the last.

use std::collections::BTreeMap;
use std::time::Instant;

use super::allocation::{Allocation, Traffic};
use super::{Engine, RelayIo};

/// What an account used: relayed bytes and packets each way, and allocation-milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub to_peer_bytes: u64,
    pub to_client_bytes: u64,
    pub to_peer_packets: u64,
    pub to_client_packets: u64,
    pub allocation_ms: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.to_peer_bytes += o.to_peer_bytes;
        self.to_client_bytes += o.to_client_bytes;
        self.to_peer_packets += o.to_peer_packets;
        self.to_client_packets += o.to_client_packets;
        self.allocation_ms += o.allocation_ms;
    }

    pub fn is_empty(&self) -> bool {
        *self == Usage::default()
    }

    /// The fields with their names, as `turnd usage` and Redis spell them.
    pub fn fields(&self) -> [(&'static str, u64); 5] {
        [
            ("to_peer_bytes", self.to_peer_bytes),
            ("to_client_bytes", self.to_client_bytes),
            ("to_peer_packets", self.to_peer_packets),
            ("to_client_packets", self.to_client_packets),
            ("allocation_ms", self.allocation_ms),
        ]
    }
}

/// The account a username bills to: the id of a TURN REST API username (`expiry:id`), else
/// the username itself.
pub fn account(username: &str) -> &str {
    match username.split_once(':') {
        Some((expiry, id)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => username,
    }
}

/// What an allocation has done since it was last billed. Time is billed in whole
/// milliseconds: the fraction stays with the mark for the next bill, and the `last` bill of an
/// allocation rounds it up, so every allocation bills at least 1 ms and the sum never drifts.
pub(super) fn bill<S>(a: &mut Allocation<S>, now: Instant, last: bool) -> Usage {
    let (t, since) = a.billed;
    let n = a.traffic;
    let elapsed = now.saturating_duration_since(since);
    let mut ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    if last && elapsed > std::time::Duration::from_millis(ms) {
        ms += 1;
    }
    a.billed = (n, since + std::time::Duration::from_millis(ms));
    Usage {
        to_peer_bytes: n.to_peer_bytes - t.to_peer_bytes,
        to_client_bytes: n.to_client_bytes - t.to_client_bytes,
        to_peer_packets: n.to_peer_packets - t.to_peer_packets,
        to_client_packets: n.to_client_packets - t.to_client_packets,
        allocation_ms: ms,
    }
}

/// The billing mark of a new allocation.
pub(super) fn start(now: Instant) -> (Traffic, Instant) {
    (Traffic::default(), now)
}

impl<R: RelayIo> Engine<R> {
    /// Usage since the last call, by account: what ended allocations left, and with `open`
    /// the progress of the open ones too, in account order. Empty when accounting is off.
    pub fn take_usage(&mut self, now: Instant, open: bool) -> Vec<(String, Usage)> {
        let mut all = std::mem::take(&mut self.ended_usage);
        if open && self.config.account_usage {
            for a in self.table.iter_mut() {
                let u = bill(a, now, false);
                if !u.is_empty() {
                    all.entry(account(&a.username).into()).or_default().add(&u);
                }
            }
        }
        all.into_iter().map(|(k, v)| (k.into_string(), v)).collect()
    }

    /// Keeps what an ending allocation did since it was last billed.
    pub(super) fn bill_ended(&mut self, a: &mut Allocation<R::Socket>, now: Instant) {
        if self.config.account_usage {
            let u = bill(a, now, true);
            self.ended_usage.entry(account(&a.username).into()).or_default().add(&u);
        }
    }
}

/// Usage by account, not yet handed out.
pub(super) type Ledger = BTreeMap<Box<str>, Usage>;
