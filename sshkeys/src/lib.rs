//! sshkeys: passwordless, prompt-free SSH between clusterlab nodes through the shared volume.
//!
//! Each node keeps an ed25519 user key (for the cluster user, `admin` by default) and an
//! ed25519 sshd host key on its persistent volume, publishes both public keys to
//! `<shared>/ssh/users/<node>.pub` and `<shared>/ssh/hosts/<node>.pub`, and builds the cluster
//! user's authorized_keys and the system's ssh_known_hosts from what the others published.
//! Nothing in the shared folder is trusted before it passes [`pubkey`]'s checks.
//!
//! # Layout
//! - [`pubkey`]: what a published key file must look like (pure; hostile-input tests).
//! - [`scan`]: reading a folder of published keys without following links or reading too much.
//! - [`assemble`]: authorized_keys and ssh_known_hosts text; the hosts block parser.
//! - [`keys`]: every path, the node's own keys (generated once), publishing.
//! - [`fsutil`]: atomic writes with exact modes and owners.
//! - [`system`]: the cluster user, ~/.ssh, the sshd drop-in, sshd as a child.
//! - [`sync`]: the `sshkeys sync` loop (watch + poll + supervise sshd).
//! - [`verify`]: the embedded russh client behind `sshkeys verify`.

pub mod assemble;
pub mod fsutil;
pub mod keys;
pub mod pubkey;
pub mod scan;
pub mod sync;
pub mod system;
pub mod verify;

pub use keys::Paths;

use clusterlab_core::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// `sshkeys publish`: make sure both keys exist and publish them. Returns the published paths.
pub fn publish(config: &Config, paths: &Paths) -> Result<Vec<std::path::PathBuf>, sync::SyncError> {
    let node_keys = keys::ensure_node_keys(paths, &config.name, &config.ssh.user)?;
    keys::publish(paths, &config.name, &config.ssh.user, &node_keys)?;
    Ok(vec![
        paths.published_user(&config.name),
        paths.published_host(&config.name),
    ])
}

/// One refused file, for `sshkeys status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedFile {
    pub file: String,
    pub kind: &'static str,
    pub reason: String,
}

/// What this node would trust right now, for `sshkeys status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub node: String,
    pub users: Vec<String>,
    pub hosts: Vec<String>,
    pub refused: Vec<RefusedFile>,
}

impl Status {
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "node {}
trusted user keys: {}
trusted host keys: {}
",
            self.node,
            self.users.join(" "),
            self.hosts.join(" ")
        );
        for r in &self.refused {
            out.push_str(&format!("refused ({}): {} {}\n", r.kind, r.file, r.reason));
        }
        out
    }
}

/// `sshkeys status`: scan the shared folders read-only and say what is trusted and refused.
pub fn status(config: &Config, paths: &Paths) -> std::io::Result<Status> {
    let peers = config.peer_list();
    let users = scan::scan_dir(&paths.users_dir)?.keep_peers(&peers, &paths.users_dir);
    let hosts = scan::scan_dir(&paths.hosts_dir)?.keep_peers(&peers, &paths.hosts_dir);
    let refused = users
        .refused
        .iter()
        .chain(&hosts.refused)
        .map(|r| RefusedFile {
            file: r.file.display().to_string(),
            kind: r.reason.kind(),
            reason: r.reason.to_string(),
        })
        .collect();
    Ok(Status {
        node: config.name.clone(),
        users: users.keys.into_iter().map(|p| p.name).collect(),
        hosts: hosts.keys.into_iter().map(|p| p.name).collect(),
        refused,
    })
}

/// Failures that prevent `sshkeys verify` from checking anything at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("loading this node's user key (run `sshkeys publish` or `sshkeys sync` first): {0}")]
    Key(#[from] keys::KeyError),
    #[error("reading published host keys in {dir}: {source}")]
    Hosts {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// `sshkeys verify`: resolve the targets and check each with the embedded client.
pub async fn verify(
    config: &Config,
    paths: &Paths,
    selection: &verify::Selection,
    port: u16,
    timeout: Duration,
) -> Result<verify::Report, VerifyError> {
    let key = Arc::new(keys::load(&paths.user_key)?);
    let peers = config.peer_list();
    let hosts = scan::scan_dir(&paths.hosts_dir)
        .map_err(|source| VerifyError::Hosts {
            dir: paths.hosts_dir.clone(),
            source,
        })?
        .keep_peers(&peers, &paths.hosts_dir);
    let (block, _) = assemble::trusted_block(
        assemble::parse_hosts_block(&sync::read_hosts_file(&paths.hosts_file)),
        &peers,
    );
    let targets = verify::resolve(selection, &peers, &hosts, &block, port);
    let results = verify::check_all(&targets, &config.ssh.user, key, timeout).await;
    Ok(verify::Report::new(&config.name, results))
}
