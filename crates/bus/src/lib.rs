//! The event backbone: how services tell each other what happened, without
//! losing anything that was committed.
//!
//! - [`event`]: the CloudEvents 1.0 envelope every event travels in.
//! - [`broker`]: the [`Broker`] port: publish, durable consumer groups,
//!   ack/nack with backoff, dead letters, replay.
//! - Adapters: [`memory`] (tests, simulation) and [`embedded`] (an
//!   append-only SQLite log in the data directory, shared by every process
//!   of one machine: the default of `tessera up`).
//! - [`outbox`]: events written in the same SQL transaction as the state
//!   change, relayed in order; [`idempotency`]: consumers record what they
//!   processed in the same transaction as the effect.

pub mod broker;
pub mod embedded;
pub mod event;
pub mod idempotency;
pub mod memory;
pub mod outbox;

pub use broker::{
    Backoff, Broker, BusError, DeadLetter, Delivery, GroupLag, SharedBroker, SubscribeOptions,
    Subscription, TypeFilter,
};
pub use event::CloudEvent;
