//! TCP relays on real sockets (RFC 6062): a TCP allocation's listener, connections to peers
//! from its relayed address, and the copying between a peer connection and its client data
//! connection, with one bounded buffer each way, backpressure (nothing more is read while a
//! write waits) and half-close passed on. The engine owns a [`PeerStream`] per peer
//! connection; dropping it (the allocation ended, or 30 s passed unbound) closes the
//! connection wherever its copying runs.

use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use super::shard::Shard;
use crate::server::stats::Direction;
use crate::server::{ConnectionId, RelayToken};
use crate::sys::Locked;

/// A connection to a peer that does not complete within this time fails (447).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes buffered each way per joined pair: the most a slow reader can hold up.
const SPLICE_BUFFER: usize = 64 * 1024;

/// One peer connection, shared by the engine's handle and the task copying its bytes (which
/// may run on another shard, where the client's data connection landed).
#[derive(Debug, Default)]
pub struct PeerConn {
    /// The connected socket, until a ConnectionBind takes it to copy.
    socket: Mutex<Option<std::net::TcpStream>>,
    closed: AtomicBool,
    close: Notify,
    /// Paces the copying to `bandwidth_per_allocation` (both directions together).
    bucket: Mutex<crate::server::Bucket>,
    pub to_peer: AtomicU64,
    pub to_client: AtomicU64,
}

impl PeerConn {
    fn take_socket(&self) -> Option<std::net::TcpStream> {
        self.socket.locked().take()
    }

    /// The socket, for the ConnectionBind that joins it.
    pub fn take(&self) -> Option<std::net::TcpStream> {
        if self.closed.load(Relaxed) {
            return None;
        }
        self.take_socket()
    }
}

/// The engine's handle on a peer connection: dropping it closes the connection.
#[derive(Debug)]
pub struct PeerStream(pub Arc<PeerConn>);

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.0.closed.store(true, Relaxed);
        self.0.close.notify_one();
        drop(self.0.take_socket());
    }
}

/// A TCP allocation's listening socket: dropping it stops the accept task and closes it.
#[derive(Debug)]
pub struct RelayListener(tokio::task::AbortHandle);

impl Drop for RelayListener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds `addr` for a TCP allocation and accepts peers on it.
pub fn listen(shard: &Weak<Shard>, addr: SocketAddr, token: RelayToken) -> io::Result<RelayListener> {
    let std = super::socket::bind_tcp(addr, false)?;
    let listener = TcpListener::from_std(std)?;
    let shard = shard.clone();
    let task = tokio::task::spawn_local(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Some(shard) = shard.upgrade() else { return };
            let Ok(std) = stream.into_std() else { continue };
            let conn = Arc::new(PeerConn::default());
            *conn.socket.locked() = Some(std);
            shard.relay_event(|engine, out| {
                engine.handle_peer_connection(Instant::now(), token, peer, PeerStream(conn), out)
            });
        }
    });
    Ok(RelayListener(task.abort_handle()))
}

/// Starts a connection from the relayed address's IP to `peer`; the engine hears how it went
/// through `handle_connected`. The source port is a fresh one, as coturn's is: with the relay
/// port itself, two allocations that Connect to each other's relayed address would ask for
/// the same TCP connection twice.
pub fn connect(shard: &Weak<Shard>, from: SocketAddr, peer: SocketAddr, id: ConnectionId) -> io::Result<PeerStream> {
    let socket = if from.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::new(from.ip(), 0))?;
    let conn = Arc::new(PeerConn::default());
    let task_conn = conn.clone();
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let up = tokio::select! {
            r = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer)) => match r {
                Ok(Ok(stream)) => stream.into_std().ok(),
                _ => None,
            },
            _ = task_conn.close.notified() => None,
        };
        let ok = match up {
            Some(std) if !task_conn.closed.load(Relaxed) => {
                *task_conn.socket.locked() = Some(std);
                true
            }
            _ => false,
        };
        if let Some(shard) = shard.upgrade() {
            shard.relay_event(|engine, out| engine.handle_connected(Instant::now(), id, ok, out));
        }
    });
    Ok(PeerStream(conn))
}

/// Copies bytes both ways between a client data connection and its peer until both sides
/// have closed, either fails, or the engine closes the pair. `leftover` is what the client
/// sent after its ConnectionBind, which belongs to the peer. Returns why it ended.
pub async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    leftover: &[u8],
    peer: std::net::TcpStream,
    conn: &PeerConn,
    shard: &Rc<Shard>,
) -> &'static str {
    let Ok(mut peer) = TcpStream::from_std(peer) else {
        return "peer socket";
    };
    let _ = peer.set_nodelay(true);
    let (mut peer_r, mut peer_w) = peer.split();
    let (mut client_r, mut client_w) = tokio::io::split(client);
    if !leftover.is_empty() {
        if peer_w.write_all(leftover).await.is_err() {
            return "peer write error";
        }
        count(shard, conn, Direction::client_to_peer, leftover.len());
    }
    let up = copy(&mut client_r, &mut peer_w, shard, conn, Direction::client_to_peer);
    let down = copy(&mut peer_r, &mut client_w, shard, conn, Direction::peer_to_client);
    let both = async { tokio::join!(up, down) };
    tokio::select! {
        (a, b) = both => if a.is_err() || b.is_err() { "error" } else { "closed by both sides" },
        _ = conn.close.notified() => "closed by the server",
    }
}

/// One direction: read into a fixed buffer, write it all, and on EOF pass the half-close on.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    shard: &Rc<Shard>,
    conn: &PeerConn,
    direction: Direction,
) -> io::Result<()> {
    let mut buf = vec![0u8; SPLICE_BUFFER].into_boxed_slice();
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // RFC 6062 §5.5: a FIN from one side is passed on; the other direction goes on.
            return to.shutdown().await;
        }
        // Over a bandwidth cap the bytes wait (and, with nothing more read meanwhile, the
        // sender is slowed by TCP itself) instead of being dropped.
        let wait = {
            let mut bucket = conn.bucket.locked();
            shard
                .engine
                .try_borrow_mut()
                .map_or(Duration::ZERO, |mut e| e.pace_tcp(Instant::now(), n, &mut bucket))
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        to.write_all(buf.get(..n).unwrap_or_default()).await?;
        count(shard, conn, direction, n);
    }
}

fn count(shard: &Shard, conn: &PeerConn, direction: Direction, n: usize) {
    if let Ok(engine) = shard.engine.try_borrow() {
        engine.stats().relayed(direction, n);
    }
    match direction {
        Direction::client_to_peer => conn.to_peer.fetch_add(n as u64, Relaxed),
        Direction::peer_to_client => conn.to_client.fetch_add(n as u64, Relaxed),
    };
}
