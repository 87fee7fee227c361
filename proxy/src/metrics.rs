//! `/__proxy/metrics`: the proxy's counters in Prometheus' text exposition format (OpenMetrics 1.0,
//! which Prometheus reads), made with `prometheus-client` at each scrape from the counters the
//! proxy keeps anyway, so the request path pays nothing for it.
//!
//! - `clusterlab_proxy_requests_total{outcome}`: `forwarded` (answered by a leader),
//!   `unavailable` (503, no reachable leader in time), `bad_gateway` (502),
//!   `gateway_timeout` (504, no response head in time);
//! - `clusterlab_proxy_held_requests_total`, `clusterlab_proxy_retries_total`,
//!   `clusterlab_proxy_upgrades_total` (WebSocket tunnels);
//! - `clusterlab_proxy_upstream_switches_total` and `clusterlab_proxy_switch_seconds` (a
//!   histogram of the time from losing a leader to adopting the next);
//! - `clusterlab_proxy_has_leader`, `clusterlab_proxy_open_connections` and
//!   `clusterlab_proxy_refused_connections_total` (at the connection cap).

use crate::limits::Slots;
use crate::upstream::Tracker;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Where the metrics are served; never forwarded. Beside `/__proxy/status`, not at `/metrics`,
/// so that a leader service's own `/metrics` still reaches the leader.
pub const METRICS_PATH: &str = "/__proxy/metrics";
/// The content type of the text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

/// The metrics now, as text.
pub fn render(tracker: &Tracker, slots: &Slots) -> String {
    let r = tracker.report();
    let mut reg = Registry::with_prefix("clusterlab_proxy");
    let outcomes = Family::<Vec<(String, String)>, Counter>::default();
    for (outcome, v) in [
        ("forwarded", r.forwarded),
        ("unavailable", r.unavailable),
        ("bad_gateway", r.bad_gateway),
        ("gateway_timeout", r.gateway_timeout),
    ] {
        outcomes
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc_by(v);
    }
    reg.register("requests", "Requests by outcome", outcomes);
    reg.register(
        "held_requests",
        "Requests that waited for a (reachable) leader",
        counter(r.held),
    );
    reg.register(
        "retries",
        "Attempts repeated after a connect failure, a lost connection or a switch",
        counter(r.retries),
    );
    reg.register("upgrades", "WebSocket tunnels opened", counter(r.upgrades));
    reg.register(
        "upstream_switches",
        "Times a different leader was adopted",
        counter(r.switches),
    );
    reg.register(
        "switch_seconds",
        "Seconds from losing a leader to adopting the next",
        tracker.switch_seconds.clone(),
    );
    reg.register(
        "has_leader",
        "1 while a leader is known",
        gauge(u64::from(r.upstream.is_some())),
    );
    reg.register(
        "open_connections",
        "Client connections open now",
        gauge(slots.open() as u64),
    );
    reg.register(
        "refused_connections",
        "Client connections refused at the connection cap",
        counter(slots.refused()),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Counters, Upstream};

    #[test]
    fn render_shows_outcomes_switches_and_connections() {
        let t = Tracker::new("etcd");
        let up = |n: &str| {
            Some(Upstream {
                name: n.into(),
                addr: "10.77.0.10:8888".parse().unwrap(),
            })
        };
        t.set(up("node0"));
        t.set(None);
        t.set(up("node1"));
        Counters::bump(&t.counters.forwarded);
        Counters::bump(&t.counters.forwarded);
        Counters::bump(&t.counters.gateway_timeout);
        let slots = Slots::new(10);
        let _held = slots.take();
        let text = render(&t, &slots);
        for line in [
            "clusterlab_proxy_requests_total{outcome=\"forwarded\"} 2",
            "clusterlab_proxy_requests_total{outcome=\"gateway_timeout\"} 1",
            "clusterlab_proxy_upstream_switches_total 1",
            "clusterlab_proxy_switch_seconds_count 1",
            "clusterlab_proxy_has_leader 1",
            "clusterlab_proxy_open_connections 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
