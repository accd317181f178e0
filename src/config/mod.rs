//! Configuration: the TOML schema (unknown keys rejected), validated once at load into types
//! that cannot be wrong, errors reported as `path:line:col: message`, and the lookup order
//! `--config`, `$TURND_CONFIG`, `/etc/turnd/turnd.toml`, embedded defaults.

mod duration;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use duration::{format_duration, parse_duration};

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
    /// Concurrent TCP connections this listener accepts across all shards.
    pub max_connections: usize,
    /// A TCP connection on which no complete message arrives for this long is closed.
    pub idle_timeout: Duration,
}

/// Validated logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`info`, `debug`, `turnd=trace,warn`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: Source,
    /// Shards; 0 means one per core.
    pub threads: usize,
    /// SOFTWARE attribute value, omitted when `None`.
    pub software: Option<String>,
    pub listen: Vec<Listener>,
    pub log: LogConfig,
}

const DEFAULT_MAX_CONNECTIONS: usize = 4096;
const DEFAULT_IDLE_TIMEOUT: &str = "60s";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    threads: Option<Spanned<i64>>,
    #[serde(default)]
    software: Option<Spanned<String>>,
    #[serde(default)]
    listen: Option<Spanned<Vec<RawListen>>>,
    #[serde(default)]
    log: Option<RawLog>,
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
                    if let Some(dup) = out
                        .iter()
                        .find(|o| o.address == listener.address && ((o.udp && listener.udp) || (o.tcp && listener.tcp)))
                    {
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
                    Some(s) => {
                        tracing_subscriber::EnvFilter::try_new(s.get_ref())
                            .map_err(|e| cx.err(s.span(), format!("invalid log level {:?}: {e}", s.get_ref())))?;
                        s.into_inner()
                    }
                };
                LogConfig {
                    level,
                    format: l.format.unwrap_or(LogFormat::Text),
                }
            }
        };

        Ok(Config {
            source,
            threads,
            software,
            listen,
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
        struct Out<'a> {
            threads: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            software: Option<&'a str>,
            listen: Vec<OutListen>,
            log: OutLog<'a>,
        }
        #[derive(Serialize)]
        struct OutListen {
            address: String,
            protocols: Vec<Protocol>,
            max_connections: usize,
            idle_timeout: String,
        }
        #[derive(Serialize)]
        struct OutLog<'a> {
            level: &'a str,
            format: LogFormat,
        }
        let out = Out {
            threads: self.threads,
            software: self.software.as_deref(),
            listen: self
                .listen
                .iter()
                .map(|l| OutListen {
                    address: l.address.to_string(),
                    protocols: [(l.udp, Protocol::Udp), (l.tcp, Protocol::Tcp)]
                        .into_iter()
                        .filter_map(|(on, p)| on.then_some(p))
                        .collect(),
                    max_connections: l.max_connections,
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
    let (udp, tcp) = match raw.protocols {
        None => (true, true),
        Some(p) => {
            if p.get_ref().is_empty() {
                return Err(cx.err(p.span(), "protocols is empty: use \"udp\", \"tcp\" or both"));
            }
            (
                p.get_ref().contains(&Protocol::Udp),
                p.get_ref().contains(&Protocol::Tcp),
            )
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
        max_connections,
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
