//! The users file that `turnd user` manages and the server watches. It holds each user's
//! RFC 8489 long-term keys (the MD5 and SHA-256 forms of `user:realm:password`), never a
//! password. Writes take an exclusive lock on a sibling `.lock` file, write a temporary file
//! with mode 0600, and rename it into place, so readers never see half a file and concurrent
//! writers never lose each other's changes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Keys;

/// One user in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub realm: String,
    pub keys: Keys,
}

/// The parsed users file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersFile {
    pub users: Vec<UserRecord>,
}

/// Keys by realm, then by name: what the server looks requests up in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserKeys {
    by_realm: HashMap<String, HashMap<String, Keys>>,
}

impl UserKeys {
    pub fn get(&self, realm: &str, name: &str) -> Option<&Keys> {
        self.by_realm.get(realm)?.get(name)
    }

    pub fn len(&self) -> usize {
        self.by_realm.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other`'s users; where both have a user, `other`'s keys win.
    pub fn extend(&mut self, other: &UserKeys) {
        for (realm, users) in &other.by_realm {
            let mine = self.by_realm.entry(realm.clone()).or_default();
            mine.extend(users.iter().map(|(n, k)| (n.clone(), k.clone())));
        }
    }
}

/// Why the users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    #[error("{path}: cannot read the users file: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{col}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: cannot write the users file: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    user: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    realm: String,
    md5: String,
    sha256: String,
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    (
        before.matches('\n').count() + 1,
        before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
    )
}

impl UsersFile {
    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<UsersFile, UsersFileError> {
        let corrupt = |offset: usize, message: String| {
            let (line, col) = line_col(text, offset);
            UsersFileError::Corrupt {
                path: path.to_path_buf(),
                line,
                col,
                message,
            }
        };
        let raw: RawFile = toml::from_str(text)
            .map_err(|e| corrupt(e.span().map_or(0, |s| s.start), e.message().trim_end().to_string()))?;
        let mut users = Vec::with_capacity(raw.user.len());
        for (i, u) in raw.user.into_iter().enumerate() {
            let at = text.match_indices("[[user]]").nth(i).map_or(0, |(o, _)| o);
            crate::auth::UserName::new(&u.name).map_err(|e| corrupt(at, format!("{e}: {:?}", u.name)))?;
            let (Some(md5), Some(sha256)) = (unhex::<16>(&u.md5), unhex::<32>(&u.sha256)) else {
                return Err(corrupt(
                    at,
                    format!("user {:?}: md5 must be 32 and sha256 64 hex digits", u.name),
                ));
            };
            if users
                .iter()
                .any(|x: &UserRecord| x.name == u.name && x.realm == u.realm)
            {
                return Err(corrupt(
                    at,
                    format!("user {:?} in realm {:?} appears twice", u.name, u.realm),
                ));
            }
            users.push(UserRecord {
                name: u.name,
                realm: u.realm,
                keys: Keys { md5, sha256 },
            });
        }
        Ok(UsersFile { users })
    }

    /// Reads the file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<UsersFile, UsersFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => UsersFile::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(UsersFileError::Read {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::from(
            "# turnd users file, managed by `turnd user`. It holds RFC 8489 long-term keys\n\
             # (MD5 and SHA-256 of user:realm:password), never passwords.\n",
        );
        for u in &self.users {
            let _ = write!(
                s,
                "\n[[user]]\nname = {}\nrealm = {}\nmd5 = \"{}\"\nsha256 = \"{}\"\n",
                toml_string(&u.name),
                toml_string(&u.realm),
                hex(&u.keys.md5),
                hex(&u.keys.sha256)
            );
        }
        s
    }

    pub fn keys(&self) -> UserKeys {
        let mut k = UserKeys::default();
        for u in &self.users {
            k.by_realm
                .entry(u.realm.clone())
                .or_default()
                .insert(u.name.clone(), u.keys.clone());
        }
        k
    }

    pub fn find(&self, name: &str, realm: &str) -> Option<usize> {
        self.users.iter().position(|u| u.name == name && u.realm == realm)
    }
}

/// A TOML basic string with everything that needs escaping escaped.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Applies `change` to the users file under an exclusive lock and writes the result
/// atomically. A file that exists but does not parse is never overwritten.
pub fn modify<T>(path: &Path, change: impl FnOnce(&mut UsersFile) -> Result<T, String>) -> Result<T, ModifyError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| {
        ModifyError::File(UsersFileError::Write {
            path: path.into(),
            source: e,
        })
    })?;
    let lock_path = path.with_extension("toml.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| {
            ModifyError::File(UsersFileError::Write {
                path: lock_path.clone(),
                source: e,
            })
        })?;
    lock.lock().map_err(|e| {
        ModifyError::File(UsersFileError::Write {
            path: lock_path.clone(),
            source: e,
        })
    })?;

    let mut file = UsersFile::load(path).map_err(ModifyError::File)?;
    let result = change(&mut file).map_err(ModifyError::Refused)?;
    write_atomically(path, file.to_toml().as_bytes()).map_err(ModifyError::File)?;
    drop(lock);
    Ok(result)
}

/// Why `modify` did not change the file.
#[derive(Debug, thiserror::Error)]
pub enum ModifyError {
    #[error("{0}")]
    File(UsersFileError),
    #[error("{0}")]
    Refused(String),
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), UsersFileError> {
    let err = |e| UsersFileError::Write {
        path: path.to_path_buf(),
        source: e,
    };
    let tmp = path.with_extension(format!("toml.tmp.{}", std::process::id()));
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    // The mode of create() is filtered by the umask; make sure it is exactly 0600.
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    // Run as root for a service user: keep the file owned by whoever owned it (or owns the
    // state directory), so the service can still read it.
    if crate::sys::uid() == 0 {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(path).or_else(|_| std::fs::metadata(path.parent().unwrap_or(Path::new("."))));
        if let Ok(m) = owner {
            std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid())).map_err(err)?;
        }
    }
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_never_holds_a_password() {
        let f = UsersFile {
            users: vec![UserRecord {
                name: "al\"ice".into(),
                realm: "r".into(),
                keys: Keys::derive("al\"ice", "r", "hunter2"),
            }],
        };
        let text = f.to_toml();
        assert!(!text.contains("hunter2"));
        assert_eq!(UsersFile::parse(&text, Path::new("x")).unwrap(), f);
    }

    #[test]
    fn corrupt_files_report_where() {
        let e = UsersFile::parse(
            "[[user]]\nname = \"a\"\nrealm = \"r\"\nmd5 = \"zz\"\nsha256 = \"00\"\n",
            Path::new("u.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("u.toml:1:1: user \"a\": md5 must be"), "{e}");
        let e = UsersFile::parse("[[user]\n", Path::new("u.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("u.toml:1:"), "{e}");
    }
}
