//! A running node's side of the cluster: once a second it renews its heartbeat and its quota
//! leases, picks up changed users, and reads the other nodes' leases into the quota. Nothing
//! here is on a request's path: when Redis is slow or gone, the node goes on serving on what
//! it last knew, says so once, and catches up when Redis is back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::{watch, Notify};

use super::{command, leases_key, node_key, unix_ms, users, ClusterError, NodeState, Store, COMMANDS, EVENTS, NODES};
use crate::auth::users_file::UserKeys;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::server::Shared;

/// How often a node renews its heartbeat and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// Nodes whose heartbeat is older than this many lease lifetimes leave `turnd cluster status`.
const FORGET_AFTER_TTLS: u32 = 10;

/// What the node service reads from the rest of the process.
pub struct NodeContext {
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    /// Its `draining` flag is what the heartbeat reports.
    pub health: Arc<crate::metrics::http::Health>,
    pub max_allocations: u32,
    /// This node's TLS port and DNS name, published for redirects of TLS clients.
    pub tls_port: Option<u16>,
    pub server_name: Option<String>,
    /// Where the users read from Redis go (the serve loop merges them into the credentials).
    pub users: watch::Sender<Option<UserKeys>>,
    /// The shards, for commands from other nodes (sessions, disconnect).
    pub shards: crate::net::Shards,
}

/// The node's view of Redis, kept between heartbeats.
struct Node {
    config: ClusterConfig,
    store: Store,
    cx: NodeContext,
    conn: Option<MultiplexedConnection>,
    users_version: Option<u64>,
    /// Since when Redis has not answered (None: it answers).
    down_since: Option<Instant>,
    /// Other nodes' leases are forgotten once (local counts only).
    forgot_leases: bool,
    /// The cluster's nonce key is in force.
    shared_nonce_key: bool,
    last_relayed: (Instant, u64),
}

/// Runs the node service until the process ends.
pub async fn run(config: ClusterConfig, store: Store, cx: NodeContext) {
    let changed = Arc::new(Notify::new());
    tokio::spawn(listen(
        Store::new(&config).ok().map(Arc::new),
        config.node.clone(),
        cx.shards.clone(),
        changed.clone(),
    ));
    let relayed = relayed(&cx.metrics);
    let mut node = Node {
        config,
        store,
        cx,
        conn: None,
        users_version: None,
        down_since: None,
        forgot_leases: false,
        shared_nonce_key: false,
        last_relayed: (Instant::now(), relayed),
    };
    tokio::spawn(account(
        Store::new(&node.config).ok(),
        node.cx.shards.clone(),
        node.config.usage_retention,
    ));
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let users_only = tokio::select! {
            _ = tick.tick() => false,
            _ = changed.notified() => true,
        };
        let result = match node.connection().await {
            Ok(mut conn) if users_only => node.sync_users(&mut conn).await,
            Ok(mut conn) => node.beat(&mut conn).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                if node.down_since.take().is_some() {
                    tracing::info!(redis = %node.store.url, "Redis answers again; cluster state caught up");
                }
                node.forgot_leases = false;
            }
            Err(e) => node.failed(e),
        }
    }
}

fn relayed(metrics: &Metrics) -> u64 {
    metrics
        .total(|s| &s.relay_bytes[0])
        .wrapping_add(metrics.total(|s| &s.relay_bytes[1]))
}

impl Node {
    async fn connection(&mut self) -> Result<MultiplexedConnection, ClusterError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = self.store.connect().await?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    fn failed(&mut self, e: ClusterError) {
        self.conn = None;
        let now = Instant::now();
        match self.down_since {
            None => {
                self.down_since = Some(now);
                tracing::error!(
                    "cluster: {e}; serving on, with the users and quotas last read, and retrying every {}s",
                    HEARTBEAT.as_secs()
                );
            }
            Some(since) if !self.forgot_leases && now.duration_since(since) >= self.config.lease_ttl => {
                // Other nodes' counts are older than their leases: count only our own, and
                // send nobody to nodes that may be gone.
                self.cx.shared.quota.set_elsewhere(HashMap::new());
                self.cx.shared.set_alternates(Vec::new());
                self.forgot_leases = true;
                tracing::warn!(
                    "cluster: Redis unreachable for {}s; max_allocations_per_user now counts this node's allocations only",
                    since.elapsed().as_secs()
                );
            }
            Some(_) => {}
        }
    }

    /// Reads the users again if their version moved.
    async fn sync_users(&mut self, conn: &mut MultiplexedConnection) -> Result<(), ClusterError> {
        let version = users::version(&self.store, conn).await?;
        if self.users_version == Some(version) {
            return Ok(());
        }
        let (file, version, bad) = users::load(&self.store, conn).await?;
        if bad > 0 {
            tracing::warn!(entries = bad, "cluster: malformed entries in {} skipped", super::USERS);
        }
        let keys = file.keys();
        tracing::info!(users = keys.len(), version, "cluster users loaded");
        self.users_version = Some(version);
        self.cx.users.send_replace(Some(keys));
        Ok(())
    }

    /// The heartbeat: publish our state and leases, read the users and the others' leases.
    async fn beat(&mut self, conn: &mut MultiplexedConnection) -> Result<(), ClusterError> {
        let now_ms = unix_ms();
        let ttl_ms = self.config.lease_ttl.as_millis() as u64;
        let me = self.config.node.clone();
        let relayed_now = relayed(&self.cx.metrics);
        let (at, before) = self.last_relayed;
        let secs = at.elapsed().as_secs_f64().max(0.001);
        self.last_relayed = (Instant::now(), relayed_now);
        let state = NodeState {
            node: me.clone(),
            advertise: self.config.advertise.clone(),
            allocations: self.cx.shared.quota.total(),
            max_allocations: self.cx.max_allocations,
            relay_bytes_per_s: (relayed_now.wrapping_sub(before) as f64 / secs) as u64,
            draining: self.cx.health.draining.load(Ordering::Relaxed),
            tls_port: self.cx.tls_port,
            server_name: self.cx.server_name.clone(),
            heartbeat_unix_ms: now_ms,
            version: crate::metrics::VERSION.to_string(),
        };
        let json = serde_json::to_string(&state).map_err(|e| ClusterError::Data(e.to_string()))?;
        let leases = self.cx.shared.quota.per_user();
        let mut p = redis::pipe();
        p.atomic()
            .cmd("SET")
            .arg(node_key(&me))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .zadd(NODES, &me, now_ms)
            .ignore()
            .zrembyscore(
                NODES,
                "-inf",
                now_ms.saturating_sub(ttl_ms * u64::from(FORGET_AFTER_TTLS)),
            )
            .ignore()
            .del(leases_key(&me))
            .ignore();
        if !leases.is_empty() {
            p.hset_multiple(leases_key(&me), &leases).ignore();
            p.pexpire(leases_key(&me), ttl_ms as i64).ignore();
        }
        p.query_async::<()>(conn).await.map_err(|e| self.store.err(e))?;

        self.sync_users(conn).await?;
        if !self.shared_nonce_key {
            self.cx.shared.set_nonce_key(super::nonce_key(&self.store, conn).await?);
            self.shared_nonce_key = true;
        }

        let nodes = super::nodes(&self.store, conn).await?;
        let live: Vec<&NodeState> = nodes.iter().filter_map(|(_, _, s)| s.as_ref()).collect();
        let draining = live.iter().filter(|s| s.draining).count();
        self.cx.metrics.set_cluster_nodes(live.len() - draining, draining);
        self.cx
            .shared
            .set_alternates(super::alternates(live.iter().copied(), &me));
        let mut elsewhere: HashMap<Box<str>, u32> = HashMap::new();
        for s in live.iter().filter(|s| s.node != me) {
            let held: Vec<(String, u32)> = redis::cmd("HGETALL")
                .arg(leases_key(&s.node))
                .query_async(conn)
                .await
                .map_err(|e| self.store.err(e))?;
            for (user, n) in held {
                *elsewhere.entry(user.into()).or_insert(0) += n;
            }
        }
        self.cx.shared.quota.set_elsewhere(elsewhere);
        Ok(())
    }
}

/// Wakes the node when the users change, for speed (the version poll in each heartbeat
/// catches anything missed while this connection was down), and carries out commands sent
/// to every node.
async fn listen(store: Option<Arc<Store>>, node: String, shards: crate::net::Shards, changed: Arc<Notify>) {
    use futures_util::StreamExt;
    let Some(store) = store else { return };
    loop {
        if let Ok(p) = store.subscribe(&[EVENTS, COMMANDS]).await {
            let mut messages = p.into_on_message();
            while let Some(m) = messages.next().await {
                let Ok(text) = m.get_payload::<String>() else { continue };
                if m.get_channel_name() == EVENTS {
                    if text == "users" {
                        changed.notify_one();
                    }
                    continue;
                }
                match serde_json::from_str::<command::Command>(&text) {
                    Ok(c) => {
                        let (store, node, shards) = (store.clone(), node.clone(), shards.clone());
                        tokio::spawn(async move { command::answer(&store, &node, &shards, c).await });
                    }
                    Err(e) => tracing::warn!("cluster: unreadable command on {COMMANDS}: {e}"),
                }
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Usage accounting: every second what ended allocations used, every [`usage::FLUSH_OPEN`]
/// the open ones' progress, added to Redis. While Redis is away it is kept here and added
/// when Redis is back (a crash loses what was not added yet).
async fn account(store: Option<Store>, shards: crate::net::Shards, retention: Duration) {
    let Some(store) = store else { return };
    let mut pending: HashMap<String, crate::server::usage::Usage> = HashMap::new();
    let mut tick = tokio::time::interval(super::usage::FLUSH_ENDED);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = (super::usage::FLUSH_OPEN.as_secs() / super::usage::FLUSH_ENDED.as_secs()).max(1);
    let mut conn: Option<MultiplexedConnection> = None;
    for n in 0u64.. {
        tick.tick().await;
        for (a, u) in shards.take_usage(n % every == 0).await {
            pending.entry(a).or_default().add(&u);
        }
        if let Err(e) = flush(&store, &mut conn, &pending, retention).await {
            conn = None;
            tracing::debug!("cluster: usage not added yet ({} accounts kept): {e}", pending.len());
            continue;
        }
        pending.clear();
    }
}

/// Adds `pending` to Redis (nothing to do when it is empty).
pub async fn flush(
    store: &Store,
    conn: &mut Option<MultiplexedConnection>,
    pending: &HashMap<String, crate::server::usage::Usage>,
    retention: Duration,
) -> Result<(), ClusterError> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut c = match conn {
        Some(c) => c.clone(),
        None => store.connect().await?,
    };
    *conn = Some(c.clone());
    super::usage::add(store, &mut c, pending, unix_ms() / 1000, retention).await
}

/// On a clean stop: leave the cluster at once instead of when the leases expire.
pub async fn leave(config: &ClusterConfig, store: &Store) {
    let Ok(mut conn) = store.connect().await else { return };
    let _ = redis::pipe()
        .atomic()
        .del(node_key(&config.node))
        .del(leases_key(&config.node))
        .zrem(NODES, &config.node)
        .query_async::<()>(&mut conn)
        .await;
}
