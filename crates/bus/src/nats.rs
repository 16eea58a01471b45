//! The NATS JetStream adapter (`TESSERA_BUS_URL=nats://host:port`).
//!
//! Layout on the server, every name under a namespace (`tessera` unless a
//! test asks for its own):
//!
//! - One stream per producing service, `{ns}-ev-{service}`, holding the
//!   subjects `{ns}.ev.{service}.>`; an event of type `identity.user.x.v1`
//!   is published to `{ns}.ev.identity.user.x.v1` with `Nats-Msg-Id` = its
//!   id, so the server drops a re-publish within [`DUPLICATE_WINDOW`]. The
//!   streams keep every event (file storage, no age limit): a new group
//!   replays from the start.
//! - One durable pull consumer per group and stream, named after the group,
//!   with explicit acks and `ack_wait`. Per-subject order within a group
//!   holds because each consumer has at most one unacked delivery
//!   (`max_ack_pending = 1`): JetStream has no per-subject ordering across
//!   the members of a pull consumer, and a nacked event must not be
//!   overtaken by a later one of its subject. The price is one delivery in
//!   flight per group and service (the benchmark in `benches/events.rs`
//!   shows what that costs), and a delivery lost in flight (its member
//!   killed, the server restarted) holds the whole group, not only its
//!   subject, until `ack_wait`. Acks and nacks wait for the server's
//!   confirmation and are retried across a reconnect, so that a lost ack
//!   does not do the same.
//! - Retries are negative acks with the group's backoff as the delay. The
//!   delivery limit is kept by this adapter, not by the server's
//!   `MaxDeliver` (left unlimited): the server would stop delivering in
//!   silence, where a dead letter must be stored, logged and counted.
//! - Dead letters are messages of the stream `{ns}-dead-letters`, subject
//!   `{ns}.dlq.{group}`, named by their sequence there. Replay publishes the
//!   event to `{ns}.replay.{group}` (stream `{ns}-replay`), which only that
//!   group's consumer reads, so other groups do not see it twice.
//! - The client reconnects forever; pull requests are re-issued after a
//!   reconnect, and a consumer whose stream breaks is re-created.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use kit::clock::SharedClock;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::broker::{
    Broker, BusError, DeadLetter, DeadLetterReport, Delivery, EventStream, GroupLag, Position,
    Settle, SubscribeOptions, Subscription, TailFrom, TypeFilter,
};
use crate::event::{CloudEvent, EVENT_BYTES_MAX};

/// The namespace of a deployment's streams unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "tessera";
/// A re-published event id within this window is stored once.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How often a group reading every service, or a tail, looks for new
/// service streams.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);
/// Wait before re-creating a consumer whose message stream broke.
const RECREATE_DELAY: Duration = Duration::from_millis(500);
/// Tries to settle a delivery and hear the server confirm it: an ack lost
/// in a reconnect would otherwise hold the group's one delivery in flight
/// until `ack_wait`.
const SETTLE_ATTEMPTS: u32 = 5;
const SETTLE_RETRY_DELAY: Duration = Duration::from_millis(200);
/// Deliveries a member buffers per subscription (each consumer has at most
/// one unacked, so this only bounds the merge of several streams).
const MEMBER_BUFFER: usize = 16;

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::unavailable(error)
}

/// Settles `message` as `kind`, confirmed by the server, retrying across a
/// reconnect.
async fn settle(message: &jetstream::Message, kind: jetstream::AckKind) -> Result<(), BusError> {
    let mut attempt = 1;
    loop {
        match message.double_ack_with(kind).await {
            Ok(()) => return Ok(()),
            Err(error) if attempt >= SETTLE_ATTEMPTS => return Err(unavailable(error)),
            Err(error) => {
                tracing::debug!(%error, attempt, "settling a NATS delivery failed; retrying");
                attempt += 1;
                tokio::time::sleep(SETTLE_RETRY_DELAY).await;
            }
        }
    }
}

/// The server-side names of one namespace.
#[derive(Debug, Clone)]
struct Names {
    ns: String,
}

impl Names {
    fn new(ns: &str) -> Result<Self, BusError> {
        let valid = !ns.is_empty()
            && ns.len() <= 32
            && ns
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(BusError::Invalid(format!(
                "NATS namespace {ns:?} must be 1-32 of [a-z0-9_]"
            )));
        }
        Ok(Self { ns: ns.into() })
    }

    fn event_stream_prefix(&self) -> String {
        format!("{}-ev-", self.ns)
    }

    fn event_stream(&self, service: &str) -> String {
        format!("{}-ev-{service}", self.ns)
    }

    fn event_subject(&self, event_type: &str) -> String {
        format!("{}.ev.{event_type}", self.ns)
    }

    fn dead_letter_stream(&self) -> String {
        format!("{}-dead-letters", self.ns)
    }

    fn dead_letter_subject(&self, group: &str) -> String {
        format!("{}.dlq.{group}", self.ns)
    }

    fn replay_stream(&self) -> String {
        format!("{}-replay", self.ns)
    }

    fn replay_subject(&self, group: &str) -> String {
        format!("{}.replay.{group}", self.ns)
    }

    /// The consumer filter that covers a stream's share of `types`: the
    /// one pattern as a subject when it can be said as one, else the whole
    /// stream (the member filters what it receives).
    fn filter_subject(&self, service: &str, types: &TypeFilter) -> String {
        let mine: Vec<&String> = types
            .patterns()
            .iter()
            .filter(|p| service_of_pattern(p) == Some(service))
            .collect();
        match mine.as_slice() {
            [one] if !one.contains('*') => self.event_subject(one),
            [one] if one.ends_with(".*") => {
                format!("{}.>", self.event_subject(one.trim_end_matches(".*")))
            }
            _ => format!("{}.ev.{service}.>", self.ns),
        }
    }
}

/// The producing service of an event type: its first dot-separated part.
fn service_of_type(event_type: &str) -> Result<&str, BusError> {
    let valid = event_type.split('.').count() >= 2
        && event_type.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-')
                })
        });
    match event_type.split_once('.') {
        Some((service, _)) if valid => Ok(service),
        _ => Err(BusError::Invalid(format!(
            "event type {event_type:?} must be dot-separated parts of [a-z0-9_-], the first naming the producing service"
        ))),
    }
}

/// The service a type pattern is confined to, if it names one.
fn service_of_pattern(pattern: &str) -> Option<&str> {
    let (service, _) = pattern.split_once('.')?;
    (!service.contains('*')).then_some(service)
}

/// A dead letter as stored in the dead-letter stream.
#[derive(Serialize, Deserialize)]
struct StoredDeadLetter {
    group: String,
    attempts: u32,
    reason: String,
    dead_at_ms: u64,
    event: CloudEvent,
}

struct Inner {
    js: jetstream::Context,
    names: Names,
    clock: SharedClock,
    report: DeadLetterReport,
    /// Streams known to exist, so publishing does not ask every time.
    streams: Mutex<HashSet<String>>,
}

/// The JetStream broker. Cheap to clone through [`crate::SharedBroker`].
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl NatsBroker {
    /// Connects to `url` (reconnecting forever, in the background if the
    /// server is not up yet) and keeps this deployment's streams under
    /// `namespace`.
    pub async fn connect(
        url: &str,
        namespace: &str,
        clock: SharedClock,
        report: DeadLetterReport,
    ) -> Result<Self, BusError> {
        let names = Names::new(namespace)?;
        let client = async_nats::ConnectOptions::new()
            .name("tessera")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(|e| BusError::Invalid(format!("NATS URL {url:?}: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                js: jetstream::new(client),
                names,
                clock,
                report,
                streams: Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl Inner {
    /// Creates the stream if it is not known to exist.
    async fn ensure_stream(&self, name: String, subjects: String) -> Result<(), BusError> {
        if self.streams.lock().unwrap().contains(&name) {
            return Ok(());
        }
        self.js
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subjects],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: DUPLICATE_WINDOW,
                max_message_size: i32::try_from(EVENT_BYTES_MAX * 2).unwrap_or(i32::MAX),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        self.streams.lock().unwrap().insert(name);
        Ok(())
    }

    async fn ensure_service_stream(&self, service: &str) -> Result<String, BusError> {
        let name = self.names.event_stream(service);
        let subjects = format!("{}.ev.{service}.>", self.names.ns);
        self.ensure_stream(name.clone(), subjects).await?;
        Ok(name)
    }

    async fn ensure_dead_letter_stream(&self) -> Result<String, BusError> {
        let name = self.names.dead_letter_stream();
        let subjects = format!("{}.dlq.>", self.names.ns);
        self.ensure_stream(name.clone(), subjects).await?;
        Ok(name)
    }

    async fn ensure_replay_stream(&self) -> Result<String, BusError> {
        let name = self.names.replay_stream();
        let subjects = format!("{}.replay.>", self.names.ns);
        self.ensure_stream(name.clone(), subjects).await?;
        Ok(name)
    }

    /// The services that have an event stream now.
    async fn services(&self) -> Result<Vec<String>, BusError> {
        let prefix = self.names.event_stream_prefix();
        let mut names = self.js.stream_names();
        let mut services = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(unavailable)?;
            if let Some(service) = name.strip_prefix(&prefix) {
                services.push(service.to_string());
            }
        }
        Ok(services)
    }

    /// Sends a message; the returned future is the server's acknowledgement.
    async fn send(
        &self,
        subject: String,
        payload: String,
        message_id: Option<&str>,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut message = jetstream::message::PublishMessage::build().payload(payload.into());
        if let Some(id) = message_id {
            message = message.message_id(id);
        }
        self.js
            .send_publish(subject, message)
            .await
            .map_err(unavailable)
    }

    /// Publishes and waits for the server's acknowledgement.
    async fn publish_one(
        &self,
        subject: String,
        payload: String,
        message_id: Option<&str>,
    ) -> Result<(), BusError> {
        let ack = self.send(subject, payload, message_id).await?;
        ack.await.map_err(unavailable)?;
        Ok(())
    }

    /// Stores a dead letter, reports it, and acks the message it replaces.
    async fn dead_letter(
        &self,
        group: &str,
        message: &jetstream::Message,
        event: CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), BusError> {
        self.ensure_dead_letter_stream().await?;
        let origin = message.info().map_err(unavailable)?;
        // The same failed delivery stored twice (our ack lost) is stored once.
        let id = format!("{group}/{}/{}", origin.stream, origin.stream_sequence);
        let record = StoredDeadLetter {
            group: group.into(),
            attempts,
            reason: reason.into(),
            dead_at_ms: self.clock.now_ms(),
            event,
        };
        let body = serde_json::to_string(&record).expect("a dead letter serialises");
        self.publish_one(self.names.dead_letter_subject(group), body, Some(&id))
            .await?;
        self.report.report(group, &record.event, attempts, reason);
        settle(message, jetstream::AckKind::Ack).await
    }

    fn consumer_config(
        &self,
        options: &SubscribeOptions,
        filter_subject: String,
    ) -> consumer::pull::Config {
        consumer::pull::Config {
            durable_name: Some(options.group.clone()),
            filter_subject,
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            // Unlimited on the server; this adapter dead-letters (see above).
            max_deliver: -1,
            max_ack_pending: 1,
            ..Default::default()
        }
    }

    /// Reads a dead letter by its sequence, if it belongs to `group`.
    async fn stored_dead_letter(
        &self,
        group: &str,
        seq: u64,
    ) -> Result<Option<(jetstream::stream::Stream, StoredDeadLetter)>, BusError> {
        let stream = self
            .js
            .get_stream(self.ensure_dead_letter_stream().await?)
            .await
            .map_err(unavailable)?;
        let message = match stream.get_raw_message(seq).await {
            Ok(message) => message,
            Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(error) => return Err(unavailable(error)),
        };
        let record: StoredDeadLetter =
            serde_json::from_slice(&message.payload).map_err(unavailable)?;
        Ok((record.group == group).then_some((stream, record)))
    }
}

/// Runs a group's consumer on one stream, handing its messages to the
/// member; re-creates it whenever its message stream breaks. Ends when
/// the member is gone.
async fn pump(
    inner: Arc<Inner>,
    stream_name: String,
    config: consumer::pull::Config,
    batch_max: usize,
    out: mpsc::Sender<jetstream::Message>,
) {
    let group = config.durable_name.clone().unwrap_or_default();
    loop {
        let messages = async {
            let stream = inner
                .js
                .get_stream_no_info(&stream_name)
                .await
                .map_err(unavailable)?;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(config.clone())
                .await
                .map_err(unavailable)?;
            consumer
                .stream()
                .max_messages_per_batch(batch_max)
                .messages()
                .await
                .map_err(unavailable)
        }
        .await;
        match messages {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => {
                            if out.send(message).await.is_err() {
                                return;
                            }
                        }
                        Err(error)
                            if error.kind()
                                == consumer::pull::MessagesErrorKind::MissingHeartbeat =>
                        {
                            tracing::warn!(%group, stream = %stream_name, %error, "NATS heartbeat missed; waiting");
                        }
                        Err(error) => {
                            tracing::warn!(%group, stream = %stream_name, %error, "NATS consumer broke; re-creating");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%group, stream = %stream_name, %error, "cannot open the NATS consumer; retrying");
            }
        }
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(RECREATE_DELAY).await;
    }
}

/// Starts the consumers of a group member: one per service stream its
/// patterns name, one on the replay stream, and, when a pattern spans every
/// service, one per service stream found now or later.
async fn supervise(
    inner: Arc<Inner>,
    options: SubscribeOptions,
    named: Vec<String>,
    discover: bool,
    out: mpsc::Sender<jetstream::Message>,
) {
    let mut pumps = JoinSet::new();
    let mut started = HashSet::new();
    let mut start = |pumps: &mut JoinSet<()>, stream: String, filter: String| {
        if started.insert(stream.clone()) {
            let config = inner.consumer_config(&options, filter);
            pumps.spawn(pump(
                inner.clone(),
                stream,
                config,
                options.batch_max,
                out.clone(),
            ));
        }
    };
    start(
        &mut pumps,
        inner.names.replay_stream(),
        inner.names.replay_subject(&options.group),
    );
    for service in &named {
        let filter = inner.names.filter_subject(service, &options.types);
        start(&mut pumps, inner.names.event_stream(service), filter);
    }
    if !discover {
        std::future::pending::<()>().await;
    }
    loop {
        match inner.services().await {
            Ok(services) => {
                for service in services {
                    let filter = format!("{}.ev.{service}.>", inner.names.ns);
                    start(&mut pumps, inner.names.event_stream(&service), filter);
                }
            }
            Err(error) => {
                tracing::warn!(group = %options.group, %error, "cannot list NATS streams")
            }
        }
        tokio::time::sleep(DISCOVERY_INTERVAL).await;
    }
}

/// A task aborted when its owner is dropped.
struct Owned(tokio::task::JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct NatsSubscription {
    inner: Arc<Inner>,
    options: SubscribeOptions,
    messages: mpsc::Receiver<jetstream::Message>,
    _supervisor: Owned,
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let message = self.messages.recv().await.ok_or(BusError::Closed)?;
            let info = message.info().map_err(unavailable)?;
            let attempt = u32::try_from(info.delivered).unwrap_or(u32::MAX);
            let event: CloudEvent = match serde_json::from_slice(&message.payload) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(group = %self.options.group, stream = info.stream, seq = info.stream_sequence, %error, "not a CloudEvent; terminated");
                    settle(&message, jetstream::AckKind::Term).await?;
                    continue;
                }
            };
            if !self.options.types.matches(&event.event_type) {
                settle(&message, jetstream::AckKind::Ack).await?;
                continue;
            }
            if attempt > self.options.max_deliveries {
                let reason = "not acknowledged within ack_wait";
                self.inner
                    .dead_letter(&self.options.group, &message, event, attempt - 1, reason)
                    .await?;
                continue;
            }
            let settle = NatsSettle {
                inner: self.inner.clone(),
                group: self.options.group.clone(),
                options: self.options.clone(),
                event: event.clone(),
                attempt,
                message,
            };
            return Ok(Delivery::new(event, attempt, Box::new(settle)));
        }
    }
}

struct NatsSettle {
    inner: Arc<Inner>,
    group: String,
    options: SubscribeOptions,
    event: CloudEvent,
    attempt: u32,
    message: jetstream::Message,
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        settle(&self.message, jetstream::AckKind::Ack).await
    }

    async fn nack(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        if self.attempt >= self.options.max_deliveries {
            return self
                .inner
                .dead_letter(&self.group, &self.message, self.event, self.attempt, reason)
                .await;
        }
        let delay = self.options.backoff.after(self.attempt);
        settle(&self.message, jetstream::AckKind::Nak(Some(delay))).await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let service = service_of_type(&event.event_type)?;
            let body = event.to_bounded_json()?;
            self.inner.ensure_service_stream(service).await?;
            let subject = self.inner.names.event_subject(&event.event_type);
            acks.push(self.inner.send(subject, body, Some(&event.id)).await?);
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.validate()?;
        let mut named = Vec::new();
        let mut discover = false;
        for pattern in options.types.patterns() {
            match service_of_pattern(pattern) {
                Some(service) if !named.iter().any(|s| s == service) => {
                    named.push(service.to_string())
                }
                Some(_) => {}
                None => discover = true,
            }
        }
        // The streams exist before the group's first consumer, so that a
        // group made before its producer's first event still reads it.
        self.inner.ensure_replay_stream().await?;
        for service in &named {
            self.inner.ensure_service_stream(service).await?;
        }
        let (out, messages) = mpsc::channel(MEMBER_BUFFER);
        let supervisor = tokio::spawn(supervise(
            self.inner.clone(),
            options.clone(),
            named,
            discover,
            out,
        ));
        Ok(Box::new(NatsSubscription {
            inner: self.inner.clone(),
            options,
            messages,
            _supervisor: Owned(supervisor),
        }))
    }

    async fn lag(&self) -> Result<Vec<GroupLag>, BusError> {
        let mut groups: BTreeMap<String, GroupLag> = BTreeMap::new();
        let mut streams: Vec<String> = self
            .inner
            .services()
            .await?
            .iter()
            .map(|s| self.inner.names.event_stream(s))
            .collect();
        streams.push(self.inner.ensure_replay_stream().await?);
        for name in streams {
            let stream = self
                .inner
                .js
                .get_stream_no_info(&name)
                .await
                .map_err(unavailable)?;
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.next().await {
                let info = info.map_err(unavailable)?;
                let lag = groups.entry(info.name.clone()).or_insert(GroupLag {
                    group: info.name.clone(),
                    pending: 0,
                    dead_letters: 0,
                });
                lag.pending += info.num_pending + info.num_ack_pending as u64;
            }
        }
        let dlq = self
            .inner
            .js
            .get_stream_no_info(self.inner.ensure_dead_letter_stream().await?)
            .await
            .map_err(unavailable)?;
        let prefix = self.inner.names.dead_letter_subject("");
        let mut counts = dlq
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(unavailable)?;
        while let Some(count) = counts.next().await {
            let (subject, n) = count.map_err(unavailable)?;
            if let Some(lag) = subject
                .strip_prefix(&prefix)
                .and_then(|group| groups.get_mut(group))
            {
                lag.dead_letters = n as u64;
            }
        }
        Ok(groups.into_values().collect())
    }

    async fn dead_letters(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let name = self.inner.ensure_dead_letter_stream().await?;
        let stream = self.inner.js.get_stream(&name).await.map_err(unavailable)?;
        if stream.cached_info().state.messages == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let filter_subject = match group {
            Some(group) => self.inner.names.dead_letter_subject(group),
            None => format!("{}.dlq.>", self.inner.names.ns),
        };
        let ordered = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut messages = ordered.messages().await.map_err(unavailable)?;
        let mut letters = Vec::new();
        // An empty filtered view never yields: stop after a quiet moment.
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(250), messages.next()).await
        {
            let message = message.map_err(unavailable)?;
            let info = message.info().map_err(unavailable)?;
            let record: StoredDeadLetter =
                serde_json::from_slice(&message.payload).map_err(unavailable)?;
            letters.push(DeadLetter {
                seq: info.stream_sequence,
                group: record.group,
                attempts: record.attempts,
                reason: record.reason,
                dead_at_ms: record.dead_at_ms,
                event: record.event,
            });
            if letters.len() >= limit || info.pending == 0 {
                break;
            }
        }
        Ok(letters)
    }

    async fn replay_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        let Some((stream, record)) = self.inner.stored_dead_letter(group, seq).await? else {
            return Ok(false);
        };
        self.inner.ensure_replay_stream().await?;
        self.inner
            .publish_one(
                self.inner.names.replay_subject(group),
                record.event.to_json(),
                None,
            )
            .await?;
        stream.delete_message(seq).await.map_err(unavailable)
    }

    async fn drop_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        let Some((stream, _)) = self.inner.stored_dead_letter(group, seq).await? else {
            return Ok(false);
        };
        stream.delete_message(seq).await.map_err(unavailable)
    }

    async fn tail(
        &self,
        types: TypeFilter,
        from: TailFrom,
    ) -> Result<Box<dyn EventStream>, BusError> {
        // The streams there are now are read from before this returns, so
        // that "now" means now; later ones are read from their start. The
        // position starts where each stream is read from.
        let mut readers = Vec::new();
        let mut known = HashSet::new();
        let mut position = Position::default();
        for service in self.inner.services().await? {
            let stream = self.inner.names.event_stream(&service);
            let after = match &from {
                TailFrom::Start => 0,
                TailFrom::After(earlier) => earlier.seq(&stream),
                TailFrom::Now => {
                    let mut found = self
                        .inner
                        .js
                        .get_stream(&stream)
                        .await
                        .map_err(unavailable)?;
                    found.info().await.map_err(unavailable)?.state.last_sequence
                }
            };
            let policy = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            };
            readers.push((
                stream.clone(),
                open_reader(&self.inner, &stream, policy).await?,
            ));
            position.advance(&stream, after);
            known.insert(stream);
        }
        let (out, events) = mpsc::channel(MEMBER_BUFFER);
        let task = tokio::spawn(follow(self.inner.clone(), readers, known, out));
        Ok(Box::new(NatsTail {
            types,
            events,
            position,
            _task: Owned(task),
        }))
    }
}

async fn open_reader(
    inner: &Inner,
    stream_name: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<consumer::pull::Ordered, BusError> {
    let stream = inner
        .js
        .get_stream_no_info(stream_name)
        .await
        .map_err(unavailable)?;
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    ordered.messages().await.map_err(unavailable)
}

/// Forwards what `readers` read, and every service stream that appears
/// later from its start, until the tail is dropped.
async fn follow(
    inner: Arc<Inner>,
    readers: Vec<(String, consumer::pull::Ordered)>,
    mut known: HashSet<String>,
    out: mpsc::Sender<Positioned>,
) {
    let mut forwarding = JoinSet::new();
    for (stream, reader) in readers {
        forwarding.spawn(forward(stream, reader, out.clone()));
    }
    while !out.is_closed() {
        tokio::time::sleep(DISCOVERY_INTERVAL).await;
        for service in inner.services().await.unwrap_or_default() {
            let stream = inner.names.event_stream(&service);
            if known.contains(&stream) {
                continue;
            }
            match open_reader(&inner, &stream, consumer::DeliverPolicy::All).await {
                Ok(reader) => {
                    forwarding.spawn(forward(stream.clone(), reader, out.clone()));
                    known.insert(stream);
                }
                Err(error) => tracing::warn!(%stream, %error, "cannot follow the stream"),
            }
        }
    }
}

/// An event read from a stream, with its sequence there.
struct Positioned {
    stream: String,
    seq: u64,
    event: CloudEvent,
}

async fn forward(
    stream: String,
    mut reader: consumer::pull::Ordered,
    out: mpsc::Sender<Positioned>,
) {
    while let Some(message) = reader.next().await {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "following a stream");
                continue;
            }
        };
        let Ok(info) = message.info() else {
            tracing::warn!(%stream, "a message without its stream sequence; skipped");
            continue;
        };
        let seq = info.stream_sequence;
        match serde_json::from_slice::<CloudEvent>(&message.payload) {
            Ok(event) => {
                let read = Positioned {
                    stream: stream.clone(),
                    seq,
                    event,
                };
                if out.send(read).await.is_err() {
                    return;
                }
            }
            Err(error) => tracing::warn!(%error, "not a CloudEvent; skipped"),
        }
    }
}

struct NatsTail {
    types: TypeFilter,
    events: mpsc::Receiver<Positioned>,
    position: Position,
    _task: Owned,
}

#[async_trait]
impl EventStream for NatsTail {
    async fn next(&mut self) -> Result<CloudEvent, BusError> {
        loop {
            let read = self.events.recv().await.ok_or(BusError::Closed)?;
            self.position.advance(&read.stream, read.seq);
            if self.types.matches(&read.event.event_type) {
                return Ok(read.event);
            }
        }
    }

    fn position(&self) -> Position {
        self.position.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_name_their_service() {
        assert_eq!(
            service_of_type("identity.user.registered.v1").unwrap(),
            "identity"
        );
        for bad in ["identity", "Identity.user", "a..b", "a.b c", "a.b.>", ""] {
            assert!(service_of_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn consumer_filters_are_as_narrow_as_one_subject_allows() {
        let names = Names::new("t").unwrap();
        let filter = |patterns: &[&str]| {
            names.filter_subject("identity", &TypeFilter::parse(patterns).unwrap())
        };
        assert_eq!(
            filter(&["identity.user.registered.v1"]),
            "t.ev.identity.user.registered.v1"
        );
        assert_eq!(filter(&["identity.user.*"]), "t.ev.identity.user.>");
        assert_eq!(filter(&["identity.user.reg*"]), "t.ev.identity.>");
        assert_eq!(
            filter(&["identity.user.registered.v1", "identity.user.deleted.v1"]),
            "t.ev.identity.>"
        );
        assert_eq!(service_of_pattern("*"), None);
        assert_eq!(service_of_pattern("users.*"), Some("users"));
        assert!(Names::new("Bad-Name").is_err());
    }
}
