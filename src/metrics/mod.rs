//! The Prometheus exposition. The engines count into per-shard [`Stats`] that only their
//! shard writes; this module holds the registry, reads every shard's counters when it is
//! scraped and adds them up. Label values come from small fixed enums, never from a username,
//! address or realm.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::server::stats::LIFETIME_BUCKETS;
pub use crate::server::stats::{
    AuthFailure, Count, Direction, DiscoveryKind, DropReason, Framing, Labels, Level, Stats, TurnMethod,
};
use crate::sys::Locked;
use crate::types::Transport;

pub mod http;
mod process;
pub mod status;

pub use process::ProcStats;

/// The version string: crate version and git revision.
/// The version, the revision, and whether the XDP fast path is built in.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TURND_GIT_REVISION"),
    "; ",
    env!("TURND_XDP_BUILD"),
    ")"
);

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

/// Reads the XDP program's own counters: (reason, packets) for what it passed to the stack.
pub type PassedReader = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Every shard's counters, registered as the shards start.
#[derive(Default)]
struct ShardSet {
    // Taken at shard start and at scrape time, never on the packet path.
    shards: Mutex<Vec<Arc<Stats>>>,
    /// The XDP program's counters, when it is attached.
    fast_path: Mutex<Option<PassedReader>>,
}

impl std::fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardSet")
    }
}

impl ShardSet {
    fn all(&self) -> Vec<Arc<Stats>> {
        self.shards.locked().clone()
    }
}

/// Encodes the shards' counters at scrape time.
#[derive(Debug)]
struct ShardCollector(Arc<ShardSet>);

/// A counter or a level, as the exposition writes it.
trait Sample {
    const TYPE: MetricType;
    fn sample(&self) -> i128;
}

impl Sample for Count {
    const TYPE: MetricType = MetricType::Counter;
    fn sample(&self) -> i128 {
        self.get().into()
    }
}

impl Sample for Level {
    const TYPE: MetricType = MetricType::Gauge;
    fn sample(&self) -> i128 {
        self.get().into()
    }
}

/// Writes `v`, a sum over shards, wrapping as the shards' own counters do.
fn write(enc: MetricEncoder<'_>, typ: MetricType, v: i128) -> std::fmt::Result {
    match typ {
        MetricType::Counter => ConstCounter::new(v as u64).encode(enc),
        _ => ConstGauge::new(v as i64).encode(enc),
    }
}

/// One scrape: every shard's counters, added up as they are written.
struct Scrape<'a> {
    enc: DescriptorEncoder<'a>,
    shards: Vec<Arc<Stats>>,
}

impl Scrape<'_> {
    /// One unlabelled metric.
    fn one<V: Sample>(&mut self, name: &str, help: &str, f: impl Fn(&Stats) -> &V) -> std::fmt::Result {
        let v = self.shards.iter().map(|s| f(s).sample()).sum();
        write(self.enc.encode_descriptor(name, help, None, V::TYPE)?, V::TYPE, v)
    }

    /// A family labelled by `L`, one sample per label value from the array `f` picks.
    fn by<L: Labels, V: Sample>(&mut self, name: &str, help: &str, f: impl Fn(&Stats) -> &[V]) -> std::fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, V::TYPE)?;
        for (i, &value) in L::NAMES.iter().enumerate() {
            let v = self.shards.iter().filter_map(|s| f(s).get(i)).map(Sample::sample).sum();
            write(m.encode_family(&[(L::LABEL, value)])?, V::TYPE, v)?;
        }
        Ok(())
    }
}

fn sum_of(shards: &[Arc<Stats>], f: impl Fn(&Stats) -> &Count) -> u64 {
    shards.iter().map(|s| f(s).get()).fold(0, u64::wrapping_add)
}

fn level_of(shards: &[Arc<Stats>], f: impl Fn(&Stats) -> &Level) -> i64 {
    shards.iter().map(|s| f(s).get()).fold(0, i64::wrapping_add)
}

impl Collector for ShardCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut s = Scrape {
            enc,
            shards: self.0.all(),
        };
        s.by::<Transport, _>("turnd_stun_binding_requests", "STUN Binding requests answered", |s| {
            &s.binding
        })?;
        let mut m = s.enc.encode_descriptor(
            "turnd_turn_requests",
            "TURN requests answered, by method and result",
            None,
            MetricType::Counter,
        )?;
        for &method in TurnMethod::ALL {
            for (i, result) in ["success", "error"].into_iter().enumerate() {
                let labels = [("method", method.as_str()), ("result", result)];
                let v = sum_of(&s.shards, |s| &s.turn_requests[method as usize][i]);
                ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        s.by::<AuthFailure, _>("turnd_auth_failures", "Authentication failures, by reason", |s| {
            &s.auth_failures
        })?;
        let (active, opened) = (
            "Allocations open now, by client transport",
            "Allocations created, by client transport",
        );
        s.by::<Transport, _>("turnd_allocations_active", active, |s| &s.allocations_active)?;
        s.by::<Transport, _>("turnd_allocations", opened, |s| &s.allocations_opened)?;
        s.one("turnd_permissions_active", "Permissions installed now", |s| {
            &s.permissions_active
        })?;
        s.one(
            "turnd_tcp_relay_connections_active",
            "TCP relay data connections (RFC 6062) open now",
            |s| &s.tcp_connections_active,
        )?;
        s.one("turnd_channels_active", "Channels bound now", |s| &s.channels_active)?;
        s.by::<Direction, _>("turnd_relay_packets", "Packets relayed, by direction", |s| {
            &s.relay_packets
        })?;
        s.by::<Direction, _>("turnd_relay_bytes", "Application bytes relayed, by direction", |s| {
            &s.relay_bytes
        })?;
        s.by::<Framing, _>(
            "turnd_relay_framing",
            "Relayed packets by client-side framing: Send/Data indications or ChannelData",
            |s| &s.framing,
        )?;
        s.by::<DropReason, _>(
            "turnd_dropped_packets",
            "Packets dropped without an answer, by reason",
            |s| &s.dropped,
        )?;
        let mut buckets: Vec<(f64, u64)> = LIFETIME_BUCKETS
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .enumerate()
            .map(|(i, &b)| (b, sum_of(&s.shards, |s| &s.lifetimes[i])))
            .collect();
        buckets.truncate(LIFETIME_BUCKETS.len() + 1);
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = sum_of(&s.shards, |s| &s.lifetime_ms) as f64 / 1000.0;
        s.enc
            .encode_descriptor(
                "turnd_allocation_duration_seconds",
                "How long allocations lived, observed when they end",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        s.by::<DiscoveryKind, _>(
            "turnd_nat_discovery_requests",
            "RFC 5780 Binding requests, by what they ask (CHANGE-REQUEST, RESPONSE-PORT, PADDING)",
            |s| &s.discovery,
        )?;
        s.by::<Direction, _>(
            "turnd_xdp_relayed_packets",
            "Packets the XDP fast path relayed, by direction (also in turnd_relay_packets)",
            |s| &s.fast_path,
        )?;
        if let Some(read) = &*self.0.fast_path.locked() {
            let mut m = s.enc.encode_descriptor(
                "turnd_xdp_passed_packets",
                "Packets of an offloaded channel that the XDP program handed to the stack, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, v) in read() {
                ConstCounter::new(v).encode(m.encode_family(&[("reason", reason)])?)?;
            }
        }
        s.one(
            "turnd_tcp_connections_refused",
            "TCP connections closed at accept because the listener was at max_connections",
            |s| &s.connections_refused,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NodeStateLabels {
    state: &'static str,
}

/// The registry, and every shard's counters.
pub struct Metrics {
    registry: Registry,
    shards: Arc<ShardSet>,
    /// `turnd_cluster_nodes`, present with `[cluster]`.
    cluster_nodes: Option<Family<NodeStateLabels, Gauge>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let shards = Arc::new(ShardSet::default());
        r.register_collector(Box::new(ShardCollector(shards.clone())));
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
        let start_time = crate::sys::unix_time().as_secs_f64();
        r.register_collector(Box::new(process::ProcessCollector { start_time }));
        Metrics {
            registry: r,
            shards,
            cluster_nodes: None,
        }
    }

    /// The metrics of a cluster node: `turnd_cluster_nodes` besides the rest.
    pub fn for_cluster() -> Self {
        let mut m = Metrics::new();
        let family = Family::<NodeStateLabels, Gauge>::default();
        m.registry.register(
            "turnd_cluster_nodes",
            "Nodes of the cluster with a live heartbeat, this one included, by state",
            family.clone(),
        );
        m.cluster_nodes = Some(family);
        m
    }

    /// Sets `turnd_cluster_nodes` (a single node has no such metric).
    pub fn set_cluster_nodes(&self, live: usize, draining: usize) {
        if let Some(f) = &self.cluster_nodes {
            f.get_or_create(&NodeStateLabels { state: "live" }).set(live as i64);
            f.get_or_create(&NodeStateLabels { state: "draining" })
                .set(draining as i64);
        }
    }

    /// Exports the XDP program's own counters (`turnd_xdp_passed_packets`).
    pub fn register_fast_path(&self, read: PassedReader) {
        *self.shards.fast_path.locked() = Some(read);
    }

    /// Adds a shard's counters to what is exported.
    pub fn register(&self, stats: Arc<Stats>) {
        self.shards.shards.locked().push(stats);
    }

    /// Every shard's counters.
    pub fn shards(&self) -> Vec<Arc<Stats>> {
        self.shards.all()
    }

    /// A counter summed over every shard, e.g. `total(|s| &s.relay_bytes[0])`.
    pub fn total(&self, f: impl Fn(&Stats) -> &Count) -> u64 {
        sum_of(&self.shards.all(), f)
    }

    /// A level summed over every shard, e.g. `level(|s| &s.channels_active)`.
    pub fn level(&self, f: impl Fn(&Stats) -> &Level) -> i64 {
        level_of(&self.shards.all(), f)
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
