//! Running the node's etcd member: flags from config, the child process, and readiness.

use clusterlab_core::config::Config;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Failures while starting or reaching etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("starting etcd ({bin}) for {node}: {source}")]
    Spawn {
        bin: String,
        node: String,
        source: std::io::Error,
    },
    #[error("creating etcd data dir {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("etcd for {node} did not answer at {endpoint} within {secs} s; last error: {last}")]
    NotReady {
        node: String,
        endpoint: String,
        secs: u64,
        last: String,
    },
    #[error("etcd for {node} exited before it was ready: {status}")]
    Exited { node: String, status: String },
}

/// While etcd starts, each readiness probe (a Status call) may take this long; a freshly
/// started member that answers at all answers in milliseconds.
pub const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness probes: short, because the cluster's bootstrap waits on it, and
/// the whole wait is bounded by `etcd.start_timeout_s`.
pub const READY_PROBE_EVERY: Duration = Duration::from_millis(200);

/// etcd's data directory for this node, on the node's persistent volume.
pub fn data_dir(config: &Config) -> PathBuf {
    config.data_dir.join("etcd")
}

/// The command-line flags that start this node's etcd member.
pub fn etcd_args(config: &Config) -> Vec<String> {
    let e = &config.etcd;
    let peer_url = |ip: &dyn std::fmt::Display| format!("http://{ip}:{}", e.peer_port);
    let initial_cluster = config
        .peer_list()
        .iter()
        .map(|p| format!("{}={}", p.name, peer_url(&p.ip)))
        .collect::<Vec<_>>()
        .join(",");
    let client_url = format!("http://{}:{}", config.ip, e.client_port);
    vec![
        format!("--name={}", config.name),
        format!("--data-dir={}", data_dir(config).display()),
        format!("--listen-peer-urls={}", peer_url(&config.ip)),
        format!("--initial-advertise-peer-urls={}", peer_url(&config.ip)),
        format!(
            "--listen-client-urls={client_url},http://127.0.0.1:{}",
            e.client_port
        ),
        format!("--advertise-client-urls={client_url}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-token={}", config.cluster),
        "--initial-cluster-state=new".into(),
        format!("--heartbeat-interval={}", e.heartbeat_ms),
        format!("--election-timeout={}", e.election_ms),
        format!("--pre-vote={}", e.pre_vote),
        "--logger=zap".into(),
        "--log-outputs=stderr".into(),
    ]
}

/// Starts etcd as a child; its output goes to the agent's own stderr (the container log).
/// The child is killed if the agent drops it without stopping it.
pub fn spawn(config: &Config) -> Result<Child, EtcdError> {
    let dir = data_dir(config);
    std::fs::create_dir_all(&dir).map_err(|source| EtcdError::DataDir {
        dir: dir.clone(),
        source,
    })?;
    // etcd refuses a data dir that others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    Command::new(&config.etcd.bin)
        .args(etcd_args(config))
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| EtcdError::Spawn {
            bin: config.etcd.bin.clone(),
            node: config.name.clone(),
            source,
        })
}

/// Connects to the local member and waits until it answers Status. Returns the client and
/// this member's id.
pub async fn wait_ready(
    config: &Config,
    child: &mut Child,
) -> Result<(etcd_client::Client, u64), EtcdError> {
    let endpoint = config.local_endpoint();
    let secs = config.etcd.start_timeout_s;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let last: String;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(EtcdError::Exited {
                node: config.name.clone(),
                status: status.to_string(),
            });
        }
        match connect(&endpoint).await {
            Ok(mut client) => {
                match tokio::time::timeout(READY_PROBE_TIMEOUT, client.status()).await {
                    Ok(Ok(st)) => {
                        if let Some(h) = st.header() {
                            return Ok((client, h.member_id()));
                        }
                        last = "status without header".into();
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "status timed out".into(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() >= deadline {
            return Err(EtcdError::NotReady {
                node: config.name.clone(),
                endpoint,
                secs,
                last,
            });
        }
        tokio::time::sleep(READY_PROBE_EVERY).await;
    }
}

pub use clusterlab_core::etcd::connect;

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            name: "node1".into(),
            ip: "10.77.0.11".into(),
            cluster: "lab".into(),
            peers: "node0=10.77.0.10,node1=10.77.0.11".into(),
            ..Config::default()
        }
    }

    #[test]
    fn flags_name_member_urls_and_timings() {
        let args = etcd_args(&config());
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has("--name=node1"));
        assert!(has("--data-dir=/data/etcd"));
        assert!(has("--listen-peer-urls=http://10.77.0.11:2380"));
        assert!(has("--initial-advertise-peer-urls=http://10.77.0.11:2380"));
        assert!(has(
            "--listen-client-urls=http://10.77.0.11:2379,http://127.0.0.1:2379"
        ));
        assert!(has("--advertise-client-urls=http://10.77.0.11:2379"));
        assert!(has(
            "--initial-cluster=node0=http://10.77.0.10:2380,node1=http://10.77.0.11:2380"
        ));
        assert!(has("--initial-cluster-token=lab"));
        assert!(has("--heartbeat-interval=100"));
        assert!(has("--election-timeout=1000"));
        assert!(has("--pre-vote=true"));
    }

    #[test]
    fn flags_follow_configured_ports_and_timings() {
        let mut c = config();
        c.etcd.client_port = 3379;
        c.etcd.peer_port = 3380;
        c.etcd.heartbeat_ms = 50;
        c.etcd.election_ms = 500;
        c.data_dir = "/var/lib/x".into();
        let args = etcd_args(&c).join(" ");
        assert!(args.contains("http://10.77.0.10:3380"), "{args}");
        assert!(args.contains("http://127.0.0.1:3379"), "{args}");
        assert!(args.contains("--heartbeat-interval=50"), "{args}");
        assert!(args.contains("--election-timeout=500"), "{args}");
        assert!(args.contains("--data-dir=/var/lib/x/etcd"), "{args}");
    }
}
