//! Queries over the simulation agent's table (`simulations`: one row per
//! job, written through [`Store::save_record`]).

use super::{Store, StoreError, with_pool};

impl Store {
    /// The most recently finished `done` job of a model version.
    pub async fn latest_done_simulation(
        &self,
        tenant: &str,
        model_id: &str,
        model_version: i64,
    ) -> Result<Option<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM simulations WHERE model_id = $1 AND model_version = $2 \
                 AND status = 'done' AND tenant = $3 ORDER BY updated_at_ms DESC, id DESC LIMIT 1",
            )
            .bind(model_id)
            .bind(model_version)
            .bind(tenant)
            .fetch_optional(pool)
            .await
        })?)
    }
}
