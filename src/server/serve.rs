//! The listener's accept loop: HTTP/1.1 (over TLS when configured) with the bounds a
//! server on a shared network needs, which `axum::serve` does not set. A client that
//! opens connections and sends nothing, or sends its headers a byte at a time, holds a
//! connection for [`HEADER_READ_TIMEOUT`] at most (idle keep-alive connections too); one
//! address holds at most [`CONNECTIONS_PER_PEER`] connections and all together at most
//! [`MAX_CONNECTIONS`], so that the server always has file descriptors left for the
//! clients that behave. Connections past a cap are closed at once.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client has to send a request's headers, from the moment the server waits
/// for them (an idle keep-alive connection is closed after this long, too). Clients keep
/// idle connections for less ([`crate::client`]), so they never reuse one being closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, once the server stops, a connection may take to finish the request it is in
/// (a client half-way through sending one is not waited for past this).
const DRAIN: Duration = Duration::from_secs(5);
/// Connections open at once, all clients together.
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections open at once from one IP address: a worker holds a few per slot, so this
/// leaves room for a machine running several large workers.
pub const CONNECTIONS_PER_PEER: usize = 512;

/// Bounds on open connections, per peer address and in all.
#[derive(Debug, Clone)]
pub struct ConnectionCaps {
    total: usize,
    per_peer: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// What the accept loop bounds.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub caps: ConnectionCaps,
    pub header_read_timeout: Duration,
}

/// One open connection's place; dropping it gives the place back.
pub struct ConnectionSlot {
    caps: ConnectionCaps,
    peer: IpAddr,
}

impl ConnectionCaps {
    pub fn new(total: usize, per_peer: usize) -> Self {
        ConnectionCaps {
            total,
            per_peer,
            open: Arc::default(),
        }
    }

    /// A place for a connection from `peer`, or why there is none.
    pub fn admit(&self, peer: IpAddr) -> Result<ConnectionSlot, &'static str> {
        let mut open = self.open.lock().expect("connection caps lock");
        if open.values().sum::<usize>() >= self.total {
            return Err("the server holds its most connections");
        }
        let n = open.entry(peer).or_default();
        if *n >= self.per_peer {
            return Err("this address holds its most connections");
        }
        *n += 1;
        Ok(ConnectionSlot {
            caps: self.clone(),
            peer,
        })
    }

    /// Connections `peer` holds now.
    pub fn held_by(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().expect("connection caps lock");
        open.get(&peer).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().expect("connection caps lock");
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Serve `router` on `listener` until `stop`: then stop accepting, let every connection
/// finish the request it is in within [`DRAIN`] (long-polls and streams end on the same
/// token at once), and return once all are closed.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    bounds: Bounds,
    stop: CancellationToken,
) {
    let Bounds {
        caps,
        header_read_timeout,
    } = bounds;
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // pause rather than spin, and go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        _ = stop.cancelled() => break,
                    }
                }
            },
            _ = stop.cancelled() => break,
        };
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%peer, why, "connection refused");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        connections.spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, peer, router, header_read_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, header_read_timeout, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    header_read_timeout: Duration,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connection =
        builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(DRAIN, connection).await {
                Ok(served) => served,
                Err(_) => {
                    tracing::debug!(%peer, "connection closed: still open when the drain ended");
                    return;
                }
            }
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_peer_and_in_all_and_give_places_back() {
        let caps = ConnectionCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = caps.admit(a).unwrap();
        let _second = caps.admit(a).unwrap();
        assert!(caps.admit(a).is_err(), "a third from one peer");
        let _third = caps.admit(b).unwrap();
        assert_eq!(
            caps.admit(b).err(),
            Some("the server holds its most connections")
        );
        drop(first);
        assert_eq!(caps.held_by(a), 1);
        let _again = caps.admit(a).unwrap();
    }
}
