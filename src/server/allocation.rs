//! Allocations and everything hung off them (permissions, channels), the slab that holds
//! them, and the engine's one timer structure: a min-heap with one live entry per
//! allocation, at that allocation's next deadline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::io::AllocationId;
use super::FiveTuple;
use crate::proto::ChannelNumber;
use crate::proto::TransactionId;
pub use crate::types::{CHANNEL_LIFETIME, PERMISSION_LIFETIME};

/// Most permissions one allocation may hold; beyond, CreatePermission gets 508. This bounds
/// an allocation's memory (channels are bounded by the channel-number range).
pub const MAX_PERMISSIONS: usize = 1024;

/// After a channel expires, neither its number nor its peer may be bound to anything else
/// for five more minutes, so that late packets are never misdelivered (RFC 8656 §12).
pub const CHANNEL_COOLDOWN: Duration = Duration::from_secs(300);

/// One relayed transport address and its socket.
#[derive(Debug)]
pub struct Relay<S> {
    pub socket: S,
    /// The address the socket is bound to.
    pub bound: SocketAddr,
    /// The address given to the client in XOR-RELAYED-ADDRESS.
    pub advertised: SocketAddr,
}

/// Where a TCP allocation listens: the bound address and the one given to the client.
#[derive(Debug, Clone, Copy)]
pub struct TcpRelayed {
    pub bound: SocketAddr,
    pub advertised: SocketAddr,
}

/// A channel binding.
#[derive(Debug, Clone, Copy)]
pub struct Channel {
    pub peer: SocketAddr,
    pub expires: Instant,
    /// Whether the channel is counted in `turnd_channels_active` (until the sweep that sees
    /// it expire).
    pub counted: bool,
}

/// Byte and packet counts in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    pub to_peer_packets: u64,
    pub to_peer_bytes: u64,
    pub to_client_packets: u64,
    pub to_client_bytes: u64,
}

/// One allocation (RFC 8656 §2.2).
#[derive(Debug)]
pub struct Allocation<S> {
    pub tuple: FiveTuple,
    pub username: Box<str>,
    pub allocate_tid: TransactionId,
    /// Index 0: the IPv4 relay; index 1: the IPv6 relay (UDP allocations).
    pub relays: [Option<Relay<S>>; 2],
    /// A TCP allocation's relayed address (RFC 6062); its listener is in the engine.
    pub tcp: Option<TcpRelayed>,
    pub created: Instant,
    pub expires: Instant,
    /// Peer IP → expiry. Permissions are per IP address, any port (RFC 8656 §9).
    pub permissions: HashMap<IpAddr, Instant>,
    pub channels: HashMap<ChannelNumber, Channel>,
    pub channel_by_peer: HashMap<SocketAddr, ChannelNumber>,
    pub traffic: Traffic,
    /// The traffic and the time up to which usage has been accounted.
    pub(crate) billed: (Traffic, Instant),
    /// The RESERVATION-TOKEN this allocation's Allocate answer carried (EVEN-PORT with R),
    /// repeated if the request is retransmitted.
    pub reservation_token: Option<[u8; 8]>,
    /// The relay sockets send with the DF bit (DONT-FRAGMENT).
    pub dont_fragment: bool,
    /// Relayed bytes per second (`bandwidth_per_allocation`).
    pub(crate) bandwidth: super::Bucket,
    /// The deadline this allocation currently has in the timer heap.
    pub(crate) scheduled: Option<Instant>,
    /// The channels the kernel fast path relays for it now.
    pub(crate) offloaded: Vec<super::FastPathEntry>,
}

/// The relay slot (0 or 1) for an address of `ip`'s family.
pub fn family_index(ip: IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

impl<S> Allocation<S> {
    pub fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&e| now < e)
    }

    /// The active channel for `peer`, if any.
    pub fn channel_for(&self, peer: SocketAddr, now: Instant) -> Option<ChannelNumber> {
        let n = *self.channel_by_peer.get(&peer)?;
        self.channels.get(&n).filter(|c| now < c.expires).map(|_| n)
    }

    /// The peer of active channel `n`, if any.
    pub fn channel_peer(&self, n: ChannelNumber, now: Instant) -> Option<SocketAddr> {
        self.channels.get(&n).filter(|c| now < c.expires).map(|c| c.peer)
    }

    /// Channels counted in the gauge.
    pub fn counted_channels(&self) -> usize {
        self.channels.values().filter(|c| c.counted).count()
    }

    /// The earliest moment something about this allocation expires.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let mut t = self.expires;
        for &e in self.permissions.values() {
            t = t.min(e);
        }
        for c in self.channels.values() {
            t = t.min(if now < c.expires {
                c.expires
            } else {
                c.expires + CHANNEL_COOLDOWN
            });
        }
        t
    }

    /// Removes permissions and channels whose time has come. Returns how many permissions
    /// and how many active channels ended, for the gauges.
    pub fn sweep(&mut self, now: Instant) -> (usize, usize) {
        let before = self.permissions.len();
        self.permissions.retain(|_, e| now < *e);
        let permissions_ended = before - self.permissions.len();
        let mut channels_ended = 0;
        for c in self.channels.values_mut() {
            if c.counted && c.expires <= now {
                c.counted = false;
                channels_ended += 1;
            }
        }
        let by_peer = &mut self.channel_by_peer;
        self.channels.retain(|_, c| {
            let keep = now < c.expires + CHANNEL_COOLDOWN;
            if !keep {
                by_peer.remove(&c.peer);
            }
            keep
        });
        (permissions_ended, channels_ended)
    }
}

struct Slot<S> {
    generation: u32,
    allocation: Option<Allocation<S>>,
}

/// The allocations of one engine: a slab indexed by [`AllocationId`], the 5-tuple index, and
/// the timer heap.
pub struct Table<S> {
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    by_tuple: HashMap<FiveTuple, AllocationId>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
}

impl<S> Default for Table<S> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            by_tuple: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }
}

impl<S> Table<S> {
    /// Reserves an id for an allocation about to be created.
    pub fn reserve(&mut self) -> AllocationId {
        match self.free.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                AllocationId {
                    index,
                    generation: slot.generation,
                }
            }
            None => {
                let index = self.slots.len() as u32;
                self.slots.push(Slot {
                    generation: 0,
                    allocation: None,
                });
                AllocationId { index, generation: 0 }
            }
        }
    }

    /// Gives back an id from [`Table::reserve`] that was never filled.
    pub fn unreserve(&mut self, id: AllocationId) {
        if self
            .slots
            .get(id.index as usize)
            .is_some_and(|s| s.allocation.is_none() && s.generation == id.generation)
        {
            self.free.push(id.index);
        }
    }

    /// Stores an allocation under a reserved id and schedules its first deadline.
    pub fn insert(&mut self, id: AllocationId, mut a: Allocation<S>, now: Instant) {
        let deadline = a.next_deadline(now);
        a.scheduled = Some(deadline);
        self.by_tuple.insert(a.tuple, id);
        self.timers.push(Reverse((deadline, id.index, id.generation)));
        if let Some(slot) = self.slots.get_mut(id.index as usize) {
            slot.allocation = Some(a);
        }
    }

    pub fn get(&self, id: AllocationId) -> Option<&Allocation<S>> {
        let s = self.slots.get(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.allocation.as_ref()
    }

    pub fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation<S>> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        s.allocation.as_mut()
    }

    pub fn id_for(&self, tuple: &FiveTuple) -> Option<AllocationId> {
        self.by_tuple.get(tuple).copied()
    }

    /// Removes and returns an allocation; dropping it closes its relay sockets.
    pub fn remove(&mut self, id: AllocationId) -> Option<Allocation<S>> {
        let s = self.slots.get_mut(id.index as usize)?;
        if s.generation != id.generation {
            return None;
        }
        let a = s.allocation.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(id.index);
        self.by_tuple.remove(&a.tuple);
        Some(a)
    }

    /// Puts the allocation's next deadline into the heap if it moved earlier or later.
    pub fn reschedule(&mut self, id: AllocationId, now: Instant) {
        let Some(a) = self.get_mut(id) else { return };
        let deadline = a.next_deadline(now);
        if a.scheduled != Some(deadline) {
            a.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, id.index, id.generation)));
        }
    }

    /// The earliest pending deadline.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        // Drop stale entries so the answer is exact.
        while let Some(&Reverse((t, index, generation))) = self.timers.peek() {
            let live = self
                .slots
                .get(index as usize)
                .and_then(|s| (s.generation == generation).then_some(s.allocation.as_ref()).flatten())
                .is_some_and(|a| a.scheduled == Some(t));
            if live {
                return Some(t);
            }
            self.timers.pop();
        }
        None
    }

    /// Pops the next allocation whose deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<AllocationId> {
        let t = self.next_timeout()?;
        if t > now {
            return None;
        }
        let Reverse((_, index, generation)) = self.timers.pop()?;
        let id = AllocationId { index, generation };
        if let Some(a) = self.get_mut(id) {
            a.scheduled = None;
        }
        Some(id)
    }

    pub fn len(&self) -> usize {
        self.by_tuple.len()
    }

    /// Every allocation, to change each (usage accounting).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation<S>> {
        self.slots.iter_mut().filter_map(|s| s.allocation.as_mut())
    }

    /// Every allocation, for listings.
    pub fn iter(&self) -> impl Iterator<Item = (AllocationId, &Allocation<S>)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.allocation.as_ref().map(|a| {
                (
                    AllocationId {
                        index: i as u32,
                        generation: s.generation,
                    },
                    a,
                )
            })
        })
    }

    /// Number of entries in the timer heap (stale ones included), to check it stays bounded.
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Transport;
    use std::time::Duration;

    fn allocation(port: u16, created: Instant, lives: Duration) -> Allocation<()> {
        Allocation {
            tuple: FiveTuple {
                transport: Transport::Udp,
                client: SocketAddr::from(([198, 18, 0, 1], port)),
                server: SocketAddr::from(([198, 18, 0, 2], 3478)),
            },
            username: "u".into(),
            allocate_tid: TransactionId([0; 12]),
            tcp: None,
            reservation_token: None,
            dont_fragment: false,
            relays: [None, None],
            created,
            expires: created + lives,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
            traffic: Traffic::default(),
            billed: (Traffic::default(), created),
            bandwidth: super::super::Bucket::new(),
            offloaded: Vec::new(),
            scheduled: None,
        }
    }

    fn add(t: &mut Table<()>, port: u16, now: Instant, lives: u64) -> AllocationId {
        let id = t.reserve();
        t.insert(id, allocation(port, now, Duration::from_secs(lives)), now);
        id
    }

    #[test]
    fn deadlines_come_out_earliest_first_and_not_a_tick_early() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let late = add(&mut t, 1, t0, 30);
        let early = add(&mut t, 2, t0, 10);
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(t.pop_due(t0 + Duration::from_millis(9_999)), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(10)), Some(early));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(10)), None, "each deadline pops once");
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(99)), Some(late));
        assert_eq!(t.next_timeout(), None);
    }

    #[test]
    fn a_moved_deadline_leaves_a_stale_entry_that_is_never_reported() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let id = add(&mut t, 1, t0, 10);
        // A Refresh moves the deadline later: the old entry stays in the heap, unreported.
        if let Some(a) = t.get_mut(id) {
            a.expires = t0 + Duration::from_secs(50);
        }
        t.reschedule(id, t0);
        assert_eq!(t.timer_entries(), 2);
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(50)));
        assert_eq!(t.timer_entries(), 1, "the stale entry was dropped on the way");
        assert_eq!(t.pop_due(t0 + Duration::from_secs(20)), None);
    }

    #[test]
    fn a_removed_allocation_and_a_reused_slot_never_see_each_others_deadlines() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let old = add(&mut t, 1, t0, 10);
        assert!(t.remove(old).is_some());
        let new = add(&mut t, 2, t0, 40);
        assert_eq!(new.index, old.index, "the slot is reused");
        assert_ne!(new.generation, old.generation);
        assert!(t.get(old).is_none(), "a stale id reaches nothing");
        assert_eq!(t.next_timeout(), Some(t0 + Duration::from_secs(40)));
        assert_eq!(t.pop_due(t0 + Duration::from_secs(40)), Some(new));
        assert_eq!(t.len(), 1);
    }
}
