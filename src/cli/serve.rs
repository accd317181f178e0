//! `turnd serve`: start everything, then watch the users file, reload on SIGHUP, and stop on
//! SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::auth::users_file::{UserKeys, UsersFile};
use crate::auth::{CredentialSource, Credentials, NonceKey, RestSecrets, StaticUsers};
use crate::config::{Config, LogFormat, Source};
use crate::metrics::http::Health;
use crate::metrics::Metrics;
use crate::net::tls::CertStore;
use crate::net::{Server, Shards};
use crate::server::{EngineConfig, PeerPolicy, Shared};

/// The housekeeping tick: drain progress every tick, files every few.
const TICK: Duration = Duration::from_millis(100);
/// The users file and the certificate are checked every this many ticks (changes to users
/// apply within 2 s).
const FILE_CHECK_TICKS: u32 = 5;

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// What the engine needs from the config.
pub fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        software: config.software.clone(),
        realm: config.realm.clone(),
        relay_addresses: config.relay.addresses.clone(),
        relay_external: config.relay.external.clone(),
        relay_ports: config.relay.ports,
        max_lifetime: config.relay.max_lifetime,
        permission_lifetime: config.relay.permission_lifetime,
        channel_lifetime: config.relay.channel_lifetime,
        nonce_lifetime: config.auth.nonce_lifetime,
        max_allocations_per_user: config.relay.max_allocations_per_user,
        max_allocations: config.relay.max_allocations,
        peers: PeerPolicy::new(config.peers.allow.clone()),
        max_channel: if config.relay.legacy_channel_numbers {
            crate::proto::ChannelNumber::RFC5766_MAX
        } else {
            crate::proto::ChannelNumber::RFC8656_MAX
        },
        draining: false,
        password_algorithms: config.auth.sha256,
        unauthenticated_rate: config.limits.unauthenticated_rate,
        bandwidth_per_allocation: config.relay.bandwidth_per_allocation,
        bandwidth_total: config.relay.bandwidth_total,
        max_tcp_connections: config.relay.max_tcp_connections,
        discovery: config.discovery().into_iter().map(|(_, quad)| quad).collect(),
        account_usage: config.cluster.is_some(),
        fast_path: false,
    }
}

/// The credential sources this config names, with the users file's keys.
pub fn credentials_with(config: &Config, file_users: UserKeys) -> Credentials {
    Credentials {
        users: StaticUsers::new(
            &config.realm,
            config
                .auth
                .users
                .iter()
                .map(|u| (u.name.to_string(), u.password.clone())),
        ),
        secrets: RestSecrets::new(config.auth.secrets.iter().cloned()),
        file_users,
    }
}

/// The credential sources this config names, reading the users file now (an unreadable
/// file contributes no users).
pub fn credentials(config: &Config) -> Credentials {
    let file = UsersFile::load(&config.auth.users_file).unwrap_or_default();
    credentials_with(config, file.keys())
}

/// Identifies a version of the users file on disk.
type Stamp = Option<(std::time::SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The configuration in force and the last good users file, applied to the running server.
struct Live {
    config: Config,
    file_users: UserKeys,
    /// The cluster's users, as last read from Redis.
    cluster_users: UserKeys,
    /// The status page's own TURN REST secret, when there is no configured one to mint its
    /// self-test credentials with: it verifies only what the page minted.
    page_secret: Option<String>,
    stamp: Stamp,
    certs: Option<Arc<CertStore>>,
    draining: bool,
}

impl Live {
    fn new(config: Config) -> Live {
        let mut live = Live {
            config,
            file_users: UserKeys::default(),
            cluster_users: UserKeys::default(),
            page_secret: None,
            stamp: None,
            certs: None,
            draining: false,
        };
        live.read_users_file();
        live
    }

    /// Re-reads the users file if it changed; returns true when the set of users changed.
    fn read_users_file(&mut self) -> bool {
        let path = &self.config.auth.users_file;
        let now = stamp(path);
        if now == self.stamp && self.stamp.is_some() {
            return false;
        }
        self.stamp = now;
        match UsersFile::load(path) {
            Ok(f) => {
                let keys = f.keys();
                let changed = keys != self.file_users;
                if changed {
                    tracing::info!(users = keys.len(), file = %path.display(), "users file loaded");
                }
                self.file_users = keys;
                changed
            }
            Err(e) => {
                tracing::warn!(
                    "users file unusable, keeping the last good set of {} users: {e}",
                    self.file_users.len()
                );
                false
            }
        }
    }

    /// Picks up a renewed certificate; a broken one is logged and the old one stays.
    fn check_certificate(&self, force: bool) {
        let (Some(store), Some(paths)) = (&self.certs, &self.config.tls) else {
            return;
        };
        match store.reload(paths, force) {
            Ok(true) => tracing::info!(certificate = %paths.certificate.display(), "TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!("TLS certificate reload failed, the old certificate stays in force: {e}"),
        }
    }

    fn engine_config(&self) -> Arc<crate::server::EngineConfig> {
        let mut c = engine_config(&self.config);
        c.draining = self.draining;
        Arc::new(c)
    }

    fn credentials(&self) -> Credentials {
        let mut users = self.file_users.clone();
        users.extend(&self.cluster_users);
        let mut c = credentials_with(&self.config, users);
        if let Some(p) = &self.page_secret {
            c.secrets = RestSecrets::new(self.config.auth.secrets.iter().cloned().chain([p.clone()]));
        }
        c
    }

    fn apply_credentials(&self, shared: &Shared) {
        shared.set_credentials(Arc::new(self.credentials()));
    }

    /// SIGHUP: reload the config file. A config that does not validate changes nothing.
    fn reload(&mut self, shared: &Shared, shards: &Shards) {
        let Source::File(path) = self.config.source.clone() else {
            tracing::warn!("SIGHUP: running on the embedded default config; there is no file to reload");
            return;
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("config reload failed, the old config stays in force: {e}");
                return;
            }
        };
        let old = &self.config;
        let restart: Vec<&str> = [
            ("listen", new.listen != old.listen),
            ("threads", new.threads != old.threads),
            ("metrics.listen", new.metrics.listen != old.metrics.listen),
            ("admin.socket", new.admin.socket != old.admin.socket),
            ("nat_discovery", new.nat_discovery != old.nat_discovery),
            ("log", new.log != old.log),
            ("tls", new.tls.is_some() != old.tls.is_some()),
            ("cluster", new.cluster != old.cluster),
            ("xdp", new.xdp != old.xdp),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "config reloaded, but these keys only take effect after a restart");
        }
        let mut new = new;
        // The engine's discovery addresses follow the sockets that are bound, not the file.
        new.listen = std::mem::take(&mut self.config.listen);
        new.nat_discovery = self.config.nat_discovery.clone();
        self.config = new;
        self.stamp = None;
        self.read_users_file();
        // The engine config first: a client that sees the new credentials sees the new
        // policy too, as far as one shard's task order allows.
        shards.set_engine_config(self.engine_config());
        self.apply_credentials(shared);
        self.check_certificate(true);
        tracing::info!(config = %path.display(), "config reloaded");
    }
}

/// SIGTERM, SIGINT and SIGHUP, registered before anything is announced.
struct Signals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

enum Sig {
    Term,
    Int,
    Hup,
}

async fn recv(s: &mut Option<Signal>) {
    match s.as_mut() {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

impl Signals {
    fn install() -> Signals {
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = recv(&mut self.term) => Sig::Term,
            _ = recv(&mut self.int) => Sig::Int,
            _ = recv(&mut self.hup) => Sig::Hup,
        }
    }
}

/// The DNS name clients use: `server_name`, else the certificate's first DNS name.
fn config_server_name(config: &Config) -> Option<String> {
    config.server_name.clone().or_else(|| {
        let tls = config.tls.as_ref()?;
        crate::net::tls::first_dns_name(&tls.certificate).ok().flatten()
    })
}

/// Binds the metrics listener before the server reports ready, so a taken port is a start
/// error.
fn bind_http(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on http {addr} (metrics.listen): {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot listen on http {addr}: {e}"))?;
    Ok(l)
}

/// Reports a start-up error once: in the log when the log shows errors, else on stderr.
fn fatal(e: impl std::fmt::Display) -> ExitCode {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{e}");
    } else {
        eprintln!("turnd: {e}");
    }
    ExitCode::from(1)
}

pub fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnd: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Signal handlers go in before anything is announced, so that a signal arriving right
    // after "ready" is handled, not fatal.
    let mut signals = {
        let _enter = rt.enter();
        Signals::install()
    };
    let metrics = Arc::new(match config.cluster {
        Some(_) => Metrics::for_cluster(),
        None => Metrics::new(),
    });
    let cluster = match config
        .cluster
        .as_ref()
        .map(|c| crate::cluster::Store::new(c).map(|s| (c.clone(), s)))
    {
        Some(Err(e)) => return fatal(e),
        Some(Ok(c)) => Some(c),
        None => None,
    };
    let health = Arc::new(Health::default());
    let metrics_listener = match config.metrics.listen.map(bind_http).transpose() {
        Ok(l) => l,
        Err(e) => return fatal(e),
    };
    let nonce_key = match NonceKey::random() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("turnd: cannot read the OS random number generator: {e}");
            return ExitCode::from(1);
        }
    };
    let certs = match config.tls.as_ref().map(CertStore::new).transpose() {
        Ok(c) => c,
        Err(e) => return fatal(e),
    };
    let mut live = Live::new(config.clone());
    live.certs = certs.clone();
    let relaying = live.credentials().is_configured();
    // The self-test mints with the first configured REST secret, else with one of its own
    // (only while relaying: a STUN-only server stays one).
    let page_secret = match config.auth.secrets.first() {
        Some(s) => s.clone(),
        None => match super::random_text() {
            Ok(s) => {
                if relaying {
                    live.page_secret = Some(s.clone());
                }
                s
            }
            Err(e) => return fatal(e),
        },
    };
    let credentials = live.credentials();
    let shared = Arc::new(Shared::new(Arc::new(credentials), nonce_key));
    let server = match Server::start(
        &config,
        engine_config(&config),
        shared.clone(),
        metrics.clone(),
        certs.as_ref(),
    ) {
        Ok(s) => s,
        Err(e) => return fatal(e),
    };
    let admin_listener = match crate::net::admin::bind(&config.admin.socket) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                "admin socket {} unavailable, `turnd sessions` and `turnd disconnect` will not reach this server: {e}",
                config.admin.socket.display()
            );
            None
        }
    };
    for e in server.skipped() {
        tracing::warn!("skipping optional listener: {e}");
    }
    for b in server.bound() {
        tracing::info!(transport = %b.transport.as_str(), address = %b.address, "listening");
    }
    let tls_name = config_server_name(&config);
    let page = {
        let listeners = server
            .bound()
            .iter()
            .map(|b| crate::metrics::status::ListenerInfo::new(b.transport, b.address, tls_name.as_deref()))
            .collect::<Vec<_>>();
        // Wildcard listeners of both families name the same URLs: test each once.
        let mut urls: Vec<String> = Vec::new();
        for u in listeners.iter().flat_map(|l| l.urls.iter()) {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        let test = crate::metrics::status::TestCredentials::new(page_secret.into_bytes(), urls, relaying);
        let status = Arc::new(crate::metrics::status::Status::new(listeners, Some(test)));
        let loopback = metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .is_none_or(|a| a.ip().is_loopback());
        let token = match (&config.metrics.token, loopback) {
            (t, _) if !t.is_empty() => Some(t.clone()),
            (_, true) => None,
            (_, false) => match super::random_text() {
                Ok(t) => Some(t),
                Err(e) => return fatal(e),
            },
        };
        Arc::new(crate::metrics::http::Page { status, token })
    };
    if let Some(l) = &metrics_listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!(transport = "http", address = %a, "listening");
            match (&page.token, config.metrics.token.is_empty()) {
                (Some(t), true) => tracing::info!(
                    "status page: http://{a}/?token={t} (metrics.token is empty, so this one was made for this run)"
                ),
                (Some(_), false) => tracing::info!("status page: http://{a}/?token=<metrics.token>"),
                (None, _) => tracing::info!("status page: http://{a}/"),
            }
        }
    }
    if relaying {
        tracing::info!(
            realm = %config.realm,
            users = config.auth.users.len(),
            users_file = live.file_users.len(),
            rest_secrets = config.auth.secrets.len(),
            relay_ports = %config.relay.ports,
            "TURN relaying enabled"
        );
    } else {
        tracing::warn!(
            "no credentials configured ([[auth.users]], auth.secrets or the users file {}): serving STUN only, \
             every Allocate is refused",
            config.auth.users_file.display()
        );
    }
    health.up.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(config = %config.source, shards = config.shard_count(), version = crate::metrics::VERSION, "turnd ready");
    super::notify::notify("READY=1");

    let admin_bound = admin_listener.is_some();
    let shards = server.shards();
    let (users_tx, mut cluster_users) = tokio::sync::watch::channel(None);
    let signal = rt.block_on(async {
        if let Some((config, store)) = cluster.as_ref() {
            tracing::info!(node = %config.node, redis = %store.url, "cluster node");
            let cx = crate::cluster::node::NodeContext {
                shared: shared.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                max_allocations: live.config.relay.max_allocations,
                tls_port: server
                    .bound()
                    .iter()
                    .find(|b| b.transport == crate::types::Transport::Tls)
                    .map(|b| b.address.port()),
                server_name: config_server_name(&live.config),
                users: users_tx,
                shards: shards.clone(),
            };
            let store = crate::cluster::Store::new(config);
            match store {
                Ok(store) => {
                    tokio::spawn(crate::cluster::node::run(config.clone(), store, cx));
                }
                Err(e) => tracing::error!("cluster: {e}"),
            }
        }
        if let Some(l) = metrics_listener {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(crate::metrics::http::serve(l, metrics.clone(), health.clone(), page.clone()));
                    let (status, metrics) = (page.status.clone(), metrics.clone());
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            tick.tick().await;
                            status.sample(&metrics);
                        }
                    });
                }
                Err(e) => tracing::error!(error = %e, "cannot serve metrics"),
            }
        }
        if let Some(l) = admin_listener {
            match tokio::net::UnixListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(crate::net::admin::serve(l, shards.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot serve the admin socket"),
            }
        }
        let mut tick = tokio::time::interval(TICK);
        let mut ticks: u32 = 0;
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(FILE_CHECK_TICKS) {
                        if live.read_users_file() {
                            live.apply_credentials(&shared);
                        }
                        live.check_certificate(false);
                    }
                    if let Some(deadline) = drain_deadline {
                        let open = shared.quota.total();
                        if open == 0 {
                            break "drained: no allocation left";
                        }
                        if tokio::time::Instant::now() >= deadline {
                            tracing::warn!(allocations = open, "shutdown_grace passed; ending the remaining allocations");
                            break "shutdown_grace passed";
                        }
                    }
                }
                Ok(()) = cluster_users.changed() => {
                    if let Some(users) = cluster_users.borrow_and_update().clone() {
                        live.cluster_users = users;
                        live.apply_credentials(&shared);
                    }
                }
                s = signals.next() => match s {
                    Sig::Hup => live.reload(&shared, &shards),
                    Sig::Term if drain_deadline.is_none() => {
                        let open = shared.quota.total();
                        live.draining = true;
                        health.draining.store(true, std::sync::atomic::Ordering::Relaxed);
                        super::notify::notify("STOPPING=1");
                        shards.set_engine_config(live.engine_config());
                        tracing::info!(
                            allocations = open,
                            grace_s = live.config.shutdown_grace.as_secs(),
                            "SIGTERM: draining; new allocations are refused, open ones go on (a second SIGTERM or SIGINT exits at once)"
                        );
                        if open == 0 {
                            break "SIGTERM";
                        }
                        drain_deadline = Some(tokio::time::Instant::now() + live.config.shutdown_grace);
                    }
                    Sig::Term => break "second SIGTERM",
                    Sig::Int => break "SIGINT",
                },
            }
        }
    });
    tracing::info!(signal, "shutting down");
    super::notify::notify("STOPPING=1");
    if let Some((config, store)) = &cluster {
        // What open allocations used up to now goes to Redis before they end.
        rt.block_on(async {
            let usage = shards.take_usage(true).await;
            if let Err(e) = crate::cluster::node::flush(store, &mut None, &usage, config.usage_retention).await {
                tracing::warn!("cluster: the last usage could not be added: {e}");
            }
        });
    }
    server.stop();
    if let Some((config, store)) = &cluster {
        rt.block_on(crate::cluster::node::leave(config, store));
    }
    if admin_bound {
        let _ = std::fs::remove_file(&config.admin.socket);
    }
    ExitCode::SUCCESS
}
