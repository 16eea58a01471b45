//! Logins per second through HTTP, against the raw argon2id verification
//! rate of this machine measured in the same run.
//!
//! `cargo bench -p tessera-identity --bench login` (BENCH_SECONDS, default 5;
//! BENCH_CLIENTS, default 2 × cores).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use kit::config::Config;
use kit::testing::TestServer;
use serde_json::json;

const PASSWORD: &str = "correct horse battery staple";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Argon2id verifications per second on every core, with identity's
/// parameters: the ceiling for any password login on this machine.
fn raw_argon2_per_s(seconds: u64, threads: usize) -> f64 {
    let argon2 = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19_456, 2, 1, None).unwrap(),
    );
    let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
    let phc = argon2
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (argon2, phc, done) = (argon2.clone(), phc.clone(), done.clone());
            scope.spawn(move || {
                let parsed = PasswordHash::new(&phc).unwrap();
                while Instant::now() < deadline {
                    assert!(argon2.verify_password(PASSWORD.as_bytes(), &parsed).is_ok());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn logins_per_s(seconds: u64, clients: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&format!(
        "data_dir = {:?}\n[log]\nfilter = \"error\"",
        dir.path().display().to_string()
    ))
    .unwrap();
    let clock = kit::clock::system();
    let mut opened = identity::open(&config, clock.clone()).await.unwrap();
    opened.start_background();
    let server =
        TestServer::start(identity::router(&opened, &config.common().unwrap(), clock)).await;
    let http = reqwest::Client::new();
    let registered = http
        .post(server.url("/api/v1/auth/register"))
        .json(&json!({"email": "bench@example.com", "password": PASSWORD, "display_name": "Bench"}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);

    let ok = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (http, url, ok) = (http.clone(), server.url("/api/v1/auth/token"), ok.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let response = http
                        .post(&url)
                        .json(&json!({"email": "bench@example.com", "password": PASSWORD}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    ok.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds = env_or("BENCH_SECONDS", 5);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clients = env_or("BENCH_CLIENTS", 2 * cores as u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let reference = raw_argon2_per_s(seconds, cores);
    let logins = runtime.block_on(logins_per_s(seconds, clients));
    println!("raw argon2id verify ({cores} threads): {reference:.1} /s");
    println!("logins through HTTP ({clients} clients): {logins:.1} /s");
    println!("ratio logins / raw argon2id: {:.3}", logins / reference);
}
