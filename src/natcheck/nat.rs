//! The RFC 5780 tests (§4.3 mapping, §4.4 filtering, §4.5 hairpinning, §4.6 mapping
//! lifetime) against one STUN server, and what they mean for a call.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::probe::{response, transact, Answer, Ask, Request, Timing};
use crate::proto::Class;

/// How a NAT maps or filters (RFC 4787's terms, as RFC 5780 uses them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// No NAT at all: the public address is the local one.
    NoNat,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

impl Behaviour {
    pub fn words(self) -> &'static str {
        match self {
            Behaviour::NoNat => "none (no NAT: the public address is this host's own)",
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address- and port-dependent",
        }
    }
}

/// The mapping lifetime test's result: the longest wait after which the mapping still
/// answered, and the shortest after which it did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Lifetime {
    pub alive_after_s: Option<u64>,
    pub gone_after_s: Option<u64>,
}

/// Everything `turnd nat-check stun:` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub server: SocketAddr,
    pub local: SocketAddr,
    pub public: Option<SocketAddr>,
    /// The server answered with OTHER-ADDRESS: it supports RFC 5780.
    pub rfc5780: bool,
    pub other_address: Option<SocketAddr>,
    pub mapping: Option<Behaviour>,
    pub filtering: Option<Behaviour>,
    pub hairpinning: Option<bool>,
    pub lifetime: Option<Lifetime>,
    pub rtt_ms: Option<f64>,
    pub verdict: String,
    /// What went wrong or could not be tested, in words.
    pub notes: Vec<String>,
}

/// The local address used to reach `server` (the routing table's choice).
pub fn local_ip_for(server: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}

fn one(sock: &UdpSocket, to: SocketAddr, ask: Ask, timing: Timing) -> io::Result<Option<Answer>> {
    Ok(transact(sock, &[Request::binding(to, ask)], timing, response)?
        .pop()
        .flatten())
}

fn success(a: Option<Answer>) -> Option<Answer> {
    a.filter(|a| a.class == Class::Success)
}

/// Runs the tests. `lifetime_max` asks for the mapping lifetime test, waiting up to it.
pub fn check(server: SocketAddr, timing: Timing, lifetime_max: Option<Duration>) -> io::Result<Report> {
    let ip = local_ip_for(server)?;
    let bind = || UdpSocket::bind(SocketAddr::new(ip, 0));
    let sock = bind()?;
    let local = sock.local_addr()?;
    let mut r = Report {
        server,
        local,
        public: None,
        rfc5780: false,
        other_address: None,
        mapping: None,
        filtering: None,
        hairpinning: None,
        lifetime: None,
        rtt_ms: None,
        verdict: String::new(),
        notes: Vec::new(),
    };
    // Test I: the public address, and where the server's other address is.
    let first = one(&sock, server, Ask::default(), timing)?;
    let Some(first) = first else {
        r.verdict = format!(
            "no answer over UDP within {:.1} s: is UDP {} open to {}? Only TURN over TCP or TLS can work from here",
            timing.timeout().as_secs_f64(),
            server.port(),
            server.ip()
        );
        return Ok(r);
    };
    if let Some((code, reason)) = &first.error {
        r.verdict = format!("the server refused a plain Binding request: {code} {reason}");
        return Ok(r);
    }
    let Some(m1) = first.mapped else {
        r.verdict = "the server's answer has no mapped address".into();
        return Ok(r);
    };
    r.public = Some(m1);
    r.rtt_ms = Some(first.rtt.as_secs_f64() * 1e3);
    let no_nat = m1 == local;
    let Some(other) = first
        .other
        .filter(|o| o.ip() != server.ip() && o.port() != server.port())
    else {
        r.verdict = format!(
            "the server does not support RFC 5780 NAT behaviour discovery (no OTHER-ADDRESS): only the public \
             address is known{}",
            if no_nat {
                "; it is this host's own, so there is no NAT"
            } else {
                ""
            }
        );
        return Ok(r);
    };
    r.rfc5780 = true;
    r.other_address = Some(other);

    // Mapping (§4.3): the same socket to the other IP with the primary port, then to both.
    r.mapping = Some(if no_nat {
        Behaviour::NoNat
    } else {
        let to_ip = SocketAddr::new(other.ip(), server.port());
        let both = [
            Request::binding(to_ip, Ask::default()),
            Request::binding(other, Ask::default()),
        ];
        let answers = transact(&sock, &both, timing, response)?;
        let mapped: Vec<Option<SocketAddr>> = answers.into_iter().map(|a| success(a).and_then(|a| a.mapped)).collect();
        match (mapped.first().copied().flatten(), mapped.get(1).copied().flatten()) {
            (Some(m2), _) if m2 == m1 => Behaviour::EndpointIndependent,
            (Some(m2), Some(m3)) if m3 == m2 => Behaviour::AddressDependent,
            (Some(_), Some(_)) => Behaviour::AddressAndPortDependent,
            _ => {
                r.notes.push(format!(
                    "no answer from the server's other address {other}: mapping not tested"
                ));
                r.mapping = None;
                return finish(r, &sock, m1, server, timing, lifetime_max);
            }
        }
    });
    finish(r, &sock, m1, server, timing, lifetime_max)
}

fn finish(
    mut r: Report,
    mapping_sock: &UdpSocket,
    m1: SocketAddr,
    server: SocketAddr,
    timing: Timing,
    lifetime_max: Option<Duration>,
) -> io::Result<Report> {
    let ip = r.local.ip();
    let other = r.other_address.unwrap_or(server);
    // Filtering (§4.4), on a socket that has sent only to the primary address: answers from
    // the other IP and port, and from the other port, asked for at once.
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    if success(one(&sock, server, Ask::default(), timing)?).is_some() {
        let asks = [
            Request::binding(
                server,
                Ask {
                    change_ip: true,
                    change_port: true,
                    ..Ask::default()
                },
            ),
            Request::binding(
                server,
                Ask {
                    change_port: true,
                    ..Ask::default()
                },
            ),
        ];
        let answers = transact(&sock, &asks, timing, response)?;
        let came = |i: usize, from: SocketAddr| {
            answers
                .get(i)
                .cloned()
                .flatten()
                .filter(|a| a.class == Class::Success)
                .map(|a| a.from == from)
        };
        let both_from = other;
        let port_from = SocketAddr::new(server.ip(), other.port());
        r.filtering = match (came(0, both_from), came(1, port_from)) {
            (Some(false), _) | (_, Some(false)) => {
                r.notes
                    .push("the server answered CHANGE-REQUEST from the wrong address: filtering not tested".into());
                None
            }
            (Some(true), _) if r.mapping == Some(Behaviour::NoNat) => Some(Behaviour::NoNat),
            (Some(true), _) => Some(Behaviour::EndpointIndependent),
            (None, Some(true)) => Some(Behaviour::AddressDependent),
            (None, None) => Some(Behaviour::AddressAndPortDependent),
        };
        if r.mapping == Some(Behaviour::NoNat) && r.filtering != Some(Behaviour::NoNat) {
            r.notes
                .push("no NAT, but a firewall filters what this host did not ask for".into());
        }
    }

    // Hairpinning (§4.5): a request to our own public address comes back to us through the NAT.
    r.hairpinning = if r.mapping == Some(Behaviour::NoNat) {
        None
    } else {
        let req = Request::binding(m1, Ask::default());
        let back = transact(mapping_sock, &[req], timing, |c| c == Class::Request)?;
        Some(back.first().is_some_and(Option::is_some))
    };

    if let Some(max) = lifetime_max {
        r.lifetime = lifetime(ip, server, timing, max)?;
        if r.lifetime.is_none() {
            r.notes
                .push("the server did not answer RESPONSE-PORT: mapping lifetime not tested".into());
        }
    }
    r.verdict = verdict(&r);
    Ok(r)
}

/// Mapping lifetime (§4.6): sockets X bind a mapping each; after waiting t, a second socket
/// asks the server to answer to X's mapped port (RESPONSE-PORT). The answer reaches X only
/// while X's mapping lives. The waits double from 1 s up to `max`, all run at once.
fn lifetime(ip: IpAddr, server: SocketAddr, timing: Timing, max: Duration) -> io::Result<Option<Lifetime>> {
    let mut waits = vec![];
    let mut t = Duration::from_secs(1);
    while t < max {
        waits.push(t);
        t *= 2;
    }
    waits.push(max);
    let mut probes = vec![];
    for &wait in &waits {
        let x = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let Some(mapped) = success(one(&x, server, Ask::default(), timing)?).and_then(|a| a.mapped) else {
            return Ok(None);
        };
        probes.push((wait, x, mapped, Instant::now()));
    }
    let y = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let mut result = Lifetime {
        alive_after_s: None,
        gone_after_s: None,
    };
    for (wait, x, mapped, bound) in probes {
        std::thread::sleep((bound + wait).saturating_duration_since(Instant::now()));
        let req = Request::binding(
            server,
            Ask {
                response_port: Some(mapped.port()),
                ..Ask::default()
            },
        );
        // Y sends (and retransmits); X listens for the answer.
        let mut heard = None;
        for k in 0..timing.rc.max(1) {
            let _ = y.send_to(&req.bytes, server);
            heard = super::probe::await_answer(&x, req.tid, timing.rto * (1u32 << k.min(20)))?;
            if heard.is_some() {
                break;
            }
        }
        let alive = heard.is_some();
        if alive {
            result.alive_after_s = Some(wait.as_secs());
        } else if result.gone_after_s.is_none() {
            result.gone_after_s = Some(wait.as_secs());
        }
    }
    Ok(Some(result))
}

/// The one-line verdict.
pub fn verdict(r: &Report) -> String {
    use Behaviour::*;
    match (r.mapping, r.filtering) {
        (Some(NoNat), Some(NoNat)) => "no NAT: direct connections possible with every peer".into(),
        (Some(NoNat), _) => "no NAT, but a firewall: direct connections possible with most peers".into(),
        (Some(EndpointIndependent), Some(EndpointIndependent)) => {
            "direct connections possible with every peer (endpoint-independent NAT)".into()
        }
        (Some(EndpointIndependent), _) => "direct connections possible with most peers".into(),
        (Some(AddressDependent | AddressAndPortDependent), _) => {
            "TURN relay needed for peers behind a similar NAT (this NAT changes the public port per destination)".into()
        }
        _ => "NAT behaviour unknown: the server's other address did not answer".into(),
    }
}
