//! The etcd follower against stand-in etcd gateways on 127.0.0.1 that answer `/v3/kv/range`
//! and stream `/v3/watch` responses as the test scripts them: the newest revision wins across
//! endpoints, a lagging endpoint never sets an older leader back, a compacted watch is
//! resynced with a fresh read, and stopping ends the follower.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::follow::follow_etcd;
use proxy::Tracker;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// An opened watch: the request body the follower sent and the sender of its response stream.
type OpenedWatch = (String, mpsc::Sender<Bytes>);

/// A scripted etcd gateway.
struct FakeGateway {
    url: String,
    /// Body of the next range responses.
    range_body: Mutex<String>,
    /// Range requests wait until this is true.
    range_open: watch::Sender<bool>,
    ranges: AtomicUsize,
    watches: mpsc::UnboundedSender<OpenedWatch>,
}

fn leader_value(name: &str, ip: &str) -> String {
    BASE64.encode(format!(
        r#"{{"name":"{name}","ip":"{ip}","member_id":"1"}}"#
    ))
}

fn range_json(revision: i64, leader: Option<(&str, &str)>) -> String {
    let header = format!(r#""header":{{"cluster_id":"1","revision":"{revision}"}}"#);
    match leader {
        None => format!("{{{header}}}"),
        Some((name, ip)) => format!(
            r#"{{{header},"kvs":[{{"key":"L2NsdXN0ZXJsYWIvbGVhZGVy","mod_revision":"{revision}","lease":"7","value":"{}"}}],"count":"1"}}"#,
            leader_value(name, ip)
        ),
    }
}

fn put_event(revision: i64, name: &str, ip: &str) -> String {
    put_event_on(revision, name, ip, 7)
}

/// A put of the leader key on `lease` (0: none; the gateway then leaves the field out).
fn put_event_on(revision: i64, name: &str, ip: &str, lease: i64) -> String {
    let lease = if lease == 0 {
        String::new()
    } else {
        format!(r#""lease":"{lease}","#)
    };
    format!(
        r#"{{"result":{{"header":{{"revision":"{revision}"}},"events":[{{"kv":{{"key":"L2NsdXN0ZXJsYWIvbGVhZGVy","mod_revision":"{revision}",{lease}"value":"{}"}}}}]}}}}"#,
        leader_value(name, ip)
    ) + "\n"
}

/// The peers of these tests; `stale` is a real peer, so only revision order keeps it out.
fn peers() -> Vec<clusterlab_core::schema::Peer> {
    clusterlab_core::schema::parse_peers(
        "node0=10.77.0.10,node1=10.77.0.11,node2=10.77.0.12,stale=10.77.0.99",
    )
    .unwrap()
}

fn delete_event(revision: i64) -> String {
    format!(
        r#"{{"result":{{"header":{{"revision":"{revision}"}},"events":[{{"type":"DELETE","kv":{{"key":"L2NsdXN0ZXJsYWIvbGVhZGVy","mod_revision":"{revision}"}}}}]}}}}"#
    ) + "\n"
}

type Body = BoxBody<Bytes, Infallible>;

async fn serve(gw: Arc<FakeGateway>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    match path.as_str() {
        "/v3/kv/range" => {
            let mut open = gw.range_open.subscribe();
            let _ = open.wait_for(|o| *o).await;
            gw.ranges.fetch_add(1, Ordering::SeqCst);
            let json = gw.range_body.lock().unwrap().clone();
            Ok(Response::new(Full::new(Bytes::from(json)).boxed()))
        }
        "/v3/watch" => {
            let (tx, rx) = mpsc::channel::<Bytes>(16);
            let _ = gw.watches.send((body, tx));
            let created = Bytes::from_static(
                b"{\"result\":{\"header\":{\"revision\":\"1\"},\"created\":true}}\n",
            );
            let stream = futures::stream::unfold((Some(created), rx), |(first, mut rx)| async {
                let chunk = match first {
                    Some(c) => c,
                    None => rx.recv().await?,
                };
                Some((Ok(Frame::data(chunk)), (None, rx)))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))))
        }
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"{}")).boxed());
            *r.status_mut() = StatusCode::NOT_FOUND;
            Ok(r)
        }
    }
}

async fn start_gateway(
    range: String,
    open: bool,
) -> (Arc<FakeGateway>, mpsc::UnboundedReceiver<OpenedWatch>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (watches, opened) = mpsc::unbounded_channel();
    let gw = Arc::new(FakeGateway {
        url: format!("http://{}", listener.local_addr().unwrap()),
        range_body: Mutex::new(range),
        range_open: watch::Sender::new(open),
        ranges: AtomicUsize::new(0),
        watches,
    });
    let served = gw.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gw = served.clone();
            let svc = hyper::service::service_fn(move |req| serve(gw.clone(), req));
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned(),
            );
        }
    });
    (gw, opened)
}

async fn next_watch(opened: &mut mpsc::UnboundedReceiver<OpenedWatch>) -> OpenedWatch {
    tokio::time::timeout(WAIT, opened.recv())
        .await
        .expect("the follower opened a watch")
        .expect("gateway running")
}

async fn wait_leader(tracker: &Tracker, want: Option<&str>) {
    let mut rx = tracker.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|u| u.as_ref().map(|u| u.name.as_str()) == want),
    )
    .await
    .unwrap_or_else(|_| panic!("leader {want:?} within {WAIT:?}"))
    .unwrap();
}

fn start_revision(watch_request: &str) -> i64 {
    let v: serde_json::Value = serde_json::from_str(watch_request).unwrap();
    let rev = &v["create_request"]["start_revision"];
    rev.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn newest_revision_wins_and_a_compacted_watch_resyncs() {
    let (a, mut a_watches) =
        start_gateway(range_json(5, Some(("node0", "10.77.0.10"))), true).await;
    // B lags: its read is older, and it answers only when the test lets it.
    let (b, mut b_watches) =
        start_gateway(range_json(3, Some(("stale", "10.77.0.99"))), false).await;
    let tracker = Arc::new(Tracker::new("etcd"));
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow_etcd(
        vec![a.url.clone(), b.url.clone()],
        peers(),
        8888,
        tracker.clone(),
        stop.clone(),
    ));

    wait_leader(&tracker, Some("node0")).await;
    assert_eq!(
        tracker.current().unwrap().addr,
        "10.77.0.10:8888".parse().unwrap()
    );
    let (req, a_tx) = next_watch(&mut a_watches).await;
    assert_eq!(start_revision(&req), 6, "the watch starts after the read");

    // B's older read arrives after A's: it must not set the stale leader.
    b.range_open.send_replace(true);
    let (req, b_tx) = next_watch(&mut b_watches).await;
    assert_eq!(start_revision(&req), 4);

    // A new leader through A, its message split across two chunks.
    let put = put_event(7, "node1", "10.77.0.11");
    let (head, tail) = put.split_at(put.len() / 2);
    a_tx.send(Bytes::from(head.to_string())).await.unwrap();
    a_tx.send(Bytes::from(tail.to_string())).await.unwrap();
    wait_leader(&tracker, Some("node1")).await;

    // B catches up late: its rev-6 news is older than what was applied; its rev-8 delete is
    // newer. Both in one chunk, so the delete is seen after the stale put was handled.
    let chunk = put_event(6, "stale", "10.77.0.99") + &delete_event(8);
    b_tx.send(Bytes::from(chunk)).await.unwrap();
    wait_leader(&tracker, None).await;
    assert_eq!(
        tracker.report().switches,
        1,
        "only node0 -> node1: the stale leader was never adopted"
    );

    // A's watch is cancelled for compaction: A reads afresh and watches from there.
    *a.range_body.lock().unwrap() = range_json(9, Some(("node2", "10.77.0.12")));
    a_tx.send(Bytes::from_static(
        b"{\"result\":{\"header\":{},\"canceled\":true,\"compact_revision\":\"8\"}}\n",
    ))
    .await
    .unwrap();
    wait_leader(&tracker, Some("node2")).await;
    let (req, _a_tx2) = next_watch(&mut a_watches).await;
    assert_eq!(start_revision(&req), 10);
    assert_eq!(a.ranges.load(Ordering::SeqCst), 2);
    assert_eq!(b.ranges.load(Ordering::SeqCst), 1);

    // A malformed message also ends the watch and resyncs.
    b_tx.send(Bytes::from_static(b"{\"result\":{\"created\":\"yes\"}}\n"))
        .await
        .unwrap();
    let (req, _b_tx2) = next_watch(&mut b_watches).await;
    assert_eq!(start_revision(&req), 4);
    assert_eq!(b.ranges.load(Ordering::SeqCst), 2);
    assert_eq!(tracker.current().unwrap().name, "node2");

    stop.cancel();
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_endpoint_does_not_hold_up_the_others() {
    let (a, _a_watches) = start_gateway(range_json(2, Some(("node1", "10.77.0.11"))), true).await;
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let tracker = Arc::new(Tracker::new("etcd"));
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow_etcd(
        vec![closed, "https://not-supported:2379".into(), a.url.clone()],
        peers(),
        8888,
        tracker.clone(),
        stop.clone(),
    ));
    wait_leader(&tracker, Some("node1")).await;
    stop.cancel();
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower stops when cancelled")
        .unwrap();
}

#[tokio::test]
async fn forged_leader_keys_never_move_the_upstream() {
    let (a, mut a_watches) =
        start_gateway(range_json(5, Some(("node0", "10.77.0.10"))), true).await;
    let tracker = Arc::new(Tracker::new("etcd"));
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow_etcd(
        vec![a.url.clone()],
        peers(),
        8888,
        tracker.clone(),
        stop.clone(),
    ));
    wait_leader(&tracker, Some("node0")).await;
    let (_, a_tx) = next_watch(&mut a_watches).await;
    // Lease-less, a stranger, a peer at the gateway's address, then a real new leader: only
    // the last one moves the upstream, so the tracker sees exactly one switch.
    let chunk = put_event_on(6, "node1", "10.77.0.11", 0)
        + &put_event(7, "evil", "10.77.0.66")
        + &put_event(8, "node2", "10.77.0.5")
        + &put_event(9, "node2", "10.77.0.12");
    a_tx.send(Bytes::from(chunk)).await.unwrap();
    wait_leader(&tracker, Some("node2")).await;
    assert_eq!(
        tracker.current().unwrap().addr,
        "10.77.0.12:8888".parse().unwrap()
    );
    assert_eq!(
        tracker.report().switches,
        1,
        "node0 -> node2 only: no forged record was ever adopted"
    );
    stop.cancel();
    tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower stops when cancelled")
        .unwrap();
}
