//! SQL pools. Services write portable SQL (`$1` placeholders in order of
//! first use, `TEXT`/`BIGINT` columns) against an [`AnyPool`], so that one
//! store adapter serves SQLite (embedded default) and PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AnyPool, SqlitePool};

/// How long a writer waits for another process's SQLite write lock.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a pooled connection before failing.
pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// `sqlite://` URL of a database file, created if missing.
pub fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The database a service uses: `configured` if set, else its embedded
/// SQLite file at `embedded`.
pub fn url_or_embedded(configured: &str, embedded: &Path) -> String {
    match configured {
        "" => sqlite_url(embedded),
        url => url.to_owned(),
    }
}

/// Opens a pool on a SQLite or PostgreSQL URL. SQLite files are put in WAL
/// mode so that several processes (replicas of one role) can share them.
pub async fn connect_any(url: &str, max_connections: u32) -> Result<AnyPool, sqlx::Error> {
    install_default_drivers();
    let backend = Backend::of(url).ok_or_else(|| {
        sqlx::Error::Configuration(format!("unsupported database URL scheme in {url:?}").into())
    })?;
    if backend == Backend::Sqlite {
        // Set WAL once, outside the pool: it is a property of the file, and
        // changing it needs the file to itself, so openers take turns.
        let options = sqlite_options(url)?;
        let _turn = sqlite_turn(&options).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        pool.close().await;
    }
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    if let Some(parent) = options.get_filename().parent() {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    Ok(options)
}

/// Schema and journal-mode changes on one SQLite file, one process at a time.
async fn sqlite_turn(options: &SqliteConnectOptions) -> Result<std::fs::File, sqlx::Error> {
    let lock = options.get_filename().with_extension("schema.lock");
    crate::lockfile::lock_exclusive_async(&lock)
        .await
        .map_err(sqlx::Error::Io)
}

/// A SQLite pool on a file, for adapters that only ever run on SQLite.
pub async fn connect_sqlite(path: &Path, max_connections: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = sqlite_options(&sqlite_url(path))?;
    let _turn = sqlite_turn(&options).await?;
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(POOL_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

/// Brings the schema up to date. PostgreSQL serialises concurrent runs with
/// an advisory lock (sqlx does that); SQLite has none, so replicas starting
/// together on one file take turns through a lock file beside it.
pub async fn migrate(pool: &AnyPool, url: &str, migrator: &Migrator) -> Result<(), sqlx::Error> {
    let _turn = match Backend::of(url) {
        Some(Backend::Sqlite) => Some(sqlite_turn(&sqlite_options(url)?).await?),
        _ => None,
    };
    migrator.run(pool).await.map_err(sqlx::Error::from)
}

/// Connects to `url` and migrates it with the set for its backend: what
/// every service's SQL store does at start.
pub async fn open_migrated(
    url: &str,
    connections_max: u32,
    sqlite: &Migrator,
    postgres: &Migrator,
) -> Result<AnyPool, sqlx::Error> {
    let migrator = match Backend::of(url) {
        Some(Backend::Sqlite) => sqlite,
        Some(Backend::Postgres) => postgres,
        None => {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL {url:?}").into(),
            ));
        }
    };
    let pool = connect_any(url, connections_max).await?;
    migrate(&pool, url, migrator).await?;
    Ok(pool)
}
