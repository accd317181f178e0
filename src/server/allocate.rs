//! The Allocate state machine (RFC 8656 §7) and Refresh (§8): the checks of a new
//! allocation in the RFC's order, the relay sockets it opens on random ports, RTP/RTCP port
//! pairs (EVEN-PORT with R reserves port + 1 under a RESERVATION-TOKEN), DONT-FRAGMENT, the
//! reply to a retransmission, and the lifetime a Refresh sets or ends.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;

use super::allocation::{family_index, Allocation, Relay, Traffic};
use super::authenticate::Auth;
use super::io::RelayToken;
use super::refusal::Refusal;
use super::turn::Outcome;
use super::{EndReason, Engine, FiveTuple, RelayIo, DEFAULT_LIFETIME};
use crate::proto::{Family, Field, TransactionId, TurnAttributes};
use crate::sys::Locked;

/// UDP, the only relay transport (REQUESTED-TRANSPORT value).
const PROTO_UDP: u8 = 17;
/// TCP (RFC 6062).
const PROTO_TCP: u8 = 6;

/// How long a port reserved by EVEN-PORT with R waits for its Allocate (RFC 8656 §7.2).
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

pub(super) fn lifetime_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A port reserved for a later Allocate: bound already (so nobody else takes it), and
/// claimable from any shard, since the claiming Allocate comes from another 5-tuple that the
/// kernel may hash to another shard.
pub struct Reserved {
    /// The driver's held port (`RelayIo::Held`).
    held: Box<dyn std::any::Any + Send>,
    family: usize,
    bound: SocketAddr,
    advertised: SocketAddr,
    expires: Instant,
}

/// Every shard's port reservations, by token. Taken only by Allocate and by a reservation's
/// deadline, never on the packet path.
#[derive(Default)]
pub struct PortReservations {
    inner: Mutex<HashMap<[u8; 8], Reserved>>,
}

impl std::fmt::Debug for PortReservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PortReservations({})", self.len())
    }
}

impl PortReservations {
    /// Ports reserved and not yet claimed.
    pub fn len(&self) -> usize {
        self.inner.locked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the reservation of `token` unless it is unknown or past its deadline.
    fn take(&self, token: &[u8; 8], now: Instant) -> Option<Reserved> {
        let mut map = self.inner.locked();
        let live = map.get(token).is_some_and(|r| r.expires > now);
        let r = map.remove(token);
        live.then_some(r).flatten()
    }

    /// Frees the reservation of `token` if it is still the one due at `deadline`.
    pub(super) fn expire(&self, token: &[u8; 8], deadline: Instant) {
        let mut map = self.inner.locked();
        if map.get(token).is_some_and(|r| r.expires == deadline) {
            map.remove(token);
        }
    }
}

impl<R: RelayIo> Engine<R> {
    /// RFC 8656 §7.2 and §8.2: the desired lifetime.
    fn desired_lifetime(&self, lifetime: Field<u32>) -> Result<Duration, Refusal> {
        let secs = match lifetime {
            Field::Absent => return Ok(DEFAULT_LIFETIME),
            Field::Malformed => return Err(Refusal::MalformedLifetime),
            Field::Present(secs) => secs,
        };
        if secs == 0 {
            return Ok(Duration::ZERO);
        }
        Ok(Duration::from_secs(u64::from(secs))
            .min(self.config.max_lifetime)
            .max(DEFAULT_LIFETIME))
    }

    pub(super) fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        tid: TransactionId,
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        if let Some(id) = self.table.id_for(tuple) {
            // A retransmitted Allocate gets the same answer again; anything else is 437.
            if let Some(a) = self.table.get(id) {
                if a.allocate_tid == tid && &*a.username == auth.username {
                    let relayed = [0, 1].map(|i| a.relays[i].as_ref().map(|r| r.advertised));
                    let left = a.expires.saturating_duration_since(now);
                    return Ok(Outcome::Allocated {
                        relayed,
                        family_error: None,
                        lifetime: lifetime_secs(left),
                        token: a.reservation_token,
                    });
                }
            }
            return Err(Refusal::AllocationExists);
        }
        if self.config.draining {
            return Err(Refusal::Draining);
        }
        let tcp = match attrs.requested_transport {
            Field::Absent => return Err(Refusal::MissingTransport),
            Field::Malformed => return Err(Refusal::MalformedTransport),
            Field::Present(PROTO_UDP) => false,
            Field::Present(PROTO_TCP) => true,
            Field::Present(_) => return Err(Refusal::UnsupportedTransport),
        };
        if tcp && !tuple.transport.is_stream() {
            return Err(Refusal::TcpOverUdp);
        }
        if tcp
            && (attrs.dont_fragment
                || attrs.even_port.is_given()
                || attrs.reservation_token.is_given()
                || attrs.additional_family.is_given())
        {
            return Err(Refusal::TcpWithOthers);
        }
        let requested_family = attrs.requested_family;
        // A token claims a reserved port; it goes with nothing that picks one (§7.2).
        let token = match attrs.reservation_token {
            Field::Absent => None,
            Field::Malformed => return Err(Refusal::MalformedToken),
            Field::Present(_) if attrs.even_port.is_given() || requested_family.is_given() => {
                return Err(Refusal::TokenWithOthers)
            }
            Field::Present(_) if attrs.additional_family.is_given() => return Err(Refusal::TokenWithOthers),
            Field::Present(t) => Some(t),
        };
        let (even, reserve) = match attrs.even_port {
            Field::Absent => (false, false),
            Field::Malformed => return Err(Refusal::MalformedEvenPort),
            Field::Present(r) => (true, r),
        };
        if reserve && attrs.additional_family.is_given() {
            return Err(Refusal::ReserveDual);
        }
        // Which families: [IPv4 wanted, IPv6 wanted], and whether IPv6 is only "additional".
        let (families, dual) = match (requested_family, attrs.additional_family) {
            (Field::Absent, Field::Absent) => ([true, false], false),
            (Field::Present(Family::V4), Field::Absent) => ([true, false], false),
            (Field::Present(Family::V6), Field::Absent) => ([false, true], false),
            (Field::Malformed, Field::Absent) => return Err(Refusal::UnknownFamily),
            (Field::Absent, Field::Present(Family::V6)) => ([true, true], true),
            (Field::Absent, _) => return Err(Refusal::AdditionalNotIpv6),
            (_, _) => return Err(Refusal::BothFamilies),
        };
        let lifetime = match self.desired_lifetime(attrs.lifetime)? {
            Duration::ZERO => DEFAULT_LIFETIME,
            d => d,
        };
        let claimed = match token {
            Some(t) => Some(self.shared.reservations.take(&t, now).ok_or(Refusal::UnknownToken)?),
            None => None,
        };
        if let Err(e) = self.shared.quota.acquire(
            auth.username,
            self.config.max_allocations,
            self.config.max_allocations_per_user,
        ) {
            if let (Some(r), Some(t)) = (claimed, token) {
                // Still reserved for a later try, until its own deadline.
                self.shared.reservations.inner.locked().insert(t, r);
            }
            return Err(e);
        }

        let id = self.table.reserve();
        let mut relays: [Option<Relay<R::Socket>>; 2] = [None, None];
        let mut family_error = None;
        let mut reserved = None;
        let mut tcp_relay = None;
        let fail = |engine: &mut Self, e: Refusal| {
            engine.table.unreserve(id);
            engine.shared.quota.release(auth.username);
            Err(e)
        };
        if let Some(r) = claimed {
            let token = RelayToken {
                allocation: id,
                family: r.family as u8,
            };
            let adopted = r
                .held
                .downcast::<R::Held>()
                .map_err(|_| Refusal::UnknownToken)
                .and_then(|h| self.io.adopt(*h, token).map_err(|_| Refusal::RelaySocket));
            match adopted {
                Ok(socket) => {
                    relays[r.family & 1] = Some(Relay {
                        socket,
                        bound: r.bound,
                        advertised: r.advertised,
                    })
                }
                Err(e) => return fail(self, e),
            }
        } else if tcp {
            let i = usize::from(families[1] && !families[0]);
            let token = RelayToken {
                allocation: id,
                family: i as u8,
            };
            match self.open_tcp_relay(tuple, i, token) {
                Ok(relay) => {
                    self.tcp_listeners.insert(id, relay.listener);
                    tcp_relay = Some(super::allocation::TcpRelayed {
                        bound: relay.bound,
                        advertised: relay.advertised,
                    });
                }
                Err(e) => return fail(self, e),
            }
        } else {
            for (i, wanted) in families.into_iter().enumerate() {
                if !wanted {
                    continue;
                }
                let token = RelayToken {
                    allocation: id,
                    family: i as u8,
                };
                match self.open_relay(now, tuple, i, even, reserve, token) {
                    Ok((r, next)) => {
                        relays[i] = Some(r);
                        reserved = next;
                    }
                    // The additional family may fail on its own (RFC 8656 §7.2).
                    Err(_) if dual && i == 1 => family_error = Some(0x02),
                    Err(e) => return fail(self, e),
                }
            }
        }
        let dont_fragment = attrs.dont_fragment;
        if dont_fragment {
            for r in relays.iter().flatten() {
                if let Err(e) = self.io.set_dont_fragment(&r.socket) {
                    let refusal = if e.kind() == std::io::ErrorKind::Unsupported {
                        Refusal::DontFragment
                    } else {
                        Refusal::RelaySocket
                    };
                    return fail(self, refusal);
                }
            }
        }
        let reservation_token = reserved.map(|r| {
            let mut t = [0u8; 8];
            self.rng.fill_bytes(&mut t);
            self.reservation_timers.push(Reverse((r.expires, t)));
            self.shared.reservations.inner.locked().insert(t, r);
            t
        });
        let mut relayed = [0, 1].map(|i| relays[i].as_ref().map(|r| r.advertised));
        if let Some(t) = tcp_relay {
            relayed[family_index(t.advertised.ip())] = Some(t.advertised);
        }
        let a = Allocation {
            tcp: tcp_relay,
            tuple: *tuple,
            username: auth.username.into(),
            allocate_tid: tid,
            relays,
            created: now,
            expires: now + lifetime,
            permissions: Default::default(),
            channels: Default::default(),
            channel_by_peer: Default::default(),
            traffic: Traffic::default(),
            billed: super::usage::start(now),
            reservation_token,
            dont_fragment,
            bandwidth: super::Bucket::new(),
            offloaded: Vec::new(),
            scheduled: None,
        };
        self.table.insert(id, a, now);
        self.stats.allocation_opened(tuple.transport);
        tracing::info!(
            event = "allocation created",
            user = auth.username,
            client = %tuple.client,
            transport = tuple.transport.as_str(),
            relay_v4 = relayed[0].map(tracing::field::display),
            relay_v6 = relayed[1].map(tracing::field::display),
            lifetime_s = lifetime.as_secs(),
            "allocation created"
        );
        Ok(Outcome::Allocated {
            relayed,
            family_error,
            lifetime: lifetime_secs(lifetime),
            token: reservation_token,
        })
    }

    /// Binds a relay socket of family `i` (0 = IPv4, 1 = IPv6) on a random free port: an even
    /// one with EVEN-PORT, and with R also the port after it, reserved under an id of its
    /// own for a later Allocate.
    fn open_relay(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        i: usize,
        even: bool,
        reserve: bool,
        token: RelayToken,
    ) -> Result<(Relay<R::Socket>, Option<Reserved>), Refusal> {
        let (bind_ip, advertised_ip) = self.relay_ips(tuple, i)?;
        if reserve && self.shared.reservations.len() >= self.config.max_allocations as usize {
            return Err(Refusal::ReservationsFull);
        }
        let range = self.config.relay_ports;
        let span = range.len();
        let start = self.rng.next_u32() % span;
        let relay = |socket, port| Relay {
            socket,
            bound: SocketAddr::new(bind_ip, port),
            advertised: SocketAddr::new(advertised_ip, port),
        };
        // A random start from the seeded generator, then every port once, so a nearly full
        // pool is still found; EVEN-PORT steps over odd ports.
        for k in 0..span {
            let port = range.nth(start.wrapping_add(k));
            if even && port % 2 == 1 {
                continue;
            }
            if reserve && (port == u16::MAX || port == range.last()) {
                continue;
            }
            let socket = match self.bind_one(SocketAddr::new(bind_ip, port), token) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => return Err(e),
            };
            if !reserve {
                return Ok((relay(socket, port), None));
            }
            let next = SocketAddr::new(bind_ip, port + 1);
            match self.io.hold(next) {
                Ok(held) => {
                    let reserved = Reserved {
                        held: Box::new(held),
                        family: i,
                        bound: next,
                        advertised: SocketAddr::new(advertised_ip, port + 1),
                        expires: now + RESERVATION_LIFETIME,
                    };
                    return Ok((relay(socket, port), Some(reserved)));
                }
                // Port + 1 is taken: give back this even port and try the next.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => {
                    tracing::warn!(error = %e, addr = %next, "cannot hold a relay port");
                    return Err(Refusal::RelaySocket);
                }
            }
        }
        Err(Refusal::PortsExhausted)
    }

    /// The relay address of family `i` to bind, and the one to advertise.
    pub(super) fn relay_ips(&self, tuple: &FiveTuple, i: usize) -> Result<(IpAddr, IpAddr), Refusal> {
        let unsupported = Refusal::NoRelayFamily;
        let bind_ip = *self
            .config
            .relay_addresses
            .iter()
            .find(|ip| family_index(**ip) == i)
            .ok_or(unsupported)?;
        let advertised_ip = match self.config.relay_external.iter().find(|ip| family_index(**ip) == i) {
            Some(ip) => *ip,
            None if !bind_ip.is_unspecified() => bind_ip,
            // A wildcard relay advertises the address the request arrived on, if of this family.
            None if family_index(tuple.server.ip()) == i && !tuple.server.ip().is_unspecified() => tuple.server.ip(),
            None => return Err(unsupported),
        };
        Ok((bind_ip, advertised_ip))
    }

    /// Binds one relay socket: `None` when the port is taken.
    fn bind_one(&mut self, addr: SocketAddr, token: RelayToken) -> Result<Option<R::Socket>, Refusal> {
        match self.io.bind(addr, token) {
            Ok(socket) => Ok(Some(socket)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97) => {
                Err(Refusal::NoRelayFamily)
            }
            Err(e) => {
                tracing::warn!(error = %e, %addr, "cannot open relay socket");
                Err(Refusal::RelaySocket)
            }
        }
    }

    pub(super) fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let lifetime = self.desired_lifetime(attrs.lifetime)?;
        if attrs.requested_family.is_given() {
            // The same decoder as Allocate's: four bytes, IPv4 or IPv6.
            let i = attrs.requested_family.ok().ok_or(Refusal::UnknownFamily)?.index();
            let a = self.table.get_mut(id).ok_or(Refusal::NoAllocation)?;
            if a.relays[i].is_none() {
                return Err(Refusal::RefreshFamily);
            }
            // Refresh 0 with a family on a dual allocation drops just that family.
            if lifetime.is_zero() && a.relays[1 - i].is_some() {
                a.relays[i] = None;
                return Ok(Outcome::Refreshed { lifetime: 0 });
            }
        }
        if lifetime.is_zero() {
            self.end_allocation(now, id, EndReason::Refresh0);
            return Ok(Outcome::Refreshed { lifetime: 0 });
        }
        if let Some(a) = self.table.get_mut(id) {
            a.expires = now + lifetime;
            tracing::info!(
                event = "allocation refreshed",
                user = auth.username,
                client = %tuple.client,
                lifetime_s = lifetime.as_secs(),
                "allocation refreshed"
            );
        }
        self.table.reschedule(id, now);
        Ok(Outcome::Refreshed {
            lifetime: lifetime_secs(lifetime),
        })
    }
}
