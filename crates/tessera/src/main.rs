//! `tessera`: one binary, every role.

mod alloc;
mod events;
mod roles;
mod up;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kit::config::Config;

#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "A commerce back end of microservices in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role of the system, each as its own supervised child process.
    Up(up::UpArgs),
    /// Run one role in this process (what `up` launches; what production runs).
    Serve {
        /// The role to run, e.g. `identity`.
        role: String,
        /// TOML configuration file; `TESSERA_...` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        task: AdminTask,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Data directory (default from configuration: ./tessera-data).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Watch the event log, consumer lag, and the dead-letter store.
    Events {
        #[command(subcommand)]
        command: events::EventsCommand,
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Data directory (default from configuration: ./tessera-data).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Print a role's OpenAPI 3.1 document.
    Openapi { role: String },
}

#[derive(Subcommand)]
enum AdminTask {
    /// Create an account with the given roles.
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        /// A role to grant; repeat for several.
        #[arg(long = "role", default_value = "user")]
        roles: Vec<String>,
    },
    /// Add a new token signing key; the old one keeps verifying until its
    /// tokens have expired.
    RotateKeys,
}

fn load_config(file: Option<&PathBuf>, data_dir: Option<&PathBuf>) -> Result<Config, String> {
    let config = Config::load(file.map(PathBuf::as_path)).map_err(|e| e.to_string())?;
    match data_dir {
        Some(dir) => config.with("data_dir", dir).map_err(|e| e.to_string()),
        None => Ok(config),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    runtime_with(0)
}

/// A runtime with `worker_threads` threads, or one per core for 0.
/// The runtime a role serves on: one thread runs everything itself (no
/// work stealing, no cross-thread wake-ups); more share the work.
///
/// Threads sleep when tokio parks them. Yielding the core first
/// (`on_thread_park(yield_now)`) was tried and taken out: in the gateway
/// benchmark (2 cores shared with the load generator and the upstream)
/// it trades requests/s for p99, by an amount that is the host's. On an
/// AMD EPYC host, A/B in one invocation: p99 3-12% lower, requests/s
/// 2.5-15% lower (an earlier day there: p99 down a sixth to a third); on
/// an Intel Xeon host, requests/s 3-11% lower in seven runs of eight,
/// p99 unchanged.
fn runtime_with(worker_threads: usize) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if worker_threads > 1 {
        builder.worker_threads(worker_threads);
    }
    builder
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Up(args) => runtime()?.block_on(up::run(args)),
        Command::Serve { role, config } => {
            let role = roles::find(&role)?;
            let config = load_config(config.as_ref(), None)?;
            let common = config.common().map_err(|e| e.to_string())?;
            kit::telemetry::init_logs(&common.log);
            runtime_with(common.worker_threads)?.block_on((role.serve)(config))
        }
        Command::Admin {
            task,
            config,
            data_dir,
        } => {
            let config = load_config(config.as_ref(), data_dir.as_ref())?;
            match task {
                AdminTask::CreateUser {
                    email,
                    password,
                    roles,
                } => {
                    let account = runtime()?
                        .block_on(identity::create_user(&config, &email, &password, &roles))
                        .map_err(|e| e.to_string())?;
                    println!(
                        "created account {} ({}) with roles {}",
                        account.id.as_str(),
                        account.email.as_str(),
                        account.role_names().join(", ")
                    );
                }
                AdminTask::RotateKeys => {
                    let kid = identity::rotate_keys(&config).map_err(|e| e.to_string())?;
                    println!("new signing key {kid}; running services pick it up within seconds");
                }
            }
            Ok(())
        }
        Command::Events {
            command,
            config,
            data_dir,
        } => {
            let config = load_config(config.as_ref(), data_dir.as_ref())?;
            runtime()?.block_on(events::run(command, &config))
        }
        Command::Openapi { role } => {
            let role = roles::find(&role)?;
            let openapi = role.openapi.ok_or_else(|| {
                format!("{} has no API of its own: it serves the others'", role.name)
            })?;
            let document = openapi();
            let mut stdout = std::io::stdout().lock();
            match writeln!(stdout, "{document}") {
                // A reader that stops early (`| head`) is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
                _ => Ok(()),
            }
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tessera: {message}");
            ExitCode::FAILURE
        }
    }
}
