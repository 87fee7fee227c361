//! Limits on client connections: how many may be open, how long a request head may take, and
//! how long a connection may sit with no byte moving.
//!
//! - [`Slots`] caps the open client connections. A connection beyond the cap is accepted,
//!   answered `503` with `Connection: close` (best effort, never waiting on the client) and
//!   closed; refusals are logged at most once a second with their count.
//! - [`Watched`] wraps a client socket, counts the reads and writes that move bytes, and holds the
//!   connection's slot for as long as the socket lives (a WebSocket tunnel keeps it too).
//! - [`watchdog`] resolves when a connection has to be closed: no complete byte before the
//!   header timeout after accept, or nothing moved either way for the idle timeout. The
//!   header timeout of every later request head is the fast path's (`crate::fast`), or
//!   hyper's once a connection went to it; both run from the moment the connection is ready
//!   for the next request, so they also end idle keep-alive connections.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The cap on open client connections and how many were refused.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    open: AtomicUsize,
    refused: AtomicU64,
    /// When a refusal was last logged and how many were refused since.
    log: Mutex<(Option<Instant>, u64)>,
}

/// One open client connection; frees its place when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            log: Mutex::new((None, 0)),
        })
    }

    /// A place for one more connection, or `None` (counted and logged) at the cap.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.log_refusal();
            return None;
        }
        Some(Slot(self.clone()))
    }

    fn log_refusal(&self) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        let now = Instant::now();
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            tracing::warn!(
                max = self.max,
                refused = log.1,
                "connection cap reached: refusing new connections with 503"
            );
            *log = (Some(now), 0);
        }
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// What a refused connection is told before it is closed.
pub const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 62\r\n\r\n503 Service Unavailable: the gateway has too many connections\n";

/// Whether bytes moved on a connection: a count of reads and writes that moved any, bumped
/// with no clock reading (the watchdog reads the clock only when it wakes).
#[derive(Debug, Default)]
pub struct Activity {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    fn bump(counter: &AtomicU64) {
        // One task at a time touches a connection: a plain load and store is enough.
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn moves(&self) -> u64 {
        self.reads
            .load(Ordering::Relaxed)
            .wrapping_add(self.writes.load(Ordering::Relaxed))
    }

    fn read_any(&self) -> bool {
        self.reads.load(Ordering::Relaxed) > 0
    }
}

/// A client socket that notes its activity and holds its connection slot.
#[derive(Debug)]
pub struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    _slot: Option<Slot>,
}

impl<T> Watched<T> {
    pub fn new(io: T, activity: Arc<Activity>, slot: Option<Slot>) -> Watched<T> {
        Watched {
            io,
            activity,
            _slot: slot,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            Activity::bump(&self.activity.reads);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Activity::bump(&self.activity.writes);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Activity::bump(&self.activity.writes);
        }
        r
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

/// Why [`watchdog`] ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Not one byte arrived within the header timeout of the accept.
    Silent,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Resolves when the connection watched by `activity` is to be closed: silent for `header`
/// after accept, or with no byte moving for `idle` after that. It wakes every quarter of
/// `idle` to look, so an idle connection goes between `idle` and 1.25 × `idle` after its last
/// byte.
pub async fn watchdog(activity: &Activity, header: Duration, idle: Duration) -> Expired {
    let start = tokio::time::Instant::now();
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut seen = activity.moves();
    let mut since = start;
    let sleep = tokio::time::sleep(header.min(tick));
    tokio::pin!(sleep);
    loop {
        (&mut sleep).await;
        let now = tokio::time::Instant::now();
        if !activity.read_any() {
            if now >= start + header {
                return Expired::Silent;
            }
        } else {
            let moves = activity.moves();
            if moves != seen {
                seen = moves;
                since = now;
            } else if now >= since + idle {
                return Expired::Idle;
            }
        }
        let next = if activity.read_any() {
            now + tick
        } else {
            (start + header).min(now + tick)
        };
        sleep.as_mut().reset(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_and_free() {
        let s = Slots::new(2);
        let a = s.take().unwrap();
        let _b = s.take().unwrap();
        assert!(s.take().is_none());
        assert_eq!((s.open(), s.refused()), (2, 1));
        drop(a);
        assert_eq!(s.open(), 1);
        assert!(s.take().is_some());
    }

    #[test]
    fn refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
    }

    #[tokio::test]
    async fn watchdog_bounds_silence_then_idleness() {
        let (header, idle) = (Duration::from_millis(100), Duration::from_millis(300));
        let a = Activity::new();
        let t = tokio::time::Instant::now();
        assert_eq!(watchdog(&a, header, idle).await, Expired::Silent);
        assert!(t.elapsed() >= header, "{:?}", t.elapsed());

        // Bytes read: from then on the idle limit counts, from the last activity.
        let a = Activity::new();
        Activity::bump(&a.reads);
        let t = tokio::time::Instant::now();
        assert_eq!(watchdog(&a, header, idle).await, Expired::Idle);
        let took = t.elapsed();
        assert!(took >= idle, "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }
}
