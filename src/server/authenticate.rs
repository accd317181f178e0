//! Long-term credential authentication (RFC 8489 §9.2): the checks in the RFC's order, the
//! 401/438 challenge with a stateless nonce, and the log line of a failure.

use std::time::Instant;

use super::stats::AuthFailure;
use super::{Engine, FiveTuple, Output, RelayIo};
use crate::auth::{Verdict, NONCE_LEN};
use crate::proto::{AttrType, Class, ErrorCode, Field, Message, MessageType, TurnAttributes};

/// PASSWORD-ALGORITHMS as sent in 401 and 438: SHA-256 first (preferred), then MD5.
const PASSWORD_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
const ALG_MD5: u16 = 0x0001;
const ALG_SHA256: u16 = 0x0002;

/// How a request authenticated.
pub(super) struct Auth<'m> {
    pub(super) username: &'m str,
    key: [u8; 32],
    key_len: usize,
    /// The request used MESSAGE-INTEGRITY-SHA256, so the response does too.
    sha256: bool,
}

impl Auth<'_> {
    pub(super) fn key(&self) -> (&[u8], bool) {
        (&self.key[..self.key_len], self.sha256)
    }
}

/// Why a request was not authenticated, and so how to answer.
pub(super) enum Reject {
    /// 401 with a fresh nonce, and a metric reason unless it is the first challenge.
    Unauthorized(Option<AuthFailure>),
    /// 438 with a fresh nonce.
    StaleNonce(AuthFailure),
    /// 400.
    BadRequest,
}

impl<R: RelayIo> Engine<R> {
    /// RFC 8489 §9.2.4: long-term credential checks, in the RFC's order.
    pub(super) fn authenticate<'m>(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'m>,
        attrs: &TurnAttributes<'m>,
        credentials: &dyn crate::auth::CredentialSource,
    ) -> Result<Auth<'m>, Reject> {
        if !msg.has_integrity() && !msg.has_integrity_sha256() {
            return Err(Reject::Unauthorized(None));
        }
        let (Some(username), Some(realm), Some(nonce)) = (attrs.username.ok(), attrs.realm.ok(), attrs.nonce.ok())
        else {
            self.stats.auth_failure(AuthFailure::malformed);
            return Err(Reject::BadRequest);
        };
        let unix_now = self.clock.unix_secs(now);
        match self.shared.nonce_key().check(nonce, unix_now, tuple) {
            crate::auth::NonceCheck::Valid => {}
            crate::auth::NonceCheck::Expired => return Err(Reject::StaleNonce(AuthFailure::stale_nonce)),
            crate::auth::NonceCheck::Invalid => return Err(Reject::StaleNonce(AuthFailure::invalid_nonce)),
        }
        if realm != self.config.realm {
            return Err(Reject::Unauthorized(Some(AuthFailure::wrong_realm)));
        }
        // PASSWORD-ALGORITHMS must echo ours and PASSWORD-ALGORITHM pick one of them; both or
        // neither (RFC 8489 §9.2.4 item on the nonce cookie).
        let algorithm = match (attrs.password_algorithms, attrs.password_algorithm) {
            (Field::Absent, Field::Absent) => ALG_MD5,
            (Field::Present(list), Field::Present(a)) if list == PASSWORD_ALGORITHMS => {
                if a != ALG_MD5 && a != ALG_SHA256 {
                    self.stats.auth_failure(AuthFailure::malformed);
                    return Err(Reject::BadRequest);
                }
                a
            }
            _ => {
                self.stats.auth_failure(AuthFailure::malformed);
                return Err(Reject::BadRequest);
            }
        };
        let use_sha256_mi = msg.has_integrity_sha256();
        let mut chosen = ([0u8; 32], 0usize);
        let verdict = credentials.verify(username, realm, unix_now, &mut |keys| {
            let key: &[u8] = if algorithm == ALG_SHA256 {
                &keys.sha256
            } else {
                &keys.md5
            };
            let ok = if use_sha256_mi {
                msg.verify_integrity_sha256(key)
            } else {
                msg.verify_integrity(key)
            };
            if ok {
                chosen.0[..key.len()].copy_from_slice(key);
                chosen.1 = key.len();
            }
            ok
        });
        match verdict {
            Verdict::Match(_) => Ok(Auth {
                username,
                key: chosen.0,
                key_len: chosen.1,
                sha256: use_sha256_mi,
            }),
            Verdict::Mismatch => Err(Reject::Unauthorized(Some(AuthFailure::bad_integrity))),
            Verdict::Unknown => Err(Reject::Unauthorized(Some(AuthFailure::unknown_user))),
            Verdict::Expired => Err(Reject::Unauthorized(Some(AuthFailure::expired_credential))),
        }
    }

    pub(super) fn reject<'x>(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
        msg: &Message<'_>,
        user: &str,
        reject: Reject,
        out: &mut [u8],
    ) -> Output<'x, R::Socket> {
        let (code, failure) = match reject {
            Reject::BadRequest => {
                self.log_auth(now, tuple, user, AuthFailure::malformed);
                return self.error(msg, tuple, ErrorCode::BAD_REQUEST, &[], out);
            }
            Reject::Unauthorized(f) => (ErrorCode::UNAUTHORIZED, f),
            Reject::StaleNonce(f) => (ErrorCode::STALE_NONCE, Some(f)),
        };
        if let Some(f) = failure {
            self.stats.auth_failure(f);
            self.log_auth(now, tuple, user, f);
        }
        let expiry = self.clock.unix_secs(now) + self.config.nonce_lifetime.as_secs();
        let offer = self.config.password_algorithms;
        let (nonce, nonce_len): ([u8; NONCE_LEN], usize) = self.shared.nonce_key().issue(expiry, tuple, offer);
        let typ = MessageType::new(msg.method(), Class::Error);
        let realm = self.config.realm.clone();
        // A challenge goes to anyone, so it is as small as the protocol allows: no reason
        // phrase, and PASSWORD-ALGORITHMS only when SHA-256 is offered.
        let len = self.respond(msg, typ, out, None, |w| {
            w.error_code_bare(code)?;
            w.attr(AttrType::REALM, realm.as_bytes())?;
            w.attr(AttrType::NONCE, &nonce[..nonce_len])?;
            if offer {
                w.attr(AttrType::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS)?;
            }
            Ok(())
        });
        Output::reply(*tuple, len)
    }

    fn log_auth(&mut self, now: Instant, tuple: &FiveTuple, user: &str, f: AuthFailure) {
        if let Some(suppressed) = self.log_limiter.allow(now) {
            tracing::info!(
                event = "auth failure",
                reason = ?f,
                user,
                client = %tuple.client,
                transport = tuple.transport.as_str(),
                suppressed,
                "authentication failed: {f:?}"
            );
        }
    }
}
