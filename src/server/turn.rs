//! TURN requests (RFC 8656 §7–§12): the dispatch of every authenticated request, its answer
//! and its log line, then CreatePermission and ChannelBind. Allocate and Refresh are in
//! `allocate.rs`, authentication in `authenticate.rs`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::allocation::{family_index, Channel};
use super::authenticate::Auth;
use super::io::AllocationId;
use super::refusal::Refusal;
use super::stats::{AuthFailure, TurnMethod};
use super::{policy, Engine, FiveTuple, Output, RelayIo};
use crate::proto::request::{PeersError, MAX_PEERS};
use crate::proto::{AttrType, Class, ErrorCode, Message, MessageType, Method, TurnAttributes};

/// A request's outcome: a success body to write, or an error code.
pub(super) enum Outcome {
    Allocated {
        relayed: [Option<SocketAddr>; 2],
        family_error: Option<u8>,
        lifetime: u32,
        /// RESERVATION-TOKEN, when EVEN-PORT with R reserved the next port.
        token: Option<[u8; 8]>,
    },
    Refreshed {
        lifetime: u32,
    },
    /// ConnectionBind succeeded: this connection is joined with the peer's.
    Joined(super::ConnectionId),
    Empty,
}

pub(super) fn method_label(m: Method) -> TurnMethod {
    match m {
        Method::ALLOCATE => TurnMethod::allocate,
        Method::REFRESH => TurnMethod::refresh,
        Method::CREATE_PERMISSION => TurnMethod::create_permission,
        Method::CONNECT => TurnMethod::connect,
        Method::CONNECTION_BIND => TurnMethod::connection_bind,
        _ => TurnMethod::channel_bind,
    }
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
        let attrs = TurnAttributes::decode(msg);
        let user = attrs.username.ok().unwrap_or("");
        let has_allocation = self.table.id_for(tuple).is_some();
        let refusal = if msg.method() == Method::ALLOCATE && !attrs.requested_transport.is_given() && !has_allocation {
            Some(Refusal::MissingTransport)
        } else if msg.method() != Method::ALLOCATE && msg.method() != Method::CONNECTION_BIND && !has_allocation {
            Some(Refusal::NoAllocation)
        } else {
            None
        };
        let credentials = self.shared.credentials();
        let refusal = refusal.or((!credentials.is_configured()).then_some(Refusal::RelayDisabled));
        if let Some(r) = refusal {
            self.stats.turn_request(method, false);
            self.log_refusal(now, tuple, method, user, r);
            return self.error(msg, tuple, r.code(), &[], out);
        }
        let auth = match self.authenticate(now, tuple, msg, &attrs, &*credentials) {
            Ok(a) => a,
            Err(reject) => {
                self.stats.turn_request(method, false);
                return self.reject(now, tuple, msg, user, reject, out);
            }
        };
        let result = match msg.method() {
            Method::ALLOCATE => self.allocate(now, tuple, msg.transaction_id(), &attrs, &auth),
            Method::REFRESH => self.refresh(now, tuple, &attrs, &auth),
            Method::CREATE_PERMISSION => self.create_permission(now, tuple, &attrs, &auth),
            Method::CONNECT => {
                match self.connect(now, tuple, msg.transaction_id(), msg.has_fingerprint(), &attrs, &auth) {
                    // Answered when the connection is up or has failed (`handle_connected`).
                    Ok(None) => return Output::None,
                    Ok(Some(o)) => Ok(o),
                    Err(e) => Err(e),
                }
            }
            Method::CONNECTION_BIND => self.connection_bind(tuple, &attrs, &auth),
            _ => self.channel_bind(now, tuple, &attrs, &auth),
        };
        self.stats.turn_request(method, result.is_ok());
        if result.is_ok() {
            if let Some(id) = self.table.id_for(tuple) {
                self.sync_fast_path(id, now);
            }
        }
        let joined = match result {
            Ok(Outcome::Joined(cid)) => Some(cid),
            _ => None,
        };
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
                        token,
                    } => {
                        if let Some(token) = token {
                            w.attr(AttrType::RESERVATION_TOKEN, &token)?;
                        }
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
                    Outcome::Joined(_) | Outcome::Empty => Ok(()),
                })
            }
            Err(refusal) => {
                // A draining or full node of a cluster sends new allocations to another
                // (RFC 8656 §7.2, RFC 8489 §10); only to a node that can serve, never to itself.
                let alternate = match refusal {
                    Refusal::Draining | Refusal::ServerQuota => self.shared.alternate(tuple),
                    _ => None,
                };
                let refusal = if alternate.is_some() {
                    Refusal::TryAlternate
                } else {
                    refusal
                };
                self.log_refusal(now, tuple, method, user, refusal);
                let typ = MessageType::new(msg.method(), Class::Error);
                // With the redirect, REALM and a fresh NONCE: the cluster shares its nonce
                // key, and clients (browsers among them) take these to the alternate, which
                // then accepts their next Allocate as it is.
                let expiry = self.clock.unix_secs(now) + self.config.nonce_lifetime.as_secs();
                let offer = self.config.password_algorithms;
                let fresh = alternate
                    .as_ref()
                    .map(|_| self.shared.nonce_key().issue(expiry, tuple, offer));
                let realm = self.config.realm.clone();
                self.respond(msg, typ, out, key, |w| {
                    w.error_code(refusal.code())?;
                    if let (Some((address, domain)), Some((nonce, nonce_len))) = (&alternate, &fresh) {
                        w.plain_address(AttrType::ALTERNATE_SERVER, *address)?;
                        if let Some(d) = domain {
                            w.attr(AttrType::ALTERNATE_DOMAIN, d.as_bytes())?;
                        }
                        w.attr(AttrType::REALM, realm.as_bytes())?;
                        w.attr(AttrType::NONCE, nonce.get(..*nonce_len).unwrap_or_default())?;
                    }
                    Ok(())
                })
            }
        };
        match (len, joined) {
            (Some(len), Some(connection)) => Output::Joined {
                tuple: *tuple,
                len,
                connection,
            },
            (Some(len), None) => Output::ToClient { tuple: *tuple, len },
            (None, _) => Output::None,
        }
    }

    /// Logs a refusal (rate-limited), naming the setting that would change it, if any.
    fn log_refusal(&mut self, now: Instant, tuple: &FiveTuple, method: TurnMethod, user: &str, refusal: Refusal) {
        if let Some(suppressed) = self.log_limiter.allow(now) {
            let (why, setting) = (refusal.reason(), refusal.setting());
            let hint = setting.map(|s| format!(" (setting: {s})")).unwrap_or_default();
            tracing::info!(
                event = "request refused",
                method = method.as_str(),
                code = refusal.code().0,
                reason = why,
                setting,
                user,
                client = %tuple.client,
                transport = tuple.transport.as_str(),
                suppressed,
                "request refused: {why}{hint}"
            );
        }
    }

    /// The allocation on this 5-tuple, checked against the request's credentials.
    pub(super) fn own_allocation(&self, tuple: &FiveTuple, auth: &Auth<'_>) -> Result<AllocationId, Refusal> {
        let id = self.table.id_for(tuple).ok_or(Refusal::NoAllocation)?;
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        if &*a.username != auth.username {
            self.stats.auth_failure(AuthFailure::wrong_credentials);
            return Err(Refusal::WrongCredentials);
        }
        Ok(id)
    }

    /// Checks a peer address for CreatePermission and ChannelBind: family (443) and policy
    /// (403).
    fn check_peer(&self, id: AllocationId, peer: SocketAddr) -> Result<SocketAddr, Refusal> {
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        let ip = policy::canonical(peer.ip());
        let tcp_family = a.tcp.is_some_and(|t| family_index(t.bound.ip()) == family_index(ip));
        if a.relays[family_index(ip)].is_none() && !tcp_family {
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

    pub(super) fn install_permission(&mut self, id: AllocationId, ip: IpAddr, now: Instant) {
        if let Some(a) = self.table.get_mut(id) {
            if a.permissions
                .insert(ip, now + self.config.permission_lifetime)
                .is_none()
            {
                self.stats.permissions_active.add(1);
            }
        }
    }

    fn create_permission(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let mut peers = [None::<SocketAddr>; MAX_PEERS];
        let mut n = 0;
        // All or nothing: check every peer before installing any (RFC 8656 §10.2), in order,
        // up to the first one that did not decode.
        for (slot, &peer) in peers.iter_mut().zip(&attrs.peers) {
            *slot = Some(self.check_peer(id, peer)?);
            n += 1;
        }
        match attrs.peers_error {
            Some(PeersError::Malformed) => return Err(Refusal::MalformedPeer),
            Some(PeersError::TooMany) => return Err(Refusal::TooManyPeers),
            None if n == 0 => return Err(Refusal::MissingPeer),
            None => {}
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
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let number = attrs.channel_number.ok().ok_or(Refusal::MalformedChannel)?;
        // Validated once here; from now on the number is a `ChannelNumber`.
        let number = crate::proto::ChannelNumber::new(number)
            .filter(|n| n.get() <= self.config.max_channel)
            .ok_or(Refusal::ChannelRange)?;
        let peer = attrs.peer().ok_or(Refusal::MalformedPeer)?;
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
                expires: now + self.config.channel_lifetime,
                counted: true,
            },
        );
        a.channel_by_peer.insert(peer, number);
        if newly_active {
            self.stats.channels_active.add(1);
        }
        self.install_permission(id, peer.ip(), now);
        self.table.reschedule(id, now);
        Ok(Outcome::Empty)
    }
}
