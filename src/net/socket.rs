//! Socket creation with the options a server needs, through socket2.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Kernel socket buffers we ask for; the kernel caps them at net.core.[rw]mem_max.
const SOCKET_BUFFER: usize = 4 << 20;
const TCP_BACKLOG: i32 = 1024;

pub fn bind_udp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 are separate listeners in our config; never let one swallow both.
        s.set_only_v6(true)?;
    }
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

pub fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(TCP_BACKLOG)?;
    Ok(s.into())
}

/// Fails with `AddrInUse` when another socket already holds `addr`, even one that would let
/// us share it through SO_REUSEPORT (another process of the same user, such as a second
/// turnd): the probe binds without SO_REUSEPORT, then closes.
pub fn probe_free(addr: SocketAddr, stream: bool) -> io::Result<()> {
    let (ty, proto) = if stream {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if stream {
        // Connections of an earlier run in TIME_WAIT are not "another process".
        s.set_reuse_address(true)?;
    }
    s.bind(&addr.into())
}

/// A value that owns one open descriptor for its whole life, and whose `as_raw_fd` always
/// names that descriptor: what tokio's reactor registration requires. Crate-private, so only
/// the types below can be registered: `std::net::UdpSocket` (owns an `OwnedFd` it never
/// swaps) and the shard's relay epoll set (owns nix's `Epoll`, likewise).
pub(crate) trait StableFd: std::os::fd::AsRawFd {}

impl StableFd for std::net::UdpSocket {}

/// Registers a descriptor the value owns (a socket, the relay epoll set) with the shard's
/// reactor for readability only. tokio's own `UdpSocket` also asks for writability, and then
/// every datagram the kernel frees after a send (on loopback: at once) wakes the reactor's
/// epoll for room nobody waits for: UDP sends here never wait, they drop and count when the
/// buffer is full.
///
/// This is the crate's one `unsafe` block (the crate denies unsafe code everywhere else).
#[allow(unsafe_code)]
pub(crate) fn readable<T: StableFd>(owner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: tokio asks that the descriptor stay open and be the same one for the life of the
    // AsyncFd. `T: StableFd` owns its descriptor (it closes only when `T` drops, which happens
    // after the AsyncFd deregisters it) and returns the same one from every `as_raw_fd` call.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(owner, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// True for the errors a host without IPv6 gives when asked for an IPv6 socket.
pub fn is_family_unavailable(e: &io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    matches!(e.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL)) || e.kind() == io::ErrorKind::AddrNotAvailable
}

/// A relay socket: bound to exactly `addr`, never shared (no SO_REUSEPORT), so that an
/// `AddrInUse` error reliably means the port is taken.
/// Sets the DF bit on everything `sock` sends: IP_MTU_DISCOVER = IP_PMTUDISC_DO over IPv4
/// (a datagram over the path MTU then fails with EMSGSIZE instead of being fragmented),
/// IPV6_DONTFRAG over IPv6.
pub fn set_dont_fragment(sock: &std::net::UdpSocket) -> io::Result<()> {
    if sock.local_addr()?.is_ipv4() {
        rustix::net::sockopt::set_ip_mtu_discover(sock, rustix::net::sockopt::Ipv4PathMtuDiscovery::DO)?;
    } else {
        nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Ipv6DontFrag, &true)?;
    }
    Ok(())
}

pub fn bind_relay(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}
