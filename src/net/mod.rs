//! tokio drivers: bind every listener, run one shard per thread, stop on request.
//!
//! Each shard is an OS thread with a current-thread runtime. It owns an [`Engine`] and its
//! own sockets: with several shards every listener is bound once per shard with
//! SO_REUSEPORT, so the kernel spreads clients across shards and the packet path takes no
//! cross-shard lock. Within a shard, tasks share the engine through `Rc<RefCell<_>>` and
//! never hold the borrow across an `.await`.

mod shard;
mod socket;
mod tcp;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{watch, Semaphore};

pub use shard::RelaySocket;

use crate::config::{Config, Source};
use crate::server::{Engine, EngineConfig, Shared, Transport, WallClock};

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
}

struct ShardSockets {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<(std::net::TcpListener, TcpSettings)>,
}

/// The running server: its bound listeners and its shard threads.
pub struct Server {
    bound: Vec<Bound>,
    skipped: Vec<BindError>,
    stop: watch::Sender<bool>,
    shards: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds every listener (so that errors surface before the server reports ready), then
    /// starts the shards.
    pub fn start(config: &Config, shared: Arc<Shared>) -> Result<Server, BindError> {
        let shards = config.shard_count();
        let reuse_port = shards > 1;
        let mut sockets: Vec<ShardSockets> = (0..shards)
            .map(|_| ShardSockets {
                udp: vec![],
                tcp: vec![],
            })
            .collect();
        let mut bound = Vec::new();
        let mut skipped = Vec::new();

        for l in &config.listen {
            // The embedded default listens on [::] too; a host without IPv6 still starts.
            let optional = config.source == Source::Embedded && l.address.is_ipv6();
            let marks: Vec<(usize, usize)> = sockets.iter().map(|s| (s.udp.len(), s.tcp.len())).collect();
            let result = (|| -> Result<Vec<Bound>, BindError> {
                let mut here = Vec::new();
                if l.udp {
                    let mut addr = l.address;
                    for shard in sockets.iter_mut() {
                        let s = socket::bind_udp(addr, reuse_port).map_err(|e| bind_err("udp", addr, e))?;
                        addr = s.local_addr().map_err(|e| bind_err("udp", addr, e))?;
                        shard.udp.push(s);
                    }
                    here.push(Bound {
                        transport: Transport::Udp,
                        address: addr,
                    });
                }
                if l.tcp {
                    let settings = TcpSettings {
                        connections: Arc::new(Semaphore::new(l.max_connections)),
                        idle_timeout: l.idle_timeout,
                    };
                    let mut addr = l.address;
                    for shard in sockets.iter_mut() {
                        let s = socket::bind_tcp(addr, reuse_port).map_err(|e| bind_err("tcp", addr, e))?;
                        addr = s.local_addr().map_err(|e| bind_err("tcp", addr, e))?;
                        shard.tcp.push((s, settings.clone()));
                    }
                    here.push(Bound {
                        transport: Transport::Tcp,
                        address: addr,
                    });
                }
                Ok(here)
            })();
            match result {
                Ok(b) => bound.extend(b),
                Err(e) if optional && socket::is_family_unavailable(&e.source) => {
                    // Close whatever this listener bound before failing.
                    for (shard, (u, t)) in sockets.iter_mut().zip(&marks) {
                        shard.udp.truncate(*u);
                        shard.tcp.truncate(*t);
                    }
                    skipped.push(e);
                }
                Err(e) => return Err(e),
            }
        }

        let (stop, stop_rx) = watch::channel(false);
        let engine_config = Arc::new(config.engine_config());
        let clock = WallClock::now();
        let mut handles = Vec::with_capacity(shards);
        for (i, s) in sockets.into_iter().enumerate() {
            let shared = shared.clone();
            let engine_config = engine_config.clone();
            let stop_rx = stop_rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("turnd-shard-{i}"))
                .spawn(move || run_shard(i, s, engine_config, shared, clock, stop_rx))
                .map_err(|e| bind_err("thread", SocketAddr::from(([0, 0, 0, 0], 0)), e))?;
            handles.push(h);
        }
        Ok(Server {
            bound,
            skipped,
            stop,
            shards: handles,
        })
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

fn bind_err(transport: &'static str, address: SocketAddr, source: io::Error) -> BindError {
    BindError {
        transport,
        address,
        source,
    }
}

fn run_shard(
    index: usize,
    sockets: ShardSockets,
    engine_config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    clock: WallClock,
    stop: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(shard = index, error = %e, "cannot start shard runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let shard = shard::Shard::new(|io| Engine::new(engine_config, shared, io, clock), stop.clone());
        for s in sockets.udp {
            match udp::UdpListener::new(s) {
                Ok(l) => {
                    let l = Rc::new(l);
                    shard.udp.borrow_mut().push(l.clone());
                    tokio::task::spawn_local(udp::serve(l, shard.clone()));
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
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        // Ending every allocation drops its relay sockets before the runtime goes away.
        let now = std::time::Instant::now();
        let users: Vec<String> = shard
            .engine
            .borrow()
            .allocations()
            .map(|a| a.username.to_string())
            .collect();
        for u in users {
            shard.engine.borrow_mut().disconnect_user(now, &u);
        }
    });
}
