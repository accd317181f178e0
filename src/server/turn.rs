//! TURN requests (RFC 8656 §7–§12) and long-term authentication (RFC 8489 §9.2).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::RngCore;

use super::allocation::{family_index, Allocation, Channel, Relay, Traffic, CHANNEL_LIFETIME, PERMISSION_LIFETIME};
use super::refusal::Refusal;
use super::relay::{AllocationId, RelayToken};
use super::stats::{AuthFailure, Direction, DropReason, Framing, TurnMethod};
use super::{policy, EndReason, Engine, FiveTuple, Output, RelayIo, DEFAULT_LIFETIME};
use crate::auth::{Verdict, NONCE_LEN};
use crate::proto::attr::{decode_text, decode_u32, decode_xor_address};
use crate::proto::{AttrType, Class, ErrorCode, Message, MessageType, Method};

/// PASSWORD-ALGORITHMS as sent in 401 and 438: SHA-256 first (preferred), then MD5.
const PASSWORD_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
const ALG_MD5: u16 = 0x0001;
const ALG_SHA256: u16 = 0x0002;

/// USERNAME is limited to 513 bytes, REALM and NONCE to 763 (RFC 8489 §14).
const MAX_USERNAME: usize = 513;
const MAX_REALM: usize = 763;

/// UDP, the only relay transport (REQUESTED-TRANSPORT value).
const PROTO_UDP: u8 = 17;

/// How a request authenticated.
struct Auth<'m> {
    username: &'m str,
    key: [u8; 32],
    key_len: usize,
    /// The request used MESSAGE-INTEGRITY-SHA256, so the response does too.
    sha256: bool,
}

impl Auth<'_> {
    fn key(&self) -> (&[u8], bool) {
        (&self.key[..self.key_len], self.sha256)
    }
}

/// Why a request was not authenticated, and so how to answer.
enum Reject {
    /// 401 with a fresh nonce, and a metric reason unless it is the first challenge.
    Unauthorized(Option<AuthFailure>),
    /// 438 with a fresh nonce.
    StaleNonce(AuthFailure),
    /// 400.
    BadRequest,
}

/// A request's outcome: a success body to write, or an error code.
enum Outcome {
    Allocated {
        relayed: [Option<SocketAddr>; 2],
        family_error: Option<u8>,
        lifetime: u32,
    },
    Refreshed {
        lifetime: u32,
    },
    Empty,
}

fn method_label(m: Method) -> TurnMethod {
    match m {
        Method::ALLOCATE => TurnMethod::allocate,
        Method::REFRESH => TurnMethod::refresh,
        Method::CREATE_PERMISSION => TurnMethod::create_permission,
        _ => TurnMethod::channel_bind,
    }
}

fn lifetime_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl<R: RelayIo> Engine<R> {
    pub(super) fn turn_request<'x>(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let method = method_label(msg.method());
        // Requests that cannot succeed whatever their credentials are answered before
        // authentication, with a small error instead of a larger challenge: this caps what a
        // spoofed request can reflect (RFC 8656 would authenticate first; the answer would be
        // the same).
        let has_allocation = self.table.id_for(tuple).is_some();
        let refusal = if msg.method() == Method::ALLOCATE
            && msg.get(AttrType::REQUESTED_TRANSPORT).is_none()
            && !has_allocation
        {
            Some(Refusal::MissingTransport)
        } else if msg.method() != Method::ALLOCATE && !has_allocation {
            Some(Refusal::NoAllocation)
        } else {
            None
        };
        let credentials = self.shared.credentials();
        let refusal = refusal.or((!credentials.is_configured()).then_some(Refusal::RelayDisabled));
        if let Some(r) = refusal {
            self.stats.turn_request(method, false);
            self.log_refusal(now, tuple, msg, r);
            return self.error(msg, tuple, r.code(), &[], out);
        }
        let auth = match self.authenticate(now, tuple, msg, &*credentials) {
            Ok(a) => a,
            Err(reject) => {
                self.stats.turn_request(method, false);
                return self.reject(now, tuple, msg, reject, out);
            }
        };
        let result = match msg.method() {
            Method::ALLOCATE => self.allocate(now, tuple, msg, &auth),
            Method::REFRESH => self.refresh(now, tuple, msg, &auth),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, msg, &auth),
            _ => self.channel_bind(now, tuple, msg, &auth),
        };
        self.stats.turn_request(method, result.is_ok());
        self.signed_reply = true;
        let key = Some(auth.key());
        let len = match result {
            Ok(outcome) => {
                let typ = MessageType::new(msg.method(), Class::Success);
                self.respond(msg, typ, out, key, |w| match outcome {
                    Outcome::Allocated {
                        relayed,
                        family_error,
                        lifetime,
                    } => {
                        for addr in relayed.into_iter().flatten() {
                            w.xor_address(AttrType::XOR_RELAYED_ADDRESS, addr)?;
                        }
                        if let Some(family) = family_error {
                            // ADDRESS-ERROR-CODE (RFC 8656 §18.13): family, reserved, class, number, reason.
                            let reason = ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED.reason().as_bytes();
                            let mut v = [0u8; 4 + 28];
                            v[0] = family;
                            v[2] = 4;
                            v[3] = 40;
                            v[4..4 + reason.len()].copy_from_slice(reason);
                            w.attr(AttrType::ADDRESS_ERROR_CODE, &v[..4 + reason.len()])?;
                        }
                        w.attr_u32(AttrType::LIFETIME, lifetime)?;
                        w.xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client)
                    }
                    Outcome::Refreshed { lifetime } => w.attr_u32(AttrType::LIFETIME, lifetime),
                    Outcome::Empty => Ok(()),
                })
            }
            Err(refusal) => {
                self.log_refusal(now, tuple, msg, refusal);
                let typ = MessageType::new(msg.method(), Class::Error);
                self.respond(msg, typ, out, key, |w| w.error_code(refusal.code()))
            }
        };
        len.map_or(Output::None, |len| Output::ToClient { tuple: *tuple, len })
    }

    /// Logs a refusal (rate-limited), naming the setting that would change it, if any.
    fn log_refusal(&mut self, now: Instant, tuple: &FiveTuple, msg: &Message<'_>, refusal: Refusal) {
        if let Some(suppressed) = self.log_limiter.allow(now) {
            let user = msg
                .get(AttrType::USERNAME)
                .and_then(|a| decode_text(a.value, MAX_USERNAME).ok())
                .unwrap_or("");
            let why = refusal.reason();
            match refusal.setting() {
                Some(setting) => tracing::info!(
                    event = "request refused",
                    method = ?method_label(msg.method()),
                    code = refusal.code().0,
                    reason = why,
                    setting,
                    user,
                    client = %tuple.client,
                    transport = tuple.transport.as_str(),
                    suppressed,
                    "request refused: {why} (setting: {setting})"
                ),
                None => tracing::info!(
                    event = "request refused",
                    method = ?method_label(msg.method()),
                    code = refusal.code().0,
                    reason = why,
                    user,
                    client = %tuple.client,
                    transport = tuple.transport.as_str(),
                    suppressed,
                    "request refused: {why}"
                ),
            }
        }
    }

    /// RFC 8489 §9.2.4: long-term credential checks, in the RFC's order.
    fn authenticate<'m>(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'m>,
        credentials: &dyn crate::auth::CredentialSource,
    ) -> Result<Auth<'m>, Reject> {
        if !msg.has_integrity() && !msg.has_integrity_sha256() {
            return Err(Reject::Unauthorized(None));
        }
        let text = |t: AttrType, max: usize| msg.get(t).and_then(|a| decode_text(a.value, max).ok());
        let (Some(username), Some(realm), Some(nonce)) = (
            text(AttrType::USERNAME, MAX_USERNAME),
            text(AttrType::REALM, MAX_REALM),
            msg.get(AttrType::NONCE).map(|a| a.value),
        ) else {
            self.stats.auth_failure(AuthFailure::malformed);
            return Err(Reject::BadRequest);
        };
        let unix_now = self.clock.unix_secs(now);
        match self.shared.nonce_key.check(nonce, unix_now, tuple) {
            crate::auth::NonceCheck::Valid => {}
            crate::auth::NonceCheck::Expired => return Err(Reject::StaleNonce(AuthFailure::stale_nonce)),
            crate::auth::NonceCheck::Invalid => return Err(Reject::StaleNonce(AuthFailure::invalid_nonce)),
        }
        if realm != self.config.realm {
            return Err(Reject::Unauthorized(Some(AuthFailure::wrong_realm)));
        }
        // PASSWORD-ALGORITHMS must echo ours and PASSWORD-ALGORITHM pick one of them; both or
        // neither (RFC 8489 §9.2.4 item on the nonce cookie).
        let algorithm = match (
            msg.get(AttrType::PASSWORD_ALGORITHMS),
            msg.get(AttrType::PASSWORD_ALGORITHM),
        ) {
            (None, None) => ALG_MD5,
            (Some(list), Some(alg)) if list.value == PASSWORD_ALGORITHMS && alg.value.len() >= 4 => {
                let a = u16::from_be_bytes([alg.value[0], alg.value[1]]);
                if a != ALG_MD5 && a != ALG_SHA256 {
                    self.stats.auth_failure(AuthFailure::malformed);
                    return Err(Reject::BadRequest);
                }
                a
            }
            _ => {
                self.stats.auth_failure(AuthFailure::malformed);
                return Err(Reject::BadRequest);
            }
        };
        let use_sha256_mi = msg.has_integrity_sha256();
        let mut chosen = ([0u8; 32], 0usize);
        let verdict = credentials.verify(username, realm, unix_now, &mut |keys| {
            let key: &[u8] = if algorithm == ALG_SHA256 {
                &keys.sha256
            } else {
                &keys.md5
            };
            let ok = if use_sha256_mi {
                msg.verify_integrity_sha256(key)
            } else {
                msg.verify_integrity(key)
            };
            if ok {
                chosen.0[..key.len()].copy_from_slice(key);
                chosen.1 = key.len();
            }
            ok
        });
        match verdict {
            Verdict::Match(_) => Ok(Auth {
                username,
                key: chosen.0,
                key_len: chosen.1,
                sha256: use_sha256_mi,
            }),
            Verdict::Mismatch => Err(Reject::Unauthorized(Some(AuthFailure::bad_integrity))),
            Verdict::Unknown => Err(Reject::Unauthorized(Some(AuthFailure::unknown_user))),
            Verdict::Expired => Err(Reject::Unauthorized(Some(AuthFailure::expired_credential))),
        }
    }

    fn reject<'x>(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        reject: Reject,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let (code, failure) = match reject {
            Reject::BadRequest => {
                self.log_auth(now, tuple, msg, AuthFailure::malformed);
                return self.error(msg, tuple, ErrorCode::BAD_REQUEST, &[], out);
            }
            Reject::Unauthorized(f) => (ErrorCode::UNAUTHORIZED, f),
            Reject::StaleNonce(f) => (ErrorCode::STALE_NONCE, Some(f)),
        };
        if let Some(f) = failure {
            self.stats.auth_failure(f);
            self.log_auth(now, tuple, msg, f);
        }
        let expiry = self.clock.unix_secs(now) + self.config.nonce_lifetime.as_secs();
        let offer = self.config.password_algorithms;
        let (nonce, nonce_len): ([u8; NONCE_LEN], usize) = self.shared.nonce_key.issue(expiry, tuple, offer);
        let typ = MessageType::new(msg.method(), Class::Error);
        let realm = self.config.realm.clone();
        // A challenge goes to anyone, so it is as small as the protocol allows: no reason
        // phrase, and PASSWORD-ALGORITHMS only when SHA-256 is offered.
        let len = self.respond(msg, typ, out, None, |w| {
            w.error_code_bare(code)?;
            w.attr(AttrType::REALM, realm.as_bytes())?;
            w.attr(AttrType::NONCE, &nonce[..nonce_len])?;
            if offer {
                w.attr(AttrType::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS)?;
            }
            Ok(())
        });
        len.map_or(Output::None, |len| Output::ToClient { tuple: *tuple, len })
    }

    fn log_auth(&mut self, now: Instant, tuple: &FiveTuple, msg: &Message<'_>, f: AuthFailure) {
        if let Some(suppressed) = self.log_limiter.allow(now) {
            let user = msg
                .get(AttrType::USERNAME)
                .and_then(|a| decode_text(a.value, MAX_USERNAME).ok())
                .unwrap_or("");
            tracing::info!(
                event = "auth failure",
                reason = ?f,
                user,
                client = %tuple.client,
                transport = tuple.transport.as_str(),
                suppressed,
                "authentication failed: {f:?}"
            );
        }
    }

    /// The allocation on this 5-tuple, checked against the request's credentials.
    fn own_allocation(&self, tuple: &FiveTuple, auth: &Auth<'_>) -> Result<AllocationId, Refusal> {
        let id = self.table.id_for(tuple).ok_or(Refusal::NoAllocation)?;
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        if &*a.username != auth.username {
            self.stats.auth_failure(AuthFailure::wrong_credentials);
            return Err(Refusal::WrongCredentials);
        }
        Ok(id)
    }

    /// RFC 8656 §7.2 and §8.2: the desired lifetime.
    fn desired_lifetime(&self, msg: &Message<'_>) -> Result<Duration, Refusal> {
        let Some(a) = msg.get(AttrType::LIFETIME) else {
            return Ok(DEFAULT_LIFETIME);
        };
        let secs = decode_u32(a.value).map_err(|_| Refusal::MalformedLifetime)?;
        if secs == 0 {
            return Ok(Duration::ZERO);
        }
        Ok(Duration::from_secs(u64::from(secs))
            .min(self.config.max_lifetime)
            .max(DEFAULT_LIFETIME))
    }

    fn allocate(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        if let Some(id) = self.table.id_for(tuple) {
            // A retransmitted Allocate gets the same answer again; anything else is 437.
            if let Some(a) = self.table.get(id) {
                if a.allocate_tid == msg.transaction_id() && &*a.username == auth.username {
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
        let transport = msg
            .get(AttrType::REQUESTED_TRANSPORT)
            .ok_or(Refusal::MissingTransport)?;
        if transport.value.len() != 4 {
            return Err(Refusal::MalformedTransport);
        }
        if transport.value[0] != PROTO_UDP {
            return Err(Refusal::UnsupportedTransport);
        }
        let requested_family = msg.get(AttrType::REQUESTED_ADDRESS_FAMILY);
        let additional_family = msg.get(AttrType::ADDITIONAL_ADDRESS_FAMILY);
        let even_port = msg.get(AttrType::EVEN_PORT);
        if msg.get(AttrType::RESERVATION_TOKEN).is_some() {
            if even_port.is_some() || requested_family.is_some() {
                return Err(Refusal::TokenWithOthers);
            }
            // This server never reserves ports, so no token can be valid (RFC 8656 §7.2).
            return Err(Refusal::UnknownToken);
        }
        let even = match even_port {
            None => false,
            Some(a) if a.value.is_empty() => return Err(Refusal::MalformedEvenPort),
            // R bit: reserving the next port is not offered, so the request cannot be met.
            Some(a) if a.value[0] & 0x80 != 0 => return Err(Refusal::EvenPortReservation),
            Some(_) => true,
        };
        // Which families: [IPv4 wanted, IPv6 wanted], and whether IPv6 is only "additional".
        let (families, dual) = match (requested_family, additional_family) {
            (Some(_), Some(_)) => return Err(Refusal::BothFamilies),
            (Some(a), None) => match a.value.first() {
                Some(0x01) if a.value.len() == 4 => ([true, false], false),
                Some(0x02) if a.value.len() == 4 => ([false, true], false),
                _ => return Err(Refusal::UnknownFamily),
            },
            (None, Some(a)) => match a.value.first() {
                Some(0x02) if a.value.len() == 4 => ([true, true], true),
                _ => return Err(Refusal::AdditionalNotIpv6),
            },
            (None, None) => ([true, false], false),
        };
        let lifetime = match self.desired_lifetime(msg)? {
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
            allocate_tid: msg.transaction_id(),
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

    fn refresh(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let lifetime = self.desired_lifetime(msg)?;
        if let Some(f) = msg.get(AttrType::REQUESTED_ADDRESS_FAMILY) {
            let i = match f.value.first() {
                Some(0x01) => 0,
                Some(0x02) => 1,
                _ => return Err(Refusal::UnknownFamily),
            };
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

    /// Checks a peer address for CreatePermission and ChannelBind: family (443) and policy
    /// (403).
    fn check_peer(&self, id: AllocationId, peer: SocketAddr) -> Result<SocketAddr, Refusal> {
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        let ip = policy::canonical(peer.ip());
        if a.relays[family_index(ip)].is_none() {
            return Err(Refusal::PeerFamily);
        }
        if !self.config.peers.permits(ip) {
            return Err(Refusal::PeerDenied);
        }
        Ok(SocketAddr::new(ip, peer.port()))
    }

    /// 508 when installing permissions for `peers` would pass [`MAX_PERMISSIONS`].
    fn room_for_permissions(&self, id: AllocationId, peers: &[Option<SocketAddr>]) -> Result<(), Refusal> {
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        let new = peers
            .iter()
            .flatten()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + new > super::allocation::MAX_PERMISSIONS {
            return Err(Refusal::TooManyPermissions);
        }
        Ok(())
    }

    fn install_permission(&mut self, id: AllocationId, ip: IpAddr, now: Instant) {
        if let Some(a) = self.table.get_mut(id) {
            if a.permissions.insert(ip, now + PERMISSION_LIFETIME).is_none() {
                self.stats.permissions_delta(1);
            }
        }
    }

    fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let tid = msg.transaction_id();
        let mut peers = [None::<SocketAddr>; 16];
        let mut n = 0;
        for a in msg.attributes().filter(|a| a.typ == AttrType::XOR_PEER_ADDRESS) {
            let peer = decode_xor_address(a.value, &tid).map_err(|_| Refusal::MalformedPeer)?;
            let slot = peers.get_mut(n).ok_or(Refusal::TooManyPeers)?;
            // All or nothing: check every peer before installing any (RFC 8656 §10.2).
            *slot = Some(self.check_peer(id, peer)?);
            n += 1;
        }
        if n == 0 {
            return Err(Refusal::MissingPeer);
        }
        self.room_for_permissions(id, &peers[..n])?;
        for peer in peers.into_iter().flatten() {
            self.install_permission(id, peer.ip(), now);
        }
        self.table.reschedule(id, now);
        Ok(Outcome::Empty)
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let number = msg
            .get(AttrType::CHANNEL_NUMBER)
            .filter(|a| a.value.len() == 4)
            .map(|a| u16::from_be_bytes([a.value[0], a.value[1]]))
            .ok_or(Refusal::MalformedChannel)?;
        if !(crate::proto::ChannelNumber::MIN..=self.config.max_channel).contains(&number) {
            return Err(Refusal::ChannelRange);
        }
        let peer = msg
            .get(AttrType::XOR_PEER_ADDRESS)
            .and_then(|a| decode_xor_address(a.value, &msg.transaction_id()).ok())
            .ok_or(Refusal::MalformedPeer)?;
        let peer = self.check_peer(id, peer)?;
        self.room_for_permissions(id, &[Some(peer)])?;
        let a = self.table.get_mut(id).ok_or(Refusal::NoAllocation)?;
        // RFC 8656 §11.2: a number stays with its peer, and a peer with its number, including
        // during the cool-down after expiry.
        if let Some(c) = a.channels.get(&number) {
            if c.peer != peer {
                return Err(Refusal::ChannelTaken);
            }
        }
        if let Some(&n) = a.channel_by_peer.get(&peer) {
            if n != number {
                return Err(Refusal::PeerOnOtherChannel);
            }
        }
        let newly_active = !a.channels.get(&number).is_some_and(|c| c.counted);
        a.channels.insert(
            number,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
                counted: true,
            },
        );
        a.channel_by_peer.insert(peer, number);
        if newly_active {
            self.stats.channels_delta(1);
        }
        self.install_permission(id, peer.ip(), now);
        self.table.reschedule(id, now);
        Ok(Outcome::Empty)
    }

    pub(super) fn send_indication<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: Message<'a>,
    ) -> Output<'a, R::Socket> {
        let metrics = &self.stats;
        let Some(id) = self.table.id_for(tuple) else {
            metrics.dropped(DropReason::no_allocation);
            return Output::None;
        };
        let (Some(peer), Some(data)) = (
            msg.get(AttrType::XOR_PEER_ADDRESS)
                .and_then(|a| decode_xor_address(a.value, &msg.transaction_id()).ok()),
            msg.get(AttrType::DATA),
        ) else {
            metrics.dropped(DropReason::malformed);
            return Output::None;
        };
        let Some(a) = self.table.get_mut(id) else {
            return Output::None;
        };
        let peer = SocketAddr::new(policy::canonical(peer.ip()), peer.port());
        if !a.has_permission(peer.ip(), now) {
            metrics.dropped(DropReason::no_permission);
            return Output::None;
        }
        if !Self::bandwidth_ok(
            &mut a.bandwidth,
            &mut self.shard_bandwidth,
            &self.config,
            self.shards,
            now,
            data.value.len(),
        ) {
            metrics.dropped(DropReason::bandwidth);
            return Output::None;
        }
        a.traffic.to_peer_packets += 1;
        a.traffic.to_peer_bytes += data.value.len() as u64;
        metrics.relayed(Direction::client_to_peer, data.value.len());
        metrics.framed(Framing::send_indication);
        match &a.relays[family_index(peer.ip())] {
            Some(r) => Output::ToPeer {
                socket: &r.socket,
                peer,
                data: data.value,
            },
            None => Output::None,
        }
    }
}
