//! Metric handles, registered once at start-up with fixed label values. The packet path only
//! increments atomics; label values come from small fixed enums, never from a username,
//! address or realm.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::types::Transport;

pub mod http;
mod process;

pub use process::ProcStats;

/// The version string: crate version and git revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TURND_GIT_REVISION"), ")");

macro_rules! label_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
        #[allow(non_camel_case_types)]
        pub enum $name { $($(#[$vm])* $v),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),*];
        }
    };
}

label_enum! {
    /// Why a packet was dropped without an answer (`turnd_dropped_packets_total{reason}`).
    DropReason {
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
    AuthFailure {
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
    TurnMethod { allocate, refresh, create_permission, channel_bind }
}

label_enum! {
    /// Relay directions (`turnd_relay_*_total{direction}`).
    Direction { client_to_peer, peer_to_client }
}

label_enum! {
    /// How relayed data was framed on the client side (`turnd_relay_framing_total{framing}`).
    Framing { send_indication, data_indication, channel_data }
}

label_enum! {
    TransportLabel { udp, tcp, tls }
}

label_enum! {
    ResultLabel { success, error }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"y\"} 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n# EOF\n";
        let text = super::to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"y\"} 1\n# HELP g A gauge.\n# TYPE g gauge\ng 2\n"
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    transport: TransportLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: DropReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthLabels {
    reason: AuthFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: TurnMethod,
    result: ResultLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FramingLabels {
    framing: Framing,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DirectionLabels {
    direction: Direction,
}

/// Allocation lifetimes span seconds to days.
const DURATION_BUCKETS: [f64; 11] = [
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0, 86400.0,
];

fn ti(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Tls => 2,
    }
}

/// Every metric the server exports, as ready-made handles.
pub struct Metrics {
    registry: Registry,
    binding: [Counter; 3],
    turn_requests: Vec<[Counter; 2]>,
    auth_failures: Vec<Counter>,
    allocations_active: [Gauge; 3],
    allocations_total: [Counter; 3],
    permissions_active: Gauge,
    channels_active: Gauge,
    relay_packets: [Counter; 2],
    relay_bytes: [Counter; 2],
    framing: Vec<Counter>,
    dropped: Vec<Counter>,
    allocation_duration: Histogram,
    connections_refused: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let binding = Family::<TransportLabels, Counter>::default();
        r.register(
            "turnd_stun_binding_requests",
            "STUN Binding requests answered",
            binding.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "turnd_turn_requests",
            "TURN requests answered, by method and result",
            requests.clone(),
        );
        let auth = Family::<AuthLabels, Counter>::default();
        r.register(
            "turnd_auth_failures",
            "Authentication failures, by reason",
            auth.clone(),
        );
        let active = Family::<TransportLabels, Gauge>::default();
        r.register(
            "turnd_allocations_active",
            "Allocations open now, by client transport",
            active.clone(),
        );
        let total = Family::<TransportLabels, Counter>::default();
        r.register(
            "turnd_allocations",
            "Allocations created, by client transport",
            total.clone(),
        );
        let permissions_active = Gauge::default();
        r.register(
            "turnd_permissions_active",
            "Permissions installed now",
            permissions_active.clone(),
        );
        let channels_active = Gauge::default();
        r.register("turnd_channels_active", "Channels bound now", channels_active.clone());
        let packets = Family::<DirectionLabels, Counter>::default();
        r.register("turnd_relay_packets", "Packets relayed, by direction", packets.clone());
        let bytes = Family::<DirectionLabels, Counter>::default();
        r.register(
            "turnd_relay_bytes",
            "Application bytes relayed, by direction",
            bytes.clone(),
        );
        let framing = Family::<FramingLabels, Counter>::default();
        r.register(
            "turnd_relay_framing",
            "Relayed packets by client-side framing: Send/Data indications or ChannelData",
            framing.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        r.register(
            "turnd_dropped_packets",
            "Packets dropped without an answer, by reason",
            dropped.clone(),
        );
        let allocation_duration = Histogram::new(DURATION_BUCKETS);
        r.register(
            "turnd_allocation_duration_seconds",
            "How long allocations lived, observed when they end",
            allocation_duration.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        r.register(
            "turnd_build_info",
            "Always 1; the labels carry the version and git revision",
            build.clone(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                revision: env!("TURND_GIT_REVISION"),
            })
            .set(1);
        let start_time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        r.register_collector(Box::new(process::ProcessCollector { start_time }));
        let connections_refused = Counter::default();
        r.register(
            "turnd_tcp_connections_refused",
            "TCP connections closed at accept because the listener was at max_connections",
            connections_refused.clone(),
        );

        let by_transport = |f: &Family<TransportLabels, Counter>| {
            [TransportLabel::udp, TransportLabel::tcp, TransportLabel::tls]
                .map(|transport| f.get_or_create(&TransportLabels { transport }).clone())
        };
        let by_direction = |f: &Family<DirectionLabels, Counter>| {
            [Direction::client_to_peer, Direction::peer_to_client]
                .map(|direction| f.get_or_create(&DirectionLabels { direction }).clone())
        };
        Metrics {
            binding: by_transport(&binding),
            turn_requests: TurnMethod::ALL
                .iter()
                .map(|&method| {
                    [ResultLabel::success, ResultLabel::error]
                        .map(|result| requests.get_or_create(&RequestLabels { method, result }).clone())
                })
                .collect(),
            auth_failures: AuthFailure::ALL
                .iter()
                .map(|&reason| auth.get_or_create(&AuthLabels { reason }).clone())
                .collect(),
            allocations_active: [TransportLabel::udp, TransportLabel::tcp, TransportLabel::tls]
                .map(|transport| active.get_or_create(&TransportLabels { transport }).clone()),
            allocations_total: by_transport(&total),
            permissions_active,
            channels_active,
            relay_packets: by_direction(&packets),
            relay_bytes: by_direction(&bytes),
            framing: Framing::ALL
                .iter()
                .map(|&f| framing.get_or_create(&FramingLabels { framing: f }).clone())
                .collect(),
            dropped: DropReason::ALL
                .iter()
                .map(|&reason| dropped.get_or_create(&DropLabels { reason }).clone())
                .collect(),
            allocation_duration,
            connections_refused,
            registry: r,
        }
    }

    pub fn binding_request(&self, t: Transport) {
        self.binding[ti(t)].inc();
    }

    pub fn binding_requests(&self, t: Transport) -> u64 {
        self.binding[ti(t)].get()
    }

    pub fn turn_request(&self, method: TurnMethod, success: bool) {
        self.turn_requests[method as usize][usize::from(!success)].inc();
    }

    pub fn turn_requests(&self, method: TurnMethod, success: bool) -> u64 {
        self.turn_requests[method as usize][usize::from(!success)].get()
    }

    pub fn auth_failure(&self, reason: AuthFailure) {
        self.auth_failures[reason as usize].inc();
    }

    pub fn auth_failures(&self, reason: AuthFailure) -> u64 {
        self.auth_failures[reason as usize].get()
    }

    pub fn allocation_opened(&self, t: Transport) {
        self.allocations_active[ti(t)].inc();
        self.allocations_total[ti(t)].inc();
    }

    pub fn allocation_closed(&self, t: Transport, lived: std::time::Duration) {
        self.allocations_active[ti(t)].dec();
        self.allocation_duration.observe(lived.as_secs_f64());
    }

    pub fn allocations_active(&self, t: Transport) -> i64 {
        self.allocations_active[ti(t)].get()
    }

    pub fn allocations_total(&self, t: Transport) -> u64 {
        self.allocations_total[ti(t)].get()
    }

    /// Adds `delta` (possibly negative) to the permissions gauge.
    pub fn permissions_delta(&self, delta: i64) {
        self.permissions_active.inc_by(delta);
    }

    pub fn permissions_active(&self) -> i64 {
        self.permissions_active.get()
    }

    /// Adds `delta` (possibly negative) to the channels gauge.
    pub fn channels_delta(&self, delta: i64) {
        self.channels_active.inc_by(delta);
    }

    pub fn channels_active(&self) -> i64 {
        self.channels_active.get()
    }

    pub fn relayed(&self, d: Direction, bytes: usize) {
        self.relay_packets[d as usize].inc();
        self.relay_bytes[d as usize].inc_by(bytes as u64);
    }

    /// Counts one relayed packet by its client-side framing.
    pub fn framed(&self, f: Framing) {
        self.framing[f as usize].inc();
    }

    pub fn framing(&self, f: Framing) -> u64 {
        self.framing[f as usize].get()
    }

    pub fn relay_packets(&self, d: Direction) -> u64 {
        self.relay_packets[d as usize].get()
    }

    pub fn relay_bytes(&self, d: Direction) -> u64 {
        self.relay_bytes[d as usize].get()
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    pub fn dropped_packets(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.get()
    }

    /// Every metric in the OpenMetrics text format (what Prometheus asks for).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Every metric in the classic Prometheus text format (0.0.4), for clients that do not
    /// ask for OpenMetrics: counter families are named with their `_total` suffix, and there
    /// is no `# EOF` marker.
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// Rewrites OpenMetrics text into the classic Prometheus text format.
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.splitn(4, ' ').nth(3).unwrap_or("");
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
