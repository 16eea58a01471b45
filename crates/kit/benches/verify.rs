//! What the auth extractor costs per request, against a bare Ed25519
//! signature check of the same token measured in the same run.
//!
//! `cargo bench -p tessera-kit --bench verify` (BENCH_ITERATIONS, default 20000).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::Request;
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use kit::auth::{AccessClaims, Authenticated, KeySource, TokenVerifier};
use kit::config::AuthSettings;

struct OneKey(HashMap<String, VerifyingKey>);

#[async_trait]
impl KeySource for OneKey {
    async fn key(&self, kid: &str) -> Option<VerifyingKey> {
        self.0.get(kid).copied()
    }
}

#[derive(Clone)]
struct State(Arc<TokenVerifier>);

impl FromRef<State> for Arc<TokenVerifier> {
    fn from_ref(state: &State) -> Self {
        state.0.clone()
    }
}

fn main() {
    let iterations: u32 = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let settings = AuthSettings::default();
    let clock = kit::clock::system();
    let now = clock.now_s();
    let token = kit::auth::sign(
        &key,
        "k1",
        &AccessClaims {
            iss: settings.issuer.clone(),
            aud: settings.audience.clone(),
            sub: "01a210d3-f91f-76db-ba7d-f3c58371376b".into(),
            roles: vec!["user".into()],
            exp: now + 900,
            iat: now,
            nbf: now,
            jti: "7b4c2f0e-9a51-4f0c-8d8e-3f7c1b2a9e10".into(),
            sid: "a5f244ac-b988-49e6-a62c-cbe20d9c3eba".into(),
        },
    );
    let keys = OneKey(HashMap::from([("k1".to_owned(), key.verifying_key())]));
    let state = State(Arc::new(TokenVerifier::new(
        Arc::new(keys),
        &settings,
        clock,
    )));

    // Reference: the signature check alone, on the same bytes.
    let (input, signature) = token.rsplit_once('.').unwrap();
    use base64::Engine;
    let signature: [u8; 64] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap()
        .try_into()
        .unwrap();
    let signature = Signature::from_bytes(&signature);
    let verifying = key.verifying_key();
    let started = Instant::now();
    for _ in 0..iterations {
        verifying
            .verify_strict(input.as_bytes(), &signature)
            .unwrap();
    }
    let raw_us = started.elapsed().as_secs_f64() * 1e6 / iterations as f64;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let extractor_us = runtime.block_on(async {
        let started = Instant::now();
        for _ in 0..iterations {
            let (mut parts, ()) = Request::builder()
                .header("authorization", format!("Bearer {token}"))
                .body(())
                .unwrap()
                .into_parts();
            let Authenticated(principal) = Authenticated::from_request_parts(&mut parts, &state)
                .await
                .unwrap();
            assert_eq!(principal.roles.len(), 1);
        }
        started.elapsed().as_secs_f64() * 1e6 / iterations as f64
    });
    println!("raw Ed25519 verify_strict: {raw_us:.2} µs");
    println!("auth extractor (parse, checks, verify, claims): {extractor_us:.2} µs");
    println!("ratio extractor / raw verify: {:.3}", extractor_us / raw_us);
}
