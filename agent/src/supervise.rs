//! Supervision of plugin processes: start, forward output into the agent's log, restart
//! with exponential backoff, and stop them (SIGTERM, then SIGKILL) on shutdown.
//!
//! Every plugin (and the leader service's command) runs in a process group of its own, and
//! stopping it signals the whole group: a `sh -c` wrapper's children, or a server's workers,
//! go with it. When a plugin exits by itself, what it left behind in its group is stopped
//! before it is started again. A process that leaves its group on purpose (`setsid`, a
//! daemon's double fork) is beyond the agent's reach.
//!
//! Output is read as bytes, not text: invalid UTF-8 is replaced, control characters are
//! escaped, and a line longer than [`MAX_LOG_LINE`] bytes is logged in pieces, so a plugin
//! writing binary keeps running and keeps being logged.
//!
//! [`PluginHealth`] records each plugin's state for the health API, which reports a plugin
//! in a crash loop.

use clusterlab_core::config::PluginConfig;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

pub use clusterlab_core::backoff::{next_backoff, HEALTHY_AFTER, MAX_BACKOFF, MIN_BACKOFF};

/// The longest piece of a plugin's output logged as one line; a longer line is logged in
/// pieces of this size, each marked `cut`.
pub const MAX_LOG_LINE: usize = 4096;

/// A plugin that exited this many times in a row, each time after less than
/// [`HEALTHY_AFTER`], is in a crash loop (the health API reports it).
pub const CRASH_LOOP_AFTER: u32 = 3;

/// How often a stopping group is checked for members left.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How long the members of a group get to vanish after SIGKILL before the agent says so.
const AFTER_KILL: Duration = Duration::from_secs(2);

/// What the health API says about one plugin.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PluginReport {
    pub name: String,
    /// Whether a process of the plugin runs now.
    pub running: bool,
    pub pid: Option<u32>,
    /// How often it was started (or a start was tried).
    pub starts: u64,
    /// Exits (or failed starts) in a row, each after less than [`HEALTHY_AFTER`].
    pub quick_exits: u32,
    /// How the last run ended, if one did.
    pub last_exit: Option<String>,
    /// `quick_exits` reached [`CRASH_LOOP_AFTER`] and the current run, if any, is not yet
    /// [`HEALTHY_AFTER`] old.
    pub crash_loop: bool,
}

#[derive(Debug, Clone)]
struct PluginState {
    pid: Option<u32>,
    started: Option<Instant>,
    starts: u64,
    quick_exits: u32,
    last_exit: Option<String>,
}

/// Every plugin's state, shared between the supervisors (who write it) and the health API
/// (who reads it). Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct PluginHealth {
    inner: Arc<Mutex<BTreeMap<String, PluginState>>>,
}

impl PluginHealth {
    /// A registry listing `plugins`, none started yet.
    pub fn new(plugins: &[PluginConfig]) -> Self {
        let h = PluginHealth::default();
        for p in plugins {
            h.update(&p.name, |_| {});
        }
        h
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut PluginState)) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let st = map.entry(name.to_string()).or_insert(PluginState {
            pid: None,
            started: None,
            starts: 0,
            quick_exits: 0,
            last_exit: None,
        });
        f(st);
    }

    fn started(&self, name: &str, pid: Option<u32>) {
        self.update(name, |s| {
            s.pid = pid;
            s.started = Some(Instant::now());
            s.starts += 1;
        });
    }

    fn ended(&self, name: &str, why: String, ran: Duration) {
        self.update(name, |s| {
            s.pid = None;
            s.started = None;
            if ran < HEALTHY_AFTER {
                s.quick_exits = s.quick_exits.saturating_add(1);
            } else {
                s.quick_exits = 0;
            }
            s.last_exit = Some(why);
        });
    }

    fn start_failed(&self, name: &str, why: String) {
        self.update(name, |s| {
            s.starts += 1;
            s.pid = None;
            s.started = None;
            s.quick_exits = s.quick_exits.saturating_add(1);
            s.last_exit = Some(why);
        });
    }

    /// Every plugin's report, by name, as seen at `now`.
    pub fn reports_at(&self, now: Instant) -> Vec<PluginReport> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(name, s)| {
                let healthy_run = s
                    .started
                    .is_some_and(|t| now.saturating_duration_since(t) >= HEALTHY_AFTER);
                PluginReport {
                    name: name.clone(),
                    running: s.started.is_some(),
                    pid: s.pid,
                    starts: s.starts,
                    quick_exits: s.quick_exits,
                    last_exit: s.last_exit.clone(),
                    crash_loop: s.quick_exits >= CRASH_LOOP_AFTER && !healthy_run,
                }
            })
            .collect()
    }

    /// [`PluginHealth::reports_at`] now.
    pub fn reports(&self) -> Vec<PluginReport> {
        self.reports_at(Instant::now())
    }
}

/// Runs every plugin until `stop` is cancelled; returns when all children are gone.
pub async fn run_all(
    plugins: Vec<PluginConfig>,
    grace: Duration,
    stop: CancellationToken,
    health: PluginHealth,
) {
    let tasks: Vec<_> = plugins
        .into_iter()
        .map(|p| tokio::spawn(supervise(p, grace, stop.clone(), health.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Keeps one plugin running until `stop` is cancelled.
pub async fn supervise(
    plugin: PluginConfig,
    grace: Duration,
    stop: CancellationToken,
    health: PluginHealth,
) {
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
                health.started(&plugin.name, child.id());
                tokio::select! {
                    status = child.wait() => {
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(plugin = %plugin.name, %status, ran_s = started.elapsed().as_secs_f32(), "plugin exited");
                        health.ended(&plugin.name, status, started.elapsed());
                        // Whatever it started in its group goes too, before the next start.
                        child.stop_leftovers(&plugin.name, grace).await;
                    }
                    _ = stop.cancelled() => {
                        child.terminate(&plugin.name, grace).await;
                        health.ended(&plugin.name, "stopped by the agent".into(), started.elapsed());
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(plugin = %plugin.name, command = ?plugin.command, error = %e, "cannot start plugin");
                health.start_failed(&plugin.name, format!("cannot start: {e}"));
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

/// A child process that leads a process group of its own. Stopping it signals the whole
/// group; dropping it SIGKILLs whatever is left of the group (the agent's last word when it
/// exits without stopping it, e.g. on a panic).
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    /// The group's id (the child's pid); `None` once the group is known to be empty.
    pgid: Option<Pid>,
    /// When the SIGTERM's grace runs out, once one was sent. A stop that is cancelled and
    /// started again (the leader service's control loop wakes often) resumes this deadline
    /// instead of granting a fresh grace, so SIGKILL does come.
    kill_at: Option<tokio::time::Instant>,
}

impl GroupChild {
    /// The leader's pid, while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process group's id, while the group may still have members.
    pub fn pgid(&self) -> Option<i32> {
        self.pgid.map(|p| p.as_raw())
    }

    /// Waits for the group's leader (the started program) to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Without waiting, whether the leader has exited (and been reaped).
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// After the leader exited by itself: stops what it left running in its group, if
    /// anything.
    pub async fn stop_leftovers(&mut self, name: &str, grace: Duration) {
        let Some(pgid) = self.pgid else { return };
        if group_alive(pgid) {
            tracing::warn!(process = name, pgid = pgid.as_raw(), left = ?live_members(pgid), "exited but left processes in its group; stopping them");
            self.terminate(name, grace).await;
        } else {
            self.pgid = None;
        }
    }

    /// Stops the whole group: SIGTERM to every member, up to `grace` for the leader to exit
    /// and the group to empty, then SIGKILL to every member left. Returns when no live member
    /// is left (or, for a member that survives even SIGKILL, after saying so).
    pub async fn terminate(&mut self, name: &str, grace: Duration) {
        let Some(pgid) = self.pgid else {
            let _ = self.child.kill().await;
            return;
        };
        let kill_at = match self.kill_at {
            Some(at) => at,
            None => {
                let _ = killpg(pgid, Signal::SIGTERM);
                *self.kill_at.insert(tokio::time::Instant::now() + grace)
            }
        };
        let child = &mut self.child;
        let gone = tokio::time::timeout_at(kill_at, async {
            let _ = child.wait().await;
            while group_alive(pgid) {
                tokio::time::sleep(GROUP_POLL).await;
            }
        })
        .await
        .is_ok();
        if gone {
            tracing::info!(process = name, pgid = pgid.as_raw(), "stopped");
            self.pgid = None;
            return;
        }
        let left = live_members(pgid);
        tracing::warn!(
            process = name,
            pgid = pgid.as_raw(),
            grace_s = grace.as_secs_f32(),
            left = ?left,
            "did not stop after SIGTERM; killing the process group"
        );
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = self.child.kill().await;
        let deadline = Instant::now() + AFTER_KILL;
        while group_alive(pgid) {
            if Instant::now() >= deadline {
                tracing::error!(process = name, pgid = pgid.as_raw(), left = ?live_members(pgid), "processes of the group survived SIGKILL");
                return;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        self.pgid = None;
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            if group_alive(pgid) {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
    }
}

/// Whether process group `pgid` has a member that is not a zombie. A zombie is dead already
/// and only waits to be reaped by its parent (for an orphan, PID 1).
pub fn group_alive(pgid: Pid) -> bool {
    match killpg(pgid, None) {
        Err(Errno::ESRCH) => false,
        // Somebody is there (EPERM: a member we may not signal, which is still a member).
        _ => match group_members(pgid) {
            Some(members) => members.iter().any(|(_, state)| *state != 'Z'),
            None => true,
        },
    }
}

/// The members of group `pgid` that are not zombies, as `pid state` (for logs).
pub fn live_members(pgid: Pid) -> Vec<String> {
    group_members(pgid)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, s)| *s != 'Z')
        .map(|(pid, s)| format!("{pid} {s}"))
        .collect()
}

/// Every process in group `pgid` with its state letter, from /proc; `None` if /proc cannot
/// be read.
fn group_members(pgid: Pid) -> Option<Vec<(i32, char)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        // A process that exited since the listing has no stat any more: not a member.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, pgrp)) = parse_stat(&stat) {
            if pgrp == pgid.as_raw() {
                out.push((pid, state));
            }
        }
    }
    Some(out)
}

/// The state letter and process group of a `/proc/<pid>/stat` line. The command name in
/// parentheses may hold anything, parentheses and spaces included, so the fields are
/// counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// Starts one plugin's process, leading a process group of its own, with its output
/// forwarded into the agent's log.
pub fn spawn(plugin: &PluginConfig) -> std::io::Result<GroupChild> {
    let (prog, args) = plugin
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    for (stream, out) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            "stderr",
        ),
    ] {
        if let Some(stream) = stream {
            let name = plugin.name.clone();
            tokio::spawn(async move {
                let result = forward_lines(stream, MAX_LOG_LINE, |line, cut| {
                    tracing::info!(target: "plugin", plugin = %name, stream = out, cut, "{line}");
                })
                .await;
                if let Err(e) = result {
                    tracing::warn!(plugin = %name, stream = out, error = %e, "cannot read the plugin's output any more");
                }
            });
        }
    }
    Ok(GroupChild {
        child,
        pgid,
        kill_at: None,
    })
}

/// Reads `reader` to its end and hands every line to `emit` as clean text: invalid UTF-8
/// replaced, control characters other than tab escaped, a trailing `\r` dropped. A line
/// longer than `max` bytes is handed over in pieces of `max` bytes with `cut` set.
pub async fn forward_lines<R: AsyncRead + Unpin>(
    reader: R,
    max: usize,
    mut emit: impl FnMut(&str, bool),
) -> std::io::Result<()> {
    let max = max.max(1);
    let mut r = BufReader::new(reader);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = match r.fill_buf().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if !line.is_empty() {
                    emit(&clean_line(&line), false);
                }
                return Err(e);
            }
        };
        if buf.is_empty() {
            if !line.is_empty() {
                emit(&clean_line(&line), false);
            }
            return Ok(());
        }
        // Room for `room` more bytes; one byte beyond tells a full line from a cut one.
        let room = max - line.len();
        let look = buf.len().min(room + 1);
        match buf[..look].iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                emit(&clean_line(&line), false);
                line.clear();
            }
            None if look > room => {
                line.extend_from_slice(&buf[..room]);
                r.consume(room);
                emit(&clean_line(&line), true);
                line.clear();
            }
            None => {
                line.extend_from_slice(&buf[..look]);
                r.consume(look);
            }
        }
    }
}

/// One line of output as loggable text.
fn clean_line(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends SIGTERM to a child that is not a group leader (etcd), waits up to `grace`, then
/// SIGKILLs it.
pub async fn terminate(name: &str, child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
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

    fn sh(name: &str, script: &str) -> PluginConfig {
        PluginConfig {
            name: name.into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
        }
    }

    /// Waits up to 10 s for `cond`, polling.
    async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pids of the group's live members, once there are at least `n`.
    async fn members(pgid: Pid, n: usize) -> Vec<i32> {
        let mut seen = Vec::new();
        eventually(&format!("{n} members in group {pgid}"), || {
            seen = group_members(pgid)
                .unwrap()
                .into_iter()
                .filter(|(_, s)| *s != 'Z')
                .map(|(p, _)| p)
                .collect();
            seen.len() >= n
        })
        .await;
        seen
    }

    /// Whether `pid` still runs (exists and is not a zombie).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
            .is_some_and(|(state, _)| state != 'Z')
    }

    #[tokio::test]
    async fn a_dying_plugin_is_restarted_and_stopped_on_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("count");
        let plugin = sh("t", &format!("echo x >> {}; exit 1", marker.display()));
        let stop = CancellationToken::new();
        let health = PluginHealth::new(std::slice::from_ref(&plugin));
        let task = tokio::spawn(supervise(
            plugin,
            Duration::from_secs(1),
            stop.clone(),
            health.clone(),
        ));
        let mut starts = 0;
        eventually("a restart", || {
            starts = std::fs::read_to_string(&marker)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            starts >= 2
        })
        .await;
        // Three quick exits in a row: the health API calls it a crash loop.
        eventually("a crash loop in the health report", || {
            health.reports()[0].crash_loop
        })
        .await;
        let r = &health.reports()[0];
        assert_eq!(r.name, "t");
        assert!(r.quick_exits >= CRASH_LOOP_AFTER, "{r:?}");
        assert!(r.last_exit.as_deref().unwrap_or("").contains('1'), "{r:?}");
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
        let health = PluginHealth::new(std::slice::from_ref(&plugin));
        let task = tokio::spawn(supervise(
            plugin,
            Duration::from_secs(2),
            stop.clone(),
            health.clone(),
        ));
        eventually("the plugin to run", || health.reports()[0].running).await;
        assert!(!health.reports()[0].crash_loop);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let r = &health.reports()[0];
        assert!(!r.running && r.pid.is_none(), "{r:?}");
    }

    #[tokio::test]
    async fn stopping_a_plugin_stops_its_whole_process_group() {
        let mut child = spawn(&sh("group", "sleep 1000 & sleep 1000 & wait")).unwrap();
        let pgid = Pid::from_raw(child.pgid().unwrap());
        assert_eq!(pgid.as_raw() as u32, child.id().unwrap());
        // The shell and both sleeps.
        let pids = members(pgid, 3).await;
        child.terminate("group", Duration::from_secs(5)).await;
        assert!(!group_alive(pgid), "left: {:?}", live_members(pgid));
        assert_eq!(
            killpg(pgid, None).err().filter(|e| *e != Errno::ESRCH),
            None
        );
        for p in pids {
            assert!(!running(p), "process {p} of the group survived");
        }
    }

    #[tokio::test]
    async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        // SIG_IGN is inherited: the sleeps ignore SIGTERM too.
        let script = format!(
            "trap '' TERM; sleep 1000 & sleep 1000 & touch {}; wait",
            ready.display()
        );
        let mut child = spawn(&sh("stubborn", &script)).unwrap();
        let pgid = Pid::from_raw(child.pgid().unwrap());
        eventually("the script to start", || ready.exists()).await;
        let pids = members(pgid, 3).await;
        let t = Instant::now();
        child
            .terminate("stubborn", Duration::from_millis(500))
            .await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(!group_alive(pgid), "left: {:?}", live_members(pgid));
        for p in pids {
            assert!(!running(p), "process {p} of the group survived");
        }
    }

    #[tokio::test]
    async fn a_stop_cancelled_and_started_again_keeps_its_deadline() {
        let script = "trap '' TERM; sleep 1000 & sleep 1000 & wait";
        let mut child = spawn(&sh("restarted", script)).unwrap();
        let pgid = Pid::from_raw(child.pgid().unwrap());
        members(pgid, 3).await;
        let grace = Duration::from_millis(600);
        let t = Instant::now();
        // Interrupted every 100 ms, as a select in a busy loop would.
        while group_alive(pgid) {
            assert!(t.elapsed() < Duration::from_secs(5), "never killed");
            let _ = tokio::time::timeout(
                Duration::from_millis(100),
                child.terminate("restarted", grace),
            )
            .await;
        }
        assert!(
            t.elapsed() >= Duration::from_millis(550),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn dropping_a_group_child_kills_the_group() {
        let child = spawn(&sh("dropped", "sleep 1000 & sleep 1000 & wait")).unwrap();
        let pgid = Pid::from_raw(child.pgid().unwrap());
        let pids = members(pgid, 3).await;
        drop(child);
        eventually("the dropped group to vanish", || !group_alive(pgid)).await;
        for p in pids {
            assert!(!running(p), "process {p} of the group survived");
        }
    }

    #[tokio::test]
    async fn a_plugin_that_exits_has_its_leftovers_stopped() {
        // The shell exits at once; its background sleep stays in the group.
        let mut child = spawn(&sh("leaver", "sleep 1000 & exit 0")).unwrap();
        let pgid = Pid::from_raw(child.pgid().unwrap());
        child.wait().await.unwrap();
        let left = members(pgid, 1).await;
        child.stop_leftovers("leaver", Duration::from_secs(5)).await;
        assert!(!group_alive(pgid), "left: {:?}", live_members(pgid));
        for p in left {
            assert!(!running(p), "process {p} survived");
        }
    }

    #[tokio::test]
    async fn binary_output_neither_stops_the_reader_nor_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("after");
        // Far more than a pipe holds: if the reader gave up at the first invalid byte, the
        // pipe would close and the shell die of SIGPIPE before it could touch the marker.
        let script = format!(
            "head -c 300000 /dev/urandom; printf '\\377\\376 not utf-8\\n'; echo after; touch {}; sleep 1000",
            marker.display()
        );
        let mut child = spawn(&sh("garbage", &script)).unwrap();
        eventually("the plugin to get past its binary output", || {
            marker.exists()
        })
        .await;
        assert!(child.try_wait().unwrap().is_none(), "the plugin died");
        child.terminate("garbage", Duration::from_secs(2)).await;
    }

    #[tokio::test]
    async fn lines_are_decoded_lossily_escaped_and_bounded() {
        let mut input: Vec<u8> = b"plain\n".to_vec();
        input.extend_from_slice(b"bad \xff\xfe bytes\r\n");
        input.extend_from_slice(b"esc \x1b[31mred\x1b[0m\tTab\n");
        input.extend(std::iter::repeat_n(b'a', 25));
        input.extend_from_slice(b"\nno newline at the end");
        let mut got = Vec::new();
        forward_lines(&input[..], 10, |l, cut| got.push((l.to_string(), cut)))
            .await
            .unwrap();
        let want: Vec<(String, bool)> = [
            ("plain", false),
            ("bad \u{fffd}\u{fffd} byt", true),
            ("es", false),
            ("esc \\u{1b}[31mr", true),
            // Exactly ten bytes before the newline: whole, not cut.
            ("ed\\u{1b}[0m\tTab", false),
            ("aaaaaaaaaa", true),
            ("aaaaaaaaaa", true),
            ("aaaaa", false),
            ("no newline", true),
            (" at the en", true),
            ("d", false),
        ]
        .iter()
        .map(|(l, c)| (l.to_string(), *c))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(parse_stat("42 (a) b (c) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (sleep) Z 1 9 9"), Some(('Z', 9)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_crash_loop_ends_with_a_healthy_run() {
        let h = PluginHealth::new(&[]);
        for _ in 0..CRASH_LOOP_AFTER {
            h.started("p", Some(1));
            h.ended("p", "exit status: 1".into(), Duration::from_secs(1));
        }
        assert!(h.reports()[0].crash_loop);
        h.started("p", Some(2));
        let now = Instant::now();
        assert!(h.reports_at(now)[0].crash_loop, "just restarted");
        assert!(
            !h.reports_at(now + HEALTHY_AFTER)[0].crash_loop,
            "running for HEALTHY_AFTER"
        );
        h.ended("p", "exit status: 0".into(), HEALTHY_AFTER);
        let r = &h.reports()[0];
        assert_eq!(r.quick_exits, 0);
        assert!(!r.crash_loop && !r.running, "{r:?}");
        // A plugin that cannot even start counts as well.
        for _ in 0..CRASH_LOOP_AFTER {
            h.start_failed("q", "cannot start: not found".into());
        }
        assert!(h.reports()[1].crash_loop);
    }
}
