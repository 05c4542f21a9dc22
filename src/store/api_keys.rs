//! API keys: hashed, with a role, revocable.

use serde::Serialize;

use super::{Store, StoreError, unix_millis, with_pool};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    /// The tenant the key acts for (a `platform` key's tenant is where it
    /// was made; it reads no tenant's data).
    pub tenant: String,
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
                "INSERT INTO api_keys (id, name, role, hash, created_at_ms, tenant) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.id)
            .bind(&key.name)
            .bind(&key.role)
            .bind(&key.hash)
            .bind(key.created_at_ms)
            .bind(&key.tenant)
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

    /// The keys of one tenant, revoked ones included.
    pub async fn api_keys(&self, tenant: &str) -> Result<Vec<ApiKeyRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT * FROM api_keys WHERE tenant = $1 ORDER BY created_at_ms, id")
                .bind(tenant)
                .fetch_all(pool)
                .await
        })?)
    }

    /// The ids of every tenant's live keys.
    pub async fn live_api_key_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT id FROM api_keys WHERE revoked_at_ms IS NULL")
                .fetch_all(pool)
                .await
        })?)
    }

    /// Revokes a key of `tenant`; false when it has no live key with that
    /// id.
    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE api_keys SET revoked_at_ms = $1 \
                 WHERE id = $2 AND tenant = $3 AND revoked_at_ms IS NULL",
            )
                .bind(unix_millis())
                .bind(id)
                .bind(tenant)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct TenantRow {
    pub name: String,
    pub display_name: String,
    pub created_at_ms: i64,
}

impl Store {
    /// Makes a tenant; false when one of that name exists.
    pub async fn insert_tenant(&self, name: &str, display_name: &str) -> Result<bool, StoreError> {
        let rows = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO tenants (name, display_name, created_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(display_name)
            .bind(unix_millis())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })?;
        Ok(rows == 1)
    }

    pub async fn tenant(&self, name: &str) -> Result<Option<TenantRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT name, display_name, created_at_ms FROM tenants WHERE name = $1",
            )
            .bind(name)
            .fetch_optional(pool)
            .await
        })?)
    }

    pub async fn tenants(&self) -> Result<Vec<TenantRow>, StoreError> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT name, display_name, created_at_ms FROM tenants ORDER BY name")
                .fetch_all(pool)
                .await
        })?)
    }
}
