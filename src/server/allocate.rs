//! The Allocate state machine (RFC 8656 §7) and Refresh (§8): the checks of a new
//! allocation in the RFC's order, the relay sockets it opens on random ports, the reply to a
//! retransmission, and the lifetime a Refresh sets or ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;

use super::allocation::{family_index, Allocation, Relay, Traffic};
use super::authenticate::Auth;
use super::io::RelayToken;
use super::refusal::Refusal;
use super::turn::Outcome;
use super::{EndReason, Engine, FiveTuple, RelayIo, DEFAULT_LIFETIME};
use crate::proto::{Family, Field, TransactionId, TurnAttributes};

/// UDP, the only relay transport (REQUESTED-TRANSPORT value).
const PROTO_UDP: u8 = 17;

pub(super) fn lifetime_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
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
                    });
                }
            }
            return Err(Refusal::AllocationExists);
        }
        if self.config.draining {
            return Err(Refusal::Draining);
        }
        match attrs.requested_transport {
            Field::Absent => return Err(Refusal::MissingTransport),
            Field::Malformed => return Err(Refusal::MalformedTransport),
            Field::Present(PROTO_UDP) => {}
            Field::Present(_) => return Err(Refusal::UnsupportedTransport),
        }
        let requested_family = attrs.requested_family;
        if attrs.reservation_token.is_given() {
            if attrs.even_port.is_given() || requested_family.is_given() {
                return Err(Refusal::TokenWithOthers);
            }
            // This server never reserves ports, so no token can be valid (RFC 8656 §7.2).
            return Err(Refusal::UnknownToken);
        }
        let even = match attrs.even_port {
            Field::Absent => false,
            Field::Malformed => return Err(Refusal::MalformedEvenPort),
            // R bit: reserving the next port is not offered, so the request cannot be met.
            Field::Present(true) => return Err(Refusal::EvenPortReservation),
            Field::Present(false) => true,
        };
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
        self.shared.quota.acquire(
            auth.username,
            self.config.max_allocations,
            self.config.max_allocations_per_user,
        )?;

        let id = self.table.reserve();
        let mut relays: [Option<Relay<R::Socket>>; 2] = [None, None];
        let mut family_error = None;
        for (i, wanted) in families.into_iter().enumerate() {
            if !wanted {
                continue;
            }
            match self.open_relay(
                tuple,
                i,
                even,
                RelayToken {
                    allocation: id,
                    family: i as u8,
                },
            ) {
                Ok(r) => relays[i] = Some(r),
                // The additional family may fail on its own (RFC 8656 §7.2).
                Err(_) if dual && i == 1 => family_error = Some(0x02),
                Err(e) => {
                    self.table.unreserve(id);
                    self.shared.quota.release(auth.username);
                    return Err(e);
                }
            }
        }
        let relayed = [0, 1].map(|i| relays[i].as_ref().map(|r| r.advertised));
        let a = Allocation {
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
            bandwidth: super::Bucket::new(),
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
        })
    }

    /// Binds a relay socket of family `i` (0 = IPv4, 1 = IPv6) on a random free port.
    fn open_relay(
        &mut self,
        tuple: &FiveTuple,
        i: usize,
        even: bool,
        token: RelayToken,
    ) -> Result<Relay<R::Socket>, Refusal> {
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
        let range = self.config.relay_ports;
        let span = range.len();
        let start = self.rng.next_u32() % span;
        // A random start from the OS CSPRNG, then every port once, so a nearly full pool is
        // still found; EVEN-PORT steps over odd ports.
        for k in 0..span {
            let port = range.nth(start.wrapping_add(k));
            if even && port % 2 == 1 {
                continue;
            }
            let addr = SocketAddr::new(bind_ip, port);
            match self.io.bind(addr, token) {
                Ok(socket) => {
                    return Ok(Relay {
                        socket,
                        bound: addr,
                        advertised: SocketAddr::new(advertised_ip, port),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97) => {
                    return Err(unsupported)
                }
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "cannot open relay socket");
                    return Err(Refusal::RelaySocket);
                }
            }
        }
        Err(Refusal::PortsExhausted)
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
