//! `turnd user …` and `turnd credential`.

use std::io::BufRead;
use std::process::ExitCode;

use base64::Engine as _;

use crate::auth::users_file::{self, ModifyError, UserRecord};
use crate::auth::{Keys, RestSecrets};
use crate::config::{check_user_name, parse_duration, Config};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("turnd: {msg}");
    ExitCode::from(1)
}

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

/// A strong random password: 144 bits from the OS CSPRNG, URL-safe base64.
fn generate_password() -> Result<String, String> {
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).map_err(|e| format!("cannot read the OS random number generator: {e}"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn explain(e: ModifyError, path: &std::path::Path) -> ExitCode {
    match e {
        ModifyError::File(users_file::UsersFileError::Corrupt { .. }) => fail(format!(
            "{e}\nThe users file is not valid, so it was left untouched. Fix it by hand, or move it aside \
             (mv {p} {p}.bad) and add the users again.",
            p = path.display()
        )),
        e => fail(e),
    }
}

pub fn add(config: &Config, name: &str, realm: Option<&str>, password_stdin: bool) -> ExitCode {
    if let Err(e) = check_user_name(name) {
        return fail(e);
    }
    let realm = realm.unwrap_or(&config.realm);
    let (password, generated) = if password_stdin {
        match password_from_stdin() {
            Ok(p) => (p, false),
            Err(e) => return fail(e),
        }
    } else {
        match generate_password() {
            Ok(p) => (p, true),
            Err(e) => return fail(e),
        }
    };
    let path = &config.auth.users_file;
    let r = users_file::modify(path, |f| {
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
    });
    match r {
        Ok(()) => {
            if generated {
                println!("{password}");
                eprintln!("added user {name:?} in realm {realm:?}; its password is printed above and is not stored");
            } else {
                eprintln!("added user {name:?} in realm {realm:?}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => explain(e, path),
    }
}

pub fn remove(config: &Config, name: &str, realm: Option<&str>) -> ExitCode {
    let realm = realm.unwrap_or(&config.realm);
    let path = &config.auth.users_file;
    match users_file::modify(path, |f| match f.find(name, realm) {
        Some(i) => {
            f.users.remove(i);
            Ok(())
        }
        None => Err(format!("no user {name:?} in realm {realm:?}")),
    }) {
        Ok(()) => {
            eprintln!("removed user {name:?} from realm {realm:?}");
            ExitCode::SUCCESS
        }
        Err(e) => explain(e, path),
    }
}

pub fn passwd(config: &Config, name: &str, realm: Option<&str>, password_stdin: bool) -> ExitCode {
    let realm = realm.unwrap_or(&config.realm);
    let (password, generated) = if password_stdin {
        match password_from_stdin() {
            Ok(p) => (p, false),
            Err(e) => return fail(e),
        }
    } else {
        match generate_password() {
            Ok(p) => (p, true),
            Err(e) => return fail(e),
        }
    };
    let path = &config.auth.users_file;
    match users_file::modify(path, |f| match f.find(name, realm) {
        Some(i) => {
            f.users[i].keys = Keys::derive(name, realm, &password);
            Ok(())
        }
        None => Err(format!("no user {name:?} in realm {realm:?}")),
    }) {
        Ok(()) => {
            if generated {
                println!("{password}");
            }
            eprintln!("changed the password of {name:?} in realm {realm:?}");
            ExitCode::SUCCESS
        }
        Err(e) => explain(e, path),
    }
}

pub fn list(config: &Config, realm: Option<&str>) -> ExitCode {
    match users_file::UsersFile::load(&config.auth.users_file) {
        Ok(f) => {
            for u in f.users.iter().filter(|u| realm.is_none_or(|r| u.realm == r)) {
                println!("{}\t{}", u.name, u.realm);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// Output formats of `turnd credential`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Ice,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `turn:` URLs for every listener, with the host clients should use: `relay.external` of
/// the listener's family, else the listener's address, else this machine's name.
pub fn turn_urls(config: &Config) -> Vec<String> {
    let mut urls = Vec::new();
    for l in &config.listen {
        if l.address.port() == 0 {
            // The port is picked at start-up, so no URL can name it.
            eprintln!("note: listener {} has port 0 and is left out of the URLs", l.address);
            continue;
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
            None => hostname(),
        };
        for (on, t) in [(l.udp, "udp"), (l.tcp, "tcp")] {
            let url = format!("turn:{host}:{}?transport={t}", l.address.port());
            if on && !urls.contains(&url) {
                urls.push(url);
            }
        }
    }
    urls
}

pub fn credential(config: &Config, user: Option<&str>, ttl: &str, format: Format) -> ExitCode {
    let ttl = match parse_duration(ttl) {
        Ok(d) if d.as_secs() >= 1 => d,
        Ok(_) => return fail("--ttl must be at least 1s"),
        Err(e) => return fail(format!("--ttl: {e}")),
    };
    if let Some(id) = user {
        if id.is_empty() || id.chars().any(char::is_control) {
            return fail("--user must be non-empty printable text");
        }
    }
    let secrets = RestSecrets::new(config.auth.secrets.iter().cloned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expiry = now + ttl.as_secs();
    let Some((username, password)) = secrets.mint(expiry, user) else {
        return fail(format!(
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
    ExitCode::SUCCESS
}
