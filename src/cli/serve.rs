//! `turnd serve`: start everything, then watch the users file, reload on SIGHUP, and stop on
//! SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::auth::users_file::{UserKeys, UsersFile};
use crate::auth::{CredentialSource, NonceKey};
use crate::config::{Config, LogFormat, Source};
use crate::metrics::http::Health;
use crate::metrics::Metrics;
use crate::net::{Server, Shards};
use crate::server::Shared;

/// How often the users file is checked for changes (changes apply within 2 s).
const USERS_FILE_POLL: Duration = Duration::from_millis(500);

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
    stamp: Stamp,
}

impl Live {
    fn new(config: Config) -> Live {
        let mut live = Live {
            config,
            file_users: UserKeys::default(),
            stamp: None,
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

    fn apply_credentials(&self, shared: &Shared) {
        shared.set_credentials(Arc::new(self.config.credentials_with(self.file_users.clone())));
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
        let mut restart = Vec::new();
        if new.listen != self.config.listen {
            restart.push("listen");
        }
        if new.threads != self.config.threads {
            restart.push("threads");
        }
        if new.metrics_listen != self.config.metrics_listen {
            restart.push("metrics.listen");
        }
        if new.admin_socket != self.config.admin_socket {
            restart.push("admin.socket");
        }
        if new.log != self.config.log {
            restart.push("log");
        }
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "config reloaded, but these keys only take effect after a restart");
        }
        self.config = new;
        self.stamp = None;
        self.read_users_file();
        self.apply_credentials(shared);
        shards.set_engine_config(Arc::new(self.config.engine_config()));
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

/// Binds the metrics listener before the server reports ready, so a taken port is a start
/// error.
fn bind_http(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, String> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on http {addr} (metrics.listen): {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot listen on http {addr}: {e}"))?;
    Ok(l)
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
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let metrics_listener = match config.metrics_listen.map(bind_http).transpose() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let nonce_key = match NonceKey::random() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("turnd: cannot read the OS random number generator: {e}");
            return ExitCode::from(1);
        }
    };
    let mut live = Live::new(config.clone());
    let credentials = config.credentials_with(live.file_users.clone());
    let relaying = credentials.is_configured();
    let shared = Arc::new(Shared::new(Arc::new(credentials), nonce_key, metrics.clone()));
    let server = match Server::start(&config, shared.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let admin_listener = match crate::net::admin::bind(&config.admin_socket) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                "admin socket {} unavailable, `turnd sessions` and `turnd disconnect` will not reach this server: {e}",
                config.admin_socket.display()
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
    if let Some(l) = &metrics_listener {
        if let Ok(a) = l.local_addr() {
            tracing::info!(transport = "http", address = %a, "listening");
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

    let admin_bound = admin_listener.is_some();
    let shards = server.shards();
    let signal = rt.block_on(async {
        if let Some(l) = metrics_listener {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(crate::metrics::http::serve(l, metrics.clone(), health.clone()));
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
        let mut poll = tokio::time::interval(USERS_FILE_POLL);
        loop {
            tokio::select! {
                _ = poll.tick() => {
                    if live.read_users_file() {
                        live.apply_credentials(&shared);
                    }
                }
                s = signals.next() => match s {
                    Sig::Hup => live.reload(&shared, &shards),
                    Sig::Term => break "SIGTERM",
                    Sig::Int => break "SIGINT",
                },
            }
        }
    });
    tracing::info!(signal, "shutting down");
    server.stop();
    if admin_bound {
        let _ = std::fs::remove_file(&config.admin_socket);
    }
    ExitCode::SUCCESS
}
