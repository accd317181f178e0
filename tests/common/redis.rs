//! A real `redis-server` (Debian's package, from .ci/deps) on a free loopback port, with its
//! data in a temporary directory (append-only file on, so a restart keeps it). Stopped and
//! removed on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// With TLS: the CA file that signed the server's certificate.
    pub ca: Option<PathBuf>,
    password: Option<String>,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Redis {
    pub fn start() -> Redis {
        Self::launch(None, false)
    }

    /// In the network namespace `ns` (on its loopback).
    pub fn start_in_netns(ns: &str) -> Redis {
        let mut r = Self::prepare(None, false);
        r.netns = Some(ns.to_string());
        r.run();
        r
    }

    /// With `requirepass`.
    pub fn with_password(password: &str) -> Redis {
        Self::launch(Some(password), false)
    }

    /// TLS only (no plain port), with a certificate for 127.0.0.1 from a CA of its own.
    pub fn with_tls() -> Redis {
        Self::launch(None, true)
    }

    fn launch(password: Option<&str>, tls: bool) -> Redis {
        let mut r = Self::prepare(password, tls);
        r.run();
        r
    }

    fn prepare(password: Option<&str>, tls: bool) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--daemonize",
            "no",
            "--dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(dir.path().display().to_string());
        args.extend(["--logfile".into(), dir.path().join("redis.log").display().to_string()]);
        if let Some(p) = password {
            args.extend(["--requirepass".into(), p.into()]);
        }
        let mut ca = None;
        if tls {
            let (ca_pem, cert_pem, key_pem) = certificates();
            let write = |name: &str, text: &str| {
                let p = dir.path().join(name);
                std::fs::write(&p, text).unwrap();
                p.display().to_string()
            };
            let ca_path = write("ca.pem", &ca_pem);
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                write("cert.pem", &cert_pem),
                "--tls-key-file".into(),
                write("key.pem", &key_pem),
                "--tls-ca-cert-file".into(),
                ca_path.clone(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]);
            ca = Some(PathBuf::from(ca_path));
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        Redis {
            child: None,
            port,
            dir,
            args,
            ca,
            password: password.map(str::to_string),
            netns: None,
        }
    }

    fn run(&mut self) {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        let child = cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server missing: install Debian's redis-server package (bash .ci/deps)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.netns.is_some() {
            while self.cli(&["PING"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "redis-server did not start: {}", self.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// The URL turnd's `[cluster] redis` takes.
    pub fn url(&self) -> String {
        let auth = self.password.as_ref().map(|p| format!(":{p}@")).unwrap_or_default();
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Stops it (SIGTERM; it writes its append-only file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// Restarts it on `port` instead.
    pub fn move_to(&mut self, port: u16) {
        self.stop();
        let old = self.port.to_string();
        for a in self.args.iter_mut() {
            if *a == old {
                *a = port.to_string();
            }
        }
        self.port = port;
        self.run();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    /// SIGSTOP: it keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args([sig, &c.id().to_string()]).status();
        }
    }

    /// Runs `redis-cli` against it and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "redis-cli"]);
                c
            }
            None => Command::new("redis-cli"),
        };
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["-a", p, "--no-auth-warning"]);
        }
        if let Some(ca) = &self.ca {
            cmd.args(["--tls", "--cacert", &ca.display().to_string()]);
        }
        let out = cmd.args(args).output().expect("redis-cli (Debian's redis-tools)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A CA, and a server certificate for 127.0.0.1 it signed (PEM: CA, certificate, key).
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
