//! One suite for every broker adapter: the semantics in `bus::broker`.
//! Each scenario runs against the in-memory, the embedded and (when a
//! server is named) the NATS JetStream broker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bus::broker::DeadLetterReport;
use bus::embedded::EmbeddedBroker;
use bus::memory::MemoryBroker;
use bus::nats::NatsBroker;
use bus::{
    Backoff, CloudEvent, Delivery, Position, SharedBroker, SubscribeOptions, Subscription,
    TailFrom, TypeFilter,
};
use futures_util::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn event(event_type: &str, subject: &str, n: u64) -> CloudEvent {
    CloudEvent::new(
        "test",
        event_type,
        subject,
        json!({"n": n}),
        1_800_000_000_000 + n,
    )
}

fn options(group: &str) -> SubscribeOptions {
    SubscribeOptions {
        ack_wait: Duration::from_millis(500),
        backoff: Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        max_deliveries: 3,
        ..SubscribeOptions::new(group, TypeFilter::all())
    }
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a delivery in time")
        .unwrap()
}

async fn nothing_within(sub: &mut Box<dyn Subscription>, within: Duration) {
    if let Ok(d) = tokio::time::timeout(within, sub.next()).await {
        panic!("unexpected delivery {:?}", d.map(|d| d.event.id));
    }
}

fn n(delivery: &Delivery) -> u64 {
    delivery.event.data["n"].as_u64().unwrap()
}

/// What keeps a broker's store alive, and cleans it up, while it is tested.
type Store = Box<dyn Send>;

/// Brokers under test, each fresh: in memory, embedded, and NATS JetStream
/// when `TESSERA_TEST_NATS_URL` names a server (required in CI).
async fn brokers() -> Vec<(&'static str, SharedBroker, Store)> {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedBroker::open(
        &dir.path().join("events.db"),
        kit::clock::system(),
        DeadLetterReport::default(),
    )
    .await
    .unwrap();
    let mut brokers: Vec<(&'static str, SharedBroker, Store)> = vec![
        (
            "memory",
            std::sync::Arc::new(MemoryBroker::new(
                kit::clock::system(),
                DeadLetterReport::default(),
            )),
            Box::new(()),
        ),
        ("embedded", std::sync::Arc::new(embedded), Box::new(dir)),
    ];
    if let Some(url) = kit::testing::backend_url("TESSERA_TEST_NATS_URL") {
        let namespace = NatsNamespace::new(&url);
        let nats = NatsBroker::connect(
            &url,
            &namespace.name,
            kit::clock::system(),
            DeadLetterReport::default(),
        )
        .await
        .unwrap();
        brokers.push(("nats", std::sync::Arc::new(nats), Box::new(namespace)));
    }
    brokers
}

/// A namespace of its own on the shared NATS server, its streams deleted
/// when the test is done.
struct NatsNamespace {
    url: String,
    name: String,
}

impl NatsNamespace {
    fn new(url: &str) -> Self {
        Self {
            url: url.into(),
            name: format!("test_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        }
    }
}

impl Drop for NatsNamespace {
    /// Best effort: a failed test's server may be the reason it failed.
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), format!("{}-", self.name));
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let connect = async_nats::connect(url);
                let Ok(Ok(client)) = tokio::time::timeout(WAIT, connect).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                let mut names = js.stream_names();
                let mut mine = Vec::new();
                while let Some(Ok(name)) = names.next().await {
                    if name.starts_with(&prefix) {
                        mine.push(name);
                    }
                }
                for name in mine {
                    let _ = js.delete_stream(&name).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[tokio::test]
async fn per_subject_order_with_concurrent_members() {
    for (name, broker, _dir) in brokers().await {
        let events: Vec<_> = (0..60)
            .map(|i| event("t.a.v1", &format!("s{}", i % 3), i))
            .collect();
        broker.publish(&events).await.unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<String, Vec<u64>>::new()));
        let members: Vec<_> = (0..2)
            .map(|m| {
                let (broker, seen) = (broker.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut sub = broker.subscribe(options("order")).await.unwrap();
                    loop {
                        let Ok(Ok(d)) =
                            tokio::time::timeout(Duration::from_millis(700), sub.next()).await
                        else {
                            return;
                        };
                        tokio::time::sleep(Duration::from_millis((n(&d) + m) % 3)).await;
                        seen.lock()
                            .unwrap()
                            .entry(d.event.subject.clone())
                            .or_default()
                            .push(n(&d));
                        d.ack().await.unwrap();
                    }
                })
            })
            .collect();
        for member in members {
            member.await.unwrap();
        }
        let seen = seen.lock().unwrap();
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 60, "{name}");
        for (subject, ns) in seen.iter() {
            assert!(
                ns.windows(2).all(|w| w[0] < w[1]),
                "{name}: {subject} out of order: {ns:?}"
            );
        }
    }
}

#[tokio::test]
async fn unacked_deliveries_come_back_after_a_crash() {
    for (name, broker, _dir) in brokers().await {
        broker.publish(&[event("t.a.v1", "s", 1)]).await.unwrap();
        let mut crashed = broker.subscribe(options("crash")).await.unwrap();
        let first = next(&mut crashed).await;
        assert_eq!(first.attempt, 1, "{name}");
        drop(first);
        drop(crashed); // the member dies holding the delivery
        let mut survivor = broker.subscribe(options("crash")).await.unwrap();
        let again = next(&mut survivor).await;
        assert_eq!((n(&again), again.attempt), (1, 2), "{name}");
        again.ack().await.unwrap();
        nothing_within(&mut survivor, Duration::from_millis(700)).await;
    }
}

#[tokio::test]
async fn members_of_a_group_share_the_load() {
    for (name, broker, _dir) in brokers().await {
        let events: Vec<_> = (0..200)
            .map(|i| event("t.a.v1", &format!("s{i}"), i))
            .collect();
        broker.publish(&events).await.unwrap();
        let members: Vec<_> = (0..2)
            .map(|_| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    let mut sub = broker
                        .subscribe(SubscribeOptions {
                            batch_max: 4,
                            ..options("share")
                        })
                        .await
                        .unwrap();
                    let mut got = Vec::new();
                    while let Ok(Ok(d)) =
                        tokio::time::timeout(Duration::from_millis(400), sub.next()).await
                    {
                        got.push(n(&d));
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        d.ack().await.unwrap();
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for member in members {
            let got = member.await.unwrap();
            assert!(!got.is_empty(), "{name}: a member got nothing");
            all.extend(got);
        }
        all.sort();
        assert_eq!(
            all,
            (0..200).collect::<Vec<_>>(),
            "{name}: each event exactly once"
        );
    }
}

#[tokio::test]
async fn every_group_sees_every_event_and_only_its_types() {
    for (name, broker, _dir) in brokers().await {
        broker
            .publish(&[
                event("a.x.v1", "s", 1),
                event("b.y.v1", "s", 2),
                event("a.z.v1", "s", 3),
            ])
            .await
            .unwrap();
        let mut everything = broker.subscribe(options("everything")).await.unwrap();
        let mut only_a = broker
            .subscribe(SubscribeOptions {
                types: TypeFilter::parse(&["a.*"]).unwrap(),
                ..options("only-a")
            })
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = next(&mut everything).await;
            seen.push(n(&d));
            d.ack().await.unwrap();
        }
        let mut all = seen.clone();
        all.sort();
        assert_eq!(all, vec![1, 2, 3], "{name}");
        // Order holds per producer ("a" and "b" here), not across them.
        seen.retain(|&n| n != 2);
        assert_eq!(seen, vec![1, 3], "{name}");
        for expected in [1, 3] {
            let d = next(&mut only_a).await;
            assert_eq!(n(&d), expected, "{name}");
            d.ack().await.unwrap();
        }
        nothing_within(&mut only_a, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_nacked_delivery_is_retried_after_a_backoff() {
    for (name, broker, _dir) in brokers().await {
        broker.publish(&[event("t.a.v1", "s", 1)]).await.unwrap();
        let mut sub = broker.subscribe(options("backoff")).await.unwrap();
        next(&mut sub).await.nack("handler failed").await.unwrap();
        let nacked_at = Instant::now();
        let again = next(&mut sub).await;
        assert!(
            nacked_at.elapsed() >= Duration::from_millis(90),
            "{name}: retried too soon"
        );
        assert_eq!(again.attempt, 2, "{name}");
        again.ack().await.unwrap();
    }
}

#[tokio::test]
async fn poison_events_are_dead_lettered_then_replayed_or_dropped() {
    for (name, broker, _dir) in brokers().await {
        broker
            .publish(&[event("t.a.v1", "poison", 1), event("t.a.v1", "fine", 2)])
            .await
            .unwrap();
        let mut sub = broker.subscribe(options("dlq")).await.unwrap();
        let mut attempts = 0;
        let mut fine_acked = false;
        while attempts < 3 || !fine_acked {
            let d = next(&mut sub).await;
            if n(&d) == 1 {
                attempts += 1;
                d.nack("always fails").await.unwrap();
            } else {
                fine_acked = true;
                d.ack().await.unwrap();
            }
        }
        nothing_within(&mut sub, Duration::from_millis(600)).await;
        let dead = broker.dead_letters(Some("dlq"), 10).await.unwrap();
        assert_eq!(dead.len(), 1, "{name}");
        assert_eq!(
            (dead[0].attempts, dead[0].event.data["n"].as_u64()),
            (3, Some(1)),
            "{name}"
        );
        assert_eq!(dead[0].reason, "always fails", "{name}");
        let lag = broker.lag().await.unwrap();
        let dlq = lag.iter().find(|l| l.group == "dlq").unwrap();
        assert_eq!((dlq.pending, dlq.dead_letters), (0, 1), "{name}");

        assert!(
            broker.replay_dead_letter("dlq", dead[0].seq).await.unwrap(),
            "{name}"
        );
        let replayed = next(&mut sub).await;
        assert_eq!(
            (n(&replayed), replayed.attempt),
            (1, 1),
            "{name}: fresh delivery count"
        );
        replayed.nack("still failing").await.unwrap();
        for _ in 0..2 {
            next(&mut sub).await.nack("still failing").await.unwrap();
        }
        let dead = wait_for_dead(&broker, "dlq").await;
        assert!(
            broker.drop_dead_letter("dlq", dead.seq).await.unwrap(),
            "{name}"
        );
        assert!(
            broker
                .dead_letters(Some("dlq"), 10)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            !broker.drop_dead_letter("dlq", dead.seq).await.unwrap(),
            "{name}"
        );
    }
}

async fn wait_for_dead(broker: &SharedBroker, group: &str) -> bus::DeadLetter {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(dead) = broker.dead_letters(Some(group), 1).await.unwrap().pop() {
            return dead;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_group_replays_from_the_start() {
    for (name, broker, _dir) in brokers().await {
        let events: Vec<_> = (0..5).map(|i| event("t.a.v1", "s", i)).collect();
        broker.publish(&events).await.unwrap();
        let mut early = broker.subscribe(options("early")).await.unwrap();
        for _ in 0..5 {
            next(&mut early).await.ack().await.unwrap();
        }
        let mut late = broker.subscribe(options("late")).await.unwrap();
        for expected in 0..5 {
            let d = next(&mut late).await;
            assert_eq!(n(&d), expected, "{name}");
            d.ack().await.unwrap();
        }
    }
}

#[tokio::test]
async fn publishing_an_event_twice_stores_it_once() {
    for (name, broker, _dir) in brokers().await {
        let e = event("t.a.v1", "s", 7);
        broker.publish(std::slice::from_ref(&e)).await.unwrap();
        broker
            .publish(&[e.clone(), event("t.a.v1", "s", 8)])
            .await
            .unwrap();
        let mut sub = broker.subscribe(options("dedup")).await.unwrap();
        let first = next(&mut sub).await;
        assert_eq!(n(&first), 7, "{name}");
        first.ack().await.unwrap();
        let second = next(&mut sub).await;
        assert_eq!(n(&second), 8, "{name}");
        second.ack().await.unwrap();
        nothing_within(&mut sub, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn invalid_options_are_refused() {
    for (name, broker, _dir) in brokers().await {
        for bad in [
            SubscribeOptions {
                max_deliveries: 0,
                ..options("x")
            },
            options("bad name!"),
            options(""),
        ] {
            assert!(broker.subscribe(bad).await.is_err(), "{name}");
        }
    }
}

/// Two processes on one machine open the same log file: what one publishes
/// the other's group members receive, and a group's cursor is shared.
#[tokio::test]
async fn embedded_log_is_shared_by_every_opener_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let open = || EmbeddedBroker::open(&path, kit::clock::system(), DeadLetterReport::default());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let a: SharedBroker = std::sync::Arc::new(a);
    let b: SharedBroker = std::sync::Arc::new(b);
    let one_at_a_time = || SubscribeOptions {
        batch_max: 1,
        ..options("shared")
    };
    let mut on_a = a.subscribe(one_at_a_time()).await.unwrap();
    let mut on_b = b.subscribe(one_at_a_time()).await.unwrap();
    b.publish(&[event("t.a.v1", "s1", 1), event("t.a.v1", "s2", 2)])
        .await
        .unwrap();
    let first = next(&mut on_a).await;
    let second = next(&mut on_b).await;
    let mut got = vec![n(&first), n(&second)];
    got.sort();
    assert_eq!(got, vec![1, 2], "one each, none twice");
    first.ack().await.unwrap();
    second.ack().await.unwrap();
    nothing_within(&mut on_a, Duration::from_millis(200)).await;
    let lag = b.lag().await.unwrap();
    assert_eq!(lag[0].pending, 0);
}

#[tokio::test]
async fn tail_follows_the_log_from_the_start_or_from_now() {
    for (name, broker, _dir) in brokers().await {
        broker
            .publish(&[event("a.x.v1", "s", 1), event("b.x.v1", "s", 2)])
            .await
            .unwrap();
        let mut from_start = broker
            .tail(TypeFilter::parse(&["a.*"]).unwrap(), TailFrom::Start)
            .await
            .unwrap();
        let mut from_now = broker.tail(TypeFilter::all(), TailFrom::Now).await.unwrap();
        broker.publish(&[event("a.x.v1", "s", 3)]).await.unwrap();
        assert_eq!(read(&mut from_start).await, 1, "{name}");
        assert_eq!(
            read(&mut from_start).await,
            3,
            "{name}: type filter skips 2"
        );
        assert_eq!(read(&mut from_now).await, 3, "{name}: only what came after");
    }
}

#[tokio::test]
async fn a_tail_resumes_after_its_position_missing_nothing() {
    for (name, broker, _dir) in brokers().await {
        broker
            .publish(&[event("a.x.v1", "s", 1), event("b.x.v1", "s", 2)])
            .await
            .unwrap();
        let only_a = || TypeFilter::parse(&["a.*"]).unwrap();
        let mut first = broker.tail(only_a(), TailFrom::Start).await.unwrap();
        assert_eq!(read(&mut first).await, 1, "{name}");
        let stopped = first.position();
        drop(first);
        // Published while no one was reading, by two producers.
        broker
            .publish(&[event("a.x.v1", "s", 3), event("b.x.v1", "s", 4)])
            .await
            .unwrap();
        let token = stopped.token();
        let resumed = Position::parse(&token).unwrap();
        assert_eq!(resumed, stopped, "{name}: the token round-trips");
        let mut second = broker
            .tail(only_a(), TailFrom::After(resumed))
            .await
            .unwrap();
        assert_eq!(
            read(&mut second).await,
            3,
            "{name}: nothing missed, 1 not again"
        );
        let mut everything = broker
            .tail(TypeFilter::all(), TailFrom::After(second.position()))
            .await
            .unwrap();
        broker.publish(&[event("b.x.v1", "s", 5)]).await.unwrap();
        // Producers' logs are separate on NATS: what the filtered tails had
        // not yet passed of b's may come, never a's 1 or 3 again.
        let next = read(&mut everything).await;
        assert!(![1, 3].contains(&next), "{name}: {next} came again");
        assert!(everything.position().covers(&stopped), "{name}");

        // From now, the position is where the log stands.
        let now = broker.tail(TypeFilter::all(), TailFrom::Now).await.unwrap();
        let at = now.position();
        drop(now);
        broker.publish(&[event("a.x.v1", "s", 6)]).await.unwrap();
        let mut later = broker.tail(only_a(), TailFrom::After(at)).await.unwrap();
        assert_eq!(read(&mut later).await, 6, "{name}");
    }
}

async fn read(stream: &mut Box<dyn bus::EventStream>) -> u64 {
    let event = tokio::time::timeout(WAIT, stream.next())
        .await
        .unwrap()
        .unwrap();
    event.data["n"].as_u64().unwrap()
}
