//! Client-bound UDP datagrams queued during one pass of a shard's event loop and sent with
//! one sendmmsg per listener (nix), instead of one system call each. Binding responses, TURN
//! responses and relayed Data/ChannelData towards UDP clients all go through here, in the
//! order they were queued.

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

use super::udp::UdpListener;

/// Datagrams sent per sendmmsg call; a full queue is flushed at once.
pub const TX_BATCH: usize = 64;

#[derive(Clone, Copy)]
struct Pending {
    /// Index of the listener in the shard's list.
    listener: usize,
    dest: SocketAddr,
    /// The source address to send from, for wildcard listeners (IP_PKTINFO).
    src_ip: Option<IpAddr>,
    start: usize,
    len: usize,
}

pub struct ClientTx {
    data: Vec<u8>,
    items: Vec<Pending>,
    plain: MultiHeaders<SockaddrStorage>,
    v4: MultiHeaders<SockaddrStorage>,
    v6: MultiHeaders<SockaddrStorage>,
}

impl Default for ClientTx {
    fn default() -> Self {
        ClientTx {
            data: Vec::with_capacity(TX_BATCH * 256),
            items: Vec::with_capacity(TX_BATCH),
            plain: MultiHeaders::preallocate(TX_BATCH, None),
            v4: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in_pktinfo))),
            v6: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo))),
        }
    }
}

impl ClientTx {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= TX_BATCH
    }

    /// Queues `bytes` for `dest`, sent from listener `listener` (from `src_ip` if set).
    pub fn push(&mut self, listener: usize, dest: SocketAddr, src_ip: Option<IpAddr>, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push(Pending {
            listener,
            dest,
            src_ip,
            start,
            len: bytes.len(),
        });
    }

    /// Sends everything queued. Returns how many datagrams the kernel refused (full socket
    /// buffer, unreachable destination); they are dropped, as a lost datagram would be.
    pub fn flush(&mut self, listeners: &[std::rc::Rc<UdpListener>]) -> u64 {
        let mut failed = 0;
        let mut i = 0;
        while i < self.items.len() {
            let first = self.items[i];
            let run = self.items[i..]
                .iter()
                .take_while(|p| p.listener == first.listener && p.src_ip == first.src_ip)
                .count();
            match listeners.get(first.listener) {
                Some(l) => failed += self.send_run(l, i, run),
                None => failed += run as u64,
            }
            i += run;
        }
        self.items.clear();
        self.data.clear();
        failed
    }

    /// Sends items[from..from + n] on one listener, all from the same source address.
    fn send_run(&mut self, listener: &UdpListener, from: usize, n: usize) -> u64 {
        let fd = listener.sock.as_raw_fd();
        let n = n.min(TX_BATCH);
        let items = self.items.get(from..from + n).unwrap_or_default();
        if items.is_empty() {
            return 0;
        }
        // Stack arrays, so that no heap allocation happens per batch.
        let slices: [[IoSlice<'_>; 1]; TX_BATCH] = std::array::from_fn(|k| {
            [IoSlice::new(
                items
                    .get(k)
                    .and_then(|p| self.data.get(p.start..p.start + p.len))
                    .unwrap_or_default(),
            )]
        });
        let addrs: [Option<SockaddrStorage>; TX_BATCH] =
            std::array::from_fn(|k| items.get(k).map(|p| SockaddrStorage::from(p.dest)));
        let (slices, addrs) = (&slices[..n.min(TX_BATCH)], &addrs[..n.min(TX_BATCH)]);
        let v4_info;
        let v6_info;
        let (headers, cmsg): (&mut MultiHeaders<SockaddrStorage>, Option<ControlMessage<'_>>) = match items[0].src_ip {
            Some(IpAddr::V4(ip)) => {
                v4_info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(ip.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (&mut self.v4, Some(ControlMessage::Ipv4PacketInfo(&v4_info)))
            }
            Some(IpAddr::V6(ip)) => {
                v6_info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr { s6_addr: ip.octets() },
                    ipi6_ifindex: 0,
                };
                (&mut self.v6, Some(ControlMessage::Ipv6PacketInfo(&v6_info)))
            }
            None => (&mut self.plain, None),
        };
        let cmsgs = cmsg.as_slice();
        let mut failed = 0;
        let mut sent = 0;
        while sent < n {
            let went = sendmmsg(fd, headers, &slices[sent..], &addrs[sent..], cmsgs, MsgFlags::empty())
                .map(|r| r.count())
                .unwrap_or(0);
            if went == 0 {
                // The datagram at `sent` was refused: drop it and go on with the rest.
                failed += 1;
                sent += 1;
            }
            sent += went;
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    fn listener(addr: &str) -> Rc<UdpListener> {
        let std = crate::net::socket::bind_udp(addr.parse().expect("addr"), false).expect("bind");
        Rc::new(UdpListener::new(std).expect("listener"))
    }

    fn recv_all(sock: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
        sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 64];
        (0..n)
            .filter_map(|_| sock.recv(&mut buf).ok().map(|len| buf[..len].to_vec()))
            .collect()
    }

    /// Datagrams go out in the order queued, a refused one is counted and does not stop the
    /// rest, and a wildcard listener sends from the address asked for (IP_PKTINFO).
    #[test]
    fn a_batch_is_sent_in_order_and_a_refused_datagram_is_counted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let plain = listener("127.0.0.1:0");
            let wild = listener("0.0.0.0:0");
            let listeners = vec![plain.clone(), wild.clone()];
            let client = UdpSocket::bind("127.0.0.1:0").expect("client");
            let dest = client.local_addr().expect("addr");
            let mut tx = ClientTx::default();
            tx.push(0, dest, None, b"one");
            // Port 0 is not a destination: the kernel refuses this one.
            tx.push(0, "127.0.0.1:0".parse().expect("addr"), None, b"refused");
            tx.push(0, dest, None, b"two");
            let src: IpAddr = "127.0.0.3".parse().expect("ip");
            tx.push(1, dest, Some(src), b"three");
            assert_eq!(tx.flush(&listeners), 1);
            assert!(tx.is_empty());
            let got = recv_all(&client, 3);
            assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);

            // The wildcard listener's datagram came from 127.0.0.3.
            let mut tx = ClientTx::default();
            tx.push(1, dest, Some(src), b"from");
            assert_eq!(tx.flush(&listeners), 0);
            let mut buf = [0u8; 16];
            let (_, from) = client.recv_from(&mut buf).expect("recv");
            assert_eq!(from, SocketAddr::new(src, wild.local.port()));
        });
    }

    #[test]
    fn a_full_queue_says_so() {
        let mut tx = ClientTx::default();
        let dest: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        for _ in 0..TX_BATCH - 1 {
            tx.push(0, dest, None, b"x");
        }
        assert!(!tx.is_full());
        tx.push(0, dest, None, b"x");
        assert!(tx.is_full());
    }
}
