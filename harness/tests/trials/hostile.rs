//! Hostile submissions (fixtures/hostile): each is graded through the library, `startup`
//! only, and must end in a clear failure or error within its bound, with report.json and
//! junit.xml written, naming what happened, holding no escape sequence or control
//! character, while the Docker engine keeps answering and no container is left behind.
//! The symlink and link-loop submissions are refused while their folder is packed, before
//! Docker builds anything.

use anyhow::{ensure, Context};
use harness::grade::profile::Profile;
use harness::grade::report::{write_reports, GradeReport, Status};
use harness::grade::scenarios::Scenario;
use harness::grade::text::is_clean;
use harness::grade::{grade, GradeOptions};
use harness::images::{default_workspace, ImageOptions};
use harness::names::Subnet;
use harness::trial::{docker_required, runtime, Environment};
use libtest_mimic::Trial;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A hostile fixture: its folder, the most the grading may take, and what the report
/// must say.
struct Hostile {
    dir: &'static str,
    bound: Duration,
    status: Status,
    /// Text the report must contain (case-insensitive).
    names: &'static [&'static str],
}

const HOSTILE: [Hostile; 7] = [
    Hostile {
        dir: "forkbomb",
        bound: Duration::from_secs(120),
        status: Status::Failed,
        names: &["pids limit", "limits.pids"],
    },
    Hostile {
        dir: "memhog",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        names: &["out of memory", "limits.memory_mb", "exit code 137"],
    },
    Hostile {
        dir: "flood",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        names: &["log cut to its last"],
    },
    Hostile {
        dir: "symlink",
        bound: Duration::from_secs(20),
        status: Status::Error,
        names: &["symbolic link", "loot", "/root"],
    },
    Hostile {
        dir: "linkloop",
        bound: Duration::from_secs(20),
        status: Status::Error,
        names: &["symbolic link"],
    },
    Hostile {
        dir: "escapes",
        bound: Duration::from_secs(90),
        status: Status::Failed,
        // The texts survive, without their escape sequences.
        names: &["ssh-fake-output", "log-in-red"],
    },
    Hostile {
        dir: "endless",
        // limits.build_s is 10 there.
        bound: Duration::from_secs(60),
        status: Status::Error,
        names: &["build timed out", "limits.build_s", "building for ever"],
    },
];

/// The slowest the Docker engine may be to answer a ping while a hostile submission runs.
const MAX_PING: Duration = Duration::from_secs(5);

pub fn trials(env: &Environment) -> Vec<Trial> {
    let mut t: Vec<Trial> = HOSTILE.iter().map(|h| hostile_trial(env, h)).collect();
    t.push(isolation_trial(env));
    t
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A subnet of its own for each run, away from the other trials' and the grading trials'.
fn subnet() -> Subnet {
    let k = (std::process::id() * 7 + SEQ.fetch_add(1, Ordering::SeqCst)) % 50 + 50;
    Subnet {
        base: Ipv4Addr::new(10, 79, k as u8, 0),
        prefix: 24,
    }
}

fn hostile_trial(env: &Environment, h: &'static Hostile) -> Trial {
    let name = format!("grader_hostile_{}", h.dir);
    match env.clone() {
        Environment::Unavailable(reason) => {
            if docker_required() {
                Trial::test(name, move || {
                    Err(format!("Docker is required but unavailable: {reason}").into())
                })
            } else {
                Trial::test(name, || Ok(())).with_ignored_flag(true)
            }
        }
        Environment::Ready { docker, .. } => Trial::test(name, move || {
            runtime()
                .block_on(grade_hostile(docker, h))
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }
}

async fn grade_hostile(docker: bollard::Docker, h: &Hostile) -> anyhow::Result<()> {
    let file = format!("fixtures/hostile/{}/profile.toml", h.dir);
    let p = Profile::load(&default_workspace().join(&file))?;
    let mut opts = GradeOptions::new(ImageOptions::for_workspace(default_workspace()));
    opts.subnet = Some(subnet());
    let prefix = format!("h{}-{}", std::process::id() % 10_000, h.dir);
    opts.cluster_prefix = Some(prefix.clone());
    opts.scenarios = vec![Scenario::Startup];
    // The engine is pinged all along; the slowest answer says whether the host kept up.
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let pinger = {
        let (docker, slowest) = (docker.clone(), slowest.clone());
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(30), docker.ping()).await;
                let took = if matches!(ok, Ok(Ok(_))) {
                    t.elapsed()
                } else {
                    Duration::from_secs(30)
                };
                {
                    let mut s = slowest.lock().unwrap_or_else(|e| e.into_inner());
                    *s = (*s).max(took);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let started = Instant::now();
    let report = tokio::time::timeout(h.bound, grade(&docker, &p, &file, &opts)).await;
    let took = started.elapsed();
    pinger.abort();
    let report =
        report.map_err(|_| anyhow::anyhow!("grading did not finish within {:?}", h.bound))??;
    let slowest = *slowest.lock().unwrap_or_else(|e| e.into_inner());
    print!("{}", harness::grade::report::summary_table(&report));
    println!(
        "graded in {:.1} s (bound {} s); slowest engine ping {:.2} s",
        took.as_secs_f64(),
        h.bound.as_secs(),
        slowest.as_secs_f64()
    );
    ensure!(
        slowest < MAX_PING,
        "the engine took {slowest:?} to answer a ping while the submission ran (allowed {MAX_PING:?})"
    );
    // Every report is written and reads back.
    let dir = tempfile::tempdir()?;
    write_reports(dir.path(), &report)?;
    let json = std::fs::read_to_string(dir.path().join("report.json"))?;
    let back: GradeReport =
        serde_json::from_str(&json).context("report.json does not read back")?;
    ensure!(back == report, "report.json differs from the report");
    let xml = std::fs::read_to_string(dir.path().join("junit.xml"))?;
    ensure!(
        xml.matches("<testcase ").count() == 1,
        "junit.xml lacks the test case:\n{xml}"
    );
    // No escape sequence or control character anywhere.
    for (what, text) in [("report.json", &json), ("junit.xml", &xml)] {
        ensure!(
            !text.contains('\u{1b}')
                && !text.contains("\\u001b")
                && !text.contains('\u{7}')
                && !text.contains("\\u0007")
                && !text.contains('\u{9b}'),
            "{what} holds an escape character:\n{text}"
        );
    }
    let s = report.scenario("startup").context("no startup scenario")?;
    let texts = s
        .reason
        .iter()
        .chain(s.logs.iter())
        .chain(s.notes.iter())
        .chain(s.checks.iter().filter_map(|c| c.reason.as_ref()));
    for t in texts {
        ensure!(is_clean(t), "a report text is not clean: {t:?}");
    }
    ensure!(
        s.status == h.status,
        "{} should end as {:?}, got {:?}: {}",
        h.dir,
        h.status,
        s.status,
        s.reason.as_deref().unwrap_or("")
    );
    let lower = json.to_lowercase();
    for needle in h.names {
        ensure!(
            lower.contains(&needle.to_lowercase()),
            "the report should say {needle:?}:\n{json}"
        );
    }
    // Nothing is left: the cluster's objects, and (for the cancelled build) its container.
    let cluster = format!("{prefix}-startup");
    let left = harness::cluster::list_objects(&docker, &cluster).await?;
    ensure!(left.is_empty(), "objects left behind: {left:?}");
    if h.dir == "endless" {
        harness::wait_for(
            "the cancelled build's container to go",
            Duration::from_secs(30),
            Duration::from_millis(500),
            || async {
                let all = docker
                    .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                        all: true,
                        ..Default::default()
                    }))
                    .await
                    .map_err(|e| e.to_string())?;
                let building: Vec<String> = all
                    .iter()
                    .filter(|c| {
                        c.command
                            .as_deref()
                            .is_some_and(|cmd| cmd.contains("building for ever"))
                    })
                    .map(|c| format!("{:?} {:?}", c.names, c.state))
                    .collect();
                if building.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still there: {building:?}"))
                }
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// A graded cluster's containers are held in, and its network leads nowhere: every
/// capability dropped (CapEff 0 inside), `no-new-privileges`, the profile's limits on
/// memory, processes, CPU and log; an internal network, from which a node cannot reach a
/// container on another network, while the host still reaches the node.
pub fn isolation_trial(env: &Environment) -> Trial {
    let name = "grader_isolation";
    match env.clone() {
        Environment::Unavailable(reason) => {
            if docker_required() {
                Trial::test(name, move || {
                    Err(format!("Docker is required but unavailable: {reason}").into())
                })
            } else {
                Trial::test(name, || Ok(())).with_ignored_flag(true)
            }
        }
        Environment::Ready { docker, .. } => Trial::test(name, move || {
            runtime()
                .block_on(async {
                    let base = harness::images::ensure_base(
                        &docker,
                        &ImageOptions::for_workspace(default_workspace()),
                    )
                    .await?;
                    let tag = format!("h{}-iso", std::process::id() % 10_000);
                    let inside = format!("{tag}-in");
                    let outside =
                        harness::cluster::ClusterObjects::new(&docker, &format!("{tag}-out"))
                            .run_scoped();
                    let r = isolation(&docker, &base, &inside, &outside).await;
                    let _ = harness::cluster::down(&docker, &inside).await;
                    let _ = outside.remove().await;
                    r
                })
                .map_err(|e: anyhow::Error| format!("{e:#}").into())
        }),
    }
}

async fn isolation(
    docker: &bollard::Docker,
    base: &str,
    inside: &str,
    outside: &harness::cluster::ClusterObjects,
) -> anyhow::Result<()> {
    use harness::grade::judge::ServiceProbe;
    use harness::grade::profile::IpPlan;
    use harness::grade::runner::{http_status, GradedCluster};
    let serve = vec![
        "python3".to_string(),
        "-m".into(),
        "http.server".into(),
        "8888".into(),
    ];
    let mut p = Profile {
        name: "iso".into(),
        ..Default::default()
    };
    p.submission.image = Some(base.to_string());
    p.node.command = serve.clone();
    p.node.cap_add = vec!["SETUID".into()];
    p.limits.memory_mb = 96;
    p.limits.pids = 48;
    p.limits.cpus = 0.5;
    p.limits.log_mb = 2;
    let plan = IpPlan {
        subnet: subnet(),
        first_offset: 10,
        nodes: 3,
    };
    let sub = GradedCluster::new(docker, &p, base, inside, plan);
    sub.up().await?;
    // Another network, not internal, with a web server on it: outside the cluster.
    let out_subnet = subnet();
    let out_ip = out_subnet.host(10);
    outside
        .create_all(
            out_subnet,
            &[],
            &[],
            &[harness::cluster::ContainerSpec {
                container: format!("{}-web", outside.cluster()),
                image: base.to_string(),
                command: serve,
                ip: Some(out_ip),
                init: true,
                ..Default::default()
            }],
        )
        .await?;
    let node = sub.node(0);
    let container = sub.container(&node)?;
    // What Docker was told.
    let info = docker.inspect_container(&container, None).await?;
    let hc = info.host_config.context("no host config")?;
    ensure!(
        hc.cap_drop.as_deref() == Some(&["ALL".to_string()][..]),
        "cap_drop: {:?}",
        hc.cap_drop
    );
    ensure!(
        hc.cap_add.as_deref() == Some(&["SETUID".to_string()][..]),
        "cap_add: {:?}",
        hc.cap_add
    );
    ensure!(
        hc.security_opt
            .iter()
            .flatten()
            .any(|o| o.starts_with("no-new-privileges")),
        "security_opt: {:?}",
        hc.security_opt
    );
    ensure!(
        hc.memory == Some(96 << 20) && hc.memory_swap == Some(96 << 20),
        "memory: {:?} {:?}",
        hc.memory,
        hc.memory_swap
    );
    ensure!(hc.pids_limit == Some(48), "pids_limit: {:?}", hc.pids_limit);
    ensure!(
        hc.nano_cpus == Some(500_000_000),
        "nano_cpus: {:?}",
        hc.nano_cpus
    );
    let log = hc.log_config.context("no log config")?;
    let cfg = log.config.unwrap_or_default();
    ensure!(
        log.typ.as_deref() == Some("json-file")
            && cfg.get("max-size").map(String::as_str) == Some("2097152")
            && cfg.get("max-file").map(String::as_str) == Some("2"),
        "log config: {:?} {cfg:?}",
        log.typ
    );
    let net = docker
        .inspect_network(
            &sub.names().network(),
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await?;
    ensure!(
        net.internal == Some(true),
        "the graded network is not internal: {:?}",
        net.internal
    );
    // What the kernel enforces inside: SETUID alone, and no new privileges.
    let st = sub.exec(&node, &["cat", "/proc/1/status"]).await?;
    let field = |k: &str| {
        st.stdout
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    ensure!(
        field("CapEff:") == "0000000000000080",
        "CapEff of PID 1: {}",
        field("CapEff:")
    );
    ensure!(
        field("CapBnd:") == "0000000000000080",
        "CapBnd of PID 1: {}",
        field("CapBnd:")
    );
    ensure!(
        field("NoNewPrivs:") == "1",
        "NoNewPrivs of PID 1: {}",
        field("NoNewPrivs:")
    );
    // The host reaches the node, and the container outside, over HTTP.
    for (what, addr) in [
        ("the node", format!("{}:8888", node.ip)),
        ("the container outside", format!("{out_ip}:8888")),
    ] {
        harness::wait_for(
            &format!("HTTP from the host to {what}"),
            Duration::from_secs(20),
            Duration::from_millis(300),
            || async {
                match http_status(&addr, "/", Duration::from_secs(2)).await {
                    ServiceProbe::Http(200) => Ok(()),
                    other => Err(other.to_string()),
                }
            },
        )
        .await?;
    }
    // The node does not reach the container outside (nor does it reach its peers' port
    // through anything but the cluster's network: the peer check shows the probe works).
    let probe = |ip: String| {
        format!(
            "import socket\ntry:\n    socket.create_connection(('{ip}', 8888), timeout=3).close()\n    print('connected')\nexcept OSError as e:\n    print('failed', e)\n"
        )
    };
    let peer = sub
        .exec(
            &node,
            &["python3", "-c", &probe(sub.node(1).ip.to_string())],
        )
        .await?;
    ensure!(
        peer.stdout.starts_with("connected"),
        "node0 cannot reach node1: {}{}",
        peer.stdout,
        peer.stderr
    );
    let out = sub
        .exec(&node, &["python3", "-c", &probe(out_ip.to_string())])
        .await?;
    ensure!(
        out.stdout.starts_with("failed"),
        "node0 reached {out_ip} outside its network: {}{}",
        out.stdout,
        out.stderr
    );
    println!("node0 to {out_ip}: {}", out.stdout.trim());
    // Nor does it open a connection to the host itself: a listener on every address of the
    // host, tried at the bridge's own address, stays unreached (the host's INPUT rule for
    // the cluster's bridge), while the host's own connections to the node worked above.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = listener.local_addr()?.port();
    let host_ip = plan.subnet.bridge_gateway();
    let to_host = format!(
        "import socket\ntry:\n    socket.create_connection(('{host_ip}', {port}), timeout=3).close()\n    print('connected')\nexcept OSError as e:\n    print('failed', e)\n"
    );
    let host = sub.exec(&node, &["python3", "-c", &to_host]).await?;
    ensure!(
        host.stdout.starts_with("failed"),
        "node0 reached the host at {host_ip}:{port}: {}{}",
        host.stdout,
        host.stderr
    );
    println!(
        "node0 to the host at {host_ip}:{port}: {}",
        host.stdout.trim()
    );
    let bridge = harness::cluster::firewall::bridge_name(&sub.names().network());
    let rule = |op: &str| {
        std::process::Command::new("iptables")
            .args(harness::cluster::firewall::iptables_args(op, &bridge))
            .output()
            .map(|o| o.status.success())
    };
    ensure!(
        rule("-C")?,
        "no INPUT rule for {bridge} while the cluster runs"
    );
    sub.down().await?;
    ensure!(
        !rule("-C")?,
        "the INPUT rule for {bridge} outlived the cluster"
    );
    drop(listener);
    Ok(())
}
