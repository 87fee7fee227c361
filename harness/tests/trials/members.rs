//! Voters and members (`etcd.voters`): on 5 nodes with 3 voters, nodes 3 and 4 run no etcd
//! yet have their key, their hosts line and SSH trust like the voters; a dead voter leaves
//! them working through the other voters.

use super::common::except;
use super::ssh::wait_mesh;
use anyhow::ensure;
use harness::probe::hosts::{expected_block, wait_blocks, wait_full_table};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster, NodeKind};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);
const VOTERS: usize = 3;

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![cluster_trial(
        env,
        "members_work_like_voters",
        5,
        |spec| spec.voters = VOTERS,
        Arc::new(|c| Box::pin(members_work_like_voters(c))),
    )]
}

/// Names of the programs running in `node`'s container.
async fn programs(c: &Cluster, node: &str) -> anyhow::Result<Vec<String>> {
    let out = c
        .exec(node, &["sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null"])
        .await?;
    Ok(out.stdout.lines().map(|l| l.trim().to_string()).collect())
}

async fn members_work_like_voters(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let members: Vec<String> = all[VOTERS..].to_vec();
    let started = Instant::now();
    let (leader, took) =
        wait_full_table(&c, &all, &all, "every node to show the full table", SETTLE).await?;
    println!(
        "members: full table on all 5 nodes (3 voters) {:.2} s after up, etcd leader {leader}",
        took.as_secs_f64()
    );
    let st = c.status().await?;
    for n in &st.nodes {
        let want = if all[..VOTERS].contains(&n.name) {
            NodeKind::Voter
        } else {
            NodeKind::Member
        };
        ensure!(
            n.kind == want,
            "{}: kind {:?}, want {want:?}",
            n.name,
            n.kind
        );
        ensure!(n.has_key, "{} has no node key:\n{}", n.name, st.table());
    }
    ensure!(
        !members.contains(&leader),
        "etcd's leader {leader} is a member"
    );
    for m in &members {
        let progs = programs(&c, m).await?;
        ensure!(
            !progs.iter().any(|p| p == "etcd"),
            "member {m} runs etcd: {progs:?}"
        );
        for p in ["agent", "hostsgen", "sshkeys", "sshd"] {
            ensure!(
                progs.iter().any(|x| x == p),
                "member {m} does not run {p}: {progs:?}"
            );
        }
    }
    let (mesh, _) = wait_mesh(&c, &all, &all, SETTLE).await?;
    println!(
        "members: SSH trust between all 5 nodes {:.2} s later",
        mesh.as_secs_f64()
    );

    // A voter that is not the leader dies: the members' clients move to the other voters.
    let victim = all[..VOTERS]
        .iter()
        .find(|n| **n != leader)
        .cloned()
        .expect("3 voters, one leader");
    let survivors = except(&all, &[&victim]);
    let expected = expected_block(&c, Some(&leader), &survivors)?;
    c.kill(&victim).await?;
    let killed = Instant::now();
    let ttl = c.spec.lease_ttl_s;
    let dropped = wait_blocks(
        &c,
        &survivors,
        &expected,
        &format!("every survivor, members included, to drop the dead voter {victim}"),
        Duration::from_secs(ttl + 30),
    )
    .await?;
    println!(
        "members: dead voter {victim} dropped on every survivor after {:.2} s",
        dropped.as_secs_f64()
    );
    // Two lease TTLs after the kill, a member key is still there only if its lease was
    // renewed (or granted again) through the surviving voters.
    let renewed_by = killed + Duration::from_secs(2 * ttl);
    wait_for(
        "the members' keys to outlive two lease TTLs after the voter died",
        Duration::from_secs(3 * ttl + 10),
        Duration::from_millis(500),
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            let missing: Vec<&str> = st
                .nodes
                .iter()
                .filter(|n| members.contains(&n.name) && !n.has_key)
                .map(|n| n.name.as_str())
                .collect();
            if !missing.is_empty() {
                return Err(format!("no key for {missing:?}: {}", st.summary()));
            }
            if Instant::now() < renewed_by {
                return Err("not yet two TTLs since the kill".into());
            }
            Ok(())
        },
    )
    .await?;
    // And a member still follows changes: the victim comes back in every table.
    c.start(&victim).await?;
    let (_, back) = wait_full_table(
        &c,
        &all,
        &all,
        &format!("{victim} back in every table"),
        SETTLE,
    )
    .await?;
    println!(
        "members: {victim} back on every node after {:.2} s; trial took {:.0} s",
        back.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
