//! `turnd user …` and `turnd credential`.

use std::io::BufRead;

use crate::auth::users_file::{self, ModifyError, UserRecord, UsersFile};
use crate::auth::UserName;
use crate::auth::{Keys, RestSecrets};
use crate::cluster::Store;
use crate::config::{parse_duration, Config};

/// Reads one line (the password) from standard input.
fn password_from_stdin() -> Result<String, String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        return Err("the password read from stdin is empty".into());
    }
    Ok(pw.to_string())
}

fn explain(e: ModifyError, path: &std::path::Path) -> String {
    match e {
        ModifyError::File(users_file::UsersFileError::Corrupt { .. }) => format!(
            "{e}\nThe users file is not valid, so it was left untouched. Fix it by hand, or move it aside \
             (mv {p} {p}.bad) and add the users again.",
            p = path.display()
        ),
        e => e.to_string(),
    }
}

/// The realm a new key is made for: the server's one realm. A user keyed for another realm
/// could never authenticate, so asking for one is an error.
fn server_realm<'a>(config: &'a Config, asked: Option<&str>) -> Result<&'a str, String> {
    match asked {
        Some(r) if r != config.realm => Err(format!(
            "the server's realm is {:?} (realm in {}); a user of realm {r:?} could never authenticate. \
             Leave out --realm, or change realm in the config first",
            config.realm, config.source
        )),
        _ => Ok(&config.realm),
    }
}

pub fn add(config: &Config, name: &str, realm: Option<&str>, password_stdin: bool) -> Result<(), String> {
    UserName::new(name)?;
    let realm = server_realm(config, realm)?;
    if config.auth.users.iter().any(|u| u.name.as_str() == name) {
        return Err(format!(
            "user {name:?} is defined in [[auth.users]] in {}; change it there",
            config.source
        ));
    }
    let (password, generated) = new_password(password_stdin)?;
    modify(config, |f| {
        if f.find(name, realm).is_some() {
            return Err(format!(
                "user {name:?} already exists in realm {realm:?}; use `turnd user passwd`"
            ));
        }
        f.users.push(UserRecord {
            name: name.to_string(),
            realm: realm.to_string(),
            keys: Keys::derive(name, realm, &password),
        });
        Ok(())
    })?;
    let place = place(config);
    if generated {
        println!("{password}");
        eprintln!("added user {name:?} in realm {realm:?} ({place}); its password is printed above and is not stored");
    } else {
        eprintln!("added user {name:?} in realm {realm:?} ({place})");
    }
    Ok(())
}

pub fn remove(config: &Config, name: &str, realm: Option<&str>) -> Result<(), String> {
    let realm = realm.unwrap_or(&config.realm);
    modify(config, |f| match f.find(name, realm) {
        Some(i) => {
            f.users.remove(i);
            Ok(())
        }
        None => Err(format!("no user {name:?} in realm {realm:?}")),
    })?;
    eprintln!("removed user {name:?} from realm {realm:?} ({})", place(config));
    Ok(())
}

pub fn passwd(config: &Config, name: &str, realm: Option<&str>, password_stdin: bool) -> Result<(), String> {
    let realm = server_realm(config, realm)?;
    let (password, generated) = new_password(password_stdin)?;
    modify(config, |f| match f.find(name, realm) {
        Some(i) => {
            f.users[i].keys = Keys::derive(name, realm, &password);
            Ok(())
        }
        None => Err(format!("no user {name:?} in realm {realm:?}")),
    })?;
    if generated {
        println!("{password}");
    }
    eprintln!(
        "changed the password of {name:?} in realm {realm:?} ({})",
        place(config)
    );
    Ok(())
}

/// The password from stdin, or a generated one (then true).
fn new_password(from_stdin: bool) -> Result<(String, bool), String> {
    if from_stdin {
        password_from_stdin().map(|p| (p, false))
    } else {
        super::random_text().map(|p| (p, true))
    }
}

/// Where `turnd user` keeps users under this config.
fn place(config: &Config) -> String {
    match &config.cluster {
        Some(c) => format!("cluster, {}", crate::config::redact_url(&c.redis)),
        None => format!("users file {}", config.auth.users_file.display()),
    }
}

/// Runs one cluster operation to its end on a runtime of its own.
pub(super) fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    Ok(rt.block_on(f))
}

/// Applies `change` where this config keeps its users: the cluster's Redis with `[cluster]`,
/// else the users file.
fn modify(config: &Config, change: impl Fn(&mut UsersFile) -> Result<(), String>) -> Result<(), String> {
    let Some(cluster) = &config.cluster else {
        let path = &config.auth.users_file;
        return users_file::modify(path, change).map_err(|e| explain(e, path));
    };
    let r = block_on(async {
        let store = Store::new(cluster).map_err(|e| e.to_string())?;
        crate::cluster::users::modify(&store, change)
            .await
            .map_err(|e| e.to_string())
    });
    r.and_then(|r| r)
}

/// Lists users as `NAME<TAB>REALM<TAB>SOURCE`: the cluster's (with `[cluster]`), the users
/// file's, then `[[auth.users]]` from the config file (which `turnd user` cannot change).
pub fn list(config: &Config, realm: Option<&str>) -> Result<(), String> {
    let mut sources = Vec::new();
    if let Some(cluster) = &config.cluster {
        let r = block_on(async {
            let store = Store::new(cluster).map_err(|e| e.to_string())?;
            let mut conn = store.connect().await.map_err(|e| e.to_string())?;
            let (users, _, _) = crate::cluster::users::load(&store, &mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(users)
        });
        sources.push((r.and_then(|r| r)?, "cluster"));
    }
    let file = UsersFile::load(&config.auth.users_file).map_err(|e| e.to_string())?;
    sources.push((file, "users file"));
    for (file, source) in &sources {
        for u in file.users.iter().filter(|u| realm.is_none_or(|r| u.realm == r)) {
            println!("{}\t{}\t{source}", u.name, u.realm);
        }
    }
    if realm.is_none_or(|r| r == config.realm) {
        for u in &config.auth.users {
            println!("{}\t{}\tconfig file", u.name, config.realm);
        }
    }
    Ok(())
}

/// Output formats of `turnd credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Ice,
}

/// The host name for `turns:` URLs: `server_name`, else the certificate's first DNS name.
fn tls_host(config: &Config) -> Result<String, String> {
    if let Some(n) = &config.server_name {
        return Ok(n.clone());
    }
    let Some(tls) = &config.tls else {
        return Err("no [tls] section".into());
    };
    match crate::net::tls::first_dns_name(&tls.certificate)? {
        Some(n) => Ok(n),
        None => Err(format!(
            "the certificate {} has no DNS name; set server_name",
            tls.certificate.display()
        )),
    }
}

/// `turn:` URLs for every UDP and TCP listener, with the host clients should use:
/// `relay.external` of the listener's family, else the listener's address, else this
/// machine's name; and `turns:` URLs for TLS listeners, with the name the certificate is for.
pub fn turn_urls(config: &Config) -> Vec<String> {
    let mut urls = Vec::new();
    let mut tls_host_cache: Option<Option<String>> = None;
    for l in &config.listen {
        if l.address.port() == 0 {
            // The port is picked at start-up, so no URL can name it.
            eprintln!("note: listener {} has port 0 and is left out of the URLs", l.address);
            continue;
        }
        let port = l.address.port();
        if l.tls {
            let host = tls_host_cache.get_or_insert_with(|| match tls_host(config) {
                Ok(h) => Some(h),
                Err(e) => {
                    eprintln!("note: turns: URLs are left out: {e}");
                    None
                }
            });
            if let Some(host) = host {
                let url = format!("turns:{host}:{port}?transport=tcp");
                if !urls.contains(&url) {
                    urls.push(url);
                }
            }
        }
        let ip = l.address.ip();
        let host = match config.relay.external.iter().find(|e| e.is_ipv4() == ip.is_ipv4()) {
            Some(e) => Some(*e),
            None if !ip.is_unspecified() => Some(ip),
            None => None,
        };
        let host = match host {
            Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            Some(v4) => v4.to_string(),
            None => crate::sys::hostname(),
        };
        for (on, t) in [(l.udp, "udp"), (l.tcp, "tcp")] {
            let url = format!("turn:{host}:{port}?transport={t}");
            if on && !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

pub fn credential(config: &Config, user: Option<&str>, ttl: &str, format: Format) -> Result<(), String> {
    let ttl = parse_duration(ttl).map_err(|e| format!("--ttl: {e}"))?;
    if ttl.as_secs() < 1 {
        return Err("--ttl must be at least 1s".into());
    }
    if user.is_some_and(|id| id.is_empty() || id.chars().any(char::is_control)) {
        return Err("--user must be non-empty printable text".into());
    }
    let secrets = RestSecrets::new(config.auth.secrets.iter().cloned());
    let now = crate::sys::unix_time().as_secs();
    let expiry = now + ttl.as_secs();
    let Some((username, password)) = secrets.mint(expiry, user) else {
        return Err(format!(
            "no TURN REST API secret is configured (auth.secrets in {}): add one to mint credentials",
            config.source
        ));
    };
    let urls = turn_urls(config);
    match format {
        Format::Text => {
            println!("username: {username}");
            println!("credential: {password}");
            println!("expires: {expiry} (unix time, in {}s)", ttl.as_secs());
            for u in &urls {
                println!("url: {u}");
            }
        }
        Format::Json => {
            let v =
                serde_json::json!({ "username": username, "password": password, "ttl": ttl.as_secs(), "uris": urls });
            println!("{v}");
        }
        Format::Ice => {
            let v = serde_json::json!({ "urls": urls, "username": username, "credential": password });
            println!("{v}");
        }
    }
    Ok(())
}
