//! The event backbone: how services tell each other what happened, without
//! losing anything that was committed.
//!
//! - [`event`]: the CloudEvents 1.0 envelope every event travels in.
//! - [`broker`]: the [`Broker`] port: publish, durable consumer groups,
//!   ack/nack with backoff, dead letters, replay.
//! - Adapters: [`memory`] (tests, simulation), [`embedded`] (an
//!   append-only SQLite log in the data directory, shared by every process
//!   of one machine: the default of `tessera up`) and [`nats`] (NATS
//!   JetStream, when one machine is not enough).
//! - [`outbox`]: events written in the same SQL transaction as the state
//!   change, relayed in order; [`idempotency`]: consumers record what they
//!   processed in the same transaction as the effect.

pub mod broker;
pub mod embedded;
pub mod event;
pub mod idempotency;
pub mod memory;
pub mod nats;
pub mod outbox;

pub use broker::{
    Backoff, Broker, BusError, DeadLetter, Delivery, EventStream, GroupLag, Position, SharedBroker,
    SubscribeOptions, Subscription, TailFrom, TypeFilter,
};
pub use event::CloudEvent;

use std::path::Path;
use std::sync::Arc;

use broker::DeadLetterReport;
use kit::clock::SharedClock;

/// The embedded log's file, relative to the data directory.
pub const EMBEDDED_LOG_PATH: &str = "bus/events.db";

/// Opens the broker `url` names: empty or `embedded` for the embedded log
/// under `data_dir`, `nats://host:port` for NATS JetStream, `memory` for an
/// in-process one (tests, simulation).
pub async fn open(
    url: &str,
    data_dir: &Path,
    clock: SharedClock,
    report: DeadLetterReport,
) -> Result<SharedBroker, BusError> {
    match url {
        "" | "embedded" => {
            let broker =
                embedded::EmbeddedBroker::open(&data_dir.join(EMBEDDED_LOG_PATH), clock, report)
                    .await?;
            Ok(Arc::new(broker))
        }
        "memory" => {
            tracing::warn!("the event bus is in memory: events are lost when this process stops");
            Ok(Arc::new(memory::MemoryBroker::new(clock, report)))
        }
        nats if nats.starts_with("nats://") => {
            let broker =
                nats::NatsBroker::connect(nats, nats::DEFAULT_NAMESPACE, clock, report).await?;
            Ok(Arc::new(broker))
        }
        other => Err(BusError::Invalid(format!(
            "unsupported bus URL {other:?}: expected empty (embedded), embedded, nats://host:port or memory"
        ))),
    }
}

/// Runs a consumer group member until the process exits: each delivery
/// goes to `handle`; `Ok` acks it, `Err(reason)` nacks it for a retry
/// (and, after `max_deliveries`, the dead-letter store).
pub async fn consume<F, Fut>(broker: SharedBroker, options: SubscribeOptions, handle: F)
where
    F: Fn(CloudEvent) -> Fut + Send,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let group = options.group.clone();
    let mut subscription = loop {
        match broker.subscribe(options.clone()).await {
            Ok(subscription) => break subscription,
            Err(error) => {
                tracing::warn!(%group, %error, "cannot subscribe; retrying");
                tokio::time::sleep(CONSUME_RETRY_DELAY).await;
            }
        }
    };
    loop {
        let delivery = match subscription.next().await {
            Ok(delivery) => delivery,
            Err(error) => {
                tracing::warn!(%group, %error, "receive failed; retrying");
                tokio::time::sleep(CONSUME_RETRY_DELAY).await;
                continue;
            }
        };
        let trace =
            kit::telemetry::TraceContext::continue_or_start(delivery.event.traceparent.as_deref());
        let traced = kit::telemetry::Traced::new(trace);
        let outcome = kit::telemetry::in_trace(traced, handle(delivery.event.clone())).await;
        let settled = match outcome {
            Ok(()) => delivery.ack().await,
            Err(reason) => {
                tracing::warn!(%group, event_id = %delivery.event.id, attempt = delivery.attempt, %reason, "handler failed");
                delivery.nack(&reason).await
            }
        };
        if let Err(error) = settled {
            tracing::warn!(%group, %error, "settling a delivery failed; it will be redelivered");
        }
    }
}

/// Wait before retrying a failed subscribe or receive.
pub const CONSUME_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
