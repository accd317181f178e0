//! Configuration: the TOML schema (unknown keys rejected), validated once at load into types
//! that cannot be wrong, errors reported as `path:line:col: message`, and the lookup order
//! `--config`, `$TURND_CONFIG`, `/etc/turnd/turnd.toml`, embedded defaults.

mod duration;
pub mod paths;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::types::PortRange;

pub use duration::{format_duration, format_size, parse_duration, parse_size};

/// The embedded default configuration.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// Where `/etc` keeps the system-wide config.
pub const SYSTEM_PATH: &str = "/etc/turnd/turnd.toml";

/// Largest `threads` value accepted.
const MAX_THREADS: usize = 1024;

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

/// One validated listener.
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
}

impl Listener {
    /// Serves TCP or TLS (both need the TCP port).
    pub fn is_stream(&self) -> bool {
        self.tcp || self.tls
    }
}

/// Validated logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`info`, `debug`, `turnd=trace,warn`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

/// Validated `[tls]` settings: paths only; the files are read when the server starts and on
/// reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

/// Validated `[relay]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Where relay sockets bind, at most one per family.
    pub addresses: Vec<IpAddr>,
    /// Advertised instead of the bound address (1:1 NAT), at most one per family.
    pub external: Vec<IpAddr>,
    pub ports: PortRange,
    pub max_lifetime: Duration,
    pub max_allocations: u32,
    pub max_allocations_per_user: u32,
    /// Accept RFC 5766's channel numbers 0x5000..=0x7FFE as well as RFC 8656's.
    pub legacy_channel_numbers: bool,
    /// Relayed bytes per second per allocation (both directions); 0 means no limit.
    pub bandwidth_per_allocation: u64,
    /// Relayed bytes per second for the whole server; 0 means no limit.
    pub bandwidth_total: u64,
}

/// A user from `[[auth.users]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct InlineUser {
    pub name: crate::auth::UserName,
    pub password: String,
}

impl fmt::Debug for InlineUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InlineUser({:?})", self.name)
    }
}

/// Validated `[auth]` settings.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The file `turnd user` manages; the server re-reads it when it changes.
    pub users_file: PathBuf,
    /// TURN REST API secrets; the first mints, all verify.
    pub secrets: Vec<String>,
    pub users: Vec<InlineUser>,
    pub nonce_lifetime: Duration,
    /// Offer SHA-256 (PASSWORD-ALGORITHMS) as well as MD5.
    pub sha256: bool,
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

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: Source,
    /// Shards; 0 means one per core.
    pub threads: usize,
    /// SOFTWARE attribute value, omitted when `None`.
    pub software: Option<String>,
    pub realm: String,
    /// `server_name`: the DNS name clients use (`turns:` URLs); `None` takes the certificate's
    /// first DNS name.
    pub server_name: Option<String>,
    pub listen: Vec<Listener>,
    pub relay: RelayConfig,
    pub auth: AuthConfig,
    /// `peers.allow`: exceptions to the built-in deny list.
    pub peers_allow: Vec<IpNet>,
    /// `metrics.listen`: where `/metrics` and `/healthz` are served (default 127.0.0.1:9641);
    /// `None` (`listen = "off"`) serves nothing.
    pub metrics_listen: Option<SocketAddr>,
    /// `admin.socket`: the Unix socket `turnd sessions` and `turnd disconnect` talk to.
    pub admin_socket: PathBuf,
    /// `[tls]`: certificate chain and private key (PEM), present when a listener serves TLS.
    pub tls: Option<TlsConfig>,
    /// How long SIGTERM lets open allocations go on before the process exits.
    pub shutdown_grace: Duration,
    /// `limits.unauthenticated_rate`: unauthenticated responses per second per source IP.
    pub unauthenticated_rate: u32,
    pub log: LogConfig,
}

const DEFAULT_REALM: &str = "turnd";
/// Metrics are served on loopback unless the config says otherwise.
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9641);
/// `metrics.listen = "off"` serves no HTTP endpoint.
pub const METRICS_OFF: &str = "off";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Generous for a NAT full of users, small enough that one source cannot use the server as
/// a reflector.
const DEFAULT_UNAUTHENTICATED_RATE: u32 = 200;
const DEFAULT_RELAY_ADDRESSES: [&str; 2] = ["0.0.0.0", "::"];
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(3600);
const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(600);
const DEFAULT_MAX_ALLOCATIONS: u32 = 100_000;
const DEFAULT_MAX_ALLOCATIONS_PER_USER: u32 = 100;

const DEFAULT_MAX_CONNECTIONS: usize = 4096;
const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
const DEFAULT_IDLE_TIMEOUT: &str = "60s";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    threads: Option<Spanned<i64>>,
    #[serde(default)]
    software: Option<Spanned<String>>,
    #[serde(default)]
    realm: Option<Spanned<String>>,
    #[serde(default)]
    server_name: Option<Spanned<String>>,
    #[serde(default)]
    listen: Option<Spanned<Vec<RawListen>>>,
    #[serde(default)]
    relay: Option<RawRelay>,
    #[serde(default)]
    auth: Option<RawAuth>,
    #[serde(default)]
    peers: Option<RawPeers>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    shutdown_grace: Option<Spanned<String>>,
    #[serde(default)]
    limits: Option<RawLimits>,
    #[serde(default)]
    log: Option<RawLog>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default)]
    unauthenticated_rate: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: Spanned<String>,
    private_key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default)]
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default)]
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default)]
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    external: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    ports: Option<Spanned<String>>,
    #[serde(default)]
    max_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    max_allocations: Option<Spanned<i64>>,
    #[serde(default)]
    max_allocations_per_user: Option<Spanned<i64>>,
    #[serde(default)]
    legacy_channel_numbers: Option<bool>,
    #[serde(default)]
    bandwidth_per_allocation: Option<Spanned<String>>,
    #[serde(default)]
    bandwidth_total: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    users_file: Option<Spanned<String>>,
    #[serde(default)]
    secrets: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    users: Option<Vec<RawUser>>,
    #[serde(default)]
    nonce_lifetime: Option<Spanned<String>>,
    #[serde(default)]
    password_algorithms: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    #[serde(default)]
    allow: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Spanned<String>,
    #[serde(default)]
    protocols: Option<Spanned<Vec<Protocol>>>,
    #[serde(default)]
    max_connections: Option<Spanned<i64>>,
    #[serde(default)]
    max_connections_per_ip: Option<Spanned<i64>>,
    #[serde(default)]
    idle_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    level: Option<Spanned<String>>,
    #[serde(default)]
    format: Option<LogFormat>,
}

/// Converts a byte offset into a 1-based (line, column).
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

struct Ctx<'a> {
    path: String,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: self.path.clone(),
            position: Some(line_col(self.text, span.start)),
            message: message.into(),
        }
    }
}

impl Config {
    /// Parses and validates `text`; `source` names it in errors.
    pub fn parse(text: &str, source: Source) -> Result<Config, ConfigError> {
        let cx = Ctx {
            path: source.to_string(),
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, e.message().trim_end().to_string())
        })?;

        let threads = match raw.threads {
            None => 0,
            Some(t) => {
                let v = *t.get_ref();
                usize::try_from(v).ok().filter(|&n| n <= MAX_THREADS).ok_or_else(|| {
                    cx.err(
                        t.span(),
                        format!("threads must be between 0 and {MAX_THREADS}, got {v}"),
                    )
                })?
            }
        };

        let software = match raw.software {
            None => None,
            Some(s) => {
                let v = s.get_ref();
                if v.is_empty() || v.len() > 127 || v.chars().any(char::is_control) {
                    return Err(cx.err(s.span(), "software must be 1 to 127 bytes of printable text"));
                }
                Some(v.clone())
            }
        };

        let listen = match raw.listen {
            None => Self::embedded().listen,
            Some(l) => {
                let span = l.span();
                let items = l.into_inner();
                if items.is_empty() {
                    return Err(cx.err(span, "listen is empty: at least one [[listen]] is needed"));
                }
                let mut out: Vec<Listener> = Vec::with_capacity(items.len());
                for item in items {
                    let listener = validate_listener(&cx, item)?;
                    if let Some(dup) = out.iter().find(|o| {
                        o.address == listener.address
                            && ((o.udp && listener.udp) || (o.is_stream() && listener.is_stream()))
                    }) {
                        return Err(cx.err(span.clone(), format!("listener {} appears twice", dup.address)));
                    }
                    out.push(listener);
                }
                out
            }
        };

        let log = match raw.log {
            None => LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            Some(l) => {
                let level = match l.level {
                    None => "info".to_string(),
                    Some(s) => check_log_level(s.get_ref())
                        .map_err(|e| cx.err(s.span(), format!("invalid log level {:?}: {e}", s.get_ref())))?,
                };
                LogConfig {
                    level,
                    format: l.format.unwrap_or(LogFormat::Text),
                }
            }
        };

        let realm = match raw.realm {
            None => DEFAULT_REALM.to_string(),
            Some(r) => {
                let v = r.get_ref();
                if v.is_empty() || v.chars().count() > 127 || v.chars().any(char::is_control) {
                    return Err(cx.err(r.span(), "realm must be 1 to 127 printable characters"));
                }
                v.clone()
            }
        };
        let relay = validate_relay(&cx, raw.relay.unwrap_or_default())?;
        let auth = validate_auth(&cx, raw.auth.unwrap_or_default())?;
        let mut peers_allow = Vec::new();
        for item in raw.peers.unwrap_or_default().allow.unwrap_or_default() {
            let v = item.get_ref();
            let net = v
                .parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    cx.err(
                        item.span(),
                        format!("invalid CIDR {v:?} in peers.allow: expected e.g. \"127.0.0.0/8\" or \"::1\""),
                    )
                })?;
            peers_allow.push(net.trunc());
        }

        let metrics_listen = match raw.metrics.unwrap_or_default().listen {
            None => Some(DEFAULT_METRICS_LISTEN),
            Some(a) if a.get_ref() == METRICS_OFF => None,
            Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                cx.err(
                    a.span(),
                    format!(
                        "invalid metrics.listen {:?}: expected IP:PORT, e.g. \"127.0.0.1:9641\", or \"off\"",
                        a.get_ref()
                    ),
                )
            })?),
        };
        let server_name = match raw.server_name {
            None => None,
            Some(n) => Some(
                check_dns_name(n.get_ref())
                    .map_err(|e| cx.err(n.span(), e))?
                    .to_string(),
            ),
        };

        let admin_socket = match raw.admin.unwrap_or_default().socket {
            None => paths::default_admin_socket(),
            Some(p) if p.get_ref().is_empty() => return Err(cx.err(p.span(), "admin.socket is empty")),
            Some(p) => PathBuf::from(p.into_inner()),
        };

        let wants_tls = listen.iter().any(|l| l.tls);
        let tls = match raw.tls {
            Some(t) if !wants_tls => {
                return Err(cx.err(t.span(), "[tls] is set but no [[listen]] has \"tls\" in its protocols"));
            }
            Some(t) => {
                let t = t.into_inner();
                for p in [&t.certificate, &t.private_key] {
                    if p.get_ref().is_empty() {
                        return Err(cx.err(p.span(), "path is empty"));
                    }
                }
                Some(TlsConfig {
                    certificate: PathBuf::from(t.certificate.into_inner()),
                    private_key: PathBuf::from(t.private_key.into_inner()),
                })
            }
            None if wants_tls => {
                return Err(ConfigError {
                    path: cx.path.clone(),
                    position: Some((1, 1)),
                    message: "a listener serves \"tls\" but there is no [tls] section with certificate and private_key"
                        .into(),
                });
            }
            None => None,
        };
        let unauthenticated_rate = match raw.limits.unwrap_or_default().unauthenticated_rate {
            None => DEFAULT_UNAUTHENTICATED_RATE,
            Some(n) => u32::try_from(*n.get_ref()).map_err(|_| {
                cx.err(
                    n.span(),
                    format!(
                        "limits.unauthenticated_rate must be 0 (no limit) or more, got {}",
                        n.get_ref()
                    ),
                )
            })?,
        };
        let shutdown_grace = match raw.shutdown_grace {
            None => DEFAULT_SHUTDOWN_GRACE,
            Some(s) => parse_duration(s.get_ref()).map_err(|e| cx.err(s.span(), e))?,
        };

        Ok(Config {
            source,
            threads,
            software,
            realm,
            server_name,
            listen,
            relay,
            auth,
            peers_allow,
            metrics_listen,
            admin_socket,
            tls,
            shutdown_grace,
            unauthenticated_rate,
            log,
        })
    }

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

    /// The effective configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct OutTls {
            certificate: String,
            private_key: String,
        }
        #[derive(Serialize)]
        struct Out<'a> {
            threads: usize,
            shutdown_grace: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            software: Option<&'a str>,
            realm: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            server_name: Option<&'a str>,
            listen: Vec<OutListen>,
            relay: OutRelay,
            limits: OutLimits,
            auth: OutAuth,
            peers: OutPeers,
            #[serde(skip_serializing_if = "Option::is_none")]
            tls: Option<OutTls>,
            metrics: OutMetrics,
            admin: OutAdmin,
            log: OutLog<'a>,
        }
        #[derive(Serialize)]
        struct OutMetrics {
            listen: String,
        }
        #[derive(Serialize)]
        struct OutRelay {
            addresses: Vec<String>,
            external: Vec<String>,
            ports: String,
            max_lifetime: String,
            max_allocations: u32,
            max_allocations_per_user: u32,
            legacy_channel_numbers: bool,
            bandwidth_per_allocation: String,
            bandwidth_total: String,
        }
        #[derive(Serialize)]
        struct OutLimits {
            unauthenticated_rate: u32,
        }
        #[derive(Serialize)]
        struct OutAdmin {
            socket: String,
        }
        #[derive(Serialize)]
        struct OutAuth {
            users_file: String,
            // Secrets and passwords are never printed.
            secrets: Vec<&'static str>,
            password_algorithms: Vec<&'static str>,
            nonce_lifetime: String,
            users: Vec<OutUser>,
        }
        #[derive(Serialize)]
        struct OutUser {
            name: String,
            password: &'static str,
        }
        #[derive(Serialize)]
        struct OutPeers {
            allow: Vec<String>,
        }
        #[derive(Serialize)]
        struct OutListen {
            address: String,
            protocols: Vec<Protocol>,
            max_connections: usize,
            max_connections_per_ip: usize,
            idle_timeout: String,
        }
        #[derive(Serialize)]
        struct OutLog<'a> {
            level: &'a str,
            format: LogFormat,
        }
        let out = Out {
            threads: self.threads,
            shutdown_grace: format_duration(self.shutdown_grace),
            tls: self.tls.as_ref().map(|t| OutTls {
                certificate: t.certificate.display().to_string(),
                private_key: t.private_key.display().to_string(),
            }),
            software: self.software.as_deref(),
            realm: &self.realm,
            server_name: self.server_name.as_deref(),
            relay: OutRelay {
                addresses: self.relay.addresses.iter().map(ToString::to_string).collect(),
                external: self.relay.external.iter().map(ToString::to_string).collect(),
                ports: self.relay.ports.to_string(),
                max_lifetime: format_duration(self.relay.max_lifetime),
                max_allocations: self.relay.max_allocations,
                max_allocations_per_user: self.relay.max_allocations_per_user,
                legacy_channel_numbers: self.relay.legacy_channel_numbers,
                bandwidth_per_allocation: format_size(self.relay.bandwidth_per_allocation),
                bandwidth_total: format_size(self.relay.bandwidth_total),
            },
            limits: OutLimits {
                unauthenticated_rate: self.unauthenticated_rate,
            },
            auth: OutAuth {
                users_file: self.auth.users_file.display().to_string(),
                secrets: self.auth.secrets.iter().map(|_| REDACTED).collect(),
                password_algorithms: if self.auth.sha256 {
                    vec!["sha256", "md5"]
                } else {
                    vec!["md5"]
                },
                nonce_lifetime: format_duration(self.auth.nonce_lifetime),
                users: self
                    .auth
                    .users
                    .iter()
                    .map(|u| OutUser {
                        name: u.name.to_string(),
                        password: REDACTED,
                    })
                    .collect(),
            },
            peers: OutPeers {
                allow: self.peers_allow.iter().map(ToString::to_string).collect(),
            },
            metrics: OutMetrics {
                listen: self.metrics_listen.map_or(METRICS_OFF.to_string(), |a| a.to_string()),
            },
            admin: OutAdmin {
                socket: self.admin_socket.display().to_string(),
            },
            listen: self
                .listen
                .iter()
                .map(|l| OutListen {
                    address: l.address.to_string(),
                    protocols: [(l.udp, Protocol::Udp), (l.tcp, Protocol::Tcp), (l.tls, Protocol::Tls)]
                        .into_iter()
                        .filter_map(|(on, p)| on.then_some(p))
                        .collect(),
                    max_connections: l.max_connections,
                    max_connections_per_ip: l.max_connections_per_ip,
                    idle_timeout: format_duration(l.idle_timeout),
                })
                .collect(),
            log: OutLog {
                level: &self.log.level,
                format: self.log.format,
            },
        };
        toml::to_string(&out).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// What `check-config` prints in place of a secret or password.
pub const REDACTED: &str = "<redacted>";

fn duration_at_least(cx: &Ctx<'_>, s: &Spanned<String>, min: Duration, key: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(s.get_ref()).map_err(|e| cx.err(s.span(), e))?;
    if d < min {
        return Err(cx.err(s.span(), format!("{key} must be at least {}", format_duration(min))));
    }
    Ok(d)
}

fn count(cx: &Ctx<'_>, v: Option<Spanned<i64>>, default: u32, key: &str) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) => u32::try_from(*n.get_ref()).ok().filter(|&x| x >= 1).ok_or_else(|| {
            cx.err(
                n.span(),
                format!("{key} must be between 1 and {}, got {}", u32::MAX, n.get_ref()),
            )
        }),
    }
}

/// Parses a list of IPs with at most one per family.
fn ip_per_family(cx: &Ctx<'_>, list: Spanned<Vec<Spanned<String>>>, key: &str) -> Result<Vec<IpAddr>, ConfigError> {
    let mut out: Vec<IpAddr> = Vec::new();
    for item in list.into_inner() {
        let ip: IpAddr = item
            .get_ref()
            .parse()
            .map_err(|_| cx.err(item.span(), format!("invalid IP address {:?} in {key}", item.get_ref())))?;
        if out.iter().any(|o| o.is_ipv4() == ip.is_ipv4()) {
            return Err(cx.err(
                item.span(),
                format!("{key} takes at most one IPv4 and one IPv6 address"),
            ));
        }
        out.push(ip);
    }
    Ok(out)
}

fn validate_relay(cx: &Ctx<'_>, raw: RawRelay) -> Result<RelayConfig, ConfigError> {
    let addresses = match raw.addresses {
        None => DEFAULT_RELAY_ADDRESSES.iter().filter_map(|a| a.parse().ok()).collect(),
        Some(list) => {
            let span = list.span();
            let v = ip_per_family(cx, list, "relay.addresses")?;
            if v.is_empty() {
                return Err(cx.err(span, "relay.addresses is empty"));
            }
            v
        }
    };
    let external = match raw.external {
        None => Vec::new(),
        Some(list) => {
            let span = list.span();
            let v = ip_per_family(cx, list, "relay.external")?;
            for ip in &v {
                if ip.is_unspecified() || ip.is_multicast() {
                    return Err(cx.err(span.clone(), format!("relay.external {ip} cannot be advertised")));
                }
                if !addresses.iter().any(|a| a.is_ipv4() == ip.is_ipv4()) {
                    return Err(cx.err(
                        span.clone(),
                        format!("relay.external {ip} has no relay.addresses entry of its family"),
                    ));
                }
            }
            v
        }
    };
    let ports = match raw.ports {
        None => PortRange::DEFAULT,
        Some(p) => p.get_ref().parse().map_err(|e: String| cx.err(p.span(), e))?,
    };
    let max_lifetime = match raw.max_lifetime {
        None => DEFAULT_MAX_LIFETIME,
        Some(s) => duration_at_least(cx, &s, crate::types::DEFAULT_LIFETIME, "relay.max_lifetime")?,
    };
    Ok(RelayConfig {
        addresses,
        external,
        ports,
        max_lifetime,
        max_allocations: count(
            cx,
            raw.max_allocations,
            DEFAULT_MAX_ALLOCATIONS,
            "relay.max_allocations",
        )?,
        max_allocations_per_user: count(
            cx,
            raw.max_allocations_per_user,
            DEFAULT_MAX_ALLOCATIONS_PER_USER,
            "relay.max_allocations_per_user",
        )?,
        legacy_channel_numbers: raw.legacy_channel_numbers.unwrap_or(false),
        bandwidth_per_allocation: match raw.bandwidth_per_allocation {
            None => 0,
            Some(s) => parse_size(s.get_ref()).map_err(|e| cx.err(s.span(), e))?,
        },
        bandwidth_total: match raw.bandwidth_total {
            None => 0,
            Some(s) => parse_size(s.get_ref()).map_err(|e| cx.err(s.span(), e))?,
        },
    })
}

/// Checks a host name for `server_name`: letters, digits, '-' and '.', as in a URL.
fn check_dns_name(name: &str) -> Result<&str, String> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > 253 || !trimmed.split('.').all(ok_label) {
        return Err(format!(
            "server_name {name:?} is not a DNS name: use the name clients connect to, e.g. \"turn.example.org\""
        ));
    }
    Ok(trimmed)
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `log.level` directive list. `EnvFilter` reads a lone word such as `"verbose"` as a
/// module name and then logs nothing at all, so every directive must be a level, or
/// `TARGET=LEVEL`.
/// Returns the directives with the spaces around commas taken out, as `EnvFilter` wants them.
fn check_log_level(text: &str) -> Result<String, String> {
    let levels = LOG_LEVELS.join(", ");
    let mut any = false;
    for d in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        let level = match d.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ if d.contains('=') => return Err(format!("{d:?} has no target before '='")),
            _ => d,
        };
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(if d.contains('=') {
                format!("unknown level {level:?} in {d:?}: use one of {levels}")
            } else {
                format!("unknown level {level:?}: use one of {levels}, or TARGET=LEVEL (e.g. \"turnd=debug\")")
            });
        }
    }
    if !any {
        return Err(format!("no level given: use one of {levels}"));
    }
    let normal: Vec<&str> = text.split(',').map(str::trim).filter(|d| !d.is_empty()).collect();
    let normal = normal.join(",");
    tracing_subscriber::EnvFilter::try_new(&normal).map_err(|e| e.to_string())?;
    Ok(normal)
}

fn validate_auth(cx: &Ctx<'_>, raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let mut secrets = Vec::new();
    for s in raw.secrets.unwrap_or_default() {
        if s.get_ref().is_empty() {
            return Err(cx.err(s.span(), "auth.secrets entries must not be empty"));
        }
        secrets.push(s.into_inner());
    }
    let mut users: Vec<InlineUser> = Vec::new();
    for u in raw.users.unwrap_or_default() {
        let name = crate::auth::UserName::new(u.name.get_ref()).map_err(|e| cx.err(u.name.span(), e))?;
        if users.iter().any(|x| x.name == name) {
            return Err(cx.err(u.name.span(), format!("user {:?} appears twice", u.name.get_ref())));
        }
        if u.password.get_ref().is_empty() {
            return Err(cx.err(u.password.span(), "password must not be empty"));
        }
        users.push(InlineUser {
            name,
            password: u.password.into_inner(),
        });
    }
    let nonce_lifetime = match raw.nonce_lifetime {
        None => DEFAULT_NONCE_LIFETIME,
        Some(s) => duration_at_least(cx, &s, Duration::from_secs(10), "auth.nonce_lifetime")?,
    };
    let users_file = match raw.users_file {
        None => paths::default_users_file(),
        Some(p) if p.get_ref().is_empty() => return Err(cx.err(p.span(), "auth.users_file is empty")),
        Some(p) => PathBuf::from(p.into_inner()),
    };
    let sha256 = match raw.password_algorithms {
        None => false,
        Some(list) => {
            let span = list.span();
            let mut sha256 = false;
            let mut md5 = false;
            for a in list.into_inner() {
                match a.get_ref().as_str() {
                    "md5" => md5 = true,
                    "sha256" => sha256 = true,
                    other => {
                        return Err(cx.err(
                            a.span(),
                            format!("unknown password algorithm {other:?}: use \"md5\" and \"sha256\""),
                        ))
                    }
                }
            }
            if !md5 {
                // RFC 5389 clients (browsers among them) know only MD5.
                return Err(cx.err(
                    span,
                    "auth.password_algorithms must include \"md5\", which every client knows",
                ));
            }
            sha256
        }
    };
    Ok(AuthConfig {
        sha256,
        users_file,
        secrets,
        users,
        nonce_lifetime,
    })
}

fn validate_listener(cx: &Ctx<'_>, raw: RawListen) -> Result<Listener, ConfigError> {
    let addr_text = raw.address.get_ref();
    let address: SocketAddr = addr_text.parse().map_err(|_| {
        let hint = match addr_text.rsplit_once(':') {
            Some((_, port)) if port.parse::<u64>().is_ok_and(|p| p > 65535) => {
                format!("port {port} is out of range (0-65535)")
            }
            Some((host, _)) if host.contains(':') && !host.starts_with('[') => {
                "IPv6 addresses need brackets, e.g. \"[::]:3478\"".to_string()
            }
            _ => "expected IP:PORT, e.g. \"0.0.0.0:3478\" or \"[::]:3478\"".to_string(),
        };
        cx.err(
            raw.address.span(),
            format!("invalid listen address {addr_text:?}: {hint}"),
        )
    })?;
    let (udp, tcp, tls) = match raw.protocols {
        None => (true, true, false),
        Some(p) => {
            if p.get_ref().is_empty() {
                return Err(cx.err(p.span(), "protocols is empty: use \"udp\", \"tcp\", \"tls\""));
            }
            let has = |x| p.get_ref().contains(&x);
            if has(Protocol::Tcp) && has(Protocol::Tls) {
                return Err(cx.err(
                    p.span(),
                    "\"tcp\" and \"tls\" are both TCP: give them different addresses",
                ));
            }
            (has(Protocol::Udp), has(Protocol::Tcp), has(Protocol::Tls))
        }
    };
    let max_connections = match raw.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(m) => {
            let v = *m.get_ref();
            usize::try_from(v)
                .ok()
                .filter(|&n| (1..=1_000_000).contains(&n))
                .ok_or_else(|| {
                    cx.err(
                        m.span(),
                        format!("max_connections must be between 1 and 1000000, got {v}"),
                    )
                })?
        }
    };
    let max_connections_per_ip = match raw.max_connections_per_ip {
        None => DEFAULT_MAX_CONNECTIONS_PER_IP.min(max_connections),
        Some(m) => {
            let v = *m.get_ref();
            usize::try_from(v)
                .ok()
                .filter(|&n| (1..=max_connections).contains(&n))
                .ok_or_else(|| {
                    cx.err(
                        m.span(),
                        format!(
                            "max_connections_per_ip must be between 1 and max_connections ({max_connections}), got {v}"
                        ),
                    )
                })?
        }
    };
    let idle_timeout = match raw.idle_timeout {
        None => parse_duration(DEFAULT_IDLE_TIMEOUT).unwrap_or(Duration::from_secs(60)),
        Some(s) => {
            let d = parse_duration(s.get_ref()).map_err(|e| cx.err(s.span(), e))?;
            if d < Duration::from_secs(1) {
                return Err(cx.err(s.span(), "idle_timeout must be at least 1s"));
            }
            d
        }
    };
    Ok(Listener {
        address,
        udp,
        tcp,
        tls,
        max_connections,
        max_connections_per_ip,
        idle_timeout,
    })
}

#[cfg(test)]
mod tests {
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
