//! The command line: `turnd serve`, `turnd check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::auth::{CredentialSource, NonceKey};
use crate::config::{Config, LogFormat};
use crate::metrics::http::Health;
use crate::metrics::Metrics;
use crate::net::Server;
use crate::server::Shared;

/// turnd: a STUN/TURN server.
#[derive(Debug, Parser)]
#[command(
    name = "turnd",
    version = crate::metrics::VERSION,
    about,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Config file. Without it: $TURND_CONFIG, then /etc/turnd/turnd.toml, then the embedded defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server in the foreground, logging to stderr.
    Serve,
    /// Load and validate the config, then print the effective config.
    CheckConfig,
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let config = match Config::discover(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            println!("# effective config, loaded from {}", config.source);
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

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

fn serve(config: Config) -> ExitCode {
    init_logging(&config);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("turnd: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Signal handlers go in before anything is announced, so that a SIGTERM arriving right
    // after "ready" is handled, not fatal.
    let signals = {
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
    let credentials = config.credentials();
    let relaying = credentials.is_configured();
    let shared = Arc::new(Shared::new(Arc::new(credentials), nonce_key, metrics.clone()));
    let server = match Server::start(&config, shared) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
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
            rest_secrets = config.auth.secrets.len(),
            relay_ports = %config.relay.ports,
            "TURN relaying enabled"
        );
    } else {
        tracing::warn!(
            "no credentials configured ([[auth.users]] or auth.secrets): serving STUN only, every Allocate is refused"
        );
    }
    tracing::info!(config = %config.source, shards = config.shard_count(), version = env!("CARGO_PKG_VERSION"), "turnd ready");

    health.up.store(true, std::sync::atomic::Ordering::Relaxed);
    let signal = rt.block_on(async {
        if let Some(l) = metrics_listener {
            match tokio::net::TcpListener::from_std(l) {
                Ok(l) => {
                    tokio::spawn(crate::metrics::http::serve(l, metrics.clone(), health.clone()));
                }
                Err(e) => tracing::error!(error = %e, "cannot serve metrics"),
            }
        }
        signals.wait().await
    });
    tracing::info!(signal, "shutting down");
    server.stop();
    ExitCode::SUCCESS
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

/// SIGTERM and SIGINT, registered up front.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(mut self) -> &'static str {
        let term = async {
            match self.term.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let int = async {
            match self.int.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => "SIGTERM",
            _ = int => "SIGINT",
        }
    }
}
