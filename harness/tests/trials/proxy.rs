//! Leader service and gateway trials: only the leader ever answers on :8888; the gateway
//! follows a leader kill without a failed GET; WebSockets work through it before and after a
//! failover; with no quorum it answers 503 after the hold instead of hanging, and recovers.

use anyhow::{ensure, Context};
use futures::{SinkExt, StreamExt};
use harness::probe::http::{analyse, answering, wait_proxy_serves_leader, GetStream, Http, SLOW};
use harness::trial::{cluster_trial, Environment};
use harness::{wait_for, Cluster, ClusterSpec};
use libtest_mimic::Trial;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The gateway's hold (the proxy's default).
const HOLD: Duration = Duration::from_secs(5);

fn with_gateway(s: &mut ClusterSpec) {
    s.gateway = true;
    s.gateway_port = 0;
}

pub fn trials(env: &Environment) -> Vec<Trial> {
    vec![
        cluster_trial(
            env,
            "leader_service_exclusive",
            3,
            |_| {},
            Arc::new(|c| Box::pin(leader_service_exclusive(c))),
        ),
        cluster_trial(
            env,
            "proxy_follows_leader",
            3,
            with_gateway,
            Arc::new(|c| Box::pin(proxy_follows_leader(c))),
        ),
        cluster_trial(
            env,
            "proxy_follows_file",
            3,
            with_gateway,
            Arc::new(|c| Box::pin(proxy_follows_file(c))),
        ),
        cluster_trial(
            env,
            "proxy_websocket",
            3,
            with_gateway,
            Arc::new(|c| Box::pin(proxy_websocket(c))),
        ),
        cluster_trial(
            env,
            "proxy_no_leader",
            3,
            with_gateway,
            Arc::new(|c| Box::pin(proxy_no_leader(c))),
        ),
    ]
}

/// Samples every node's :8888 every 100 ms through two leader kills (and the old leaders'
/// restarts): never more than one node may answer, and whoever answers calls itself leader.
async fn leader_service_exclusive(c: Cluster) -> anyhow::Result<()> {
    let http = Http::new();
    let probe_timeout = Duration::from_millis(300);
    let mut samples = 0usize;
    // Checks one round of probes; returns who answered.
    let mut sample = || {
        let (c, http) = (&c, &http);
        samples += 1;
        async move {
            let who = answering(http, c, probe_timeout).await?;
            ensure!(
                who.len() <= 1,
                "more than one node answers on :8888: {who:?}"
            );
            Ok::<_, anyhow::Error>(who.into_iter().next())
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for kill in 1..=2 {
        // Wait (sampling) until exactly etcd's leader serves.
        let deadline = Instant::now() + Duration::from_secs(60);
        let leader = loop {
            tick.tick().await;
            let who = sample().await?;
            let etcd = c.etcd_leader().await?;
            if let (Some((node, name)), Some(l)) = (&who, &etcd) {
                if node == l && name == l {
                    break l.clone();
                }
            }
            ensure!(
                Instant::now() < deadline,
                "before kill {kill}: no single leader service; answering {who:?}, etcd leader {etcd:?}"
            );
        };
        c.kill(&leader).await?;
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        let next = loop {
            tick.tick().await;
            let who = sample().await?;
            if let Some((node, _)) = who {
                ensure!(node != leader, "{leader} still answers after being killed");
                break node;
            }
            ensure!(
                Instant::now() < deadline,
                "no node took over the leader service within 30 s of killing {leader}"
            );
        };
        println!(
            "kill {kill}: {leader} killed, {next} serves after {:.2} s",
            killed.elapsed().as_secs_f64()
        );
        // The old leader comes back as a follower: it must stay silent on :8888.
        c.start(&leader).await?;
        let back_by = Instant::now() + Duration::from_secs(60);
        loop {
            tick.tick().await;
            let who = sample().await?;
            let st = c.status().await?;
            // Its old key may outlive it for a lease TTL: ask for its etcd member instead.
            let back = st.nodes.iter().all(|n| n.state.is_running() && n.has_key)
                && st.nodes.iter().any(|n| {
                    n.name == leader && n.etcd_role == Some(harness::oracle::Role::Follower)
                });
            if back {
                ensure!(
                    who.as_ref().map(|(n, _)| n.as_str()) == st.etcd_leader.as_deref(),
                    "after {leader} rejoined: answering {who:?}, etcd leader {:?}",
                    st.etcd_leader
                );
                break;
            }
            ensure!(
                Instant::now() < back_by,
                "{leader} did not rejoin within 60 s: {}",
                st.summary()
            );
        }
        // Three more seconds with everyone up.
        for _ in 0..30 {
            tick.tick().await;
            sample().await?;
        }
    }
    println!("{samples} sampling rounds, never more than one node on :8888");
    Ok(())
}

/// A leader kill under a stream of GETs through the gateway: afterwards /api/status through
/// the gateway names the new leader, and every GET of the stream succeeded.
async fn proxy_follows_leader(c: Cluster) -> anyhow::Result<()> {
    let gw = c.gateway_url().await?;
    follows_a_leader_kill(&c, &gw).await
}

/// The homework's way, done right: a second proxy in the gateway container follows host0 of
/// `/shared/hosts` (written by hostsgen) instead of etcd, and passes the same leader kill.
async fn proxy_follows_file(c: Cluster) -> anyhow::Result<()> {
    const PORT: u16 = 8890;
    c.spawn_in_gateway(
        &format!("/usr/local/bin/proxy --follow-file /shared/hosts --listen 0.0.0.0:{PORT}"),
        "/tmp/proxy-file.log",
    )
    .await?;
    let gw_ip = c.spec.subnet.host(harness::names::GATEWAY_OFFSET);
    let url = format!("http://{gw_ip}:{PORT}");
    follows_a_leader_kill(&c, &url).await?;
    let status = c
        .exec_gateway(&[
            "curl",
            "-s",
            &format!("http://127.0.0.1:{PORT}/__proxy/status"),
        ])
        .await?;
    ensure!(
        status.stdout.contains("file:/shared/hosts"),
        "the second proxy does not say it follows /shared/hosts: {}",
        status.stdout
    );
    Ok(())
}

/// Kills the leader under a stream of GETs through the proxy at `gw` (a base URL): the proxy
/// must then serve the new leader, every GET of the stream must succeed, and its status page
/// must show the switch.
async fn follows_a_leader_kill(c: &Cluster, gw: &str) -> anyhow::Result<()> {
    let http = Http::new();
    let (old, _) = wait_proxy_serves_leader(
        &http,
        c,
        gw,
        |_| true,
        "the gateway to serve etcd's leader",
        Duration::from_secs(60),
    )
    .await?;
    let stream = GetStream::start(
        http.clone(),
        format!("{gw}/api/status"),
        Duration::from_millis(50),
        Duration::from_secs(15),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill(&old).await?;
    let kill = stream.start.elapsed();
    let (new, took) = wait_proxy_serves_leader(
        &http,
        c,
        gw,
        |by| by != old,
        &format!("/api/status through the gateway to name etcd's new leader (not {old})"),
        Duration::from_secs(30),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples = stream.finish().await;
    let run = analyse(&samples, kill, &old);
    println!(
        "{old} killed; gateway serves {new} after {:.2} s; stream: first answer from the new leader after {} s, {} GETs, {} failed, {} slower than {} s",
        took.as_secs_f64(),
        run.first_new_s
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "never".into()),
        run.gets,
        run.failed,
        run.slow,
        SLOW.as_secs()
    );
    ensure!(run.gets >= 40, "only {} GETs were made", run.gets);
    ensure!(
        run.failed == 0,
        "{} of {} GETs failed during the failover: {:?}",
        run.failed,
        run.gets,
        run.failures
    );
    let report = http
        .get(&format!("{gw}/__proxy/status"), Duration::from_secs(5))
        .await?;
    let v: serde_json::Value = serde_json::from_str(&report.body).context("proxy status")?;
    ensure!(
        v["upstream"]["name"] == new.as_str() && v["switches"].as_u64() >= Some(1),
        "proxy status does not show the switch to {new}: {v}"
    );
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn echo_round_trip(ws_url: &str, text: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(ws_url),
    )
    .await
    .context("WebSocket handshake through the gateway timed out")?
    .context("WebSocket handshake through the gateway")?;
    ws.send(Message::text(text)).await?;
    let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .context("no echo within 5 s")?
        .context("socket closed before the echo")??;
    ensure!(
        back.to_text()? == text,
        "echo returned {back:?} for {text:?}"
    );
    Ok(ws)
}

/// An echo round trip through the gateway; after a leader kill the old socket is closed and a
/// new one echoes through the new leader.
async fn proxy_websocket(c: Cluster) -> anyhow::Result<()> {
    let http = Http::new();
    let gw = c.gateway_url().await?;
    let ws_url = format!("{}/ws/echo", gw.replacen("http://", "ws://", 1));
    let (old, _) = wait_proxy_serves_leader(
        &http,
        &c,
        &gw,
        |_| true,
        "the gateway to serve etcd's leader",
        Duration::from_secs(60),
    )
    .await?;
    let mut ws = echo_round_trip(&ws_url, "before the failover").await?;
    c.kill(&old).await?;
    let (new, took) = wait_proxy_serves_leader(
        &http,
        &c,
        &gw,
        |by| by != old,
        &format!("the gateway to serve the new leader (not {old})"),
        Duration::from_secs(30),
    )
    .await?;
    // The tunnel to the dead leader is closed by the gateway, not left hanging.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    ensure!(
        closed.is_ok(),
        "the WebSocket to the killed leader {old} was still open 5 s after the switch"
    );
    let mut ws = echo_round_trip(&ws_url, "after the failover").await?;
    ws.close(None).await.ok();
    println!(
        "echo through {old}, then through {new} ({:.2} s after the kill)",
        took.as_secs_f64()
    );
    Ok(())
}

/// Kill two of three: the gateway answers 503 with Retry-After after the hold (not a hang);
/// with the two back, it serves again.
async fn proxy_no_leader(c: Cluster) -> anyhow::Result<()> {
    let http = Http::new();
    let gw = c.gateway_url().await?;
    let url = format!("{gw}/api/status");
    let (leader, _) = wait_proxy_serves_leader(
        &http,
        &c,
        &gw,
        |_| true,
        "the gateway to serve etcd's leader",
        Duration::from_secs(60),
    )
    .await?;
    // The leader and one follower: the survivor has no quorum and the leader key is stale.
    let follower = c
        .node_names()
        .into_iter()
        .find(|n| *n != leader)
        .context("no follower")?;
    c.kill(&leader).await?;
    c.kill(&follower).await?;
    let (reply, _) = wait_for(
        "the gateway to answer 503",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let t = Instant::now();
            let r = http.get(&url, HOLD * 3).await.map_err(|e| e.to_string())?;
            if r.status == 503 {
                Ok((r, t.elapsed()))
            } else {
                Err(format!("HTTP {} from {:?}", r.status, r.served_by))
            }
        },
    )
    .await?;
    let (r, _) = reply;
    // Measure a fresh request from start to 503.
    let t = Instant::now();
    let again = http.get(&url, HOLD * 3).await?;
    let took = t.elapsed();
    ensure!(again.status == 503, "second request: HTTP {}", again.status);
    ensure!(
        took >= HOLD - Duration::from_millis(300) && took <= HOLD + Duration::from_secs(3),
        "503 came after {:.2} s; the hold is {} s",
        took.as_secs_f64(),
        HOLD.as_secs()
    );
    ensure!(
        r.retry_after.is_some() && again.retry_after.is_some(),
        "503 without Retry-After"
    );
    ensure!(
        again.body.contains("no leader is known"),
        "503 body does not say no leader is known: {:?}",
        again.body
    );
    println!(
        "{leader} and {follower} killed: 503 after {:.2} s ({})",
        took.as_secs_f64(),
        again.body.trim()
    );
    c.start(&leader).await?;
    c.start(&follower).await?;
    let (back, took) = wait_proxy_serves_leader(
        &http,
        &c,
        &gw,
        |_| true,
        "the gateway to serve a leader again",
        Duration::from_secs(60),
    )
    .await?;
    println!(
        "both restarted: gateway serves {back} after {:.2} s",
        took.as_secs_f64()
    );
    Ok(())
}
