//! Events from commit to consumer: a service commits each event in its own
//! SQLite transaction through the transactional outbox, the relay publishes
//! it, and a member of a consumer group receives and acks it. Measured on
//! the embedded log and on NATS JetStream, against raw async-nats (publish
//! to a JetStream stream, consume from a durable pull consumer) in the same
//! run, with ratios.
//!
//! Two phases per pipeline: a burst (events/s from the first commit to the
//! last ack, 4 producers) and a paced run (one event every 5 ms; p50/p99
//! commit→consume latency without queueing).
//!
//! `cargo bench -p tessera-bus --bench events`
//! (BENCH_EVENTS, default 2000; TESSERA_BENCH_NATS_URL, default
//! nats://127.0.0.1:4222; NATS rows are skipped when it does not answer).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use bus::broker::DeadLetterReport;
use bus::outbox::Outbox;
use bus::{CloudEvent, SharedBroker, SubscribeOptions, Subscription, TypeFilter};
use futures_util::StreamExt;
use serde_json::json;

const PRODUCERS: usize = 4;
const PACED_EVENTS: usize = 200;
const PACE: Duration = Duration::from_millis(5);
const SUBJECTS: usize = 64;

struct Figures {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let rank = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms[rank]
}

fn latencies(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (percentile(&ms, 0.5), percentile(&ms, 0.99))
}

fn bench_event(i: usize) -> CloudEvent {
    CloudEvent::new(
        "bench",
        "bench.thing.happened.v1",
        &format!("s{}", i % SUBJECTS),
        json!({ "i": i, "t_us": now_us() }),
        0,
    )
}

/// Receives `n` deliveries, acking each; the commit→consume latencies.
fn consume(mut sub: Box<dyn Subscription>, n: usize) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut ms = Vec::with_capacity(n);
        for _ in 0..n {
            let delivery = sub.next().await.expect("a delivery");
            let sent = delivery.event.data["t_us"].as_u64().unwrap();
            ms.push(now_us().saturating_sub(sent) as f64 / 1000.0);
            delivery.ack().await.expect("acked");
        }
        ms
    })
}

async fn commit(outbox: &Outbox, i: usize) {
    let tx = outbox.pool().begin().await.unwrap();
    outbox.commit(tx, &[bench_event(i)]).await.unwrap();
}

/// The outbox → relay → broker → consumer pipeline.
async fn through_outbox(broker: SharedBroker, n: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(support::sqlite_pool(dir.path()).await, kit::clock::system());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(outbox.relay(broker.clone()).run(async {
        let _ = stopped.await;
    }));
    let options = || {
        let types = TypeFilter::parse(&["bench.*"]).unwrap();
        SubscribeOptions::new("bench", types)
    };

    let consumer = consume(broker.subscribe(options()).await.unwrap(), n);
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for i in (p..n).step_by(PRODUCERS) {
                    commit(&outbox, i).await;
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
    consumer.await.unwrap();
    let per_s = n as f64 / started.elapsed().as_secs_f64();

    let consumer = consume(broker.subscribe(options()).await.unwrap(), PACED_EVENTS);
    for i in 0..PACED_EVENTS {
        commit(&outbox, n + i).await;
        tokio::time::sleep(PACE).await;
    }
    let (p50_ms, p99_ms) = latencies(consumer.await.unwrap());
    let _ = stop.send(());
    Figures {
        per_s,
        p50_ms,
        p99_ms,
    }
}

/// Raw async-nats: publish to a stream (acks awaited, pipelined), consume
/// from a durable pull consumer with `max_ack_pending`.
async fn raw_nats(js: &jetstream::Context, name: &str, n: usize, max_ack_pending: i64) -> Figures {
    let subject = format!("{name}.x");
    let stream = js
        .create_stream(stream::Config {
            name: name.into(),
            subjects: vec![format!("{name}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let total = n + PACED_EVENTS;
    let reader = tokio::spawn(async move {
        let mut ms = Vec::with_capacity(total);
        let mut burst_done = None;
        for i in 0..total {
            let message = messages.next().await.unwrap().unwrap();
            let sent = u64::from_le_bytes(message.payload[..8].try_into().unwrap());
            ms.push(now_us().saturating_sub(sent) as f64 / 1000.0);
            message.ack().await.unwrap();
            if i + 1 == n {
                burst_done = Some(Instant::now());
            }
        }
        (ms, burst_done.unwrap())
    });
    let publish = |js: jetstream::Context, subject: String| async move {
        js.publish(subject, now_us().to_le_bytes().to_vec().into())
            .await
            .unwrap()
    };
    let started = Instant::now();
    let mut acks = Vec::with_capacity(n);
    for _ in 0..n {
        acks.push(publish(js.clone(), subject.clone()).await);
    }
    for ack in acks {
        ack.await.unwrap();
    }
    for _ in 0..PACED_EVENTS {
        tokio::time::sleep(PACE).await;
        publish(js.clone(), subject.clone()).await.await.unwrap();
    }
    let (ms, burst_done) = reader.await.unwrap();
    let (p50_ms, p99_ms) = latencies(ms[n..].to_vec());
    js.delete_stream(name).await.unwrap();
    Figures {
        per_s: n as f64 / (burst_done - started).as_secs_f64(),
        p50_ms,
        p99_ms,
    }
}

fn row(name: &str, figures: &Figures) {
    println!(
        "{name:<44} {:>10.0} {:>9.2} {:>9.2}",
        figures.per_s, figures.p50_ms, figures.p99_ms
    );
}

fn ratio(name: &str, ours: &Figures, raw: &Figures) {
    println!(
        "{name:<44} events/s {:.3}   p99 {:.2}x",
        ours.per_s / raw.per_s,
        ours.p99_ms / raw.p99_ms
    );
}

fn nats_answers(url: &str) -> bool {
    let address = url.trim_start_matches("nats://");
    std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
        })
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let url =
        std::env::var("TESSERA_BENCH_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    println!(
        "{n} events in a burst from {PRODUCERS} producers (events/s), then {PACED_EVENTS} paced at {} ms (latency)",
        PACE.as_millis()
    );
    println!(
        "{:<44} {:>10} {:>9} {:>9}",
        "", "events/s", "p50 ms", "p99 ms"
    );

    let dir = tempfile::tempdir().unwrap();
    let embedded: SharedBroker = Arc::new(
        bus::embedded::EmbeddedBroker::open(
            &dir.path().join("events.db"),
            kit::clock::system(),
            DeadLetterReport::default(),
        )
        .await
        .unwrap(),
    );
    let embedded = through_outbox(embedded, n).await;
    row("embedded: outbox → log → consumer", &embedded);

    if !nats_answers(&url) {
        println!("NATS at {url} does not answer: NATS rows skipped");
        return;
    }
    let run = format!("bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let nats: SharedBroker = Arc::new(
        bus::nats::NatsBroker::connect(
            &url,
            &run,
            kit::clock::system(),
            DeadLetterReport::default(),
        )
        .await
        .unwrap(),
    );
    let ours = through_outbox(nats, n).await;
    row("nats: outbox → JetStream → consumer", &ours);

    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let raw = raw_nats(&js, &format!("{run}-raw"), n, 1000).await;
    row("raw async-nats (max_ack_pending 1000)", &raw);
    let raw_ordered = raw_nats(&js, &format!("{run}-raw1"), n, 1).await;
    row("raw async-nats (max_ack_pending 1)", &raw_ordered);

    ratio("nats / raw", &ours, &raw);
    ratio("nats / raw (max_ack_pending 1)", &ours, &raw_ordered);
    ratio("embedded / raw", &embedded, &raw);

    let mut names = js.stream_names();
    let mut ours_streams = Vec::new();
    while let Some(Ok(name)) = names.next().await {
        if name.starts_with(&format!("{run}-")) {
            ours_streams.push(name);
        }
    }
    for name in ours_streams {
        let _ = js.delete_stream(&name).await;
    }
}
