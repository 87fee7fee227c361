//! A byte relay: every accepted connection is joined to a new connection to one fixed address,
//! and bytes are copied both ways with no HTTP handling at all.
//!
//! It is not a way to run the gateway (it follows no leader, holds nothing, retries nothing):
//! `harness bench proxy` starts one beside the proxy, in the same container, to measure the
//! cost of the extra network hop alone. Whatever a proxy at that place does, it cannot beat
//! a relay that does nothing but copy, so the relay's figure is the floor against which the
//! proxy's own work is judged.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};

/// Relays connections accepted on `listener` to `to` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    to: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (mut client, peer) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let mut upstream = match TcpStream::connect(to).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, %to, error = %e, "relay could not connect");
                    return;
                }
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%peer, error = %e, "relayed connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_go_both_ways_unchanged() {
        // An upstream that answers every chunk with the same bytes reversed.
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = upstream.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                buf[..n].reverse();
                s.write_all(&buf[..n]).await.unwrap();
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let relay = tokio::spawn(run(listener, to, stop.clone().cancelled_owned()));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"cba");
        stop.cancel();
        relay.await.unwrap();
    }
}
