//! The README's first command: `turnd serve` with no config file at all serves STUN on the
//! embedded default, 0.0.0.0:3478 and [::]:3478, UDP and TCP, and metrics on
//! 127.0.0.1:9641. A config file without `[metrics]` serves metrics there too. Each server
//! runs in a network namespace of its own, where these fixed ports are surely free.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::Duration;

use common::{binding_request, client_for, in_netns_of, spawn_in_own_netns};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status line of `GET path`, retried while the server is still starting.
fn http_get(addr: SocketAddr, path: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr}");
}

#[test]
fn serve_with_no_config_answers_on_3478_and_serves_metrics() {
    if std::path::Path::new(turnd::config::SYSTEM_PATH).exists() {
        panic!(
            "{} exists on this machine, so `turnd serve` would not run on the embedded default",
            turnd::config::SYSTEM_PATH
        );
    }
    let server = Kill(spawn_in_own_netns(&["serve"], &[]));
    let answered = in_netns_of(server.0.id(), || {
        let mut answered = Vec::new();
        for server in ["127.0.0.1:3478", "[::1]:3478"] {
            let server: SocketAddr = server.parse().unwrap();
            let sock = client_for(server);
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let mut ok = false;
            // The server may still be binding: retry for up to ten seconds.
            for _ in 0..30 {
                let _ = sock.send_to(&binding_request([1; 12]), server);
                let mut buf = [0u8; 256];
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    ok = from == server && n == 32 + if server.is_ipv6() { 12 } else { 0 };
                    break;
                }
            }
            assert!(ok, "no UDP answer from {server}");
            let mut s = TcpStream::connect(server).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(&binding_request([2; 12])).unwrap();
            let mut head = [0u8; 20];
            s.read_exact(&mut head).unwrap();
            assert_eq!(&head[..2], &[0x01, 0x01], "Binding success over TCP from {server}");
            answered.push(server);
        }
        let metrics = http_get("127.0.0.1:9641".parse().unwrap(), "/metrics");
        assert!(
            metrics.starts_with("HTTP/1.1 200") && metrics.contains("turnd_stun_binding_requests_total"),
            "{metrics}"
        );
        answered
    });
    assert_eq!(answered.len(), 2);
}

#[test]
fn a_config_file_without_metrics_serves_them_on_loopback_and_off_turns_them_off() {
    let dir = tempfile::tempdir().unwrap();
    // The README's TURN example, as a user would write it: no [metrics] section.
    let readme = format!(
        "realm = \"turn.example.org\"\n[auth]\nusers_file = \"{}\"\nsecrets = [\"a long random string\"]\n[[auth.users]]\nname = \"alice\"\npassword = \"secret\"\n",
        dir.path().join("users.toml").display()
    );
    for (name, extra, served) in [
        ("on.toml", "", true),
        ("off.toml", "[metrics]\nlisten = \"off\"\n", false),
    ] {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "{readme}{extra}\n[admin]\nsocket = \"{}\"\n",
                dir.path().join(format!("{name}.sock")).display()
            ),
        )
        .unwrap();
        let server = Kill(spawn_in_own_netns(&["serve", "--config", path.to_str().unwrap()], &[]));
        in_netns_of(server.0.id(), || {
            // STUN answers first, so the server is up before metrics are asked for.
            let stun: SocketAddr = "127.0.0.1:3478".parse().unwrap();
            let sock = client_for(stun);
            sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            let up = (0..30).any(|_| {
                let _ = sock.send_to(&binding_request([3; 12]), stun);
                sock.recv_from(&mut [0u8; 256]).is_ok()
            });
            assert!(up, "{name}: no STUN answer");
            let metrics = TcpStream::connect("127.0.0.1:9641");
            assert_eq!(metrics.is_ok(), served, "{name}: metrics on 127.0.0.1:9641");
            if served {
                let m = http_get("127.0.0.1:9641".parse().unwrap(), "/metrics");
                assert!(m.starts_with("HTTP/1.1 200"), "{m}");
            }
        });
    }
}
