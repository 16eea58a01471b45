//! Keep-alive HTTP/1.1 connections to one instance, and the client side of
//! HTTP/1.1 spoken on them. A request takes an idle connection (or opens
//! one within its route's connect timeout), writes its head and body in
//! one write, and reads the answer's head and body straight from the
//! socket in the request's own task: no connection task, no channel
//! between the two, no hand-over and back per exchange. The connection
//! comes back when the answer's body has been read to its end and it may
//! carry another exchange. A request that a stale connection refused
//! before a byte of it was written is sent again on a new connection: that
//! is safe for any method.
//!
//! What an instance says is bounded: its head at [`HEAD_MAX_BYTES`] and
//! [`HEADERS_MAX`] headers, a chunk's size line at [`CHUNK_LINE_MAX_BYTES`];
//! past them, or malformed, the answer is an error (the gateway's 502).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, StatusCode, Version};
use hyper::body::{Frame, SizeHint};
use tokio::net::TcpStream;

/// Idle connections kept per instance; more are closed.
pub const IDLE_PER_INSTANCE: usize = 64;
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An answer's head (status line and headers), or a chunked body's
/// trailers, longer than this is refused.
pub const HEAD_MAX_BYTES: usize = 64 * 1024;
/// An answer with more headers than this is refused.
pub const HEADERS_MAX: usize = 100;
/// A chunk's size line (extensions included) longer than this ends the
/// body with an error.
pub const CHUNK_LINE_MAX_BYTES: usize = 1024;
/// Room asked for before each read of the socket.
const READ_CHUNK: usize = 16 * 1024;

/// A request as an instance gets it: an origin-form target, the body
/// whole (so that a retry can send it again), the headers cleaned and
/// completed. Its framing (`Content-Length`) is the pool's to write.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub method: Method,
    pub target: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Outgoing {
    /// A GET of `target` with `headers` (a composite's branch, a health
    /// check).
    pub fn get(target: PathAndQuery, headers: HeaderMap) -> Self {
        Self {
            method: Method::GET,
            target,
            headers,
            body: Bytes::new(),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect: no connection within {} ms", .0.as_millis())]
    ConnectTimeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the connection closed before an answer")]
    Closed,
    #[error("malformed answer: {0}")]
    Parse(#[from] httparse::Error),
    #[error("malformed answer: {0}")]
    Invalid(&'static str),
    #[error("no answer by the deadline")]
    TimedOut,
}

/// A connection and what was read from it and not yet taken.
struct Conn {
    io: TcpStream,
    read: BytesMut,
    /// The deadline of the exchanges on this connection, kept from one to
    /// the next: moving a timer to a later time is an atomic store in
    /// tokio's timer, making one and dropping it goes through its wheel.
    alarm: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    /// Reads what the socket has (0 at its end).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 2 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }

    /// An idle connection has nothing to say: one the instance closed (or
    /// wrote to out of turn) is readable, one still open is not. Reads
    /// that drained the socket left it not readable, so this costs no
    /// system call for a connection in good order.
    fn still_open(&mut self) -> bool {
        let noop = &mut Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(noop) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                matches!(self.io.try_read(&mut [0; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The answer's head, interim (1xx but 101) answers skipped.
    async fn read_head(&mut self, method: &Method) -> Result<Head, SendError> {
        loop {
            // Nothing has come yet when the request was just written.
            if !self.read.is_empty()
                && let Some(head) = parse_head(&mut self.read, method)?
            {
                if interim(head.parts.status) {
                    continue;
                }
                return Ok(head);
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(match self.read.is_empty() {
                    true => SendError::Closed,
                    false => SendError::Invalid("the head ended early"),
                });
            }
        }
    }
}

/// An interim answer (1xx but 101), which a final one follows.
fn interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

/// `name` (any case) is a hop-by-hop header (RFC 9110 §7.6.1: meant for
/// one connection, never forwarded; so are those the `Connection` header
/// names). Told by its length first, so that most names are compared with
/// none of them, and none with more than two.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// An answer's head as the gateway passes it on: its status and version,
/// its header lines ([`Lines`], in its extensions) without those that were
/// for this connection only (hop-by-hop ones), but for a protocol
/// switch's, whose own they are; how its body is delimited; and whether
/// the connection may carry another exchange after it.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    reusable: bool,
}

/// One answer head (to a request of `method`) from the front of `read`,
/// taken out of it; none while it is incomplete.
fn parse_head(read: &mut BytesMut, method: &Method) -> Result<Option<Head>, SendError> {
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADERS_MAX];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        read,
        &mut slots,
    )? {
        httparse::Status::Complete(len) if len <= HEAD_MAX_BYTES => len,
        httparse::Status::Partial if read.len() <= HEAD_MAX_BYTES => return Ok(None),
        _ => return Err(SendError::Invalid("the head is too large")),
    };
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(SendError::Invalid("status"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut spans = spans(read, parsed.headers);
    let block = read.split_to(len).freeze();
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut hops = Hops::default();
    for &(name_start, name_end, value_start, value_end) in &spans {
        hops.read(&block[name_start..name_end], &block[value_start..value_end]);
    }
    if !switched {
        // What `Connection` names besides the hop-by-hop headers (rare).
        let named: Vec<&[u8]> = match hops.names_others {
            false => Vec::new(),
            true => spans
                .iter()
                .filter(|&&(start, end, ..)| {
                    block[start..end].eq_ignore_ascii_case(header::CONNECTION.as_str().as_bytes())
                })
                .flat_map(|&(.., value_start, value_end)| items(&block[value_start..value_end]))
                .collect(),
        };
        spans.retain(|&(start, end, ..)| {
            let name = &block[start..end];
            !is_hop_by_hop(name) && !named.iter().any(|n| n.eq_ignore_ascii_case(name))
        });
    }
    let (framing, reusable) = hops.framing(method, status, version)?;
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    response.extensions_mut().insert(Lines { block, spans });
    Ok(Some(Head {
        parts: response.into_parts().0,
        framing,
        reusable,
    }))
}

/// Where each header's name and value is in `block` (which they borrow),
/// so that the values can share its bytes once it is taken out of the
/// read buffer.
fn spans(block: &[u8], headers: &[httparse::Header<'_>]) -> Vec<Span> {
    let base = block.as_ptr() as usize;
    let offset = |part: &[u8]| part.as_ptr() as usize - base;
    headers
        .iter()
        .map(|h| {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            (name, name + h.name.len(), value, value + h.value.len())
        })
        .collect()
}

/// A header's name and value, as offsets: start and end of each.
type Span = (usize, usize, usize, usize);

/// Header lines as an instance wrote them (names in its case, in its
/// order), sharing the bytes of the head they came in. An answer's come in
/// its extensions rather than in its header map: most answers go to the
/// client with their headers as they came, and making a map of them only
/// to write them out again was a sixth of a proxied request's work. What
/// reads or changes an answer's headers takes them into its map first,
/// with [`whole_headers`]; the gateway's HTTP/1.1 loop writes them as
/// they are, then the map's.
#[derive(Debug, Clone)]
pub struct Lines {
    block: Bytes,
    spans: Vec<Span>,
}

impl Lines {
    /// Writes the lines `keep` keeps (given each one's name and value) to
    /// `output` as the instance wrote them, spelling and spacing included:
    /// a run of kept lines, one after the other in the head, in one copy.
    pub fn write_kept(&self, output: &mut Vec<u8>, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let mut flush = |(start, end): (usize, usize)| {
            output.extend_from_slice(&self.block[start..end]);
            output.extend_from_slice(b"\r\n");
        };
        let mut run = None;
        for &(name_start, name_end, value_start, value_end) in &self.spans {
            let kept = keep(
                &self.block[name_start..name_end],
                &self.block[value_start..value_end],
            );
            run = match run {
                // Only a CRLF between the run and this line: it joins.
                Some((start, end))
                    if kept && self.block.get(end..name_start) == Some(&b"\r\n"[..]) =>
                {
                    Some((start, value_end))
                }
                run => {
                    if let Some(run) = run {
                        flush(run);
                    }
                    kept.then_some((name_start, value_end))
                }
            };
        }
        if let Some(run) = run {
            flush(run);
        }
    }

    /// The lines as a header map. httparse let through only names that
    /// are tokens and values without control characters, the grammar
    /// `HeaderName` and `HeaderValue` check: no line fails their checks,
    /// and one that did would be left out rather than stop the answer.
    fn into_map(self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        for (name_start, name_end, value_start, value_end) in self.spans {
            let name = HeaderName::from_bytes(&self.block[name_start..name_end]);
            let value = HeaderValue::from_maybe_shared(self.block.slice(value_start..value_end));
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        headers
    }
}

/// All of an answer's headers in its map: an instance's [`Lines`] taken
/// into it, and what the gateway had set there before (which replaces
/// the instance's lines of the same name).
pub fn whole_headers<B>(response: &mut http::Response<B>) -> &mut HeaderMap {
    if let Some(lines) = response.extensions_mut().remove::<Lines>() {
        let set = std::mem::replace(response.headers_mut(), lines.into_map());
        response.headers_mut().extend(set);
    }
    response.headers_mut()
}

/// What an answer's `Connection`, `Transfer-Encoding` and
/// `Content-Length` headers say, over all their lines.
#[derive(Default)]
struct Hops {
    close: bool,
    keep_alive: bool,
    /// `Connection` names headers other than the hop-by-hop ones.
    names_others: bool,
    transfer_encoding: bool,
    /// The last transfer coding is `chunked`.
    chunked: bool,
    length: Length,
}

#[derive(Default)]
enum Length {
    #[default]
    Absent,
    Is(u64),
    /// Not digits, or lines that disagree.
    Invalid,
}

impl Hops {
    fn read(&mut self, name: &[u8], value: &[u8]) {
        let is = |header: HeaderName| name.eq_ignore_ascii_case(header.as_str().as_bytes());
        if is(header::CONNECTION) {
            for option in items(value) {
                if option.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                } else if !is_hop_by_hop(option) {
                    self.names_others = true;
                }
            }
        } else if is(header::TRANSFER_ENCODING) {
            self.transfer_encoding = true;
            if let Some(last) = items(value).next_back() {
                self.chunked = last.eq_ignore_ascii_case(b"chunked");
            }
        } else if is(header::CONTENT_LENGTH) {
            for item in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let n = decimal(item);
                self.length = match (&self.length, n) {
                    (Length::Absent, Some(n)) => Length::Is(n),
                    (Length::Is(earlier), Some(n)) if *earlier == n => Length::Is(n),
                    _ => Length::Invalid,
                };
            }
        }
    }

    /// How the body of an answer to `method` is delimited (RFC 9112
    /// §6.3), and whether the connection can carry another exchange after
    /// it.
    fn framing(
        &self,
        method: &Method,
        status: StatusCode,
        version: Version,
    ) -> Result<(Framing, bool), SendError> {
        // A switched connection is the upgrade's from now on.
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok((Framing::Switched, false));
        }
        let close = self.close || (version == Version::HTTP_10 && !self.keep_alive);
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Length(0), !close));
        }
        if self.transfer_encoding {
            // Chunked when that is the last coding; else the body runs to
            // the connection's end. A length beside it is ignored, and the
            // connection not used again.
            let reusable = self.chunked && !close && matches!(self.length, Length::Absent);
            return Ok(match self.chunked {
                true => (Framing::Chunked(Chunk::Size), reusable),
                false => (Framing::UntilClose, false),
            });
        }
        match self.length {
            Length::Is(n) => Ok((Framing::Length(n), !close)),
            Length::Absent => Ok((Framing::UntilClose, false)),
            Length::Invalid => Err(SendError::Invalid("content-length")),
        }
    }
}

/// A `Content-Length` value: digits only (no sign, no space), within u64.
pub(crate) fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A `Connection` value asks for the connection to end after this
/// message.
pub(crate) fn asks_close(value: &[u8]) -> bool {
    items(value).any(|option| option.eq_ignore_ascii_case(b"close"))
}

/// The items of one line of a comma-separated list header, trimmed,
/// empty ones skipped.
fn items(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// The items of a comma-separated list header (`Connection`,
/// `Transfer-Encoding`), over all its lines.
pub(crate) fn header_list(
    headers: &HeaderMap,
    name: HeaderName,
) -> impl DoubleEndedIterator<Item = &[u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| items(v.as_bytes()))
}

/// The head of `request` as written: request line, headers (the
/// instance's `Host` unless the request names one), and the body's length
/// (for an empty body too when the method is one that carries a body).
fn encode(request: &Outgoing, host: &HeaderValue) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(request.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(request.target.as_str().as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    // HTTP/1.1 clients send `Host` first, and the map keeps their order:
    // most requests are told by one comparison, not a look-up.
    let headers = &request.headers;
    let named_host =
        headers.keys().next() == Some(&header::HOST) || headers.contains_key(header::HOST);
    if !named_host {
        line(&mut head, header::HOST.as_str().as_bytes(), host.as_bytes());
    }
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            line(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let carries_body = matches!(request.method, Method::POST | Method::PUT | Method::PATCH);
    if !request.body.is_empty() || carries_body {
        let length = request.body.len().to_string();
        line(
            &mut head,
            header::CONTENT_LENGTH.as_str().as_bytes(),
            length.as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// One header line of a head, as written on the wire (the gateway's own
/// server loop writes its answers' with it too).
pub(crate) fn line(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

struct Idle {
    conn: Box<Conn>,
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

    /// Sends `request` and returns the answer, its body giving the
    /// connection back once read to the end.
    pub async fn send(
        self: &Arc<Self>,
        request: &Outgoing,
        connect_timeout: Duration,
        deadline: tokio::time::Instant,
    ) -> Result<http::Response<PooledBody>, SendError> {
        let head = encode(request, &self.host);
        let mut idle = self.take_idle();
        let mut alarm = match idle.as_mut().and_then(|conn| conn.alarm.take()) {
            Some(mut alarm) => {
                alarm.as_mut().reset(deadline);
                alarm
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let exchange = async {
            // A reused connection may have been closed by the instance
            // while idle; a request it refused unsent goes once more, on a
            // new one.
            let reused = match idle {
                Some(mut conn) => match write(&mut conn, &head, &request.body).await {
                    Err((_, false)) => None,
                    written => Some((conn, written)),
                },
                None => None,
            };
            let (mut conn, written) = match reused {
                Some(reused) => reused,
                None => {
                    // Connecting is rare and its future large: boxed where
                    // it runs.
                    let mut conn = Box::pin(self.connect(connect_timeout)).await?;
                    let written = write(&mut conn, &head, &request.body).await;
                    (conn, written)
                }
            };
            let method = &request.method;
            let (head, whole) = match written {
                Ok(whole) => (conn.read_head(method).await?, whole),
                // An instance that will not read a body (413) may answer
                // and close while it is being written: that answer stands.
                Err((error, _)) => (conn.read_head(method).await.map_err(|_| error)?, false),
            };
            Ok::<_, SendError>((conn, head, whole))
        };
        let (mut conn, head, whole) = tokio::select! {
            biased;
            done = exchange => done?,
            () = alarm.as_mut() => return Err(SendError::TimedOut),
        };
        conn.alarm = Some(alarm);
        let body = PooledBody {
            conn: Some(conn),
            framing: head.framing,
            // Part of the request unsent, the connection is not in step.
            pool: (head.reusable && whole).then(|| self.clone()),
        };
        Ok(http::Response::from_parts(head.parts, body.settled()))
    }

    /// The freshest idle connection still open, if any.
    fn take_idle(&self) -> Option<Box<Conn>> {
        loop {
            let Idle { mut conn, since } = self.lock().pop()?;
            if since.elapsed() <= IDLE_TIMEOUT && conn.still_open() {
                return Some(conn);
            }
        }
    }

    /// A new connection, boxed: it moves between requests and the idle
    /// list, and with each answer's body.
    async fn connect(&self, timeout: Duration) -> Result<Box<Conn>, SendError> {
        let connecting = TcpStream::connect(self.authority.as_str());
        let io = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| SendError::ConnectTimeout(timeout))?
            .map_err(SendError::Connect)?;
        let _ = io.set_nodelay(true);
        Ok(Box::new(Conn {
            io,
            read: BytesMut::with_capacity(READ_CHUNK),
            alarm: None,
        }))
    }

    fn give_back(&self, conn: Box<Conn>) {
        let mut idle = self.lock();
        if idle.len() < IDLE_PER_INSTANCE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`], or closed
    /// by the instance.
    pub fn evict_idle(&self) {
        self.lock()
            .retain_mut(|idle| idle.since.elapsed() <= IDLE_TIMEOUT && idle.conn.still_open());
    }
}

/// Writes a request's head and body, in one system call when the socket
/// takes them whole: `Ok(true)`. An instance may answer before it has
/// taken all of it (a 413 for a body it will not read) and stop reading:
/// once its answer's head is there, writing stops, `Ok(false)`. A failure
/// says whether any of the request was written.
async fn write(conn: &mut Conn, head: &[u8], body: &Bytes) -> Result<bool, (io::Error, bool)> {
    let mut both = head.chain(&body[..]);
    let total = both.remaining();
    let written = std::future::poll_fn(|cx| {
        loop {
            if !both.has_remaining() {
                return Poll::Ready(Ok(true));
            }
            match tokio_util::io::poll_write_buf(Pin::new(&mut conn.io), cx, &mut both) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The instance takes no more for now: has it answered?
                Poll::Pending => match conn.poll_fill(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(_)) if final_head_in(&conn.read) => {
                        return Poll::Ready(Ok(false));
                    }
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // Part of an answer, or an interim one: writing goes on.
                    Poll::Ready(Ok(_)) => continue,
                },
            }
        }
    })
    .await;
    written.map_err(|error| (error, both.remaining() < total))
}

/// `read` holds the head of a final answer ([`interim`] ones skipped), or
/// what cannot be one: either way, there is nothing more to wait for
/// before reading it.
fn final_head_in(mut read: &[u8]) -> bool {
    if read.len() > HEAD_MAX_BYTES {
        return true;
    }
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(read) {
            Ok(httparse::Status::Partial) => return false,
            Ok(httparse::Status::Complete(len)) => match response.code.map(StatusCode::from_u16) {
                Some(Ok(status)) if interim(status) => read = &read[len..],
                _ => return true,
            },
            Err(_) => return true,
        }
    }
}

/// How the rest of an answer's body is delimited.
#[derive(Debug)]
enum Framing {
    /// This many bytes more.
    Length(u64),
    /// Chunks, at this point of one.
    Chunked(Chunk),
    /// Up to the connection's end.
    UntilClose,
    /// A protocol switch: no body, the connection is the upgrade's.
    Switched,
    /// Read to its end, or failed.
    Ended,
}

/// Where a chunked body's reading is.
#[derive(Debug)]
enum Chunk {
    /// Before a size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailers, then an empty line.
    Trailers,
    /// After the trailers.
    Ended,
}

/// What a chunked body gives next.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl Chunk {
    /// The next step from `read`; none until more has arrived.
    fn step(&mut self, read: &mut BytesMut) -> io::Result<Option<Step>> {
        let invalid = |what: &'static str| io::Error::new(io::ErrorKind::InvalidData, what);
        loop {
            match self {
                Chunk::Size => {
                    let Some(end) = read.windows(2).position(|w| w == b"\r\n") else {
                        if read.len() > CHUNK_LINE_MAX_BYTES {
                            return Err(invalid("a chunk size line is too long"));
                        }
                        return Ok(None);
                    };
                    if end > CHUNK_LINE_MAX_BYTES {
                        return Err(invalid("a chunk size line is too long"));
                    }
                    let digits = read[..end]
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    let size = std::str::from_utf8(digits)
                        .ok()
                        .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|d| u64::from_str_radix(d, 16).ok())
                        .ok_or_else(|| invalid("a chunk size"))?;
                    read.advance(end + 2);
                    *self = match size {
                        0 => Chunk::Trailers,
                        n => Chunk::Data(n),
                    };
                }
                Chunk::Data(left) => {
                    if read.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(read.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        *self = Chunk::DataEnd;
                    }
                    return Ok(Some(Step::Data(read.split_to(n as usize).freeze())));
                }
                Chunk::DataEnd => {
                    if read.len() < 2 {
                        return Ok(None);
                    }
                    if &read[..2] != b"\r\n" {
                        return Err(invalid("a chunk does not end with CRLF"));
                    }
                    read.advance(2);
                    *self = Chunk::Size;
                }
                Chunk::Trailers => {
                    if read.starts_with(b"\r\n") {
                        read.advance(2);
                        return Ok(Some(Step::End));
                    }
                    let Some(trailers) = trailers(read)? else {
                        return Ok(None);
                    };
                    *self = Chunk::Ended;
                    return Ok(Some(Step::Trailers(trailers)));
                }
                Chunk::Ended => return Ok(Some(Step::End)),
            }
        }
    }
}

/// A chunked body's trailers (taken out of `read`, with the empty line
/// that ends them); none while incomplete.
fn trailers(read: &mut BytesMut) -> io::Result<Option<HeaderMap>> {
    let invalid = |what: &'static str| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut slots = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let (len, spans) = match httparse::parse_headers(read, &mut slots) {
        Ok(httparse::Status::Complete((len, parsed))) if len <= HEAD_MAX_BYTES => {
            (len, spans(read, parsed))
        }
        Ok(httparse::Status::Partial) if read.len() <= HEAD_MAX_BYTES => return Ok(None),
        Ok(_) => return Err(invalid("the trailers are too large")),
        Err(_) => return Err(invalid("malformed trailers")),
    };
    let block = read.split_to(len).freeze();
    Ok(Some(Lines { block, spans }.into_map()))
}

/// An answer's body, read from its connection as it is asked for. Read to
/// its end, it gives the connection back (if that may carry another
/// exchange); dropped before, it closes the connection: what was left
/// unread would be in the way of the next answer.
pub struct PooledBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    /// Where the connection goes back to, if it may be used again.
    pool: Option<Arc<Pool>>,
}

/// What an upgrade takes over: the connection, and what the instance sent
/// after its 101 that was already read.
pub struct Switched {
    pub io: TcpStream,
    pub early: Bytes,
}

impl PooledBody {
    /// A body with nothing (more) to read gives its connection back now.
    fn settled(mut self) -> Self {
        if matches!(self.framing, Framing::Length(0)) {
            self.end();
        }
        self
    }

    /// The body was read to its end: the connection goes back unless
    /// something is left over.
    fn end(&mut self) {
        self.framing = Framing::Ended;
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take())
            && conn.read.is_empty()
        {
            pool.give_back(conn);
        }
    }

    fn fail(&mut self, error: io::Error) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.framing = Framing::Ended;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }

    /// The connection of a 101 answer, for the upgrade; none otherwise.
    pub fn switched(mut self) -> Option<Switched> {
        match self.framing {
            Framing::Switched => self.conn.take().map(|mut conn| Switched {
                early: conn.read.split().freeze(),
                io: conn.io,
            }),
            _ => None,
        }
    }
}

impl hyper::body::Body for PooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = &mut this.conn else {
                return Poll::Ready(None);
            };
            match &mut this.framing {
                Framing::Ended | Framing::Switched | Framing::Length(0) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.read.is_empty() => {
                    let n = (*left).min(conn.read.len() as u64);
                    *left -= n;
                    let data = conn.read.split_to(n as usize).freeze();
                    if *left == 0 {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !conn.read.is_empty() => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(chunk) => match chunk.step(&mut conn.read) {
                    Ok(Some(Step::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Some(Step::Trailers(trailers))) => {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Some(Step::End)) => {
                        this.end();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(error) => return this.fail(error),
                },
                Framing::Length(_) | Framing::UntilClose => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::UntilClose) => {
                    this.framing = Framing::Ended;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    let early =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended early");
                    return this.fail(early);
                }
                Ok(_) => {}
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Ended | Framing::Switched | Framing::Length(0)
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(left) => SizeHint::with_exact(left),
            Framing::Ended | Framing::Switched => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How an instance answers each request.
    #[derive(Clone, Copy)]
    enum Answer {
        /// These bytes, keeping the connection.
        Keep(&'static [u8]),
        /// These bytes, then closing the connection (as an instance whose
        /// keep-alive timeout passed does).
        Close(&'static [u8]),
        /// These bytes, then nothing more read nor written while the
        /// connection stays open (as an instance refusing a body does).
        Hold(&'static [u8]),
        /// A body of `CHUNKS` × `CHUNK` bytes, written a chunk at a time.
        Large,
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 16;
    /// How long an instance told to `Hold` keeps the connection.
    const HOLD: Duration = Duration::from_secs(30);

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
                                || matches!(answer, Answer::Close(_))
                            {
                                return;
                            }
                            if let Answer::Hold(_) = answer {
                                tokio::time::sleep(HOLD).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (Pool::new(authority), accepted)
    }

    async fn write(stream: &mut TcpStream, answer: Answer) -> io::Result<()> {
        let (Answer::Keep(bytes) | Answer::Close(bytes) | Answer::Hold(bytes)) = answer else {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                CHUNK * CHUNKS
            );
            stream.write_all(head.as_bytes()).await?;
            for _ in 0..CHUNKS {
                stream.write_all(&[b'x'; CHUNK]).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            return Ok(());
        };
        stream.write_all(bytes).await
    }

    /// A deadline no test here reaches.
    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(30)
    }

    fn outgoing(method: Method) -> Outgoing {
        Outgoing {
            method,
            ..Outgoing::get(PathAndQuery::from_static("/"), HeaderMap::new())
        }
    }

    async fn send(
        pool: &Arc<Pool>,
        method: Method,
    ) -> Result<http::Response<PooledBody>, SendError> {
        pool.send(&outgoing(method), Duration::from_secs(1), far())
            .await
    }

    /// The body of a GET's answer, and its trailers if any.
    async fn get(pool: &Arc<Pool>) -> (String, Option<HeaderMap>) {
        let response = send(pool, Method::GET).await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
        (body, trailers)
    }

    /// An answer refusing a body, sent once the request's head is read.
    const TOO_LARGE: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
    /// More than the sockets between the gateway and an instance hold.
    const BODY_BYTES: usize = 32 * 1024 * 1024;

    #[tokio::test]
    async fn an_answer_given_before_the_body_is_taken_is_the_answer() {
        // The instance closes (its unread bytes make that a reset), or
        // keeps the connection but reads no more.
        for answer in [Answer::Close(TOO_LARGE), Answer::Hold(TOO_LARGE)] {
            let (pool, accepted) = instance(answer).await;
            let request = Outgoing {
                body: Bytes::from(vec![b'x'; BODY_BYTES]),
                ..outgoing(Method::POST)
            };
            let sent = pool.send(&request, Duration::from_secs(1), far());
            let response = tokio::time::timeout(Duration::from_secs(10), sent)
                .await
                .expect("the answer is read while the body is still being written")
                .unwrap();
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"big!");
            // Part of the request unsent, that connection is not used again.
            send(&pool, Method::GET).await.unwrap();
            assert_eq!(accepted.load(Ordering::SeqCst), 2);
        }
    }

    #[tokio::test]
    async fn one_connection_serves_request_after_request() {
        let (pool, accepted) = instance(Answer::Keep(OK)).await;
        for _ in 0..3 {
            assert_eq!(get(&pool).await.0, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_answer_by_the_deadline_is_a_timeout_and_a_kept_connection_takes_the_next() {
        let (pool, accepted) = instance(Answer::Keep(OK)).await;
        let request = outgoing(Method::GET);
        for _ in 0..2 {
            let soon = tokio::time::Instant::now() + Duration::from_millis(100);
            let response = pool.send(&request, Duration::from_secs(1), soon);
            let body = response.await.unwrap().into_body().collect().await.unwrap();
            assert_eq!(&body.to_bytes()[..], b"ok");
            // The first exchange's deadline passes while the connection is
            // idle; the next exchange on it has its own.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let (silent, _) = instance(Answer::Hold(b"")).await;
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(100);
        let sent = silent.send(&request, Duration::from_secs(1), deadline);
        assert!(matches!(sent.await, Err(SendError::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_while_idle_is_not_used_again() {
        let (pool, accepted) = instance(Answer::Close(OK)).await;
        for _ in 0..3 {
            assert_eq!(get(&pool).await.0, "ok");
            // The instance's close arrives while the connection is idle.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_body_arriving_over_time_is_read_whole_and_the_connection_kept() {
        let (pool, accepted) = instance(Answer::Large).await;
        for _ in 0..2 {
            let (body, _) = get(&pool).await;
            assert_eq!(body.len(), CHUNK * CHUNKS);
            assert!(body.bytes().all(|b| b == b'x'));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_with_its_trailers_and_the_connection_kept() {
        let (pool, accepted) = instance(Answer::Keep(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              2;note=first\r\nok\r\nA\r\n, and more\r\n0\r\nx-sum: 12\r\n\r\n",
        ))
        .await;
        for _ in 0..2 {
            let (body, trailers) = get(&pool).await;
            assert_eq!(body, "ok, and more");
            assert_eq!(trailers.unwrap()["x-sum"], "12");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn interim_answers_are_skipped() {
        let (pool, _) = instance(Answer::Keep(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ))
        .await;
        assert_eq!(get(&pool).await.0, "ok");
    }

    #[tokio::test]
    async fn headers_for_the_connection_are_left_out_but_a_switch_keeps_its_own() {
        let (pool, _) = instance(Answer::Keep(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Secret\r\nkeep-alive: timeout=5\r\n\
              x-secret: 1\r\ncontent-type: text/plain\r\nte: trailers\r\ncontent-length: 2\r\n\r\nok",
        ))
        .await;
        let mut response = send(&pool, Method::GET).await.unwrap();
        let mut names: Vec<&str> = whole_headers(&mut response)
            .keys()
            .map(|n| n.as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "content-type"]);
        let (pool, _) = instance(Answer::Hold(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        ))
        .await;
        let mut response = send(&pool, Method::GET).await.unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let headers = whole_headers(&mut response);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
    }

    #[tokio::test]
    async fn a_connection_is_kept_only_when_the_answer_lets_it() {
        let answers: [(&'static [u8], usize); 4] = [
            (b"HTTP/1.1 200 OK\r\nConnection: Close\r\ncontent-length: 2\r\n\r\nok", 2),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", 2),
            (b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok", 1),
            (b"HTTP/1.1 200 OK\r\nconnection: x-note\r\nx-note: 1\r\ncontent-length: 2\r\n\r\nok", 1),
        ];
        for (answer, connections) in answers {
            let (pool, accepted) = instance(Answer::Keep(answer)).await;
            for _ in 0..2 {
                assert_eq!(get(&pool).await.0, "ok");
            }
            let text = String::from_utf8_lossy(answer);
            assert_eq!(accepted.load(Ordering::SeqCst), connections, "{text}");
        }
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_its_connection_is_not_kept() {
        let (pool, accepted) = instance(Answer::Close(b"HTTP/1.1 200 OK\r\n\r\nto the end")).await;
        for _ in 0..2 {
            assert_eq!(get(&pool).await.0, "to the end");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn answers_without_a_body_keep_the_connection() {
        let (pool, accepted) = instance(Answer::Keep(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        ))
        .await;
        for _ in 0..2 {
            let mut response = send(&pool, Method::HEAD).await.unwrap();
            assert_eq!(whole_headers(&mut response)["content-length"], "5");
            assert!(
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .is_empty()
            );
        }
        let (pool, accepted_204) = instance(Answer::Keep(b"HTTP/1.1 204 No Content\r\n\r\n")).await;
        for _ in 0..2 {
            let (body, _) = get(&pool).await;
            assert!(body.is_empty());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(accepted_204.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn malformed_heads_are_errors() {
        let long = format!(
            "HTTP/1.1 200 OK\r\nx-long: {}\r\n\r\n",
            "a".repeat(HEAD_MAX_BYTES)
        );
        let heads: [&'static [u8]; 5] = [
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ncontent-len",
            long.leak().as_bytes(),
        ];
        for head in heads {
            let (pool, _) = instance(Answer::Close(head)).await;
            assert!(
                send(&pool, Method::GET).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(&head[..30])
            );
        }
        let (pool, _) = instance(Answer::Close(b"")).await;
        assert!(matches!(
            send(&pool, Method::GET).await,
            Err(SendError::Closed)
        ));
    }

    #[tokio::test]
    async fn malformed_or_short_bodies_end_in_an_error() {
        let answers: [&'static [u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokay\r\n0\r\n\r\n",
        ];
        for answer in answers {
            let (pool, _) = instance(Answer::Close(answer)).await;
            let response = send(&pool, Method::GET).await.unwrap();
            assert!(response.into_body().collect().await.is_err());
        }
    }

    #[test]
    fn kept_lines_are_written_as_they_came_with_crlf_endings() {
        let written = |head: &[u8], drop: &[u8]| {
            let mut read = BytesMut::from(head);
            let head = parse_head(&mut read, &Method::GET).unwrap().unwrap();
            let lines = head.parts.extensions.get::<Lines>().unwrap();
            let mut output = Vec::new();
            lines.write_kept(&mut output, |name, _| name != drop);
            String::from_utf8(output).unwrap()
        };
        let head = b"HTTP/1.1 200 OK\r\nServer: up\r\nX-One:1\r\nDrop: me\r\nX-Two:  2\r\n\r\n";
        assert_eq!(
            written(head, b"Drop"),
            "Server: up\r\nX-One:1\r\nX-Two:  2\r\n"
        );
        assert_eq!(
            written(head, b"Server"),
            "X-One:1\r\nDrop: me\r\nX-Two:  2\r\n"
        );
        assert_eq!(
            written(head, b"X-Two"),
            "Server: up\r\nX-One:1\r\nDrop: me\r\n"
        );
        // Lines ended by a bare LF, or with spaces before their end, are
        // never joined by what lay between them.
        let bare = b"HTTP/1.1 200 OK\nA: 1 \nB: 2\n\n";
        assert_eq!(written(bare, b"-"), "A: 1\r\nB: 2\r\n");
    }

    #[test]
    fn hop_by_hop_names_are_told_in_any_case_and_no_others() {
        let hops = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
        ];
        for hop in hops {
            assert!(is_hop_by_hop(hop.as_bytes()), "{hop}");
            assert!(is_hop_by_hop(hop.to_ascii_uppercase().as_bytes()), "{hop}");
        }
        for other in [
            "",
            "tf",
            "trailers",
            "upgrades",
            "content-length",
            "x-connection",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn a_content_length_is_digits_within_u64() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"0042"), Some(42));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"1a",
            b"0x1",
        ] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_request_head_names_its_host_and_frames_its_body_itself() {
        let host = HeaderValue::from_static("instance:8080");
        let mut request = outgoing(Method::POST);
        request.target = PathAndQuery::from_static("/orders?page=2");
        request.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        request
            .headers
            .append("x-tag", HeaderValue::from_static("a"));
        request
            .headers
            .append("x-tag", HeaderValue::from_static("b"));
        let head = encode(&request, &host);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "POST /orders?page=2 HTTP/1.1\r\nhost: instance:8080\r\nx-tag: a\r\nx-tag: b\r\n\
             content-length: 0\r\n\r\n"
        );
        let mut request = outgoing(Method::GET);
        request
            .headers
            .insert(header::HOST, HeaderValue::from_static("shop.example"));
        assert_eq!(
            String::from_utf8(encode(&request, &host)).unwrap(),
            "GET / HTTP/1.1\r\nhost: shop.example\r\n\r\n"
        );
    }
}
