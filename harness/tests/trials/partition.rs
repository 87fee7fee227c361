//! Partition trials: the assignment's Raft scenario on five nodes (the old leader and one
//! follower cut off in the minority: its write never commits, the majority elects a leader
//! and commits, and after healing every node holds the majority's value under one leader with
//! a higher term), and an isolated follower on three nodes (nothing changes for the other two;
//! after healing it catches up). Writes are real `etcdctl put`s run on the nodes; reads are
//! serializable, so each member answers from its own store.

use super::common::{except, member_statuses};
use anyhow::{ensure, Context};
use harness::faults;
use harness::oracle::{block_of, describe_block as describe, unanimous_leader, NoLeader, Role};
use harness::probe::hosts::{expected_block, read_file, read_hosts, wait_full_table};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster, ClusterStatus, ExecOutput};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(100);
/// Bootstrap and first registration of every node, hosts tables included.
const SETTLE: Duration = Duration::from_secs(60);
/// etcdctl's own deadline for a write that cannot commit.
const WRITE_TIMEOUT_S: u64 = 2;
/// The bound the failed write must respect, etcdctl's start-up included.
const WRITE_BOUND: Duration = Duration::from_secs(5);

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "raft_partition",
            5,
            |_| {},
            Arc::new(|c| Box::pin(raft_partition(c))),
        ),
        cluster_trial(
            env,
            "partition_follower",
            3,
            |_| {},
            Arc::new(|c| Box::pin(partition_follower(c))),
        ),
        cluster_trial(
            env,
            "partition_leader_shared_copy",
            3,
            |_| {},
            Arc::new(|c| Box::pin(partition_leader_shared_copy(c))),
        ),
    ]
}

/// The leader that every node in `among` follows, and their common term: exactly one of them
/// reports itself leader, the others name it, and all report the same term.
fn agreed_leader(st: &ClusterStatus, among: &[String]) -> Result<(String, u64), NoLeader> {
    let probes = member_statuses(st, among);
    unanimous_leader(&probes).map(|(leader, term)| (leader.clone(), term))
}

/// A settled leader among `among`, waited for.
async fn wait_agreed(
    c: &Cluster,
    among: &[String],
    what: &str,
    timeout: Duration,
    accept: impl Fn(&str, u64) -> bool,
) -> anyhow::Result<((String, u64), Duration)> {
    Ok(wait_for(what, timeout, POLL, || async {
        let st = c.status().await.map_err(|e| e.to_string())?;
        let (leader, term) = agreed_leader(&st, among).map_err(|e| e.to_string())?;
        if accept(&leader, term) {
            Ok((leader, term))
        } else {
            Err(format!("leader {leader} at term {term} not accepted"))
        }
    })
    .await?)
}

/// `etcdctl put` run on `node`, against its own member, with a bounded deadline.
async fn put_on(
    c: &Cluster,
    node: &str,
    key: &str,
    value: &str,
    timeout_s: u64,
) -> anyhow::Result<(ExecOutput, Duration)> {
    let t = Instant::now();
    let out = c
        .exec(
            node,
            &[
                "etcdctl",
                "--dial-timeout=1s",
                &format!("--command-timeout={timeout_s}s"),
                "put",
                key,
                value,
            ],
        )
        .await?;
    Ok((out, t.elapsed()))
}

/// What `node`'s own member holds for `key` (serializable read from the harness, so an
/// isolated member answers too): the value and the key's version (how many committed puts
/// since it was created).
async fn local_get(c: &Cluster, node: &str, key: &str) -> anyhow::Result<Option<(String, i64)>> {
    let endpoint = format!("http://{}:2379", c.node_ip(node)?);
    let read = async {
        let mut client = clusterlab_core::etcd::connect(&endpoint).await?;
        let resp = client
            .get(
                key,
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await?;
        Ok::<_, etcd_client::Error>(resp.kvs().first().map(|kv| {
            (
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.version(),
            )
        }))
    };
    tokio::time::timeout(Duration::from_secs(4), read)
        .await
        .with_context(|| format!("serializable read of {key} on {node} timed out"))?
        .with_context(|| format!("serializable read of {key} on {node}"))
}

/// Every listed node's own value of `key`, as `node=value(vN)` for diagnostics.
async fn local_values(
    c: &Cluster,
    nodes: &[String],
    key: &str,
) -> anyhow::Result<Vec<(String, Option<(String, i64)>)>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push((n.clone(), local_get(c, n, key).await?));
    }
    Ok(out)
}

fn show_values(values: &[(String, Option<(String, i64)>)]) -> String {
    values
        .iter()
        .map(|(n, v)| match v {
            Some((val, ver)) => format!("{n}={val}(v{ver})"),
            None => format!("{n}=absent"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits until every node in `nodes` holds exactly `value` for `key`, written once.
async fn wait_value_everywhere(
    c: &Cluster,
    nodes: &[String],
    key: &str,
    value: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let (_, took) = wait_for(
        &format!("{key} = {value} (written once) on {}", nodes.join(",")),
        timeout,
        POLL,
        || async {
            let values = local_values(c, nodes, key)
                .await
                .map_err(|e| format!("{e:#}"))?;
            if values
                .iter()
                .all(|(_, v)| v.as_ref() == Some(&(value.to_string(), 1)))
            {
                Ok(())
            } else {
                Err(show_values(&values))
            }
        },
    )
    .await?;
    Ok(took)
}

/// Whether `from` can open a TCP connection to `to`'s etcd client port within a second.
async fn reaches(c: &Cluster, from: &str, to: &str) -> anyhow::Result<bool> {
    let url = format!("http://{}:2379/version", c.node_ip(to)?);
    let out = c
        .exec(from, &["curl", "-s", "-o", "/dev/null", "-m", "1", &url])
        .await?;
    Ok(out.code == 0)
}

/// The partition as the nodes' rules show it must be exactly `groups`.
async fn check_rules(c: &Cluster, groups: &[Vec<String>]) -> anyhow::Result<()> {
    let now = faults::cuts(c).await?;
    let mut want: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let mut g = g.clone();
            g.sort();
            g
        })
        .collect();
    want.sort();
    ensure!(
        faults::groups_of(&now.cuts) == want,
        "rules on the nodes say {}, wanted {want:?}",
        faults::describe(&now.cuts)
    );
    Ok(())
}

async fn raft_partition(c: Cluster) -> anyhow::Result<()> {
    const KEY: &str = "/lab/x";
    let all = c.node_names();
    wait_full_table(&c, &all, &all, "a settled hosts table on all five", SETTLE).await?;
    let ((b, term0), _) = wait_agreed(&c, &all, "all five following one leader", SETTLE, |_, _| {
        true
    })
    .await?;
    // A: the lowest-numbered follower goes into the minority with the old leader B.
    let a = all
        .iter()
        .find(|n| **n != b)
        .context("no follower")?
        .clone();
    let minority = vec![a.clone(), b.clone()];
    let majority = except(&all, &[&a, &b]);
    println!(
        "raft_partition: leader B={b} at term {term0}; minority {{{a},{b}}}, majority {{{}}}",
        majority.join(",")
    );

    let cut_at = Instant::now();
    faults::partition(&c, &[minority.clone(), majority.clone()]).await?;
    println!(
        "raft_partition: partition installed in {:.2} s",
        cut_at.elapsed().as_secs_f64()
    );

    // The client's `set 3`, sent to B while B may still believe it leads; meanwhile the
    // majority elects its own leader at a higher term (timed from the cut, concurrently).
    let (write, election) = tokio::join!(
        put_on(&c, &b, KEY, "3", WRITE_TIMEOUT_S),
        wait_agreed(
            &c,
            &majority,
            "the majority to elect a leader at a higher term",
            Duration::from_secs(15),
            |l, t| t > term0 && l != b,
        )
    );
    let (out, took) = write?;
    ensure!(
        out.code != 0,
        "set 3 via the minority leader {b} succeeded after {:.2} s: {}",
        took.as_secs_f64(),
        out.stdout.trim()
    );
    ensure!(
        took <= WRITE_BOUND,
        "set 3 via {b} took {:.2} s to fail (bound {} s)",
        took.as_secs_f64(),
        WRITE_BOUND.as_secs()
    );
    println!(
        "raft_partition: set 3 via {b} failed after {:.2} s: {}",
        took.as_secs_f64(),
        out.stderr.trim().lines().last().unwrap_or("")
    );
    let ((new_leader, term1), elected) = election?;
    println!(
        "raft_partition: majority elected {new_leader} at term {term1}, {:.2} s after the cut was installed",
        elected.as_secs_f64()
    );
    check_rules(&c, &[minority.clone(), majority.clone()]).await?;
    ensure!(
        !reaches(&c, &b, &majority[0]).await? && !reaches(&c, &majority[0], &a).await?,
        "the partition lets traffic through between {b}/{a} and {}",
        majority[0]
    );
    ensure!(
        reaches(&c, &majority[0], &majority[1]).await? && reaches(&c, &a, &b).await?,
        "the partition cuts traffic inside a group"
    );

    let (out, took) = put_on(&c, &new_leader, KEY, "8", 5).await?;
    ensure!(
        out.code == 0,
        "set 8 via the majority leader {new_leader} failed after {:.2} s: {}",
        took.as_secs_f64(),
        out.stderr.trim()
    );
    println!(
        "raft_partition: set 8 via {new_leader} committed in {:.2} s",
        took.as_secs_f64()
    );
    wait_value_everywhere(&c, &majority, KEY, "8", Duration::from_secs(5)).await?;
    // The minority applied neither write: 3 never committed, 8 never reached it.
    let minority_values = local_values(&c, &minority, KEY).await?;
    ensure!(
        minority_values.iter().all(|(_, v)| v.is_none()),
        "the minority holds a value for {KEY}: {}",
        show_values(&minority_values)
    );

    // Held until the minority's leases expire: the majority's hosts tables drop A and B.
    let (shown, took) = wait_full_table(
        &c,
        &majority,
        &majority,
        "the majority's hosts tables to drop the minority",
        Duration::from_secs(c.spec.lease_ttl_s + 20),
    )
    .await?;
    ensure!(shown != b, "host0 of the majority is still {b}");
    let mut minority_tables = Vec::new();
    for n in &minority {
        let block = block_of(&read_hosts(&c, n).await?);
        minority_tables.push(format!("{n}: {}", describe(block.as_deref())));
    }
    println!(
        "raft_partition: majority's hosts tables dropped {a},{b} {:.2} s after the cut ({:.2} s of waiting); minority shows [{}]",
        cut_at.elapsed().as_secs_f64(),
        took.as_secs_f64(),
        minority_tables.join(" | ")
    );
    let minority_values = local_values(&c, &minority, KEY).await?;
    ensure!(
        minority_values.iter().all(|(_, v)| v.is_none()),
        "before the heal, the minority holds a value for {KEY}: {}",
        show_values(&minority_values)
    );
    let held = cut_at.elapsed();

    let healed_at = Instant::now();
    faults::heal(&c).await?;
    check_rules(&c, &[]).await?;
    let ((leader, term2), _) = wait_agreed(
        &c,
        &all,
        "all five to follow one leader at a term above the old one",
        Duration::from_secs(20),
        |_, t| t > term0,
    )
    .await?;
    let agreed_s = healed_at.elapsed().as_secs_f64();
    // Only a member holding the committed `8` can win: never A or B.
    ensure!(
        majority.contains(&leader),
        "after the heal {leader} leads, but only the majority holds the committed log"
    );
    wait_value_everywhere(&c, &all, KEY, "8", Duration::from_secs(10)).await?;
    let values_s = healed_at.elapsed().as_secs_f64();
    let (host0, _) = wait_full_table(
        &c,
        &all,
        &all,
        "all five hosts tables to agree with the old leader back as a follower",
        Duration::from_secs(c.spec.lease_ttl_s + 30),
    )
    .await?;
    ensure!(
        host0 != b,
        "the old leader {b} is host0 again after the heal"
    );
    let hosts_s = healed_at.elapsed().as_secs_f64();
    let st = c.status().await?;
    let b_status = member_statuses(&st, std::slice::from_ref(&b));
    let b_role = b_status
        .first()
        .and_then(|(_, s)| s.as_ref().ok())
        .and_then(|s| s.role());
    ensure!(
        b_role == Some(Role::Follower),
        "old leader {b} reports {b_role:?} after the heal"
    );
    println!(
        "raft_partition: partition held {:.1} s; after heal: one leader {leader} at term {term2} (was {b} at {term0}, majority's {term1}) after {agreed_s:.2} s; all five hold {KEY}=8 (version 1: 3 never committed) after {values_s:.2} s; hosts tables agree (host0={host0}, {b} a follower) after {hosts_s:.2} s",
        held.as_secs_f64()
    );
    Ok(())
}

async fn partition_follower(c: Cluster) -> anyhow::Result<()> {
    const KEY: &str = "/lab/y";
    let all = c.node_names();
    wait_full_table(&c, &all, &all, "a settled hosts table", SETTLE).await?;
    let ((leader, term0), _) = wait_agreed(
        &c,
        &all,
        "all three following one leader",
        SETTLE,
        |_, _| true,
    )
    .await?;
    let st = c.status().await?;
    ensure!(
        st.leader_key.as_ref().map(|k| k.name.as_str()) == Some(leader.as_str()),
        "leader key does not name {leader}: {}",
        st.summary()
    );
    let f = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let rest = except(&all, &[&f]);
    let other = rest
        .iter()
        .find(|n| **n != leader)
        .context("no second follower")?
        .clone();

    let cut_at = Instant::now();
    faults::partition(&c, &[vec![f.clone()], rest.clone()]).await?;
    check_rules(&c, &[vec![f.clone()], rest.clone()]).await?;
    ensure!(
        !reaches(&c, &f, &leader).await? && !reaches(&c, &leader, &f).await?,
        "{f} and {leader} still reach each other"
    );
    ensure!(
        reaches(&c, &leader, &other).await?,
        "{leader} no longer reaches {other}"
    );

    let (out, took) = put_on(&c, &leader, KEY, "during", 5).await?;
    ensure!(
        out.code == 0,
        "a write via {leader} failed during the partition after {:.2} s: {}",
        took.as_secs_f64(),
        out.stderr.trim()
    );
    let commit_s = took.as_secs_f64();
    wait_value_everywhere(&c, &rest, KEY, "during", Duration::from_secs(5)).await?;
    ensure!(
        local_get(&c, &f, KEY).await?.is_none(),
        "the isolated {f} holds {KEY}"
    );

    // Until the isolated follower's lease expires, the other two must keep their leader,
    // term and leader key; then their hosts tables drop it.
    let f_key = clusterlab_core::schema::node_key(&f);
    let (verdict, _) = wait_for(
        &format!("{f}'s key to expire on {leader} with nothing else changing"),
        Duration::from_secs(c.spec.lease_ttl_s + 10),
        POLL,
        || async {
            let st = c.status().await.map_err(|e| e.to_string())?;
            let now = agreed_leader(&st, &rest);
            let key = st.leader_key.as_ref().map(|k| k.name.clone());
            if now.as_ref().ok() != Some(&(leader.clone(), term0))
                || key.as_deref() != Some(leader.as_str())
            {
                return Ok(Err(format!(
                    "{:?} leader key {key:?}: {}",
                    now,
                    st.summary()
                )));
            }
            match local_get(&c, &leader, &f_key).await {
                Ok(None) => Ok(Ok(())),
                Ok(Some(_)) => Err(format!("{f_key} still present; {}", st.summary())),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await?;
    if let Err(changed) = verdict {
        anyhow::bail!("isolating follower {f} changed the others' leader: {changed}");
    }
    let expired_s = cut_at.elapsed().as_secs_f64();
    let (host0, _) = wait_full_table(
        &c,
        &rest,
        &rest,
        &format!("{} to drop {f} from their hosts tables", rest.join(",")),
        Duration::from_secs(10),
    )
    .await?;
    ensure!(host0 == leader, "host0 moved to {host0} from {leader}");
    let st = c.status().await?;
    ensure!(
        agreed_leader(&st, &rest).ok() == Some((leader.clone(), term0)),
        "leader or term changed while {f} was isolated: {}",
        st.summary()
    );
    println!(
        "partition_follower: {f} isolated; {leader} stays leader at term {term0}; write committed in {commit_s:.2} s; {f}'s key expired {expired_s:.2} s after the cut and the hosts tables dropped it {:.2} s after the cut",
        cut_at.elapsed().as_secs_f64()
    );

    let healed_at = Instant::now();
    faults::heal(&c).await?;
    check_rules(&c, &[]).await?;
    let ((after, term1), _) = wait_agreed(
        &c,
        &all,
        "all three following one leader after the heal",
        Duration::from_secs(20),
        |_, _| true,
    )
    .await?;
    wait_value_everywhere(&c, &all, KEY, "during", Duration::from_secs(10)).await?;
    let caught_up_s = healed_at.elapsed().as_secs_f64();
    let (_, _) = wait_for(
        &format!("{f}'s key to be back"),
        Duration::from_secs(30),
        POLL,
        || async {
            match local_get(&c, &leader, &f_key).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("{f_key} absent")),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )
    .await?;
    let key_s = healed_at.elapsed().as_secs_f64();
    let (host0, _) = wait_full_table(
        &c,
        &all,
        &all,
        "all three hosts tables to agree again",
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "partition_follower: after heal {f} holds {KEY}=during after {caught_up_s:.2} s, its key is back after {key_s:.2} s, all tables agree (host0={host0}) after {:.2} s; leader {after} at term {term1} ({})",
        healed_at.elapsed().as_secs_f64(),
        if after == leader && term1 == term0 {
            "unchanged".to_string()
        } else {
            format!("was {leader} at {term0}: the rejoining follower's higher term forced an election")
        }
    );
    Ok(())
}

/// Unix milliseconds now, to compare with the nodes' log times.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The times (Unix ms) at which `node`'s hostsgen logged writing the shared copy.
async fn shared_writes(c: &Cluster, node: &str) -> anyhow::Result<Vec<u64>> {
    let container = c.container_name(node)?;
    let log = c.objects.logs_tail(&container, 3000).await;
    Ok(log
        .lines()
        .filter(|l| l.contains("hostsgen::watch: updated") && l.contains("file=/shared/hosts"))
        .filter_map(|l| harness::bench::hosts::unix_ms(l.split_whitespace().next()?))
        .collect())
}

/// The leader cut off and let back in quickly, while its hostsgen's watch is still open:
/// once back, its member replays the changes it missed, passing through states in which
/// the leader key still names it. None of them may reach /shared/hosts: from the cut on,
/// the old leader never writes the shared copy, and once it is back the shared copy holds the
/// new leader's table and keeps holding it.
async fn partition_leader_shared_copy(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (old, _) = wait_full_table(&c, &all, &all, "a settled hosts table", SETTLE).await?;
    let rest = except(&all, &[&old]);
    let cut_ms = unix_ms_now();
    faults::partition(&c, &[vec![old.clone()], rest.clone()]).await?;
    let (new, _) = wait_full_table(
        &c,
        &rest,
        &rest,
        "the majority's table without the cut-off leader",
        Duration::from_secs(30),
    )
    .await?;
    ensure!(new != old, "{old} still leads after being cut off");
    let majority_block = expected_block(&c, Some(&new), &rest)?;
    let (_, _) = wait_for(
        "the shared copy to hold the majority's table",
        Duration::from_secs(10),
        POLL,
        || async {
            let text = read_file(&c, &new, "/shared/hosts")
                .await
                .map_err(|e| e.to_string())?;
            let block = block_of(&text);
            if block.as_deref() == Some(majority_block.as_str()) {
                Ok(())
            } else {
                Err(describe(block.as_deref()))
            }
        },
    )
    .await?;
    // Heal at once: the old leader's watch has not been cancelled yet (etcd does so only
    // after several election timeouts without a leader), so it replays what it missed.
    faults::heal(&c).await?;
    let healed = Instant::now();
    let (leader, _) = wait_full_table(
        &c,
        &all,
        &all,
        "every node's table with the old leader back",
        Duration::from_secs(30),
    )
    .await?;
    let full_block = expected_block(&c, Some(&leader), &all)?;
    // The shared copy must hold the full table and keep it for a while (a late write of an
    // old table by the replaying node would show here).
    let hold = Duration::from_secs(6);
    let until = Instant::now() + hold;
    let mut right_since: Option<Instant> = None;
    let mut last = String::new();
    while Instant::now() < until || right_since.is_none() {
        ensure!(
            healed.elapsed() < Duration::from_secs(40),
            "the shared copy never held the full table {} after the heal; last {last}",
            describe(Some(&full_block))
        );
        let text = read_file(&c, &leader, "/shared/hosts").await?;
        let block = block_of(&text);
        if block.as_deref() == Some(full_block.as_str()) {
            right_since.get_or_insert_with(Instant::now);
        } else {
            ensure!(
                right_since.is_none(),
                "the shared copy held the full table, then {} ({:.2} s after the heal)",
                describe(block.as_deref()),
                healed.elapsed().as_secs_f64()
            );
            last = describe(block.as_deref());
        }
        tokio::time::sleep(POLL).await;
    }
    let late: Vec<u64> = shared_writes(&c, &old)
        .await?
        .into_iter()
        .filter(|t| *t >= cut_ms)
        .collect();
    ensure!(
        late.is_empty(),
        "{old} wrote /shared/hosts {} time(s) after it was cut off (first {} ms after the cut), \
         although {new} led from then on",
        late.len(),
        late[0].saturating_sub(cut_ms)
    );
    // Its removal was rightful: it saw itself cut off, so it must not call it false.
    let log = c.objects.logs_tail(&c.container_name(&old)?, 3000).await;
    let false_removals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(harness::bench::hosts::FALSE_REMOVAL_LOG))
        .collect();
    ensure!(
        false_removals.is_empty(),
        "{old} was cut off, yet logged its removal as false:\n{}",
        false_removals.join("\n")
    );
    println!(
        "{old} cut off, {new} led, healed after the shared copy moved; the copy held the full \
         table for {:.1} s and {old} never wrote it; its removal logged as: {}",
        hold.as_secs_f64(),
        log.lines()
            .find(|l| l.contains("removed while cut off"))
            .unwrap_or("(no removal seen by the node)")
    );
    Ok(())
}
