//! The seam between the engine and relay sockets, and the identities it hands out. The engine decides which address and port
//! to use; the driver's [`RelayIo`] binds the socket and hands back a handle that the
//! engine's allocation owns, so dropping an allocation closes its sockets (nothing leaks).

use std::io;
use std::net::SocketAddr;

/// Identifies an allocation: a slot index and the generation of the allocation in it, so
/// that a stale token never reaches a newer allocation in a reused slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllocationId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// Identifies one relay socket: its allocation, and which of its (at most two) relayed
/// addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayToken {
    pub allocation: AllocationId,
    /// 0 for the IPv4 relayed address, 1 for IPv6.
    pub family: u8,
}

/// Opens relay sockets for the engine.
pub trait RelayIo {
    /// Whatever the driver needs to send on the socket and to stop receiving from it when
    /// dropped.
    type Socket;

    /// A port held for a later allocation (EVEN-PORT with R): bound, so nobody else takes
    /// it, but not yet delivering to an engine. It may be adopted by another shard's engine,
    /// since the Allocate that claims it may land there; dropping it frees the port.
    type Held: Send + 'static;

    /// The listening socket of a TCP allocation (RFC 6062); dropping it stops listening.
    type Listener;

    /// One peer data connection of a TCP allocation, connecting, up or joined with a client
    /// data connection; dropping it closes the connection (and its client side).
    type Stream;

    /// Binds a UDP socket to exactly `addr`. Datagrams it receives must be handed to
    /// [`super::Engine::handle_peer`] with `token`. An `AddrInUse` error makes the engine try
    /// another port.
    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<Self::Socket>;

    /// Binds `addr` and holds it for a later [`RelayIo::adopt`].
    fn hold(&mut self, addr: SocketAddr) -> io::Result<Self::Held>;

    /// Turns a held port (perhaps held by another shard) into a relay socket delivering to
    /// this engine under `token`.
    fn adopt(&mut self, held: Self::Held, token: RelayToken) -> io::Result<Self::Socket>;

    /// Listens for TCP connections on exactly `addr` for a TCP allocation. Peers that
    /// connect are handed to [`super::Engine::handle_peer_connection`] with `token`. An
    /// `AddrInUse` error makes the engine try another port.
    fn listen(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<Self::Listener>;

    /// Starts a TCP connection from `from` (the allocation's relayed address) to `peer`.
    /// The driver reports how it went with [`super::Engine::handle_connected`] and `id`.
    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, id: super::ConnectionId) -> io::Result<Self::Stream>;

    /// Bytes a peer connection carried so far: (to the peer, to the client).
    fn stream_bytes(_stream: &Self::Stream) -> (u64, u64) {
        (0, 0)
    }

    /// Sets the DF bit on every datagram `socket` sends from now on (RFC 8656 DONT-FRAGMENT).
    /// A platform that cannot returns `Unsupported`, and the engine answers 420.
    fn set_dont_fragment(&mut self, socket: &Self::Socket) -> io::Result<()>;
}
