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
        .voter_peers()
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

/// How this node starts: a voter runs its etcd member, a member only reaches the voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Run etcd with these flags and use it at the local endpoint.
    Voter { args: Vec<String>, endpoint: String },
    /// Run no etcd; reach the cluster through every voter's client URL.
    Member { endpoints: Vec<String> },
}

/// The startup plan of this node, from `etcd.voters` and the peer list.
pub fn startup(config: &Config) -> Startup {
    if config.is_voter() {
        Startup::Voter {
            args: etcd_args(config),
            endpoint: config.local_endpoint(),
        }
    } else {
        Startup::Member {
            endpoints: config.client_endpoints(),
        }
    }
}

/// Whether an etcd log line tells of a raft role or leader change ("became leader at term
/// 3", "elected leader … at term 3", "lost leader … at term 3", "became follower …"): the
/// agent then reads its member's Status at once instead of at its next idle poll.
pub fn is_raft_change(line: &str) -> bool {
    (line.contains("became ") && line.contains(" at term "))
        || line.contains("elected leader")
        || line.contains("lost leader")
}

/// Starts etcd as a child; its output goes to the agent's own stderr (the container log),
/// and every raft role change in it wakes `raft_changed`. The child is killed if the agent
/// drops it without stopping it.
pub fn spawn_watched(
    config: &Config,
    raft_changed: std::sync::Arc<tokio::sync::Notify>,
) -> Result<Child, EtcdError> {
    let mut child = spawn_with(config, Stdio::piped())?;
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_log(err, raft_changed));
    }
    Ok(child)
}

/// Copies etcd's log lines to the agent's stderr, notifying on raft changes. Lines are cut
/// at 64 KiB (etcd's own lines are far shorter).
async fn forward_log(
    err: tokio::process::ChildStderr,
    raft_changed: std::sync::Arc<tokio::sync::Notify>,
) {
    use std::io::Write;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut reader = tokio::io::BufReader::new(err);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if is_raft_change(&String::from_utf8_lossy(&line)) {
            raft_changed.notify_one();
        }
        let _ = std::io::stderr().lock().write_all(&line);
    }
}

/// Starts etcd as a child; its output goes to the agent's own stderr (the container log).
/// The child is killed if the agent drops it without stopping it.
pub fn spawn(config: &Config) -> Result<Child, EtcdError> {
    spawn_with(config, Stdio::inherit())
}

fn spawn_with(config: &Config, stderr: Stdio) -> Result<Child, EtcdError> {
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
        .stderr(stderr)
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

/// A member's connection to the voters: waits until one of them answers Status, however
/// long that takes (the voters may start after it), saying every 10 s why it still waits.
pub async fn wait_voters(endpoints: &[String]) -> etcd_client::Client {
    let mut said = Instant::now();
    loop {
        let last =
            match etcd_client::Client::connect(endpoints, Some(clusterlab_core::etcd::options()))
                .await
            {
                Ok(mut client) => {
                    match tokio::time::timeout(READY_PROBE_TIMEOUT, client.status()).await {
                        Ok(Ok(_)) => return client,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "status timed out".into(),
                    }
                }
                Err(e) => e.to_string(),
            };
        if said.elapsed() >= Duration::from_secs(10) {
            tracing::warn!(endpoints = %endpoints.join(","), error = %last, "no voter answers yet");
            said = Instant::now();
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
    fn a_member_runs_no_etcd_and_reaches_every_voter() {
        let mut c = config();
        c.peers = "node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12".into();
        c.etcd.voters = 1;
        assert_eq!(
            startup(&c),
            Startup::Member {
                endpoints: vec!["http://10.77.0.10:2379".into()]
            }
        );
        c.etcd.voters = 2;
        match startup(&c) {
            Startup::Voter { args, endpoint } => {
                assert_eq!(endpoint, "http://127.0.0.1:2379");
                // Only the voters are in etcd's initial cluster.
                assert!(args.contains(
                    &"--initial-cluster=node0=http://10.77.0.10:2380,node1=http://10.77.0.11:2380"
                        .to_string()
                ));
            }
            other => panic!("node1 of 2 voters is a voter, got {other:?}"),
        }
    }

    #[test]
    fn raft_changes_are_told_apart_from_other_log_lines() {
        for line in [
            r#"{"level":"info","msg":"8e9e05c52164694d became leader at term 3"}"#,
            r#"{"msg":"raft.node: 8e9e05c52164694d elected leader 91bc3c398fb3c146 at term 3"}"#,
            r#"{"msg":"raft.node: 8e9e05c52164694d lost leader 91bc3c398fb3c146 at term 4"}"#,
            r#"{"msg":"8e9e05c52164694d became follower at term 4"}"#,
            r#"{"msg":"8e9e05c52164694d became pre-candidate at term 4"}"#,
        ] {
            assert!(is_raft_change(line), "{line}");
        }
        for line in [
            r#"{"msg":"published local member to cluster through raft"}"#,
            r#"{"msg":"saved snapshot","snapshot-index":10001}"#,
            "",
        ] {
            assert!(!is_raft_change(line), "{line}");
        }
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
