//! A [`RelayIo`] that binds nothing, for engine tests, benchmarks and fuzzing. It keeps the
//! set of "open" relay addresses so that tests can check that every socket is released.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use super::io::{RelayIo, RelayToken};

#[derive(Debug, Default)]
struct State {
    open: HashSet<SocketAddr>,
    dont_fragment: HashSet<SocketAddr>,
    binds: u64,
}

/// Opens pretend relay sockets; an address already open gives `AddrInUse`.
#[derive(Debug, Default, Clone)]
pub struct MemoryRelay {
    state: Rc<RefCell<State>>,
}

/// A pretend relay socket; dropping it frees its address.
#[derive(Debug)]
pub struct MemorySocket {
    pub addr: SocketAddr,
    pub token: RelayToken,
    state: Rc<RefCell<State>>,
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        let mut s = self.state.borrow_mut();
        s.open.remove(&self.addr);
        s.dont_fragment.remove(&self.addr);
    }
}

impl MemoryRelay {
    /// Relay sockets open right now.
    pub fn open_sockets(&self) -> usize {
        self.state.borrow().open.len()
    }

    /// True when `addr`'s socket sends with the DF bit.
    pub fn dont_fragment(&self, addr: SocketAddr) -> bool {
        self.state.borrow().dont_fragment.contains(&addr)
    }

    /// Successful binds so far.
    pub fn binds(&self) -> u64 {
        self.state.borrow().binds
    }
}

impl RelayIo for MemoryRelay {
    type Socket = MemorySocket;

    fn bind(&mut self, addr: SocketAddr, token: RelayToken) -> io::Result<MemorySocket> {
        let mut s = self.state.borrow_mut();
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

    fn set_dont_fragment(&mut self, socket: &MemorySocket) -> io::Result<()> {
        self.state.borrow_mut().dont_fragment.insert(socket.addr);
        Ok(())
    }
}
