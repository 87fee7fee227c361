//! Foundation trials: a cluster bootstraps with one leader key naming etcd's leader; a
//! killed follower's key expires; a killed leader is replaced in about etcd's election
//! time; a restarted node re-registers.

use anyhow::{bail, ensure, Context};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster, ClusterStatus};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(100);

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "bootstrap",
            3,
            |_| {},
            Arc::new(|c| Box::pin(bootstrap(c))),
        ),
        cluster_trial(
            env,
            "kill_follower",
            3,
            |_| {},
            Arc::new(|c| Box::pin(kill_follower(c))),
        ),
        cluster_trial(
            env,
            "kill_leader",
            3,
            |_| {},
            Arc::new(|c| Box::pin(kill_leader(c))),
        ),
        cluster_trial(
            env,
            "restart",
            3,
            |_| {},
            Arc::new(|c| Box::pin(restart(c))),
        ),
        cluster_trial(
            env,
            "graceful_stop",
            3,
            |_| {},
            Arc::new(|c| Box::pin(graceful_stop(c))),
        ),
    ]
}

/// Checks that the keys describe etcd's own view: every running node has a key, the leader
/// key names etcd's leader with its member id, and exactly one node record says leader.
fn consistent(st: &ClusterStatus, expect_keys: usize) -> Result<String, String> {
    let keys = st.nodes.iter().filter(|n| n.has_key).count();
    let Some(leader) = st.etcd_leader.clone() else {
        return Err(format!("no etcd leader; {}", st.summary()));
    };
    let Some(lk) = &st.leader_key else {
        return Err(format!("no leader key; {}", st.summary()));
    };
    let leader_node = st.nodes.iter().find(|n| n.name == leader);
    let ok = keys == expect_keys
        && lk.name == leader
        && leader_node.and_then(|n| n.member_id.as_deref()) == Some(lk.member_id.as_str());
    if ok {
        Ok(leader)
    } else {
        Err(st.summary())
    }
}

async fn node_records(
    c: &Cluster,
    on: &str,
) -> anyhow::Result<Vec<clusterlab_core::schema::NodeRecord>> {
    let out = c
        .exec(
            on,
            &[
                "etcdctl",
                "get",
                "--prefix",
                "/clusterlab/nodes/",
                "--print-value-only",
            ],
        )
        .await?;
    ensure!(out.code == 0, "etcdctl on {on} failed: {}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad node record {l:?}")))
        .collect()
}

async fn bootstrap(c: Cluster) -> anyhow::Result<()> {
    let (leader, took) = wait_for(
        "three node keys and a leader key naming etcd's leader",
        Duration::from_secs(30),
        POLL,
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            consistent(&st, 3)
        },
    )
    .await?;
    println!(
        "bootstrap: leader {leader}, consistent after {:.2} s",
        took.as_secs_f64()
    );
    // What stock etcdctl shows, from a node: exactly one leader key and one leader record.
    let out = c
        .exec(
            "node0",
            &["etcdctl", "get", "--prefix", "/clusterlab/", "--keys-only"],
        )
        .await?;
    let keys: Vec<&str> = out.stdout.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        keys.iter().filter(|k| **k == "/clusterlab/leader").count() == 1,
        "expected one /clusterlab/leader key, etcdctl shows {keys:?}"
    );
    ensure!(
        keys.len() == 4,
        "expected 3 node keys + leader key, etcdctl shows {keys:?}"
    );
    let (records, _) = wait_for(
        "exactly one node record with role leader",
        Duration::from_secs(5),
        POLL,
        || async {
            let recs = node_records(&c, "node0").await.map_err(|e| e.to_string())?;
            let leaders: Vec<_> = recs
                .iter()
                .filter(|r| r.role == clusterlab_core::schema::Role::Leader)
                .collect();
            if leaders.len() == 1 && leaders[0].name == leader {
                Ok(recs)
            } else {
                Err(format!("{recs:?}"))
            }
        },
    )
    .await?;
    for r in &records {
        ensure!(
            r.ip == c.node_ip(&r.name)?.to_string(),
            "record {r:?} has the wrong ip"
        );
    }
    // The health API: /leader answers 200 on the leader only, /health everywhere.
    for name in c.node_names() {
        let want = if name == leader { "200" } else { "503" };
        ensure!(
            http_code(&c, &name, "/leader").await? == want,
            "{name}: /leader should answer {want}"
        );
        ensure!(
            http_code(&c, &name, "/health").await? == "200",
            "{name}: /health should answer 200"
        );
    }
    Ok(())
}

/// Waits for a consistent cluster; returns its status, the leader and one follower.
async fn ready_leader_and_follower(c: &Cluster) -> anyhow::Result<(ClusterStatus, String, String)> {
    let st = c.wait_ready(Duration::from_secs(30)).await?;
    let leader = consistent(&st, 3).map_err(anyhow::Error::msg)?;
    let follower = st
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .map(|n| n.name.clone())
        .context("no follower")?;
    Ok((st, leader, follower))
}

/// The HTTP status a node's health API gives for `path`, asked from inside the node.
async fn http_code(c: &Cluster, node: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("http://127.0.0.1:8008{path}");
    let out = c
        .exec(
            node,
            &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", &url],
        )
        .await?;
    Ok(out.stdout.trim().to_string())
}

/// `docker stop` (SIGTERM) of a follower: the agent revokes its lease, so its key goes at
/// once instead of after the TTL.
async fn graceful_stop(c: Cluster) -> anyhow::Result<()> {
    let (_, _, victim) = ready_leader_and_follower(&c).await?;
    let asked = Instant::now();
    c.stop(&victim, Duration::from_secs(10)).await?;
    let stopped = asked.elapsed();
    ensure!(
        stopped < Duration::from_secs(9),
        "{victim} took {:.1} s to stop: the agent did not exit on SIGTERM",
        stopped.as_secs_f64()
    );
    let st = c.status().await?;
    ensure!(
        !st.nodes.iter().any(|n| n.name == victim && n.has_key),
        "{victim} stopped in {:.2} s but its key is still there: the lease was not revoked; {}",
        stopped.as_secs_f64(),
        st.summary()
    );
    println!(
        "graceful_stop: {victim} stopped in {:.2} s with its key already gone (TTL {} s)",
        stopped.as_secs_f64(),
        c.spec.lease_ttl_s
    );
    Ok(())
}

async fn kill_follower(c: Cluster) -> anyhow::Result<()> {
    let (_, leader, victim) = ready_leader_and_follower(&c).await?;
    c.kill(&victim).await?;
    let killed = Instant::now();
    let ttl = c.spec.lease_ttl_s;
    let (_, took) = wait_for(
        &format!("{victim}'s key to expire with the leader unchanged"),
        Duration::from_secs(ttl + 5),
        POLL,
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            let gone = !st.nodes.iter().any(|n| n.name == victim && n.has_key);
            match (&st.etcd_leader, &st.leader_key) {
                (Some(l), Some(k)) if *l != leader || k.name != leader => {
                    Err(format!("LEADER CHANGED: {}", st.summary()))
                }
                _ if gone => Ok(()),
                _ => Err(st.summary()),
            }
        },
    )
    .await?;
    println!(
        "kill_follower: {victim}'s key gone {:.2} s after the kill (lease TTL {ttl} s)",
        killed
            .elapsed()
            .as_secs_f64()
            .min(took.as_secs_f64() + 0.01)
    );
    let st = c.status().await?;
    ensure!(
        st.etcd_leader.as_deref() == Some(leader.as_str()),
        "leader changed after a follower died: {}",
        st.summary()
    );
    Ok(())
}

async fn kill_leader(c: Cluster) -> anyhow::Result<()> {
    let st = c.wait_ready(Duration::from_secs(30)).await?;
    let old = consistent(&st, 3).map_err(anyhow::Error::msg)?;
    c.kill(&old).await?;
    let killed = Instant::now();
    let (new, _) = wait_for(
        "a new /clusterlab/leader naming etcd's new raft leader",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            match (&st.etcd_leader, &st.leader_key) {
                (Some(l), Some(k)) if *l != old && k.name == *l => Ok(l.clone()),
                _ => Err(st.summary()),
            }
        },
    )
    .await?;
    let secs = killed.elapsed().as_secs_f64();
    println!("kill_leader: {old} killed; leader key names {new} after {secs:.2} s (etcd election timeout 1 s)");
    if secs > 10.0 {
        bail!("new leader key after {secs:.2} s");
    }
    Ok(())
}

async fn restart(c: Cluster) -> anyhow::Result<()> {
    let (st, _, victim) = ready_leader_and_follower(&c).await?;
    let member_before = st
        .nodes
        .iter()
        .find(|n| n.name == victim)
        .and_then(|n| n.member_id.clone());
    c.kill(&victim).await?;
    wait_for(
        &format!("{victim}'s key to expire"),
        Duration::from_secs(c.spec.lease_ttl_s + 5),
        POLL,
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            if st.nodes.iter().any(|n| n.name == victim && n.has_key) {
                Err(st.summary())
            } else {
                Ok(())
            }
        },
    )
    .await?;
    c.start(&victim).await?;
    let started = Instant::now();
    let (st, _) = wait_for(
        &format!("{victim} to re-register with three healthy members"),
        Duration::from_secs(10),
        POLL,
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            let healthy = st
                .nodes
                .iter()
                .all(|n| n.etcd_role.is_some() && n.raft_leader == st.nodes[0].raft_leader);
            if healthy && consistent(&st, 3).is_ok() {
                Ok(st)
            } else {
                Err(st.summary())
            }
        },
    )
    .await?;
    println!(
        "restart: {victim} re-registered {:.2} s after start",
        started.elapsed().as_secs_f64()
    );
    let member_after = st
        .nodes
        .iter()
        .find(|n| n.name == victim)
        .and_then(|n| n.member_id.clone());
    ensure!(
        member_before == member_after,
        "{victim} came back as member {member_after:?}, was {member_before:?}: identity not kept"
    );
    // The node also answers its health API.
    let out = c
        .exec(&victim, &["curl", "-sf", "http://127.0.0.1:8008/health"])
        .await?;
    ensure!(
        out.code == 0,
        "health API of {victim} failed: {} {}",
        out.stdout,
        out.stderr
    );
    Ok(())
}
