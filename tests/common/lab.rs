//! Network namespaces for tests that need a real network: hosts joined by veth pairs, with
//! addresses from the benchmarking ranges only: 198.18.0.0/15, and 2001:2::/48 for IPv6. Every namespace a `Lab` makes
//! has a name unique to this process and this lab, so tests run in parallel, and is deleted
//! when the lab is dropped, also when the test fails. Needs root, as CI has.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static LABS: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces, deleted together.
pub struct Lab {
    tag: String,
    made: Vec<String>,
}

/// One namespace of a lab: a host or a router.
#[derive(Debug, Clone)]
pub struct Ns {
    pub name: String,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (ip and nft come from .ci/deps; root is needed)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Lab {
    pub fn new() -> Lab {
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        Lab {
            tag: format!("turnd-test-{}-{n}", std::process::id()),
            made: Vec::new(),
        }
    }

    /// A new namespace with its loopback up.
    pub fn netns(&mut self, role: &str) -> Ns {
        let name = format!("{}-{role}", self.tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        self.made.push(name.clone());
        let ns = Ns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// A veth pair from `a` to `b`, up, with these addresses (CIDR) on each end.
    pub fn link(&self, a: &Ns, a_if: &str, a_addrs: &[&str], b: &Ns, b_if: &str, b_addrs: &[&str]) {
        for addr in a_addrs.iter().chain(b_addrs) {
            // The benchmarking ranges: 198.18.0.0/15 (RFC 2544) and, for IPv6, 2001:2::/48
            // (RFC 5180), its IPv6 counterpart.
            assert!(
                addr.starts_with("198.18.") || addr.starts_with("198.19.") || addr.starts_with("2001:2::"),
                "{addr}: 198.18.0.0/15 (or 2001:2::/48) only"
            );
        }
        run(Command::new("ip").args([
            "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ]));
        for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
            for addr in addrs {
                ns.sh(&format!("ip addr add {addr} dev {ifname}"));
            }
            ns.sh(&format!("ip link set {ifname} up"));
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in self.made.drain(..).rev() {
            // Kill what still runs inside, then delete.
            let _ = Command::new("ip").args(["netns", "pids", &name]).output().map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            });
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

impl Ns {
    /// Runs a shell command inside; panics with its stderr when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread inside this namespace: sockets it opens live here.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("the namespace's file");
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns (needs root)");
                f()
            })
            .join()
            .expect("the thread in the namespace panicked")
        })
    }

    /// A command that runs `program` inside.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}
