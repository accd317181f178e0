//! The batched socket calls the generator is built on: recvmmsg, sendmmsg and epoll, through
//! libc. Everything unsafe in the generator is in this file.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// Bytes per message slot: enough for every message the generator sends or expects.
pub const SLOT: usize = 2048;

/// A batch of message slots for one recvmmsg or sendmmsg call.
pub struct Batch {
    bufs: Vec<[u8; SLOT]>,
    pub lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub fn new(n: usize) -> Batch {
        Batch {
            bufs: vec![[0u8; SLOT]; n],
            lens: vec![0; n],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all
            // zero bytes is a valid value.
            addrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            addr_lens: vec![0; n],
            iovs: (0..n).map(|_| unsafe { zeroed() }).collect(),
            hdrs: (0..n).map(|_| unsafe { zeroed() }).collect(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// The buffer of slot `i`, to write a message into.
    pub fn buf_mut(&mut self, i: usize) -> &mut [u8; SLOT] {
        &mut self.bufs[i]
    }

    /// The message received in slot `i`.
    pub fn msg(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i].min(SLOT)]
    }

    /// The source address of the message received in slot `i`.
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: the kernel wrote a socket address of `addr_lens[i]` bytes into the slot.
        let sa = unsafe { SockAddr::new(self.addrs[i], self.addr_lens[i]) };
        sa.as_socket()
    }

    fn prepare(&mut self, n: usize, recv: bool, with_addr: bool) {
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: if recv { SLOT } else { self.lens[i] },
            };
            // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
            let mut h: libc::msghdr = unsafe { zeroed() };
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            if with_addr {
                h.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
                h.msg_namelen = if recv {
                    size_of::<libc::sockaddr_storage>() as libc::socklen_t
                } else {
                    self.addr_lens[i]
                };
            }
            self.hdrs[i] = libc::mmsghdr { msg_hdr: h, msg_len: 0 };
        }
    }

    /// Receives up to a batch without blocking; Ok(0) when nothing is waiting.
    pub fn recv(&mut self, fd: RawFd, with_addr: bool) -> io::Result<usize> {
        let n = self.capacity();
        self.prepare(n, true, with_addr);
        // SAFETY: hdrs holds n initialised headers whose buffers are owned by self.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let r = r as usize;
        for i in 0..r {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addr_lens[i] = self.hdrs[i].msg_hdr.msg_namelen;
        }
        Ok(r)
    }

    /// Sends slots `0..n` (their `lens` set by the caller). Returns how many went out; the
    /// rest met a full socket buffer.
    pub fn send(&mut self, fd: RawFd, n: usize, with_addr: bool) -> usize {
        let n = n.min(self.capacity());
        self.prepare(n, false, with_addr);
        let mut done = 0;
        let mut stalls = 0;
        while done < n && stalls < 100 {
            // SAFETY: hdrs[done..n] are initialised headers whose buffers are owned by self.
            let r = unsafe { libc::sendmmsg(fd, self.hdrs.as_mut_ptr().add(done), (n - done) as u32, 0) };
            if r <= 0 {
                stalls += 1;
                std::hint::spin_loop();
                continue;
            }
            done += r as usize;
        }
        done
    }
}

/// An epoll set whose events carry a caller-chosen index; level-triggered unless added with
/// `add_edge`.
pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    pub fn new(capacity: usize) -> io::Result<Epoll> {
        // SAFETY: plain system call.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)],
        })
    }

    pub fn add(&self, sock: &impl AsRawFd, index: u64) -> io::Result<()> {
        self.add_with(sock, index, libc::EPOLLIN as u32)
    }

    /// Edge-triggered: reported once per arrival on an emptied socket, so the owner must read
    /// until a short batch; the kernel does not poll the socket again at every wait.
    pub fn add_edge(&self, sock: &impl AsRawFd, index: u64) -> io::Result<()> {
        self.add_with(sock, index, (libc::EPOLLIN | libc::EPOLLET) as u32)
    }

    fn add_with(&self, sock: &impl AsRawFd, index: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: index };
        // SAFETY: ev is a valid event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, sock.as_raw_fd(), &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` and returns the indices of ready sockets.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<u64>) -> io::Result<()> {
        out.clear();
        // SAFETY: events has room for its length.
        let n = unsafe { libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        out.extend(self.events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.fd) };
    }
}

/// Raises the open-file limit to its hard maximum (10,000 held allocations need 10,000
/// sockets).
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut l: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            return l.rlim_cur;
        }
    }
    0
}
