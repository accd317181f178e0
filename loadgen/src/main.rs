//! turnd-load: a load generator for STUN/TURN servers, used by `benches/compare.sh` to
//! measure turnd and coturn side by side. Single-threaded (pin it to a core with taskset),
//! batched I/O (recvmmsg/sendmmsg over epoll), so that the server is the bottleneck.
//!
//! Modes:
//! - `binding`: Binding requests from many sockets, closed loop (a window in flight per
//!   socket) or open loop (`--rate`); responses/s and latency percentiles.
//! - `channel`: N allocations, each bound by channel to a UDP echo peer run by the generator;
//!   ChannelData round trips. Relayed packets/s counts both directions (2 per round trip).
//! - `send`: the same with Send and Data indications (permissions, no channels).
//! - `alloc`: allocation setup rate: Allocate -> 401 -> Allocate with credentials -> 200,
//!   then Refresh 0 to free it, each time from a fresh socket, on many sockets at once.
//! - `hold`: sets up `--sockets` allocations, holds them, and reports the server's resident
//!   memory per allocation (`--pid`), then frees them.
//! - `responder`: a minimal batched Binding responder (no other logic): the ceiling. It sends
//!   with turnd's own queue (sendmmsg, UDP GSO for answers to one client in one batch), so
//!   that the ceiling has every sending technique turnd has; `--no-gso` turns GSO off.
//! - `tcprelay`: MB/s through `--sockets` TCP relays (RFC 6062) at once, client to peer
//!   (see `tcprelay.rs`); `--server` is the server's TCP address.
//! - `relay`: a minimal TURN relay (one socket per allocation, batched I/O, no checks): the
//!   ceiling for `channel` and `send` (see `relay.rs`).
//!
//! Every run prints a human line and a `RESULT {json}` line.

mod relay;
mod sys;
mod tcprelay;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use turnd::auth::Keys;
use turnd::net::batch::TxQueue;
use turnd::proto::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};
use turnd::server::testclient::TestClient;

use sys::{Batch, Epoll};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Binding,
    Channel,
    Send,
    Alloc,
    Hold,
    Responder,
    Relay,
    Tcprelay,
}

#[derive(Parser, Debug)]
#[command(name = "turnd-load", version, about = "Load generator for STUN/TURN servers")]
struct Args {
    /// What to measure.
    #[arg(value_enum)]
    mode: Mode,
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddr,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Client sockets (binding, alloc), allocations (channel, send, hold).
    #[arg(long)]
    sockets: Option<usize>,
    /// Requests or round trips in flight per socket (closed loop).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Open loop: requests (or round trips) sent per second in total, paced. 0: closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Payload bytes per relayed packet (channel, send), 12 to 1200.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// The TURN username (long-term credentials).
    #[arg(long, default_value = "bench")]
    user: String,
    /// Its password.
    #[arg(long, default_value = "bench")]
    password: String,
    /// The realm the server is configured with (learned from the 401 if different).
    #[arg(long, default_value = "bench")]
    realm: String,
    /// The server's process id, to read its resident memory (hold).
    #[arg(long)]
    pid: Option<u32>,
    /// Allocations set up concurrently (hold; alloc keeps every socket busy).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Where the responder or the relay listens.
    #[arg(long, default_value = "127.0.0.1:3479")]
    listen: SocketAddr,
    /// The responder sends every answer as its own datagram (no UDP GSO).
    #[arg(long)]
    no_gso: bool,
    /// The core the server runs on: its busy share during the measurement is reported.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// A label copied into the RESULT line (the compare script names the server with it).
    #[arg(long, default_value = "")]
    label: String,
    /// The peer socket's port (channel, send); 0 picks a free one. With --peers, the first of
    /// consecutive ports. benches/compare.sh TOPOLOGY=veth fixes it for its XDP ceiling,
    /// which knows the peers by their ports.
    #[arg(long, default_value_t = 0)]
    peer_port: u16,
    /// Echo peers (channel): allocation i binds its channel to peer i mod N. coturn's
    /// --multiplex-peer shares relay ports, so it needs a peer per allocation.
    #[arg(long, default_value_t = 1)]
    peers: u16,
}

fn main() {
    let args = Args::parse();
    if !(12..=1200).contains(&args.payload) {
        eprintln!("turnd-load: --payload must be 12 to 1200 bytes, got {}", args.payload);
        std::process::exit(2);
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.rate >= 0.0) {
        eprintln!("turnd-load: --duration must be positive, --warmup and --rate not negative");
        std::process::exit(2);
    }
    let r = match args.mode {
        Mode::Binding | Mode::Channel | Mode::Send => run_flows(&args),
        Mode::Alloc | Mode::Hold => run_alloc(&args),
        Mode::Responder => responder(args.listen, !args.no_gso),
        Mode::Relay => relay::relayer(args.listen, !args.no_gso),
        Mode::Tcprelay => {
            let n = args.sockets.unwrap_or(1);
            check_loopback(args.server).and_then(|()| {
                tcprelay::run(
                    args.server,
                    n,
                    args.warmup,
                    args.duration,
                    &args.user,
                    &args.password,
                    &args.realm,
                )
                .map(|(mbps, n)| {
                    println!(
                        "{}: {mbps:.1} MB/s through {n} TCP relay(s), client to peer",
                        args.label
                    );
                    println!(
                        "RESULT {{\"mode\":\"tcprelay\",\"label\":\"{}\",\"connections\":{n},\"mb_per_s\":{mbps:.2}}}",
                        args.label
                    );
                })
            })
        }
    };
    if let Err(e) = r {
        eprintln!("turnd-load: {e}");
        std::process::exit(1);
    }
}

/// Latency histogram: 0.25 µs buckets up to 64 ms, then one overflow bucket.
struct Histogram {
    buckets: Vec<u64>,
    count: u64,
}

const BUCKET_NS: u64 = 250;

impl Histogram {
    fn new() -> Self {
        Histogram {
            buckets: vec![0; 256 * 1024 + 1],
            count: 0,
        }
    }
    fn record(&mut self, ns: u64) {
        let i = ((ns / BUCKET_NS) as usize).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }
    /// The latency below which `q` of the samples fall, in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return ((i as u64 + 1) * BUCKET_NS) as f64 / 1000.0;
            }
        }
        f64::INFINITY
    }
}

/// (busy, total) jiffies of one CPU, from /proc/stat.
fn cpu_jiffies(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&name))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// Measures how busy the server's core is between `begin` and `end`.
struct CoreMeter {
    cpu: usize,
    at_begin: Option<(u64, u64)>,
    busy_pct: Option<f64>,
}

impl CoreMeter {
    fn new(cpu: usize) -> Self {
        CoreMeter {
            cpu,
            at_begin: None,
            busy_pct: None,
        }
    }
    fn begin(&mut self) {
        self.at_begin = cpu_jiffies(self.cpu);
    }
    fn end(&mut self) {
        if let (Some((b0, t0)), Some((b1, t1))) = (self.at_begin, cpu_jiffies(self.cpu)) {
            if t1 > t0 {
                self.busy_pct = Some(100.0 * (b1 - b0) as f64 / (t1 - t0) as f64);
            }
        }
    }
    fn json(&self) -> String {
        self.busy_pct
            .map(|b| format!("{b:.1}"))
            .unwrap_or_else(|| "null".into())
    }
}

/// The local address to send from: loopback for a loopback server; in a test namespace, the
/// address the route to the server leaves from (the peer socket names it to the server).
fn local_for(server: SocketAddr) -> SocketAddr {
    let any = match server.ip() {
        IpAddr::V4(_) if server.ip().is_loopback() => return SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        IpAddr::V6(_) if server.ip().is_loopback() => return SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    // A connected UDP socket sends nothing; it only asks the route for its source.
    UdpSocket::bind(any)
        .and_then(|s| s.connect(server).and_then(|()| s.local_addr()))
        .map_or(any, |a| SocketAddr::new(a.ip(), 0))
}

/// True inside a named network namespace, one that `ip netns add` made (a test or
/// benches/compare.sh): its file under /run/netns is the namespace this process is in.
fn in_own_netns() -> bool {
    static IN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN.get_or_init(named_netns)
}

fn named_netns() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .any(|m| m.ino() == me.ino() && m.dev() == me.dev())
}

/// A benchmarking address: 198.18.0.0/15 (RFC 2544) or 2001:2::/48 (RFC 5180).
fn is_benchmarking(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 198 && (v4.octets()[1] & 0xfe) == 18,
        IpAddr::V6(v6) => v6.segments()[..3] == [0x2001, 0x0002, 0x0000],
    }
}

fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    // The generator sends only to loopback, or to a benchmarking address inside a network
    // namespace of its own (one that benches/compare.sh or a test made): never to a network.
    if addr.ip().is_loopback() || (is_benchmarking(addr.ip()) && in_own_netns()) {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{addr} is not a loopback address; turnd-load loads loopback, or 198.18.0.0/15 and \
         2001:2::/48 from inside a network namespace of its own"
    )))
}

fn client_socket(server: SocketAddr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.bind(&local_for(server).into())?;
    let s: UdpSocket = s.into();
    s.connect(server)?;
    Ok(s)
}

/// One request and its answer, blocking, retried: for setting up allocations.
fn transact(sock: &UdpSocket, req: &[u8]) -> io::Result<Vec<u8>> {
    let tid = req.get(8..20).unwrap_or_default().to_vec();
    let mut buf = [0u8; 2048];
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    for _ in 0..6 {
        sock.send(req)?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            match sock.recv(&mut buf) {
                Ok(n) if buf.get(8..20) == Some(&tid[..]) => return Ok(buf[..n].to_vec()),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no answer from the server"))
}

fn new_client(args: &Args) -> TestClient {
    TestClient::new(&args.user, &args.realm, &args.password)
}

/// After a 401, derive the keys again if the server's realm is not the one we assumed.
fn adopt_realm(c: &mut TestClient, args: &Args) {
    if c.realm != args.realm {
        c.keys = Keys::derive(&args.user, &c.realm, &args.password);
    }
}

/// Allocates on `sock` (401 exchange included) and returns the client and relayed address.
fn allocate(sock: &UdpSocket, args: &Args) -> io::Result<(TestClient, SocketAddr)> {
    let mut c = new_client(args);
    let req = c.allocate_family(args.server.is_ipv6());
    let r = c.read(&transact(sock, &req)?);
    if r.error != Some(401) {
        return Err(io::Error::other(format!("expected a 401 challenge, got {r:?}")));
    }
    adopt_realm(&mut c, args);
    let req = c.allocate_family(args.server.is_ipv6());
    let r = c.read(&transact(sock, &req)?);
    match (r.class, r.relayed.first()) {
        (Some(Class::Success), Some(relayed)) => Ok((c, *relayed)),
        _ => Err(io::Error::other(format!("Allocate failed: {r:?}"))),
    }
}

fn expect_success(c: &mut TestClient, bytes: &[u8], what: &str) -> io::Result<()> {
    let r = c.read(bytes);
    if r.class != Some(Class::Success) {
        return Err(io::Error::other(format!("{what} failed: {r:?}")));
    }
    Ok(())
}

/// What a flow sends and how its answers are recognised.
#[derive(Copy, Clone)]
enum Kind {
    Binding,
    Channel,
    Send(SocketAddr),
}

const CHANNEL: u16 = 0x4000;

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// Writes one probe carrying its send time into `out`.
fn build(kind: Kind, ts: u64, seq: u32, payload: usize, out: &mut [u8]) -> usize {
    let mut stamp = [0u8; 12];
    stamp[..8].copy_from_slice(&ts.to_be_bytes());
    stamp[8..].copy_from_slice(&seq.to_be_bytes());
    match kind {
        Kind::Binding => {
            out[..2].copy_from_slice(&0x0001u16.to_be_bytes());
            out[2..4].copy_from_slice(&0u16.to_be_bytes());
            out[4..8].copy_from_slice(&0x2112A442u32.to_be_bytes());
            out[8..20].copy_from_slice(&stamp);
            20
        }
        Kind::Channel => {
            let len = payload.clamp(12, 1200);
            out[..2].copy_from_slice(&CHANNEL.to_be_bytes());
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            out[4..16].copy_from_slice(&stamp);
            out[16..4 + len].fill(0xab);
            4 + len
        }
        Kind::Send(peer) => {
            let len = payload.clamp(12, 1200);
            let mut data = [0xabu8; 1200];
            data[..12].copy_from_slice(&stamp);
            let tid = TransactionId(stamp);
            let Ok(mut w) = MessageWriter::new(out, MessageType::new(Method::SEND, Class::Indication), tid) else {
                return 0;
            };
            let _ = w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
            let _ = w.attr(AttrType::DATA, &data[..len.min(data.len())]);
            w.finish()
        }
    }
}

/// The send time carried by an answer, if it is the answer this kind expects.
fn parse(kind: Kind, msg: &[u8]) -> Option<u64> {
    let ts = |b: &[u8]| b.get(..8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
    match kind {
        Kind::Binding => {
            if msg.get(..2)? != [0x01, 0x01] {
                return None;
            }
            ts(msg.get(8..)?)
        }
        Kind::Channel => {
            if *msg.first()? & 0xc0 != 0x40 {
                return None;
            }
            ts(msg.get(4..)?)
        }
        Kind::Send(_) => {
            let m = Message::parse(msg).ok()?;
            if m.method() != Method::DATA || m.class() != Class::Indication {
                return None;
            }
            ts(m.get(AttrType::DATA)?.value)
        }
    }
}

struct Flow {
    sock: UdpSocket,
    outstanding: usize,
    last_progress: u64,
}

/// Prepares the flows of a binding, channel or send run: sockets, and for TURN modes the
/// allocations, permissions or channels towards the echo peer.
fn setup_flows(args: &Args, peers: &[SocketAddr]) -> io::Result<(Vec<Flow>, Kind)> {
    let n = args.sockets.unwrap_or(64);
    let mut flows = Vec::with_capacity(n);
    let mut kind = Kind::Binding;
    for i in 0..n {
        let sock = client_socket(args.server)?;
        if let Some(&peer) = peers.get(i % peers.len().max(1)) {
            let (mut c, _relayed) = allocate(&sock, args)?;
            if args.mode == Mode::Channel {
                let req = c.channel_bind(CHANNEL, peer);
                expect_success(&mut c, &transact(&sock, &req)?, "ChannelBind")?;
                kind = Kind::Channel;
            } else {
                let req = c.create_permission(&[peer]);
                expect_success(&mut c, &transact(&sock, &req)?, "CreatePermission")?;
                kind = Kind::Send(peer);
            }
        }
        sock.set_nonblocking(true)?;
        flows.push(Flow {
            sock,
            outstanding: 0,
            last_progress: 0,
        });
    }
    Ok((flows, kind))
}

#[derive(Default)]
struct Tally {
    sent: u64,
    received: u64,
    in_window: u64,
    late: u64,
    unexpected: u64,
    echoed: u64,
}

/// Sends `count` probes on flow `f`. Returns how many left.
fn send_probes(
    flow: &Flow,
    kind: Kind,
    count: usize,
    start: Instant,
    seq: &mut u32,
    payload: usize,
    batch: &mut Batch,
) -> usize {
    let count = count.min(batch.capacity());
    let ts = now_ns(start);
    for i in 0..count {
        *seq = seq.wrapping_add(1);
        let len = build(kind, ts, *seq, payload, batch.buf_mut(i));
        batch.lens[i] = len;
    }
    batch.send(flow.sock.as_raw_fd(), count, false)
}

fn run_flows(args: &Args) -> io::Result<()> {
    check_loopback(args.server)?;
    let turn = matches!(args.mode, Mode::Channel | Mode::Send);
    if args.peers == 0 || (args.peers > 1 && args.mode != Mode::Channel) {
        return Err(io::Error::other(
            "--peers must be at least 1, and more than 1 only in channel mode",
        ));
    }
    let mut peer_socks = Vec::new();
    for i in 0..if turn { args.peers } else { 0 } {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(args.server),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        let mut local = local_for(args.server);
        if args.peer_port != 0 {
            local.set_port(args.peer_port.saturating_add(i));
        }
        s.bind(&local.into())?;
        s.set_nonblocking(true)?;
        peer_socks.push(UdpSocket::from(s));
    }
    let peer_addrs = peer_socks
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<Vec<_>>>()?;
    let (mut flows, kind) = setup_flows(args, &peer_addrs)?;

    let mut epoll = Epoll::new(1024)?;
    for (i, f) in flows.iter().enumerate() {
        epoll.add(&f.sock, i as u64)?;
    }
    // Peers take the epoll indices from u64::MAX down.
    let peer_of = |idx: u64| usize::try_from(u64::MAX - idx).ok().filter(|&i| i < peer_socks.len());
    for (i, p) in peer_socks.iter().enumerate() {
        epoll.add(p, u64::MAX - i as u64)?;
    }

    let window = args.window.max(1);
    let open_loop = args.rate > 0.0;
    let warm = (args.warmup * 1e9) as u64;
    let end = warm + (args.duration * 1e9) as u64;
    let drain = 500_000_000u64;
    let mut hist = Histogram::new();
    let mut t = Tally::default();
    let mut seq = 0u32;
    let mut tx = Batch::new(64);
    let mut rx = Batch::new(64);
    let mut echo = Batch::new(64);
    let mut ready = Vec::new();
    let mut rr = 0usize;
    let mut lost_reset = 0u64;
    let mut last_scan = 0u64;

    let mut meter = CoreMeter::new(args.server_core);
    let (mut metering, mut metered) = (false, false);
    let start = Instant::now();
    if !open_loop {
        for f in flows.iter_mut() {
            let sent = send_probes(f, kind, window, start, &mut seq, args.payload, &mut tx);
            f.outstanding += sent;
            t.sent += sent as u64;
        }
    }
    loop {
        let now = now_ns(start);
        if now >= end + drain {
            break;
        }
        let sending = now < end;
        if !metering && now >= warm {
            meter.begin();
            metering = true;
        }
        if !metered && now >= end {
            meter.end();
            metered = true;
        }
        if open_loop && sending {
            let due = ((args.rate * now as f64 / 1e9) as u64).saturating_sub(t.sent);
            let mut left = due.min(256) as usize;
            while left > 0 {
                let k = left.min(8);
                let f = &flows[rr % flows.len()];
                rr += 1;
                let sent = send_probes(f, kind, k, start, &mut seq, args.payload, &mut tx);
                t.sent += sent as u64;
                left -= k;
            }
        }
        epoll.wait(0, &mut ready)?;
        if ready.is_empty() {
            // Nothing to read: let a NAPI thread pinned to this core (TOPOLOGY=veth) run
            // now rather than at the end of this thread's time slice.
            std::thread::yield_now();
        }
        for &idx in &ready {
            if let Some(i) = peer_of(idx) {
                // An echo peer: send every datagram back where it came from.
                let Some(p) = peer_socks.get(i) else { continue };
                // recvmmsg left each source address and length in its slot, which is what
                // sendmmsg sends to.
                let n = echo.recv(p.as_raw_fd(), true).unwrap_or(0);
                t.echoed += echo.send(p.as_raw_fd(), n, true) as u64;
                continue;
            }
            let Some(f) = flows.get_mut(idx as usize) else { continue };
            // An ICMP error (nothing listening yet) surfaces here; it is not an answer.
            let n = rx.recv(f.sock.as_raw_fd(), false).unwrap_or(0);
            let now = now_ns(start);
            let mut answered = 0;
            for i in 0..n {
                match parse(kind, rx.msg(i)) {
                    Some(ts) => {
                        t.received += 1;
                        answered += 1;
                        if (warm..end).contains(&now) {
                            t.in_window += 1;
                            hist.record(now.saturating_sub(ts));
                        }
                        if f.outstanding > 0 {
                            f.outstanding -= 1;
                        } else {
                            t.late += 1;
                        }
                    }
                    None => t.unexpected += 1,
                }
            }
            if answered > 0 {
                f.last_progress = now;
            }
            if !open_loop && sending {
                let want = window.saturating_sub(f.outstanding);
                if want > 0 {
                    let sent = send_probes(f, kind, want, start, &mut seq, args.payload, &mut tx);
                    f.outstanding += sent;
                    t.sent += sent as u64;
                }
            }
        }
        // Closed loop: a window whose answers were lost is declared lost and refilled.
        if !open_loop && sending && now.saturating_sub(last_scan) > 50_000_000 {
            last_scan = now;
            for f in flows.iter_mut() {
                if now.saturating_sub(f.last_progress) > 200_000_000 {
                    lost_reset += f.outstanding as u64;
                    f.outstanding = 0;
                    f.last_progress = now;
                    let sent = send_probes(f, kind, window, start, &mut seq, args.payload, &mut tx);
                    f.outstanding += sent;
                    t.sent += sent as u64;
                }
            }
        }
    }
    let _ = lost_reset;
    let secs = args.duration;
    let per_sec = t.in_window as f64 / secs;
    let lost = t.sent.saturating_sub(t.received);
    let loss_pct = if t.sent > 0 {
        100.0 * lost as f64 / t.sent as f64
    } else {
        0.0
    };
    let (unit, rate) = match kind {
        Kind::Binding => ("responses/s", per_sec),
        // Each round trip crosses the server twice: client->peer and peer->client.
        Kind::Channel | Kind::Send(_) => ("relayed packets/s", 2.0 * per_sec),
    };
    let (p50, p99, p999) = (hist.quantile_us(0.5), hist.quantile_us(0.99), hist.quantile_us(0.999));
    println!(
        "{:?} {} {}: {:.0} {unit} ({} flows x {} window{}), p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, sent {}, answered {}, lost {} ({:.3}%), server core {}% busy",
        args.mode,
        args.label,
        args.server,
        rate,
        flows.len(),
        if open_loop { 0 } else { window },
        if open_loop { format!(", open loop at {} /s", args.rate) } else { String::new() },
        p50,
        p99,
        p999,
        t.sent,
        t.received,
        lost,
        loss_pct,
        meter.json()
    );
    println!(
        "RESULT {{\"mode\":\"{:?}\",\"label\":\"{}\",\"server_core_busy_pct\":{},\"rate\":{:.0},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2},\"sent\":{},\"received\":{},\"lost\":{},\"loss_pct\":{:.4},\"unexpected\":{},\"offered\":{}}}",
        args.mode,
        args.label,
        meter.json(),
        rate,
        p50,
        p99,
        p999, t.sent, t.received, lost, loss_pct, t.unexpected, args.rate
    );
    Ok(())
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum Stage {
    Idle,
    Challenge,
    Auth,
    Held,
    Release,
}

struct Setup {
    sock: UdpSocket,
    client: TestClient,
    stage: Stage,
    tid: [u8; 12],
    sent_at: u64,
    started: u64,
}

impl Setup {
    fn send(&mut self, stage: Stage, now: u64) -> io::Result<()> {
        let req = match stage {
            Stage::Challenge => {
                self.client.nonce.clear();
                self.started = now;
                self.client.allocate()
            }
            Stage::Auth => self.client.allocate(),
            Stage::Release => self.client.refresh(0),
            Stage::Idle | Stage::Held => return Ok(()),
        };
        if let Some(t) = req.get(8..20) {
            self.tid.copy_from_slice(t);
        }
        self.stage = stage;
        self.sent_at = now;
        match self.sock.send(&req) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Allocation setup rate (alloc) or allocations held and the server's memory (hold).
fn run_alloc(args: &Args) -> io::Result<()> {
    check_loopback(args.server)?;
    let hold = args.mode == Mode::Hold;
    let n = args.sockets.unwrap_or(if hold { 10_000 } else { 64 });
    if hold {
        sys::raise_fd_limit();
    }
    let rss_before = args.pid.and_then(read_rss_kib);
    let mut epoll = Epoll::new(1024)?;
    let mut flows = Vec::with_capacity(n);
    for i in 0..n {
        let sock = client_socket(args.server)?;
        sock.set_nonblocking(true)?;
        epoll.add(&sock, i as u64)?;
        flows.push(Setup {
            sock,
            client: new_client(args),
            stage: Stage::Idle,
            tid: [0; 12],
            sent_at: 0,
            started: 0,
        });
    }
    let start = Instant::now();
    let warm = if hold { 0 } else { (args.warmup * 1e9) as u64 };
    let end = if hold {
        120_000_000_000
    } else {
        warm + (args.duration * 1e9) as u64
    };
    let concurrency = if hold { args.concurrency.max(1) } else { n };
    let mut next = 0usize;
    let mut active = 0usize;
    while next < n && active < concurrency {
        flows[next].send(Stage::Challenge, 0)?;
        next += 1;
        active += 1;
    }
    let mut hist = Histogram::new();
    let (mut done, mut in_window, mut held, mut errors, mut retransmits) = (0u64, 0u64, 0usize, 0u64, 0u64);
    // Allocates refused with 437 because the kernel handed out a source port the server still
    // remembers; retried from another socket.
    let mut reused = 0u64;
    let mut ready = Vec::new();
    let mut buf = [0u8; 2048];
    let mut last_scan = 0;
    let setup_secs;
    let mut meter = CoreMeter::new(args.server_core);
    let (mut metering, mut metered) = (false, false);
    loop {
        let now = now_ns(start);
        if !metering && now >= warm {
            meter.begin();
            metering = true;
        }
        if !metered && now >= end {
            meter.end();
            metered = true;
        }
        if now >= end || (hold && held == n) {
            meter.end();
            setup_secs = now as f64 / 1e9;
            break;
        }
        epoll.wait(1, &mut ready)?;
        for &idx in &ready {
            let Some(f) = flows.get_mut(idx as usize) else { continue };
            loop {
                let len = match f.sock.recv(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                };
                if buf.get(8..20) != Some(&f.tid[..]) {
                    continue;
                }
                let r = f.client.read(&buf[..len]);
                let now = now_ns(start);
                match (f.stage, r.class, r.error) {
                    (Stage::Challenge, _, Some(401)) => {
                        adopt_realm(&mut f.client, args);
                        f.send(Stage::Auth, now)?;
                    }
                    (Stage::Auth, Some(Class::Success), _) => {
                        done += 1;
                        if (warm..end).contains(&now) {
                            in_window += 1;
                            hist.record(now.saturating_sub(f.started));
                        }
                        if hold {
                            f.stage = Stage::Held;
                            held += 1;
                            if next < n {
                                flows[next].send(Stage::Challenge, now)?;
                                next += 1;
                            }
                        } else {
                            f.send(Stage::Release, now)?;
                        }
                        break;
                    }
                    // A stale nonce: the answer carried a fresh one.
                    (Stage::Auth, _, Some(438)) => f.send(Stage::Auth, now)?,
                    (Stage::Auth, _, Some(437)) => f.send(Stage::Release, now)?,
                    // Each allocation comes from a fresh 5-tuple, as from a new client
                    // (coturn answers 437 to an Allocate from a 5-tuple it freed recently).
                    (Stage::Release, _, _) | (Stage::Challenge, _, Some(437)) => {
                        if f.stage == Stage::Challenge {
                            reused += 1;
                        }
                        f.sock = client_socket(args.server)?;
                        f.sock.set_nonblocking(true)?;
                        epoll.add(&f.sock, idx)?;
                        f.client = new_client(args);
                        f.send(Stage::Challenge, now)?;
                        break;
                    }
                    (stage, class, code) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("unexpected answer in {stage:?}: {class:?} {code:?}");
                        }
                        f.send(Stage::Challenge, now)?;
                    }
                }
            }
        }
        if now.saturating_sub(last_scan) > 100_000_000 {
            last_scan = now;
            for f in flows.iter_mut() {
                if matches!(f.stage, Stage::Challenge | Stage::Auth | Stage::Release)
                    && now.saturating_sub(f.sent_at) > 1_000_000_000
                {
                    retransmits += 1;
                    let stage = f.stage;
                    f.send(stage, now)?;
                }
            }
        }
    }
    if hold {
        // Let the server settle, then read its memory with every allocation held.
        std::thread::sleep(Duration::from_millis(1000));
        let rss_held = args.pid.and_then(read_rss_kib);
        let per_alloc = match (rss_before, rss_held) {
            (Some(b), Some(h)) if held > 0 => Some((h.saturating_sub(b) as f64 * 1024.0) / held as f64),
            _ => None,
        };
        // Free them all, so the server is left as it was.
        let mut released = 0usize;
        let t0 = Instant::now();
        let mut pending: Vec<usize> = (0..n).filter(|&i| flows[i].stage == Stage::Held).collect();
        while !pending.is_empty() && t0.elapsed() < Duration::from_secs(30) {
            for &i in &pending {
                let now = now_ns(start);
                flows[i].send(Stage::Release, now)?;
            }
            let wave_end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < wave_end && released < pending.len() {
                epoll.wait(5, &mut ready)?;
                for &idx in &ready {
                    let Some(f) = flows.get_mut(idx as usize) else { continue };
                    while let Ok(len) = f.sock.recv(&mut buf) {
                        if f.stage == Stage::Release && buf.get(8..20) == Some(&f.tid[..]) {
                            let _ = f.client.read(&buf[..len]);
                            f.stage = Stage::Idle;
                            released += 1;
                        }
                    }
                }
            }
            pending.retain(|&i| flows[i].stage == Stage::Release);
            released = 0;
        }
        let per = per_alloc.map(|b| format!("{b:.0}")).unwrap_or_else(|| "null".into());
        println!(
            "Hold {} {}: {held} of {n} allocations held (set up in {setup_secs:.2} s, {retransmits} retransmits, {errors} errors); server RSS {} KiB -> {} KiB: {} bytes per allocation; {} not released",
            args.label,
            args.server,
            rss_before.unwrap_or(0),
            rss_held.unwrap_or(0),
            per,
            pending.len()
        );
        println!(
            "RESULT {{\"mode\":\"Hold\",\"label\":\"{}\",\"held\":{held},\"rss_before_kib\":{},\"rss_held_kib\":{},\"bytes_per_allocation\":{per},\"errors\":{errors}}}",
            args.label,
            rss_before.unwrap_or(0),
            rss_held.unwrap_or(0)
        );
    } else {
        let rate = in_window as f64 / args.duration;
        let (p50, p99) = (hist.quantile_us(0.5), hist.quantile_us(0.99));
        println!(
            "Alloc {} {}: {rate:.0} allocations/s (401 + Allocate, then Refresh 0; {n} sockets), setup p50 {p50:.1} us, p99 {p99:.1} us; {done} in all, {retransmits} retransmits, {reused} retried after 437 on a reused port, {errors} errors, server core {}% busy",
            args.label,
            args.server,
            meter.json()
        );
        println!(
            "RESULT {{\"mode\":\"Alloc\",\"label\":\"{}\",\"server_core_busy_pct\":{},\"rate\":{rate:.0},\"p50_us\":{p50:.2},\"p99_us\":{p99:.2},\"errors\":{errors},\"retransmits\":{retransmits}}}",
            args.label,
            meter.json()
        );
    }
    Ok(())
}

/// A non-blocking UDP socket bound to `addr`, with the same 4 MiB buffers turnd asks for.
fn bound_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(UdpSocket::from(s))
}

/// The ceiling: answers Binding requests with batched I/O and nothing else (no validation
/// beyond the header, no metrics, no rate limit). Runs until killed.
fn responder(listen: SocketAddr, gso: bool) -> io::Result<()> {
    check_loopback(listen)?;
    let sock = bound_socket(listen)?;
    let mut epoll = Epoll::new(1)?;
    epoll.add(&sock, 0)?;
    let mut rx = Batch::new(64);
    let mut tx = TxQueue::new(gso);
    let mut answer = [0u8; 128];
    let mut ready = Vec::new();
    eprintln!(
        "responder on {} (gso {})",
        sock.local_addr()?,
        if gso { "on" } else { "off" }
    );
    loop {
        epoll.wait(-1, &mut ready)?;
        loop {
            let n = rx.recv(sock.as_raw_fd(), true)?;
            if n == 0 {
                break;
            }
            for i in 0..n {
                let req = rx.msg(i);
                let (Some(addr), Some(head)) = (rx.addr(i), req.get(..20)) else {
                    continue;
                };
                if head[..2] != [0x00, 0x01] {
                    continue;
                }
                let mut tid = [0u8; 12];
                tid.copy_from_slice(&head[8..20]);
                let mut w = match MessageWriter::new(
                    &mut answer,
                    MessageType::new(Method::BINDING, Class::Success),
                    TransactionId(tid),
                ) {
                    Ok(w) => w,
                    Err(_) => continue,
                };
                let _ = w.xor_address(AttrType::XOR_MAPPED_ADDRESS, addr);
                let len = w.finish();
                tx.push(&sock, None, addr, &answer[..len]);
            }
            tx.flush();
        }
    }
}
