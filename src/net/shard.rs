//! One shard: a thread with a current-thread runtime that owns an engine, its way out to
//! clients ([`ClientEgress`]), its relay sockets and its timer. Tasks share the shard through `Rc`
//! and borrow the engine only between awaits, so no lock is ever held across one.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{watch, Notify};

use super::batch::TxQueue;
use super::egress::ClientEgress;
use crate::proto::MAX_MESSAGE_LEN;
use crate::server::stats::{DropReason, Stats};
use crate::server::{ConnectionId, Engine, Output, RelayIo, RelayToken};

/// Datagrams handled per wake-up of a socket before yielding to the shard's other tasks.
pub const BATCH: usize = 32;

/// A relay socket as the engine owns it: dropping it takes it out of the shard's relay epoll
/// set and closes it (once a pending send queue that names it has been flushed).
#[derive(Debug)]
pub struct RelaySocket {
    sock: Rc<UdpSocket>,
    slot: usize,
    shard: Weak<Shard>,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        if let Some(shard) = self.shard.upgrade() {
            shard.forget_relay(self.slot, &self.sock);
        }
    }
}

/// The driver side of [`RelayIo`]: binds relay sockets into the shard's relay epoll set.
pub struct NetRelay {
    shard: Weak<Shard>,
}

impl RelayIo for NetRelay {
    type Socket = RelaySocket;
    /// A bound relay socket outside every epoll set; any shard may adopt it.
    type Held = UdpSocket;
    type Listener = super::tcp_relay::RelayListener;
    type Stream = super::tcp_relay::PeerStream;

    fn listen(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<Self::Listener> {
        super::tcp_relay::listen(&self.shard, addr, token)
    }

    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, id: ConnectionId) -> io::Result<Self::Stream> {
        super::tcp_relay::connect(&self.shard, from, peer, id)
    }

    fn stream_bytes(stream: &Self::Stream) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (stream.0.to_peer.load(Relaxed), stream.0.to_client.load(Relaxed))
    }

    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<RelaySocket> {
        let sock = super::socket::bind_relay(addr)?;
        self.adopt(sock, token)
    }

    fn hold(&mut self, addr: SocketAddr) -> io::Result<UdpSocket> {
        super::socket::bind_relay(addr)
    }

    fn adopt(&mut self, sock: UdpSocket, token: RelayToken) -> io::Result<RelaySocket> {
        let shard = self
            .shard
            .upgrade()
            .ok_or_else(|| io::Error::other("the shard is shutting down"))?;
        let sock = Rc::new(sock);
        let slot = shard.register_relay(sock.clone(), token)?;
        Ok(RelaySocket {
            sock,
            slot,
            shard: self.shard.clone(),
        })
    }

    fn set_dont_fragment(&mut self, socket: &RelaySocket) -> io::Result<()> {
        super::socket::set_dont_fragment(&socket.sock)
    }
}

/// Every relay socket of a shard in one epoll set, which the shard's reactor watches as a
/// single descriptor: one task and one `epoll_wait` serve all of them, instead of a task, a
/// waker and a readiness record per socket. Sockets are edge-triggered; each event's data
/// is the socket's slot.
struct RelayPoll(Epoll);

impl AsRawFd for RelayPoll {
    fn as_raw_fd(&self) -> RawFd {
        self.0 .0.as_raw_fd()
    }
}

// The epoll set is created once and closed only when the RelayPoll drops.
impl super::socket::StableFd for RelayPoll {}

/// Relay sockets by slot, with the token the engine knows each by; freed slots are reused.
#[derive(Default)]
struct RelaySlots {
    entries: Vec<Option<(Rc<UdpSocket>, RelayToken)>>,
    free: Vec<usize>,
}

/// Events taken from the relay epoll set per round.
const RELAY_EVENTS: usize = 64;
/// Datagrams read from relay sockets per round before the shard's other tasks (listeners,
/// timers) get their turn; sockets not reached wait in `relay_pending`.
const RELAY_ROUND_BUDGET: usize = 256;

/// Datagrams read from a relay socket per recvmmsg call.
const RELAY_BATCH: usize = 8;
/// One receive slot: the largest UDP payload fits.
const RELAY_SLOT: usize = 64 * 1024;

/// Receive slots shared by every relay socket of a shard, for recvmmsg.
struct RelayRx {
    bufs: Box<[u8]>,
    headers: MultiHeaders<SockaddrStorage>,
}

pub struct Shard {
    pub engine: RefCell<Engine<NetRelay>>,
    /// The way out to clients: UDP listeners, TCP connections, the sendmmsg queue.
    pub egress: ClientEgress,
    /// Datagrams for peers, sent when a batch of client packets ends, and the relay sockets
    /// they leave from, kept open until then.
    peer_tx: RefCell<TxQueue>,
    peer_socks: RefCell<Vec<Rc<UdpSocket>>>,
    /// Receive slots for relay sockets, and the buffer their output is framed into.
    relay_rx: RefCell<RelayRx>,
    relay_tx: RefCell<Box<[u8]>>,
    /// The relay sockets, their epoll set, and the slots of sockets that stopped at their
    /// budget with datagrams left (edge-triggered: no new event will name them).
    relay_poll: Rc<AsyncFd<RelayPoll>>,
    relays: RefCell<RelaySlots>,
    relay_pending: RefCell<Vec<usize>>,
    /// The deadline the timer task sleeps until.
    armed: Cell<Option<Instant>>,
    timer: Notify,
    pub stop: watch::Receiver<bool>,
    /// This shard's index and every shard's command queue (set once at start).
    pub siblings: std::cell::OnceCell<(usize, Arc<Vec<UnboundedSender<super::ShardCommand>>>)>,
    /// The XDP program's maps, when it is attached (set once at start).
    pub fast_path: std::cell::OnceCell<super::xdp::ShardFastPath>,
}

impl Shard {
    /// Must be called inside the shard's runtime (the relay epoll set registers with it).
    pub fn new(
        make_engine: impl FnOnce(NetRelay) -> Engine<NetRelay>,
        stop: watch::Receiver<bool>,
    ) -> io::Result<Rc<Shard>> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let relay_poll = Rc::new(super::socket::readable(RelayPoll(epoll))?);
        Ok(Rc::new_cyclic(|weak| Shard {
            engine: RefCell::new(make_engine(NetRelay { shard: weak.clone() })),
            egress: ClientEgress::default(),
            peer_tx: RefCell::new(TxQueue::default()),
            peer_socks: RefCell::new(Vec::with_capacity(super::batch::TX_BATCH)),
            relay_rx: RefCell::new(RelayRx {
                bufs: vec![0u8; RELAY_SLOT * RELAY_BATCH].into_boxed_slice(),
                headers: MultiHeaders::preallocate(RELAY_BATCH, None),
            }),
            relay_tx: RefCell::new(vec![0u8; MAX_MESSAGE_LEN + 64].into_boxed_slice()),
            relay_poll,
            relays: RefCell::new(RelaySlots::default()),
            relay_pending: RefCell::new(Vec::new()),
            armed: Cell::new(None),
            timer: Notify::new(),
            stop,
            siblings: std::cell::OnceCell::new(),
            fast_path: std::cell::OnceCell::new(),
        }))
    }

    /// Adds a relay socket to the epoll set; returns its slot.
    fn register_relay(&self, sock: Rc<UdpSocket>, token: RelayToken) -> io::Result<usize> {
        let mut relays = self.relays.borrow_mut();
        let slot = match relays.free.pop() {
            Some(slot) => slot,
            None => {
                relays.entries.push(None);
                relays.entries.len() - 1
            }
        };
        let event = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, slot as u64);
        if let Err(e) = self.relay_poll.get_ref().0.add(&*sock, event) {
            relays.free.push(slot);
            return Err(e.into());
        }
        if let Some(entry) = relays.entries.get_mut(slot) {
            *entry = Some((sock, token));
        }
        Ok(slot)
    }

    /// Takes a relay socket out of the epoll set and frees its slot.
    fn forget_relay(&self, slot: usize, sock: &UdpSocket) {
        let _ = self.relay_poll.get_ref().0.delete(sock);
        let mut relays = self.relays.borrow_mut();
        if let Some(entry) = relays.entries.get_mut(slot) {
            if entry.take().is_some() {
                relays.free.push(slot);
            }
        }
    }

    fn relay_at(&self, slot: usize) -> Option<(Rc<UdpSocket>, RelayToken)> {
        self.relays.borrow().entries.get(slot).and_then(|e| e.clone())
    }

    /// Reads every relay socket that has datagrams: first those left over at their budget
    /// last time, then those the epoll set reports. Returns true when work is left.
    fn relay_round(&self, events: &mut [EpollEvent]) -> bool {
        let n = self
            .relay_poll
            .get_ref()
            .0
            .wait(events, EpollTimeout::ZERO)
            .unwrap_or_default();
        let mut more = n == events.len();
        let mut budget = RELAY_ROUND_BUDGET;
        let carried = self.relay_pending.borrow().len();
        for i in 0..carried {
            let slot = self.relay_pending.borrow().get(i).copied();
            if let Some(slot) = slot {
                more |= self.drain_slot(slot, &mut budget);
            }
        }
        self.relay_pending.borrow_mut().drain(..carried);
        for event in events.iter().take(n) {
            more |= self.drain_slot(event.data() as usize, &mut budget);
        }
        if let Ok(mut engine) = self.engine.try_borrow_mut() {
            self.rearm(&mut engine);
            let stats = engine.stats().clone();
            drop(engine);
            self.egress.flush_udp(&stats);
        }
        more
    }

    /// Drains one relay socket up to its own budget and what is left of the round's;
    /// remembers it when datagrams may be left.
    fn drain_slot(&self, slot: usize, budget: &mut usize) -> bool {
        let left = if *budget == 0 {
            true
        } else {
            let Some((sock, token)) = self.relay_at(slot) else {
                return false;
            };
            let (read, left) = drain_relay(self, &sock, token);
            *budget = budget.saturating_sub(read);
            left
        };
        if left {
            self.relay_pending.borrow_mut().push(slot);
        }
        left
    }

    /// Carries out what the engine asked: `tx` is the buffer it wrote client bytes into.
    pub fn apply(&self, output: Output<'_, RelaySocket>, tx: &[u8], stats: &Stats) {
        match output {
            Output::None => {}
            Output::ToClient { tuple, len } => self.egress.send(&tuple, tx.get(..len).unwrap_or_default(), stats),
            Output::ToPeer { socket, peer, data } => self.queue_peer(socket, peer, data, stats),
            // Only a TCP client connection can be joined, and its task handles that itself.
            Output::Joined { tuple, .. } => {
                tracing::debug!(client = %tuple.client, "ConnectionBind answered outside its connection");
            }
        }
    }

    /// Runs one engine entry point that an event of a TCP relay calls (a peer connected, a
    /// connection to a peer is up or failed), and carries out what it answers.
    pub fn relay_event(&self, f: impl for<'a> FnOnce(&'a mut Engine<NetRelay>, &mut [u8]) -> Output<'a, RelaySocket>) {
        let Ok(mut engine) = self.engine.try_borrow_mut() else {
            return;
        };
        let stats = engine.stats().clone();
        let mut out = [0u8; 512];
        let output = f(&mut engine, &mut out);
        self.apply(output, &out, &stats);
        self.rearm(&mut engine);
        drop(engine);
        self.egress.flush_udp(&stats);
    }

    /// Carries out the engine's fast-path commands, then wakes the timer task if the
    /// engine's next deadline moved earlier. Called after every batch handed to the engine
    /// (the engine's call-order contract).
    pub fn rearm(&self, engine: &mut Engine<NetRelay>) {
        if let Some(fp) = self.fast_path.get() {
            fp.apply(engine);
        }
        let next = engine.poll_timeout();
        let armed = self.armed.get();
        if next.is_some() && (armed.is_none() || next < armed) {
            self.timer.notify_one();
        }
    }

    /// Queues a relayed datagram for a peer, sent from the allocation's relay socket when
    /// the batch being handled ends (`flush_peers`); a full queue is sent at once.
    pub fn queue_peer(&self, socket: &RelaySocket, peer: SocketAddr, bytes: &[u8], metrics: &Stats) {
        let full = {
            let mut tx = self.peer_tx.borrow_mut();
            tx.push(&*socket.sock, None, peer, bytes);
            self.peer_socks.borrow_mut().push(socket.sock.clone());
            tx.is_full()
        };
        if full {
            self.flush_peers(metrics);
        }
    }

    /// Sends every queued datagram for peers.
    pub fn flush_peers(&self, metrics: &Stats) {
        let mut tx = self.peer_tx.borrow_mut();
        if tx.is_empty() {
            return;
        }
        let done = tx.flush();
        self.peer_socks.borrow_mut().clear();
        for _ in 0..done.failed {
            metrics.dropped(DropReason::send_failed);
        }
    }
}

/// Sends what was queued for UDP clients outside a listener batch (TCP clients' relayed
/// packets, anything a relay round left). It is woken by the first datagram queued and runs
/// after the tasks already scheduled, so what they queue goes out in one sendmmsg. A relay
/// round flushes its own datagrams when it ends.
pub async fn flusher(shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    loop {
        tokio::select! {
            _ = shard.egress.pending.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = shard.engine.borrow().stats().clone();
        shard.egress.flush_udp(&metrics);
    }
}

/// Once a second, hands the XDP program's per-entry counts to the engine: metrics, `turnd
/// sessions` and usage stay live while the program relays.
pub async fn fast_path_counts(shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let (Some(fp), Ok(mut engine)) = (shard.fast_path.get(), shard.engine.try_borrow_mut()) {
            fp.collect(&mut engine);
        }
    }
}

/// Runs the engine's timers: sleeps until the next deadline, expires what is due.
pub async fn timers(shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    loop {
        let next = shard.engine.borrow_mut().poll_timeout();
        shard.armed.set(next);
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {
                let mut engine = shard.engine.borrow_mut();
                engine.handle_timeout(Instant::now());
                if let Some(fp) = shard.fast_path.get() {
                    fp.apply(&mut engine);
                }
            }
            _ = shard.timer.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Receives what peers send to every relay socket of the shard and hands it to the engine.
pub async fn relays(shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    let poll = shard.relay_poll.clone();
    let mut events = [EpollEvent::empty(); RELAY_EVENTS];
    loop {
        let mut guard = tokio::select! {
            r = poll.readable() => match r { Ok(g) => g, Err(_) => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        if shard.relay_round(&mut events) {
            // Work is left (a full set of events, or sockets at their budget): let the
            // shard's other tasks run, then come back without waiting for a new event.
            drop(guard);
            tokio::task::yield_now().await;
        } else {
            // Everything was read. A datagram that arrived since makes a new event, which
            // sets the readiness again.
            guard.clear_ready();
        }
    }
}

/// Handles up to a batch of datagrams waiting on a relay socket, read with recvmmsg.
/// Synchronous, so no borrow spans an await. Returns how many datagrams it read, and true
/// when it stopped at its budget rather than on an empty socket.
fn drain_relay(shard: &Shard, sock: &UdpSocket, token: RelayToken) -> (usize, bool) {
    let mut rx = shard.relay_rx.borrow_mut();
    let mut tx = shard.relay_tx.borrow_mut();
    let mut read = 0;
    for _ in 0..BATCH / RELAY_BATCH {
        let mut got = [(0usize, None::<SocketAddr>); RELAY_BATCH];
        let mut n = 0;
        // A short read means the queue is empty (edge-triggered: the next datagram makes a
        // new event), so no further system call is spent to learn that.
        let r = (|| {
            let RelayRx { bufs, headers } = &mut *rx;
            let mut chunks = bufs.chunks_mut(RELAY_SLOT);
            let mut slices: [[IoSliceMut<'_>; 1]; RELAY_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let results = recvmmsg(
                sock.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )?;
            for (slot, m) in got.iter_mut().zip(results) {
                *slot = (m.bytes, m.address.as_ref().and_then(to_std));
                n += 1;
            }
            Ok::<bool, Errno>(n == RELAY_BATCH)
        })();
        read += n;
        for (i, (len, peer)) in got.iter().take(n).enumerate() {
            let Some(peer) = *peer else { continue };
            let data = rx
                .bufs
                .get(i * RELAY_SLOT..i * RELAY_SLOT + (*len).min(RELAY_SLOT))
                .unwrap_or_default();
            let mut engine = shard.engine.borrow_mut();
            let output = engine.handle_peer(Instant::now(), token, peer, data, &mut tx);
            shard.apply(output, &tx, engine.stats());
        }
        match r {
            Ok(true) => continue,
            Ok(false) | Err(Errno::EAGAIN) => return (read, false),
            // ICMP errors from earlier sends surface here; they concern one peer only, and
            // the next call reads what is queued behind them.
            Err(_) => continue,
        }
    }
    (read, true)
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
