//! A [`RelayIo`] that binds nothing, for engine tests, benchmarks and fuzzing. It keeps the
//! set of "open" relay addresses so that tests can check that every socket is released.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::io::{RelayIo, RelayToken};
use crate::sys::Locked;

#[derive(Debug, Default)]
struct State {
    open: HashSet<SocketAddr>,
    /// TCP relay listeners (another port space than UDP).
    listening: HashSet<SocketAddr>,
    /// Connections started by [`RelayIo::connect`], for the test to complete.
    connecting: Vec<(super::ConnectionId, SocketAddr, SocketAddr)>,
    /// Peer connections open now.
    streams: usize,
    /// The token of the last listener opened.
    listener_token: Option<RelayToken>,
    dont_fragment: HashSet<SocketAddr>,
    binds: u64,
}

/// Opens pretend relay sockets; an address already open gives `AddrInUse`.
#[derive(Debug, Default, Clone)]
pub struct MemoryRelay {
    // Shared with held ports, which may move to another engine (another thread).
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.locked()
}

/// A pretend port held for a later allocation; dropping it frees the address.
#[derive(Debug)]
pub struct MemoryHeld {
    addr: SocketAddr,
    /// Taken when the port is adopted.
    state: Option<Arc<Mutex<State>>>,
}

impl Drop for MemoryHeld {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            lock(state).open.remove(&self.addr);
        }
    }
}

/// A pretend relay socket; dropping it frees its address.
#[derive(Debug)]
pub struct MemorySocket {
    pub addr: SocketAddr,
    pub token: RelayToken,
    state: Arc<Mutex<State>>,
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.open.remove(&self.addr);
        s.dont_fragment.remove(&self.addr);
    }
}

impl MemoryRelay {
    /// Relay sockets open right now.
    pub fn open_sockets(&self) -> usize {
        lock(&self.state).open.len()
    }

    /// True when `addr`'s socket sends with the DF bit.
    pub fn dont_fragment(&self, addr: SocketAddr) -> bool {
        lock(&self.state).dont_fragment.contains(&addr)
    }

    /// TCP relay listeners open now.
    pub fn listeners(&self) -> usize {
        lock(&self.state).listening.len()
    }

    /// The token peers that connect to the last listener opened arrive with.
    pub fn listener_token(&self) -> Option<RelayToken> {
        lock(&self.state).listener_token
    }

    /// Peer connections open now.
    pub fn streams(&self) -> usize {
        lock(&self.state).streams
    }

    /// The connections started since the last call: (id, from, peer).
    pub fn take_connecting(&self) -> Vec<(super::ConnectionId, SocketAddr, SocketAddr)> {
        std::mem::take(&mut lock(&self.state).connecting)
    }

    /// A peer connection, as if a peer had connected (to hand to `handle_peer_connection`).
    pub fn accepted(&self) -> MemoryStream {
        lock(&self.state).streams += 1;
        MemoryStream {
            state: self.state.clone(),
        }
    }

    /// Successful binds so far.
    pub fn binds(&self) -> u64 {
        lock(&self.state).binds
    }
}

/// A pretend TCP relay listener; dropping it frees the address.
#[derive(Debug)]
pub struct MemoryListener {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        lock(&self.state).listening.remove(&self.addr);
    }
}

/// A pretend peer connection; dropping it closes it.
#[derive(Debug)]
pub struct MemoryStream {
    state: Arc<Mutex<State>>,
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.streams = s.streams.saturating_sub(1);
    }
}

impl RelayIo for MemoryRelay {
    type Socket = MemorySocket;
    type Held = MemoryHeld;
    type Listener = MemoryListener;
    type Stream = MemoryStream;

    fn listen(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<MemoryListener> {
        let mut s = lock(&self.state);
        if !s.listening.insert(addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        s.listener_token = Some(token);
        drop(s);
        Ok(MemoryListener {
            addr,
            state: self.state.clone(),
        })
    }

    fn connect(&mut self, from: SocketAddr, peer: SocketAddr, id: super::ConnectionId) -> io::Result<MemoryStream> {
        let mut s = lock(&self.state);
        s.connecting.push((id, from, peer));
        s.streams += 1;
        Ok(MemoryStream {
            state: self.state.clone(),
        })
    }

    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<MemorySocket> {
        let mut s = lock(&self.state);
        if !s.open.insert(addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        s.binds += 1;
        Ok(MemorySocket {
            addr,
            token,
            state: self.state.clone(),
        })
    }

    fn hold(&mut self, addr: SocketAddr) -> io::Result<MemoryHeld> {
        let mut s = lock(&self.state);
        if !s.open.insert(addr) {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        s.binds += 1;
        Ok(MemoryHeld {
            addr,
            state: Some(self.state.clone()),
        })
    }

    fn adopt(&mut self, mut held: MemoryHeld, token: RelayToken) -> io::Result<MemorySocket> {
        // The address stays open: it passes from the held port to the socket.
        let state = held.state.take().unwrap_or_else(|| self.state.clone());
        Ok(MemorySocket {
            addr: held.addr,
            token,
            state,
        })
    }

    fn set_dont_fragment(&mut self, socket: &MemorySocket) -> io::Result<()> {
        lock(&self.state).dont_fragment.insert(socket.addr);
        Ok(())
    }
}
