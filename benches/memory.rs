//! Server memory per allocation, per permission and per TCP connection: starts the release
//! `turnd`, holds N of each, and divides the growth in resident memory by N.
//!
//! Run: `cargo bench --bench memory` (needs a few thousand file descriptors: `ulimit -n`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use turnd::server::testclient::TestClient;

const BIN: &str = env!("CARGO_BIN_EXE_turnd");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn ask(
    sock: &UdpSocket,
    server: SocketAddr,
    c: &mut TestClient,
    build: impl FnOnce(&mut TestClient) -> Vec<u8>,
) -> turnd::server::testclient::Response {
    let req = build(c);
    sock.send_to(&req, server).unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).unwrap();
    c.read(&buf[..n])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::var("TURND_MEMORY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    std::fs::write(
        &cfg,
        format!(
            "threads = 1\nrealm = \"m\"\n[[listen]]\naddress = \"127.0.0.1:0\"\nmax_connections_per_ip = 4096\n[relay]\naddresses = [\"127.0.0.1\"]\n\
             max_allocations_per_user = 100000\n[auth]\nusers_file = \"{}/u.toml\"\n[[auth.users]]\nname = \"u\"\npassword = \"p\"\n\
             [peers]\nallow = [\"10.0.0.0/8\"]\n[limits]\nunauthenticated_rate = 0\n[admin]\nsocket = \"{}/a.sock\"\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 20000; exec {BIN} serve --config {}", cfg.display()))
        .env("RUST_LOG", "warn,turnd::cli=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut log = String::new();
    let mut byte = [0u8; 1];
    while !log.contains("turnd ready") {
        if err.read(&mut byte).unwrap_or(0) == 0 {
            panic!("turnd did not start: {log}");
        }
        log.push(byte[0] as char);
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let addr = |t: &str| -> SocketAddr {
        log.lines()
            .find(|l| l.contains("listening") && l.contains(&format!("transport={t}")))
            .and_then(|l| l.split("address=").nth(1)?.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let (udp, tcp) = (addr("udp"), addr("tcp"));
    let pid = child.id();

    // Warm up: one allocation made and freed, so one-off buffers are in place.
    let warm = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = TestClient::new("u", "m", "p");
    ask(&warm, udp, &mut c, |c| c.allocate());
    ask(&warm, udp, &mut c, |c| c.allocate());
    ask(&warm, udp, &mut c, |c| c.refresh(0));
    std::thread::sleep(Duration::from_millis(300));

    let base = rss_kib(pid);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut c = TestClient::new("u", "m", "p");
        ask(&s, udp, &mut c, |c| c.allocate());
        let r = ask(&s, udp, &mut c, |c| c.allocate());
        assert!(r.error.is_none(), "{r:?}");
        held.push((s, c));
    }
    std::thread::sleep(Duration::from_millis(300));
    let with_allocations = rss_kib(pid);
    let per_allocation = (with_allocations.saturating_sub(base) * 1024) as f64 / n as f64;

    // Permissions: 1000 on each of the first 8 allocations.
    let before = rss_kib(pid);
    let mut perms = 0usize;
    for (s, c) in held.iter_mut().take(8) {
        for chunk in 0..100u32 {
            let peers: Vec<SocketAddr> = (0..10u32)
                .map(|i| SocketAddr::from((std::net::Ipv4Addr::from(0x0A00_0000 + chunk * 10 + i), 9)))
                .collect();
            let r = ask(s, udp, c, |c| c.create_permission(&peers));
            assert!(r.error.is_none(), "{r:?}");
            perms += 10;
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let per_permission = (rss_kib(pid).saturating_sub(before) * 1024) as f64 / perms as f64;

    // TCP connections, each having sent one Binding request.
    let conns = (n / 2).min(2000);
    let before = rss_kib(pid);
    let mut streams = Vec::with_capacity(conns);
    let mut req = vec![0u8, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    req.extend_from_slice(&[7; 12]);
    for _ in 0..conns {
        let mut s = TcpStream::connect(tcp).unwrap();
        s.write_all(&req).unwrap();
        let mut resp = [0u8; 32];
        s.read_exact(&mut resp).unwrap();
        streams.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let per_connection = (rss_kib(pid).saturating_sub(before) * 1024) as f64 / conns as f64;

    println!("turnd memory, release build, threads = 1, baseline RSS {base} KiB");
    println!("per allocation (UDP, one relay socket): {per_allocation:.0} bytes  ({n} held)");
    println!("per permission:                         {per_permission:.0} bytes  ({perms} held)");
    println!("per TCP connection:                     {per_connection:.0} bytes  ({conns} held)");
    let _ = child.kill();
    let _ = child.wait();
}
