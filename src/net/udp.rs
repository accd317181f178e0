//! The UDP listener driver: batched receive (recvmmsg, GRO) through quinn-udp, which also
//! reports the destination address of each datagram, so that a wildcard listener knows the
//! concrete server address of every 5-tuple and answers from it. Answers are queued and sent
//! with sendmmsg at the end of each batch (see `batch`).

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSocketState};

use super::egress::UdpPort;
use super::shard::{Shard, BATCH};
use crate::server::{FiveTuple, Output, Transport};

/// One receive slot: room for a GRO batch of datagrams.
const SLOT: usize = 64 * 1024;

pub struct UdpListener {
    /// The socket, shared with the shard's egress, which sends from it.
    pub port: Rc<UdpPort>,
    state: UdpSocketState,
}

impl UdpListener {
    pub fn new(std: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&std).into())?;
        let local = std.local_addr()?;
        trim_control_messages(&std, local);
        let sock = super::socket::readable(std)?;
        Ok(UdpListener {
            port: Rc::new(UdpPort { sock, local }),
            state,
        })
    }
}

/// quinn-udp asks the kernel for the TOS byte (ECN) and the destination address of every
/// datagram. TURN has no use for ECN (RFC 8656 section 12: we take the alternate behaviour,
/// Not-ECT on relayed packets), and a listener bound to one address knows its destination,
/// so both are turned off where they are not needed: each control message costs the kernel a
/// few percent of a Binding request's receive path. A wildcard listener keeps pktinfo. A
/// failure only costs that time, so it is ignored.
fn trim_control_messages(sock: &std::net::UdpSocket, local: SocketAddr) {
    use nix::sys::socket::{setsockopt, sockopt};
    let bound = !local.ip().is_unspecified();
    if local.is_ipv4() {
        let _ = setsockopt(sock, sockopt::IpRecvTos, &false);
        if bound {
            let _ = setsockopt(sock, sockopt::Ipv4PacketInfo, &false);
        }
    } else {
        let _ = setsockopt(sock, sockopt::Ipv6RecvTClass, &false);
        if bound {
            let _ = setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &false);
        }
    }
}

/// Serves one listener; `index` is its place in the shard's list of UDP listeners.
pub async fn serve(listener: Rc<UdpListener>, index: usize, shard: Rc<Shard>) {
    let mut stop = shard.stop.clone();
    let mut bufs = vec![0u8; SLOT * BATCH].into_boxed_slice();
    let mut metas = [RecvMeta::default(); BATCH];
    let mut tx = vec![0u8; 2048].into_boxed_slice();
    loop {
        let mut guard = tokio::select! {
            r = listener.port.sock.readable() => match r { Ok(g) => g, Err(_) => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let mut n = 0;
        let received = {
            let mut chunks = bufs.chunks_mut(SLOT);
            let mut iovs: [IoSliceMut<'_>; BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            guard.try_io(|sock| {
                n = listener.state.recv(sock.get_ref().into(), &mut iovs, &mut metas)?;
                // A short read means the queue is empty: report WouldBlock so that tokio
                // clears the readiness (it keeps it if a datagram arrived meanwhile) and no
                // system call is spent to learn that.
                if n < BATCH {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            })
        };
        drop(guard);
        if n > 0 {
            handle_batch(
                &listener,
                index,
                &shard,
                &bufs,
                metas.get(..n).unwrap_or_default(),
                &mut tx,
            );
        }
        // A full batch may have more behind it: let the shard's other tasks run first.
        if matches!(received, Ok(Ok(()))) {
            tokio::task::yield_now().await;
        }
    }
}

/// Hands one received batch to the engine and sends what it answers. Synchronous, so the
/// engine borrow can never span an await.
fn handle_batch(listener: &UdpListener, index: usize, shard: &Shard, bufs: &[u8], metas: &[RecvMeta], tx: &mut [u8]) {
    {
        let now = Instant::now();
        let mut engine = shard.engine.borrow_mut();
        let metrics = engine.stats().clone();
        for (meta, slot) in metas.iter().zip(bufs.chunks(SLOT)) {
            let tuple = FiveTuple {
                transport: Transport::Udp,
                client: meta.addr,
                server: SocketAddr::new(
                    meta.dst_ip.unwrap_or(listener.port.local.ip()),
                    listener.port.local.port(),
                ),
            };
            let data = slot.get(..meta.len).unwrap_or_default();
            // GRO packs several datagrams of one flow at `stride` offsets; an empty datagram
            // is still one datagram.
            let stride = meta.stride.max(1);
            let count = data.len().div_ceil(stride).max(1);
            for k in 0..count {
                let datagram = data
                    .get(k * stride..data.len().min((k + 1) * stride))
                    .unwrap_or_default();
                match engine.handle_client(now, &tuple, datagram, tx) {
                    // The usual answer: back on the 5-tuple it came in on, from this listener.
                    Output::ToClient { tuple: to, len } if to == tuple => {
                        let reply = tx.get(..len).unwrap_or_default();
                        shard
                            .egress
                            .queue_udp(index, tuple.client, listener.port.src_ip(&tuple), reply, &metrics);
                    }
                    output => shard.apply(output, tx, &metrics),
                }
            }
        }
        shard.rearm(&mut engine);
        shard.flush_peers(&metrics);
        shard.egress.flush_udp(&metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{getsockopt, sockopt};

    fn listener(addr: &str) -> Option<UdpListener> {
        let addr: SocketAddr = addr.parse().ok()?;
        let std = super::super::socket::bind_udp(addr, false).ok()?;
        UdpListener::new(std).ok()
    }

    #[tokio::test]
    async fn a_bound_listener_asks_for_no_control_message_and_a_wildcard_one_only_for_pktinfo() {
        let bound = listener("127.0.0.1:0").expect("bind 127.0.0.1");
        let fd = bound.port.sock.get_ref();
        assert_eq!(getsockopt(fd, sockopt::IpRecvTos).ok(), Some(false));
        assert_eq!(getsockopt(fd, sockopt::Ipv4PacketInfo).ok(), Some(false));

        let wildcard = listener("0.0.0.0:0").expect("bind 0.0.0.0");
        let fd = wildcard.port.sock.get_ref();
        assert_eq!(getsockopt(fd, sockopt::IpRecvTos).ok(), Some(false));
        assert_eq!(getsockopt(fd, sockopt::Ipv4PacketInfo).ok(), Some(true));

        // A host without IPv6 has nothing to check there.
        if let Some(v6) = listener("[::1]:0") {
            let fd = v6.port.sock.get_ref();
            assert_eq!(getsockopt(fd, sockopt::Ipv6RecvTClass).ok(), Some(false));
            assert_eq!(getsockopt(fd, sockopt::Ipv6RecvPacketInfo).ok(), Some(false));
        }
        if let Some(v6) = listener("[::]:0") {
            let fd = v6.port.sock.get_ref();
            assert_eq!(getsockopt(fd, sockopt::Ipv6RecvPacketInfo).ok(), Some(true));
        }
    }
}
