//! A token bucket: a rate bound for work a client can cause (admitting never-seen dynamic
//! realms, request-triggered refetches, the revocation endpoints). Pure but for the `Instant`s the
//! caller passes in.

use std::time::Instant;

/// `rate` tokens a second, holding at most `2 × rate` (at least 1).
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second);
        let burst = (rate * 2.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn admits_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert_eq!(
            (0..10).filter(|_| b.try_take(t0)).count(),
            4,
            "burst is 2x rate"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!(b.try_take(t0 + Duration::from_millis(700)));
        assert!(!b.try_take(t0 + Duration::from_millis(700)));
        let mut zero = TokenBucket::new(0, t0);
        assert!(zero.try_take(t0), "a zero rate still holds one token");
        assert!(
            !zero.try_take(t0 + Duration::from_secs(3600)),
            "and never refills"
        );
    }
}
