//! The cluster: turnd nodes that share one Redis (`[cluster]`). Driver-side only. The engine
//! never waits on Redis: it reads in-memory views that this module keeps fresh (the users'
//! keys, other nodes' allocation counts in [`crate::server::Quota`]).
//!
//! What lives in Redis, all under `turnd:`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `turnd:users` | hash | `["realm","name"]` → `md5hex:sha256hex`: long-term keys, never passwords |
//! | `turnd:users:version` | string | bumped by every change to `turnd:users` |
//! | `turnd:nonce_key` | string | the nonce key every node uses (hex), made by the first node |
//! | `turnd:events` | channel | `users` when the users changed |
//! | `turnd:nodes` | sorted set | node name → its last heartbeat (unix ms) |
//! | `turnd:node:NAME` | string | the node's [`NodeState`] as JSON; expires after `lease_ttl` |
//! | `turnd:leases:NAME` | hash | user → allocations the node holds; expires after `lease_ttl` |
//! | `turnd:commands` | channel | a [`command::Command`] for every node (sessions, disconnect) |
//! | `turnd:answers:ID` | list | each node's [`command::Answer`] to command ID; kept 30 s |
//! | `turnd:usage:HOUR:MEASURE` | hash | account → usage in that hour ([`usage`]) |

pub mod command;
pub mod node;
pub mod usage;
pub mod users;

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{redact_url, ClusterConfig};

pub const USERS: &str = "turnd:users";
pub const USERS_VERSION: &str = "turnd:users:version";
pub const EVENTS: &str = "turnd:events";
pub const NODES: &str = "turnd:nodes";
pub const COMMANDS: &str = "turnd:commands";
pub const NONCE_KEY: &str = "turnd:nonce_key";

pub fn node_key(node: &str) -> String {
    format!("turnd:node:{node}")
}

pub fn leases_key(node: &str) -> String {
    format!("turnd:leases:{node}")
}

/// How long one Redis command may take before the node gives up on it (and on the
/// connection): a stopped Redis must not hold anything up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// What a node publishes with each heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeState {
    pub node: String,
    /// Where other nodes may send clients.
    pub advertise: Vec<SocketAddr>,
    pub allocations: u32,
    pub max_allocations: u32,
    /// Relayed bytes per second, both directions, over the last heartbeat.
    pub relay_bytes_per_s: u64,
    pub draining: bool,
    /// The port of its TLS listener, where TLS clients are sent (same IPs as `advertise`).
    #[serde(default)]
    pub tls_port: Option<u16>,
    /// Its DNS name (`server_name`, else its certificate's): ALTERNATE-DOMAIN for TLS.
    #[serde(default)]
    pub server_name: Option<String>,
    pub heartbeat_unix_ms: u64,
    pub version: String,
}

impl NodeState {
    /// Whether a node may be sent new clients: live, not draining, below max_allocations.
    pub fn takes_clients(&self) -> bool {
        !self.draining && self.allocations < self.max_allocations && !self.advertise.is_empty()
    }

    /// Share of its allocation capacity in use: what "least loaded" compares.
    pub fn load(&self) -> f64 {
        f64::from(self.allocations) / f64::from(self.max_allocations.max(1))
    }
}

/// The nodes new clients may be sent to, least loaded first, this node left out.
pub fn alternates<'a>(live: impl Iterator<Item = &'a NodeState>, me: &str) -> Vec<crate::server::Alternate> {
    let mut candidates: Vec<&NodeState> = live.filter(|s| s.node != me && s.takes_clients()).collect();
    candidates.sort_by(|a, b| {
        a.load()
            .total_cmp(&b.load())
            .then(a.relay_bytes_per_s.cmp(&b.relay_bytes_per_s))
    });
    candidates
        .into_iter()
        .flat_map(|s| {
            s.advertise.iter().map(|a| crate::server::Alternate {
                address: *a,
                tls_port: s.tls_port,
                domain: s.server_name.clone(),
            })
        })
        .collect()
}

/// A Redis error, said the way an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("Redis {url}: no answer within {}s", COMMAND_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("cluster.tls_ca {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
}

/// A client for the cluster's Redis: the URL's TLS and credentials, and our private CA.
pub struct Store {
    client: redis::Client,
    /// The URL without its password, for messages.
    pub url: String,
}

impl Store {
    pub fn new(config: &ClusterConfig) -> Result<Store, ClusterError> {
        let url = redact_url(&config.redis);
        let redis_err = |source| ClusterError::Redis {
            url: url.clone(),
            source,
        };
        // redis' TLS uses the process's rustls provider: ours is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &config.tls_ca {
            None => redis::Client::open(config.redis.as_str()).map_err(redis_err)?,
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|source| ClusterError::Ca {
                    path: path.display().to_string(),
                    source,
                })?;
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                redis::Client::build_with_tls(config.redis.as_str(), certs).map_err(redis_err)?
            }
        };
        Ok(Store { client, url })
    }

    /// A new connection, with every command bounded by [`COMMAND_TIMEOUT`].
    pub async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.err(e))
    }

    /// A connection that receives what is published on `channels`.
    pub async fn subscribe(&self, channels: &[&str]) -> Result<redis::aio::PubSub, ClusterError> {
        let mut p = tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.err(e))?;
        tokio::time::timeout(COMMAND_TIMEOUT, p.subscribe(channels))
            .await
            .map_err(|_| self.timeout())?
            .map_err(|e| self.err(e))?;
        Ok(p)
    }

    pub fn err(&self, source: redis::RedisError) -> ClusterError {
        if source.is_timeout() {
            return self.timeout();
        }
        ClusterError::Redis {
            url: self.url.clone(),
            source,
        }
    }

    fn timeout(&self) -> ClusterError {
        ClusterError::Timeout { url: self.url.clone() }
    }
}

/// The cluster's nonce key: the one in Redis, or a new random one that this node puts
/// there first.
pub async fn nonce_key(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<crate::auth::NonceKey, ClusterError> {
    let mut mine = [0u8; 32];
    getrandom::fill(&mut mine).map_err(|e| ClusterError::Data(e.to_string()))?;
    let hex = crate::auth::users_file::hex(&mine);
    let (key,): (String,) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(NONCE_KEY)
        .arg(&hex)
        .arg("NX")
        .ignore()
        .get(NONCE_KEY)
        .query_async(conn)
        .await
        .map_err(|e| store.err(e))?;
    crate::auth::users_file::unhex::<32>(&key)
        .map(crate::auth::NonceKey::from_bytes)
        .ok_or_else(|| ClusterError::Data(format!("{NONCE_KEY} in Redis is not 64 hex digits")))
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    crate::sys::unix_time().as_millis() as u64
}

/// Every node with a heartbeat in Redis, live or not: the live ones with their state, the
/// others (stopped renewing, state expired) with `None`.
pub async fn nodes(
    store: &Store,
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<(String, u64, Option<NodeState>)>, ClusterError> {
    let names: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(NODES)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(conn)
        .await
        .map_err(|e| store.err(e))?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = names.iter().map(|(n, _)| node_key(n)).collect();
    let states: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(conn)
        .await
        .map_err(|e| store.err(e))?;
    Ok(names
        .into_iter()
        .zip(states)
        .map(|((name, beat), state)| {
            let state = state.and_then(|s| serde_json::from_str::<NodeState>(&s).ok());
            (name, beat, state)
        })
        .collect())
}
