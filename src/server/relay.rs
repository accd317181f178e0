//! The relay path, both directions: ChannelData and Send indications from clients to peers,
//! and datagrams from peers to clients as ChannelData or Data indications. Every relayed
//! packet passes [`admit`], the one place that decides whether it may: a live permission for
//! the peer, and room in the allocation's and the shard's bandwidth.
//!
//! Nothing here allocates: views borrow the packet, and frames are written into the driver's
//! buffer.

use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::{family_index, Allocation};
use super::io::RelayToken;
use super::limits::Bucket;
use super::stats::{Direction, DropReason, Framing, Stats};
use super::{policy, Engine, EngineConfig, FiveTuple, Output, RelayIo};
use crate::proto::{AttrType, ChannelData, Class, Message, MessageType, MessageWriter, Method, TurnAttributes};

/// The shard-wide limits a relayed packet is checked against, besides its allocation's.
struct Shard<'e> {
    bandwidth: &'e mut Bucket,
    config: &'e EngineConfig,
    shards: u32,
    stats: &'e Stats,
}

/// The engine's [`Shard`] limits, borrowed beside its allocation table.
macro_rules! shard {
    ($engine:ident) => {
        Shard {
            bandwidth: &mut $engine.shard_bandwidth,
            config: &$engine.config,
            shards: $engine.shards,
            stats: &$engine.stats,
        }
    };
}

/// Whether `len` relayed bytes to or from `peer` may pass on allocation `a`: a permission for
/// the peer's address, and room in the allocation's and the shard's bandwidth. A refused
/// packet is counted by reason; an admitted one in the allocation's traffic and the stats.
fn admit<S>(
    a: &mut Allocation<S>,
    shard: Shard<'_>,
    now: Instant,
    peer: SocketAddr,
    len: usize,
    direction: Direction,
    framing: Framing,
) -> bool {
    if !a.has_permission(peer.ip(), now) {
        shard.stats.dropped(DropReason::no_permission);
        return false;
    }
    let per_shard = shard.config.bandwidth_total / u64::from(shard.shards.max(1));
    if !(a.bandwidth.take(now, shard.config.bandwidth_per_allocation, len) && shard.bandwidth.take(now, per_shard, len))
    {
        shard.stats.dropped(DropReason::bandwidth);
        return false;
    }
    match direction {
        Direction::client_to_peer => {
            a.traffic.to_peer_packets += 1;
            a.traffic.to_peer_bytes += len as u64;
        }
        Direction::peer_to_client => {
            a.traffic.to_client_packets += 1;
            a.traffic.to_client_bytes += len as u64;
        }
    }
    shard.stats.relayed(direction, len);
    shard.stats.framed(framing);
    true
}

/// The peer as permissions know it: IPv4-mapped IPv6 addresses as IPv4.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(policy::canonical(peer.ip()), peer.port())
}

impl<R: RelayIo> Engine<R> {
    /// ChannelData from a client (RFC 8656 §12.4): the hot path. Four bytes of header, one
    /// lookup of the 5-tuple, one of the channel, then [`admit`].
    pub(super) fn channel_data<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        packet: &'a [u8],
    ) -> Output<'a, R::Socket> {
        let Ok(cd) = ChannelData::parse(packet) else {
            self.stats.dropped(DropReason::malformed);
            return Output::None;
        };
        let Some(id) = self.table.id_for(tuple) else {
            self.stats.dropped(DropReason::no_allocation);
            return Output::None;
        };
        let shard = shard!(self);
        let Some(a) = self.table.get_mut(id) else {
            return Output::None;
        };
        let Some(peer) = a.channel_peer(cd.channel, now) else {
            shard.stats.dropped(DropReason::channel_unbound);
            return Output::None;
        };
        if !admit(
            a,
            shard,
            now,
            peer,
            cd.data.len(),
            Direction::client_to_peer,
            Framing::channel_data,
        ) {
            return Output::None;
        }
        to_peer(a, peer, cd.data)
    }

    /// A Send indication from a client (RFC 8656 §11.2).
    pub(super) fn send_indication<'a>(
        &'a mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: Message<'a>,
    ) -> Output<'a, R::Socket> {
        let Some(id) = self.table.id_for(tuple) else {
            self.stats.dropped(DropReason::no_allocation);
            return Output::None;
        };
        let attrs = TurnAttributes::decode(&msg);
        let (Some(peer), Some(data)) = (attrs.peer(), attrs.data.ok()) else {
            self.stats.dropped(DropReason::malformed);
            return Output::None;
        };
        let peer = canonical(peer);
        if attrs.dont_fragment {
            self.dont_fragment(id);
        }
        let shard = shard!(self);
        let Some(a) = self.table.get_mut(id) else {
            return Output::None;
        };
        if !admit(
            a,
            shard,
            now,
            peer,
            data.len(),
            Direction::client_to_peer,
            Framing::send_indication,
        ) {
            return Output::None;
        }
        to_peer(a, peer, data)
    }

    /// A Send indication asked for DONT-FRAGMENT: the allocation's relay sockets set the DF
    /// bit from now on (the socket option is per socket, so it stays on).
    fn dont_fragment(&mut self, id: super::AllocationId) {
        let Some(a) = self.table.get_mut(id) else { return };
        if a.dont_fragment {
            return;
        }
        a.dont_fragment = true;
        for r in a.relays.iter().flatten() {
            if let Err(e) = self.io.set_dont_fragment(&r.socket) {
                tracing::debug!(error = %e, relay = %r.bound, "cannot set DF on a relay socket");
            }
        }
    }

    /// A datagram relay socket `token` received from `peer`, framed for the client as
    /// ChannelData when a channel is bound to the peer, else as a Data indication.
    pub(super) fn peer_to_client(
        &mut self,
        now: Instant,
        token: RelayToken,
        peer: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<(FiveTuple, usize)> {
        let tid = self.next_indication_tid();
        let peer = canonical(peer);
        let shard = shard!(self);
        let Some(a) = self.table.get_mut(token.allocation) else {
            shard.stats.dropped(DropReason::no_allocation);
            return None;
        };
        let channel = a.channel_for(peer, now);
        let framing = if channel.is_some() {
            Framing::channel_data
        } else {
            Framing::data_indication
        };
        if !admit(a, shard, now, peer, data.len(), Direction::peer_to_client, framing) {
            return None;
        }
        let tuple = a.tuple;
        let len = match channel {
            Some(channel) => ChannelData::encode(channel, data, tuple.transport.is_stream(), out)?,
            None => {
                let typ = MessageType::new(Method::DATA, Class::Indication);
                let mut w = MessageWriter::new(out, typ, tid).ok()?;
                w.xor_address(AttrType::XOR_PEER_ADDRESS, peer).ok()?;
                w.attr(AttrType::DATA, data).ok()?;
                w.finish()
            }
        };
        Some((tuple, len))
    }
}

/// Sends `data` to `peer` from the allocation's relay socket of the peer's family.
fn to_peer<'a, S>(a: &'a Allocation<S>, peer: SocketAddr, data: &'a [u8]) -> Output<'a, S> {
    match &a.relays[family_index(peer.ip())] {
        Some(r) => Output::ToPeer {
            socket: &r.socket,
            peer,
            data,
        },
        None => Output::None,
    }
}
