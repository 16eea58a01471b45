//! Keep-alive HTTP/1.1 connections to one instance. A request takes an
//! idle connection (or opens one within its route's connect timeout),
//! is sent from the request's own task, and the connection comes back
//! when the response body has been read to its end. A request that a
//! stale connection closed on before a byte of it was written is sent
//! again on a new connection: that is safe for any method.

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

struct Idle {
    sender: SendRequest<Body>,
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
            let mut sender = match fresh {
                false => match self.take_idle().await {
                    Some(sender) => sender,
                    None => Box::pin(self.connect(connect_timeout)).await?,
                },
                true => Box::pin(self.connect(connect_timeout)).await?,
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.pooled(response, sender)),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(SendError::Http(failed.into_error())),
                },
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The freshest idle connection ready for a request, if any.
    async fn take_idle(&self) -> Option<SendRequest<Body>> {
        loop {
            let Idle { mut sender, since } = self.lock().pop()?;
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<SendRequest<Body>, SendError> {
        let connecting = tokio::net::TcpStream::connect(self.authority.as_str());
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    fn pooled(
        self: &Arc<Self>,
        response: http::Response<Incoming>,
        sender: SendRequest<Body>,
    ) -> http::Response<PooledBody> {
        // A switched connection belongs to the upgrade from now on.
        let keep = response.status() != StatusCode::SWITCHING_PROTOCOLS;
        let (parts, inner) = response.into_parts();
        let mut body = PooledBody {
            inner,
            giveback: keep.then(|| (sender, self.clone())),
        };
        body.give_back_if_done();
        http::Response::from_parts(parts, body)
    }

    fn give_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < IDLE_PER_INSTANCE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`].
    pub fn evict_idle(&self) {
        self.lock()
            .retain(|idle| idle.since.elapsed() <= IDLE_TIMEOUT && !idle.sender.is_closed());
    }
}

/// A response body that gives its connection back when read to the end
/// (dropped before, it closes the connection: what was left unread would
/// be in the way of the next response).
pub struct PooledBody {
    inner: Incoming,
    giveback: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl PooledBody {
    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some((sender, pool)) = self.giveback.take()
        {
            pool.give_back(sender);
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
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some((sender, pool)) = this.giveback.take() {
                    pool.give_back(sender);
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
