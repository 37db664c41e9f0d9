//! The jti replay set (OIDC Back-Channel Logout 1.0 §2.6 step 8): a logout token's `jti` is
//! remembered until the token could no longer be accepted anyway (its `fresh_until`).
//!
//! Bound: `cap` jtis. At the cap, expired ones are dropped first; if it is still full, the
//! token is accepted without being remembered (counted and logged): a replayed logout token
//! can only revoke again what it revoked already, so refusing the logout would be the worse
//! failure. With the endpoint's rate bound (`rate_per_second`, burst 2x) and `max_age`, the
//! set holds at most `rate * (max_age + leeway)` live jtis, far below the default cap.

use std::collections::HashMap;

use parking_lot::Mutex;

/// What [`ReplaySet::remember`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First sight: remembered.
    New,
    /// Seen before and still fresh: a replay.
    Replayed,
    /// First sight, but the set is full: not remembered.
    Full,
}

/// (issuer, jti) -> until when it is remembered.
type Jtis = HashMap<(Box<str>, Box<str>), u64, ahash::RandomState>;

/// jti -> until when it is remembered, per issuer. The lock is never held across `.await`.
pub struct ReplaySet {
    inner: Mutex<Jtis>,
    cap: usize,
}

impl ReplaySet {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(HashMap::default()),
            cap,
        }
    }

    /// Records `jti` of `issuer` until `until` unless it is already there.
    pub fn remember(&self, issuer: &str, jti: &str, until: u64, now: u64) -> Seen {
        let mut m = self.inner.lock();
        let key = (Box::<str>::from(issuer), Box::<str>::from(jti));
        if m.get(&key).is_some_and(|u| *u > now) {
            return Seen::Replayed;
        }
        if m.len() >= self.cap {
            m.retain(|_, u| *u > now);
            if m.len() >= self.cap {
                return Seen::Full;
            }
        }
        m.insert(key, until);
        Seen::New
    }

    /// Forgets a jti (its logout could not be applied, so a retry must be possible).
    pub fn forget(&self, issuer: &str, jti: &str) {
        self.inner
            .lock()
            .remove(&(Box::<str>::from(issuer), Box::<str>::from(jti)));
    }

    /// Drops expired jtis.
    pub fn sweep(&self, now: u64) {
        self.inner.lock().retain(|_, u| *u > now);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_are_caught_until_the_token_goes_stale() {
        let s = ReplaySet::new(2);
        assert_eq!(s.remember("i", "a", 100, 10), Seen::New);
        assert_eq!(s.remember("i", "a", 100, 50), Seen::Replayed);
        assert_eq!(s.remember("j", "a", 100, 50), Seen::New, "per issuer");
        assert_eq!(s.remember("i", "b", 100, 50), Seen::Full);
        assert_eq!(
            s.remember("i", "a", 200, 100),
            Seen::New,
            "stale: dropped at the cap"
        );
        s.sweep(1000);
        assert!(s.is_empty());
    }
}
