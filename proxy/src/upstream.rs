//! The current upstream (the leader's service address) and the proxy's counters.
//!
//! One [`Tracker`] per proxy: followers write the upstream into it, every request reads it,
//! and a request waiting for a leader subscribes to its changes. It is a watch channel, so a
//! switch is a single atomic store that no request has to be restarted for.

use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Where requests go: the leader's name and the address of its service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.addr)
    }
}

/// The current upstream as requests read it: shared, with its response header made once.
#[derive(Debug, PartialEq, Eq)]
pub struct Leader {
    pub up: Upstream,
    /// The value of the `x-clusterlab-upstream` response header (its name), if it is one.
    pub header: Option<hyper::header::HeaderValue>,
}

impl Leader {
    fn new(up: Upstream) -> Leader {
        let header = hyper::header::HeaderValue::from_str(&up.name).ok();
        Leader { up, header }
    }
}

impl std::ops::Deref for Leader {
    type Target = Upstream;
    fn deref(&self) -> &Upstream {
        &self.up
    }
}

/// Counters shown at `/__proxy/status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests forwarded or answered by the proxy (its own status page excluded).
    pub requests: AtomicU64,
    /// Requests that had to wait for a leader or for a reachable one.
    pub held: AtomicU64,
    /// Attempts repeated after a connect failure, a lost connection or a switch.
    pub retries: AtomicU64,
    /// Requests answered 503 because no reachable leader appeared in time.
    pub unavailable: AtomicU64,
    /// Requests answered 502 because the upstream failed after the request was sent.
    pub bad_gateway: AtomicU64,
    /// WebSocket (and other upgraded) connections tunnelled.
    pub upgrades: AtomicU64,
    /// Requests answered 504 because the leader sent no response head in time.
    pub gateway_timeout: AtomicU64,
    /// Requests answered by a leader (whatever its status).
    pub forwarded: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Switches {
    count: u64,
    last_at: Option<(SystemTime, Instant)>,
    /// The last leader that was known, kept through a spell of "no leader".
    last_known: Option<Upstream>,
    /// Since when no leader is known, if none is.
    lost_at: Option<Instant>,
}

/// The current upstream, its history and the counters.
#[derive(Debug)]
pub struct Tracker {
    source: String,
    tx: watch::Sender<Option<Arc<Leader>>>,
    switches: Mutex<Switches>,
    pub counters: Counters,
    /// Seconds from losing a leader to adopting the next one (0 for a direct handover).
    pub switch_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// The JSON of `/__proxy/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusReport {
    /// How the leader is followed: `etcd` or `file:<path>`.
    pub source: String,
    /// Where requests go now; null while no leader is known.
    pub upstream: Option<Upstream>,
    /// How many times a different leader was adopted.
    pub switches: u64,
    pub last_switch_unix_ms: Option<u64>,
    pub last_switch_ago_s: Option<f64>,
    pub requests: u64,
    pub held: u64,
    pub retries: u64,
    pub unavailable: u64,
    pub bad_gateway: u64,
    pub gateway_timeout: u64,
    /// Requests answered by a leader.
    pub forwarded: u64,
    pub upgrades: u64,
    /// Client connections open now (filled in by the proxy).
    pub open_connections: u64,
    /// Client connections refused at the cap since start (filled in by the proxy).
    pub refused_connections: u64,
}

impl Tracker {
    /// A tracker with no upstream yet; `source` says how it is fed.
    pub fn new(source: impl Into<String>) -> Tracker {
        Tracker {
            source: source.into(),
            tx: watch::channel(None).0,
            switches: Mutex::new(Switches::default()),
            counters: Counters::default(),
            switch_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 10),
            ),
        }
    }

    /// Sets the upstream; returns whether it changed. Going to "none" and back to the same
    /// leader is not a switch; adopting a different leader is.
    pub fn set(&self, up: Option<Upstream>) -> bool {
        let changed = self.tx.send_if_modified(|cur| {
            if cur.as_deref().map(|l| &l.up) == up.as_ref() {
                false
            } else {
                *cur = up.clone().map(|u| Arc::new(Leader::new(u)));
                true
            }
        });
        if changed {
            match &up {
                Some(u) => tracing::info!(upstream = %u, "upstream set"),
                None => tracing::warn!("no leader known: holding requests"),
            }
            let mut s = self.switches.lock().unwrap_or_else(|e| e.into_inner());
            match up {
                None => {
                    s.lost_at.get_or_insert_with(Instant::now);
                }
                Some(u) => {
                    let lost_at = s.lost_at.take();
                    if s.last_known.as_ref() != Some(&u) {
                        if s.last_known.is_some() {
                            s.count += 1;
                            let now = Instant::now();
                            s.last_at = Some((SystemTime::now(), now));
                            let gap = lost_at.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
                            self.switch_seconds.observe(gap);
                        }
                        s.last_known = Some(u);
                    }
                }
            }
        }
        changed
    }

    /// The upstream now.
    pub fn current(&self) -> Option<Upstream> {
        self.tx.borrow().as_deref().map(|l| l.up.clone())
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Leader>>> {
        self.tx.subscribe()
    }

    /// Everything `/__proxy/status` shows.
    pub fn report(&self) -> StatusReport {
        let s = self.switches.lock().unwrap_or_else(|e| e.into_inner());
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatusReport {
            source: self.source.clone(),
            upstream: self.current(),
            switches: s.count,
            last_switch_unix_ms: s.last_at.and_then(|(t, _)| {
                t.duration_since(UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
            last_switch_ago_s: s.last_at.map(|(_, i)| i.elapsed().as_secs_f64()),
            requests: load(&c.requests),
            held: load(&c.held),
            retries: load(&c.retries),
            unavailable: load(&c.unavailable),
            bad_gateway: load(&c.bad_gateway),
            gateway_timeout: load(&c.gateway_timeout),
            upgrades: load(&c.upgrades),
            forwarded: load(&c.forwarded),
            open_connections: 0,
            refused_connections: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str, port: u16) -> Option<Upstream> {
        Some(Upstream {
            name: name.into(),
            addr: SocketAddr::from(([10, 77, 0, 10], port)),
        })
    }

    #[test]
    fn switches_count_different_leaders_only() {
        let t = Tracker::new("etcd");
        assert!(t.set(up("node0", 1)));
        assert_eq!(t.report().switches, 0, "the first leader is not a switch");
        assert!(!t.set(up("node0", 1)));
        assert!(t.set(None));
        assert!(t.set(up("node0", 1)));
        assert_eq!(
            t.report().switches,
            0,
            "a gap with the same leader is not a switch"
        );
        assert!(t.set(up("node1", 1)));
        let r = t.report();
        assert_eq!(r.switches, 1);
        assert!(r.last_switch_unix_ms.is_some());
        assert_eq!(r.upstream, up("node1", 1));
        assert!(t.set(None));
        assert_eq!(t.report().upstream, None);
    }

    #[tokio::test]
    async fn subscribers_see_changes() {
        let t = Tracker::new("etcd");
        let mut rx = t.subscribe();
        t.set(up("node2", 8888));
        rx.changed().await.unwrap();
        let now = rx.borrow_and_update().as_deref().map(|l| l.up.clone());
        assert_eq!(now, up("node2", 8888));
        let header = rx.borrow().as_ref().and_then(|l| l.header.clone());
        assert_eq!(header.unwrap(), "node2");
    }

    #[test]
    fn report_serializes_with_null_upstream() {
        let t = Tracker::new("file:/shared/hosts");
        let v = serde_json::to_value(t.report()).unwrap();
        assert!(v["upstream"].is_null());
        assert_eq!(v["source"], "file:/shared/hosts");
        assert_eq!(v["switches"], 0);
    }
}
