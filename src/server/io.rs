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

    /// Binds a UDP socket to exactly `addr`. Datagrams it receives must be handed to
    /// [`super::Engine::handle_peer`] with `token`. An `AddrInUse` error makes the engine try
    /// another port.
    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<Self::Socket>;
}

/// An inclusive, non-empty range of relay ports: `first <= last` holds by construction, so
/// its length cannot underflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub const DEFAULT: PortRange = PortRange {
        first: 49152,
        last: 65535,
    };

    /// The ports `first..=last`; `None` unless `1 <= first <= last`.
    pub const fn new(first: u16, last: u16) -> Option<PortRange> {
        if first == 0 || first > last {
            None
        } else {
            Some(PortRange { first, last })
        }
    }

    pub fn first(&self) -> u16 {
        self.first
    }

    pub fn last(&self) -> u16 {
        self.last
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th port of the range, wrapping around.
    pub fn nth(&self, i: u32) -> u16 {
        // len() >= 1 and the result is <= last, so the cast cannot truncate.
        (u32::from(self.first) + i % self.len()) as u16
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid port range {s:?}: expected \"FIRST-LAST\", e.g. \"49152-65535\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        PortRange::new(first, last).ok_or_else(|| format!("invalid port range {s:?}: need 1 <= FIRST <= LAST <= 65535"))
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}
