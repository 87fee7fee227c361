//! A configured program as the leader service (`leader_service.command`, e.g.
//! `jupyter notebook --port 8888`): started like a plugin, its output in the agent's log,
//! stopped with SIGTERM and, after `grace_s`, SIGKILL.

use super::{Launcher, LeaderServiceError};
use crate::supervise;
use clusterlab_core::config::PluginConfig;
use std::time::Duration;
use tokio::process::Child;

/// Name under which the program's output appears in the agent's log.
const NAME: &str = "leader-service";

/// Starts `command` as the leader service.
pub struct CommandLauncher {
    plugin: PluginConfig,
    grace: Duration,
}

impl CommandLauncher {
    pub fn new(command: Vec<String>, grace: Duration) -> Self {
        CommandLauncher {
            plugin: PluginConfig {
                name: NAME.into(),
                command,
            },
            grace,
        }
    }
}

impl Launcher for CommandLauncher {
    type Running = Child;

    async fn start(&mut self) -> Result<Child, LeaderServiceError> {
        let child = supervise::spawn(&self.plugin).map_err(|source| LeaderServiceError::Spawn {
            command: self.plugin.command.clone(),
            source,
        })?;
        tracing::info!(pid = ?child.id(), command = ?self.plugin.command, "leader service command started");
        Ok(child)
    }

    async fn stop(&mut self, mut child: Child) {
        supervise::terminate(NAME, &mut child, self.grace).await;
    }

    async fn ended(child: &mut Child) -> String {
        match child.wait().await {
            Ok(status) => format!("command exited: {status}"),
            Err(e) => format!("waiting for the command failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_command_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        // The trap is installed before the marker is written, so SIGTERM is surely ignored.
        let script = format!("trap '' TERM; touch {}; sleep 30", ready.display());
        let mut l = CommandLauncher::new(
            vec!["sh".into(), "-c".into(), script],
            Duration::from_millis(500),
        );
        let child = l.start().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "the command never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = Instant::now();
        l.stop(child).await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_command_that_exits_is_reported() {
        let mut l = CommandLauncher::new(
            vec!["sh".into(), "-c".into(), "exit 3".into()],
            Duration::from_secs(1),
        );
        let mut child = l.start().await.unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), CommandLauncher::ended(&mut child))
            .await
            .unwrap();
        assert!(why.contains('3'), "{why}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let mut l = CommandLauncher::new(vec!["/nonexistent/prog".into()], Duration::from_secs(1));
        assert!(matches!(
            l.start().await,
            Err(LeaderServiceError::Spawn { .. })
        ));
    }
}
