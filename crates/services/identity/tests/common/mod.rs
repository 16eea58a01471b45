//! `spawn_app`: identity on port 0 with fresh stores, and a client for it.

#![allow(dead_code)]

use kit::config::Config;
use kit::testing::TestServer;
use serde_json::{Value, json};

pub struct TestApp {
    pub server: TestServer,
    pub http: reqwest::Client,
    pub config: Config,
    pub data_dir: tempfile::TempDir,
}

pub const PASSWORD: &str = "correct horse battery staple";

/// Identity on SQLite files in a fresh directory (the embedded default).
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Identity with extra TOML configuration.
pub async fn spawn_app_with(extra_toml: &str) -> TestApp {
    let data_dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "data_dir = {:?}\n[log]\nfilter = \"warn\"\n{extra_toml}",
        data_dir.path().display().to_string()
    );
    let config = Config::from_toml(&toml).unwrap();
    let clock = kit::clock::system();
    let mut opened = identity::open(&config, clock.clone()).await.unwrap();
    opened.start_background();
    let router = identity::router(&opened, &config.common().unwrap(), clock);
    TestApp {
        server: TestServer::start(router).await,
        http: reqwest::Client::new(),
        config,
        data_dir,
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, email: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/register",
            json!({"email": email, "password": PASSWORD, "display_name": "Ada"}),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post(
            "/api/v1/auth/token",
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// Registers a fresh account and logs in: (email, token response).
    pub async fn logged_in(&self) -> (String, Value) {
        let email = unique_email();
        assert_eq!(self.register(&email).await.status(), 201);
        let response = self.login(&email, PASSWORD).await;
        assert_eq!(response.status(), 200);
        (email, response.json().await.unwrap())
    }

    pub async fn refresh(&self, refresh_token: &Value) -> reqwest::Response {
        self.post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": refresh_token}),
        )
        .await
    }
}
