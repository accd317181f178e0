//! What one shard counts. Each engine owns one [`Stats`], and only its shard's thread writes
//! it: a plain load and store per event, never a locked read-modify-write, and no cache line
//! that another core writes (quinn's `connection/stats.rs` is the model). The metrics module
//! reads every shard's `Stats` when it is scraped and adds them up.
//!
//! The fields are atomics only so that the scraper may read them while the shard runs; with
//! one writer, `Relaxed` loads and stores are all that is needed (on x86 they are plain moves).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::types::Transport;

/// A counter written by one thread.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level (a gauge's share) written by one thread; other shards hold the rest of the total.
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    #[inline]
    pub fn add(&self, delta: i64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(delta), Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// A label's name and its values, in index order: what the metrics module writes.
pub trait Labels {
    const LABEL: &'static str;
    const NAMES: &'static [&'static str];
}

impl Labels for Transport {
    const LABEL: &'static str = "transport";
    const NAMES: &'static [&'static str] = &["udp", "tcp", "tls"];
}

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident $label:literal { $($(#[$vm:meta])* $v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];
            pub const COUNT: usize = Self::ALL.len();
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => stringify!($v)),* }
            }
        }
        impl Labels for $name {
            const LABEL: &'static str = $label;
            const NAMES: &'static [&'static str] = &[$(stringify!($v)),*];
        }
    };
}

label_enum! {
    /// Why a packet was dropped without an answer (`turnd_dropped_packets_total{reason}`).
    DropReason "reason" {
        /// Not a well-formed STUN message: length, cookie, attribute layout.
        malformed,
        /// FINGERPRINT present but wrong.
        bad_fingerprint,
        /// A response, or an indication other than Send, sent to the server.
        unexpected_class,
        /// ChannelData for a channel that is not bound.
        channel_unbound,
        /// A stream (TCP) that is not STUN framing; the connection is closed.
        stream_garbage,
        /// A packet could not be sent (socket buffer full or the socket failed).
        send_failed,
        /// A Send indication or ChannelData from a 5-tuple without an allocation.
        no_allocation,
        /// Relay traffic to or from a peer without a permission.
        no_permission,
        /// A TCP client too slow to take the data relayed to it.
        client_backpressure,
        /// An unauthenticated request over its source's rate limit (no answer sent).
        rate_limited,
        /// Relayed data over an allocation's or the server's bandwidth limit.
        bandwidth,
    }
}

label_enum! {
    /// Why authentication failed (`turnd_auth_failures_total{reason}`).
    AuthFailure "reason" {
        /// USERNAME is not a known user.
        unknown_user,
        /// MESSAGE-INTEGRITY did not verify: wrong password.
        bad_integrity,
        /// A TURN REST API username past its expiry time.
        expired_credential,
        /// A nonce past its expiry (answered 438).
        stale_nonce,
        /// A nonce this process did not issue to this client (answered 438).
        invalid_nonce,
        /// A REALM other than the server's.
        wrong_realm,
        /// Integrity present but USERNAME, REALM or NONCE missing or malformed (400).
        malformed,
        /// A request on an allocation made with other credentials (441).
        wrong_credentials,
    }
}

label_enum! {
    /// TURN request methods (`turnd_turn_requests_total{method}`).
    TurnMethod "method" { allocate, refresh, create_permission, channel_bind, connect, connection_bind }
}

label_enum! {
    /// Relay directions (`turnd_relay_*_total{direction}`).
    Direction "direction" { client_to_peer, peer_to_client }
}

label_enum! {
    /// How relayed data was framed on the client side (`turnd_relay_framing_total{framing}`).
    Framing "framing" { send_indication, data_indication, channel_data }
}

label_enum! {
    /// RFC 5780 requests by what they ask (`turnd_nat_discovery_requests_total{kind}`).
    DiscoveryKind "kind" { change_ip, change_port, change_both, response_port, padding }
}

/// Upper bounds of the allocation-lifetime histogram, in seconds: seconds to days.
pub const LIFETIME_BUCKETS: [f64; 11] = [
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0,
];

/// Everything one shard counts.
#[derive(Debug, Default)]
// Its own cache lines: no other shard's counters share them.
#[repr(align(128))]
pub struct Stats {
    pub binding: [Count; 3],
    /// By method, then success (0) or error (1).
    pub turn_requests: [[Count; 2]; TurnMethod::COUNT],
    pub auth_failures: [Count; AuthFailure::COUNT],
    pub allocations_opened: [Count; 3],
    pub allocations_active: [Level; 3],
    pub permissions_active: Level,
    /// TCP relay data connections (RFC 6062) up now, bound or waiting for ConnectionBind.
    pub tcp_connections_active: Level,
    pub channels_active: Level,
    pub relay_packets: [Count; 2],
    pub relay_bytes: [Count; 2],
    pub framing: [Count; 3],
    pub dropped: [Count; DropReason::COUNT],
    /// Allocations that ended, by lifetime bucket (the last is +Inf).
    pub lifetimes: [Count; LIFETIME_BUCKETS.len() + 1],
    /// The lifetimes of ended allocations, summed, in milliseconds.
    pub lifetime_ms: Count,
    /// TCP connections closed at accept because of a connection cap.
    pub connections_refused: Count,
    pub discovery: [Count; DiscoveryKind::COUNT],
    /// Packets the kernel fast path relayed, by direction (also in `relay_packets`).
    pub fast_path: [Count; 2],
}

impl Stats {
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    pub fn relayed(&self, d: Direction, bytes: usize) {
        self.relay_packets[d as usize].inc();
        self.relay_bytes[d as usize].add(bytes as u64);
    }

    /// `packets` relayed at once, `bytes` in all (the fast path's reports).
    pub fn relayed_many(&self, d: Direction, packets: u64, bytes: u64) {
        self.relay_packets[d as usize].add(packets);
        self.relay_bytes[d as usize].add(bytes);
    }

    pub fn framed(&self, f: Framing) {
        self.framing[f as usize].inc();
    }

    pub fn binding_request(&self, t: Transport) {
        self.binding[t as usize].inc();
    }

    pub fn turn_request(&self, method: TurnMethod, success: bool) {
        self.turn_requests[method as usize][usize::from(!success)].inc();
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].inc();
    }

    pub fn allocation_opened(&self, t: Transport) {
        self.allocations_opened[t as usize].inc();
        self.allocations_active[t as usize].add(1);
    }

    pub fn allocation_closed(&self, t: Transport, lived: Duration) {
        self.allocations_active[t as usize].add(-1);
        let secs = lived.as_secs_f64();
        let bucket = LIFETIME_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LIFETIME_BUCKETS.len());
        if let Some(c) = self.lifetimes.get(bucket) {
            c.inc();
        }
        self.lifetime_ms
            .add(u64::try_from(lived.as_millis()).unwrap_or(u64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_fall_in_their_bucket_and_add_up() {
        let s = Stats::default();
        s.allocation_opened(Transport::Udp);
        s.allocation_opened(Transport::Udp);
        s.allocation_closed(Transport::Udp, Duration::from_secs(5));
        s.allocation_closed(Transport::Udp, Duration::from_secs(100_000));
        assert_eq!(s.lifetimes[0].get(), 1);
        assert_eq!(s.lifetimes[LIFETIME_BUCKETS.len()].get(), 1, "+Inf");
        assert_eq!(s.lifetime_ms.get(), 100_005_000);
        assert_eq!(s.allocations_active[0].get(), 0);
        assert_eq!(s.allocations_opened[0].get(), 2);
    }

    #[test]
    fn label_values_are_the_variant_names() {
        assert_eq!(DropReason::rate_limited.as_str(), "rate_limited");
        assert_eq!(DropReason::COUNT, 11);
        assert_eq!(Framing::ALL.len(), 3);
    }
}
