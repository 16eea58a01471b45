//! The in-memory broker, for tests and simulation: one process, nothing
//! kept. Same semantics as every adapter (see [`crate::broker`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kit::clock::SharedClock;
use tokio::sync::Notify;

use crate::broker::{
    Broker, BusError, Claim, DeadLetter, DeadLetterReport, Delivery, EventStream, GroupLag,
    PollingSubscription, Position, Settle, SubscribeOptions, Subscription, TailFrom, TypeFilter,
};
use crate::event::CloudEvent;

/// An idle subscriber looks again at least this often (for backoffs and
/// expired acknowledgement deadlines).
const IDLE_RECHECK: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    changed: Notify,
    clock: SharedClock,
    report: DeadLetterReport,
}

#[derive(Default)]
struct State {
    log: Vec<CloudEvent>,
    ids: HashSet<String>,
    groups: HashMap<String, Group>,
}

struct Group {
    options: SubscribeOptions,
    /// Log positions below this have been looked at.
    cursor: usize,
    /// Matching events not yet acked, by 1-based log position.
    inbox: BTreeMap<u64, Entry>,
    dead: BTreeMap<u64, DeadLetter>,
}

#[derive(Default)]
struct Entry {
    attempts: u32,
    visible_at_ms: u64,
    /// Non-zero while a member holds it.
    lease_until_ms: u64,
}

impl MemoryBroker {
    pub fn new(clock: SharedClock, report: DeadLetterReport) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                clock,
                report,
            }),
        }
    }
}

impl Inner {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn claim_batch(self: &Arc<Self>, group_name: &str, batch_max: usize) -> Vec<Delivery> {
        let now = self.clock.now_ms();
        self.with(|state| {
            let State { log, groups, .. } = state;
            let Some(group) = groups.get_mut(group_name) else {
                return Vec::new();
            };
            for (i, event) in log.iter().enumerate().skip(group.cursor) {
                if group.options.types.matches(&event.event_type) {
                    group.inbox.insert(i as u64 + 1, Entry::default());
                }
            }
            group.cursor = log.len();

            let expired: Vec<u64> = group
                .inbox
                .iter()
                .filter(|(_, e)| e.lease_until_ms != 0 && e.lease_until_ms <= now)
                .map(|(seq, _)| *seq)
                .collect();
            for seq in expired {
                self.fail(group, log, seq, now, "not acknowledged within ack_wait");
            }

            let mut blocked = HashSet::new();
            let mut claimed = Vec::new();
            for (seq, entry) in group.inbox.iter_mut() {
                let event = &log[*seq as usize - 1];
                if !blocked.insert(event.subject.clone()) {
                    continue;
                }
                if entry.lease_until_ms == 0 && entry.visible_at_ms <= now {
                    entry.attempts += 1;
                    entry.lease_until_ms = now + group.options.ack_wait.as_millis() as u64;
                    claimed.push((*seq, entry.attempts, event.clone()));
                    if claimed.len() >= batch_max {
                        break;
                    }
                }
            }
            claimed
        })
        .into_iter()
        .map(|(seq, attempt, event)| {
            let settle = MemorySettle {
                broker: Arc::clone(self),
                group: group_name.to_owned(),
                seq,
                attempt,
            };
            Delivery::new(event, attempt, Box::new(settle))
        })
        .collect()
    }

    /// A failed delivery: retried after a backoff, or dead-lettered.
    fn fail(&self, group: &mut Group, log: &[CloudEvent], seq: u64, now: u64, reason: &str) {
        let Some(entry) = group.inbox.get_mut(&seq) else {
            return;
        };
        if entry.attempts >= group.options.max_deliveries {
            let attempts = entry.attempts;
            group.inbox.remove(&seq);
            let event = log[seq as usize - 1].clone();
            self.report
                .report(&group.options.group, &event, attempts, reason);
            group.dead.insert(
                seq,
                DeadLetter {
                    seq,
                    group: group.options.group.clone(),
                    attempts,
                    reason: reason.into(),
                    dead_at_ms: now,
                    event,
                },
            );
        } else {
            entry.lease_until_ms = 0;
            entry.visible_at_ms =
                now + group.options.backoff.after(entry.attempts).as_millis() as u64;
        }
    }
}

struct MemorySettle {
    broker: Arc<Inner>,
    group: String,
    seq: u64,
    /// Settles only the delivery it was handed with: a late answer to an
    /// expired delivery changes nothing.
    attempt: u32,
}

impl MemorySettle {
    fn settle(&self, f: impl FnOnce(&Inner, &mut Group, &[CloudEvent], u64)) {
        let now = self.broker.clock.now_ms();
        self.broker.with(|state| {
            let State { log, groups, .. } = state;
            if let Some(group) = groups.get_mut(&self.group) {
                let current = group
                    .inbox
                    .get(&self.seq)
                    .is_some_and(|e| e.attempts == self.attempt && e.lease_until_ms != 0);
                if current {
                    f(&self.broker, group, log, now);
                }
            }
        });
        self.broker.changed.notify_waiters();
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let seq = self.seq;
        self.settle(|_, group, _, _| {
            group.inbox.remove(&seq);
        });
        Ok(())
    }

    async fn nack(self: Box<Self>, reason: &str) -> Result<(), BusError> {
        let seq = self.seq;
        self.settle(|broker, group, log, now| broker.fail(group, log, seq, now, reason));
        Ok(())
    }
}

#[async_trait]
impl Claim for Inner {
    async fn claim(
        this: &Arc<Self>,
        group: &str,
        batch_max: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(this.claim_batch(group, batch_max))
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), BusError> {
        self.inner.with(|state| {
            for event in events {
                if state.ids.insert(event.id.clone()) {
                    state.log.push(event.clone());
                }
            }
        });
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> Result<Box<dyn Subscription>, BusError> {
        options.validate()?;
        let group = options.group.clone();
        let batch_max = options.batch_max;
        self.inner.with(|state| match state.groups.get_mut(&group) {
            Some(existing) => existing.options = options,
            None => {
                state.groups.insert(
                    group.clone(),
                    Group {
                        options,
                        cursor: 0,
                        inbox: BTreeMap::new(),
                        dead: BTreeMap::new(),
                    },
                );
            }
        });
        Ok(Box::new(PollingSubscription {
            source: self.inner.clone(),
            group,
            batch_max,
            idle: IDLE_RECHECK,
            ready: VecDeque::new(),
        }))
    }

    async fn lag(&self) -> Result<Vec<GroupLag>, BusError> {
        Ok(self.inner.with(|state| {
            let mut lags: Vec<GroupLag> = state
                .groups
                .values()
                .map(|g| {
                    let unread = state.log[g.cursor..]
                        .iter()
                        .filter(|e| g.options.types.matches(&e.event_type))
                        .count();
                    GroupLag {
                        group: g.options.group.clone(),
                        pending: (g.inbox.len() + unread) as u64,
                        dead_letters: g.dead.len() as u64,
                    }
                })
                .collect();
            lags.sort_by(|a, b| a.group.cmp(&b.group));
            lags
        }))
    }

    async fn dead_letters(
        &self,
        group: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        Ok(self.inner.with(|state| {
            let mut dead: Vec<DeadLetter> = state
                .groups
                .values()
                .filter(|g| group.is_none_or(|name| g.options.group == name))
                .flat_map(|g| g.dead.values().cloned())
                .collect();
            dead.sort_by_key(|d| (d.dead_at_ms, d.seq));
            dead.truncate(limit);
            dead
        }))
    }

    async fn replay_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        let replayed = self.inner.with(|state| {
            let Some(g) = state.groups.get_mut(group) else {
                return false;
            };
            if g.dead.remove(&seq).is_none() {
                return false;
            }
            g.inbox.insert(seq, Entry::default());
            true
        });
        self.inner.changed.notify_waiters();
        Ok(replayed)
    }

    async fn drop_dead_letter(&self, group: &str, seq: u64) -> Result<bool, BusError> {
        Ok(self.inner.with(|state| {
            state
                .groups
                .get_mut(group)
                .is_some_and(|g| g.dead.remove(&seq).is_some())
        }))
    }

    async fn tail(
        &self,
        types: TypeFilter,
        from: TailFrom,
    ) -> Result<Box<dyn EventStream>, BusError> {
        let next = match from {
            TailFrom::Start => 0,
            TailFrom::Now => self.inner.with(|state| state.log.len()),
            TailFrom::After(position) => self
                .inner
                .with(|state| (position.seq(LOG) as usize).min(state.log.len())),
        };
        Ok(Box::new(MemoryTail {
            broker: self.inner.clone(),
            types,
            next,
        }))
    }
}

/// The one log's name in a [`Position`].
const LOG: &str = "log";

struct MemoryTail {
    broker: Arc<Inner>,
    types: TypeFilter,
    /// The log position to read next.
    next: usize,
}

#[async_trait]
impl EventStream for MemoryTail {
    fn position(&self) -> Position {
        let mut position = Position::default();
        position.advance(LOG, self.next as u64);
        position
    }

    async fn next(&mut self) -> Result<CloudEvent, BusError> {
        loop {
            let changed = self.broker.changed.notified();
            let found = self.broker.with(|state| {
                let found = state.log[self.next..]
                    .iter()
                    .position(|e| self.types.matches(&e.event_type))
                    .map(|i| (self.next + i, state.log[self.next + i].clone()));
                self.next = found.as_ref().map_or(state.log.len(), |(i, _)| i + 1);
                found
            });
            if let Some((_, event)) = found {
                return Ok(event);
            }
            changed.await;
        }
    }
}
