//! etcd's HTTP/JSON gateway: the `/v3/…` API etcd serves on its client port next to gRPC
//! (on by default in etcd 3.4). The proxy reads and watches the leader key through it with
//! hyper, so it carries no gRPC stack (etcd-client pulls tonic, and tonic axum).
//!
//! The gateway speaks protobuf's JSON mapping with the proto field names: 64-bit integers
//! are JSON strings (`"revision":"42"`), keys and values are base64, and fields at their
//! default value are left out, so a PUT event has no `type` and a range that found nothing
//! has no `kvs`. A watch is one POST to `/v3/watch` with a `create_request`; its response is
//! a stream of JSON objects, `{"result": WatchResponse}` per watch response, or
//! `{"error": …}` when the gateway's gRPC stream fails. Everything read is size-capped, and
//! anything that does not decode is an error, never a panic.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use clusterlab_core::etcd::{
    CONNECT_TIMEOUT, KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT, REQUEST_TIMEOUT,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use std::collections::VecDeque;
use std::fmt;

/// Largest range response accepted (the leader key's value is well under 1 KiB).
pub const MAX_RANGE_RESPONSE: usize = 1 << 20;
/// Largest single watch message accepted; a longer one ends the watch.
pub const MAX_WATCH_MESSAGE: usize = 1 << 20;
/// How much of an error response's body is kept for the error message.
const MAX_ERROR_BODY: usize = 4096;
/// TCP keep-alive probes that may go unanswered before a connection counts as dead. A probe
/// goes out after [`KEEP_ALIVE_INTERVAL`] of silence and is given [`KEEP_ALIVE_TIMEOUT`] to
/// be answered, so a watch through a node that vanished (killed, partitioned: no RST ever
/// comes) fails as gRPC keep-alive would make it fail, instead of staying silent forever.
pub const KEEP_ALIVE_PROBES: u32 = 1;

/// Which gateway call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Range,
    Watch,
}

impl Call {
    fn path(self) -> &'static str {
        match self {
            Call::Range => "/v3/kv/range",
            Call::Watch => "/v3/watch",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

/// Why a watch stream's bytes did not decode.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a watch message is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed watch message: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error("a watch message carries neither a result nor an error")]
    Empty,
}

/// Why a gateway call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("etcd endpoint {endpoint:?} is not an http://host:port URL")]
    BadEndpoint { endpoint: String },
    #[error("{call} via {base}: {source}")]
    Request {
        call: Call,
        base: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{call} via {base}: no answer within {ms} ms")]
    Timeout { call: Call, base: String, ms: u128 },
    #[error("{call} via {base}: HTTP status {status}: {body}")]
    Status {
        call: Call,
        base: String,
        status: StatusCode,
        body: String,
    },
    #[error("{call} via {base}: reading the response: {source}")]
    Body {
        call: Call,
        base: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{call} via {base}: response larger than {limit} bytes")]
    TooLarge {
        call: Call,
        base: String,
        limit: usize,
    },
    #[error("{call} via {base}: malformed response: {source}")]
    Malformed {
        call: Call,
        base: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("watch via {base}: {source}")]
    Decode {
        base: String,
        #[source]
        source: DecodeError,
    },
    #[error("watch via {base}: the gateway reported gRPC code {code}: {message}")]
    Stream {
        base: String,
        code: i64,
        message: String,
    },
    #[error("watch via {base}: the stream ended inside a message")]
    Truncated { base: String },
}

/// A protobuf int64 in JSON: a string of digits (the gateway's way) or a plain number.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Number(i64),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::Number(n) => Ok(n),
        Repr::Text(s) => s
            .parse()
            .map_err(|_| D::Error::custom(format_args!("{s:?} is not a 64-bit integer"))),
    }
}

/// Protobuf bytes in JSON: standard base64.
fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    BASE64
        .decode(s.as_bytes())
        .map_err(|e| D::Error::custom(format_args!("bytes field is not base64: {e}")))
}

/// `ResponseHeader`: only the revision matters here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ResponseHeader {
    #[serde(default, deserialize_with = "int64")]
    pub revision: i64,
}

/// `mvccpb.KeyValue`, the fields the proxy uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct KeyValue {
    #[serde(default, deserialize_with = "base64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "int64")]
    pub mod_revision: i64,
    #[serde(default, deserialize_with = "base64")]
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0 (left out by the gateway) for none.
    #[serde(default, deserialize_with = "int64")]
    pub lease: i64,
}

/// `RangeResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RangeResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub kvs: Vec<KeyValue>,
}

/// `mvccpb.Event.EventType`. PUT is the enum's zero value, so the gateway leaves it out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EventType {
    #[default]
    Put,
    Delete,
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(i64),
            Name(String),
        }
        match Repr::deserialize(d)? {
            Repr::Number(0) => Ok(EventType::Put),
            Repr::Number(1) => Ok(EventType::Delete),
            Repr::Name(n) if n == "PUT" => Ok(EventType::Put),
            Repr::Name(n) if n == "DELETE" => Ok(EventType::Delete),
            Repr::Number(n) => Err(D::Error::custom(format_args!("unknown event type {n}"))),
            Repr::Name(n) => Err(D::Error::custom(format_args!("unknown event type {n:?}"))),
        }
    }
}

/// `mvccpb.Event`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Event {
    #[serde(default, rename = "type")]
    pub kind: EventType,
    #[serde(default)]
    pub kv: Option<KeyValue>,
}

/// `WatchResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct WatchResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default)]
    pub cancel_reason: String,
    /// Set on a watch cancelled because its start revision was compacted away.
    #[serde(default, deserialize_with = "int64")]
    pub compact_revision: i64,
    #[serde(default)]
    pub events: Vec<Event>,
}

/// The error object the gateway streams when the gRPC watch behind it fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct StreamStatus {
    #[serde(default, alias = "code")]
    pub grpc_code: i64,
    #[serde(default)]
    pub message: String,
}

/// One object of a watch stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    Response(WatchResponse),
    Failed(StreamStatus),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    result: Option<WatchResponse>,
    #[serde(default)]
    error: Option<StreamStatus>,
}

/// Cuts a watch response body into messages, whatever the chunking: a message may span
/// chunks, a chunk may hold several. Holds at most one incomplete message, of at most
/// `limit` bytes.
#[derive(Debug)]
pub struct WatchDecoder {
    buf: Vec<u8>,
    limit: usize,
}

impl WatchDecoder {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            limit,
        }
    }

    /// Adds `chunk` and returns every message now complete, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<WatchMessage>, DecodeError> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut used = 0;
        loop {
            used += self.buf[used..]
                .iter()
                .take_while(|b| b.is_ascii_whitespace())
                .count();
            if used == self.buf.len() {
                break;
            }
            let mut values =
                serde_json::Deserializer::from_slice(&self.buf[used..]).into_iter::<Envelope>();
            match values.next() {
                Some(Ok(env)) => {
                    let len = values.byte_offset();
                    if len > self.limit {
                        return Err(DecodeError::TooLarge { limit: self.limit });
                    }
                    used += len;
                    out.push(match env {
                        Envelope {
                            error: Some(status),
                            ..
                        } => WatchMessage::Failed(status),
                        Envelope {
                            result: Some(resp), ..
                        } => WatchMessage::Response(resp),
                        Envelope { .. } => return Err(DecodeError::Empty),
                    });
                }
                // The rest of this message is still on its way.
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => return Err(DecodeError::Malformed(e)),
                None => break,
            }
        }
        self.buf.drain(..used);
        if self.buf.len() > self.limit {
            return Err(DecodeError::TooLarge { limit: self.limit });
        }
        Ok(out)
    }

    /// Whether part of a message is buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// The gateway of one etcd endpoint.
#[derive(Debug, Clone)]
pub struct Gateway {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// `http://host:port` from an endpoint given as a URL or as bare `host:port`.
fn base_url(endpoint: &str) -> Result<String, GatewayError> {
    let bad = || GatewayError::BadEndpoint {
        endpoint: endpoint.to_string(),
    };
    let authority = match endpoint.split_once("://") {
        Some(("http", rest)) => rest,
        Some(_) => return Err(bad()),
        None => endpoint,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains('/') {
        return Err(bad());
    }
    let base = format!("http://{authority}");
    let uri: Uri = base.parse().map_err(|_| bad())?;
    match uri.authority() {
        Some(a) if a.port_u16().is_some() && !a.host().is_empty() => Ok(base),
        _ => Err(bad()),
    }
}

impl Gateway {
    /// A gateway client for `endpoint` (`http://host:port`, or `host:port`), with
    /// clusterlab's etcd timeouts: [`CONNECT_TIMEOUT`] to connect, [`REQUEST_TIMEOUT`] per
    /// call, TCP keep-alive to notice a vanished peer. Connections are not pooled: each
    /// read-then-watch cycle starts on fresh ones, so none is reused after its peer died.
    pub fn new(endpoint: &str) -> Result<Self, GatewayError> {
        let base = base_url(endpoint)?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.set_keepalive(Some(KEEP_ALIVE_INTERVAL));
        http.set_keepalive_interval(Some(KEEP_ALIVE_TIMEOUT));
        http.set_keepalive_retries(Some(KEEP_ALIVE_PROBES));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(http);
        Ok(Self { client, base })
    }

    /// The base URL this gateway talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, call: Call, json: String) -> Result<Request<Full<Bytes>>, GatewayError> {
        Request::post(format!("{}{}", self.base, call.path()))
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .map_err(|_| GatewayError::BadEndpoint {
                endpoint: self.base.clone(),
            })
    }

    fn timeout(&self, call: Call) -> GatewayError {
        GatewayError::Timeout {
            call,
            base: self.base.clone(),
            ms: REQUEST_TIMEOUT.as_millis(),
        }
    }

    /// Sends `call` and waits for the response head; a non-success status is an error that
    /// carries the start of the body.
    async fn send(&self, call: Call, json: String) -> Result<Incoming, GatewayError> {
        let resp = self
            .client
            .request(self.post(call, json)?)
            .await
            .map_err(|source| GatewayError::Request {
                call,
                base: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let body = match self
            .read_capped(call, resp.into_body(), MAX_ERROR_BODY)
            .await
        {
            Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
            Err(_) => String::new(),
        };
        Err(GatewayError::Status {
            call,
            base: self.base.clone(),
            status,
            body,
        })
    }

    async fn read_capped(
        &self,
        call: Call,
        mut body: Incoming,
        limit: usize,
    ) -> Result<Vec<u8>, GatewayError> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|source| GatewayError::Body {
                call,
                base: self.base.clone(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(GatewayError::TooLarge {
                        call,
                        base: self.base.clone(),
                        limit,
                    });
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// Reads `key` (linearizable, as etcd's default range is).
    pub async fn range(&self, key: &[u8]) -> Result<RangeResponse, GatewayError> {
        let call = Call::Range;
        // Base64 needs no JSON escaping.
        let json = format!(r#"{{"key":"{}"}}"#, BASE64.encode(key));
        let read = async {
            let body = self.send(call, json).await?;
            let bytes = self.read_capped(call, body, MAX_RANGE_RESPONSE).await?;
            serde_json::from_slice::<RangeResponse>(&bytes).map_err(|source| {
                GatewayError::Malformed {
                    call,
                    base: self.base.clone(),
                    source,
                }
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .map_err(|_| self.timeout(call))?
    }

    /// Opens a watch on `key` from `start_revision` on.
    pub async fn watch(&self, key: &[u8], start_revision: i64) -> Result<Watch, GatewayError> {
        let call = Call::Watch;
        // Base64 and a decimal number need no JSON escaping.
        let json = format!(
            r#"{{"create_request":{{"key":"{}","start_revision":"{start_revision}"}}}}"#,
            BASE64.encode(key)
        );
        let body = tokio::time::timeout(REQUEST_TIMEOUT, self.send(call, json))
            .await
            .map_err(|_| self.timeout(call))??;
        Ok(Watch {
            base: self.base.clone(),
            body,
            decoder: WatchDecoder::new(MAX_WATCH_MESSAGE),
            ready: VecDeque::new(),
        })
    }
}

/// An open watch: its response stream, decoded.
#[derive(Debug)]
pub struct Watch {
    base: String,
    body: Incoming,
    decoder: WatchDecoder,
    ready: VecDeque<WatchMessage>,
}

impl Watch {
    /// The next watch response; `None` when the stream ended between messages.
    pub async fn message(&mut self) -> Result<Option<WatchResponse>, GatewayError> {
        loop {
            match self.ready.pop_front() {
                Some(WatchMessage::Response(resp)) => return Ok(Some(resp)),
                Some(WatchMessage::Failed(status)) => {
                    return Err(GatewayError::Stream {
                        base: self.base.clone(),
                        code: status.grpc_code,
                        message: status.message,
                    })
                }
                None => {}
            }
            let Some(frame) = self.body.frame().await else {
                if self.decoder.has_partial() {
                    return Err(GatewayError::Truncated {
                        base: self.base.clone(),
                    });
                }
                return Ok(None);
            };
            let frame = frame.map_err(|source| GatewayError::Body {
                call: Call::Watch,
                base: self.base.clone(),
                source,
            })?;
            if let Ok(data) = frame.into_data() {
                let msgs = self
                    .decoder
                    .push(&data)
                    .map_err(|source| GatewayError::Decode {
                        base: self.base.clone(),
                        source,
                    })?;
                self.ready.extend(msgs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_B64: &str = "L2NsdXN0ZXJsYWIvbGVhZGVy"; // "/clusterlab/leader"

    fn value_b64(v: &str) -> String {
        BASE64.encode(v)
    }

    fn response(msg: WatchMessage) -> WatchResponse {
        match msg {
            WatchMessage::Response(r) => r,
            WatchMessage::Failed(s) => panic!("expected a response, got {s:?}"),
        }
    }

    #[test]
    fn range_response_with_and_without_the_key() {
        let v = r#"{"name":"node0","ip":"10.77.0.10","member_id":"1"}"#;
        let text = format!(
            r#"{{"header":{{"cluster_id":"14841639068965178418","member_id":"1","revision":"2","raft_term":"2"}},
               "kvs":[{{"key":"{KEY_B64}","create_revision":"2","mod_revision":"2","version":"1","value":"{}"}}],"count":"1"}}"#,
            value_b64(v)
        );
        let r: RangeResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(r.header.revision, 2);
        assert_eq!(r.kvs.len(), 1);
        assert_eq!(r.kvs[0].key, b"/clusterlab/leader");
        assert_eq!(r.kvs[0].mod_revision, 2);
        assert_eq!(r.kvs[0].value, v.as_bytes());

        // No key: no `kvs`, no `count`.
        let r: RangeResponse =
            serde_json::from_str(r#"{"header":{"cluster_id":"1","revision":"7"}}"#).unwrap();
        assert_eq!(r.header.revision, 7);
        assert!(r.kvs.is_empty());
        // Plain JSON numbers are accepted too.
        let r: RangeResponse = serde_json::from_str(r#"{"header":{"revision":9}}"#).unwrap();
        assert_eq!(r.header.revision, 9);
    }

    #[test]
    fn malformed_range_responses_are_errors() {
        for bad in [
            r#"{"header":{"revision":"seven"}}"#,
            r#"{"header":{"revision":"1"},"kvs":[{"value":"%%%"}]}"#,
            r#"{"header":"#,
            r#""header""#,
        ] {
            assert!(
                serde_json::from_str::<RangeResponse>(bad).is_err(),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn watch_put_without_type_delete_and_created() {
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        let put = format!(
            r#"{{"result":{{"header":{{"revision":"4"}},"events":[{{"kv":{{"key":"{KEY_B64}","mod_revision":"4","value":"{}"}}}}]}}}}"#,
            value_b64("x")
        );
        let text = format!(
            "{}\n{put}\n{}\n",
            r#"{"result":{"header":{"revision":"2"},"created":true}}"#,
            r#"{"result":{"header":{"revision":"5"},"events":[{"type":"DELETE","kv":{"key":"L2NsdXN0ZXJsYWIvbGVhZGVy","mod_revision":"5"}}]}}"#,
        );
        let msgs = d.push(text.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 3);
        let mut msgs = msgs.into_iter().map(response);
        let created = msgs.next().unwrap();
        assert!(created.created && created.events.is_empty());
        assert_eq!(created.header.revision, 2);
        let put = msgs.next().unwrap();
        assert_eq!(put.events.len(), 1);
        assert_eq!(put.events[0].kind, EventType::Put);
        let kv = put.events[0].kv.as_ref().unwrap();
        assert_eq!((kv.mod_revision, kv.value.as_slice()), (4, &b"x"[..]));
        let del = msgs.next().unwrap();
        assert_eq!(del.events[0].kind, EventType::Delete);
        let kv = del.events[0].kv.as_ref().unwrap();
        assert_eq!(kv.mod_revision, 5);
        assert!(kv.value.is_empty());
        assert!(!d.has_partial());
    }

    #[test]
    fn watch_cancelled_and_compacted() {
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        let msgs = d
            .push(br#"{"result":{"header":{"raft_term":"2"},"canceled":true,"compact_revision":"4"}}"#)
            .unwrap();
        let r = response(msgs.into_iter().next().unwrap());
        assert!(r.canceled);
        assert_eq!(r.compact_revision, 4);
        assert_eq!(r.header.revision, 0);

        let msgs = d
            .push(br#"{"result":{"canceled":true,"cancel_reason":"permission denied"}}"#)
            .unwrap();
        let r = response(msgs.into_iter().next().unwrap());
        assert!(r.canceled);
        assert_eq!(r.cancel_reason, "permission denied");
        assert_eq!(r.compact_revision, 0);

        let msgs = d
            .push(br#"{"error":{"grpc_code":14,"http_code":503,"message":"unavailable","http_status":"Service Unavailable"}}"#)
            .unwrap();
        assert_eq!(
            msgs,
            vec![WatchMessage::Failed(StreamStatus {
                grpc_code: 14,
                message: "unavailable".into()
            })]
        );
    }

    #[test]
    fn a_message_split_across_chunks_and_two_in_one_chunk() {
        let one = r#"{"result":{"header":{"revision":"10"},"events":[{"kv":{"mod_revision":"10","value":"eA=="}}]}}"#;
        let two = r#"{"result":{"header":{"revision":"11"},"events":[{"type":"DELETE","kv":{"mod_revision":"11"}}]}}"#;
        let all = format!("{one}\n{two}\n{one}\n");
        // Every split point of the stream yields the same three messages.
        for cut in 0..=all.len() {
            let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
            let (a, b) = all.as_bytes().split_at(cut);
            let mut msgs = d.push(a).unwrap();
            msgs.extend(d.push(b).unwrap());
            let revs: Vec<i64> = msgs
                .into_iter()
                .map(|m| response(m).header.revision)
                .collect();
            assert_eq!(revs, vec![10, 11, 10], "cut at {cut}");
            assert!(!d.has_partial());
        }
        // Byte by byte, without separators between messages.
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        let mut n = 0;
        for b in format!("{one}{two}").as_bytes() {
            n += d.push(std::slice::from_ref(b)).unwrap().len();
        }
        assert_eq!(n, 2);
        // Half a message is held, not returned.
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        assert!(d.push(&one.as_bytes()[..20]).unwrap().is_empty());
        assert!(d.has_partial());
    }

    #[test]
    fn malformed_or_oversized_watch_messages_are_errors() {
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        assert!(matches!(
            d.push(b"{\"result\":{\"header\":{\"revision\":\"x\"}}}\n"),
            Err(DecodeError::Malformed(_))
        ));
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        assert!(matches!(
            d.push(b"not json\n"),
            Err(DecodeError::Malformed(_))
        ));
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        assert!(matches!(
            d.push(br#"{"result":{"events":[{"type":"MOVE"}]}}"#),
            Err(DecodeError::Malformed(_))
        ));
        let mut d = WatchDecoder::new(MAX_WATCH_MESSAGE);
        assert!(matches!(d.push(b"{}"), Err(DecodeError::Empty)));

        // An incomplete message may not grow past the limit...
        let mut d = WatchDecoder::new(64);
        assert!(d
            .push(br#"{"result":{"cancel_reason":""#)
            .unwrap()
            .is_empty());
        assert!(matches!(
            d.push(&[b'a'; 64]),
            Err(DecodeError::TooLarge { limit: 64 })
        ));
        // ...nor may a complete one that arrived at once.
        let mut d = WatchDecoder::new(64);
        let big = format!(r#"{{"result":{{"cancel_reason":"{}"}}}}"#, "a".repeat(64));
        assert!(matches!(
            d.push(big.as_bytes()),
            Err(DecodeError::TooLarge { limit: 64 })
        ));
    }

    #[test]
    fn endpoints_are_http_host_port() {
        assert_eq!(
            base_url("http://10.77.0.10:2379").unwrap(),
            "http://10.77.0.10:2379"
        );
        assert_eq!(
            base_url("http://10.77.0.10:2379/").unwrap(),
            "http://10.77.0.10:2379"
        );
        assert_eq!(base_url("node0:2379").unwrap(), "http://node0:2379");
        for bad in [
            "https://10.77.0.10:2379",
            "http://10.77.0.10",
            "http://10.77.0.10:2379/v3",
            "",
            "http://",
            "10.77.0.10:port",
        ] {
            assert!(
                matches!(base_url(bad), Err(GatewayError::BadEndpoint { .. })),
                "accepted {bad:?}"
            );
        }
    }
}
