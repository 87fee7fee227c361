//! Hardening trials: a node that plants hostile files on the shared volume, a leader service
//! whose grandchild serves the port, and a hand-edited /etc/hosts. Each shows the cluster
//! still right afterwards and prints what it measured.

use super::common::except;
use anyhow::{ensure, Context};
use harness::oracle::{block_of, describe_block};
use harness::probe::hosts::{expected_block, read_hosts, wait_blocks, wait_full_table, PROBE_POLL};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bootstrap, agent start and first registration of every node.
const SETTLE: Duration = Duration::from_secs(60);

/// Where the planted links point, on every node: a file that must never change.
const VICTIM: &str = "/root/clusterlab-victim";
const VICTIM_TEXT: &str = "precious";

/// The leader service of the grandchild trial: `sh` starts a second `sh`, which starts a
/// server on the port, so the server is the agent's grandchild. The node image has no
/// interpreter, so the server is the node's own `proxy` as a byte relay to the agent's
/// health API: `GET /health` through it answers 200 while it runs.
const GRANDCHILD_SERVICE: &str =
    r#"["sh","-c","sh -c 'proxy --relay-to 127.0.0.1:8008 --listen 0.0.0.0:8888' & wait"]"#;
/// What `pgrep -f` looks for to find the grandchild.
const GRANDCHILD_PATTERN: &str = "relay-to 127.0.0.1:8008";

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "hardening_planted_shared_files",
            3,
            |_| {},
            Arc::new(|c| Box::pin(planted_shared_files(c))),
        ),
        cluster_trial(
            env,
            "hardening_leader_service_grandchild",
            3,
            |s| {
                s.env.push((
                    "CLUSTERLAB_LEADER_SERVICE__COMMAND".into(),
                    GRANDCHILD_SERVICE.into(),
                ))
            },
            Arc::new(|c| Box::pin(leader_service_grandchild(c))),
        ),
        cluster_trial(
            env,
            "hardening_hosts_block_restored",
            3,
            |_| {},
            Arc::new(|c| Box::pin(hosts_block_restored(c))),
        ),
    ]
}

/// Runs `script` with `sh -c` on `node`; an error with its output unless it exits 0.
async fn sh(c: &Cluster, node: &str, script: &str) -> anyhow::Result<String> {
    let out = c.exec(node, &["sh", "-c", script]).await?;
    ensure!(
        out.code == 0,
        "on {node}: `{script}` exited {}: {} {}",
        out.code,
        out.stdout.trim(),
        out.stderr.trim()
    );
    Ok(out.stdout)
}

/// The pid of hostsgen on `node`.
async fn hostsgen_pid(c: &Cluster, node: &str) -> anyhow::Result<String> {
    let pid = sh(c, node, "pidof hostsgen").await?.trim().to_string();
    ensure!(
        !pid.is_empty() && !pid.contains(' '),
        "{node}: pidof hostsgen said {pid:?}"
    );
    Ok(pid)
}

/// What /shared/hosts is, read from `node` without ever opening anything but a regular file
/// (a FIFO would hang `cat`): `Ok(text)` for a regular file, else `Err(what it is)`.
async fn shared_hosts(c: &Cluster, node: &str) -> anyhow::Result<Result<String, String>> {
    let out = c
        .exec(
            node,
            &[
                "sh",
                "-c",
                "f=/shared/hosts; if [ -f $f ] && [ ! -L $f ]; then head -c 4096 $f; \
                 else stat -c '%F, %s bytes' $f 2>&1; exit 3; fi",
            ],
        )
        .await?;
    Ok(match out.code {
        0 => Ok(out.stdout),
        _ => Err(out.stdout.trim().to_string()),
    })
}

/// Waits until /shared/hosts, read from `reader`, is a regular file holding `expected`.
async fn wait_shared(c: &Cluster, reader: &str, expected: &str, what: &str) -> anyhow::Result<()> {
    wait_for(what, Duration::from_secs(10), PROBE_POLL, || async {
        match shared_hosts(c, reader).await.map_err(|e| e.to_string())? {
            Ok(text) if text == expected => Ok(()),
            Ok(text) => Err(format!(
                "/shared/hosts holds [{}]",
                describe_block(block_of(&text).as_deref())
            )),
            Err(what) => Err(format!("/shared/hosts is {what}")),
        }
    })
    .await?;
    Ok(())
}

/// Every node in `on` still has the victim file as it was, and no planted link was replaced.
async fn victims_untouched(c: &Cluster, on: &[String]) -> anyhow::Result<()> {
    for n in on {
        let text = sh(c, n, &format!("cat {VICTIM}")).await?;
        ensure!(
            text == VICTIM_TEXT,
            "{n}: {VICTIM} was written through a planted link: {text:?}"
        );
    }
    Ok(())
}

/// One node (root there, as a hostile user would be) plants symbolic links at hostsgen's
/// temp names (the old predictable ones and guesses in the new pattern) pointing at a file
/// on the node, then a FIFO and later an oversized file at /shared/hosts. Rewrites triggered
/// by a follower's death and return must replace /shared/hosts, leave every link target
/// untouched, keep hostsgen running, and keep /etc/hosts right everywhere.
async fn planted_shared_files(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let victim = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let survivors = except(&all, &[&victim]);
    let planter = survivors
        .iter()
        .find(|n| **n != leader)
        .context("needs three nodes")?
        .clone();
    let mut pids = Vec::new();
    for n in &all {
        sh(&c, n, &format!("printf {VICTIM_TEXT} > {VICTIM}")).await?;
        pids.push((n.clone(), hostsgen_pid(&c, n).await?));
    }
    // Links at the temp names every node's hostsgen could use: the old `<node>.<pid>` name
    // and a spread of names in the new `<node>.<16 hex digits>` pattern.
    let mut links = Vec::new();
    for (n, pid) in &pids {
        links.push(format!("/shared/.hosts.{n}.{pid}.tmp"));
        for guess in ["0000000000000000", "0000000000000001", "ffffffffffffffff"] {
            links.push(format!("/shared/.hosts.{n}.{guess}.tmp"));
        }
    }
    let plant = links
        .iter()
        .map(|l| format!("ln -sfn {VICTIM} {l}"))
        .collect::<Vec<_>>()
        .join("; ");
    sh(
        &c,
        &planter,
        &format!("{plant}; rm -f /shared/hosts; mkfifo /shared/hosts"),
    )
    .await?;
    println!(
        "hardening_planted_shared_files: {planter} planted {} links to {VICTIM} and a FIFO at /shared/hosts (leader {leader})",
        links.len()
    );

    // A rewrite: the follower's death changes the table.
    c.kill(&victim).await?;
    let killed = Instant::now();
    let expected = expected_block(&c, Some(&leader), &survivors)?;
    wait_blocks(
        &c,
        &survivors,
        &expected,
        &format!("every survivor to drop {victim}"),
        Duration::from_secs(c.spec.lease_ttl_s + 5),
    )
    .await?;
    wait_shared(
        &c,
        &planter,
        &expected,
        "the FIFO at /shared/hosts to be replaced by the table",
    )
    .await?;
    println!(
        "hardening_planted_shared_files: FIFO replaced by the table without {victim} {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    victims_untouched(&c, &survivors).await?;

    // An oversized file (sparse: 64 MiB that cost nothing), then the follower's return.
    sh(
        &c,
        &planter,
        "rm -f /shared/hosts; truncate -s 64M /shared/hosts",
    )
    .await?;
    c.start(&victim).await?;
    let (now_leader, took) = wait_full_table(
        &c,
        &all,
        &all,
        &format!("{victim} back on every node"),
        SETTLE,
    )
    .await?;
    let expected = expected_block(&c, Some(&now_leader), &all)?;
    wait_shared(
        &c,
        &planter,
        &expected,
        "the oversized /shared/hosts to be replaced by the table",
    )
    .await?;
    println!(
        "hardening_planted_shared_files: {victim} back and the oversized file replaced {:.2} s after its start",
        took.as_secs_f64()
    );
    victims_untouched(&c, &all).await?;
    // The links are still there, untouched (no writer replaced or removed them).
    let listing = sh(
        &c,
        &planter,
        &format!(
            "for l in {}; do [ -L $l ] && [ \"$(readlink $l)\" = {VICTIM} ] || echo \"$l changed\"; done",
            links.join(" ")
        ),
    )
    .await?;
    ensure!(listing.trim().is_empty(), "planted links: {listing}");
    // hostsgen survived all of it on the nodes that were never killed.
    for (n, pid) in &pids {
        if *n == victim {
            continue;
        }
        let now = hostsgen_pid(&c, n).await?;
        ensure!(
            now == *pid,
            "{n}: hostsgen was restarted (pid {pid} → {now})"
        );
    }
    Ok(())
}

/// The HTTP status `from` gets for the leader service at `ip`, or "000" when nothing answers.
async fn service_code(c: &Cluster, from: &str, ip: &str) -> anyhow::Result<String> {
    let url = format!("http://{ip}:8888/health");
    let out = c
        .exec(
            from,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-m",
                "1",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .await?;
    Ok(out.stdout.trim().to_string())
}

/// The pids of the leader service's grandchild server on `node` (none: empty).
async fn server_pids(c: &Cluster, node: &str) -> anyhow::Result<String> {
    let out = c.exec(node, &["pgrep", "-f", GRANDCHILD_PATTERN]).await?;
    Ok(out.stdout.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A leader service whose server is the agent's grandchild (`sh -c 'sh -c server & wait'`).
/// When etcd moves leadership away, the old leader's agent must stop the whole group: its
/// port stops answering and no grandchild process is left on it, while the new leader serves.
async fn leader_service_grandchild(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let st = c.wait_ready(SETTLE).await?;
    let old = st.etcd_leader.clone().context("no etcd leader")?;
    let target = all
        .iter()
        .find(|n| **n != old)
        .context("no follower")?
        .clone();
    let target_id = st
        .nodes
        .iter()
        .find(|n| n.name == target)
        .and_then(|n| n.member_id.clone())
        .context("no member id for the target")?;
    let probe_from = except(&all, &[&old, &target])
        .into_iter()
        .next()
        .context("needs three nodes")?;
    let old_ip = c.node_ip(&old)?.to_string();
    let target_ip = c.node_ip(&target)?.to_string();
    let (pids, _) = wait_for(
        &format!("{old}'s leader service (a relay grandchild) to answer"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let code = service_code(&c, &probe_from, &old_ip)
                .await
                .map_err(|e| e.to_string())?;
            let pids = server_pids(&c, &old).await.map_err(|e| e.to_string())?;
            if code == "200" && !pids.is_empty() {
                Ok(pids)
            } else {
                Err(format!("HTTP {code}, server pids [{pids}]"))
            }
        },
    )
    .await?;
    // The server is a grandchild: its parent is the inner sh, not the agent.
    let tree = sh(&c, &old, "ps -eo pid,ppid,pgid,args").await?;
    println!("hardening_leader_service_grandchild: {old} serves with grandchild pid(s) {pids}; processes:\n{tree}");

    let moved = Instant::now();
    sh(
        &c,
        &old,
        &format!("ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 move-leader {target_id}"),
    )
    .await?;
    let ((), stopped) = wait_for(
        &format!("{old} to stop answering on :8888 with no grandchild left"),
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let code = service_code(&c, &probe_from, &old_ip)
                .await
                .map_err(|e| e.to_string())?;
            let left = server_pids(&c, &old).await.map_err(|e| e.to_string())?;
            if code == "000" && left.is_empty() {
                Ok(())
            } else {
                Err(format!("HTTP {code}, grandchild pids left [{left}]"))
            }
        },
    )
    .await?;
    println!(
        "hardening_leader_service_grandchild: leadership moved {old} → {target}; {old} silent on :8888 with no grandchild left {:.2} s later",
        stopped.as_secs_f64()
    );
    let (_, took) = wait_for(
        &format!("{target} to serve"),
        Duration::from_secs(15),
        Duration::from_millis(200),
        || async {
            let code = service_code(&c, &probe_from, &target_ip)
                .await
                .map_err(|e| e.to_string())?;
            if code == "200" {
                Ok(())
            } else {
                Err(format!("HTTP {code} from {target}"))
            }
        },
    )
    .await?;
    println!(
        "hardening_leader_service_grandchild: {target} serves {:.2} s after the move",
        (moved.elapsed().max(took)).as_secs_f64()
    );
    // And stays the only one: the old leader did not start its service again.
    ensure!(
        service_code(&c, &probe_from, &old_ip).await? == "000",
        "{old} answers on :8888 again"
    );
    Ok(())
}

/// The clusterlab block deleted from one node's /etc/hosts, then one of its lines edited:
/// hostsgen puts it back well before its 30 s poll, from file events alone.
async fn hosts_block_restored(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let expected = expected_block(&c, Some(&leader), &all)?;
    let node = all
        .iter()
        .find(|n| **n != leader)
        .context("no follower")?
        .clone();
    let before = read_hosts(&c, &node).await?;
    let leader_ip = c.node_ip(&leader)?.to_string();
    let bound = Duration::from_secs(10);
    let edits = [
        (
            "block deleted",
            "awk '/^# BEGIN clusterlab/{s=1} !s{print} /^# END clusterlab/{s=0}' /etc/hosts > /tmp/h \
             && cat /tmp/h > /etc/hosts"
                .to_string(),
        ),
        (
            "host0 line edited",
            format!(
                "sed 's/^{leader_ip} host0/10.66.66.66 host0/' /etc/hosts > /tmp/h && cat /tmp/h > /etc/hosts"
            ),
        ),
        ("file emptied", ": > /etc/hosts".to_string()),
    ];
    for (what, script) in edits {
        let t0 = Instant::now();
        // The file as the edit left it, read in the same exec (hostsgen waits a moment for
        // an edit to settle before it looks).
        let edited = sh(&c, &node, &format!("{script}; cat /etc/hosts")).await?;
        ensure!(
            block_of(&edited).as_deref() != block_of(&expected).as_deref(),
            "the edit ({what}) did not change {node}'s block: {edited:?}"
        );
        wait_blocks(
            &c,
            std::slice::from_ref(&node),
            &expected,
            &format!("{node}'s block to be restored after: {what}"),
            bound,
        )
        .await?;
        println!(
            "hardening_hosts_block_restored: {what} on {node} (left [{}]); restored within {:.2} s (bound {} s, poll fallback 30 s)",
            describe_block(block_of(&edited).as_deref()),
            t0.elapsed().as_secs_f64(),
            bound.as_secs()
        );
    }
    // Docker's lines outside the block survived the first two edits; the emptied file has
    // only the block back (Docker's lines are Docker's to write).
    let now = read_hosts(&c, &node).await?;
    ensure!(
        block_of(&now).as_deref() == block_of(&before).as_deref(),
        "{node}'s block differs from before: [{}] vs [{}]",
        describe_block(block_of(&now).as_deref()),
        describe_block(block_of(&before).as_deref())
    );
    // The other nodes were never touched.
    wait_blocks(
        &c,
        &except(&all, &[&node]),
        &expected,
        "the other nodes' blocks",
        Duration::from_secs(2),
    )
    .await?;
    Ok(())
}
