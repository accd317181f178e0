//! The admin socket: a Unix socket, mode 0600, that `turnd sessions` and `turnd disconnect`
//! talk to. One request line per connection (`sessions [USER]` or `disconnect USER`), one
//! JSON answer.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::Shards;

/// Longest request line accepted.
const MAX_LINE: u64 = 1024;

/// Binds the admin socket, replacing a stale one left by a previous run, with mode 0600 in a
/// directory of mode 0700 when it has to create it.
pub fn bind(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if path.exists() {
        // A live server answers; a stale socket file does not, and is removed.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another turnd is serving this admin socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, shards: Shards) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shards = shards.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), request(stream, &shards)).await;
        });
    }
}

async fn request(stream: UnixStream, shards: &Shards) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).take(MAX_LINE).read_line(&mut line).await?;
    let mut words = line.split_whitespace();
    let answer = match (words.next(), words.next(), words.next()) {
        (Some("sessions"), user, None) => {
            let list = shards.sessions(user).await;
            serde_json::json!({ "sessions": list })
        }
        (Some("disconnect"), Some(user), None) => {
            let n = shards.disconnect(user).await;
            tracing::info!(event = "disconnect", user, allocations = n, "disconnected by admin");
            serde_json::json!({ "disconnected": n })
        }
        _ => serde_json::json!({ "error": "expected `sessions [USER]` or `disconnect USER`" }),
    };
    w.write_all(format!("{answer}\n").as_bytes()).await?;
    w.shutdown().await
}
