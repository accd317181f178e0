//! `turnd cluster status`: the nodes as Redis has them.

use std::process::ExitCode;

use crate::cluster::{nodes, unix_ms, NodeState, Store};
use crate::config::Config;

/// One node, as `turnd cluster status --json` prints it.
#[derive(serde::Serialize)]
struct NodeRow {
    node: String,
    /// "live", "draining", or "dead" (heartbeat stopped; the entry goes after ten lease TTLs).
    state: &'static str,
    last_heartbeat_ms_ago: u64,
    /// What the node last published; null once it stopped.
    load: Option<NodeState>,
}

pub fn status(config: &Config, json: bool) -> ExitCode {
    let Some(cluster) = &config.cluster else {
        eprintln!("turnd: no [cluster] in {}: this is a single node", config.source);
        return ExitCode::from(1);
    };
    let r = super::users::block_on(async {
        let store = Store::new(cluster)?;
        let mut conn = store.connect().await?;
        nodes(&store, &mut conn).await
    });
    let list = match r.and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("turnd: {e}");
            return ExitCode::from(1);
        }
    };
    let now = unix_ms();
    let rows: Vec<NodeRow> = list
        .into_iter()
        .map(|(node, beat, load)| NodeRow {
            node,
            state: match &load {
                None => "dead",
                Some(s) if s.draining => "draining",
                Some(_) => "live",
            },
            last_heartbeat_ms_ago: now.saturating_sub(beat),
            load,
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!(
        "{:<20} {:<9} {:>11} {:>13} {:>10}  ADVERTISE",
        "NODE", "STATE", "ALLOCATIONS", "RELAY", "HEARTBEAT"
    );
    for r in &rows {
        let (allocations, relay, advertise) = match &r.load {
            Some(s) => (
                format!("{}/{}", s.allocations, s.max_allocations),
                format!("{}/s", crate::config::format_size(s.relay_bytes_per_s)),
                s.advertise
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<20} {:<9} {:>11} {:>13} {:>9.1}s  {}",
            r.node,
            r.state,
            allocations,
            relay,
            r.last_heartbeat_ms_ago as f64 / 1000.0,
            advertise
        );
    }
    ExitCode::SUCCESS
}
