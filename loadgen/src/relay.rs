//! The relay ceiling: a minimal TURN relay with batched I/O and no other logic, measured with
//! the same `channel` and `send` workloads as the servers. It does what any relay built on
//! sockets must do per packet, and nothing more: one relay socket per allocation, recvmmsg on
//! the listener and on each relay socket, and every send through turnd's own queue (sendmmsg,
//! UDP GSO). No authentication (the 401 is answered blindly so that the generator's setup
//! runs unchanged), no permission or channel checks beyond a lookup, no lifetimes, no metrics,
//! no rate limits. What turnd relays against what this relays is how close turnd is to what
//! the kernel allows on this machine.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use turnd::net::batch::TxQueue;
use turnd::proto::attr::decode_xor_address;
use turnd::proto::{AttrType, Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId};

use crate::sys::{Batch, Epoll};

/// The epoll index of the listener; relay sockets use their allocation's index.
const LISTENER: u64 = u64::MAX;

struct Allocation {
    client: SocketAddr,
    sock: UdpSocket,
    relayed: SocketAddr,
    /// Channel numbers and their peers, in bind order (a handful at most).
    channels: Vec<(u16, SocketAddr)>,
}

struct Relay {
    listener: UdpSocket,
    relay_ip: IpAddr,
    allocations: Vec<Option<Allocation>>,
    by_client: HashMap<SocketAddr, usize>,
    epoll: Epoll,
    to_clients: TxQueue,
    to_peers: TxQueue,
    scratch: Vec<u8>,
}

/// Runs a minimal relay on `listen` until killed.
pub fn relayer(listen: SocketAddr, gso: bool) -> io::Result<()> {
    crate::check_loopback(listen)?;
    let listener = crate::bound_socket(listen)?;
    let epoll = Epoll::new(1024)?;
    epoll.add_edge(&listener, LISTENER)?;
    eprintln!(
        "relay on {} (gso {})",
        listener.local_addr()?,
        if gso { "on" } else { "off" }
    );
    let mut relay = Relay {
        listener,
        relay_ip: listen.ip(),
        allocations: Vec::new(),
        by_client: HashMap::new(),
        epoll,
        to_clients: TxQueue::new(gso),
        to_peers: TxQueue::new(gso),
        scratch: vec![0u8; 2048],
    };
    let mut rx = Batch::new(64);
    // A relay socket holds a few datagrams at a time: a small batch is cheaper to prepare.
    let mut relay_rx = Batch::new(8);
    let mut ready = Vec::new();
    loop {
        relay.epoll.wait(-1, &mut ready)?;
        for &idx in &ready {
            if idx == LISTENER {
                loop {
                    let n = rx.recv(relay.listener.as_raw_fd(), true)?;
                    for i in 0..n {
                        if let Some(from) = rx.addr(i) {
                            relay.on_client(from, rx.msg(i))?;
                        }
                    }
                    relay.to_peers.flush();
                    relay.to_clients.flush();
                    if n < rx.capacity() {
                        break;
                    }
                }
            } else {
                let mut errors = 0;
                while let Some(Some(a)) = relay.allocations.get(idx as usize) {
                    // ICMP errors from earlier sends surface here; they are not datagrams,
                    // and the next call reads what is queued behind them.
                    let n = match relay_rx.recv(a.sock.as_raw_fd(), true) {
                        Ok(n) => n,
                        Err(_) if errors < 8 => {
                            errors += 1;
                            continue;
                        }
                        Err(_) => break,
                    };
                    for i in 0..n {
                        if let Some(from) = relay_rx.addr(i) {
                            relay.on_peer(idx as usize, from, relay_rx.msg(i));
                        }
                    }
                    if n < relay_rx.capacity() {
                        break;
                    }
                }
            }
        }
        // Everything the peers sent in this round leaves in one flush.
        relay.to_clients.flush();
    }
}

impl Relay {
    fn on_client(&mut self, from: SocketAddr, msg: &[u8]) -> io::Result<()> {
        // ChannelData: the fast path.
        if msg.first().is_some_and(|b| b & 0xc0 == 0x40) {
            let (Some(head), Some(&idx)) = (msg.get(..4), self.by_client.get(&from)) else {
                return Ok(());
            };
            let channel = u16::from_be_bytes([head[0], head[1]]);
            let len = u16::from_be_bytes([head[2], head[3]]) as usize;
            let Some(Some(a)) = self.allocations.get(idx) else {
                return Ok(());
            };
            let (Some(&(_, peer)), Some(data)) = (a.channels.iter().find(|(c, _)| *c == channel), msg.get(4..4 + len))
            else {
                return Ok(());
            };
            self.to_peers.push(&a.sock, None, peer, data);
            return Ok(());
        }
        let Ok(m) = Message::parse(msg) else { return Ok(()) };
        let tid = m.transaction_id();
        // Like the generator, the relay only ever sends to loopback, or inside a namespace of
        // its own to the benchmarking range.
        let peer = m
            .get(AttrType::XOR_PEER_ADDRESS)
            .and_then(|a| decode_xor_address(a.value, &tid).ok())
            .filter(|p| crate::check_loopback(*p).is_ok());
        match (m.method(), m.class()) {
            (Method::SEND, Class::Indication) => {
                let (Some(peer), Some(data), Some(&idx)) = (peer, m.get(AttrType::DATA), self.by_client.get(&from))
                else {
                    return Ok(());
                };
                if let Some(Some(a)) = self.allocations.get(idx) {
                    self.to_peers.push(&a.sock, None, peer, data.value);
                }
            }
            (Method::ALLOCATE, Class::Request) if !m.has_integrity() => {
                self.answer(from, MessageType::new(Method::ALLOCATE, Class::Error), tid, |w| {
                    let _ = w.error_code(ErrorCode::UNAUTHORIZED);
                    let _ = w.attr(AttrType::REALM, b"bench");
                    let _ = w.attr(AttrType::NONCE, b"ceiling");
                });
            }
            (Method::ALLOCATE, Class::Request) => {
                let relayed = match self.by_client.get(&from) {
                    Some(&idx) => self.allocations.get(idx).and_then(|a| a.as_ref()).map(|a| a.relayed),
                    None => Some(self.allocate(from)?),
                };
                let Some(relayed) = relayed else { return Ok(()) };
                self.answer(from, MessageType::new(Method::ALLOCATE, Class::Success), tid, |w| {
                    let _ = w.xor_address(AttrType::XOR_RELAYED_ADDRESS, relayed);
                    let _ = w.xor_address(AttrType::XOR_MAPPED_ADDRESS, from);
                    let _ = w.attr_u32(AttrType::LIFETIME, 600);
                });
            }
            (Method::CHANNEL_BIND, Class::Request) => {
                let channel = m
                    .get(AttrType::CHANNEL_NUMBER)
                    .and_then(|a| a.value.get(..2))
                    .map(|v| u16::from_be_bytes([v[0], v[1]]));
                if let (Some(channel), Some(peer), Some(&idx)) = (channel, peer, self.by_client.get(&from)) {
                    if let Some(Some(a)) = self.allocations.get_mut(idx) {
                        a.channels.retain(|(c, _)| *c != channel);
                        a.channels.push((channel, peer));
                    }
                }
                self.answer(
                    from,
                    MessageType::new(Method::CHANNEL_BIND, Class::Success),
                    tid,
                    |_| {},
                );
            }
            (Method::REFRESH, Class::Request) => {
                let lifetime = m
                    .get(AttrType::LIFETIME)
                    .and_then(|a| turnd::proto::attr::decode_u32(a.value).ok());
                if lifetime == Some(0) {
                    self.release(from);
                }
                self.answer(from, MessageType::new(Method::REFRESH, Class::Success), tid, |w| {
                    let _ = w.attr_u32(AttrType::LIFETIME, lifetime.unwrap_or(600));
                });
            }
            (method @ (Method::CREATE_PERMISSION | Method::BINDING), Class::Request) => {
                self.answer(from, MessageType::new(method, Class::Success), tid, |w| {
                    if method == Method::BINDING {
                        let _ = w.xor_address(AttrType::XOR_MAPPED_ADDRESS, from);
                    }
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// What a peer sent to allocation `idx`: to its client as ChannelData when a channel is
    /// bound to the peer, else as a Data indication.
    fn on_peer(&mut self, idx: usize, peer: SocketAddr, data: &[u8]) {
        let Some(Some(a)) = self.allocations.get(idx) else {
            return;
        };
        let len = match a.channels.iter().find(|(_, p)| *p == peer) {
            Some(&(channel, _)) => {
                let Some(out) = self.scratch.get_mut(..4 + data.len()) else {
                    return;
                };
                out[..2].copy_from_slice(&channel.to_be_bytes());
                out[2..4].copy_from_slice(&(data.len() as u16).to_be_bytes());
                out[4..].copy_from_slice(data);
                4 + data.len()
            }
            None => {
                let tid = TransactionId([0x5a; 12]);
                let Ok(mut w) = MessageWriter::new(
                    &mut self.scratch,
                    MessageType::new(Method::DATA, Class::Indication),
                    tid,
                ) else {
                    return;
                };
                let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
                let _ = w.attr(AttrType::DATA, data);
                w.finish()
            }
        };
        let bytes = self.scratch.get(..len).unwrap_or_default();
        self.to_clients.push(&self.listener, None, a.client, bytes);
    }

    fn answer(
        &mut self,
        to: SocketAddr,
        typ: MessageType,
        tid: TransactionId,
        body: impl FnOnce(&mut MessageWriter<'_>),
    ) {
        let Ok(mut w) = MessageWriter::new(&mut self.scratch, typ, tid) else {
            return;
        };
        body(&mut w);
        let len = w.finish();
        let bytes = self.scratch.get(..len).unwrap_or_default();
        self.to_clients.push(&self.listener, None, to, bytes);
    }

    fn allocate(&mut self, client: SocketAddr) -> io::Result<SocketAddr> {
        let sock = crate::bound_socket(SocketAddr::new(self.relay_ip, 0))?;
        let relayed = sock.local_addr()?;
        let idx = match self.allocations.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.allocations.push(None);
                self.allocations.len() - 1
            }
        };
        self.epoll.add_edge(&sock, idx as u64)?;
        self.allocations[idx] = Some(Allocation {
            client,
            sock,
            relayed,
            channels: Vec::new(),
        });
        self.by_client.insert(client, idx);
        Ok(relayed)
    }

    fn release(&mut self, client: SocketAddr) {
        // Queued datagrams may still name the socket: send them before it closes.
        self.to_peers.flush();
        if let Some(idx) = self.by_client.remove(&client) {
            if let Some(slot) = self.allocations.get_mut(idx) {
                // Closing the socket takes it out of the epoll set.
                *slot = None;
            }
        }
    }
}
