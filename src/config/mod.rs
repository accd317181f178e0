//! Configuration: the TOML schema (unknown keys rejected, `schema.rs`), validated once at
//! load into types that cannot be wrong (`validate.rs`), errors reported as
//! `path:line:col: message`, the lookup order `--config`, `$TURND_CONFIG`,
//! `/etc/turnd/turnd.toml`, embedded defaults, and the effective config that `check-config`
//! prints, rendered from these same types (`render.rs`).

mod duration;
pub mod paths;
mod render;
mod schema;
mod validate;

/// `url` with the password (between the user name's ':' and the '@') replaced, for logs and
/// `check-config`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::types::{AddressQuad, PortRange};

pub use duration::{format_duration, format_size, parse_duration, parse_size};

/// The embedded default configuration.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Where `/etc` keeps the system-wide config.
pub const SYSTEM_PATH: &str = "/etc/turnd/turnd.toml";

/// `metrics.listen = "off"` serves no HTTP endpoint.
pub const METRICS_OFF: &str = "off";

/// What `check-config` prints in place of a secret or password.
pub const REDACTED: &str = "<redacted>";

/// A configuration error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded>`).
    pub path: String,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(f, "{}:{}:{}: {}", self.path, line, col, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("<embedded>"),
        }
    }
}

/// A client-facing protocol on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
    Tls,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// One validated listener (rendered by hand in `render.rs`: its protocols are a list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    pub udp: bool,
    pub tcp: bool,
    /// TLS over TCP (`turns:`), with the certificate from `[tls]`.
    pub tls: bool,
    /// Concurrent TCP connections this listener accepts across all shards.
    pub max_connections: usize,
    /// Concurrent TCP connections from one IP address on this listener.
    pub max_connections_per_ip: usize,
    /// A TCP connection on which no complete message arrives for this long is closed.
    pub idle_timeout: Duration,
    /// TCP/TLS connections start with a PROXY protocol header (v1 or v2) naming the client;
    /// present only from the load balancers in `proxy_from`, whose connections must carry one.
    pub proxy_from: Option<Vec<IpNet>>,
}

impl Listener {
    /// Serves TCP or TLS (both need the TCP port).
    pub fn is_stream(&self) -> bool {
        self.tcp || self.tls
    }
}

/// Validated logging settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogConfig {
    /// `EnvFilter` directives (`info`, `debug`, `turnd=trace,warn`); `RUST_LOG` overrides them.
    pub level: String,
    pub format: LogFormat,
}

/// Validated `[tls]` settings: paths only; the files are read when the server starts and on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    #[serde(serialize_with = "render::path")]
    pub certificate: PathBuf,
    #[serde(serialize_with = "render::path")]
    pub private_key: PathBuf,
}

/// Validated `[relay]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayConfig {
    /// Where relay sockets bind, at most one per family.
    #[serde(serialize_with = "render::each")]
    pub addresses: Vec<IpAddr>,
    /// Advertised instead of the bound address (1:1 NAT), at most one per family.
    #[serde(serialize_with = "render::each")]
    pub external: Vec<IpAddr>,
    #[serde(serialize_with = "render::display")]
    pub ports: PortRange,
    #[serde(serialize_with = "render::duration")]
    pub max_lifetime: Duration,
    /// How long a permission lasts (RFC 8656: 5 minutes; shorter for labs and tests).
    #[serde(serialize_with = "render::duration")]
    pub permission_lifetime: Duration,
    /// How long a channel binding lasts (RFC 8656: 10 minutes; shorter for labs and tests).
    #[serde(serialize_with = "render::duration")]
    pub channel_lifetime: Duration,
    pub max_allocations: u32,
    pub max_allocations_per_user: u32,
    /// Accept RFC 5766's channel numbers 0x5000..=0x7FFE as well as RFC 8656's.
    pub legacy_channel_numbers: bool,
    /// TCP relay data connections (RFC 6062) one TCP allocation may have.
    pub max_tcp_connections: u32,
    /// Relayed bytes per second per allocation (both directions); 0 means no limit.
    #[serde(serialize_with = "render::size")]
    pub bandwidth_per_allocation: u64,
    /// Relayed bytes per second for the whole server; 0 means no limit.
    #[serde(serialize_with = "render::size")]
    pub bandwidth_total: u64,
}

/// A user from `[[auth.users]]`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct InlineUser {
    #[serde(serialize_with = "render::display")]
    pub name: crate::auth::UserName,
    /// Never printed.
    #[serde(serialize_with = "render::redacted")]
    pub password: String,
}

impl fmt::Debug for InlineUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineUser({:?})", self.name)
    }
}

/// Validated `[auth]` settings.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    /// The file `turnd user` manages; the server re-reads it when it changes.
    #[serde(serialize_with = "render::path")]
    pub users_file: PathBuf,
    /// TURN REST API secrets; the first mints, all verify. Never printed.
    #[serde(serialize_with = "render::redacted_each")]
    pub secrets: Vec<String>,
    /// Offer SHA-256 (PASSWORD-ALGORITHMS) as well as MD5.
    #[serde(rename = "password_algorithms", serialize_with = "render::algorithms")]
    pub sha256: bool,
    #[serde(serialize_with = "render::duration")]
    pub nonce_lifetime: Duration,
    pub users: Vec<InlineUser>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("users_file", &self.users_file)
            .field("secrets", &self.secrets.len())
            .field("users", &self.users)
            .field("nonce_lifetime", &self.nonce_lifetime)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitsConfig {
    /// Unauthenticated responses per second per source IP; 0 means no limit.
    pub unauthenticated_rate: u32,
}

/// `[peers]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeersConfig {
    /// Exceptions to the built-in deny list.
    #[serde(serialize_with = "render::each")]
    pub allow: Vec<IpNet>,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/healthz` are served (default 127.0.0.1:9641); `None`
    /// (`listen = "off"`) serves nothing.
    #[serde(serialize_with = "render::metrics_listen")]
    pub listen: Option<SocketAddr>,
    /// What `GET /`, `/status.json` and the self-test ask for when `listen` is not loopback;
    /// empty: one is generated at start and logged.
    #[serde(serialize_with = "render::redacted_if_set")]
    pub token: String,
}

/// `[nat_discovery]` (RFC 5780): off while `alternate_addresses` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatDiscoveryConfig {
    /// A second local address per family, paired with the listeners on a concrete address
    /// of that family.
    #[serde(serialize_with = "render::each")]
    pub alternate_addresses: Vec<IpAddr>,
    /// The alternate port; `None` is each listener's port + 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_port: Option<u16>,
}

/// `[cluster]`: nodes that share users, quotas, sessions and usage through one Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS), with user name and password if Redis wants them.
    #[serde(serialize_with = "render::redis_url")]
    pub redis: String,
    /// This node's name in the cluster (default: the host name).
    pub node: String,
    /// Where other nodes may send clients (ALTERNATE-SERVER), at most one per family.
    #[serde(serialize_with = "render::each")]
    pub advertise: Vec<SocketAddr>,
    /// A PEM file of the CA that signed Redis's certificate (`rediss://` with a private CA).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "render::some_path")]
    pub tls_ca: Option<PathBuf>,
    /// A node that stops renewing its heartbeat and quota leases drops out after this long.
    #[serde(serialize_with = "render::duration")]
    pub lease_ttl: Duration,
    /// How long hourly usage buckets are kept in Redis.
    #[serde(serialize_with = "render::duration")]
    pub usage_retention: Duration,
}

/// `[xdp]`: the ChannelData fast path; off while `interfaces` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XdpConfig {
    /// The interfaces the program is attached to (those clients and peers reach turnd on).
    pub interfaces: Vec<String>,
    pub mode: XdpMode,
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver, before an skb exists (the fast one; the driver must support it).
    #[default]
    Native,
    /// After the skb is built: works on every interface, and gains less.
    Generic,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminConfig {
    /// The Unix socket `turnd sessions` and `turnd disconnect` talk to.
    #[serde(serialize_with = "render::path")]
    pub socket: PathBuf,
}

/// The validated configuration, laid out as the file is: `check-config` prints it as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    #[serde(skip)]
    pub source: Source,
    /// Shards; 0 means one per core.
    pub threads: usize,
    /// How long SIGTERM lets open allocations go on before the process exits.
    #[serde(serialize_with = "render::duration")]
    pub shutdown_grace: Duration,
    /// SOFTWARE attribute value, omitted when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
    pub realm: String,
    /// The DNS name clients use (`turns:` URLs); `None` takes the certificate's first DNS
    /// name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    pub listen: Vec<Listener>,
    pub relay: RelayConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub peers: PeersConfig,
    /// Certificate chain and private key (PEM), present when a listener serves TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub nat_discovery: NatDiscoveryConfig,
    /// Absent: a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    pub xdp: XdpConfig,
    pub log: LogConfig,
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Config {
        match Config::parse(EMBEDDED_DEFAULT, Source::Embedded) {
            Ok(c) => c,
            // The embedded text is fixed at build time and covered by a unit test.
            Err(e) => unreachable!("embedded default config is invalid: {e}"),
        }
    }

    /// Loads the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            position: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Config::parse(&text, Source::File(path.to_path_buf()))
    }

    /// Applies the lookup order: `explicit` (the `--config` flag), then `$TURND_CONFIG`, then
    /// `/etc/turnd/turnd.toml`, then the embedded defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::discover_with(
            explicit,
            std::env::var_os("TURND_CONFIG").map(PathBuf::from),
            Path::new(SYSTEM_PATH),
        )
    }

    /// [`Config::discover`] with the environment and system path passed in (for tests).
    pub fn discover_with(explicit: Option<&Path>, env: Option<PathBuf>, system: &Path) -> Result<Config, ConfigError> {
        if let Some(p) = explicit {
            return Config::load(p);
        }
        if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
            return Config::load(&p);
        }
        if system.exists() {
            return Config::load(system);
        }
        Ok(Config::embedded())
    }

    /// Number of shards to run: `threads`, or one per core when it is 0.
    pub fn shard_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The four discovery addresses of each listener that `[nat_discovery]` pairs with an
    /// alternate address: listeners on a concrete IP of the alternate's family.
    pub fn discovery(&self) -> Vec<(&Listener, AddressQuad)> {
        let nd = &self.nat_discovery;
        self.listen
            .iter()
            .filter(|l| !l.address.ip().is_unspecified())
            .filter_map(|l| {
                let alt = *nd
                    .alternate_addresses
                    .iter()
                    .find(|a| a.is_ipv4() == l.address.is_ipv4())?;
                let alt_port = nd.alternate_port.or(l.address.port().checked_add(1))?;
                Some((
                    l,
                    AddressQuad {
                        ips: [l.address.ip(), alt],
                        ports: [l.address.port(), alt_port],
                    },
                ))
            })
            .collect()
    }

    /// Every listener to bind: the configured ones, then the three other addresses of each
    /// discovery listener, serving the same protocols.
    pub fn listeners(&self) -> Vec<Listener> {
        let mut all = self.listen.clone();
        for (l, quad) in self.discovery() {
            all.extend(
                quad.all()
                    .into_iter()
                    .skip(1)
                    .map(|address| Listener { address, ..l.clone() }),
            );
        }
        all
    }

    /// The effective configuration as TOML, every default filled in, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::validate::{check_log_level, line_col};
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_dual_stack() {
        let c = Config::parse(EMBEDDED_DEFAULT, Source::Embedded).unwrap();
        let addrs: Vec<String> = c.listen.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(addrs, ["0.0.0.0:3478", "[::]:3478"]);
        assert!(c.listen.iter().all(|l| l.udp && l.tcp));
        assert!(c.software.is_none());
    }

    #[test]
    fn log_levels_are_checked_word_by_word() {
        for ok in ["info", "WARN", "turnd=debug,warn", "off", "info, turnd::net=trace"] {
            assert!(check_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "warnn", "", "turnd=loud", "=", "info,chatty"] {
            assert!(check_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("abc", 0), (1, 1));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
    }

    #[test]
    fn effective_config_reparses_to_the_same_config() {
        let text = "threads = 2\nsoftware = \"turnd\"\n[[listen]]\naddress = \"127.0.0.1:3478\"\nprotocols = [\"udp\"]\nidle_timeout = \"90s\"\n[log]\nformat = \"json\"\n";
        let c = Config::parse(text, Source::Embedded).unwrap();
        let again = Config::parse(&c.to_toml(), Source::Embedded).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        let sys = dir.path().join("sys.toml");
        std::fs::write(&a, "threads = 1").unwrap();
        std::fs::write(&b, "threads = 2").unwrap();
        std::fs::write(&sys, "threads = 3").unwrap();
        let t = |e: Option<&Path>, env: Option<&Path>, s: &Path| {
            Config::discover_with(e, env.map(Path::to_path_buf), s).unwrap().threads
        };
        assert_eq!(t(Some(&a), Some(&b), &sys), 1);
        assert_eq!(t(None, Some(&b), &sys), 2);
        assert_eq!(t(None, None, &sys), 3);
        let missing = dir.path().join("none.toml");
        let c = Config::discover_with(None, None, &missing).unwrap();
        assert_eq!(c.source, Source::Embedded);
        assert!(Config::discover_with(Some(&missing), None, &sys).is_err());
    }
}
