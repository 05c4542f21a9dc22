//! The durable store: one `Store` over SQLite (embedded default) or PostgreSQL
//! (the shared store of a cluster), chosen by the database URL.
//!
//! Every state row carries a version and every write names the version it
//! read; a stale write fails with [`StoreError::VersionConflict`]. That check
//! is what keeps two owners of one key from overwriting each other.
//!
//! The only crate of the workspace that depends on sqlx.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");

/// Errors of the store boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url `{url}`: expected sqlite:// or postgres://")]
    UnsupportedUrl { url: String },
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    #[error(
        "version conflict on {kind}/{key}: write expected version {expected}, store has {actual:?}"
    )]
    VersionConflict {
        kind: String,
        key: String,
        expected: i64,
        actual: Option<i64>,
    },
    #[error("state of {kind}/{key} could not be encoded or decoded: {reason}")]
    Codec {
        kind: String,
        key: String,
        reason: String,
    },
    // Transparent: the inner error says what failed; repeating it here
    // would print it twice in an error chain.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// The database could not be reached (connection refused or lost, no
    /// connection free in time): a retry later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)
            )
        )
    }

    pub(crate) fn conflict(
        kind: &str,
        key: &str,
        expected: i64,
        actual: Option<i64>,
    ) -> StoreError {
        StoreError::VersionConflict {
            kind: kind.to_owned(),
            key: key.to_owned(),
            expected,
            actual,
        }
    }
}

/// Which database engine a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connection pool over one of the supported databases.
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    /// Batching of the agents' row writes and loads.
    writer: Option<batch::Writer>,
    reader: Option<batch::Reader>,
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same body against whichever pool the store holds: the SQL we
/// write is shared by both dialects (`$n` placeholders work in both).
mod api_keys;
mod audit;
mod batch;
mod leases;
mod notifications;
mod outbox;
mod realization;
mod records;
mod sagas;
mod simulations;
mod state;

pub use api_keys::{ApiKeyRow, TenantQuotaRow, TenantRow};
pub use audit::AuditQuery;
pub use leases::{Lease, LeaseClaim, Renewal};
pub use notifications::{Attempt, Notification};
pub use outbox::{Claimant, ClaimedDelivery, Dispatched, OutboxStats};
pub use realization::RealizationRow;
pub use records::{Listing, Page, Record};
pub use valueverse_runtime::{Column, OutboxEvent, VersionedState, unix_millis};

macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}
use with_pool;

impl Store {
    /// Opens a pool for `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`).
    /// A missing SQLite file or PostgreSQL database is created. Nothing is
    /// migrated here.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|error| StoreError::InvalidUrl(error.to_string()))?;
            // The file holds webhook secrets and key hashes: created for
            // this user alone (SQLite gives its -wal and -shm files the
            // same mode).
            // Where it cannot be made (no such folder), SQLite's own open
            // says why, as before.
            let file = options.get_filename();
            if !url.contains(":memory:") && !file.as_os_str().is_empty() && !file.exists() {
                let _ = create_private_file(file);
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // An in-memory database lives in one connection: more would each see their own.
            let max_connections = if url.contains(":memory:") {
                1
            } else {
                max_connections
            };
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .connect_with(options)
                    .await?,
            )
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url)
                .map_err(|error| StoreError::InvalidUrl(error.to_string()))?;
            // Like the SQLite file, a missing database is created. Nodes
            // starting together may race: losing the race is fine.
            if !sqlx::Postgres::database_exists(url).await?
                && let Err(error) = sqlx::Postgres::create_database(url).await
                && !sqlx::Postgres::database_exists(url).await?
            {
                return Err(error.into());
            }
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(StoreError::UnsupportedUrl {
                url: redact_url(url),
            });
        };
        let direct = Store {
            pool,
            writer: None,
            reader: None,
        };
        let (writer, reader) = batch::start(&direct);
        Ok(Store {
            writer: Some(writer),
            reader,
            ..direct
        })
    }

    /// Connects and applies the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = Store::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Sqlite(_) => &SQLITE_MIGRATIONS,
            Pool::Postgres(_) => &POSTGRES_MIGRATIONS,
        }
    }

    /// Applies every migration not applied yet; returns how many the store knows.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let migrator = self.migrator();
        with_pool!(self, pool => migrator.run(pool).await)?;
        Ok(migrator.iter().count())
    }

    /// Ready means reachable and every embedded migration applied successfully.
    pub async fn check_ready(&self) -> Result<(), String> {
        let applied: Vec<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(pool)
                .await
        })
        .map_err(|error| format!("store unreachable or not migrated: {error}"))?;
        let missing: Vec<i64> = self
            .migrator()
            .iter()
            .map(|migration| migration.version)
            .filter(|version| !applied.contains(version))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("migrations not applied: {missing:?}"))
        }
    }

    /// `(version, state JSON)` of an agent instance's generic state row.
    pub async fn load_state_text(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT version, state FROM agent_state WHERE kind = $1 AND key = $2")
                .bind(kind)
                .bind(key)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Reads the state row of an agent instance, decoded.
    pub async fn load_state<S: DeserializeOwned>(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<VersionedState<S>>, StoreError> {
        let Some((version, text)) = self.load_state_text(kind, key).await? else {
            return Ok(None);
        };
        let state = serde_json::from_str(&text).map_err(|error| StoreError::Codec {
            kind: kind.to_owned(),
            key: key.to_owned(),
            reason: error.to_string(),
        })?;
        Ok(Some(VersionedState { version, state }))
    }

    /// Writes the state row if the store still holds `expected_version`
    /// (0: no row yet) and returns the new version.
    pub async fn save_state<S: Serialize + ?Sized>(
        &self,
        kind: &str,
        key: &str,
        state: &S,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let text = valueverse_runtime::encode_state(kind, key, state).map_err(|error| {
            let reason = match error {
                valueverse_runtime::StateError::Codec { reason, .. } => reason,
                other => other.to_string(),
            };
            StoreError::Codec {
                kind: kind.to_owned(),
                key: key.to_owned(),
                reason,
            }
        })?;
        self.save_state_text(kind, key, text, expected_version, &[])
            .await
    }

    /// Like [`Store::save_state`] over state already encoded by
    /// `valueverse_runtime::encode_state`, with the events the change raised written in the
    /// same transaction.
    pub async fn save_state_text(
        &self,
        kind: &str,
        key: &str,
        text: String,
        expected_version: i64,
        events: &[OutboxEvent],
    ) -> Result<i64, StoreError> {
        let now = unix_millis();
        let sql = if expected_version == 0 {
            "INSERT INTO agent_state (kind, key, version, state, updated_at_ms, tenant) \
             VALUES ($1, $2, 1, $3, $4, $5) ON CONFLICT (kind, key) DO NOTHING"
        } else {
            "UPDATE agent_state SET version = version + 1, state = $3, updated_at_ms = $4 \
             WHERE kind = $1 AND key = $2 AND version = $5"
        };
        let applied = with_pool!(self, pool => {
            let bound = || {
                let query = sqlx::query(sql).bind(kind).bind(key).bind(&text).bind(now);
                if expected_version != 0 {
                    query.bind(expected_version)
                } else {
                    query.bind(valueverse_runtime::split_key(key).0)
                }
            };
            // Most kinds raise no event: no transaction for them.
            if events.is_empty() {
                bound().execute(pool).await.map(|done| done.rows_affected() == 1)
            } else {
                let mut tx = pool.begin().await?;
                let applied = bound().execute(&mut *tx).await?.rows_affected() == 1;
                if applied {
                    outbox::write_events!(tx, events);
                }
                tx.commit().await.map(|()| applied)
            }
        })?;
        if applied {
            return Ok(expected_version + 1);
        }
        let actual = self.state_version(kind, key).await?;
        Err(StoreError::conflict(kind, key, expected_version, actual))
    }

    /// The stored version of an instance's state, if it has a row.
    pub async fn state_version(&self, kind: &str, key: &str) -> Result<Option<i64>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM agent_state WHERE kind = $1 AND key = $2")
                .bind(kind)
                .bind(key)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Closes every connection; used at shutdown and by tests before dropping a database.
    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

/// Drops the password from a URL before it is shown in an error or a log.
/// An empty file only this user may read or write.
fn create_private_file(path: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

pub fn redact_url(url: &str) -> String {
    const SECRET_KEYS: [&str; 5] = ["password", "passwd", "pass", "secret", "token"];
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(an unparsable URL, not shown)".into();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let secret = SECRET_KEYS.iter().any(|s| key.to_lowercase().contains(s));
                let value = if secret {
                    "***".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_an_unreachable_database_is_unavailable() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::Database(sqlx::Error::Io(io)).is_unavailable());
        assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::Database(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::conflict("k", "key", 1, Some(2)).is_unavailable());
    }

    use super::{StoreError, redact_url};

    #[test]
    fn redacts_passwords_only() {
        let cases = [
            (
                "postgres://u:secret@h:5432/db",
                "postgres://u:***@h:5432/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("sqlite://valueverse.db", "sqlite://valueverse.db"),
            (
                "postgres://h/db?user=u&password=hunter2&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            ("postgres://h/db?PassWord=x", "postgres://h/db?PassWord=***"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected);
        }
    }
}
