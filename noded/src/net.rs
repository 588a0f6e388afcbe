//! The gRPC listener: accepted TCP connections wrapped so the node counts open connections and
//! the bytes that cross them (`cyxcloud_active_connections`, `cyxcloud_bandwidth_{in,out}_bytes`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// HTTP/2 flow-control windows and frame size for shard transfers. h2's defaults (64 KiB
/// windows, 16 KiB frames) cost a WINDOW_UPDATE round trip every 64 KiB and cap a multi-MiB
/// shard stream far below disk speed; clients streaming shards should use the same values
/// ([`endpoint`]).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;

/// A client endpoint tuned like the node's server; an `https://` peer is verified against
/// `ca_pem`, the cluster CA.
pub fn endpoint(url: &str, ca_pem: Option<&[u8]>) -> Result<tonic::transport::Endpoint, String> {
    Ok(cyxcloud_proto::channel::endpoint(url, ca_pem)?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true))
}

/// A connection (TCP, or TLS over TCP) that reports its lifetime and traffic to the metrics
/// (over TLS, the bytes inside the encryption).
pub struct CountedStream<S = TcpStream> {
    inner: S,
    metrics: Metrics,
}

impl<S> CountedStream<S> {
    fn new(inner: S, metrics: Metrics) -> Self {
        metrics.active_connections.inc();
        CountedStream { inner, metrics }
    }
}

impl<S> Drop for CountedStream<S> {
    fn drop(&mut self) {
        self.metrics.active_connections.dec();
    }
}

impl<S: Connected> Connected for CountedStream<S> {
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> S::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.metrics.bandwidth_in_bytes.inc_by(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.bandwidth_out_bytes.inc_by(*n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.metrics.bandwidth_out_bytes.inc_by(*n as u64);
        }
        r
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

/// Accepted connections of `listener`, counted.
pub fn incoming(
    listener: TcpListener,
    metrics: Metrics,
) -> impl Stream<Item = io::Result<CountedStream>> + Send + 'static {
    futures::stream::unfold((listener, metrics), |(l, m)| async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    let c = CountedStream::new(s, m.clone());
                    return Some((Ok(c), (l, m)));
                }
                // Transient accept errors (EMFILE, ECONNABORTED) must not end the server.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Connections of `listener` past their TLS handshake, counted.
pub fn incoming_tls(
    listener: TcpListener,
    tls: &cyxcloud_daemon::tls::ServerTls,
    metrics: Metrics,
) -> io::Result<
    impl Stream<Item = io::Result<CountedStream<tokio_rustls::server::TlsStream<TcpStream>>>>
    + Send
    + 'static,
> {
    let l = tls.listen(listener)?;
    Ok(futures::stream::unfold(
        (l, metrics),
        |(mut l, m)| async move {
            let (s, _) = l.next().await?;
            Some((Ok(CountedStream::new(s, m.clone())), (l, m)))
        },
    ))
}
