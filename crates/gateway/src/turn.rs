//! Writes gathered at the end of the event loop's turn. When one wake-up
//! of the loop brings many sockets' data, reading all of them before
//! writing any (as HAProxy does) lets the peers find many answers ready
//! at once instead of being woken for each: under load, fewer wake-ups
//! and context switches on both sides, and more requests per second on
//! a machine the peers share. A lone request in a turn is written at once,
//! so that a quiet gateway adds no latency.
//!
//! A turn ends when the loop's thread is about to block: the runtime
//! calls [`loop_blocks`] then (tokio's `on_thread_park`). Without it the
//! turn never ends, and every write but the first yields once: still
//! correct, only slower when quiet.

use std::cell::Cell;

thread_local! {
    /// Turns of this thread's event loop so far.
    static TURNS: Cell<u64> = const { Cell::new(0) };
    /// The turn of this thread's last write, if any.
    static LAST_WRITE: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The event loop on this thread is about to block: the next wake-up
/// starts a new turn.
pub fn loop_blocks() {
    TURNS.set(TURNS.get().wrapping_add(1));
}

/// Waits, before a write, until the turn's other tasks have run: at once
/// for the turn's first write, after one yield for the others.
pub async fn before_write() {
    let turn = TURNS.get();
    if LAST_WRITE.replace(Some(turn)) == Some(turn) {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test(flavor = "current_thread")]
    async fn a_turns_first_write_goes_at_once_the_others_after_the_turns_reads() {
        loop_blocks();
        assert!(
            before_write().now_or_never().is_some(),
            "first write of a turn"
        );
        assert!(
            before_write().now_or_never().is_none(),
            "second write of a turn"
        );
        loop_blocks();
        assert!(
            before_write().now_or_never().is_some(),
            "first write of the next turn"
        );
    }
}
