//! SSH trials: every ordered pair of nodes logs in with no prompt of any kind, checked by
//! `sshkeys verify --all` (embedded russh client, host key against the published one) and by
//! the stock OpenSSH client as the cluster user, by node name, hostN alias and IP; a killed
//! and restarted node keeps its host key; hostile files in the shared folder are never
//! trusted; password logins are refused. Each trial prints what it measured.

use super::common::node_log;
use anyhow::{bail, ensure, Context};
use harness::probe::hosts::{read_file, wait_full_table, wait_new_host0};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster};
use libtest_mimic::Trial;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bootstrap, agent start, key exchange and first sshd start on every node.
const SETTLE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(500);
/// Stock client options: never prompt, never accept an unknown or changed host key.
const SSH_OPTS: &str = "-o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=5";

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "ssh_mesh_3",
            3,
            |_| {},
            Arc::new(|c| Box::pin(mesh(c))),
        ),
        cluster_trial(
            env,
            "ssh_mesh_5",
            5,
            |_| {},
            Arc::new(|c| Box::pin(mesh(c))),
        ),
        cluster_trial(
            env,
            "ssh_after_restart",
            3,
            |_| {},
            Arc::new(|c| Box::pin(after_restart(c))),
        ),
        cluster_trial(
            env,
            "ssh_hostile_files",
            3,
            |_| {},
            Arc::new(|c| Box::pin(hostile_files(c))),
        ),
        cluster_trial(
            env,
            "ssh_no_password",
            3,
            |_| {},
            Arc::new(|c| Box::pin(no_password(c))),
        ),
    ]
}

/// Runs `sh -c script` on a node.
async fn sh(c: &Cluster, node: &str, script: &str) -> anyhow::Result<harness::ExecOutput> {
    Ok(c.exec(node, &["sh", "-c", script]).await?)
}

/// `sshkeys verify --all --json` on `node`: Ok(per-target elapsed ms) when every one of
/// `expect` passed, else a one-line account of what failed.
async fn verify_all(c: &Cluster, node: &str, expect: &[String]) -> Result<Vec<u64>, String> {
    let out = c
        .exec(
            node,
            &[
                "sshkeys",
                "verify",
                "--all",
                "--json",
                "--timeout-ms",
                "4000",
            ],
        )
        .await
        .map_err(|e| e.to_string())?;
    let report: Value = serde_json::from_str(&out.stdout).map_err(|e| {
        format!(
            "{node}: verify exit {} printed no JSON ({e}); stderr: {}",
            out.code,
            out.stderr.trim()
        )
    })?;
    let results = report["results"].as_array().cloned().unwrap_or_default();
    let mut failures = Vec::new();
    let mut elapsed = Vec::new();
    for want in expect {
        match results.iter().find(|r| r["target"] == want.as_str()) {
            Some(r) if r["ok"] == true => elapsed.push(r["elapsed_ms"].as_u64().unwrap_or(0)),
            Some(r) => failures.push(format!("{want}: {} {}", r["reason"], r["detail"])),
            None => failures.push(format!("{want}: not checked")),
        }
    }
    // Exit status 0 exactly when every target passed.
    let all_ok = results.iter().all(|r| r["ok"] == true);
    if all_ok != (out.code == 0) {
        failures.push(format!(
            "exit status {} disagrees with results (all ok: {all_ok})",
            out.code
        ));
    }
    if failures.is_empty() {
        Ok(elapsed)
    } else {
        Err(format!("from {node}: {}", failures.join("; ")))
    }
}

/// Waits until `sshkeys verify --all` passes on every node of `on` for every node of `expect`.
/// Returns the time it took and the slowest single check seen in the passing round.
pub(super) async fn wait_mesh(
    c: &Cluster,
    on: &[String],
    expect: &[String],
    timeout: Duration,
) -> anyhow::Result<(Duration, u64)> {
    let ((), took) = wait_for(
        "sshkeys verify --all to pass on every node",
        timeout,
        POLL,
        || async {
            let rounds =
                futures::future::join_all(on.iter().map(|n| verify_all(c, n, expect))).await;
            let errors: Vec<String> = rounds.iter().filter_map(|r| r.clone().err()).collect();
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join(" | "))
            }
        },
    )
    .await?;
    // One more full round, timed, now that it passes.
    let mut slowest = 0;
    for n in on {
        let ms = verify_all(c, n, expect)
            .await
            .map_err(|e| anyhow::anyhow!("verify passed once, then failed: {e}"))?;
        slowest = slowest.max(ms.into_iter().max().unwrap_or(0));
    }
    Ok((took, slowest))
}

/// `hostN` alias of every node in `node`'s current hosts block.
async fn aliases(c: &Cluster, node: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = read_file(c, node, "/etc/hosts").await?;
    let block = clusterlab_core::hosts::extract_block(&text)
        .ok_or_else(|| anyhow::anyhow!("{node}'s /etc/hosts has no clusterlab block"))?;
    Ok(clusterlab_core::hosts::parse_block(&block)?
        .into_iter()
        .map(|e| (e.name.clone(), e.alias()))
        .collect())
}

/// The stock client as the cluster user, from `from` to each of `to` under each of its three
/// names. Returns the number of logins checked, or every failure with its stderr.
async fn stock_mesh(c: &Cluster, from: &str, to: &[String]) -> Result<usize, String> {
    let alias = aliases(c, from).await.map_err(|e| e.to_string())?;
    let mut cases = Vec::new();
    for t in to.iter().filter(|t| t.as_str() != from) {
        let ip = c.node_ip(t).map_err(|e| e.to_string())?.to_string();
        let a = alias
            .get(t)
            .ok_or_else(|| format!("{from}'s hosts block has no alias for {t}: {alias:?}"))?;
        for name in [t.clone(), a.clone(), ip] {
            cases.push((t.clone(), name));
        }
    }
    let mut script = String::new();
    for (_, name) in &cases {
        script.push_str(&format!(
            "out=$(su - admin -c 'ssh {SSH_OPTS} {name} hostname' 2>/tmp/ssh-err </dev/null); \
             echo \"{name}|$?|$out|$(tr '\\n' ' ' </tmp/ssh-err)\"\n"
        ));
    }
    let out = sh(c, from, &script).await.map_err(|e| e.to_string())?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    let mut failures = Vec::new();
    for ((target, name), line) in cases.iter().zip(lines.iter().chain(std::iter::repeat(&""))) {
        let f: Vec<&str> = line.splitn(4, '|').collect();
        let ok = matches!(f.as_slice(), [n, "0", host, err]
            if n == name && host == target && !err.contains("Warning") && !err.contains("WARNING"));
        if !ok {
            failures.push(format!("{from} → {name} (expect {target}): {line:?}"));
        }
    }
    if failures.is_empty() {
        Ok(cases.len())
    } else {
        Err(failures.join("; "))
    }
}

/// Deadline for a stock-client round over `n` nodes: room for a few full rounds.
fn stock_timeout(n: usize) -> Duration {
    Duration::from_secs(20 + 3 * (n * n) as u64)
}

/// The stock client check from every node of `on` to every node of `to`, waiting briefly for
/// known_hosts to catch up with a hosts block that just changed. Returns logins checked and
/// the rounds it took.
async fn wait_stock_mesh(
    c: &Cluster,
    on: &[String],
    to: &[String],
    timeout: Duration,
) -> anyhow::Result<(usize, u32)> {
    let mut rounds = 0;
    let (n, _) = wait_for(
        "the stock ssh client to reach every peer by name, alias and IP",
        timeout,
        POLL,
        || {
            rounds += 1;
            async {
                // One script per source node, all sources at once.
                let results =
                    futures::future::join_all(on.iter().map(|from| stock_mesh(c, from, to))).await;
                let mut total = 0;
                let mut errors = Vec::new();
                for r in results {
                    match r {
                        Ok(k) => total += k,
                        Err(e) => errors.push(e),
                    }
                }
                if errors.is_empty() {
                    Ok(total)
                } else {
                    Err(errors.join(" | "))
                }
            }
        },
    )
    .await?;
    Ok((n, rounds))
}

async fn mesh(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    let up = Instant::now();
    let (took, slowest) = wait_mesh(&c, &all, &all, SETTLE).await?;
    println!(
        "ssh_mesh ({} nodes): sshkeys verify --all passed on every node {:.2} s after the cluster was up; slowest single check {slowest} ms",
        all.len(),
        took.as_secs_f64()
    );
    wait_full_table(&c, &all, &all, "every node to show the full table", SETTLE).await?;
    let started = Instant::now();
    let (logins, rounds) = wait_stock_mesh(&c, &all, &all, stock_timeout(all.len())).await?;
    println!(
        "ssh_mesh ({} nodes): {logins} stock-client logins (every ordered pair × name, hostN, IP) passed in round {rounds}, {:.2} s; {:.1} s since up",
        all.len(),
        started.elapsed().as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn host_key_of(c: &Cluster, node: &str) -> anyhow::Result<(String, String)> {
    let own = read_file(c, node, "/data/ssh/ssh_host_ed25519_key.pub").await?;
    let published = read_file(c, node, &format!("/shared/ssh/hosts/{node}.pub")).await?;
    let key = |s: &str| s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Ok((key(&own), key(&published)))
}

async fn after_restart(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    wait_mesh(&c, &all, &all, SETTLE).await?;
    let (leader, _) = wait_full_table(&c, &all, &all, "a settled table", SETTLE).await?;
    let before = host_key_of(&c, &leader).await?;
    ensure!(
        before.0 == before.1,
        "{leader} publishes another host key than it holds: {before:?}"
    );
    let survivors: Vec<String> = all.iter().filter(|n| **n != leader).cloned().collect();

    // Killing the leader moves every hostN alias; known_hosts must follow.
    c.kill(&leader).await?;
    let killed = Instant::now();
    let (new, _) = wait_new_host0(&c, &survivors, &leader, Duration::from_secs(10)).await?;
    let host0_seen = killed.elapsed();
    let (_, kh_took) = wait_for(
        "every survivor's ssh_known_hosts to list the new host0",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            for n in &survivors {
                let kh = read_file(&c, n, "/etc/ssh/ssh_known_hosts")
                    .await
                    .map_err(|e| e.to_string())?;
                let listed = kh.lines().any(|l| {
                    let names: Vec<&str> = l
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .collect();
                    names.contains(&new.as_str()) && names.contains(&"host0")
                });
                if !listed {
                    return Err(format!("{n}: host0 not yet on {new}'s line:\n{kh}"));
                }
            }
            Ok(())
        },
    )
    .await?;
    // The lag that matters is on each node's own clock: hosts file written → known_hosts
    // rewritten (file event, debounce, rebuild).
    let mut lag_ms = Vec::new();
    for n in &survivors {
        let out = sh(&c, n, "stat -c '%.9Y' /etc/hosts /etc/ssh/ssh_known_hosts").await?;
        let t: Vec<f64> = out
            .stdout
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        ensure!(t.len() == 2, "{n}: stat printed {:?}", out.stdout);
        lag_ms.push(format!("{n} {:.0} ms", (t[1] - t[0]) * 1000.0));
    }
    println!(
        "ssh_after_restart: {leader} (host0) killed; host0 = {new} in every survivor's hosts block after {:.2} s; every ssh_known_hosts lists it {:.2} s after that was observed; hosts file → known_hosts rewrite: {}",
        host0_seen.as_secs_f64(),
        kh_took.as_secs_f64(),
        lag_ms.join(", ")
    );
    let (logins, rounds) =
        wait_stock_mesh(&c, &survivors, &survivors, stock_timeout(survivors.len())).await?;
    println!(
        "ssh_after_restart: {logins} stock logins between survivors by name/alias/IP pass {:.2} s after the kill (round {rounds})",
        killed.elapsed().as_secs_f64()
    );

    c.start(&leader).await?;
    let started = Instant::now();
    let (took, _) = wait_mesh(&c, &all, &all, SETTLE).await?;
    println!(
        "ssh_after_restart: {leader} restarted; sshkeys verify --all passes on every node {:.2} s after the start",
        took.as_secs_f64()
    );
    let after = host_key_of(&c, &leader).await?;
    ensure!(
        after == before,
        "{leader}'s host key changed across the restart: before {before:?}, after {after:?}"
    );
    wait_full_table(&c, &all, &all, "the full table again", SETTLE).await?;
    let (logins, rounds) = wait_stock_mesh(&c, &all, &all, stock_timeout(all.len())).await?;
    println!(
        "ssh_after_restart: same host key; {logins} stock logins (all pairs, name/alias/IP, no known-hosts warning) pass {:.2} s after the start (round {rounds})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The files dropped into users/ by the hostile trial, and the refusal kind each must get.
const HOSTILE: &[(&str, &[&str])] = &[
    (
        "garbage.pub",
        &[
            "control-characters",
            "not-utf8",
            "unknown-type",
            "multiple-lines",
        ],
    ),
    ("evil.pub", &["options"]),
    ("shadow.pub", &["symlink"]),
    ("big.pub", &["too-large"]),
    ("linked.pub", &["symlink"]),
];

async fn hostile_files(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    wait_mesh(&c, &all, &all, SETTLE).await?;
    let attacker = &all[0];
    // An attacker key whose private half we hold: if any of the files below were trusted,
    // this key would log in.
    let setup = sh(
        &c,
        attacker,
        "set -e; rm -f /root/attacker /root/attacker.pub; \
         ssh-keygen -q -t ed25519 -N '' -C attacker -f /root/attacker; \
         cp /root/attacker.pub /shared/attacker.pub; \
         cd /shared/ssh/users; \
         head -c 3000 /dev/urandom > garbage.pub; \
         echo \"command=\\\"/bin/sh\\\" $(cat /root/attacker.pub)\" > evil.pub; \
         ln -s /etc/shadow shadow.pub; \
         { printf '%s ' \"$(cat /root/attacker.pub)\"; head -c 1048576 /dev/zero | tr '\\0' ' '; echo; } > big.pub; \
         ln -s /shared/attacker.pub linked.pub; \
         cut -d' ' -f2 /root/attacker.pub",
    )
    .await?;
    ensure!(setup.code == 0, "planting files failed: {}", setup.stderr);
    let blob = setup.stdout.trim().to_string();
    ensure!(blob.len() > 40, "no attacker key: {:?}", setup.stdout);
    let planted = Instant::now();

    // Every node's sync loop saw and refused every file (its log says so, naming the file).
    wait_for(
        "every node's sshkeys sync to warn about every planted file",
        Duration::from_secs(20),
        POLL,
        || async {
            let mut missing = Vec::new();
            for node in &all {
                let log = node_log(&c, node).await.map_err(|e| e.to_string())?;
                for (file, _) in HOSTILE {
                    let needle = format!("refusing published key: /shared/ssh/users/{file}");
                    if !log.contains(&needle) {
                        missing.push(format!("{node}: {file}"));
                    }
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no warning yet for {}", missing.join(", ")))
            }
        },
    )
    .await?;
    println!(
        "ssh_hostile_files: every node warned about all {} planted files within {:.2} s",
        HOSTILE.len(),
        planted.elapsed().as_secs_f64()
    );

    for node in &all {
        // The read-only status names each file with the right kind of refusal.
        let out = c.exec(node, &["sshkeys", "status", "--json"]).await?;
        let st: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("{node}: sshkeys status: {}", out.stderr))?;
        for (file, kinds) in HOSTILE {
            let path = format!("/shared/ssh/users/{file}");
            let Some(r) = st["refused"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["file"] == path.as_str()))
            else {
                bail!("{node}: {file} is not refused: {st}");
            };
            let kind = r["kind"].as_str().unwrap_or("");
            ensure!(
                kinds.contains(&kind),
                "{node}: {file} refused as {kind}, expected one of {kinds:?}"
            );
        }
        let users: Vec<String> = st["users"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        ensure!(
            users == all,
            "{node}: trusted user keys {users:?}, expected {all:?}"
        );
        // Nothing of the attacker's reached authorized_keys.
        let auth = read_file(&c, node, "/home/admin/.ssh/authorized_keys").await?;
        let keys = auth
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        ensure!(
            !auth.contains(&blob),
            "{node}: attacker key in authorized_keys:\n{auth}"
        );
        ensure!(
            keys == all.len(),
            "{node}: {keys} keys in authorized_keys:\n{auth}"
        );
    }

    // And the attacker key really does not log in anywhere.
    for target in all.iter().filter(|n| *n != attacker) {
        let out = sh(
            &c,
            attacker,
            &format!(
                "ssh {SSH_OPTS} -o IdentitiesOnly=yes -i /root/attacker admin@{target} hostname </dev/null"
            ),
        )
        .await?;
        ensure!(
            out.code != 0 && out.stderr.contains("Permission denied"),
            "attacker key from {attacker} to {target}: exit {}, out {:?}, err {:?}",
            out.code,
            out.stdout,
            out.stderr
        );
    }

    // The mesh still works, for the embedded and the stock client.
    let (_, slowest) = wait_mesh(&c, &all, &all, Duration::from_secs(10)).await?;
    wait_full_table(&c, &all, &all, "the full table", SETTLE).await?;
    let (logins, _) = wait_stock_mesh(&c, &all, &all, stock_timeout(all.len())).await?;
    println!(
        "ssh_hostile_files: attacker key refused on every peer; mesh intact (verify --all everywhere, slowest {slowest} ms; {logins} stock logins)"
    );
    Ok(())
}

async fn no_password(c: Cluster) -> anyhow::Result<()> {
    let all = c.node_names();
    wait_mesh(&c, &all, &all, SETTLE).await?;
    for node in &all {
        let out = c.exec(node, &["sshd", "-T"]).await?;
        ensure!(out.code == 0, "{node}: sshd -T failed: {}", out.stderr);
        for want in [
            "passwordauthentication no",
            "kbdinteractiveauthentication no",
            "permitrootlogin no",
            "pubkeyauthentication yes",
            "authenticationmethods publickey",
            "maxauthtries 3",
            "allowtcpforwarding no",
            "allowagentforwarding no",
            "x11forwarding no",
        ] {
            ensure!(
                out.stdout.lines().any(|l| l.trim() == want),
                "{node}: sshd -T lacks {want:?}"
            );
        }
        // No usable password on a fresh node: locked.
        let st = c.exec(node, &["passwd", "-S", "admin"]).await?;
        ensure!(
            st.stdout.split_whitespace().nth(1) == Some("L"),
            "{node}: passwd -S admin: {:?}",
            st.stdout
        );
    }
    println!("ssh_no_password: sshd -T on every node: public keys only, password, keyboard-interactive and root login off, at most 3 tries, no TCP/agent/X11 forwarding; admin's password locked");

    // Give the target real passwords, so that only sshd's configuration stands in the way,
    // and a second sshd on port 2222 that does accept passwords: the control that proves the
    // client below really sends one.
    let (client, target) = (&all[0], &all[1]);
    let setup = sh(
        &c,
        target,
        "set -e; echo admin:clusterlab | chpasswd; echo root:clusterlab | chpasswd; \
         /usr/sbin/sshd -p 2222 -o PasswordAuthentication=yes -o AuthenticationMethods=any \
         -o PidFile=/run/probe-sshd.pid",
    )
    .await?;
    ensure!(setup.code == 0, "{target}: setup failed: {}", setup.stderr);
    sh(
        &c,
        client,
        "printf '#!/bin/sh\\necho clusterlab\\n' > /tmp/askpass; chmod 755 /tmp/askpass",
    )
    .await?;
    let attempt = |user: &str, port: u16| {
        format!(
            "SSH_ASKPASS=/tmp/askpass SSH_ASKPASS_REQUIRE=force DISPLAY=:0 setsid -w \
             ssh -p {port} -o HostKeyAlias={target} -o StrictHostKeyChecking=yes -o ConnectTimeout=5 -o PubkeyAuthentication=no \
             -o PreferredAuthentications=password,keyboard-interactive -o NumberOfPasswordPrompts=1 \
             {user}@{target} hostname </dev/null"
        )
    };
    let control = sh(&c, client, &attempt("admin", 2222)).await?;
    ensure!(
        control.code == 0 && control.stdout.trim() == target.as_str(),
        "control: a password login to the password-enabled sshd on :2222 should work: exit {}, {:?}, {:?}",
        control.code,
        control.stdout,
        control.stderr
    );
    for user in ["admin", "root"] {
        let out = sh(&c, client, &attempt(user, 22)).await?;
        ensure!(
            out.code == 255 && out.stderr.contains("Permission denied (publickey)"),
            "password login as {user} to {target}:22: exit {}, out {:?}, err {:?}",
            out.code,
            out.stdout,
            out.stderr
        );
    }
    println!(
        "ssh_no_password: with the password set, {client} → {target}:22 as admin and as root is refused (server offers publickey only); the same client logs in on a password-enabled control sshd"
    );
    Ok(())
}
