//! The proxy against in-process upstreams on 127.0.0.1: switching without dropping,
//! WebSockets, holding then 503, and retries after connect failures and dead leaders.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{Proxy, Settings, Tracker, Upstream, UPSTREAM_HEADER};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type UpBody = BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, body: String) -> Response<UpBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *resp.status_mut() = status;
    resp
}

/// A stand-in leader service named `name`, on plain hyper.
async fn app(name: &'static str, req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let ok = |body: String| Ok(text(StatusCode::OK, body));
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/api/status") => ok(format!("{{\"name\":\"{name}\"}}")),
        // Ten chunks, 100 ms apart: a response that is still streaming during a switch.
        (Method::GET, "/slow") => {
            let chunks = futures::stream::unfold(0u32, move |i| async move {
                if i == 10 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let chunk = Bytes::from(format!("{name}-{i};"));
                Some((Ok::<_, std::io::Error>(Frame::data(chunk)), i + 1))
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))))
        }
        // Answers only if the name is not "a": "a" stands for a leader that died mid-request.
        (Method::GET, "/hang") => {
            if name == "a" {
                std::future::pending::<()>().await;
            }
            ok(format!("{name} answered"))
        }
        (Method::POST, "/hang") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            if name == "a" {
                std::future::pending::<()>().await;
            }
            ok(format!(
                "{name} got {} bytes",
                body.map(|b| b.len()).unwrap_or(0)
            ))
        }
        (Method::POST, "/echo") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let body = body.unwrap_or_default();
            ok(format!("{name}:{}", String::from_utf8_lossy(&body)))
        }
        (Method::GET, "/ws/echo") => Ok(ws_echo(name, req)),
        _ => Ok(text(StatusCode::NOT_FOUND, "not found".into())),
    }
}

/// Accepts a WebSocket upgrade and echoes text messages prefixed with `name`.
fn ws_echo(name: &'static str, mut req: Request<Incoming>) -> Response<UpBody> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(StatusCode::BAD_REQUEST, "not a WebSocket handshake".into());
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(m)) = socket.next().await {
            if let Message::Text(t) = m {
                let reply = format!("{name}:{}", t.as_str());
                if socket.send(Message::Text(reply.into())).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
    let h = resp.headers_mut();
    h.insert(UPGRADE, "websocket".parse().unwrap());
    h.insert(CONNECTION, "Upgrade".parse().unwrap());
    h.insert(SEC_WEBSOCKET_ACCEPT, accept.parse().unwrap());
    resp
}

async fn start_upstream_on(name: &'static str, addr: SocketAddr) -> Upstream {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let svc = hyper::service::service_fn(move |req| app(name, req));
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned();
            tokio::spawn(conn);
        }
    });
    Upstream {
        name: name.into(),
        addr,
    }
}

async fn start_upstream(name: &'static str) -> Upstream {
    start_upstream_on(name, "127.0.0.1:0".parse().unwrap()).await
}

/// A port on which nothing listens (it was free a moment ago).
async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn start_proxy(hold_ms: u64) -> (SocketAddr, Arc<Tracker>) {
    start_proxy_with(Settings {
        hold: Duration::from_millis(hold_ms),
        ..test_settings()
    })
    .await
}

/// Short timeouts for tests.
fn test_settings() -> Settings {
    Settings {
        connect_timeout: Duration::from_millis(300),
        retry_pause: Duration::from_millis(20),
        ..Settings::default()
    }
}

async fn start_proxy_with(settings: Settings) -> (SocketAddr, Arc<Tracker>) {
    let tracker = Arc::new(Tracker::new("test"));
    let proxy = Proxy::new(tracker.clone(), settings);
    tokio::spawn(proxy.clone().prune_on_switch());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(listener, proxy, std::future::pending()));
    (addr, tracker)
}

struct Answer {
    status: StatusCode,
    upstream: Option<String>,
    retry_after: Option<String>,
    body: String,
}

async fn request(proxy: SocketAddr, method: Method, path: &str, body: &str) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{proxy}{path}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the proxy answered within 10 s")
        .expect("the proxy answered");
    let status = resp.status();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let upstream = header(UPSTREAM_HEADER);
    let retry_after = header("retry-after");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        upstream,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn get_path(proxy: SocketAddr, path: &str) -> Answer {
    request(proxy, Method::GET, path, "").await
}

async fn status(proxy: SocketAddr) -> serde_json::Value {
    let a = get_path(proxy, proxy::STATUS_PATH).await;
    assert_eq!(a.status, StatusCode::OK);
    serde_json::from_str(&a.body).unwrap()
}

#[tokio::test]
async fn switches_without_dropping_a_streaming_response() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let (proxy, tracker) = start_proxy(2000).await;
    tracker.set(Some(a.clone()));
    assert_eq!(get_path(proxy, "/api/status").await.body, r#"{"name":"a"}"#);

    // Start a response from a that streams for a second.
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .get(format!("http://{proxy}/slow").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"a-0;");

    // Switch while it streams: new requests go to b at once ...
    tracker.set(Some(b.clone()));
    let during = get_path(proxy, "/api/status").await;
    assert_eq!(during.body, r#"{"name":"b"}"#);
    assert_eq!(during.upstream.as_deref(), Some("b"));

    // ... and the response from a completes.
    let rest = body.collect().await.unwrap().to_bytes();
    let expected: String = (1..10).map(|i| format!("a-{i};")).collect();
    assert_eq!(String::from_utf8_lossy(&rest), expected);

    let s = status(proxy).await;
    assert_eq!(s["switches"], 1, "{s}");
    assert_eq!(s["upstream"]["name"], "b", "{s}");
    assert!(s["last_switch_unix_ms"].as_u64().is_some(), "{s}");
}

#[tokio::test]
async fn request_bodies_stream_to_the_leader() {
    let a = start_upstream("a").await;
    let (proxy, tracker) = start_proxy(1000).await;
    tracker.set(Some(a));
    let big = "x".repeat(1 << 20);
    let r = request(proxy, Method::POST, "/echo", &big).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 2 + big.len());
    assert!(r.body.starts_with("a:xxx"));
}

#[tokio::test]
async fn websocket_round_trip_and_reconnect_after_a_switch() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let (proxy, tracker) = start_proxy(2000).await;
    tracker.set(Some(a));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws/echo"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "a:hello");

    // The tunnel to the former leader is closed on the switch ...
    tracker.set(Some(b));
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel to the former leader stayed open");

    // ... and a new connection reaches the new one.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws/echo"))
        .await
        .unwrap();
    ws.send(Message::text("again")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "b:again");
    assert_eq!(status(proxy).await["upgrades"], 2);
}

#[tokio::test]
async fn no_leader_holds_then_answers_503_with_retry_after() {
    let (proxy, _tracker) = start_proxy(600).await;
    let t = Instant::now();
    let r = get_path(proxy, "/api/status").await;
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert!(r.body.contains("no leader is known"), "{}", r.body);
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
    assert_eq!(status(proxy).await["unavailable"], 1);
}

#[tokio::test]
async fn an_unreachable_leader_also_ends_in_503_after_the_hold() {
    let (proxy, tracker) = start_proxy(600).await;
    tracker.set(Some(Upstream {
        name: "gone".into(),
        addr: closed_port().await,
    }));
    let t = Instant::now();
    let r = get_path(proxy, "/api/status").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("gone is unreachable"), "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let s = status(proxy).await;
    assert!(s["retries"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test]
async fn a_held_request_is_served_when_a_leader_appears() {
    let a = start_upstream("a").await;
    let (proxy, tracker) = start_proxy(5000).await;
    let t = Instant::now();
    let pending = tokio::spawn(get_path(proxy, "/api/status"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tracker.set(Some(a));
    let r = pending.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream.as_deref(), Some("a"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(status(proxy).await["held"], 1);
}

#[tokio::test]
async fn requests_are_retried_after_connect_failures_until_the_service_is_up() {
    // The leader is known but its service is not listening yet (just promoted).
    let addr = closed_port().await;
    let (proxy, tracker) = start_proxy(5000).await;
    tracker.set(Some(Upstream {
        name: "a".into(),
        addr,
    }));
    let get = tokio::spawn(get_path(proxy, "/api/status"));
    // A POST is safe to retry too when nothing could be sent.
    let post = tokio::spawn(request(proxy, Method::POST, "/echo", "payload"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    start_upstream_on("a", addr).await;
    let g = get.await.unwrap();
    assert_eq!(g.status, StatusCode::OK, "{}", g.body);
    let p = post.await.unwrap();
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body, "a:payload");
    let s = status(proxy).await;
    assert!(s["retries"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test]
async fn a_get_stuck_on_a_dead_leader_is_resent_to_the_next_one() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let (proxy, tracker) = start_proxy(1000).await;
    tracker.set(Some(a));
    let t = Instant::now();
    let get = tokio::spawn(get_path(proxy, "/hang"));
    let post = tokio::spawn(request(proxy, Method::POST, "/hang", "p"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    tracker.set(Some(b));
    let g = get.await.unwrap();
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.body, "b answered");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A POST is not sent twice: after the hold it is reported as of unknown outcome.
    let p = post.await.unwrap();
    assert_eq!(p.status, StatusCode::BAD_GATEWAY, "{}", p.body);
    assert!(p.body.contains("may or may not"), "{}", p.body);
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let a = start_upstream("a").await;
    let tracker = Arc::new(Tracker::new("test"));
    tracker.set(Some(a));
    let proxy = Proxy::new(tracker, Settings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(proxy::serve(
        listener,
        proxy.clone(),
        std::future::pending(),
    ));
    for _ in 0..5 {
        assert_eq!(get_path(addr, "/api/status").await.status, StatusCode::OK);
    }
    assert_eq!(get_path(addr, "/slow").await.body.len(), 40);
    assert_eq!(proxy.pool().idle_count(), 1, "connections were not reused");
}

/// What a slow client saw of its connection.
#[derive(Debug)]
struct Cut {
    /// From connect to the proxy closing the connection; `None` if it stayed open.
    after: Option<Duration>,
    /// Bytes of the request head it got to send.
    sent: usize,
}

/// A slowloris client: sends a never-ending request head one byte every `pace`, until the
/// proxy closes the connection or `give_up` passes.
async fn slowloris(proxy: SocketAddr, pace: Duration, give_up: Duration) -> Cut {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let head = b"GET /api/status HTTP/1.1\r\nHost: proxy\r\nX-Padding: ";
    let mut sent = 0;
    let mut buf = [0u8; 512];
    loop {
        if t.elapsed() > give_up {
            return Cut { after: None, sent };
        }
        let byte = head.get(sent).copied().unwrap_or(b'a');
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Cut { after: Some(t.elapsed()), sent },
                // An answer (an error status) may come before the close.
                Ok(_) => {}
            },
            _ = tokio::time::sleep(pace) => {
                if s.write_all(&[byte]).await.is_err() {
                    return Cut { after: Some(t.elapsed()), sent };
                }
                sent += 1;
            }
        }
    }
}

/// Polls the proxy's status until `check` holds on it, for at most 5 s.
async fn wait_status(proxy: SocketAddr, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let t = Instant::now();
    loop {
        let s = status(proxy).await;
        if check(&s) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{what}; last status: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slowloris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let a = start_upstream("a").await;
    let header = Duration::from_millis(600);
    let (proxy, tracker) = start_proxy_with(Settings {
        header_timeout: header,
        idle_timeout: Duration::from_secs(30),
        max_connections: 200,
        ..test_settings()
    })
    .await;
    tracker.set(Some(a));
    let pace = Duration::from_millis(40);
    let attackers: Vec<_> = (0..60)
        .map(|_| tokio::spawn(slowloris(proxy, pace, Duration::from_secs(8))))
        .collect();
    // While they trickle, a normal client is served at once.
    tokio::time::sleep(Duration::from_millis(150)).await;
    for _ in 0..3 {
        let t = Instant::now();
        let r = get_path(proxy, "/api/status").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    for a in attackers {
        let cut = a.await.unwrap();
        let after = cut
            .after
            .unwrap_or_else(|| panic!("a slowloris stayed connected: {cut:?}"));
        assert!(
            after >= header - Duration::from_millis(50) && after < header * 3,
            "cut after {after:?} (header timeout {header:?}): {cut:?}"
        );
        // Still sending its head when cut: the timeout, not the end of the head, ended it.
        assert!(cut.sent >= 5, "{cut:?}");
    }
    wait_status(proxy, "every slow connection freed its place", |s| {
        s["open_connections"] == 1
    })
    .await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let header = Duration::from_millis(400);
    let (proxy, _tracker) = start_proxy_with(Settings {
        header_timeout: header,
        ..test_settings()
    })
    .await;
    let t = Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was not closed: {r:?}"
    );
    assert!(
        t.elapsed() >= header - Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = start_upstream("a").await;
    let idle = Duration::from_millis(500);
    let (proxy, tracker) = start_proxy_with(Settings {
        idle_timeout: idle,
        response_timeout: Duration::from_secs(20),
        ..test_settings()
    })
    .await;
    tracker.set(Some(a));
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: proxy\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "the stalled connection stayed open");
    assert!(
        t.elapsed() >= idle - Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_never_answering_upstream_gives_504_naming_it() {
    // Accepts and reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let bound = Duration::from_millis(500);
    let (proxy, tracker) = start_proxy_with(Settings {
        response_timeout: bound,
        ..test_settings()
    })
    .await;
    tracker.set(Some(Upstream {
        name: "mute".into(),
        addr,
    }));
    for method in [Method::GET, Method::POST] {
        let t = Instant::now();
        let r = request(proxy, method.clone(), "/api/status", "x").await;
        let took = t.elapsed();
        assert_eq!(
            r.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{method}: {}",
            r.body
        );
        assert!(
            r.body.contains(&format!("mute at {addr}")),
            "{method}: {}",
            r.body
        );
        assert!(
            took >= bound && took < bound + Duration::from_secs(2),
            "{method}: answered after {took:?}"
        );
    }
    assert_eq!(status(proxy).await["gateway_timeout"], 2);
}

/// GET /api/status on a connection of its own, as plain bytes: the whole answer.
async fn raw_get(proxy: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    // The proxy may answer and close before the request is written: that is fine.
    let _ = s
        .write_all(b"GET /api/status HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "no answer within 5 s");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn the_connection_cap_holds_and_frees() {
    use tokio::io::AsyncReadExt;
    let a = start_upstream("a").await;
    let (proxy, tracker) = start_proxy_with(Settings {
        max_connections: 3,
        ..test_settings()
    })
    .await;
    tracker.set(Some(a));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(proxy).await.unwrap());
    }
    // The fourth is told why and closed, without the proxy waiting for it to speak.
    let mut extra = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), extra.read_to_end(&mut got))
        .await
        .expect("the connection beyond the cap was closed")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
    assert!(got.contains("too many connections"), "{got}");
    // A real request beyond the cap gets the 503 too.
    assert!(raw_get(proxy).await.starts_with("HTTP/1.1 503 "));
    // One closes: the next client is served.
    drop(held.pop());
    let t = Instant::now();
    loop {
        let r = raw_get(proxy).await;
        if r.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "still refused: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = status(proxy).await;
    assert!(s["refused_connections"].as_u64().unwrap() >= 2, "{s}");
}

#[tokio::test]
async fn a_websocket_outlives_the_response_and_idle_timeouts() {
    let a = start_upstream("a").await;
    let (proxy, tracker) = start_proxy_with(Settings {
        response_timeout: Duration::from_millis(200),
        header_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(300),
        ..test_settings()
    })
    .await;
    tracker.set(Some(a));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/ws/echo"))
        .await
        .unwrap();
    ws.send(Message::text("one")).await.unwrap();
    let back = ws.next().await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "a:one");
    // Silent for longer than every timeout: the tunnel is still there.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ws.send(Message::text("two")).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .expect("the tunnel answered")
        .unwrap()
        .unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "a:two");
}

/// One sample of Prometheus/OpenMetrics text: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The samples of Prometheus/OpenMetrics text. Panics, naming the line, on anything that is
/// not the format.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "no # EOF at the end:\n{text}");
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let kind = w.next().unwrap_or("");
            let name = w.next().unwrap_or("");
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT") && name_ok(name),
                "bad comment line {line:?}"
            );
            if kind == "TYPE" {
                let t = w.next().unwrap_or("");
                assert!(
                    matches!(t, "counter" | "gauge" | "histogram" | "unknown" | "info"),
                    "bad type in {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let labels = inner
                    .split(',')
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
                        assert!(name_ok(k), "bad label name in {line:?}");
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        assert!(name_ok(name), "bad metric name in {line:?}");
        samples.push((name.to_string(), labels, value));
    }
    samples
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let a = start_upstream("a").await;
    let b = start_upstream("b").await;
    let (proxy, tracker) = start_proxy(300).await;
    tracker.set(Some(a));
    for _ in 0..3 {
        assert_eq!(get_path(proxy, "/api/status").await.status, StatusCode::OK);
    }
    tracker.set(None);
    let r = get_path(proxy, "/api/status").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    tracker.set(Some(b));

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = client
        .get(
            format!("http://{proxy}{}", proxy::metrics::METRICS_PATH)
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let samples = parse_metrics(&text);
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name && label.is_none_or(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name} {label:?} in:\n{text}"))
    };
    let outcome = |o| value("clusterlab_proxy_requests_total", Some(("outcome", o)));
    assert_eq!(outcome("forwarded"), 3.0, "{text}");
    assert_eq!(outcome("unavailable"), 1.0, "{text}");
    assert_eq!(value("clusterlab_proxy_held_requests_total", None), 1.0);
    assert_eq!(value("clusterlab_proxy_upstream_switches_total", None), 1.0);
    assert_eq!(value("clusterlab_proxy_switch_seconds_count", None), 1.0);
    // The gap without a leader lasted at least the held request's 300 ms.
    assert!(
        value("clusterlab_proxy_switch_seconds_sum", None) >= 0.3,
        "{text}"
    );
    assert_eq!(value("clusterlab_proxy_has_leader", None), 1.0);
    assert!(value("clusterlab_proxy_open_connections", None) >= 1.0);
}

#[tokio::test]
async fn pipelined_requests_on_one_connection_are_answered_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = start_upstream("a").await;
    let (proxy, tracker) = start_proxy(1000).await;
    tracker.set(Some(a));
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    // Two heads in one write: the second is read with the first and must wait its turn.
    s.write_all(
        b"GET /api/status HTTP/1.1\r\nHost: proxy\r\n\r\n\
          GET /nothing-here HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("the proxy answered both and closed")
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    let first = got.find("HTTP/1.1 200 ").expect("a 200 first");
    let second = got.find("HTTP/1.1 404 ").expect("then a 404");
    assert!(first < second, "{got}");
    assert!(got.contains(r#"{"name":"a"}"#), "{got}");
    assert_eq!(
        got.matches("x-clusterlab-upstream: a\r\n").count(),
        2,
        "{got}"
    );
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert_eq!(status(proxy).await["forwarded"], 2);
}
