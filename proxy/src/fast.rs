//! The fast path: plain HTTP/1.1 keep-alive GET, HEAD and OPTIONS requests without a body,
//! forwarded by the client connection's own task.
//!
//! Through hyper, every forwarded request crossed three tasks: the client connection's, which
//! hands the request over a channel to the upstream connection's task, which hands the
//! response head back over a oneshot and the body over another channel; each hand-over is a
//! wake-up and a trip through the scheduler, and each request re-built header maps twice. That
//! was most of the distance to nginx (23 µs of CPU per request against 17). Here one task
//! reads the request head with `httparse`, writes the rewritten head to a pooled upstream
//! socket, reads the response head, and copies the body through, with buffers reused from one
//! request to the next: no spawn, no channel, no header map.
//!
//! Anything else — a request body, `Upgrade` (WebSockets), `Expect`, HTTP/1.0 or HTTP/2,
//! absolute-form targets, the proxy's own pages, more than [`MAX_HEADERS`] header fields, a head
//! that does not parse — hands the connection, with the bytes already read, to the hyper path
//! ([`Proxy::handle`]) for the rest of its life, so every unusual case keeps the behaviour it
//! had. The fast path keeps the general one's: holding while no leader is known, retrying
//! (these requests are all idempotent) after connect failures, lost connections and switches,
//! 503 after the hold, 504 after the response timeout, the forwarding headers, the counters.
//! Limits: a request head must be complete within the header timeout (from the accept or the
//! end of the previous response) and within [`MAX_HEAD`] bytes; the idle timeout is the
//! watchdog's, as on the hyper path.

use crate::forward::{changed_away, Proxy, STATUS_PATH};
use crate::limits::Watched;
use crate::upstream::{Counters, Leader};
use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// A request or response head longer than this is refused (431) or rejected (502). nginx's
/// default allows 8 KiB per header line; hyper's buffer allows 400 KiB.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields parsed on the fast path; a request with more goes to hyper (which allows 100).
pub const MAX_HEADERS: usize = 64;
/// Header fields accepted in an upstream's response head.
const MAX_RESPONSE_HEADERS: usize = 100;
/// Extra header names a `Connection` header may list on the fast path.
const MAX_CONNECTION_NAMES: usize = 8;
/// Bytes read from the upstream at a time.
const READ_CHUNK: usize = 16 * 1024;

type Client = Watched<TcpStream>;

/// Serves one client connection: the fast path while requests suit it, then hyper.
pub(crate) async fn connection(
    proxy: Arc<Proxy>,
    mut client: Client,
    peer: SocketAddr,
    hyper: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        rx: proxy.tracker().subscribe(),
        proxy,
        peer_ip: peer.ip().to_string(),
        // Small until used: an idle connection costs little (the others grow on the first
        // request and are kept for the next).
        inbuf: BytesMut::with_capacity(4 * 1024),
        upbuf: BytesMut::new(),
        req: Vec::new(),
        out: Vec::new(),
        done_at: None,
    };
    if !conn.run(&mut client, &mut shutdown).await {
        return;
    }
    // Hand the connection to hyper, the bytes of the request already read first.
    let proxy = conn.proxy;
    let io = Rewind {
        prefix: conn.inbuf.freeze(),
        io: client,
    };
    let svc = hyper::service::service_fn(move |req| proxy.clone().handle(req, peer));
    let served = hyper.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(served);
    let result = tokio::select! {
        r = served.as_mut() => r,
        () = stopped(&mut shutdown) => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended");
    }
}

/// Resolves once the proxy is shutting down (at once if it is).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// What a client connection's task keeps from one request to the next.
struct Conn {
    proxy: Arc<Proxy>,
    rx: watch::Receiver<Option<Arc<Leader>>>,
    /// The client's address as written in `X-Forwarded-For`.
    peer_ip: String,
    /// Bytes from the client not yet used (a partial or pipelined head).
    inbuf: BytesMut,
    /// Bytes from the upstream.
    upbuf: BytesMut,
    /// The request as sent upstream (kept for a retry).
    req: Vec<u8>,
    /// A response head (and the first body bytes) on its way to the client.
    out: Vec<u8>,
    /// When the last response was done, if the clock was read then (for the next request's
    /// header timeout).
    done_at: Option<Instant>,
}

/// A request head the fast path takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ready {
    head_len: usize,
    /// A HEAD request: the response has no body whatever its headers say.
    head: bool,
    /// The client asked to close after this response.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Analysis {
    /// More bytes needed.
    Partial,
    /// Not for the fast path.
    Fallback,
    Ready(Ready),
}

/// Whether the request head that ends the buffer might be complete: a blank line after
/// `from - 3`. Parsing only then keeps a client that sends its head a byte at a time from
/// costing a parse of the whole head per byte.
fn has_blank_line(buf: &[u8], from: usize) -> bool {
    // Most reads end with the head: that is one comparison.
    if buf.ends_with(b"\n\n") || buf.ends_with(b"\n\r\n") {
        return true;
    }
    let mut rest = &buf[from.saturating_sub(3).min(buf.len())..];
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        rest = &rest[i + 1..];
        if rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n") {
            return true;
        }
    }
    false
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// What a header field is to the fast path, told from its name once: the length picks the
/// one or two names it can be, so most fields cost one comparison or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    /// The other hop-by-hop fields (RFC 9110 §7.6.1, the hyper path's list): `Keep-Alive`,
    /// `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`, `TE`, `Trailer`.
    HopByHop,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    /// [`crate::UPSTREAM_HEADER`]: set by the proxy, never taken from the upstream.
    Upstream,
}

fn classify(name: &[u8]) -> Field {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        2 if is("te") => Field::HopByHop,
        4 if is("host") => Field::Host,
        6 if is("expect") => Field::Expect,
        7 if is("upgrade") => Field::Upgrade,
        7 if is("trailer") => Field::HopByHop,
        10 if is("connection") => Field::Connection,
        10 if is("keep-alive") => Field::HopByHop,
        14 if is("content-length") => Field::ContentLength,
        15 if is("x-forwarded-for") => Field::XForwardedFor,
        16 if is("x-forwarded-host") => Field::XForwardedHost,
        16 if is("proxy-connection") => Field::HopByHop,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        17 if is("x-forwarded-proto") => Field::XForwardedProto,
        18 if is("proxy-authenticate") => Field::HopByHop,
        19 if is("proxy-authorization") => Field::HopByHop,
        21 if is(crate::UPSTREAM_HEADER) => Field::Upstream,
        _ => Field::Other,
    }
}

/// What `HeaderValue::to_str` accepts: visible ASCII and tabs.
fn is_visible_ascii(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// A Content-Length value: digits only (surrounding blanks allowed), no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// Copies the header lines of a parsed head that are kept, as byte ranges of the head: a run
/// of kept lines ending in CRLF goes in one copy, as it came. A line ending in a bare LF (which
/// httparse accepts) is written out again with CRLF, so the upstream or client never sees one.
struct LineCopier<'a> {
    buf: &'a [u8],
    /// Where the header lines end (the blank line's start).
    end: usize,
    run: Option<(usize, usize)>,
}

impl<'a> LineCopier<'a> {
    /// `head_len` is the length of the head, blank line included.
    fn new(buf: &'a [u8], head_len: usize) -> LineCopier<'a> {
        let blank = if buf[..head_len].ends_with(b"\r\n\r\n") {
            2
        } else {
            1
        };
        LineCopier {
            buf,
            end: head_len - blank,
            run: None,
        }
    }

    /// Where a slice of the head starts in it.
    fn offset(&self, part: &[u8]) -> usize {
        part.as_ptr() as usize - self.buf.as_ptr() as usize
    }

    /// Keeps header `i` of `headers` (parsed from this head).
    fn keep(&mut self, headers: &[httparse::Header<'_>], i: usize, out: &mut Vec<u8>) {
        let h = &headers[i];
        let start = self.offset(h.name.as_bytes());
        let end = match headers.get(i + 1) {
            Some(next) => self.offset(next.name.as_bytes()),
            None => self.end,
        };
        if self.buf[..end].ends_with(b"\r\n") {
            match &mut self.run {
                Some((_, run_end)) if *run_end == start => *run_end = end,
                run => {
                    if let Some((a, b)) = run.take() {
                        out.extend_from_slice(&self.buf[a..b]);
                    }
                    *run = Some((start, end));
                }
            }
        } else {
            self.flush(out);
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some((a, b)) = self.run.take() {
            out.extend_from_slice(&self.buf[a..b]);
        }
    }
}

/// Reads a request head from `buf`; when the fast path takes it, writes the request as it is
/// to go upstream into `req` (hop-by-hop fields dropped, forwarding fields added).
fn analyse(buf: &[u8], peer_ip: &str, req: &mut Vec<u8>) -> Analysis {
    // Left uninitialised for httparse to fill: setting 64 empty fields first would cost
    // more than most heads take to parse.
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let head_len = match parsed.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Analysis::Partial,
        // Hyper answers malformed heads (400, 431) and speaks HTTP/2.
        Err(_) => return Analysis::Fallback,
    };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return Analysis::Fallback;
    };
    let head = method == "HEAD";
    if !(method == "GET" || head || method == "OPTIONS") || !path.starts_with('/') {
        return Analysis::Fallback;
    }
    let only_path = path.split_once('?').map_or(path, |(p, _)| p);
    if only_path == STATUS_PATH || only_path == crate::metrics::METRICS_PATH {
        return Analysis::Fallback;
    }
    // One look at the whole head: each field's kind and what it says.
    let fields = &*parsed.headers;
    let mut kinds = [Field::Other; MAX_HEADERS];
    let mut host = None;
    let mut hosts = 0;
    let mut close = false;
    let mut xff = None;
    let mut named: [&[u8]; MAX_CONNECTION_NAMES] = [b""; MAX_CONNECTION_NAMES];
    let mut n_named = 0;
    for (h, kind) in fields.iter().zip(kinds.iter_mut()) {
        *kind = classify(h.name.as_bytes());
        match *kind {
            Field::Other => continue,
            Field::Host => {
                hosts += 1;
                host = Some(h.value);
                continue;
            }
            Field::ContentLength if trim(h.value) == b"0" => {}
            Field::ContentLength | Field::TransferEncoding | Field::Expect | Field::Upgrade => {
                return Analysis::Fallback
            }
            Field::Connection => {
                for token in h.value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        if n_named == MAX_CONNECTION_NAMES {
                            return Analysis::Fallback;
                        }
                        named[n_named] = token;
                        n_named += 1;
                    }
                }
            }
            Field::XForwardedFor if xff.is_none() => xff = Some(h.value),
            _ => {}
        }
    }
    let (1, Some(host)) = (hosts, host) else {
        return Analysis::Fallback;
    };
    // Fields the client's `Connection` names are hop-by-hop too.
    let named = &named[..n_named];
    if !named.is_empty() {
        for (h, kind) in fields.iter().zip(kinds.iter_mut()) {
            if named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
            {
                *kind = Field::HopByHop;
            }
        }
    }
    req.clear();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\n");
    if !fields.is_empty() {
        let mut lines = LineCopier::new(buf, head_len);
        // The forwarding fields are written anew below; every other kind is hop-by-hop.
        for (i, kind) in kinds[..fields.len()].iter().enumerate() {
            if matches!(kind, Field::Other | Field::Host | Field::ContentLength) {
                lines.keep(fields, i, req);
            }
        }
        lines.flush(req);
    }
    req.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = xff.filter(|v| is_visible_ascii(v)) {
        req.extend_from_slice(trim(prev));
        req.extend_from_slice(b", ");
    }
    req.extend_from_slice(peer_ip.as_bytes());
    req.extend_from_slice(b"\r\nx-forwarded-host: ");
    req.extend_from_slice(host);
    req.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n\r\n");
    Analysis::Ready(Ready {
        head_len,
        head,
        close,
    })
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// At the upstream's close (no length given): the client connection closes after it.
    Close,
}

/// A response head, already rewritten for the client into `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resp {
    framing: Framing,
    /// The upstream connection may carry another request after this response.
    reusable: bool,
    /// The client connection is closed after this response.
    close_client: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Partial,
    /// A 1xx head of this length, passed over (the client asked for nothing that needs it).
    Informational(usize),
    Head(usize, Resp),
}

/// Why no usable response head came.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    #[error("it closed the connection before answering")]
    Closed,
    #[error("it closed the connection inside the response head")]
    Truncated,
    #[error("its response head is larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("reading the response: {0}")]
    Io(#[from] io::Error),
}

/// Reads a response head from `buf`; writes the head for the client into `out`.
fn parse_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    upstream_name: Option<&hyper::header::HeaderValue>,
    out: &mut Vec<u8>,
) -> Result<Parsed, HeadError> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed("more than 100 header fields"))
        }
        Err(_) => return Err(HeadError::Malformed("not an HTTP/1.x response head")),
    };
    let (Some(version), Some(code)) = (parsed.version, parsed.code) else {
        return Err(HeadError::Malformed("no status line"));
    };
    if code == 101 {
        return Err(HeadError::Malformed(
            "it switched protocols without being asked",
        ));
    }
    if (100..200).contains(&code) {
        return Ok(Parsed::Informational(len));
    }
    let mut upstream_close = version == 0;
    let mut chunked = false;
    let mut has_te = false;
    let mut length: Option<u64> = None;
    let mut named: [&[u8]; MAX_CONNECTION_NAMES] = [b""; MAX_CONNECTION_NAMES];
    let mut n_named = 0;
    // One look at the whole head: each field's kind and the framing; the copy below only
    // reads the kinds back.
    let fields = &*parsed.headers;
    let mut kinds = [Field::Other; MAX_RESPONSE_HEADERS];
    for (h, kind) in fields.iter().zip(kinds.iter_mut()) {
        *kind = classify(h.name.as_bytes());
        match *kind {
            Field::Connection => {
                for token in h.value.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        upstream_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if version == 0 {
                            upstream_close = false;
                        }
                    } else if !token.is_empty() && n_named < MAX_CONNECTION_NAMES {
                        named[n_named] = token;
                        n_named += 1;
                    }
                }
            }
            Field::TransferEncoding => {
                has_te = true;
                // The last coding decides (RFC 9112 §6.3).
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"));
            }
            Field::ContentLength => {
                let n =
                    parse_length(h.value).ok_or(HeadError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length fields"));
                }
                length = Some(n);
            }
            _ => {}
        }
    }
    let framing = if head_request || code == 204 || code == 304 {
        Framing::None
    } else if has_te {
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        match length {
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let resp = Resp {
        framing,
        reusable: !upstream_close && framing != Framing::Close,
        close_client: client_close || framing == Framing::Close,
    };
    // Fields the upstream's `Connection` names are hop-by-hop too.
    let named = &named[..n_named];
    if !named.is_empty() {
        for (h, kind) in fields.iter().zip(kinds.iter_mut()) {
            if *kind == Field::Other
                && named
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()))
            {
                *kind = Field::HopByHop;
            }
        }
    }
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(code).as_slice());
    out.push(b' ');
    out.extend_from_slice(parsed.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    if !fields.is_empty() {
        let mut lines = LineCopier::new(buf, len);
        for (i, kind) in kinds[..fields.len()].iter().enumerate() {
            let keep = match kind {
                // Passed through with the chunks, as they are.
                Field::TransferEncoding => framing == Framing::Chunked || framing == Framing::Close,
                Field::ContentLength => !has_te,
                Field::Connection | Field::Upgrade | Field::HopByHop | Field::Upstream => false,
                _ => true,
            };
            if keep {
                lines.keep(fields, i, out);
            }
        }
        lines.flush(out);
    }
    if let Some(v) = upstream_name {
        out.extend_from_slice(crate::UPSTREAM_HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if resp.close_client {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Head(len, resp))
}

/// A status code (100–999, as httparse guarantees) in three digits.
fn itoa3(code: u16) -> [u8; 3] {
    [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ]
}

/// Where a chunked body is: the scanner finds its end in the bytes passed through, without
/// decoding them (they go to the client as they came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { digits: u8 },
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Finds the end of a chunked body; bounded: sizes of at most 15 hex digits, extensions and
/// trailers of at most [`MAX_HEAD`] bytes.
#[derive(Debug, Clone, Copy)]
struct ChunkScanner {
    state: ChunkState,
    size: u64,
    /// Bytes of the current extension or trailer section.
    extra: usize,
}

impl ChunkScanner {
    fn new() -> ChunkScanner {
        ChunkScanner {
            state: ChunkState::Size { digits: 0 },
            size: 0,
            extra: 0,
        }
    }

    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Scans `buf`; returns how many of its bytes belong to the body (all of them unless the
    /// body ends inside it).
    fn feed(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        use ChunkState::*;
        let mut i = 0;
        while i < buf.len() && self.state != Done {
            if self.state == Data {
                let n = (buf.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                i += n;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.state = match self.state {
                Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 15 => {
                        self.size = self.size * 16 + u64::from(d);
                        Size { digits: digits + 1 }
                    }
                    Some(_) => return Err("chunk size too large"),
                    None if digits == 0 => return Err("chunk size missing"),
                    None if b == b'\r' => SizeLf,
                    None if b == b';' || b == b' ' || b == b'\t' => {
                        self.extra = 0;
                        Extension
                    }
                    None => return Err("invalid chunk size"),
                },
                Extension => {
                    self.extra += 1;
                    if self.extra > MAX_HEAD {
                        return Err("chunk extension too long");
                    }
                    if b == b'\r' {
                        SizeLf
                    } else {
                        Extension
                    }
                }
                SizeLf if b == b'\n' => {
                    if self.size == 0 {
                        self.extra = 0;
                        TrailerStart
                    } else {
                        Data
                    }
                }
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => {
                    self.size = 0;
                    Size { digits: 0 }
                }
                TrailerStart if b == b'\r' => EndLf,
                TrailerStart | Trailer => {
                    self.extra += 1;
                    if self.extra > MAX_HEAD {
                        return Err("chunked trailer too long");
                    }
                    if b == b'\r' {
                        TrailerLf
                    } else {
                        Trailer
                    }
                }
                TrailerLf if b == b'\n' => TrailerStart,
                EndLf if b == b'\n' => Done,
                _ => return Err("malformed chunked body"),
            };
        }
        Ok(i)
    }
}

/// What to do after a request.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// Writes a short text response the proxy makes itself.
async fn answer(
    client: &mut Client,
    out: &mut Vec<u8>,
    status: &str,
    extra: &str,
    text: &str,
    close: bool,
) -> Next {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n{extra}content-length: {}\r\n{}\r\n{text}",
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    );
    match client.write_all(out).await {
        Ok(()) if !close => Next::KeepAlive,
        _ => Next::Close,
    }
}

impl Conn {
    /// Serves requests on the fast path; returns true when the connection is to go to hyper
    /// (with `inbuf` holding what was read of its next request), false when it is done.
    async fn run(&mut self, client: &mut Client, shutdown: &mut watch::Receiver<bool>) -> bool {
        let header_timeout = self.proxy.settings().header_timeout;
        let head_by = tokio::time::sleep(header_timeout);
        tokio::pin!(head_by);
        // One timer per connection for the response timeout, moved to each request's
        // deadline: tokio moves a registered timer to a later deadline without touching its
        // wheel, where a new timer per request would be inserted and removed each time.
        let answer_by = tokio::time::sleep(self.proxy.settings().response_timeout);
        tokio::pin!(answer_by);
        // Shutdown is waited for once per connection: a wait made anew for each request would
        // join and leave the channel's list of waiters every time. `shutdown` itself is only
        // asked whether it changed (one atomic load) after each response.
        let mut stop_rx = shutdown.clone();
        let stop = stopped(&mut stop_rx);
        tokio::pin!(stop);
        loop {
            // A complete request head, within the header timeout.
            let mut scanned = 0;
            let ready = loop {
                if !self.inbuf.is_empty() && has_blank_line(&self.inbuf, scanned) {
                    match analyse(&self.inbuf, &self.peer_ip, &mut self.req) {
                        Analysis::Ready(r) => break r,
                        Analysis::Fallback => return true,
                        Analysis::Partial => {}
                    }
                }
                scanned = self.inbuf.len();
                if self.inbuf.len() >= MAX_HEAD {
                    answer(
                        client,
                        &mut self.out,
                        "431 Request Header Fields Too Large",
                        "",
                        "431 Request Header Fields Too Large: the request head is over 64 KiB\n",
                        true,
                    )
                    .await;
                    return false;
                }
                self.inbuf.reserve(4096);
                tokio::select! {
                    biased;
                    r = client.read_buf(&mut self.inbuf) => match r {
                        Ok(0) | Err(_) => return false,
                        Ok(_) => {}
                    },
                    () = &mut head_by => return false,
                    () = &mut stop, if self.inbuf.is_empty() => return false,
                }
            };
            self.inbuf.advance(ready.head_len);
            Counters::bump(&self.proxy.tracker().counters.requests);
            if self.forward(client, ready, answer_by.as_mut()).await == Next::Close
                || shutdown.has_changed().unwrap_or(true)
            {
                return false;
            }
            // The clock as read when the response was done (no second reading), else now.
            let now = self.done_at.take().unwrap_or_else(Instant::now);
            head_by.as_mut().reset(now + header_timeout);
        }
    }

    /// Forwards the request in `req` to the leader and its response to the client, holding
    /// and retrying as [`crate::forward`] does for idempotent requests.
    async fn forward(
        &mut self,
        client: &mut Client,
        ready: Ready,
        mut answer_by: Pin<&mut tokio::time::Sleep>,
    ) -> Next {
        let proxy = self.proxy.clone();
        let settings = *proxy.settings();
        let counters = &proxy.tracker().counters;
        // One clock reading serves the hold deadline, the pool's age check and, when the
        // first attempt goes out at once on a pooled socket, the response deadline.
        let start = Instant::now();
        let deadline = start + settings.hold;
        let mut sent_at = Some(start);
        // The last failure (None: no leader was ever seen) and which upstream it is about.
        let mut last: Option<String> = None;
        let mut last_addr: Option<SocketAddr> = None;
        let mut held = false;
        let unavailable = |last: &Option<String>| {
            proxy.unavailable_text(last.as_deref().unwrap_or("none has been elected yet"))
        };
        macro_rules! hold {
            () => {
                if !held {
                    held = true;
                    Counters::bump(&counters.held);
                    tracing::debug!(reason = ?last, "holding request");
                }
            };
        }
        macro_rules! give_up {
            ($text:expr) => {
                return answer(
                    client,
                    &mut self.out,
                    "503 Service Unavailable",
                    "retry-after: 1\r\n",
                    &$text,
                    ready.close,
                )
                .await
            };
        }
        loop {
            let current = self.rx.borrow_and_update().clone();
            let Some(leader) = current else {
                sent_at = None;
                hold!();
                if tokio::time::timeout_at(deadline, self.rx.changed())
                    .await
                    .is_err()
                {
                    give_up!(unavailable(&last));
                }
                continue;
            };
            let up = &leader.up;
            // A pooled socket needs no waiting and no timer.
            let now = sent_at.take().unwrap_or_else(Instant::now);
            let (mut upstream, reused) = match proxy.pool().take_raw(up.addr, now.into_std()) {
                Some(s) => {
                    sent_at = Some(now);
                    (s, true)
                }
                None => {
                    let r = tokio::select! {
                        biased;
                        r = crate::pool::connect_raw(up.addr, settings.connect_timeout) => r,
                        _ = self.rx.changed() => continue,
                        () = tokio::time::sleep_until(deadline) => {
                            if last_addr == Some(up.addr) {
                                give_up!(unavailable(&last));
                            }
                            give_up!(proxy.unavailable_text(&format!("{up} did not accept a connection")));
                        }
                    };
                    match r {
                        Ok(s) => (s, false),
                        Err(e) => {
                            last = Some(format!("{} is unreachable: {e}", up.name));
                            last_addr = Some(up.addr);
                            hold!();
                            if Instant::now() >= deadline {
                                give_up!(unavailable(&last));
                            }
                            Counters::bump(&counters.retries);
                            tokio::select! {
                                _ = self.rx.changed() => {}
                                () = tokio::time::sleep(settings.retry_pause) => {}
                            }
                            continue;
                        }
                    }
                }
            };
            // The whole request is one small write; a pooled socket the upstream closed
            // meanwhile fails here or at the first read, with nothing carried out.
            let sent = upstream.write_all(&self.req).await;
            self.upbuf.clear();
            let from = sent_at.take().unwrap_or_else(Instant::now);
            answer_by.as_mut().reset(from + settings.response_timeout);
            let result = match sent {
                Err(e) => Err(HeadError::Io(e)),
                Ok(()) => tokio::select! {
                    biased;
                    r = read_response_head(
                        &mut upstream,
                        &mut self.upbuf,
                        ready,
                        leader.header.as_ref(),
                        &mut self.out,
                    ) => r,
                    () = changed_away(&mut self.rx, up) => {
                        last = Some(format!("{} stopped being the leader before answering", up.name));
                        last_addr = Some(up.addr);
                        Counters::bump(&counters.retries);
                        continue;
                    }
                    () = answer_by.as_mut() => {
                        let text = proxy.gateway_timeout_text(up);
                        return answer(client, &mut self.out, "504 Gateway Timeout", "", &text, ready.close).await;
                    }
                },
            };
            let resp = match result {
                Ok(resp) => resp,
                Err(e) => {
                    // A keep-alive socket closed by the upstream before the request reached
                    // it: send again at once on a fresh one.
                    let stale = reused && matches!(e, HeadError::Closed | HeadError::Io(_));
                    last = Some(if stale {
                        format!("{} closed the connection", up.name)
                    } else {
                        format!("{} failed: {e}", up.name)
                    });
                    last_addr = Some(up.addr);
                    if Instant::now() >= deadline {
                        give_up!(unavailable(&last));
                    }
                    Counters::bump(&counters.retries);
                    if !stale {
                        tokio::select! {
                            _ = self.rx.changed() => {}
                            () = tokio::time::sleep(settings.retry_pause) => {}
                        }
                    }
                    continue;
                }
            };
            Counters::bump(&counters.forwarded);
            return self.relay_body(client, upstream, up.addr, resp).await;
        }
    }

    /// Sends the response head in `out` and the body after it, then pools the upstream
    /// socket if it can carry another request.
    async fn relay_body(
        &mut self,
        client: &mut Client,
        mut upstream: TcpStream,
        addr: SocketAddr,
        resp: Resp,
    ) -> Next {
        // Past the head, a failure on either side can only end the client connection: the
        // client has part of the response.
        let mut reusable = resp.reusable;
        match resp.framing {
            Framing::None => {
                if client.write_all(&self.out).await.is_err() {
                    return Next::Close;
                }
            }
            Framing::Length(total) => {
                let mut left = total;
                let first = self
                    .upbuf
                    .len()
                    .min(usize::try_from(left).unwrap_or(usize::MAX));
                // The head and what came with it in one write.
                self.out.extend_from_slice(&self.upbuf[..first]);
                self.upbuf.advance(first);
                left -= first as u64;
                if client.write_all(&self.out).await.is_err() {
                    return Next::Close;
                }
                while left > 0 {
                    self.upbuf.clear();
                    self.upbuf.reserve(READ_CHUNK);
                    match upstream.read_buf(&mut self.upbuf).await {
                        Ok(0) | Err(_) => return Next::Close,
                        Ok(_) => {}
                    }
                    let n = self
                        .upbuf
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    if client.write_all(&self.upbuf[..n]).await.is_err() {
                        return Next::Close;
                    }
                    self.upbuf.advance(n);
                    left -= n as u64;
                }
            }
            Framing::Chunked => {
                let mut scan = ChunkScanner::new();
                let Ok(n) = scan.feed(&self.upbuf) else {
                    let _ = client.write_all(&self.out).await;
                    return Next::Close;
                };
                self.out.extend_from_slice(&self.upbuf[..n]);
                self.upbuf.advance(n);
                if client.write_all(&self.out).await.is_err() {
                    return Next::Close;
                }
                while !scan.done() {
                    self.upbuf.clear();
                    self.upbuf.reserve(READ_CHUNK);
                    match upstream.read_buf(&mut self.upbuf).await {
                        Ok(0) | Err(_) => return Next::Close,
                        Ok(_) => {}
                    }
                    let Ok(n) = scan.feed(&self.upbuf) else {
                        return Next::Close;
                    };
                    if client.write_all(&self.upbuf[..n]).await.is_err() {
                        return Next::Close;
                    }
                    self.upbuf.advance(n);
                }
            }
            Framing::Close => {
                self.out.extend_from_slice(&self.upbuf);
                self.upbuf.clear();
                if client.write_all(&self.out).await.is_err() {
                    return Next::Close;
                }
                loop {
                    self.upbuf.clear();
                    self.upbuf.reserve(READ_CHUNK);
                    match upstream.read_buf(&mut self.upbuf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if client.write_all(&self.upbuf).await.is_err() {
                        break;
                    }
                }
                return Next::Close;
            }
        }
        // Bytes past the response would be read as the next one's: not reusable.
        reusable &= self.upbuf.is_empty();
        if reusable {
            let now = Instant::now();
            self.proxy.pool().put_raw(addr, upstream, now.into_std());
            self.done_at = Some(now);
        }
        if resp.close_client {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }
}

/// Reads the response head (passing over 1xx heads) into `out`, rewritten for the client;
/// leaves `buf` holding the body bytes that came with it.
async fn read_response_head(
    upstream: &mut TcpStream,
    buf: &mut BytesMut,
    ready: Ready,
    upstream_name: Option<&hyper::header::HeaderValue>,
    out: &mut Vec<u8>,
) -> Result<Resp, HeadError> {
    let mut got_any = false;
    loop {
        if !buf.is_empty() {
            match parse_response(buf, ready.head, ready.close, upstream_name, out)? {
                Parsed::Head(len, resp) => {
                    buf.advance(len);
                    return Ok(resp);
                }
                Parsed::Informational(len) => {
                    buf.advance(len);
                    continue;
                }
                Parsed::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
                Parsed::Partial => {}
            }
        }
        buf.reserve(READ_CHUNK);
        if upstream.read_buf(buf).await? == 0 {
            return Err(if got_any {
                HeadError::Truncated
            } else {
                HeadError::Closed
            });
        }
        got_any = true;
    }
}

/// A socket whose first reads return bytes already read from it (a request head the fast
/// path passed on to hyper).
struct Rewind<T> {
    prefix: Bytes,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(text: &str) -> (Analysis, String) {
        let mut req = Vec::new();
        let a = analyse(text.as_bytes(), "10.0.0.9", &mut req);
        (a, String::from_utf8(req).unwrap())
    }

    #[test]
    fn a_plain_get_is_rewritten_with_forwarding_headers() {
        let text = "GET /api/status?x=1 HTTP/1.1\r\nHost: gw:8888\r\nConnection: keep-alive, X-Secret\r\n\
             X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 1.2.3.4\r\nAccept: */*\r\n\r\nGET /next";
        let (a, req) = ready(text);
        let Analysis::Ready(r) = a else {
            panic!("not taken: {a:?}")
        };
        assert!(!r.close && !r.head);
        assert_eq!(r.head_len, text.find("GET /next").unwrap());
        assert_eq!(
            req,
            "GET /api/status?x=1 HTTP/1.1\r\nHost: gw:8888\r\nAccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-forwarded-host: gw:8888\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn unusual_requests_go_to_hyper() {
        for text in [
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /__proxy/status HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /__proxy/metrics?x HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(ready(text).0, Analysis::Fallback, "{text:?}");
        }
        let many: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let text = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(ready(&text).0, Analysis::Fallback);
        assert_eq!(ready("GET / HTTP/1.1\r\nHost: a\r\n").0, Analysis::Partial);
    }

    #[test]
    fn connection_close_and_head_are_noted() {
        let Analysis::Ready(r) = ready("HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").0
        else {
            panic!()
        };
        assert!(r.close && r.head);
    }

    #[test]
    fn the_blank_line_check_finds_ends_across_reads() {
        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for cut in 0..text.len() {
            assert!(has_blank_line(text, cut), "cut {cut}");
        }
        assert!(!has_blank_line(b"GET / HTTP/1.1\r\nHost: a\r\n", 0));
        assert!(has_blank_line(b"GET / HTTP/1.1\nHost: a\n\n", 10));
        // A pipelined head after the blank line, a head still open, a lone CR at the end.
        assert!(has_blank_line(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /n",
            0
        ));
        assert!(has_blank_line(b"GET / HTTP/1.1\r\nHost: a\n\nGET /n", 20));
        assert!(!has_blank_line(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nGET",
            0
        ));
        assert!(!has_blank_line(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0));
        assert!(!has_blank_line(b"", 0));
    }

    fn response(text: &str, head: bool, close: bool) -> (Result<Parsed, HeadError>, String) {
        let mut out = Vec::new();
        let name = hyper::header::HeaderValue::from_static("node1");
        let r = parse_response(text.as_bytes(), head, close, Some(&name), &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_are_rewritten_and_framed() {
        let text =
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\
             x-clusterlab-upstream: fake\r\nContent-Type: text/plain\r\n\r\nhello";
        let (r, out) = response(text, false, false);
        let Parsed::Head(len, resp) = r.unwrap() else {
            panic!()
        };
        assert_eq!(len, text.len() - 5);
        assert_eq!(resp.framing, Framing::Length(5));
        assert!(resp.reusable && !resp.close_client);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\
             x-clusterlab-upstream: node1\r\n\r\n"
        );

        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            true,
        );
        let Parsed::Head(_, resp) = r.unwrap() else {
            panic!()
        };
        assert_eq!(resp.framing, Framing::Chunked);
        assert!(resp.close_client);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");

        // HEAD and 304 have no body; no length means "until close"; HTTP/1.0 is not reused.
        let (r, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false);
        assert!(matches!(
            r,
            Ok(Parsed::Head(
                _,
                Resp {
                    framing: Framing::None,
                    ..
                }
            ))
        ));
        let (r, _) = response("HTTP/1.1 304 Not Modified\r\n\r\n", false, false);
        assert!(matches!(
            r,
            Ok(Parsed::Head(
                _,
                Resp {
                    framing: Framing::None,
                    reusable: true,
                    ..
                }
            ))
        ));
        let (r, out) = response("HTTP/1.1 200 OK\r\n\r\n", false, false);
        assert!(matches!(
            r,
            Ok(Parsed::Head(
                _,
                Resp {
                    framing: Framing::Close,
                    reusable: false,
                    close_client: true
                }
            ))
        ));
        assert!(out.contains("connection: close"), "{out}");
        let (r, _) = response("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, false);
        assert!(matches!(
            r,
            Ok(Parsed::Head(
                _,
                Resp {
                    reusable: false,
                    ..
                }
            ))
        ));
        let (r, _) = response(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
            false,
            false,
        );
        assert!(matches!(r, Ok(Parsed::Informational(25))));
    }

    #[test]
    fn bad_response_heads_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            assert!(response(text, false, false).0.is_err(), "{text:?}");
        }
    }

    #[test]
    fn fields_are_told_apart_by_name_in_any_case() {
        for (name, kind) in [
            ("Host", Field::Host),
            ("HOST", Field::Host),
            ("hosT", Field::Host),
            ("Content-Length", Field::ContentLength),
            ("transfer-encoding", Field::TransferEncoding),
            ("Connection", Field::Connection),
            ("Upgrade", Field::Upgrade),
            ("Expect", Field::Expect),
            ("TE", Field::HopByHop),
            ("Trailer", Field::HopByHop),
            ("Keep-Alive", Field::HopByHop),
            ("Proxy-Connection", Field::HopByHop),
            ("Proxy-Authenticate", Field::HopByHop),
            ("Proxy-Authorization", Field::HopByHop),
            ("X-Forwarded-For", Field::XForwardedFor),
            ("x-forwarded-host", Field::XForwardedHost),
            ("X-Forwarded-Proto", Field::XForwardedProto),
            ("X-Clusterlab-Upstream", Field::Upstream),
            // Same lengths as the names above, other names.
            ("Hose", Field::Other),
            ("Accept", Field::Other),
            ("Referer", Field::Other),
            ("User-Agent", Field::Other),
            ("Content-Type", Field::Other),
            ("Accept-Encoding", Field::Other),
            ("Content-Location", Field::Other),
            ("x-forwarded-hosts", Field::Other),
            ("", Field::Other),
        ] {
            assert_eq!(classify(name.as_bytes()), kind, "{name}");
        }
    }

    #[test]
    fn content_lengths_are_digits_without_overflow() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 318 "), Some(318));
        assert_eq!(parse_length(b"0005"), Some(5));
        assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"18446744073709551616",
            b"99999999999999999999999",
            b"+5",
            b"-1",
            b"5 5",
            b"0x10",
            b"1e3",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn kept_lines_are_copied_as_they_came_and_bare_lfs_rewritten() {
        // Spacing kept as sent; a line ending in a bare LF goes out with CRLF.
        let text =
            "GET / HTTP/1.1\r\nHost:gw\r\nAccept:  */*  \r\nKeep-Alive: 5\r\nX-A: 1\nX-B: 2\r\n\n";
        let (a, req) = ready(text);
        let Analysis::Ready(r) = a else {
            panic!("not taken: {a:?}")
        };
        assert_eq!(r.head_len, text.len());
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost:gw\r\nAccept:  */*  \r\nX-A: 1\r\nX-B: 2\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-host: gw\r\nx-forwarded-proto: http\r\n\r\n"
        );
        assert!(!req.contains("\n\n") && !req.replace("\r\n", "").contains('\n'));

        // The forwarding fields the client sent are replaced, wherever they are.
        let (_, req) = ready(
            "GET / HTTP/1.1\r\nX-Forwarded-Host: evil\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\
             Content-Length: 0\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
        );
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\
             x-forwarded-for: 1.1.1.1, 10.0.0.9\r\nx-forwarded-host: a\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn response_lines_are_copied_in_runs_and_named_fields_dropped() {
        let text = "HTTP/1.1 200 OK\nServer: up\r\nx-a: 1\r\nKeep-Alive: timeout=5\r\nConnection: X-A, keep-alive\r\n\
                    Content-Length:3\r\nDate: today\n\r\nabc";
        let (r, out) = response(text, false, false);
        let Parsed::Head(len, resp) = r.unwrap() else {
            panic!()
        };
        assert_eq!(len, text.len() - 3);
        assert_eq!(resp.framing, Framing::Length(3));
        assert!(resp.reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length:3\r\nDate: today\r\n\
             x-clusterlab-upstream: node1\r\n\r\n"
        );
        // No fields at all.
        let (r, out) = response("HTTP/1.1 204 No Content\r\n\r\n", false, false);
        assert!(matches!(r, Ok(Parsed::Head(27, _))));
        assert_eq!(
            out,
            "HTTP/1.1 204 No Content\r\nx-clusterlab-upstream: node1\r\n\r\n"
        );
    }

    #[test]
    fn the_chunk_scanner_finds_the_end_at_every_split() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200");
        for cut in 0..=body.len() {
            let mut s = ChunkScanner::new();
            let a = s.feed(&with_next[..cut]).unwrap();
            assert_eq!(a, cut);
            let b = s.feed(&with_next[cut..]).unwrap();
            assert!(s.done(), "cut {cut}");
            assert_eq!(a + b, body.len(), "cut {cut}");
        }
        let mut s = ChunkScanner::new();
        assert_eq!(s.feed(b"0\r\n\r\n").unwrap(), 5);
        assert!(s.done());
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"1234567890abcdef0\r\n",
            b"\r\n",
        ] {
            assert!(ChunkScanner::new().feed(bad).is_err(), "{bad:?}");
        }
    }
}
