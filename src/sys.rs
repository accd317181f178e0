//! What the process asks of the system beside sockets: its user and its host name.

use std::os::unix::fs::MetadataExt;

/// The effective user of this process (from /proc, without unsafe code).
pub fn uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The host's name ("localhost" when the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
