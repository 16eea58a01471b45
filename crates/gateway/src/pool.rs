//! Keep-alive HTTP/1.1 connections to one instance. A request takes an
//! idle connection (or opens one within its route's connect timeout) and
//! drives it itself: the connection's reads and writes happen in the
//! request's own task, with no hand-over to a connection task and back
//! (one wake-up fewer per request, each costing a pass of the run queue).
//! The connection comes back when the response body has been read to its
//! end. A request that a stale connection closed on before a byte of it
//! was written is sent again on a new connection: that is safe for any
//! method.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use http::StatusCode;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Idle connections kept per instance; more are closed.
pub const IDLE_PER_INSTANCE: usize = 64;
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: no connection within {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// What reads and writes one connection (hyper's, whose type is not
/// named).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// A connection: the side requests are sent on, and its driver, polled by
/// whoever holds the connection.
struct Conn {
    sender: SendRequest<Body>,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
}

/// Lets a connection read and write what it can. False once it has ended
/// (closed by the instance, or broken).
fn drive(driver: &mut Option<Driver>, cx: &mut Context<'_>) -> bool {
    let Some(running) = driver else {
        return false;
    };
    match running.as_mut().poll(cx) {
        Poll::Pending => true,
        Poll::Ready(ended) => {
            if let Err(error) = ended {
                tracing::debug!(%error, "upstream connection ended");
            }
            *driver = None;
            false
        }
    }
}

/// Polls the driver with a waker that wakes no one: for when the holder
/// is about to do what would wake it (send a request, ask the body for
/// data) and drives the connection itself right after. The wake-up would
/// only poll the request's whole task once more for nothing; readiness is
/// not lost, the runtime keeps it for the next poll.
fn quiet(driver: &mut Option<Driver>) {
    drive(driver, &mut Context::from_waker(std::task::Waker::noop()));
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.driver.is_none() || self.sender.is_closed()
    }

    /// Ready for a request: the previous exchange done, the connection
    /// open.
    async fn ready(&mut self) -> bool {
        let ready = std::future::poll_fn(|cx| {
            let open = drive(&mut self.driver, cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(ready) => Poll::Ready(ready.is_ok() && open),
                Poll::Pending if !open => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // Sending wakes the driver; `exchange` drives it.
        quiet(&mut self.driver);
        ready
    }

    /// Sends `request` and drives the connection until the answer's head
    /// has arrived.
    async fn exchange(
        &mut self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Incoming>, hyper::client::conn::TrySendError<http::Request<Body>>>
    {
        let mut answer = std::pin::pin!(self.sender.try_send_request(request));
        let answer = std::future::poll_fn(|cx| {
            // Driving first writes the request and reads what came back;
            // a connection that ended drops the answer's sender with it,
            // so that the answer is then ready (an error).
            drive(&mut self.driver, cx);
            answer.as_mut().poll(cx)
        })
        .await;
        // The body's first read asks the driver for data; `PooledBody`
        // drives it.
        quiet(&mut self.driver);
        answer
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// One instance's connections.
pub struct Pool {
    authority: Authority,
    /// `Host` for requests that name none (HTTP/2 clients, health checks).
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("idle", &self.lock().len())
            .finish()
    }
}

impl Pool {
    pub fn new(authority: Authority) -> Arc<Self> {
        let host =
            HeaderValue::from_str(authority.as_str()).expect("an authority is a header value");
        Arc::new(Self {
            authority,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `request` (origin-form URI; the instance's `Host` unless it
    /// names one) and returns the answer, its body giving the connection
    /// back once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: http::Request<Body>,
        connect_timeout: Duration,
    ) -> Result<http::Response<PooledBody>, SendError> {
        if !request.headers().contains_key(header::HOST) {
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
        }
        // A reused connection may have been closed by the upstream while
        // idle; a request it refused unsent goes once more, on a new one.
        // Connecting is rare and its future large: boxed where it runs.
        for fresh in [false, true] {
            let mut conn = match fresh {
                false => match self.take_idle().await {
                    Some(conn) => conn,
                    None => Box::pin(self.connect(connect_timeout)).await?,
                },
                true => Box::pin(self.connect(connect_timeout)).await?,
            };
            match conn.exchange(request).await {
                Ok(response) => return Ok(self.pooled(response, conn)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(SendError::Http(failed.into_error())),
                },
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The freshest idle connection ready for a request, if any.
    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if since.elapsed() > IDLE_TIMEOUT || conn.is_closed() {
                continue;
            }
            if conn.ready().await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, SendError> {
        let connecting = tokio::net::TcpStream::connect(self.authority.as_str());
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(connection.with_upgrades())),
        })
    }

    fn pooled(
        self: &Arc<Self>,
        response: http::Response<Incoming>,
        mut conn: Conn,
    ) -> http::Response<PooledBody> {
        // A switched connection belongs to the upgrade from now on: its
        // driver runs on its own until it hands the connection over.
        let giveback = match response.status() {
            StatusCode::SWITCHING_PROTOCOLS => {
                let mut driver = conn.driver.take();
                tokio::spawn(std::future::poll_fn(move |cx| {
                    match drive(&mut driver, cx) {
                        true => Poll::Pending,
                        false => Poll::Ready(()),
                    }
                }));
                None
            }
            _ => Some((conn, self.clone())),
        };
        let (parts, inner) = response.into_parts();
        let mut body = PooledBody { inner, giveback };
        body.give_back_if_done();
        http::Response::from_parts(parts, body)
    }

    fn give_back(&self, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < IDLE_PER_INSTANCE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`].
    pub fn evict_idle(&self) {
        self.lock()
            .retain(|idle| idle.since.elapsed() <= IDLE_TIMEOUT && !idle.conn.is_closed());
    }
}

/// A response body that drives its connection while it is read, and
/// gives the connection back when read to the end (dropped before, it
/// closes the connection: what was left unread would be in the way of the
/// next response).
pub struct PooledBody {
    inner: Incoming,
    giveback: Option<(Conn, Arc<Pool>)>,
}

impl PooledBody {
    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some((conn, pool)) = self.giveback.take()
        {
            pool.give_back(conn);
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.giveback {
            None => Pin::new(&mut this.inner).poll_frame(cx),
            Some((conn, _)) => {
                // Asking for data wakes the driver, and the data it hands
                // over wakes the asker: both are here, so the first look
                // registers no one; if nothing was buffered, the connection
                // reads more and the body is looked at again.
                let quiet = &mut Context::from_waker(std::task::Waker::noop());
                match Pin::new(&mut this.inner).poll_frame(quiet) {
                    Poll::Pending => {
                        drive(&mut conn.driver, cx);
                        Pin::new(&mut this.inner).poll_frame(cx)
                    }
                    ready => ready,
                }
            }
        };
        match &polled {
            Poll::Ready(None) => {
                if let Some((conn, pool)) = this.giveback.take() {
                    pool.give_back(conn);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.give_back_if_done(),
            Poll::Ready(Some(Err(_))) => this.giveback = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How an instance answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// `ok`, keeping the connection.
        Ok,
        /// `ok`, then closing the connection (as an instance whose
        /// keep-alive timeout passed does).
        OkThenClose,
        /// A body of `CHUNKS` × `CHUNK` bytes, written a chunk at a time.
        Large,
    }

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;

    /// An instance answering each request as told, counting the
    /// connections it took.
    async fn instance(answer: Answer) -> (Arc<Pool>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    loop {
                        let Ok(n @ 1..) = stream.read(&mut buffer).await else {
                            return;
                        };
                        head.extend_from_slice(&buffer[..n]);
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            if write(&mut stream, answer).await.is_err()
                                || matches!(answer, Answer::OkThenClose)
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (Pool::new(authority), accepted)
    }

    async fn write(stream: &mut tokio::net::TcpStream, answer: Answer) -> std::io::Result<()> {
        if !matches!(answer, Answer::Large) {
            return stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            CHUNK * CHUNKS
        );
        stream.write_all(head.as_bytes()).await?;
        for _ in 0..CHUNKS {
            stream.write_all(&[b'x'; CHUNK]).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    async fn get(pool: &Arc<Pool>) -> String {
        let request = http::Request::get("/").body(Body::empty()).unwrap();
        let response = pool.send(request, Duration::from_secs(1)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_request_after_request() {
        let (pool, accepted) = instance(Answer::Ok).await;
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_while_idle_is_not_used_again() {
        let (pool, accepted) = instance(Answer::OkThenClose).await;
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
            // The instance's close arrives while the connection is idle.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_arriving_over_time_is_read_whole_and_the_connection_kept() {
        let (pool, accepted) = instance(Answer::Large).await;
        for _ in 0..2 {
            let body = get(&pool).await;
            assert_eq!(body.len(), CHUNK * CHUNKS);
            assert!(body.bytes().all(|b| b == b'x'));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
