//! The TCP listener driver: accept under a per-listener cap, cut the byte stream into STUN
//! and ChannelData frames (RFC 8489 §6.2.2, RFC 8656 §12.5), hand each to the engine, and
//! write back replies and relayed data. A connection is one 5-tuple: when it closes, its
//! allocation ends at once. A connection whose ConnectionBind succeeds (RFC 6062) stops
//! framing and becomes a client data connection, its bytes copied to and from its peer.

use std::rc::Rc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use super::egress::TcpOut;
use super::shard::Shard;
use super::TcpSettings;
use crate::proto::{framing, proxy};
use crate::proto::{Class, Message, Method, TurnAttributes};
use crate::server::stats::DropReason;
use crate::server::{ConnectionId, FiveTuple, Output, Transport};

/// Initial read buffer per connection; it grows only as far as the largest frame needs.
const INITIAL_BUFFER: usize = 2048;
/// Room for one reply; answers to requests are a few hundred bytes at most.
const REPLY_BUFFER: usize = 2048;
/// Pause after an accept error such as EMFILE, so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A TLS handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, settings: TcpSettings, shard: Rc<Shard>) {
    let Ok(local) = listener.local_addr() else { return };
    let mut stop = shard.stop.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => match settings.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    let server = stream.local_addr().unwrap_or(local);
                    tokio::task::spawn_local(accept(stream, peer, server, permit, settings.clone(), shard.clone()));
                }
                Err(_) => {
                    // Over the listener's cap: closed at once, and counted.
                    shard.engine.borrow().stats().connections_refused.inc();
                    drop(stream);
                }
            },
            Err(e) => {
                tracing::warn!(address = %local, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One accepted connection: the PROXY header if the listener wants one, the per-IP cap on
/// the client it names, the TLS handshake, then the connection itself.
async fn accept(
    mut stream: TcpStream,
    peer: SocketAddr,
    server: SocketAddr,
    permit: OwnedSemaphorePermit,
    settings: TcpSettings,
    shard: Rc<Shard>,
) {
    let (mut client, mut server) = (peer, server);
    if let Some(from) = &settings.proxy_from {
        if !from.iter().any(|n| n.contains(&peer.ip())) {
            tracing::debug!(client = %peer, "PROXY protocol listener: connection from outside proxy_from closed");
            shard.engine.borrow().stats().connections_refused.inc();
            return;
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_header(&mut stream)).await {
            Ok(Ok(proxy::Header::Proxied { source, destination })) => {
                client = source;
                server = destination;
            }
            Ok(Ok(proxy::Header::Local)) => {}
            Ok(Err(why)) => {
                tracing::debug!(load_balancer = %peer, why, "PROXY protocol header refused; connection closed");
                shard.engine.borrow().stats().connections_refused.inc();
                return;
            }
            Err(_) => {
                tracing::debug!(load_balancer = %peer, "no PROXY protocol header in time; connection closed");
                shard.engine.borrow().stats().connections_refused.inc();
                return;
            }
        }
    }
    let Some(slot) = settings.per_ip.acquire(client.ip()) else {
        // Over this IP's cap: closed at once, and counted.
        shard.engine.borrow().stats().connections_refused.inc();
        return;
    };
    let permit = (permit, slot);
    let idle = settings.idle_timeout;
    let Some(acceptor) = settings.tls.clone() else {
        let tuple = FiveTuple {
            transport: Transport::Tcp,
            client,
            server,
        };
        return connection(stream, tuple, idle, shard, permit).await;
    };
    let tuple = FiveTuple {
        transport: Transport::Tls,
        client,
        server,
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => connection(tls, tuple, idle, shard, permit).await,
        Ok(Err(e)) => tracing::debug!(client = %client, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(client = %client, "TLS handshake timed out"),
    }
}

/// Reads the PROXY protocol header and nothing after it: the header is found by peeking,
/// then exactly its bytes are consumed, so what follows (STUN, or a TLS ClientHello) is
/// still in the socket for whoever reads next.
async fn proxy_header(stream: &mut TcpStream) -> Result<proxy::Header, &'static str> {
    let mut buf = [0u8; proxy::V2_MAX];
    let mut seen = 0;
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| "read error")?;
        if n == 0 {
            return Err("closed before the header");
        }
        let got = buf.get(..n).unwrap_or_default();
        match proxy::parse(got) {
            proxy::Parsed::Done(header, len) => {
                let mut header_bytes = vec![0u8; len];
                stream.read_exact(&mut header_bytes).await.map_err(|_| "read error")?;
                return Ok(header);
            }
            proxy::Parsed::Invalid(why) => return Err(why),
            proxy::Parsed::Incomplete if n == seen => {
                // Nothing new since the last peek: wait a little for the rest of the header.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            proxy::Parsed::Incomplete => seen = n,
        }
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    tuple: FiveTuple,
    idle_timeout: Duration,
    shard: Rc<Shard>,
    _permit: (OwnedSemaphorePermit, super::PerIpSlot),
) {
    let out = shard.egress.add_tcp(tuple);
    let reason = run(&mut stream, &tuple, idle_timeout, &shard, &out).await;
    tracing::debug!(client = %tuple.client, reason, "TCP connection closed");
    shard.egress.remove_tcp(&tuple);
    let mut engine = shard.engine.borrow_mut();
    engine.handle_client_closed(Instant::now(), &tuple);
    shard.rearm(&mut engine);
}

async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    tuple: &FiveTuple,
    idle_timeout: Duration,
    shard: &Rc<Shard>,
    out: &Rc<TcpOut>,
) -> &'static str {
    let mut stop = shard.stop.clone();
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUFFER);
    let mut reply = vec![0u8; REPLY_BUFFER];
    let mut pending: Vec<u8> = Vec::new();
    let mut deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(INITIAL_BUFFER);
        }
        tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => match r {
                Err(_) => {
                    // Idle: close, unless an allocation lives on this connection.
                    if !shard.engine.borrow().has_allocation(tuple) {
                        return "idle";
                    }
                    deadline = tokio::time::Instant::now() + idle_timeout;
                }
                Ok(Ok(0)) => return "closed by client",
                Ok(Err(_)) => return "read error",
                Ok(Ok(_)) => {
                    let (complete, handoff) = match frames(&mut buf, tuple, shard, &mut reply, &mut pending) {
                        Ok(n) => n,
                        Err(why) => {
                            let _ = flush(stream, &mut pending, out).await;
                            return why;
                        }
                    };
                    match handoff {
                        None => {}
                        Some(Handoff::Joined(cid)) => {
                            if flush(stream, &mut pending, out).await.is_err() {
                                shard.engine.borrow_mut().handle_connection_closed(cid);
                                return "write error";
                            }
                            let conn = shard.engine.borrow().connection(cid).map(|c| c.stream.0.clone());
                            let peer = conn.as_ref().and_then(|c| c.take().map(|s| (s, c.clone())));
                            let why = match peer {
                                Some((peer, conn)) => super::tcp_relay::splice(stream, &buf, peer, &conn, shard).await,
                                None => "peer connection gone",
                            };
                            shard.engine.borrow_mut().handle_connection_closed(cid);
                            return why;
                        }
                        Some(Handoff::Forward(cid, request)) => {
                            let Some(answer) = forward_bind(shard, tuple, cid, request).await else {
                                return "shard gone";
                            };
                            pending.extend_from_slice(&answer.0);
                            if flush(stream, &mut pending, out).await.is_err() {
                                return "write error";
                            }
                            if let Some((peer, conn)) = answer.1 {
                                let why = super::tcp_relay::splice(stream, &buf, peer, &conn, shard).await;
                                send_to(shard, cid.shard(), super::ShardCommand::ConnectionClosed(cid));
                                return why;
                            }
                        }
                    }
                    if buf.capacity() > 4 * INITIAL_BUFFER && buf.len() < INITIAL_BUFFER {
                        buf.shrink_to(INITIAL_BUFFER);
                    }
                    // Only complete messages count as activity: a client dribbling bytes
                    // that never finish a message (a slowloris) still times out.
                    if complete > 0 {
                        deadline = tokio::time::Instant::now() + idle_timeout;
                    }
                }
            },
            _ = out.notify.notified() => {}
            _ = stop.wait_for(|s| *s) => return "server stopping",
        }
        if flush(stream, &mut pending, out).await.is_err() {
            return "write error";
        }
    }
}

/// What ends framing on a connection: a ConnectionBind that joined it with a peer (here,
/// or on the shard its CONNECTION-ID names).
enum Handoff {
    Joined(ConnectionId),
    Forward(ConnectionId, Vec<u8>),
}

/// The CONNECTION-ID of a ConnectionBind that another shard holds.
fn foreign_bind(packet: &[u8], shard: &Shard) -> Option<ConnectionId> {
    let m = Message::parse(packet).ok()?;
    if m.method() != Method::CONNECTION_BIND || m.class() != Class::Request {
        return None;
    }
    let cid = ConnectionId(TurnAttributes::decode(&m).connection_id.ok()?);
    let (me, all) = shard.siblings.get()?;
    (cid.shard() != *me && cid.shard() < all.len()).then_some(cid)
}

fn send_to(shard: &Shard, index: usize, cmd: super::ShardCommand) {
    if let Some(tx) = shard.siblings.get().and_then(|(_, all)| all.get(index)) {
        let _ = tx.send(cmd);
    }
}

/// Has the shard that holds `cid` answer a ConnectionBind from this connection.
async fn forward_bind(
    shard: &Shard,
    tuple: &FiveTuple,
    cid: ConnectionId,
    request: Vec<u8>,
) -> Option<super::BindReply> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    send_to(
        shard,
        cid.shard(),
        super::ShardCommand::ConnectionBind {
            tuple: *tuple,
            request,
            reply,
        },
    );
    answer.await.ok()
}

/// Handles every complete frame in `buf`, queueing replies in `pending`. Returns how many
/// frames were complete, and a handoff that ends framing (the bytes after it stay in `buf`).
fn frames(
    buf: &mut Vec<u8>,
    tuple: &FiveTuple,
    shard: &Rc<Shard>,
    reply: &mut [u8],
    pending: &mut Vec<u8>,
) -> Result<(usize, Option<Handoff>), &'static str> {
    let now = Instant::now();
    let mut engine = shard.engine.borrow_mut();
    let metrics = engine.stats().clone();
    let mut consumed = 0;
    let mut complete = 0;
    let result = loop {
        let rest = &buf[consumed..];
        match framing::next_frame(rest) {
            Ok(Some(frame)) => {
                let packet = &rest[..frame.len()];
                consumed += frame.len();
                complete += 1;
                if let Some(cid) = foreign_bind(packet, shard) {
                    break Ok((complete, Some(Handoff::Forward(cid, packet.to_vec()))));
                }
                match engine.handle_client(now, tuple, packet, reply) {
                    // The usual answer: back on this connection, written with its replies.
                    Output::ToClient { tuple: to, len } if to == *tuple => {
                        pending.extend_from_slice(reply.get(..len).unwrap_or_default());
                    }
                    Output::Joined { len, connection, .. } => {
                        pending.extend_from_slice(reply.get(..len).unwrap_or_default());
                        break Ok((complete, Some(Handoff::Joined(connection))));
                    }
                    output => shard.apply(output, reply, &metrics),
                }
            }
            Ok(None) => break Ok((complete, None)),
            Err(e) => {
                metrics.dropped(DropReason::stream_garbage);
                tracing::debug!(client = %tuple.client, error = %e, "closing TCP connection: not STUN");
                break Err("not STUN");
            }
        }
    };
    shard.flush_peers(&metrics);
    shard.rearm(&mut engine);
    drop(engine);
    buf.drain(..consumed);
    result
}

/// Writes queued replies, then whatever the relay path queued for this client.
async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, pending: &mut Vec<u8>, out: &Rc<TcpOut>) -> std::io::Result<()> {
    {
        let mut q = out.queue.borrow_mut();
        if !q.is_empty() {
            pending.extend_from_slice(&q);
            q.clear();
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let r = stream.write_all(pending).await;
    pending.clear();
    r
}
