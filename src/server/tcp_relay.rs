//! TCP relays (RFC 6062). A TCP allocation listens on its relayed address. Connect opens a
//! connection from there to a permitted peer and answers once it is up; a permitted peer's
//! connection to the relayed address is announced to the client with ConnectionAttempt.
//! Either way the client then opens a data connection and sends ConnectionBind with the
//! CONNECTION-ID, and from then on the driver copies bytes unchanged between the two. The
//! engine decides (permissions, limits, identities, the 30 s bind deadline, the end of every
//! connection with its allocation); the driver owns the sockets and the copying.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::family_index;
use super::authenticate::Auth;
use super::io::{AllocationId, RelayToken};
use super::refusal::Refusal;
use super::turn::Outcome;
use super::{policy, Engine, FiveTuple, Output, RelayIo};
use crate::proto::{AttrType, Class, MessageType, MessageWriter, Method, TransactionId, TurnAttributes};

/// A peer connection not bound to a client data connection within this time is closed
/// (RFC 6062 §5.3).
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Names a peer data connection. The high byte is the shard that owns it, so that a
/// ConnectionBind arriving on another shard's listener can be routed there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl ConnectionId {
    /// The shard whose engine holds this connection.
    pub fn shard(self) -> usize {
        (self.0 >> 24) as usize
    }
}

/// The listening side of a TCP allocation.
#[derive(Debug)]
pub struct TcpRelay<L> {
    pub listener: L,
    pub bound: SocketAddr,
    pub advertised: SocketAddr,
}

/// The answer to a Connect, written when the connection is up or has failed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deferred {
    tuple: FiveTuple,
    tid: TransactionId,
    key: [u8; 32],
    key_len: usize,
    sha256: bool,
    fingerprint: bool,
}

/// Where a peer data connection is in its life.
#[derive(Debug, Clone, Copy)]
pub enum State {
    /// Connect was asked; its answer waits for the connection.
    Connecting,
    /// Up, waiting for ConnectionBind until the deadline.
    Unbound { deadline: Instant },
    /// Joined with this client data connection.
    Bound { data: FiveTuple },
}

/// One peer data connection.
#[derive(Debug)]
pub struct Connection<S> {
    pub allocation: AllocationId,
    pub peer: SocketAddr,
    pub stream: S,
    pub state: State,
    pub(super) reply: Option<Deferred>,
}

impl<R: RelayIo> Engine<R> {
    fn next_connection_id(&mut self) -> ConnectionId {
        loop {
            self.connection_counter = self.connection_counter.wrapping_add(1) & 0x00FF_FFFF;
            let id = ConnectionId(self.shard_index << 24 | self.connection_counter);
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    /// The data connections of allocation `id`.
    fn connections_of(&self, id: AllocationId) -> usize {
        self.connections.values().filter(|c| c.allocation == id).count()
    }

    /// Opens the listening socket of a TCP allocation (family `i`) on a random free port.
    pub(super) fn open_tcp_relay(
        &mut self,
        tuple: &FiveTuple,
        i: usize,
        token: RelayToken,
    ) -> Result<TcpRelay<R::Listener>, Refusal> {
        let (bind_ip, advertised_ip) = self.relay_ips(tuple, i)?;
        let range = self.config.relay_ports;
        let start = rand_chacha::rand_core::RngCore::next_u32(&mut self.rng) % range.len();
        for k in 0..range.len() {
            let port = range.nth(start.wrapping_add(k));
            let addr = SocketAddr::new(bind_ip, port);
            match self.io.listen(addr, token) {
                Ok(listener) => {
                    return Ok(TcpRelay {
                        listener,
                        bound: addr,
                        advertised: SocketAddr::new(advertised_ip, port),
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => {
                    tracing::warn!(error = %e, %addr, "cannot open a TCP relay socket");
                    return Err(Refusal::RelaySocket);
                }
            }
        }
        Err(Refusal::PortsExhausted)
    }

    /// RFC 6062 §5.2: Connect to a permitted peer. The answer comes from
    /// [`Engine::handle_connected`] once the driver knows how the connection went.
    pub(super) fn connect(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg_tid: TransactionId,
        fingerprint: bool,
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Option<Outcome>, Refusal> {
        let id = self.own_allocation(tuple, auth)?;
        let a = self.table.get(id).ok_or(Refusal::NoAllocation)?;
        let Some(relay) = a.tcp.as_ref() else {
            return Err(Refusal::NotTcpAllocation);
        };
        let bound = relay.bound;
        let peer = attrs.peer().ok_or(Refusal::MalformedPeer)?;
        let ip = policy::canonical(peer.ip());
        if family_index(ip) != family_index(bound.ip()) {
            return Err(Refusal::PeerFamily);
        }
        if !self.config.peers.permits(ip) {
            return Err(Refusal::PeerDenied);
        }
        if !a.has_permission(ip, now) {
            return Err(Refusal::NoPermission);
        }
        let peer = SocketAddr::new(ip, peer.port());
        if self.connections.values().any(|c| c.allocation == id && c.peer == peer) {
            return Err(Refusal::ConnectionExists);
        }
        if self.connections_of(id) >= self.config.max_tcp_connections as usize {
            return Err(Refusal::TcpConnectionQuota);
        }
        let cid = self.next_connection_id();
        let stream = self.io.connect(bound, peer, cid).map_err(|e| {
            tracing::debug!(error = %e, %peer, "cannot start a TCP connection to a peer");
            Refusal::ConnectionFailed
        })?;
        let (key, sha256) = auth.key();
        let mut k = [0u8; 32];
        let key_len = key.len().min(32);
        k[..key_len].copy_from_slice(&key[..key_len]);
        self.connections.insert(
            cid,
            Connection {
                allocation: id,
                peer,
                stream,
                state: State::Connecting,
                reply: Some(Deferred {
                    tuple: *tuple,
                    tid: msg_tid,
                    key: k,
                    key_len,
                    sha256,
                    fingerprint,
                }),
            },
        );
        let _ = now;
        Ok(None)
    }

    /// The driver's report on a connection that [`RelayIo::connect`] started: up (`ok`), or
    /// failed or timed out. Returns the answer to the Connect: CONNECTION-ID, or 447.
    pub fn handle_connected<'x>(
        &mut self,
        now: Instant,
        cid: ConnectionId,
        ok: bool,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let Some(c) = self.connections.get_mut(&cid) else {
            return Output::None;
        };
        let Some(reply) = c.reply.take() else {
            return Output::None;
        };
        tracing::debug!(connection = cid.0, peer = %c.peer, ok, "connection to the peer done");
        let len = if ok {
            c.state = State::Unbound {
                deadline: now + BIND_TIMEOUT,
            };
            self.conn_timers.push(Reverse((now + BIND_TIMEOUT, cid)));
            self.stats.tcp_connections_active.add(1);
            self.stats.turn_request(super::stats::TurnMethod::connect, true);
            write_deferred(out, Method::CONNECT, Class::Success, &reply, |w| {
                w.attr_u32(AttrType::CONNECTION_ID, cid.0)
            })
        } else {
            let peer = c.peer;
            self.connections.remove(&cid);
            self.stats.turn_request(super::stats::TurnMethod::connect, false);
            tracing::info!(event = "request refused", method = "connect", code = 447, %peer, client = %reply.tuple.client, "request refused: connection to the peer failed or timed out");
            write_deferred(out, Method::CONNECT, Class::Error, &reply, |w| {
                w.error_code(crate::proto::ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE)
            })
        };
        Output::reply(reply.tuple, len)
    }

    /// A peer connected to relay listener `token` (RFC 6062 §5.3). A permitted peer is
    /// announced to the client with ConnectionAttempt; anything else is closed (by dropping
    /// `stream`).
    pub fn handle_peer_connection<'x>(
        &mut self,
        now: Instant,
        token: RelayToken,
        peer: SocketAddr,
        stream: R::Stream,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let id = token.allocation;
        let ip = policy::canonical(peer.ip());
        let peer = SocketAddr::new(ip, peer.port());
        let Some(a) = self.table.get(id) else {
            return Output::None;
        };
        let control = a.tuple;
        if !self.config.peers.permits(ip) || !a.has_permission(ip, now) {
            self.stats.dropped(super::stats::DropReason::no_permission);
            tracing::debug!(%peer, client = %control.client, "peer connection closed: no permission for its address");
            return Output::None;
        }
        if self.connections_of(id) >= self.config.max_tcp_connections as usize {
            tracing::info!(event = "peer connection refused", %peer, client = %control.client, "peer connection refused: the allocation has max_tcp_connections");
            return Output::None;
        }
        let cid = self.next_connection_id();
        let deadline = now + BIND_TIMEOUT;
        self.connections.insert(
            cid,
            Connection {
                allocation: id,
                peer,
                stream,
                state: State::Unbound { deadline },
                reply: None,
            },
        );
        self.conn_timers.push(Reverse((deadline, cid)));
        self.stats.tcp_connections_active.add(1);
        tracing::debug!(connection = cid.0, %peer, client = %control.client, "peer connected: ConnectionAttempt sent");
        let tid = self.next_indication_tid();
        let typ = MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication);
        let len = (|| {
            let mut w = MessageWriter::new(out, typ, tid).ok()?;
            w.attr_u32(AttrType::CONNECTION_ID, cid.0).ok()?;
            w.xor_address(AttrType::XOR_PEER_ADDRESS, peer).ok()?;
            Some(w.finish())
        })();
        Output::reply(control, len)
    }

    /// RFC 6062 §5.4: ConnectionBind on a new client connection `tuple`, with the
    /// allocation's credentials. On success the driver joins `tuple` with the peer
    /// connection ([`Engine::connection`] gives its handle).
    pub(super) fn connection_bind(
        &mut self,
        tuple: &FiveTuple,
        attrs: &TurnAttributes<'_>,
        auth: &Auth<'_>,
    ) -> Result<Outcome, Refusal> {
        if !tuple.transport.is_stream() || self.table.id_for(tuple).is_some() {
            return Err(Refusal::BindNotHere);
        }
        let cid = ConnectionId(attrs.connection_id.ok().ok_or(Refusal::UnknownConnection)?);
        let c = self.connections.get(&cid).ok_or(Refusal::UnknownConnection)?;
        if !matches!(c.state, State::Unbound { .. }) {
            return Err(Refusal::UnknownConnection);
        }
        let a = self.table.get(c.allocation).ok_or(Refusal::UnknownConnection)?;
        if &*a.username != auth.username {
            return Err(Refusal::WrongCredentials);
        }
        if let Some(c) = self.connections.get_mut(&cid) {
            c.state = State::Bound { data: *tuple };
        }
        Ok(Outcome::Joined(cid))
    }

    /// A peer data connection, for the driver to join it with its client data connection.
    pub fn connection(&self, cid: ConnectionId) -> Option<&Connection<R::Stream>> {
        self.connections.get(&cid)
    }

    /// The data connections of the allocation on `tuple`.
    pub fn connections_of_allocation(&self, tuple: &FiveTuple) -> impl Iterator<Item = &Connection<R::Stream>> {
        let id = self.table.id_for(tuple);
        self.connections.values().filter(move |c| Some(c.allocation) == id)
    }

    /// How long a TCP relay data connection waits before passing on `n` more bytes:
    /// `bandwidth_per_allocation` applies to each data connection (its own `bucket`), and
    /// the shard's share of `bandwidth_total` to all of them.
    pub fn pace_tcp(&mut self, now: Instant, n: usize, bucket: &mut super::Bucket) -> Duration {
        let own = bucket.take_or_wait(now, self.config.bandwidth_per_allocation, n);
        let total = self.config.bandwidth_total / u64::from(self.shards.max(1));
        own.max(self.shard_bandwidth.take_or_wait(now, total, n))
    }

    /// A data connection pair ended (either side closed, or an error); its handle goes.
    pub fn handle_connection_closed(&mut self, cid: ConnectionId) {
        self.drop_connection(cid);
    }

    pub(super) fn drop_connection(&mut self, cid: ConnectionId) {
        if let Some(c) = self.connections.remove(&cid) {
            if !matches!(c.state, State::Connecting) {
                self.stats.tcp_connections_active.add(-1);
            }
            // The allocation's totals (its log line, `turnd sessions`) include what the
            // connection carried.
            let (to_peer, to_client) = R::stream_bytes(&c.stream);
            if let Some(a) = self.table.get_mut(c.allocation) {
                a.traffic.to_peer_bytes += to_peer;
                a.traffic.to_client_bytes += to_client;
            }
        }
    }

    /// Closes every data connection of an allocation that ends.
    pub(super) fn drop_connections_of(&mut self, id: AllocationId) {
        let ids: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.allocation == id)
            .map(|(k, _)| *k)
            .collect();
        for cid in ids {
            self.drop_connection(cid);
        }
    }

    /// Closes peer connections whose 30 s to be bound ran out.
    pub(super) fn expire_unbound(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, cid))) = self.conn_timers.peek().filter(|r| r.0 .0 <= now) {
            self.conn_timers.pop();
            let due = self
                .connections
                .get(&cid)
                .is_some_and(|c| matches!(c.state, State::Unbound { deadline: d } if d == deadline));
            if due {
                tracing::info!(
                    event = "peer connection closed",
                    connection = cid.0,
                    "peer connection closed: no ConnectionBind within 30 s"
                );
                self.drop_connection(cid);
            }
        }
    }
}

/// Writes a response to a request answered later: its transaction ID, integrity under the
/// key it authenticated with, and FINGERPRINT if it had one.
fn write_deferred(
    out: &mut [u8],
    method: Method,
    class: Class,
    d: &Deferred,
    body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), crate::proto::EncodeError>,
) -> Option<usize> {
    let mut w = MessageWriter::new(out, MessageType::new(method, class), d.tid).ok()?;
    body(&mut w).ok()?;
    let key = d.key.get(..d.key_len)?;
    if d.sha256 {
        w.message_integrity_sha256(key).ok()?;
    } else {
        w.message_integrity(key).ok()?;
    }
    if d.fingerprint {
        w.fingerprint().ok()?;
    }
    Some(w.finish())
}
