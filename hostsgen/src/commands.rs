//! What each `hostsgen` subcommand does; main.rs only parses the arguments and calls these.

use crate::{offline, render, watch};
use clusterlab_core::config::{Config, ConfigError};
use clusterlab_core::schema::ClusterView;
use std::future::Future;
use std::path::{Path, PathBuf};

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("reading {}: {source}", path.display())]
    ReadInput {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}: {source}", path.display())]
    ParseInput {
        path: PathBuf,
        source: offline::OfflineError,
    },
    #[error(transparent)]
    Etcd(#[from] watch::EtcdError),
}

/// The text of a `--from-json` file; `-` reads stdin.
pub fn read_input(path: &Path) -> Result<String, CommandError> {
    let read = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    };
    read.map_err(|source| CommandError::ReadInput {
        path: path.to_path_buf(),
        source,
    })
}

/// Logs every entry that was refused on the way to a view.
pub fn warn_skipped<E: std::fmt::Display>(errors: &[E]) {
    for e in errors {
        tracing::warn!(problem = %e, "skipping an entry");
    }
}

fn block_of<E: std::fmt::Display>((view, errors): (ClusterView, Vec<E>)) -> String {
    warn_skipped(&errors);
    render::render(&view)
}

/// `hostsgen render --from-json FILE`: the block for the cluster the file describes.
pub fn render_json(path: &Path) -> Result<String, CommandError> {
    let parsed = offline::parse(&read_input(path)?).map_err(|source| CommandError::ParseInput {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(block_of(parsed))
}

/// `hostsgen render`: the block for the cluster as etcd describes it now, trusting only the
/// configuration's peers.
pub async fn render_etcd(
    endpoints: Vec<String>,
    config: Option<&Path>,
) -> Result<String, CommandError> {
    let config = Config::load(config)?;
    let endpoints = if endpoints.is_empty() {
        config.client_endpoints()
    } else {
        endpoints
    };
    Ok(block_of(
        watch::read_view(&endpoints, &config.peer_list()).await?,
    ))
}

/// What `hostsgen watch` keeps current on this node: the hosts file from the configuration
/// unless `hosts_file` overrides it, and the shared copy under `shared_dir`.
pub fn watch_settings(
    config: &Config,
    endpoints: Vec<String>,
    hosts_file: Option<PathBuf>,
) -> watch::Settings {
    let endpoints = if endpoints.is_empty() {
        config.client_endpoints()
    } else {
        endpoints
    };
    watch::Settings {
        endpoints,
        node: config.name.clone(),
        hosts_file: hosts_file.unwrap_or_else(|| config.hosts.file.clone()),
        shared_hosts: config.shared_dir.join("hosts"),
        peers: config.peer_list(),
    }
}

/// `hostsgen watch`: keeps the hosts files current until `shutdown` resolves.
pub async fn watch(
    endpoints: Vec<String>,
    hosts_file: Option<PathBuf>,
    config: Option<&Path>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CommandError> {
    let config = Config::load(config)?;
    watch::run(watch_settings(&config, endpoints, hosts_file), shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_default_to_the_node_and_its_config() {
        let config = Config {
            name: "node1".into(),
            shared_dir: "/shared".into(),
            peers: "node0=10.0.0.10,node1=10.0.0.11".into(),
            ..Config::default()
        };
        let s = watch_settings(&config, vec![], None);
        assert_eq!(s.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(s.node, "node1");
        assert_eq!(s.hosts_file, Path::new("/etc/hosts"));
        assert_eq!(s.shared_hosts, Path::new("/shared/hosts"));
        assert_eq!(s.peers.len(), 2);
        let s = watch_settings(
            &config,
            vec!["http://10.0.0.1:2379".into()],
            Some("/tmp/h".into()),
        );
        assert_eq!(s.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(s.hosts_file, Path::new("/tmp/h"));
    }

    #[test]
    fn json_input_renders_and_bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("c.json");
        std::fs::write(
            &good,
            r#"{"leader":{"name":"node1","ip":"10.0.0.2"},
                "nodes":[{"name":"node0","ip":"10.0.0.1"},{"name":"node1","ip":"10.0.0.2"}]}"#,
        )
        .unwrap();
        assert_eq!(
            render_json(&good).unwrap(),
            "# BEGIN clusterlab\n10.0.0.2 host0 node1\n10.0.0.1 host1 node0\n# END clusterlab\n"
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let err = render_json(&bad).unwrap_err();
        assert!(matches!(err, CommandError::ParseInput { .. }), "{err}");
        assert!(err.to_string().contains("bad.json"), "{err}");
        let missing = dir.path().join("none.json");
        let err = render_json(&missing).unwrap_err();
        assert!(matches!(err, CommandError::ReadInput { .. }), "{err}");
        assert!(err.to_string().contains("none.json"), "{err}");
    }
}
