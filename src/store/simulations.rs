//! Queries over the simulation agent's table (`simulations`: one row per
//! job, written through [`Store::save_record`]).

use super::{Store, StoreError, with_pool};

impl Store {
    /// The most recently finished `done` job of a model version.
    /// The latest `limit` finished, server-seeded jobs of a model version
    /// of at least `min_paths` paths (`evidence_paths` is set only on
    /// those), newest first.
    pub async fn latest_evidence(
        &self,
        tenant: &str,
        model_id: &str,
        model_version: i64,
        min_paths: u64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        let min_paths = i64::try_from(min_paths).unwrap_or(i64::MAX);
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM simulations WHERE model_id = $1 AND model_version = $2 \
                 AND tenant = $3 AND evidence_paths >= $4 \
                 ORDER BY updated_at_ms DESC, id DESC LIMIT $5",
            )
            .bind(model_id)
            .bind(model_version)
            .bind(tenant)
            .bind(min_paths)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }
}
