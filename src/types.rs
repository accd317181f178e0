//! The small identity types every layer shares: the client transport and the 5-tuple. This
//! module imports nothing from the crate, so `proto`, `server`, `auth`, `metrics` and `net`
//! can all depend on it without depending on each other.

use std::net::SocketAddr;

/// The client-side transport a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TCP with TLS: stream framing, like TCP.
    Tls,
}

impl Transport {
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
