//! The config file's schema as serde reads it: every key, with its place in the file
//! (`Spanned`), unknown keys rejected. `validate.rs` turns it into a [`super::Config`].

use serde::Deserialize;
use toml::Spanned;

use super::{LogFormat, Protocol, XdpMode};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) threads: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) software: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) realm: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) server_name: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) listen: Option<Spanned<Vec<RawListen>>>,
    #[serde(default)]
    pub(super) relay: Option<RawRelay>,
    #[serde(default)]
    pub(super) auth: Option<RawAuth>,
    #[serde(default)]
    pub(super) peers: Option<RawPeers>,
    #[serde(default)]
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(super) tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    pub(super) shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) limits: Option<RawLimits>,
    #[serde(default)]
    pub(super) nat_discovery: Option<RawNatDiscovery>,
    #[serde(default)]
    pub(super) cluster: Option<Spanned<RawCluster>>,
    #[serde(default)]
    pub(super) xdp: Option<RawXdp>,
    #[serde(default)]
    pub(super) log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) redis: Spanned<String>,
    #[serde(default)]
    pub(super) node: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) advertise: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) tls_ca: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) lease_ttl: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) usage_retention: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXdp {
    #[serde(default)]
    pub(super) interfaces: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) mode: Option<XdpMode>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNatDiscovery {
    #[serde(default)]
    pub(super) alternate_addresses: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) alternate_port: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default)]
    pub(super) unauthenticated_rate: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) certificate: Spanned<String>,
    pub(super) private_key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(default)]
    pub(super) socket: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    #[serde(default)]
    pub(super) listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) token: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    #[serde(default)]
    pub(super) addresses: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) external: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub(super) ports: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) max_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) permission_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) channel_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) max_allocations: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) max_allocations_per_user: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) legacy_channel_numbers: Option<bool>,
    #[serde(default)]
    pub(super) max_tcp_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) bandwidth_per_allocation: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) bandwidth_total: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    #[serde(default)]
    pub(super) users_file: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) secrets: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) users: Option<Vec<RawUser>>,
    #[serde(default)]
    pub(super) nonce_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) password_algorithms: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    pub(super) name: Spanned<String>,
    pub(super) password: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeers {
    #[serde(default)]
    pub(super) allow: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) address: Spanned<String>,
    #[serde(default)]
    pub(super) protocols: Option<Spanned<Vec<Protocol>>>,
    #[serde(default)]
    pub(super) max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) max_connections_per_ip: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) idle_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) proxy_protocol: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) proxy_from: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(default)]
    pub(super) level: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) format: Option<LogFormat>,
}
