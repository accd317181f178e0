//! Validation: from the schema to a [`Config`] whose values cannot be wrong, with every
//! default filled in and every error at its `path:line:col`.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::schema::{RawAuth, RawCluster, RawConfig, RawListen, RawNatDiscovery, RawRelay, RawXdp};
use super::*;

/// Largest `threads` value accepted.
const MAX_THREADS: usize = 1024;

const DEFAULT_REALM: &str = "turnd";
/// Metrics are served on loopback unless the config says otherwise.
const DEFAULT_METRICS_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9641);
/// `metrics.listen = "off"` serves no HTTP endpoint.
pub const METRICS_OFF: &str = "off";
/// Generous for a NAT full of users, small enough that one source cannot use the server as
/// a reflector.
const DEFAULT_UNAUTHENTICATED_RATE: u32 = 200;
const DEFAULT_RELAY_ADDRESSES: [&str; 2] = ["0.0.0.0", "::"];

/// Converts a byte offset into a 1-based (line, column).
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
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

    /// A duration, `default` when absent, and no shorter than `min_secs`.
    fn duration(
        &self,
        v: Option<Spanned<String>>,
        default: Duration,
        min_secs: u64,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let Some(s) = v else { return Ok(default) };
        let (d, min) = (parsed(self, &s, parse_duration)?, Duration::from_secs(min_secs));
        if d < min {
            return Err(self.err(s.span(), format!("{key} must be at least {}", format_duration(min))));
        }
        Ok(d)
    }

    /// An integer, `default` when absent, inside `range`.
    fn int<T>(&self, v: Option<Spanned<i64>>, default: T, range: RangeInclusive<T>, key: &str) -> Result<T, ConfigError>
    where
        T: TryFrom<i64> + PartialOrd + std::fmt::Display,
    {
        let Some(n) = v else { return Ok(default) };
        let (lo, hi) = (range.start(), range.end());
        let bad = || {
            self.err(
                n.span(),
                format!("{key} must be between {lo} and {hi}, got {}", n.get_ref()),
            )
        };
        T::try_from(*n.get_ref())
            .ok()
            .filter(|x| range.contains(x))
            .ok_or_else(bad)
    }
}

/// Parses `s` with `f`, with `f`'s error at `s`.
fn parsed<T>(cx: &Ctx<'_>, s: &Spanned<String>, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
    f(s.get_ref()).map_err(|e| cx.err(s.span(), e))
}

/// A path that must not be empty.
fn path(cx: &Ctx<'_>, p: Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    if p.get_ref().is_empty() {
        return Err(cx.err(p.span(), format!("{key} is empty")));
    }
    Ok(PathBuf::from(p.into_inner()))
}

/// `IP:PORT`; `example` ends the error.
fn socket_addr(cx: &Ctx<'_>, s: &Spanned<String>, key: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    parsed(cx, s, |v| {
        v.parse()
            .map_err(|_| format!("invalid {key} {v:?}: expected IP:PORT, e.g. {example}"))
    })
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

        let threads = cx.int(raw.threads, 0, 0..=MAX_THREADS, "threads")?;

        let software = raw.software.map(|s| printable(&cx, s, "software")).transpose()?;

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
            Some(l) => LogConfig {
                level: match l.level {
                    None => "info".to_string(),
                    Some(s) => parsed(&cx, &s, |v| {
                        check_log_level(v).map_err(|e| format!("invalid log level {v:?}: {e}"))
                    })?,
                },
                format: l.format.unwrap_or(LogFormat::Text),
            },
        };

        let realm = match raw.realm {
            None => DEFAULT_REALM.to_string(),
            Some(r) => printable(&cx, r, "realm")?,
        };
        let relay = validate_relay(&cx, raw.relay.unwrap_or_default())?;
        let auth = validate_auth(&cx, raw.auth.unwrap_or_default())?;
        let mut peers_allow = Vec::new();
        for item in raw.peers.unwrap_or_default().allow.unwrap_or_default() {
            peers_allow.push(cidr(&cx, &item, "peers.allow")?);
        }

        let raw_metrics = raw.metrics.unwrap_or_default();
        let metrics_token = match raw_metrics.token {
            None => String::new(),
            Some(t) if t.get_ref().is_empty() => String::new(),
            Some(t) => {
                let v = t.get_ref();
                if v.len() < 16 || !v.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(cx.err(
                        t.span(),
                        "metrics.token must be at least 16 printable characters with no spaces, or empty (generated)",
                    ));
                }
                t.into_inner()
            }
        };
        let metrics_listen = match raw_metrics.listen {
            None => Some(DEFAULT_METRICS_LISTEN),
            Some(a) if a.get_ref() == METRICS_OFF => None,
            Some(a) => Some(socket_addr(
                &cx,
                &a,
                "metrics.listen",
                "\"127.0.0.1:9641\", or \"off\"",
            )?),
        };
        let server_name = raw
            .server_name
            .map(|n| parsed(&cx, &n, |v| check_dns_name(v).map(str::to_string)))
            .transpose()?;
        let admin_socket = match raw.admin.unwrap_or_default().socket {
            Some(p) => path(&cx, p, "admin.socket")?,
            None => paths::default_admin_socket(),
        };

        let wants_tls = listen.iter().any(|l| l.tls);
        let tls = match raw.tls {
            Some(t) if !wants_tls => {
                return Err(cx.err(t.span(), "[tls] is set but no [[listen]] has \"tls\" in its protocols"));
            }
            Some(t) => {
                let t = t.into_inner();
                Some(TlsConfig {
                    certificate: path(&cx, t.certificate, "tls.certificate")?,
                    private_key: path(&cx, t.private_key, "tls.private_key")?,
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
        let unauthenticated_rate = cx.int(
            raw.limits.unwrap_or_default().unauthenticated_rate,
            DEFAULT_UNAUTHENTICATED_RATE,
            0..=u32::MAX,
            "limits.unauthenticated_rate (0: no limit)",
        )?;
        let shutdown_grace = cx.duration(raw.shutdown_grace, Duration::from_secs(30), 0, "")?;

        let nat_discovery = validate_nat_discovery(&cx, raw.nat_discovery.unwrap_or_default(), &listen)?;

        let cluster = raw.cluster.map(|c| validate_cluster(&cx, c)).transpose()?;
        let xdp = validate_xdp(&cx, raw.xdp.unwrap_or_default())?;

        Ok(Config {
            source,
            threads,
            software,
            realm,
            server_name,
            listen,
            relay,
            auth,
            peers: PeersConfig { allow: peers_allow },
            metrics: MetricsConfig {
                listen: metrics_listen,
                token: metrics_token,
            },
            admin: AdminConfig { socket: admin_socket },
            tls,
            shutdown_grace,
            limits: LimitsConfig { unauthenticated_rate },
            nat_discovery,
            cluster,
            xdp,
            log,
        })
    }
}

/// A CIDR, or a lone address as its /32 or /128.
fn cidr(cx: &Ctx<'_>, item: &Spanned<String>, key: &str) -> Result<IpNet, ConfigError> {
    let v = item.get_ref();
    let net = v
        .parse::<IpNet>()
        .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            cx.err(
                item.span(),
                format!("invalid CIDR {v:?} in {key}: expected e.g. \"127.0.0.0/8\" or \"::1\""),
            )
        })?;
    Ok(net.trunc())
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
    let ports = raw
        .ports
        .map_or(Ok(PortRange::DEFAULT), |p| parsed(cx, &p, str::parse))?;
    let max_lifetime = cx.duration(
        raw.max_lifetime,
        Duration::from_secs(3600),
        crate::types::DEFAULT_LIFETIME.as_secs(),
        "relay.max_lifetime",
    )?;
    let lifetime = |v, default, key| cx.duration(v, default, 1, key);
    Ok(RelayConfig {
        addresses,
        external,
        ports,
        max_lifetime,
        permission_lifetime: lifetime(
            raw.permission_lifetime,
            crate::types::PERMISSION_LIFETIME,
            "relay.permission_lifetime",
        )?,
        channel_lifetime: lifetime(
            raw.channel_lifetime,
            crate::types::CHANNEL_LIFETIME,
            "relay.channel_lifetime",
        )?,
        max_allocations: cx.int(raw.max_allocations, 100_000, 1..=u32::MAX, "relay.max_allocations")?,
        max_allocations_per_user: cx.int(
            raw.max_allocations_per_user,
            100,
            1..=u32::MAX,
            "relay.max_allocations_per_user",
        )?,
        legacy_channel_numbers: raw.legacy_channel_numbers.unwrap_or(false),
        max_tcp_connections: cx.int(raw.max_tcp_connections, 32, 1..=100_000, "relay.max_tcp_connections")?,
        bandwidth_per_allocation: size(cx, raw.bandwidth_per_allocation)?,
        bandwidth_total: size(cx, raw.bandwidth_total)?,
    })
}

/// Text for SOFTWARE or REALM: 1 to 127 printable characters (RFC 8489 §14.9, §14.14).
fn printable(cx: &Ctx<'_>, s: Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let v = s.get_ref();
    if v.is_empty() || v.chars().count() > 127 || v.chars().any(char::is_control) {
        return Err(cx.err(s.span(), format!("{key} must be 1 to 127 printable characters")));
    }
    Ok(s.into_inner())
}

/// `[nat_discovery]`: each alternate address is local, pairs with a listener on a concrete
/// address of its family, and none of the addresses it adds is already served.
fn validate_nat_discovery(
    cx: &Ctx<'_>,
    raw: RawNatDiscovery,
    listen: &[Listener],
) -> Result<NatDiscoveryConfig, ConfigError> {
    let alternate_port = raw
        .alternate_port
        .as_ref()
        .map(|p| cx.int(Some(p.clone()), 0, 1..=u16::MAX, "nat_discovery.alternate_port"))
        .transpose()?;
    let Some(list) = raw.alternate_addresses else {
        return Ok(NatDiscoveryConfig {
            alternate_addresses: Vec::new(),
            alternate_port,
        });
    };
    let spans: Vec<Range<usize>> = list.get_ref().iter().map(|i| i.span()).collect();
    let whole = list.span();
    let addresses = ip_per_family(cx, list, "nat_discovery.alternate_addresses")?;
    let port_span = raw.alternate_port.as_ref().map_or(whole.clone(), |p| p.span());
    // Every address served so far: (address, UDP, TCP or TLS, the listener it belongs to).
    let mut served: Vec<(SocketAddr, bool, bool, SocketAddr)> = listen
        .iter()
        .map(|l| (l.address, l.udp, l.is_stream(), l.address))
        .collect();
    for (ip, span) in addresses.iter().zip(spans) {
        let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(cx.err(span, format!("alternate address {ip} cannot be a server address")));
        }
        let primaries: Vec<&Listener> = listen
            .iter()
            .filter(|l| l.address.is_ipv4() == ip.is_ipv4() && !l.address.ip().is_unspecified())
            .collect();
        if primaries.is_empty() {
            return Err(cx.err(
                span,
                format!(
                    "alternate address {ip} is {family}, but no [[listen]] has a concrete {family} address to pair it                      with (a wildcard such as 0.0.0.0 or [::] cannot be the primary; the alternate must be of the                      listener's family)"
                ),
            ));
        }
        if primaries.iter().any(|l| l.address.ip() == *ip) {
            return Err(cx.err(
                span,
                format!("alternate address {ip} is a listener's own address: name a second one"),
            ));
        }
        if let Err(e) = std::net::UdpSocket::bind(SocketAddr::new(*ip, 0)) {
            return Err(cx.err(
                span,
                format!("alternate address {ip} is not an address of this host ({e}): add it to an interface first"),
            ));
        }
        for l in primaries {
            let port = l.address.port();
            if port == 0 {
                return Err(cx.err(
                    span.clone(),
                    format!("listener {} has port 0: NAT discovery needs a fixed port", l.address),
                ));
            }
            let Some(alt_port) = alternate_port.or(port.checked_add(1)) else {
                return Err(cx.err(
                    span.clone(),
                    format!("listener {}: port + 1 is past 65535; set alternate_port", l.address),
                ));
            };
            if alt_port == port {
                return Err(cx.err(
                    port_span.clone(),
                    format!("alternate_port {alt_port} is the listener's own port"),
                ));
            }
            for a in [(l.address.ip(), alt_port), (*ip, port), (*ip, alt_port)].map(SocketAddr::from) {
                let clash = served.iter().find(|(o, udp, stream, _)| {
                    o.port() == a.port()
                        && o.is_ipv4() == a.is_ipv4()
                        && (o.ip() == a.ip() || o.ip().is_unspecified())
                        && ((*udp && l.udp) || (*stream && l.is_stream()))
                });
                if let Some((_, _, _, owner)) = clash {
                    return Err(cx.err(
                        port_span.clone(),
                        format!(
                            "NAT discovery needs {a} for listener {}, but listener {owner} already serves it: \
                             choose another alternate_port",
                            l.address
                        ),
                    ));
                }
                served.push((a, l.udp, l.is_stream(), l.address));
            }
        }
    }
    Ok(NatDiscoveryConfig {
        alternate_addresses: addresses,
        alternate_port,
    })
}

fn validate_cluster(cx: &Ctx<'_>, raw: Spanned<RawCluster>) -> Result<ClusterConfig, ConfigError> {
    let raw = raw.into_inner();
    let url = raw.redis.get_ref();
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(cx.err(
            raw.redis.span(),
            "cluster.redis must be a redis:// or rediss:// URL, e.g. \"redis://127.0.0.1:6379/0\"",
        ));
    }
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(cx.err(
            raw.redis.span(),
            format!("invalid cluster.redis {:?}: {e}", redact_url(url)),
        ));
    }
    let node = match raw.node {
        None => crate::sys::hostname(),
        Some(n) => {
            let v = n.get_ref();
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if v.is_empty() || v.len() > 64 || !v.chars().all(ok) {
                return Err(cx.err(
                    n.span(),
                    "cluster.node must be 1 to 64 letters, digits, '-', '_' or '.'",
                ));
            }
            n.into_inner()
        }
    };
    let mut advertise: Vec<SocketAddr> = Vec::new();
    for a in raw.advertise.unwrap_or_default() {
        let addr = socket_addr(cx, &a, "cluster.advertise", "\"203.0.113.5:3478\"")?;
        if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
            return Err(cx.err(
                a.span(),
                format!("cluster.advertise {addr} is not an address clients can reach"),
            ));
        }
        if advertise.iter().any(|o| o.is_ipv4() == addr.is_ipv4()) {
            return Err(cx.err(
                a.span(),
                "cluster.advertise takes at most one IPv4 and one IPv6 address",
            ));
        }
        advertise.push(addr);
    }
    let tls_ca = raw.tls_ca.map(|p| path(cx, p, "cluster.tls_ca")).transpose()?;
    Ok(ClusterConfig {
        redis: raw.redis.into_inner(),
        node,
        advertise,
        tls_ca,
        lease_ttl: cx.duration(raw.lease_ttl, Duration::from_secs(10), 3, "cluster.lease_ttl")?,
        usage_retention: cx.duration(
            raw.usage_retention,
            Duration::from_secs(90 * 86400),
            3600,
            "cluster.usage_retention",
        )?,
    })
}

/// `[xdp]`: interface names as the kernel allows them (1 to 15 bytes, no '/', ':' or space),
/// each once.
fn validate_xdp(cx: &Ctx<'_>, raw: RawXdp) -> Result<XdpConfig, ConfigError> {
    let mut interfaces: Vec<String> = Vec::new();
    for i in raw.interfaces.unwrap_or_default() {
        let v = i.get_ref();
        let ok = |c: char| c.is_ascii_graphic() && !matches!(c, '/' | ':');
        if v.is_empty() || v.len() > 15 || !v.chars().all(ok) {
            return Err(cx.err(i.span(), format!("xdp.interfaces: {v:?} is not an interface name")));
        }
        if interfaces.contains(v) {
            return Err(cx.err(i.span(), format!("xdp.interfaces names {v:?} twice")));
        }
        interfaces.push(i.into_inner());
    }
    Ok(XdpConfig {
        interfaces,
        mode: raw.mode.unwrap_or_default(),
    })
}

/// A byte rate such as "10M"; 0 (no limit) when absent.
fn size(cx: &Ctx<'_>, v: Option<Spanned<String>>) -> Result<u64, ConfigError> {
    v.map_or(Ok(0), |s| parsed(cx, &s, parse_size))
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
pub(super) fn check_log_level(text: &str) -> Result<String, String> {
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
    let nonce_lifetime = cx.duration(raw.nonce_lifetime, Duration::from_secs(600), 10, "auth.nonce_lifetime")?;
    let users_file = match raw.users_file {
        Some(p) => path(cx, p, "auth.users_file")?,
        None => paths::default_users_file(),
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
    let max_connections = cx.int(raw.max_connections, 4096, 1..=1_000_000, "max_connections")?;
    let max_connections_per_ip = cx.int(
        raw.max_connections_per_ip,
        64.min(max_connections),
        1..=max_connections,
        "max_connections_per_ip (at most max_connections)",
    )?;
    let idle_timeout = cx.duration(raw.idle_timeout, Duration::from_secs(60), 1, "idle_timeout")?;
    let proxy_from = match (raw.proxy_protocol, raw.proxy_from) {
        (None, None) => None,
        (Some(on), from) if !*on.get_ref() => match from {
            Some(f) => return Err(cx.err(f.span(), "proxy_from is set but proxy_protocol is false")),
            None => None,
        },
        (None, Some(f)) => return Err(cx.err(f.span(), "proxy_from needs proxy_protocol = true")),
        (Some(on), from) => {
            if !tcp && !tls {
                return Err(cx.err(
                    on.span(),
                    "proxy_protocol applies to \"tcp\" and \"tls\" listeners, not to UDP",
                ));
            }
            let Some(from) = from.filter(|f| !f.get_ref().is_empty()) else {
                return Err(cx.err(
                    on.span(),
                    "proxy_protocol needs proxy_from: the CIDRs of the load balancers allowed to name clients",
                ));
            };
            let mut nets = Vec::new();
            for item in from.into_inner() {
                nets.push(cidr(cx, &item, "proxy_from")?);
            }
            Some(nets)
        }
    };
    if proxy_from.is_some() && udp {
        return Err(cx.err(
            raw.address.span(),
            "a listener with proxy_protocol serves only \"tcp\" or \"tls\": give UDP a [[listen]] of its own",
        ));
    }
    Ok(Listener {
        address,
        udp,
        tcp,
        tls,
        max_connections,
        max_connections_per_ip,
        idle_timeout,
        proxy_from,
    })
}
