//! The node's own keys: where they live, generating them once, loading them, publishing them.
//!
//! Both keys are ed25519 and live on the node's persistent volume (`<data_dir>/ssh/`), so a
//! restarted or re-created container keeps its identity. They are generated in-process with
//! ssh-key and written in OpenSSH format, which both OpenSSH and russh read. A key file that
//! exists but does not parse is an error, never silently replaced: a new host key would make
//! every peer see a changed host.

use crate::fsutil::{self, FsError};
use crate::pubkey::key_line;
use clusterlab_core::config::Config;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, PrivateKey, PublicKey};
use std::path::{Path, PathBuf};

/// Every path sshkeys reads or writes, derived from the configuration. Tests build their
/// own with temp directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// `<data_dir>/ssh`: the node's private keys.
    pub key_dir: PathBuf,
    /// The cluster user's private key (`id_ed25519`; `.pub` beside it).
    pub user_key: PathBuf,
    /// sshd's private host key (`ssh_host_ed25519_key`; `.pub` beside it).
    pub host_key: PathBuf,
    /// `<shared_dir>/ssh/users`: published user keys.
    pub users_dir: PathBuf,
    /// `<shared_dir>/ssh/hosts`: published host keys.
    pub hosts_dir: PathBuf,
    /// System-wide known hosts read by every OpenSSH client.
    pub known_hosts: PathBuf,
    /// The hosts file whose clusterlab block names the `hostN` aliases.
    pub hosts_file: PathBuf,
    /// sshd configuration drop-in.
    pub sshd_dropin: PathBuf,
    /// sshd's pid file, used to stop a sshd left over by a previous run of `sshkeys sync`.
    pub sshd_pidfile: PathBuf,
}

impl Paths {
    pub fn from_config(config: &Config) -> Paths {
        let key_dir = config.data_dir.join("ssh");
        let shared = config.shared_dir.join("ssh");
        Paths {
            user_key: key_dir.join("id_ed25519"),
            host_key: key_dir.join("ssh_host_ed25519_key"),
            key_dir,
            users_dir: shared.join("users"),
            hosts_dir: shared.join("hosts"),
            known_hosts: "/etc/ssh/ssh_known_hosts".into(),
            hosts_file: config.hosts.file.clone(),
            sshd_dropin: "/etc/ssh/sshd_config.d/clusterlab.conf".into(),
            sshd_pidfile: "/run/clusterlab-sshd.pid".into(),
        }
    }

    /// Where this node publishes its user key.
    pub fn published_user(&self, node: &str) -> PathBuf {
        self.users_dir.join(format!("{node}.pub"))
    }

    /// Where this node publishes its host key.
    pub fn published_host(&self, node: &str) -> PathBuf {
        self.hosts_dir.join(format!("{node}.pub"))
    }
}

/// Failures around the node's own keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("key file {path} exists but is not a usable ed25519 private key: {reason}")]
    Corrupt {
        path: PathBuf,
        reason: PrivateKeyProblem,
    },
    #[error("generating an ed25519 key for {path}: {reason}")]
    Generate { path: PathBuf, reason: String },
}

/// The node's two key pairs.
#[derive(Debug, Clone)]
pub struct NodeKeys {
    pub user: PrivateKey,
    pub host: PrivateKey,
}

impl NodeKeys {
    pub fn user_public(&self) -> &PublicKey {
        self.user.public_key()
    }
    pub fn host_public(&self) -> &PublicKey {
        self.host.public_key()
    }
}

/// Loads the private key at `path`, generating and storing it first if it does not exist.
/// Returns the key and whether it was generated now.
pub fn load_or_generate(path: &Path, comment: &str) -> Result<(PrivateKey, bool), KeyError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let key = parse_private(&bytes).map_err(|reason| KeyError::Corrupt {
                path: path.to_path_buf(),
                reason,
            })?;
            // Keep the private key private even if something widened it.
            fsutil::write_atomic(path, &bytes, 0o600, None)?;
            write_public(path, key.public_key(), comment)?;
            Ok((key, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key =
                PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| {
                    KeyError::Generate {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                })?;
            key.set_comment(comment);
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| KeyError::Generate {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            if let Some(dir) = path.parent() {
                fsutil::ensure_dir(dir, 0o700, None)?;
            }
            fsutil::write_atomic(path, text.as_bytes(), 0o600, None)?;
            write_public(path, key.public_key(), comment)?;
            Ok((key, true))
        }
        Err(e) => Err(FsError::new("reading", path, e).into()),
    }
}

/// Loads an existing private key without generating one (for `verify`).
pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| FsError::new("reading", path, e))?;
    parse_private(&bytes).map_err(|reason| KeyError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Why a private key file's content is not a usable node key.
#[derive(Debug, thiserror::Error)]
pub enum PrivateKeyProblem {
    #[error("{0}")]
    Openssh(russh::keys::ssh_key::Error),
    #[error("it is encrypted")]
    Encrypted,
    #[error("it is {0}, not ssh-ed25519")]
    NotEd25519(Algorithm),
}

fn parse_private(bytes: &[u8]) -> Result<PrivateKey, PrivateKeyProblem> {
    let key = PrivateKey::from_openssh(bytes).map_err(PrivateKeyProblem::Openssh)?;
    if key.is_encrypted() {
        return Err(PrivateKeyProblem::Encrypted);
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(PrivateKeyProblem::NotEd25519(key.algorithm()));
    }
    Ok(key)
}

fn write_public(private: &Path, key: &PublicKey, comment: &str) -> Result<(), FsError> {
    let mut p = private.as_os_str().to_owned();
    p.push(".pub");
    let line = format!("{}\n", key_line(key, comment));
    fsutil::write_atomic(Path::new(&p), line.as_bytes(), 0o644, None).map(|_| ())
}

/// Loads or generates both keys of this node.
pub fn ensure_node_keys(paths: &Paths, node: &str, user: &str) -> Result<NodeKeys, KeyError> {
    fsutil::ensure_dir(&paths.key_dir, 0o700, None)?;
    let (user_key, new_user) = load_or_generate(&paths.user_key, &format!("{user}@{node}"))?;
    let (host_key, new_host) = load_or_generate(&paths.host_key, &format!("root@{node}"))?;
    if new_user || new_host {
        tracing::info!(
            user_key = %paths.user_key.display(),
            new_user,
            host_key = %paths.host_key.display(),
            new_host,
            "generated node keys"
        );
    }
    Ok(NodeKeys {
        user: user_key,
        host: host_key,
    })
}

/// Publishes both public keys to the shared folder (temp file + rename; nothing is written
/// when the published files are already current). Returns true when anything was written.
pub fn publish(paths: &Paths, node: &str, user: &str, keys: &NodeKeys) -> Result<bool, FsError> {
    fsutil::ensure_dir(&paths.users_dir, 0o755, None)?;
    fsutil::ensure_dir(&paths.hosts_dir, 0o755, None)?;
    let user_line = format!(
        "{}\n",
        key_line(keys.user_public(), &format!("{user}@{node}"))
    );
    let host_line = format!(
        "{}\n",
        key_line(keys.host_public(), &format!("root@{node}"))
    );
    let a = fsutil::write_atomic(
        &paths.published_user(node),
        user_line.as_bytes(),
        0o644,
        None,
    )?;
    let b = fsutil::write_atomic(
        &paths.published_host(node),
        host_line.as_bytes(),
        0o644,
        None,
    )?;
    Ok(a || b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Paths below one temp directory.
    pub(crate) fn temp_paths(root: &Path) -> Paths {
        Paths {
            key_dir: root.join("data/ssh"),
            user_key: root.join("data/ssh/id_ed25519"),
            host_key: root.join("data/ssh/ssh_host_ed25519_key"),
            users_dir: root.join("shared/ssh/users"),
            hosts_dir: root.join("shared/ssh/hosts"),
            known_hosts: root.join("etc/ssh_known_hosts"),
            hosts_file: root.join("etc/hosts"),
            sshd_dropin: root.join("etc/sshd.conf"),
            sshd_pidfile: root.join("run/sshd.pid"),
        }
    }

    #[test]
    fn keys_are_generated_once_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let paths = temp_paths(dir.path());
        let first = ensure_node_keys(&paths, "node1", "admin").unwrap();
        let second = ensure_node_keys(&paths, "node1", "admin").unwrap();
        assert_eq!(
            first.user_public().key_data(),
            second.user_public().key_data()
        );
        assert_eq!(
            first.host_public().key_data(),
            second.host_public().key_data()
        );
        assert_ne!(
            first.user_public().key_data(),
            first.host_public().key_data()
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.user_key), 0o600);
        assert_eq!(mode(&paths.host_key), 0o600);
        assert_eq!(mode(&paths.key_dir), 0o700);
        // Readable by OpenSSH: the .pub beside the key holds the same key.
        let pub_text = std::fs::read_to_string(paths.host_key.with_extension("pub")).unwrap();
        let k = crate::pubkey::parse_key_file(pub_text.as_bytes()).unwrap();
        assert!(crate::pubkey::same_key(&k, first.host_public()));
    }

    #[test]
    fn a_widened_key_file_is_narrowed_again() {
        let dir = tempfile::tempdir().unwrap();
        let paths = temp_paths(dir.path());
        ensure_node_keys(&paths, "node1", "admin").unwrap();
        std::fs::set_permissions(&paths.user_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        ensure_node_keys(&paths, "node1", "admin").unwrap();
        let mode = std::fs::metadata(&paths.user_key)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let paths = temp_paths(dir.path());
        std::fs::create_dir_all(&paths.key_dir).unwrap();
        std::fs::write(
            &paths.host_key,
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n",
        )
        .unwrap();
        let err = ensure_node_keys(&paths, "node1", "admin").unwrap_err();
        assert!(matches!(err, KeyError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("ssh_host_ed25519_key"), "{err}");
    }

    #[test]
    fn publish_writes_both_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = temp_paths(dir.path());
        let keys = ensure_node_keys(&paths, "node1", "admin").unwrap();
        assert!(publish(&paths, "node1", "admin", &keys).unwrap());
        assert!(!publish(&paths, "node1", "admin", &keys).unwrap());
        let users = crate::scan::scan_dir(&paths.users_dir).unwrap();
        let hosts = crate::scan::scan_dir(&paths.hosts_dir).unwrap();
        assert!(users.refused.is_empty() && hosts.refused.is_empty());
        assert!(crate::pubkey::same_key(
            users.get("node1").unwrap(),
            keys.user_public()
        ));
        assert!(crate::pubkey::same_key(
            hosts.get("node1").unwrap(),
            keys.host_public()
        ));
    }
}
