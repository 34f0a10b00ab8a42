use std::time::Duration;

use tokio::time::Instant;

/// Rate limit for reloads: at most one per `restart_interval`, plus a random share of it
/// (`restart_jitter`) so that a fleet does not reload in step. Changes that arrive meanwhile are
/// coalesced by the caller into the next reload.
#[derive(Debug, Clone)]
pub struct ReloadGate {
    interval: Duration,
    jitter: f64,
    next: Option<Instant>,
}

impl ReloadGate {
    pub fn new(interval: Duration, jitter: f64) -> Self {
        Self { interval, jitter: jitter.clamp(0.0, 1.0), next: None }
    }

    /// The earliest moment the next reload may happen.
    pub fn next_allowed(&self, now: Instant) -> Instant {
        self.next.map_or(now, |n| n.max(now))
    }

    /// A reload happened at `now`.
    pub fn record(&mut self, now: Instant) {
        let extra = if self.jitter > 0.0 { self.interval.mul_f64(self.jitter * rand::random::<f64>()) } else { Duration::ZERO };
        self.next = Some(now + self.interval + extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_reloads() {
        let mut g = ReloadGate::new(Duration::from_secs(2), 0.0);
        let t0 = Instant::now();
        assert_eq!(g.next_allowed(t0), t0);
        g.record(t0);
        assert_eq!(g.next_allowed(t0), t0 + Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(g.next_allowed(Instant::now()), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_its_share() {
        let mut g = ReloadGate::new(Duration::from_secs(2), 0.5);
        let t0 = Instant::now();
        for _ in 0..50 {
            g.record(t0);
            let wait = g.next_allowed(t0) - t0;
            assert!(wait >= Duration::from_secs(2) && wait <= Duration::from_secs(3), "{wait:?}");
        }
    }
}
