//! One shard: a thread with a current-thread runtime that owns an engine, its listener
//! sockets, its relay sockets and its TCP connections. Tasks share the shard through `Rc`
//! and borrow the engine only between awaits, so no lock is ever held across one.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::time::Instant;

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;

use super::batch::TxQueue;
use super::udp::UdpListener;
use crate::metrics::{DropReason, Metrics};
use crate::proto::MAX_MESSAGE_LEN;
use crate::server::{Engine, FiveTuple, RelayIo, RelayToken, Transport};

/// Datagrams handled per wake-up of a socket before yielding to the shard's other tasks.
pub const BATCH: usize = 32;

/// Bytes queued for a TCP client beyond which relayed packets are dropped.
const TCP_QUEUE_LIMIT: usize = 1 << 20;

/// A relay socket as the engine owns it: dropping it stops its reader task, which closes it.
#[derive(Debug)]
pub struct RelaySocket {
    sock: Rc<RelayFd>,
    reader: AbortHandle,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A relay socket registered for readability only (see `socket::readable`).
type RelayFd = AsyncFd<std::net::UdpSocket>;

/// The driver side of [`RelayIo`]: binds relay sockets and starts a reader task for each.
pub struct NetRelay {
    shard: Weak<Shard>,
}

impl RelayIo for NetRelay {
    type Socket = RelaySocket;

    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<RelaySocket> {
        let std = super::socket::bind_relay(addr)?;
        let sock = Rc::new(super::socket::readable(std)?);
        let reader = tokio::task::spawn_local(relay_reader(self.shard.clone(), sock.clone(), token));
        Ok(RelaySocket {
            sock,
            reader: reader.abort_handle(),
        })
    }
}

/// Data queued for a TCP client by the relay path, flushed by the connection's task.
#[derive(Default)]
pub struct TcpOut {
    pub queue: RefCell<Vec<u8>>,
    pub notify: Notify,
}

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
    pub udp: RefCell<Vec<Rc<UdpListener>>>,
    pub tcp: RefCell<HashMap<FiveTuple, Rc<TcpOut>>>,
    /// Datagrams for UDP clients, sent with sendmmsg when a batch ends or by `flusher`.
    client_tx: RefCell<TxQueue>,
    /// Datagrams for peers, sent when a batch of client packets ends, and the relay sockets
    /// they leave from, kept open until then.
    peer_tx: RefCell<TxQueue>,
    peer_socks: RefCell<Vec<Rc<RelayFd>>>,
    /// Wakes `flusher` when relay readers queued datagrams.
    tx_pending: Notify,
    /// Receive slots for relay sockets, and the buffer their output is framed into.
    relay_rx: RefCell<RelayRx>,
    relay_tx: RefCell<Box<[u8]>>,
    /// The deadline the timer task sleeps until.
    armed: Cell<Option<Instant>>,
    timer: Notify,
    pub stop: watch::Receiver<bool>,
}

impl Shard {
    pub fn new(make_engine: impl FnOnce(NetRelay) -> Engine<NetRelay>, stop: watch::Receiver<bool>) -> Rc<Shard> {
        Rc::new_cyclic(|weak| Shard {
            engine: RefCell::new(make_engine(NetRelay { shard: weak.clone() })),
            udp: RefCell::new(Vec::new()),
            tcp: RefCell::new(HashMap::new()),
            client_tx: RefCell::new(TxQueue::default()),
            peer_tx: RefCell::new(TxQueue::default()),
            peer_socks: RefCell::new(Vec::with_capacity(super::batch::TX_BATCH)),
            tx_pending: Notify::new(),
            relay_rx: RefCell::new(RelayRx {
                bufs: vec![0u8; RELAY_SLOT * RELAY_BATCH].into_boxed_slice(),
                headers: MultiHeaders::preallocate(RELAY_BATCH, None),
            }),
            relay_tx: RefCell::new(vec![0u8; MAX_MESSAGE_LEN + 64].into_boxed_slice()),
            armed: Cell::new(None),
            timer: Notify::new(),
            stop,
        })
    }

    /// Wakes the timer task if the engine's next deadline moved earlier. Called after every
    /// request, the only thing that changes deadlines.
    pub fn rearm(&self, engine: &mut Engine<NetRelay>) {
        let next = engine.poll_timeout();
        let armed = self.armed.get();
        if next.is_some() && (armed.is_none() || next < armed) {
            self.timer.notify_one();
        }
    }

    /// Queues a datagram for a UDP client on listener `index`; a full queue is sent at once.
    pub fn queue_udp(
        &self,
        index: usize,
        dest: SocketAddr,
        src_ip: Option<std::net::IpAddr>,
        bytes: &[u8],
        metrics: &Metrics,
    ) {
        let full = {
            let listeners = self.udp.borrow();
            let Some(listener) = listeners.get(index) else {
                metrics.dropped(DropReason::send_failed);
                return;
            };
            let mut tx = self.client_tx.borrow_mut();
            tx.push(&listener.sock, src_ip, dest, bytes);
            tx.is_full()
        };
        if full {
            self.flush_udp(metrics);
        }
    }

    /// Sends every queued datagram for UDP clients.
    pub fn flush_udp(&self, metrics: &Metrics) {
        let mut tx = self.client_tx.borrow_mut();
        if tx.is_empty() {
            return;
        }
        let done = tx.flush();
        for _ in 0..done.failed {
            metrics.dropped(DropReason::send_failed);
        }
    }

    /// Queues a relayed datagram for a peer, sent from the allocation's relay socket when
    /// the batch being handled ends (`flush_peers`); a full queue is sent at once.
    pub fn queue_peer(&self, socket: &RelaySocket, peer: SocketAddr, bytes: &[u8], metrics: &Metrics) {
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
    pub fn flush_peers(&self, metrics: &Metrics) {
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

    /// Sends bytes to a client on its 5-tuple: queued for the UDP listener it used (and sent
    /// by `flusher` once the tasks that are ready have run), or queued on its TCP connection.
    pub fn send_to_client(&self, tuple: &FiveTuple, bytes: &[u8], engine: &Engine<NetRelay>) {
        let ok = match tuple.transport {
            Transport::Udp => {
                let found = {
                    let listeners = self.udp.borrow();
                    listeners
                        .iter()
                        .position(|l| l.local == tuple.server)
                        .or_else(|| listeners.iter().position(|l| l.serves(tuple.server)))
                        .and_then(|i| listeners.get(i).map(|l| (i, l.src_ip(tuple))))
                };
                match found {
                    Some((index, src_ip)) => {
                        self.queue_udp(index, tuple.client, src_ip, bytes, engine.metrics());
                        self.tx_pending.notify_one();
                        true
                    }
                    None => false,
                }
            }
            Transport::Tcp | Transport::Tls => match self.tcp.borrow().get(tuple) {
                Some(out) => {
                    let mut q = out.queue.borrow_mut();
                    if q.len() + bytes.len() > TCP_QUEUE_LIMIT {
                        engine.metrics().dropped(DropReason::client_backpressure);
                        return;
                    }
                    q.extend_from_slice(bytes);
                    out.notify.notify_one();
                    true
                }
                None => false,
            },
        };
        if !ok {
            engine.metrics().dropped(DropReason::send_failed);
        }
    }
}

/// Sends what relay readers queued for UDP clients. It is woken by the first reader that
/// queues something and runs after the tasks already scheduled, so the datagrams of every
/// relay socket that was ready go out in one sendmmsg.
pub async fn flusher(shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    loop {
        tokio::select! {
            _ = shard.tx_pending.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let metrics = shard.engine.borrow().metrics().clone();
        shard.flush_udp(&metrics);
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
            _ = sleep => shard.engine.borrow_mut().handle_timeout(Instant::now()),
            _ = shard.timer.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Receives what peers send to one relay socket and hands it to the engine.
async fn relay_reader(shard: Weak<Shard>, sock: Rc<RelayFd>, token: RelayToken) {
    loop {
        let Ok(mut guard) = sock.readable().await else { return };
        let Some(shard) = shard.upgrade() else { return };
        let more = drain_relay(&shard, &mut guard, token);
        drop(shard);
        // Only a reader that stopped at its budget, with datagrams still waiting, yields to
        // the shard's other tasks; one that emptied its socket waits for readiness again,
        // without being scheduled once more for nothing.
        if more {
            tokio::task::yield_now().await;
        }
    }
}

/// Handles up to a batch of datagrams waiting on a relay socket, read with recvmmsg.
/// Synchronous, so no borrow spans an await. Returns true when it stopped at its budget
/// rather than on an empty socket.
fn drain_relay(shard: &Shard, guard: &mut AsyncFdReadyGuard<'_, std::net::UdpSocket>, token: RelayToken) -> bool {
    let mut rx = shard.relay_rx.borrow_mut();
    let mut tx = shard.relay_tx.borrow_mut();
    for _ in 0..BATCH / RELAY_BATCH {
        let mut got = [(0usize, None::<SocketAddr>); RELAY_BATCH];
        let mut n = 0;
        // A short read means the queue is empty: report WouldBlock so that tokio clears the
        // readiness (it keeps it when a new datagram arrived meanwhile) and no further
        // system call is spent to learn that.
        let r = guard.try_io(|sock| {
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
            )
            .map_err(io::Error::from)?;
            for (slot, m) in got.iter_mut().zip(results) {
                *slot = (m.bytes, m.address.as_ref().and_then(to_std));
                n += 1;
            }
            if n < RELAY_BATCH {
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(())
            }
        });
        for (i, (len, peer)) in got.iter().take(n).enumerate() {
            let Some(peer) = *peer else { continue };
            let data = rx
                .bufs
                .get(i * RELAY_SLOT..i * RELAY_SLOT + (*len).min(RELAY_SLOT))
                .unwrap_or_default();
            let mut engine = shard.engine.borrow_mut();
            if let Some(out) = engine.handle_peer(Instant::now(), token, peer, data, &mut tx) {
                shard.send_to_client(&out.tuple, tx.get(..out.len).unwrap_or_default(), &engine);
            }
        }
        match r {
            // Emptied: try_io cleared the readiness.
            Err(_would_block) => return false,
            Ok(Ok(())) => continue,
            // ICMP errors from earlier sends surface here; they concern one peer only.
            Ok(Err(_)) => continue,
        }
    }
    true
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}
