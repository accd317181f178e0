//! Default locations: system paths when running as root, per-user paths otherwise (the
//! XDG base directories).

use std::path::PathBuf;

use crate::sys::uid;

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

/// `$STATE_DIRECTORY/users.toml` under systemd, else `/var/lib/turnd/users.toml` as root,
/// else `$XDG_STATE_HOME/turnd/users.toml` (`~/.local/state/turnd/users.toml`).
pub fn default_users_file() -> PathBuf {
    // Under systemd with StateDirectory=turnd.
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("users.toml");
    }
    if uid() == 0 {
        return PathBuf::from("/var/lib/turnd/users.toml");
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map_or_else(|| home().join(".local/state"), PathBuf::from);
    state.join("turnd/users.toml")
}

/// `$RUNTIME_DIRECTORY/admin.sock` under systemd, else `/run/turnd/admin.sock` as root, else
/// `$XDG_RUNTIME_DIR/turnd/admin.sock`, else `/tmp/turnd-<uid>/admin.sock`.
pub fn default_admin_socket() -> PathBuf {
    // Under systemd with RuntimeDirectory=turnd.
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("admin.sock");
    }
    let uid = uid();
    if uid == 0 {
        return PathBuf::from("/run/turnd/admin.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("turnd/admin.sock"),
        None => PathBuf::from(format!("/tmp/turnd-{uid}/admin.sock")),
    }
}
