//! Durable state: a SQLite database under the state dir (default `/var/lib/hearth/hearth.db`).
//!
//! The schema is managed by sqlx migrations embedded in the binary (`crates/hearth/migrations`).

mod audit;
mod e2b;
mod netdrops;
mod sandboxes;
mod slots;
mod snapshots;
mod tasks;

pub use audit::{AuditCount, AuditState, FlushTotals, StoredEntry};
pub use e2b::E2bSandbox;
pub use netdrops::{NetworkDrops, StoredDrop};
pub(crate) use sandboxes::now_ms;
pub use sandboxes::{SandboxRecord, SandboxStatus, StatusError};
pub use slots::SqliteSlotStore;
pub use snapshots::{new_snapshot_record, SnapshotName, SnapshotNameError, SnapshotRecord};
pub use tasks::{TaskId, TaskOutcome, TaskRecord, TaskStatus};

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::ConnectOptions as _;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state dir {path}: {source}")]
    StateDir { path: PathBuf, source: io::Error },
    #[error("cannot open database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot migrate database {path}: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("sandbox {0} already exists")]
    SandboxExists(String),
    #[error("snapshot {0} already exists")]
    SnapshotExists(String),
    #[error("stored record of sandbox {id} is corrupt: {problem}")]
    Corrupt { id: String, problem: String },
    #[error("all {max} host id blocks are in use: remove sandboxes first")]
    IdBlocksExhausted { max: u32 },
}

/// hearth's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    state_dir: PathBuf,
}

impl Store {
    /// Opens (creating with mode 0600 in a 0700 dir) the database under `state_dir`.
    pub async fn open(state_dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(state_dir, 4).await
    }

    /// The state dir the database lives in (passed on to supervisor processes).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// [`Store::open`] with a connection limit: a sandbox's supervisor writes from one task, and
    /// every pooled connection would hold its own page cache.
    pub async fn open_with(state_dir: &Path, max_connections: u32) -> Result<Self, StoreError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|source| StoreError::StateDir {
                path: state_dir.to_owned(),
                source,
            })?;
        // Also a state dir an older hearth made 0755: task workspaces and snapshots live here.
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| StoreError::StateDir {
                path: state_dir.to_owned(),
                source,
            },
        )?;
        let path = state_dir.join("hearth.db");
        // Create the file ourselves so its mode is 0600; SQLite gives its -wal and -shm files
        // the same mode as the database.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(StoreError::StateDir { path, source }),
        }
        // Two hearth processes opening a new database at once would both set its journal
        // mode and create its tables; an exclusive lock beside the database makes connecting and
        // migrating one process at a time (the lock is released when `open` returns).
        let _lock = lock_exclusive(&state_dir.join("hearth.db.lock")).await?;
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // sqlx warns about statements over 1 s on the CLI's stderr, which a busy disk
            // makes happen and which breaks one-line errors: that is debugging detail.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(1));
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { path, source })?;
        Ok(Self {
            pool,
            state_dir: state_dir.to_owned(),
        })
    }
}

/// Takes an exclusive `flock` on `path` (created 0600), waiting on a blocking thread.
async fn lock_exclusive(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    lock_file(path, nix::fcntl::FlockArg::LockExclusive).await
}

/// Takes a `flock` of kind `arg` on `path` (created 0600), waiting on a blocking thread. The
/// lock goes with the returned guard, or with the process if it dies.
pub async fn lock_file(
    path: &Path,
    arg: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    let path = path.to_owned();
    let waited = tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| StoreError::StateDir {
                path: path.clone(),
                source,
            })?;
        nix::fcntl::Flock::lock(file, arg).map_err(|(_, errno)| StoreError::StateDir {
            path,
            source: errno.into(),
        })
    })
    .await;
    waited.unwrap_or_else(|join| {
        Err(StoreError::StateDir {
            path: PathBuf::from("hearth.db.lock"),
            source: io::Error::other(join),
        })
    })
}

/// Stored counts are `INTEGER` (i64); past i64::MAX they saturate rather than wrap.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored count read back; a negative one (never written by hearth) reads as 0.
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Deletes every row of `id` from `tables` (a new sandbox reusing an old id starts clean).
/// The table names are hearth's own constants, never input.
async fn forget_sandbox_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    id: &hearth_sandbox::SandboxId,
    tables: &[&str],
) -> Result<(), StoreError> {
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table} WHERE sandbox_id = ?"))
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
