//! `turnd sessions` and `turnd disconnect`: clients of the server's admin socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
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

/// Every node's answer to `request` (with `[cluster]`), or an error to print.
fn ask_cluster(
    cluster: &crate::config::ClusterConfig,
    request: crate::cluster::command::Request,
) -> Result<Vec<crate::cluster::command::Answer>, String> {
    let r = super::users::block_on(async {
        let store = crate::cluster::Store::new(cluster)?;
        crate::cluster::command::ask_all(&store, request).await
    })?;
    let (answers, heard) = r.map_err(|e| e.to_string())?;
    if answers.len() < heard {
        eprintln!(
            "turnd: {} of {heard} nodes did not answer within {}s",
            heard - answers.len(),
            crate::cluster::command::ANSWER_WAIT.as_secs()
        );
    }
    Ok(answers)
}

/// `turnd sessions`: this server's allocations over the admin socket, or with `[cluster]`
/// (and no `--local`) every node's, each tagged with its node.
pub fn sessions(config: &Config, user: Option<&str>, local: bool) -> Result<(), String> {
    let list: Vec<SessionInfo> = match (&config.cluster, local) {
        (Some(cluster), false) => {
            let request = crate::cluster::command::Request::Sessions {
                user: user.map(str::to_string),
            };
            let mut all: Vec<SessionInfo> = ask_cluster(cluster, request)?
                .into_iter()
                .flat_map(|a| a.sessions)
                .collect();
            all.sort_by(|a, b| (&a.node, &a.user, a.client).cmp(&(&b.node, &b.user, b.client)));
            all
        }
        _ => {
            let request = match user {
                Some(u) => format!("sessions {u}"),
                None => "sessions".into(),
            };
            serde_json::from_value(ask(config, &request)?["sessions"].clone()).unwrap_or_default()
        }
    };
    let with_node = list.iter().any(|s| s.node.is_some());
    let node = |n: Option<&str>| {
        if with_node {
            format!("{:<16} ", n.unwrap_or(""))
        } else {
            String::new()
        }
    };
    println!(
        "{}{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
        node(Some("NODE")),
        "USER",
        "CLIENT",
        "PROTO",
        "RELAYED",
        "AGE_S",
        "TO_PEER_BYTES",
        "TO_CLIENT_BYTES"
    );
    for s in &list {
        let relayed: Vec<String> = s.relayed.iter().map(ToString::to_string).collect();
        println!(
            "{}{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
            node(s.node.as_deref()),
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
                "{}{:<24} {:<26} {:<5} {:<40} {:>8} {:>14} {:>14}",
                node(None),
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
    Ok(())
}

/// `turnd disconnect USER`: on this server, or with `[cluster]` on every node.
pub fn disconnect(config: &Config, user: &str) -> Result<(), String> {
    if user.is_empty() || user.chars().any(char::is_whitespace) {
        return Err("the user name must be non-empty and have no spaces".into());
    }
    let ended = match &config.cluster {
        Some(cluster) => {
            let request = crate::cluster::command::Request::Disconnect { user: user.to_string() };
            ask_cluster(cluster, request).map(|a| {
                let n: usize = a.iter().map(|a| a.disconnected).sum();
                format!("{n} allocation(s) of {user:?} on {} node(s)", a.len())
            })
        }
        None => ask(config, &format!("disconnect {user}"))
            .map(|v| format!("{} allocation(s) of {user:?}", v["disconnected"])),
    };
    println!("ended {}", ended?);
    Ok(())
}
