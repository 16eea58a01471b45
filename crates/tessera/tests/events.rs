//! `tessera events` against an embedded log in a data directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bus::broker::DeadLetterReport;
use bus::embedded::EmbeddedBroker;
use bus::{Backoff, Broker, CloudEvent, SubscribeOptions, TypeFilter};
use serde_json::json;

fn tessera(data_dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tessera"))
        .arg("events")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[tokio::test]
async fn lag_dead_letters_replay_drop_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let broker = EmbeddedBroker::open(
        &dir.path().join(bus::EMBEDDED_LOG_PATH),
        kit::clock::system(),
        DeadLetterReport::default(),
    )
    .await
    .unwrap();
    let event = |n: u64| {
        CloudEvent::new(
            "test",
            "test.thing.happened.v1",
            &format!("s{n}"),
            json!({"n": n}),
            0,
        )
    };
    broker.publish(&[event(1), event(2)]).await.unwrap();
    let options = SubscribeOptions {
        max_deliveries: 1,
        backoff: Backoff {
            first: Duration::from_millis(10),
            max: Duration::from_millis(10),
        },
        batch_max: 1,
        ..SubscribeOptions::new("cli-test", TypeFilter::all())
    };
    let mut sub = broker.subscribe(options).await.unwrap();
    sub.next().await.unwrap().nack("poison").await.unwrap();

    let lag = stdout(&tessera(dir.path(), &["lag"]));
    assert!(
        lag.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cli-test", "1", "1"]),
        "{lag}"
    );

    let listed = stdout(&tessera(dir.path(), &["dlq", "list"]));
    let letter: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(letter["reason"], "poison");
    assert_eq!(letter["event"]["data"]["n"], 1);
    let seq = letter["seq"].to_string();

    stdout(&tessera(
        dir.path(),
        &["dlq", "replay", "--group", "cli-test", "--seq", &seq],
    ));
    let again = tessera(
        dir.path(),
        &["dlq", "replay", "--group", "cli-test", "--seq", &seq],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no dead letter"));
    let replayed = sub.next().await.unwrap();
    assert_eq!(replayed.event.data["n"], 1, "replayed into the group");
    replayed.nack("still poison").await.unwrap();
    stdout(&tessera(
        dir.path(),
        &["dlq", "drop", "--group", "cli-test", "--seq", &seq],
    ));
    assert_eq!(stdout(&tessera(dir.path(), &["dlq", "list"])), "");

    let mut tail = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args([
            "events",
            "tail",
            "--from-start",
            "--type",
            "test.*",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    for n in [1, 2] {
        let line: serde_json::Value =
            serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(line["data"]["n"], n);
        assert_eq!(line["specversion"], "1.0");
    }
    tail.kill().unwrap();
    tail.wait().unwrap();
}
