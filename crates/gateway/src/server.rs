//! The public port's HTTP server: HTTP/1.1 and HTTP/2 on every connection
//! (h2c by prior knowledge on plain TCP; with TLS, ALPN offers `h2` and
//! `http/1.1`), upgrades passed on (WebSocket), a bound on how long a
//! request head may take, and a drain on shutdown. Each connection starts
//! in the gateway's own HTTP/1.1 loop ([`crate::h1`]), which hands it to
//! hyper at the first request it does not take.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::HeaderValue;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS handshake must finish within this long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/1 read buffer, which bounds a request head: past it the
/// server answers 431 itself. Above `headers_max_bytes`' ceiling, so that
/// the gateway's own 431 problem answers first.
pub const HEAD_BUFFER_MAX_BYTES: usize = crate::settings::HEADERS_MAX_BYTES_LIMIT + 64 * 1024;
/// Requests in flight on one HTTP/2 connection.
pub const H2_STREAMS_MAX: u32 = 256;
/// After an accept error (out of file descriptors), the next try waits
/// this long.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `[gateway.tls]`: the public port speaks TLS with this certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM: the certificate, then its chain.
    pub cert_path: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// The other end of a public connection, learned once per connection
/// rather than per request.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its address as `X-Forwarded-For` names it, written out once.
    pub ip: HeaderValue,
    /// It came over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl Client {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        let ip =
            HeaderValue::try_from(addr.ip().to_string()).expect("an IP address is a header value");
        Self { ip, tls }
    }

    /// The address as text (`ip` read back).
    pub fn ip_text(&self) -> &str {
        self.ip.to_str().expect("written from an IP address")
    }
}

/// The TLS side of the public port, from the certificate and key files.
pub fn tls_acceptor(settings: &TlsSettings) -> Result<TlsAcceptor, String> {
    let read = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        format!("tls.{what} {}: {e}", path.display())
    };
    let certs = CertificateDer::pem_file_iter(&settings.cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| read("cert_path", &settings.cert_path, &e))?;
    if certs.is_empty() {
        return Err(read("cert_path", &settings.cert_path, &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&settings.key_path)
        .map_err(|e| read("key_path", &settings.key_path, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How the public port is served.
#[derive(Clone)]
pub struct Serving {
    /// TLS, when configured.
    pub tls: Option<TlsAcceptor>,
    /// How long an HTTP/1 connection may wait for a request (idle, in
    /// `h1`) and for a head to arrive whole (hyper applies this one too,
    /// by its own rule), or it is closed.
    pub timeouts: crate::h1::Timeouts,
    /// After shutdown, open connections get this long to finish.
    pub grace: Duration,
}

/// Serves `router` on `listener` as `serving` says until `shutdown`
/// resolves, then lets open connections finish their requests for at most
/// the grace.
pub async fn serve(
    listener: TcpListener,
    router: crate::Public,
    serving: Serving,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let Serving {
        tls,
        timeouts,
        grace,
    } = serving;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(HEAD_BUFFER_MAX_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX);
    // Each connection holds a receiver: the drain is told through it, and
    // it is over when the last one is dropped.
    let (drain, draining) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, draining) = (builder.clone(), draining.clone());
        let tls = tls.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let service = PerConnection {
                        router,
                        client: Client::new(peer, false),
                    };
                    serve_connection(&builder, timeouts, draining, stream, service).await
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let service = PerConnection {
                        router,
                        client: Client::new(peer, true),
                    };
                    serve_connection(&builder, timeouts, draining, stream, service).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(draining);
    drain.send_replace(true);
    tokio::select! {
        () = drain.closed() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_ms = grace.as_millis() as u64, "shutdown grace expired; dropping open connections");
        }
    }
    Ok(())
}

/// Serves one connection (plain or TLS) until it closes or the drain ends
/// it: in the gateway's HTTP/1.1 loop, then, if that hands it over, in
/// hyper, told of the drain to finish its requests and close.
async fn serve_connection<IO>(
    builder: &auto::Builder<TokioExecutor>,
    timeouts: crate::h1::Timeouts,
    mut draining: watch::Receiver<bool>,
    stream: IO,
    service: PerConnection,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ours = crate::h1::serve(
        stream,
        |request| service.answer(request),
        timeouts,
        &draining,
    );
    let stream = match ours.await? {
        crate::h1::Ended::Closed => return Ok(()),
        crate::h1::Ended::HandedOff(stream) => stream,
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => return served,
        _ = draining.wait_for(|draining| *draining) => connection.as_mut().graceful_shutdown(),
    }
    connection.await
}

/// The router, for one connection: each request learns who sent it.
#[derive(Clone)]
struct PerConnection {
    router: crate::Public,
    client: Client,
}

impl PerConnection {
    async fn answer(&self, request: http::Request<Body>) -> axum::response::Response {
        self.router.serve(request, &self.client).await
    }
}

impl hyper::service::Service<http::Request<Incoming>> for PerConnection {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut response = this.answer(request.map(Body::new)).await;
            // hyper writes a header map only.
            crate::pool::whole_headers(&mut response);
            Ok(response)
        })
    }
}
