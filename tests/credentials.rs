//! Credential management against the real binary: `turnd user` changes reach a running
//! server within 2 seconds with no restart or signal, REST credentials minted by
//! `turnd credential` work (and expire), SIGHUP reloads (and survives a bad config), and
//! `turnd sessions` / `turnd disconnect` talk to the server over its admin socket.

mod common;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{turn_config, Turnd, BIN};
use turnd::server::testclient::{Response, TestClient};

const REALM: &str = "test.turnd";

fn turnd(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        // A command that refuses its arguments exits without reading stdin.
        let _ = input.write_all(s.as_bytes());
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Udp {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Udp {
    fn new(server: SocketAddr) -> Udp {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Udp { sock, server }
    }

    fn ask(&self, c: &mut TestClient, mut build: impl FnMut(&mut TestClient) -> Vec<u8>) -> Response {
        let first = c.nonce.is_empty();
        for attempt in 0..2 {
            self.sock.send_to(&build(c), self.server).unwrap();
            let mut buf = [0u8; 2048];
            // A socket with a read timeout is never restarted after a signal (EINTR).
            let n = loop {
                match self.sock.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    r => break r.unwrap(),
                }
            };
            let r = c.read(&buf[..n]);
            if !(attempt == 0 && first && r.error == Some(401)) {
                return r;
            }
        }
        unreachable!()
    }
}

/// Allocates with the webrtc-rs `turn` client; true on success.
async fn webrtc_allocates(server: SocketAddr, user: &str, password: &str) -> bool {
    let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = turn::client::ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.into(),
        password: password.into(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    };
    let client = turn::client::Client::new(cfg).await.unwrap();
    client.listen().await.unwrap();
    let ok = client.allocate().await.is_ok();
    let _ = client.close().await;
    ok
}

/// Polls until `webrtc_allocates` returns `want`, for at most `within`; returns the time it took.
async fn until_allocation_is(server: SocketAddr, user: &str, password: &str, want: bool, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if webrtc_allocates(server, user, password).await == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{user}/{password}: allocation never became {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_changes_reach_the_running_server_within_two_seconds() {
    let t = Turnd::start(&turn_config("threads = 2"));
    let cfg = t.config_path.clone();
    let server = t.udp[0];
    assert!(!webrtc_allocates(server, "bob", "first").await);

    let o = turnd(&cfg, &["user", "add", "bob", "--password-stdin"], Some("first\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    let took = until_allocation_is(server, "bob", "first", true, Duration::from_secs(3)).await;
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // An allocation made now must survive the password change and the removal...
    let udp = Udp::new(server);
    let mut held = TestClient::new("bob", REALM, "first");
    assert!(udp.ask(&mut held, |c| c.allocate()).error.is_none());

    let o = turnd(&cfg, &["user", "passwd", "bob", "--password-stdin"], Some("second\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    let took = until_allocation_is(server, "bob", "first", false, Duration::from_secs(3)).await;
    assert!(took <= Duration::from_secs(2), "took {took:?}");
    assert!(webrtc_allocates(server, "bob", "second").await);

    let o = turnd(&cfg, &["user", "remove", "bob"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let took = until_allocation_is(server, "bob", "second", false, Duration::from_secs(3)).await;
    assert!(took <= Duration::from_secs(2), "took {took:?}");

    // ...which it did (still listed), but it can no longer be refreshed.
    let o = turnd(&cfg, &["sessions", "--user", "bob"], None);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&udp.sock.local_addr().unwrap().to_string()),
        "{o:?}"
    );
    assert_eq!(udp.ask(&mut held, |c| c.refresh(600)).error, Some(401));
}

#[test]
fn user_add_generates_a_password_once_and_the_file_holds_only_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    let users = dir.path().join("state/users.toml");
    std::fs::write(
        &cfg,
        format!("realm = \"{REALM}\"\n[auth]\nusers_file = \"{}\"\n", users.display()),
    )
    .unwrap();
    let o = turnd(&cfg, &["user", "add", "carol"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let password = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(password.len() >= 24, "a strong password: {password:?}");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains(&password), "the password is never stored");
    assert!(text.contains("md5 = ") && text.contains("sha256 = "));
    let keys = turnd::auth::Keys::derive("carol", REALM, &password);
    let file = turnd::auth::users_file::UsersFile::load(&users).unwrap();
    assert_eq!(
        file.users[0].keys, keys,
        "the stored keys are the RFC 8489 long-term keys"
    );
    assert_eq!(std::fs::metadata(&users).unwrap().permissions().mode() & 0o777, 0o600);
    // The password was printed once: listing shows names and realms only.
    let o = turnd(&cfg, &["user", "list"], None);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("carol\t{REALM}\tusers file\n")
    );
    // Adding again is an error.
    let o = turnd(&cfg, &["user", "add", "carol", "--password-stdin"], Some("x\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
}

#[test]
fn a_user_of_another_realm_is_refused_and_inline_users_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    let users = dir.path().join("u.toml");
    std::fs::write(
        &cfg,
        format!(
            "realm = \"{REALM}\"\n[auth]\nusers_file = \"{}\"\n[[auth.users]]\nname = \"alice\"\npassword = \"secret\"\n",
            users.display()
        ),
    )
    .unwrap();
    // A key made for another realm could never authenticate: refused, naming the realm.
    for args in [
        &["user", "add", "bob", "--realm", "other.realm", "--password-stdin"][..],
        &["user", "passwd", "bob", "--realm", "other.realm", "--password-stdin"],
    ] {
        let o = turnd(&cfg, args, Some("pw\n"));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("the server's realm is \"{REALM}\"")) && err.contains("\"other.realm\""),
            "{err}"
        );
    }
    assert!(!users.exists(), "nothing was written");
    // The configured realm, spelled out, is fine.
    let o = turnd(
        &cfg,
        &["user", "add", "bob", "--realm", REALM, "--password-stdin"],
        Some("pw\n"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // An inline user cannot be shadowed from the users file.
    let o = turnd(&cfg, &["user", "add", "alice", "--password-stdin"], Some("pw\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("[[auth.users]]"), "{}", stderr(&o));
    // Both sources are listed, each marked.
    let o = turnd(&cfg, &["user", "list"], None);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("bob\t{REALM}\tusers file\nalice\t{REALM}\tconfig file\n")
    );
}

#[test]
fn bad_names_and_unknown_users_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\nusers_file = \"{}\"\n", dir.path().join("u.toml").display()),
    )
    .unwrap();
    let long = "x".repeat(257);
    for (name, msg) in [
        ("", "empty"),
        ("a:b", "':'"),
        ("tab\there", "control characters"),
        (long.as_str(), "longer than 256 bytes"),
    ] {
        let o = turnd(&cfg, &["user", "add", name, "--password-stdin"], Some("pw\n"));
        assert_eq!(o.status.code(), Some(1), "{name:?}");
        assert!(stderr(&o).contains(msg), "{name:?}: {}", stderr(&o));
    }
    for args in [
        &["user", "remove", "nobody"][..],
        &["user", "passwd", "nobody", "--password-stdin"],
    ] {
        let o = turnd(&cfg, args, Some("pw\n"));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains("no user \"nobody\""), "{}", stderr(&o));
    }
    let o = turnd(&cfg, &["user", "add", "dave", "--password-stdin"], Some("\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty"), "{}", stderr(&o));
}

#[test]
fn twenty_concurrent_adds_leave_twenty_users() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\nusers_file = \"{}\"\n", dir.path().join("u.toml").display()),
    )
    .unwrap();
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(BIN)
                .args(["user", "add", &format!("user{i}"), "--config"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = turnd(&cfg, &["user", "list"], None);
    let listed = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(listed, 20);
}

#[test]
fn a_corrupt_users_file_is_never_overwritten_and_the_server_keeps_the_last_good_set() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let cfg = t.config_path.clone();
    let users = cfg.parent().unwrap().join("users.toml");
    let o = turnd(&cfg, &["user", "add", "erin", "--password-stdin"], Some("pw\n"));
    assert!(o.status.success(), "{}", stderr(&o));
    let udp = Udp::new(t.udp[0]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while udp
        .ask(&mut TestClient::new("erin", REALM, "pw"), |c| c.allocate())
        .error
        .is_some()
    {
        assert!(Instant::now() < deadline, "erin never became usable");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&users, "this is [not a users file\n").unwrap();
    let o = turnd(&cfg, &["user", "add", "frank", "--password-stdin"], Some("pw\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("left untouched") && stderr(&o).contains(".bad"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&users).unwrap(), "this is [not a users file\n");
    // The server logs why and keeps erin.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let l = t.log.recv_timeout(Duration::from_millis(200)).unwrap_or_default();
        if l.contains("users file unusable") && l.contains("keeping the last good set") {
            break;
        }
        assert!(Instant::now() < deadline, "no log line about the corrupt users file");
    }
    assert!(udp
        .ask(&mut TestClient::new("erin", REALM, "pw"), |c| c.allocate())
        .error
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credentials_minted_by_the_cli_allocate_and_expire() {
    let t = Turnd::start(&turn_config("threads = 1"));
    let cfg = t.config_path.clone();
    let o = turnd(&cfg, &["credential", "--user", "web", "--format", "json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (user, pass) = (v["username"].as_str().unwrap(), v["password"].as_str().unwrap());
    assert!(user.ends_with(":web"));
    assert_eq!(v["ttl"], 86400);
    assert!(webrtc_allocates(t.udp[0], user, pass).await);

    // A short TTL is written into the username; that the server refuses it once it has
    // passed is checked on the engine's clock (turn_engine.rs), with no sleep here.
    let o = turnd(&cfg, &["credential", "--ttl", "90s", "--format", "json"], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = v["username"]
        .as_str()
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((now + 89..=now + 91).contains(&expiry), "expiry {expiry}, now {now}");
    assert_eq!(v["ttl"], 90);

    // The text format, and no secret: a clear error.
    let o = turnd(&cfg, &["credential"], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("credential: "));
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "[[listen]]\naddress = \"127.0.0.1:3478\"\n").unwrap();
    let o = turnd(&bare, &["credential"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no TURN REST API secret"), "{}", stderr(&o));
}

#[test]
fn sighup_reloads_and_a_bad_config_keeps_the_old_one() {
    let t = Turnd::start(&turn_config("threads = 2"));
    let cfg = t.config_path.clone();
    let good = std::fs::read_to_string(&cfg).unwrap();
    let udp = Udp::new(t.udp[0]);
    assert!(udp
        .ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate())
        .error
        .is_none());

    // A config that does not validate: logged, and the old one stays.
    std::fs::write(&cfg, good.replace("realm = ", "colour = \"blue\"\nrealm = ")).unwrap();
    let hup = || {
        Command::new("kill")
            .args(["-HUP", &t.pid().to_string()])
            .status()
            .unwrap()
    };
    hup();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen
        .iter()
        .any(|l: &String| l.contains("config reload failed") && l.contains("unknown field `colour`"))
    {
        assert!(Instant::now() < deadline, "no reload failure logged: {seen:?}");
        if let Ok(l) = t.log.recv_timeout(Duration::from_millis(100)) {
            seen.push(l);
        }
    }
    assert!(Udp::new(t.udp[0])
        .ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate())
        .error
        .is_none());

    // A good new config: alice's password changes, and a denied peer becomes allowed.
    std::fs::write(
        &cfg,
        good.replace("\"wonderland\"", "\"looking-glass\"")
            .replace("allow = [", "allow = [\"10.0.0.0/8\", "),
    )
    .unwrap();
    hup();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let old = Udp::new(t.udp[0]).ask(&mut TestClient::new("alice", REALM, "wonderland"), |c| c.allocate());
        if old.error == Some(401) {
            break;
        }
        assert!(Instant::now() < deadline, "the reload never took effect");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fresh = Udp::new(t.udp[0]);
    let mut alice = TestClient::new("alice", REALM, "looking-glass");
    assert!(fresh.ask(&mut alice, |c| c.allocate()).error.is_none());
    // Each shard takes the new engine config on its own task: bounded wait.
    let private: SocketAddr = "10.1.2.3:9".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fresh
        .ask(&mut alice, |c| c.create_permission(&[private]))
        .error
        .is_some()
    {
        assert!(Instant::now() < deadline, "peers.allow never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sessions_lists_an_allocation_and_disconnect_ends_it() {
    let t = Turnd::start(&turn_config("threads = 2"));
    let cfg = t.config_path.clone();
    let udp = Udp::new(t.udp[0]);
    let mut alice = TestClient::new("alice", REALM, "wonderland");
    let r = udp.ask(&mut alice, |c| c.allocate());
    assert!(r.error.is_none());
    let o = turnd(&cfg, &["sessions"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let me = udp.sock.local_addr().unwrap().to_string();
    let line = out.lines().find(|l| l.contains(&me)).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("alice") && line.contains(&r.relayed[0].to_string()) && line.contains("udp"),
        "{line}"
    );
    assert!(out.lines().next().unwrap().contains("TO_PEER_BYTES"));

    let o = turnd(&cfg, &["sessions", "--user", "nobody"], None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 1, "header only");

    let o = turnd(&cfg, &["disconnect", "alice"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("ended 1 allocation"),
        "{o:?}"
    );
    assert_eq!(
        udp.ask(&mut alice, |c| c.refresh(600)).error,
        Some(437),
        "the next Refresh fails"
    );
    let o = turnd(&cfg, &["sessions"], None);
    assert!(!String::from_utf8_lossy(&o.stdout).contains(&me));
    // The admin socket is private to its owner.
    let sock = cfg.parent().unwrap().join("admin.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn sessions_without_a_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("turnd.toml");
    std::fs::write(
        &cfg,
        format!("[admin]\nsocket = \"{}\"\n", dir.path().join("none.sock").display()),
    )
    .unwrap();
    let o = turnd(&cfg, &["sessions"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is `turnd serve` running?"), "{}", stderr(&o));
}
