//! A configured program as the leader service (`leader_service.command`, e.g.
//! `jupyter notebook --port 8888`): started like a plugin, in a process group of its own,
//! its output in the agent's log, stopped by SIGTERM to the whole group and, after
//! `grace_s`, SIGKILL to the whole group: a `sh -c` wrapper's children or a notebook
//! server's kernels never keep serving on a node that no longer leads. When the command
//! exits by itself, what it left in its group is stopped too.

use super::{Launcher, LeaderServiceError};
use crate::supervise;
use clusterlab_core::config::PluginConfig;
use std::time::Duration;
use supervise::GroupChild;

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

/// A running command: its process group, and the grace its leftovers get when it exits.
#[derive(Debug)]
pub struct RunningCommand {
    child: GroupChild,
    grace: Duration,
}

impl RunningCommand {
    /// The command's process group.
    pub fn pgid(&self) -> Option<i32> {
        self.child.pgid()
    }
}

impl Launcher for CommandLauncher {
    type Running = RunningCommand;

    async fn start(&mut self) -> Result<RunningCommand, LeaderServiceError> {
        let child = supervise::spawn(&self.plugin).map_err(|source| LeaderServiceError::Spawn {
            command: self.plugin.command.clone(),
            source,
        })?;
        tracing::info!(pid = ?child.id(), command = ?self.plugin.command, "leader service command started");
        Ok(RunningCommand {
            child,
            grace: self.grace,
        })
    }

    async fn stop(&mut self, mut running: RunningCommand) {
        running.child.terminate(NAME, self.grace).await;
    }

    async fn ended(running: &mut RunningCommand) -> String {
        let why = match running.child.wait().await {
            Ok(status) => format!("command exited: {status}"),
            Err(e) => format!("waiting for the command failed: {e}"),
        };
        running.child.stop_leftovers(NAME, running.grace).await;
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::Pid;
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

    /// Waits up to 10 s for `cond`.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stopping_the_command_leaves_no_process_of_its_group() {
        let mut l = CommandLauncher::new(
            vec!["sh".into(), "-c".into(), "sleep 1000 & sleep 1000".into()],
            Duration::from_secs(2),
        );
        let running = l.start().await.unwrap();
        let pgid = Pid::from_raw(running.pgid().unwrap());
        // The shell and its background sleep at least (the last sleep may replace the
        // shell).
        eventually("the command's processes", || {
            supervise::live_members(pgid).len() >= 2
        })
        .await;
        let before = supervise::live_members(pgid);
        l.stop(running).await;
        assert!(
            !supervise::group_alive(pgid),
            "left of {before:?}: {:?}",
            supervise::live_members(pgid)
        );
    }

    #[tokio::test]
    async fn a_command_that_exits_has_its_grandchildren_stopped() {
        let mut l = CommandLauncher::new(
            vec!["sh".into(), "-c".into(), "sleep 1000 & exit 5".into()],
            Duration::from_secs(2),
        );
        let mut running = l.start().await.unwrap();
        let pgid = Pid::from_raw(running.pgid().unwrap());
        let why = tokio::time::timeout(
            Duration::from_secs(10),
            CommandLauncher::ended(&mut running),
        )
        .await
        .unwrap();
        assert!(why.contains('5'), "{why}");
        assert!(
            !supervise::group_alive(pgid),
            "left: {:?}",
            supervise::live_members(pgid)
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
