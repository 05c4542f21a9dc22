//! Tables owned by one agent kind: one row per instance, with the instance
//! as JSON in `body`, a row `version` checked on every write, and the
//! indexed columns the kind's queries filter on.

use super::{Store, StoreError, unix_millis, with_pool};

/// A value of an indexed column.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Text(Option<String>),
    Int(Option<i64>),
}

/// One row to write: `table` has `id`, `version`, `updated_at_ms`, `body`
/// and the named columns.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub table: &'static str,
    pub id: &'a str,
    pub columns: Vec<(&'static str, Column)>,
    pub body: String,
}

impl Store {
    /// `(version, body)` of a row.
    pub async fn load_record(
        &self,
        table: &'static str,
        id: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let sql = format!("SELECT version, body FROM {table} WHERE id = $1");
        Ok(with_pool!(self, pool => {
            sqlx::query_as(&sql).bind(id).fetch_optional(pool).await
        })?)
    }

    /// Writes a row if the store still holds `expected_version` (0: new).
    pub async fn save_record(
        &self,
        record: &Record<'_>,
        expected_version: i64,
    ) -> Result<i64, StoreError> {
        let now = unix_millis();
        let names: Vec<&str> = record.columns.iter().map(|(name, _)| *name).collect();
        let sql = if expected_version == 0 {
            let placeholders: Vec<String> = (0..names.len())
                .map(|index| format!("${}", index + 4))
                .collect();
            format!(
                "INSERT INTO {} (id, version, updated_at_ms, body{}{}) VALUES ($1, 1, $2, $3{}{}) \
                 ON CONFLICT (id) DO NOTHING",
                record.table,
                if names.is_empty() { "" } else { ", " },
                names.join(", "),
                if names.is_empty() { "" } else { ", " },
                placeholders.join(", "),
            )
        } else {
            let sets: Vec<String> = names
                .iter()
                .enumerate()
                .map(|(index, name)| format!(", {name} = ${}", index + 4))
                .collect();
            format!(
                "UPDATE {} SET version = version + 1, updated_at_ms = $2, body = $3{} \
                 WHERE id = $1 AND version = ${}",
                record.table,
                sets.concat(),
                names.len() + 4,
            )
        };
        let rows = with_pool!(self, pool => {
            let mut query = sqlx::query(&sql).bind(record.id).bind(now).bind(&record.body);
            for (_, value) in &record.columns {
                query = match value {
                    Column::Text(text) => query.bind(text.clone()),
                    Column::Int(number) => query.bind(*number),
                };
            }
            if expected_version != 0 {
                query = query.bind(expected_version);
            }
            query.execute(pool).await.map(|done| done.rows_affected())
        })?;
        if rows == 1 {
            return Ok(expected_version + 1);
        }
        let sql = format!("SELECT version FROM {} WHERE id = $1", record.table);
        let actual: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(&sql).bind(record.id).fetch_optional(pool).await
        })?;
        Err(StoreError::conflict(
            record.table,
            record.id,
            expected_version,
            actual,
        ))
    }
}
