//! A connection's message rate: a token bucket on tokio's clock, so a test
//! with paused time drives it exactly.

use tokio::time::Instant;

/// `rate` messages per second, bursts of twice that. Refused messages pile
/// up as violations that drain at the same rate, so a client a little over
/// its rate is only throttled, and a flood is recognised quickly.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    violations: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: u32) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            tokens: rate * 2.0,
            violations: 0.0,
            at: Instant::now(),
        }
    }

    /// Takes a token for one message; false when the client is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.at = now;
        self.tokens = (self.tokens + refill).min(self.rate * 2.0);
        self.violations = (self.violations - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.violations += 1.0;
            false
        }
    }

    /// The first refusal of an episode (the client is told once, not per message).
    pub fn first_refusal(&self) -> bool {
        self.violations <= 1.0
    }

    /// Five seconds' worth of messages over the rate: the client is not slowing down.
    pub fn flooding(&self) -> bool {
        self.violations > self.rate * 5.0
    }
}

#[cfg(test)]
mod tests {
    use super::Bucket;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_twice_the_rate_then_the_rate_itself() {
        let mut bucket = Bucket::new(10);
        assert_eq!(
            (0..20).filter(|_| bucket.take()).count(),
            20,
            "a burst of twice the rate"
        );
        assert!(!bucket.take());
        assert!(bucket.first_refusal(), "told once");
        assert!(!bucket.take());
        assert!(!bucket.first_refusal(), "not told again");
        // A second refills ten tokens and drains the violations.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..20).filter(|_| bucket.take()).count(), 10);
        assert!(!bucket.flooding());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_recognised_and_a_pause_forgives_it() {
        let mut bucket = Bucket::new(10);
        for _ in 0..20 {
            bucket.take();
        }
        for _ in 0..50 {
            assert!(!bucket.take());
        }
        assert!(!bucket.flooding(), "five seconds' worth is the line");
        assert!(!bucket.take());
        assert!(bucket.flooding());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(bucket.take());
        assert!(!bucket.flooding());
        assert!(bucket.first_refusal());
    }
}
