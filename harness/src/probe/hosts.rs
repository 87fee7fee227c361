//! Hosts-file probes: each node's /etc/hosts read with `docker exec cat`, compared with the
//! block the oracle computes from the harness's own knowledge (node IPs from the IP plan, the
//! leader from etcd's Status), not with anything hostsgen wrote elsewhere, so a wrong rule in
//! hostsgen cannot agree with itself.

use super::ProbeError;
use crate::cluster::Cluster;
use crate::docker::HarnessError;
use crate::oracle::{self, block_of, check_blocks, describe_blocks, host0_of, NodeBlock, NodeRef};
use crate::wait::wait_for;
use std::time::Duration;

/// How often the probes look while waiting. A round reads every node in parallel and takes
/// roughly one `docker exec`, so measured times are late by at most about one round.
pub const PROBE_POLL: Duration = Duration::from_millis(50);

/// The named nodes of `c` with their addresses.
pub fn node_refs(c: &Cluster, names: &[String]) -> Result<Vec<NodeRef>, HarnessError> {
    names
        .iter()
        .map(|n| {
            Ok(NodeRef {
                name: n.clone(),
                ip: c.node_ip(n)?,
            })
        })
        .collect()
}

/// The block every node of `c` should show with `leader` as host0 and `live` listed
/// ([`oracle::expected_block`] on the cluster's IP plan).
pub fn expected_block(
    c: &Cluster,
    leader: Option<&str>,
    live: &[String],
) -> Result<String, HarnessError> {
    Ok(oracle::expected_block(leader, &node_refs(c, live)?))
}

/// A node's whole /etc/hosts.
pub async fn read_hosts(c: &Cluster, node: &str) -> Result<String, ProbeError> {
    read_file(c, node, "/etc/hosts").await
}

/// A file's text on a node; an error if `cat` fails.
pub async fn read_file(c: &Cluster, node: &str, path: &str) -> Result<String, ProbeError> {
    let out = c.exec(node, &["cat", path]).await?;
    if out.code != 0 {
        return Err(ProbeError::Cat {
            node: node.to_string(),
            path: path.to_string(),
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Every listed node's clusterlab block, read in parallel.
pub async fn read_blocks(c: &Cluster, nodes: &[String]) -> Result<Vec<NodeBlock>, ProbeError> {
    let reads = nodes.iter().map(|n| async move {
        let text = read_hosts(c, n).await?;
        Ok::<_, ProbeError>((n.clone(), block_of(&text)))
    });
    futures::future::join_all(reads).await.into_iter().collect()
}

/// Waits until every node in `on` shows exactly `expected` (what was seen otherwise is the
/// wait's last observation). Returns the time it took.
pub async fn wait_blocks(
    c: &Cluster,
    on: &[String],
    expected: &str,
    what: &str,
    timeout: Duration,
) -> Result<Duration, ProbeError> {
    let ((), took) = wait_for(what, timeout, PROBE_POLL, || async {
        let blocks = read_blocks(c, on).await.map_err(|e| e.to_string())?;
        check_blocks(&blocks, expected).map_err(|e| e.to_string())
    })
    .await?;
    Ok(took)
}

/// Waits until every node in `on` shows the block for `live` with etcd's current raft leader
/// as host0, and returns that leader and the time it took.
pub async fn wait_full_table(
    c: &Cluster,
    on: &[String],
    live: &[String],
    what: &str,
    timeout: Duration,
) -> Result<(String, Duration), ProbeError> {
    let refs = node_refs(c, live)?;
    Ok(wait_for(what, timeout, PROBE_POLL, || async {
        let leader = c
            .etcd_leader()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no etcd leader".to_string())?;
        let expected = oracle::expected_block(Some(&leader), &refs);
        let blocks = read_blocks(c, on).await.map_err(|e| e.to_string())?;
        check_blocks(&blocks, &expected)
            .map(|()| leader.clone())
            .map_err(|e| format!("etcd leader {leader}; {e}"))
    })
    .await?)
}

/// Waits until every node in `on` shows the same block with host0 = etcd's raft leader and
/// that leader is not `old`. Returns the new leader and the time it took.
pub async fn wait_new_host0(
    c: &Cluster,
    on: &[String],
    old: &str,
    timeout: Duration,
) -> Result<(String, Duration), ProbeError> {
    Ok(wait_for(
        &format!("every survivor to show etcd's new leader (not {old}) as host0"),
        timeout,
        PROBE_POLL,
        || async {
            let blocks = read_blocks(c, on).await.map_err(|e| e.to_string())?;
            let first = blocks.first().and_then(|(_, b)| b.clone());
            let same = blocks.iter().all(|(_, b)| *b == first);
            let host0 = first.as_deref().and_then(host0_of);
            let fail = |why: &str| format!("{why}; {}", describe_blocks(&blocks));
            if !same {
                return Err(fail("nodes disagree"));
            }
            match host0 {
                Some(h) if h != old => {
                    // Only now ask etcd, so the answer is at least as new as the blocks.
                    let leader = c.etcd_leader().await.map_err(|e| e.to_string())?;
                    if leader.as_deref() == Some(h.as_str()) {
                        Ok(h)
                    } else {
                        Err(fail(&format!(
                            "host0 is {h} but etcd's leader is {leader:?}"
                        )))
                    }
                }
                _ => Err(fail("host0 not yet a new leader")),
            }
        },
    )
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSpec;
    use crate::oracle::{BEGIN, END};

    #[test]
    fn expected_block_follows_the_ip_plan() {
        // 95 nodes: node89 is at .99 and node90 at .100, where text order would flip them.
        let spec = ClusterSpec::new("x", 95, "img");
        let docker = bollard::Docker::connect_with_local_defaults().unwrap();
        let c = Cluster::attach(docker, spec);
        let live: Vec<String> = ["node90", "node0", "node89", "node5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b = expected_block(&c, Some("node5"), &live).unwrap();
        let ip = |i: usize| c.spec.node_ip(i);
        assert_eq!(
            b,
            format!(
                "{BEGIN}\n{} host0 node5\n{} host1 node0\n{} host2 node89\n{} host3 node90\n{END}\n",
                ip(5),
                ip(0),
                ip(89),
                ip(90)
            )
        );
        assert!(expected_block(&c, None, &["node99".to_string()]).is_err());
    }
}
