//! `sshkeys sync`: keep this node's SSH trust current for as long as the node runs.
//!
//! One loop reacts to four things: a change in the shared key folders or the hosts file
//! (inotify through the notify crate), a short poll tick (the fallback when events are lost or
//! the watch could not be set up), sshd exiting (restarted with backoff), and shutdown. Every
//! trigger runs the same idempotent [`rebuild`]: scan, assemble, write only what changed.
//! Refusals are warned about once each, naming the file, and repeated only when they change.

use crate::assemble;
use crate::fsutil::{self, FsError, Owner};
use crate::keys::{self, KeyError, NodeKeys, Paths};
use crate::scan::{self, Refused};
use crate::system::{self, Account, SystemError};
use clusterlab_core::config::Config;
use clusterlab_core::config::Peer;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Failures that stop `sshkeys sync` (the agent restarts it with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    System(#[from] SystemError),
}

/// Quiet time after a file event before rebuilding.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How `sync` runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Start and supervise sshd (off for a trust-files-only run).
    pub run_sshd: bool,
    /// Set up the cluster user and ~/.ssh (off in tests that run unprivileged).
    pub manage_user: bool,
    /// Rebuild once and return instead of watching.
    pub once: bool,
    /// Poll period while some path could not be watched (no file events for it).
    pub poll: Duration,
    /// Poll period while every path is watched: file events bring changes, the poll only
    /// catches what they could miss (a watched folder removed and made again) and sets the
    /// watches up again.
    pub watched_poll: Duration,
}

/// [`SyncOptions::watched_poll`] by default: an idle node's sync then wakes twice a minute.
pub const WATCHED_POLL: Duration = Duration::from_secs(30);

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            run_sshd: true,
            manage_user: true,
            once: false,
            poll: Duration::from_secs(1),
            watched_poll: WATCHED_POLL,
        }
    }
}

/// Where authorized_keys goes and who owns it.
#[derive(Debug, Clone)]
pub struct AuthorizedTarget {
    pub path: PathBuf,
    pub owner: Option<Owner>,
}

/// Everything one rebuild needs.
#[derive(Debug, Clone)]
pub struct TrustContext {
    pub node: String,
    pub user: String,
    pub paths: Paths,
    pub peers: Vec<Peer>,
    pub keys: NodeKeys,
    pub authorized: AuthorizedTarget,
}

/// What a rebuild saw and did.
#[derive(Debug, Clone, Default)]
pub struct RebuildOutcome {
    pub users: Vec<String>,
    pub hosts: Vec<String>,
    pub refused: Vec<Refused>,
    pub republished: bool,
    /// Why publishing this node's own keys failed, if it did. Not fatal: the trust files are
    /// still rebuilt from what is published, and the next rebuild publishes again.
    pub publish_error: Option<String>,
    /// Lines of the hosts block left out because they disagree with the peer list.
    pub dropped_lines: Vec<String>,
    pub authorized_changed: bool,
    pub known_hosts_changed: bool,
}

/// The text of the hosts file, or nothing when it is missing or refused: it is on a
/// volume every node can write, so it is read with a size limit and never through a
/// symlink, FIFO or device. A missing or unreadable file only costs the hostN aliases.
pub(crate) fn read_hosts_file(path: &std::path::Path) -> String {
    use clusterlab_core::fsread::{read_small_file, MAX_HOSTS_FILE_BYTES};
    match read_small_file(path, MAX_HOSTS_FILE_BYTES) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => String::new(),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the hosts file");
            String::new()
        }
    }
}

/// Scans the shared folders and rewrites authorized_keys and ssh_known_hosts where they
/// changed, trusting only the keys of the configured peers. Also republishes this node's own
/// keys if their files went missing or changed; a failed publish is reported in the outcome
/// and does not stop the rebuild (trust must keep following the others' keys).
pub fn rebuild(ctx: &TrustContext) -> Result<RebuildOutcome, SyncError> {
    let (republished, publish_error) =
        match keys::publish(&ctx.paths, &ctx.node, &ctx.user, &ctx.keys) {
            Ok(r) => (r, None),
            Err(e) => (false, Some(e.to_string())),
        };
    let users = scan::scan_dir(&ctx.paths.users_dir)
        .map_err(|e| FsError::new("reading", &ctx.paths.users_dir, e))?
        .keep_peers(&ctx.peers, &ctx.paths.users_dir);
    let hosts = scan::scan_dir(&ctx.paths.hosts_dir)
        .map_err(|e| FsError::new("reading", &ctx.paths.hosts_dir, e))?
        .keep_peers(&ctx.peers, &ctx.paths.hosts_dir);
    // A missing or unreadable hosts file only costs the hostN aliases.
    let hosts_text = read_hosts_file(&ctx.paths.hosts_file);
    let (block, dropped_lines) =
        assemble::trusted_block(assemble::parse_hosts_block(&hosts_text), &ctx.peers);
    let host_nodes: Vec<&str> = hosts.keys.iter().map(|p| p.name.as_str()).collect();
    let names = assemble::host_names(&host_nodes, &ctx.peers, &block);

    let auth_text = assemble::authorized_keys(&users.keys, &ctx.paths.users_dir.to_string_lossy());
    let kh_text =
        assemble::known_hosts(&hosts.keys, &names, &ctx.paths.hosts_dir.to_string_lossy());
    if let Some(dir) = ctx.authorized.path.parent() {
        fsutil::ensure_dir(dir, 0o700, ctx.authorized.owner)?;
    }
    let authorized_changed = fsutil::write_atomic(
        &ctx.authorized.path,
        auth_text.as_bytes(),
        0o600,
        ctx.authorized.owner,
    )?;
    let known_hosts_changed =
        fsutil::write_atomic(&ctx.paths.known_hosts, kh_text.as_bytes(), 0o644, None)?;
    let mut refused = users.refused;
    refused.extend(hosts.refused);
    Ok(RebuildOutcome {
        users: users.keys.into_iter().map(|p| p.name).collect(),
        hosts: hosts.keys.into_iter().map(|p| p.name).collect(),
        refused,
        republished,
        publish_error,
        dropped_lines,
        authorized_changed,
        known_hosts_changed,
    })
}

/// What was already logged, so that each problem is logged when it appears, not at every
/// rebuild.
#[derive(Debug, Default)]
struct Reported {
    /// Refused files and the kind of refusal.
    refused: BTreeMap<PathBuf, &'static str>,
    publish_error: Option<String>,
    dropped_lines: Vec<String>,
}

/// Logs a rebuild: changes at info, each refusal once per file and kind of refusal (a file
/// that grows while it is written is not reported again for every size), a failed publish
/// and dropped hosts lines when they change.
fn report(outcome: &RebuildOutcome, reported: &mut Reported) {
    if outcome.publish_error != reported.publish_error {
        match &outcome.publish_error {
            Some(e) => {
                tracing::warn!(error = %e, "cannot publish this node's keys; trust files are still rebuilt, publishing is retried")
            }
            None => tracing::info!("publishing this node's keys works again"),
        }
        reported.publish_error = outcome.publish_error.clone();
    }
    if outcome.dropped_lines != reported.dropped_lines {
        for l in &outcome.dropped_lines {
            tracing::warn!(line = %l, "ignoring a hosts line that disagrees with the peer list");
        }
        reported.dropped_lines = outcome.dropped_lines.clone();
    }
    let warned = &mut reported.refused;
    let now: BTreeMap<PathBuf, &'static str> = outcome
        .refused
        .iter()
        .map(|r| (r.file.clone(), r.reason.kind()))
        .collect();
    for r in &outcome.refused {
        if warned.get(&r.file) != Some(&r.reason.kind()) {
            tracing::warn!("refusing published key: {r}");
        }
    }
    for file in warned.keys().filter(|f| !now.contains_key(*f)) {
        tracing::info!(file = %file.display(), "no longer refused (removed or fixed)");
    }
    *warned = now;
    if outcome.republished {
        tracing::info!("published this node's user and host keys");
    }
    if outcome.authorized_changed || outcome.known_hosts_changed {
        tracing::info!(
            users = ?outcome.users,
            hosts = ?outcome.hosts,
            authorized_keys = outcome.authorized_changed,
            known_hosts = outcome.known_hosts_changed,
            "trust files updated"
        );
    }
}

/// Keys, user, publication, first rebuild: everything before the loop. Returns the context.
pub fn prepare(
    config: &Config,
    paths: &Paths,
    opts: &SyncOptions,
) -> Result<TrustContext, SyncError> {
    let user = config.ssh.user.clone();
    let keys = keys::ensure_node_keys(paths, &config.name, &user)?;
    let authorized = if opts.manage_user {
        let account: Account = system::ensure_user(&user)?;
        let dot_ssh = system::install_user_key(&account, &keys)?;
        AuthorizedTarget {
            path: dot_ssh.join("authorized_keys"),
            owner: Some(Owner {
                uid: account.uid,
                gid: account.gid,
            }),
        }
    } else {
        AuthorizedTarget {
            path: paths.key_dir.join("authorized_keys"),
            owner: None,
        }
    };
    Ok(TrustContext {
        node: config.name.clone(),
        user,
        paths: paths.clone(),
        peers: config.peer_list(),
        keys,
        authorized,
    })
}

/// Runs `sshkeys sync` until `shutdown` resolves.
pub async fn run(
    config: &Config,
    paths: &Paths,
    opts: SyncOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SyncError> {
    let ctx = prepare(config, paths, &opts)?;
    let mut warned = Reported::default();
    let mut last_error: Option<String> = None;
    // Watch before the first rebuild: a peer's key published between the two is then an
    // event, not a wait for the slow poll (the first rebuild sees what came before).
    let (tx, mut events) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = if opts.once {
        None
    } else {
        watch(paths, tx.clone())
    };
    report(&rebuild(&ctx)?, &mut warned);
    if opts.once {
        return Ok(());
    }
    if opts.run_sshd {
        system::configure_sshd(paths, &ctx.user)?;
    }

    let mut sshd = Sshd::new(opts.run_sshd, paths.sshd_pidfile.clone());
    sshd.start().await;
    tokio::pin!(shutdown);
    loop {
        let restart_at = sshd.restart_at;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = events.recv() => {
                // A burst of events (a file being written) becomes one rebuild.
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(poll_period(&opts, watcher.is_some())) => {
                // Set the watches up again: a watched folder that was removed and made
                // again lost its watch.
                drop(watcher.take());
                watcher = watch(paths, tx.clone());
            }
            status = sshd.wait() => {
                tracing::warn!(%status, "sshd exited");
                sshd.schedule_restart();
                continue;
            }
            _ = until(restart_at) => {
                sshd.start().await;
                continue;
            }
        }
        match rebuild(&ctx) {
            Ok(outcome) => {
                if last_error.take().is_some() {
                    tracing::info!("rebuilding trust files works again");
                }
                report(&outcome, &mut warned);
            }
            // Keep the current trust files; the next tick tries again. Said once per error.
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(error = %text, "rebuilding trust files failed; keeping the current ones");
                }
                last_error = Some(text);
            }
        }
    }
    sshd.stop().await;
    Ok(())
}

/// Sets up inotify watches; events are coalesced into a channel of capacity one. Failing to
/// watch is not fatal: the poll tick still rebuilds. None unless every path is watched.
fn watch(paths: &Paths, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| changes_content(&e.kind)) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; relying on polling");
            return None;
        }
    };
    let mut all = true;
    for p in [&paths.users_dir, &paths.hosts_dir, &paths.hosts_file] {
        if let Err(e) = watcher.watch(p, RecursiveMode::NonRecursive) {
            tracing::debug!(path = %p.display(), error = %e, "cannot watch; polling");
            all = false;
        }
    }
    all.then_some(watcher)
}

/// The poll period: slow while every path is watched, `opts.poll` otherwise.
fn poll_period(opts: &SyncOptions, watched: bool) -> Duration {
    if watched {
        opts.watched_poll.max(opts.poll)
    } else {
        opts.poll
    }
}

/// Whether a file event can change what a rebuild produces. Opens, reads and read-only
/// closes cannot: every node's rebuild reads the shared folders, so counting them would make
/// the nodes wake each other up without end (a cost that grows with the cluster).
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Resolves at `at`; pending forever when there is nothing scheduled.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// sshd as a supervised child: started, restarted with backoff, stopped on shutdown.
struct Sshd {
    enabled: bool,
    pidfile: PathBuf,
    child: Option<tokio::process::Child>,
    restart_at: Option<Instant>,
    backoff: Duration,
    started: Instant,
}

impl Sshd {
    fn new(enabled: bool, pidfile: PathBuf) -> Self {
        Sshd {
            enabled,
            pidfile,
            child: None,
            restart_at: None,
            backoff: Duration::ZERO,
            started: Instant::now(),
        }
    }

    async fn start(&mut self) {
        self.restart_at = None;
        if !self.enabled {
            return;
        }
        system::stop_stale_sshd(&self.pidfile).await;
        self.started = Instant::now();
        match system::spawn_sshd() {
            Ok(c) => {
                tracing::info!(pid = ?c.id(), "sshd started");
                self.child = Some(c);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start sshd");
                self.schedule_restart();
            }
        }
    }

    /// Resolves when the running sshd exits; pending forever when none runs.
    async fn wait(&mut self) -> String {
        match self.child.as_mut() {
            Some(c) => {
                let status = c.wait().await;
                self.child = None;
                status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string())
            }
            None => std::future::pending().await,
        }
    }

    fn schedule_restart(&mut self) {
        self.backoff = clusterlab_core::backoff::next_backoff(self.backoff, self.started.elapsed());
        tracing::info!(
            delay_ms = self.backoff.as_millis() as u64,
            "restarting sshd after backoff"
        );
        self.restart_at = Some(Instant::now() + self.backoff);
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            system::stop_sshd(&mut c).await;
            tracing::info!("sshd stopped");
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn reads_of_the_shared_folders_do_not_wake_a_rebuild() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
        use notify::EventKind;
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
    }
    use super::*;
    use crate::keys::tests::temp_paths;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqSea1WekzyAtsjW+EcfX4VWyqVg9SFf7P2gvDnPAvW";

    fn context(root: &std::path::Path) -> TrustContext {
        let config = Config {
            name: "node0".into(),
            ip: "10.77.0.10".into(),
            peers: "node0=10.77.0.10,node1=10.77.0.11".into(),
            data_dir: root.join("data"),
            shared_dir: root.join("shared"),
            ..Config::default()
        };
        let paths = temp_paths(root);
        std::fs::create_dir_all(paths.known_hosts.parent().unwrap()).unwrap();
        let opts = SyncOptions {
            manage_user: false,
            run_sshd: false,
            once: true,
            ..SyncOptions::default()
        };
        prepare(&config, &paths, &opts).unwrap()
    }

    #[test]
    fn rebuild_trusts_good_files_only_and_writes_once() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        let first = rebuild(&ctx).unwrap();
        assert!(first.republished && first.authorized_changed && first.known_hosts_changed);
        assert_eq!(first.users, ["node0"]);

        let users = &ctx.paths.users_dir;
        std::fs::write(users.join("node1.pub"), format!("{ED} admin@node1\n")).unwrap();
        std::fs::write(users.join("evil.pub"), format!("command=\"id\" {ED}\n")).unwrap();
        std::fs::write(users.join("huge.pub"), vec![b'x'; 1 << 20]).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", users.join("shadow.pub")).unwrap();
        std::fs::write(ctx.paths.hosts_dir.join("node1.pub"), format!("{ED}\n")).unwrap();
        std::fs::create_dir_all(ctx.paths.hosts_file.parent().unwrap()).unwrap();
        std::fs::write(
            &ctx.paths.hosts_file,
            "# BEGIN clusterlab\n10.77.0.11 host0 node1\n10.77.0.10 host1 node0\n# END clusterlab\n",
        )
        .unwrap();

        let second = rebuild(&ctx).unwrap();
        assert_eq!(second.users, ["node0", "node1"]);
        assert_eq!(second.refused.len(), 3, "{:?}", second.refused);
        assert!(!second.republished);
        let auth = std::fs::read_to_string(&ctx.authorized.path).unwrap();
        assert_eq!(auth.lines().filter(|l| !l.starts_with('#')).count(), 2);
        assert!(!auth.contains("command="));
        let kh = std::fs::read_to_string(&ctx.paths.known_hosts).unwrap();
        assert!(
            kh.contains(&format!("node1,host0,10.77.0.11 {ED}\n")),
            "{kh}"
        );
        assert!(kh.contains("node0,host1,10.77.0.10 ssh-ed25519 "), "{kh}");

        let third = rebuild(&ctx).unwrap();
        assert!(!third.authorized_changed && !third.known_hosts_changed);

        // Our own published key deleted by someone: republished, still trusted.
        std::fs::remove_file(ctx.paths.published_user("node0")).unwrap();
        let fourth = rebuild(&ctx).unwrap();
        assert!(fourth.republished);
        assert!(fourth.users.contains(&"node0".to_string()));
    }

    #[test]
    fn strangers_keys_and_lines_are_left_out_and_a_failed_publish_does_not_freeze_trust() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(dir.path());
        rebuild(&ctx).unwrap();
        let users = &ctx.paths.users_dir;
        std::fs::write(users.join("node1.pub"), format!("{ED} admin@node1\n")).unwrap();
        // A well-formed key under a name that is no peer: never trusted.
        std::fs::write(users.join("mallory.pub"), format!("{ED} x\n")).unwrap();
        std::fs::write(ctx.paths.hosts_dir.join("mallory.pub"), format!("{ED}\n")).unwrap();
        std::fs::create_dir_all(ctx.paths.hosts_file.parent().unwrap()).unwrap();
        std::fs::write(
            &ctx.paths.hosts_file,
            "# BEGIN clusterlab\n10.9.9.9 host0 node1\n10.77.0.10 host1 node0\n\
             10.77.0.66 host2 mallory\n# END clusterlab\n",
        )
        .unwrap();
        // Our own published user key cannot be written: a directory stands in its place.
        let own = ctx.paths.published_user("node0");
        std::fs::remove_file(&own).unwrap();
        std::fs::create_dir(&own).unwrap();
        let out = rebuild(&ctx).unwrap();
        assert!(out.publish_error.is_some(), "{out:?}");
        assert_eq!(out.users, ["node1"], "{out:?}");
        assert!(out
            .refused
            .iter()
            .any(|r| r.file == users.join("mallory.pub") && r.reason.kind() == "not-a-peer"));
        assert_eq!(out.dropped_lines.len(), 2, "{:?}", out.dropped_lines);
        let auth = std::fs::read_to_string(&ctx.authorized.path).unwrap();
        assert!(auth.contains("clusterlab:node1"), "{auth}");
        assert!(!auth.contains("mallory"), "{auth}");
        let kh = std::fs::read_to_string(&ctx.paths.known_hosts).unwrap();
        assert!(
            !kh.contains("mallory") && !kh.contains("10.9.9.9") && !kh.contains("10.77.0.66"),
            "{kh}"
        );
        assert!(kh.contains("node0,host1,10.77.0.10 "), "{kh}");
        // Once the way is clear again, the next rebuild publishes.
        std::fs::remove_dir(&own).unwrap();
        let out = rebuild(&ctx).unwrap();
        assert!(out.publish_error.is_none() && out.republished);
        assert_eq!(out.users, ["node0", "node1"]);
    }

    #[test]
    fn the_shared_hosts_file_is_read_bounded_and_never_through_a_fifo_or_symlink() {
        use clusterlab_core::fsread::MAX_HOSTS_FILE_BYTES;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let good = "# BEGIN clusterlab\n10.77.0.10 host0 node0\n# END clusterlab\n";
        assert_eq!(read_hosts_file(&path), "", "missing");
        std::fs::write(&path, good).unwrap();
        assert_eq!(read_hosts_file(&path), good);
        // A FIFO with no writer: a plain read would block forever.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let start = std::time::Instant::now();
        assert_eq!(read_hosts_file(&path), "");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        std::fs::remove_file(&path).unwrap();
        // Oversized (sparse), and a symlink to a good file: both ignored.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_HOSTS_FILE_BYTES + 1)
            .unwrap();
        assert_eq!(read_hosts_file(&path), "");
        std::fs::remove_file(&path).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, good).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert_eq!(read_hosts_file(&path), "");
    }
}
