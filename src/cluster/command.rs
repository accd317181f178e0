//! Commands to every node at once (`turnd sessions`, `turnd disconnect`): published on one
//! channel; each node that hears one pushes its answer onto a list named by the command's
//! id. PUBLISH says how many nodes heard it, so the asker knows how many answers to wait for.

use std::time::Duration;

use super::{ClusterError, Store, COMMANDS};
use crate::net::SessionInfo;

/// How long an asker waits for every answer, and how long answers are kept.
pub const ANSWER_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    Sessions { user: Option<String> },
    Disconnect { user: String },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Command {
    pub id: String,
    #[serde(flatten)]
    pub request: Request,
}

/// One node's answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Answer {
    pub node: String,
    #[serde(default)]
    pub sessions: Vec<SessionInfo>,
    #[serde(default)]
    pub disconnected: usize,
}

pub fn answers_key(id: &str) -> String {
    format!("turnd:answers:{id}")
}

/// Sends `request` to every node and gathers their answers (those that answered within
/// [`ANSWER_WAIT`]); the second value is how many nodes heard it.
pub async fn ask_all(store: &Store, request: Request) -> Result<(Vec<Answer>, usize), ClusterError> {
    let mut conn = store.connect().await?;
    let mut id = [0u8; 12];
    getrandom::fill(&mut id).map_err(|e| ClusterError::Data(e.to_string()))?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let text = serde_json::to_string(&Command {
        id: id.clone(),
        request,
    })
    .map_err(|e| ClusterError::Data(e.to_string()))?;
    let heard: usize = redis::cmd("PUBLISH")
        .arg(COMMANDS)
        .arg(text)
        .query_async(&mut conn)
        .await
        .map_err(|e| store.err(e))?;
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let mut answers = Vec::new();
    while answers.len() < heard {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        // Polled rather than BLPOP: a blocking command would outlast the response timeout.
        let got: Option<String> = redis::cmd("LPOP")
            .arg(answers_key(&id))
            .query_async(&mut conn)
            .await
            .map_err(|e| store.err(e))?;
        match got {
            Some(a) => answers.push(serde_json::from_str(&a).map_err(|e| ClusterError::Data(e.to_string()))?),
            None => tokio::time::sleep(Duration::from_millis(20).min(left)).await,
        }
    }
    Ok((answers, heard))
}

/// A node's side: carries out `command` on this node's shards and pushes the answer.
pub async fn answer(store: &Store, node: &str, shards: &crate::net::Shards, command: Command) {
    let mut a = Answer {
        node: node.to_string(),
        sessions: Vec::new(),
        disconnected: 0,
    };
    match &command.request {
        Request::Sessions { user } => {
            a.sessions = shards.sessions(user.as_deref()).await;
            for s in &mut a.sessions {
                s.node = Some(node.to_string());
            }
        }
        Request::Disconnect { user } => {
            a.disconnected = shards.disconnect(user).await;
            tracing::info!(user = %user, ended = a.disconnected, "cluster: disconnect");
        }
    }
    let Ok(text) = serde_json::to_string(&a) else { return };
    let key = answers_key(&command.id);
    let r = async {
        let mut conn = store.connect().await?;
        redis::pipe()
            .rpush(&key, text)
            .ignore()
            .pexpire(&key, ANSWER_WAIT.as_millis() as i64 * 10)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| store.err(e))
    };
    if let Err(e) = r.await {
        tracing::warn!("cluster: cannot answer a command: {e}");
    }
}
