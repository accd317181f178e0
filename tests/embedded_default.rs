//! The README's first command: `turnd serve` with no config file at all serves STUN on the
//! embedded default, 0.0.0.0:3478 and [::]:3478, UDP and TCP.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{binding_request, client_for, BIN};

#[test]
fn serve_with_no_config_answers_on_3478() {
    if std::path::Path::new(turnd::config::SYSTEM_PATH).exists() {
        eprintln!("skipping: {} exists on this machine", turnd::config::SYSTEM_PATH);
        return;
    }
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_remove("TURND_CONFIG")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = scopeguard(&mut child);
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
    assert_eq!(answered.len(), 2);
    drop(guard);
}

struct Kill<'a>(&'a mut std::process::Child);
impl Drop for Kill<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn scopeguard(c: &mut std::process::Child) -> Kill<'_> {
    Kill(c)
}
