//! Hosts trials: every node's /etc/hosts shows the same clusterlab block with etcd's raft
//! leader as host0, follows a dead follower, a dead leader and a rejoining node, and keeps its
//! last table while etcd has no quorum. Each trial prints what it measured.

use super::common::{except, node_log};
use anyhow::{ensure, Context};
use harness::oracle::{
    block_of, describe_block as describe, judge_hosts, lines_outside_block, parse_host_lines,
};
use harness::probe::hosts::{
    expected_block, node_refs, read_file, read_hosts, wait_blocks, wait_full_table, wait_new_host0,
    PROBE_POLL,
};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bootstrap, agent start and first registration of every node.
const SETTLE: Duration = Duration::from_secs(60);

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "hosts_bootstrap_3",
            3,
            |_| {},
            Arc::new(|c| Box::pin(bootstrap(c))),
        ),
        cluster_trial(
            env,
            "hosts_bootstrap_5",
            5,
            |_| {},
            Arc::new(|c| Box::pin(bootstrap(c))),
        ),
        cluster_trial(
            env,
            "hosts_follower_death",
            3,
            |_| {},
            Arc::new(|c| Box::pin(follower_death(c))),
        ),
        cluster_trial(
            env,
            "hosts_leader_death",
            3,
            |_| {},
            Arc::new(|c| Box::pin(leader_death(c))),
        ),
        cluster_trial(
            env,
            "hosts_rejoin",
            3,
            |_| {},
            Arc::new(|c| Box::pin(rejoin(c))),
        ),
        cluster_trial(
            env,
            "hosts_quorum_loss",
            3,
            |_| {},
            Arc::new(|c| Box::pin(quorum_loss(c))),
        ),
    ]
}

/// Docker's own lines must survive every rewrite: localhost and the node's own name.
async fn docker_lines_kept(c: &Cluster, node: &str) -> anyhow::Result<()> {
    let text = read_hosts(c, node).await?;
    let outside = lines_outside_block(&text);
    let ip = c.node_ip(node)?.to_string();
    ensure!(
        outside
            .iter()
            .any(|l| l.starts_with("127.0.0.1") && l.contains("localhost")),
        "{node}: Docker's localhost line is gone:\n{text}"
    );
    ensure!(
        outside
            .iter()
            .any(|l| l.split_whitespace().next() == Some(ip.as_str())
                && l.split_whitespace().any(|w| w == node)),
        "{node}: Docker's line for its own name ({ip} {node}) is gone:\n{text}"
    );
    let blocks = text
        .lines()
        .filter(|l| l.trim() == "# BEGIN clusterlab")
        .count();
    ensure!(blocks == 1, "{node}: {blocks} clusterlab blocks:\n{text}");
    Ok(())
}

async fn bootstrap(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, took) =
        wait_full_table(&c, &all, &all, "every node to show the full table", SETTLE).await?;
    let expected = expected_block(&c, Some(&leader), &all)?;
    println!(
        "hosts_bootstrap ({} nodes): identical block with host0 = {leader} on every node {:.2} s after the cluster was up",
        all.len(),
        took.as_secs_f64()
    );
    print!("{expected}");
    // Each whole file also obeys the rule the grader applies to any submission.
    let nodes = node_refs(&c, &all)?;
    let leader_ref = nodes
        .iter()
        .find(|n| n.name == leader)
        .context("leader not in the cluster")?;
    for n in &nodes {
        let text = read_hosts(&c, &n.name).await?;
        let problems = judge_hosts(
            n,
            "/etc/hosts",
            &parse_host_lines(&text),
            leader_ref,
            &nodes,
            &[],
            &nodes,
        );
        ensure!(
            problems.is_empty(),
            "/etc/hosts of {n} breaks the hosts-table rule: {}",
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    for n in &all {
        docker_lines_kept(&c, n).await?;
    }
    // The leader's copy on the shared volume, read from another node.
    let reader = all
        .iter()
        .find(|n| **n != leader)
        .context("one node only")?;
    wait_for(
        "/shared/hosts to hold the block",
        Duration::from_secs(5),
        PROBE_POLL,
        || async {
            let text = read_file(&c, reader, "/shared/hosts")
                .await
                .map_err(|e| e.to_string())?;
            if text == expected {
                Ok(())
            } else {
                Err(format!("/shared/hosts on {reader}: {text:?}"))
            }
        },
    )
    .await?;
    // The resolver itself answers host0 with the leader's address.
    let leader_ip = c.node_ip(&leader)?.to_string();
    for n in &all {
        let out = c.exec(n, &["getent", "hosts", "host0"]).await?;
        ensure!(
            out.code == 0 && out.stdout.split_whitespace().next() == Some(leader_ip.as_str()),
            "getent hosts host0 on {n}: exit {}, {:?} (want {leader_ip})",
            out.code,
            out.stdout
        );
    }
    Ok(())
}

async fn follower_death(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let victim = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let survivors = except(&all, &[&victim]);
    let expected = expected_block(&c, Some(&leader), &survivors)?;
    let ttl = c.spec.lease_ttl_s;
    c.kill(&victim).await?;
    let killed = Instant::now();
    wait_blocks(
        &c,
        &survivors,
        &expected,
        &format!("every survivor to drop {victim} with {leader} still host0"),
        Duration::from_secs(ttl + 5),
    )
    .await?;
    println!(
        "hosts_follower_death: {victim} dropped on every survivor {:.2} s after the kill (lease TTL {ttl} s, bound {} s)",
        killed.elapsed().as_secs_f64(),
        ttl + 5
    );
    for n in &survivors {
        docker_lines_kept(&c, n).await?;
    }
    Ok(())
}

async fn leader_death(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (old, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let survivors = except(&all, &[&old]);
    let ttl = c.spec.lease_ttl_s;
    c.kill(&old).await?;
    let killed = Instant::now();
    let (new, _) = wait_new_host0(&c, &survivors, &old, Duration::from_secs(10)).await?;
    let new_host0 = killed.elapsed();
    println!(
        "hosts_leader_death: {old} killed; host0 = {new} (etcd's new leader) on every survivor after {:.2} s (bound 10 s)",
        new_host0.as_secs_f64()
    );
    // The dead leader stays listed as a follower until its lease runs out; the lease clock
    // restarts when the new leader takes over.
    let expected = expected_block(&c, Some(&new), &survivors)?;
    let took = wait_blocks(
        &c,
        &survivors,
        &expected,
        &format!("every survivor to drop {old}"),
        Duration::from_secs(ttl + 5),
    )
    .await?;
    println!(
        "hosts_leader_death: {old} dropped everywhere {:.2} s after the kill",
        (new_host0 + took).as_secs_f64()
    );
    let reader = survivors.iter().find(|n| **n != new).unwrap_or(&new);
    wait_for(
        "the new leader's /shared/hosts",
        Duration::from_secs(5),
        PROBE_POLL,
        || async {
            let text = read_file(&c, reader, "/shared/hosts")
                .await
                .map_err(|e| e.to_string())?;
            if text == expected {
                Ok(())
            } else {
                Err(format!(
                    "/shared/hosts: {}",
                    describe(block_of(&text).as_deref())
                ))
            }
        },
    )
    .await?;
    Ok(())
}

async fn rejoin(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let victim = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let survivors = except(&all, &[&victim]);
    c.kill(&victim).await?;
    let ttl = c.spec.lease_ttl_s;
    wait_full_table(
        &c,
        &survivors,
        &survivors,
        &format!("every survivor to drop {victim}"),
        Duration::from_secs(ttl + 5),
    )
    .await?;
    c.start(&victim).await?;
    let started = Instant::now();
    let (leader, _) = wait_full_table(
        &c,
        &all,
        &all,
        &format!("{victim} back on every node, its own included"),
        SETTLE,
    )
    .await?;
    println!(
        "hosts_rejoin: {victim} listed again on every node {:.2} s after its container started (host0 = {leader})",
        started.elapsed().as_secs_f64()
    );
    docker_lines_kept(&c, &victim).await?;
    Ok(())
}

async fn quorum_loss(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    // The survivor is a follower, so the dead leader is still its host0: the point is that it
    // keeps the last table it could vouch for, not that it guesses.
    let survivor = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let before = block_of(&read_hosts(&c, &survivor).await?).context("survivor has no block")?;
    let other = except(&all, &[&survivor, &leader])
        .into_iter()
        .next()
        .context("needs three nodes")?;
    let killed = [leader.clone(), other.clone()];
    for k in &killed {
        c.kill(k).await?;
    }
    let t0 = Instant::now();
    // Longer than a lease: a generator that trusted stale data or blanked on errors would
    // have changed the table by the end of this window.
    let window = Duration::from_secs(c.spec.lease_ttl_s + 5);
    let mut checks = 0;
    while t0.elapsed() < window {
        let now = block_of(&read_hosts(&c, &survivor).await?);
        ensure!(
            now.as_deref() == Some(before.as_str()),
            "{survivor}'s table changed {:.2} s into the quorum loss: was [{}], now [{}]",
            t0.elapsed().as_secs_f64(),
            describe(Some(&before)),
            describe(now.as_deref())
        );
        checks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = node_log(&c, &survivor).await?;
    ensure!(
        log.contains("keeping the last hosts table"),
        "{survivor}'s log does not say it kept the last table; last lines:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    println!(
        "hosts_quorum_loss: {} killed; {survivor} kept [{}] for {:.1} s ({checks} reads) and logged it",
        killed.join(" and "),
        describe(Some(&before)),
        t0.elapsed().as_secs_f64()
    );
    // Quorum back with one of the two: the survivor must take in real changes — a new leader
    // as host0, and the dead leader dropped once its lease (renewed by the election) runs out.
    c.start(&other).await?;
    let started = Instant::now();
    let pair = vec![survivor.clone(), other.clone()];
    let (new_leader, _) = wait_full_table(
        &c,
        &pair,
        &pair,
        &format!("{survivor} and {other} to show the cluster without {leader}"),
        SETTLE,
    )
    .await?;
    println!(
        "hosts_quorum_loss: {other} started; {survivor} caught up (host0 = {new_leader}, {leader} dropped) {:.2} s later",
        started.elapsed().as_secs_f64()
    );
    let log = node_log(&c, &survivor).await?;
    ensure!(
        log.contains("etcd is answering again"),
        "{survivor}'s log does not record the end of the outage"
    );
    c.start(&leader).await?;
    let started = Instant::now();
    let (now_leader, _) = wait_full_table(
        &c,
        &all,
        &all,
        &format!("{leader} back on every node"),
        SETTLE,
    )
    .await?;
    println!(
        "hosts_quorum_loss: {leader} started; full table with host0 = {now_leader} on every node {:.2} s later",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
