//! `tessera up`: the whole system on one machine, each role its own child
//! process under a supervisor, on embedded stores in one data directory.

mod manifest;
mod output;
mod supervisor;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::roles::ROLES;
use manifest::{Entry, Manifest, State};
use supervisor::{Instance, Launch};

/// The most replicas of one role `up` will start.
pub const REPLICAS_MAX: u32 = 16;

#[derive(Args)]
pub struct UpArgs {
    /// Where embedded stores, keys and up.json live [default: ./tessera-data,
    /// or `data_dir` from the configuration].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The public port, where the gateway listens; services listen on the
    /// ports after it (identity on PORT+1), the gateway's admin port is
    /// PORT+1000; 0 picks free ports.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// TOML configuration file; `TESSERA_...` variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run N replicas of ROLE, e.g. `--replicas identity=2`.
    #[arg(long = "replicas", value_name = "ROLE=N")]
    replicas: Vec<String>,
}

/// The gateway's admin port is this far above `--port`.
pub const ADMIN_PORT_OFFSET: u16 = 1000;

fn replica_counts(specs: &[String]) -> Result<BTreeMap<&'static str, u32>, String> {
    let mut counts: BTreeMap<&'static str, u32> = ROLES.iter().map(|r| (r.name, 1)).collect();
    for spec in specs {
        let (role, n) = spec
            .split_once('=')
            .ok_or_else(|| format!("--replicas {spec:?}: expected ROLE=N"))?;
        let role = crate::roles::find(role)?;
        if role.front_door && n != "1" {
            return Err(format!(
                "--replicas {spec:?}: {} runs once, on --port",
                role.name
            ));
        }
        let role = role.name;
        let n: u32 = n
            .parse()
            .ok()
            .filter(|n| (1..=REPLICAS_MAX).contains(n))
            .ok_or_else(|| format!("--replicas {spec:?}: N must be 1 to {REPLICAS_MAX}"))?;
        counts.insert(role, n);
    }
    Ok(counts)
}

/// Refuses a second `up` on the same data directory. Held until exit.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    let path = dir.join("up.lock");
    kit::lockfile::try_lock_exclusive(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("another `tessera up` is running on {}", dir.display()))
}

fn bind(port: u16) -> Result<(TcpListener, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((listener, format!("http://{addr}")))
}

pub async fn run(args: UpArgs) -> Result<(), String> {
    let config = crate::load_config(args.config.as_ref(), args.data_dir.as_ref())?;
    let common = config.common().map_err(|e| e.to_string())?;
    kit::telemetry::init_logs(&common.log);
    std::fs::create_dir_all(&common.data_dir)
        .map_err(|e| format!("{}: {e}", common.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&common.data_dir).map_err(|e| e.to_string())?;
    let _lock = lock_data_dir(&data_dir)?;
    let counts = replica_counts(&args.replicas)?;

    let mut instances = Vec::new();
    let mut slot = 0u16;
    let above = |offset: u16| match args.port {
        0 => Ok(0),
        port => port
            .checked_add(offset)
            .ok_or_else(|| format!("--port {port} leaves no room for services")),
    };
    for role in ROLES {
        for replica in 0..counts[role.name] {
            let (listener, url, admin) = if role.front_door {
                let (listener, url) = bind(args.port)?;
                (listener, url, Some(bind(above(ADMIN_PORT_OFFSET)?)?))
            } else {
                slot += 1;
                let (listener, url) = bind(above(slot)?)?;
                (listener, url, None)
            };
            instances.push(Instance {
                role: role.name,
                replica,
                url,
                listener,
                admin,
            });
        }
    }

    let jwks_url = instances
        .iter()
        .find(|i| i.role == identity::ROLE)
        .map(|i| format!("{}/.well-known/jwks.json", i.url))
        .unwrap_or_default();
    let config_file = match &args.config {
        Some(file) => {
            Some(std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?)
        }
        None => None,
    };
    let mut env = vec![
        ("TESSERA_DATA_DIR".into(), data_dir.display().to_string()),
        ("TESSERA_AUTH__JWKS_URL".into(), jwks_url),
    ];
    env.extend(discovery_through_the_gateway(&instances));
    let launch = Arc::new(Launch {
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        config: config_file,
        env,
    });
    let manifest = Arc::new(Manifest::new(
        &data_dir,
        instances
            .iter()
            .map(|i| Entry {
                role: i.role.into(),
                replica: i.replica,
                pid: 0,
                url: i.url.clone(),
                admin_url: i.admin.as_ref().map(|(_, url)| url.clone()),
                state: State::Starting,
                restarts: 0,
            })
            .collect(),
    ));
    for instance in &instances {
        tracing::info!(role = instance.role, replica = instance.replica, url = %instance.url, "starting");
    }

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let supervisors: Vec<_> = instances
        .into_iter()
        .map(|instance| {
            tokio::spawn(supervisor::supervise(
                instance,
                launch.clone(),
                manifest.clone(),
                http.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let watch_manifest = manifest.clone();
    let all_ready = tokio::spawn(async move {
        while !watch_manifest.all_ready() {
            tokio::time::sleep(supervisor::READY_POLL_INTERVAL).await;
        }
        tracing::info!(
            ready_ms = started.elapsed().as_millis() as u64,
            up_json = %data_dir.join("up.json").display(),
            "every role is ready"
        );
    });

    kit::http::shutdown_signal().await;
    tracing::info!("stopping every role");
    all_ready.abort();
    let _ = stop_tx.send(true);
    for supervisor in supervisors {
        let _ = supervisor.await;
    }
    manifest.remove();
    tracing::info!("stopped");
    Ok(())
}

/// Each service declared to the gateway with no instance of its own
/// (`TESSERA_GATEWAY__SERVICES__<ROLE>__URLS=[]`), and every instance told
/// to register with the gateway's admin port: the gateway learns them as
/// they come and lose them as they go.
fn discovery_through_the_gateway(instances: &[Instance]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = instances
        .iter()
        .filter(|i| i.admin.is_none())
        .map(|i| i.role)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|role| {
            (
                format!("TESSERA_GATEWAY__SERVICES__{}__URLS", role.to_uppercase()),
                "[]".to_owned(),
            )
        })
        .collect();
    let admins: Vec<String> = instances
        .iter()
        .filter_map(|i| i.admin.as_ref().map(|(_, url)| format!("{url:?}")))
        .collect();
    env.push((
        "TESSERA_REGISTRY__GATEWAYS".into(),
        format!("[{}]", admins.join(", ")),
    ));
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_are_parsed_and_bounded() {
        let counts = replica_counts(&["identity=3".into()]).unwrap();
        assert_eq!(counts["identity"], 3);
        for bad in [
            "identity",
            "gateway=2",
            "identity=0",
            "identity=17",
            "nosuch=1",
            "identity=x",
        ] {
            assert!(replica_counts(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
