//! `turnd nat-check`: the client on the other end. `stun:` runs the RFC 5780 NAT behaviour
//! tests against any server that supports them; `turn:` checks a TURN server end to end.
//! Blocking sockets on the calling thread: a diagnostic run, not a server.

mod nat;
mod probe;
mod turn;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

pub use nat::{Behaviour, Report};
pub use probe::Timing;
pub use turn::TurnReport;

/// What `nat-check` is pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stun { host: String, port: u16 },
    Turn { host: String, port: u16, tcp: bool },
}

/// Parses `stun:HOST[:PORT]` or `turn:HOST[:PORT][?transport=udp|tcp]` (RFC 7064, RFC 7065).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("{url:?}: {why}; expected stun:HOST[:PORT] or turn:HOST[:PORT]?transport=udp|tcp");
    let (scheme, rest) = url.split_once(':').ok_or_else(|| bad("no scheme"))?;
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let hostport = hostport.trim_start_matches("//");
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            _ => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 3478,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("bad port"))?,
    };
    match scheme {
        "stun" if query.is_none() => Ok(Target::Stun { host, port }),
        "stun" => Err(bad("stun: takes no query")),
        "turn" => {
            let tcp = match query {
                None | Some("transport=udp") => false,
                Some("transport=tcp") => true,
                Some(_) => return Err(bad("the only query is transport=udp or transport=tcp")),
            };
            Ok(Target::Turn { host, port, tcp })
        }
        "stuns" | "turns" => Err(bad("TLS is not checked yet; use the TCP form")),
        _ => Err(bad("unknown scheme")),
    }
}

/// Command-line options of `nat-check`.
#[derive(Debug, Clone)]
pub struct Options {
    pub json: bool,
    pub timing: Timing,
    pub lifetime_max: Option<Duration>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub secret: Option<String>,
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} has no address"))
}

/// Runs `turnd nat-check URL`: 0 when the check passed, 1 when it ran and failed, 2 when it
/// could not run.
pub fn run(url: &str, o: &Options) -> ExitCode {
    match check(url, o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(msg) => {
            eprintln!("turnd nat-check: {msg}");
            ExitCode::from(2)
        }
    }
}

/// Prints a report as JSON or as text.
fn show<R: serde::Serialize>(json: bool, r: &R, text: fn(&R)) {
    if json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
    } else {
        text(r);
    }
}

fn check(url: &str, o: &Options) -> Result<bool, String> {
    match parse_url(url)? {
        Target::Stun { host, port } => {
            let server = resolve(&host, port)?;
            let r = nat::check(server, o.timing, o.lifetime_max).map_err(|e| format!("{server}: {e}"))?;
            show(o.json, &r, print_stun);
            Ok(r.public.is_some())
        }
        Target::Turn { host, port, tcp } => {
            let (user, password) = match (&o.user, &o.password, &o.secret) {
                (Some(u), Some(p), None) => (u.clone(), p.clone()),
                (user, None, Some(secret)) => {
                    let now = crate::sys::unix_time().as_secs();
                    let secrets = crate::auth::RestSecrets::new([secret.clone()]);
                    secrets
                        .mint(now + 3600, Some(user.as_deref().unwrap_or("nat-check")))
                        .ok_or("cannot mint a credential from --secret")?
                }
                _ => return Err("turn: needs --user and --password, or --secret (a TURN REST API secret)".into()),
            };
            let server = resolve(&host, port)?;
            let transport = if tcp { "tcp" } else { "udp" };
            let r = turn::check(server, transport, &user, &password, o.timing).map_err(|e| format!("{server}: {e}"))?;
            show(o.json, &r, print_turn);
            Ok(r.ok)
        }
    }
}

fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unknown".into(), |v| v.to_string())
}

fn print_stun(r: &Report) {
    println!("server:         {}", r.server);
    println!("local address:  {}", r.local);
    println!("public address: {}", or_unknown(r.public));
    if let Some(rtt) = r.rtt_ms {
        println!("round trip:     {rtt:.1} ms");
    }
    if r.rfc5780 {
        println!("other address:  {}", or_unknown(r.other_address));
        println!("mapping:        {}", r.mapping.map_or("not tested", Behaviour::words));
        println!("filtering:      {}", r.filtering.map_or("not tested", Behaviour::words));
        let hairpin = match r.hairpinning {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not applicable (no NAT)",
        };
        println!("hairpinning:    {hairpin}");
        if let Some(l) = r.lifetime {
            let text = match (l.alive_after_s, l.gone_after_s) {
                (Some(a), Some(g)) => format!("between {a} s and {g} s"),
                (Some(a), None) => format!("at least {a} s"),
                (None, Some(g)) => format!("under {g} s"),
                (None, None) => "unknown".into(),
            };
            println!("mapping lifetime: {text}");
        }
    }
    for n in &r.notes {
        println!("note:           {n}");
    }
    println!("verdict:        {}", r.verdict);
}

fn print_turn(r: &TurnReport) {
    println!("server:         {} over {}", r.server, r.transport.to_uppercase());
    println!("user:           {}", r.user);
    if let Some(realm) = &r.realm {
        println!("realm:          {realm}");
    }
    println!("relayed address:   {}", or_unknown(r.relayed));
    println!("reflexive address: {}", or_unknown(r.reflexive));
    if r.relayed.is_some() {
        println!("data came back:    {}", if r.data_returned { "yes" } else { "no" });
    }
    if let Some(rtt) = r.rtt_ms {
        println!("round trip:        {rtt:.1} ms (client, relay, peer and back)");
    }
    println!("verdict:        {}", r.verdict);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_as_rfc_7064_and_7065_write_them() {
        let s = |h: &str, p| Target::Stun {
            host: h.into(),
            port: p,
        };
        assert_eq!(parse_url("stun:turn.example.org"), Ok(s("turn.example.org", 3478)));
        assert_eq!(parse_url("stun:198.18.0.1:3479"), Ok(s("198.18.0.1", 3479)));
        assert_eq!(parse_url("stun:[::1]:5000"), Ok(s("::1", 5000)));
        assert_eq!(
            parse_url("turn:127.0.0.1?transport=tcp"),
            Ok(Target::Turn {
                host: "127.0.0.1".into(),
                port: 3478,
                tcp: true
            })
        );
        assert_eq!(
            parse_url("turn:[::1]:9?transport=udp"),
            Ok(Target::Turn {
                host: "::1".into(),
                port: 9,
                tcp: false
            })
        );
        for bad in [
            "stun:",
            "stun:h:0",
            "stun:h:99999",
            "http://x",
            "turn:h?transport=sctp",
            "stun:h?x",
            "nohost",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
