//! Queries over the saga coordinator's table (`sagas`).

use super::{Store, StoreError, with_pool};

impl Store {
    /// Sagas whose next action is due at `now_ms` (Unix milliseconds),
    /// most overdue first.
    pub async fn due_sagas(&self, now_ms: i64, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM sagas WHERE next_action_at_ms IS NOT NULL \
                 AND next_action_at_ms <= $1 ORDER BY next_action_at_ms LIMIT $2",
            )
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?)
    }

    /// Sagas not yet completed or compensated.
    pub async fn unfinished_sagas(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM sagas WHERE status IN ('running', 'compensating') ORDER BY created_at_ms",
            )
            .fetch_all(pool)
            .await
        })?)
    }
}
