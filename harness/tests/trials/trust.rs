//! Trust trials: what a hostile node can put into etcd or the shared folder is never used.
//! Root on one node forges keys with stock `etcdctl` (a stranger's lease-less node key, a
//! lease-less record for a real peer at a wrong address, leader keys pointing at a follower
//! and at the gateway) and plants a stranger's public key in the shared ssh folder. Every
//! /etc/hosts and ssh_known_hosts keeps to the peers at their planned addresses, the gateway
//! keeps forwarding to the real leader, the agents repair the keys they own, and the
//! stranger's key logs in nowhere.

use super::common::node_log;
use anyhow::{bail, ensure, Context};
use harness::probe::hosts::{expected_block, read_blocks, read_file, wait_full_table};
use harness::probe::http::{wait_proxy_serves_leader, Http};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster, ClusterSpec};
use libtest_mimic::Trial;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bootstrap, first tables, first key exchange.
const SETTLE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// How long the forged keys are watched: past the agents' 2 s rechecks and the leader's
/// "higher term outlives three elections" rule.
const WATCH: Duration = Duration::from_secs(8);
/// The forged addresses: nothing of the cluster lives there.
const FOREIGN: &str = "10.9.9.";

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "trust_forged_etcd_keys",
            3,
            with_gateway,
            Arc::new(|c| Box::pin(forged_etcd_keys(c))),
        ),
        cluster_trial(
            env,
            "trust_stranger_ssh_key",
            3,
            |_| {},
            Arc::new(|c| Box::pin(stranger_ssh_key(c))),
        ),
    ]
}

fn with_gateway(s: &mut ClusterSpec) {
    s.gateway = true;
    s.gateway_port = 0;
}

/// Runs `sh -c script` on a node; an error unless it exits 0.
async fn sh(c: &Cluster, node: &str, script: &str) -> anyhow::Result<String> {
    let out = c.exec(node, &["sh", "-c", script]).await?;
    ensure!(
        out.code == 0,
        "{node}: `{script}` exited {}: {}",
        out.code,
        out.stderr.trim()
    );
    Ok(out.stdout)
}

/// `etcdctl put KEY VALUE [--lease=ID]` inside `node`, the way anyone with root there could.
async fn etcdctl_put(
    c: &Cluster,
    node: &str,
    key: &str,
    value: &str,
    lease: Option<&str>,
) -> anyhow::Result<()> {
    let mut cmd = vec!["etcdctl", "put", key, value];
    let flag;
    if let Some(l) = lease {
        flag = format!("--lease={l}");
        cmd.push(&flag);
    }
    let out = c.exec(node, &cmd).await?;
    ensure!(
        out.code == 0 && out.stdout.trim() == "OK",
        "{node}: etcdctl put {key}: exit {}, {:?}, {:?}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// The value of `key` as `node`'s etcd member has it (empty when absent).
async fn etcdctl_get(c: &Cluster, node: &str, key: &str) -> anyhow::Result<String> {
    Ok(
        sh(c, node, &format!("etcdctl get {key} --print-value-only"))
            .await?
            .trim()
            .to_string(),
    )
}

/// Everything a trust file or hosts block must never contain after the forgeries.
fn forged_content(text: &str, gateway_ip: &str) -> Option<String> {
    for bad in [FOREIGN, "evil", "mallory", gateway_ip] {
        if text.contains(bad) {
            return Some(bad.to_string());
        }
    }
    None
}

async fn forged_etcd_keys(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let gw = c.gateway_url().await?;
    let http = Http::new();
    wait_proxy_serves_leader(
        &http,
        &c,
        &gw,
        |_| true,
        "the gateway to serve the leader",
        Duration::from_secs(30),
    )
    .await?;
    let expected = expected_block(&c, Some(&leader), &all)?;
    let followers: Vec<&String> = all.iter().filter(|n| **n != leader).collect();
    let (forger, victim) = (followers[0].as_str(), followers[1].as_str());
    let victim_ip = c.node_ip(victim)?;
    let gateway_ip = c
        .spec
        .subnet
        .host(harness::names::GATEWAY_OFFSET)
        .to_string();
    let forger_ip = c.node_ip(forger)?;

    // 1. A stranger, lease-less, at a foreign address.
    etcdctl_put(
        &c,
        forger,
        "/clusterlab/nodes/evil",
        &format!(
            r#"{{"name":"evil","ip":"{FOREIGN}9","role":"follower","member_id":"e","since":0}}"#
        ),
        None,
    )
    .await?;
    // 2. A real peer's name, lease-less, at a wrong address (over that peer's own key).
    etcdctl_put(
        &c,
        forger,
        &format!("/clusterlab/nodes/{victim}"),
        &format!(
            r#"{{"name":"{victim}","ip":"{FOREIGN}8","role":"follower","member_id":"e","since":0}}"#
        ),
        None,
    )
    .await?;
    // The victim's agent sees the write to its key by watch and rewrites its own record at
    // once (the periodic read-back, every 10 s, is only the fallback).
    let overwritten = Instant::now();
    let (_, took) = wait_for(
        "the victim's agent to rewrite its overwritten node key",
        Duration::from_millis(1500),
        Duration::from_millis(50),
        || async {
            let rec = etcdctl_get(&c, forger, &format!("/clusterlab/nodes/{victim}"))
                .await
                .map_err(|e| e.to_string())?;
            let n: Value = serde_json::from_str(&rec).map_err(|e| format!("{rec:?}: {e}"))?;
            if n["ip"] == victim_ip.to_string().as_str() {
                Ok(())
            } else {
                Err(format!("{victim}: {rec}"))
            }
        },
    )
    .await?;
    println!(
        "trust_forged_etcd_keys: {victim}'s overwritten node key was its own again {:.2} s after the write (seen after {:.2} s of looking)",
        overwritten.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    // 3. The leader key: a follower at its real address with a huge term, lease-less.
    etcdctl_put(
        &c,
        forger,
        "/clusterlab/leader",
        &format!(r#"{{"name":"{forger}","ip":"{forger_ip}","member_id":"e","term":999999}}"#),
        None,
    )
    .await?;
    let planted = Instant::now();
    // 4. Then the gateway's own address, on a lease the forger granted itself.
    let grant = sh(&c, forger, "etcdctl lease grant 60").await?;
    let lease = grant
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no lease id in {grant:?}"))?
        .to_string();
    etcdctl_put(
        &c,
        forger,
        "/clusterlab/leader",
        &format!(r#"{{"name":"gateway","ip":"{gateway_ip}","member_id":"e","term":999999}}"#),
        Some(&lease),
    )
    .await?;

    // For the whole window: no hosts block and no known_hosts anywhere shows anything forged,
    // and every GET through the gateway is answered by the real leader.
    let mut rounds = 0;
    let mut gets = 0;
    while planted.elapsed() < WATCH {
        rounds += 1;
        for (node, block) in read_blocks(&c, &all).await? {
            let block = block.unwrap_or_default();
            if let Some(bad) = forged_content(&block, &gateway_ip) {
                bail!(
                    "{node}'s hosts block shows {bad:?} {:.1} s after the forgeries:\n{block}",
                    planted.elapsed().as_secs_f64()
                );
            }
        }
        for node in &all {
            let kh = read_file(&c, node, "/etc/ssh/ssh_known_hosts").await?;
            // The names field of each line (the key itself is base64 and proves nothing).
            let names: String = kh
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_whitespace().next())
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(bad) = forged_content(&names, &gateway_ip) {
                bail!("{node}'s ssh_known_hosts lists {bad:?}:\n{kh}");
            }
        }
        let r = http
            .get(&format!("{gw}/api/status"), Duration::from_secs(8))
            .await?;
        gets += 1;
        ensure!(
            r.status == 200 && r.served_by.as_deref() == Some(leader.as_str()),
            "GET through the gateway {:.1} s after the forgeries: {} from {:?} (leader {leader}): {}",
            planted.elapsed().as_secs_f64(),
            r.status,
            r.served_by,
            r.body.trim()
        );
        tokio::time::sleep(POLL).await;
    }
    println!(
        "trust_forged_etcd_keys: {rounds} rounds over {:.1} s: no forged name or address in any hosts block or known_hosts; {gets} GETs through the gateway all served by {leader}",
        WATCH.as_secs_f64()
    );

    // The agents repaired what they own: the victim's key and the leader key are theirs
    // again; the stranger's key is still there, and still ignored.
    let (_, took) = wait_for(
        "the victim's node key and the leader key to be repaired by their owners",
        Duration::from_secs(15),
        POLL,
        || async {
            let node_rec = etcdctl_get(&c, forger, &format!("/clusterlab/nodes/{victim}"))
                .await
                .map_err(|e| e.to_string())?;
            let leader_rec = etcdctl_get(&c, forger, "/clusterlab/leader")
                .await
                .map_err(|e| e.to_string())?;
            let n: Value =
                serde_json::from_str(&node_rec).map_err(|e| format!("{node_rec:?}: {e}"))?;
            let l: Value =
                serde_json::from_str(&leader_rec).map_err(|e| format!("{leader_rec:?}: {e}"))?;
            if n["ip"] == victim_ip.to_string().as_str() && l["name"] == leader.as_str() {
                Ok(())
            } else {
                Err(format!("{victim}: {node_rec}; leader: {leader_rec}"))
            }
        },
    )
    .await?;
    let evil = etcdctl_get(&c, forger, "/clusterlab/nodes/evil").await?;
    ensure!(
        evil.contains(FOREIGN),
        "the stranger's key is gone: {evil:?}"
    );
    harness::probe::hosts::wait_blocks(
        &c,
        &all,
        &expected,
        "every node to show the full, right table",
        Duration::from_secs(15),
    )
    .await?;
    println!(
        "trust_forged_etcd_keys: {victim}'s node key and the leader key found rewritten by their owners when looked at after the {:.0} s window (+{:.1} s); every table exact",
        WATCH.as_secs_f64(),
        took.as_secs_f64()
    );

    // Every node said why it ignored the stranger's key, and said it once, not per read.
    for node in &all {
        let log = node_log(&c, node).await?;
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("/clusterlab/nodes/evil")
                    && l.contains("not one of the configured peers")
            })
            .collect();
        ensure!(
            !lines.is_empty() && lines.len() <= 3,
            "{node}: {} log lines about the stranger's key (want 1–3):\n{}",
            lines.len(),
            lines.join("\n")
        );
    }
    println!(
        "trust_forged_etcd_keys: every node logged the refused stranger key (at most 3 times)"
    );
    Ok(())
}

async fn stranger_ssh_key(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let attacker = &all[0];
    // The mesh is up when every node trusts every peer's user key.
    wait_for(
        "every node to trust every peer's user key",
        SETTLE,
        Duration::from_millis(500),
        || async {
            for node in &all {
                let auth = read_file(&c, node, "/home/admin/.ssh/authorized_keys")
                    .await
                    .map_err(|e| e.to_string())?;
                for peer in &all {
                    if !auth.contains(&format!("clusterlab:{peer}")) {
                        return Err(format!("{node}: no key of {peer} yet"));
                    }
                }
            }
            Ok(())
        },
    )
    .await?;
    // A well-formed key whose private half the attacker holds, published as if mallory
    // were a node: users/ (log in as admin) and hosts/ (be trusted as a host).
    let blob = sh(
        &c,
        attacker,
        "set -e; rm -f /root/mallory /root/mallory.pub; \
         ssh-keygen -q -t ed25519 -N '' -C mallory -f /root/mallory; \
         cp /root/mallory.pub /shared/ssh/users/mallory.pub; \
         cp /root/mallory.pub /shared/ssh/hosts/mallory.pub; \
         cut -d' ' -f2 /root/mallory.pub",
    )
    .await?
    .trim()
    .to_string();
    ensure!(blob.len() > 40, "no key: {blob:?}");
    let planted = Instant::now();

    let (_, took) = wait_for(
        "every node's sshkeys to refuse mallory.pub as not a peer",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || async {
            for node in &all {
                let out = c
                    .exec(node, &["sshkeys", "status", "--json"])
                    .await
                    .map_err(|e| e.to_string())?;
                let st: Value = serde_json::from_str(&out.stdout)
                    .map_err(|e| format!("{node}: {e}: {}", out.stderr))?;
                for dir in ["users", "hosts"] {
                    let file = format!("/shared/ssh/{dir}/mallory.pub");
                    let kind = st["refused"]
                        .as_array()
                        .and_then(|a| a.iter().find(|r| r["file"] == file.as_str()))
                        .map(|r| r["kind"].clone());
                    if kind != Some(Value::from("not-a-peer")) {
                        return Err(format!("{node}: {file} refused as {kind:?}"));
                    }
                }
                let log = node_log(&c, node).await.map_err(|e| e.to_string())?;
                if !log.contains("refusing published key: /shared/ssh/users/mallory.pub") {
                    return Err(format!(
                        "{node}: no warning about mallory.pub in the log yet"
                    ));
                }
            }
            Ok(())
        },
    )
    .await?;
    for node in &all {
        let auth = read_file(&c, node, "/home/admin/.ssh/authorized_keys").await?;
        ensure!(
            !auth.contains(&blob) && !auth.contains("mallory"),
            "{node}: mallory's key in authorized_keys:\n{auth}"
        );
        let kh = read_file(&c, node, "/etc/ssh/ssh_known_hosts").await?;
        ensure!(
            !kh.contains(&blob) && !kh.contains("mallory"),
            "{node}: mallory's key in ssh_known_hosts:\n{kh}"
        );
    }
    for target in all.iter().filter(|n| *n != attacker) {
        let out = c
            .exec(
                attacker,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5 \
                         -o IdentitiesOnly=yes -i /root/mallory admin@{target} hostname </dev/null"
                    ),
                ],
            )
            .await?;
        ensure!(
            out.code != 0 && out.stderr.contains("Permission denied"),
            "mallory's key from {attacker} to {target}: exit {}, out {:?}, err {:?}",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    println!(
        "trust_stranger_ssh_key: mallory.pub refused as not-a-peer on every node {:.2} s after it was planted ({:.2} s to observe); not in any authorized_keys or known_hosts; its key logs in nowhere",
        planted.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    Ok(())
}
