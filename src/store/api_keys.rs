//! API keys: hashed, with a role, revocable.

use serde::Serialize;

use super::{Store, StoreError, unix_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(skip)]
    pub hash: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), StoreError> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO api_keys (id, name, role, hash, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.role)
            .bind(&key.hash)
            .bind(key.created_at_ms)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    /// The live (not revoked) key with this hash.
    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM api_keys WHERE hash = $1 AND revoked_at_ms IS NULL")
                .bind(hash)
                .fetch_optional(pool)
                .await
        })?)
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM api_keys ORDER BY created_at_ms, id")
                .fetch_all(pool)
                .await
        })?)
    }

    /// Revokes a key; false when there is no live key with that id.
    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query("UPDATE api_keys SET revoked_at_ms = $1 WHERE id = $2 AND revoked_at_ms IS NULL")
                .bind(unix_millis())
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }
}
