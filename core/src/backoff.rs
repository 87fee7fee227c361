//! The restart backoff of clusterlab's long-running loops: the agent's plugin supervisor and
//! leader service, and sshkeys' resync.

use std::time::Duration;

/// First restart delay; doubled after each quick failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between restarts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran at least this long is considered healthy; its backoff resets.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// The delay before the next start, given the previous delay and how long the child ran.
pub fn next_backoff(prev: Duration, ran_for: Duration) -> Duration {
    if ran_for >= HEALTHY_AFTER {
        MIN_BACKOFF
    } else {
        (prev * 2).clamp(MIN_BACKOFF, MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let quick = Duration::from_secs(1);
        let mut b = next_backoff(Duration::ZERO, quick);
        assert_eq!(b, MIN_BACKOFF);
        b = next_backoff(b, quick);
        assert_eq!(b, MIN_BACKOFF * 2);
        for _ in 0..20 {
            b = next_backoff(b, quick);
        }
        assert_eq!(b, MAX_BACKOFF);
        assert_eq!(next_backoff(b, HEALTHY_AFTER), MIN_BACKOFF);
    }
}
