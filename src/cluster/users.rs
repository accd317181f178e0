//! The cluster's users in Redis: the same records as the users file (name, realm, long-term
//! keys), in one hash. `turnd user` changes them under WATCH, so that two operators at once
//! cannot lose each other's change; every change bumps a version and is announced.

use redis::aio::MultiplexedConnection;

use super::{ClusterError, Store, EVENTS, USERS, USERS_VERSION};
use crate::auth::users_file::{hex, unhex, UserRecord, UsersFile};
use crate::auth::{Keys, UserName};

/// The hash field of a user: `["realm","name"]` (JSON), which no name or realm can break.
fn field(u: &UserRecord) -> String {
    serde_json::json!([u.realm, u.name]).to_string()
}

fn value(k: &Keys) -> String {
    format!("{}:{}", hex(&k.md5), hex(&k.sha256))
}

/// Reads one record; `None` for a field or value that is not ours (it is skipped and logged
/// by the caller, not fatal).
fn record(field: &str, value: &str) -> Option<UserRecord> {
    let (realm, name): (String, String) = serde_json::from_str(field).ok()?;
    UserName::new(&name).ok()?;
    let (md5, sha256) = value.split_once(':')?;
    Some(UserRecord {
        name,
        realm,
        keys: Keys {
            md5: unhex(md5)?,
            sha256: unhex(sha256)?,
        },
    })
}

/// Every user, and the version they were read at. Malformed entries are counted, not used.
pub async fn load(store: &Store, conn: &mut MultiplexedConnection) -> Result<(UsersFile, u64, usize), ClusterError> {
    let (version, all): (Option<u64>, Vec<(String, String)>) = redis::pipe()
        .atomic()
        .get(USERS_VERSION)
        .hgetall(USERS)
        .query_async(conn)
        .await
        .map_err(|e| store.err(e))?;
    let mut users: Vec<UserRecord> = all.iter().filter_map(|(f, v)| record(f, v)).collect();
    let bad = all.len() - users.len();
    users.sort_by(|a, b| (&a.realm, &a.name).cmp(&(&b.realm, &b.name)));
    Ok((UsersFile { users }, version.unwrap_or(0), bad))
}

/// The users' version alone: what a node polls.
pub async fn version(store: &Store, conn: &mut MultiplexedConnection) -> Result<u64, ClusterError> {
    let v: Option<u64> = redis::cmd("GET")
        .arg(USERS_VERSION)
        .query_async(conn)
        .await
        .map_err(|e| store.err(e))?;
    Ok(v.unwrap_or(0))
}

/// Why a change to the cluster's users did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// The change itself was refused (unknown user, and so on).
    #[error("{0}")]
    Refused(String),
}

/// Applies `change` to the cluster's users: read, change, write back what differs, bump the
/// version and announce it, all or nothing (retried if another change got in between).
pub async fn modify<T>(store: &Store, change: impl Fn(&mut UsersFile) -> Result<T, String>) -> Result<T, ModifyError> {
    let mut conn = store.connect().await?;
    for _ in 0..16 {
        redis::cmd("WATCH")
            .arg(USERS)
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store.err(e))?;
        let (before, _, _) = load(store, &mut conn).await?;
        let mut after = before.clone();
        let out = match change(&mut after) {
            Ok(out) => out,
            Err(e) => {
                let _ = redis::cmd("UNWATCH").query_async::<()>(&mut conn).await;
                return Err(ModifyError::Refused(e));
            }
        };
        let mut p = redis::pipe();
        p.atomic();
        for u in &before.users {
            if after.find(&u.name, &u.realm).is_none() {
                p.hdel(USERS, field(u)).ignore();
            }
        }
        for u in &after.users {
            if before
                .find(&u.name, &u.realm)
                .is_none_or(|i| before.users.get(i) != Some(u))
            {
                p.hset(USERS, field(u), value(&u.keys)).ignore();
            }
        }
        p.incr(USERS_VERSION, 1).ignore().publish(EVENTS, "users").ignore();
        // EXEC answers nil when a watched key changed: read and try again.
        let done: Option<()> = p.query_async(&mut conn).await.map_err(|e| store.err(e))?;
        if done.is_some() {
            return Ok(out);
        }
    }
    Err(ClusterError::Data("the users kept changing under this change; try again".into()).into())
}
