//! Keep-alive connections to upstreams, so the proxy does not pay a TCP handshake per
//! request. The forwarder does its own connecting (rather than using a client with a built-in
//! pool) because it has to tell "could not connect" (nothing was sent: safe to retry
//! anything) from "failed after sending" (retry only idempotent requests), and race each
//! phase against a leader switch.

use crate::Body;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// An idle connection older than this is dropped rather than reused: the upstream may be
/// about to close it, and a request racing that close would need a retry.
const MAX_IDLE: Duration = Duration::from_secs(20);
/// Idle connections kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 64;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {ms} ms")]
    Timeout { addr: SocketAddr, ms: u128 },
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// An idle connection and since when it is idle.
type Idle = (http1::SendRequest<Body>, Instant);

/// Idle connections by upstream address: hyper's (for the general path) and plain sockets
/// (for the fast path of [`crate::fast`], which speaks HTTP/1.1 on them itself). The plain
/// sockets are in a short list of upstreams, looked through in order: there is one upstream
/// at a time (two for a moment after a switch), so a lookup is one address comparison, where
/// a map would hash the address on every request.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
    raw: Mutex<Vec<RawList>>,
}

/// The idle plain sockets to one upstream, most recent last.
#[derive(Debug)]
struct RawList {
    addr: SocketAddr,
    idle: Vec<(TcpStream, Instant)>,
}

impl Pool {
    /// An idle connection to `addr` if one is usable, else a new one.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<http1::SendRequest<Body>, ConnectError> {
        if let Some(s) = self.take_idle(addr) {
            return Ok(s);
        }
        connect(addr, connect_timeout).await
    }

    /// A ready idle connection to `addr`, if there is one.
    pub fn take_idle(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        prune(list);
        // Connections still streaming a response stay listed until they are ready again.
        let i = list.iter().rposition(|(s, _)| s.is_ready())?;
        Some(list.swap_remove(i).0)
    }

    /// Lists a connection for reuse. It may still be streaming its last response: it is
    /// handed out again only once that is read through (hyper then marks it ready), which
    /// saves a task per request that would wait for that moment.
    pub fn put(&self, addr: SocketAddr, sender: http1::SendRequest<Body>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(addr).or_default();
        prune(list);
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push((sender, Instant::now()));
        }
    }

    /// A plain idle socket to `addr` that has not been closed by the upstream, if any; `now`
    /// is the caller's clock reading.
    pub fn take_raw(&self, addr: SocketAddr, now: Instant) -> Option<TcpStream> {
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        let list = &mut raw.iter_mut().find(|l| l.addr == addr)?.idle;
        while let Some((s, since)) = list.pop() {
            if now.duration_since(since) >= MAX_IDLE {
                // The rest are older still.
                list.clear();
                return None;
            }
            // An idle keep-alive socket has nothing to read: a readable one was closed by the
            // upstream (or sent garbage). `try_read` costs no system call unless the reactor
            // saw it become readable.
            match s.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(s),
                _ => continue,
            }
        }
        None
    }

    /// Lists a plain socket for reuse; it must be between responses, with nothing unread.
    /// `now` is the caller's clock reading.
    pub fn put_raw(&self, addr: SocketAddr, stream: TcpStream, now: Instant) {
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        let i = match raw.iter().position(|l| l.addr == addr) {
            Some(i) => i,
            None => {
                raw.push(RawList {
                    addr,
                    idle: Vec::new(),
                });
                raw.len() - 1
            }
        };
        let list = &mut raw[i].idle;
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            // Most recent last: `take_raw` pops the freshest.
            list.push((stream, now));
        }
    }

    /// Drops idle connections to every upstream but `keep` (after a switch).
    pub fn retain_only(&self, keep: Option<SocketAddr>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|addr, _| Some(*addr) == keep);
        drop(idle);
        let mut raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        raw.retain(|l| Some(l.addr) == keep);
    }

    /// Number of idle connections (for tests).
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum::<usize>() + raw.iter().map(|l| l.idle.len()).sum::<usize>()
    }
}

/// Drops closed connections and those idle for too long (one clock reading for all).
fn prune(list: &mut Vec<Idle>) {
    let now = Instant::now();
    list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < MAX_IDLE);
}

/// A new plain socket to `addr` (no delay), within `timeout`.
pub async fn connect_raw(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_) => {
            return Err(ConnectError::Timeout {
                addr,
                ms: timeout.as_millis(),
            })
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A new connection to `addr`, within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<http1::SendRequest<Body>, ConnectError> {
    let stream = connect_raw(addr, timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}
