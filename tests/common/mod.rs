//! Test harness: run the real `turnd` binary on a temporary config and learn the ports it
//! bound from its "listening" log lines (so tests never race for a free port).
#![allow(dead_code)]

pub mod browser;
pub mod lab;
pub mod redis;
pub mod tls;
pub mod uclient;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_turnd");

pub struct Turnd {
    child: Child,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub log: mpsc::Receiver<String>,
    /// The log lines up to "turnd ready".
    pub startup: Vec<String>,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Turnd {
    /// Starts `turnd serve` with `config` and waits until it reports ready.
    pub fn start(config: &str) -> Turnd {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(config, dir)
    }

    /// Starts `turnd serve` with `config` and extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Turnd {
        Self::launch(config, tempfile::tempdir().unwrap(), env)
    }

    /// Starts `turnd serve` with `config` written into `dir`.
    pub fn start_in(config: &str, dir: tempfile::TempDir) -> Turnd {
        Self::launch(config, dir, &[])
    }

    /// Starts `turnd serve` with `config` in a network namespace of its own (loopback up):
    /// fixed ports and the addresses of 127.0.0.0/8 are surely free there. Reach it from a
    /// thread in that namespace: [`Turnd::inside`].
    pub fn start_isolated(config: &str) -> Turnd {
        let prefix = [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
            BIN,
        ];
        Self::launch_with(&prefix, config, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts `turnd serve` with `config` in the named network namespace.
    pub fn start_in_netns(ns: &str, config: &str) -> Turnd {
        Self::launch_with(
            &["ip", "netns", "exec", ns, BIN],
            config,
            tempfile::tempdir().unwrap(),
            &[],
        )
    }

    /// Runs `f` in this server's network namespace.
    pub fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns_of(self.pid(), f)
    }

    fn launch(config: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Turnd {
        Self::launch_with(&[BIN], config, dir, env)
    }

    fn launch_with(prefix: &[&str], config: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Turnd {
        let config_path = dir.path().join("turnd.toml");
        std::fs::write(&config_path, isolate(config, dir.path())).unwrap();
        let mut child = Command::new(prefix[0])
            .args(&prefix[1..])
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {prefix:?}: {e} (ip and unshare come from .ci/deps)"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut udp, mut tcp, mut http) = (vec![], vec![], None);
        let mut startup = Vec::new();
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(l) => l,
                Err(_) => {
                    let _ = child.kill();
                    panic!("turnd did not become ready; exit: {:?}", child.try_wait());
                }
            };
            if line.contains("listening") {
                let addr: SocketAddr = field(&line, "address=").parse().unwrap();
                match field(&line, "transport=") {
                    "udp" => udp.push(addr),
                    "tcp" => tcp.push(addr),
                    "http" => http = Some(addr),
                    "tls" => tcp.push(addr),
                    t => panic!("unknown transport {t}"),
                }
            }
            let ready = line.contains("turnd ready");
            startup.push(line);
            if ready {
                break;
            }
        }
        Turnd {
            child,
            udp,
            tcp,
            http,
            log: rx,
            startup,
            _dir: dir,
            config_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM, waits for the exit, and returns every line the server logged that the
    /// test has not read yet.
    pub fn log_until_exit(self) -> Vec<String> {
        let Turnd { log, .. } = &self;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let mut lines = Vec::new();
        // The reader thread ends at EOF, when the process has exited.
        while let Ok(l) = log.recv_timeout(Duration::from_secs(10)) {
            lines.push(l);
        }
        lines
    }

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("turnd did not exit on SIGTERM");
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// turnd-load, built from this workspace (a no-op when it is up to date).
#[allow(dead_code)]
pub fn turnd_load() -> PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "turnd-load"])
        .current_dir(root)
        .status()
        .expect("cargo")
        .success();
    assert!(ok, "cannot build turnd-load");
    root.join("target/debug/turnd-load")
}

/// Gives a test config its own users file, admin socket and metrics port, unless it names
/// them, so that tests never touch the machine's real ones.
pub fn isolate(config: &str, dir: &std::path::Path) -> String {
    let mut c = config.to_string();
    if !c.contains("users_file") {
        let line = format!("users_file = \"{}\"\n", dir.join("users.toml").display());
        if c.contains("[auth]\n") {
            c = c.replacen("[auth]\n", &format!("[auth]\n{line}"), 1);
        } else {
            c.push_str(&format!("\n[auth]\n{line}"));
        }
    }
    if !c.contains("[metrics]") {
        // Never the default 127.0.0.1:9641, which another server on the machine may hold.
        c.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    }
    if !c.contains("[admin]") {
        c.push_str(&format!(
            "\n[admin]\nsocket = \"{}\"\n",
            dir.join("admin.sock").display()
        ));
    }
    c
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(key).unwrap_or_else(|| panic!("{key} missing in {line}")) + key.len();
    let rest = &line[start..];
    rest.split_whitespace().next().unwrap().trim_matches('"')
}

/// A config with one listener on 127.0.0.1 and one on [::1], both on port 0.
pub fn loopback_config(extra: &str) -> String {
    format!(
        "{extra}\n[[listen]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"udp\", \"tcp\"]\n\n[[listen]]\naddress = \"[::1]:0\"\nprotocols = [\"udp\", \"tcp\"]\n"
    )
}

/// A Binding request with the given transaction ID and no attributes.
pub fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
    m.extend_from_slice(&tid);
    m
}

/// A UDP socket on the loopback of `server`'s family, with a short read timeout.
pub fn client_for(server: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if server.is_ipv6() {
        "[::1]:0".parse().unwrap()
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let s = UdpSocket::bind(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// The malformed datagrams every listener must drop without an answer: (name, bytes).
pub fn malformed_table() -> Vec<(&'static str, Vec<u8>)> {
    let tid = [0xAB; 12];
    let good = binding_request(tid);
    let with_len = |len: u16, body: &[u8]| {
        let mut m = good.clone();
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    let mut bad_cookie = good.clone();
    bad_cookie[4] ^= 0xFF;
    let mut rfc3489 = good.clone();
    rfc3489[4..8].copy_from_slice(&[1, 2, 3, 4]);
    let mut top_bits = good.clone();
    top_bits[0] |= 0xC0;
    let mut success = good.clone();
    success[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
    let mut error = good.clone();
    error[0..2].copy_from_slice(&0x0111u16.to_be_bytes());
    let mut indication = good.clone();
    indication[0..2].copy_from_slice(&0x0011u16.to_be_bytes());
    // A valid FINGERPRINT, then variants of it.
    let with_fp = {
        let mut m = with_len(8, &[0x80, 0x28, 0, 4, 0, 0, 0, 0]);
        let crc = crc32fast::hash(&m[..20]) ^ 0x5354_554E;
        m[24..28].copy_from_slice(&crc.to_be_bytes());
        m
    };
    let mut bad_fp = with_fp.clone();
    bad_fp[27] ^= 1;
    let mut fp_not_last = with_fp.clone();
    fp_not_last[2..4].copy_from_slice(&16u16.to_be_bytes());
    fp_not_last.extend_from_slice(&[0x80, 0x22, 0, 4, b't', b'e', b's', b't']);
    vec![
        ("empty datagram", vec![]),
        ("one byte", vec![0x00]),
        ("19-byte header", good[..19].to_vec()),
        ("bad magic cookie", bad_cookie),
        ("RFC 3489 request without cookie", rfc3489),
        ("leading bits set", top_bits),
        ("length not a multiple of 4", with_len(2, &[0, 0])),
        ("length longer than datagram", with_len(8, &[0x80, 0x22, 0, 0])),
        ("trailing bytes after length", {
            let mut m = good.clone();
            m.extend_from_slice(&[0, 0, 0, 0]);
            m
        }),
        ("truncated attribute header", with_len(4, &[0x80, 0x22, 0x00, 0x08])),
        (
            "attribute value past the end",
            with_len(8, &[0x00, 0x06, 0x00, 0x09, b'a', b'b', b'c', b'd']),
        ),
        ("bad FINGERPRINT", bad_fp),
        ("attribute after FINGERPRINT", fp_not_last),
        (
            "FINGERPRINT of wrong size",
            with_len(12, &[0x80, 0x28, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]),
        ),
        ("success response sent to server", success),
        ("error response sent to server", error),
        ("indication sent to server", indication),
        (
            "ChannelData on unbound channel",
            vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4],
        ),
        (
            "random garbage",
            (0..100u8).map(|i| i.wrapping_mul(37) | 0x80).collect(),
        ),
        (
            "DTLS ClientHello prefix",
            vec![
                0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x01, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ]
}

/// A config for TURN tests: loopback listeners on port 0, relays on 127.0.0.1 and ::1,
/// loopback peers allowed, one user and one REST secret.
pub fn turn_config(extra: &str) -> String {
    format!(
        r#"realm = "test.turnd"
{extra}
[[listen]]
address = "127.0.0.1:0"
protocols = ["udp", "tcp"]

[[listen]]
address = "[::1]:0"
protocols = ["udp", "tcp"]

[relay]
addresses = ["127.0.0.1", "::1"]

[auth]
secrets = ["rest-secret"]
[[auth.users]]
name = "alice"
password = "wonderland"

[peers]
allow = ["127.0.0.0/8", "::1"]
"#
    )
}

/// The in-process server on real sockets, with its metric handles.
pub struct InProcess {
    pub server: Option<turnd::net::Server>,
    pub metrics: std::sync::Arc<turnd::metrics::Metrics>,
}

impl InProcess {
    pub fn start(config: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let config =
            turnd::config::Config::parse(&isolate(config, dir.path()), turnd::config::Source::Embedded).unwrap();
        let metrics = std::sync::Arc::new(turnd::metrics::Metrics::new());
        let shared = turnd::server::Shared::new(
            std::sync::Arc::new(turnd::cli::credentials(&config)),
            turnd::auth::NonceKey::random().unwrap(),
        );
        let server = turnd::net::Server::start(
            &config,
            turnd::cli::engine_config(&config),
            std::sync::Arc::new(shared),
            metrics.clone(),
            None,
        )
        .unwrap();
        InProcess {
            server: Some(server),
            metrics,
        }
    }

    pub fn addr(&self, transport: turnd::server::Transport, v6: bool) -> SocketAddr {
        self.server
            .as_ref()
            .unwrap()
            .bound()
            .iter()
            .find(|b| b.transport == transport && b.address.is_ipv6() == v6)
            .unwrap()
            .address
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

/// Runs `turnd ARGS` in a network namespace of its own (`unshare --net`, loopback up), where
/// fixed ports such as 3478 and 9641 are surely free whatever else the machine runs. Needs
/// root, as CI has; the namespace goes away with the process.
pub fn spawn_in_own_netns(args: &[&str], env: &[(&str, &str)]) -> Child {
    let child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
            BIN,
        ])
        .args(args)
        .env_remove("TURND_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) and ip (iproute2) must be installed: bash .ci/deps");
    // Wait until the process has its own namespace, so that `in_netns_of` enters that one.
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_link(format!("/proc/{}/ns/net", child.id())) {
            Ok(ns) if ns != own => break,
            _ if std::time::Instant::now() > deadline => panic!("unshare --net did not take effect (not root?)"),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    child
}

/// Runs `f` on a thread that has entered the network namespace of process `pid`: sockets
/// it opens live there.
pub fn in_netns_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the process's namespace");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    })
}
