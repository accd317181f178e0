//! `tcprelay`: throughput through TCP relays (RFC 6062). Sets up `--sockets` TCP
//! allocations over TCP, each with Connect to a sink peer run here and a data connection
//! bound to it, then pushes bytes through all of them at once and counts what reaches the
//! sink: MB/s, client to peer. Plain threads with blocking sockets: the server, pinned to
//! its own core, is what is measured.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use turnd::proto::{AttrType, Message, Method};
use turnd::server::testclient::TestClient;

const CHUNK: usize = 64 * 1024;

fn read_message(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 20];
    s.read_exact(&mut head)?;
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok([head.to_vec(), body].concat())
}

/// Sends a request (again after a 401 or 438); the answer's bytes, or an error naming it.
fn ask(
    s: &mut TcpStream,
    c: &mut TestClient,
    what: &str,
    build: impl Fn(&mut TestClient) -> Vec<u8>,
) -> io::Result<Vec<u8>> {
    for _ in 0..3 {
        s.write_all(&build(c))?;
        let answer = read_message(s)?;
        match c.read(&answer).error {
            None => return Ok(answer),
            Some(401 | 438) => continue,
            Some(code) => return Err(io::Error::other(format!("{what}: error {code}"))),
        }
    }
    Err(io::Error::other(format!("{what}: still challenged")))
}

/// One relay: the control connection (kept open) and the bound data connection.
fn open(
    server: SocketAddr,
    sink: SocketAddr,
    user: &str,
    password: &str,
    realm: &str,
) -> io::Result<(TcpStream, TcpStream)> {
    let mut control = TcpStream::connect(server)?;
    control.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut c = TestClient::new(user, realm, password);
    ask(&mut control, &mut c, "Allocate", |c| {
        c.request(Method::ALLOCATE, |w| {
            let _ = w.attr(AttrType::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
        })
    })?;
    ask(&mut control, &mut c, "CreatePermission", |c| {
        c.create_permission(&[sink])
    })?;
    let answer = ask(&mut control, &mut c, "Connect", |c| {
        c.request(Method::CONNECT, |w| {
            let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, sink);
        })
    })?;
    let id = Message::parse(&answer)
        .ok()
        .and_then(|m| m.get(AttrType::CONNECTION_ID).map(|a| a.value.to_vec()))
        .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
        .ok_or_else(|| io::Error::other("Connect: no CONNECTION-ID"))?;
    let mut data = TcpStream::connect(server)?;
    data.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut d = c.clone();
    ask(&mut data, &mut d, "ConnectionBind", |c| {
        c.request(Method::CONNECTION_BIND, |w| {
            let _ = w.attr(AttrType::CONNECTION_ID, &id);
        })
    })?;
    Ok((control, data))
}

/// Runs the measurement; returns (MB/s, connections).
pub fn run(
    server: SocketAddr,
    connections: usize,
    warmup: f64,
    duration: f64,
    user: &str,
    password: &str,
    realm: &str,
) -> io::Result<(f64, usize)> {
    let sink = TcpListener::bind(SocketAddr::new(server.ip(), 0))?;
    let sink_addr = sink.local_addr()?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let received = received.clone();
        std::thread::spawn(move || {
            for s in sink.incoming().flatten() {
                let received = received.clone();
                std::thread::spawn(move || {
                    let mut s = s;
                    let mut buf = vec![0u8; CHUNK];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        received.fetch_add(n as u64, Relaxed);
                    }
                });
            }
        });
    }
    let mut keep = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (control, data) = open(server, sink_addr, user, password, realm)?;
        let stop = stop.clone();
        let mut writer = data.try_clone()?;
        std::thread::spawn(move || {
            let chunk = vec![0x5Au8; CHUNK];
            while !stop.load(Relaxed) && writer.write_all(&chunk).is_ok() {}
        });
        keep.push((control, data));
    }
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let (start, before) = (Instant::now(), received.load(Relaxed));
    std::thread::sleep(Duration::from_secs_f64(duration));
    let bytes = received.load(Relaxed) - before;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    drop(keep);
    Ok((bytes as f64 / secs / 1e6, connections))
}
