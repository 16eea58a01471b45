//! `tessera up` as an operator runs it: real child processes, real signals.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn up_serves_survives_kill_9_and_stops_cleanly() {
    let data_dir = tempfile::tempdir().unwrap();
    create_root(data_dir.path(), &[]);
    let mut up = Up::start_in(data_dir, &[]);
    let entries = up.wait_ready();
    let base = url_of(&entries, "identity", 0);
    let http = client();

    let admin_tokens: Value = login(&http, &base, "root@example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        token_roles(admin_tokens["access_token"].as_str().unwrap()),
        json!(["admin"])
    );

    let register = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({"email": "ada@example.com", "password": PASSWORD, "display_name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);

    // Identity's event reaches users through the embedded log: a profile
    // exists within a second.
    let tokens: Value = login(&http, &base, "ada@example.com")
        .await
        .json()
        .await
        .unwrap();
    let users = url_of(&entries, "users", 0);
    let registered = Instant::now();
    loop {
        let me = http
            .get(format!("{users}/api/v1/users/me"))
            .bearer_auth(tokens["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        if me.status() == 200 {
            break;
        }
        assert!(
            registered.elapsed() < Duration::from_secs(1),
            "no profile within 1 s: {}",
            me.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let victim = pid_of(&entries, "identity", 0);
    signal(victim, libc::SIGKILL);
    let killed_at = Instant::now();
    let entries = up.wait_for(Duration::from_secs(5), |e| {
        let identity = entry_of(e, "identity", 0);
        identity["state"] == "ready" && identity["pid"] != victim
    });
    assert_eq!(entry_of(&entries, "identity", 0)["restarts"], 1);
    assert_eq!(
        url_of(&entries, "identity", 0),
        base,
        "same socket after restart"
    );
    let response = login(&http, &base, "ada@example.com").await;
    assert_eq!(response.status(), 200, "data intact after kill -9");
    assert!(killed_at.elapsed() < Duration::from_secs(5));

    let jwks_url = format!("{base}/.well-known/jwks.json");
    let keys_before = http
        .get(&jwks_url)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(keys_before["keys"].as_array().unwrap().len(), 1);
    admin(up.data_dir.path(), &["rotate-keys"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = http
            .get(&jwks_url)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        if keys["keys"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "rotated key never published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let children: Vec<u32> = up
        .manifest()
        .iter()
        .map(|e| e["pid"].as_u64().unwrap() as u32)
        .collect();
    let status = up.terminate();
    assert!(status.success(), "{status}");
    for pid in children {
        assert!(!alive(pid), "child {pid} outlived up");
    }
    assert!(!up.manifest_path().exists(), "up.json removed on exit");
}

/// The whole public API on one port, through the gateway; its metrics only
/// on its admin port; a killed gateway back on the same port.
#[tokio::test]
async fn the_gateway_serves_the_public_api_on_the_port() {
    let up = Up::start(&[]);
    let entries = up.wait_ready();
    let gateway = url_of(&entries, "gateway", 0);
    let admin = entry_of(&entries, "gateway", 0)["admin_url"]
        .as_str()
        .unwrap()
        .to_owned();
    let http = client();
    let register = http
        .post(format!("{gateway}/api/v1/auth/register"))
        .json(&json!({"email": "cy@example.com", "password": PASSWORD, "display_name": "Cy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    let tokens: Value = login(&http, &gateway, "cy@example.com")
        .await
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let me = http
            .get(format!("{gateway}/api/v1/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if me.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no profile through the gateway");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One call, two services: the profile (users) and the account
    // (identity); the mobile app's smaller overview, and its own prefix.
    let get = |path: &str| {
        http.get(format!("{gateway}{path}"))
            .bearer_auth(token)
            .send()
    };
    let overview: Value = get("/api/v1/me/overview")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(overview["profile"]["display_name"], "Cy", "{overview}");
    assert_eq!(overview["account"]["email"], "cy@example.com", "{overview}");
    assert_eq!(overview["account"]["roles"], json!(["user"]), "{overview}");
    assert!(overview.get("errors").is_none(), "{overview}");
    let mobile: Value = get("/mobile/v1/me/overview")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mobile, json!({"name": "Cy", "roles": ["user"]}));
    let mobile_me = get("/mobile/v1/users/me").await.unwrap();
    assert_eq!(mobile_me.status(), 200);
    let anonymous = http
        .get(format!("{gateway}/api/v1/me/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The profile is cached at the gateway; a change users announces
    // (made here straight at users, past the gateway) purges it.
    let profile = |http: reqwest::Client, token: String| {
        let url = format!("{gateway}/api/v1/users/me");
        async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            let status = response.headers()["cache-status"]
                .to_str()
                .unwrap()
                .to_owned();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, _) = profile(http.clone(), token.to_owned()).await;
    assert!(
        status.contains("hit") || status.contains("stored"),
        "{status}"
    );
    assert!(
        profile(http.clone(), token.to_owned())
            .await
            .0
            .contains("hit")
    );
    // The caller's own events stream from the gateway as they happen.
    let mut events = http
        .get(format!("{gateway}/api/v1/me/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let users = url_of(&entries, "users", 0);
    let changed = http
        .patch(format!("{users}/api/v1/users/me"))
        .bearer_auth(token)
        .json(&json!({"display_name": "Cy Changed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while profile(http.clone(), token.to_owned()).await.1["display_name"] != "Cy Changed" {
        assert!(
            Instant::now() < deadline,
            "users.user.updated.v1 did not purge the entry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = String::new();
    while !seen.contains("event: users.user.updated.v1") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .expect("the change streams within 5 s")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("Cy Changed"), "{seen}");
    drop(events);

    let public_metrics = http.get(format!("{gateway}/metrics")).send().await.unwrap();
    assert_eq!(
        public_metrics.status(),
        404,
        "no metrics on the public port"
    );
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tessera_http_requests_total")
                && l.contains("route=\"users-me\"")
                && l.contains("status=\"200\"")),
        "per-route counts: {metrics}"
    );
    assert!(metrics.contains("tessera_gateway_upstream_requests_total"));

    // The public API in one document, and a page to read it.
    let document: Value = http
        .get(format!("{gateway}/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/v1/auth/register",
        "/api/v1/users/me",
        "/.well-known/jwks.json",
    ] {
        assert!(paths.contains_key(path), "{path} in {paths:?}");
    }
    assert!(paths.keys().all(|p| !p.starts_with("/internal")));
    // Composites are the gateway's own operations, their branches'
    // documented answers in place.
    let overview = &paths["/api/v1/me/overview"]["get"];
    let merged = &overview["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        merged["properties"]["profile"]["$ref"], "#/components/schemas/ProfileView",
        "{overview}"
    );
    assert_eq!(overview["security"], json!([{"bearer": []}]));
    assert!(document["components"]["schemas"]["ProfileView"].is_object());
    let docs = http
        .get(format!("{gateway}/api/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(
        docs.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'self'")
    );
    let page = docs.text().await.unwrap();
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js", "init.js"] {
        assert!(page.contains(&format!("/api/docs/{asset}")), "{page}");
        let served = http
            .get(format!("{gateway}/api/docs/{asset}"))
            .send()
            .await
            .unwrap();
        assert_eq!(served.status(), 200, "{asset}");
        assert!(served.bytes().await.unwrap().len() > 50, "{asset}");
    }
    // Counted under the docs' own two routes, assets included.
    let metrics = http.get(format!("{admin}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for counted in [
        r#"tessera_http_requests_total{role="gateway",method="GET",route="openapi",status="200"} 1"#,
        r#"tessera_http_requests_total{role="gateway",method="GET",route="docs",status="200"} 4"#,
    ] {
        assert!(metrics.contains(counted), "{counted} in {metrics}");
    }

    let victim = pid_of(&entries, "gateway", 0);
    signal(victim, libc::SIGKILL);
    let entries = up.wait_for(Duration::from_secs(10), |e| {
        let gateway = entry_of(e, "gateway", 0);
        gateway["state"] == "ready" && gateway["pid"] != victim
    });
    assert_eq!(url_of(&entries, "gateway", 0), gateway, "same port");
    assert_eq!(login(&http, &gateway, "cy@example.com").await.status(), 200);
}

#[tokio::test]
async fn replicas_run_side_by_side_and_a_crashing_one_fails_alone() {
    let up = Up::start(&["--replicas", "identity=2"]);
    let entries = up.wait_ready();
    assert_eq!(
        entries.iter().filter(|e| e["role"] == "identity").count(),
        2
    );
    let (a, b) = (
        url_of(&entries, "identity", 0),
        url_of(&entries, "identity", 1),
    );
    assert_ne!(a, b);

    // Shared embedded stores: registered on one replica, log in on the other.
    let http = client();
    let register = http
        .post(format!("{a}/api/v1/auth/register"))
        .json(&json!({"email": "bo@example.com", "password": PASSWORD, "display_name": "Bo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    assert_eq!(login(&http, &b, "bo@example.com").await.status(), 200);

    // Kill replica 1 each time it comes back: after 5 restarts within a
    // minute it is reported failed, and replica 0 keeps serving.
    for round in 0..6 {
        let entries = up.wait_for(Duration::from_secs(20), |e| {
            e.iter()
                .any(|e| e["replica"] == 1 && e["state"] == "ready" && e["restarts"] == round)
        });
        signal(pid_of(&entries, "identity", 1), libc::SIGKILL);
    }
    up.wait_for(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| e["replica"] == 1 && e["state"] == "failed")
    });
    assert_eq!(login(&http, &a, "bo@example.com").await.status(), 200);
}

#[test]
fn a_second_up_on_the_same_data_dir_is_refused() {
    let up = Up::start(&[]);
    up.wait_ready();
    let output = tessera()
        .args(["up", "--port", "0", "--data-dir"])
        .arg(up.data_dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("another `tessera up`"));
}
