//! The amplifier's daily snapshots of realization, one row per day, plan
//! and driver: written by the snapshot tick (again the same day: the same
//! row, replaced), read by `GET /api/v1/amplifications/{id}/history`.

use super::{Store, StoreError, with_pool};

/// One row. `plan_id` and `driver` are empty for the model's active plans
/// together and for all of a plan's drivers.
#[derive(Debug, Clone, PartialEq)]
pub struct RealizationRow {
    pub plan_id: String,
    pub driver: String,
    /// `YYYY-MM-DD`.
    pub day: String,
    pub expected: f64,
    pub committed: f64,
    pub realized: f64,
    pub realization_percent: Option<f64>,
}

type Row = (String, String, String, f64, f64, f64, Option<f64>);

impl Store {
    /// Writes a model's snapshot rows in one transaction.
    pub async fn record_realization(
        &self,
        tenant: &str,
        model_id: &str,
        rows: &[RealizationRow],
    ) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for row in rows {
                sqlx::query(
                    "INSERT INTO realization_history (tenant, model_id, plan_id, driver, day, \
                     expected, committed, realized, realization_percent) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (tenant, model_id, plan_id, driver, day) DO UPDATE SET \
                     expected = excluded.expected, committed = excluded.committed, \
                     realized = excluded.realized, \
                     realization_percent = excluded.realization_percent",
                )
                .bind(tenant)
                .bind(model_id)
                .bind(&row.plan_id)
                .bind(&row.driver)
                .bind(&row.day)
                .bind(row.expected)
                .bind(row.committed)
                .bind(row.realized)
                .bind(row.realization_percent)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// A model's rows of one plan (`""`: the model as a whole) and driver
    /// (`""`: all), oldest first, from `since` (`YYYY-MM-DD`), at most
    /// `limit`.
    pub async fn realization_history(
        &self,
        tenant: &str,
        model_id: &str,
        plan_id: &str,
        driver: &str,
        since: &str,
        limit: i64,
    ) -> Result<Vec<RealizationRow>, StoreError> {
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT plan_id, driver, day, expected, committed, realized, realization_percent \
                 FROM realization_history WHERE tenant = $1 AND model_id = $2 AND plan_id = $3 \
                 AND driver = $4 AND day >= $5 ORDER BY day LIMIT $6",
            )
            .bind(tenant)
            .bind(model_id)
            .bind(plan_id)
            .bind(driver)
            .bind(since)
            .bind(limit)
            .fetch_all(pool)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(
                |(plan_id, driver, day, expected, committed, realized, realization_percent)| {
                    RealizationRow {
                        plan_id,
                        driver,
                        day,
                        expected,
                        committed,
                        realized,
                        realization_percent,
                    }
                },
            )
            .collect())
    }
}
