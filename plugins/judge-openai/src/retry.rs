//! When to try a request again, and how long to wait first: exponential backoff with jitter, or the server's
//! `Retry-After` when it sends one. Pure, so the policy is tested without a clock.

use std::time::Duration;

/// The longest `Retry-After` honoured: a server asking for more is treated as asking for this, so a bogus
/// header cannot park a stage for a day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// How a failed attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Worth another try (429, 5xx, a timeout, a refused or dropped connection); `retry_after` is the server's
    /// `Retry-After`, if any.
    Transient { message: String, retry_after: Option<Duration> },
    /// Trying again cannot help (400, 401, 404, a malformed response body, a bad URL).
    Permanent(String),
}

/// The retry policy of one op.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    /// Tries per request, the first included.
    pub max_attempts: u32,
    /// The wait after the first failure.
    pub base: Duration,
    /// The longest computed wait (before jitter).
    pub cap: Duration,
}

impl Policy {
    /// The wait after failed attempt `attempt` (1-based), or `None` when no attempt is left. `jitter` is a
    /// uniform draw in `[0, 1)`: the wait is uniform in `[d/2, d)` for the exponential `d = min(cap, base·2^(n-1))`
    /// ("equal jitter": clients that failed together spread out, yet none retries at once). A `Retry-After` is
    /// used as given (up to [`MAX_RETRY_AFTER`]): the server knows when it will have room.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        if let Some(after) = retry_after {
            return Some(after.min(MAX_RETRY_AFTER));
        }
        let doublings = attempt.saturating_sub(1).min(32);
        let exp = self.base.saturating_mul(1u32 << doublings.min(31)).min(self.cap);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        Some(exp.mul_f64(0.5 + 0.5 * jitter))
    }
}

/// A `Retry-After` header value: delay-seconds (an HTTP-date is not worth a date parser here; it is ignored,
/// and the backoff applies).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let secs: f64 = v.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// Whether an HTTP status is worth retrying: rate limits, request timeouts and server errors.
pub(crate) fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && status != 501
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy { max_attempts: 5, base: Duration::from_millis(100), cap: Duration::from_millis(350) };

    #[test]
    fn waits_double_up_to_the_cap_with_equal_jitter() {
        let lo: Vec<u128> = (1..5).map(|n| P.wait(n, None, 0.0).unwrap().as_millis()).collect();
        let hi: Vec<u128> = (1..5).map(|n| P.wait(n, None, 0.999_999).unwrap().as_millis()).collect();
        assert_eq!(lo, [50, 100, 175, 175]);
        assert_eq!(hi, [99, 199, 349, 349]);
        for n in 1..5 {
            for j in [0.0, 0.25, 0.5, 0.75, 0.99] {
                let w = P.wait(n, None, j).unwrap();
                assert!(w >= P.wait(n, None, 0.0).unwrap() && w <= P.wait(n, None, 0.999_999).unwrap());
            }
        }
    }

    #[test]
    fn no_wait_once_the_attempts_are_spent() {
        assert_eq!(P.wait(5, None, 0.5), None);
        assert_eq!(P.wait(6, Some(Duration::ZERO), 0.5), None);
        let once = Policy { max_attempts: 1, ..P };
        assert_eq!(once.wait(1, None, 0.5), None);
    }

    #[test]
    fn retry_after_is_honoured_as_given_up_to_a_limit() {
        assert_eq!(P.wait(1, Some(Duration::ZERO), 0.9), Some(Duration::ZERO));
        assert_eq!(P.wait(3, Some(Duration::from_secs(2)), 0.1), Some(Duration::from_secs(2)));
        assert_eq!(P.wait(1, Some(Duration::from_secs(100_000)), 0.1), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn huge_attempt_numbers_and_odd_jitter_do_not_overflow() {
        let p = Policy { max_attempts: u32::MAX, base: Duration::from_secs(1), cap: Duration::from_secs(60) };
        assert_eq!(p.wait(1000, None, f64::NAN), Some(Duration::from_secs(30)));
        assert_eq!(p.wait(40, None, 7.0), Some(Duration::from_secs(60)));
        let zero = Policy { base: Duration::ZERO, cap: Duration::ZERO, ..p };
        assert_eq!(zero.wait(3, None, 0.5), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_headers() {
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("99999999"), Some(MAX_RETRY_AFTER));
        for bad in ["", "-1", "soon", "Wed, 21 Oct 2015 07:28:00 GMT", "1e3", ".", "1..2"] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn which_statuses_are_retried() {
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(transient_status(s), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422, 501] {
            assert!(!transient_status(s), "{s}");
        }
    }
}
