//! Usage for billing in Redis: one hash per hour and measure, `turnd:usage:HOUR:MEASURE`
//! (HOUR: the hour's first second, Unix time; MEASURE: `to_peer_bytes`, `to_client_bytes`,
//! `to_peer_packets`, `to_client_packets`, `allocation_ms`), mapping each account to its
//! count, kept for `usage_retention`. A node adds what its allocations did at least every
//! [`FLUSH_OPEN`] and within a second of an allocation's end, into the hour it adds it in.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use super::{ClusterError, Store};
use crate::server::usage::Usage;

/// Open allocations' progress is added at least this often: what a crash can lose.
pub const FLUSH_OPEN: Duration = Duration::from_secs(10);
/// What ended allocations used is added within this.
pub const FLUSH_ENDED: Duration = Duration::from_secs(1);

const HOUR: u64 = 3600;

pub fn key(hour: u64, measure: &str) -> String {
    format!("turnd:usage:{hour}:{measure}")
}

/// Adds `pending` to the hour `now_s` falls in, all or nothing.
pub async fn add(
    store: &Store,
    conn: &mut MultiplexedConnection,
    pending: &HashMap<String, Usage>,
    now_s: u64,
    retention: Duration,
) -> Result<(), ClusterError> {
    let hour = now_s - now_s % HOUR;
    let mut p = redis::pipe();
    p.atomic();
    let mut keys = Vec::new();
    for (account, u) in pending {
        for (measure, n) in u.fields() {
            if n > 0 {
                let k = key(hour, measure);
                p.hincr(&k, account, n).ignore();
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
    }
    // Kept for the retention after the hour ends.
    let expire = (retention.as_secs() + HOUR) as i64;
    for k in &keys {
        p.expire(k, expire).ignore();
    }
    p.query_async::<()>(conn).await.map_err(|e| store.err(e))
}

/// Usage by hour, then account, from the hour of `since_s` to the hour of `until_s`.
pub async fn read(
    store: &Store,
    conn: &mut MultiplexedConnection,
    since_s: u64,
    until_s: u64,
    account: Option<&str>,
) -> Result<BTreeMap<u64, BTreeMap<String, Usage>>, ClusterError> {
    let mut out: BTreeMap<u64, BTreeMap<String, Usage>> = BTreeMap::new();
    let mut hour = since_s - since_s % HOUR;
    // Bounded: a year of hours at the most.
    let mut left = 24 * 366;
    while hour <= until_s && left > 0 {
        let mut p = redis::pipe();
        for (measure, _) in Usage::default().fields() {
            p.hgetall(key(hour, measure));
        }
        let maps: Vec<HashMap<String, u64>> = p.query_async(conn).await.map_err(|e| store.err(e))?;
        for (i, m) in maps.into_iter().enumerate() {
            for (acct, n) in m {
                if account.is_some_and(|a| a != acct) {
                    continue;
                }
                let u = out.entry(hour).or_default().entry(acct).or_default();
                match i {
                    0 => u.to_peer_bytes += n,
                    1 => u.to_client_bytes += n,
                    2 => u.to_peer_packets += n,
                    3 => u.to_client_packets += n,
                    _ => u.allocation_ms += n,
                }
            }
        }
        hour += HOUR;
        left -= 1;
    }
    Ok(out)
}
