//! The public port's own HTTP/1.1 loop, for the requests that make most of
//! a gateway's traffic: HTTP/1.1 with no body. Each head is parsed where
//! it was read (`httparse`, values sliced from the read buffer, not
//! copied), the answer's head written with its body in one call when the
//! body is at hand, and no timer armed for a head that came whole. What
//! this loop does not take — a request with a body, `Expect`, `Upgrade`,
//! HTTP/1.0, HTTP/2's preface, a head it cannot parse or longer than
//! [`HEAD_FAST_MAX_BYTES`] — hands the connection, with every byte read so
//! far, to hyper, which serves it from there as it serves any connection:
//! one server's rules on the wire, hyper's for everything past the common
//! case.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use crate::pool::line;

/// A head not complete within this many bytes goes to hyper, whose buffer
/// takes up to [`crate::server::HEAD_BUFFER_MAX_BYTES`].
pub const HEAD_FAST_MAX_BYTES: usize = 16 * 1024;
/// Headers this loop parses in one head; a head with more goes to hyper.
pub const HEADERS_FAST_MAX: usize = 64;
/// Room a request's header map is made with beyond the client's headers:
/// for those the gateway adds on the way (forwarding, caller, trace,
/// request id), so that adding them never grows the map.
const HEADERS_ADDED: usize = 8;
/// Body data up to this size is copied behind the head and written with
/// it; larger data is written from where it lies.
const COPY_MAX_BYTES: usize = 16 * 1024;
/// What one read asks the socket for, at least.
const READ_BYTES: usize = 4 * 1024;

/// How long a connection may keep the loop waiting.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// With no request under way (before the first one, between two):
    /// until the next request's first byte, or the connection is closed.
    pub idle: Duration,
    /// From a head's first byte until it is whole, or the connection is
    /// closed.
    pub header_read: Duration,
}

/// How a connection left this loop.
pub enum Ended<IO> {
    /// It is closed (by the client, a deadline, the drain or an error of
    /// its answer).
    Closed,
    /// hyper serves it from here, starting with the bytes already read.
    HandedOff(Prefixed<IO>),
}

/// What the next head on a connection is.
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and taken apart at once: boxing would add an allocation"
)]
enum Next {
    /// A request this loop answers; `close` when the client asked for the
    /// connection to end after it.
    Request { request: Request<Body>, close: bool },
    /// Something for hyper.
    Other,
    /// The client went away, the head was too slow, or the drain began
    /// between requests.
    Closed,
}

/// Serves `io`'s requests with `serve` until the client closes, is idle
/// past `timeouts.idle`, the drain begins between two requests, or a
/// request needs hyper. A head must arrive whole within
/// `timeouts.header_read` of its first byte.
pub async fn serve<IO, F>(
    mut io: IO,
    serve: impl Fn(Request<Body>) -> F,
    timeouts: Timeouts,
    draining: &watch::Receiver<bool>,
) -> std::io::Result<Ended<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response>,
{
    let mut input = BytesMut::with_capacity(READ_BYTES);
    let mut output = Vec::with_capacity(READ_BYTES);
    // Polled once, the wait for the drain wakes this task when it begins;
    // between requests the task then looks at `draining` when it wakes,
    // rather than polling the wait (a lock) for every request.
    let mut watch = draining.clone();
    let mut drained = std::pin::pin!(async move {
        let _ = watch.wait_for(|draining| *draining).await;
    });
    if std::future::poll_fn(|cx| Poll::Ready(drained.as_mut().poll(cx)))
        .await
        .is_ready()
    {
        return Ok(Ended::Closed);
    }
    // One timer for the connection's idle waits, set again only when it
    // goes off during a wait that began after it was set.
    let mut idle = std::pin::pin!(tokio::time::sleep(timeouts.idle));
    loop {
        let next = next(&mut io, &mut input, idle.as_mut(), timeouts, draining).await?;
        let (request, asked_close) = match next {
            Next::Request { request, close } => (request, close),
            Next::Other => return Ok(Ended::HandedOff(Prefixed::new(input.freeze(), io))),
            Next::Closed => return Ok(Ended::Closed),
        };
        let head = request.method() == Method::HEAD;
        let answer = std::pin::pin!(serve(request));
        let Some(response) = unless_left(&mut io, &mut input, answer).await else {
            return Ok(Ended::Closed);
        };
        let close = asked_close || draining.has_changed().unwrap_or(true);
        let reusable = respond(&mut io, &mut output, response, head, close).await?;
        if !reusable {
            io.shutdown().await?;
            return Ok(Ended::Closed);
        }
    }
}

/// Awaits `answer` while reading the connection: the client closing it
/// (end of stream, or an error) before the answer is ready gives `None`,
/// and the request is dropped — its upstream exchange, its place under the
/// route's concurrency limit — as hyper drops a request whose client left.
/// Bytes the client sends meanwhile (its next request, pipelined) are
/// kept in `input` for it, and the answer is then awaited alone. Waiting
/// to read costs no system call: the socket is read only once it says it
/// has something.
async fn unless_left<IO: AsyncRead + Unpin, T>(
    io: &mut IO,
    input: &mut BytesMut,
    mut answer: Pin<&mut impl Future<Output = T>>,
) -> Option<T> {
    if input.capacity() == input.len() {
        input.reserve(READ_BYTES);
    }
    tokio::select! {
        biased;
        answered = answer.as_mut() => return Some(answered),
        read = io.read_buf(input) => if !matches!(read, Ok(1..)) {
            return None;
        },
    }
    Some(answer.await)
}

/// Reads until `input` holds a whole head, and says what it is. Between
/// requests, the drain (or its sender gone) or `idle` passing with
/// nothing read closes the connection.
async fn next<IO: AsyncRead + Unpin>(
    io: &mut IO,
    input: &mut BytesMut,
    mut idle: Pin<&mut tokio::time::Sleep>,
    timeouts: Timeouts,
    draining: &watch::Receiver<bool>,
) -> std::io::Result<Next> {
    if input.is_empty() {
        input.reserve(READ_BYTES);
        // When the wait ends: the clock is read only if the client has not
        // already sent its next request.
        let mut wait_ends = None;
        let read = std::future::poll_fn(|cx| {
            if !matches!(draining.has_changed(), Ok(false)) {
                return Poll::Ready(None);
            }
            if let Poll::Ready(read) = tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, input)
            {
                return Poll::Ready(Some(read));
            }
            let until =
                *wait_ends.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.idle);
            while idle.as_mut().poll(cx).is_ready() {
                if until <= idle.deadline() {
                    return Poll::Ready(None);
                }
                idle.as_mut().reset(until);
            }
            Poll::Pending
        });
        if read.await.transpose()?.unwrap_or(0) == 0 {
            return Ok(Next::Closed);
        }
    }
    let mut deadline = None;
    loop {
        if let Some(next) = parse(input)? {
            return Ok(next);
        }
        if input.len() >= HEAD_FAST_MAX_BYTES {
            return Ok(Next::Other);
        }
        let deadline =
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + timeouts.header_read);
        input.reserve(READ_BYTES);
        match tokio::time::timeout_at(deadline, io.read_buf(input)).await {
            Ok(Ok(read)) if read > 0 => {}
            Ok(Err(error)) => return Err(error),
            _ => return Ok(Next::Closed),
        }
    }
}

/// The request at the front of `input`, taken out of it; `None` while its
/// head is incomplete.
fn parse(input: &mut BytesMut) -> std::io::Result<Option<Next>> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADERS_FAST_MAX];
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let length = match config.parse_request_with_uninit_headers(&mut parsed, input, &mut slots) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Ok(Some(Next::Other)),
    };
    if parsed.version != Some(1) {
        return Ok(Some(Next::Other));
    }
    // Where each piece lies in `input`, so that the frozen head can be
    // sliced rather than copied (u32: a head is at most
    // `HEAD_FAST_MAX_BYTES` and one read more).
    let base = input.as_ptr() as usize;
    let at = |piece: &[u8]| ((piece.as_ptr() as usize - base) as u32, piece.len() as u32);
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Ok(Some(Next::Other));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Ok(Some(Next::Other));
    };
    let path = at(path.as_bytes());
    let mut close = false;
    let mut places = [((0u32, 0u32), (0u32, 0u32)); HEADERS_FAST_MAX];
    let count = parsed.headers.len();
    for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if h.value != b"0" {
                return Ok(Some(Next::Other));
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Ok(Some(Next::Other));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= crate::pool::asks_close(h.value);
        }
        *place = (at(name), at(h.value));
    }
    let head = input.split_to(length).freeze();
    let range = |(start, len): (u32, u32)| start as usize..(start + len) as usize;
    let slice = |span| head.slice(range(span));
    let Ok(uri) = Uri::from_maybe_shared(slice(path)) else {
        // hyper answers a target it cannot read with its 400.
        restore(input, &head);
        return Ok(Some(Next::Other));
    };
    let mut map = HeaderMap::with_capacity(count + HEADERS_ADDED);
    for &(name, value) in &places[..count] {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[range(name)]),
            HeaderValue::from_maybe_shared(slice(value)),
        ) else {
            restore(input, &head);
            return Ok(Some(Next::Other));
        };
        map.append(name, value);
    }
    let mut request = Request::new(Body::empty());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Ok(Some(Next::Request { request, close }))
}

/// Puts a head taken out of `input` back in front of it, for hyper.
fn restore(input: &mut BytesMut, head: &[u8]) {
    let mut whole = BytesMut::with_capacity(head.len() + input.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(input);
    *input = whole;
}

/// The headers this loop reads while writing an answer's head.
enum Framer {
    Connection,
    TransferEncoding,
    ContentLength,
    Date,
}

impl Framer {
    /// Which one `name` (any case) is, if any.
    fn of(name: &[u8]) -> Option<Self> {
        let (framer, lowercase): (_, &[u8]) = match name.len() {
            4 => (Self::Date, b"date"),
            10 => (Self::Connection, b"connection"),
            14 => (Self::ContentLength, b"content-length"),
            17 => (Self::TransferEncoding, b"transfer-encoding"),
            _ => return None,
        };
        name.eq_ignore_ascii_case(lowercase).then_some(framer)
    }
}

/// How an answer's body is delimited on the wire.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes `response`; whether the connection can carry another request.
async fn respond<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    output: &mut Vec<u8>,
    response: Response,
    head: bool,
    close: bool,
) -> std::io::Result<bool> {
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    output.clear();
    output.extend_from_slice(b"HTTP/1.1 ");
    output.extend_from_slice(status.as_str().as_bytes());
    output.push(b' ');
    output.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    output.extend_from_slice(b"\r\n");
    // One pass over the headers writes those kept and learns what the framing
    // and the connection's fate need: its own `Connection` and
    // `Transfer-Encoding` are this loop's to write, and a `Content-Length`
    // only counts (and is written) once, when it is a number.
    let (mut declared, mut close, mut dated) = (None, close, false);
    let mut keep = |name: &[u8], value: &[u8]| match Framer::of(name) {
        Some(Framer::Connection) => {
            close |= crate::pool::asks_close(value);
            false
        }
        Some(Framer::TransferEncoding) => false,
        Some(Framer::ContentLength) => match (declared, crate::pool::decimal(value)) {
            (None, Some(length)) => {
                declared = Some(length);
                true
            }
            _ => false,
        },
        Some(Framer::Date) => {
            dated = true;
            true
        }
        None => true,
    };
    // An instance's header lines as they came, but those the gateway set
    // anew; then the gateway's.
    if let Some(lines) = parts.extensions.remove::<crate::pool::Lines>() {
        let set = |name: &[u8]| {
            parts
                .headers
                .keys()
                .any(|set| set.as_str().as_bytes().eq_ignore_ascii_case(name))
        };
        lines.write_kept(output, |name, value| !set(name) && keep(name, value));
    }
    for (name, value) in &parts.headers {
        let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
        if keep(name, value) {
            line(output, name, value);
        }
    }
    let bodiless = head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, declared, body.size_hint().exact()) {
        (true, ..) => Framing::None,
        (false, Some(length), _) | (false, None, Some(length)) => Framing::Length(length),
        (false, None, None) => Framing::Chunked,
    };
    match framing {
        Framing::Length(length) if declared.is_none() => {
            let _ = write!(output, "content-length: {length}\r\n");
        }
        Framing::Chunked => line(output, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !dated {
        DATE.with_borrow_mut(|date| line(output, b"date", date.now()));
    }
    if close {
        line(output, b"connection", b"close");
    }
    output.extend_from_slice(b"\r\n");
    let mut whole = true;
    if framing != Framing::None {
        let mut sent = 0u64;
        loop {
            // Whatever is ready goes out with the head; what is not yet
            // ready waits with the head already sent (event streams).
            let frame =
                match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)))
                    .await
                {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        io.write_all(output).await?;
                        output.clear();
                        body.frame().await
                    }
                };
            let data = match frame {
                None => break,
                Some(Err(error)) => {
                    tracing::debug!(%error, "answer body failed; closing the connection");
                    whole = false;
                    break;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            sent += data.len() as u64;
            match framing {
                Framing::Length(length) if sent > length => {
                    tracing::debug!(length, "answer body longer than its length; closing");
                    whole = false;
                    break;
                }
                Framing::Chunked => {
                    let _ = write!(output, "{:x}\r\n", data.len());
                }
                _ => {}
            }
            if data.len() <= COPY_MAX_BYTES {
                output.extend_from_slice(&data);
            } else {
                io.write_all(output).await?;
                output.clear();
                io.write_all(&data).await?;
            }
            if framing == Framing::Chunked {
                output.extend_from_slice(b"\r\n");
            }
        }
        match framing {
            Framing::Chunked if whole => output.extend_from_slice(b"0\r\n\r\n"),
            Framing::Length(length) if sent != length => whole = false,
            _ => {}
        }
    }
    if !output.is_empty() {
        io.write_all(output).await?;
    }
    Ok(whole && !close)
}

/// The `Date` header's value, written again only when the second changes.
struct CachedDate {
    second: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        self.text.as_bytes()
    }
}

thread_local! {
    static DATE: std::cell::RefCell<CachedDate> = const {
        std::cell::RefCell::new(CachedDate { second: 0, text: String::new() })
    };
}

/// A connection whose first bytes were already read: they are read again
/// first.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    fn new(prefix: Bytes, io: IO) -> Self {
        Self { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
