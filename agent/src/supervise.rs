//! Supervision of plugin processes: start, forward output into the agent's log, restart
//! with exponential backoff, and stop them (SIGTERM, then SIGKILL) on shutdown.

use clusterlab_core::config::PluginConfig;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub use clusterlab_core::backoff::{next_backoff, HEALTHY_AFTER, MAX_BACKOFF, MIN_BACKOFF};

/// Runs every plugin until `stop` is cancelled; returns when all children are gone.
pub async fn run_all(plugins: Vec<PluginConfig>, grace: Duration, stop: CancellationToken) {
    let tasks: Vec<_> = plugins
        .into_iter()
        .map(|p| tokio::spawn(supervise(p, grace, stop.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Keeps one plugin running until `stop` is cancelled.
pub async fn supervise(plugin: PluginConfig, grace: Duration, stop: CancellationToken) {
    let mut backoff = Duration::ZERO;
    let mut starts: u64 = 0;
    loop {
        if stop.is_cancelled() {
            return;
        }
        starts += 1;
        let started = Instant::now();
        match spawn(&plugin) {
            Ok(mut child) => {
                tracing::info!(plugin = %plugin.name, pid = ?child.id(), starts, "plugin started");
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(plugin = %plugin.name, %status, ran_s = started.elapsed().as_secs_f32(), "plugin exited");
                    }
                    _ = stop.cancelled() => {
                        terminate(&plugin.name, &mut child, grace).await;
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(plugin = %plugin.name, command = ?plugin.command, error = %e, "cannot start plugin");
            }
        }
        backoff = next_backoff(backoff, started.elapsed());
        tracing::info!(plugin = %plugin.name, delay_ms = backoff.as_millis() as u64, "restarting plugin after backoff");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Starts one plugin's process with its output forwarded into the agent's log.
pub fn spawn(plugin: &PluginConfig) -> std::io::Result<Child> {
    let (prog, args) = plugin
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    for (stream, out) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            "stderr",
        ),
    ] {
        if let Some(stream) = stream {
            let name = plugin.name.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(target: "plugin", plugin = %name, stream = out, "{line}");
                }
            });
        }
    }
    Ok(child)
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILLs.
pub async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            tracing::info!(process = name, "stopped");
            return;
        }
        tracing::warn!(
            process = name,
            grace_s = grace.as_secs(),
            "did not stop after SIGTERM; killing"
        );
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dying_plugin_is_restarted_and_stopped_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("count");
        let script = format!("echo x >> {}; exit 1", marker.display());
        let plugin = PluginConfig {
            name: "t".into(),
            command: vec!["sh".into(), "-c".into(), script],
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(plugin, Duration::from_secs(1), stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut starts = 0;
        while Instant::now() < deadline {
            starts = std::fs::read_to_string(&marker)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            if starts >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            starts >= 2,
            "plugin started {starts} times, expected a restart"
        );
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_running_plugin_is_terminated_on_cancel() {
        let plugin = PluginConfig {
            name: "sleeper".into(),
            command: vec!["sleep".into(), "60".into()],
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(plugin, Duration::from_secs(2), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
