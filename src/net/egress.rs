//! Everything a shard sends to clients: the sending side of its UDP listeners, the queues of
//! its TCP connections, and the datagrams waiting for one sendmmsg. The UDP and TCP drivers
//! register here, and the shard sends any [`crate::server::Output::ToClient`] through it,
//! from whichever listener holds the 5-tuple's server address, without knowing the drivers.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use super::batch::TxQueue;
use crate::server::stats::{DropReason, Stats};
use crate::types::{FiveTuple, Transport};

/// Bytes queued for a TCP client beyond which relayed packets are dropped.
const TCP_QUEUE_LIMIT: usize = 1 << 20;

/// A UDP listener's socket, as the sending side sees it.
pub struct UdpPort {
    /// Registered for readability only: sends never wait for room (see `socket::readable`).
    pub sock: AsyncFd<std::net::UdpSocket>,
    pub local: SocketAddr,
}

impl UdpPort {
    /// True when this listener receives traffic sent to `server`.
    pub fn serves(&self, server: SocketAddr) -> bool {
        self.local.port() == server.port()
            && self.local.is_ipv6() == server.is_ipv6()
            && (self.local.ip() == server.ip() || self.local.ip().is_unspecified())
    }

    /// The source address to send to a client from: the server address of its 5-tuple when
    /// this listener is a wildcard (IP_PKTINFO), else the bound one.
    pub fn src_ip(&self, tuple: &FiveTuple) -> Option<IpAddr> {
        self.local.ip().is_unspecified().then_some(tuple.server.ip())
    }
}

/// Data queued for a TCP client by the relay path, flushed by the connection's task.
#[derive(Default)]
pub struct TcpOut {
    pub queue: RefCell<Vec<u8>>,
    pub notify: Notify,
}

/// The shard's ways out to its clients.
#[derive(Default)]
pub struct ClientEgress {
    udp: RefCell<Vec<Rc<UdpPort>>>,
    tcp: RefCell<HashMap<FiveTuple, Rc<TcpOut>>>,
    /// Datagrams for UDP clients, sent with sendmmsg when a batch ends or by the flusher.
    tx: RefCell<TxQueue>,
    /// Wakes the flusher when datagrams were queued outside a listener's batch.
    pub pending: Notify,
}

impl ClientEgress {
    /// Adds a UDP listener's port; returns its index for [`ClientEgress::queue_udp`].
    pub fn add_udp(&self, port: Rc<UdpPort>) -> usize {
        let mut udp = self.udp.borrow_mut();
        udp.push(port);
        udp.len() - 1
    }

    /// Registers a TCP or TLS connection; its task writes out what is queued for it.
    pub fn add_tcp(&self, tuple: FiveTuple) -> Rc<TcpOut> {
        let out = Rc::new(TcpOut::default());
        self.tcp.borrow_mut().insert(tuple, out.clone());
        out
    }

    pub fn remove_tcp(&self, tuple: &FiveTuple) {
        self.tcp.borrow_mut().remove(tuple);
    }

    /// Queues a datagram for a UDP client on listener `index`; a full queue is sent at once.
    pub fn queue_udp(&self, index: usize, dest: SocketAddr, src_ip: Option<IpAddr>, bytes: &[u8], stats: &Stats) {
        let full = {
            let listeners = self.udp.borrow();
            let Some(port) = listeners.get(index) else {
                stats.dropped(DropReason::send_failed);
                return;
            };
            let mut tx = self.tx.borrow_mut();
            tx.push(&port.sock, src_ip, dest, bytes);
            tx.is_full()
        };
        if full {
            self.flush_udp(stats);
        }
    }

    /// Sends every queued datagram for UDP clients.
    pub fn flush_udp(&self, stats: &Stats) {
        let mut tx = self.tx.borrow_mut();
        if tx.is_empty() {
            return;
        }
        let done = tx.flush();
        for _ in 0..done.failed {
            stats.dropped(DropReason::send_failed);
        }
    }

    /// Sends bytes to a client on its 5-tuple: from the UDP listener that holds the tuple's
    /// server address (queued, and sent by the flusher once the tasks that are ready have
    /// run), or queued on its TCP connection.
    pub fn send(&self, tuple: &FiveTuple, bytes: &[u8], stats: &Stats) {
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
                        self.queue_udp(index, tuple.client, src_ip, bytes, stats);
                        self.pending.notify_one();
                        true
                    }
                    None => false,
                }
            }
            Transport::Tcp | Transport::Tls => match self.tcp.borrow().get(tuple) {
                Some(out) => {
                    let mut q = out.queue.borrow_mut();
                    if q.len() + bytes.len() > TCP_QUEUE_LIMIT {
                        stats.dropped(DropReason::client_backpressure);
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
            stats.dropped(DropReason::send_failed);
        }
    }
}
