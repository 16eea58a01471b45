//! The `Broker` port. Semantics every adapter keeps (the conformance suite
//! in `tests/conformance.rs` checks them):
//!
//! - **At least once.** A delivery not acked within `ack_wait` (the consumer
//!   crashed) or nacked comes back, after a backoff that doubles per attempt.
//! - **Per-subject order within a group.** A later event of a subject from
//!   one producing service (the first part of the event type) is not
//!   delivered while an earlier one is in flight or waiting to be retried.
//!   Events of different producers have no order among them.
//! - **Groups.** Every group sees every matching event; the members of one
//!   group share them, each event going to one member at a time.
//! - **Dead letters.** An event that has failed `max_deliveries` times is
//!   moved to the group's dead-letter store, logged at error level and
//!   counted; it can be replayed into the group or dropped.
//! - **Replay.** A new group starts from the first event ever published.
//! - **Publish de-duplication.** Publishing an event id twice stores it once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;
use tokio::sync::Notify;

use crate::event::CloudEvent;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("subscription closed")]
    Closed,
}

impl BusError {
    pub(crate) fn unavailable(error: impl std::fmt::Display) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// Which event types a group receives: exact types, or prefixes ending in
/// `*` (`identity.user.*`, or `*` for everything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeFilter(Vec<String>);

impl TypeFilter {
    pub fn parse(patterns: &[&str]) -> Result<Self, BusError> {
        let valid = |p: &str| {
            let body = p.strip_suffix('*').unwrap_or(p);
            !p.is_empty()
                && body.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
        };
        match patterns.iter().find(|p| !valid(p)) {
            Some(bad) => Err(BusError::Invalid(format!("bad event type pattern {bad:?}"))),
            None if patterns.is_empty() => Err(BusError::Invalid("no event type pattern".into())),
            None => Ok(Self(patterns.iter().map(|p| p.to_string()).collect())),
        }
    }

    pub fn all() -> Self {
        Self(vec!["*".into()])
    }

    pub fn matches(&self, event_type: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => event_type.starts_with(prefix),
            None => event_type == p,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// Retry delay: `first`, doubling per attempt, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before delivery number `attempt + 1`, after `attempt` failed.
    pub fn after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.max)
    }
}

/// A durable consumer group's settings.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// The durable name: members with the same name share the events.
    pub group: String,
    pub types: TypeFilter,
    /// After this many failed deliveries the event is dead-lettered.
    pub max_deliveries: u32,
    /// A delivery not settled within this long is delivered again. 10 s
    /// by default: handlers are short transactions, and a delivery lost
    /// with a crashed member (or, on NATS, with a server restart) holds its
    /// subject back this long.
    pub ack_wait: Duration,
    pub backoff: Backoff,
    /// At most this many deliveries are handed to one member at a time.
    pub batch_max: usize,
}

impl SubscribeOptions {
    pub fn new(group: &str, types: TypeFilter) -> Self {
        Self {
            group: group.into(),
            types,
            max_deliveries: 5,
            ack_wait: Duration::from_secs(10),
            backoff: Backoff {
                first: Duration::from_millis(500),
                max: Duration::from_secs(60),
            },
            batch_max: 64,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), BusError> {
        let name_ok = !self.group.is_empty()
            && self.group.len() <= 64
            && self
                .group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !name_ok {
            return Err(BusError::Invalid(format!(
                "group name {:?} must be 1-64 of [A-Za-z0-9_-]",
                self.group
            )));
        }
        if self.max_deliveries == 0 || self.batch_max == 0 || self.ack_wait.is_zero() {
            return Err(BusError::Invalid(
                "max_deliveries, batch_max and ack_wait must be > 0".into(),
            ));
        }
        Ok(())
    }
}

/// How a delivery is settled; each adapter has its own.
#[async_trait]
pub trait Settle: Send {
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    async fn nack(self: Box<Self>, reason: &str) -> Result<(), BusError>;
}

/// One event handed to one member of a group. Settle it with [`ack`] once
/// its effect is committed, or [`nack`] to have it retried; dropping it
/// unsettled means it comes back after `ack_wait`.
///
/// [`ack`]: Delivery::ack
/// [`nack`]: Delivery::nack
pub struct Delivery {
    pub event: CloudEvent,
    /// 1 for the first delivery.
    pub attempt: u32,
    settle: Box<dyn Settle>,
}

impl Delivery {
    pub fn new(event: CloudEvent, attempt: u32, settle: Box<dyn Settle>) -> Self {
        Self {
            event,
            attempt,
            settle,
        }
    }

    pub async fn ack(self) -> Result<(), BusError> {
        self.settle.ack().await
    }

    pub async fn nack(self, reason: &str) -> Result<(), BusError> {
        self.settle.nack(reason).await
    }
}

#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// What a polling adapter offers its subscriptions: lease deliverable
/// events of a group, and a signal that something changed in this process.
#[async_trait]
pub(crate) trait Claim: Send + Sync + 'static {
    async fn claim(
        this: &Arc<Self>,
        group: &str,
        batch_max: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    fn changed(&self) -> &Notify;
}

/// A member of a group on a polling adapter: hands out what it claimed,
/// claims more when empty, and otherwise waits for a local change or the
/// idle interval (other processes' changes are only seen by looking).
pub(crate) struct PollingSubscription<C> {
    pub(crate) source: Arc<C>,
    pub(crate) group: String,
    pub(crate) batch_max: usize,
    pub(crate) idle: Duration,
    pub(crate) ready: VecDeque<Delivery>,
}

#[async_trait]
impl<C: Claim> Subscription for PollingSubscription<C> {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            if let Some(delivery) = self.ready.pop_front() {
                return Ok(delivery);
            }
            let changed = self.source.changed().notified();
            match C::claim(&self.source, &self.group, self.batch_max).await {
                Ok(deliveries) => self.ready.extend(deliveries),
                Err(BusError::Unavailable(error)) => {
                    tracing::warn!(group = %self.group, %error, "claim failed; retrying");
                }
                Err(other) => return Err(other),
            }
            if self.ready.is_empty() {
                tokio::select! {
                    _ = changed => {}
                    _ = tokio::time::sleep(self.idle) => {}
                }
            }
        }
    }
}

/// An event that failed `max_deliveries` times in a group.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// The broker's position of the event; names it for replay and drop.
    pub seq: u64,
    pub group: String,
    pub attempts: u32,
    pub reason: String,
    pub dead_at_ms: u64,
    pub event: CloudEvent,
}

/// How far behind a group is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    /// Matching events not yet acked (in flight, waiting, or not yet read).
    pub pending: u64,
    pub dead_letters: u64,
}

/// Where a [`Broker::tail`] starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailFrom {
    /// The first event ever published.
    Start,
    /// Only events published from now on.
    Now,
    /// Just after an earlier tail's [`EventStream::position`]: nothing
    /// published after it is missed, nothing before it comes again.
    After(Position),
}

/// The most logs a [`Position`] names (one per producing service on NATS).
pub const POSITION_LOGS_MAX: usize = 64;

/// Where a tail stands: for each log it reads (one per producing service
/// on NATS, one for the embedded and in-memory logs), the sequence number
/// of the last event it has passed; a log it names not is at 0. Written
/// as a token (`log:seq,log:seq`) that a client can hand back, as an SSE
/// `Last-Event-ID`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position(std::collections::BTreeMap<String, u64>);

impl Position {
    /// How far the position is in `log`.
    pub fn seq(&self, log: &str) -> u64 {
        self.0.get(log).copied().unwrap_or(0)
    }

    /// Moves the position in `log` to `seq`, never back.
    pub fn advance(&mut self, log: &str, seq: u64) {
        let at = self.0.entry(log.to_owned()).or_default();
        *at = (*at).max(seq);
    }

    /// Each log it names, with its sequence.
    pub fn logs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(log, &seq)| (log.as_str(), seq))
    }

    /// As far as either, in every log.
    pub fn merge(&mut self, other: &Position) {
        for (log, seq) in other.logs() {
            self.advance(log, seq);
        }
    }

    /// Whether it is at least as far as `other` in every log.
    pub fn covers(&self, other: &Position) -> bool {
        other.0.iter().all(|(log, &seq)| self.seq(log) >= seq)
    }

    pub fn token(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(log, seq)| format!("{log}:{seq}"))
            .collect();
        parts.join(",")
    }

    /// A token written by [`Position::token`]; anything else is refused.
    pub fn parse(token: &str) -> Result<Self, BusError> {
        let invalid = || BusError::Invalid(format!("{token:?} is not a position"));
        let mut position = Self::default();
        for part in token.split(',').filter(|p| !p.is_empty()) {
            let (log, seq) = part.rsplit_once(':').ok_or_else(invalid)?;
            let named = !log.is_empty()
                && log.len() <= 128
                && log
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            let seq = seq.parse::<u64>().map_err(|_| invalid())?;
            if !named || position.0.insert(log.to_owned(), seq).is_some() {
                return Err(invalid());
            }
            if position.0.len() > POSITION_LOGS_MAX {
                return Err(invalid());
            }
        }
        Ok(position)
    }
}

/// Events as they are published, for watching: nothing is acknowledged and
/// no group's position moves.
#[async_trait]
pub trait EventStream: Send {
    async fn next(&mut self) -> Result<CloudEvent, BusError>;
    /// Just after the last event [`EventStream::next`] returned (and any
    /// the type filter passed over): where [`TailFrom::After`] resumes.
    fn position(&self) -> Position;
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Stores the events, in order; ids already stored are skipped.
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError>;
    /// Joins (creating if new, from the first event) a durable group.
    async fn subscribe(&self, options: SubscribeOptions)
    -> Result<Box<dyn Subscription>, BusError>;
    async fn lag(&self) -> Result<Vec<GroupLag>, BusError>;
    async fn dead_letters(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError>;
    /// Puts a dead letter back into its group, with a fresh delivery count.
    async fn replay_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError>;
    async fn drop_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError>;
    /// Follows the log (`tessera events tail`).
    async fn tail(
        &self,
        types: TypeFilter,
        from: TailFrom,
    ) -> Result<Box<dyn EventStream>, BusError>;
}

pub type SharedBroker = Arc<dyn Broker>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub group: String,
    pub event_type: String,
}

/// Counts dead letters (`tessera_dead_letters_total` once registered on the
/// process's metrics) and logs each one at error level.
#[derive(Clone, Default)]
pub struct DeadLetterReport {
    counter: Family<DeadLetterLabels, Counter>,
}

impl DeadLetterReport {
    pub fn register(&self, metrics: &kit::telemetry::Metrics) {
        metrics.register(
            "dead_letters",
            "Events moved to a dead-letter store after max deliveries",
            self.counter.clone(),
        );
    }

    pub fn report(&self, group: &str, event: &CloudEvent, attempts: u32, reason: &str) {
        self.counter
            .get_or_create(&DeadLetterLabels {
                group: group.into(),
                event_type: event.event_type.clone(),
            })
            .inc();
        tracing::error!(
            event_id = %event.id,
            event_type = %event.event_type,
            group,
            trace_id = event.trace_id().unwrap_or(""),
            attempts,
            reason,
            "event dead-lettered"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_filters() {
        let filter = TypeFilter::parse(&["identity.user.*", "users.user.erased.v1"]).unwrap();
        assert!(filter.matches("identity.user.registered.v1"));
        assert!(filter.matches("users.user.erased.v1"));
        assert!(!filter.matches("users.user.updated.v1"));
        assert!(TypeFilter::all().matches("anything"));
        assert!(TypeFilter::parse(&["Bad Type"]).is_err());
        assert!(TypeFilter::parse(&[]).is_err());
    }

    #[test]
    fn positions_are_tokens_and_compare_per_log() {
        let mut a = Position::default();
        a.advance("identity", 3);
        a.advance("users", 7);
        a.advance("users", 2);
        assert_eq!(a.token(), "identity:3,users:7");
        assert_eq!(Position::parse(&a.token()).unwrap(), a);
        assert_eq!(Position::parse("").unwrap(), Position::default());
        let mut b = a.clone();
        b.advance("orders", 1);
        assert!(b.covers(&a) && !a.covers(&b));
        for bad in ["x", "a:1,a:2", "a:-1", ":1", "a b:1", "a:1x"] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(350),
        };
        let waits: Vec<_> = (1..=4).map(|a| backoff.after(a).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }
}
