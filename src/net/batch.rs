//! Outgoing UDP datagrams queued during one pass of a shard's event loop and sent together:
//! one sendmmsg per socket and source address instead of one system call each, and, where
//! several datagrams of one batch go to the same destination from the same socket, one
//! UDP GSO message (UDP_SEGMENT) that the kernel walks through its stack once and splits at
//! the end. Binding and TURN answers, relayed Data/ChannelData towards UDP clients and
//! relayed packets towards peers all leave through a [`TxQueue`].
//!
//! Datagrams to one destination from one socket leave in the order they were queued;
//! datagrams to different destinations may be reordered among themselves, which no receiver
//! can tell from network reordering.

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams sent per flush at most; a full queue is flushed at once.
pub const TX_BATCH: usize = 64;

/// Segments per GSO message at most (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per GSO message at most: what fits in one IP packet before segmentation.
const GSO_MAX_BYTES: usize = 65_000;
/// The largest segment coalesced at first: one that fits a 1500-byte Ethernet MTU over IPv6.
/// A path with a smaller MTU answers EINVAL, and the limit then goes below that segment.
const GSO_MAX_SEGMENT: usize = 1452;

/// Whether this kernel accepts UDP_SEGMENT at all (Linux 4.18 and later), probed once.
fn gso_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
            .map(|s| nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::UdpGsoSegment, &1200).is_ok())
            .unwrap_or(false)
    })
}

#[derive(Clone, Copy)]
struct Pending {
    fd: RawFd,
    /// The source address to send from, for wildcard sockets (IP_PKTINFO).
    src_ip: Option<IpAddr>,
    dest: SocketAddr,
    start: usize,
    len: usize,
}

impl Pending {
    fn same_flow(&self, o: &Pending) -> bool {
        self.fd == o.fd && self.src_ip == o.src_ip && self.dest == o.dest
    }

    /// A cheap hash of the flow, to bring a batch's datagrams of one flow together.
    fn flow_key(&self) -> u64 {
        const K: u64 = 0x9E37_79B9_7F4A_7C15;
        let ip = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let b = u128::from(v6);
                (b as u64) ^ ((b >> 64) as u64).rotate_left(17)
            }
        };
        let mut h = (self.fd as u64).wrapping_mul(K);
        h = (h ^ ip(self.dest.ip())).wrapping_mul(K);
        h = (h ^ u64::from(self.dest.port())).wrapping_mul(K);
        if let Some(src) = self.src_ip {
            h = (h ^ ip(src)).wrapping_mul(K);
        }
        h
    }
}

/// One message handed to the kernel: a datagram, or `count` datagrams of `seg` bytes (the
/// last may be shorter) to one destination as a GSO message.
#[derive(Clone, Copy)]
struct Msg {
    fd: RawFd,
    src_ip: Option<IpAddr>,
    dest: SocketAddr,
    start: usize,
    len: usize,
    /// Segment size of a GSO message; 0 for a single datagram.
    seg: usize,
    count: usize,
}

/// sendmmsg headers for each combination of control messages: nix writes the same control
/// messages into every header of one call and hands the kernel the whole preallocated
/// control buffer, so each combination needs its own buffers of exactly its size.
struct Headers {
    plain: MultiHeaders<SockaddrStorage>,
    v4: MultiHeaders<SockaddrStorage>,
    v6: MultiHeaders<SockaddrStorage>,
    gso: MultiHeaders<SockaddrStorage>,
    gso_v4: MultiHeaders<SockaddrStorage>,
    gso_v6: MultiHeaders<SockaddrStorage>,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            plain: MultiHeaders::preallocate(TX_BATCH, None),
            v4: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in_pktinfo))),
            v6: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo))),
            gso: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(u16))),
            gso_v4: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in_pktinfo, u16))),
            gso_v6: MultiHeaders::preallocate(TX_BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo, u16))),
        }
    }
}

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel refused (full socket buffer, unreachable destination); they are
    /// dropped, as a lost datagram would be.
    pub failed: u64,
    /// Messages handed to the kernel: fewer than the datagrams when GSO coalesced some.
    pub messages: u64,
}

pub struct TxQueue {
    data: Vec<u8>,
    items: Vec<Pending>,
    /// The datagrams of one flush, regrouped by flow, and the messages made of them.
    staged: Vec<u8>,
    msgs: Vec<Msg>,
    /// Destinations of one sendmmsg, kept between calls: building 64 of them afresh for
    /// every call costs more than the call itself when batches are small.
    addrs: Vec<Option<SockaddrStorage>>,
    headers: Headers,
    /// Largest segment coalesced; 0 turns GSO off (unsupported, or the device refused it).
    gso_max_segment: usize,
}

impl Default for TxQueue {
    fn default() -> Self {
        TxQueue::new(gso_supported())
    }
}

impl TxQueue {
    /// A queue that coalesces with GSO when `gso` is true.
    pub fn new(gso: bool) -> Self {
        TxQueue {
            data: Vec::with_capacity(TX_BATCH * 256),
            items: Vec::with_capacity(TX_BATCH),
            staged: Vec::with_capacity(TX_BATCH * 256),
            msgs: Vec::with_capacity(2 * TX_BATCH),
            addrs: vec![None; TX_BATCH],
            headers: Headers::default(),
            gso_max_segment: if gso { GSO_MAX_SEGMENT } else { 0 },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.items.len() >= TX_BATCH
    }

    /// Queues `bytes` for `dest`, sent on `sock` (from `src_ip` if set). The socket must stay
    /// open until the next flush.
    pub fn push(&mut self, sock: &impl AsRawFd, src_ip: Option<IpAddr>, dest: SocketAddr, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push(Pending {
            fd: sock.as_raw_fd(),
            src_ip,
            dest,
            start,
            len: bytes.len(),
        });
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Flushed {
        let mut out = Flushed::default();
        let mut from = 0;
        while from < self.items.len() {
            let to = (from + TX_BATCH).min(self.items.len());
            self.stage(from, to);
            let end = self.msgs.len();
            let mut i = 0;
            while i < end {
                let (j, seg) = self.run(i, end);
                out.add(self.send_run(i, j, seg));
                i = j;
            }
            from = to;
        }
        self.items.clear();
        self.data.clear();
        out
    }

    /// Copies items[from..to] into `staged` grouped by flow, in queue order within a flow,
    /// and makes them into messages: consecutive datagrams of one flow of one size (the last
    /// may be shorter) become one GSO message.
    fn stage(&mut self, from: usize, to: usize) {
        self.staged.clear();
        self.msgs.clear();
        let items = self.items.get(from..to).unwrap_or_default();
        let mut order = [(0u64, 0usize); TX_BATCH];
        for (slot, (k, p)) in order.iter_mut().zip(items.iter().enumerate()) {
            *slot = (p.flow_key(), k);
        }
        let order = order.get_mut(..items.len()).unwrap_or_default();
        order.sort_unstable();
        let mut i = 0;
        while let Some(&(_, k)) = order.get(i) {
            let Some(first) = items.get(k).copied() else { break };
            let start = self.staged.len();
            let bytes = |p: &Pending| self.data.get(p.start..p.start + p.len).unwrap_or_default();
            self.staged.extend_from_slice(bytes(&first));
            let seg = first.len;
            let (mut count, mut last) = (1, first.len);
            i += 1;
            if seg > 0 && seg <= self.gso_max_segment {
                while let Some(p) = order.get(i).and_then(|&(_, k)| items.get(k)) {
                    let fits = p.same_flow(&first)
                        && last == seg
                        && p.len > 0
                        && p.len <= seg
                        && count < GSO_MAX_SEGMENTS
                        && self.staged.len() - start + p.len <= GSO_MAX_BYTES;
                    if !fits {
                        break;
                    }
                    self.staged.extend_from_slice(bytes(p));
                    count += 1;
                    last = p.len;
                    i += 1;
                }
            }
            self.msgs.push(Msg {
                fd: first.fd,
                src_ip: first.src_ip,
                dest: first.dest,
                start,
                len: self.staged.len() - start,
                seg: if count > 1 { seg } else { 0 },
                count,
            });
        }
    }

    /// The messages from `i` that one sendmmsg can carry: one socket, one source address and
    /// one segment size (single datagrams no longer than it go as they are). Returns the end
    /// of the run and its segment size (0: no GSO message in it).
    fn run(&self, i: usize, end: usize) -> (usize, usize) {
        let Some(first) = self.msgs.get(i) else { return (end, 0) };
        let (mut seg, mut longest_single, mut j) = (0, 0, i);
        while let Some(m) = self.msgs.get(j).filter(|_| j < end && j - i < TX_BATCH) {
            if m.fd != first.fd || m.src_ip != first.src_ip {
                break;
            }
            if m.seg > 0 {
                if seg == 0 && longest_single <= m.seg {
                    seg = m.seg;
                } else if m.seg != seg {
                    break;
                }
            } else if seg > 0 && m.len > seg {
                break;
            } else {
                longest_single = longest_single.max(m.len);
            }
            j += 1;
        }
        (j.max(i + 1), seg)
    }

    /// Sends msgs[from..to] with sendmmsg, with UDP_SEGMENT `seg` if it is not 0. A GSO
    /// message the kernel refuses as such is sent again one datagram at a time.
    fn send_run(&mut self, from: usize, to: usize, seg: usize) -> Flushed {
        let mut out = Flushed::default();
        let mut refused = [(0usize, false); TX_BATCH];
        let mut n_refused = 0;
        {
            let TxQueue {
                staged,
                msgs,
                addrs,
                headers,
                ..
            } = self;
            let msgs = msgs.get(from..to).unwrap_or_default();
            let Some(first) = msgs.first().copied() else { return out };
            let n = msgs.len().min(TX_BATCH);
            // Stack arrays, so that no heap allocation happens per batch.
            let slices: [[IoSlice<'_>; 1]; TX_BATCH] = std::array::from_fn(|k| {
                [IoSlice::new(
                    msgs.get(k)
                        .and_then(|m| staged.get(m.start..m.start + m.len))
                        .unwrap_or_default(),
                )]
            });
            for (slot, m) in addrs.iter_mut().zip(msgs.iter()) {
                *slot = Some(SockaddrStorage::from(m.dest));
            }
            let seg16 = u16::try_from(seg).unwrap_or(u16::MAX);
            let v4_info;
            let v6_info;
            let one: [ControlMessage<'_>; 1];
            let two: [ControlMessage<'_>; 2];
            let gso = ControlMessage::UdpGsoSegments(&seg16);
            let (h, cmsgs): (&mut MultiHeaders<SockaddrStorage>, &[ControlMessage<'_>]) = match (first.src_ip, seg > 0)
            {
                (None, false) => (&mut headers.plain, &[]),
                (None, true) => {
                    one = [gso];
                    (&mut headers.gso, &one)
                }
                (Some(IpAddr::V4(ip)), with_gso) => {
                    v4_info = libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(ip.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    };
                    let info = ControlMessage::Ipv4PacketInfo(&v4_info);
                    if with_gso {
                        two = [info, gso];
                        (&mut headers.gso_v4, &two)
                    } else {
                        one = [info];
                        (&mut headers.v4, &one)
                    }
                }
                (Some(IpAddr::V6(ip)), with_gso) => {
                    v6_info = libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr { s6_addr: ip.octets() },
                        ipi6_ifindex: 0,
                    };
                    let info = ControlMessage::Ipv6PacketInfo(&v6_info);
                    if with_gso {
                        two = [info, gso];
                        (&mut headers.gso_v6, &two)
                    } else {
                        one = [info];
                        (&mut headers.v6, &one)
                    }
                }
            };
            let mut sent = 0;
            while sent < n {
                let result = sendmmsg(
                    first.fd,
                    h,
                    slices.get(sent..n).unwrap_or_default(),
                    addrs.get(sent..n).unwrap_or_default(),
                    cmsgs,
                    MsgFlags::empty(),
                )
                .map(|r| r.count());
                match result {
                    Ok(went) if went > 0 => {
                        out.messages += went as u64;
                        sent += went;
                    }
                    Ok(_) | Err(_) => {
                        let Some(m) = msgs.get(sent) else { break };
                        // EIO: the device cannot checksum GSO messages; EINVAL: perhaps a
                        // segment larger than the path's MTU. This message goes again one
                        // datagram at a time.
                        let gso_refused = m.seg > 0 && matches!(result, Err(Errno::EIO | Errno::EINVAL));
                        if !gso_refused {
                            out.failed += m.count as u64;
                            sent += 1;
                            continue;
                        }
                        if let Some(slot) = refused.get_mut(n_refused) {
                            *slot = (from + sent, result == Err(Errno::EIO));
                            n_refused += 1;
                        }
                        sent += 1;
                    }
                }
            }
        }
        for &(k, eio) in refused.get(..n_refused).unwrap_or_default() {
            let split = self.send_split(k);
            let seg = self.msgs.get(k).map_or(0, |m| m.seg);
            if eio {
                // The device cannot checksum GSO messages: no more of them.
                self.gso_max_segment = 0;
            } else if split.failed == 0 {
                // The datagrams went alone, so the segment size was the trouble.
                self.gso_max_segment = self.gso_max_segment.min(seg.saturating_sub(1));
            }
            out.add(split);
        }
        out
    }

    /// Sends the GSO message msgs[k] as single datagrams.
    fn send_split(&mut self, k: usize) -> Flushed {
        let Some(m) = self.msgs.get(k).copied() else {
            return Flushed::default();
        };
        let base = self.msgs.len();
        let seg = if m.seg == 0 { m.len.max(1) } else { m.seg };
        let mut at = m.start;
        while at < m.start + m.len {
            let len = seg.min(m.start + m.len - at);
            self.msgs.push(Msg {
                start: at,
                len,
                seg: 0,
                count: 1,
                ..m
            });
            at += len;
        }
        let out = self.send_run(base, self.msgs.len(), 0);
        self.msgs.truncate(base);
        out
    }
}

impl Flushed {
    fn add(&mut self, o: Flushed) {
        self.failed += o.failed;
        self.messages += o.messages;
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    fn socket(addr: &str) -> UdpSocket {
        let s = UdpSocket::bind(addr).expect("bind");
        s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        s
    }

    /// Receives `n` datagrams (without UDP_GRO, so each arrives alone) with their senders.
    fn recv_all(sock: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 2048];
        (0..n)
            .filter_map(|_| {
                sock.recv_from(&mut buf)
                    .ok()
                    .map(|(len, from)| (buf[..len].to_vec(), from))
            })
            .collect()
    }

    fn datagram(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    /// Several datagrams of one size for one destination, interleaved with another
    /// destination's, leave as one GSO message per destination, and each receiver gets every
    /// datagram whole, alone and in the order queued; the last of a run may be shorter.
    #[test]
    fn datagrams_to_one_destination_are_coalesced_and_arrive_alone_in_order() {
        for gso in [true, false] {
            let server = socket("127.0.0.1:0");
            let (a, b) = (socket("127.0.0.1:0"), socket("127.0.0.1:0"));
            let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
            let mut tx = TxQueue::new(gso && gso_supported());
            for k in 0..5u8 {
                tx.push(&server, None, a_addr, &datagram(k, 100));
                if k < 3 {
                    tx.push(&server, None, b_addr, &datagram(10 + k, 100));
                }
            }
            tx.push(&server, None, a_addr, &datagram(5, 60));
            let done = tx.flush();
            assert_eq!(done.failed, 0);
            assert!(tx.is_empty());
            if gso && gso_supported() {
                assert_eq!(done.messages, 2, "one GSO message per destination");
            } else {
                assert_eq!(done.messages, 9);
            }
            let from = server.local_addr().expect("server");
            let got_a = recv_all(&a, 6);
            let want_a: Vec<_> = (0..5)
                .map(|k| (datagram(k, 100), from))
                .chain([(datagram(5, 60), from)])
                .collect();
            assert_eq!(got_a, want_a);
            let got_b = recv_all(&b, 3);
            let want_b: Vec<_> = (0..3).map(|k| (datagram(10 + k, 100), from)).collect();
            assert_eq!(got_b, want_b);
        }
    }

    /// A datagram longer than the run before it starts a new message; sizes stay as sent.
    #[test]
    fn a_longer_datagram_ends_a_gso_run_and_keeps_its_size() {
        let server = socket("127.0.0.1:0");
        let client = socket("127.0.0.1:0");
        let dest = client.local_addr().expect("addr");
        let mut tx = TxQueue::default();
        let sizes = [80, 80, 40, 80, 120, 120, 1];
        for (k, len) in sizes.iter().enumerate() {
            tx.push(&server, None, dest, &datagram(k as u8, *len));
        }
        let done = tx.flush();
        assert_eq!(done.failed, 0);
        if gso_supported() {
            // A shorter datagram ends a run, and so does a longer one: [80 80 40] [80] [120 120 1].
            assert_eq!(done.messages, 3);
        }
        let got: Vec<_> = recv_all(&client, sizes.len()).into_iter().map(|(d, _)| d).collect();
        let want: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(k, len)| datagram(k as u8, *len))
            .collect();
        assert_eq!(got, want);
    }

    /// A refused datagram is counted and does not stop the rest; a GSO message the kernel
    /// refuses is counted per datagram; a wildcard socket sends from the address asked for
    /// (IP_PKTINFO), with and without GSO.
    #[test]
    fn refused_datagrams_are_counted_and_pktinfo_sets_the_source() {
        let plain = socket("127.0.0.1:0");
        let wild = socket("0.0.0.0:0");
        let client = socket("127.0.0.1:0");
        let dest = client.local_addr().expect("addr");
        let nowhere: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let src: IpAddr = "127.0.0.3".parse().expect("ip");
        let mut tx = TxQueue::default();
        tx.push(&plain, None, dest, b"one");
        // Port 0 is not a destination: the kernel refuses these, one alone and three as one
        // GSO message.
        tx.push(&plain, None, nowhere, b"refused");
        tx.push(&plain, None, dest, b"two");
        tx.push(&wild, Some(src), dest, b"three");
        for _ in 0..3 {
            tx.push(&wild, Some(src), nowhere, b"gone");
        }
        for _ in 0..2 {
            tx.push(&wild, Some(src), dest, b"four");
        }
        assert_eq!(tx.flush().failed, 4);
        let got = recv_all(&client, 5);
        let wild_port = wild.local_addr().expect("wild").port();
        let plain_addr = plain.local_addr().expect("plain");
        let from_plain: Vec<_> = got
            .iter()
            .filter(|(_, f)| *f == plain_addr)
            .map(|(d, _)| d.clone())
            .collect();
        assert_eq!(from_plain, vec![b"one".to_vec(), b"two".to_vec()]);
        let from_src: Vec<_> = got
            .iter()
            .filter(|(_, f)| *f == SocketAddr::new(src, wild_port))
            .map(|(d, _)| d.clone())
            .collect();
        assert_eq!(from_src, vec![b"three".to_vec(), b"four".to_vec(), b"four".to_vec()]);

        // The refusals did not turn GSO off: the next run is still coalesced.
        let mut next = TxQueue::default();
        for _ in 0..2 {
            next.push(&plain, None, nowhere, b"gone");
        }
        let _ = next.flush();
        for _ in 0..4 {
            next.push(&plain, None, dest, b"five");
        }
        let done = next.flush();
        assert_eq!(done.failed, 0);
        if gso_supported() {
            assert_eq!(done.messages, 1);
        }
        assert_eq!(recv_all(&client, 4).len(), 4);
    }

    #[test]
    fn a_full_queue_says_so_and_a_large_flush_sends_everything() {
        let server = socket("127.0.0.1:0");
        let client = socket("127.0.0.1:0");
        let dest = client.local_addr().expect("addr");
        let mut tx = TxQueue::default();
        for k in 0..TX_BATCH - 1 {
            tx.push(&server, None, dest, &[k as u8]);
        }
        assert!(!tx.is_full());
        for k in TX_BATCH - 1..TX_BATCH + 10 {
            tx.push(&server, None, dest, &[k as u8]);
        }
        assert!(tx.is_full());
        assert_eq!(tx.flush().failed, 0);
        let got: Vec<_> = recv_all(&client, TX_BATCH + 10).into_iter().map(|(d, _)| d).collect();
        let want: Vec<_> = (0..TX_BATCH + 10).map(|k| vec![k as u8]).collect();
        assert_eq!(got, want);
    }
}
