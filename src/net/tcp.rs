//! The TCP listener driver: accept under a per-listener cap, cut the byte stream into STUN
//! and ChannelData frames (RFC 8489 §6.2.2), answer each, close idle or garbled connections.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::TcpSettings;
use crate::metrics::DropReason;
use crate::proto::framing;
use crate::server::{Engine, FiveTuple, Transport};

/// Initial read buffer per connection; it grows only as far as the largest frame needs.
const INITIAL_BUFFER: usize = 2048;
/// Room for one reply; answers to requests are a few hundred bytes at most.
const REPLY_BUFFER: usize = 2048;
/// Pause after an accept error such as EMFILE, so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

pub async fn serve(
    listener: TcpListener,
    settings: TcpSettings,
    engine: Rc<RefCell<Engine>>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(local) = listener.local_addr() else { return };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, peer)) => match settings.connections.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    let tuple = FiveTuple {
                        transport: Transport::Tcp,
                        client: peer,
                        server: local,
                    };
                    tokio::task::spawn_local(connection(
                        stream,
                        tuple,
                        settings.idle_timeout,
                        engine.clone(),
                        permit,
                        stop.clone(),
                    ));
                }
                Err(_) => {
                    engine.borrow().metrics().connection_refused();
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

async fn connection(
    mut stream: TcpStream,
    tuple: FiveTuple,
    idle_timeout: Duration,
    engine: Rc<RefCell<Engine>>,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(INITIAL_BUFFER);
    let mut out: Vec<u8> = Vec::new();
    let mut scratch = vec![0u8; REPLY_BUFFER];
    let mut deadline = tokio::time::Instant::now() + idle_timeout;
    loop {
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(INITIAL_BUFFER);
        }
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match read {
            Err(_) => {
                tracing::debug!(client = %tuple.client, "closing idle TCP connection");
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let now = Instant::now();
        let mut consumed = 0;
        loop {
            let rest = &buf[consumed..];
            match framing::next_frame(rest) {
                Ok(Some(frame)) => {
                    let packet = &rest[..frame.len()];
                    let reply = engine.borrow_mut().handle_client(now, &tuple, packet, &mut scratch);
                    if let Some(len) = reply {
                        out.extend_from_slice(&scratch[..len]);
                    }
                    consumed += frame.len();
                    deadline = tokio::time::Instant::now() + idle_timeout;
                }
                Ok(None) => break,
                Err(e) => {
                    engine.borrow().metrics().dropped(DropReason::stream_garbage);
                    tracing::debug!(client = %tuple.client, error = %e, "closing TCP connection: not STUN");
                    let _ = flush(&mut stream, &mut out, tuple.client).await;
                    return;
                }
            }
        }
        buf.drain(..consumed);
        if flush(&mut stream, &mut out, tuple.client).await.is_err() {
            return;
        }
    }
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>, _client: SocketAddr) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = stream.write_all(out).await;
    out.clear();
    r
}
