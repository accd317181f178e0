//! Metric handles, registered once at start-up with fixed label values. The packet path only
//! increments atomics; label values come from small fixed enums, never from a username,
//! address or realm.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::server::Transport;

/// Why a packet was dropped without an answer (the `reason` label of
/// `turnd_dropped_packets_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DropReason {
    /// Not a well-formed STUN message: length, cookie, attribute layout.
    malformed,
    /// FINGERPRINT present but wrong.
    bad_fingerprint,
    /// A response or indication sent to the server, which only answers requests.
    unexpected_class,
    /// ChannelData for a channel that is not bound.
    channel_unbound,
    /// A stream (TCP/TLS) that is not STUN framing; the connection is closed.
    stream_garbage,
    /// A reply could not be sent (socket buffer full or the socket failed).
    send_failed,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::malformed,
        DropReason::bad_fingerprint,
        DropReason::unexpected_class,
        DropReason::channel_unbound,
        DropReason::stream_garbage,
        DropReason::send_failed,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum TransportLabel {
    udp,
    tcp,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabels {
    transport: TransportLabel,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: DropReason,
}

/// Every metric the server exports, as ready-made handles.
pub struct Metrics {
    registry: Registry,
    binding_udp: Counter,
    binding_tcp: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    connections_refused: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let binding = Family::<TransportLabels, Counter>::default();
        registry.register(
            "turnd_stun_binding_requests",
            "STUN Binding requests answered",
            binding.clone(),
        );
        let dropped_family = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "turnd_dropped_packets",
            "Packets dropped without an answer, by reason",
            dropped_family.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "turnd_tcp_connections_refused",
            "TCP connections closed at accept because the listener was at max_connections",
            connections_refused.clone(),
        );
        let t = |transport| binding.get_or_create(&TransportLabels { transport }).clone();
        let dropped = DropReason::ALL.map(|reason| dropped_family.get_or_create(&ReasonLabels { reason }).clone());
        Metrics {
            binding_udp: t(TransportLabel::udp),
            binding_tcp: t(TransportLabel::tcp),
            dropped,
            connections_refused,
            registry,
        }
    }

    /// Counts one answered Binding request.
    pub fn binding_request(&self, transport: Transport) {
        match transport {
            Transport::Udp => self.binding_udp.inc(),
            Transport::Tcp => self.binding_tcp.inc(),
        };
    }

    /// Counts one dropped packet.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].inc();
    }

    /// Counts one connection refused at the per-listener cap.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Current value of `turnd_stun_binding_requests_total{transport}`.
    pub fn binding_requests(&self, transport: Transport) -> u64 {
        match transport {
            Transport::Udp => self.binding_udp.get(),
            Transport::Tcp => self.binding_tcp.get(),
        }
    }

    /// Current value of `turnd_dropped_packets_total{reason}`.
    pub fn dropped_packets(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].get()
    }

    /// Current value of `turnd_tcp_connections_refused_total`.
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.get()
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
