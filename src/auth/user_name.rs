//! The name of a long-term-credential user: checked once, here, wherever it comes from (the
//! config file, `turnd user`, the users file).

use std::fmt;

/// Longest user name.
pub const MAX_USER_NAME: usize = 256;

/// A user name: 1 to 256 bytes, no `:` (reserved for TURN REST API usernames) and no
/// control characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    /// Checks `name`; the error says which rule it breaks.
    pub fn new(name: &str) -> Result<UserName, &'static str> {
        if name.is_empty() {
            return Err("user name is empty");
        }
        if name.len() > MAX_USER_NAME {
            return Err("user name is longer than 256 bytes");
        }
        if name.contains(':') {
            return Err("user name contains ':' (reserved for TURN REST API usernames)");
        }
        if name.chars().any(char::is_control) {
            return Err("user name contains control characters");
        }
        Ok(UserName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_once_with_a_reason() {
        assert_eq!(UserName::new("alice").map(|n| n.to_string()), Ok("alice".into()));
        assert_eq!(UserName::new(""), Err("user name is empty"));
        assert!(UserName::new("a:b").unwrap_err().contains("':'"));
        assert!(UserName::new("tab\there").unwrap_err().contains("control"));
        assert!(UserName::new(&"x".repeat(257)).unwrap_err().contains("256"));
        assert!(UserName::new(&"x".repeat(256)).is_ok());
    }
}
