//! The simulation agent's table: one row per job, its indexed columns beside
//! the whole job as JSON.

use super::{Store, StoreError, unix_millis, with_pool};

/// Kind name in version-conflict errors.
const KIND: &str = "simulation";

/// A job as the simulation agent writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulationRecord {
    pub id: String,
    pub status: String,
    pub model_id: Option<String>,
    pub model_version: Option<i64>,
    pub submitter: String,
    pub created_at_ms: i64,
    /// The job as JSON.
    pub job: String,
}

impl Store {
    /// `(version, job JSON)` of a job.
    pub async fn load_simulation(&self, id: &str) -> Result<Option<(i64, String)>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT version, job FROM simulations WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })?)
    }

    /// Writes a job if the store still holds `expected_version` (0: new).
    pub async fn save_simulation(
        &self,
        record: &SimulationRecord,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let now = unix_millis();
        let rows = if expected_version == 0 {
            with_pool!(self, pool => {
                sqlx::query(
                    "INSERT INTO simulations (id, version, status, model_id, model_version, \
                     submitter, created_at_ms, updated_at_ms, job) \
                     VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&record.id)
                .bind(&record.status)
                .bind(&record.model_id)
                .bind(record.model_version)
                .bind(&record.submitter)
                .bind(record.created_at_ms)
                .bind(now)
                .bind(&record.job)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
            })?
        } else {
            with_pool!(self, pool => {
                sqlx::query(
                    "UPDATE simulations SET version = version + 1, status = $1, updated_at_ms = $2, \
                     job = $3 WHERE id = $4 AND version = $5",
                )
                .bind(&record.status)
                .bind(now)
                .bind(&record.job)
                .bind(&record.id)
                .bind(expected_version)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
            })?
        };
        if rows == 1 {
            return Ok(expected_version + 1);
        }
        let actual: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT version FROM simulations WHERE id = $1")
                .bind(&record.id)
                .fetch_optional(pool)
                .await
        })?;
        Err(StoreError::conflict(
            KIND,
            &record.id,
            expected_version,
            actual,
        ))
    }

    /// Jobs that were queued or running, oldest first: what a restarted
    /// node runs again.
    pub async fn unfinished_simulations(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM simulations WHERE status IN ('queued', 'running') \
                 ORDER BY created_at_ms, id",
            )
            .fetch_all(pool)
            .await
        })?)
    }
}
