//! The small types every layer shares: the client transport, the 5-tuple, the relay port
//! range, the default allocation lifetime and the four addresses of NAT behaviour discovery.
//! This module imports nothing from the crate, so `proto`, `server`, `auth`, `metrics` and `net`
//! can all depend on it without depending on each other.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The default allocation lifetime (RFC 8656 §2.2).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// Permissions last five minutes (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel bindings last ten minutes (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// The client-side transport a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    // The discriminants index the per-transport counters.
    Udp = 0,
    Tcp = 1,
    /// TCP with TLS: stream framing, like TCP.
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// TCP and TLS carry a byte stream: ChannelData is padded and a close ends the allocation.
    pub fn is_stream(self) -> bool {
        self != Transport::Udp
    }
}

/// The 5-tuple a client packet arrived on: transport, client address, server address. The
/// server address is the concrete address the packet was sent to, even on a wildcard
/// listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
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

/// The four local addresses of RFC 5780 NAT behaviour discovery: two IPs of one family, each
/// with two ports. Index 0 is the primary (the configured listener), 1 the alternate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressQuad {
    pub ips: [IpAddr; 2],
    pub ports: [u16; 2],
}

impl AddressQuad {
    /// Which IP and which port `local` is, when it is one of the four.
    pub fn locate(&self, local: SocketAddr) -> Option<(usize, usize)> {
        let ip = self.ips.iter().position(|&i| i == local.ip())?;
        let port = self.ports.iter().position(|&p| p == local.port())?;
        Some((ip, port))
    }

    /// The address with IP `ip` and port `port` (0 primary, 1 alternate).
    pub fn at(&self, ip: usize, port: usize) -> SocketAddr {
        SocketAddr::new(self.ips[ip & 1], self.ports[port & 1])
    }

    /// All four, the primary first.
    pub fn all(&self) -> [SocketAddr; 4] {
        [self.at(0, 0), self.at(0, 1), self.at(1, 0), self.at(1, 1)]
    }
}
