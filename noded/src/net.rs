//! The gRPC listener: accepted TCP connections wrapped so the node counts open connections and
//! the bytes that cross them (`cyxcloud_active_connections`, `cyxcloud_bandwidth_{in,out}_bytes`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::Metrics;

/// HTTP/2 flow-control windows and frame size for shard transfers. h2's defaults (64 KiB
/// windows, 16 KiB frames) cost a WINDOW_UPDATE round trip every 64 KiB and cap a multi-MiB
/// shard stream far below disk speed; clients streaming shards should use the same values
/// ([`endpoint`]).
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
pub const MAX_FRAME: u32 = 1 << 20;

/// A client endpoint tuned like the node's server.
pub fn endpoint(url: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true))
}

/// A TCP connection that reports its lifetime and traffic to the metrics.
pub struct CountedStream {
    inner: TcpStream,
    metrics: Metrics,
}

impl CountedStream {
    fn new(inner: TcpStream, metrics: Metrics) -> Self {
        metrics.active_connections.inc();
        CountedStream { inner, metrics }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.metrics.active_connections.dec();
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountedStream {
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

impl AsyncWrite for CountedStream {
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
