//! HTTP probes: a keep-alive client, who answers on the leader service's port, whether the
//! gateway serves etcd's leader, and a steady, open-loop stream of GETs (one every
//! `interval`, each on its own, so a held request does not slow the stream down) read
//! around a leader kill.
//!
//! Which node served a response is read from the proxy's `x-clusterlab-upstream` header and,
//! failing that, from the `name` in the leader service's JSON.

use crate::cluster::Cluster;
use crate::docker::HarnessError;
use crate::wait::{wait_for, WaitError};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Port of the leader service on every node.
pub const SERVICE_PORT: u16 = 8888;
/// The proxy's status page.
pub const PROXY_STATUS: &str = "/__proxy/status";
/// A GET slower than this counts as slow.
pub const SLOW: Duration = Duration::from_secs(1);

/// A GET that got no HTTP answer. Cloneable (a stream keeps every failure), so the
/// transport's own error is kept as its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GET {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("reading {url}: {reason}")]
    Body { url: String, reason: String },
    #[error("GET {url}: no answer within {:.1} s", .after.as_secs_f64())]
    Timeout { url: String, after: Duration },
}

/// One HTTP answer, reduced to what the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// The node that served it, from the proxy's header or the service's JSON.
    pub served_by: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

/// The `name` field of the leader service's `/api/status` JSON.
pub fn name_in_status(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("name")?.as_str().map(String::from)
}

/// A keep-alive HTTP/1.1 client; one per benchmark so both paths share its behaviour.
#[derive(Clone, Debug)]
pub struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    pub fn new() -> Http {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(conn);
        Http { client }
    }

    /// GETs `url`, giving up after `timeout`; transport errors and timeouts are `Err`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Reply, HttpError> {
        let uri: hyper::Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| HttpError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let fut = async {
            let resp = self.client.get(uri).await.map_err(|e| HttpError::Request {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let upstream = header("x-clusterlab-upstream");
            let retry_after = header("retry-after");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Body {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            let served_by = upstream.or_else(|| name_in_status(&body));
            Ok(Reply {
                status,
                served_by,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                url: url.to_string(),
                after: timeout,
            }),
        }
    }
}

/// URL of a node's leader service.
pub fn service_url(ip: Ipv4Addr, path: &str) -> String {
    format!("http://{ip}:{SERVICE_PORT}{path}")
}

/// Which nodes answer `/api/status` on the service port right now (probed in parallel),
/// with the name each one gives.
pub async fn answering(
    http: &Http,
    c: &Cluster,
    timeout: Duration,
) -> Result<Vec<(String, String)>, HarnessError> {
    let mut probes = Vec::new();
    for n in c.node_names() {
        let url = service_url(c.node_ip(&n)?, "/api/status");
        probes.push(async move {
            match http.get(&url, timeout).await {
                Ok(r) if r.status == 200 => Some((n, r.served_by.unwrap_or_default())),
                _ => None,
            }
        });
    }
    Ok(futures::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect())
}

/// Waits until a GET of `/api/status` through the gateway is served by etcd's current
/// leader and that leader passes `accept`. Returns the leader and the time it took.
pub async fn wait_proxy_serves_leader(
    http: &Http,
    c: &Cluster,
    gateway: &str,
    accept: impl Fn(&str) -> bool,
    what: &str,
    timeout: Duration,
) -> Result<(String, Duration), WaitError> {
    let url = format!("{gateway}/api/status");
    wait_for(what, timeout, Duration::from_millis(100), || async {
        let r = http
            .get(&url, Duration::from_secs(8))
            .await
            .map_err(|e| e.to_string())?;
        let by = r.served_by.clone().unwrap_or_default();
        if r.status != 200 || !accept(&by) {
            return Err(format!("gateway answered {} from {by:?}", r.status));
        }
        let leader = c.etcd_leader().await.map_err(|e| e.to_string())?;
        if leader.as_deref() == Some(by.as_str()) {
            Ok(by)
        } else {
            Err(format!(
                "gateway served by {by} but etcd's leader is {leader:?}"
            ))
        }
    })
    .await
}

/// Why one GET of a stream did not count as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetFailure {
    /// An answer other than 200, with its body.
    Status { status: u16, body: String },
    /// No answer at all.
    Transport(HttpError),
}

impl fmt::Display for GetFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetFailure::Status { status, body } => write!(f, "HTTP {status}: {}", body.trim()),
            GetFailure::Transport(e) => e.fmt(f),
        }
    }
}

/// One GET of a stream.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent and answered, from the stream's start.
    pub sent: Duration,
    pub done: Duration,
    /// The serving node on a 200; otherwise what went wrong.
    pub result: Result<String, GetFailure>,
}

impl Sample {
    pub fn latency(&self) -> Duration {
        self.done.saturating_sub(self.sent)
    }
}

/// A steady, open-loop stream of GETs: one is sent every `interval` whatever the others do.
#[derive(Debug)]
pub struct GetStream {
    pub start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    issuer: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl GetStream {
    /// Starts sending GETs of `url` every `interval`, each allowed `timeout`.
    pub fn start(http: Http, url: String, interval: Duration, timeout: Duration) -> GetStream {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s2, samples2) = (stop.clone(), samples.clone());
        let issuer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut tasks = Vec::new();
            while !s2.load(Ordering::SeqCst) {
                tick.tick().await;
                let (http, url, samples) = (http.clone(), url.clone(), samples2.clone());
                tasks.push(tokio::spawn(async move {
                    let sent = start.elapsed();
                    let result = match http.get(&url, timeout).await {
                        Ok(r) if r.status == 200 => Ok(r.served_by.unwrap_or_else(|| "?".into())),
                        Ok(r) => Err(GetFailure::Status {
                            status: r.status,
                            body: r.body,
                        }),
                        Err(e) => Err(GetFailure::Transport(e)),
                    };
                    let s = Sample {
                        sent,
                        done: start.elapsed(),
                        result,
                    };
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(s);
                }));
            }
            tasks
        });
        GetStream {
            start,
            stop,
            samples,
            issuer,
        }
    }

    /// The samples answered so far.
    pub fn answered(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops sending and waits for every GET in flight; returns all samples by send time.
    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(tasks) = self.issuer.await {
            for t in tasks {
                let _ = t.await;
            }
        }
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.sort_by_key(|s| s.sent);
        v
    }
}

/// What one leader kill did to a stream of GETs.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverRun {
    pub old_leader: String,
    pub new_leader: Option<String>,
    /// Seconds from the kill to the first response served by another node.
    pub first_new_s: Option<f64>,
    pub gets: usize,
    pub failed: usize,
    pub slow: usize,
    /// The first few failures, for the report.
    pub failures: Vec<String>,
}

/// Reads a stream's samples around a kill at `kill` (from the stream's start).
pub fn analyse(samples: &[Sample], kill: Duration, old_leader: &str) -> FailoverRun {
    let first_new = samples
        .iter()
        .filter(|s| matches!(&s.result, Ok(by) if by != old_leader))
        .min_by_key(|s| s.done);
    let failures: Vec<(&Sample, &GetFailure)> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().map(|e| (s, e)))
        .collect();
    FailoverRun {
        old_leader: old_leader.to_string(),
        new_leader: first_new.and_then(|s| s.result.clone().ok()),
        first_new_s: first_new.map(|s| s.done.saturating_sub(kill).as_secs_f64()),
        gets: samples.len(),
        failed: failures.len(),
        slow: samples.iter().filter(|s| s.latency() > SLOW).count(),
        failures: failures
            .iter()
            .take(3)
            .map(|(s, e)| {
                format!(
                    "sent {:+.2} s: {e}",
                    s.sent.as_secs_f64() - kill.as_secs_f64()
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(sent_ms: u64, done_ms: u64, by: Option<&str>) -> Sample {
        Sample {
            sent: Duration::from_millis(sent_ms),
            done: Duration::from_millis(done_ms),
            result: by.map(String::from).ok_or(GetFailure::Status {
                status: 503,
                body: "no leader is known\n".into(),
            }),
        }
    }

    #[test]
    fn analyse_finds_the_first_answer_from_another_node() {
        let kill = Duration::from_millis(1000);
        let samples = vec![
            s(900, 910, Some("node0")),
            s(950, 3100, Some("node1")), // held across the gap, answered by the new leader
            s(1000, 1010, Some("node0")),
            s(2000, 2950, Some("node1")),
            s(2100, 2200, None),
        ];
        let r = analyse(&samples, kill, "node0");
        assert_eq!(r.new_leader.as_deref(), Some("node1"));
        assert!((r.first_new_s.unwrap() - 1.95).abs() < 1e-9, "{r:?}");
        assert_eq!((r.gets, r.failed, r.slow), (5, 1, 1));
        assert_eq!(r.failures, ["sent +1.10 s: HTTP 503: no leader is known"]);
        let none = analyse(&samples[..1], kill, "node0");
        assert_eq!(none.first_new_s, None);
    }

    #[test]
    fn status_json_names_the_node() {
        assert_eq!(
            name_in_status(r#"{"name":"node2","ip":"10.77.0.12","role":"leader"}"#).as_deref(),
            Some("node2")
        );
        assert_eq!(name_in_status("<html>"), None);
    }

    #[tokio::test]
    async fn a_bad_url_and_a_silent_port_are_typed() {
        let http = Http::new();
        let e = http.get("not a url", Duration::from_secs(1)).await;
        assert!(matches!(e, Err(HttpError::BadUrl { .. })), "{e:?}");
        // Port 9 (discard) on loopback: nothing listens in the test environment.
        let e = http
            .get("http://127.0.0.1:9/", Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(e, HttpError::Request { .. } | HttpError::Timeout { .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("GET http://127.0.0.1:9/"), "{e}");
    }
}
