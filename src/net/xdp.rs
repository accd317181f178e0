//! The XDP fast path's driver side (issue 20). [`FastPathMaps::attach`] loads
//! `bpf/turnd_xdp.c` (built by build.rs), attaches it to the `[xdp]` interfaces and keeps its
//! maps. Each shard turns its engine's [`FastPath`] commands into map writes
//! ([`ShardFastPath::apply`]) and, once a second and at every removal, hands the program's
//! per-entry counters back to the engine ([`ShardFastPath::collect`]).
//!
//! The program's links are `bpf_link`s owned by this process: they go when it exits, however
//! it exits, so a crash leaves no program attached. Map writes are control-plane work
//! (ChannelBind, expiry), never per packet, so one mutex serves every shard.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::XdpConfig;
use crate::server::{Engine, FastPath, FastPathEntry, RelayIo, Traffic};
use crate::sys::Locked;

/// The program's own counters, by index (bpf/turnd_xdp.c `STAT_*`): what it relayed each
/// way, then what it passed to the stack by reason (the `reason` label of
/// `turnd_xdp_passed_packets_total`).
pub const PROGRAM_STATS: [&str; 6] = ["to_peer", "to_client", "expired", "length", "route", "checksum"];

#[cfg_attr(not(turnd_xdp), allow(dead_code))]
/// Map keys and values as the program lays them out: addresses in 16 bytes (IPv4 mapped),
/// ports and channel numbers in network byte order.
mod layout {
    use super::*;

    pub type Key = [u8; 40];
    pub type Route = [u8; 56];

    fn ip16(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn pair(a: SocketAddr, b: SocketAddr) -> [u8; 36] {
        let mut k = [0u8; 36];
        k[..16].copy_from_slice(&ip16(a.ip()));
        k[16..32].copy_from_slice(&ip16(b.ip()));
        k[32..34].copy_from_slice(&a.port().to_be_bytes());
        k[34..36].copy_from_slice(&b.port().to_be_bytes());
        k
    }

    /// `struct client_key`: what a client's ChannelData is looked up by.
    pub fn client_key(e: &FastPathEntry) -> Key {
        let mut k = [0u8; 40];
        k[..36].copy_from_slice(&pair(e.client, e.listener));
        k[36..38].copy_from_slice(&e.channel.get().to_be_bytes());
        k
    }

    /// `struct peer_key`: what a peer's datagram to a relay port is looked up by.
    pub fn peer_key(e: &FastPathEntry) -> Key {
        let mut k = [0u8; 40];
        k[..36].copy_from_slice(&pair(e.peer, e.relay));
        k
    }

    /// `struct route`: to, from, the channel, flags, the deadline and the counter slot.
    pub fn route(to: SocketAddr, from: SocketAddr, e: &FastPathEntry, expires_ns: u64, slot: u32) -> Route {
        let mut r = [0u8; 56];
        r[..36].copy_from_slice(&pair(to, from));
        r[36..38].copy_from_slice(&e.channel.get().to_be_bytes());
        r[38..40].copy_from_slice(&u16::from(e.dont_fragment).to_ne_bytes());
        r[40..48].copy_from_slice(&expires_ns.to_ne_bytes());
        r[48..52].copy_from_slice(&slot.to_ne_bytes());
        r
    }
}

#[cfg_attr(not(turnd_xdp), allow(dead_code))]
/// How much earlier than the engine's deadline the program stops relaying an entry. The
/// program reads the clock of the last tick (`bpf_ktime_get_coarse_ns`, cheaper), which lags
/// CLOCK_MONOTONIC by at most one tick (10 ms at HZ=100): stopping this much early, it never
/// relays past the deadline. In the last 20 ms the stack carries the channel's packets, and
/// turnd relays them as the permission still allows.
const DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(20);

#[cfg_attr(not(turnd_xdp), allow(dead_code))]
/// Where `t` falls on CLOCK_MONOTONIC, the program's clock. `Instant` is CLOCK_MONOTONIC on
/// Linux too; the offset is taken afresh each time.
fn monotonic_ns(t: Instant) -> u64 {
    let now = Instant::now();
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let now_ns = u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0);
    if t >= now {
        now_ns.saturating_add(u64::try_from(t.duration_since(now).as_nanos()).unwrap_or(u64::MAX))
    } else {
        now_ns.saturating_sub(u64::try_from(now.duration_since(t).as_nanos()).unwrap_or(u64::MAX))
    }
}

#[cfg(turnd_xdp)]
mod program {
    use aya::maps::{HashMap as BpfHash, MapData, PerCpuArray, PerCpuValues};
    use aya::programs::{Xdp, XdpMode as AyaMode};
    use aya::Ebpf;

    use super::layout::{Key, Route};
    use super::*;
    use crate::config::XdpMode;

    /// The program's object file, compiled by build.rs.
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));
    const SLOTS: u32 = 65536;

    /// The loaded program, its links and its maps.
    pub struct Program {
        /// Holds the program and its links: dropping it detaches everywhere. (Read only by
        /// the test-support `run`.)
        #[cfg_attr(not(feature = "test-support"), allow(dead_code))]
        ebpf: Ebpf,
        clients: BpfHash<MapData, Key, Route>,
        peers: BpfHash<MapData, Key, Route>,
        counts: PerCpuArray<MapData, [u64; 4]>,
        stats: PerCpuArray<MapData, u64>,
        cpus: usize,
        free: Vec<u32>,
        next: u32,
    }

    fn map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, String>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let m = ebpf
            .take_map(name)
            .ok_or_else(|| format!("the program has no map {name}"))?;
        T::try_from(m).map_err(|e| format!("map {name}: {e}"))
    }

    impl Program {
        pub fn attach(config: &XdpConfig) -> Result<Program, String> {
            let mut ebpf = Ebpf::load(OBJECT).map_err(|e| format!("cannot load the XDP program: {e}"))?;
            let prog: &mut Xdp = ebpf
                .program_mut("turnd_xdp")
                .ok_or("the object has no turnd_xdp program")?
                .try_into()
                .map_err(|e| format!("turnd_xdp is not an XDP program: {e}"))?;
            prog.load()
                .map_err(|e| format!("the kernel refused the XDP program: {e}"))?;
            let mode = match config.mode {
                XdpMode::Native => AyaMode::Driver,
                XdpMode::Generic => AyaMode::Skb,
            };
            for name in &config.interfaces {
                prog.attach(name, mode)
                    .map_err(|e| format!("cannot attach XDP to {name} ({:?} mode): {e}", config.mode))?;
            }
            let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
            Ok(Program {
                clients: map(&mut ebpf, "turnd_clients")?,
                peers: map(&mut ebpf, "turnd_peers")?,
                counts: map(&mut ebpf, "turnd_counts")?,
                stats: map(&mut ebpf, "turnd_stats")?,
                ebpf,
                cpus,
                free: Vec::new(),
                next: 0,
            })
        }

        /// Writes both directions of `e`; a new entry gets a zeroed counter slot.
        pub fn install(&mut self, e: &FastPathEntry, slot: Option<u32>) -> Result<u32, String> {
            let slot = match slot {
                Some(s) => s,
                None => {
                    let s = match self.free.pop() {
                        Some(s) => s,
                        None if self.next < SLOTS => {
                            self.next += 1;
                            self.next - 1
                        }
                        None => return Err("all 65536 fast-path entries are in use".into()),
                    };
                    let zero = PerCpuValues::try_from(vec![[0u64; 4]; self.cpus]).map_err(|e| e.to_string())?;
                    if let Err(err) = self.counts.set(s, zero, 0) {
                        self.free.push(s);
                        return Err(err.to_string());
                    }
                    s
                }
            };
            let expires = monotonic_ns(e.expires.checked_sub(DEADLINE_MARGIN).unwrap_or(e.expires));
            let to_peer = layout::route(e.peer, e.relay, e, expires, slot);
            let to_client = layout::route(e.client, e.listener, e, expires, slot);
            let written = self
                .clients
                .insert(layout::client_key(e), to_peer, 0)
                .and_then(|()| self.peers.insert(layout::peer_key(e), to_client, 0));
            if let Err(err) = written {
                self.delete(e);
                self.free.push(slot);
                return Err(err.to_string());
            }
            Ok(slot)
        }

        fn delete(&mut self, e: &FastPathEntry) {
            // Absent keys are fine: an entry whose install failed half-way.
            let _ = self.clients.remove(&layout::client_key(e));
            let _ = self.peers.remove(&layout::peer_key(e));
        }

        /// Deletes both directions of `e` and frees its slot; returns its final counts.
        pub fn remove(&mut self, e: &FastPathEntry, slot: u32) -> Traffic {
            self.delete(e);
            let t = self.counts(slot);
            self.free.push(slot);
            t
        }

        /// What the program relayed on `slot` since it was installed, summed over CPUs.
        pub fn counts(&self, slot: u32) -> Traffic {
            let mut t = Traffic::default();
            if let Ok(per_cpu) = self.counts.get(&slot, 0) {
                for c in per_cpu.iter() {
                    t.to_peer_packets += c[0];
                    t.to_peer_bytes += c[1];
                    t.to_client_packets += c[2];
                    t.to_client_bytes += c[3];
                }
            }
            t
        }

        /// The program's own counters ([`PROGRAM_STATS`]), summed over CPUs.
        pub fn stats(&self) -> [u64; 6] {
            let mut out = [0u64; 6];
            for (i, v) in out.iter_mut().enumerate() {
                if let Ok(per_cpu) = self.stats.get(&(i as u32), 0) {
                    *v = per_cpu.iter().sum();
                }
            }
            out
        }

        /// Runs `frame` through the program once (BPF_PROG_TEST_RUN): its action and the
        /// frame as the program left it.
        #[cfg(feature = "test-support")]
        pub fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
            use aya::programs::{TestRun, TestRunOptions};
            let prog: &Xdp = self
                .ebpf
                .program("turnd_xdp")
                .ok_or("the object has no turnd_xdp program")?
                .try_into()
                .map_err(|e| format!("turnd_xdp is not an XDP program: {e}"))?;
            let mut out = vec![0u8; frame.len() + 64];
            let opts = TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            };
            let r = prog.test_run(opts).map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
            out.truncate(r.data_size_out as usize);
            Ok((r.return_value, out))
        }
    }
}

#[cfg(not(turnd_xdp))]
mod program {
    use super::*;

    /// This build has no XDP program: attaching always fails, so no value exists.
    pub enum Program {}

    impl Program {
        pub fn attach(_: &XdpConfig) -> Result<Program, String> {
            Err(format!("this turnd was {}", env!("TURND_XDP_BUILD")))
        }
        pub fn install(&mut self, _: &FastPathEntry, _: Option<u32>) -> Result<u32, String> {
            match *self {}
        }
        pub fn remove(&mut self, _: &FastPathEntry, _: u32) -> Traffic {
            match *self {}
        }
        pub fn counts(&self, _: u32) -> Traffic {
            match *self {}
        }
        pub fn stats(&self) -> [u64; 6] {
            match *self {}
        }
        #[cfg(feature = "test-support")]
        pub fn run(&self, _: &[u8]) -> Result<(u32, Vec<u8>), String> {
            match *self {}
        }
    }
}

/// The program loaded and attached nowhere, fed frames directly with BPF_PROG_TEST_RUN: the
/// XDP program's fuzz harness (tests/xdp.rs; longer runs with `XDP_FUZZ_RUNS`). Needs root.
#[cfg(feature = "test-support")]
pub struct TestProgram(program::Program);

#[cfg(feature = "test-support")]
impl TestProgram {
    pub fn load() -> Result<TestProgram, String> {
        let nowhere = XdpConfig {
            interfaces: Vec::new(),
            mode: Default::default(),
        };
        program::Program::attach(&nowhere).map(TestProgram)
    }

    /// Offloads channel `channel` of the client on (`client`, `listener`) to `peer` through
    /// relay address `relay`, as a shard does, for `lifetime` (zero: already expired).
    pub fn install(
        &mut self,
        (client, listener): (SocketAddr, SocketAddr),
        channel: u16,
        (peer, relay): (SocketAddr, SocketAddr),
        lifetime: std::time::Duration,
    ) -> Result<u32, String> {
        let channel = crate::proto::ChannelNumber::new(channel).ok_or("not a channel number")?;
        let e = FastPathEntry {
            allocation: crate::server::AllocationId {
                index: 0,
                generation: 0,
            },
            client,
            listener,
            channel,
            peer,
            relay,
            expires: Instant::now() + lifetime,
            dont_fragment: false,
        };
        self.0.install(&e, None)
    }

    /// One frame through the program: its action (`XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3)
    /// and the frame it left.
    pub fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
        self.0.run(frame)
    }

    /// The program's own counters, by [`PROGRAM_STATS`] name.
    pub fn stats(&self) -> [u64; 6] {
        self.0.stats()
    }
}

/// Whether this build carries the XDP program.
pub const BUILT_IN: bool = cfg!(turnd_xdp);

/// The attached program and its maps, shared by every shard.
pub struct FastPathMaps(Mutex<program::Program>);

impl std::fmt::Debug for FastPathMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastPathMaps")
    }
}

impl FastPathMaps {
    /// Loads the program and attaches it to every `[xdp]` interface; the error says why not
    /// in one line.
    pub fn attach(config: &XdpConfig) -> Result<Arc<FastPathMaps>, String> {
        for name in &config.interfaces {
            check_forwarding(name)?;
        }
        program::Program::attach(config).map(|p| Arc::new(FastPathMaps(Mutex::new(p))))
    }

    /// Why the program handed packets of offloaded channels to the stack, by reason.
    pub fn passed(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        PROGRAM_STATS.iter().copied().zip(s).skip(2).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, program::Program> {
        self.0.locked()
    }

    /// The program's own counters, by [`PROGRAM_STATS`] name.
    pub fn stats(&self) -> [u64; 6] {
        self.lock().stats()
    }
}

/// The kernel's route lookup from XDP (`bpf_fib_lookup`) answers only on an interface that
/// forwards: IPv4 forwarding is required, IPv6's is optional (without it IPv6 stays on
/// sockets).
fn check_forwarding(name: &str) -> Result<(), String> {
    let read = |family: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{name}/forwarding")).map(|v| v.trim() == "1")
    };
    match read("ipv4") {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "[xdp] needs forwarding on {name}: the kernel's route lookup for XDP answers only there \
                 (sysctl -w net.ipv4.conf.{name}.forwarding=1; drop forwarded traffic in the firewall if the \
                 host must not route)"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("[xdp] names {name}, but there is no such interface"))
        }
        Err(e) => return Err(format!("[xdp] interface {name}: {e}")),
    }
    if !read("ipv6").unwrap_or(false) {
        tracing::warn!("XDP: net.ipv6.conf.{name}.forwarding is off, so IPv6 channels on {name} stay on sockets");
    }
    Ok(())
}

/// One installed entry on a shard: its counter slot and the counts already reported.
struct Installed {
    entry: FastPathEntry,
    slot: u32,
    reported: Traffic,
}

/// A shard's side of the fast path: the entries its engine installed.
pub struct ShardFastPath {
    maps: Arc<FastPathMaps>,
    installed: RefCell<HashMap<layout::Key, Installed>>,
}

fn minus(a: Traffic, b: Traffic) -> Traffic {
    Traffic {
        to_peer_packets: a.to_peer_packets.saturating_sub(b.to_peer_packets),
        to_peer_bytes: a.to_peer_bytes.saturating_sub(b.to_peer_bytes),
        to_client_packets: a.to_client_packets.saturating_sub(b.to_client_packets),
        to_client_bytes: a.to_client_bytes.saturating_sub(b.to_client_bytes),
    }
}

impl ShardFastPath {
    pub fn new(maps: Arc<FastPathMaps>) -> ShardFastPath {
        ShardFastPath {
            maps,
            installed: RefCell::new(HashMap::new()),
        }
    }

    /// Carries out every command the engine queued. A removal reports the entry's last
    /// counts at once, so an ended allocation's log line has them.
    pub fn apply<R: RelayIo>(&self, engine: &mut Engine<R>) {
        let now = Instant::now();
        while let Some(cmd) = engine.poll_fast_path() {
            let mut installed = self.installed.borrow_mut();
            match cmd {
                FastPath::Install(e) => {
                    let key = layout::client_key(&e);
                    let slot = installed.get(&key).map(|i| i.slot);
                    match self.maps.lock().install(&e, slot) {
                        Ok(slot) => {
                            let reported = installed.get(&key).map_or_else(Traffic::default, |i| i.reported);
                            installed.insert(
                                key,
                                Installed {
                                    entry: e,
                                    slot,
                                    reported,
                                },
                            );
                        }
                        // The channel stays on the socket path, which is always correct.
                        Err(err) => tracing::warn!(client = %e.client, "fast path: cannot install a channel: {err}"),
                    }
                }
                FastPath::Remove(e) => {
                    let last = match installed.remove(&layout::client_key(&e)) {
                        Some(i) => minus(self.maps.lock().remove(&i.entry, i.slot), i.reported),
                        None => Traffic::default(),
                    };
                    drop(installed);
                    engine.handle_fast_path_traffic(now, &e, last, true);
                }
            }
        }
    }

    /// Reports what the program relayed since the last report, entry by entry.
    pub fn collect<R: RelayIo>(&self, engine: &mut Engine<R>) {
        let now = Instant::now();
        let mut deltas = Vec::new();
        {
            let maps = self.maps.lock();
            for i in self.installed.borrow_mut().values_mut() {
                let total = maps.counts(i.slot);
                let delta = minus(total, i.reported);
                if delta.to_peer_packets + delta.to_client_packets > 0 {
                    i.reported = total;
                    deltas.push((i.entry, delta));
                }
            }
        }
        for (e, d) in deltas {
            engine.handle_fast_path_traffic(now, &e, d, false);
        }
    }
}
