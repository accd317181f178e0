//! How `check-config` prints the validated config: the serde helpers that write each value
//! the way the file spells it (durations, sizes, addresses), with secrets redacted.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::{format_duration, format_size, Listener, Protocol, METRICS_OFF, REDACTED};

pub(super) fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

pub(super) fn size<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_size(*n))
}

pub(super) fn display<S: Serializer>(v: &impl Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(super) fn each<S: Serializer, T: Display>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

pub(super) fn path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

pub(super) fn some_path<S: Serializer>(p: &Option<std::path::PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.as_deref().unwrap_or(Path::new("")).display())
}

/// A Redis URL with its password replaced.
pub(super) fn redis_url<S: Serializer>(u: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact_url(u))
}

pub(super) fn redacted<S: Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// A secret that may be unset: empty stays empty (so the output re-parses), anything else
/// is redacted.
pub(super) fn redacted_if_set<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if v.is_empty() { "" } else { REDACTED })
}

pub(super) fn redacted_each<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|_| REDACTED))
}

pub(super) fn algorithms<S: Serializer>(sha256: &bool, s: S) -> Result<S::Ok, S::Error> {
    let list: &[&str] = if *sha256 { &["sha256", "md5"] } else { &["md5"] };
    list.serialize(s)
}

pub(super) fn metrics_listen<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match a {
        Some(a) => s.collect_str(a),
        None => s.serialize_str(METRICS_OFF),
    }
}

impl Serialize for Listener {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let protocols: Vec<Protocol> = [
            (self.udp, Protocol::Udp),
            (self.tcp, Protocol::Tcp),
            (self.tls, Protocol::Tls),
        ]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
        let mut m = s.serialize_struct("Listener", 7)?;
        m.serialize_field("address", &self.address.to_string())?;
        m.serialize_field("protocols", &protocols)?;
        m.serialize_field("max_connections", &self.max_connections)?;
        m.serialize_field("max_connections_per_ip", &self.max_connections_per_ip)?;
        m.serialize_field("idle_timeout", &format_duration(self.idle_timeout))?;
        if let Some(from) = &self.proxy_from {
            m.serialize_field("proxy_protocol", &true)?;
            m.serialize_field("proxy_from", &from.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        }
        m.end()
    }
}
