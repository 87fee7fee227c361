//! Failure-detector trials, on 3 nodes with a 30 s lease so that only the detector can pass
//! them: a killed follower leaves every table well before its lease could expire and comes
//! back at once when started again; a node frozen for a few seconds (`docker pause`, longer
//! than a confirmation takes, far shorter than the lease) is not removed.

use super::common::{except, node_log};
use anyhow::{ensure, Context};
use harness::probe::hosts::{expected_block, wait_blocks, wait_full_table};
use harness::trial::{cluster_trial, Environment};
use harness::Cluster;
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bootstrap, agent start and first registration of every node.
const SETTLE: Duration = Duration::from_secs(60);
/// The lease TTL of these trials: far longer than any bound below.
const TTL_S: u64 = 30;
/// A killed follower must be gone from every table within this long (the bench's target is
/// 3 s; the trial leaves room for a loaded CI machine, still far below the TTL).
const DROP_BOUND: Duration = Duration::from_secs(8);
/// How long a node is frozen.
const FREEZE: Duration = Duration::from_secs(4);

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "detect_follower_kill_and_return",
            3,
            |s| s.lease_ttl_s = TTL_S,
            Arc::new(|c| Box::pin(follower_kill_and_return(c))),
        ),
        cluster_trial(
            env,
            "detect_frozen_node_kept",
            3,
            |s| s.lease_ttl_s = TTL_S,
            Arc::new(|c| Box::pin(frozen_node_kept(c))),
        ),
    ]
}

async fn follower_kill_and_return(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let victim = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let survivors = except(&all, &[&victim]);
    let expected = expected_block(&c, Some(&leader), &survivors)?;
    c.kill(&victim).await?;
    let killed = Instant::now();
    wait_blocks(
        &c,
        &survivors,
        &expected,
        &format!("every survivor to drop {victim} (lease TTL {TTL_S} s)"),
        DROP_BOUND,
    )
    .await?;
    let dropped = killed.elapsed();
    // The leader's agent says why: the evidence of more than one prober.
    let log = node_log(&c, &leader).await?;
    let line = log
        .lines()
        .find(|l| l.contains("removed an unreachable node") && l.contains(victim.as_str()))
        .with_context(|| format!("{leader}'s log has no removal of {victim}"))?;
    ensure!(
        line.contains("dead_by="),
        "the removal line names no probers: {line}"
    );

    c.start(&victim).await?;
    let started = Instant::now();
    wait_full_table(
        &c,
        &all,
        &all,
        &format!("{victim} back in every table"),
        SETTLE,
    )
    .await?;
    println!(
        "detect_follower_kill_and_return: {victim} dropped everywhere {:.2} s after the kill (lease TTL {TTL_S} s); back everywhere {:.2} s after its start; {leader}: {}",
        dropped.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        line.trim()
    );
    Ok(())
}

async fn frozen_node_kept(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let victim = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let key = clusterlab_core::schema::node_key(&victim);
    let before = lease_of(&c, &leader, &key)
        .await?
        .with_context(|| format!("{key} missing before the freeze"))?;
    let container = c.container_name(&victim)?;
    c.docker
        .pause_container(&container)
        .await
        .with_context(|| format!("pausing {container}"))?;
    let paused = Instant::now();
    // Through the freeze and for as long again after it, the key keeps its lease: the
    // detector never removed the node, and the node never had to re-register.
    let mut unpaused = false;
    let mut reads = 0;
    let watch_until = FREEZE * 2 + Duration::from_secs(2);
    while paused.elapsed() < watch_until {
        if !unpaused && paused.elapsed() >= FREEZE {
            c.docker
                .unpause_container(&container)
                .await
                .with_context(|| format!("unpausing {container}"))?;
            unpaused = true;
        }
        let now = lease_of(&c, &leader, &key).await;
        match now {
            Ok(Some(l)) if l == before => reads += 1,
            other => {
                if !unpaused {
                    let _ = c.docker.unpause_container(&container).await;
                }
                anyhow::bail!(
                    "{:.2} s after {victim} was frozen for {} s, {key} on {leader}: {other:?} (lease was {before:x})",
                    paused.elapsed().as_secs_f64(),
                    FREEZE.as_secs()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        reads > 10,
        "only {reads} reads of {key} while it was frozen"
    );
    wait_full_table(&c, &all, &all, "every table after the freeze", SETTLE).await?;
    let log = node_log(&c, &victim).await?;
    ensure!(
        !log.contains("false removal"),
        "{victim} logged a false removal:\n{}",
        log.lines()
            .filter(|l| l.contains("false removal"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "detect_frozen_node_kept: {victim} frozen {} s; {key} kept lease {before:x} in {reads} reads over {:.1} s; no removal",
        FREEZE.as_secs(),
        watch_until.as_secs_f64()
    );
    Ok(())
}

/// The lease of `key` as `node`'s member holds it (a linearizable read: `node` must be in the
/// quorum).
async fn lease_of(c: &Cluster, node: &str, key: &str) -> anyhow::Result<Option<i64>> {
    let endpoint = format!("http://{}:2379", c.node_ip(node)?);
    let read = async {
        let mut client = clusterlab_core::etcd::connect(&endpoint).await?;
        let resp = client.get(key, None).await?;
        Ok::<_, etcd_client::Error>(resp.kvs().first().map(|kv| kv.lease()))
    };
    tokio::time::timeout(Duration::from_secs(4), read)
        .await
        .with_context(|| format!("reading {key} on {node} timed out"))?
        .with_context(|| format!("reading {key} on {node}"))
}
