//! Event-stream routes (`events = [...]`): the bus events about the
//! verified caller (their `subject`), as Server-Sent Events.
//!
//! One [`Feed`] per gateway process follows the bus from the moment the
//! gateway starts and keeps the last [`RING_EVENTS_MAX`] events; every
//! stream reads from it, so a thousand open streams cost one reader of the
//! bus. Each event's SSE `id` is a bus [`Position`] token: a client that
//! reconnects with `Last-Event-ID` resumes just after it. When the ring
//! still holds everything after that position the stream reads the ring;
//! when it does not (the client was away longer, or the position is from
//! before this gateway started, or from another replica) the stream reads
//! the bus itself from that position: nothing is missed either way. A
//! comment line every [`KEEPALIVE`] carries the position forward (`id:`),
//! so that a client resumes past what was not for it; a stream ends after
//! [`STREAM_LIFETIME`] and the client reconnects where it was.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use bus::{CloudEvent, Position, SharedBroker, TailFrom, TypeFilter};
use http::HeaderValue;
use http::header;
use kit::problem::{Code, Problem};
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// Events the feed keeps for streams to catch up from.
pub const RING_EVENTS_MAX: usize = 10_000;
/// Between two lines on an idle stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// A stream ends after this long; the client reconnects with its
/// `Last-Event-ID`.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// The header a reconnecting client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

struct Read {
    /// The feed's count of events before this one: where a stream stands.
    index: u64,
    log: String,
    seq: u64,
    /// The feed's position just after this event.
    after: Position,
    event: Arc<CloudEvent>,
}

/// The gateway's one reader of the bus for event streams.
pub struct Feed {
    broker: SharedBroker,
    ring: Mutex<Ring>,
    appended: Notify,
}

struct Ring {
    events: VecDeque<Read>,
    /// The position before the first event the ring holds.
    oldest: Position,
    /// The position after the last.
    newest: Position,
    /// Events appended since the feed started.
    count: u64,
}

impl Feed {
    /// Starts following `broker` from now; the feed is complete from the
    /// moment this returns.
    pub async fn start(broker: SharedBroker) -> Result<Arc<Self>, bus::BusError> {
        let mut tail = broker.tail(TypeFilter::all(), TailFrom::Now).await?;
        let start = tail.position();
        let feed = Arc::new(Self {
            broker,
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                oldest: start.clone(),
                newest: start,
                count: 0,
            }),
            appended: Notify::new(),
        });
        let weak = Arc::downgrade(&feed);
        tokio::spawn(async move {
            loop {
                let event = tail.next().await;
                let Some(feed) = weak.upgrade() else { return };
                match event {
                    Ok(event) => feed.append(event, tail.position()),
                    Err(error) => {
                        tracing::warn!(%error, "the event feed cannot read the bus; retrying");
                        tokio::time::sleep(bus::CONSUME_RETRY_DELAY).await;
                    }
                }
            }
        });
        Ok(feed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn append(&self, event: CloudEvent, after: Position) {
        let mut ring = self.lock();
        // The log and sequence of this event: the one log the position
        // moved in.
        let (log, seq) = after
            .logs()
            .find(|(log, seq)| ring.newest.seq(log) < *seq)
            .map(|(log, seq)| (log.to_owned(), seq))
            .unwrap_or_default();
        let index = ring.count;
        ring.count += 1;
        ring.newest = after.clone();
        ring.events.push_back(Read {
            index,
            log,
            seq,
            after,
            event: Arc::new(event),
        });
        if ring.events.len() > RING_EVENTS_MAX
            && let Some(dropped) = ring.events.pop_front()
        {
            ring.oldest = dropped.after;
        }
        drop(ring);
        self.appended.notify_waiters();
    }
}

/// Answers an event-stream route for `subject`.
pub fn stream(
    feed: Option<&Arc<Feed>>,
    types: &TypeFilter,
    subject: String,
    last_event_id: Option<&HeaderValue>,
    permit: OwnedSemaphorePermit,
) -> Result<Response, Problem> {
    let Some(feed) = feed.cloned() else {
        return Err(Problem::new(Code::Unavailable).detail("this gateway does not follow the bus"));
    };
    let resume = match last_event_id {
        None => None,
        Some(value) => {
            let token = value.to_str().unwrap_or("\u{0}");
            Some(Position::parse(token).map_err(|_| {
                Problem::new(Code::MalformedRequest)
                    .detail("Last-Event-ID is not an id this stream gave")
            })?)
        }
    };
    let state = Stream {
        feed,
        types: types.clone(),
        subject,
        source: Source::Pending(resume),
        deadline: tokio::time::Instant::now() + STREAM_LIFETIME,
        _permit: permit,
    };
    let body = futures_util::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Where a stream reads from.
enum Source {
    /// Not decided: the client's position, if it gave one.
    Pending(Option<Position>),
    /// The feed's ring, from this index; the client's position.
    Ring { next: u64, at: Position },
    /// The bus itself, from the client's position.
    Bus(Box<dyn bus::EventStream>),
}

struct Stream {
    feed: Arc<Feed>,
    types: TypeFilter,
    subject: String,
    source: Source,
    deadline: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

impl Stream {
    /// The next lines to send; `None` ends the stream.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Source::Pending(resume) = &self.source {
            self.source = open(&self.feed, resume.clone()).await;
            // The first lines say where the stream stands, so that a
            // client that hears nothing else still resumes from here.
            return Some(keepalive(&self.position()));
        }
        let quiet = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(quiet);
        loop {
            if tokio::time::Instant::now() >= self.deadline {
                return None;
            }
            let found = match &mut self.source {
                Source::Pending(_) => unreachable!("opened above"),
                Source::Ring { next, at } => {
                    let notified = self.feed.appended.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    match take_from_ring(&self.feed, next, at, &self.types, &self.subject) {
                        Err(()) => return None,
                        Ok(Some(chunk)) => Some(chunk),
                        Ok(None) => {
                            tokio::select! {
                                () = notified => continue,
                                () = &mut quiet => return Some(keepalive(at)),
                                () = tokio::time::sleep_until(self.deadline) => return None,
                            }
                        }
                    }
                }
                Source::Bus(tail) => {
                    tokio::select! {
                        read = tail.next() => match read {
                            Ok(event) if event.subject == self.subject && self.types.matches(&event.event_type) => {
                                Some(frame(&event, &tail.position()))
                            }
                            Ok(_) => continue,
                            Err(_) => return None,
                        },
                        () = &mut quiet => return Some(keepalive(&tail.position())),
                        () = tokio::time::sleep_until(self.deadline) => return None,
                    }
                }
            };
            if found.is_some() {
                return found;
            }
        }
    }

    fn position(&self) -> Position {
        match &self.source {
            Source::Pending(resume) => resume.clone().unwrap_or_default(),
            Source::Ring { at, .. } => at.clone(),
            Source::Bus(tail) => tail.position(),
        }
    }
}

/// Reads the ring when it holds everything after `resume`, the bus from
/// `resume` otherwise.
async fn open(feed: &Feed, resume: Option<Position>) -> Source {
    let decided = {
        let ring = feed.lock();
        let start = ring.count - ring.events.len() as u64;
        match resume {
            None => Ok(Source::Ring {
                next: ring.count,
                at: ring.newest.clone(),
            }),
            Some(resume) if resume.covers(&ring.oldest) => Ok(Source::Ring {
                next: start,
                at: resume,
            }),
            Some(resume) => Err(resume),
        }
    };
    let resume = match decided {
        Ok(source) => return source,
        Err(resume) => resume,
    };
    match feed
        .broker
        .tail(TypeFilter::all(), TailFrom::After(resume))
        .await
    {
        Ok(tail) => Source::Bus(tail),
        Err(error) => {
            tracing::warn!(%error, "cannot read the bus for a stream");
            // The stream ends at once; the client retries.
            Source::Ring {
                next: u64::MAX,
                at: Position::default(),
            }
        }
    }
}

/// The next event for `subject` in the ring from `next`, moving `next` and
/// `at` past what it passes; `Err` when the stream fell behind the ring
/// (it ends; the client resumes from the bus).
fn take_from_ring(
    feed: &Feed,
    next: &mut u64,
    at: &mut Position,
    types: &TypeFilter,
    subject: &str,
) -> Result<Option<Bytes>, ()> {
    let ring = feed.lock();
    let start = ring.count - ring.events.len() as u64;
    if *next < start || *next == u64::MAX {
        return Err(());
    }
    for read in ring.events.range((*next - start) as usize..) {
        *next = read.index + 1;
        // Already passed: the client resumed after it.
        if read.seq <= at.seq(&read.log) {
            continue;
        }
        at.merge(&read.after);
        if read.event.subject == subject && types.matches(&read.event.event_type) {
            return Ok(Some(frame(&read.event, at)));
        }
    }
    Ok(None)
}

/// One event as SSE lines: its type, the position after it, the CloudEvent.
fn frame(event: &CloudEvent, after: &Position) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!(
        "event: {}\nid: {}\ndata: {data}\n\n",
        event.event_type,
        after.token()
    ))
}

/// A comment that keeps the connection alive and the client's position.
fn keepalive(at: &Position) -> Bytes {
    Bytes::from(format!(": keepalive\nid: {}\n\n", at.token()))
}
