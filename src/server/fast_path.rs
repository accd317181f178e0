//! The kernel fast path's entries (issue 20: XDP relays ChannelData over UDP). The engine
//! alone decides which channels may be relayed without it: a bound channel whose peer has a
//! live permission and the client's address family, on a UDP allocation with no bandwidth
//! cap. After every change it compares
//! what an allocation may offload with what it has offloaded and queues [`FastPath`] commands
//! for the driver, which writes them to the BPF maps. One writer per entry: the engine of the
//! allocation's shard.
//!
//! An entry carries its own deadline (the earliest of the channel's, the permission's and the
//! allocation's expiry), which the program checks on every packet, so that not one packet is
//! relayed after a permission expires even before the engine's timer runs. Packets the
//! program relays are reported back with [`super::Engine::handle_fast_path_traffic`] and
//! counted as if the engine had relayed them.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::allocation::{family_index, Allocation, Traffic};
use super::io::AllocationId;
use super::{Engine, EngineConfig, RelayIo, Transport};
use crate::proto::ChannelNumber;

/// One channel the program relays in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastPathEntry {
    pub allocation: AllocationId,
    /// The client's address, and the listener's (the server side of its 5-tuple).
    pub client: SocketAddr,
    pub listener: SocketAddr,
    pub channel: ChannelNumber,
    pub peer: SocketAddr,
    /// The relay socket's local address: the source of what goes to the peer.
    pub relay: SocketAddr,
    /// After this, the program hands the channel's packets to the stack.
    pub expires: Instant,
    /// DONT-FRAGMENT: packets to the peer carry DF.
    pub dont_fragment: bool,
}

/// What the engine asks the driver to do with the fast path's maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FastPath {
    /// Write `entry`, replacing one with the same client 5-tuple and channel.
    Install(FastPathEntry),
    /// Delete `entry`. The driver then reports what the program relayed on it, with
    /// `removed = true` ([`super::Engine::handle_fast_path_traffic`]).
    Remove(FastPathEntry),
}

/// The local source address of allocation `a`'s relay towards `peer`, when the program can
/// write it: the bound address, or, for a wildcard relay advertising the listener's address,
/// that address.
fn relay_source<S>(a: &Allocation<S>, peer: SocketAddr) -> Option<SocketAddr> {
    let relay = a.relays.get(family_index(peer.ip()))?.as_ref()?;
    let ip: IpAddr = if !relay.bound.ip().is_unspecified() {
        relay.bound.ip()
    } else if relay.advertised.ip() == a.tuple.server.ip() {
        relay.advertised.ip()
    } else {
        return None;
    };
    Some(SocketAddr::new(ip, relay.bound.port()))
}

/// The entries allocation `a` may offload at `now`.
fn wanted<S>(config: &EngineConfig, id: AllocationId, a: &Allocation<S>, now: Instant) -> Vec<FastPathEntry> {
    let eligible = config.fast_path
        && a.tuple.transport == Transport::Udp
        && a.tcp.is_none()
        && config.bandwidth_per_allocation == 0
        && config.bandwidth_total == 0
        && now < a.expires;
    if !eligible {
        return Vec::new();
    }
    // A peer of the client's family only: the program rewrites headers in place, and an
    // IPv4 header cannot become an IPv6 one there.
    let family = a.tuple.client.is_ipv4();
    a.channels
        .iter()
        .filter(|(_, c)| now < c.expires && c.peer.is_ipv4() == family)
        .filter_map(|(&channel, c)| {
            let permission = *a.permissions.get(&c.peer.ip()).filter(|&&e| now < e)?;
            Some(FastPathEntry {
                allocation: id,
                client: a.tuple.client,
                listener: a.tuple.server,
                channel,
                peer: c.peer,
                relay: relay_source(a, c.peer)?,
                expires: c.expires.min(permission).min(a.expires),
                dont_fragment: a.dont_fragment,
            })
        })
        .collect()
}

impl<R: RelayIo> Engine<R> {
    /// Brings allocation `id`'s offloaded entries in line with what it may offload now.
    pub(super) fn sync_fast_path(&mut self, id: AllocationId, now: Instant) {
        let Some(a) = self.table.get_mut(id) else { return };
        if a.offloaded.is_empty() && !self.config.fast_path {
            return;
        }
        let want = wanted(&self.config, id, a, now);
        let same = |x: &FastPathEntry, y: &FastPathEntry| x.channel == y.channel && x.peer == y.peer;
        for old in &a.offloaded {
            if !want.iter().any(|w| same(w, old)) {
                self.fast_path.push_back(FastPath::Remove(*old));
            }
        }
        for w in &want {
            if !a.offloaded.contains(w) {
                self.fast_path.push_back(FastPath::Install(*w));
            }
        }
        a.offloaded = want;
    }

    /// Re-checks every allocation (the configuration changed).
    pub(super) fn sync_fast_path_all(&mut self, now: Instant) {
        let ids: Vec<AllocationId> = self.table.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.sync_fast_path(id, now);
        }
    }

    /// The next command for the fast path's maps. The driver drains these after every
    /// `handle_*` call and before it asks [`Engine::poll_timeout`].
    pub fn poll_fast_path(&mut self) -> Option<FastPath> {
        self.fast_path.pop_front()
    }

    /// What the program relayed on `entry` since the last report: counted in the stats and
    /// the allocation's traffic (its log line, `turnd sessions`, usage). `removed` says the
    /// entry is gone (the answer to [`FastPath::Remove`]); an allocation that ended waits for
    /// these last counts before its log line.
    pub fn handle_fast_path_traffic(&mut self, now: Instant, entry: &FastPathEntry, t: Traffic, removed: bool) {
        use super::stats::{Direction, Framing};
        for (d, packets, bytes) in [
            (Direction::client_to_peer, t.to_peer_packets, t.to_peer_bytes),
            (Direction::peer_to_client, t.to_client_packets, t.to_client_bytes),
        ] {
            self.stats.relayed_many(d, packets, bytes);
            self.stats.fast_path[d as usize].add(packets);
            self.stats.framing[Framing::channel_data as usize].add(packets);
        }
        let add = |a: &mut Traffic| {
            a.to_peer_packets += t.to_peer_packets;
            a.to_peer_bytes += t.to_peer_bytes;
            a.to_client_packets += t.to_client_packets;
            a.to_client_bytes += t.to_client_bytes;
        };
        if let Some(a) = self.table.get_mut(entry.allocation) {
            add(&mut a.traffic);
            return;
        }
        let Some(ending) = self.ending.get_mut(&entry.allocation) else {
            return;
        };
        add(&mut ending.0.traffic);
        if removed {
            ending.0.offloaded.retain(|e| e != entry);
        }
        if ending.0.offloaded.is_empty() {
            if let Some((a, reason)) = self.ending.remove(&entry.allocation) {
                self.finish_allocation(now, a, reason);
            }
        }
    }
}
