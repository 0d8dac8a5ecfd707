//! The TLS listener and what a connection may hold: Keyhold drives hyper itself (poem's
//! `Server` has no handshake or header-read timeout, no per-address cap and no `TCP_NODELAY`),
//! and hands each request to the poem routes of [`crate::http`].
//!
//! - At most `server.max_connections` connections at once: the next is accepted when one
//!   closes (it waits in the kernel's backlog until then).
//! - At most `server.max_connections_per_ip` of them from one client network (IPv6 grouped by
//!   `limits.ipv6_prefix`); one more is closed as soon as it is accepted. Trusted proxies are
//!   exempt: every client behind them arrives from their address.
//! - `TCP_NODELAY` on every socket: a small answer leaves at once instead of waiting for the
//!   client's delayed ACK (40 ms stalls over HTTP/2, where responses share a connection).
//! - The TLS handshake must end within `server.tls_handshake_timeout`; a request head
//!   within `server.header_read_timeout` from when the connection waits for one, which also
//!   closes an HTTP/1.1 connection idle between requests; and a connection with no bytes in
//!   either direction for `server.idle_timeout` is closed (HTTP/2 included).
//! - HTTP/2: `server.http2_max_concurrent_streams`, a header list of at most
//!   `server.max_header_bytes` (HTTP/1.1: the same bound on the request head), and hyper's
//!   protections against rapid resets (pending-accept and locally-reset stream caps).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::auth::limits::client_network;
use crate::config::ServerConfig;

/// What the connection policy needs from the configuration.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub tls_handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub max_header_bytes: usize,
    pub shutdown_timeout: Duration,
    pub trusted_proxies: Vec<IpAddr>,
    pub ipv6_prefix: u8,
}

impl ConnectionPolicy {
    pub fn new(server: &ServerConfig, ipv6_prefix: u8) -> ConnectionPolicy {
        ConnectionPolicy {
            max_connections: server.max_connections,
            max_connections_per_ip: server.max_connections_per_ip,
            tls_handshake_timeout: server.tls_handshake_timeout,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
            max_header_bytes: server.max_header_bytes,
            shutdown_timeout: server.shutdown_timeout,
            trusted_proxies: server.trusted_proxies.clone(),
            ipv6_prefix,
        }
    }
}

/// The TLS server configuration for a PEM certificate chain and key, offering HTTP/2 and
/// HTTP/1.1.
pub fn tls_config(cert_pem: &str, key_pem: &str) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the private key does not parse: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections held per client network.
#[derive(Default)]
struct PerNetwork {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One of a network's connections; given back when the connection ends.
struct NetworkSlot {
    table: Arc<PerNetwork>,
    network: IpAddr,
}

impl PerNetwork {
    fn take(self: &Arc<Self>, network: IpAddr, max: usize) -> Option<NetworkSlot> {
        let mut held = self.held.lock();
        let count = held.entry(network).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(NetworkSlot {
            table: self.clone(),
            network,
        })
    }
}

impl Drop for NetworkSlot {
    fn drop(&mut self) {
        let mut held = self.table.held.lock();
        if let Some(count) = held.get_mut(&self.network) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.network);
            }
        }
    }
}

/// Serves `endpoint` over TLS on `listener` until `stop` turns true; then stops accepting,
/// lets requests in flight finish for at most `shutdown_timeout`, and cuts the rest.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    endpoint: BoxEndpoint<'static, Response>,
    policy: ConnectionPolicy,
    auth: Arc<Auth>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let endpoint = Arc::new(endpoint);
    let slots = Arc::new(Semaphore::new(policy.max_connections.max(1)));
    let per_network = Arc::new(PerNetwork::default());
    let tracker = TaskTracker::new();
    let graceful = CancellationToken::new();
    let force = CancellationToken::new();
    let policy = Arc::new(policy);
    loop {
        let stopping = async {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        let accepted = tokio::select! {
            biased;
            _ = stopping => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((tcp, peer, slot)) = accepted else {
            continue;
        };
        let exempt = policy.trusted_proxies.contains(&peer.ip());
        let network_slot = if exempt {
            None
        } else {
            let network = client_network(peer.ip(), policy.ipv6_prefix);
            match per_network.take(network, policy.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    auth.metrics
                        .count("keyhold_connections_refused_total", &[("reason", "per_ip")]);
                    tracing::debug!(network = %network, "server.max_connections_per_ip reached");
                    continue;
                }
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            tcp,
            peer,
            local,
            acceptor: acceptor.clone(),
            endpoint: endpoint.clone(),
            policy: policy.clone(),
            auth: auth.clone(),
            graceful: graceful.clone(),
            force: force.clone(),
        };
        tracker.spawn(async move {
            connection.serve().await;
            drop((slot, network_slot));
        });
    }
    drop(listener);
    graceful.cancel();
    tracker.close();
    if tokio::time::timeout(policy.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "server.shutdown_timeout passed; closing the connections still open"
        );
        force.cancel();
        tracker.wait().await;
    }
    Ok(())
}

/// The next connection, once a slot is free. `None` when the accept failed: running out of
/// file descriptors is retried after a pause rather than in a busy loop.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((tcp, peer)) => Some((tcp, peer, slot)),
        Err(e) => {
            tracing::warn!(error = %e, "accepting a connection failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

struct Connection {
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    endpoint: Arc<BoxEndpoint<'static, Response>>,
    policy: Arc<ConnectionPolicy>,
    auth: Arc<Auth>,
    graceful: CancellationToken,
    force: CancellationToken,
}

impl Connection {
    async fn serve(self) {
        let policy = &self.policy;
        let handshake =
            tokio::time::timeout(policy.tls_handshake_timeout, self.acceptor.accept(self.tcp));
        let tls = tokio::select! {
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    self.auth.metrics.count(
                        "keyhold_connections_refused_total",
                        &[("reason", "handshake_timeout")],
                    );
                    tracing::debug!(peer = %self.peer, "server.tls_handshake_timeout passed");
                    return;
                }
            },
            _ = self.graceful.cancelled() => return,
        };
        let (local, remote) = (
            LocalAddr(Addr::SocketAddr(self.local)),
            RemoteAddr(Addr::SocketAddr(self.peer)),
        );
        let endpoint = self.endpoint.clone();
        let service = hyper::service::service_fn(move |request| {
            let endpoint = endpoint.clone();
            let request =
                poem::Request::from((request, local.clone(), remote.clone(), Scheme::HTTPS));
            async move {
                let response = endpoint.get_response(request).await;
                Ok::<_, Infallible>(hyper::Response::from(response))
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(policy.header_read_timeout)
            .max_buf_size(policy.max_header_bytes.max(8192));
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(policy.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(policy.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(256);
        let io = TokioIo::new(Idle::new(tls, policy.idle_timeout));
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = self.graceful.cancelled() => {}
        }
        connection.as_mut().graceful_shutdown();
        tokio::select! {
            _ = connection => {}
            _ = self.force.cancelled() => {}
        }
    }
}

/// A stream that fails once no byte has moved either way for `limit`.
struct Idle<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, limit: Duration) -> Idle<S> {
        Idle {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn moved(&mut self) {
        let next = Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// What a write of the inner stream gives, seen by the idle clock.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match poll {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "server.idle_timeout passed")
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
