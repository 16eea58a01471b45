//! `tessera events`: watch the event log, see how far behind each consumer
//! group is, and work the dead-letter store.

use std::io::Write;

use bus::broker::DeadLetterReport;
use bus::{SharedBroker, TailFrom, TypeFilter};
use clap::Subcommand;
use kit::config::Config;

/// The most dead letters one `dlq list` prints.
pub const DLQ_LIST_MAX: usize = 10_000;

#[derive(Subcommand)]
pub enum EventsCommand {
    /// Follow events as they are published, one CloudEvents JSON line each.
    Tail {
        /// Event types to show: exact, or a prefix ending in `*`. Repeatable.
        #[arg(long = "type", value_name = "PATTERN", default_value = "*")]
        types: Vec<String>,
        /// Start from the first event ever published instead of from now.
        #[arg(long)]
        from_start: bool,
    },
    /// Pending and dead-lettered events per consumer group.
    Lag,
    /// The dead-letter store: events that failed `max_deliveries` times.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
}

#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters, oldest first, one JSON line each.
    List {
        #[arg(long)]
        group: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put a dead letter back into its group, with a fresh delivery count.
    Replay {
        #[arg(long)]
        group: String,
        #[arg(long)]
        seq: u64,
    },
    /// Delete a dead letter for good.
    Drop {
        #[arg(long)]
        group: String,
        #[arg(long)]
        seq: u64,
    },
}

async fn broker(config: &Config) -> Result<SharedBroker, String> {
    let common = config.common().map_err(|e| e.to_string())?;
    bus::open(
        &common.bus_url,
        &common.data_dir,
        kit::clock::system(),
        DeadLetterReport::default(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Writes one line; `Ok(false)` when the reader has gone (`| head`).
fn emit(line: &str) -> Result<bool, String> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(command: EventsCommand, config: &Config) -> Result<(), String> {
    let broker = broker(config).await?;
    match command {
        EventsCommand::Tail { types, from_start } => {
            let patterns: Vec<&str> = types.iter().map(String::as_str).collect();
            let filter = TypeFilter::parse(&patterns).map_err(|e| e.to_string())?;
            let from = if from_start {
                TailFrom::Start
            } else {
                TailFrom::Now
            };
            let mut stream = broker.tail(filter, from).await.map_err(|e| e.to_string())?;
            loop {
                let event = stream.next().await.map_err(|e| e.to_string())?;
                if !emit(&event.to_json())? {
                    return Ok(());
                }
            }
        }
        EventsCommand::Lag => {
            let lags = broker.lag().await.map_err(|e| e.to_string())?;
            let width = lags.iter().map(|l| l.group.len()).max().unwrap_or(5).max(5);
            emit(&format!(
                "{:width$}  {:>10}  {:>12}",
                "GROUP", "PENDING", "DEAD LETTERS"
            ))?;
            for lag in lags {
                emit(&format!(
                    "{:width$}  {:>10}  {:>12}",
                    lag.group, lag.pending, lag.dead_letters
                ))?;
            }
            Ok(())
        }
        EventsCommand::Dlq { action } => match action {
            DlqAction::List { group, limit } => {
                if limit == 0 || limit > DLQ_LIST_MAX {
                    return Err(format!("--limit must be 1 to {DLQ_LIST_MAX}"));
                }
                let letters = broker
                    .dead_letters(group.as_deref(), limit)
                    .await
                    .map_err(|e| e.to_string())?;
                for letter in letters {
                    let line = serde_json::to_string(&letter).map_err(|e| e.to_string())?;
                    if !emit(&line)? {
                        break;
                    }
                }
                Ok(())
            }
            DlqAction::Replay { group, seq } => {
                match broker
                    .replay_dead_letter(&group, seq)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    true => emit(&format!("replayed {seq} into {group}")).map(drop),
                    false => Err(format!("no dead letter {seq} in group {group}")),
                }
            }
            DlqAction::Drop { group, seq } => {
                match broker
                    .drop_dead_letter(&group, seq)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    true => emit(&format!("dropped {seq} from {group}")).map(drop),
                    false => Err(format!("no dead letter {seq} in group {group}")),
                }
            }
        },
    }
}
