//! How long to wait before trying again: doubling from a first wait up to a
//! longest, each wait stretched by up to a fraction of jitter, so clients (or
//! instances) that lost the same server do not all come back at once. The
//! listener reconnecting to Postgres and `pgfeed tail` reconnecting to a
//! server both wait by it.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    longest: Duration,
    /// Each wait is stretched by a random share of this fraction.
    jitter: f64,
    /// Tries that failed since the last success.
    failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, longest: Duration, jitter: f64) -> Backoff {
        Backoff {
            first,
            longest,
            jitter,
            failures: 0,
        }
    }

    /// The wait before the next try; counts one more failure.
    pub fn next_wait(&mut self) -> Duration {
        let doubled = self.first.saturating_mul(1 << self.failures.min(20));
        self.failures = self.failures.saturating_add(1);
        doubled.min(self.longest).mul_f64(1.0 + self.jitter * random_share())
    }

    /// A try succeeded: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A number in [0, 1) that differs from call to call, enough to spread retries.
fn random_share() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn doubling_up_to_the_longest_with_bounded_jitter_and_a_reset() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.2);
        let waits: Vec<f64> = (0..9).map(|_| backoff.next_wait().as_secs_f64()).collect();
        for (wait, base) in waits.iter().zip([1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]) {
            assert!((base..=base * 1.2).contains(wait), "{wait} for {base}");
        }
        backoff.reset();
        assert!(backoff.next_wait() <= Duration::from_millis(1200));
        let mut exact = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.0);
        assert_eq!(exact.next_wait(), Duration::from_millis(100));
        assert_eq!(exact.next_wait(), Duration::from_millis(200));
        for _ in 0..100 {
            exact.next_wait();
        }
        assert_eq!(
            exact.next_wait(),
            Duration::from_secs(5),
            "no overflow however many failures"
        );
    }
}
