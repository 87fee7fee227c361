//! Forwarding one request to the current leader, holding and retrying across failovers.
//!
//! A request goes through these phases, each raced against a change of leader:
//! 1. **No leader known**: wait for one, up to `hold` from the request's arrival.
//! 2. **Connecting**: a connect failure means nothing was sent, so any request is retried
//!    (after a short pause, or at once when the leader changes) until `hold` runs out.
//! 3. **Waiting for the response head**: if the leader changes meanwhile, an idempotent
//!    request without a body (GET, HEAD, OPTIONS) is sent again to the new leader: the old one
//!    may be dead, and its connection would only time out after many seconds. Other requests
//!    get `hold` more to be answered by the old leader, then a 502 that says their outcome is
//!    unknown. A request that fails after it was sent is retried only if idempotent.
//! 4. **Streaming**: the response body streams through as it comes; a switch does not cut it.
//!
//! When `hold` runs out with no reachable leader the answer is 503 with `Retry-After`.
//! WebSocket (any `Upgrade`) requests are forwarded with their upgrade headers; after the
//! leader's 101 the two connections are spliced, and the tunnel is closed when the leader
//! changes, so clients reconnect to the new leader instead of talking to a dead one.

use crate::limits::Slots;
use crate::pool::Pool;
use crate::upstream::{Counters, Leader, Tracker, Upstream};
use crate::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The proxy's own status page; never forwarded.
pub const STATUS_PATH: &str = "/__proxy/status";
/// Response header naming the node that served the request.
pub const UPSTREAM_HEADER: &str = "x-clusterlab-upstream";

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
pub(crate) const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How long requests wait and how hard they try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How long a request may wait for a reachable leader before it gets a 503.
    pub hold: Duration,
    /// Limit of one connection attempt.
    pub connect_timeout: Duration,
    /// Pause between attempts on the same leader.
    pub retry_pause: Duration,
    /// How long the leader may take to answer with a response head once it has the request
    /// (a WebSocket's 101 included; the tunnel after it is not bounded). Past it: 504.
    pub response_timeout: Duration,
    /// A client's request head must be complete within this, counted from the accept or
    /// from the end of the previous response (so idle keep-alive connections end after it).
    pub header_timeout: Duration,
    /// A client connection on which no byte moves either way for this long is closed (slow
    /// request bodies, clients that stop reading). WebSocket tunnels are not bounded.
    pub idle_timeout: Duration,
    /// Client connections open at once; beyond it new ones get a 503 and are closed.
    pub max_connections: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            retry_pause: Duration::from_millis(50),
            response_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// True when `name` is listed in the `Connection` header.
fn connection_has(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name))
}

/// True for a request that asks to switch protocols (WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

/// True for the headers of [`HOP_BY_HOP`] (compared as parsed names: no hashing).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Removes hop-by-hop headers, including those the `Connection` header names. With
/// `upgrade`, `Upgrade` and `Connection: upgrade` are kept, since they are the request.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // The common case, one pass and no allocation: none of them is there.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(upgrade && n == header::UPGRADE) {
            headers.remove(n);
        }
    }
    let up = headers.get(header::UPGRADE).cloned();
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        if let Some(up) = up {
            headers.insert(header::UPGRADE, up);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
}

/// Requests that may be sent twice.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What every attempt of one request sends, minus the body.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Template {
    fn new(parts: hyper::http::request::Parts, peer: SocketAddr, upgrade: bool) -> Template {
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade);
        // HTTP/2 clients send the authority in the URI; HTTP/1.1 upstreams need Host.
        if !headers.contains_key(header::HOST) {
            if let Some(v) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, v);
            }
        }
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert("x-forwarded-host", host);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let uri = parts
            .uri
            .path_and_query()
            .map(|pq| Uri::from(pq.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        Template {
            method: parts.method,
            uri,
            headers,
        }
    }

    fn request(&self, body: Body) -> Request<Body> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = Version::HTTP_11;
        *r.headers_mut() = self.headers.clone();
        r
    }
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Resolves when the upstream is no longer `up` (checked at once, then on every change).
pub(crate) async fn changed_away(rx: &mut watch::Receiver<Option<Arc<Leader>>>, up: &Upstream) {
    loop {
        if rx.borrow_and_update().as_deref().map(|l| &l.up) != Some(up) {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The forwarder: one per proxy, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    tracker: Arc<Tracker>,
    pool: Arc<Pool>,
    settings: Settings,
    slots: Arc<Slots>,
}

impl Proxy {
    pub fn new(tracker: Arc<Tracker>, settings: Settings) -> Arc<Proxy> {
        Arc::new(Proxy {
            tracker,
            pool: Arc::new(Pool::default()),
            settings,
            slots: Slots::new(settings.max_connections),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The cap on client connections and its counts.
    pub fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Drops idle connections to former leaders whenever the leader changes; runs until the
    /// tracker is gone.
    pub async fn prune_on_switch(self: Arc<Self>) {
        let mut rx = self.tracker.subscribe();
        while rx.changed().await.is_ok() {
            let keep = rx.borrow_and_update().as_ref().map(|u| u.addr);
            self.pool.retain_only(keep);
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        if req.uri().path() == crate::metrics::METRICS_PATH {
            let mut r = text_response(
                StatusCode::OK,
                crate::metrics::render(&self.tracker, &self.slots),
            );
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            return Ok(r);
        }
        if req.uri().path() == STATUS_PATH {
            let mut report = self.tracker.report();
            report.open_connections = self.slots.open() as u64;
            report.refused_connections = self.slots.refused();
            let body = serde_json::to_string_pretty(&report)
                .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            let mut r = text_response(StatusCode::OK, body + "\n");
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(r);
        }
        Counters::bump(&self.tracker.counters.requests);
        Ok(self.forward(req, peer).await)
    }

    /// The text of a 503 (counted); both paths answer with it (with `Retry-After: 1`).
    pub(crate) fn unavailable_text(&self, detail: &str) -> String {
        Counters::bump(&self.tracker.counters.unavailable);
        format!(
            "503 Service Unavailable: no leader is known ({detail}); waited {:.1} s. \
             Try again shortly.\n",
            self.settings.hold.as_secs_f64()
        )
    }

    /// The text of a 502 (counted).
    pub(crate) fn bad_gateway_text(&self, detail: &str) -> String {
        Counters::bump(&self.tracker.counters.bad_gateway);
        format!("502 Bad Gateway: {detail}\n")
    }

    /// The text of a 504 (counted and logged).
    pub(crate) fn gateway_timeout_text(&self, up: &Upstream) -> String {
        Counters::bump(&self.tracker.counters.gateway_timeout);
        tracing::warn!(upstream = %up, "no response head within the response timeout");
        format!(
            "504 Gateway Timeout: {up} did not answer within {:.1} s\n",
            self.settings.response_timeout.as_secs_f64()
        )
    }

    fn unavailable(&self, detail: &str) -> Response<Body> {
        let mut r = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            self.unavailable_text(detail),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }

    fn bad_gateway(&self, detail: &str) -> Response<Body> {
        text_response(StatusCode::BAD_GATEWAY, self.bad_gateway_text(detail))
    }

    fn gateway_timeout(&self, up: &Upstream) -> Response<Body> {
        text_response(StatusCode::GATEWAY_TIMEOUT, self.gateway_timeout_text(up))
    }

    async fn forward(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let upgrade = wants_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let retryable = is_idempotent(&parts.method) && body.is_end_stream();
        let template = Template::new(parts, peer, upgrade);
        // Sent once at most unless it comes back unsent; retryable requests send no body.
        let mut body: Option<Body> = (!retryable).then(|| body.boxed());
        let deadline = Instant::now() + self.settings.hold;
        let mut rx = self.tracker.subscribe();
        let mut last = String::from("none has been elected yet");
        // Which upstream `last` is about, if any.
        let mut last_addr: Option<SocketAddr> = None;
        let mut held = false;
        let mut hold = |last: &str| {
            if !held {
                held = true;
                Counters::bump(&self.tracker.counters.held);
                tracing::debug!(reason = last, "holding request");
            }
        };

        loop {
            let current = rx.borrow_and_update().clone();
            let Some(leader) = current else {
                hold(&last);
                if tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_err()
                {
                    return self.unavailable(&last);
                }
                continue;
            };
            let up = &leader.up;

            // A ready keep-alive connection needs no waiting (and no timer); only a new
            // connection is raced against a switch and the hold.
            let checkout = match self.pool.take_idle(up.addr) {
                Some(s) => Ok(s),
                None => tokio::select! {
                    biased;
                    r = crate::pool::connect(up.addr, self.settings.connect_timeout) => r,
                    _ = rx.changed() => continue,
                    _ = tokio::time::sleep_until(deadline) => {
                        // Name the last failure if there was one: it says more than a timeout.
                        if last_addr == Some(up.addr) {
                            return self.unavailable(&last);
                        }
                        return self.unavailable(&format!("{up} did not accept a connection"));
                    }
                },
            };
            let mut sender = match checkout {
                Ok(s) => s,
                Err(e) => {
                    last = format!("{} is unreachable: {e}", up.name);
                    last_addr = Some(up.addr);
                    hold(&last);
                    if Instant::now() >= deadline {
                        return self.unavailable(&last);
                    }
                    Counters::bump(&self.tracker.counters.retries);
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep(self.settings.retry_pause) => {}
                    }
                    continue;
                }
            };

            let send_body = match (retryable, body.take()) {
                (true, _) => empty(),
                (false, Some(b)) => b,
                (false, None) => return self.bad_gateway("the request body was lost"),
            };
            let mut inflight = std::pin::pin!(sender.try_send_request(template.request(send_body)));
            let answer_by = Instant::now() + self.settings.response_timeout;
            let first = tokio::select! {
                biased;
                r = &mut inflight => Some(r),
                _ = changed_away(&mut rx, up) => None,
                _ = tokio::time::sleep_until(answer_by) => return self.gateway_timeout(up),
            };
            let result = match first {
                Some(r) => r,
                None if retryable => {
                    last = format!("{} stopped being the leader before answering", up.name);
                    last_addr = Some(up.addr);
                    Counters::bump(&self.tracker.counters.retries);
                    continue;
                }
                None => match tokio::time::timeout_at(
                    answer_by.min(Instant::now() + self.settings.hold),
                    &mut inflight,
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) if Instant::now() >= answer_by => return self.gateway_timeout(up),
                    Err(_) => {
                        return self.bad_gateway(&format!(
                            "the leader changed while {up} had the request; \
                             it may or may not have been carried out"
                        ))
                    }
                },
            };
            match result {
                Ok(resp) => {
                    // An upgraded connection belongs to its tunnel from now on.
                    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                        self.pool.put(up.addr, sender);
                    }
                    return self.respond(resp, &leader, client_upgrade);
                }
                Err(mut e) => {
                    if let Some(unsent) = e.take_message() {
                        // The connection closed before the request left: nothing happened.
                        if !retryable {
                            body = Some(unsent.into_body());
                        }
                        last = format!("{} closed the connection", up.name);
                        last_addr = Some(up.addr);
                        if Instant::now() >= deadline {
                            return self.unavailable(&last);
                        }
                        Counters::bump(&self.tracker.counters.retries);
                        continue;
                    }
                    let err = e.into_error();
                    last = format!("{} failed: {err}", up.name);
                    last_addr = Some(up.addr);
                    if !retryable {
                        return self.bad_gateway(&last);
                    }
                    if Instant::now() >= deadline {
                        return self.unavailable(&last);
                    }
                    Counters::bump(&self.tracker.counters.retries);
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep(self.settings.retry_pause) => {}
                    }
                }
            }
        }
    }

    fn respond(
        &self,
        mut resp: Response<Incoming>,
        leader: &Leader,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return self.bad_gateway(&format!(
                    "{} switched protocols without being asked",
                    leader.name
                ));
            };
            Counters::bump(&self.tracker.counters.upgrades);
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let rx = self.tracker.subscribe();
            tokio::spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                rx,
                leader.up.clone(),
            ));
        } else {
            strip_hop_by_hop(resp.headers_mut(), false);
        }
        if let Some(name) = &leader.header {
            resp.headers_mut().insert(UPSTREAM_HEADER, name.clone());
        }
        Counters::bump(&self.tracker.counters.forwarded);
        resp.map(|b| b.boxed())
    }
}

/// Splices an upgraded client connection to the leader's until either side closes or the
/// leader changes.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    mut rx: watch::Receiver<Option<Arc<Leader>>>,
    up: Upstream,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended");
            }
        }
        _ = changed_away(&mut rx, &up) => {
            tracing::info!(upstream = %up, "closing a tunnel to the former leader");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_connection_names() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("accept", "*/*"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept", "content-length"]);
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade_headers() {
        let mut h = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["sec-websocket-key"], "abc");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn only_safe_methods_are_idempotent_here() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::HEAD));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PUT));
    }

    #[test]
    fn template_adds_forwarding_headers_and_origin_form() {
        let req = Request::builder()
            .uri("http://example.test:8888/api/status?x=1")
            .header("x-forwarded-for", "1.2.3.4")
            .header("connection", "close")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let t = Template::new(parts, "127.0.0.1:5555".parse().unwrap(), false);
        let r = t.request(empty());
        assert_eq!(r.uri(), "/api/status?x=1");
        assert_eq!(r.headers()["host"], "example.test:8888");
        assert_eq!(r.headers()["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(r.headers()["x-forwarded-host"], "example.test:8888");
        assert!(!r.headers().contains_key("connection"));
    }
}
