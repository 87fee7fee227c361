//! The graded scenarios, each against a fresh cluster of the submission: `startup` (hosts
//! tables, the leader service and SSH on a new cluster), `kill_follower` and `kill_leader`
//! (all of it again after the kill). Every wait has the profile's time bound and measures
//! how long the submission took; a failed wait's reason says what was still wrong.

use super::judge::{
    judge_hosts, judge_service, parse_host_lines, summarize, DeadNode, HostLine, HostsProblem,
    NodeRef,
};
use super::profile::{render, Profile};
use super::report::{CheckReport, ScenarioReport, Status};
use super::runner::{GradedCluster, UpError};
use super::timeline::{self, Host0, Obs};

mod moves;
use crate::docker::HarnessError;
use crate::oracle::raft_leader;
use crate::wait::wait_for;
use futures::StreamExt;
use moves::{demote, gateway, partition, restart};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most problems named in one reason.
const MAX_PROBLEMS: usize = 4;

/// Why a check did not pass, in the words the report gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed(pub String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for Failed {
    fn from(reason: String) -> Self {
        Failed(reason)
    }
}

/// Waits take their observations' reasons as text.
impl From<Failed> for String {
    fn from(f: Failed) -> Self {
        f.0
    }
}

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Startup,
    KillFollower,
    KillLeader,
    LeaderDemoted,
    PartitionLeader,
    RestartFollower,
    Scale,
    Gateway,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Startup,
        Scenario::KillFollower,
        Scenario::KillLeader,
        Scenario::LeaderDemoted,
        Scenario::PartitionLeader,
        Scenario::RestartFollower,
        Scenario::Scale,
        Scenario::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Startup => "startup",
            Scenario::KillFollower => "kill_follower",
            Scenario::KillLeader => "kill_leader",
            Scenario::LeaderDemoted => "leader_demoted",
            Scenario::PartitionLeader => "partition_leader",
            Scenario::RestartFollower => "restart_follower",
            Scenario::Scale => "scale",
            Scenario::Gateway => "gateway",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Startup => {
                "a fresh cluster: hosts tables name etcd's leader as host0 and every node once, the leader service answers on the leader only, SSH works between every pair"
            }
            Scenario::KillFollower => {
                "after a follower is killed: it leaves every hosts table in time, the rest stays right, the service stays on the leader, SSH works between the survivors"
            }
            Scenario::KillLeader => {
                "after the leader is killed: host0 and the service move to etcd's new leader, the dead leader leaves every hosts table in time, SSH works between the survivors"
            }
            Scenario::LeaderDemoted => {
                "etcd's leadership is moved to a follower while the old leader stays alive and connected: host0 and the service move, the old leader stops serving, and from then on no two nodes serve"
            }
            Scenario::PartitionLeader => {
                "the leader is taken off the network: the majority elects a new leader and its tables and service follow; after the reconnection the old leader is back as a follower, its table right, not serving"
            }
            Scenario::RestartFollower => {
                "a follower is killed and started again (same container, same data): it leaves every table, then is back in every table, its etcd member healthy, SSH to and from it working"
            }
            Scenario::Scale => {
                "a fresh cluster of scenarios.scale_nodes nodes (two-digit node indexes): the startup checks"
            }
            Scenario::Gateway => {
                "the profile's gateway, started with the nodes, forwards a steady stream of GETs to the leader's service; after the leader is killed the GETs succeed again and the gateway process is still running"
            }
        }
    }

    /// The scenario named `name` (as in reports and `--scenario`).
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the profile runs this scenario: its switch in `[scenarios]` is on, and
    /// `gateway` needs a `[gateway]` section.
    pub fn enabled(self, p: &Profile) -> bool {
        let s = &p.scenarios;
        match self {
            Scenario::Startup => s.startup,
            Scenario::KillFollower => s.kill_follower,
            Scenario::KillLeader => s.kill_leader,
            Scenario::LeaderDemoted => s.leader_demoted,
            Scenario::PartitionLeader => s.partition_leader,
            Scenario::RestartFollower => s.restart_follower,
            Scenario::Scale => s.scale,
            Scenario::Gateway => s.gateway && p.gateway.is_some(),
        }
    }

    /// The node count of this scenario's cluster.
    pub fn nodes(self, p: &Profile) -> usize {
        match self {
            Scenario::Scale => p.scenarios.scale_nodes,
            _ => p.nodes,
        }
    }
}

/// What a scenario found so far: checks in order, measured figures, notes.
#[derive(Debug, Default)]
pub struct Recorder {
    pub checks: Vec<CheckReport>,
    pub figures: BTreeMap<String, f64>,
    pub notes: Vec<String>,
}

impl Recorder {
    fn check(&mut self, name: &str, outcome: Result<f64, Failed>) -> bool {
        let passed = outcome.is_ok();
        if let Err(f) = &outcome {
            timeline::failed(name, &f.0);
        }
        self.checks.push(CheckReport {
            name: name.into(),
            passed,
            reason: outcome.as_ref().err().map(|f| f.0.clone()),
            seconds: outcome.ok().map(round),
        });
        passed
    }
    fn figure(&mut self, name: &str, secs: f64) {
        self.figures.insert(name.into(), round(secs));
    }
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A point in time that waits are measured from, and what it was.
#[derive(Debug, Clone, Copy)]
struct Since {
    at: Instant,
    what: &'static str,
}

/// Runs one scenario against a fresh cluster and always removes it afterwards.
pub async fn run_scenario(
    sub: &GradedCluster,
    scenario: Scenario,
    log_lines: usize,
) -> ScenarioReport {
    let started = Instant::now();
    let _ = sub.down().await;
    let mut rec = Recorder::default();
    let limit = Duration::from_secs(sub.profile.limits.scenario_s);
    let names = |nodes: Vec<NodeRef>| nodes.into_iter().map(|n| n.name).collect::<Vec<_>>();
    let live = std::sync::Arc::new(Mutex::new(timeline::Live::new(names(sub.nodes()))));
    let outcome: Result<(), UpError> = timeline::record(live.clone(), async {
        sub.up().await?;
        let t0 = Instant::now();
        timeline::started(t0, names(sub.nodes()));
        let body = async {
            match scenario {
                Scenario::Startup | Scenario::Scale => {
                    startup(sub, &mut rec, t0).await.map_err(UpError::from)
                }
                Scenario::KillFollower => {
                    kill(sub, &mut rec, t0, false).await.map_err(UpError::from)
                }
                Scenario::KillLeader => kill(sub, &mut rec, t0, true).await.map_err(UpError::from),
                Scenario::LeaderDemoted => demote(sub, &mut rec, t0).await,
                Scenario::PartitionLeader => partition(sub, &mut rec, t0).await,
                Scenario::RestartFollower => restart(sub, &mut rec, t0).await,
                Scenario::Gateway => gateway(sub, &mut rec, t0).await,
            }
        };
        match tokio::time::timeout(limit, body).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                rec.check(
                    "scenario_time",
                    Err(Failed(format!(
                        "the scenario did not finish within {} s (limits.scenario_s)",
                        limit.as_secs()
                    ))),
                );
                Ok(())
            }
        }
    })
    .await;
    let timeline = {
        let live = live.lock().unwrap_or_else(|e| e.into_inner());
        (!live.is_empty()).then(|| live.finish())
    };
    let (status, reason) = match &outcome {
        Err(e) => (
            Status::Error,
            Some(format!("the grader could not run this scenario: {e}")),
        ),
        Ok(()) => {
            let failed: Vec<String> = rec
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| format!("{}: {}", c.name, c.reason.clone().unwrap_or_default()))
                .collect();
            if failed.is_empty() {
                (Status::Passed, None)
            } else {
                (Status::Failed, Some(failed.join(" | ")))
            }
        }
    };
    let (status, reason) = if status == Status::Failed {
        // A node held at its process limit explains a failure that shows only as silence.
        let at_limit = sub.at_pids_limit().await;
        if at_limit.is_empty() {
            (status, reason)
        } else {
            let why = summarize(&at_limit, MAX_PROBLEMS);
            rec.check("resources", Err(Failed(why.clone())));
            (status, reason.map(|r| format!("{r} | resources: {why}")))
        }
    } else {
        (status, reason)
    };
    let logs = if status == Status::Passed {
        None
    } else {
        Some(sub.logs_tail(log_lines).await).filter(|l| !l.is_empty())
    };
    if let Err(e) = sub.down().await {
        rec.notes
            .push(format!("warning: removing {}: {e}", sub.names().cluster));
    }
    ScenarioReport {
        name: scenario.name().into(),
        description: scenario.description().into(),
        passed: status == Status::Passed,
        status,
        reason,
        seconds: round(started.elapsed().as_secs_f64()),
        figures: rec.figures,
        notes: rec.notes,
        checks: rec.checks,
        logs,
        timeline,
    }
}

async fn startup(sub: &GradedCluster, rec: &mut Recorder, t0: Instant) -> Result<(), HarnessError> {
    let p = &sub.profile;
    let all = sub.nodes();
    let since = Since {
        at: t0,
        what: "the containers started",
    };
    let start = Duration::from_secs(p.limits.start_s);
    let (hosts, svc) = tokio::join!(
        wait_hosts(sub, &all, &[], since, start, "limits.start_s", None),
        wait_service(sub, &all, since, start, "limits.start_s")
    );
    let hosts = hosts.result;
    if let Ok(h) = &hosts {
        rec.figure("hosts_correct_s", h.secs);
    }
    rec.check("hosts", hosts.map(|h| h.secs));
    if let Ok(s) = &svc {
        rec.figure("service_on_leader_s", *s);
    }
    rec.check("leader_service", svc);
    let shared = wait_shared(sub, &all, since, start, "limits.start_s").await;
    record_shared(rec, "shared_hosts", shared);
    check_ssh(sub, rec, &all).await;
    Ok(())
}

/// Waits until the cluster is right before a fault (hosts tables and service within
/// `limits.start_s`) and records `before_fault`; `None` when it never was.
async fn before_fault(sub: &GradedCluster, rec: &mut Recorder, t0: Instant) -> Option<HostsOk> {
    let all = sub.nodes();
    let since = Since {
        at: t0,
        what: "the containers started",
    };
    let start = Duration::from_secs(sub.profile.limits.start_s);
    // The fault is only meaningful on a cluster that was right before it.
    let (hosts, svc) = tokio::join!(
        wait_hosts(sub, &all, &[], since, start, "limits.start_s", None),
        wait_service(sub, &all, since, start, "limits.start_s")
    );
    let before = match (hosts.result, svc) {
        (Ok(h), Ok(_)) => Ok(h),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        (Err(h), Err(s)) => Err(Failed(format!("{h}; {s}"))),
    };
    match before {
        Ok(h) => {
            rec.figure("ready_s", t0.elapsed().as_secs_f64());
            rec.check("before_fault", Ok(t0.elapsed().as_secs_f64()));
            Some(h)
        }
        Err(e) => {
            rec.check(
                "before_fault",
                Err(Failed(format!(
                    "the cluster was never right before the fault: {e}"
                ))),
            );
            None
        }
    }
}

/// The lowest-numbered node other than `leader`, so the same profile picks the same node
/// on every run.
fn first_follower(all: &[NodeRef], leader: &NodeRef) -> Option<NodeRef> {
    all.iter().find(|n| *n != leader).cloned()
}

async fn kill(
    sub: &GradedCluster,
    rec: &mut Recorder,
    t0: Instant,
    leader: bool,
) -> Result<(), HarnessError> {
    let p = &sub.profile;
    let all = sub.nodes();
    let Some(before) = before_fault(sub, rec, t0).await else {
        return Ok(());
    };
    let victim = if leader {
        before.leader.clone()
    } else {
        match first_follower(&all, &before.leader) {
            Some(n) => n,
            None => return Ok(()),
        }
    };
    let role = if leader { "leader" } else { "follower" };
    sub.kill(&victim).await?;
    let killed = Instant::now();
    rec.notes.push(format!("killed {victim}, the {role}"));
    timeline::fault(
        killed,
        &format!("killed {}, the {role}", victim.name),
        Some(&victim.name),
    );
    let survivors: Vec<NodeRef> = all.iter().filter(|n| **n != victim).cloned().collect();
    let since = Since {
        at: killed,
        what: if leader {
            "the leader was killed"
        } else {
            "the follower was killed"
        },
    };
    // The hosts tables and the service are watched at the same time, so each figure is
    // the time that part of the submission took, not the sum.
    let (hosts, svc) = tokio::join!(
        hosts_after_kill(
            sub,
            &survivors,
            &victim,
            since,
            leader,
            if leader {
                "dead_leader_gone_s"
            } else {
                "dead_follower_gone_s"
            }
        ),
        wait_service(
            sub,
            &survivors,
            since,
            Duration::from_secs(p.limits.leader_change_s),
            "limits.leader_change_s",
        )
    );
    let (figures, hosts) = hosts;
    for (k, v) in figures {
        rec.figure(k, v);
    }
    rec.check("hosts", hosts);
    if let Ok(s) = &svc {
        rec.figure(
            if leader {
                "service_moved_s"
            } else {
                "service_on_leader_s"
            },
            *s,
        );
    }
    rec.check("leader_service", svc);
    let shared = wait_shared(
        sub,
        &survivors,
        since,
        Duration::from_secs(p.limits.dead_node_s),
        "limits.dead_node_s",
    )
    .await;
    record_shared(rec, "shared_hosts", shared);
    check_ssh(sub, rec, &survivors).await;
    Ok(())
}

/// The hosts check after a kill: for a dead leader, etcd elects a new one and every
/// survivor's host0 moves to it within `limits.leader_change_s`; then the dead node leaves
/// every table and the tables are right within `limits.dead_node_s`. Returns the figures
/// measured and the check's outcome.
async fn hosts_after_kill(
    sub: &GradedCluster,
    survivors: &[NodeRef],
    victim: &NodeRef,
    since: Since,
    leader: bool,
    gone_key: &'static str,
) -> (Vec<(&'static str, f64)>, Result<f64, Failed>) {
    let p = &sub.profile;
    let mut figures = Vec::new();
    let killed = since.at;
    let dead = [(victim.clone(), killed)];
    if leader {
        let change_limit = Duration::from_secs(p.limits.leader_change_s);
        match wait_new_leader(sub, survivors, victim, since, change_limit).await {
            Ok(s) => figures.push(("new_etcd_leader_s", s)),
            Err(e) => return (figures, Err(e)),
        }
        let moved = wait_hosts(
            sub,
            survivors,
            &dead,
            since,
            change_limit,
            "limits.leader_change_s",
            Some(&|probs: &[HostsProblem]| !probs.iter().any(HostsProblem::is_host0)),
        )
        .await
        .result;
        match moved {
            Ok(h) => figures.push(("host0_moved_s", h.secs)),
            Err(e) => return (figures, Err(e)),
        }
    }
    let full = wait_hosts(
        sub,
        survivors,
        &dead,
        since,
        Duration::from_secs(p.limits.dead_node_s),
        "limits.dead_node_s",
        None,
    )
    .await;
    if let Some(s) = full.gone_s {
        figures.push((gone_key, s));
    }
    if let Ok(h) = &full.result {
        figures.push(("hosts_correct_s", h.secs));
    }
    (figures, full.result.map(|h| h.secs))
}

/// A hosts wait that succeeded.
#[derive(Debug, Clone)]
struct HostsOk {
    leader: NodeRef,
    /// Seconds since the wait's reference point.
    secs: f64,
}

/// How a hosts wait ended, and (when nodes were killed) the seconds from the reference
/// point until no table listed them any more — recorded even when the wait failed for
/// another reason.
struct HostsWait {
    result: Result<HostsOk, Failed>,
    gone_s: Option<f64>,
}

/// One look at the cluster: etcd's leader and every live node's host lines.
struct HostsLook {
    leader: Result<NodeRef, Failed>,
    tables: Vec<(NodeRef, Result<Vec<HostLine>, Failed>)>,
}

async fn look_hosts(sub: &GradedCluster, live: &[NodeRef]) -> HostsLook {
    let leader = etcd_leader(sub, live).await;
    let reads = live.iter().map(|n| async move {
        (
            n.clone(),
            sub.read_hosts(n)
                .await
                .map(|t| parse_host_lines(&t))
                .map_err(|e| Failed(e.to_string())),
        )
    });
    let tables = futures::future::join_all(reads).await;
    if let Ok(l) = &leader {
        let ip = l.ip.to_string();
        for (n, t) in &tables {
            let h = match t {
                Err(_) => Host0::Unreadable,
                Ok(lines) => match lines.iter().find(|x| x.number == 0) {
                    None => Host0::Missing,
                    Some(x) if x.address == ip => Host0::Leader,
                    Some(_) => Host0::Other,
                },
            };
            timeline::observe(&n.name, Obs::Host0(h));
        }
    }
    HostsLook { leader, tables }
}

async fn etcd_leader(sub: &GradedCluster, live: &[NodeRef]) -> Result<NodeRef, Failed> {
    let probes = live
        .iter()
        .map(|n| async move { (n.clone(), sub.member_status(n).await) });
    let probes = futures::future::join_all(probes).await;
    for (n, r) in &probes {
        timeline::observe(&n.name, Obs::Role(role_of(r)));
    }
    raft_leader(&probes)
        .cloned()
        .map_err(|e| Failed(e.to_string()))
}

/// A status probe's answer as a timeline role.
fn role_of<E>(r: &Result<crate::oracle::MemberStatus, E>) -> timeline::Role {
    match r.as_ref().map(|s| s.role()) {
        Ok(Some(crate::oracle::Role::Leader)) => timeline::Role::Leader,
        Ok(Some(_)) => timeline::Role::Follower,
        Ok(None) => timeline::Role::NoLeader,
        Err(_) => timeline::Role::Unreachable,
    }
}

/// Fails at once (instead of waiting out the limit) when a node that should live has
/// stopped: nothing the submission does later can bring it back.
async fn stopped_nodes(sub: &GradedCluster, live: &[NodeRef]) -> Option<String> {
    let mut stopped = Vec::new();
    for n in live {
        match sub.not_running(n).await {
            Ok(None) => {}
            Ok(Some(why)) if why.oom_killed => {
                timeline::observe(&n.name, Obs::Down);
                stopped.push(format!(
                    "{n} stopped: {why}: {} MiB allowed (limits.memory_mb)",
                    sub.profile.limits.memory_mb
                ))
            }
            Ok(Some(why)) => {
                timeline::observe(&n.name, Obs::Down);
                stopped.push(format!("{n} stopped: {why}"))
            }
            Err(e) => stopped.push(format!("{n}: {e}")),
        }
    }
    (!stopped.is_empty()).then(|| {
        format!(
            "{} (the node's command must keep running; see the log lines in the report)",
            stopped.join("; ")
        )
    })
}

type Accept<'a> = &'a (dyn Fn(&[HostsProblem]) -> bool + Sync);

/// Waits until every live node's hosts table is right (or, with `accept`, until the
/// problems left are acceptable), at most `limit` after `since`.
async fn wait_hosts(
    sub: &GradedCluster,
    live: &[NodeRef],
    dead: &[(NodeRef, Instant)],
    since: Since,
    limit: Duration,
    limit_key: &str,
    accept: Option<Accept<'_>>,
) -> HostsWait {
    let all = sub.nodes();
    let file = sub.profile.judge.hosts_file.clone();
    let gone = Mutex::new(None::<f64>);
    let last_problems = Mutex::new(Vec::<String>::new());
    let remaining = limit.saturating_sub(since.at.elapsed());
    timeline::limit(since.at, limit, limit_key);
    let r = wait_for("hosts tables", remaining, sub.profile.poll(), || async {
        if let Some(fatal) = stopped_nodes(sub, live).await {
            return Ok(Err(fatal));
        }
        let look = look_hosts(sub, live).await;
        let leader = match look.leader {
            Ok(l) => l,
            Err(e) => {
                *last_problems.lock().unwrap_or_else(|e| e.into_inner()) = vec![e.to_string()];
                return Err(e.0);
            }
        };
        let dead_now: Vec<DeadNode> = dead
            .iter()
            .map(|(n, at)| DeadNode {
                node: n.clone(),
                killed_s: at.elapsed().as_secs_f64(),
            })
            .collect();
        let mut problems = Vec::new();
        for (on, table) in &look.tables {
            match table {
                Ok(lines) => problems.extend(judge_hosts(
                    on, &file, lines, &leader, live, &dead_now, &all,
                )),
                Err(error) => problems.push(HostsProblem::Unreadable {
                    on: on.to_string(),
                    file: file.clone(),
                    error: error.to_string(),
                }),
            }
        }
        if !dead.is_empty() {
            for (on, table) in &look.tables {
                if table.is_ok() {
                    let on_s = on.to_string();
                    let listed = problems
                        .iter()
                        .any(|p| matches!(p, HostsProblem::DeadListed { on: o, .. } if *o == on_s));
                    timeline::observe(&on.name, Obs::DeadListed(listed));
                }
            }
        }
        let unreadable = problems
            .iter()
            .any(|p| matches!(p, HostsProblem::Unreadable { .. }));
        if !dead.is_empty() && !unreadable && !problems.iter().any(HostsProblem::is_dead_listed) {
            let mut g = gone.lock().unwrap_or_else(|e| e.into_inner());
            g.get_or_insert(since.at.elapsed().as_secs_f64());
        }
        let ok = match accept {
            Some(f) => f(&problems),
            None => problems.is_empty(),
        };
        let texts: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        if ok {
            Ok(Ok(leader))
        } else {
            let s = summarize(&texts, MAX_PROBLEMS);
            *last_problems.lock().unwrap_or_else(|e| e.into_inner()) = texts;
            Err(s)
        }
    })
    .await;
    let gone_s = *gone.lock().unwrap_or_else(|e| e.into_inner());
    let result = match r {
        Ok((Ok(leader), _)) => Ok(HostsOk {
            leader,
            secs: since.at.elapsed().as_secs_f64(),
        }),
        Ok((Err(fatal), _)) => Err(fatal),
        Err(_) => {
            let problems = last_problems
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
            Err(format!(
                "{}; still so {:.1} s after {}; allowed {} s ({limit_key})",
                if problems.is_empty() {
                    "no observation completed".to_string()
                } else {
                    summarize(&problems, MAX_PROBLEMS)
                },
                since.at.elapsed().as_secs_f64(),
                since.what,
                limit.as_secs()
            ))
        }
    };
    HostsWait {
        result: result.map_err(Failed),
        gone_s,
    }
}

/// Waits until etcd's survivors agree on a leader other than the killed one.
async fn wait_new_leader(
    sub: &GradedCluster,
    survivors: &[NodeRef],
    old: &NodeRef,
    since: Since,
    limit: Duration,
) -> Result<f64, Failed> {
    let killed = since.at;
    timeline::limit(since.at, limit, "limits.leader_change_s");
    let r = wait_for(
        "a new etcd leader",
        limit.saturating_sub(killed.elapsed()),
        sub.profile.poll(),
        || async {
            match etcd_leader(sub, survivors).await {
                Ok(l) if l != *old => Ok(killed.elapsed().as_secs_f64()),
                Ok(l) => Err(format!("etcd still reports {l} as leader")),
                Err(e) => Err(e.0),
            }
        },
    )
    .await;
    r.map(|(s, _)| s).map_err(|e| {
        Failed(format!(
            "etcd elected no new leader among {} {:.1} s after {}; allowed {} s (limits.leader_change_s); last seen: {}",
            survivors
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            killed.elapsed().as_secs_f64(),
            since.what,
            limit.as_secs(),
            e.last
        ))
    })
}

/// Waits until the leader service answers on etcd's leader and on no other live node.
async fn wait_service(
    sub: &GradedCluster,
    live: &[NodeRef],
    since: Since,
    limit: Duration,
    limit_key: &str,
) -> Result<f64, Failed> {
    let port = sub.profile.judge.service_port;
    timeline::limit(since.at, limit, limit_key);
    let r = wait_for(
        "the leader service on the leader only",
        limit.saturating_sub(since.at.elapsed()),
        sub.profile.poll(),
        || async {
            if let Some(fatal) = stopped_nodes(sub, live).await {
                return Ok(Err(fatal));
            }
            let leader = etcd_leader(sub, live).await?;
            let probes = live
                .iter()
                .map(|n| async move { (n.clone(), sub.probe_service(n).await) });
            let probes = futures::future::join_all(probes).await;
            for (n, p) in &probes {
                timeline::observe(&n.name, Obs::Service(p.serving()));
            }
            let problems = judge_service(port, &leader, &probes);
            if problems.is_empty() {
                Ok(Ok(since.at.elapsed().as_secs_f64()))
            } else {
                Err(summarize(&problems, MAX_PROBLEMS))
            }
        },
    )
    .await;
    let outcome = match r {
        Ok((Ok(s), _)) => Ok(s),
        Ok((Err(fatal), _)) => Err(fatal),
        Err(e) => Err(format!(
            "{}; still so {:.1} s after {}; allowed {} s ({limit_key})",
            e.last,
            since.at.elapsed().as_secs_f64(),
            since.what,
            limit.as_secs()
        )),
    };
    outcome.map_err(Failed)
}

/// The least time the shared-table check has for its look.
const SHARED_LOOK: Duration = Duration::from_secs(5);

/// Most bytes of a file the grader reads in a node (the shared table).
const MAX_FILE_BYTES: usize = 1 << 20;

/// A file in a node as text, at most [`MAX_FILE_BYTES`]; why not when it cannot be read.
async fn read_node_file(sub: &GradedCluster, node: &NodeRef, path: &str) -> Result<String, Failed> {
    let limit = MAX_FILE_BYTES.to_string();
    let out = sub
        .exec(node, &["head", "-c", &limit, path])
        .await
        .map_err(|e| Failed(e.to_string()))?;
    if out.code != 0 {
        let why = out.stderr.trim();
        return Err(Failed(format!(
            "{path} cannot be read in {node} ({})",
            if why.is_empty() { "no such file?" } else { why }
        )));
    }
    Ok(out.stdout)
}

/// The hostN lines of a table as `hostN IP` sorted by N, for comparing and for reasons.
fn table_lines(lines: &[HostLine]) -> Vec<String> {
    let mut v: Vec<(u32, String)> = lines
        .iter()
        .map(|l| (l.number, l.address.clone()))
        .collect();
    v.sort();
    v.dedup();
    v.into_iter().map(|(n, a)| format!("host{n} {a}")).collect()
}

fn show_table(lines: &[String]) -> String {
    if lines.is_empty() {
        "no hostN line".into()
    } else {
        summarize(lines, 6)
    }
}

/// Waits until the shared copy of the table (`judge.shared_hosts_file`, read in the leader
/// node: the volume is the same in every node) holds the same hostN lines as the leader's
/// own table. `None` when the profile does not name a shared copy.
async fn wait_shared(
    sub: &GradedCluster,
    live: &[NodeRef],
    since: Since,
    limit: Duration,
    limit_key: &str,
) -> Option<Result<f64, Failed>> {
    let shared = sub.profile.judge.shared_hosts_file.clone();
    if shared.is_empty() {
        return None;
    }
    let hosts = sub.profile.judge.hosts_file.clone();
    // Checked after the tables, so it gets at least one full look even when the tables
    // used up the limit: a wrong table is not also reported as a late shared copy.
    let r = wait_for(
        "the shared table",
        limit
            .saturating_sub(since.at.elapsed())
            .max(SHARED_LOOK),
        sub.profile.poll(),
        || async {
            let leader = etcd_leader(sub, live).await?;
            let own = read_node_file(sub, &leader, &hosts).await?;
            let own = table_lines(&parse_host_lines(&own));
            let copy = read_node_file(sub, &leader, &shared).await?;
            let copy = table_lines(&parse_host_lines(&copy));
            if copy == own && !own.is_empty() {
                Ok(since.at.elapsed().as_secs_f64())
            } else {
                Err(Failed(format!(
                    "the shared copy {shared} holds [{}] but {hosts} of the leader {leader} holds [{}]",
                    show_table(&copy),
                    show_table(&own)
                )))
            }
        },
    )
    .await;
    Some(r.map(|(s, _)| s).map_err(|e| {
        Failed(format!(
            "{}; still so {:.1} s after {}; allowed {} s ({limit_key}); the leader must publish its table on the shared volume",
            e.last,
            since.at.elapsed().as_secs_f64(),
            since.what,
            limit.as_secs()
        ))
    }))
}

/// Records a shared-table wait as the check `name` and the figure `shared_hosts_s`.
fn record_shared(rec: &mut Recorder, name: &str, r: Option<Result<f64, Failed>>) {
    if let Some(r) = r {
        if let Ok(s) = &r {
            rec.figure("shared_hosts_s", *s);
        }
        rec.check(name, r);
    }
}

/// Runs the profile's SSH command from every live node to every other, retrying the
/// failed pairs until all succeed or `limits.ssh_s` is over.
async fn check_ssh(sub: &GradedCluster, rec: &mut Recorder, live: &[NodeRef]) {
    check_ssh_pairs(sub, rec, live, None).await
}

/// Most SSH commands run at once.
const SSH_AT_ONCE: usize = 8;

/// As [`check_ssh`]; with `involving`, only the pairs to and from that node.
async fn check_ssh_pairs(
    sub: &GradedCluster,
    rec: &mut Recorder,
    live: &[NodeRef],
    involving: Option<&NodeRef>,
) {
    let p = &sub.profile;
    let limit = Duration::from_secs(p.limits.ssh_s);
    let pairs: Vec<(NodeRef, NodeRef)> = live
        .iter()
        .flat_map(|a| {
            live.iter()
                .filter(move |b| *b != a)
                .map(move |b| (a.clone(), b.clone()))
        })
        .filter(|(a, b)| involving.is_none_or(|n| a == n || b == n))
        .collect();
    let total = pairs.len();
    let pending = Mutex::new(pairs);
    let start = Instant::now();
    let r = wait_for(
        "SSH between every pair",
        limit,
        Duration::from_secs(1),
        || async {
            if let Some(fatal) = stopped_nodes(sub, live).await {
                return Ok(Err(fatal));
            }
            let todo = pending.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut failed = Vec::new();
            let mut reasons = Vec::new();
            let outcomes: Vec<_> = futures::stream::iter(todo)
                .map(|(a, b)| async move {
                    let r = ssh_once(sub, &a, &b).await;
                    (a, b, r)
                })
                .buffered(SSH_AT_ONCE)
                .collect()
                .await;
            for (a, b, r) in outcomes {
                if let Err(why) = r {
                    reasons.push(why.0);
                    failed.push((a, b));
                }
            }
            let left = failed.len();
            *pending.lock().unwrap_or_else(|e| e.into_inner()) = failed;
            if left == 0 {
                Ok(Ok(()))
            } else {
                Err(format!(
                    "{left} of {total} pairs failed: {}",
                    summarize(&reasons, 3)
                ))
            }
        },
    )
    .await;
    let left = pending.lock().unwrap_or_else(|e| e.into_inner()).len();
    rec.figure("ssh_pairs_ok", (total - left) as f64);
    let outcome = match r {
        Ok((Ok(()), _)) => Ok(start.elapsed().as_secs_f64()),
        Ok((Err(fatal), _)) => Err(fatal),
        Err(e) => Err(format!(
            "{}; still so after {:.1} s of retrying; allowed {} s (limits.ssh_s)",
            e.last,
            start.elapsed().as_secs_f64(),
            limit.as_secs()
        )),
    };
    if let Ok(s) = &outcome {
        rec.figure("ssh_all_pairs_s", *s);
    }
    rec.check("ssh", outcome.map_err(Failed));
}

/// One SSH attempt from `a` to `b` with the profile's command.
async fn ssh_once(sub: &GradedCluster, a: &NodeRef, b: &NodeRef) -> Result<(), Failed> {
    let p: &Profile = &sub.profile;
    let idx = |n: &NodeRef| {
        crate::names::ClusterNames::node_index(&n.name)
            .unwrap_or_default()
            .to_string()
    };
    let vars = BTreeMap::from([
        ("ip", a.ip.to_string()),
        ("index", idx(a)),
        ("name", a.name.clone()),
        ("peer", b.ip.to_string()),
        ("peer_name", b.name.clone()),
        ("peer_index", idx(b)),
        ("n", sub.plan.nodes.to_string()),
    ]);
    let cmd = render(&p.judge.ssh_command, &vars).map_err(|e| e.to_string())?;
    let expect = render(&p.judge.ssh_expect, &vars).map_err(|e| e.to_string())?;
    let limit = Duration::from_secs(p.limits.ssh_command_s);
    let out = match sub.exec_within(a, &["sh", "-c", &cmd], limit).await {
        Err(HarnessError::StepTimedOut { .. }) => {
            return Err(Failed(format!(
            "ssh from {a} to {b} did not finish within {} s (limits.ssh_command_s); command: {cmd}",
            limit.as_secs()
        )))
        }
        Err(e) => return Err(Failed(format!("ssh from {a} to {b}: {e}"))),
        Ok(out) => out,
    };
    let said = |s: &str| {
        let s = s.trim().replace('\n', " ");
        if s.chars().count() > 160 {
            s.chars().take(160).collect::<String>() + "…"
        } else {
            s
        }
    };
    if out.code != 0 {
        return Err(Failed(format!(
            "ssh from {a} to {b} failed (exit {}): {}; command: {cmd}",
            out.code,
            said(&out.stderr)
        )));
    }
    if !expect.is_empty() && !out.stdout.contains(&expect) {
        return Err(Failed(format!(
            "ssh from {a} to {b} printed {:?}, expected it to contain {expect:?} (judge.ssh_expect); command: {cmd}",
            said(&out.stdout)
        )));
    }
    Ok(())
}
