//! The protocol engine: STUN Binding and TURN (RFC 8656) for one shard. It owns the
//! allocation table and the timer heap, but no sockets and no clock: every entry point takes
//! `now`, relay sockets are opened through [`RelayIo`], and what to send comes back as one
//! [`Output`].
//!
//! Call order, per shard (the contract of [`Engine`]):
//! - each packet a client sends to a listener: [`Engine::handle_client`];
//! - each datagram a relay socket receives: [`Engine::handle_peer`];
//! - a TCP client connection closing: [`Engine::handle_client_closed`];
//! - an operator's disconnect, or the end: [`Engine::disconnect_user`], [`Engine::end_all`];
//! - act on the [`Output`] each call returns before the next call (it borrows the engine);
//! - after every `handle_*` call or batch of them, ask [`Engine::poll_timeout`] again and
//!   sleep no later than it says; when that moment comes, call [`Engine::handle_timeout`].

mod allocate;
mod allocation;
mod authenticate;
mod discovery;
mod fast_path;
pub mod io;
mod limits;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod policy;
mod refusal;
mod relay;
pub mod stats;
mod tcp_relay;
#[cfg(any(test, feature = "test-support"))]
pub mod testclient;
mod turn;
pub mod usage;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub use crate::types::{AddressQuad, FiveTuple, PortRange, Transport, DEFAULT_LIFETIME};
pub use allocation::{Allocation, Channel, Traffic, CHANNEL_COOLDOWN, CHANNEL_LIFETIME, PERMISSION_LIFETIME};
pub use fast_path::{FastPath, FastPathEntry};
pub use io::{AllocationId, RelayIo, RelayToken};
pub use limits::Bucket;
pub use limits::Quota;
use limits::{LogLimiter, SourceLimiter};
pub use policy::PeerPolicy;
pub use refusal::Refusal;
pub use tcp_relay::{Connection, ConnectionId, State as ConnectionState, BIND_TIMEOUT};

use crate::auth::{CredentialSource, Credentials, NonceKey};
use crate::proto::{AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method, ParseError};
use crate::sys::RwLocked;
use stats::{DropReason, Stats};

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Value of the SOFTWARE attribute; `None` omits it, keeping responses small.
    pub software: Option<String>,
    pub realm: String,
    /// Addresses relay sockets bind to; at most one per family.
    pub relay_addresses: Vec<IpAddr>,
    /// Addresses advertised in XOR-RELAYED-ADDRESS instead of the bound ones (1:1 NAT).
    pub relay_external: Vec<IpAddr>,
    pub relay_ports: PortRange,
    /// Longest lifetime a client may ask for.
    pub max_lifetime: Duration,
    /// How long a permission and a channel binding last (RFC 8656: 5 and 10 minutes).
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// How long a nonce stays valid before a 438.
    pub nonce_lifetime: Duration,
    /// Allocations per username (486 beyond).
    pub max_allocations_per_user: u32,
    /// Allocations in the whole process (486 beyond).
    pub max_allocations: u32,
    pub peers: PeerPolicy,
    /// Highest channel number a ChannelBind may use: 0x4FFF (RFC 8656), or 0x7FFE to accept
    /// RFC 5766-era clients.
    pub max_channel: u16,
    /// Shutting down: refuse new Allocates, keep serving the open allocations.
    pub draining: bool,
    /// Offer PASSWORD-ALGORITHMS (SHA-256 and MD5) with the RFC 8489 nonce cookie in 401 and
    /// 438. Off, challenges are 25 bytes smaller; MESSAGE-INTEGRITY-SHA256 is accepted either way.
    pub password_algorithms: bool,
    /// Unauthenticated responses (Binding, challenges, errors before authentication) per
    /// second per source IP; 0 means no limit.
    pub unauthenticated_rate: u32,
    /// Relayed bytes per second per allocation, both directions together; 0 means no limit.
    pub bandwidth_per_allocation: u64,
    /// Relayed bytes per second for the whole server; 0 means no limit. Each shard enforces
    /// its share.
    pub bandwidth_total: u64,
    /// Data connections one TCP allocation may have (RFC 6062); Connect beyond gets 486.
    pub max_tcp_connections: u32,
    /// NAT behaviour discovery (RFC 5780): the four local addresses of each discovery
    /// listener. Empty, CHANGE-REQUEST, RESPONSE-PORT and PADDING get 420 as unknown.
    pub discovery: Vec<AddressQuad>,
    /// Keep usage by account for [`Engine::take_usage`] (a cluster node bills from it).
    pub account_usage: bool,
    /// A kernel fast path is attached: offload eligible channels ([`Engine::poll_fast_path`]).
    pub fast_path: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            software: None,
            realm: "turnd".into(),
            relay_addresses: vec![IpAddr::from([0, 0, 0, 0]), IpAddr::from([0u16; 8])],
            relay_external: vec![],
            relay_ports: PortRange::DEFAULT,
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: PERMISSION_LIFETIME,
            channel_lifetime: CHANNEL_LIFETIME,
            nonce_lifetime: Duration::from_secs(600),
            max_allocations_per_user: 100,
            max_allocations: 100_000,
            peers: PeerPolicy::default(),
            max_channel: crate::proto::ChannelNumber::RFC8656_MAX,
            draining: false,
            password_algorithms: false,
            unauthenticated_rate: 0,
            bandwidth_per_allocation: 0,
            bandwidth_total: 0,
            max_tcp_connections: 32,
            discovery: Vec::new(),
            account_usage: false,
            fast_path: false,
        }
    }
}

/// State shared by every shard's engine.
pub struct Shared {
    credentials: RwLock<Arc<dyn CredentialSource>>,
    /// The key nonces are made and checked with; a cluster's nodes share one, so that a
    /// client sent to another node (300) keeps its nonce.
    nonce_key: RwLock<NonceKey>,
    pub quota: Quota,
    /// Ports reserved by EVEN-PORT with R, which an Allocate on any shard may claim.
    pub reservations: allocate::PortReservations,
    /// Other nodes of a cluster that can take new allocations, best first: where a draining
    /// or full node sends an Allocate (300, ALTERNATE-SERVER). Empty on a single node.
    alternates: RwLock<Vec<Alternate>>,
}

/// Another node that can take new allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    /// Where UDP and TCP clients go.
    pub address: SocketAddr,
    /// Where TLS clients go (the same IP), if it serves TLS.
    pub tls_port: Option<u16>,
    /// Its DNS name, for ALTERNATE-DOMAIN (TLS).
    pub domain: Option<String>,
}

impl Shared {
    pub fn new(credentials: Arc<dyn CredentialSource>, nonce_key: NonceKey) -> Self {
        Shared {
            credentials: RwLock::new(credentials),
            nonce_key: RwLock::new(nonce_key),
            quota: Quota::default(),
            reservations: Default::default(),
            alternates: RwLock::default(),
        }
    }

    /// Shared state with no credentials (STUN only).
    pub fn stun_only(nonce_key: NonceKey) -> Self {
        Shared::new(Arc::new(Credentials::default()), nonce_key)
    }

    /// The credential source in force.
    pub fn credentials(&self) -> Arc<dyn CredentialSource> {
        // Held only to clone the Arc.
        self.credentials.reading().clone()
    }

    /// Replaces the credential source; requests already being handled keep the old one.
    pub fn set_credentials(&self, c: Arc<dyn CredentialSource>) {
        *self.credentials.writing() = c;
    }

    /// The nonce key in force.
    pub(crate) fn nonce_key(&self) -> NonceKey {
        self.nonce_key.reading().clone()
    }

    /// Replaces the nonce key (the cluster's shared one); nonces made with the old key get
    /// 438 and a fresh nonce.
    pub fn set_nonce_key(&self, k: NonceKey) {
        *self.nonce_key.writing() = k;
    }

    /// Replaces the nodes a refused Allocate may be sent to (best first).
    pub fn set_alternates(&self, a: Vec<Alternate>) {
        *self.alternates.writing() = a;
    }

    /// Where to send a client on `tuple`: the best other node of the client's family (with a
    /// TLS port, for a TLS client), and its name for ALTERNATE-DOMAIN.
    pub(crate) fn alternate(&self, tuple: &FiveTuple) -> Option<(SocketAddr, Option<String>)> {
        let all = self.alternates.reading();
        all.iter()
            .filter(|a| a.address.is_ipv4() == tuple.client.is_ipv4())
            .find_map(|a| match tuple.transport {
                Transport::Tls => a
                    .tls_port
                    .map(|p| (SocketAddr::new(a.address.ip(), p), a.domain.clone())),
                _ => Some((a.address, None)),
            })
    }
}

/// What the engine asks its driver to do: the answer of every `handle_*` call. New
/// capabilities add variants here, never side channels.
#[derive(Debug)]
pub enum Output<'a, S> {
    /// Nothing to send.
    None,
    /// Send the first `len` bytes of the caller's `out` buffer to a client on `tuple`: from
    /// `tuple.server` (a listener's address) to `tuple.client`, over `tuple.transport`.
    /// Usually the request's own 5-tuple; an RFC 5780 answer names another local address
    /// (CHANGE-REQUEST) or another port of the client's IP (RESPONSE-PORT), over UDP.
    ToClient { tuple: FiveTuple, len: usize },
    /// Send `data` to `peer` from a relay socket.
    ToPeer {
        socket: &'a S,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// A ConnectionBind succeeded (RFC 6062): send the first `len` bytes of `out` on `tuple`,
    /// a client data connection, then copy bytes unchanged between it and the peer
    /// connection `connection` ([`Engine::connection`]).
    Joined {
        tuple: FiveTuple,
        len: usize,
        connection: ConnectionId,
    },
}

impl<S> Output<'_, S> {
    /// An answer of `len` bytes to the client on `tuple`, if one was written.
    pub(crate) fn reply(tuple: FiveTuple, len: Option<usize>) -> Self {
        len.map_or(Output::None, |len| Output::ToClient { tuple, len })
    }

    /// True when something is to be sent.
    pub fn is_some(&self) -> bool {
        !matches!(self, Output::None)
    }
}

/// Why an allocation ended (the `reason` in its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Refresh0,
    TcpClosed,
    /// `turnd disconnect`.
    Disconnected,
    /// The server stopped (SIGINT, a second SIGTERM, or `shutdown_grace` passed).
    Shutdown,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Refresh0 => "refresh 0",
            EndReason::TcpClosed => "tcp closed",
            EndReason::Disconnected => "disconnected",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// One moment on both clocks: the engine's `Instant` and the Unix time, read once by the
/// driver at start. The engine derives wall-clock seconds from `now` with it, for nonce and
/// REST credential expiry, and never reads a clock itself.
#[derive(Debug, Clone, Copy)]
pub struct Epoch {
    pub at: Instant,
    /// Time since 1970-01-01 at `at`.
    pub unix: Duration,
}

impl Epoch {
    pub fn unix_secs(&self, now: Instant) -> u64 {
        (self.unix + now.saturating_duration_since(self.at)).as_secs()
    }
}

/// Comprehension-required attributes this server understands in a request. Anything else
/// below 0x8000 gets 420 (RFC 8489 §6.3.1). Not here: CHANGE-REQUEST, RESPONSE-PORT and
/// PADDING (RFC 5780), known only in a Binding request to a discovery address
/// ([`discovery::RFC5780`]).
const KNOWN_REQUIRED: &[AttrType] = &[
    AttrType::MAPPED_ADDRESS,
    AttrType::USERNAME,
    AttrType::MESSAGE_INTEGRITY,
    AttrType::ERROR_CODE,
    AttrType::UNKNOWN_ATTRIBUTES,
    AttrType::REALM,
    AttrType::NONCE,
    AttrType::MESSAGE_INTEGRITY_SHA256,
    AttrType::PASSWORD_ALGORITHM,
    AttrType::USERHASH,
    AttrType::XOR_MAPPED_ADDRESS,
    AttrType::CHANNEL_NUMBER,
    AttrType::LIFETIME,
    AttrType::XOR_PEER_ADDRESS,
    AttrType::DATA,
    AttrType::XOR_RELAYED_ADDRESS,
    AttrType::REQUESTED_ADDRESS_FAMILY,
    AttrType::EVEN_PORT,
    AttrType::REQUESTED_TRANSPORT,
    AttrType::RESERVATION_TOKEN,
    AttrType::DONT_FRAGMENT,
    AttrType::CONNECTION_ID,
    AttrType::PRIORITY,
    AttrType::USE_CANDIDATE,
];

/// At most this many unknown attributes are listed in a 420, bounding the response size.
const MAX_UNKNOWN_LISTED: usize = 8;

/// The engine of one shard.
pub struct Engine<R: RelayIo> {
    config: Arc<EngineConfig>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    io: R,
    clock: Epoch,
    /// Every random choice: relay ports, transaction IDs, hash keys. Seeded by the driver.
    rng: ChaCha20Rng,
    table: allocation::Table<R::Socket>,
    /// The deadlines of the ports this engine reserved (EVEN-PORT with R), by token; the
    /// reservations themselves are in `Shared`, claimable from any shard.
    reservation_timers: BinaryHeap<Reverse<(Instant, [u8; 8])>>,
    log_limiter: LogLimiter,
    /// TCP allocations' listeners, their data connections, and the deadlines of those not
    /// yet bound (RFC 6062).
    tcp_listeners: HashMap<AllocationId, R::Listener>,
    connections: HashMap<ConnectionId, Connection<R::Stream>>,
    conn_timers: BinaryHeap<Reverse<(Instant, ConnectionId)>>,
    connection_counter: u32,
    /// This engine's shard, named in the high byte of its connection IDs.
    shard_index: u32,
    /// Transaction IDs of Data indications: a random base and a counter (they need to be
    /// unique, not secret; no response ever refers to them).
    indication_tid: (u128, u64),
    limiter: SourceLimiter,
    /// This shard's share of `bandwidth_total`.
    shard_bandwidth: Bucket,
    shards: u32,
    /// Whether the reply being built carries integrity (set by authenticated requests).
    signed_reply: bool,
    /// What ended allocations used, until [`Engine::take_usage`] hands it out.
    ended_usage: usage::Ledger,
    /// Commands for the fast path's maps, until [`Engine::poll_fast_path`] takes them.
    fast_path: VecDeque<FastPath>,
    /// Ended allocations whose fast-path entries are being removed: their log line waits for
    /// the program's last counts.
    ending: HashMap<AllocationId, (Allocation<R::Socket>, EndReason)>,
}

impl<R: RelayIo> Engine<R> {
    /// A new engine. `seed` is its randomness: from the OS CSPRNG in production, fixed in
    /// tests and fuzzing, where the same inputs then give the same bytes out.
    pub fn new(config: Arc<EngineConfig>, shared: Arc<Shared>, io: R, clock: Epoch, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let base = u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64());
        let keys = [0, 1].map(|_| u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64()));
        Engine {
            config,
            shared,
            stats: Arc::default(),
            io,
            table: allocation::Table::default(),
            reservation_timers: BinaryHeap::new(),
            tcp_listeners: HashMap::new(),
            connections: HashMap::new(),
            conn_timers: BinaryHeap::new(),
            connection_counter: 0,
            shard_index: 0,
            log_limiter: LogLimiter::new(),
            indication_tid: (base, 0),
            limiter: SourceLimiter::new(clock.at, keys),
            clock,
            rng,
            shard_bandwidth: Bucket::new(),
            shards: 1,
            signed_reply: false,
            ended_usage: Default::default(),
            fast_path: VecDeque::new(),
            ending: HashMap::new(),
        }
    }

    /// Which shard this engine is (`index`) and how many share `bandwidth_total` (set by
    /// the driver).
    pub fn set_shard(&mut self, index: u32, shards: u32) {
        self.shard_index = index & 0xFF;
        self.shards = shards.max(1);
    }

    /// Every TCP relay data connection this engine holds.
    pub fn connections(&self) -> impl Iterator<Item = (&ConnectionId, &Connection<R::Stream>)> {
        self.connections.iter()
    }

    /// This engine's counters, which only its shard writes.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replaces the configuration for new requests (existing allocations keep their relays).
    pub fn set_config(&mut self, now: Instant, config: Arc<EngineConfig>) {
        self.config = config;
        self.sync_fast_path_all(now);
    }

    pub fn io(&self) -> &R {
        &self.io
    }

    /// Number of allocations this engine holds.
    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// True when `tuple` has an allocation.
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.table.id_for(tuple).is_some()
    }

    /// True while the server drains: new Allocates are refused.
    pub fn draining(&self) -> bool {
        self.config.draining
    }

    /// Every allocation this engine holds.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation<R::Socket>> {
        self.table.iter().map(|(_, a)| a)
    }

    /// Entries in the timer heap (stale ones included).
    pub fn timer_entries(&self) -> usize {
        self.table.timer_entries()
    }

    /// Handles one packet a client sent to a listener: one UDP datagram, or one frame cut
    /// from a TCP stream. Replies are written into `out`; relayed data borrows `packet`.
    /// Malformed input is never answered, only counted.
    pub fn handle_client<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        packet: &'a [u8],
        out: &mut [u8],
    ) -> Output<'a, R::Socket> {
        if packet.first().is_some_and(|b| b & 0xC0 == 0x40) {
            return self.channel_data(now, tuple, packet);
        }
        let msg = match Message::parse(packet) {
            Ok(m) => m,
            Err(e) => {
                self.stats.dropped(match e {
                    ParseError::FingerprintMismatch => DropReason::bad_fingerprint,
                    _ => DropReason::malformed,
                });
                return Output::None;
            }
        };

        // Off (the usual case), nothing to look up on the Binding fast path.
        let discovery = if self.config.discovery.is_empty() || msg.method() != Method::BINDING {
            None
        } else {
            self.discovery_at(tuple.server)
        };
        let mut unknown = [AttrType(0); MAX_UNKNOWN_LISTED];
        let mut n_unknown = 0;
        for a in msg.attributes() {
            if a.typ.is_comprehension_required()
                && !KNOWN_REQUIRED.contains(&a.typ)
                && !(discovery.is_some() && discovery::RFC5780.contains(&a.typ))
                && n_unknown < MAX_UNKNOWN_LISTED
                && !unknown[..n_unknown].contains(&a.typ)
            {
                unknown[n_unknown] = a.typ;
                n_unknown += 1;
            }
        }

        match msg.class() {
            Class::Request => {}
            Class::Indication if msg.method() == Method::SEND => {
                if n_unknown > 0 {
                    // RFC 8489 §6.3.2: indications with unknown required attributes are dropped.
                    self.stats.dropped(DropReason::malformed);
                    return Output::None;
                }
                return self.send_indication(now, tuple, msg);
            }
            _ => {
                self.stats.dropped(DropReason::unexpected_class);
                return Output::None;
            }
        }

        self.signed_reply = false;
        let reply = if n_unknown > 0 {
            self.error(&msg, tuple, ErrorCode::UNKNOWN_ATTRIBUTE, &unknown[..n_unknown], out)
        } else {
            match msg.method() {
                Method::BINDING => match discovery {
                    Some(quad) => self.discovery_binding(&msg, tuple, quad, out),
                    None => self.binding(&msg, tuple, out),
                },
                Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND => self.turn_request(now, tuple, &msg, out),
                _ => self.error(&msg, tuple, ErrorCode::BAD_REQUEST, &[], out),
            }
        };
        // Every answer to an unauthenticated request counts against its source's budget.
        if matches!(reply, Output::ToClient { .. })
            && !self.signed_reply
            && !self
                .limiter
                .allow(now, tuple.client.ip(), self.config.unauthenticated_rate)
        {
            self.stats.dropped(DropReason::rate_limited);
            return Output::None;
        }
        reply
    }

    /// Handles a datagram that relay socket `token` received from `peer`. Returns what to
    /// send to the client, framed as ChannelData when a channel is bound to `peer`, else as
    /// a Data indication. Traffic from peers without a permission is dropped.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        token: RelayToken,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Output<'static, R::Socket> {
        let sent = self.peer_to_client(now, token, peer, data, out);
        sent.map_or(Output::None, |(tuple, len)| Output::ToClient { tuple, len })
    }

    /// A TCP client connection closed: its allocation ends at once. (UDP has no close.)
    pub fn handle_client_closed(&mut self, now: Instant, tuple: &FiveTuple) {
        if !tuple.transport.is_stream() {
            return;
        }
        if let Some(id) = self.table.id_for(tuple) {
            self.end_allocation(now, id, EndReason::TcpClosed);
        }
    }

    /// Ends every allocation of `username`; returns how many ended.
    pub fn disconnect_user(&mut self, now: Instant, username: &str) -> usize {
        self.end_where(now, EndReason::Disconnected, |a| &*a.username == username)
    }

    /// Ends every allocation for which `f` is true; returns how many ended.
    fn end_where(&mut self, now: Instant, reason: EndReason, f: impl Fn(&Allocation<R::Socket>) -> bool) -> usize {
        let ids: Vec<AllocationId> = self.table.iter().filter(|(_, a)| f(a)).map(|(id, _)| id).collect();
        for &id in &ids {
            self.end_allocation(now, id, reason);
        }
        ids.len()
    }

    /// Ends every allocation at once (the server stops); returns how many ended.
    pub fn end_all(&mut self, now: Instant, reason: EndReason) -> usize {
        let ended = self.end_where(now, reason, |_| true);
        for Reverse((deadline, token)) in self.reservation_timers.drain() {
            self.shared.reservations.expire(&token, deadline);
        }
        ended
    }

    /// The next moment [`Engine::handle_timeout`] has work to do.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.table.next_timeout(),
            self.reservation_timers.peek().map(|r| r.0 .0),
            self.conn_timers.peek().map(|r| r.0 .0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Ports reserved by EVEN-PORT with R and not yet claimed, on every shard.
    pub fn reserved_ports(&self) -> usize {
        self.shared.reservations.len()
    }

    /// Expires allocations, permissions, channels and port reservations whose deadline is at
    /// or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_unbound(now);
        while let Some(&Reverse((deadline, token))) = self.reservation_timers.peek().filter(|r| r.0 .0 <= now) {
            self.reservation_timers.pop();
            // Claimed meanwhile (perhaps on another shard): nothing left to free.
            self.shared.reservations.expire(&token, deadline);
        }
        while let Some(id) = self.table.pop_due(now) {
            let Some(a) = self.table.get_mut(id) else { continue };
            if a.expires <= now {
                self.end_allocation(now, id, EndReason::Expired);
                continue;
            }
            let (perms, chans) = a.sweep(now);
            self.stats.permissions_active.add(-(perms as i64));
            self.stats.channels_active.add(-(chans as i64));
            self.table.reschedule(id, now);
            self.sync_fast_path(id, now);
        }
    }

    fn end_allocation(&mut self, now: Instant, id: AllocationId, reason: EndReason) {
        // A TCP allocation: its listener and every data connection close with it (first, so
        // that what they carried is in the allocation's totals).
        self.tcp_listeners.remove(&id);
        self.drop_connections_of(id);
        let Some(mut a) = self.table.remove(id) else { return };
        if a.offloaded.is_empty() {
            return self.finish_allocation(now, a, reason);
        }
        // Its relay sockets close now; the log line waits for the program's last counts.
        a.relays = [None, None];
        for e in &a.offloaded {
            self.fast_path.push_back(FastPath::Remove(*e));
        }
        self.ending.insert(id, (a, reason));
    }

    /// Bills, counts and logs an allocation that ended.
    fn finish_allocation(&mut self, now: Instant, mut a: Allocation<R::Socket>, reason: EndReason) {
        self.bill_ended(&mut a, now);
        let m = &self.stats;
        self.shared.quota.release(&a.username);
        let lived = now.saturating_duration_since(a.created);
        m.allocation_closed(a.tuple.transport, lived);
        m.permissions_active.add(-(a.permissions.len() as i64));
        m.channels_active.add(-(a.counted_channels() as i64));
        let t = a.traffic;
        tracing::info!(
            event = "allocation ended",
            reason = reason.as_str(),
            user = %a.username,
            client = %a.tuple.client,
            transport = a.tuple.transport.as_str(),
            duration_s = lived.as_secs(),
            to_peer_packets = t.to_peer_packets,
            to_peer_bytes = t.to_peer_bytes,
            to_client_packets = t.to_client_packets,
            to_client_bytes = t.to_client_bytes,
            "allocation ended"
        );
        // Dropping `a` here closes its relay sockets.
    }

    fn next_indication_tid(&mut self) -> crate::proto::TransactionId {
        self.indication_tid.1 = self.indication_tid.1.wrapping_add(1);
        let v = self.indication_tid.0 ^ u128::from(self.indication_tid.1);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&v.to_le_bytes()[..12]);
        crate::proto::TransactionId(tid)
    }

    fn binding<'x>(&mut self, msg: &Message<'_>, tuple: &FiveTuple, out: &mut [u8]) -> Output<'x, R::Socket> {
        let typ = MessageType::new(Method::BINDING, Class::Success);
        let len = self.respond(msg, typ, out, None, |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client)
        });
        if len.is_some() {
            self.stats.binding_request(tuple.transport);
        }
        Output::reply(*tuple, len)
    }

    fn error<'x>(
        &self,
        msg: &Message<'_>,
        tuple: &FiveTuple,
        code: ErrorCode,
        unknown: &[AttrType],
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let typ = MessageType::new(msg.method(), Class::Error);
        // Unauthenticated: no reason phrase, the smallest answer that says what went wrong.
        let len = self.respond(msg, typ, out, None, |w| {
            w.error_code_bare(code)?;
            if !unknown.is_empty() {
                w.unknown_attributes(unknown)?;
            }
            Ok(())
        });
        Output::reply(*tuple, len)
    }

    /// Writes a response to `msg`: the body, SOFTWARE when configured, integrity under `key`
    /// when given (MESSAGE-INTEGRITY-SHA256 if the request used it), then FINGERPRINT when
    /// the request carried one.
    fn respond(
        &self,
        msg: &Message<'_>,
        typ: MessageType,
        out: &mut [u8],
        key: Option<(&[u8], bool)>,
        body: impl FnOnce(&mut MessageWriter<'_>) -> Result<(), crate::proto::EncodeError>,
    ) -> Option<usize> {
        let mut w = MessageWriter::new(out, typ, msg.transaction_id()).ok()?;
        body(&mut w).ok()?;
        if let Some(s) = &self.config.software {
            w.attr(AttrType::SOFTWARE, s.as_bytes()).ok()?;
        }
        match key {
            Some((k, true)) => w.message_integrity_sha256(k).ok()?,
            Some((k, false)) => w.message_integrity(k).ok()?,
            None => {}
        }
        if msg.has_fingerprint() {
            w.fingerprint().ok()?;
        }
        Some(w.finish())
    }
}
