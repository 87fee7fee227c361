//! What a scenario saw over time, for the timeline in report.html: each node's etcd role,
//! whether host0 in its hosts table was etcd's leader, whether its leader service answered,
//! whether the dead node was still in its table; the fault at t = 0, the later moves, the
//! limits and the first failed check.
//!
//! The scenario code records what its wait loops already observe (no probe of its own):
//! [`observe`], [`fault`], [`event`], [`limit`] and [`failed`] write into the recorder of
//! the scenario running in the current task ([`record`] sets it up) and do nothing outside
//! one. Only changes are kept (a node's role is stored when it differs from the last one
//! seen), at most [`MAX_SAMPLES`] per scenario, so a long or flapping run stays small.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most samples kept per scenario; later ones are dropped and `truncated` is set.
pub const MAX_SAMPLES: usize = 2000;
/// Most events and limit lines kept per scenario.
pub const MAX_MARKS: usize = 32;

/// A node's etcd role as the grader's status probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    /// The member answered but knew no leader (an election is going on).
    NoLeader,
    /// The member's client port did not answer.
    Unreachable,
}

/// What the node's hosts table said about host0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Host0 {
    /// host0 is etcd's current leader.
    Leader,
    /// host0 is another address.
    Other,
    /// The table has no host0 line.
    Missing,
    /// The table could not be read.
    Unreadable,
}

/// One observation of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Obs {
    Role(Role),
    Host0(Host0),
    /// Whether the leader service answered (an HTTP status below 500).
    Service(bool),
    /// Whether the node's table still listed the dead node.
    DeadListed(bool),
    /// The grader killed, cut off or found stopped this node: it is not watched until the
    /// next observation.
    Down,
}

impl Obs {
    fn slot(self) -> u8 {
        match self {
            Obs::Role(_) => 0,
            Obs::Host0(_) => 1,
            Obs::Service(_) => 2,
            Obs::DeadListed(_) => 3,
            Obs::Down => 4,
        }
    }
}

/// An observation with its time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds from t = 0 (the fault; negative before it).
    pub t: f64,
    pub node: String,
    #[serde(flatten)]
    pub obs: Obs,
}

/// A moment with a label: an event or a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    pub t: f64,
    pub label: String,
}

/// The first check that failed, when it failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureMark {
    pub t: f64,
    pub check: String,
    pub reason: String,
}

/// One scenario's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Timeline {
    /// The nodes, one lane each, in order.
    pub nodes: Vec<String>,
    /// What happened at t = 0; `None` when the scenario has no fault (t = 0 is then when
    /// the containers started).
    pub fault: Option<String>,
    /// When the containers started (≤ 0).
    pub start_s: f64,
    /// When the scenario stopped observing.
    pub end_s: f64,
    /// Later moves of the grader (reconnection, restart, …).
    #[serde(default)]
    pub events: Vec<Mark>,
    /// The profile's limits that apply after t = 0, as `limits.x (N s)` at their deadline.
    #[serde(default)]
    pub limits: Vec<Mark>,
    #[serde(default)]
    pub failure: Option<FailureMark>,
    /// Changes only: a sample is kept when it differs from the node's previous one of its
    /// kind.
    #[serde(default)]
    pub samples: Vec<Sample>,
    /// Whether samples were dropped at [`MAX_SAMPLES`].
    #[serde(default)]
    pub truncated: bool,
}

impl Timeline {
    /// Every text passed through [`super::text::clean`].
    pub fn clean_texts(&mut self) {
        use super::text::clean;
        for n in &mut self.nodes {
            *n = clean(n);
        }
        self.fault = self.fault.as_deref().map(clean);
        for m in self.events.iter_mut().chain(self.limits.iter_mut()) {
            m.label = clean(&m.label);
        }
        if let Some(f) = &mut self.failure {
            f.check = clean(&f.check);
            f.reason = clean(&f.reason);
        }
        for s in &mut self.samples {
            s.node = clean(&s.node);
        }
    }
}

/// The recorder of one running scenario.
#[derive(Debug)]
pub struct Live {
    start: Instant,
    nodes: Vec<String>,
    fault: Option<(Instant, String)>,
    events: Vec<(Instant, String)>,
    /// (reference point, limit, key)
    limits: Vec<(Instant, Duration, String)>,
    failure: Option<(Instant, String, String)>,
    samples: Vec<(Instant, String, Obs)>,
    last: BTreeMap<(String, u8), Obs>,
    truncated: bool,
}

impl Live {
    pub fn new(nodes: Vec<String>) -> Self {
        Live {
            start: Instant::now(),
            nodes,
            fault: None,
            events: Vec::new(),
            limits: Vec::new(),
            failure: None,
            samples: Vec::new(),
            last: BTreeMap::new(),
            truncated: false,
        }
    }

    /// Restarts the clock: t = 0 is `at`, until a fault is recorded.
    pub fn started(&mut self, at: Instant, nodes: Vec<String>) {
        self.start = at;
        self.nodes = nodes;
    }

    pub fn observe_at(&mut self, at: Instant, node: &str, obs: Obs) {
        let key = (node.to_string(), obs.slot());
        if self.last.get(&key) == Some(&obs) {
            return;
        }
        if self.samples.len() >= MAX_SAMPLES {
            self.truncated = true;
            return;
        }
        // Down forgets what was seen before: the next look at the node is news again.
        if obs == Obs::Down {
            self.last.retain(|(n, _), _| n != node);
        } else {
            self.last.remove(&(node.to_string(), Obs::Down.slot()));
        }
        self.last.insert(key, obs);
        self.samples.push((at, node.to_string(), obs));
    }

    /// When the clock started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Whether nothing was recorded (the cluster never came up).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.fault.is_none() && self.failure.is_none()
    }

    /// A move of the grader at `at`: the first is the fault (t = 0), later ones events.
    pub fn mark(&mut self, at: Instant, what: &str, down: Option<&str>) {
        if self.fault.is_none() {
            self.fault = Some((at, what.to_string()));
        } else if self.events.len() < MAX_MARKS {
            self.events.push((at, what.to_string()));
        }
        if let Some(n) = down {
            self.observe_at(at, n, Obs::Down);
        }
    }

    /// A limit: `key` allows `limit` from `since`.
    pub fn limit(&mut self, since: Instant, limit: Duration, key: &str) {
        let dup = self.limits.iter().any(|(s, l, k)| {
            k == key && *l == limit && s.max(&since).duration_since(*s.min(&since)).as_millis() < 50
        });
        if !dup && self.limits.len() < MAX_MARKS {
            self.limits.push((since, limit, key.to_string()));
        }
    }

    /// Check `check` failed at `at` (only the first is kept).
    pub fn failed(&mut self, at: Instant, check: &str, reason: &str) {
        if self.failure.is_none() {
            self.failure = Some((at, check.to_string(), reason.to_string()));
        }
    }

    /// The timeline, with times in seconds from the fault (or from the start when there
    /// was none). Limits measured from before the fault are left out.
    pub fn finish(&self) -> Timeline {
        self.finish_at(Instant::now())
    }

    /// As [`Live::finish`], with the observation ending at `end`.
    pub fn finish_at(&self, end: Instant) -> Timeline {
        let zero = self.fault.as_ref().map(|(at, _)| *at).unwrap_or(self.start);
        let t = |at: Instant| -> f64 {
            let s = if at >= zero {
                at.duration_since(zero).as_secs_f64()
            } else {
                -zero.duration_since(at).as_secs_f64()
            };
            (s * 1000.0).round() / 1000.0
        };
        Timeline {
            nodes: self.nodes.clone(),
            fault: self.fault.as_ref().map(|(_, w)| w.clone()),
            start_s: t(self.start).min(0.0),
            end_s: t(end).max(0.0),
            events: self
                .events
                .iter()
                .map(|(at, w)| Mark {
                    t: t(*at),
                    label: w.clone(),
                })
                .collect(),
            limits: self
                .limits
                .iter()
                .filter(|(since, _, _)| *since >= zero)
                .map(|(since, limit, key)| Mark {
                    t: t(*since + *limit),
                    label: format!("{key} ({} s)", limit.as_secs()),
                })
                .collect(),
            failure: self.failure.as_ref().map(|(at, c, r)| FailureMark {
                t: t(*at),
                check: c.clone(),
                reason: r.clone(),
            }),
            samples: self
                .samples
                .iter()
                .map(|(at, n, o)| Sample {
                    t: t(*at),
                    node: n.clone(),
                    obs: *o,
                })
                .collect(),
            truncated: self.truncated,
        }
    }
}

tokio::task_local! {
    static LIVE: Arc<Mutex<Live>>;
}

/// Runs `fut` with `live` as the recorder of the scenario.
pub async fn record<F: std::future::Future>(live: Arc<Mutex<Live>>, fut: F) -> F::Output {
    LIVE.scope(live, fut).await
}

fn with(f: impl FnOnce(&mut Live)) {
    let _ = LIVE.try_with(|l| f(&mut l.lock().unwrap_or_else(|e| e.into_inner())));
}

/// Records what the grader saw of `node` just now.
pub fn observe(node: &str, obs: Obs) {
    let at = Instant::now();
    with(|l| l.observe_at(at, node, obs));
}

/// The clock starts at `at`: the containers are up.
pub fn started(at: Instant, nodes: Vec<String>) {
    with(|l| l.started(at, nodes));
}

/// The fault: t = 0 of the timeline is `at` (the instant the scenario measures its waits
/// from); `down` is a node the grader just killed or cut off. A second fault is recorded
/// as an [`event`].
pub fn fault(at: Instant, what: &str, down: Option<&str>) {
    with(|l| l.mark(at, what, down));
}

/// A later move of the grader (reconnection, restart) at `at`.
pub fn event(at: Instant, what: &str) {
    fault(at, what, None)
}

/// A limit: `key` allows `limit` from `since`.
pub fn limit(since: Instant, limit: Duration, key: &str) {
    with(|l| l.limit(since, limit, key));
}

/// A check failed now.
pub fn failed(check: &str, reason: &str) {
    let at = Instant::now();
    with(|l| l.failed(at, check, reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_changes_only_and_times_them_from_the_fault() {
        let mut l = Live::new(vec!["node0".into(), "node1".into()]);
        let s = l.start;
        let at = |ms: u64| s + Duration::from_millis(ms);
        l.observe_at(at(100), "node0", Obs::Role(Role::Leader));
        l.observe_at(at(200), "node0", Obs::Role(Role::Leader));
        l.observe_at(at(200), "node0", Obs::Service(true));
        l.limit(s, Duration::from_secs(60), "limits.start_s");
        l.mark(at(1000), "killed node0", Some("node0"));
        l.limit(at(1000), Duration::from_secs(20), "limits.dead_node_s");
        l.limit(at(1010), Duration::from_secs(20), "limits.dead_node_s");
        // After Down the same role is news again.
        l.observe_at(at(1500), "node0", Obs::Role(Role::Leader));
        l.mark(at(2000), "started node0 again", None);
        l.failed(at(2500), "hosts", "node0 still listed");
        l.failed(at(2600), "ssh", "later");
        let t = l.finish();
        assert_eq!(t.fault.as_deref(), Some("killed node0"));
        assert_eq!(t.start_s, -1.0);
        let times: Vec<(f64, Obs)> = t.samples.iter().map(|s| (s.t, s.obs)).collect();
        assert_eq!(
            times,
            [
                (-0.9, Obs::Role(Role::Leader)),
                (-0.8, Obs::Service(true)),
                (0.0, Obs::Down),
                (0.5, Obs::Role(Role::Leader)),
            ]
        );
        assert_eq!(t.limits.len(), 1, "start_s is from before the fault");
        assert_eq!(t.limits[0].t, 20.0);
        assert_eq!(t.limits[0].label, "limits.dead_node_s (20 s)");
        assert_eq!(t.events[0].t, 1.0);
        let f = t.failure.unwrap();
        assert_eq!((f.t, f.check.as_str()), (1.5, "hosts"));
        let json = serde_json::to_string(&t.samples[0]).unwrap();
        assert_eq!(
            json,
            r#"{"t":-0.9,"node":"node0","kind":"role","value":"leader"}"#
        );
        let back: Sample = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t.samples[0]);
    }

    #[test]
    fn caps_the_samples() {
        let mut l = Live::new(vec!["node0".into()]);
        for i in 0..(MAX_SAMPLES + 10) {
            l.observe_at(Instant::now(), "node0", Obs::Service(i % 2 == 0));
        }
        let t = l.finish();
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        assert!(t.truncated);
    }

    #[tokio::test]
    async fn records_only_inside_a_scenario() {
        observe("node0", Obs::Service(true));
        let live = Arc::new(Mutex::new(Live::new(vec!["node0".into()])));
        record(live.clone(), async {
            let a = async { observe("node0", Obs::Service(true)) };
            let b = async { observe("node1", Obs::Service(false)) };
            tokio::join!(a, b);
        })
        .await;
        assert_eq!(live.lock().unwrap().finish().samples.len(), 2);
    }
}
