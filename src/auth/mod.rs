//! Credentials: RFC 8489 long-term keys, the sources they come from (inline users, TURN
//! REST API secrets, and later the users file), and stateless signed nonces.
//!
//! The engine asks a [`CredentialSource`] to check a request's integrity against every key
//! the username could have (several REST secrets may be configured at once during rotation).

mod nonce;
mod user_name;
pub mod users_file;

use std::collections::HashMap;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

pub use nonce::{NonceCheck, NonceKey, NONCE_LEN};
pub use user_name::{UserName, MAX_USER_NAME};

use crate::proto::integrity::{long_term_key_md5, long_term_key_sha256};

/// The two forms of a user's long-term key (RFC 8489 §9.2.2): H(username:realm:password) with
/// H = MD5 (PASSWORD-ALGORITHM MD5, and every RFC 5389 client) or SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub md5: [u8; 16],
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn derive(username: &str, realm: &str, password: &str) -> Keys {
        Keys {
            md5: long_term_key_md5(username, realm, password),
            sha256: long_term_key_sha256(username, realm, password),
        }
    }
}

/// The outcome of checking a request against a username's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// One of the user's keys verified the request.
    Match(Keys),
    /// The user exists but no key verified the request (wrong password).
    Mismatch,
    /// No such user.
    Unknown,
    /// A TURN REST API username whose expiry time has passed.
    Expired,
}

/// Where long-term keys come from. Implementations must be cheap to query: the engine asks
/// on every authenticated request (Allocate, Refresh, CreatePermission, ChannelBind).
pub trait CredentialSource: Send + Sync {
    /// Calls `check` with each key `username` may have in `realm` until one returns true.
    fn verify(&self, username: &str, realm: &str, unix_now: u64, check: &mut dyn FnMut(&Keys) -> bool) -> Verdict;

    /// True when at least one user or secret is configured; without any, every Allocate is
    /// refused.
    fn is_configured(&self) -> bool;
}

/// Inline `[[auth.users]]`, keys derived once at load for the configured realm.
#[derive(Debug, Default, Clone)]
pub struct StaticUsers {
    realm: String,
    users: HashMap<String, Keys>,
}

impl StaticUsers {
    pub fn new(realm: &str, users: impl IntoIterator<Item = (String, String)>) -> Self {
        let users = users
            .into_iter()
            .map(|(name, password)| {
                let keys = Keys::derive(&name, realm, &password);
                (name, keys)
            })
            .collect();
        StaticUsers {
            realm: realm.to_string(),
            users,
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// TURN REST API shared secrets (draft-uberti-behave-turn-rest, as coturn's
/// `use-auth-secret`): username `<unix-expiry>[:<id>]`, password
/// `base64(HMAC-SHA1(secret, username))`. Every secret verifies, so they can be rotated.
#[derive(Clone, Default)]
pub struct RestSecrets {
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for RestSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestSecrets({} secrets)", self.secrets.len())
    }
}

impl RestSecrets {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        RestSecrets {
            secrets: secrets.into_iter().map(String::into_bytes).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The REST password for `username` under `secret`.
    pub fn password(secret: &[u8], username: &str) -> String {
        let mut mac =
            <Hmac<Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(username.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    /// Mints a username and password valid until `expiry` (unix seconds), for `id`.
    pub fn mint(&self, expiry: u64, id: Option<&str>) -> Option<(String, String)> {
        let secret = self.secrets.first()?;
        let username = match id {
            Some(id) => format!("{expiry}:{id}"),
            None => expiry.to_string(),
        };
        let password = Self::password(secret, &username);
        Some((username, password))
    }

    /// Parses the expiry out of a REST username; `None` if it is not one.
    pub fn expiry(username: &str) -> Option<u64> {
        let ts = username.split_once(':').map_or(username, |(ts, _)| ts);
        if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        ts.parse().ok()
    }
}

/// Every configured source: REST usernames (those starting with a timestamp) are checked
/// against the secrets, everything else against the inline users, then the users file.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub users: StaticUsers,
    pub secrets: RestSecrets,
    /// Users from the users file, by realm.
    pub file_users: users_file::UserKeys,
}

impl CredentialSource for Credentials {
    fn verify(&self, username: &str, realm: &str, unix_now: u64, check: &mut dyn FnMut(&Keys) -> bool) -> Verdict {
        if !self.secrets.is_empty() {
            if let Some(expiry) = RestSecrets::expiry(username) {
                let mut matched = None;
                for secret in &self.secrets.secrets {
                    let keys = Keys::derive(username, realm, &RestSecrets::password(secret, username));
                    if check(&keys) {
                        matched = Some(keys);
                        break;
                    }
                }
                return match matched {
                    // Only a correctly signed username reveals that it has expired.
                    Some(_) if expiry < unix_now => Verdict::Expired,
                    Some(k) => Verdict::Match(k),
                    None => Verdict::Mismatch,
                };
            }
        }
        let inline = (realm == self.users.realm)
            .then(|| self.users.users.get(username))
            .flatten();
        match inline.or_else(|| self.file_users.get(realm, username)) {
            None => Verdict::Unknown,
            Some(k) if check(k) => Verdict::Match(k.clone()),
            Some(_) => Verdict::Mismatch,
        }
    }

    fn is_configured(&self) -> bool {
        !self.users.is_empty() || !self.secrets.is_empty() || !self.file_users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_password_matches_the_published_scheme() {
        // base64(HMAC-SHA1("north", "1700000000:alice")), computed independently with openssl:
        // printf %s 1700000000:alice | openssl dgst -sha1 -hmac north -binary | base64
        assert_eq!(
            RestSecrets::password(b"north", "1700000000:alice"),
            "Cd/49soE35ICqcJF/bCTn8Z4OyE="
        );
    }

    #[test]
    fn rest_usernames_parse_and_expire() {
        assert_eq!(RestSecrets::expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(RestSecrets::expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(RestSecrets::expiry("alice"), None);
        assert_eq!(RestSecrets::expiry(":alice"), None);
        let creds = Credentials {
            secrets: RestSecrets::new(["old".to_string(), "new".to_string()]),
            ..Credentials::default()
        };
        // Minted with the second secret: still verifies (rotation).
        let user = "2000000000:bob";
        let pw = RestSecrets::password(b"new", user);
        let want = Keys::derive(user, "r", &pw);
        let v = creds.verify(user, "r", 1_900_000_000, &mut |k| *k == want);
        assert_eq!(v, Verdict::Match(want.clone()));
        assert_eq!(
            creds.verify(user, "r", 2_000_000_001, &mut |k| *k == want),
            Verdict::Expired
        );
        assert_eq!(
            creds.verify(user, "r", 1_900_000_000, &mut |_| false),
            Verdict::Mismatch
        );
    }

    #[test]
    fn static_users_are_per_realm() {
        let creds = Credentials {
            users: StaticUsers::new("example.org", [("alice".to_string(), "pw".to_string())]),
            ..Credentials::default()
        };
        let k = Keys::derive("alice", "example.org", "pw");
        assert_eq!(
            creds.verify("alice", "example.org", 0, &mut |x| *x == k),
            Verdict::Match(k.clone())
        );
        assert_eq!(
            creds.verify("alice", "other.org", 0, &mut |x| *x == k),
            Verdict::Unknown
        );
        assert_eq!(creds.verify("bob", "example.org", 0, &mut |_| true), Verdict::Unknown);
        assert_eq!(
            creds.verify("alice", "example.org", 0, &mut |_| false),
            Verdict::Mismatch
        );
    }
}
