//! `turnd sessions` and `turnd disconnect`: clients of the server's admin socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::net::SessionInfo;

fn ask(config: &Config, request: &str) -> Result<serde_json::Value, String> {
    let path = &config.admin.socket;
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach the server at {} (admin.socket): {e}; is `turnd serve` running?",
            path.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(answer.trim()).map_err(|e| format!("bad answer from the server: {e}"))?;
    match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(v),
    }
}

pub fn sessions(config: &Config, user: Option<&str>) -> ExitCode {
    let request = match user {
        Some(u) => format!("sessions {u}"),
        None => "sessions".into(),
    };
    let v = match ask(config, &request) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let list: Vec<SessionInfo> = serde_json::from_value(v["sessions"].clone()).unwrap_or_default();
    println!(
        "{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
        "USER", "CLIENT", "PROTO", "RELAYED", "AGE_S", "TO_PEER_BYTES", "TO_CLIENT_BYTES"
    );
    for s in &list {
        let relayed: Vec<String> = s.relayed.iter().map(ToString::to_string).collect();
        println!(
            "{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
            s.user,
            s.client.to_string(),
            s.transport,
            relayed.join(","),
            s.age_s,
            s.to_peer_bytes,
            s.to_client_bytes
        );
        // A TCP allocation's data connections, each under its allocation.
        for c in &s.connections {
            println!(
                "{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
                "  tcp connection",
                c.peer.to_string(),
                "",
                c.state,
                "",
                c.to_peer_bytes,
                c.to_client_bytes
            );
        }
    }
    eprintln!("{} allocation(s)", list.len());
    ExitCode::SUCCESS
}

pub fn disconnect(config: &Config, user: &str) -> ExitCode {
    if user.is_empty() || user.chars().any(char::is_whitespace) {
        eprintln!("turnd: the user name must be non-empty and have no spaces");
        return ExitCode::from(1);
    }
    match ask(config, &format!("disconnect {user}")) {
        Ok(v) => {
            println!("ended {} allocation(s) of {user:?}", v["disconnected"]);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turnd: {e}");
            ExitCode::from(1)
        }
    }
}
