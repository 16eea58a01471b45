//! Plain proxying of a small GET: straight to the upstream, through the
//! gateway (`tessera serve gateway`), through nginx (and HAProxy) when
//! installed, configured alike: one worker, keep-alive to the upstream and
//! to the client for as long as they are used, no access log, and per
//! request what the gateway always does besides passing it on — the
//! client's address and scheme for the upstream (`X-Forwarded-For`,
//! `X-Forwarded-Proto`), a trace context for the upstream and the client
//! (`traceparent`) and a request id for both (`x-request-id`). nginx
//! also runs without the last two (`nginx-no-ids`): a proxy doing less
//! than the gateway does, for reference. One load generator, rounds
//! interleaved, medians printed with ratios against nginx, and each
//! proxy's CPU time per request (workers included), in user space (the
//! proxy's own code) and in the kernel (its system calls, loopback TCP
//! included): the cost behind the throughput once the load generator and
//! the proxy share the machine's cores.
//!
//! Then composition: a composite of three branches that each answer after
//! 1 ms against one proxied 1 ms call, p50 and the difference printed
//! (target: within 0.5 ms).
//!
//! And the cache: a hit against the same small GET proxied.
//!
//! `cargo bench -p tessera --bench gateway`
//! (BENCH_ROUNDS, default 5; BENCH_SECONDS per round and target, default
//! 3; BENCH_CONNECTIONS, default 32). nginx and HAProxy are looked for on
//! the PATH and in /usr/sbin; `apt-get install nginx-light haproxy` adds
//! them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}

/// A process of the benchmark's, stopped when dropped: SIGTERM first, so
/// that nginx's master takes its workers with it (SIGKILL would leave them
/// running, orphaned), SIGKILL if it is not gone within `STOP_WAIT`.
struct Proc(Child);

const STOP_WAIT: Duration = Duration::from_secs(5);

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: signalling a child this benchmark started and has not reaped.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` and waits until something listens on `port`.
fn listening(mut command: Command, port: u16) -> (Proc, u16) {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, port)
}

fn start_gateway(dir: &Path, upstream: u16) -> (Proc, u16) {
    let (port, admin) = (kit::testing::free_port(), kit::testing::free_port());
    let branches: String = ["a", "b", "c"]
        .iter()
        .map(|name| {
            format!(
                "[[gateway.routes.branches]]\nname = \"{name}\"\nservice = \"bench\"\npath = \"/one\"\ninto = \"/{name}\"\n"
            )
        })
        .collect();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "worker_threads = 1\n[log]\nfilter = \"error\"\n\
             [gateway]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             [gateway.services.bench]\nurls = [\"http://127.0.0.1:{upstream}\"]\n\
             [[gateway.routes]]\nname = \"bench\"\npath = \"/bench\"\nservice = \"bench\"\nauth = \"none\"\n\
             [[gateway.routes]]\nname = \"one\"\npath = \"/one\"\nservice = \"bench\"\nauth = \"none\"\n\
             [[gateway.routes]]\nname = \"cached\"\npath = \"/cached\"\nservice = \"bench\"\nauth = \"none\"\ncache = {{ ttl_ms = 600000 }}\n\
             [[gateway.routes]]\nname = \"three\"\npath = \"/three\"\nauth = \"none\"\n{branches}"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(["serve", "gateway", "--config"]).arg(&config);
    listening(command, port)
}

/// The span id of the `traceparent` the other proxies make (the module
/// doc says what they do alike): a constant, sparing them the gateway's
/// second random number.
const SPAN_ID: &str = "0000000000000001";
/// nginx without the request id and trace context: doing less than the
/// gateway does, printed for reference.
const NGINX_NO_IDS: &str = "nginx-no-ids";

fn start_nginx(binary: &Path, dir: &Path, upstream: u16, ids: bool) -> (Proc, u16) {
    let port = kit::testing::free_port();
    let prefix = dir.join(format!("nginx-{port}"));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let config = prefix.join("nginx.conf");
    let p = prefix.display();
    let ids = match ids {
        true => format!(
            " set $traceparent 00-$request_id-{SPAN_ID}-01; proxy_set_header traceparent $traceparent; \
              proxy_set_header X-Request-ID $request_id; add_header x-request-id $request_id always; add_header traceparent $traceparent always;"
        ),
        false => String::new(),
    };
    // nginx closes a keep-alive connection after 1000 requests by default
    // (`keepalive_requests`), to the client and to the upstream; the
    // gateway keeps both as long as they are in use.
    std::fs::write(
        &config,
        format!(
            "worker_processes 1;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
               upstream bench {{ server 127.0.0.1:{upstream}; keepalive 64; keepalive_requests 1000000; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 1000000;\n\
                 location /bench {{ proxy_pass http://bench; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
                   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;{ids} }}\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(binary);
    command.arg("-p").arg(&prefix).arg("-c").arg(&config);
    listening(command, port)
}

fn start_haproxy(binary: &Path, dir: &Path, upstream: u16) -> (Proc, u16) {
    let port = kit::testing::free_port();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  nbthread 1\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  option http-keep-alive\n  option forwardfor\n\n\
             frontend bench\n  bind 127.0.0.1:{port}\n  unique-id-format %[uuid()]\n\
               http-request set-var-fmt(txn.traceparent) 00-%[unique-id,regsub(-,,g)]-{SPAN_ID}-01\n\
               http-request set-header traceparent %[var(txn.traceparent)]\n\
               http-request set-header x-request-id %[unique-id]\n\
               http-response set-header x-request-id %[unique-id]\n\
               http-response set-header traceparent %[var(txn.traceparent)]\n\
               default_backend upstream\n\n\
             backend upstream\n  http-reuse always\n  http-request set-header X-Forwarded-Proto http\n  server up 127.0.0.1:{upstream}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(binary);
    command.arg("-f").arg(&config);
    listening(command, port)
}

struct Round {
    per_s: f64,
    requests: u64,
    /// The proxy's CPU time per request (its workers included), user and
    /// system; none for the upstream itself.
    cpu_us: Option<Cpu>,
    p50_us: f64,
    p99_us: f64,
    /// The tail past p99: how long the slowest requests waited.
    p999_us: f64,
    errors: u64,
}

/// `connections` clients, each sending GETs back to back on its own
/// keep-alive connection for `seconds`.
async fn load(port: u16, path: &str, connections: u64, seconds: u64) -> Round {
    let url: http::Uri = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let client: Client<_, Body> = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build_http();
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let request = http::Request::get(url.clone()).body(Body::empty()).unwrap();
                    match client.request(request).await {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.into_body().collect().await;
                            latencies.push(started.elapsed().as_micros() as u32);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for client in clients {
        let (latencies, failed) = client.await.unwrap();
        all.extend(latencies);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64;
    Round {
        per_s: all.len() as f64 / elapsed,
        requests: all.len() as u64,
        cpu_us: None,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        errors,
    }
}

/// CPU time, user and system.
#[derive(Clone, Copy, Default)]
struct Cpu {
    user: f64,
    system: f64,
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// CPU time (in clock ticks) of `pid` and its children (nginx's worker is
/// the master's child).
fn cpu_ticks(pid: u32) -> Cpu {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // After the command's closing parenthesis: state is the first
            // field, utime the 12th, stime the 13th.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(Cpu {
                user: fields.get(11)?.parse().ok()?,
                system: fields.get(12)?.parse().ok()?,
            })
        })
        .unwrap_or_default();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(cpu_ticks)
        .fold(own, |sum, child| sum + child)
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds = env_or("BENCH_ROUNDS", 5);
    let seconds = env_or("BENCH_SECONDS", 3);
    let connections = env_or("BENCH_CONNECTIONS", 32);
    let dir = tempfile::tempdir().unwrap();

    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_port = upstream.local_addr().unwrap().port();
    let app = Router::new()
        .route("/bench", get(|| async { "ok" }))
        .route("/cached", get(|| async { "ok" }))
        .route(
            "/one",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1)).await;
                axum::Json(serde_json::json!({"answer": 1}))
            }),
        )
        .route("/readyz", get(|| async { "ready" }));
    tokio::spawn(async move { axum::serve(upstream, app).await });

    let mut targets: Vec<(&str, u16, Option<Proc>)> = vec![("direct", upstream_port, None)];
    let (gateway, port) = start_gateway(dir.path(), upstream_port);
    targets.push(("gateway", port, Some(gateway)));
    match find("nginx") {
        Some(nginx) => {
            let (proc, port) = start_nginx(&nginx, dir.path(), upstream_port, true);
            targets.push(("nginx", port, Some(proc)));
            let (proc, port) = start_nginx(&nginx, dir.path(), upstream_port, false);
            targets.push((NGINX_NO_IDS, port, Some(proc)));
        }
        None => println!("nginx not installed: skipped (apt-get install nginx-light)"),
    }
    match find("haproxy") {
        Some(haproxy) => {
            let (proc, port) = start_haproxy(&haproxy, dir.path(), upstream_port);
            targets.push(("haproxy", port, Some(proc)));
        }
        None => println!("haproxy not installed: skipped (apt-get install haproxy)"),
    }

    println!(
        "{rounds} rounds × {seconds} s per target, {connections} keep-alive connections, GET /bench (2-byte body)"
    );
    let mut results: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, port, proc)) in targets.iter().enumerate() {
            let pid = proc.as_ref().map(|p| p.0.id());
            let before = pid.map(cpu_ticks);
            let mut round = load(*port, "/bench", connections, seconds).await;
            if let (Some(pid), Some(before)) = (pid, before) {
                let after = cpu_ticks(pid);
                let per_request = |ticks: f64| {
                    ticks.max(0.0) / ticks_per_s() * 1e6 / round.requests.max(1) as f64
                };
                round.cpu_us = Some(Cpu {
                    user: per_request(after.user - before.user),
                    system: per_request(after.system - before.system),
                });
            }
            results[i].push(round);
        }
    }
    println!(
        "{:<12} {:>12} {:>10} {:>10} {:>10} {:>8} {:>12} {:>10} {:>10}",
        "", "requests/s", "p50 µs", "p99 µs", "p99.9 µs", "errors", "CPU µs/req", "user", "system"
    );
    let medians: Vec<(f64, f64, f64, f64)> = results
        .iter()
        .map(|rounds| {
            (
                median(rounds.iter().map(|r| r.per_s).collect()),
                median(rounds.iter().map(|r| r.p50_us).collect()),
                median(rounds.iter().map(|r| r.p99_us).collect()),
                median(rounds.iter().map(|r| r.p999_us).collect()),
            )
        })
        .collect();
    for ((name, _, _), ((per_s, p50, p99, p999), rounds)) in
        targets.iter().zip(medians.iter().zip(&results))
    {
        let errors: u64 = rounds.iter().map(|r| r.errors).sum();
        let cpu: Vec<Cpu> = rounds.iter().filter_map(|r| r.cpu_us).collect();
        let (total, user, system) = match cpu.is_empty() {
            true => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
            false => {
                let of = |part: fn(&Cpu) -> f64| median(cpu.iter().map(part).collect());
                (
                    format!("{:.1}", of(|c| c.user + c.system)),
                    format!("{:.1}", of(|c| c.user)),
                    format!("{:.1}", of(|c| c.system)),
                )
            }
        };
        println!(
            "{name:<12} {per_s:>12.0} {p50:>10.0} {p99:>10.0} {p999:>10.0} {errors:>8} {total:>12} {user:>10} {system:>10}"
        );
    }
    let gateway = medians[1];
    for (i, (name, _, _)) in targets.iter().enumerate().skip(2) {
        let other = medians[i];
        let what = match *name == NGINX_NO_IDS {
            true => "for reference: no request id, no trace context",
            false => "target: requests/s ≥ 1, p99 ≤ 1",
        };
        println!(
            "gateway / {name}: requests/s {:.3}, p99 {:.3} ({what})",
            gateway.0 / other.0,
            gateway.2 / other.2
        );
    }
    println!(
        "gateway / direct: requests/s {:.3}",
        gateway.0 / medians[0].0
    );
    compose(port_of(&targets, "gateway"), rounds, seconds).await;
}

fn port_of(targets: &[(&str, u16, Option<Proc>)], name: &str) -> u16 {
    targets.iter().find(|t| t.0 == name).map(|t| t.1).unwrap()
}

/// A composite of three 1 ms branches against one proxied 1 ms call, and
/// a cache hit against a proxied small GET, through the same gateway, a
/// few connections, rounds interleaved.
async fn compose(port: u16, rounds: u64, seconds: u64) {
    const CONNECTIONS: u64 = 4;
    let (mut one, mut three) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        one.push(load(port, "/one", CONNECTIONS, seconds).await);
        three.push(load(port, "/three", CONNECTIONS, seconds).await);
    }
    let p50 = |rounds: &[Round]| median(rounds.iter().map(|r| r.p50_us).collect());
    let errors: u64 = one.iter().chain(&three).map(|r| r.errors).sum();
    let (one, three) = (p50(&one), p50(&three));
    let (mut proxied, mut hits) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        proxied.push(load(port, "/bench", CONNECTIONS, seconds).await);
        hits.push(load(port, "/cached", CONNECTIONS, seconds).await);
    }
    let errors = errors + proxied.iter().chain(&hits).map(|r| r.errors).sum::<u64>();
    let (proxied, hits) = (p50(&proxied), p50(&hits));
    println!(
        "\ncomposition and cache ({CONNECTIONS} connections, branches answer after 1 ms; errors {errors}):\n\
         one proxied call p50 {one:.0} µs, composite of three p50 {three:.0} µs, \
         difference {:.0} µs (target: ≤ 500 µs)\n\
         cache: hit p50 {hits:.0} µs, proxied p50 {proxied:.0} µs, hit / proxied {:.3}",
        three - one,
        hits / proxied
    );
}
