//! `turnd cluster status`: the nodes as Redis has them.

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

pub fn status(config: &Config, json: bool) -> Result<(), String> {
    let Some(cluster) = &config.cluster else {
        return Err(format!("no [cluster] in {}: this is a single node", config.source));
    };
    let r = super::users::block_on(async {
        let store = Store::new(cluster)?;
        let mut conn = store.connect().await?;
        nodes(&store, &mut conn).await
    });
    let list = r.and_then(|r| r.map_err(|e| e.to_string()))?;
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
        return Ok(());
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
    Ok(())
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian), after Howard Hinnant.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// An hour as `2026-12-04T15:00Z`.
fn hour_text(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:00Z", (unix_s % 86_400) / 3600)
}

/// `--since`: a time ago, a UTC date with an optional time, or Unix seconds.
fn parse_since(text: &str, now_s: u64) -> Result<u64, String> {
    if let Ok(d) = crate::config::parse_duration(text) {
        return Ok(now_s.saturating_sub(d.as_secs()));
    }
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let bad =
        || format!("--since {text:?}: expected e.g. \"24h\", \"2026-12-01\", \"2026-12-01T10:00\" or Unix seconds");
    let (date, time) = text.split_once('T').unwrap_or((text, "00:00"));
    let mut d = date.split('-').map(str::parse::<u32>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(day)), None) = (d.next(), d.next(), d.next(), d.next()) else {
        return Err(bad());
    };
    let (h, min) = time.trim_end_matches('Z').split_once(':').ok_or_else(bad)?;
    let (h, min): (u64, u64) = (h.parse().map_err(|_| bad())?, min.parse().map_err(|_| bad())?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, day);
    Ok(days as u64 * 86_400 + h * 3600 + min * 60)
}

/// `turnd usage`: what each account used, by hour, from the cluster's Redis.
pub fn usage(config: &Config, account: Option<&str>, since: &str, format: super::UsageFormat) -> Result<(), String> {
    let Some(cluster) = &config.cluster else {
        return Err(format!(
            "no [cluster] in {}: usage is kept in the cluster's Redis",
            config.source
        ));
    };
    let now_s = unix_ms() / 1000;
    let since_s = parse_since(since, now_s)?;
    let r = super::users::block_on(async {
        let store = Store::new(cluster)?;
        let mut conn = store.connect().await?;
        crate::cluster::usage::read(&store, &mut conn, since_s, now_s, account).await
    });
    let hours = r.and_then(|r| r.map_err(|e| e.to_string()))?;
    let rows = hours
        .iter()
        .flat_map(|(h, accounts)| accounts.iter().map(move |(a, u)| (*h, a, u)));
    match format {
        super::UsageFormat::Json => {
            let list: Vec<serde_json::Value> = rows
                .map(|(h, a, u)| {
                    serde_json::json!({
                        "hour": hour_text(h),
                        "hour_unix": h,
                        "account": a,
                        "to_peer_bytes": u.to_peer_bytes,
                        "to_client_bytes": u.to_client_bytes,
                        "to_peer_packets": u.to_peer_packets,
                        "to_client_packets": u.to_client_packets,
                        "allocation_seconds": u.allocation_ms as f64 / 1000.0,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(list));
        }
        super::UsageFormat::Csv => {
            println!("hour,account,to_peer_bytes,to_client_bytes,to_peer_packets,to_client_packets,allocation_seconds");
            for (h, a, u) in rows {
                let a = if a.contains([',', '"', '\n']) {
                    format!("\"{}\"", a.replace('"', "\"\""))
                } else {
                    a.clone()
                };
                println!(
                    "{},{a},{},{},{},{},{:.3}",
                    hour_text(h),
                    u.to_peer_bytes,
                    u.to_client_bytes,
                    u.to_peer_packets,
                    u.to_client_packets,
                    u.allocation_ms as f64 / 1000.0
                );
            }
        }
        super::UsageFormat::Text => {
            println!(
                "{:<18} {:<24} {:>14} {:>15} {:>15} {:>17} {:>12}",
                "HOUR",
                "ACCOUNT",
                "TO_PEER_BYTES",
                "TO_CLIENT_BYTES",
                "TO_PEER_PACKETS",
                "TO_CLIENT_PACKETS",
                "ALLOC_SECS"
            );
            for (h, a, u) in rows {
                println!(
                    "{:<18} {:<24} {:>14} {:>15} {:>15} {:>17} {:>12.1}",
                    hour_text(h),
                    a,
                    u.to_peer_bytes,
                    u.to_client_bytes,
                    u.to_peer_packets,
                    u.to_client_packets,
                    u.allocation_ms as f64 / 1000.0
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_hours_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2026, 12, 4)), (2026, 12, 4));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
        assert_eq!(hour_text(1_796_400_000), "2026-12-04T16:00Z");
        assert_eq!(parse_since("2026-12-04T15:00", 0), Ok(1_796_396_400));
        assert_eq!(parse_since("2h", 10_000), Ok(2_800));
        assert_eq!(parse_since("1796400000", 0), Ok(1_796_400_000));
        assert!(parse_since("yesterday", 0).is_err());
        assert!(parse_since("2026-13-01", 0).is_err());
    }
}
