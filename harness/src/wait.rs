//! Waiting for a condition with a deadline. A failed wait reports what it last observed,
//! so a trial's failure says what the cluster looked like, not just "timed out".

use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// A condition that did not hold in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {:.1} s waiting for {what}; last observed: {last}", elapsed.as_secs_f64())]
pub struct WaitError {
    pub what: String,
    pub elapsed: Duration,
    pub last: String,
}

/// Polls `probe` every `poll` until it returns `Ok`, or fails after `timeout` with the last
/// `Err` the probe gave, as text. The `Err` is an observation (what the cluster looked like
/// instead), so anything that displays will do. Returns the value and how long it took.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut probe: F,
) -> Result<(T, Duration), WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let start = Instant::now();
    let mut last = String::from("(no observation yet)");
    loop {
        let remaining = timeout.saturating_sub(start.elapsed());
        match tokio::time::timeout(remaining.max(Duration::from_millis(1)), probe()).await {
            Ok(Ok(v)) => return Ok((v, start.elapsed())),
            Ok(Err(seen)) => last = seen.to_string(),
            Err(_) => last = format!("{last} (probe still running at the deadline)"),
        }
        if start.elapsed() >= timeout {
            return Err(WaitError {
                what: what.to_string(),
                elapsed: start.elapsed(),
                last,
            });
        }
        tokio::time::sleep(poll.min(timeout.saturating_sub(start.elapsed()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn returns_once_condition_holds() {
        let n = AtomicU32::new(0);
        let (v, _) = wait_for(
            "three polls",
            Duration::from_secs(5),
            Duration::from_millis(100),
            || async {
                let k = n.fetch_add(1, Ordering::SeqCst);
                if k >= 2 {
                    Ok(k)
                } else {
                    Err(format!("k={k}"))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(v, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_reports_last_observation() {
        let err = wait_for(
            "never",
            Duration::from_secs(1),
            Duration::from_millis(100),
            || async { Err::<(), _>("leader=node1".to_string()) },
        )
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("never"), "{text}");
        assert!(text.contains("leader=node1"), "{text}");
    }
}
