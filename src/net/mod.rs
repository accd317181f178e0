//! tokio drivers: bind every listener, run one shard per thread, stop on request.
//!
//! Each shard is an OS thread with a current-thread runtime. It owns an [`Engine`] and its
//! own sockets: with several shards every listener is bound once per shard with
//! SO_REUSEPORT, so the kernel spreads clients across shards and the packet path takes no
//! cross-shard lock. Within a shard, tasks share the engine through `Rc<RefCell<_>>` and
//! never hold the borrow across an `.await`.

pub mod batch;
mod egress;
mod shard;
mod socket;
mod tcp;
mod tcp_relay;
mod udp;
pub mod xdp;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};

pub use shard::RelaySocket;

pub mod admin;
pub mod tls;

use crate::config::{Config, Source};
use crate::metrics::Metrics;
use std::collections::HashMap;

use crate::server::usage::Usage;
use crate::server::{Engine, EngineConfig, Epoch, FiveTuple, Output, Shared, Transport};
use crate::sys::Locked;

/// A socket that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {transport} {address}: {source}")]
pub struct BindError {
    pub transport: &'static str,
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// A listener as actually bound (the port is resolved when the config said 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub transport: Transport,
    pub address: SocketAddr,
}

/// Per-listener TCP settings shared by the shards.
#[derive(Clone)]
pub(crate) struct TcpSettings {
    pub connections: Arc<Semaphore>,
    pub idle_timeout: std::time::Duration,
    /// Present on TLS listeners.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Open connections per client IP, across shards.
    pub per_ip: Arc<PerIp>,
    /// With the PROXY protocol: the load balancers that may (and must) name the client.
    pub proxy_from: Option<Arc<Vec<ipnet::IpNet>>>,
}

/// Counts connections per client IP for one listener. Taken only at accept and close, never
/// on the packet path or across an await.
pub(crate) struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection counted in [`PerIp`]; dropping it gives the slot back.
pub(crate) struct PerIpSlot {
    owner: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    pub fn new(max: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            max,
            open: Default::default(),
        })
    }

    /// A slot for a new connection from `ip`, unless it is at the limit.
    pub fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PerIpSlot> {
        let mut open = self.open.locked();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PerIpSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for PerIpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.locked();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[derive(Default)]
struct ShardSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<(std::net::TcpListener, TcpSettings)>,
}

/// One open allocation, as `turnd sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// The node that holds it (cluster-wide listings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub user: String,
    pub client: SocketAddr,
    pub transport: String,
    pub relayed: Vec<SocketAddr>,
    pub age_s: u64,
    pub to_peer_bytes: u64,
    pub to_client_bytes: u64,
    pub to_peer_packets: u64,
    pub to_client_packets: u64,
    /// A TCP allocation's data connections (RFC 6062).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<TcpConnectionInfo>,
}

/// One data connection of a TCP allocation, as `turnd sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TcpConnectionInfo {
    pub peer: SocketAddr,
    /// "connecting", "waiting for ConnectionBind" or "bound".
    pub state: String,
    pub to_peer_bytes: u64,
    pub to_client_bytes: u64,
}

/// The other end of a ConnectionBind forwarded to the shard that holds its allocation: the
/// answer's bytes, and on success the peer socket with its shared state.
type BindReply = (Vec<u8>, Option<(std::net::TcpStream, Arc<tcp_relay::PeerConn>)>);

/// Requests the admin socket, or another shard, sends to a shard.
pub(crate) enum ShardCommand {
    /// A ConnectionBind that arrived on another shard (RFC 6062; its CONNECTION-ID names this
    /// shard).
    ConnectionBind {
        tuple: FiveTuple,
        request: Vec<u8>,
        reply: oneshot::Sender<BindReply>,
    },
    /// A data connection pair joined on another shard has ended.
    ConnectionClosed(crate::server::ConnectionId),
    Sessions {
        user: Option<String>,
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    Disconnect {
        user: String,
        reply: oneshot::Sender<usize>,
    },
    /// Usage since the last ask (with `open`, open allocations' progress too).
    TakeUsage {
        open: bool,
        reply: oneshot::Sender<Vec<(String, Usage)>>,
    },
}

/// A handle to every shard, for the admin socket and configuration reloads.
#[derive(Clone)]
pub struct Shards {
    commands: Vec<mpsc::UnboundedSender<ShardCommand>>,
    config: Arc<watch::Sender<Arc<EngineConfig>>>,
    /// The XDP program, when `[xdp]` attached it.
    fast_path: Option<Arc<xdp::FastPathMaps>>,
}

impl Shards {
    /// Every open allocation (of `user`, if given), across all shards.
    pub async fn sessions(&self, user: Option<&str>) -> Vec<SessionInfo> {
        let user = user.map(str::to_string);
        let mut out: Vec<SessionInfo> = self
            .ask_each(|reply| ShardCommand::Sessions {
                user: user.clone(),
                reply,
            })
            .await
            .into_iter()
            .flatten()
            .collect();
        out.sort_by(|a, b| (&a.user, a.client).cmp(&(&b.user, b.client)));
        out
    }

    /// Ends every allocation of `user` at once; returns how many ended.
    pub async fn disconnect(&self, user: &str) -> usize {
        let user = user.to_string();
        let each = self.ask_each(|reply| ShardCommand::Disconnect {
            user: user.clone(),
            reply,
        });
        each.await.into_iter().sum()
    }

    /// Usage by account since the last call, over every shard: ended allocations', and with
    /// `open` the open ones' progress too.
    pub async fn take_usage(&self, open: bool) -> HashMap<String, Usage> {
        let mut all: HashMap<String, Usage> = HashMap::new();
        for (account, u) in self
            .ask_each(|reply| ShardCommand::TakeUsage { open, reply })
            .await
            .into_iter()
            .flatten()
        {
            all.entry(account).or_default().add(&u);
        }
        all
    }

    /// Sends every shard the command `make` builds around a reply channel, and gathers the
    /// answers of those that are running.
    async fn ask_each<T>(&self, make: impl Fn(oneshot::Sender<T>) -> ShardCommand) -> Vec<T> {
        let mut out = Vec::with_capacity(self.commands.len());
        for c in &self.commands {
            let (reply, rx) = oneshot::channel();
            if c.send(make(reply)).is_ok() {
                out.extend(rx.await.ok());
            }
        }
        out
    }

    /// Applies a new engine configuration to new requests on every shard.
    pub fn set_engine_config(&self, config: Arc<EngineConfig>) {
        let mut config = config;
        // Whether the program is attached is the driver's to say, not the file's.
        if config.fast_path != self.fast_path.is_some() {
            Arc::make_mut(&mut config).fast_path = self.fast_path.is_some();
        }
        self.config.send_replace(config);
    }

    /// The attached XDP program, if any.
    pub fn fast_path(&self) -> Option<&Arc<xdp::FastPathMaps>> {
        self.fast_path.as_ref()
    }
}

/// The running server: its bound listeners and its shard threads.
pub struct Server {
    bound: Vec<Bound>,
    skipped: Vec<BindError>,
    stop: watch::Sender<bool>,
    shards: Vec<JoinHandle<()>>,
    handles: Shards,
}

impl Server {
    /// Binds every listener (so that errors surface before the server reports ready), then
    /// starts the shards.
    pub fn start(
        config: &Config,
        engine: EngineConfig,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
        tls: Option<&Arc<tls::CertStore>>,
    ) -> Result<Server, BindError> {
        let unnamed = SocketAddr::from(([0, 0, 0, 0], 0));
        let acceptor = tls.map(|t| t.acceptor()).transpose();
        let acceptor = acceptor.map_err(|e| bind_err("tls", unnamed, io::Error::other(e)))?;
        let shards = config.shard_count();
        let reuse_port = shards > 1;
        let mut sockets: Vec<ShardSockets> = (0..shards).map(|_| ShardSockets::default()).collect();
        let mut bound = Vec::new();
        let mut skipped = Vec::new();

        for l in &config.listeners() {
            // A listener's sockets join the shards only once all of them are bound, so a
            // listener that fails leaves nothing open behind it.
            let result = (|| -> Result<_, BindError> {
                let (bind, local) = (socket::bind_udp, std::net::UdpSocket::local_addr);
                let udp = l
                    .udp
                    .then(|| bind_per_shard(l.address, ("udp", false), (shards, reuse_port), bind, local));
                let udp = udp.transpose()?;
                let tcp = if l.is_stream() {
                    let (name, tls) = match (l.tls, &acceptor) {
                        (false, _) => ("tcp", None),
                        (true, Some(a)) => ("tls", Some(a.clone())),
                        (true, None) => {
                            return Err(bind_err("tls", l.address, io::Error::other("no certificate loaded")))
                        }
                    };
                    let settings = TcpSettings {
                        connections: Arc::new(Semaphore::new(l.max_connections)),
                        idle_timeout: l.idle_timeout,
                        tls,
                        per_ip: PerIp::new(l.max_connections_per_ip),
                        proxy_from: l.proxy_from.clone().map(Arc::new),
                    };
                    let (bind, local) = (socket::bind_tcp, std::net::TcpListener::local_addr);
                    let all = bind_per_shard(l.address, (name, true), (shards, reuse_port), bind, local)?;
                    Some((all, settings))
                } else {
                    None
                };
                Ok((udp, tcp))
            })();
            match result {
                Ok((udp, tcp)) => {
                    if let Some((address, all)) = udp {
                        bound.push(Bound {
                            transport: Transport::Udp,
                            address,
                        });
                        sockets.iter_mut().zip(all).for_each(|(shard, s)| shard.udp.push(s));
                    }
                    if let Some(((address, all), settings)) = tcp {
                        let transport = if l.tls { Transport::Tls } else { Transport::Tcp };
                        bound.push(Bound { transport, address });
                        for (shard, s) in sockets.iter_mut().zip(all) {
                            shard.tcp.push((s, settings.clone()));
                        }
                    }
                }
                // The embedded default listens on [::] too; a host without IPv6 still starts.
                Err(e)
                    if config.source == Source::Embedded
                        && l.address.is_ipv6()
                        && socket::is_family_unavailable(&e.source) =>
                {
                    skipped.push(e)
                }
                Err(e) => return Err(e),
            }
        }

        // The fast path: attached before the shards start, so that the first ChannelBind can
        // use it. If it cannot be attached, turnd says why and relays on sockets.
        let fast_path = if config.xdp.interfaces.is_empty() {
            None
        } else {
            match xdp::FastPathMaps::attach(&config.xdp) {
                Ok(maps) => {
                    tracing::info!(interfaces = ?config.xdp.interfaces, mode = ?config.xdp.mode, "XDP fast path attached");
                    let m = maps.clone();
                    metrics.register_fast_path(Box::new(move || m.passed()));
                    Some(maps)
                }
                Err(e) => {
                    tracing::warn!("XDP fast path off, relaying on sockets: {e}");
                    None
                }
            }
        };
        let mut engine = engine;
        engine.fast_path = fast_path.is_some();
        let (stop, stop_rx) = watch::channel(false);
        let (config_tx, config_rx) = watch::channel(Arc::new(engine));
        // Every shard can reach every other: a TCP relay's ConnectionBind may land on a shard
        // other than the one that holds its allocation.
        let (commands, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| mpsc::unbounded_channel()).unzip();
        let common = ShardCommon {
            count: shards as u32,
            config: config_rx,
            shared,
            metrics,
            clock: Epoch {
                at: std::time::Instant::now(),
                unix: crate::sys::unix_time(),
            },
            stop: stop_rx,
            siblings: Arc::new(commands.clone()),
            fast_path: fast_path.clone(),
        };
        let mut handles = Vec::with_capacity(shards);
        for (i, (s, cmd_rx)) in sockets.into_iter().zip(receivers).enumerate() {
            // Each engine's randomness comes from the OS CSPRNG, read here, once.
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| bind_err("random", unnamed, io::Error::other(e.to_string())))?;
            let common = common.clone();
            let h = std::thread::Builder::new()
                .name(format!("turnd-shard-{i}"))
                .spawn(move || run_shard(i, s, cmd_rx, seed, common))
                .map_err(|e| bind_err("thread", unnamed, e))?;
            handles.push(h);
        }
        Ok(Server {
            bound,
            skipped,
            stop,
            shards: handles,
            handles: Shards {
                commands,
                config: Arc::new(config_tx),
                fast_path,
            },
        })
    }

    /// A handle for admin requests and reloads.
    pub fn shards(&self) -> Shards {
        self.handles.clone()
    }

    /// The listeners as bound.
    pub fn bound(&self) -> &[Bound] {
        &self.bound
    }

    /// Optional listeners that were skipped (IPv6 on a host without it).
    pub fn skipped(&self) -> &[BindError] {
        &self.skipped
    }

    /// Stops every shard and waits for their threads to finish.
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.shards {
            let _ = h.join();
        }
    }
}

fn handle_command(shard: &shard::Shard, cmd: ShardCommand) {
    let now = std::time::Instant::now();
    match cmd {
        ShardCommand::Sessions { user, reply } => {
            let engine = shard.engine.borrow();
            let connections = |a: &crate::server::Allocation<shard::RelaySocket>| -> Vec<TcpConnectionInfo> {
                use std::sync::atomic::Ordering::Relaxed;
                engine
                    .connections_of_allocation(&a.tuple)
                    .map(|c| TcpConnectionInfo {
                        peer: c.peer,
                        state: match c.state {
                            crate::server::ConnectionState::Connecting => "connecting",
                            crate::server::ConnectionState::Unbound { .. } => "waiting for ConnectionBind",
                            crate::server::ConnectionState::Bound { .. } => "bound",
                        }
                        .to_string(),
                        to_peer_bytes: c.stream.0.to_peer.load(Relaxed),
                        to_client_bytes: c.stream.0.to_client.load(Relaxed),
                    })
                    .collect()
            };
            let list = engine
                .allocations()
                .filter(|a| user.as_deref().is_none_or(|u| &*a.username == u))
                .map(|a| SessionInfo {
                    node: None,
                    connections: connections(a),
                    user: a.username.to_string(),
                    client: a.tuple.client,
                    transport: a.tuple.transport.as_str().to_string(),
                    relayed: a
                        .relays
                        .iter()
                        .flatten()
                        .map(|r| r.advertised)
                        .chain(a.tcp.map(|t| t.advertised))
                        .collect(),
                    age_s: now.saturating_duration_since(a.created).as_secs(),
                    to_peer_bytes: a.traffic.to_peer_bytes,
                    to_client_bytes: a.traffic.to_client_bytes,
                    to_peer_packets: a.traffic.to_peer_packets,
                    to_client_packets: a.traffic.to_client_packets,
                })
                .collect();
            let _ = reply.send(list);
        }
        ShardCommand::ConnectionBind { tuple, request, reply } => {
            let mut engine = shard.engine.borrow_mut();
            let mut out = [0u8; 512];
            let (len, joined) = match engine.handle_client(now, &tuple, &request, &mut out) {
                Output::Joined { len, connection, .. } => (len, Some(connection)),
                Output::ToClient { len, .. } => (len, None),
                _ => (0, None),
            };
            let peer = joined.and_then(|cid| {
                let conn = engine.connection(cid).map(|c| c.stream.0.clone());
                let taken = conn.and_then(|c| c.take().map(|s| (s, c)));
                if taken.is_none() {
                    engine.handle_connection_closed(cid);
                }
                taken
            });
            shard.rearm(&mut engine);
            let _ = reply.send((out.get(..len).unwrap_or_default().to_vec(), peer));
        }
        ShardCommand::TakeUsage { open, reply } => {
            let _ = reply.send(shard.engine.borrow_mut().take_usage(now, open));
        }
        ShardCommand::ConnectionClosed(cid) => shard.engine.borrow_mut().handle_connection_closed(cid),
        ShardCommand::Disconnect { user, reply } => {
            let mut engine = shard.engine.borrow_mut();
            let n = engine.disconnect_user(now, &user);
            shard.rearm(&mut engine);
            let _ = reply.send(n);
        }
    }
}

/// With SO_REUSEPORT the kernel would let a second process of the same user bind our address
/// and take half of the clients; refuse to start instead. (Port 0 is a fresh port.)
fn shared_elsewhere(addr: SocketAddr, stream: bool) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    socket::probe_free(addr, stream).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{e}: another process already serves this address (is another turnd running?)"),
            )
        } else {
            e
        }
    })
}

/// Binds `addr` once per shard (with SO_REUSEPORT when there are several); the first bind
/// resolves port 0 for the others. Returns the address bound and the sockets.
fn bind_per_shard<S>(
    mut addr: SocketAddr,
    (name, stream): (&'static str, bool),
    (shards, reuse_port): (usize, bool),
    bind: fn(SocketAddr, bool) -> io::Result<S>,
    local: fn(&S) -> io::Result<SocketAddr>,
) -> Result<(SocketAddr, Vec<S>), BindError> {
    if reuse_port {
        shared_elsewhere(addr, stream).map_err(|e| bind_err(name, addr, e))?;
    }
    let mut all = Vec::with_capacity(shards);
    for _ in 0..shards {
        let s = bind(addr, reuse_port).map_err(|e| bind_err(name, addr, e))?;
        addr = local(&s).map_err(|e| bind_err(name, addr, e))?;
        all.push(s);
    }
    Ok((addr, all))
}

fn bind_err(transport: &'static str, address: SocketAddr, source: io::Error) -> BindError {
    BindError {
        transport,
        address,
        source,
    }
}

/// What every shard starts with.
#[derive(Clone)]
struct ShardCommon {
    count: u32,
    config: watch::Receiver<Arc<EngineConfig>>,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    clock: Epoch,
    stop: watch::Receiver<bool>,
    siblings: Arc<Vec<mpsc::UnboundedSender<ShardCommand>>>,
    fast_path: Option<Arc<xdp::FastPathMaps>>,
}

fn run_shard(
    index: usize,
    sockets: ShardSockets,
    mut commands: mpsc::UnboundedReceiver<ShardCommand>,
    seed: [u8; 32],
    common: ShardCommon,
) {
    let ShardCommon {
        count,
        mut config,
        shared,
        metrics,
        clock,
        stop,
        siblings,
        fast_path,
    } = common;
    let engine_config = config.borrow_and_update().clone();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cannot start shard runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shard = match shard::Shard::new(
            |io| {
                let mut e = Engine::new(engine_config, shared, io, clock, seed);
                metrics.register(e.stats().clone());
                e.set_shard(index as u32, count);
                e
            },
            stop.clone(),
        ) {
            Ok(shard) => {
                let _ = shard.siblings.set((index, siblings));
                if let Some(maps) = fast_path {
                    let _ = shard.fast_path.set(xdp::ShardFastPath::new(maps));
                    tokio::task::spawn_local(shard::fast_path_counts(shard.clone()));
                }
                shard
            }
            Err(e) => {
                tracing::error!(shard = index, error = %e, "cannot start shard: no epoll set for relay sockets");
                return;
            }
        };
        for s in sockets.udp {
            match udp::UdpListener::new(s) {
                Ok(l) => {
                    let i = shard.egress.add_udp(l.port.clone());
                    tokio::task::spawn_local(udp::serve(Rc::new(l), i, shard.clone()));
                }
                Err(e) => tracing::error!(shard = index, error = %e, "cannot register UDP socket"),
            }
        }
        for (l, settings) in sockets.tcp {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::task::spawn_local(tcp::serve(l, settings, shard.clone()));
                }
                Err(e) => tracing::error!(shard = index, error = %e, "cannot register TCP listener"),
            }
        }
        tokio::task::spawn_local(shard::timers(shard.clone()));
        tokio::task::spawn_local(shard::flusher(shard.clone()));
        tokio::task::spawn_local(shard::relays(shard.clone()));
        let mut stop = stop;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                changed = config.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let c = config.borrow_and_update().clone();
                    let mut engine = shard.engine.borrow_mut();
                    engine.set_config(std::time::Instant::now(), c);
                    shard.rearm(&mut engine);
                }
                Some(cmd) = commands.recv() => handle_command(&shard, cmd),
            }
        }
        // Ending every allocation drops its relay sockets (and its fast-path entries) before
        // the runtime goes away.
        let mut engine = shard.engine.borrow_mut();
        engine.end_all(std::time::Instant::now(), crate::server::EndReason::Shutdown);
        shard.rearm(&mut engine);
    });
}
